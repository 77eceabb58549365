//! The HTTP proxy: hyper 1 on both sides, one upstream connection per client connection.
//!
//! Every request on a connection (keep-alive and pipelined ones alike) is decided with the
//! policy snapshot current at that moment:
//! - a request no HTTP rule allows gets `403` with body `Access denied\r\n` (`text/plain`),
//!   as Cilium's Envoy answers, and the connection stays open;
//! - a flow L3/L4 does not allow (the destination's ingress, which the datapath skips once the
//!   source's egress redirected to this proxy) is dropped: the connection closes without an
//!   answer, as a dropped SYN would leave it;
//! - an allowed request gets its `headerMatches` rewrites and goes to the original
//!   destination with its method, target, headers and body; an unreachable upstream gives
//!   `503`.
//!
//! Malformed requests get hyper's `400` (`431` for headers over
//! [`HttpProxyConfig::max_header_bytes`]) and the connection is closed.

use crate::flow::{Flow, connect_upstream};
use crate::policy::{DenialHook, HeaderAction, ProxyPolicy, report};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use membrane_policy::verdict::{HttpRequest, Verdict};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

/// The body Cilium's proxy answers a denied request with.
pub const ACCESS_DENIED_BODY: &str = "Access denied\r\n";

/// The body of the proxy's own `503`.
pub const UPSTREAM_UNAVAILABLE_BODY: &str =
    "upstream connect error or disconnect/reset before headers\r\n";

/// What the proxy sends back: the upstream's body, or one of its own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// How the HTTP proxy behaves.
#[derive(Clone)]
pub struct HttpProxyConfig {
    /// Connect upstream from the client's own address (`IP_TRANSPARENT`), as Cilium does.
    pub spoof_source: bool,
    pub connect_timeout: Duration,
    /// The largest request head (request line and headers) accepted; larger ones get `431`
    /// and the connection is closed.
    pub max_header_bytes: usize,
    /// A client that has not sent a whole request head by then is disconnected.
    pub header_read_timeout: Duration,
    /// Called for every denial, after it is logged.
    pub on_denial: Option<DenialHook>,
}

impl Default for HttpProxyConfig {
    fn default() -> Self {
        HttpProxyConfig {
            spoof_source: false,
            connect_timeout: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(30),
            on_denial: None,
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
            .field("on_denial", &self.on_denial.is_some())
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
    let conn = Arc::new(Conn {
        flow,
        policy,
        config: config.clone(),
        upstream: Mutex::new(None),
    });
    let service = service_fn(move |req| {
        let conn = conn.clone();
        async move { conn.handle(req).await }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_header_size(config.max_header_bytes)
        .keep_alive(true);
    if let Err(e) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, src = %flow.src, dst = %flow.dst, "http connection ended");
    }
}

/// The service's error: the connection is closed without an answer.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dropped by policy")
    }
}

impl std::error::Error for Dropped {}

struct Conn {
    flow: Flow,
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    config: Arc<HttpProxyConfig>,
    /// hyper serves one request of a connection at a time, so this is never contended.
    upstream: Mutex<Option<hyper::client::conn::http1::SendRequest<Incoming>>>,
}

impl Conn {
    async fn handle(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, Dropped> {
        let snapshot = self.policy.borrow().clone();
        let view = request_view(&req);
        let decision = snapshot.decide_http(self.flow.src, self.flow.dst, &view);
        drop(snapshot);
        if let Some(denial) = decision.denial(
            self.flow.src,
            self.flow.dst,
            format!("{} {}", view.method, view.path),
        ) {
            report(&denial, self.config.on_denial.as_ref());
            return match decision.verdict {
                Verdict::Http403 => Ok(access_denied()),
                _ => Err(Dropped),
            };
        }
        apply_header_actions(req.headers_mut(), &decision.header_actions);
        remove_hop_by_hop(req.headers_mut());
        Ok(self.forward(req).await)
    }

    async fn forward(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let mut slot = self.upstream.lock().await;
        let mut pending = Some(req);
        // A second try only when hyper reports the request was not sent (a pooled
        // connection the upstream had just closed).
        for _ in 0..2 {
            let Some(req) = pending.take() else { break };
            if slot.as_ref().is_none_or(|s| s.is_closed()) {
                *slot = None;
                match self.connect().await {
                    Ok(s) => *slot = Some(s),
                    Err(e) => {
                        tracing::info!(
                            error = %e, upstream = %self.flow.upstream, "upstream unavailable"
                        );
                        return unavailable();
                    }
                }
            }
            let Some(sender) = slot.as_mut() else { break };
            if sender.ready().await.is_err() {
                *slot = None;
                pending = Some(req);
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let mut resp = resp.map(Either::Left);
                    remove_hop_by_hop(resp.headers_mut());
                    return resp;
                }
                Err(mut e) => {
                    *slot = None;
                    pending = e.take_message();
                    tracing::info!(
                        error = %e.error(), upstream = %self.flow.upstream,
                        "upstream request failed"
                    );
                }
            }
        }
        unavailable()
    }

    async fn connect(&self) -> io::Result<hyper::client::conn::http1::SendRequest<Incoming>> {
        let stream = connect_upstream(
            &self.flow,
            self.config.spoof_source,
            self.config.connect_timeout,
        )
        .await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// The request as policy sees it: method, `:path` (with the query), `:authority` (the
/// absolute-form target's, else `Host`), every header.
pub fn request_view<B>(req: &Request<B>) -> HttpRequest {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let host = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(header::HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
    };
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    HttpRequest {
        method: req.method().as_str().to_string(),
        path,
        host,
        headers,
    }
}

/// Applies `headerMatches` rewrites; a name or value that is not a valid header is skipped.
pub fn apply_header_actions(headers: &mut HeaderMap, actions: &[HeaderAction]) {
    for a in actions {
        let (name, value) = match a {
            HeaderAction::Add { name, value } | HeaderAction::Set { name, value } => {
                (name, Some(value))
            }
            HeaderAction::Remove { name } => (name, None),
        };
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            tracing::warn!(header = %name, "headerMatches: invalid header name, skipped");
            continue;
        };
        let value = match value.map(|v| HeaderValue::from_str(v)) {
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => {
                tracing::warn!(header = %name, "headerMatches: invalid header value, skipped");
                continue;
            }
            None => None,
        };
        match (a, value) {
            (HeaderAction::Add { .. }, Some(v)) => {
                headers.append(name, v);
            }
            (HeaderAction::Set { .. }, Some(v)) => {
                headers.insert(name, v);
            }
            (HeaderAction::Remove { .. }, _) => {
                headers.remove(name);
            }
            _ => {}
        }
    }
}

/// Removes the headers that belong to one connection (RFC 9110 §7.6.1), the ones `Connection`
/// lists included. Framing headers (`Content-Length`, `Transfer-Encoding`) stay: hyper frames
/// the forwarded body by them.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != header::CONTENT_LENGTH && *n != header::TRANSFER_ENCODING)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn local_reply(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// `403 Access denied\r\n`.
fn access_denied() -> Response<ProxyBody> {
    local_reply(StatusCode::FORBIDDEN, ACCESS_DENIED_BODY)
}

fn unavailable() -> Response<ProxyBody> {
    local_reply(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_UNAVAILABLE_BODY)
}

#[cfg(test)]
mod tests;
