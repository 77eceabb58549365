#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use proptest::prelude::*;

/// A query with a raw question name (wire form) and optional extra bytes after it.
fn raw_query(id: u16, qdcount: u16, arcount: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [id, 0x0100, qdcount, 0, 0, arcount] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(body);
    m
}

fn wire_name(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for l in text.split('.').filter(|l| !l.is_empty()) {
        out.push(l.len() as u8);
        out.extend_from_slice(l.as_bytes());
    }
    out.push(0);
    out
}

fn question(text: &str) -> Vec<u8> {
    let mut q = wire_name(text);
    q.extend_from_slice(&[0, 1, 0, 1]);
    q
}

#[test]
fn reads_a_plain_query() {
    let m = raw_query(0xabcd, 1, 0, &question("Api.Example.com"));
    let q = parse_query(&m).unwrap();
    assert_eq!(q.header.id, 0xabcd);
    assert_eq!(q.question.name.to_text(false), "Api.Example.com.");
    assert_eq!(q.question.name.to_text(true), "api.example.com.");
    assert_eq!((q.question.qtype, q.question.qclass), (1, 1));
    assert_eq!(q.question_end, m.len());
    assert_eq!(q.edns, None);
}

#[test]
fn root_and_escapes_are_written_like_cilium() {
    let m = raw_query(1, 1, 0, &[0, 0, 1, 0, 1]);
    assert_eq!(parse_query(&m).unwrap().question.name.to_text(true), ".");
    let mut body = vec![3, b'a', b'.', b'b', 4, b'c', 0, b' ', b'\\'];
    body.extend_from_slice(&[0, 0, 1, 0, 1]);
    let q = parse_query(&raw_query(1, 1, 0, &body)).unwrap();
    assert_eq!(q.question.name.to_text(false), "a\\.b.c\\000\\032\\\\.");
}

