//! The HTTP proxy against a real hyper server, all on 127.0.0.1. The scenario's addresses
//! (client 10.244.1.10 → echo 10.244.1.20:8080) are mapped onto loopback by the flow hook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::policy::{DenialKind, ProxyPolicy};
use crate::testutil::*;
use std::net::SocketAddr;
use tokio::sync::mpsc::UnboundedReceiver;

struct Proxy {
    addr: SocketAddr,
    policy: watch::Sender<Arc<ProxyPolicy>>,
}

/// Starts a proxy whose every connection is `src_ip` → echo:8080, forwarded to `upstream`.
async fn start(src_ip: &'static str, upstream: SocketAddr, config: HttpProxyConfig) -> Proxy {
    let (addr, policy) = start_http_proxy(policy(), src_ip, upstream, config).await;
    Proxy { addr, policy }
}

async fn start_with_echo() -> (Proxy, UnboundedReceiver<Seen>) {
    let (echo, seen) = echo_server().await;
    (start(CLIENT, echo, HttpProxyConfig::default()).await, seen)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: echo:8080\r\nX-Test: kept\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn allowed_get_reaches_the_upstream_unchanged() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/public/index.html?x=1")).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"echo GET /public/index.html?x=1");
    let s = seen.recv().await.unwrap();
    assert_eq!(s.method, "GET");
    assert_eq!(s.target, "/public/index.html?x=1");
    assert_eq!(s.header("x-test"), ["kept"]);
    assert_eq!(s.header("host"), ["echo:8080"]);
}

#[tokio::test]
async fn post_body_is_forwarded() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 11\r\n\r\nhello world")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let s = seen.recv().await.unwrap();
    assert_eq!(s.method, "POST");
    assert_eq!(&s.body[..], b"hello world");

    // Chunked request bodies too.
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n3\r\nfgh\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(&seen.recv().await.unwrap().body[..], b"abcdefgh");
}

