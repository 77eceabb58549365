//! The DNS proxy: checks each query's name against the DNS rules, forwards allowed queries
//! to the original server, and learns the addresses in the answers (toFQDNs).
//!
//! - A name no rule allows gets a synthesized `REFUSED` (rcode 5), or `NXDOMAIN` (rcode 3)
//!   with [`RejectResponse::NameError`], like Cilium's `--tofqdns-dns-reject-response-code`.
//!   The query type does not count.
//! - A flow L3/L4 does not allow is dropped without an answer.
//! - An allowed query goes to the original destination ([`Flow::upstream`]); its answer's
//!   A/AAAA records are recorded in the [`FqdnLearner`] (and published) before the answer is
//!   sent back, so the client's next connection finds its addresses known. A server that
//!   does not answer in time gives `SERVFAIL`, as Cilium's proxy does.
//!
//! Hostile input (messages are read by [`wire`], which refuses anything ambiguous):
//!
//! - Fewer than 12 bytes, or a response (QR=1): dropped. Two proxies, or a proxy and a
//!   spoofer, cannot make each other answer forever.
//! - An opcode other than QUERY: `NOTIMP`.
//! - Anything else the reader refuses: `FORMERR`. That includes no question and more than
//!   one question: a second question is a second name the server might answer, so a query
//!   carries exactly one (BIND answers FORMERR too; Cilium checks only the first).
//! - The policy sees the name as the server will: ASCII case folded (names compare
//!   case-insensitively), with a final dot, bytes that are not printable and literal dots
//!   inside a label escaped (`a\.b` is one label and matches no `*.b` pattern). The query
//!   goes to the server byte for byte apart from its ID, so a client's 0x20 case mixing and
//!   its EDNS OPT record are kept.
//! - On the way to the server every query gets a fresh unpredictable ID. An answer counts
//!   only if it comes from the server's address (connected socket), carries that ID, is a
//!   response, and repeats the question (ignoring case); anything else is ignored as stray
//!   or spoofed. The client gets its own ID and its own spelling of the question back.
//! - An answer the proxy cannot read through to its end is not passed on (the client could
//!   otherwise use addresses the proxy did not learn): `SERVFAIL`.
//! - A UDP answer larger than the client takes (512 bytes, or the size in its OPT record)
//!   is cut to its header and question with TC set, so the client retries over TCP.
//! - TCP: 2-byte length framing; a zero length, a truncated message, or a message not
//!   finished within `tcp_read_timeout` closes the connection; pipelined queries are
//!   answered in order.

mod batch;
mod udp;
pub mod wire;

use crate::flow::{Flow, bind_reply_socket, udp_upstream_socket};
use crate::fqdn::FqdnLearner;
use crate::http::accept;
use crate::policy::{Denial, DenialHook, DnsForwardHook, DnsForwarded, ProxyPolicy, report};
use membrane_policy::model::Protocol;
use membrane_policy::verdict::Verdict;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use wire::{Edns, HEADER_LEN, Header, Query, QueryError};

/// How a query no rule allows is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RejectResponse {
    /// `REFUSED` (rcode 5), Cilium's default.
    #[default]
    Refused,
    /// `NXDOMAIN` (rcode 3): `--tofqdns-dns-reject-response-code=nameError`.
    NameError,
}

/// How the DNS proxy behaves.
#[derive(Clone)]
pub struct DnsProxyConfig {
    pub reject: RejectResponse,
    /// How long to wait for the server's answer before answering `SERVFAIL`.
    pub upstream_timeout: Duration,
    /// Query the server from the client's own address (`IP_TRANSPARENT`).
    pub spoof_source: bool,
    /// UDP queries being forwarded at once (per server); more are dropped (the client
    /// retries).
    pub max_in_flight: usize,
    /// A TCP client idle this long is disconnected.
    pub tcp_idle_timeout: Duration,
    /// A TCP message whose length has arrived must be complete within this time.
    pub tcp_read_timeout: Duration,
    /// Called for every denial, after it is logged.
    pub on_denial: Option<DenialHook>,
    /// Called for every query forwarded because a rule allows it (flow events).
    pub on_forward: Option<DnsForwardHook>,
}

