//! The agent's loop: events in, this node's ruleset out, one transaction per batch.

use crate::enforce::{EnforceError, Enforcer, Mode};
use crate::node_view::node_input;
use crate::source::{ClusterSource, DirSource, Event};
use membrane_cluster::live::LiveCluster;
use membrane_datapath::nft::compile::{compile_node, with_proxies};
use membrane_policy::options::Options;
use std::path::PathBuf;
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

enum Events {
    Dir(DirSource),
    Cluster(ClusterSource),
}

impl Events {
    /// The next batch: everything pending, after waiting up to `wait` for the first.
    fn next(&mut self, wait: Duration) -> Result<(Vec<Event>, Vec<String>), AgentError> {
        match self {
            Events::Dir(d) => {
                let (events, errors) = d.poll().map_err(|e| AgentError::Source(e.to_string()))?;
                if events.is_empty() && errors.is_empty() {
                    std::thread::sleep(wait);
                }
                Ok((events, errors))
            }
            Events::Cluster(c) => {
                let mut events = Vec::new();
                match c.events.recv_timeout(wait) {
                    Ok(e) => events.push(e),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        return Ok((events, Vec::new()));
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(AgentError::Source("the watches stopped".into()));
                    }
                }
                // A burst (a rollout, a relist) is one transaction: drain what follows closely,
                // but never for longer than 200 ms, so a steady stream is still enforced.
                let quiet = Duration::from_millis(20);
                let cap = Instant::now() + Duration::from_millis(200);
                while Instant::now() < cap
                    && let Ok(e) = c.events.recv_timeout(quiet)
                {
                    events.push(e);
                }
                Ok((events, Vec::new()))
            }
        }
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
    let mut events = match &options.source {
        Source::Dir(d) => Events::Dir(DirSource::new(d)),
        Source::Cluster(c) => Events::Cluster(ClusterSource::start(c).map_err(AgentError::Source)?),
    };
    // Until every kind has listed once, the state is partial: policies may still be paging
    // while the pods are known, and enforcing that would open them.
    let mut unsynced = match &events {
        Events::Cluster(c) => c.kinds,
        Events::Dir(_) => 0,
    };
    let mut live = LiveCluster::new(Options::default());
    let snapshot: crate::events::SharedSnapshot = std::sync::Arc::default();
    let _tcpdump = match (&options.events_socket, options.mode) {
        (Some(socket), Mode::Apply) => {
            let child = crate::events::serve(
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
            Some(KillOnDrop(child))
        }
        _ => None,
    };
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
        let Some(input) = node_input(live.engine().state(), &options.node) else {
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
                m.set_ready();
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
            None => {
                m.set_ready();
                log(LogLine {
                    level: "debug",
                    message: "no change for this node".into(),
                    fields: vec![
                        ("ts_ms", unix_ms().to_string()),
                        ("events", count.to_string()),
                    ],
                })
            }
        }
        if options.once {
            return Ok(());
        }
    }
}
