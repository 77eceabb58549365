//! The SNI parser (hand-built ClientHellos, properties) and the TLS proxy on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::policy::{DenialKind, ProxyPolicy};
use crate::testutil::*;
use proptest::prelude::*;
use std::sync::atomic::Ordering;

/// A TLS 1.3-style ClientHello body's handshake message, with an optional server name.
fn handshake(sni: Option<&str>) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend([7u8; 32]); // random
    body.push(32);
    body.extend([1u8; 32]); // session id
    body.extend(4u16.to_be_bytes());
    body.extend([0x13, 0x01, 0x13, 0x02]); // cipher suites
    body.extend([1, 0]); // compression: null
    let mut exts = Vec::new();
    // supported_versions: TLS 1.3
    exts.extend(43u16.to_be_bytes());
    exts.extend(3u16.to_be_bytes());
    exts.extend([2, 3, 4]);
    if let Some(name) = sni {
        let n = name.as_bytes();
        let mut list = vec![0u8];
        list.extend((n.len() as u16).to_be_bytes());
        list.extend(n);
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        exts.extend(0u16.to_be_bytes());
        exts.extend((data.len() as u16).to_be_bytes());
        exts.extend(data);
    }
    // ALPN h2, after the server name.
    exts.extend(16u16.to_be_bytes());
    exts.extend(5u16.to_be_bytes());
    exts.extend([0, 3, 2, b'h', b'2']);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let mut hs = vec![1u8];
    hs.extend(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend(body);
    hs
}

/// The handshake message in TLS records of at most `max` payload bytes.
fn records(hs: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in hs.chunks(max) {
        out.extend([22, 3, 1]);
        out.extend((chunk.len() as u16).to_be_bytes());
        out.extend(chunk);
    }
    out
}

fn client_hello(sni: Option<&str>) -> Vec<u8> {
    records(&handshake(sni), 16384)
}

#[test]
fn reads_the_server_name() {
    assert_eq!(
        parse_client_hello_sni(&client_hello(Some("api.example.com"))),
        Ok(Some("api.example.com".to_string()))
    );
    assert_eq!(parse_client_hello_sni(&client_hello(None)), Ok(None));
}

#[test]
fn reads_a_hello_split_over_records_and_ignores_what_follows() {
    let mut bytes = records(&handshake(Some("one.one.one.one")), 17);
    bytes.extend(b"\x17\x03\x03\x00\x05hello"); // application data after it
    assert_eq!(
        parse_client_hello_sni(&bytes),
        Ok(Some("one.one.one.one".to_string()))
    );
}

#[test]
fn every_strict_prefix_is_incomplete() {
    for max in [16384, 40, 1] {
        let full = records(&handshake(Some("api.example.com")), max);
        for cut in 0..full.len() {
            assert_eq!(
                parse_client_hello_sni(&full[..cut]),
                Err(ClientHelloError::Incomplete),
                "record size {max}, cut at {cut}"
            );
        }
    }
}

#[test]
fn rejects_what_is_not_a_client_hello() {
    assert_eq!(
        parse_client_hello_sni(b"GET / HTTP/1.1\r\n\r\n"),
        Err(ClientHelloError::NotClientHello)
    );
    // A ServerHello (type 2).
    let mut hs = handshake(Some("x"));
    hs[0] = 2;
    assert_eq!(
        parse_client_hello_sni(&records(&hs, 16384)),
        Err(ClientHelloError::NotClientHello)
    );
    // An extension longer than the list.
    let mut hs = handshake(Some("api.example.com"));
    let n = hs.len();
    hs[n - 7] = 0xff; // the ALPN extension's length
    assert!(matches!(
        parse_client_hello_sni(&records(&hs, 16384)),
        Err(ClientHelloError::Malformed(_))
    ));
    // A zero-length record.
    assert!(matches!(
        parse_client_hello_sni(&[22, 3, 1, 0, 0]),
        Err(ClientHelloError::Malformed(_))
    ));
}

proptest! {
    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_client_hello_sni(&bytes);
        let mut framed = vec![22, 3, 1];
        framed.extend(((bytes.len() + 4) as u16).to_be_bytes());
        framed.push(1);
        framed.extend(&(bytes.len() as u32).to_be_bytes()[1..]);
        framed.extend(&bytes);
        let _ = parse_client_hello_sni(&framed);
    }

    #[test]
    fn never_panics_on_a_mutated_hello(
        name in "[a-z0-9.-]{1,40}",
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        record in 1usize..200,
    ) {
        let mut bytes = records(&handshake(Some(&name)), record);
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        let cut = cut % (bytes.len() + 1);
        let _ = parse_client_hello_sni(&bytes[..cut]);
    }

    #[test]
    fn truncated_hellos_are_incomplete(name in "[a-z0-9.-]{1,60}", cut in any::<usize>(), record in 1usize..300) {
        let bytes = records(&handshake(Some(&name)), record);
        let cut = cut % bytes.len();
        prop_assert_eq!(parse_client_hello_sni(&bytes[..cut]), Err(ClientHelloError::Incomplete));
        prop_assert_eq!(parse_client_hello_sni(&bytes), Ok(Some(name)));
    }
}

async fn start(
    upstream: std::net::SocketAddr,
    hook: crate::policy::DenialHook,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(Arc::new(policy()));
    std::mem::forget(tx);
    let flow_of = move |s: &TcpStream| -> io::Result<Flow> {
        Ok(Flow {
            src: sock(CLIENT, s.peer_addr()?.port()),
            dst: sock(API, 443),
            upstream,
        })
    };
    let config = TlsProxyConfig {
        on_denial: Some(hook),
        ..TlsProxyConfig::default()
    };
    tokio::spawn(serve_tls(listener, rx, flow_of, config));
    addr
}

#[tokio::test]
async fn allowed_server_name_is_spliced_both_ways() {
    let (echo, conns) = tcp_echo_server().await;
    let (hook, denials) = denial_log();
    let proxy = start(echo, hook).await;
    let mut c = TcpStream::connect(proxy).await.unwrap();
    // The hello in two writes, then application bytes.
    let hello = client_hello(Some("API.example.com"));
    c.write_all(&hello[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.write_all(&hello[10..]).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut back = vec![0u8; hello.len() + 4];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back[..hello.len()], &hello[..]);
    assert_eq!(&back[hello.len()..], b"ping");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert!(denials.lock().unwrap().is_empty());
}

#[tokio::test]
async fn other_server_name_closes_the_connection() {
    let (echo, conns) = tcp_echo_server().await;
    let (hook, denials) = denial_log();
    let proxy = start(echo, hook).await;
    for hello in [client_hello(Some("evil.test")), client_hello(None)] {
        let mut c = TcpStream::connect(proxy).await.unwrap();
        c.write_all(&hello).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the proxy answered a denied hello");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 0);
    let denials = denials.lock().unwrap();
    assert_eq!(denials.len(), 2);
    assert_eq!(denials[0].kind, DenialKind::TlsDenied);
    assert_eq!(denials[0].request, "TLS SNI `evil.test`");
    assert_eq!(denials[0].policies()[0].name, "client-l7");
}

#[test]
fn engine_decides_sni_through_the_snapshot() {
    let p: ProxyPolicy = policy();
    let (src, dst) = (sock(CLIENT, 1234), sock(API, 443));
    assert!(p.decide_tls(src, dst, "api.example.com").is_allowed());
    assert!(!p.decide_tls(src, dst, "sub.api.example.com").is_allowed());
    assert!(!p.decide_tls(src, dst, "").is_allowed());
}