#[test]
fn finds_the_opt_record() {
    let mut body = question("a.example.com");
    body.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0x80, 0, 0, 0]);
    let q = parse_query(&raw_query(1, 1, 1, &body)).unwrap();
    assert_eq!(
        q.edns,
        Some(Edns {
            udp_size: 4096,
            version: 0
        })
    );
    assert_eq!(Edns::udp_limit(q.edns), 4096);
    assert_eq!(Edns::udp_limit(None), 512);
    // Two OPT records, or one not owned by the root: FORMERR.
    let mut two = body.clone();
    two.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        parse_query(&raw_query(1, 1, 2, &two)),
        Err(QueryError::Malformed {
            error: WireError::BadOpt,
            ..
        })
    ));
    let mut owned = question("a.example.com");
    owned.extend_from_slice(&[1, b'x', 0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    assert!(parse_query(&raw_query(1, 1, 1, &owned)).is_err());
}

#[test]
fn refuses_what_is_not_one_clean_question() {
    let malformed = |m: &[u8]| match parse_query(m) {
        Err(QueryError::Malformed { error, .. }) => error,
        other => panic!("{other:?}"),
    };
    assert_eq!(parse_query(b"\x01\x02"), Err(QueryError::NoHeader));
    assert_eq!(
        malformed(&raw_query(1, 0, 0, &[])),
        WireError::QuestionCount
    );
    let mut two = question("a.example.com");
    two.extend_from_slice(&question("evil.test"));
    assert_eq!(
        malformed(&raw_query(1, 2, 0, &two)),
        WireError::QuestionCount
    );
    // A second question not announced in the header is trailing garbage.
    assert_eq!(
        malformed(&raw_query(1, 1, 0, &two)),
        WireError::TrailingBytes
    );
    let mut m = raw_query(1, 1, 0, &question("a.example.com"));
    m.truncate(m.len() - 1);
    assert_eq!(malformed(&m), WireError::Truncated);
    // Response and opcode.
    let mut resp = raw_query(1, 1, 0, &question("a.example.com"));
    resp[2] |= 0x80;
    assert_eq!(parse_query(&resp), Err(QueryError::NotAQuery));
    let mut notify = raw_query(1, 1, 0, &question("a.example.com"));
    notify[2] |= 4 << 3;
    assert!(matches!(
        parse_query(&notify),
        Err(QueryError::NotImplemented(_))
    ));
    // Answer records in a query.
    let mut an = raw_query(1, 1, 0, &question("a.example.com"));
    an[7] = 1;
    assert_eq!(malformed(&an), WireError::UnexpectedRecords);
    // Extended label type.
    assert_eq!(
        malformed(&raw_query(1, 1, 0, &[0x41, 0, 0, 1, 0, 1])),
        WireError::BadLabel
    );
}

#[test]
fn label_and_name_limits() {
    let long = "a".repeat(64);
    let mut body = vec![64];
    body.extend_from_slice(long.as_bytes());
    body.extend_from_slice(&[0, 0, 1, 0, 1]);
    // 64 = 0x40: not a length.
    assert!(parse_query(&raw_query(1, 1, 0, &body)).is_err());
    // 4 labels of 63: 4*64 + 1 = 257 > 255.
    let name = vec!["b".repeat(63); 4].join(".");
    assert!(matches!(
        parse_query(&raw_query(1, 1, 0, &question(&name))),
        Err(QueryError::Malformed {
            error: WireError::NameTooLong,
            ..
        })
    ));
    // 3 labels of 63 and one of 61: exactly 255.
    let name = format!("{}.{}", vec!["c".repeat(63); 3].join("."), "d".repeat(61));
    let q = parse_query(&raw_query(1, 1, 0, &question(&name))).unwrap();
    assert_eq!(q.question.name.wire().len(), 255);
}

#[test]
fn compression_pointers_must_point_backwards() {
    // A pointer in the question (the first name) can only point into the header: refused.
    assert_eq!(
        read_name(&raw_query(1, 1, 0, &[0xc0, 0]), 12).unwrap_err(),
        WireError::BadPointer
    );
    // Self-pointer, forward pointer.
    let m = raw_query(1, 1, 0, &[0xc0, 12]);
    assert_eq!(read_name(&m, 12).unwrap_err(), WireError::BadPointer);
    let m = raw_query(1, 1, 0, &[0xc0, 14, 0]);
    assert_eq!(read_name(&m, 12).unwrap_err(), WireError::BadPointer);
    // A loop through a label: `x` then a pointer back to the `x`.
    let m = raw_query(1, 1, 0, &[1, b'x', 0xc0, 12]);
    assert_eq!(read_name(&m, 12).unwrap_err(), WireError::BadPointer);
    // Backwards, then a pointer inside the target that points after it: refused.
    let mut m = raw_query(1, 1, 0, &[1, b'a', 0xc0, 18, 0, 0, 1, b'b', 0xc0, 12]);
    assert_eq!(read_name(&m, 18).unwrap_err(), WireError::BadPointer);
    // A proper backwards pointer.
    m = raw_query(1, 1, 0, &[3, b'c', b'o', b'm', 0, 1, b'a', 0xc0, 12]);
    let (n, end) = read_name(&m, 17).unwrap();
    assert_eq!(n.to_text(false), "a.com.");
    assert_eq!(end, m.len());
}

#[test]
fn pointer_chains_are_bounded() {
    // Each pointer points to the previous one: a chain of 40.
    let mut body = vec![0u8];
    for i in 0..40u16 {
        let target = 12 + if i == 0 { 0 } else { 1 + 2 * (i - 1) };
        body.extend_from_slice(&(0xc000 | target).to_be_bytes());
    }
    let m = raw_query(1, 1, 0, &body);
    // 31 hops: fine; 40: too many.
    assert!(read_name(&m, 12 + 1 + 2 * 30).is_ok());
    assert_eq!(
        read_name(&m, 12 + 1 + 2 * 39).unwrap_err(),
        WireError::BadPointer
    );
}

#[test]
fn replies_and_truncation() {
    let mut body = question("a.example.com");
    body.extend_from_slice(&[0, 0, 41, 0x10, 0x00, 0, 0, 0, 0, 0, 0]);
    let m = raw_query(0x4242, 1, 1, &body);
    let q = parse_query(&m).unwrap();
    let r = reply(&m, &q.header, Some(q.question_end), true, RCODE_REFUSED);
    let h = Header::parse(&r).unwrap();
    assert_eq!(h.id, 0x4242);
    assert!(h.is_response());
    assert_eq!(h.rcode(), RCODE_REFUSED);
    assert_eq!(h.flags & FLAG_RD, FLAG_RD);
    assert_eq!((h.qdcount, h.arcount), (1, 1));
    assert_eq!(addresses(&r).unwrap(), []);
    assert!(answers_query(&r, 0x4242, &m[12..q.question_end]));
    assert!(!answers_query(&r, 0x4243, &m[12..q.question_end]));
    let other = raw_query(1, 1, 0, &question("b.example.com"));
    assert!(!answers_query(&r, 0x4242, &other[12..]));

    let mut big = r.clone();
    big.extend(std::iter::repeat_n(0u8, 600));
    let mut big_edns = big.clone();
    truncate_for_udp(&mut big, q.question_end, 512, false);
    let h = Header::parse(&big).unwrap();
    assert!(h.truncated());
    assert_eq!((h.qdcount, h.ancount, h.nscount, h.arcount), (1, 0, 0, 0));
    assert_eq!(big.len(), q.question_end);
    // For an EDNS client the cut answer keeps an OPT record.
    truncate_for_udp(&mut big_edns, q.question_end, 512, true);
    let h = Header::parse(&big_edns).unwrap();
    assert!(h.truncated());
    assert_eq!((h.qdcount, h.ancount, h.nscount, h.arcount), (1, 0, 0, 1));
    assert_eq!(big_edns.len(), q.question_end + 11);
    assert_eq!(addresses(&big_edns).unwrap(), []);
}

#[test]
fn addresses_follow_cname_chains() {
    let mut m = raw_query(1, 1, 0, &question("www.Example.com"));
    m[2] |= 0x80;
    m[7] = 3; // ancount
    // CNAME www → edge.cdn.net, then A for edge.cdn.net, then AAAA for www.
    m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 30]);
    let target = wire_name("edge.cdn.net");
    m.extend_from_slice(&(target.len() as u16).to_be_bytes());
    let target_at = m.len() as u16;
    m.extend_from_slice(&target);
    m.extend_from_slice(&(0xc000 | target_at).to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 20, 0, 4, 192, 0, 2, 7]);
    m.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 1, 0, 0, 16]);
    m.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    let got = addresses(&m).unwrap();
    let v4: IpAddr = "192.0.2.7".parse().unwrap();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(
        got,
        [
            ("www.example.com.".to_string(), v4, 20),
            ("edge.cdn.net.".to_string(), v4, 20),
            ("www.example.com.".to_string(), v6, 256),
        ]
    );
    // An error answer teaches nothing; a broken one is an error.
    let mut err = m.clone();
    err[3] |= RCODE_SERVFAIL;
    assert_eq!(addresses(&err).unwrap(), []);
    let mut short = m.clone();
    short.pop();
    assert!(addresses(&short).is_err());
}