#[tokio::test]
async fn unlisted_path_gets_403_with_the_exact_body() {
    let (echo, mut seen) = echo_server().await;
    let (hook, denials) = denial_log();
    let config = HttpProxyConfig {
        on_denial: Some(hook),
        ..HttpProxyConfig::default()
    };
    let proxy = start(CLIENT, echo, config).await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/private")).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.body, b"Access denied\r\n");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("content-length"), Some("15"));
    // The path is anchored: `/public.*` does not allow a method other than GET either.
    c.send(b"DELETE /public HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 403);
    assert!(
        seen.try_recv().is_err(),
        "a denied request reached the server"
    );

    let denials = denials.lock().unwrap();
    assert_eq!(denials.len(), 2);
    let d = &denials[0];
    assert_eq!(d.kind, DenialKind::Http403);
    assert_eq!(d.request, "GET /private");
    assert_eq!(d.direction, membrane_policy::model::Direction::Egress);
    assert_eq!(d.src.ip(), ip(CLIENT));
    assert_eq!(d.dst, sock(ECHO, 8080));
    assert_eq!(d.policies().len(), 1);
    assert_eq!(d.policies()[0].name, "client-l7");
    assert!(
        d.rules[0].to_string().contains("egress[0]"),
        "rule: {}",
        d.rules[0]
    );
}

#[tokio::test]
async fn keep_alive_second_request_denied_third_allowed() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/public/a")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(&get("/admin")).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.body, b"Access denied\r\n");
    // Same connection, still open.
    c.send(&get("/public/b")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(seen.recv().await.unwrap().target, "/public/a");
    assert_eq!(seen.recv().await.unwrap().target, "/public/b");
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn pipelined_requests_are_decided_one_by_one() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    let mut batch = get("/public/1");
    batch.extend(get("/secret"));
    batch.extend(get("/public/2"));
    c.send(&batch).await;
    let statuses = [
        c.response().await.unwrap(),
        c.response().await.unwrap(),
        c.response().await.unwrap(),
    ]
    .map(|r| r.status);
    assert_eq!(statuses, [200, 403, 200]);
    assert_eq!(seen.recv().await.unwrap().target, "/public/1");
    assert_eq!(seen.recv().await.unwrap().target, "/public/2");
}

#[tokio::test]
async fn header_matches_replace_delete_and_add() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(b"POST /auth HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer wrong\r\nX-Debug: off\r\nX-Tag: mine\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let s = seen.recv().await.unwrap();
    assert_eq!(s.header("authorization"), ["Bearer 123456"]);
    assert!(s.header("x-debug").is_empty(), "{:?}", s.headers);
    assert_eq!(s.header("x-tag"), ["mine", "added"]);

    // Missing headers: REPLACE sets it, ADD adds it, DELETE has nothing to remove.
    c.send(b"POST /auth HTTP/1.1\r\nHost: echo\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let s = seen.recv().await.unwrap();
    assert_eq!(s.header("authorization"), ["Bearer 123456"]);
    assert_eq!(s.header("x-tag"), ["added"]);

    // Matching values are left alone.
    c.send(b"POST /auth HTTP/1.1\r\nHost: echo\r\nAuthorization: Bearer 123456\r\nX-Debug: on\r\nX-Tag: added\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let s = seen.recv().await.unwrap();
    assert_eq!(s.header("authorization"), ["Bearer 123456"]);
    assert_eq!(s.header("x-debug"), ["on"]);
    assert_eq!(s.header("x-tag"), ["added"]);
}

#[tokio::test]
async fn policy_swap_applies_to_the_next_request_without_restart() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/private")).await;
    assert_eq!(c.response().await.unwrap().status, 403);

    let swapped = policy_with("- {method: GET, path: /private}");
    proxy.policy.send(Arc::new(swapped)).unwrap();
    // The same keep-alive connection sees the new policy.
    c.send(&get("/private")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(seen.recv().await.unwrap().target, "/private");

    // And back.
    proxy.policy.send(Arc::new(policy())).unwrap();
    let mut c2 = RawConn::connect(proxy.addr).await;
    c2.send(&get("/private")).await;
    assert_eq!(c2.response().await.unwrap().status, 403);
}

#[tokio::test]
async fn malformed_request_gets_400_and_the_connection_closes() {
    let (proxy, mut seen) = start_with_echo().await;
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /public HTTP/1.1\r\nHost echo\r\n\r\n",
        b"GET /public HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"GET /public HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ] {
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(garbage).await;
        let r = c
            .response()
            .await
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(garbage)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(garbage));
        assert!(c.closed().await);
    }
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn oversized_headers_get_431_and_the_connection_closes() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    let big = "a".repeat(70 * 1024);
    let req = format!("GET /public HTTP/1.1\r\nHost: echo\r\nX-Big: {big}\r\n\r\n");
    c.send(req.as_bytes()).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 431);
    assert!(c.closed().await);
    assert!(seen.try_recv().is_err());
}

#[tokio::test]
async fn upstream_down_gets_503() {
    let upstream = dead_addr().await;
    let proxy = start(CLIENT, upstream, HttpProxyConfig::default()).await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/public")).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body, UPSTREAM_UNAVAILABLE_BODY.as_bytes());
    // A denied request is still answered 403: the proxy decides before connecting.
    c.send(&get("/private")).await;
    assert_eq!(c.response().await.unwrap().status, 403);
}

#[tokio::test]
async fn l4_drop_by_the_destination_ingress_closes_without_answer() {
    // `other` has no egress policy; echo's ingress only admits `client` on 8080.
    let (echo, mut seen) = echo_server().await;
    let (hook, denials) = denial_log();
    let config = HttpProxyConfig {
        on_denial: Some(hook),
        ..HttpProxyConfig::default()
    };
    let proxy = start(OTHER, echo, config).await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/public")).await;
    assert!(c.response().await.is_none());
    assert!(seen.try_recv().is_err());
    let d = denials.lock().unwrap()[0].clone();
    assert_eq!(d.kind, DenialKind::Dropped);
    assert_eq!(d.direction, membrane_policy::model::Direction::Ingress);
    assert_eq!(d.reason, "default-deny");
}

