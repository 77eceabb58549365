//! The evasion suite: requests that try to reach what policy denies by spelling a path, a
//! host or a header differently, or by framing tricks, sent as raw bytes through the real
//! proxy to a backend that records what it received (parsed by hand, independently of the
//! proxy). For each: the status Envoy (as Cilium configures it) answers, and exactly what the
//! backend saw. Sources: Envoy's and Cilium's advisories (CVE-2019-9900/9901/18802,
//! CVE-2020-8595, CVE-2021-29492/31920/32779/32777, CVE-2023-27487, CVE-2024-23326,
//! CVE-2026-73551) and Envoy's own normalization tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::testutil::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// The client's HTTP rules beyond the scenario's (`GET /public.*`, `POST /upload`, …).
const EXTRA_RULES: &str = SUITE_RULES;

/// One attempt: raw bytes, Envoy's status, and the target the backend must see (`None`:
/// nothing may reach it).
struct Case {
    name: &'static str,
    request: String,
    status: u16,
    reaches: Option<&'static str>,
}

fn case(name: &'static str, request: &str, status: u16, reaches: Option<&'static str>) -> Case {
    Case {
        name,
        request: request.to_string(),
        status,
        reaches,
    }
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: echo\r\n\r\n")
}

fn cases() -> Vec<Case> {
    vec![
        // Dot segments in every spelling (CVE-2019-9901).
        case("dotdot", &get("/public/../private"), 403, None),
        case("dot-dotdot", &get("/public/./../private"), 403, None),
        case("escaped dotdot", &get("/public/%2e%2e/private"), 403, None),
        case(
            "upper escaped dotdot",
            &get("/public/%2E%2E/private"),
            403,
            None,
        ),
        case("dot escaped dot", &get("/public/.%2e/private"), 403, None),
        case("escaped dot dot", &get("/public/%2E./private"), 403, None),
        case(
            "trailing dotdot",
            &get("/public/x/.."),
            200,
            Some("/public/"),
        ),
        case("dotdot to root", &get("/public/.."), 403, None),
        case(
            "above the root",
            &get("/public/../../../private"),
            403,
            None,
        ),
        case(
            "absolute form",
            "GET http://echo:8080/public/../private HTTP/1.1\r\nHost: echo\r\n\r\n",
            403,
            None,
        ),
        case(
            "absolute form allowed",
            "GET http://echo:8080/public/a HTTP/1.1\r\nHost: x\r\n\r\n",
            200,
            Some("/public/a"),
        ),
        // Escaped slashes: redirected, never forwarded (CVE-2021-29492, CVE-2021-31920).
        case(
            "escaped slash dotdot",
            &get("/public/..%2fprivate"),
            307,
            None,
        ),
        case("escaped slashes", &get("/public%2F..%2Fprivate"), 307, None),
        case(
            "escaped backslash",
            &get("/public/%5c../private"),
            307,
            None,
        ),
        case("escaped slash allowed", &get("/public%2fx"), 307, None),
        // Backslashes are slashes.
        case("backslashes", &get("/public\\..\\private"), 403, None),
        case(
            "backslash allowed",
            &get("/public\\x"),
            200,
            Some("/public/x"),
        ),
        // Merged slashes.
        case(
            "double slash dotdot",
            &get("/public//../private"),
            200,
            Some("/public/private"),
        ),
        case(
            "leading double slash",
            &get("//public/x"),
            200,
            Some("/public/x"),
        ),
        case("double slash to private", &get("//private"), 403, None),
        // Unreserved escapes decode (what the backend would read anyway).
        case(
            "escaped letter",
            &get("/%70ublic/x"),
            200,
            Some("/public/x"),
        ),
        case("escaped letter denied", &get("/%70rivate"), 403, None),
        // Path parameters on dot segments (CVE-2026-73551: Tomcat reads `..;` as `..`).
        case(
            "dotdot with parameters",
            &get("/public/..;/private"),
            403,
            None,
        ),
        case(
            "dotdot with a value",
            &get("/public/..;a=b/private"),
            403,
            None,
        ),
        // Fragments are rejected (CVE-2021-32779), queries are matched as sent (CVE-2020-8595).
        case("fragment", &get("/public/x#/../../private"), 400, None),
        case("query after private", &get("/private?/public"), 403, None),
        case(
            "query kept",
            &get("/public?x=/../private"),
            200,
            Some("/public?x=/../private"),
        ),
        case("upper case path", &get("/PUBLIC/x"), 403, None),
        // Double encoding is not decoded (as Envoy): the backend gets the same escapes.
        case(
            "double encoded dotdot",
            &get("/public/%252e%252e/private"),
            200,
            Some("/public/%252e%252e/private"),
        ),
        case("escaped NUL", &get("/public%00/../private"), 400, None),
        case(
            "raw control byte",
            "GET /public/\x01 HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "lower-case method",
            "get /public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "custom method",
            "FOO /public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        case(
            "HTTP/1.0",
            "GET /public/x HTTP/1.0\r\nHost: echo\r\n\r\n",
            426,
            None,
        ),
        case(
            "no version",
            "GET /public/x\r\nHost: echo\r\n\r\n",
            400,
            None,
        ),
        // Host rules.
        case(
            "good host",
            "GET /hosted/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            200,
            Some("/hosted/x"),
        ),
        case(
            "duplicate host",
            "GET /hosted/x HTTP/1.1\r\nHost: good.example\r\nHost: evil\r\n\r\n",
            403,
            None,
        ),
        case(
            "absolute form overrides host",
            "GET http://evil/hosted/x HTTP/1.1\r\nHost: good.example\r\n\r\n",
            403,
            None,
        ),
        case(
            "absolute form gives the host",
            "GET http://good.example/hosted/x HTTP/1.1\r\nHost: evil\r\n\r\n",
            200,
            Some("/hosted/x"),
        ),
        case(
            "host with trailing blanks (CVE-2019-18802)",
            "GET /hosted/x HTTP/1.1\r\nHost: good.example \t\r\n\r\n",
            200,
            Some("/hosted/x"),
        ),
        case(
            "Connection nominates Host",
            "GET /hosted/x HTTP/1.1\r\nHost: good.example\r\nConnection: host\r\n\r\n",
            400,
            None,
        ),
        case("no host", "GET /public/x HTTP/1.1\r\n\r\n", 400, None),
        case(
            "host with userinfo",
            "GET /hosted/x HTTP/1.1\r\nHost: evil@good.example\r\n\r\n",
            400,
            None,
        ),
        case(
            "path trick into a host rule",
            "GET /public/../hosted/x HTTP/1.1\r\nHost: evil\r\n\r\n",
            403,
            None,
        ),
        case(
            "upper case host",
            "GET /hosted/x HTTP/1.1\r\nHost: GOOD.example\r\n\r\n",
            403,
            None,
        ),
        // Header rules.
        case(
            "required header",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\r\n\r\n",
            200,
            Some("/admin/x"),
        ),
        case(
            "required header twice (CVE-2021-32777)",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\r\nX-Role: user\r\n\r\n",
            403,
            None,
        ),
        case(
            "required header nominated away",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\r\nConnection: x-role\r\n\r\n",
            403,
            None,
        ),
        case(
            "required header with blanks",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role:  admin \r\n\r\n",
            200,
            Some("/admin/x"),
        ),
        case(
            "NUL in a header (CVE-2019-9900)",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: admin\0\r\n\r\n",
            400,
            None,
        ),
        case(
            "folded header",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: ad\r\n min\r\n\r\n",
            400,
            None,
        ),
        case(
            "space before colon",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role : admin\r\n\r\n",
            400,
            None,
        ),
        case(
            "header case",
            "GET /admin/x HTTP/1.1\r\nHost: echo\r\nX-Role: Admin\r\n\r\n",
            403,
            None,
        ),
        case(
            "path trick into a header rule",
            "GET /public/../admin/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            403,
            None,
        ),
        // Framing (request smuggling).
        case(
            "CL and TE",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            None,
        ),
        case(
            "other coding",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            None,
        ),
        case(
            "chunked twice",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
            None,
        ),
        case(
            "coding list",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            501,
            None,
        ),
        case(
            "two lengths",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            400,
            None,
        ),
        case(
            "bare LF in chunk size",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            400,
            None,
        ),
        case(
            "chunk with a request inside",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n20\r\nGET /private HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
            200,
            Some("/upload"),
        ),
        case(
            "chunk size shorter than its data",
            "POST /upload HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\n1d\r\nGET /private HTTP/1.1\r\nHost: x\r\n\r\n0\r\n\r\n",
            400,
            None,
        ),
        // Upgrades and tunnels (CVE-2024-23326).
        case(
            "websocket",
            "GET /public/x HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            403,
            None,
        ),
        case(
            "stray Upgrade header",
            "GET /public/x HTTP/1.1\r\nHost: echo\r\nUpgrade: websocket\r\n\r\n",
            200,
            Some("/public/x"),
        ),
        case(
            "CONNECT",
            "CONNECT echo:443 HTTP/1.1\r\nHost: echo:443\r\n\r\n",
            403,
            None,
        ),
        case(
            "https URL",
            "GET https://echo/public/x HTTP/1.1\r\nHost: echo\r\n\r\n",
            403,
            None,
        ),
        case(
            "OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: echo\r\n\r\n",
            404,
            None,
        ),
        // Envoy's own headers are not the client's to set (CVE-2023-27487) — forwarded as
        // data, never trusted for a decision.
        case(
            "x-envoy-original-path",
            "GET /private HTTP/1.1\r\nHost: echo\r\nx-envoy-original-path: /public/x\r\n\r\n",
            403,
            None,
        ),
    ]
}

