//! TLS without termination: the server name of the ClientHello is checked against
//! `serverNames`, then the bytes are spliced both ways untouched.
//!
//! A name no rule allows closes the connection before anything reaches the server (Cilium's
//! "tls-denied"). HTTP rules inside TLS need the proxy to terminate TLS, which this proxy
//! does not do: such rules are decided on the SNI alone.

use crate::flow::{Flow, connect_upstream};
use crate::http::accept;
use crate::policy::{DenialHook, ProxyPolicy, report};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why no server name could be read (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHelloError {
    /// The bytes so far are a valid beginning: read more.
    Incomplete,
    /// Not a TLS handshake record carrying a ClientHello.
    NotClientHello,
    /// A ClientHello whose lengths or fields do not add up.
    Malformed(&'static str),
}

impl fmt::Display for ClientHelloError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHelloError::Incomplete => f.write_str("incomplete ClientHello"),
            ClientHelloError::NotClientHello => f.write_str("not a TLS ClientHello"),
            ClientHelloError::Malformed(why) => write!(f, "malformed ClientHello: {why}"),
        }
    }
}

impl std::error::Error for ClientHelloError {}

/// The largest ClientHello accepted (handshake message length).
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;
/// The largest TLS record payload allowed (2^14 plus the expansion TLS 1.2 allows).
const MAX_RECORD: usize = 16384 + 2048;

/// Reads the server name (SNI) from the first bytes a TLS client sends.
///
/// `Ok(None)`: a complete ClientHello without a `host_name`. The ClientHello may span several
/// handshake records. Never panics, whatever the input.
///
/// # Errors
/// [`ClientHelloError::Incomplete`] while the bytes so far are a valid prefix, otherwise why
/// they cannot be a ClientHello.
pub fn parse_client_hello_sni(buf: &[u8]) -> Result<Option<String>, ClientHelloError> {
    let hello = reassemble_client_hello(buf)?;
    parse_hello_body(&hello)
}

/// Concatenates handshake record payloads until the first handshake message is complete,
/// and returns that message's body.
fn reassemble_client_hello(buf: &[u8]) -> Result<Vec<u8>, ClientHelloError> {
    let mut payload: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        let mut r = Reader::new(rest);
        let Some(content_type) = r.u8() else {
            return Err(ClientHelloError::Incomplete);
        };
        if content_type != RECORD_HANDSHAKE {
            return Err(ClientHelloError::NotClientHello);
        }
        let Some(major) = r.u8() else {
            return Err(ClientHelloError::Incomplete);
        };
        if major != 3 {
            return Err(ClientHelloError::NotClientHello);
        }
        if r.u8().is_none() {
            return Err(ClientHelloError::Incomplete);
        }
        let Some(len) = r.u16() else {
            return Err(ClientHelloError::Incomplete);
        };
        let len = usize::from(len);
        if len == 0 || len > MAX_RECORD {
            return Err(ClientHelloError::Malformed("bad record length"));
        }
        let available = r.remaining().len().min(len);
        payload.extend_from_slice(r.remaining().get(..available).unwrap_or_default());
        if payload
            .first()
            .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Err(ClientHelloError::NotClientHello);
        }
        if payload.len() >= 4 {
            let msg_len = usize::from(payload[1]) << 16
                | usize::from(payload[2]) << 8
                | usize::from(payload[3]);
            if msg_len > MAX_CLIENT_HELLO {
                return Err(ClientHelloError::Malformed("ClientHello too large"));
            }
            if payload.len() >= 4 + msg_len {
                return Ok(payload[4..4 + msg_len].to_vec());
            }
        }
        if available < len {
            return Err(ClientHelloError::Incomplete);
        }
        rest = r.remaining().get(len..).unwrap_or_default();
    }
}

fn parse_hello_body(body: &[u8]) -> Result<Option<String>, ClientHelloError> {
    use ClientHelloError::Malformed;
    let mut r = Reader::new(body);
    r.skip(2).ok_or(Malformed("no version"))?;
    r.skip(32).ok_or(Malformed("no random"))?;
    let sid = r.u8().ok_or(Malformed("no session id"))?;
    if sid > 32 {
        return Err(Malformed("session id too long"));
    }
    r.skip(usize::from(sid))
        .ok_or(Malformed("short session id"))?;
    let suites = r.u16().ok_or(Malformed("no cipher suites"))?;
    if suites == 0 || suites % 2 != 0 {
        return Err(Malformed("bad cipher suites length"));
    }
    r.skip(usize::from(suites))
        .ok_or(Malformed("short cipher suites"))?;
    let comp = r.u8().ok_or(Malformed("no compression methods"))?;
    if comp == 0 {
        return Err(Malformed("no compression method"));
    }
    r.skip(usize::from(comp))
        .ok_or(Malformed("short compression methods"))?;
    if r.remaining().is_empty() {
        return Ok(None); // no extensions at all
    }
    let ext_len = r.u16().ok_or(Malformed("short extensions length"))?;
    let mut exts = Reader::new(
        r.take(usize::from(ext_len))
            .ok_or(Malformed("extensions overrun the ClientHello"))?,
    );
    let mut sni = None;
    while !exts.remaining().is_empty() {
        let ty = exts.u16().ok_or(Malformed("short extension header"))?;
        let len = exts.u16().ok_or(Malformed("short extension header"))?;
        let data = exts
            .take(usize::from(len))
            .ok_or(Malformed("extension overruns the list"))?;
        if ty == EXT_SERVER_NAME {
            if sni.is_some() {
                return Err(Malformed("two server_name extensions"));
            }
            sni = Some(parse_server_name(data)?);
        }
    }
    Ok(sni.flatten())
}

