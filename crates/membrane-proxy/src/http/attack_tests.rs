//! The attack suite: what `evasion_tests` does not try. Raw bytes through the real proxy to
//! a hand-parsing backend (or a scripted one that answers badly on purpose), each attempt
//! with the status Envoy (as Cilium configures it) answers and exactly what reached the
//! backend. Line endings and header syntax, `Content-Length` and chunk-size spellings,
//! trailers, pipelined and `Expect` bodies after a denial, absolute-form authorities,
//! escapes that must be decoded once or never, `Host` spellings, and upstreams that answer a
//! `HEAD` with a body, answer twice, answer early, send `1xx` or an unasked `101`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::testutil::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The client's HTTP rules beyond the scenario's (`GET /public.*`, `POST /upload`, …).
const EXTRA_RULES: &str = SUITE_RULES;

/// Where a case puts its tag (an `x-case` header value), so the backend's log and the
/// answer can be traced to it whatever line endings the case uses.
const TAG: &str = "@TAG@";

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// The status of each answer, in order (pipelined requests give several).
    statuses: Vec<u16>,
    /// The targets the backend must see for this case, in order (empty: nothing).
    reaches: Vec<&'static str>,
}

fn case(name: &'static str, request: &[u8], status: u16, reaches: Option<&'static str>) -> Case {
    Case {
        name,
        request: request.to_vec(),
        statuses: vec![status],
        reaches: reaches.into_iter().collect(),
    }
}

fn pipelined(
    name: &'static str,
    request: &[u8],
    statuses: &[u16],
    reaches: &[&'static str],
) -> Case {
    Case {
        name,
        request: request.to_vec(),
        statuses: statuses.to_vec(),
        reaches: reaches.to_vec(),
    }
}

/// `GET target` with `Host: echo` and the tag.
fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: echo\r\nx-case: {TAG}\r\n\r\n").into_bytes()
}

/// `GET target` with the given `Host` line value.
fn get_host(target: &str, host: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nx-case: {TAG}\r\n\r\n").into_bytes()
}

/// `POST /upload` with `extra` header lines (each ending in CRLF) and `body` after the head.
fn post(extra: &str, body: &str) -> Vec<u8> {
    format!("POST /upload HTTP/1.1\r\nHost: echo\r\nx-case: {TAG}\r\n{extra}\r\n{body}")
        .into_bytes()
}

