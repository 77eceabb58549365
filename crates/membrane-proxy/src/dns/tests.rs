//! The DNS proxy against a real (tiny) DNS server, all on 127.0.0.1. The client is the
//! scenario's 10.244.1.10 and the server its kube-dns 10.244.1.53:53, mapped onto loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::policy::DenialKind;
use crate::testutil::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData};
use std::sync::atomic::Ordering;
use std::time::Instant;

struct Setup {
    udp: SocketAddr,
    tcp: SocketAddr,
    clock: Arc<ManualClock>,
    learner: Arc<FqdnLearner>,
    server: DnsResponder,
}

async fn start_with(config: DnsProxyConfig) -> Setup {
    let server = dns_responder(&[
        ("api.example.com.", API, 300),
        ("api.example.com.", "203.0.113.21", 60),
        ("v6.example.com.", "2001:db8::1", 120),
        ("evil.test.", "198.51.100.66", 300),
    ])
    .await;
    let clock = Arc::new(ManualClock::starting_at(Instant::now()));
    let learner = Arc::new(FqdnLearner::new(clock.clone()));
    // The receiver keeps the last value after the sender goes.
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = Arc::new(DnsProxy::new(rx, learner.clone(), config));

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let upstream_udp = server.udp;
    tokio::spawn(serve_dns_udp(udp, proxy.clone(), move |src, _dst| Flow {
        src: sock(CLIENT, src.port()),
        dst: sock(KUBE_DNS, 53),
        upstream: upstream_udp,
    }));

    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let upstream_tcp = server.tcp;
    tokio::spawn(serve_dns_tcp(tcp, proxy, move |s: &TcpStream| {
        Ok(Flow {
            src: sock(CLIENT, s.peer_addr()?.port()),
            dst: sock(KUBE_DNS, 53),
            upstream: upstream_tcp,
        })
    }));
    Setup {
        udp: udp_addr,
        tcp: tcp_addr,
        clock,
        learner,
        server,
    }
}

async fn start() -> Setup {
    start_with(DnsProxyConfig::default()).await
}

fn answers(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// The text the proxy checks for a name (written by hickory, read back by `wire`).
fn name_text(name: &Name) -> String {
    use hickory_proto::op::Query;
    use hickory_proto::rr::RecordType;
    let mut m = Message::new(1, MessageType::Query, OpCode::Query);
    m.queries.push(Query::query(name.clone(), RecordType::A));
    let q = wire::parse_query(&m.to_vec().unwrap()).unwrap();
    q.question.name.to_text(false)
}

#[tokio::test]
async fn allowed_name_is_answered_and_learned_with_its_ttl() {
    let s = start().await;
    let mut updates = s.learner.subscribe();
    let before = s.clock.now();
    let resp = udp_exchange(s.udp, &dns_query(0x1234, "API.example.com."))
        .await
        .unwrap();
    assert_eq!(resp.metadata.id, 0x1234);
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&resp), [ip(API), ip("203.0.113.21")]);
    assert_eq!(s.server.queries.load(Ordering::SeqCst), 1);

    // Learned before the answer went out, each address with its own TTL.
    assert!(updates.has_changed().unwrap());
    let cache = updates.borrow_and_update().clone();
    let mut entries = cache.get("api.example.com");
    entries.sort();
    assert_eq!(
        entries,
        [
            (ip(API), before + Duration::from_secs(300)),
            (ip("203.0.113.21"), before + Duration::from_secs(60)),
        ]
    );
    assert_eq!(cache.names_of(ip(API)), ["api.example.com."]);
}

#[tokio::test]
async fn aaaa_answers_are_learned_too() {
    let s = start().await;
    let resp = udp_exchange(s.udp, &dns_query(7, "v6.example.com"))
        .await
        .unwrap();
    assert_eq!(answers(&resp), [ip("2001:db8::1")]);
    assert_eq!(
        s.learner.snapshot().lookup("v6.example.com."),
        [ip("2001:db8::1")]
    );
}

#[tokio::test]
async fn refused_name_gets_rcode_5_and_never_reaches_the_server() {
    let (hook, denials) = denial_log();
    let s = start_with(DnsProxyConfig {
        on_denial: Some(hook),
        ..DnsProxyConfig::default()
    })
    .await;
    let resp = udp_exchange(s.udp, &dns_query(99, "evil.test"))
        .await
        .unwrap();
    assert_eq!(resp.metadata.id, 99);
    assert_eq!(resp.metadata.message_type, MessageType::Response);
    assert_eq!(u16::from(resp.metadata.response_code), 5);
    assert!(resp.metadata.recursion_desired);
    assert_eq!(resp.queries.len(), 1);
    assert!(resp.answers.is_empty());
    assert_eq!(s.server.queries.load(Ordering::SeqCst), 0);
    assert!(s.learner.snapshot().is_empty());
    // `*.example.com` is one label: the apex is refused too.
    let resp = udp_exchange(s.udp, &dns_query(100, "example.com"))
        .await
        .unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused);

    let d = denials.lock().unwrap()[0].clone();
    assert_eq!(d.kind, DenialKind::DnsRefused);
    assert_eq!(d.request, "evil.test.");
    assert_eq!(d.policies()[0].name, "client-l7");
}

