//! The agent's helper processes (dispatched by [`crate::helper`]):
//!
//! * `agent`: runs inside one lab namespace. It sets the namespace's sysctls, serves TCP
//!   (accept loop) and UDP (echo) on the ports flows use, watches raw ICMP and SCTP (so a
//!   destination can say it received a datagram, which is what "delivered" means for UDP,
//!   SCTP and ICMP other than echo), and answers probe requests on a Unix socket, making the
//!   connections from inside the namespace with millisecond timeouts.
//! * `connrate`: new connections per second, for the benchmark script.

use super::NodeError;
use crate::layout::REDIS_PORT;
use crate::wire::{HttpAnswer, HttpLogEntry, HttpRequest, Reply, Request};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Payload marker of UDP and ICMP probes, followed by an 8-byte nonce.
const MAGIC: &[u8; 8] = b"mbrprobe";

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn opts<'a>(args: &'a [String], name: &str) -> Vec<&'a str> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].as_str())
        .collect()
}

fn ports(list: Option<&str>) -> Result<Vec<u16>, NodeError> {
    list.unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .map_err(NodeError::invalid(format!("port `{p}`")))
        })
        .collect()
}

type SeenSet = Arc<Mutex<HashSet<(u8, Ipv4Addr, u64)>>>;

/// What the agent's HTTP server received (`Request::HttpLog`).
type HttpLog = Arc<Mutex<Vec<HttpLogEntry>>>;

/// The HTTP log keeps this many requests (the oldest go first): a lab's tests send a few
/// thousand at most, and a long-running `lab up` must not grow without bound.
const HTTP_LOG_MAX: usize = 200_000;

fn remember(seen: &SeenSet, proto: u8, src: Ipv4Addr, key: u64) {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((proto, src, key));
}

/// Writes `value` to `/proc/sys/<key with dots as slashes>`: /proc/sys/net is the
/// namespace of the process that opens it, so the agent configures its own namespace.
fn sysctl(key: &str, value: &str) -> Result<(), NodeError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(NodeError::io(format!("sysctl {key}={value}")))
}

/// `agent --control SOCKET [--tcp PORTS] [--udp PORTS] [--router] [--http] [--sysctl K=V]…`.
pub fn agent_main(args: &[String]) -> Result<(), NodeError> {
    let control = PathBuf::from(opt(args, "--control").ok_or(NodeError::Missing {
        program: "agent",
        what: "--control",
    })?);
    for kv in opts(args, "--sysctl") {
        let (k, v) = kv.split_once('=').ok_or(NodeError::Missing {
            program: "sysctl",
            what: "key=value",
        })?;
        sysctl(k, v)?;
    }
    if args.iter().any(|a| a == "--router") {
        // A router between addressless veths: forward, and no reverse-path filter (replies
        // come back on other interfaces than the lookup would pick for /32 routes).
        sysctl("net.ipv4.ip_forward", "1")?;
        if let Ok(dir) = std::fs::read_dir("/proc/sys/net/ipv4/conf") {
            for e in dir.flatten() {
                let _ = std::fs::write(e.path().join("rp_filter"), "0");
            }
        }
    }
    let seen: SeenSet = Arc::default();
    let http_log: HttpLog = Arc::default();
    for port in ports(opt(args, "--tcp"))? {
        let l = listener(port).map_err(NodeError::io(format!("tcp :{port}")))?;
        // Probes only need the handshake: accepted connections are closed at once, in the
        // accept loop (a thread per connection cannot keep up with the connection-rate
        // loops). Two threads, so that one descheduled thread does not stall the queue.
        // With `--http` (labs with proxies), each connection gets a thread that answers its
        // HTTP requests with 200 (keep-alive) and logs them.
        let http = args.iter().any(|a| a == "--http");
        for _ in 0..2 {
            let l = l
                .try_clone()
                .map_err(NodeError::io(format!("tcp :{port}")))?;
            let http_log = http_log.clone();
            thread::spawn(move || {
                for c in l.incoming() {
                    match c {
                        // Redis' port without redis-server: a RESP answer to PING.
                        Ok(c) if port == REDIS_PORT => {
                            thread::spawn(move || answer_resp(c));
                        }
                        Ok(c) if http => {
                            let log = http_log.clone();
                            thread::spawn(move || answer_http(c, &log));
                        }
                        c => drop(c),
                    }
                }
            });
        }
    }
    for port in ports(opt(args, "--udp"))? {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
            .map_err(NodeError::io(format!("udp :{port}")))?;
        let seen = seen.clone();
        thread::spawn(move || serve_udp(s, seen));
    }
    for proto in [1u8, 132] {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(proto))),
        )
        .map_err(NodeError::io(format!("raw socket {proto}")))?;
        let seen = seen.clone();
        thread::spawn(move || observe_raw(s, proto, seen));
    }
    let _ = std::fs::remove_file(&control);
    let listener =
        UnixListener::bind(&control).map_err(NodeError::io(control.display().to_string()))?;
    {
        // The lab removes its state directory on teardown: then nobody needs this agent.
        let control = control.clone();
        thread::spawn(move || {
            loop {
                thread::sleep(Duration::from_millis(500));
                if !control.exists() {
                    std::process::exit(0);
                }
            }
        });
    }
    for conn in listener.incoming().flatten() {
        let seen = seen.clone();
        let http_log = http_log.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let reply = match serde_json::from_str::<Request>(&line) {
                Ok(Request::HttpLog) => Reply {
                    http_log: http_log.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    ..Reply::default()
                },
                Ok(req) => handle(req, &seen),
                Err(e) => Reply {
                    error: Some(format!("bad request: {e}")),
                    ..Reply::default()
                },
            };
            let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{}".into());
            out.push('\n');
            let _ = (&conn).write_all(out.as_bytes());
        });
    }
    Ok(())
}