fn cases() -> Vec<Case> {
    vec![
        // --- Line endings. Envoy's parser (http-parser and Balsa alike) accepts a bare LF
        // as a line end; the proxy re-serializes the head with CRLF, so the backend cannot
        // read a different head from the same bytes.
        case(
            "bare LF line endings",
            b"GET /public/lf HTTP/1.1\nHost: echo\nx-case: @TAG@\n\n",
            200,
            Some("/public/lf"),
        ),
        case(
            "mixed CRLF and LF",
            b"GET /public/mixed HTTP/1.1\r\nHost: echo\nx-case: @TAG@\r\n\n",
            200,
            Some("/public/mixed"),
        ),
        // A bare LF cannot start a second request line inside the head: it is read as a
        // header line whose name has a space (Envoy: 400).
        case(
            "request line after a bare LF",
            b"GET /public/x HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\nGET /private HTTP/1.1\r\n\r\n",
            400,
            None,
        ),
        // A bare CR is not a line end anywhere (Envoy: 400).
        case(
            "bare CR in a header value",
            b"GET /public/x HTTP/1.1\r\nHost: echo\r\nX-A: a\rGET /private HTTP/1.1\r\n\r\n",
            400,
            None,
        ),
        case(
            "bare CR after the request line",
            b"GET /public/x HTTP/1.1\rHost: echo\r\n\r\n",
            400,
            None,
        ),
        // RFC 9112 §2.2: empty lines before a request line are ignored (Envoy too).
        case(
            "empty lines before the request",
            b"\r\n\r\nGET /public/lead HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\n\r\n",
            200,
            Some("/public/lead"),
        ),
        // --- Header syntax: obs-fold and whitespace (Envoy: 400 for each; RFC 9112 §5.1
        // forbids whitespace before the colon, §5.2 obs-fold in requests).
        case(
            "leading whitespace on the first header",
            b"GET /public/x HTTP/1.1\r\n Host: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "tab-folded header",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: user\r\n\tadmin\r\n\r\n",
            400,
            None,
        ),
        case(
            "tab before the colon",
            b"GET /hosted/x HTTP/1.1\r\nHost\t: good.example\r\n\r\n",
            400,
            None,
        ),
        case(
            "non-token header name",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role(x): admin\r\n\r\n",
            400,
            None,
        ),
        case(
            "DEL in a header name",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Ro\x7fle: admin\r\n\r\n",
            400,
            None,
        ),
        case(
            "pseudo-header spelled as a header",
            b"GET /hosted/x HTTP/1.1\r\nHost: evil\r\n:authority: good.example\r\n\r\n",
            400,
            None,
        ),
        // CTLs in a value (Envoy's nghttp2-derived value check: 400).
        case(
            "control byte in a header value",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\x01\r\n\r\n",
            400,
            None,
        ),
        case(
            "DEL in a header value",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\x7f\r\n\r\n",
            400,
            None,
        ),
        // A tab inside a value is data; the value policy matched is not `admin`.
        case(
            "tab inside a required value",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\nX-Role: ad\tmin\r\n\r\n",
            403,
            None,
        ),
        // obs-text passes (Envoy allows 0x80-0xff in values) but does not match `admin`.
        case(
            "obs-text in a required value",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\nX-Role: admin\xa0\r\n\r\n",
            403,
            None,
        ),
        // --- Request line.
        case(
            "two spaces after the method",
            b"GET  /private HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "tab as the separator",
            b"GET\t/public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "two targets",
            b"GET /public/x /private HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "escaped method",
            b"%47ET /public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "lower-case version",
            b"GET /public/x http/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        // --- Content-Length spellings. Envoy reads the value as an unsigned decimal: leading
        // zeros are the same number, anything past u64 or non-digits is 400.
        case(
            "length with leading zeros",
            &post("Content-Length: 005\r\n", "hello"),
            200,
            Some("/upload"),
        ),
        case(
            "length past u64",
            &post("Content-Length: 18446744073709551616\r\n", "hello"),
            400,
            None,
        ),
        case(
            "empty length",
            &post("Content-Length:\r\n", "hello"),
            400,
            None,
        ),
        case(
            "length with an inner space",
            &post("Content-Length: 1 0\r\n", "hello"),
            400,
            None,
        ),
        case(
            "length with a trailing letter",
            &post("Content-Length: 5x\r\n", "hello"),
            400,
            None,
        ),
        // --- Transfer-Encoding spellings: the coding name is case-insensitive and OWS
        // around it is not part of it (RFC 9110 §5.6); anything but exactly one `chunked`
        // is a coding Envoy does not implement (501).
        case(
            "Chunked in upper case",
            &post(
                "Transfer-Encoding: CHUNKED\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            200,
            Some("/upload"),
        ),
        case(
            "chunked with trailing whitespace",
            &post(
                "Transfer-Encoding: chunked \t\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            200,
            Some("/upload"),
        ),
        case(
            "chunked listed twice",
            &post(
                "Transfer-Encoding: chunked, chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            501,
            None,
        ),
        case(
            "chunked with a prefix",
            &post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            501,
            None,
        ),
        case(
            "chunked then identity in a second line",
            &post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            501,
            None,
        ),
        case(
            "length hidden behind a Connection nomination",
            &post(
                "Connection: content-length\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
            None,
        ),
        // --- Chunk framing. The body is decoded and re-encoded, so the backend reads the
        // chunks the proxy read; every shape the decoder refuses is Envoy's 400 too.
        case(
            "chunk size with leading zeros",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "0005\r\nhello\r\n0000\r\n\r\n",
            ),
            200,
            Some("/upload"),
        ),
        case(
            "chunk size past 64 bits",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000005\r\nhello\r\n0\r\n\r\n",
            ),
            400,
            None,
        ),
        // Whitespace after the size is allowed only before an extension (RFC 9112 §7.1.1:
        // BWS precedes `;`). Envoy's legacy http-parser accepted `5 \r\n` as size 5; the
        // proxy refuses it, which can only turn a request away, never let one through.
        case(
            "chunk size with trailing whitespace",
            &post("Transfer-Encoding: chunked\r\n", "5 \r\nhello\r\n0\r\n\r\n"),
            400,
            None,
        ),
        case(
            "chunk size in 0x",
            &post("Transfer-Encoding: chunked\r\n", "0x5\r\nhello\r\n0\r\n\r\n"),
            400,
            None,
        ),
        case(
            "chunk extension with a quoted CRLF",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "5;a=\"x\r\nhello\r\n0\r\n\r\n",
            ),
            200,
            Some("/upload"),
        ),
        case(
            "no CRLF after chunk data",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhelloGET /private HTTP/1.1\r\nHost: echo\r\n\r\n0\r\n\r\n",
            ),
            400,
            None,
        ),
        case(
            "LF after chunk data",
            &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\n0\r\n\r\n"),
            400,
            None,
        ),
        case(
            "LF-only last chunk",
            &post("Transfer-Encoding: chunked\r\n", "5\r\nhello\r\n0\n\n"),
            400,
            None,
        ),
        case(
            "request line as a trailer",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\nGET /private HTTP/1.1\r\nHost: echo\r\n\r\n",
            ),
            400,
            None,
        ),
        // A well-formed trailer is dropped; what follows the body is the next request and
        // is decided on its own.
        pipelined(
            "trailer then a pipelined denied request",
            &post(
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\nX-Role: admin\r\n\r\nGET /private HTTP/1.1\r\nHost: echo\r\n\r\n",
            ),
            &[200, 403],
            &["/upload"],
        ),
        // --- Bodies of denied requests are drained, never read as requests; the request
        // after them is decided on its own (Envoy reads the body by its framing too).
        pipelined(
            "denied request with a length body holding a request",
            b"POST /private HTTP/1.1\r\nHost: echo\r\nContent-Length: 45\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: echo\r\n\r\nGET /public/after HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\n\r\n",
            &[403, 200],
            &["/public/after"],
        ),
        pipelined(
            "denied request with a chunked body holding a request",
            b"POST /private HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n2d\r\nGET /public/smuggled HTTP/1.1\r\nHost: echo\r\n\r\n\r\n0\r\n\r\nGET /public/after HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\n\r\n",
            &[403, 200],
            &["/public/after"],
        ),
        // A denied `Expect: 100-continue` request gets 403 and the connection closes, so
        // body bytes sent anyway are never read as a request (Envoy: a local reply before
        // the request ended closes an HTTP/1 connection).
        case(
            "denied expect-continue with a request as the body",
            b"POST /private HTTP/1.1\r\nHost: echo\r\nContent-Length: 45\r\nExpect: 100-continue\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: echo\r\n\r\n",
            403,
            None,
        ),
        // Without a body there is nothing to wait for: the connection stays in step.
        pipelined(
            "denied expect-continue without a body",
            b"GET /private HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\n\r\nGET /public/next HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\n\r\n",
            &[403, 200],
            &["/public/next"],
        ),
        // A denied request announcing a body larger than the drain limit: 403 and close, so
        // the body (a request here) is never parsed.
        case(
            "denied request with a huge length",
            b"POST /private HTTP/1.1\r\nHost: echo\r\nContent-Length: 999999999999\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: echo\r\n\r\n",
            403,
            None,
        ),
        // --- Absolute-form targets: the URL's authority is `:authority`, userinfo is not
        // part of it, and the backend gets origin form with the authority as `Host`.
        case(
            "absolute form with userinfo naming the good host",
            b"GET http://good.example@evil/hosted/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            403,
            None,
        ),
        case(
            "absolute form with a backslash before the at",
            b"GET http://good.example\\@evil/hosted/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            403,
            None,
        ),
        case(
            "absolute form with userinfo",
            b"GET http://u:p@good.example/hosted/x HTTP/1.1\r\nHost: evil\r\nx-case: @TAG@\r\n\r\n",
            200,
            Some("/hosted/x"),
        ),
        case(
            "absolute form with an IPv6 literal",
            b"GET http://[::1]:8080/public/v6 HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\n\r\n",
            200,
            Some("/public/v6"),
        ),
        case(
            "absolute form with a port on a host rule",
            b"GET http://good.example:8080/hosted/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            403,
            None,
        ),
        case(
            "upper-case scheme",
            b"GET HTTP://good.example/hosted/x HTTP/1.1\r\nHost: evil\r\nx-case: @TAG@\r\n\r\n",
            200,
            Some("/hosted/x"),
        ),
        case(
            "scheme with one slash",
            b"GET http:/public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "scheme with three slashes",
            b"GET http:///public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "network-path target",
            b"GET //good.example/hosted/x HTTP/1.1\r\nHost: evil\r\n\r\n",
            403,
            None,
        ),
        // --- The query is not a path; an escaped `#` is data, not a fragment.
        case("dot segment before the query", &get("/public/..?/public"), 403, None),
        case(
            "escaped hash then dot segments",
            &get("/public/x%23/../../private"),
            403,
            None,
        ),
        case(
            "escaped hash kept",
            &get("/public/x%23y"),
            200,
            Some("/public/x%23y"),
        ),
        // --- Escapes decoded once or never: overlong UTF-8 and IIS `%u` are not dots
        // (Chromium's canonicalizer, which Envoy uses, does neither); a malformed escape
        // becomes `%25`, so no backend can decode it into something else.
        case(
            "overlong UTF-8 dots",
            &get("/public/%c0%ae%c0%ae/private"),
            200,
            Some("/public/%c0%ae%c0%ae/private"),
        ),
        case(
            "IIS %u dots",
            &get("/public/%u002e%u002e/private"),
            200,
            Some("/public/%25u002e%25u002e/private"),
        ),
        case(
            "escaped percent before an escaped slash",
            &get("/public/%252f..%252fprivate"),
            200,
            Some("/public/%252f..%252fprivate"),
        ),
        case(
            "mixed-case escaped dots",
            &get("/public/%2E%2e/private"),
            403,
            None,
        ),
        case("escaped NUL in the last segment", &get("/public/%00"), 400, None),
        case(
            "dot with parameters",
            &get("/private/.;x/y"),
            403,
            None,
        ),
        // An escaped `;` is not a parameter delimiter to the normalizer (Chromium keeps
        // `%3B` as is, so Envoy forwards the same path); the backend gets the escape.
        case(
            "dotdot with an escaped semicolon",
            &get("/public/..%3b/private"),
            200,
            Some("/public/..%3b/private"),
        ),
        case(
            "parameters on a plain segment",
            &get("/public;x=1/y"),
            200,
            Some("/public;x=1/y"),
        ),
        // --- Host spellings: `Host` is matched exactly as the backend receives it.
        case(
            "host with a trailing dot",
            &get_host("/hosted/x", "good.example."),
            403,
            None,
        ),
        case(
            "host with a port",
            &get_host("/hosted/x", "good.example:80"),
            403,
            None,
        ),
        case(
            "host list in one header",
            &get_host("/hosted/x", "good.example,evil"),
            403,
            None,
        ),
        case(
            "host list with a space",
            &get_host("/hosted/x", "good.example, evil"),
            400,
            None,
        ),
        case("empty host", &get_host("/public/x", ""), 400, None),
        case(
            "host with a slash",
            &get_host("/hosted/x", "good.example/x"),
            400,
            None,
        ),
        // --- Hop-by-hop games: a nomination removes the header before policy sees it, in
        // any case, in any Connection header.
        case(
            "required header nominated in a second Connection header",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\r\nConnection: keep-alive\r\nConnection: X-ROLE\r\n\r\n",
            403,
            None,
        ),
        case(
            "required header nominated with close",
            b"GET /admin/x HTTP/1.1\r\nHost: echo\r\nConnection: close , x-role\r\nX-Role: admin\r\n\r\n",
            403,
            None,
        ),
        case(
            "x-forwarded-host nominated",
            b"GET /public/x HTTP/1.1\r\nHost: echo\r\nConnection: X-Forwarded-Host\r\n\r\n",
            400,
            None,
        ),
        // Two `Upgrade` headers, the last `h2c`: Envoy reads them joined (`websocket,h2c`),
        // which is not only the h2c offer it drops: 403, as for any upgrade.
        case(
            "websocket hidden before an h2c offer",
            b"GET /public/up HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\nUpgrade: websocket\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            403,
            None,
        ),
        // The h2c offer alone is dropped and the request served as HTTP/1.1.
        case(
            "h2c offer alone",
            b"GET /public/h2c HTTP/1.1\r\nHost: echo\r\nx-case: @TAG@\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            200,
            Some("/public/h2c"),
        ),
    ]
}