#[tokio::test]
async fn name_error_option_answers_nxdomain() {
    let s = start_with(DnsProxyConfig {
        reject: RejectResponse::NameError,
        ..DnsProxyConfig::default()
    })
    .await;
    let resp = udp_exchange(s.udp, &dns_query(5, "evil.test"))
        .await
        .unwrap();
    assert_eq!(u16::from(resp.metadata.response_code), 3);
    assert_eq!(s.server.queries.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn learned_names_expire_with_the_fake_clock() {
    let s = start().await;
    udp_exchange(s.udp, &dns_query(1, "api.example.com"))
        .await
        .unwrap();
    let mut updates = s.learner.subscribe();
    assert_eq!(s.learner.snapshot().len(), 2);

    s.clock.advance(Duration::from_secs(59));
    assert!(!s.learner.expire());
    assert!(!updates.has_changed().unwrap());

    s.clock.advance(Duration::from_secs(1)); // 60 s: the 60 s entry is gone
    assert!(s.learner.expire());
    assert!(updates.has_changed().unwrap());
    assert_eq!(
        updates.borrow_and_update().lookup("api.example.com"),
        [ip(API)]
    );

    s.clock.advance(Duration::from_secs(240)); // 300 s
    assert!(s.learner.expire());
    assert!(s.learner.snapshot().is_empty());

    // A new answer brings it back.
    udp_exchange(s.udp, &dns_query(2, "api.example.com"))
        .await
        .unwrap();
    assert_eq!(s.learner.snapshot().len(), 2);
}

#[tokio::test]
async fn tcp_queries_are_checked_and_forwarded() {
    let s = start().await;
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    for (id, name, rcode) in [
        (1u16, "api.example.com", ResponseCode::NoError),
        (2, "evil.test", ResponseCode::Refused),
        (3, "v6.example.com", ResponseCode::NoError),
    ] {
        write_framed(&mut c, &dns_query(id, name)).await.unwrap();
        let resp = read_framed(&mut c).await.unwrap().unwrap();
        let m = Message::from_vec(&resp).unwrap();
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.metadata.response_code, rcode, "{name}");
    }
    assert_eq!(s.server.queries.load(Ordering::SeqCst), 2);
    assert_eq!(s.learner.snapshot().len(), 3);
}

/// A server that never answers: the client gets `SERVFAIL` once the upstream timeout passes.
#[tokio::test]
async fn silent_server_gets_servfail() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let learner = Arc::new(FqdnLearner::new(Arc::new(ManualClock::starting_at(
        Instant::now(),
    ))));
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = Arc::new(DnsProxy::new(
        rx,
        learner,
        DnsProxyConfig {
            upstream_timeout: Duration::from_millis(200),
            ..DnsProxyConfig::default()
        },
    ));
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    tokio::spawn(serve_dns_udp(udp, proxy, move |src, _dst| Flow {
        src: sock(CLIENT, src.port()),
        dst: sock(KUBE_DNS, 53),
        upstream: silent_addr,
    }));
    let m = udp_exchange(udp_addr, &dns_query(9, "api.example.com"))
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 9);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    drop(silent);
}

#[tokio::test]
async fn l4_drop_stays_silent() {
    // `other` may not talk to kube-dns? It has no egress policy and kube-dns no ingress
    // policy, so it may: its queries are forwarded unchecked. Echo's ingress, though, only
    // admits `client` on 8080: a query from `other` to echo:53 is dropped.
    let learner = Arc::new(FqdnLearner::new(Arc::new(ManualClock::starting_at(
        Instant::now(),
    ))));
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = DnsProxy::new(rx, learner, DnsProxyConfig::default());
    let to_echo = Flow::new(sock(OTHER, 40000), sock(ECHO, 53));
    assert_eq!(
        proxy.check_query(&to_echo, Protocol::Udp, &dns_query(1, "evil.test")),
        QueryCheck::Drop
    );
    let to_dns = Flow::new(sock(OTHER, 40000), sock(KUBE_DNS, 53));
    assert!(matches!(
        proxy.check_query(&to_dns, Protocol::Udp, &dns_query(1, "evil.test")),
        QueryCheck::Forward { .. }
    ));
}

