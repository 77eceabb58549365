//! The HTTP proxy: HTTP/1.1 on both sides, one upstream connection per client connection.
//!
//! Every request on a connection (keep-alive and pipelined ones alike) is parsed and checked
//! as Envoy checks it under Cilium's defaults ([`head`]: path normalization, `Host`,
//! framing, upgrades), then decided with the policy snapshot current at that moment:
//! - a request no HTTP rule allows gets `403` with body `Access denied\r\n` (`text/plain`),
//!   as Cilium's Envoy answers, and the connection stays open (its body, if any, is read
//!   and dropped; a large one closes the connection instead);
//! - a flow L3/L4 does not allow (the destination's ingress, which the datapath skips once the
//!   source's egress redirected to this proxy) is dropped: the connection closes without an
//!   answer, as a dropped SYN would leave it;
//! - an allowed request gets its `headerMatches` rewrites and goes to the original
//!   destination as policy saw it: the normalized path, the checked authority as `Host`, the
//!   end-to-end headers, the body re-framed ([`chunked`]); an unreachable upstream gives
//!   `503`, an upstream that answers nonsense `502`.
//!
//! The proxy writes its own HTTP/1.1 rather than using a general-purpose library so that
//! the bytes policy decided on are the bytes forwarded, with no second parser in between.

pub mod chunked;
pub mod head;
pub mod path;
mod response;

use crate::flow::{Flow, connect_upstream};
use crate::policy::{DenialHook, ForwardHook, Forwarded, HeaderAction, ProxyPolicy, report};
use chunked::{ChunkedDecoder, Step};
use head::{BodyFraming, Header, Parsed, Rejection, RequestHead};
use membrane_policy::model::Protocol;
use membrane_policy::verdict::{HttpRequest, L7Request, Verdict};
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

/// The body Cilium's proxy answers a denied request with.
pub const ACCESS_DENIED_BODY: &str = "Access denied\r\n";

/// The body of the proxy's own `503`.
pub const UPSTREAM_UNAVAILABLE_BODY: &str =
    "upstream connect error or disconnect/reset before headers\r\n";

/// How the HTTP proxy behaves.
#[derive(Clone)]
pub struct HttpProxyConfig {
    /// Connect upstream from the client's own address (`IP_TRANSPARENT`), as Cilium does.
    pub spoof_source: bool,
    pub connect_timeout: Duration,
    /// The largest request head (request line and headers) accepted; larger ones get `431`
    /// and the connection is closed.
    pub max_header_bytes: usize,
    /// A client that has not sent a whole request head this long after its first byte gets
    /// `408` and is disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// The body of a denied request is read and dropped up to this size to keep the
    /// connection; a larger one closes it.
    pub max_drain_bytes: u64,
    /// Called for every denial, after it is logged.
    pub on_denial: Option<DenialHook>,
    /// Called for every forwarded request once its answer's status is known.
    pub on_forward: Option<ForwardHook>,
}

impl Default for HttpProxyConfig {
    fn default() -> Self {
        HttpProxyConfig {
            spoof_source: false,
            connect_timeout: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_drain_bytes: 1024 * 1024,
            on_denial: None,
            on_forward: None,
        }
    }
}

impl fmt::Debug for HttpProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProxyConfig")
            .field("spoof_source", &self.spoof_source)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_drain_bytes", &self.max_drain_bytes)
            .field("on_denial", &self.on_denial.is_some())
            .field("on_forward", &self.on_forward.is_some())
            .finish()
    }
}

/// Accepts connections on `listener` forever and proxies each; `flow_of` tells each
/// connection's addresses ([`crate::transparent_flow`] under tproxy). Dropping the future
/// (or aborting its task) closes every connection it serves.
///
/// # Errors
/// Only when accepting fails for a reason other than a transient one (a full file table, an
/// aborted connection).
pub async fn serve_http<F>(
    listener: TcpListener,
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    flow_of: F,
    config: HttpProxyConfig,
) -> io::Result<()>
where
    F: Fn(&TcpStream) -> io::Result<Flow> + Send + Sync + 'static,
{
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let stream = match accept(&listener).await? {
            Some(s) => s,
            None => continue,
        };
        let flow = match flow_of(&stream) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "http proxy: no original destination, closing");
                continue;
            }
        };
        tasks.spawn(serve_http_connection(
            stream,
            flow,
            policy.clone(),
            config.clone(),
        ));
    }
}