/// A parsed request head: method, path, lower-cased headers, and its length in bytes.
struct Head {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
    len: usize,
}

/// Parses the request head at the start of `buf`, if it is all there.
fn request_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let version = first.next().unwrap_or("HTTP/1.1").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Head {
        method,
        path,
        version,
        headers,
        len: end + 4,
    })
}

/// Serves HTTP/1.1 on one connection: each request is logged (method, path, `x-probe-id`,
/// both addresses) and answered `200 OK` (body `ok\n`, none for `HEAD`) with its
/// `x-probe-id` echoed and `x-served-by: <local address>`, so a client can tell that the
/// answer it got is its own and who gave it. Keep-alive until the client asks to close,
/// sends a body it cannot frame (chunked), or stays idle.
fn answer_http(mut c: std::net::TcpStream, log: &HttpLog) {
    use std::io::Read;
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let peer = c.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let local = c
        .local_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head = loop {
            if let Some(h) = request_head(&buf) {
                break h;
            }
            if buf.len() > 65536 {
                return;
            }
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let header = |name: &str| crate::wire::header(&head.headers, name);
        if header("transfer-encoding").is_some() {
            return; // not needed by any probe: close rather than misframe the next request
        }
        let body_len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Drop the request and its body from the buffer.
        let need = head.len + body_len;
        while buf.len() < need {
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..need);
        let probe_id = header("x-probe-id").map(str::to_string);
        {
            let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() >= HTTP_LOG_MAX {
                l.drain(..HTTP_LOG_MAX / 2);
            }
            l.push(HttpLogEntry {
                method: head.method.clone(),
                path: head.path.clone(),
                probe_id: probe_id.clone(),
                peer: peer.clone(),
                local: local.clone(),
            });
        }
        let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
            || head.version == "HTTP/1.0";
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nx-served-by: {local}\r\n"
        );
        if let Some(id) = &probe_id {
            out.push_str(&format!("x-probe-id: {id}\r\n"));
        }
        if close {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        if head.method != "HEAD" {
            out.push_str("ok\n");
        }
        if c.write_all(out.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A tiny RESP server: `+PONG` to each `PING` (inline or array), `-ERR` to anything else.
fn answer_resp(mut c: std::net::TcpStream) {
    use std::io::Read;
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_ascii_uppercase();
                let answer: &[u8] = if text.contains("PING") {
                    b"+PONG\r\n"
                } else {
                    b"-ERR unknown command\r\n"
                };
                if c.write_all(answer).is_err() {
                    return;
                }
            }
        }
    }
}

