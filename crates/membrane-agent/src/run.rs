//! The agent's loop: events in, this node's ruleset out, one transaction per batch.

use crate::enforce::{EnforceError, Enforcer, Mode};
use crate::l7::{Proxies, Reporting, route_to_proxies};
use crate::node_view::{cidr_regions, node_input, policy_prefixes, proxy_policy};
use crate::source::{ClusterSource, DirSource, Event};
use membrane_cluster::live::LiveCluster;
use membrane_datapath::layout::{DNS_PORT, HTTP_PORT, TLS_PORT};
use membrane_datapath::nft::compile::{compile_node, with_proxies};
use membrane_policy::options::Options;
use membrane_proxy::FqdnCache;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub enum Source {
    Dir(PathBuf),
    Cluster(membrane_kube::ClusterOptions),
}

pub struct AgentOptions {
    pub node: String,
    pub source: Source,
    pub mode: Mode,
    /// Stop after the first enforced state.
    pub once: bool,
    /// How often a directory is read again.
    pub poll: Duration,
    /// Serve the datapath's drops as flow events on this unix socket.
    pub events_socket: Option<PathBuf>,
    /// Run the L7 proxies (HTTP, DNS, TLS) that L7 rules send traffic to; without them
    /// that traffic is dropped (fail closed).
    pub proxies: bool,
    /// The namespace policy secrets are read from (Cilium's `policy-secrets-namespace`).
    pub secrets_namespace: Option<String>,
    /// Cilium's configuration the policy depends on (cluster name, host firewall, ...).
    pub policy: Options,
    /// How long the DNS proxy holds an answer with new addresses until they are enforced.
    pub dns_hold: Duration,
    /// Written once the first state is enforced (and the proxies listen).
    pub ready_file: Option<PathBuf>,
    /// Where the loop reports what it does (served by `metrics::serve`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Enforce(#[from] EnforceError),
    #[error("{0}")]
    Source(String),
}

/// One log line: what happened, for people or (`--log-format json`) machines.
pub struct LogLine<'a> {
    pub level: &'a str,
    pub message: String,
    pub fields: Vec<(&'a str, String)>,
}

/// Where a batch comes from: the watches (through `rx`) or a directory read again every
/// `poll`; the proxies wake the loop through `rx` as well.
struct Events {
    rx: std::sync::mpsc::Receiver<Event>,
    dir: Option<DirSource>,
    /// Keeps the watches running.
    _cluster: Option<ClusterSource>,
}

impl Events {
    /// The next batch: everything pending, after waiting up to `wait` for the first.
    fn next(&mut self, wait: Duration) -> Result<(Vec<Event>, Vec<String>), AgentError> {
        let (mut events, errors) = match &mut self.dir {
            Some(d) => d.poll().map_err(|e| AgentError::Source(e.to_string()))?,
            None => (Vec::new(), Vec::new()),
        };
        if events.is_empty() && errors.is_empty() {
            match self.rx.recv_timeout(wait) {
                // A DNS answer waits for this: no quiet period.
                Ok(Event::DnsLearned) => return Ok((vec![Event::DnsLearned], errors)),
                Ok(e) => events.push(e),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Ok((events, errors));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(AgentError::Source("the watches stopped".into()));
                }
            }
        }
        // A burst (a rollout, a relist) is one transaction: drain what follows closely,
        // but never for longer than 200 ms, so a steady stream is still enforced.
        let quiet = Duration::from_millis(20);
        let cap = Instant::now() + Duration::from_millis(200);
        while Instant::now() < cap
            && let Ok(e) = self.rx.recv_timeout(quiet)
        {
            events.push(e);
        }
        Ok((events, errors))
    }
}