#[test]
fn malformed_queries_get_formerr_or_nothing() {
    let learner = Arc::new(FqdnLearner::new(Arc::new(ManualClock::starting_at(
        Instant::now(),
    ))));
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = DnsProxy::new(rx, learner, DnsProxyConfig::default());
    let flow = Flow::new(sock(CLIENT, 1), sock(KUBE_DNS, 53));
    assert_eq!(
        proxy.check_query(&flow, Protocol::Udp, b""),
        QueryCheck::Drop
    );
    assert_eq!(
        proxy.check_query(&flow, Protocol::Udp, b"\x12\x34"),
        QueryCheck::Drop
    );
    let mut bad = dns_query(0xbeef, "api.example.com");
    bad.truncate(bad.len() - 3);
    let QueryCheck::Reply(r) = proxy.check_query(&flow, Protocol::Udp, &bad) else {
        panic!("no FORMERR");
    };
    let m = Message::from_vec(&r).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0xbeef, ResponseCode::FormErr)
    );
    // A response is not a query: dropped.
    let mut resp = dns_query(1, "api.example.com");
    resp[2] |= 0x80;
    assert_eq!(
        proxy.check_query(&flow, Protocol::Udp, &resp),
        QueryCheck::Drop
    );
    // No question: FORMERR.
    let empty = Message::new(3, MessageType::Query, OpCode::Query)
        .to_vec()
        .unwrap();
    let QueryCheck::Reply(r) = proxy.check_query(&flow, Protocol::Udp, &empty) else {
        panic!("no FORMERR");
    };
    assert_eq!(
        Message::from_vec(&r).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn names_are_written_like_cilium_reads_them() {
    assert_eq!(name_text(&Name::root()), ".");
    assert_eq!(name_text(&Name::from_ascii("A.b.c").unwrap()), "A.b.c.");
    let odd = Name::from_labels(vec![&b"a.b"[..], &b"c\x00 d"[..]]).unwrap();
    assert_eq!(name_text(&odd), "a\\.b.c\\000\\032d.");
}

#[test]
fn cname_chains_are_learned_under_the_question() {
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Record, RecordType};
    let q = Name::from_ascii("www.example.com.").unwrap();
    let target = Name::from_ascii("edge.cdn.net.").unwrap();
    let mut m = Message::response(1, OpCode::Query);
    m.queries.push(Query::query(q.clone(), RecordType::A));
    m.answers.push(Record::from_rdata(
        q,
        30,
        RData::CNAME(CNAME(target.clone())),
    ));
    m.answers.push(Record::from_rdata(
        target,
        20,
        RData::A(A("192.0.2.7".parse().unwrap())),
    ));
    let got = addresses_in(&m.to_vec().unwrap());
    assert_eq!(
        got,
        [
            ("www.example.com.".to_string(), ip("192.0.2.7"), 20),
            ("edge.cdn.net.".to_string(), ip("192.0.2.7"), 20),
        ]
    );
    // Error answers teach nothing.
    m.metadata.response_code = ResponseCode::ServFail;
    assert!(addresses_in(&m.to_vec().unwrap()).is_empty());
}

#[test]
fn fqdn_cache_extends_caps_and_normalizes() {
    let t0 = Instant::now();
    let mut c = crate::fqdn::FqdnCache::new();
    assert!(c.record("Api.Example.COM", ip(API), Duration::from_secs(10), t0, 2));
    // A shorter TTL does not shorten; a longer one extends.
    assert!(!c.record("api.example.com.", ip(API), Duration::from_secs(5), t0, 2));
    assert!(c.record("api.example.com", ip(API), Duration::from_secs(20), t0, 2));
    assert_eq!(
        c.get("API.example.com"),
        [(ip(API), t0 + Duration::from_secs(20))]
    );
    // At most 2 addresses: the one expiring first goes.
    c.record(
        "api.example.com",
        ip("192.0.2.1"),
        Duration::from_secs(1),
        t0,
        2,
    );
    c.record(
        "api.example.com",
        ip("192.0.2.2"),
        Duration::from_secs(30),
        t0,
        2,
    );
    assert_eq!(c.lookup("api.example.com"), [ip("192.0.2.2"), ip(API)]);
    assert_eq!(c.next_expiry(), Some(t0 + Duration::from_secs(20)));
    assert!(!c.expire(t0 + Duration::from_secs(19)));
    assert!(c.expire(t0 + Duration::from_secs(20)));
    assert_eq!(c.lookup("api.example.com"), [ip("192.0.2.2")]);
    assert!(c.expire(t0 + Duration::from_secs(30)));
    assert!(c.is_empty());
    assert!(!c.record("", ip(API), Duration::from_secs(1), t0, 2));
}