impl Default for DnsProxyConfig {
    fn default() -> Self {
        DnsProxyConfig {
            reject: RejectResponse::Refused,
            upstream_timeout: Duration::from_secs(5),
            spoof_source: false,
            max_in_flight: 4096,
            tcp_idle_timeout: Duration::from_secs(30),
            tcp_read_timeout: Duration::from_secs(5),
            on_denial: None,
            on_forward: None,
        }
    }
}

impl fmt::Debug for DnsProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsProxyConfig")
            .field("reject", &self.reject)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("spoof_source", &self.spoof_source)
            .field("max_in_flight", &self.max_in_flight)
            .field("tcp_idle_timeout", &self.tcp_idle_timeout)
            .field("tcp_read_timeout", &self.tcp_read_timeout)
            .field("on_denial", &self.on_denial.is_some())
            .field("on_forward", &self.on_forward.is_some())
            .finish()
    }
}

/// What to do with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryCheck {
    /// Allowed: forward it; `qname` is the name that was checked.
    Forward { qname: String },
    /// Answer it with this message (REFUSED, NXDOMAIN, FORMERR or NOTIMP).
    Reply(Vec<u8>),
    /// Say nothing (dropped by L3/L4 policy, or not a query).
    Drop,
}

/// [`QueryCheck`] with the parsed query kept for forwarding.
#[derive(Debug)]
pub enum Checked {
    Forward(Box<Query>, String),
    Reply(Vec<u8>),
    Drop,
}

/// The DNS proxy's shared state: the policy it decides with and the learner it feeds.
pub struct DnsProxy {
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    learner: Arc<FqdnLearner>,
    config: DnsProxyConfig,
    /// Unpredictable query IDs: SipHash, keyed randomly per process, of a counter.
    ids: IdSource,
}

/// Query IDs an off-path attacker cannot predict: std's `RandomState` is keyed from the
/// OS's random source, and SipHash of a counter under a secret key is a pseudo-random
/// function. Sequential IDs would let a spoofer guess the ID of the next query.
struct IdSource {
    key: RandomState,
    counter: AtomicU64,
}

