//! Flow events: what this node's datapath drops, in Hubble's `observe -o json` shape, on a
//! unix socket that `membrane observe` (or anything reading JSON lines) follows.
//!
//! The drops come from NFLOG group 1 as the lab reads them (std cannot open a netlink socket
//! and `unsafe` is forbidden): `tcpdump -i nflog:1 -U -w -` writes pcap to a pipe the agent
//! reads, so nothing grows on disk and tcpdump ends with the agent (its next write fails).
//! The engine's current snapshot names both sides and the policies that decided.

use membrane_cluster::decision_json::FileNames;
use membrane_datapath::events::{DropEvent, FlowNames, PcapTail, drop_event, drop_flow_json};
use membrane_policy::engine::{Party, Snapshot};
use membrane_policy::model::Protocol;
use membrane_policy::verdict::{FlowDecision, L7Request};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The engine's latest snapshot, as the loop publishes it.
pub type SharedSnapshot = Arc<Mutex<Option<Arc<Snapshot>>>>;

struct AgentNames<'a> {
    state: &'a Snapshot,
    node: &'a str,
}

impl AgentNames<'_> {
    fn party(&self, a: Ipv4Addr) -> Party {
        self.state.address_party(IpAddr::V4(a))
    }
}

impl FlowNames for AgentNames<'_> {
    fn node_name(&self, _ev: &DropEvent) -> String {
        self.node.to_string()
    }

    fn identity(&self, _ev: &DropEvent, a: Ipv4Addr) -> u32 {
        let observer = self.state.node_index(self.node);
        self.state.identity_of(self.party(a), observer, false)
    }

    fn endpoint(&self, a: Ipv4Addr, identity: u32) -> Value {
        let mut v = json!({"ip": a.to_string(), "identity": identity});
        if let Some(i) = self.state.identities().get(identity) {
            let labels: Vec<String> = i.labels.iter().map(ToString::to_string).collect();
            v["labels"] = json!(labels);
        }
        if let Party::Pod(id) = self.party(a)
            && let Some(ep) = self.state.endpoint(id)
        {
            v["ID"] = json!(id);
            v["namespace"] = json!(ep.namespace);
            // Hubble's pod_name is the bare name.
            let bare = ep.name.rsplit('/').next().unwrap_or(&ep.name);
            v["pod_name"] = json!(bare);
            v["node_name"] = json!(ep.node);
        }
        v
    }

    fn decide(&self, ev: &DropEvent, protocol: Protocol, port: u16) -> Option<FlowDecision> {
        Some(self.state.decide(
            self.party(ev.src),
            self.party(ev.dst),
            protocol,
            port,
            &L7Request::None,
            false,
        ))
    }
}

/// Policies are named by kind/namespace/name here: the agent has no files.
pub(crate) struct NoFiles;

impl FileNames for NoFiles {
    fn file_name(&self, _id: u32) -> &str {
        "<cluster>"
    }
}

/// The clients following the events socket.
#[derive(Clone, Default)]
pub struct Clients(Arc<Mutex<Vec<UnixStream>>>);

impl Clients {
    /// Sends one JSON line to every client; a client that went away is dropped.
    pub fn send(&self, line: &serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain_mut(|c| c.write_all(text.as_bytes()).is_ok());
    }
}

/// Runs tcpdump on NFLOG group 1 and serves the drops on `socket`. Returns the tcpdump
/// process (kill it when the agent stops) and the clients (for the proxies' L7 events).
pub fn serve(
    socket: &Path,
    node: String,
    snapshot: SharedSnapshot,
    metrics: Arc<crate::metrics::Metrics>,
) -> std::io::Result<(Child, Clients)> {
    let _ = std::fs::remove_file(socket);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Killed with the agent, even by SIGKILL (the kernel's parent-death signal, set by
    // util-linux's setpriv before it executes tcpdump); without setpriv it still ends at its
    // next write into the closed pipe.
    let mut command = if Command::new("setpriv").arg("--version").output().is_ok() {
        let mut c = Command::new("setpriv");
        c.args(["--pdeathsig", "KILL", "--", "tcpdump"]);
        c
    } else {
        Command::new("tcpdump")
    };
    let mut tcpdump = command
        // `-Z root`: tcpdump keeps its user, because a change of credentials would clear
        // the parent-death signal.
        .args(["-i", "nflog:1", "-U", "-Z", "root", "-w", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pcap = tcpdump
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("tcpdump has no standard output"))?;
    let listener = UnixListener::bind(socket)?;
    let clients = Clients::default();
    let accepting = clients.0.clone();
    let tailing = clients.clone();
    std::thread::Builder::new()
        .name("events-accept".into())
        .spawn(move || {
            for s in listener.incoming().flatten() {
                // A client that stops reading is dropped, not waited for.
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                accepting.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            }
        })?;
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || tail(pcap, &node, &snapshot, &tailing, &metrics))?;
    Ok((tcpdump, clients))
}

fn tail(
    mut pcap: impl Read,
    node: &str,
    snapshot: &SharedSnapshot,
    clients: &Clients,
    metrics: &crate::metrics::Metrics,
) {
    let mut t = PcapTail::stream();
    let mut chunk = vec![0u8; 65536];
    loop {
        // tcpdump gone (the agent is stopping): no more events.
        let n = match pcap.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let records = t.feed(&chunk[..n]);
        if records.is_empty() {
            continue;
        }
        // Before the first state is published there is nothing to name the drops with;
        // they are still counted.
        let state = snapshot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(state) = state else {
            for (_, record) in &records {
                if let Some(ev) = drop_event(0, 0, record) {
                    metrics.drop_seen(&ev.reason, &ev.direction.to_string());
                }
            }
            continue;
        };
        let names = AgentNames {
            state: &state,
            node,
        };
        for (time, record) in records {
            let Some(ev) = drop_event(0, time, &record) else {
                continue;
            };
            metrics.drop_seen(&ev.reason, &ev.direction.to_string());
            let mut line = drop_flow_json(&names, &ev, &NoFiles);
            line["node_name"] = json!(node);
            line["time"] = line["flow"]["time"].clone();
            clients.send(&line);
        }
    }
}
