//! What the lab says to its agents: one JSON request and one JSON reply per connection on
//! the agent's Unix socket. A Unix socket lives in the file system, not in a network
//! namespace, so the lab (in the root namespace) reaches agents in any namespace, and a
//! later `membrane lab probe` reaches the agents a `membrane lab up` started.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    /// TCP connect from `src`:`sport` (0: any). The lab picks the port, so it knows the
    /// packet's 5-tuple before sending and can match its drop record at once.
    Tcp {
        src: Ipv4Addr,
        #[serde(default)]
        sport: u16,
        dst: Ipv4Addr,
        port: u16,
        timeout_ms: u64,
    },
    /// A UDP datagram carrying `nonce`; delivered when the destination echoes it.
    Udp {
        src: Ipv4Addr,
        #[serde(default)]
        sport: u16,
        dst: Ipv4Addr,
        port: u16,
        timeout_ms: u64,
        nonce: u64,
    },
    /// An SCTP INIT through a raw socket (the kernel has no SCTP stack): the destination's
    /// agent observes it (`Seen`).
    Sctp {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        tag: u32,
    },
    /// An ICMP message of `icmp_type` with identifier `id`; for echo requests, waits for the
    /// kernel's echo reply.
    Icmp {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        icmp_type: u8,
        id: u16,
        timeout_ms: u64,
    },
    /// A DNS A query for `name` to `server`:53.
    Dns {
        src: Ipv4Addr,
        #[serde(default)]
        sport: u16,
        server: Ipv4Addr,
        name: String,
        timeout_ms: u64,
    },
    /// An HTTP/1.1 request over TCP from `src`:`sport`: the status and body of the answer.
    Http {
        src: Ipv4Addr,
        #[serde(default)]
        sport: u16,
        dst: Ipv4Addr,
        port: u16,
        method: String,
        path: String,
        host: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
        timeout_ms: u64,
    },
    /// Several HTTP/1.1 requests, one after the other on one keep-alive connection from
    /// `src` (any port): an answer per request in `Reply::answers`, until the peer closes.
    HttpSeq {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        requests: Vec<HttpRequest>,
        timeout_ms: u64,
    },
    /// The requests this agent's HTTP server received (`Reply::http_log`), oldest first.
    HttpLog,
    /// A Redis `PING` (RESP); the answer's first line in `Reply::body`.
    Redis {
        src: Ipv4Addr,
        #[serde(default)]
        sport: u16,
        dst: Ipv4Addr,
        port: u16,
        timeout_ms: u64,
    },
    /// A TLS ClientHello with `sni`: whether the connection stays open (`closed` if not).
    Tls {
        src: Ipv4Addr,
        #[serde(default)]
        sport: u16,
        dst: Ipv4Addr,
        port: u16,
        sni: String,
        timeout_ms: u64,
    },
    /// Whether this agent received a probe: `proto` 17 (nonce), 132 (INIT tag) or 1 (id).
    Seen {
        proto: u8,
        src: Ipv4Addr,
        key: u64,
    },
    /// New TCP connections back to back for `duration_ms`, closed with RST (no TIME_WAIT).
    ConnLoop {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        duration_ms: u64,
        timeout_ms: u64,
    },
}

/// One request of [`Request::HttpSeq`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
}

/// One answer of [`Request::HttpSeq`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    /// Header names in lower case, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The first value of header `name` (lower case) in a list of lower-cased headers.
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A request the agent's HTTP server answered: what the backend itself saw, so a test can
/// count what got through a proxy (and what never did).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpLogEntry {
    pub method: String,
    pub path: String,
    /// The request's `x-probe-id` header, if it had one.
    pub probe_id: Option<String>,
    /// The client's address and port as the server saw them.
    pub peer: String,
    /// The server's address and port that accepted the connection.
    pub local: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// The request reached its destination (handshake done, echo or answer received).
    pub delivered: bool,
    /// The destination answered with a reset or "unreachable": delivered, nobody listening.
    #[serde(default)]
    pub refused: bool,
    /// Source port (TCP, UDP, DNS, SCTP) or ICMP identifier of what was sent.
    #[serde(default)]
    pub sport: u16,
    #[serde(default)]
    pub rcode: Option<u8>,
    #[serde(default)]
    pub addrs: Vec<Ipv4Addr>,
    #[serde(default)]
    pub seen: bool,
    #[serde(default)]
    pub ok: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub error: Option<String>,
    /// HTTP: the answer's status code and body.
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub body: Option<String>,
    /// HTTP: the answer's headers (names in lower case).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// HTTP, TLS: the peer closed (or reset) the connection without answering.
    #[serde(default)]
    pub closed: bool,
    /// `HttpSeq`: an answer per request, in order, until the connection ended.
    #[serde(default)]
    pub answers: Vec<HttpAnswer>,
    /// `HttpLog`: the requests the agent's HTTP server received.
    #[serde(default)]
    pub http_log: Vec<HttpLogEntry>,
    /// Why connections of a loop failed (the first few distinct reasons).
    #[serde(default)]
    pub errors: Vec<String>,
}

/// A request the agent did not answer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("agent {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent {}: no reply", .0.display())]
    NoReply(PathBuf),
    #[error("agent request: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("agent reply `{reply}`: {source}")]
    Decode {
        reply: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one request to the agent listening on `socket`.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, WireError> {
    let io = |source| WireError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(io)?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = serde_json::to_string(req).map_err(WireError::Encode)?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).map_err(io)?;
    if reply.is_empty() {
        return Err(WireError::NoReply(socket.to_path_buf()));
    }
    serde_json::from_str(&reply).map_err(|source| WireError::Decode {
        reply: reply.trim().to_string(),
        source,
    })
}