/// `PING` as a RESP array; the answer's first line.
fn redis_probe(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<Reply, NodeError> {
    let wait = timeout.max(Duration::from_secs(2));
    let (mut r, ex) = tcp_exchange(
        (src, sport, dst, port),
        timeout,
        b"*1\r\n$4\r\nPING\r\n",
        wait,
        |got| got.windows(2).any(|w| w == b"\r\n"),
    )?;
    if let Some((got, closed)) = ex {
        r.closed = closed && got.is_empty();
        if !got.is_empty() {
            r.body = Some(String::from_utf8_lossy(&got).into_owned());
        }
    }
    Ok(r)
}

/// A TLS 1.2/1.3 ClientHello carrying `sni` (one cipher suite, no other extension).
pub fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let n = name.len() as u16;
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(n + 5).to_be_bytes());
    ext.extend_from_slice(&(n + 3).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&n.to_be_bytes());
    ext.extend_from_slice(name);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Connects like `tcp_probe`, then sends `payload` and reads until the peer closes, `enough`
/// says the answer is complete, or `wait` passes. `None`: not connected (`r` says why).
/// What the peer sent, and whether it closed the connection.
type Exchanged = Option<(Vec<u8>, bool)>;

fn tcp_exchange(
    (src, sport, dst, port): (Ipv4Addr, u16, Ipv4Addr, u16),
    timeout: Duration,
    payload: &[u8],
    wait: Duration,
    enough: impl Fn(&[u8]) -> bool,
) -> Result<(Reply, Exchanged), NodeError> {
    use std::io::Read;
    let (r, s) = tcp_connect(src, sport, dst, port, timeout)?;
    let Some(mut s) = s else {
        return Ok((r, None));
    };
    s.write_all(payload)
        .map_err(NodeError::io(format!("send to {dst}:{port}")))?;
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if enough(&got) {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    Ok((r, Some((got, closed))))
}

/// The whole HTTP response at the start of `got` (head and `content-length` bytes of body;
/// no body at all for the answer to a `HEAD`, whatever `content-length` says) and its length.
fn http_response(got: &[u8], head_request: bool) -> Option<(HttpAnswer, usize)> {
    let end = got.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&got[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len = if head_request {
        0
    } else {
        crate::wire::header(&headers, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let body = got.get(end + 4..end + 4 + len)?;
    let answer = HttpAnswer {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    Some((answer, end + 4 + len))
}

fn request_text(method: &str, path: &str, host: &str, headers: &[(String, String)]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text
}

#[allow(clippy::too_many_arguments)]
fn http_probe(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    port: u16,
    req: (&str, &str, &str, &[(String, String)]),
    timeout: Duration,
) -> Result<Reply, NodeError> {
    let (method, path, host, headers) = req;
    let mut text = request_text(method, path, host, headers);
    text.push_str("connection: close\r\n\r\n");
    let wait = timeout.max(Duration::from_secs(3));
    let head_request = method == "HEAD";
    let (mut r, ex) = tcp_exchange(
        (src, sport, dst, port),
        timeout,
        text.as_bytes(),
        wait,
        |got| http_response(got, head_request).is_some(),
    )?;
    if let Some((got, closed)) = ex {
        r.closed = closed && got.is_empty();
        if let Some((a, _)) = http_response(&got, head_request) {
            r.status = Some(a.status);
            r.headers = a.headers;
            r.body = Some(a.body);
        } else if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            // A head whose body did not all come: what there is.
            let head = String::from_utf8_lossy(&got[..end]);
            r.status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
            r.body = Some(String::from_utf8_lossy(&got[end + 4..]).into_owned());
        }
    }
    Ok(r)
}

/// `requests` one after the other on one keep-alive connection: each is sent once the
/// previous answer is complete; stops when the peer closes or an answer does not come
/// within `timeout` (3 s at least).
fn http_seq(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    requests: &[HttpRequest],
    timeout: Duration,
) -> Result<Reply, NodeError> {
    use std::io::Read;
    let (mut r, s) = tcp_connect(src, 0, dst, port, timeout)?;
    let Some(mut s) = s else {
        return Ok(r);
    };
    let wait = timeout.max(Duration::from_secs(3));
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    'requests: for q in requests {
        let mut text = request_text(&q.method, &q.path, &q.host, &q.headers);
        text.push_str("\r\n");
        if s.write_all(text.as_bytes()).is_err() {
            break;
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some((a, used)) = http_response(&got, q.method == "HEAD") {
                got.drain(..used);
                r.answers.push(a);
                continue 'requests;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break 'requests;
            };
            let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match s.read(&mut buf) {
                Ok(0) | Err(_) => {
                    r.closed = true;
                    break 'requests;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }
    Ok(r)
}

fn tls_probe(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    port: u16,
    sni: &str,
    timeout: Duration,
) -> Result<Reply, NodeError> {
    // Allowed: the proxy splices to the agent, which waits for an HTTP head and says
    // nothing; denied: the proxy closes at once.
    let wait = Duration::from_millis(500);
    let (mut r, ex) = tcp_exchange(
        (src, sport, dst, port),
        timeout,
        &client_hello(sni),
        wait,
        |_| true,
    )?;
    if let Some((got, closed)) = ex {
        r.closed = closed && got.is_empty();
    }
    Ok(r)
}

/// A listener with a deep accept queue: std's 128 overflows when the connection-rate loops
/// and the probes of several labs share two CPUs, and an overflowing queue drops SYNs
/// silently (the client's retransmit comes a second later: a false "lost").
fn listener(port: u16) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        port,
    )))?;
    s.listen(4096)?;
    Ok(s.into())
}

fn serve_udp(s: UdpSocket, seen: SeenSet) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((n, from)) = s.recv_from(&mut buf) else {
            continue;
        };
        if let (SocketAddr::V4(a), true) = (from, n >= 16 && &buf[..8] == MAGIC) {
            let mut nonce = [0u8; 8];
            nonce.copy_from_slice(&buf[8..16]);
            remember(&seen, 17, *a.ip(), u64::from_be_bytes(nonce));
        }
        let _ = s.send_to(&buf[..n], from);
    }
}

/// Records what raw sockets see: ICMP (type, identifier) and SCTP INIT tags, by source.
fn observe_raw(mut s: Socket, proto: u8, seen: SeenSet) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok(n) = s.read(&mut buf) else { continue };
        let p = &buf[..n];
        if n < 20 || p[0] >> 4 != 4 {
            continue;
        }
        let ihl = usize::from(p[0] & 0xf) * 4;
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let Some(l4) = p.get(ihl..) else { continue };
        match proto {
            1 if l4.len() >= 8 => {
                let id = u16::from_be_bytes([l4[4], l4[5]]);
                remember(&seen, 1, src, (u64::from(l4[0]) << 16) | u64::from(id));
            }
            132 if l4.len() >= 20 && l4[12] == 1 => {
                let tag = u32::from_be_bytes([l4[16], l4[17], l4[18], l4[19]]);
                remember(&seen, 132, src, u64::from(tag));
            }
            _ => {}
        }
    }
}

