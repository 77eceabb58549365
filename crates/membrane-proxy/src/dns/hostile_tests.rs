//! Hostile DNS input, as raw bytes, against the real proxy (UDP and TCP) in front of a
//! server that records everything it receives. The rule under test: a clear answer
//! (FORMERR, NOTIMP, REFUSED) or silence, never a crash, and never a denied name at the
//! server, in any spelling. The policy allows `*.example.com` only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::test_upstream::{ANSWER, Mode, Recording, recording_upstream};
use super::wire::{self, Header};
use super::*;
use crate::clock::ManualClock;
use crate::testutil::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RData;

struct Setup {
    udp: SocketAddr,
    tcp: SocketAddr,
    rec: Recording,
    learner: Arc<FqdnLearner>,
}

async fn start_with(mode: Mode, config: DnsProxyConfig) -> Setup {
    let rec = recording_upstream(mode).await;
    let learner = Arc::new(FqdnLearner::new(Arc::new(ManualClock::starting_at(
        std::time::Instant::now(),
    ))));
    let (_tx, rx) = watch::channel(Arc::new(policy()));
    let proxy = Arc::new(DnsProxy::new(rx, learner.clone(), config));
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let upstream = rec.udp;
    tokio::spawn(serve_dns_udp(udp, proxy.clone(), move |src, _| Flow {
        src: sock(CLIENT, src.port()),
        dst: sock(KUBE_DNS, 53),
        upstream,
    }));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let upstream = rec.tcp;
    tokio::spawn(serve_dns_tcp(tcp, proxy, move |s: &TcpStream| {
        Ok(Flow {
            src: sock(CLIENT, s.peer_addr()?.port()),
            dst: sock(KUBE_DNS, 53),
            upstream,
        })
    }));
    Setup {
        udp: udp_addr,
        tcp: tcp_addr,
        rec,
        learner,
    }
}

async fn start(mode: Mode) -> Setup {
    start_with(mode, DnsProxyConfig::default()).await
}

/// Labels in wire form, each given raw (so a label may contain a dot).
fn labels(ls: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in ls {
        out.push(l.len() as u8);
        out.extend_from_slice(l);
    }
    out.push(0);
    out
}

fn name(text: &str) -> Vec<u8> {
    let ls: Vec<&[u8]> = text
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::as_bytes)
        .collect();
    labels(&ls)
}

/// A message: header fields, then `body` as is.
fn msg(id: u16, flags: u16, counts: [u16; 4], body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, flags, counts[0], counts[1], counts[2], counts[3]] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(body);
    m
}

/// A question section for `wire_name`, type A class IN.
fn question(wire_name: &[u8]) -> Vec<u8> {
    let mut q = wire_name.to_vec();
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

fn query(id: u16, wire_name: &[u8]) -> Vec<u8> {
    msg(id, 0x0100, [1, 0, 0, 0], &question(wire_name))
}

const OPT_4096_DO: [u8; 11] = [0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0x00, 0, 0];

async fn udp_raw(to: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp_answer(to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    udp_raw(to, bytes, Duration::from_secs(3))
        .await
        .expect("no answer")
}

fn rcode(answer: &[u8]) -> u8 {
    let h = Header::parse(answer).unwrap();
    assert!(h.is_response());
    h.rcode()
}

fn addresses(answer: &[u8]) -> Vec<std::net::IpAddr> {
    Message::from_vec(answer)
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            _ => None,
        })
        .collect()
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn case_mixing_is_checked_folded_and_forwarded_as_spelled() {
    let s = start(Mode::Normal).await;
    for spelling in ["EVIL.test", "eViL.TeSt", "evil.TEST"] {
        let r = udp_answer(s.udp, &query(1, &name(spelling))).await;
        assert_eq!(rcode(&r), wire::RCODE_REFUSED, "{spelling}");
    }
    let q = query(0x2020, &name("aPi.ExAmPlE.cOm"));
    let r = udp_answer(s.udp, &q).await;
    assert_eq!(rcode(&r), wire::RCODE_NOERROR);
    assert_eq!(Header::parse(&r).unwrap().id, 0x2020);
    // The answer repeats the client's spelling, and the server saw exactly it.
    assert_eq!(&r[12..q.len()], &q[12..]);
    assert_eq!(addresses(&r), [std::net::IpAddr::V4(ANSWER)]);
    let seen = s.rec.messages();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0][2..], &q[2..]);
    s.rec.assert_never_saw("evil");
}