/// Accepts one connection; `Ok(None)` after a transient failure.
pub(crate) async fn accept(listener: &TcpListener) -> io::Result<Option<TcpStream>> {
    match listener.accept().await {
        Ok((s, _)) => {
            let _ = s.set_nodelay(true);
            Ok(Some(s))
        }
        Err(e) if is_transient(&e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    // EMFILE, ENFILE, ENOBUFS, ENOMEM, EPROTO, EPERM (a firewall's verdict).
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12 | 71 | 1))
}

/// Proxies one accepted connection until either side closes it.
pub async fn serve_http_connection(
    stream: TcpStream,
    flow: Flow,
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    config: Arc<HttpProxyConfig>,
) {
    let mut conn = Connection {
        deadline: Box::pin(tokio::time::sleep(config.idle_timeout)),
        view: L7Request::Http(HttpRequest::default()),
        client: stream,
        buf: Vec::with_capacity(READ_CHUNK),
        upstream: None,
        flow,
        policy,
        config,
    };
    if let Err(e) = conn.run().await {
        tracing::debug!(error = %e, src = %flow.src, dst = %flow.dst, "http connection ended");
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// An upstream connection and the bytes read from it but not yet used.
struct Upstream {
    stream: TcpStream,
    buf: Vec<u8>,
}

struct Connection {
    client: TcpStream,
    /// When the current wait for a request head ends (idle or header timeout).
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// The current request as policy sees it (kept to reuse its memory).
    view: L7Request,
    /// Client bytes read but not yet used (the start of the next request, pipelined ones).
    buf: Vec<u8>,
    upstream: Option<Upstream>,
    flow: Flow,
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    config: Arc<HttpProxyConfig>,
}

/// What became of one exchange.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the client connection.
    Close,
}

impl Connection {
    async fn run(&mut self) -> io::Result<()> {
        loop {
            let Some(parsed) = self.read_head().await? else {
                return Ok(());
            };
            let next = match parsed {
                Parsed::Partial => return Ok(()),
                Parsed::Rejected(r) => {
                    self.reject(&r).await?;
                    Next::Close
                }
                Parsed::Request(head) => self.exchange(head).await?,
            };
            if matches!(next, Next::Close) {
                let _ = self.client.shutdown().await;
                return Ok(());
            }
        }
    }

    /// Reads until a whole head is buffered: `None` when the client closed or went idle
    /// between requests; a `408` is sent when a started head does not complete in time.
    async fn read_head(&mut self) -> io::Result<Option<Parsed>> {
        // One timer per connection, pushed later for each request: extending a registered
        // tokio timer is an atomic store, where a fresh timeout per read takes the timer
        // wheel's lock twice.
        self.deadline
            .as_mut()
            .reset(Instant::now() + self.config.idle_timeout);
        let mut head_started = false;
        loop {
            if !self.buf.is_empty() {
                let parsed = head::parse_request_head(&self.buf, self.config.max_header_bytes);
                if !matches!(parsed, Parsed::Partial) {
                    return Ok(Some(parsed));
                }
                if !head_started {
                    head_started = true;
                    self.deadline
                        .as_mut()
                        .reset(Instant::now() + self.config.header_read_timeout);
                }
            }
            tokio::select! {
                biased;
                read = read_more(&mut self.client, &mut self.buf) => match read {
                    Ok(0) => return Ok(None),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                },
                () = self.deadline.as_mut() => {
                    if head_started {
                        let _ = self
                            .client
                            .write_all(&local_reply(408, "request header timeout", true))
                            .await;
                    }
                    return Ok(None);
                }
            }
        }
    }

    async fn reject(&mut self, r: &Rejection) -> io::Result<()> {
        tracing::debug!(
            src = %self.flow.src, dst = %self.flow.dst, status = r.status(), reason = r.reason(),
            "http request rejected"
        );
        let bytes = match r {
            Rejection::Redirect { location } => redirect_reply(location),
            Rejection::UpgradeDenied(_) => local_reply(403, ACCESS_DENIED_BODY, true),
            other => local_reply(other.status(), other.reason(), true),
        };
        self.client.write_all(&bytes).await
    }

    async fn exchange(&mut self, mut head: RequestHead) -> io::Result<Next> {
        let snapshot = self.policy.borrow().clone();
        if let L7Request::Http(view) = &mut self.view {
            fill_policy_view(&head, view);
        }
        let decision = snapshot.decide(self.flow.src, self.flow.dst, Protocol::Tcp, &self.view);
        drop(snapshot);
        let describe = || format!("{} {}", head.method, head.path);
        let denial = if decision.is_allowed() {
            None
        } else {
            decision.denial(self.flow.src, self.flow.dst, describe())
        };
        if let Some(denial) = denial {
            report(&denial, self.config.on_denial.as_ref());
            if decision.verdict != Verdict::Http403 {
                return Ok(Next::Close);
            }
            self.buf.drain(..head.head_len);
            // A client waiting for `100 Continue` will not send the body: close instead.
            let waits_for_continue = head.expect_continue && head.body != BodyFraming::None;
            let keep = !(head.close || waits_for_continue) && self.drain_body(head.body).await;
            let reply = if head.is_head() {
                local_reply_head(403, ACCESS_DENIED_BODY, !keep)
            } else {
                local_reply(403, ACCESS_DENIED_BODY, !keep)
            };
            self.client.write_all(&reply).await?;
            return Ok(if keep { Next::KeepAlive } else { Next::Close });
        }
        apply_header_actions(&mut head.headers, &decision.header_actions);
        let forwarded = self.forward(&head).await?;
        if let Some(hook) = &self.config.on_forward {
            hook(&Forwarded {
                src: self.flow.src,
                dst: self.flow.dst,
                request: describe(),
                host: head.authority.clone(),
                status: forwarded.status,
                rules: decision.deciding_rules(),
                decision,
            });
        }
        Ok(forwarded.next)
    }

    /// Reads and drops a denied request's body; `false` if the connection cannot be kept
    /// (too large, malformed, or the client is gone).
    async fn drain_body(&mut self, body: BodyFraming) -> bool {
        let limit = self.config.max_drain_bytes;
        let deadline = Instant::now() + self.config.header_read_timeout;
        match body {
            BodyFraming::None => true,
            BodyFraming::Length(n) if n > limit => false,
            BodyFraming::Length(mut left) => loop {
                let take = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
                self.buf.drain(..take);
                left -= take as u64;
                if left == 0 {
                    return true;
                }
                match timeout_at(deadline, read_more(&mut self.client, &mut self.buf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return false,
                }
            },
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new();
                let mut seen = 0u64;
                loop {
                    match decoder.step(&self.buf) {
                        Ok(Step::End { consumed }) => {
                            self.buf.drain(..consumed);
                            return true;
                        }
                        Ok(Step::Data { data, consumed }) => {
                            seen += data.len() as u64;
                            self.buf.drain(..consumed);
                            if seen > limit {
                                return false;
                            }
                            continue;
                        }
                        Ok(Step::NeedMore { consumed }) => {
                            self.buf.drain(..consumed);
                        }
                        Err(_) => return false,
                    }
                    match timeout_at(deadline, read_more(&mut self.client, &mut self.buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return false,
                    }
                }
            }
        }
    }

    /// Sends an allowed request upstream and relays the answer.
    async fn forward(&mut self, head: &RequestHead) -> io::Result<response::Relayed> {
        self.buf.drain(..head.head_len);
        if head.expect_continue && head.body != BodyFraming::None {
            // Envoy answers `Expect: 100-continue` itself and does not forward it.
            self.client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await?;
        }
        let out = upstream_head(head);
        // A reused connection the upstream closed meanwhile is replaced; an idempotent
        // request without a body is sent again once if the upstream closed before answering
        // (it may have executed it: RFC 9110 §9.2.2 forbids a proxy to retry the others).
        for attempt in 0..2 {
            let reused = self.upstream.is_some();
            let Some(up) = upstream_ready(&mut self.upstream, &self.flow, &self.config).await
            else {
                // The body (if any) was not read: the connection cannot be kept then, or
                // its bytes would be read as the next request.
                let keep = head.body == BodyFraming::None && !head.close;
                self.client
                    .write_all(&local_reply(503, UPSTREAM_UNAVAILABLE_BODY, !keep))
                    .await?;
                let mut r = response::Relayed::closed(Some(503));
                if keep {
                    r.next = Next::KeepAlive;
                }
                return Ok(r);
            };
            let (mut cr, mut cw) = self.client.split();
            let (mut ur, mut uw) = up.stream.split();
            let result = exchange_bodies(
                &mut cr,
                &mut cw,
                &mut self.buf,
                &mut ur,
                &mut uw,
                &mut up.buf,
                &out,
                head,
                self.config.header_read_timeout,
            )
            .await;
            match result {
                Ok(relayed) => {
                    if relayed.upstream_done {
                        self.upstream = None;
                    }
                    let next = if head.close || matches!(relayed.next, Next::Close) {
                        Next::Close
                    } else {
                        Next::KeepAlive
                    };
                    return Ok(response::Relayed { next, ..relayed });
                }
                Err(ExchangeError::UpstreamClosedEarly)
                    if reused
                        && attempt == 0
                        && head.body == BodyFraming::None
                        && is_idempotent(&head.method) =>
                {
                    self.upstream = None;
                    continue;
                }
                Err(e) => {
                    self.upstream = None;
                    if let Some(bytes) = e.reply() {
                        let _ = self.client.write_all(&bytes).await;
                    }
                    tracing::info!(
                        error = %e, upstream = %self.flow.upstream, "upstream exchange failed"
                    );
                    return Ok(response::Relayed::closed(e.status()));
                }
            }
        }
        Ok(response::Relayed::closed(None))
    }
}

/// RFC 9110 §9.2.2: the methods whose repetition has the effect of one request.
fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// The upstream connection, connected if there is none or the last one was closed.
async fn upstream_ready<'u>(
    slot: &'u mut Option<Upstream>,
    flow: &Flow,
    config: &HttpProxyConfig,
) -> Option<&'u mut Upstream> {
    if let Some(up) = slot.as_ref() {
        // A keep-alive upstream that closed (or sent something unasked) is not reused.
        let mut probe = [0u8; 1];
        let fresh = matches!(up.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        if !fresh || !up.buf.is_empty() {
            *slot = None;
        }
    }
    if slot.is_none() {
        match connect_upstream(flow, config.spoof_source, config.connect_timeout).await {
            Ok(stream) => {
                *slot = Some(Upstream {
                    stream,
                    buf: Vec::with_capacity(READ_CHUNK),
                })
            }
            Err(e) => {
                tracing::info!(
                    error = %e, upstream = %flow.upstream, "upstream unavailable"
                );
                return None;
            }
        }
    }
    slot.as_mut()
}

/// Appends what the peer sends next to `buf`; the number of bytes (0: closed).
pub(crate) async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

async fn read_half_more(stream: &mut ReadHalf<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// Why an exchange failed.
#[derive(Debug)]
enum ExchangeError {
    /// The upstream closed (or reset) before any byte of an answer.
    UpstreamClosedEarly,
    /// The upstream's answer was malformed, or it closed in the middle of it.
    BadUpstream(&'static str, bool),
    /// The client's body was malformed.
    BadRequestBody(&'static str, bool),
    /// An I/O error on either side.
    Io(io::Error),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::UpstreamClosedEarly => f.write_str("upstream closed before answering"),
            ExchangeError::BadUpstream(why, _) => write!(f, "bad upstream answer: {why}"),
            ExchangeError::BadRequestBody(why, _) => write!(f, "bad request body: {why}"),
            ExchangeError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl ExchangeError {
    /// What the client gets, if it has not had any byte of an answer yet.
    fn reply(&self) -> Option<Vec<u8>> {
        match self {
            ExchangeError::UpstreamClosedEarly => {
                Some(local_reply(503, UPSTREAM_UNAVAILABLE_BODY, true))
            }
            ExchangeError::BadUpstream(why, false) => Some(local_reply(502, why, true)),
            ExchangeError::BadRequestBody(why, false) => Some(local_reply(400, why, true)),
            _ => None,
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            ExchangeError::UpstreamClosedEarly => Some(503),
            ExchangeError::BadUpstream(_, false) => Some(502),
            ExchangeError::BadRequestBody(_, false) => Some(400),
            _ => None,
        }
    }
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

/// Sends the head and the body upstream while relaying the answer back.
#[allow(clippy::too_many_arguments)]
async fn exchange_bodies(
    cr: &mut ReadHalf<'_>,
    cw: &mut WriteHalf<'_>,
    cbuf: &mut Vec<u8>,
    ur: &mut ReadHalf<'_>,
    uw: &mut WriteHalf<'_>,
    ubuf: &mut Vec<u8>,
    out_head: &[u8],
    head: &RequestHead,
    body_timeout: Duration,
) -> Result<response::Relayed, ExchangeError> {
    let answered = AtomicBool::new(false);
    let send = send_body(cr, cbuf, uw, out_head, head.body, body_timeout, &answered);
    let continue_sent = head.expect_continue && head.body != BodyFraming::None;
    let recv = response::relay(ur, ubuf, cw, head.is_head(), continue_sent, &answered);
    tokio::pin!(send, recv);
    let mut sent = false;
    loop {
        tokio::select! {
            r = &mut send, if !sent => {
                match r {
                    Ok(()) => sent = true,
                    Err(e) => return Err(e),
                }
            }
            r = &mut recv => {
                let relayed = r?;
                if !sent {
                    // The upstream answered before the whole body was sent (an early error):
                    // neither side can be reused.
                    return Ok(response::Relayed { next: Next::Close, upstream_done: true, ..relayed });
                }
                return Ok(relayed);
            }
        }
    }
}

/// Writes the head, then the body re-framed as it was decided.
async fn send_body(
    cr: &mut ReadHalf<'_>,
    cbuf: &mut Vec<u8>,
    uw: &mut WriteHalf<'_>,
    out_head: &[u8],
    body: BodyFraming,
    body_timeout: Duration,
    answered: &AtomicBool,
) -> Result<(), ExchangeError> {
    let bad = |why| ExchangeError::BadRequestBody(why, answered.load(Ordering::Relaxed));
    match body {
        BodyFraming::None => {
            uw.write_all(out_head).await?;
            Ok(())
        }
        BodyFraming::Length(total) => {
            let mut left = total;
            let first = usize::try_from(left).map_or(cbuf.len(), |l| l.min(cbuf.len()));
            let mut out = Vec::with_capacity(out_head.len() + first);
            out.extend_from_slice(out_head);
            out.extend_from_slice(&cbuf[..first]);
            cbuf.drain(..first);
            left -= first as u64;
            uw.write_all(&out).await?;
            while left > 0 {
                let n = match tokio::time::timeout(body_timeout, read_half_more(cr, cbuf)).await {
                    Ok(Ok(0)) | Err(_) => return Err(bad("request body ended early")),
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => return Err(e.into()),
                };
                let take = usize::try_from(left).map_or(n, |l| l.min(cbuf.len()));
                uw.write_all(&cbuf[..take]).await?;
                cbuf.drain(..take);
                left -= take as u64;
            }
            Ok(())
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            let mut out = out_head.to_vec();
            loop {
                match decoder.step(cbuf) {
                    Ok(Step::Data { data, consumed }) => {
                        chunked::chunk_header(data.len(), &mut out);
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                        cbuf.drain(..consumed);
                        continue;
                    }
                    Ok(Step::End { consumed }) => {
                        cbuf.drain(..consumed);
                        out.extend_from_slice(chunked::LAST_CHUNK);
                        uw.write_all(&out).await?;
                        return Ok(());
                    }
                    Ok(Step::NeedMore { consumed }) => {
                        cbuf.drain(..consumed);
                    }
                    Err(e) => return Err(bad(e.0)),
                }
                if !out.is_empty() {
                    uw.write_all(&out).await?;
                    out.clear();
                }
                match tokio::time::timeout(body_timeout, read_half_more(cr, cbuf)).await {
                    Ok(Ok(0)) | Err(_) => return Err(bad("request body ended early")),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
        }
    }
}

/// The request as policy sees it: method, `:path` (normalized, with the query),
/// `:authority`, and every header (repeated ones joined with `,`, names in lower case).
pub fn policy_view(head: &RequestHead) -> HttpRequest {
    let mut view = HttpRequest::default();
    fill_policy_view(head, &mut view);
    view
}

/// [`policy_view`] into an existing request, reusing its strings' memory (a connection keeps
/// one, so a request costs no allocation here once the strings are big enough).
pub fn fill_policy_view(head: &RequestHead, view: &mut HttpRequest) {
    fn set(s: &mut String, v: &str) {
        s.clear();
        s.push_str(v);
    }
    set(&mut view.method, &head.method);
    set(&mut view.path, &head.path);
    set(&mut view.host, &head.authority);
    let mut used = 0;
    let mut next = |view: &mut HttpRequest| -> usize {
        if used == view.headers.len() {
            view.headers.push((String::new(), String::new()));
        }
        used += 1;
        used - 1
    };
    let i = next(view);
    set(&mut view.headers[i].0, "host");
    set(&mut view.headers[i].1, &head.authority);
    for (n, h) in head.headers.iter().enumerate() {
        // A repeated header appears once, with every value joined where it first appears.
        if head.headers[..n]
            .iter()
            .any(|e| e.name.eq_ignore_ascii_case(&h.name))
            || h.is("host")
        {
            continue;
        }
        let i = next(view);
        let (name, value) = &mut view.headers[i];
        name.clear();
        name.push_str(&h.name);
        name.make_ascii_lowercase();
        value.clear();
        for (k, e) in head.headers[n..]
            .iter()
            .filter(|e| e.is(&h.name))
            .enumerate()
        {
            if k > 0 {
                value.push(',');
            }
            value.push_str(&String::from_utf8_lossy(&e.value));
        }
    }
    view.headers.truncate(used);
}

/// The head sent upstream: origin-form target, `Host`, the end-to-end headers, the framing.
pub fn upstream_head(head: &RequestHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + head.path.len());
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(head.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    match head.body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Appends `n` in decimal (the hot path writes lengths and statuses without `format!`).
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Applies `headerMatches` rewrites; a name or value that is not a valid header is skipped.
pub fn apply_header_actions(headers: &mut Vec<Header>, actions: &[HeaderAction]) {
    let valid_name = |n: &str| !n.is_empty() && n.bytes().all(is_token);
    let valid_value = |v: &str| v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    for a in actions {
        match a {
            HeaderAction::Add { name, value } | HeaderAction::Set { name, value } => {
                if !valid_name(name) || !valid_value(value) {
                    tracing::warn!(header = %name, "headerMatches: invalid header, skipped");
                    continue;
                }
                if matches!(a, HeaderAction::Set { .. }) {
                    headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
                }
                headers.push(Header {
                    name: name.clone(),
                    value: value.as_bytes().to_vec(),
                });
            }
            HeaderAction::Remove { name } => {
                headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
            }
        }
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A response the proxy writes itself (`text/plain`).
pub fn local_reply(status: u16, body: &str, close: bool) -> Vec<u8> {
    let mut out = local_reply_head(status, body, close);
    out.extend_from_slice(body.as_bytes());
    out
}

/// The head of [`local_reply`]: all of it for a `HEAD` request, whose answer has no body.
fn local_reply_head(status: u16, body: &str, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Envoy's answer to escaped slashes: `307` to the normalized path.
fn redirect_reply(location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod attack_tests;
#[cfg(test)]
mod evasion_tests;
#[cfg(test)]
mod tests;
