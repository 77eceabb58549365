//! A recording DNS server for the hostile-input tests: keeps every message it receives,
//! raw, and answers with hickory-proto (an implementation independent of the proxy's).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, UdpSocket};

/// How the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One A record, 192.0.2.1, with the question echoed byte for byte.
    Normal,
    /// 100 A records (about 1.6 KB).
    Big,
    /// First a forged answer with the right ID from another port (6.6.6.5), then one with
    /// another ID (6.6.6.6), then one with the right ID but another question (6.6.6.7),
    /// then the real one.
    SpoofFirst,
    /// The real answer with trailing garbage.
    Garbage,
    /// The answer with the question (and the records' names) in lower case, as servers
    /// that do not preserve case write it.
    LowerCase,
}

pub const ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

pub struct Recording {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recording {
    pub fn messages(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }

    /// Asserts that no message the server received mentions `needle` (ASCII, any case)
    /// in its raw bytes nor in any question name hickory reads in it.
    pub fn assert_never_saw(&self, needle: &str) {
        let needle = needle.to_ascii_lowercase();
        for m in self.messages() {
            let raw = String::from_utf8_lossy(&m).to_ascii_lowercase();
            assert!(!raw.contains(&needle), "server received {m:?}");
            if let Ok(msg) = Message::from_vec(&m) {
                for q in &msg.queries {
                    let name = q.name.to_ascii().to_ascii_lowercase();
                    assert!(!name.contains(&needle), "server was asked {name}");
                }
            }
        }
    }
}

fn answer(query: &[u8], mode: Mode) -> Vec<Vec<u8>> {
    let Ok(q) = Message::from_vec(query) else {
        return vec![];
    };
    let Some(question) = q.queries.first().cloned() else {
        return vec![];
    };
    let build = |id: u16, addr: Ipv4Addr, count: usize, name_from: &Message| {
        let mut r = Message::response(id, q.metadata.op_code);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        r.queries = name_from.queries.clone();
        for i in 0..count {
            let a = if count == 1 {
                addr
            } else {
                Ipv4Addr::new(192, 0, 2, i as u8)
            };
            r.answers.push(Record::from_rdata(
                question.name.clone(),
                60,
                RData::A(A(a)),
            ));
        }
        r.to_vec().unwrap()
    };
    let id = q.metadata.id;
    match mode {
        Mode::Normal => vec![build(id, ANSWER, 1, &q)],
        Mode::Big => vec![build(id, ANSWER, 100, &q)],
        Mode::SpoofFirst => {
            let mut other = q.clone();
            other.queries[0].name = "spoof.example.com.".parse().unwrap();
            vec![
                build(id, Ipv4Addr::new(6, 6, 6, 5), 1, &q),
                build(id.wrapping_add(1), Ipv4Addr::new(6, 6, 6, 6), 1, &q),
                build(id, Ipv4Addr::new(6, 6, 6, 7), 1, &other),
                build(id, ANSWER, 1, &q),
            ]
        }
        Mode::LowerCase => {
            let mut lower = q.clone();
            lower.queries[0].name = question.name.to_lowercase();
            let mut r = Message::response(id, q.metadata.op_code);
            r.metadata.recursion_desired = q.metadata.recursion_desired;
            r.queries = lower.queries.clone();
            r.answers.push(Record::from_rdata(
                question.name.to_lowercase(),
                60,
                RData::A(A(ANSWER)),
            ));
            vec![r.to_vec().unwrap()]
        }
        Mode::Garbage => {
            let mut m = build(id, ANSWER, 1, &q);
            m.extend_from_slice(b"garbage");
            vec![m]
        }
    }
}

/// Starts the server on 127.0.0.1 (UDP and TCP).
pub async fn recording_upstream(mode: Mode) -> Recording {
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
    let rec = received.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            rec.lock().unwrap().push(buf[..n].to_vec());
            if Message::from_vec(&buf[..n])
                .is_ok_and(|m| m.metadata.message_type == MessageType::Response)
            {
                continue;
            }
            let mut answers = answer(&buf[..n], mode);
            if mode == Mode::SpoofFirst && !answers.is_empty() {
                // From another port of the same host: the right ID, the wrong source.
                let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                let _ = other.send_to(&answers.remove(0), from).await;
            }
            for a in answers {
                let _ = udp.send_to(&a, from).await;
            }
        }
    });
    let rec = received.clone();
    crate::testutil::serve_framed_dns(tcp, move |q| {
        rec.lock().unwrap().push(q.to_vec());
        // Over TCP only the real answer: one answer per query.
        answer(q, mode).pop()
    });
    Recording {
        udp: udp_addr,
        tcp: tcp_addr,
        received,
    }
}
