//! Test helpers: policies from scenario text, and small real servers on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::policy::{Denial, DenialHook, ProxyPolicy};
use crate::world::proxy_policy_from_world;
use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_policy::Severity;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// The cluster the tests' policies apply to.
pub const SCENARIO: &str = r#"
name: proxy-tests
namespaces:
  - {name: default, labels: {kubernetes.io/metadata.name: default}}
  - {name: kube-system, labels: {kubernetes.io/metadata.name: kube-system}}
nodes:
  - {name: node1, ip: 172.18.0.2, podCIDR: 10.244.1.0/24, cilium: true, labels: {kubernetes.io/hostname: node1}}
endpoints:
  - {name: client, namespace: default, node: node1, ip: 10.244.1.10, labels: {app: client}}
  - {name: other, namespace: default, node: node1, ip: 10.244.1.11, labels: {app: other}}
  - {name: echo, namespace: default, node: node1, ip: 10.244.1.20, labels: {app: echo}}
  - {name: kube-dns, namespace: kube-system, node: node1, ip: 10.244.1.53, labels: {k8s-app: kube-dns}}
external:
  - {name: api.example.com, ips: [203.0.113.20]}
policies: |
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: client-l7, namespace: default}
  spec:
    endpointSelector: {matchLabels: {app: client}}
    egress:
    - toEndpoints: [{matchLabels: {app: echo}}]
      toPorts:
      - ports: [{port: "8080", protocol: TCP}]
        rules:
          http:
          - {method: GET, path: "/public.*"}
          - {method: POST, path: /upload}
          - method: POST
            path: /auth
            headerMatches:
            - {name: Authorization, value: Bearer 123456, mismatch: REPLACE}
            - {name: X-Debug, value: "on", mismatch: DELETE}
            - {name: X-Tag, value: added, mismatch: ADD}
          #EXTRA#
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}]
      toPorts:
      - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
        rules:
          dns:
          - matchPattern: "*.example.com"
    - toEntities: [world]
      toPorts:
      - ports: [{port: "443", protocol: TCP}]
        serverNames: [api.example.com]
  ---
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: echo-ingress, namespace: default}
  spec:
    endpointSelector: {matchLabels: {app: echo}}
    ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
flows: []
"#;

pub const CLIENT: &str = "10.244.1.10";
pub const OTHER: &str = "10.244.1.11";
pub const ECHO: &str = "10.244.1.20";
pub const KUBE_DNS: &str = "10.244.1.53";
pub const API: &str = "203.0.113.20";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn sock(ip_text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(ip_text), port)
}

/// The proxies' policy for [`SCENARIO`], with `extra` added to the client's HTTP rules.
pub fn policy_with(extra_http_rule: &str) -> ProxyPolicy {
    let text = SCENARIO.replace("#EXTRA#", extra_http_rule);
    let scenario = parse_scenario(&text).unwrap_or_else(|d| panic!("scenario: {d:?}"));
    let world = World::from_scenario(scenario, 0);
    let errors: Vec<_> = world
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert!(errors.is_empty(), "policy errors: {errors:?}");
    proxy_policy_from_world(&world, Some(0), None)
}

pub fn policy() -> ProxyPolicy {
    policy_with("")
}

/// The HTTP rules the evasion and attack suites add to the client's: a host-bound path, a
/// header-bound path, and a method alternation.
pub const SUITE_RULES: &str = r#"- {method: GET, path: "/hosted/.*", host: "good\\.example"}
          - {method: GET, path: "/admin/.*", headers: ["X-Role: admin"]}
          - {method: "GET|HEAD", path: "/status"}"#;

/// An HTTP proxy on 127.0.0.1 whose every connection is `src_ip` → echo:8080, forwarded to
/// `upstream`, deciding with `policy`; its address and the sender that swaps the policy.
pub async fn start_http_proxy(
    policy: ProxyPolicy,
    src_ip: &'static str,
    upstream: SocketAddr,
    config: crate::HttpProxyConfig,
) -> (SocketAddr, tokio::sync::watch::Sender<Arc<ProxyPolicy>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
    let flow_of = move |s: &TcpStream| -> std::io::Result<crate::Flow> {
        Ok(crate::Flow {
            src: sock(src_ip, s.peer_addr()?.port()),
            dst: sock(ECHO, 8080),
            upstream,
        })
    };
    tokio::spawn(crate::serve_http(listener, rx, flow_of, config));
    (addr, tx)
}

/// A denial hook that keeps every denial.
pub fn denial_log() -> (DenialHook, Arc<Mutex<Vec<Denial>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    (
        Arc::new(move |d: &Denial| l.lock().unwrap().push(d.clone())),
        log,
    )
}

/// What the echo server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A tiny hyper server on 127.0.0.1 answering `200 echo <method> <target>` and reporting
/// every request it sees.
pub async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let method = req.method().to_string();
                        let target = req.uri().to_string();
                        let headers = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let body = req.into_body().collect().await?.to_bytes();
                        let reply = format!("echo {method} {target}");
                        let _ = tx.send(Seen {
                            method,
                            target,
                            headers,
                            body,
                        });
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(reply))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A 127.0.0.1 address where nothing listens.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// An HTTP response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw client connection: write bytes, read responses one by one (pipelining works).
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response; `None` when the connection closes first.
    pub async fn response(&mut self) -> Option<RawResponse> {
        self.response_to(false).await
    }

    /// The next response to a `HEAD` request (no body, whatever `content-length` says).
    pub async fn head_response(&mut self) -> Option<RawResponse> {
        self.response_to(true).await
    }

    async fn response_to(&mut self, head_request: bool) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let len = if head_request { 0 } else { len };
        while self.buf.len() < head_end + len {
            assert!(self.fill().await, "closed inside a body");
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Some(RawResponse {
            status,
            headers,
            body,
        })
    }

    /// Whether the peer closed the connection (reads EOF or a reset) within a second.
    pub async fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// A tiny DNS server on 127.0.0.1 (UDP and TCP on the same port number when possible):
