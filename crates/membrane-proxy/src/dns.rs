//! The DNS proxy: checks each query's name against the DNS rules, forwards allowed queries
//! to the original server, and learns the addresses in the answers (toFQDNs).
//!
//! - A name no rule allows gets a synthesized `REFUSED` (rcode 5), or `NXDOMAIN` (rcode 3)
//!   with [`RejectResponse::NameError`], like Cilium's `--tofqdns-dns-reject-response-code`.
//!   Only the first question's name counts; the query type does not (§3.7).
//! - A flow L3/L4 does not allow is dropped without an answer.
//! - An allowed query goes to the original destination ([`Flow::upstream`]); its answer's
//!   A/AAAA records are recorded in the [`FqdnLearner`] (and published) before the answer is
//!   sent back, so the client's next connection finds its addresses known. A server that
//!   does not answer in time gives `SERVFAIL`, as Cilium's proxy does.
//!
//! Messages are parsed and written with hickory-proto; the forwarding loops are here.

pub mod wire;

use crate::flow::{Flow, bind_reply_socket, recv_with_original_dst, udp_upstream_socket};
use crate::fqdn::FqdnLearner;
use crate::http::accept;
use crate::policy::{DenialHook, ProxyPolicy, report};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{Name, RData};
use membrane_policy::model::Protocol;
use membrane_policy::verdict::Verdict;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

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
    /// UDP queries being forwarded at once; more are dropped (the client retries).
    pub max_in_flight: usize,
    /// A TCP client idle this long is disconnected.
    pub tcp_idle_timeout: Duration,
    /// Called for every denial, after it is logged.
    pub on_denial: Option<DenialHook>,
}

impl Default for DnsProxyConfig {
    fn default() -> Self {
        DnsProxyConfig {
            reject: RejectResponse::Refused,
            upstream_timeout: Duration::from_secs(5),
            spoof_source: false,
            max_in_flight: 4096,
            tcp_idle_timeout: Duration::from_secs(30),
            on_denial: None,
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
            .field("on_denial", &self.on_denial.is_some())
            .finish()
    }
}

/// What to do with one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryCheck {
    /// Allowed: forward it; `qname` is the name that was checked.
    Forward { qname: String },
    /// Answer it with this message (REFUSED, NXDOMAIN or FORMERR).
    Reply(Vec<u8>),
    /// Say nothing (dropped by L3/L4 policy, or not a query).
    Drop,
}

/// The DNS proxy's shared state: the policy it decides with and the learner it feeds.
pub struct DnsProxy {
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    learner: Arc<FqdnLearner>,
    config: DnsProxyConfig,
    /// One UDP socket per server (and client address, when spoofing), shared by queries.
    muxes: Mutex<HashMap<MuxKey, Arc<UdpMux>>>,
}

type MuxKey = (SocketAddr, Option<IpAddr>);

/// Short critical sections only, never across an await; a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queries to one server over one connected UDP socket. Each in-flight query gets its own
/// message ID on the wire (restored in the answer), so answers are matched to queries and
/// late or stray datagrams are ignored.
struct UdpMux {
    sock: Arc<UdpSocket>,
    pending: Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>>,
    next_id: AtomicU16,
    reader: tokio::task::AbortHandle,
}