struct Suite {
    proxy: SocketAddr,
    backend: Arc<Mutex<Vec<RawSeen>>>,
}

async fn suite() -> Suite {
    let (backend_addr, backend) = raw_backend().await;
    let (proxy, tx) = start_http_proxy(
        policy_with(EXTRA_RULES),
        CLIENT,
        backend_addr,
        HttpProxyConfig::default(),
    )
    .await;
    // A closed channel still reads its last value; keep the sender anyway.
    std::mem::forget(tx);
    Suite { proxy, backend }
}

/// `request` with an `x-case` header after the request line.
fn tagged(request: &str, tag: &str) -> Vec<u8> {
    match request.split_once("\r\n") {
        Some((line, rest)) => format!("{line}\r\nx-case: {tag}\r\n{rest}").into_bytes(),
        None => request.as_bytes().to_vec(),
    }
}

/// Sends one case on its own connection; the status, and whether the answer was its own.
async fn send(proxy: SocketAddr, c: &Case, tag: &str) -> (u16, bool) {
    let mut conn = RawConn::connect(proxy).await;
    conn.send(&tagged(&c.request, tag)).await;
    let r = conn
        .response()
        .await
        .unwrap_or_else(|| panic!("{}: no answer", c.name));
    let own = r.status != 200 || r.header("x-case") == Some(tag);
    (r.status, own)
}