fn handle(req: Request, seen: &SeenSet) -> Reply {
    let r = match req {
        Request::Ping => Ok(Reply {
            delivered: true,
            pid: std::process::id(),
            ..Reply::default()
        }),
        Request::Tcp {
            src,
            sport,
            dst,
            port,
            timeout_ms,
        } => tcp_probe(src, sport, dst, port, Duration::from_millis(timeout_ms)),
        Request::Udp {
            src,
            sport,
            dst,
            port,
            timeout_ms,
            nonce,
        } => udp_probe(
            src,
            sport,
            dst,
            port,
            Duration::from_millis(timeout_ms),
            nonce,
        ),
        Request::Sctp {
            src,
            dst,
            port,
            tag,
        } => sctp_probe(src, dst, port, tag),
        Request::Redis {
            src,
            sport,
            dst,
            port,
            timeout_ms,
        } => redis_probe(src, sport, dst, port, Duration::from_millis(timeout_ms)),
        Request::Http {
            src,
            sport,
            dst,
            port,
            method,
            path,
            host,
            headers,
            timeout_ms,
        } => http_probe(
            src,
            sport,
            dst,
            port,
            (&method, &path, &host, &headers),
            Duration::from_millis(timeout_ms),
        ),
        Request::HttpSeq {
            src,
            dst,
            port,
            requests,
            timeout_ms,
        } => http_seq(src, dst, port, &requests, Duration::from_millis(timeout_ms)),
        // Answered by the control loop, which holds the log.
        Request::HttpLog => Ok(Reply::default()),
        Request::Tls {
            src,
            sport,
            dst,
            port,
            sni,
            timeout_ms,
        } => tls_probe(
            src,
            sport,
            dst,
            port,
            &sni,
            Duration::from_millis(timeout_ms),
        ),
        Request::Icmp {
            src,
            dst,
            icmp_type,
            id,
            timeout_ms,
        } => icmp_probe(src, dst, icmp_type, id, Duration::from_millis(timeout_ms)),
        Request::Dns {
            src,
            sport,
            server,
            name,
            timeout_ms,
        } => dns_probe(src, sport, server, &name, Duration::from_millis(timeout_ms)),
        Request::Seen { proto, src, key } => Ok(Reply {
            seen: seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&(proto, src, key)),
            ..Reply::default()
        }),
        Request::ConnLoop {
            src,
            dst,
            port,
            duration_ms,
            timeout_ms,
        } => Ok(conn_loop(
            src,
            dst,
            port,
            Duration::from_millis(duration_ms),
            Duration::from_millis(timeout_ms),
        )),
    };
    // The agent's errors travel as text in the reply (the edge of the wire protocol).
    r.unwrap_or_else(|e| Reply {
        error: Some(e.to_string()),
        ..Reply::default()
    })
}