impl IdSource {
    fn new() -> IdSource {
        IdSource {
            key: RandomState::new(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> u16 {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        (self.key.hash_one(n) >> 24) as u16
    }
}

/// Who waits for a forwarded UDP query's answer.
enum Waiter {
    /// A client of [`serve_dns_udp`]: the answer is sent from `via` to `client`.
    Udp {
        via: Arc<batch::ReadOnlySocket>,
        client: SocketAddr,
        limit: usize,
        /// The client sent an OPT record.
        edns: bool,
    },
}

/// A query sent to the server and not answered yet.
struct Pending {
    /// The client's header (its ID and flags).
    header: Header,
    /// The client's question section, exactly as it spelled it.
    question: Vec<u8>,
    edns: bool,
    deadline: Instant,
    waiter: Waiter,
}

/// Answers for UDP clients gathered over one batch, to be sent with one `sendmmsg` per
/// socket they leave from.
#[derive(Default)]
struct Replies {
    by_socket: Vec<(Arc<batch::ReadOnlySocket>, batch::Outgoing)>,
}

impl Replies {
    fn push(&mut self, via: &Arc<batch::ReadOnlySocket>, msg: Vec<u8>, to: Option<SocketAddr>) {
        match self.by_socket.iter_mut().find(|(s, _)| Arc::ptr_eq(s, via)) {
            Some((_, v)) => v.push((msg, to)),
            None => self.by_socket.push((via.clone(), vec![(msg, to)])),
        }
    }

    /// `reply` for `waiter`: UDP clients get it with the next flush, cut to their size.
    fn add(&mut self, waiter: Waiter, mut reply: Vec<u8>) {
        match waiter {
            Waiter::Udp {
                via,
                client,
                limit,
                edns,
            } => {
                let question_end = wire::question_end(&reply).unwrap_or(HEADER_LEN);
                wire::truncate_for_udp(&mut reply, question_end, limit, edns);
                self.push(&via, reply, Some(client));
            }
        }
    }

    async fn flush(&mut self) {
        for (sock, msgs) in &self.by_socket {
            batch::send_batch(sock.get_ref(), msgs).await;
        }
        self.by_socket.clear();
    }
}

/// The server's answer as the client gets it: its ID and its spelling of the question
/// restored, the addresses learned first. An answer that cannot be read to its end gives
/// `SERVFAIL` instead. `fresh` becomes the learner's generation when the answer taught it
/// something (the answer is then held until that is enforced).
fn finish_answer(
    answer: &[u8],
    header: &Header,
    question: &[u8],
    edns: bool,
    learner: &FqdnLearner,
    fresh: &mut Option<u64>,
) -> Vec<u8> {
    match wire::addresses(answer) {
        Ok(learned) => {
            if learner.learn(&learned) {
                *fresh = Some(learner.generation());
            }
            let mut out = answer.to_vec();
            out[..2].copy_from_slice(&header.id.to_be_bytes());
            // `answers_query` checked that this range holds the question, ignoring case.
            if let Some(q) = out.get_mut(HEADER_LEN..HEADER_LEN + question.len()) {
                q.copy_from_slice(question);
            }
            out
        }
        Err(e) => {
            tracing::info!(error = ?e, "dns proxy: unreadable answer from the server");
            wire::reply_to(header, question, edns, wire::RCODE_SERVFAIL)
        }
    }
}

impl DnsProxy {
    pub fn new(
        policy: watch::Receiver<Arc<ProxyPolicy>>,
        learner: Arc<FqdnLearner>,
        config: DnsProxyConfig,
    ) -> DnsProxy {
        DnsProxy {
            policy,
            learner,
            config,
            ids: IdSource::new(),
        }
    }

    pub fn learner(&self) -> &Arc<FqdnLearner> {
        &self.learner
    }

    pub fn config(&self) -> &DnsProxyConfig {
        &self.config
    }

    /// Decides one query (wire format) with the current policy; denials are reported.
    pub fn check_query(&self, flow: &Flow, protocol: Protocol, query: &[u8]) -> QueryCheck {
        match self.check(flow, protocol, query) {
            Checked::Forward(_, qname) => QueryCheck::Forward { qname },
            Checked::Reply(r) => QueryCheck::Reply(r),
            Checked::Drop => QueryCheck::Drop,
        }
    }

    fn check(&self, flow: &Flow, protocol: Protocol, query: &[u8]) -> Checked {
        let snapshot = self.policy.borrow().clone();
        let (checked, denial) = decide_query(&snapshot, flow, protocol, query, self.config.reject);
        if let (Checked::Forward(_, qname), Some(hook)) = (&checked, &self.config.on_forward) {
            // Only with a hook: the rules that allowed it are decided again for the event.
            let decision = snapshot.decide_dns(flow.src, flow.dst, protocol, qname);
            hook(&DnsForwarded {
                src: flow.src,
                dst: flow.dst,
                qname: qname.clone(),
                rules: decision.deciding_rules(),
                decision,
            });
        }
        drop(snapshot);
        if let Some(denial) = denial {
            report(&denial, self.config.on_denial.as_ref());
        }
        checked
    }

    /// Learns the A/AAAA records of a server's answer. Every address is recorded under its
    /// owner name and under the question's name (the end of a CNAME chain belongs to the
    /// name that was asked for). Returns how many addresses the answer carried.
    pub fn learn_from_response(&self, response: &[u8]) -> usize {
        let learned = addresses_in(response);
        self.learner.learn(&learned);
        learned.len()
    }
}

/// Decides one query (wire format) with `policy`, without side effects: what to do, and the
/// denial to report if any. The name checked is the question's, ASCII case folded (the
/// server compares names case-insensitively, so must the policy).
pub fn decide_query(
    policy: &ProxyPolicy,
    flow: &Flow,
    protocol: Protocol,
    query: &[u8],
    reject: RejectResponse,
) -> (Checked, Option<Denial>) {
    let q = match wire::parse_query(query) {
        Ok(q) => q,
        Err(e) => return (refuse_unreadable(query, e), None),
    };
    let qname = q.question.name.to_text(true);
    let decision = policy.decide_dns(flow.src, flow.dst, protocol, &qname);
    if decision.is_allowed() {
        return (Checked::Forward(Box::new(q), qname), None);
    }
    if let Some(denial) = decision.denial(flow.src, flow.dst, qname.clone()) {
        let rcode = match reject {
            RejectResponse::Refused => wire::RCODE_REFUSED,
            RejectResponse::NameError => wire::RCODE_NXDOMAIN,
        };
        let checked = match decision.verdict {
            Verdict::DnsRefused => Checked::Reply(wire::reply(
                query,
                &q.header,
                Some(q.question_end),
                q.edns.is_some(),
                rcode,
            )),
            _ => Checked::Drop,
        };
        return (checked, Some(denial));
    }
    (Checked::Forward(Box::new(q), qname), None)
}

/// What an unreadable message gets: nothing without a header or for a response, `NOTIMP`
/// for another opcode, `FORMERR` otherwise.
fn refuse_unreadable(query: &[u8], e: QueryError) -> Checked {
    match e {
        QueryError::NoHeader | QueryError::NotAQuery => Checked::Drop,
        QueryError::NotImplemented(h) => {
            Checked::Reply(wire::reply(query, &h, None, false, wire::RCODE_NOTIMP))
        }
        QueryError::Malformed {
            header,
            question_end,
            error,
        } => {
            tracing::debug!(?error, "dns proxy: malformed query");
            Checked::Reply(wire::reply(
                query,
                &header,
                question_end,
                false,
                wire::RCODE_FORMERR,
            ))
        }
    }
}

/// Serves DNS over UDP on `socket` forever. `flow_of(source, original destination)` gives
/// each datagram's addresses (`Flow::new` under tproxy, where the original destination
/// comes from `IP_RECVORIGDSTADDR`).
///
/// Replies come from the original destination: for a destination other than the socket's
/// own address the proxy binds a transparent socket to it (once), answers from it, and
/// serves the queries that reach it too (tproxy hands datagrams to the socket bound to
/// their destination when there is one).
///
/// One task serves the socket, its reply sockets and the sockets to the servers (see
/// `dns/udp.rs`); datagrams are read and sent in batches.
///
/// # Errors
/// When receiving fails for a reason other than a transient one.
pub async fn serve_dns_udp<F>(socket: UdpSocket, proxy: Arc<DnsProxy>, flow_of: F) -> io::Result<()>
where
    F: Fn(SocketAddr, SocketAddr) -> Flow + Send + Sync + 'static,
{
    udp::serve(socket, proxy, flow_of).await
}

fn is_transient_udp(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // ICMP errors of earlier sends surface here as ECONNREFUSED and friends.
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(e.raw_os_error(), Some(113 | 101 | 105 | 12 | 90))
}

/// Serves DNS over TCP on `listener` forever; `flow_of` as for [`crate::serve_http`].
///
/// # Errors
/// When accepting fails for a reason other than a transient one.
pub async fn serve_dns_tcp<F>(
    listener: TcpListener,
    proxy: Arc<DnsProxy>,
    flow_of: F,
) -> io::Result<()>
where
    F: Fn(&TcpStream) -> io::Result<Flow> + Send + Sync + 'static,
{
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let Some(stream) = accept(&listener).await? else {
            continue;
        };
        let flow = match flow_of(&stream) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "dns proxy: no original destination, closing");
                continue;
            }
        };
        let proxy = proxy.clone();
        tasks.spawn(async move {
            if let Err(e) = serve_dns_tcp_connection(stream, flow, &proxy).await {
                tracing::debug!(error = %e, src = %flow.src, "dns tcp connection ended");
            }
        });
    }
}

