//! What the agent exposes: Prometheus metrics (`/metrics`, an explicit prometheus-client
//! registry), `/healthz` (the process answers) and `/readyz` (the first state is enforced).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    /// The engine's revision after the last enforced change.
    pub revision: Gauge,
    /// Pods this node enforces.
    pub endpoints: Gauge,
    /// Identities the engine knows.
    pub identities: Gauge,
    pub transactions: Counter,
    pub transaction_errors: Counter,
    /// Object events received, by kind and operation (`apply`, `delete`).
    pub events: Family<Labels, Counter>,
    /// From a batch of events received to its transaction applied, in seconds.
    pub enforce_latency: Histogram,
    /// Packets the datapath dropped, by reason (`default-deny`, `deny-rule`, ...) and
    /// direction (with `--events-socket`, which reads them).
    pub drops: Family<Labels, Counter>,
    /// Requests, queries and connections the L7 proxies handled, by protocol (`http`,
    /// `dns`, `tls`) and outcome (`forwarded`, `denied`).
    pub proxy_requests: Family<Labels, Counter>,
    /// L7 denials (HTTP 403, DNS REFUSED, TLS reset), by protocol, direction and reason.
    pub l7_denials: Family<Labels, Counter>,
    /// Forwarded HTTP requests whose upstream exchange failed (no answer from the server).
    pub proxy_errors: Family<Labels, Counter>,
    /// Names the DNS proxy has learned (toFQDNs), as (name, address) pairs.
    pub fqdn_addresses: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("membrane_agent");
        let revision = Gauge::default();
        let endpoints = Gauge::default();
        let identities = Gauge::default();
        let transactions = Counter::default();
        let transaction_errors = Counter::default();
        let events = Family::<Labels, Counter>::default();
        // 0.5 ms to 4 s.
        let enforce_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let drops = Family::<Labels, Counter>::default();
        let proxy_requests = Family::<Labels, Counter>::default();
        let l7_denials = Family::<Labels, Counter>::default();
        let proxy_errors = Family::<Labels, Counter>::default();
        let fqdn_addresses = Gauge::default();
        registry.register(
            "proxy_requests",
            "Requests, queries and connections the L7 proxies handled, by protocol and outcome",
            proxy_requests.clone(),
        );
        registry.register(
            "l7_denials",
            "L7 denials (HTTP 403, DNS REFUSED, TLS reset), by protocol, direction and reason",
            l7_denials.clone(),
        );
        registry.register(
            "proxy_errors",
            "Forwarded HTTP requests whose upstream exchange failed",
            proxy_errors.clone(),
        );
        registry.register(
            "fqdn_addresses",
            "Addresses the DNS proxy learned for names (toFQDNs)",
            fqdn_addresses.clone(),
        );
        registry.register(
            "policy_revision",
            "The engine's revision after the last enforced change",
            revision.clone(),
        );
        registry.register("endpoints", "Pods this node enforces", endpoints.clone());
        registry.register(
            "identities",
            "Security identities the engine knows",
            identities.clone(),
        );
        registry.register(
            "transactions",
            "nftables transactions applied",
            transactions.clone(),
        );
        registry.register(
            "transaction_errors",
            "nftables transactions refused (the previous policy stayed in force)",
            transaction_errors.clone(),
        );
        registry.register(
            "events",
            "Object events received, by kind and operation",
            events.clone(),
        );
        registry.register(
            "enforce_latency_seconds",
            "From a batch of events received to its transaction applied",
            enforce_latency.clone(),
        );
        registry.register(
            "drops",
            "Packets the datapath dropped, by reason and direction",
            drops.clone(),
        );
        Metrics {
            registry,
            revision,
            endpoints,
            identities,
            transactions,
            transaction_errors,
            events,
            enforce_latency,
            drops,
            proxy_requests,
            l7_denials,
            proxy_errors,
            fqdn_addresses,
            ready: AtomicBool::new(false),
        }
    }

    pub fn event(&self, kind: &str, op: &str) {
        self.events
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("op".into(), op.into()),
            ])
            .inc();
    }

    pub fn proxy_request(&self, protocol: &str, outcome: &str) {
        self.proxy_requests
            .get_or_create(&vec![
                ("protocol".into(), protocol.into()),
                ("outcome".into(), outcome.into()),
            ])
            .inc();
    }

    pub fn l7_denial(&self, protocol: &str, direction: &str, reason: &str) {
        self.l7_denials
            .get_or_create(&vec![
                ("protocol".into(), protocol.into()),
                ("direction".into(), direction.into()),
                ("reason".into(), reason.into()),
            ])
            .inc();
    }

    pub fn drop_seen(&self, reason: &str, direction: &str) {
        self.drops
            .get_or_create(&vec![
                ("reason".into(), reason.into()),
                ("direction".into(), direction.into()),
            ])
            .inc();
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 2048];
    let mut request = Vec::new();
    while !request.windows(4).any(|w| w == b"\r\n\r\n")
        && request.len() < 16 * 1024
        && std::time::Instant::now() < deadline
    {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, body) = match path {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" if metrics.is_ready() => ("200 OK", "text/plain", "ready\n".to_string()),
        "/readyz" => (
            "503 Service Unavailable",
            "text/plain",
            "the first state is not enforced yet\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves the endpoints on `addr` from a thread of their own; returns the bound address.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            // A thread per connection: a slow client cannot hold the probes up.
            for stream in listener.incoming().flatten() {
                let metrics = metrics.clone();
                let _ = std::thread::Builder::new()
                    .name("metrics-conn".into())
                    .spawn(move || answer(stream, &metrics));
            }
        })?;
    Ok(bound)
}