/// answers A/AAAA from its table with the given TTL, NXDOMAIN otherwise; counts queries.
pub struct DnsResponder {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub queries: Arc<AtomicUsize>,
}

pub async fn dns_responder(table: &[(&str, &str, u32)]) -> DnsResponder {
    let table: Arc<HashMap<String, Vec<(IpAddr, u32)>>> = Arc::new({
        let mut m: HashMap<String, Vec<(IpAddr, u32)>> = HashMap::new();
        for (name, addr, ttl) in table {
            m.entry(name.to_ascii_lowercase())
                .or_default()
                .push((ip(addr), *ttl));
        }
        m
    });
    let queries = Arc::new(AtomicUsize::new(0));
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    {
        let (table, queries) = (table.clone(), queries.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                queries.fetch_add(1, Ordering::SeqCst);
                if let Some(resp) = dns_answer(&table, &buf[..n]) {
                    let _ = udp.send_to(&resp, from).await;
                }
            }
        });
    }
    {
        let (table, queries) = (table.clone(), queries.clone());
        serve_framed_dns(tcp, move |q| {
            queries.fetch_add(1, Ordering::SeqCst);
            dns_answer(&table, q)
        });
    }
    DnsResponder {
        udp: udp_addr,
        tcp: tcp_addr,
        queries,
    }
}

/// Serves DNS over TCP on `listener`: each length-prefixed message goes to `answer`, whose
/// reply is written back length-prefixed; `None` (or a broken frame) closes the connection.
pub fn serve_framed_dns<F>(listener: TcpListener, answer: F)
where
    F: Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(resp) = answer(&q) else {
                        return;
                    };
                    let mut out = (resp.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&resp);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

fn dns_answer(table: &HashMap<String, Vec<(IpAddr, u32)>>, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let name = question.name.to_ascii().to_ascii_lowercase();
    let mut resp = Message::response(q.metadata.id, q.metadata.op_code);
    resp.metadata.recursion_desired = q.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = vec![question.clone()];
    match table.get(&name) {
        Some(addrs) => {
            for (a, ttl) in addrs {
                let rdata = match a {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                resp.answers
                    .push(Record::from_rdata(question.name.clone(), *ttl, rdata));
            }
        }
        None => resp.metadata.response_code = ResponseCode::NXDomain,
    }
    resp.to_vec().ok()
}

/// A DNS query message for `name` (type A) with `id`.
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    use hickory_proto::op::{OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries
        .push(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// Sends `query` over UDP to `to` and waits for the answer.
pub async fn udp_exchange(to: SocketAddr, query: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(query, to).await.unwrap();
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(Duration::from_secs(3), s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(Message::from_vec(&buf[..n]).unwrap()),
        _ => None,
    }
}

/// A TCP server on 127.0.0.1 that echoes every byte back; counts connections.
pub async fn tcp_echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, conns)
}

/// What the raw backend received: the request line's parts and headers exactly as they came
/// off the wire, and the body.
#[derive(Debug, Clone)]
pub struct RawSeen {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawSeen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A backend that parses requests by hand (independently of the proxy's code), records each
/// one and answers `200` with body `<x-case> <target>`, echoing `x-case`. Keep-alive,
/// `content-length` and `chunked` bodies.
pub async fn raw_backend() -> (SocketAddr, Arc<Mutex<Vec<RawSeen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Arc<Mutex<Vec<RawSeen>>> = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log2.clone();
            tokio::spawn(async move {
                let _ = raw_backend_connection(stream, log).await;
            });
        }
    });
    (addr, log)
}

async fn raw_backend_connection(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<RawSeen>>>,
) -> Option<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut first = lines.next()?.split(' ');
        let (method, target, version) = (
            first.next()?.to_string(),
            first.next()?.to_string(),
            first.next()?.to_string(),
        );
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = get("content-length") {
            let len: usize = len.parse().ok()?;
            while buf.len() < len {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            body = buf.drain(..len).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    let mut chunk = [0u8; 8192];
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16).ok()?;
                buf.drain(..line_end + 2);
                while buf.len() < size + 2 {
                    let mut chunk = [0u8; 8192];
                    let n = stream.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                body.extend(buf.drain(..size));
                buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        }
        let case = get("x-case").unwrap_or_default();
        let reply_body = format!("{case} {target}");
        let reply = format!(
            "HTTP/1.1 200 OK\r\nx-case: {case}\r\ncontent-length: {}\r\n\r\n{}",
            reply_body.len(),
            if method == "HEAD" {
                ""
            } else {
                reply_body.as_str()
            }
        );
        log.lock().unwrap().push(RawSeen {
            method,
            target,
            version,
            headers,
            body,
        });
        stream.write_all(reply.as_bytes()).await.ok()?;
    }
}

/// A test that cannot run here (no `CAP_NET_ADMIN`) says so where people see it: straight to
/// the stderr handle, which the harness does not capture. In CI (`CI` set, as root) a
/// missing capability is a failure instead.
pub fn skip_without_privilege(test: &str, why: &dyn std::fmt::Display) {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI runs as root, but: {why}");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "{test}: SKIPPED: needs CAP_NET_ADMIN ({why})"
    );
}