fn with_tag(request: &[u8], tag: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(request.len() + tag.len());
    let mut rest = request;
    while let Some(i) = rest.windows(TAG.len()).position(|w| w == TAG.as_bytes()) {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(tag.as_bytes());
        rest = &rest[i + TAG.len()..];
    }
    out.extend_from_slice(rest);
    out
}

struct Suite {
    proxy: SocketAddr,
    backend: Arc<Mutex<Vec<RawSeen>>>,
}

/// The proxy with [`EXTRA_RULES`] in front of `upstream`.
async fn proxy_to(upstream: SocketAddr) -> SocketAddr {
    let (proxy, tx) = start_http_proxy(
        policy_with(EXTRA_RULES),
        CLIENT,
        upstream,
        HttpProxyConfig::default(),
    )
    .await;
    // A closed channel still reads its last value; keep the sender anyway.
    std::mem::forget(tx);
    proxy
}

async fn suite() -> Suite {
    let (backend_addr, backend) = raw_backend().await;
    Suite {
        proxy: proxy_to(backend_addr).await,
        backend,
    }
}

/// Sends one case on its own connection: the statuses of its answers, and whether every
/// `200` was its own (the backend echoes the tag).
async fn send(proxy: SocketAddr, c: &Case, tag: &str) -> (Vec<u16>, bool) {
    let mut conn = RawConn::connect(proxy).await;
    conn.send(&with_tag(&c.request, tag)).await;
    let mut statuses = Vec::new();
    let mut own = true;
    for _ in &c.statuses {
        let Some(r) = conn.response().await else {
            break;
        };
        own &= r.status != 200 || r.header("x-case") == Some(tag);
        statuses.push(r.status);
    }
    (statuses, own)
}