/// The tproxy path without tproxy: a transparent socket on the wildcard address sees each
/// datagram's real destination (`IP_RECVORIGDSTADDR`), answers from exactly that address,
/// and then serves the queries that reach the socket bound there. Traffic stays on
/// 127.0.0.1. Needs `CAP_NET_ADMIN` (CI runs as root); skipped without it.
#[tokio::test]
async fn replies_come_from_the_original_destination() {
    let listener = match crate::flow::transparent_udp_socket("0.0.0.0:0".parse().unwrap()) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            skip_without_privilege("replies_come_from_the_original_destination", &e);
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let port = listener.local_addr().unwrap().port();
    let server = dns_responder(&[("api.example.com.", API, 300)]).await;
    let learner = Arc::new(FqdnLearner::new(Arc::new(ManualClock::starting_at(
        Instant::now(),
    ))));
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = Arc::new(DnsProxy::new(rx, learner, DnsProxyConfig::default()));
    let seen_dst = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (seen, upstream) = (seen_dst.clone(), server.udp);
    tokio::spawn(serve_dns_udp(listener, proxy, move |src, dst| {
        seen.lock().unwrap().push(dst);
        Flow {
            src: sock(CLIENT, src.port()),
            dst: sock(KUBE_DNS, 53),
            upstream,
        }
    }));
    // A connected client only accepts answers from 127.0.0.1:port itself.
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for (id, name, rcode) in [
        (1u16, "api.example.com", ResponseCode::NoError),
        (2, "evil.test", ResponseCode::Refused),
        (3, "api.example.com", ResponseCode::NoError),
    ] {
        client.send(&dns_query(id, name)).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), client.recv(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!((m.metadata.id, m.metadata.response_code), (id, rcode));
    }
    let dsts = seen_dst.lock().unwrap().clone();
    assert_eq!(dsts, vec![sock("127.0.0.1", port); 3]);
}

#[tokio::test]
async fn concurrent_queries_with_the_same_id_get_their_own_answers() {
    let table: Vec<(String, String)> = (0..20)
        .map(|i| (format!("h{i}.example.com."), format!("192.0.2.{}", i + 1)))
        .collect();
    let entries: Vec<(&str, &str, u32)> = table
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str(), 30))
        .collect();
    let server = dns_responder(&entries).await;
    let learner = Arc::new(FqdnLearner::new(Arc::new(ManualClock::starting_at(
        Instant::now(),
    ))));
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = Arc::new(DnsProxy::new(
        rx,
        learner.clone(),
        DnsProxyConfig::default(),
    ));
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let upstream = server.udp;
    tokio::spawn(serve_dns_udp(udp, proxy, move |src, _| Flow {
        src: sock(CLIENT, src.port()),
        dst: sock(KUBE_DNS, 53),
        upstream,
    }));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (name, want)) in table.into_iter().enumerate() {
        tasks.spawn(async move {
            // Every client uses ID 7.
            let m = udp_exchange(addr, &dns_query(7, &name)).await.unwrap();
            assert_eq!(m.metadata.id, 7);
            assert_eq!(name_text(&m.queries[0].name), name, "query {i}");
            assert_eq!(answers(&m), [ip(&want)]);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(learner.snapshot().len(), 20);
}

/// Allowed queries are reported (flow events, as Hubble shows allowed DNS requests): the name
/// as policy matched it and the rules that allowed it, over UDP and TCP; refused ones are not.
#[tokio::test]
async fn forwarded_queries_reach_the_forward_hook_with_their_rules() {
    let log: Arc<std::sync::Mutex<Vec<crate::policy::DnsForwarded>>> = Arc::default();
    let sink = log.clone();
    let s = start_with(DnsProxyConfig {
        on_forward: Some(Arc::new(move |f: &crate::policy::DnsForwarded| {
            sink.lock().unwrap().push(f.clone());
        })),
        ..DnsProxyConfig::default()
    })
    .await;
    let ok = udp_exchange(s.udp, &dns_query(1, "Api.Example.com"))
        .await
        .unwrap();
    assert_eq!(ok.metadata.response_code, ResponseCode::NoError);
    let refused = udp_exchange(s.udp, &dns_query(2, "evil.test"))
        .await
        .unwrap();
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].qname, "api.example.com.");
    assert_eq!(log[0].dst, sock(KUBE_DNS, 53));
    assert!(!log[0].rules.is_empty());
}