fn bound(ty: Type, proto: Protocol, src: Ipv4Addr, port: u16) -> Result<Socket, NodeError> {
    let s = Socket::new(Domain::IPV4, ty, Some(proto)).map_err(NodeError::io("socket"))?;
    // Chosen source ports are reused by later probes: never refuse them for a lingering
    // socket of an earlier probe.
    let _ = s.set_reuse_address(true);
    s.bind(&SockAddr::from(SocketAddrV4::new(src, port)))
        .map_err(NodeError::io(format!("bind {src}")))?;
    Ok(s)
}

fn local_port(s: &Socket) -> u16 {
    s.local_addr()
        .ok()
        .and_then(|a| a.as_socket_ipv4())
        .map_or(0, |a| a.port())
}

fn tcp_probe(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<Reply, NodeError> {
    tcp_connect(src, sport, dst, port, timeout).map(|(r, _)| r)
}

/// Connects from `src:sport` (0: any port) to `dst:port`: whether the SYN was answered
/// (delivered, refused) or why not, and the stream when connected. The stream closes with a
/// reset: no TIME_WAIT, so probes never collide on a 4-tuple.
fn tcp_connect(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
) -> Result<(Reply, Option<std::net::TcpStream>), NodeError> {
    let s = bound(Type::STREAM, Protocol::TCP, src, sport)?;
    let mut r = Reply {
        sport: local_port(&s),
        ..Reply::default()
    };
    match s.connect_timeout(&SockAddr::from(SocketAddrV4::new(dst, port)), timeout) {
        Ok(()) => {
            r.delivered = true;
            let _ = s.set_linger(Some(Duration::ZERO));
            return Ok((r, Some(s.into())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            r.delivered = true;
            r.refused = true;
        }
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
        Err(e) if e.raw_os_error() == Some(115) => {} // EINPROGRESS at the deadline
        Err(e) => r.error = Some(format!("connect {dst}:{port}: {e}")),
    }
    Ok((r, None))
}

fn udp_probe(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    port: u16,
    timeout: Duration,
    nonce: u64,
) -> Result<Reply, NodeError> {
    let s: UdpSocket = bound(Type::DGRAM, Protocol::UDP, src, sport)?.into();
    let sport = s.local_addr().map_or(0, |a| a.port());
    s.connect((dst, port)).map_err(NodeError::io("connect"))?;
    let mut payload = MAGIC.to_vec();
    payload.extend_from_slice(&nonce.to_be_bytes());
    s.send(&payload).map_err(NodeError::io("send"))?;
    let deadline = Instant::now() + timeout;
    let mut r = Reply {
        sport,
        ..Reply::default()
    };
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.recv(&mut buf) {
            Ok(n) if buf[..n] == payload[..] => {
                r.delivered = true;
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                r.delivered = true;
                r.refused = true;
                break;
            }
            Err(_) => break,
        }
    }
    Ok(r)
}

/// CRC32c (Castagnoli), the SCTP checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP INIT: common header, INIT chunk, CRC32c (little-endian on the wire).
pub fn sctp_init(sport: u16, dport: u16, tag: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 in an INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.extend_from_slice(&[1, 0]); // chunk type INIT, flags
    p.extend_from_slice(&20u16.to_be_bytes());
    p.extend_from_slice(&tag.to_be_bytes()); // initiate tag
    p.extend_from_slice(&65535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&tag.to_be_bytes()); // initial TSN
    let c = crc32c(&p);
    p[8..12].copy_from_slice(&c.to_le_bytes());
    p
}

fn sctp_probe(src: Ipv4Addr, dst: Ipv4Addr, port: u16, tag: u32) -> Result<Reply, NodeError> {
    let s = bound(Type::RAW, Protocol::from(132), src, 0)?;
    // A source port from the tag: known to the lab for matching drops.
    let sport = 20000 + (tag % 40000) as u16;
    s.send_to(
        &sctp_init(sport, port, tag),
        &SockAddr::from(SocketAddrV4::new(dst, 0)),
    )
    .map_err(NodeError::io("send"))?;
    Ok(Reply {
        sport,
        ..Reply::default()
    })
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn icmp_probe(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    id: u16,
    timeout: Duration,
) -> Result<Reply, NodeError> {
    let mut s = bound(Type::RAW, Protocol::ICMPV4, src, 0)?;
    let mut p = vec![icmp_type, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(MAGIC);
    p.extend_from_slice(&u64::from(id).to_be_bytes());
    let c = inet_checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    s.send_to(&p, &SockAddr::from(SocketAddrV4::new(dst, 0)))
        .map_err(NodeError::io("send"))?;
    let mut r = Reply {
        sport: id,
        ..Reply::default()
    };
    if icmp_type != 8 {
        // No reply to wait for: the destination's agent says whether it arrived.
        return Ok(r);
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let Ok(n) = s.read(&mut buf) else { break };
        let q = &buf[..n];
        if n < 28 {
            continue;
        }
        let ihl = usize::from(q[0] & 0xf) * 4;
        let from = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
        let Some(l4) = q.get(ihl..ihl + 8) else {
            continue;
        };
        if from == dst && l4[0] == 0 && u16::from_be_bytes([l4[4], l4[5]]) == id {
            r.delivered = true;
            break;
        }
    }
    Ok(r)
}

/// A DNS query for an A record (RD set).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len().min(63) as u8);
        q.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)?;
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        if len == 0 {
            return Some(i + 1);
        }
        i += 1 + usize::from(len);
    }
}

/// The response code and A records of a DNS response to query `id`.
pub fn dns_answer(m: &[u8], id: u16) -> Option<(u8, Vec<Ipv4Addr>)> {
    if m.len() < 12 || u16::from_be_bytes([m[0], m[1]]) != id || m[2] & 0x80 == 0 {
        return None;
    }
    let rcode = m[3] & 0x0f;
    let qd = u16::from_be_bytes([m[4], m[5]]);
    let an = u16::from_be_bytes([m[6], m[7]]);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..an {
        i = skip_name(m, i)?;
        let ty = u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]);
        let len = usize::from(u16::from_be_bytes([*m.get(i + 8)?, *m.get(i + 9)?]));
        let data = m.get(i + 10..i + 10 + len)?;
        if ty == 1 && len == 4 {
            addrs.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        i += 10 + len;
    }
    Some((rcode, addrs))
}