#[tokio::test]
async fn no_attack_reaches_what_policy_denies() {
    let s = suite().await;
    let cases = cases();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let tag = format!("a{i}");
        let (statuses, own) = send(s.proxy, c, &tag).await;
        if statuses != c.statuses || !own {
            failures.push(format!(
                "{}: statuses {statuses:?} (own {own}), expected {:?}",
                c.name, c.statuses
            ));
        }
    }
    // Let the backend log anything still in flight before it is read.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = s.backend.lock().unwrap().clone();
    let mut by_tag: BTreeMap<String, Vec<RawSeen>> = BTreeMap::new();
    for r in seen {
        let tag = r.header("x-case").join(",");
        by_tag.entry(tag).or_default().push(r);
    }
    for (i, c) in cases.iter().enumerate() {
        let got = by_tag.remove(&format!("a{i}")).unwrap_or_default();
        let targets: Vec<&str> = got.iter().map(|g| g.target.as_str()).collect();
        if targets != c.reaches || got.iter().any(|g| g.version != "HTTP/1.1") {
            failures.push(format!(
                "{}: the backend should see {:?}, saw {targets:?}",
                c.name, c.reaches
            ));
        }
    }
    if !by_tag.is_empty() {
        failures.push(format!(
            "requests no case expected reached the backend: {:?}",
            by_tag
                .values()
                .flatten()
                .map(|r| format!("{} {}", r.method, r.target))
                .collect::<Vec<_>>()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Exactly the head the backend gets for the spellings that pass: normalized framing,
/// the checked `Host`, the body as decoded.
#[tokio::test]
async fn accepted_spellings_reach_the_backend_normalized() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    c.send(b"POST /upload HTTP/1.1\nHost:  echo \nContent-Length: 005\n\nhello")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: Chunked \r\n\r\n0002;x=y\r\nhe\r\n3\r\nllo\r\n0\r\nX-T: 1\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(b"GET http://u:p@[::1]:8080/public/v6 HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let seen = s.backend.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].header("content-length"), ["5"]);
    assert_eq!(seen[0].header("host"), ["echo"]);
    assert_eq!(seen[0].body, b"hello");
    assert_eq!(seen[1].header("transfer-encoding"), ["chunked"]);
    assert!(seen[1].header("x-t").is_empty(), "a trailer was forwarded");
    assert_eq!(seen[1].body, b"hello");
    assert_eq!(seen[2].target, "/public/v6");
    assert_eq!(seen[2].header("host"), ["[::1]:8080"]);
}

/// Head limits: Envoy's `max_headers_count` (100, `Host` included) and the head size.
#[tokio::test]
async fn many_small_headers_and_long_lines() {
    let s = suite().await;
    let headers = |n: usize| -> String { (0..n).map(|i| format!("X-{i}: v\r\n")).collect() };
    let mut c = RawConn::connect(s.proxy).await;
    c.send(
        format!(
            "GET /public/many HTTP/1.1\r\nHost: echo\r\n{}\r\n",
            headers(99)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let mut c = RawConn::connect(s.proxy).await;
    c.send(
        format!(
            "GET /private HTTP/1.1\r\nHost: echo\r\n{}\r\n",
            headers(100)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.response().await.unwrap().status, 431);
    assert!(c.closed().await);
    let mut c = RawConn::connect(s.proxy).await;
    let long = format!(
        "GET /public/{} HTTP/1.1\r\nHost: echo\r\n\r\n",
        "a".repeat(70_000)
    );
    c.send(long.as_bytes()).await;
    assert_eq!(c.response().await.unwrap().status, 431);
    let seen = s.backend.lock().unwrap().clone();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/public/many"]);
}

// --- Upstreams that misbehave. Each client connection has its own upstream connection, so a
// stray answer can only reach the client that caused it; these check it never reaches that
// client as the answer to its *next* request either.

/// What a scripted upstream writes for one request: pieces, each after a pause.
type Script = fn(method: &str, target: &str) -> Vec<(u64, Vec<u8>)>;

/// A pause that means: close the connection without answering.
const CLOSE: u64 = u64::MAX;

/// An upstream that reads request heads (never bodies) and answers each by `script`; the
/// request lines it read, in order.
async fn scripted_upstream(script: Script) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let line = head.lines().next().unwrap_or_default().to_string();
                    log.lock().unwrap().push(line.clone());
                    let mut parts = line.split(' ');
                    let (m, t) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    for (pause, bytes) in script(m, t) {
                        if pause == CLOSE {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                        if stream.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, log)
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A `HEAD` answered with a body, then a `GET` on the same client connection: the `GET` gets
/// its own answer, not the stray body read as an answer head (Envoy: a `HEAD` answer ends at
/// its head; bytes after it on that upstream connection close it).
#[tokio::test]
async fn head_answered_with_a_body_does_not_shift_the_next_answer() {
    fn script(m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if m == "HEAD" {
            // The stray body is an answer head of its own, in the same write.
            let mut a = b"HTTP/1.1 200 OK\r\ncontent-length: 41\r\n\r\n".to_vec();
            a.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTRAY");
            vec![(0, a)]
        } else {
            vec![(0, ok(&format!("get {t}")))]
        }
    }
    let (up, log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"HEAD /status HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    let head = c.head_response().await.unwrap();
    assert_eq!(head.status, 200);
    c.send(b"GET /public/b HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    let get = c.response().await.unwrap();
    assert_eq!(
        (get.status, get.body.as_slice()),
        (200, &b"get /public/b"[..])
    );
    assert_eq!(
        log.lock().unwrap().clone(),
        ["HEAD /status HTTP/1.1", "GET /public/b HTTP/1.1"]
    );
}

/// The same with the stray bytes arriving after the answer, before the next request.
#[tokio::test]
async fn late_stray_bytes_after_a_head_answer_are_not_an_answer() {
    fn script(m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if m == "HEAD" {
            vec![
                (0, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec()),
                (50, ok("STRAY")),
            ]
        } else {
            vec![(0, ok(&format!("get {t}")))]
        }
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"HEAD /status HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert_eq!(c.head_response().await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(250)).await;
    c.send(b"GET /public/b HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    let get = c.response().await.unwrap();
    assert_eq!(
        (get.status, get.body.as_slice()),
        (200, &b"get /public/b"[..])
    );
}

/// An upstream that answers one request twice (response splitting): the second answer is
/// never delivered as the answer to the client's next request, whether it came with the
/// first or after it.
#[tokio::test]
async fn a_second_answer_to_one_request_is_never_the_next_answer() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if t == "/public/split" {
            let mut a = ok("first");
            a.extend_from_slice(&ok("STRAY"));
            vec![(0, a)]
        } else if t == "/public/late" {
            vec![(0, ok("first")), (50, ok("STRAY"))]
        } else {
            vec![(0, ok(&format!("own {t}")))]
        }
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    for first in ["/public/split", "/public/late"] {
        let mut c = RawConn::connect(proxy).await;
        c.send(format!("GET {first} HTTP/1.1\r\nHost: echo\r\n\r\n").as_bytes())
            .await;
        let a = c.response().await.unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"first"[..]));
        tokio::time::sleep(Duration::from_millis(250)).await;
        for next in ["/public/n1", "/public/n2"] {
            c.send(format!("GET {next} HTTP/1.1\r\nHost: echo\r\n\r\n").as_bytes())
                .await;
            let b = c.response().await.unwrap();
            assert_eq!(
                (b.status, String::from_utf8_lossy(&b.body).into_owned()),
                (200, format!("own {next}")),
                "after {first}"
            );
        }
    }
}

/// The same with the client's next request pipelined behind the first: it is answered by
/// its own answer.
#[tokio::test]
async fn a_split_answer_does_not_answer_a_pipelined_request() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if t == "/public/split" {
            let mut a = ok("first");
            a.extend_from_slice(&ok("STRAY"));
            vec![(0, a)]
        } else {
            vec![(0, ok(&format!("own {t}")))]
        }
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"GET /public/split HTTP/1.1\r\nHost: echo\r\n\r\nGET /public/next HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().body, b"first");
    assert_eq!(c.response().await.unwrap().body, b"own /public/next");
}

/// An upstream that answers as soon as it has the head, before the body: the client gets that
/// answer and its connection closes, so the rest of its body (a request here) is never read
/// as a request (Envoy: an answer before the request ended closes the HTTP/1 connection).
#[tokio::test]
async fn an_early_answer_closes_before_the_rest_of_the_body() {
    fn script(_m: &str, _t: &str) -> Vec<(u64, Vec<u8>)> {
        vec![(
            0,
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n".to_vec(),
        )]
    }
    let (up, log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 100\r\n\r\n0123456789")
        .await;
    assert_eq!(c.response().await.unwrap().status, 413);
    // The rest of the body: 90 bytes that start like a request.
    let rest = format!(
        "GET /private HTTP/1.1\r\nHost: echo\r\n\r\n{}",
        "x".repeat(90 - 37)
    );
    let _ = c.stream.write_all(rest.as_bytes()).await;
    assert!(c.closed().await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.lock().unwrap().clone(), ["POST /upload HTTP/1.1"]);
}

/// Interim answers pass through in order and do not count as the answer; the connection
/// stays in step for the next request.
#[tokio::test]
async fn interim_answers_pass_and_keep_the_connection_in_step() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if t == "/public/early" {
            vec![
                (
                    0,
                    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n".to_vec(),
                ),
                (10, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
                (10, ok("final")),
            ]
        } else {
            vec![(0, ok(&format!("own {t}")))]
        }
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"GET /public/early HTTP/1.1\r\nHost: echo\r\n\r\nGET /public/next HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    let statuses = [
        c.response().await.unwrap(),
        c.response().await.unwrap(),
        c.response().await.unwrap(),
    ];
    assert_eq!(
        statuses.iter().map(|r| r.status).collect::<Vec<_>>(),
        [103, 100, 200]
    );
    assert_eq!(statuses[2].body, b"final");
    assert_eq!(c.response().await.unwrap().body, b"own /public/next");
}

/// `Expect: 100-continue`: the proxy answers `100` itself, so the upstream's own `100` is
/// dropped (Envoy does the same): the client reads one `100`, then the answer.
#[tokio::test]
async fn one_100_continue_when_the_proxy_answered_the_expectation() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if t == "/upload" {
            vec![
                (0, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
                (10, ok("stored")),
            ]
        } else {
            vec![(0, ok(&format!("own {t}")))]
        }
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await.unwrap().status, 100);
    c.send(b"body").await;
    let r = c.response().await.unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"stored"[..]));
    c.send(b"GET /public/next HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().body, b"own /public/next");
}

/// An upstream that switches protocols unasked: `502`, the connection closes, and nothing
/// the upstream sends after its `101` reaches the client. (Envoy: a `101` to a request that
/// did not ask for an upgrade is a protocol error on the upstream connection: `502`.)
#[tokio::test]
async fn an_unasked_protocol_switch_is_a_bad_gateway() {
    fn script(_m: &str, _t: &str) -> Vec<(u64, Vec<u8>)> {
        vec![(
            0,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nTUNNEL".to_vec(),
        )]
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"GET /public/x HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\n\r\n")
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 502);
    assert!(c.response().await.is_none(), "something followed the 502");
}

/// `204` and `304` answers have no body whatever their framing says: bytes after them end
/// that upstream connection instead of becoming the next answer.
#[tokio::test]
async fn bodyless_statuses_with_a_body_do_not_shift_the_next_answer() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        match t {
            "/public/204" => vec![(
                0,
                b"HTTP/1.1 204 No Content\r\ncontent-length: 38\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                    .to_vec(),
            )],
            "/public/304" => vec![(
                0,
                b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n5\r\nSTRAY\r\n0\r\n\r\n"
                    .to_vec(),
            )],
            _ => vec![(0, ok(&format!("own {t}")))],
        }
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    for (first, status) in [("/public/204", 204), ("/public/304", 304)] {
        c.send(format!("GET {first} HTTP/1.1\r\nHost: echo\r\n\r\nGET /public/next HTTP/1.1\r\nHost: echo\r\n\r\n").as_bytes())
            .await;
        let a = c.head_response().await.unwrap();
        assert_eq!(a.status, status);
        let b = c.response().await.unwrap();
        assert_eq!(
            (b.status, b.body.as_slice()),
            (200, &b"own /public/next"[..]),
            "after {first}"
        );
    }
}

/// Many clients at once, each pipelining allowed and denied requests on one keep-alive
/// connection: each gets exactly its own answers, in order, and the backend sees exactly
/// the allowed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelined_clients_get_only_their_own_answers() {
    let s = suite().await;
    const CLIENTS: usize = 24;
    const REQUESTS: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let proxy = s.proxy;
        tasks.spawn(async move {
            let mut c = RawConn::connect(proxy).await;
            let mut bytes = Vec::new();
            for r in 0..REQUESTS {
                let tag = format!("k{client}r{r}");
                let req = match r % 4 {
                    0 => format!("GET /public/{tag} HTTP/1.1\r\nHost: echo\r\nx-case: {tag}\r\n\r\n"),
                    1 => format!("POST /private HTTP/1.1\r\nHost: echo\r\nx-case: {tag}\r\nContent-Length: 24\r\n\r\nGET /public/x HTTP/1.1\r\n"),
                    2 => format!("POST /upload HTTP/1.1\r\nHost: echo\r\nx-case: {tag}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{:03}\r\n0\r\n\r\n", client),
                    _ => format!("HEAD /status HTTP/1.1\r\nHost: echo\r\nx-case: {tag}\r\n\r\n"),
                };
                bytes.extend_from_slice(req.as_bytes());
            }
            c.send(&bytes).await;
            let mut got = Vec::new();
            for r in 0..REQUESTS {
                let resp = if r % 4 == 3 {
                    c.head_response().await
                } else {
                    c.response().await
                };
                let resp = resp.unwrap_or_else(|| panic!("client {client}: no answer {r}"));
                got.push((resp.status, resp.header("x-case").map(str::to_string)));
            }
            (client, got)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (client, got) = r.unwrap();
        for (r, (status, tag)) in got.iter().enumerate() {
            let want_tag = format!("k{client}r{r}");
            match r % 4 {
                1 => assert_eq!(
                    (*status, tag.as_deref()),
                    (403, None),
                    "client {client} {r}"
                ),
                _ => assert_eq!(
                    (*status, tag.as_deref()),
                    (200, Some(want_tag.as_str())),
                    "client {client} {r}"
                ),
            }
        }
    }
    let seen = s.backend.lock().unwrap().clone();
    assert_eq!(seen.len(), CLIENTS * REQUESTS * 3 / 4);
    for r in &seen {
        let tag = r.header("x-case")[0];
        assert!(!tag.is_empty());
        assert_ne!(r.target, "/private");
        assert_ne!(r.target, "/public/x", "a denied body was read as a request");
        if r.method == "POST" {
            let client: usize = tag[1..].split('r').next().unwrap().parse().unwrap();
            assert_eq!(r.body, format!("{client:03}").as_bytes(), "{tag}");
        }
    }
}

/// A request that asked to close is the last one read: a request pipelined behind it is
/// never forwarded (Envoy stops reading an HTTP/1 connection once it is to close). The same
/// after a rejection: nothing after a `307` or a `400` is read.
#[tokio::test]
async fn nothing_after_a_closing_or_rejected_request_is_read() {
    let s = suite().await;
    for (first, status) in [
        (
            "GET /public/a HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            "GET /public%2f..%2fprivate HTTP/1.1\r\nHost: echo\r\n\r\n",
            307,
        ),
        (
            "GET /public/a HTTP/1.1\r\nHost: echo\r\nX: a\0\r\n\r\n",
            400,
        ),
        (
            "POST /private HTTP/1.1\r\nHost: echo\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            403,
        ),
    ] {
        let mut c = RawConn::connect(s.proxy).await;
        c.send(format!("{first}GET /public/pipelined HTTP/1.1\r\nHost: echo\r\n\r\n").as_bytes())
            .await;
        assert_eq!(c.response().await.unwrap().status, status, "{first:?}");
        assert!(c.response().await.is_none(), "{first:?}: a second answer");
    }
    let seen = s.backend.lock().unwrap().clone();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/public/a"]);
}

/// An allowed `Expect: 100-continue` request whose client sends the body at once anyway,
/// with a denied request behind it: `100`, the answer, then `403`; the body is the body.
#[tokio::test]
async fn expect_continue_with_the_body_already_sent_stays_in_step() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nExpect: 100-continue\r\nContent-Length: 37\r\n\r\nGET /private HTTP/1.1\r\nHost: echo\r\n\r\nGET /private HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    let statuses = [
        c.response().await.unwrap().status,
        c.response().await.unwrap().status,
        c.response().await.unwrap().status,
    ];
    assert_eq!(statuses, [100, 200, 403]);
    let seen = s.backend.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/upload");
    assert_eq!(seen[0].body, b"GET /private HTTP/1.1\r\nHost: echo\r\n\r\n");
}

/// Pipelined requests dripped one byte at a time: every boundary (head, length body, chunk
/// framing, trailer) split everywhere still gives the same decisions.
#[tokio::test]
async fn a_byte_by_byte_pipeline_gives_the_same_decisions() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    let stream = b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhelloPOST /private HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nX-T: 1\r\n\r\nPOST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /public/last HTTP/1.1\r\nHost: echo\r\n\r\n";
    for b in stream {
        c.send(&[*b]).await;
    }
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.response().await.unwrap().status);
    }
    assert_eq!(statuses, [200, 403, 200, 200]);
    let seen = s.backend.lock().unwrap().clone();
    let got: Vec<(&str, &[u8])> = seen
        .iter()
        .map(|r| (r.target.as_str(), r.body.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            ("/upload", &b"hello"[..]),
            ("/upload", &b"abc"[..]),
            ("/public/last", &b""[..])
        ]
    );
}