/// Serves the length-prefixed queries of one TCP connection, one at a time, in order.
pub async fn serve_dns_tcp_connection(
    mut client: TcpStream,
    flow: Flow,
    proxy: &DnsProxy,
) -> io::Result<()> {
    let mut upstream: Option<TcpStream> = None;
    let config = &proxy.config;
    loop {
        let query = match read_framed_timed(
            &mut client,
            config.tcp_idle_timeout,
            config.tcp_read_timeout,
        )
        .await?
        {
            Some(q) => q,
            None => return Ok(()),
        };
        let resp = match proxy.check(&flow, Protocol::Tcp, &query) {
            Checked::Reply(r) => r,
            Checked::Drop => return Ok(()),
            Checked::Forward(q, qname) => {
                let id = proxy.ids.next();
                let answer = tokio::time::timeout(
                    config.upstream_timeout,
                    exchange_tcp(&mut upstream, &flow, config, &query, &q, id),
                )
                .await;
                let question = query.get(HEADER_LEN..q.question_end).unwrap_or_default();
                let edns = q.edns.is_some();
                match answer {
                    Ok(Ok(r)) => {
                        let mut fresh = None;
                        let reply = finish_answer(
                            &r,
                            &q.header,
                            question,
                            edns,
                            &proxy.learner,
                            &mut fresh,
                        );
                        if let Some(g) = fresh {
                            proxy.learner.wait_enforced(g).await;
                        }
                        reply
                    }
                    Ok(Err(_)) | Err(_) => {
                        upstream = None;
                        tracing::info!(upstream = %flow.upstream, %qname, "dns upstream failed");
                        wire::reply_to(&q.header, question, edns, wire::RCODE_SERVFAIL)
                    }
                }
            }
        };
        write_framed(&mut client, &resp).await?;
    }
}