impl UdpMux {
    fn start(sock: Arc<UdpSocket>) -> Arc<UdpMux> {
        let pending: Arc<Mutex<HashMap<u16, oneshot::Sender<Vec<u8>>>>> = Arc::default();
        let (r_sock, r_pending) = (sock.clone(), pending.clone());
        let reader = tokio::spawn(async move {
            loop {
                // Uninitialized capacity: no 64 KiB memset per answer.
                let mut buf = Vec::with_capacity(65535);
                match r_sock.recv_buf(&mut buf).await {
                    Ok(_) => {}
                    Err(e) if is_transient_udp(&e) => continue,
                    Err(_) => return,
                }
                let Some(id) = buf.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                    continue;
                };
                if let Some(tx) = lock(&r_pending).remove(&id) {
                    let _ = tx.send(buf);
                }
            }
        })
        .abort_handle();
        Arc::new(UdpMux {
            sock,
            pending,
            next_id: AtomicU16::new(0),
            reader,
        })
    }

    async fn exchange(&self, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
        let Some(original) = query.get(..2).map(|b| [b[0], b[1]]) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short query"));
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = lock(&self.pending);
            let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let mut tries = 0u32;
            while pending.contains_key(&id) {
                tries += 1;
                if tries > 65536 {
                    return Err(io::Error::other("all 65536 query IDs in flight"));
                }
                id = self.next_id.fetch_add(1, Ordering::Relaxed);
            }
            pending.insert(id, tx);
            id
        };
        let mut wire = query.to_vec();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        let result = async {
            self.sock.send(&wire).await?;
            let mut answer = tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the server"))?
                .map_err(|_| io::Error::other("upstream reader stopped"))?;
            if let Some(head) = answer.get_mut(..2) {
                head.copy_from_slice(&original);
            }
            Ok(answer)
        }
        .await;
        if result.is_err() {
            lock(&self.pending).remove(&id);
        }
        result
    }
}

impl Drop for UdpMux {
    fn drop(&mut self) {
        self.reader.abort();
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
            muxes: Mutex::new(HashMap::new()),
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
        let msg = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => return format_error(query),
        };
        if msg.metadata.message_type != MessageType::Query {
            return QueryCheck::Drop;
        }
        let Some(q) = msg.queries.first() else {
            return reply(&msg, ResponseCode::FormErr);
        };
        let qname = name_text(&q.name);
        let snapshot = self.policy.borrow().clone();
        let decision = snapshot.decide_dns(flow.src, flow.dst, protocol, &qname);
        drop(snapshot);
        if let Some(denial) = decision.denial(flow.src, flow.dst, qname.clone()) {
            report(&denial, self.config.on_denial.as_ref());
            return match decision.verdict {
                Verdict::DnsRefused => reply(
                    &msg,
                    match self.config.reject {
                        RejectResponse::Refused => ResponseCode::Refused,
                        RejectResponse::NameError => ResponseCode::NXDomain,
                    },
                ),
                _ => QueryCheck::Drop,
            };
        }
        QueryCheck::Forward { qname }
    }

    /// Learns the A/AAAA records of a server's answer. Every address is recorded under its
    /// owner name and under the question's name (the end of a CNAME chain belongs to the
    /// name that was asked for). Returns how many addresses the answer carried.
    pub fn learn_from_response(&self, response: &[u8]) -> usize {
        let learned = addresses_in(response);
        self.learner.learn(&learned);
        learned.len()
    }

    /// Answers one query: the reply to send back, or `None` to stay silent.
    pub async fn answer_udp(&self, flow: &Flow, query: &[u8]) -> Option<Vec<u8>> {
        match self.check_query(flow, Protocol::Udp, query) {
            QueryCheck::Reply(r) => Some(r),
            QueryCheck::Drop => None,
            QueryCheck::Forward { qname } => match self.forward_udp(flow, query).await {
                Ok(resp) => {
                    self.learn_from_response(&resp);
                    Some(resp)
                }
                Err(e) => {
                    tracing::info!(
                        error = %e, upstream = %flow.upstream, qname = %qname,
                        "dns upstream failed"
                    );
                    server_failure(query)
                }
            },
        }
    }

    /// Forwards a query over the shared socket to its server and waits for the answer.
    async fn forward_udp(&self, flow: &Flow, query: &[u8]) -> io::Result<Vec<u8>> {
        let mux = self.upstream_mux(flow).await?;
        mux.exchange(query, self.config.upstream_timeout).await
    }

    /// The multiplexed socket to `flow.upstream` (from `flow.src` when spoofing).
    async fn upstream_mux(&self, flow: &Flow) -> io::Result<Arc<UdpMux>> {
        let key = (
            flow.upstream,
            self.config.spoof_source.then_some(flow.src.ip()),
        );
        if let Some(m) = lock(&self.muxes).get(&key) {
            return Ok(m.clone());
        }
        let sock = Arc::new(udp_upstream_socket(flow, self.config.spoof_source).await?);
        let mux = UdpMux::start(sock);
        Ok(lock(&self.muxes).entry(key).or_insert(mux).clone())
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
/// # Errors
/// When receiving fails for a reason other than a transient one.
pub async fn serve_dns_udp<F>(socket: UdpSocket, proxy: Arc<DnsProxy>, flow_of: F) -> io::Result<()>
where
    F: Fn(SocketAddr, SocketAddr) -> Flow + Send + Sync + 'static,
{
    let listener = Arc::new(socket);
    let local = listener.local_addr()?;
    let (tx, mut rx) = mpsc::channel::<Datagram>(1024);
    let mut repliers: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; 65535];
    loop {
        while tasks.try_join_next().is_some() {}
        let datagram = tokio::select! {
            r = recv_with_original_dst(&listener, &mut buf) => {
                let (n, src, dst) = match r {
                    Ok(r) => r,
                    Err(e) if is_transient_udp(&e) => continue,
                    Err(e) => return Err(e),
                };
                let via = if dst == local {
                    listener.clone()
                } else {
                    replier(&mut repliers, &mut tasks, &tx, dst).unwrap_or_else(|| listener.clone())
                };
                Datagram { query: buf[..n].to_vec(), src, dst, via }
            }
            Some(d) = rx.recv() => d,
        };
        if tasks.len() >= proxy.config.max_in_flight + repliers.len() {
            tracing::warn!(src = %datagram.src, "dns proxy: too many queries in flight, dropping one");
            continue;
        }
        let flow = flow_of(datagram.src, datagram.dst);
        let proxy = proxy.clone();
        tasks.spawn(async move {
            if let Some(resp) = proxy.answer_udp(&flow, &datagram.query).await {
                if let Err(e) = datagram.via.send_to(&resp, datagram.src).await {
                    tracing::info!(error = %e, src = %datagram.src, "dns reply failed");
                }
            }
        });
    }
}