/// Answers the proxy cannot frame: a head over the limit, an unparseable one, conflicting
/// lengths, a status that is not three digits from 100. `502`, the connection closes, and
/// none of the upstream's bytes reach the client (Envoy: an upstream codec error before any
/// byte was sent downstream is a local `502`).
#[tokio::test]
async fn unframeable_answers_are_bad_gateways() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        let answer = match t {
            "/public/huge" => {
                format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)).into_bytes()
            }
            "/public/fold" => {
                b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 0\r\n\r\n".to_vec()
            }
            "/public/lengths" => {
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab".to_vec()
            }
            "/public/status" => b"HTTP/1.1 099 Odd\r\ncontent-length: 2\r\n\r\nab".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nab".to_vec(),
        };
        vec![(0, answer)]
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    for target in [
        "/public/huge",
        "/public/fold",
        "/public/lengths",
        "/public/status",
        "/public/plus",
    ] {
        let mut c = RawConn::connect(proxy).await;
        c.send(format!("GET {target} HTTP/1.1\r\nHost: echo\r\n\r\n").as_bytes())
            .await;
        let r = c.response().await.unwrap();
        assert_eq!(r.status, 502, "{target}");
        assert!(r.header("x-big").is_none() && r.header("x-a").is_none());
        assert!(c.response().await.is_none(), "{target}: more after the 502");
    }
}