fn label() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..=20)
}

proptest! {
    #[test]
    fn any_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_query(&data);
        let _ = addresses(&data);
        for pos in 0..data.len().min(40) {
            let _ = read_name(&data, pos);
        }
    }

    #[test]
    fn written_queries_read_back(
        labels in prop::collection::vec(label(), 0..6),
        id: u16, qtype: u16, qclass: u16, rd: bool,
        edns in prop::option::of((any::<u16>(), any::<u8>())),
    ) {
        let mut name = Name::empty();
        for l in &labels {
            name.push_label(l).unwrap();
        }
        name.finish();
        let q = Question { name, qtype, qclass };
        let edns = edns.map(|(udp_size, version)| Edns { udp_size, version });
        let m = write_query(id, if rd { FLAG_RD } else { 0 }, &q, edns);
        let back = parse_query(&m).unwrap();
        prop_assert_eq!(back.question, q);
        prop_assert_eq!(back.header.id, id);
        prop_assert_eq!(back.edns, edns);
        prop_assert_eq!(back.question.name.labels().count(), labels.len());
        // Text and case: folding is the only difference between the two spellings.
        prop_assert_eq!(
            back.question.name.to_text(false).to_ascii_lowercase(),
            back.question.name.to_text(true)
        );
    }

    #[test]
    fn mutated_queries_never_panic(
        labels in prop::collection::vec(label(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut name = Name::empty();
        for l in &labels {
            name.push_label(l).unwrap();
        }
        name.finish();
        let q = Question { name, qtype: 1, qclass: 1 };
        let mut m = write_query(1, 0, &q, Some(Edns { udp_size: 1232, version: 0 }));
        for (i, b) in flips {
            let at = i.index(m.len());
            m[at] = b;
        }
        if let Ok(p) = parse_query(&m) {
            // Whatever is accepted reads back the same after being written again.
            let again = write_query(p.header.id, p.header.flags, &p.question, p.edns);
            prop_assert_eq!(parse_query(&again).unwrap().question, p.question);
        }
    }
}