#[tokio::test]
async fn no_spelling_reaches_what_policy_denies() {
    let s = suite().await;
    let cases = cases();
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let tag = format!("c{i}");
        let (status, own) = send(s.proxy, c, &tag).await;
        if status != c.status || !own {
            failures.push(format!(
                "{}: status {status}, expected {}",
                c.name, c.status
            ));
        }
    }
    let seen = s.backend.lock().unwrap().clone();
    let mut by_tag: BTreeMap<String, Vec<RawSeen>> = BTreeMap::new();
    for r in seen {
        let tag = r
            .header("x-case")
            .first()
            .map(|t| t.to_string())
            .unwrap_or_default();
        by_tag.entry(tag).or_default().push(r);
    }
    for (i, c) in cases.iter().enumerate() {
        let got = by_tag.remove(&format!("c{i}")).unwrap_or_default();
        match (c.reaches, got.as_slice()) {
            (None, []) => {}
            (Some(want), [one]) if one.target == want && one.version == "HTTP/1.1" => {}
            (want, got) => failures.push(format!(
                "{}: the backend should see {want:?}, saw {:?}",
                c.name,
                got.iter().map(|g| g.target.as_str()).collect::<Vec<_>>()
            )),
        }
    }
    assert!(
        by_tag.is_empty(),
        "untagged requests reached the backend: {by_tag:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn what_reaches_the_backend_is_what_policy_saw() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    c.send(b"GET http://good.example/hosted/%70/./x?q=%2F HTTP/1.1\r\nHost: evil\r\nX-A: 1\r\nx-a: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Connection: x\r\n\r\n")
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let seen = s.backend.lock().unwrap()[0].clone();
    assert_eq!(seen.target, "/hosted/p/x?q=%2F");
    assert_eq!(seen.header("host"), ["good.example"]);
    assert_eq!(seen.header("x-a"), ["1", "2"]);
    for hop in [
        "x-hop",
        "connection",
        "keep-alive",
        "te",
        "proxy-connection",
    ] {
        assert!(seen.header(hop).is_empty(), "{hop} was forwarded");
    }
}