fn dns_probe(
    src: Ipv4Addr,
    sport: u16,
    server: Ipv4Addr,
    name: &str,
    timeout: Duration,
) -> Result<Reply, NodeError> {
    let s: UdpSocket = bound(Type::DGRAM, Protocol::UDP, src, sport)?.into();
    let sport = s.local_addr().map_or(0, |a| a.port());
    s.connect((server, 53)).map_err(NodeError::io("connect"))?;
    let id = sport ^ 0x5a5a;
    s.send(&dns_query(id, name))
        .map_err(NodeError::io("send"))?;
    let deadline = Instant::now() + timeout;
    let mut r = Reply {
        sport,
        ..Reply::default()
    };
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.recv(&mut buf) {
            Ok(n) => {
                if let Some((rcode, addrs)) = dns_answer(&buf[..n], id) {
                    r.delivered = true;
                    r.rcode = Some(rcode);
                    r.addrs = addrs;
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                r.delivered = true;
                r.refused = true;
                break;
            }
            Err(_) => break,
        }
    }
    Ok(r)
}

fn conn_loop(src: Ipv4Addr, dst: Ipv4Addr, port: u16, d: Duration, timeout: Duration) -> Reply {
    let end = Instant::now() + d;
    let mut r = Reply::default();
    while Instant::now() < end {
        let t0 = Instant::now();
        let why = match tcp_probe(src, 0, dst, port, timeout) {
            Ok(p) if p.delivered && !p.refused => {
                r.ok += 1;
                continue;
            }
            Ok(p) if p.refused => "refused".to_string(),
            Ok(p) => p
                .error
                .unwrap_or_else(|| format!("timeout after {:?} (sport {})", t0.elapsed(), p.sport)),
            Err(e) => e.to_string(),
        };
        r.failed += 1;
        if r.errors.len() < 8 {
            r.errors.push(why);
        }
    }
    r.delivered = r.failed == 0;
    r
}

