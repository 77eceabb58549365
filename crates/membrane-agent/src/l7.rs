//! The node's L7 proxies (HTTP, DNS, TLS from `membrane-proxy`) inside the agent.
//!
//! The ruleset hands connections an L7 rule covers to them with `tproxy` (and drops them
//! while no proxy listens, fail closed). They decide with the same engine snapshot the
//! datapath was compiled from: the agent publishes a new [`ProxyPolicy`] through a
//! `tokio::sync::watch` channel after every enforced change, and hears back (as
//! [`Event::DnsLearned`]) when the DNS proxy learns names, which toFQDNs selectors then
//! select, as Cilium's DNS proxy feeds its ipcache.

use crate::events::NoFiles;
use crate::metrics::Metrics;
use crate::source::Event;
use membrane_datapath::layout::{DNS_PORT, HTTP_PORT, PROXY_MARK, PROXY_ROUTE_TABLE, TLS_PORT};
use membrane_datapath::node::proxy::{denial_json, dns_forwarded_json, forwarded_json};
use membrane_proxy::policy::{DnsForwardHook, ForwardHook};
use membrane_proxy::{
    Denial, DenialHook, DnsProxy, DnsProxyConfig, FqdnCache, FqdnLearner, HttpProxyConfig,
    ProxyPolicy, SystemClock, TlsProxyConfig, serve_dns_tcp, serve_dns_udp, serve_http, serve_tls,
    transparent_flow, transparent_tcp_listener, transparent_udp_socket,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Where flow events go (one JSON line each): the agent's events socket.
pub type LineSink = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

/// Where the proxies report: metrics always, flow events when a socket serves them.
#[derive(Clone)]
pub struct Reporting {
    pub metrics: Arc<Metrics>,
    pub node: String,
    pub events: Option<LineSink>,
}

pub struct Proxies {
    policy: tokio::sync::watch::Sender<Arc<ProxyPolicy>>,
    learner: Arc<FqdnLearner>,
    /// Keeps the proxies' runtime (and so their tasks) alive.
    _thread: std::thread::JoinHandle<()>,
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn denial_hook(protocol: &'static str, report: &Reporting) -> DenialHook {
    let report = report.clone();
    Arc::new(move |d: &Denial| {
        report.metrics.proxy_request(protocol, "denied");
        report
            .metrics
            .l7_denial(protocol, d.direction.as_str(), d.reason);
        if let Some(events) = &report.events {
            events(&denial_json(d, &report.node, &NoFiles));
        }
    })
}

/// Routes packets marked for a proxy socket to the local stack (`ip rule` + a `local`
/// route), as the lab does in its node namespaces. Idempotent.
pub fn route_to_proxies() -> Result<(), String> {
    let rules = std::process::Command::new("ip")
        .args(["rule", "show"])
        .output()
        .map_err(|e| format!("`ip rule show`: {e} (install iproute2)"))?;
    let table = PROXY_ROUTE_TABLE.to_string();
    let present = String::from_utf8_lossy(&rules.stdout)
        .lines()
        .any(|l| l.contains(&format!("fwmark {PROXY_MARK:#x}")) && l.contains(&table));
    let run = |args: &[&str]| -> Result<(), String> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("`ip {}`: {e}", args.join(" ")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`ip {}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    if !present {
        let mark = format!("{PROXY_MARK:#x}/{PROXY_MARK:#x}");
        run(&["rule", "add", "fwmark", &mark, "lookup", &table])?;
    }
    run(&[
        "route",
        "replace",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        &table,
    ])
}

impl Proxies {
    /// Binds the proxies' transparent sockets and starts serving `policy`; fails (with the
    /// socket that could not be bound) before anything is served.
    pub fn start(
        policy: ProxyPolicy,
        report: Reporting,
        wake: Sender<Event>,
        hold: Duration,
    ) -> Result<Proxies, String> {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(policy));
        let mut learner = FqdnLearner::new(Arc::new(SystemClock));
        learner.hold = hold;
        let learner = Arc::new(learner);
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let thread_learner = learner.clone();
        let thread = std::thread::Builder::new()
            .name("l7-proxies".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(format!("proxy runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(serve(rx, thread_learner, report, wake, bound_tx));
            })
            .map_err(|e| format!("proxy thread: {e}"))?;
        match bound_rx.recv() {
            Ok(Ok(())) => Ok(Proxies {
                policy: tx,
                learner,
                _thread: thread,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the proxies stopped while starting".into()),
        }
    }

    /// The proxies decide with `policy` from now on (requests in flight finish with theirs).
    pub fn publish(&self, policy: ProxyPolicy) {
        self.policy.send_replace(Arc::new(policy));
    }

    /// What the DNS proxy has learned and not yet expired, with its generation (report it
    /// to [`Proxies::enforced`] once this is enforced).
    pub fn learned(&self) -> (u64, Arc<FqdnCache>) {
        let generation = self.learner.generation();
        (generation, self.learner.snapshot())
    }

    /// What was learned up to `generation` is enforced: answers held for it go out.
    pub fn enforced(&self, generation: u64) {
        self.learner.enforced(generation);
    }
}

async fn serve(
    rx: tokio::sync::watch::Receiver<Arc<ProxyPolicy>>,
    learner: Arc<FqdnLearner>,
    report: Reporting,
    wake: Sender<Event>,
    bound: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let sockets = (|| {
        let bind = |what: &str, port: u16| format!("cannot bind the {what} proxy on port {port}");
        Ok::<_, String>((
            transparent_tcp_listener(any(HTTP_PORT))
                .map_err(|e| format!("{}: {e}", bind("HTTP", HTTP_PORT)))?,
            transparent_tcp_listener(any(TLS_PORT))
                .map_err(|e| format!("{}: {e}", bind("TLS", TLS_PORT)))?,
            transparent_udp_socket(any(DNS_PORT))
                .map_err(|e| format!("{}: {e}", bind("DNS (UDP)", DNS_PORT)))?,
            transparent_tcp_listener(any(DNS_PORT))
                .map_err(|e| format!("{}: {e}", bind("DNS (TCP)", DNS_PORT)))?,
        ))
    })();
    let (http, tls, dns_udp, dns_tcp) = match sockets {
        Ok(s) => s,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let http_report = report.clone();
    let on_forward: ForwardHook = Arc::new(move |f: &membrane_proxy::policy::Forwarded| {
        let m = &http_report.metrics;
        m.proxy_request("http", "forwarded");
        if f.status.is_none() {
            m.proxy_errors
                .get_or_create(&vec![("protocol".into(), "http".into())])
                .inc();
        }
        if let Some(events) = &http_report.events {
            events(&forwarded_json(f, &http_report.node, &NoFiles));
        }
    });
    let dns_report = report.clone();
    let on_dns_forward: DnsForwardHook =
        Arc::new(move |f: &membrane_proxy::policy::DnsForwarded| {
            dns_report.metrics.proxy_request("dns", "forwarded");
            if let Some(events) = &dns_report.events {
                events(&dns_forwarded_json(f, &dns_report.node, &NoFiles));
            }
        });
    tokio::spawn(serve_http(
        http,
        rx.clone(),
        transparent_flow,
        HttpProxyConfig {
            spoof_source: true,
            on_denial: Some(denial_hook("http", &report)),
            on_forward: Some(on_forward),
            ..Default::default()
        },
    ));
    tokio::spawn(serve_tls(
        tls,
        rx.clone(),
        transparent_flow,
        TlsProxyConfig {
            spoof_source: true,
            on_denial: Some(denial_hook("tls", &report)),
            ..Default::default()
        },
    ));
    tokio::spawn(learner.clone().run_expiry(Duration::from_secs(1)));
    let mut learned = learner.subscribe();
    let dns = Arc::new(DnsProxy::new(
        rx,
        learner,
        DnsProxyConfig {
            spoof_source: true,
            on_denial: Some(denial_hook("dns", &report)),
            on_forward: Some(on_dns_forward),
            ..Default::default()
        },
    ));
    tokio::spawn(serve_dns_udp(
        dns_udp,
        dns.clone(),
        membrane_proxy::Flow::new,
    ));
    tokio::spawn(serve_dns_tcp(dns_tcp, dns, transparent_flow));
    let _ = bound.send(Ok(()));
    // Learned (or expired) names wake the agent's loop, which feeds them to the engine.
    while learned.changed().await.is_ok() {
        report
            .metrics
            .fqdn_addresses
            .set(learned.borrow().len() as i64);
        if wake.send(Event::DnsLearned).is_err() {
            return;
        }
    }
}