#[tokio::test]
async fn upstream_keep_alive_is_reused_and_reconnected() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    for i in 0..5 {
        c.send(&get(&format!("/public/{i}"))).await;
        assert_eq!(c.response().await.unwrap().status, 200);
        assert_eq!(seen.recv().await.unwrap().target, format!("/public/{i}"));
    }
}

fn head_of(text: &str) -> RequestHead {
    match head::parse_request_head(text.as_bytes(), 65536) {
        Parsed::Request(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn policy_view_reads_authority_and_path() {
    let v = policy_view(&head_of(
        "GET http://api.example.com:8080/a/b?c=d HTTP/1.1\r\nhost: ignored\r\nx-a: 1\r\n\r\n",
    ));
    assert_eq!(v.method, "GET");
    assert_eq!(v.path, "/a/b?c=d");
    assert_eq!(v.host, "api.example.com:8080");
    let v = policy_view(&head_of("GET /x HTTP/1.1\r\nHost: echo:8080\r\n\r\n"));
    assert_eq!((v.path.as_str(), v.host.as_str()), ("/x", "echo:8080"));
    assert_eq!(v.headers, [("host".to_string(), "echo:8080".to_string())]);
}

/// A connection reuses one view: a request with fewer headers than the last leaves none of
/// the last one's behind, and repeated headers are joined where they first appear.
#[test]
fn reused_policy_view_equals_a_fresh_one() {
    let many = head_of(
        "GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-b: 2\r\nX-a: 3\r\nX-Long: aaaaaaaaaaaaaaaa\r\n\r\n",
    );
    let few = head_of("POST /b?q HTTP/1.1\r\nHost: other\r\nX-B: 9\r\n\r\n");
    let mut view = HttpRequest::default();
    for head in [&many, &few, &many, &few] {
        fill_policy_view(head, &mut view);
        let fresh = policy_view(head);
        assert_eq!(
            (&view.method, &view.path, &view.host, &view.headers),
            (&fresh.method, &fresh.path, &fresh.host, &fresh.headers)
        );
    }
    fill_policy_view(&many, &mut view);
    assert_eq!(
        view.headers,
        [
            ("host".to_string(), "h".to_string()),
            ("x-a".to_string(), "1,3".to_string()),
            ("x-b".to_string(), "2".to_string()),
            ("x-long".to_string(), "aaaaaaaaaaaaaaaa".to_string()),
        ]
    );
}

#[test]
fn upstream_head_is_what_policy_saw() {
    let h = head_of(
        "POST http://h/a/../b HTTP/1.1\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(
        String::from_utf8(upstream_head(&h)).unwrap(),
        "POST /b HTTP/1.1\r\nhost: h\r\nX-End: 2\r\ntransfer-encoding: chunked\r\n\r\n"
    );
}

#[tokio::test]
async fn denied_request_with_a_body_keeps_the_connection_usable() {
    let (proxy, mut seen) = start_with_echo().await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(b"POST /nope HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response().await.unwrap().status, 403);
    c.send(&get("/public/after")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(seen.recv().await.unwrap().target, "/public/after");
}

/// `spoof_source`: the upstream connection is bound to the client's address with
/// `IP_TRANSPARENT`. On loopback the client is 127.0.0.1, so the policy is told that
/// 127.0.0.1 is the scenario's client. Needs `CAP_NET_ADMIN`; skipped without it.
#[tokio::test]
async fn spoofed_source_connects_upstream_from_the_client_address() {
    let probe = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Err(e) = probe.set_ip_transparent_v4(true) {
        skip_without_privilege(
            "spoofed_source_connects_upstream_from_the_client_address",
            &e,
        );
        return;
    }
    let mut p = policy();
    let client = p.endpoints()[&ip(CLIENT)].clone();
    p.set_identity(ip("127.0.0.1"), p.identity_of(ip(CLIENT)));
    p.set_endpoint(ip("127.0.0.1"), client);

    let (echo, mut seen) = echo_server().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_tx, rx) = watch::channel(Arc::new(p));
    let flow_of = move |s: &TcpStream| -> io::Result<Flow> {
        Ok(Flow {
            src: s.peer_addr()?,
            dst: sock(ECHO, 8080),
            upstream: echo,
        })
    };
    let config = HttpProxyConfig {
        spoof_source: true,
        ..HttpProxyConfig::default()
    };
    tokio::spawn(serve_http(listener, rx, flow_of, config));
    let mut c = RawConn::connect(addr).await;
    c.send(&get("/public/spoofed")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(seen.recv().await.unwrap().target, "/public/spoofed");
    c.send(&get("/private")).await;
    assert_eq!(c.response().await.unwrap().status, 403);
}

/// Slowloris: a head sent a byte at a time never completes within the header timeout; the
/// client gets `408` and the connection is closed (its slot is not held forever), and
/// nothing reached the upstream.
#[tokio::test]
async fn slowloris_head_gets_408_and_the_connection_closes() {
    let (echo, mut seen) = echo_server().await;
    let config = HttpProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..HttpProxyConfig::default()
    };
    let proxy = start(CLIENT, echo, config).await;
    let mut c = RawConn::connect(proxy.addr).await;
    let started = std::time::Instant::now();
    let drip = b"GET /public HTTP/1.1\r\nHost: echo:8080\r\nX-Slow: ";
    for b in drip {
        // On a loaded machine the drip itself can outlast the timeout: a failed write then
        // means the proxy already gave up, which the answer below shows.
        if c.stream.write_all(&[*b]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Keep trickling well past the timeout: the deadline is for the whole head, not per byte
    // (a write may fail once the proxy has given up: that is the point).
    while started.elapsed() < Duration::from_millis(900) {
        if c.stream.write_all(b"a").await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answered = c.response().await;
    let r = answered.expect("a 408 answer");
    assert_eq!(r.status, 408);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed().await);
    assert!(seen.try_recv().is_err());
}

/// A keep-alive connection with no request in flight is closed after the idle timeout, and
/// without an answer (there is no request to answer).
#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (echo, mut seen) = echo_server().await;
    let config = HttpProxyConfig {
        idle_timeout: Duration::from_millis(300),
        ..HttpProxyConfig::default()
    };
    let proxy = start(CLIENT, echo, config).await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&get("/public/a")).await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert!(seen.recv().await.is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(c.closed().await, "idle connection still open");
}

/// A head that arrives slowly but completes within the header timeout is served: the
/// timeout bounds the head, it does not punish slow links.
#[tokio::test]
async fn slow_head_within_the_header_timeout_is_served() {
    let (echo, mut seen) = echo_server().await;
    let config = HttpProxyConfig {
        header_read_timeout: Duration::from_secs(5),
        ..HttpProxyConfig::default()
    };
    let proxy = start(CLIENT, echo, config).await;
    let mut c = RawConn::connect(proxy.addr).await;
    for chunk in get("/public/slow").chunks(7) {
        c.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(seen.recv().await.unwrap().target, "/public/slow");
}

/// Allowed requests are reported (flow events): what was forwarded, to which host, the
/// answer's status and the rules that allowed it; denied ones are not reported as forwarded.
#[tokio::test]
async fn forwarded_requests_reach_the_forward_hook_with_host_status_and_rules() {
    let (echo, _seen) = echo_server().await;
    let log: Arc<std::sync::Mutex<Vec<Forwarded>>> = Arc::default();
    let sink = log.clone();
    let config = HttpProxyConfig {
        on_forward: Some(Arc::new(move |f: &Forwarded| {
            sink.lock().unwrap().push(f.clone());
        })),
        ..HttpProxyConfig::default()
    };
    let proxy = start(CLIENT, echo, config).await;
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(b"GET /public/../public/a HTTP/1.1\r\nHost: echo:8080\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send(&get("/private")).await;
    assert_eq!(c.response().await.unwrap().status, 403);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    let f = &log[0];
    assert_eq!(f.request, "GET /public/a");
    assert_eq!(f.host, "echo:8080");
    assert_eq!(f.status, Some(200));
    assert!(!f.rules.is_empty());
    assert_eq!(f.dst, sock(ECHO, 8080));
}