#[tokio::test]
async fn the_client_gets_its_own_spelling_back() {
    let s = start(Mode::LowerCase).await;
    let q = query(0x2021, &name("WwW.ExAmPlE.CoM"));
    let r = udp_answer(s.udp, &q).await;
    assert_eq!(rcode(&r), wire::RCODE_NOERROR);
    assert_eq!(&r[12..q.len()], &q[12..]);
    assert_eq!(addresses(&r), [std::net::IpAddr::V4(ANSWER)]);
    // The server got the client's spelling.
    assert_eq!(&s.rec.messages()[0][2..], &q[2..]);
}

#[tokio::test]
async fn dots_inside_labels_are_not_label_separators() {
    let s = start(Mode::Normal).await;
    // One label `api.example.com` (a top-level name), and `evil.test` under example.com
    // written as one label: neither is `<label>.example.com`.
    for ls in [
        &[&b"api.example.com"[..]][..],
        &[b"api.example", b"com"],
        &[b"evil.test", b"example.com"],
        &[b"x", b"example.com"],
    ] {
        let r = udp_answer(s.udp, &query(3, &labels(ls))).await;
        assert_eq!(rcode(&r), wire::RCODE_REFUSED, "{ls:?}");
    }
    assert!(s.rec.messages().is_empty());
}

#[tokio::test]
async fn trailing_dot_and_root_spellings_decide_alike() {
    let s = start(Mode::Normal).await;
    // On the wire a name always ends with the root label; both text spellings make the
    // same query, and the root name itself is refused.
    assert_eq!(dns_query(1, "evil.test."), dns_query(1, "evil.test"));
    let r = udp_answer(s.udp, &query(4, &[0])).await;
    assert_eq!(rcode(&r), wire::RCODE_REFUSED);
    // An empty label cannot be written: a zero length ends the name, and what follows is
    // trailing garbage.
    let mut body = labels(&[b"api"]);
    body.extend_from_slice(&labels(&[b"evil", b"test"]));
    body.extend_from_slice(&[0, 1, 0, 1]);
    let r = udp_answer(s.udp, &msg(5, 0x0100, [1, 0, 0, 0], &body)).await;
    assert_eq!(rcode(&r), wire::RCODE_FORMERR);
    s.rec.assert_never_saw("evil");
}

#[tokio::test]
async fn compression_tricks_get_formerr() {
    let s = start(Mode::Normal).await;
    let allowed = question(&name("api.example.com"));
    let cases: Vec<Vec<u8>> = vec![
        // The question is a pointer into the header.
        msg(6, 0x0100, [1, 0, 0, 0], &[0xc0, 0x00, 0, 1, 0, 1]),
        // The question points at itself.
        msg(6, 0x0100, [1, 0, 0, 0], &[0xc0, 12, 0, 1, 0, 1]),
        // Forwards, into a name placed after the question.
        {
            let mut b = vec![0xc0, 18, 0, 1, 0, 1];
            b.extend_from_slice(&name("evil.test"));
            msg(6, 0x0100, [1, 0, 0, 0], &b)
        },
        // A label then a pointer back to the label: a loop.
        msg(
            6,
            0x0100,
            [1, 0, 0, 0],
            &[4, b'e', b'v', b'i', b'l', 0xc0, 12, 0, 1, 0, 1],
        ),
        // An allowed question, then an additional record whose name loops.
        {
            let mut b = allowed.clone();
            let at = (12 + b.len()) as u16;
            b.extend_from_slice(&(0xc000 | at).to_be_bytes());
            b.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
            msg(6, 0x0100, [1, 0, 0, 1], &b)
        },
        // Reserved label types.
        msg(6, 0x0100, [1, 0, 0, 0], &[0x40, 0, 0, 1, 0, 1]),
        msg(6, 0x0100, [1, 0, 0, 0], &[0x80, 0, 0, 1, 0, 1]),
    ];
    for (i, c) in cases.iter().enumerate() {
        let r = udp_answer(s.udp, c).await;
        assert_eq!(rcode(&r), wire::RCODE_FORMERR, "case {i}");
        assert_eq!(Header::parse(&r).unwrap().id, 6);
    }
    assert!(s.rec.messages().is_empty());
}