fn parse_server_name(data: &[u8]) -> Result<Option<String>, ClientHelloError> {
    use ClientHelloError::Malformed;
    if data.is_empty() {
        return Ok(None); // the server's echo form; never sent by clients, harmless
    }
    let mut r = Reader::new(data);
    let list_len = r.u16().ok_or(Malformed("short server name list"))?;
    let mut list = Reader::new(
        r.take(usize::from(list_len))
            .ok_or(Malformed("server name list overruns"))?,
    );
    if !r.remaining().is_empty() {
        return Err(Malformed("bytes after the server name list"));
    }
    let mut host = None;
    while !list.remaining().is_empty() {
        let ty = list.u8().ok_or(Malformed("short server name"))?;
        let len = list.u16().ok_or(Malformed("short server name"))?;
        let name = list
            .take(usize::from(len))
            .ok_or(Malformed("server name overruns"))?;
        if ty == NAME_TYPE_HOST && host.is_none() {
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err(Malformed("host name is not printable ASCII"));
            }
            host = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(host)
}

/// A cursor over bytes whose reads return `None` instead of running past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).and_then(|b| b.first().copied())
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    }
}

/// How the TLS proxy behaves.
#[derive(Clone)]
pub struct TlsProxyConfig {
    pub spoof_source: bool,
    pub connect_timeout: Duration,
    /// A client that has not sent its ClientHello by then is disconnected.
    pub hello_timeout: Duration,
    pub on_denial: Option<DenialHook>,
}

impl Default for TlsProxyConfig {
    fn default() -> Self {
        TlsProxyConfig {
            spoof_source: false,
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(10),
            on_denial: None,
        }
    }
}

impl fmt::Debug for TlsProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsProxyConfig")
            .field("spoof_source", &self.spoof_source)
            .field("connect_timeout", &self.connect_timeout)
            .field("hello_timeout", &self.hello_timeout)
            .field("on_denial", &self.on_denial.is_some())
            .finish()
    }
}

/// Accepts TLS connections forever; `flow_of` as for [`crate::serve_http`].
///
/// # Errors
/// When accepting fails for a reason other than a transient one.
pub async fn serve_tls<F>(
    listener: TcpListener,
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    flow_of: F,
    config: TlsProxyConfig,
) -> io::Result<()>
where
    F: Fn(&TcpStream) -> io::Result<Flow> + Send + Sync + 'static,
{
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let Some(stream) = accept(&listener).await? else {
            continue;
        };
        let flow = match flow_of(&stream) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "tls proxy: no original destination, closing");
                continue;
            }
        };
        let (policy, config) = (policy.clone(), config.clone());
        tasks.spawn(async move {
            if let Err(e) = serve_tls_connection(stream, flow, policy, &config).await {
                tracing::debug!(error = %e, src = %flow.src, "tls connection ended");
            }
        });
    }
}

/// Checks one connection's SNI and, if allowed, splices it to the original destination.
pub async fn serve_tls_connection(
    mut client: TcpStream,
    flow: Flow,
    policy: watch::Receiver<Arc<ProxyPolicy>>,
    config: &TlsProxyConfig,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let sni = tokio::time::timeout(config.hello_timeout, read_sni(&mut client, &mut buf))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no ClientHello in time"))??;
    let snapshot = policy.borrow().clone();
    let decision = snapshot.decide_tls(flow.src, flow.dst, sni.as_deref().unwrap_or(""));
    drop(snapshot);
    if let Some(denial) = decision.denial(
        flow.src,
        flow.dst,
        format!("TLS SNI `{}`", sni.as_deref().unwrap_or("")),
    ) {
        report(&denial, config.on_denial.as_ref());
        // Abort: nothing reaches the server; the client sees the connection close.
        return Ok(());
    }
    let mut upstream = connect_upstream(&flow, config.spoof_source, config.connect_timeout).await?;
    upstream.write_all(&buf).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Reads until the ClientHello is complete; `None` when it carries no server name or the
/// bytes are not a ClientHello (policy then decides on an empty name).
async fn read_sni(client: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<String>> {
    let mut chunk = [0u8; 4096];
    loop {
        match parse_client_hello_sni(buf) {
            Ok(sni) => return Ok(sni),
            Err(ClientHelloError::Incomplete) => {}
            Err(e) => {
                tracing::debug!(error = %e, "tls proxy: no server name");
                return Ok(None);
            }
        }
        if buf.len() > MAX_CLIENT_HELLO + 4 * 1024 {
            return Ok(None);
        }
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the ClientHello",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests;
