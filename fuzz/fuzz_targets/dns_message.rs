//! The DNS proxy's wire reader and query decision on arbitrary bytes: never a panic; an
//! accepted query has one question with a valid name, is written back to the same
//! question and OPT record, and the proxy's own answers to it read back (same ID, same
//! question bytes, no record); answers are read and truncated without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_policy::model::Protocol;
use membrane_proxy::dns::wire::{self, HEADER_LEN, Header, QueryError};
use membrane_proxy::dns::{Checked, RejectResponse, decide_query};
use membrane_proxy::{Flow, ProxyPolicy};

fn check_own_reply(reply: &[u8], header: &Header, question: Option<&[u8]>) {
    let h = Header::parse(reply).expect("reply has a header");
    assert!(h.is_response());
    assert_eq!(h.id, header.id);
    assert_eq!(h.opcode(), header.opcode());
    assert_eq!((h.ancount, h.nscount), (0, 0));
    match question {
        Some(q) => {
            assert_eq!(h.qdcount, 1);
            assert_eq!(&reply[HEADER_LEN..HEADER_LEN + q.len()], q);
            assert_eq!(wire::question_end(reply), Some(HEADER_LEN + q.len()));
            assert!(wire::answers_query(reply, header.id, q));
            assert_eq!(wire::addresses(reply).expect("own reply reads"), vec![]);
        }
        None => assert_eq!(h.qdcount, 0),
    }
}

fuzz_target!(|data: &[u8]| {
    match wire::parse_query(data) {
        Ok(q) => {
            let name = q.question.name;
            assert!(name.wire().len() <= wire::MAX_NAME_LEN);
            assert!(
                name.labels()
                    .all(|l| !l.is_empty() && l.len() <= wire::MAX_LABEL_LEN)
            );
            let text = name.to_text(true);
            assert!(text.ends_with('.'));
            assert_eq!(text, name.to_text(false).to_ascii_lowercase());
            assert!(q.question_end <= data.len());
            // Written again, it reads back the same.
            let again = wire::write_query(q.header.id, q.header.flags, &q.question, q.edns);
            let back = wire::parse_query(&again).expect("a written query reads back");
            assert_eq!(back.question, q.question);
            assert_eq!(back.edns, q.edns);
            assert_eq!(back.header.id, q.header.id);
            let question = &data[HEADER_LEN..q.question_end];
            for rcode in [wire::RCODE_REFUSED, wire::RCODE_SERVFAIL] {
                let r = wire::reply(
                    data,
                    &q.header,
                    Some(q.question_end),
                    q.edns.is_some(),
                    rcode,
                );
                check_own_reply(&r, &q.header, Some(question));
                assert_eq!(Header::parse(&r).map(|h| h.rcode()), Some(rcode));
            }
        }
        Err(QueryError::NotImplemented(h)) => {
            check_own_reply(&wire::reply(data, &h, None, false, 4), &h, None)
        }
        Err(QueryError::Malformed {
            header,
            question_end,
            ..
        }) => {
            let q = question_end.map(|e| &data[HEADER_LEN..e]);
            check_own_reply(
                &wire::reply(data, &header, question_end, false, 1),
                &header,
                q,
            );
        }
        Err(QueryError::NoHeader) => assert!(data.len() < HEADER_LEN),
        Err(QueryError::NotAQuery) => {}
    }

    // The whole decision with an empty policy: only readable queries are forwarded.
    let flow = Flow::new(
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.0.53:53".parse().unwrap(),
    );
    let (checked, _) = decide_query(
        &ProxyPolicy::new(),
        &flow,
        Protocol::Udp,
        data,
        RejectResponse::Refused,
    );
    if let Checked::Forward(q, qname) = checked {
        assert_eq!(wire::parse_query(data).ok().as_ref(), Some(&*q));
        assert_eq!(qname, q.question.name.to_text(true));
    }

    // As an answer from a server.
    if let Ok(learned) = wire::addresses(data) {
        assert!(learned.iter().all(|(n, _, _)| n.ends_with('.')));
    }
    if let Some(end) = wire::question_end(data) {
        let q = &data[HEADER_LEN..end];
        let id = Header::parse(data).map_or(0, |h| h.id);
        let _ = wire::answers_query(data, id, q);
        let mut cut = data.to_vec();
        wire::truncate_for_udp(&mut cut, end, 512, data.len() % 2 == 0);
        assert!(cut.len() <= data.len().min(512).max(end + 11));
    }
});