/// A query received by the UDP proxy, and the socket to answer it from.
struct Datagram {
    query: Vec<u8>,
    src: SocketAddr,
    dst: SocketAddr,
    via: Arc<UdpSocket>,
}

/// The socket bound to the original destination `dst`, made (and read from) on first use.
fn replier(
    repliers: &mut HashMap<SocketAddr, Arc<UdpSocket>>,
    tasks: &mut JoinSet<()>,
    tx: &mpsc::Sender<Datagram>,
    dst: SocketAddr,
) -> Option<Arc<UdpSocket>> {
    if let Some(s) = repliers.get(&dst) {
        return Some(s.clone());
    }
    let sock = match bind_reply_socket(dst) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::warn!(error = %e, %dst, "dns proxy: cannot answer from the original destination");
            return None;
        }
    };
    repliers.insert(dst, sock.clone());
    let (reader, tx) = (sock.clone(), tx.clone());
    tasks.spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (n, src) = match reader.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) if is_transient_udp(&e) => continue,
                Err(_) => return,
            };
            let d = Datagram {
                query: buf[..n].to_vec(),
                src,
                dst,
                via: reader.clone(),
            };
            if tx.send(d).await.is_err() {
                return;
            }
        }
    });
    Some(sock)
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

/// Serves the length-prefixed queries of one TCP connection, one at a time.
pub async fn serve_dns_tcp_connection(
    mut client: TcpStream,
    flow: Flow,
    proxy: &DnsProxy,
) -> io::Result<()> {
    let mut upstream: Option<TcpStream> = None;
    let idle = proxy.config.tcp_idle_timeout;
    loop {
        let query = match tokio::time::timeout(idle, read_framed(&mut client)).await {
            Ok(Ok(Some(q))) => q,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        let resp = match proxy.check_query(&flow, Protocol::Tcp, &query) {
            QueryCheck::Reply(r) => r,
            QueryCheck::Drop => return Ok(()),
            QueryCheck::Forward { qname } => {
                let answer = tokio::time::timeout(
                    proxy.config.upstream_timeout,
                    exchange_tcp(&mut upstream, &flow, &proxy.config, &query),
                )
                .await;
                match answer {
                    Ok(Ok(r)) => {
                        proxy.learn_from_response(&r);
                        r
                    }
                    Ok(Err(_)) | Err(_) => {
                        upstream = None;
                        tracing::info!(upstream = %flow.upstream, %qname, "dns upstream failed");
                        match server_failure(&query) {
                            Some(r) => r,
                            None => return Ok(()),
                        }
                    }
                }
            }
        };
        write_framed(&mut client, &resp).await?;
    }
}

async fn exchange_tcp(
    upstream: &mut Option<TcpStream>,
    flow: &Flow,
    config: &DnsProxyConfig,
    query: &[u8],
) -> io::Result<Vec<u8>> {
    let stream = match upstream {
        Some(s) => s,
        None => upstream.insert(
            crate::flow::connect_upstream(flow, config.spoof_source, config.upstream_timeout)
                .await?,
        ),
    };
    write_framed(stream, query).await?;
    read_framed(stream)
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"))
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

/// A name as text, the way Cilium's DNS library writes it: labels joined by dots, a final
/// dot, bytes outside `[!-~]` and the characters `.` `\` written as `\DDD` / `\.` escapes.
pub fn name_text(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let mut out = String::with_capacity(name.len() + 1);
    for label in name.iter() {
        for &b in label {
            match b {
                b'.' | b'\\' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                b'!'..=b'~' => out.push(char::from(b)),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('.');
    }
    out
}

/// The response to `request` with `rcode` and its questions.
fn reply(request: &Message, rcode: ResponseCode) -> QueryCheck {
    let mut resp = Message::response(request.metadata.id, request.metadata.op_code);
    resp.metadata.recursion_desired = request.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.checking_disabled = request.metadata.checking_disabled;
    resp.metadata.response_code = rcode;
    resp.queries = request.queries.clone();
    match resp.to_vec() {
        Ok(bytes) => QueryCheck::Reply(bytes),
        Err(_) => QueryCheck::Drop,
    }
}

/// `FORMERR` for a query hickory cannot read (when it at least has an ID and is a query).
fn format_error(query: &[u8]) -> QueryCheck {
    match (query.first(), query.get(1), query.get(2)) {
        (Some(&hi), Some(&lo), Some(&flags)) if flags & 0x80 == 0 && query.len() >= 12 => {
            let msg = Message::error_msg(
                u16::from_be_bytes([hi, lo]),
                OpCode::Query,
                ResponseCode::FormErr,
            );
            msg.to_vec().map_or(QueryCheck::Drop, QueryCheck::Reply)
        }
        _ => QueryCheck::Drop,
    }
}

fn server_failure(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    match reply(&msg, ResponseCode::ServFail) {
        QueryCheck::Reply(r) => Some(r),
        _ => None,
    }
}

/// `(name, address, ttl)` for every A/AAAA record in the answer section of a successful
/// response, under its owner name and under the question's name.
pub fn addresses_in(response: &[u8]) -> Vec<(String, IpAddr, u32)> {
    let Ok(msg) = Message::from_vec(response) else {
        return vec![];
    };
    if msg.metadata.message_type != MessageType::Response
        || msg.metadata.response_code != ResponseCode::NoError
    {
        return vec![];
    }
    let qname = msg.queries.first().map(|q| name_text(&q.name));
    let mut out = Vec::new();
    for r in &msg.answers {
        let ip = match &r.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        let owner = name_text(&r.name);
        if let Some(q) = &qname {
            if !q.eq_ignore_ascii_case(&owner) {
                out.push((q.clone(), ip, r.ttl));
            }
        }
        out.push((owner, ip, r.ttl));
    }
    out
}

#[cfg(test)]
mod tests;