#[tokio::test]
async fn redirect_points_at_the_normalized_path() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    c.send(get("/public/a%2F..%2F..%2Fprivate?x=%2F").as_bytes())
        .await;
    let r = c.response().await.unwrap();
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/private?x=%2F"));
    assert!(s.backend.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pipelined_smuggling_is_decided_request_by_request() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    // A body that is exactly its Content-Length, then a denied request, then an allowed one.
    c.send(b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\n\r\nhelloGET /private HTTP/1.1\r\nHost: echo\r\n\r\nGET /public/after HTTP/1.1\r\nHost: echo\r\n\r\n").await;
    assert_eq!(c.response().await.unwrap().status, 200);
    assert_eq!(c.response().await.unwrap().status, 403);
    assert_eq!(c.response().await.unwrap().status, 200);
    let seen = s.backend.lock().unwrap().clone();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/upload", "/public/after"]);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].body.as_slice()),
        ("POST", &b"hello"[..])
    );
}

#[tokio::test]
async fn denied_head_has_no_body_and_the_connection_stays_in_step() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    c.send(b"HEAD /private HTTP/1.1\r\nHost: echo\r\n\r\nHEAD /status HTTP/1.1\r\nHost: echo\r\n\r\nGET /public/x HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await;
    let denied = c.head_response().await.unwrap();
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("content-length"), Some("15"));
    let allowed = c.head_response().await.unwrap();
    assert_eq!(allowed.status, 200);
    let after = c.response().await.unwrap();
    assert_eq!(
        (after.status, after.body.as_slice()),
        (200, &b" /public/x"[..])
    );
}

#[tokio::test]
async fn expect_continue_is_answered_by_the_proxy() {
    let s = suite().await;
    let mut c = RawConn::connect(s.proxy).await;
    c.send(
        b"POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await.unwrap().status, 100);
    c.send(b"hello").await;
    assert_eq!(c.response().await.unwrap().status, 200);
    let seen = s.backend.lock().unwrap()[0].clone();
    assert!(seen.header("expect").is_empty());
    assert_eq!(seen.body, b"hello");
    // Denied: 403 at once, and the connection closes (the body will not come).
    let mut d = RawConn::connect(s.proxy).await;
    d.send(b"POST /private HTTP/1.1\r\nHost: echo\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await;
    assert_eq!(d.response().await.unwrap().status, 403);
    assert!(d.closed().await);
}

/// Every case many times at once: no answer crosses to another connection and the backend
/// sees exactly the allowed requests, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attempts_never_cross_or_leak() {
    let s = suite().await;
    let cases = Arc::new(cases());
    const ROUNDS: usize = 12;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..ROUNDS {
        for i in 0..cases.len() {
            let cases = cases.clone();
            let proxy = s.proxy;
            tasks.spawn(async move {
                let c = &cases[i];
                let tag = format!("r{round}c{i}");
                let (status, own) = send(proxy, c, &tag).await;
                (i, status, own)
            });
        }
    }
    let mut failures = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (i, status, own) = r.unwrap();
        if status != cases[i].status || !own {
            failures.push(format!("{}: {status} own={own}", cases[i].name));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    let seen = s.backend.lock().unwrap().clone();
    let expected: usize = cases.iter().filter(|c| c.reaches.is_some()).count() * ROUNDS;
    assert_eq!(seen.len(), expected);
    for r in &seen {
        let tag = r.header("x-case")[0];
        let i: usize = tag.split('c').nth(1).unwrap().parse().unwrap();
        assert_eq!(Some(r.target.as_str()), cases[i].reaches, "{tag}");
    }
}