/// A helper process stopped with the agent's loop.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Milliseconds since the Unix epoch (log timestamps, comparable across processes).
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Runs the agent until the source ends (or once, with `once`).
pub fn run(options: &AgentOptions, log: &mut dyn FnMut(LogLine<'_>)) -> Result<(), AgentError> {
    let mut enforcer = Enforcer::start(options.mode)?;
    if let Some(t) = enforcer.inherited() {
        log(LogLine {
            level: "info",
            message:
                "found the table of an earlier agent: it stays in force and is updated in place"
                    .into(),
            fields: vec![
                ("chains", t.chains.len().to_string()),
                ("maps", t.maps.len().to_string()),
            ],
        });
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut events = match &options.source {
        Source::Dir(d) => Events {
            rx,
            dir: Some(DirSource::new(d)),
            _cluster: None,
        },
        Source::Cluster(c) => Events {
            rx,
            dir: None,
            _cluster: Some(
                ClusterSource::start(c, tx.clone(), options.secrets_namespace.as_deref())
                    .map_err(AgentError::Source)?,
            ),
        },
    };
    // Until every kind has listed once, the state is partial: policies may still be paging
    // while the pods are known, and enforcing that would open them.
    let mut unsynced = events._cluster.as_ref().map_or(0, |c| c.kinds);
    let mut live = LiveCluster::new(options.policy.clone());
    let snapshot: crate::events::SharedSnapshot = std::sync::Arc::default();
    let mut flow_events: Option<crate::events::Clients> = None;
    let _tcpdump = match (&options.events_socket, options.mode) {
        (Some(socket), Mode::Apply) => {
            let (child, clients) = crate::events::serve(
                socket,
                options.node.clone(),
                snapshot.clone(),
                options.metrics.clone(),
            )
            .map_err(|e| AgentError::Source(format!("flow events on {}: {e}", socket.display())))?;
            log(LogLine {
                level: "info",
                message: "serving flow events".into(),
                fields: vec![("socket", socket.display().to_string())],
            });
            flow_events = Some(clients);
            Some(KillOnDrop(child))
        }
        _ => None,
    };
    // Started once the first state is enforced: until then (and whenever they are down)
    // the datapath drops what it would hand them, never lets it through unchecked.
    let mut proxies: Option<Proxies> = None;
    let reporting = Reporting {
        metrics: options.metrics.clone(),
        node: options.node.clone(),
        events: flow_events.map(|c| -> crate::l7::LineSink { Arc::new(move |v| c.send(v)) }),
    };
    // What the DNS proxy had learned when the engine last heard of it.
    let mut fed: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    // The policies' CIDR prefixes and their regions, as last cut.
    let mut cidr: (BTreeSet<ipnet::Ipv4Net>, Vec<crate::node_view::CidrRegion>) =
        Default::default();
    // The DNS proxy's generation fed to the engine, acknowledged once enforced.
    let mut learned_pending: Option<u64> = None;
    let mut waiting_for_node = false;
    let mut retry_at: Option<Instant> = None;
    loop {
        let (batch, errors) = events.next(options.poll)?;
        for e in errors {
            log(LogLine {
                level: "warn",
                message: format!("{e}: the last good state stays in force"),
                fields: vec![],
            });
        }
        // After a refusal the same state is tried again every 2 s, events or not.
        let retry_due = retry_at.is_some_and(|t| Instant::now() >= t);
        if batch.is_empty() && !retry_due {
            continue;
        }
        retry_at = None;
        let received = Instant::now();
        let count = batch.len();
        let m = &options.metrics;
        for e in batch {
            match &e {
                Event::Apply(o) => m.event(o["kind"].as_str().unwrap_or(""), "apply"),
                Event::Delete { kind, .. } => m.event(kind, "delete"),
                Event::Synced(_) => unsynced = unsynced.saturating_sub(1),
                Event::DnsLearned => m.event("dns", "learned"),
                Event::WatchError(err) => {
                    m.event("watch", "error");
                    log(LogLine {
                        level: "warn",
                        message: format!("{err} (retrying; the last state stays in force)"),
                        fields: vec![],
                    });
                }
            }
            let outcome = match &e {
                Event::Apply(o) => live.apply(o).map(drop),
                Event::Delete {
                    kind,
                    namespace,
                    name,
                } => {
                    live.delete(kind, namespace.as_deref(), name);
                    Ok(())
                }
                Event::DnsLearned => {
                    if let Some(p) = &proxies {
                        let (generation, cache) = p.learned();
                        feed_learned(&mut live, &cache, &mut fed);
                        learned_pending = Some(generation);
                    }
                    Ok(())
                }
                Event::Synced(_) | Event::WatchError(_) => Ok(()),
            };
            if let Err(err) = outcome {
                log(LogLine {
                    level: "warn",
                    message: format!("skipped: {err}"),
                    fields: vec![],
                });
            }
        }
        *snapshot.lock().unwrap_or_else(|e| e.into_inner()) = Some(live.engine().snapshot());
        if unsynced > 0 {
            continue;
        }
        // Policy prefixes: cut into regions again only when they change; each region's
        // representative address gets its CIDR identity.
        let prefixes = policy_prefixes(live.engine().state());
        if prefixes != cidr.0 {
            cidr = (prefixes, Vec::new());
            cidr.1 = cidr_regions(&cidr.0);
            for r in &cidr.1 {
                let rep = IpAddr::V4(r.representative);
                if live
                    .engine()
                    .state()
                    .identities()
                    .find_cidr(rep, None)
                    .is_none()
                {
                    live.add_world_address(rep);
                }
            }
        }
        let regions = &cidr.1;
        let learned = proxies.as_ref().map(|p| p.learned().1).unwrap_or_default();
        let state = live.engine().state();
        let Some(input) = node_input(state, &options.node, regions, &learned) else {
            if !waiting_for_node {
                log(LogLine {
                    level: "warn",
                    message: format!(
                        "node {} is not in the cluster (yet): nothing enforced until its Node object arrives",
                        options.node
                    ),
                    fields: vec![],
                });
                waiting_for_node = true;
            }
            continue;
        };
        waiting_for_node = false;
        let ruleset = with_proxies(compile_node(&input));
        let applied = match enforcer.apply(&ruleset) {
            // Refused: nothing changed, the previous policy stays in force; the next batch
            // (or the next poll) tries again from it.
            Err(EnforceError::Refused(why)) => {
                m.transaction_errors.inc();
                log(LogLine {
                    level: "error",
                    message: format!(
                        "nft refused the update, the previous policy stays in force: {why}"
                    ),
                    fields: vec![("ts_ms", unix_ms().to_string())],
                });
                retry_at = Some(Instant::now() + Duration::from_secs(2));
                continue;
            }
            other => other,
        };
        m.endpoints.set(input.endpoints.len() as i64);
        m.identities
            .set(live.engine().state().identities().len() as i64);
        match applied? {
            Some(script) => {
                m.transactions.inc();
                m.revision.set(live.engine().state().revision() as i64);
                m.enforce_latency.observe(received.elapsed().as_secs_f64());
                if options.mode == Mode::DryRun {
                    println!("{script}");
                }
                log(LogLine {
                    level: "info",
                    message: if options.mode == Mode::DryRun {
                        "printed the transaction (dry run)".into()
                    } else {
                        "enforced in one transaction".into()
                    },
                    fields: vec![
                        ("ts_ms", unix_ms().to_string()),
                        ("events", count.to_string()),
                        ("endpoints", input.endpoints.len().to_string()),
                        ("transaction", enforcer.transactions.to_string()),
                        ("lines", script.lines().count().to_string()),
                        (
                            "latency_ms",
                            format!("{:.2}", received.elapsed().as_secs_f64() * 1e3),
                        ),
                    ],
                });
            }
            None => log(LogLine {
                level: "debug",
                message: "no change for this node".into(),
                fields: vec![
                    ("ts_ms", unix_ms().to_string()),
                    ("events", count.to_string()),
                ],
            }),
        }
        // `--once` stops right here: proxies started now would die with it.
        if options.mode == Mode::Apply && options.proxies && !options.once {
            let policy = proxy_policy(live.engine().state(), &input);
            match &proxies {
                Some(p) => {
                    p.publish(policy);
                    if let Some(generation) = learned_pending.take() {
                        p.enforced(generation);
                    }
                }
                None => {
                    route_to_proxies().map_err(AgentError::Source)?;
                    proxies = Some(
                        Proxies::start(policy, reporting.clone(), tx.clone(), options.dns_hold)
                            .map_err(AgentError::Source)?,
                    );
                    log(LogLine {
                        level: "info",
                        message: "L7 proxies serving (HTTP, DNS, TLS)".into(),
                        fields: vec![
                            ("http_port", HTTP_PORT.to_string()),
                            ("dns_port", DNS_PORT.to_string()),
                            ("tls_port", TLS_PORT.to_string()),
                        ],
                    });
                }
            }
        }
        // Ready: the first state is enforced and the proxies (if they run) listen.
        m.set_ready();
        if let Some(path) = &options.ready_file
            && !path.exists()
        {
            std::fs::write(path, b"enforced\n")
                .map_err(|e| AgentError::Source(format!("{}: {e}", path.display())))?;
        }
        if options.once {
            return Ok(());
        }
    }
}

/// Tells the engine what the DNS proxy learned and forgot since `fed` (names without their
/// final dot, as policies write them).
fn feed_learned(
    live: &mut LiveCluster,
    cache: &FqdnCache,
    fed: &mut BTreeMap<String, BTreeSet<IpAddr>>,
) {
    let mut now: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for (name, ip, _) in cache.iter() {
        now.entry(name.trim_end_matches('.').to_string())
            .or_default()
            .insert(ip);
    }
    for (name, addrs) in &now {
        let old = fed.get(name);
        let new: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| old.is_none_or(|o| !o.contains(a)))
            .copied()
            .collect();
        if !new.is_empty() {
            live.dns_answer(name, &new);
        }
    }
    for (name, addrs) in fed.iter() {
        let gone: Vec<IpAddr> = addrs
            .iter()
            .filter(|a| now.get(name).is_none_or(|n| !n.contains(a)))
            .copied()
            .collect();
        if !gone.is_empty() {
            live.dns_expire(name, &gone);
        }
    }
    *fed = now;
}
