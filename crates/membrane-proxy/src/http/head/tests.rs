#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;

fn parse(text: &str) -> Parsed {
    parse_request_head(text.as_bytes(), 64 * 1024)
}

fn ok(text: &str) -> RequestHead {
    match parse(text) {
        Parsed::Request(h) => h,
        other => panic!("{text:?}: {other:?}"),
    }
}

fn status(text: &str) -> u16 {
    match parse(text) {
        Parsed::Rejected(r) => r.status(),
        Parsed::Request(_) => 200,
        Parsed::Partial => 0,
    }
}

#[test]
fn origin_and_absolute_forms_give_the_same_view() {
    let a = ok("GET /public/../private?x=1 HTTP/1.1\r\nHost: server\r\n\r\n");
    let b = ok("GET http://server/public/../private?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(
        (a.path.as_str(), a.authority.as_str()),
        ("/private?x=1", "server")
    );
    assert_eq!(
        (b.path.as_str(), b.authority.as_str()),
        ("/private?x=1", "server")
    );
    let c = ok("GET HTTP://server HTTP/1.1\r\n\r\n");
    assert_eq!((c.path.as_str(), c.authority.as_str()), ("/", "server"));
    let d = ok("GET http://user:pw@server/x HTTP/1.1\r\nHost: evil\r\n\r\n");
    assert_eq!((d.path.as_str(), d.authority.as_str()), ("/x", "server"));
}

#[test]
fn a_fragment_is_rejected() {
    assert_eq!(
        status("GET /public/x#/../../private HTTP/1.1\r\nHost: h\r\n\r\n"),
        400
    );
    assert_eq!(status("GET /a?q=1#frag HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
}

#[test]
fn the_query_is_not_normalized() {
    assert_eq!(
        ok("GET /a?x=/../b HTTP/1.1\r\nHost: h\r\n\r\n").path,
        "/a?x=/../b"
    );
}

#[test]
fn envoy_answers() {
    assert_eq!(status("GET / HTTP/1.0\r\nHost: h\r\n\r\n"), 426);
    assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"),
        501
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        501
    );
    assert_eq!(
        status(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        501
    );
    assert_eq!(
        status(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n"),
        400
    );
    assert_eq!(
        status("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x3\r\n\r\n"),
        400
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
        403
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n\r\n"),
        200
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"),
        200
    );
    assert_eq!(
        status(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAA\r\n\r\n"
        ),
        200
    );
    assert_eq!(status("GET https://h/ HTTP/1.1\r\nHost: h\r\n\r\n"), 403);
    assert_eq!(status("GET http://h?x HTTP/1.1\r\nHost: h\r\n\r\n"), 404);
    assert_eq!(status("get / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(status("FOO / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nConnection: host\r\n\r\n"),
        400
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nConnection: x-forwarded-for\r\n\r\n"),
        400
    );
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nConnection: a,b,c,d,e,f,g,h,i,j\r\n\r\n"),
        400
    );
    assert_eq!(status("GET /a%00 HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(status("GET /caf\u{e9} HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n"),
        200
    );
    assert_eq!(status("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n"), 403);
    assert_eq!(status("GET /a%2fb HTTP/1.1\r\nHost: h\r\n\r\n"), 307);
    assert_eq!(status("GET /a\u{1}b HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(status("GET a/b HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(status("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
    assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), 404);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost: user@h\r\n\r\n"), 400);
    assert_eq!(status("GET / HTTP/1.1\r\nHost : h\r\n\r\n"), 400);
    assert_eq!(
        status("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n"),
        400
    );
    assert_eq!(status("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n"), 400);
    assert_eq!(status("GET /a HTTP/1.1\r\nHost: h\r\n"), 0);
}

#[test]
fn redirect_keeps_the_query() {
    match parse("GET /a%2F..%2Fb?x=1 HTTP/1.1\r\nHost: h\r\n\r\n") {
        Parsed::Rejected(Rejection::Redirect { location }) => assert_eq!(location, "/b?x=1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_hosts_and_headers_are_joined() {
    let h = ok("GET / HTTP/1.1\r\nHost: good\r\nHost: evil\r\nX-A: 1\r\nx-a: 2\r\n\r\n");
    assert_eq!(h.authority, "good,evil");
    assert_eq!(h.joined("x-a").as_deref(), Some("1,2"));
}

#[test]
fn framing_and_hop_by_hop_headers_are_not_end_to_end() {
    let h = ok(
        "POST / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nContent-Length: 5\r\nX-Other: o\r\n\r\n",
    );
    let names: Vec<&str> = h.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["X-Other"]);
    assert_eq!(h.body, BodyFraming::Length(5));
    let c = ok("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert!(c.close);
}

#[test]
fn head_size_limits() {
    let big = format!(
        "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    assert_eq!(status(&big), 431);
    let partial_big = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}", "a".repeat(70_000));
    assert_eq!(status(&partial_big), 431);
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect();
    assert_eq!(
        status(&format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n")),
        431
    );
}

#[test]
fn header_values_are_trimmed() {
    let h = ok("GET / HTTP/1.1\r\nHost:  example.com \t\r\nX-A:  v \r\n\r\n");
    assert_eq!(h.authority, "example.com");
    assert_eq!(h.joined("x-a").as_deref(), Some("v"));
}