/// `connrate --src A --dst B [--port P] [--secs S] [--threads N]`.
pub fn connrate_main(args: &[String]) -> Result<(), NodeError> {
    let parse = |n: &'static str| -> Result<Ipv4Addr, NodeError> {
        opt(args, n)
            .ok_or(NodeError::Missing {
                program: "connrate",
                what: n,
            })?
            .parse()
            .map_err(NodeError::invalid(n))
    };
    let (src, dst) = (parse("--src")?, parse("--dst")?);
    let port: u16 = opt(args, "--port")
        .unwrap_or("5201")
        .parse()
        .map_err(NodeError::invalid("--port"))?;
    let secs: f64 = opt(args, "--secs")
        .unwrap_or("3")
        .parse()
        .map_err(NodeError::invalid("--secs"))?;
    let threads: usize = opt(args, "--threads")
        .unwrap_or("2")
        .parse()
        .map_err(NodeError::invalid("--threads"))?;
    let d = Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| thread::spawn(move || conn_loop(src, dst, port, d, Duration::from_secs(1))))
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for h in handles {
        if let Ok(r) = h.join() {
            ok += r.ok;
            failed += r.failed;
        }
    }
    println!("{:.0} conn/s ({ok} ok, {failed} failed)", ok as f64 / secs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc_vector() {
        // RFC 3720 B.4: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn dns_round_trip() {
        let q = dns_query(7, "one.one.one.one.");
        // A response: the query with QR set, one answer pointing at the question name.
        let mut r = q.clone();
        r[2] |= 0x80;
        r[7] = 1;
        r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 1, 1, 1, 1]);
        assert_eq!(
            dns_answer(&r, 7),
            Some((0, vec![Ipv4Addr::new(1, 1, 1, 1)]))
        );
        assert_eq!(dns_answer(&r, 8), None);
    }
}