/// A reused upstream connection that closes after reading a request, without answering:
/// a `GET` is sent again on a fresh connection (the upstream may have closed an idle
/// connection as the request crossed it), but a `POST` is not: RFC 9110 §9.2.2 forbids a
/// proxy to retry a non-idempotent request, which the upstream may have executed. Envoy
/// (no retry policy under Cilium) retries neither and answers `503`.
#[tokio::test]
async fn a_non_idempotent_request_is_never_sent_twice() {
    fn script(m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        if t == "/upload" || t == "/public/gone" {
            vec![(CLOSE, Vec::new())]
        } else {
            vec![(0, ok(&format!("own {m} {t}")))]
        }
    }
    let (up, log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"GET /public/a HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 503);
    let mut c = RawConn::connect(proxy).await;
    c.send(b"GET /public/a HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(b"GET /public/gone HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 503);
    assert_eq!(
        log.lock().unwrap().clone(),
        [
            "GET /public/a HTTP/1.1",
            "POST /upload HTTP/1.1",
            "GET /public/a HTTP/1.1",
            "GET /public/gone HTTP/1.1",
            "GET /public/gone HTTP/1.1",
        ]
    );
}

/// A backend that ignores `Content-Length` on a `GET` (the "CL.0" desync) reads the body as a
/// second request: that is the backend's parse, which no proxy can see (Envoy forwards the
/// same bytes). What the proxy does guarantee: the answer to the hidden request never reaches
/// the client, neither as an extra answer nor as the answer to its next request, because the
/// upstream connection that carried unasked-for bytes is not reused.
#[tokio::test]
async fn a_hidden_answer_from_a_body_misreading_backend_is_never_delivered() {
    fn script(m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        vec![(0, ok(&format!("own {m} {t}")))]
    }
    let (up, log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut c = RawConn::connect(proxy).await;
    c.send(b"GET /public/x HTTP/1.1\r\nHost: echo\r\nContent-Length: 37\r\n\r\nGET /private HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().body, b"own GET /public/x");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send(b"GET /public/y HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().body, b"own GET /public/y");
    // The backend did read the body as a request (its own misparse).
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .any(|l| l == "GET /private HTTP/1.1")
    );
}

/// Many clients at once against an upstream that answers every `/public/split` twice: each
/// client gets exactly its own answers (one upstream connection per client connection, and
/// one that carried an unasked answer is not reused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_never_get_a_stray_answer() {
    fn script(_m: &str, t: &str) -> Vec<(u64, Vec<u8>)> {
        let mut a = ok(&format!("own {t}"));
        if t.starts_with("/public/split") {
            a.extend_from_slice(&ok("STRAY"));
        }
        vec![(0, a)]
    }
    let (up, _log) = scripted_upstream(script).await;
    let proxy = proxy_to(up).await;
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..24 {
        tasks.spawn(async move {
            let mut c = RawConn::connect(proxy).await;
            let mut bodies = Vec::new();
            for r in 0..6 {
                let target = if r % 2 == 0 {
                    format!("/public/split/{client}/{r}")
                } else {
                    format!("/public/own/{client}/{r}")
                };
                c.send(format!("GET {target} HTTP/1.1\r\nHost: echo\r\n\r\n").as_bytes())
                    .await;
                let resp = c.response().await.expect("an answer");
                bodies.push((target, String::from_utf8_lossy(&resp.body).into_owned()));
            }
            bodies
        });
    }
    while let Some(r) = tasks.join_next().await {
        for (target, body) in r.unwrap() {
            assert_eq!(body, format!("own {target}"));
        }
    }
}
