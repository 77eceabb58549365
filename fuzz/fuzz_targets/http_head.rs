//! The HTTP proxy's request head parser, path normalization and chunked decoder on arbitrary
//! bytes: never a panic, and whatever is accepted is what policy may safely see — a path
//! with no dot segment, no doubled or escaped slash, no backslash and no fragment, stable
//! under a second normalization, and a forwarded head that parses back to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_proxy::http::chunked::{ChunkedDecoder, Step};
use membrane_proxy::http::head::{MAX_HEADERS, Parsed, parse_request_head};
use membrane_proxy::http::path::normalize_path;
use membrane_proxy::http::upstream_head;

fn check_path(path: &str) {
    let p = path.split('?').next().unwrap_or_default();
    assert!(p.starts_with('/'), "{path:?}");
    assert!(!p.contains('#') && !p.contains('\\'), "{path:?}");
    let lower = p.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{path:?}");
    for seg in p.split('/').skip(1) {
        let s = seg.to_ascii_lowercase().replace("%2e", ".");
        let base = s.split(';').next().unwrap_or_default();
        assert!(base != "." && base != "..", "{path:?}");
    }
    // Normalizing again changes nothing (except the `//` Envoy keeps for an all-slash path).
    if p != "//" {
        let again = normalize_path(p.as_bytes()).expect("normalized path is valid");
        assert_eq!(again.path, p);
        assert!(!again.redirect);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Parsed::Request(head) = parse_request_head(data, 64 * 1024) {
        check_path(&head.path);
        let out = upstream_head(&head);
        // An absolute-form request with the most headers allowed gains a `host` line when
        // forwarded, one more than a receiver with the same limit takes (Envoy, which adds
        // its own headers, forwards more still): that is not a parsing disagreement.
        let lines = out.windows(2).filter(|w| w == b"\r\n").count();
        if lines <= MAX_HEADERS + 2 {
            match parse_request_head(&out, 1 << 20) {
                Parsed::Request(again) => {
                    assert_eq!(again.method, head.method);
                    assert_eq!(again.path, head.path);
                    assert_eq!(again.authority, head.authority);
                    assert_eq!(again.body, head.body);
                    assert_eq!(again.headers, head.headers);
                }
                other => panic!("forwarded head does not parse back: {other:?}"),
            }
        }
    }
    if let Ok(n) = normalize_path(data) {
        check_path(&n.path);
    }
    // The chunked decoder, fed in two pieces.
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut decoder = ChunkedDecoder::new();
    let mut buf: Vec<u8> = data[..split].to_vec();
    let mut rest = &data[split..];
    loop {
        match decoder.step(&buf) {
            Ok(Step::Data { consumed, .. }) => {
                buf.drain(..consumed);
            }
            Ok(Step::NeedMore { consumed }) => {
                buf.drain(..consumed);
                if rest.is_empty() {
                    break;
                }
                buf.extend_from_slice(rest);
                rest = &[];
            }
            Ok(Step::End { .. }) | Err(_) => break,
        }
    }
});