/// Sends `query` under `id` on the (re)used connection to the server and reads the answer;
/// an answer that is not to this query is an error (the connection is then dropped).
async fn exchange_tcp(
    upstream: &mut Option<TcpStream>,
    flow: &Flow,
    config: &DnsProxyConfig,
    query: &[u8],
    q: &Query,
    id: u16,
) -> io::Result<Vec<u8>> {
    let stream = match upstream {
        Some(s) => s,
        None => upstream.insert(
            crate::flow::connect_upstream(flow, config.spoof_source, config.upstream_timeout)
                .await?,
        ),
    };
    let mut out = query.to_vec();
    out[..2].copy_from_slice(&id.to_be_bytes());
    write_framed(stream, &out).await?;
    let answer = read_framed(stream)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"))?;
    let question = query.get(HEADER_LEN..q.question_end).unwrap_or_default();
    if !wire::answers_query(&answer, id, question) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the server's answer is not to our query",
        ));
    }
    Ok(answer)
}

/// One length-prefixed message: the length within `idle`, the rest within `read`. `None`
/// at a clean end of stream, on a zero length, or when idle too long.
async fn read_framed_timed(
    stream: &mut TcpStream,
    idle: Duration,
    read: Duration,
) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(None),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Ok(None);
    }
    let mut msg = vec![0u8; len];
    match tokio::time::timeout(read, stream.read_exact(&mut msg)).await {
        Ok(r) => r.map(|_| Some(msg)),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "message not finished",
        )),
    }
}

/// One length-prefixed message; `None` at a clean end of stream.
async fn read_framed(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 {
        return Ok(None);
    }
    let mut msg = vec![0u8; len];
    stream.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_framed(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    stream.write_all(&out).await
}

/// `(name, address, ttl)` for every A/AAAA record in the answer section of a successful
/// response, under its owner name and under the question's name; nothing for a message
/// that cannot be read.
pub fn addresses_in(response: &[u8]) -> Vec<(String, IpAddr, u32)> {
    wire::addresses(response).unwrap_or_default()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod test_upstream;

#[cfg(test)]
mod hostile_tests;