#[tokio::test]
async fn a_second_question_is_never_forwarded() {
    let s = start(Mode::Normal).await;
    let mut two = question(&name("api.example.com"));
    two.extend_from_slice(&question(&name("evil.test")));
    // Announced (FORMERR), or hidden after the one announced (trailing bytes: FORMERR).
    for counts in [[2, 0, 0, 0], [1, 0, 0, 0]] {
        let r = udp_answer(s.udp, &msg(7, 0x0100, counts, &two)).await;
        assert_eq!(rcode(&r), wire::RCODE_FORMERR, "{counts:?}");
    }
    // Hidden as an answer or authority record of the query.
    let mut rr = question(&name("api.example.com"));
    rr.extend_from_slice(&name("evil.test"));
    rr.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 2, 3, 4]);
    for counts in [[1, 1, 0, 0], [1, 0, 1, 0]] {
        let r = udp_answer(s.udp, &msg(7, 0x0100, counts, &rr)).await;
        assert_eq!(rcode(&r), wire::RCODE_FORMERR, "{counts:?}");
    }
    s.rec.assert_never_saw("evil");
    assert!(s.rec.messages().is_empty());
}

#[tokio::test]
async fn no_question_short_and_truncated_messages() {
    let s = start(Mode::Normal).await;
    let r = udp_answer(s.udp, &msg(8, 0x0100, [0, 0, 0, 0], &[])).await;
    assert_eq!(rcode(&r), wire::RCODE_FORMERR);
    assert_eq!(Header::parse(&r).unwrap().qdcount, 0);
    // Fewer than 12 bytes: nobody to answer.
    for short in [
        &b""[..],
        b"\x00",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",
    ] {
        assert_eq!(udp_raw(s.udp, short, SHORT).await, None);
    }
    // Cut anywhere inside the question: FORMERR with the ID.
    let full = query(9, &name("api.example.com"));
    for cut in 12..full.len() {
        let r = udp_answer(s.udp, &full[..cut]).await;
        assert_eq!(rcode(&r), wire::RCODE_FORMERR, "cut at {cut}");
        assert_eq!(Header::parse(&r).unwrap().id, 9);
    }
    // A label claiming more bytes than the message has.
    let r = udp_answer(s.udp, &msg(9, 0x0100, [1, 0, 0, 0], &[63, b'a', b'b'])).await;
    assert_eq!(rcode(&r), wire::RCODE_FORMERR);
    assert!(s.rec.messages().is_empty());
}

#[tokio::test]
async fn responses_are_dropped_and_other_opcodes_get_notimp() {
    let s = start(Mode::Normal).await;
    // A response sent to the proxy (QR=1) is not answered nor forwarded.
    let resp = msg(
        10,
        0x8180,
        [1, 0, 0, 0],
        &question(&name("api.example.com")),
    );
    assert_eq!(udp_raw(s.udp, &resp, SHORT).await, None);
    // IQUERY (1), STATUS (2), NOTIFY (4), UPDATE (5) on an allowed name.
    for opcode in [1u16, 2, 4, 5, 15] {
        let m = msg(
            11,
            opcode << 11,
            [1, 0, 0, 0],
            &question(&name("api.example.com")),
        );
        let r = udp_answer(s.udp, &m).await;
        assert_eq!(rcode(&r), wire::RCODE_NOTIMP, "opcode {opcode}");
        assert_eq!(Header::parse(&r).unwrap().opcode() as u16, opcode);
    }
    assert!(s.rec.messages().is_empty());
}

#[tokio::test]
async fn edns_is_forwarded_and_sizes_the_udp_answer() {
    let s = start(Mode::Big).await;
    let mut body = question(&name("api.example.com"));
    body.extend_from_slice(&OPT_4096_DO);
    let with_edns = msg(12, 0x0100, [1, 0, 0, 1], &body);
    let r = udp_answer(s.udp, &with_edns).await;
    assert!(r.len() > 512);
    assert!(!Header::parse(&r).unwrap().truncated());
    assert_eq!(addresses(&r).len(), 100);
    // The server got the OPT record (payload size and DO bit) untouched.
    let seen = s.rec.messages();
    assert_eq!(&seen[0][2..], &with_edns[2..]);

    // Without EDNS the client takes 512 bytes: header and question, TC set.
    let plain = query(13, &name("api.example.com"));
    let r = udp_answer(s.udp, &plain).await;
    let h = Header::parse(&r).unwrap();
    assert!(r.len() <= 512);
    assert!(h.truncated());
    assert_eq!((h.id, h.qdcount, h.ancount), (13, 1, 0));
    assert_eq!(&r[12..], &plain[12..]);
    // An EDNS client taking 512 bytes: cut too, with an OPT record.
    let mut body = question(&name("api.example.com"));
    body.extend_from_slice(&[0, 0, 41, 0x02, 0x00, 0, 0, 0, 0, 0, 0]);
    let r = udp_answer(s.udp, &msg(15, 0x0100, [1, 0, 0, 1], &body)).await;
    let h = Header::parse(&r).unwrap();
    assert!(h.truncated() && r.len() <= 512);
    assert_eq!((h.id, h.qdcount, h.ancount, h.arcount), (15, 1, 0, 1));
    // The same query over TCP gets everything.
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    write_framed(&mut c, &plain).await.unwrap();
    let r = read_framed(&mut c).await.unwrap().unwrap();
    assert_eq!(addresses(&r).len(), 100);
    // Denied with EDNS: the refusal carries an OPT record too.
    let mut body = question(&name("evil.test"));
    body.extend_from_slice(&OPT_4096_DO);
    let r = udp_answer(s.udp, &msg(14, 0x0100, [1, 0, 0, 1], &body)).await;
    assert_eq!(rcode(&r), wire::RCODE_REFUSED);
    assert_eq!(Header::parse(&r).unwrap().arcount, 1);
    s.rec.assert_never_saw("evil");
}

#[tokio::test]
async fn spoofed_and_mismatched_answers_are_ignored() {
    let s = start(Mode::SpoofFirst).await;
    let r = udp_answer(s.udp, &query(15, &name("www.example.com"))).await;
    assert_eq!(addresses(&r), [std::net::IpAddr::V4(ANSWER)]);
    let cache = s.learner.snapshot();
    assert_eq!(
        cache.lookup("www.example.com"),
        [std::net::IpAddr::V4(ANSWER)]
    );
    for forged in ["6.6.6.5", "6.6.6.6", "6.6.6.7"] {
        assert!(
            cache.names_of(forged.parse().unwrap()).is_empty(),
            "{forged}"
        );
    }
}

#[tokio::test]
async fn unreadable_answers_become_servfail() {
    let s = start(Mode::Garbage).await;
    let r = udp_answer(s.udp, &query(16, &name("www.example.com"))).await;
    assert_eq!(rcode(&r), wire::RCODE_SERVFAIL);
    assert!(s.learner.snapshot().is_empty());
}

#[tokio::test]
async fn upstream_ids_are_unpredictable() {
    let s = start(Mode::Normal).await;
    for i in 0..32 {
        udp_answer(s.udp, &query(7, &name(&format!("h{i}.example.com")))).await;
    }
    let ids: Vec<u16> = s
        .rec
        .messages()
        .iter()
        .map(|m| Header::parse(m).unwrap().id)
        .collect();
    assert_eq!(ids.len(), 32);
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert!(distinct.len() >= 30, "{ids:?}");
    // Not a counter: consecutive IDs do not differ by a constant.
    let steps: std::collections::HashSet<u16> =
        ids.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(steps.len() > 16, "{ids:?}");
}

#[tokio::test]
async fn tcp_pipelined_queries_are_answered_in_order() {
    let s = start(Mode::Normal).await;
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    let mut all = Vec::new();
    let names = [
        "a.example.com",
        "EVIL.test",
        "B.Example.Com",
        "evil.TEST",
        "c.example.com",
    ];
    for (i, n) in names.iter().enumerate() {
        let q = query(100 + i as u16, &name(n));
        all.extend_from_slice(&(q.len() as u16).to_be_bytes());
        all.extend_from_slice(&q);
    }
    // One write: the proxy must find the message boundaries itself.
    c.write_all(&all).await.unwrap();
    for (i, n) in names.iter().enumerate() {
        let r = read_framed(&mut c).await.unwrap().unwrap();
        let h = Header::parse(&r).unwrap();
        assert_eq!(h.id, 100 + i as u16);
        let want = if n.to_ascii_lowercase().contains("evil") {
            wire::RCODE_REFUSED
        } else {
            wire::RCODE_NOERROR
        };
        assert_eq!(h.rcode(), want, "{n}");
    }
    assert_eq!(s.rec.messages().len(), 3);
    s.rec.assert_never_saw("evil");
}

#[tokio::test]
async fn tcp_framing_errors_close_the_connection() {
    let s = start_with(
        Mode::Normal,
        DnsProxyConfig {
            tcp_read_timeout: Duration::from_millis(200),
            ..DnsProxyConfig::default()
        },
    )
    .await;
    let closed = |mut c: TcpStream| async move {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(3), c.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    // Length 0.
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    c.write_all(&[0, 0]).await.unwrap();
    assert!(closed(c).await);
    // A length and part of the message, then nothing: closed after the read timeout,
    // and the part never forwarded.
    let q = query(20, &name("evil.test"));
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    c.write_all(&(q.len() as u16 + 10).to_be_bytes())
        .await
        .unwrap();
    c.write_all(&q).await.unwrap();
    assert!(closed(c).await);
    // A length longer than what follows, then the client half-closes.
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    c.write_all(&[0x01, 0x00, 1, 2, 3]).await.unwrap();
    c.shutdown().await.unwrap();
    assert!(closed(c).await);
    // A malformed message in a frame: FORMERR, and the connection still serves.
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    write_framed(&mut c, &msg(21, 0x0100, [2, 0, 0, 0], &[0, 0, 1, 0, 1]))
        .await
        .unwrap();
    let r = read_framed(&mut c).await.unwrap().unwrap();
    assert_eq!(rcode(&r), wire::RCODE_FORMERR);
    write_framed(&mut c, &query(22, &name("api.example.com")))
        .await
        .unwrap();
    let r = read_framed(&mut c).await.unwrap().unwrap();
    assert_eq!(rcode(&r), wire::RCODE_NOERROR);
    // A response over TCP: closed.
    let mut c = TcpStream::connect(s.tcp).await.unwrap();
    write_framed(
        &mut c,
        &msg(23, 0x8180, [1, 0, 0, 0], &question(&name("a.example.com"))),
    )
    .await
    .unwrap();
    assert!(closed(c).await);
    s.rec.assert_never_saw("evil");
    assert_eq!(s.rec.messages().len(), 1);
}

#[tokio::test]
async fn random_datagrams_never_reach_the_server_unchecked() {
    let s = start(Mode::Normal).await;
    // A deterministic xorshift: mutations of an allowed and a denied query, and noise.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let seeds = [
        query(1, &name("api.example.com")),
        query(2, &name("evil.test")),
        {
            let mut b = question(&name("evil.test"));
            b.extend_from_slice(&OPT_4096_DO);
            msg(3, 0x0100, [1, 0, 0, 1], &b)
        },
    ];
    for i in 0..3000 {
        let mut m = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % m.len();
            m[at] = next() as u8;
        }
        if i % 7 == 0 {
            m.truncate((next() as usize) % (m.len() + 1));
        }
        client.send_to(&m, s.udp).await.unwrap();
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Still serving.
    let r = udp_answer(s.udp, &query(9, &name("api.example.com"))).await;
    assert_eq!(rcode(&r), wire::RCODE_NOERROR);
    // Whatever reached the server is one well-formed question under example.com.
    for m in s.rec.messages() {
        let q = wire::parse_query(&m).expect("forwarded an unreadable query");
        let n = q.question.name.to_text(true);
        assert!(n.ends_with(".example.com."), "forwarded {n}");
    }
    s.rec.assert_never_saw("evil");
}
