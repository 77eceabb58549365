//! Flow events: the datapath's drops, read from NFLOG group 1.
//!
//! Reading NFLOG needs a raw `AF_NETLINK` socket, which std cannot open and `unsafe` is
//! forbidden here, so each node namespace runs `tcpdump -i nflog:1 -U -w <file>` and the
//! lab reads that pcap file as it grows. (tcpdump's text output leaves out the log prefix;
//! the pcap keeps NFLOG's TLVs: prefix, mark, payload.) The prefix the compiler writes,
//! `mbr <direction> <reason> <endpoint key> <name>`, says which side dropped and why; the
//! payload gives the 5-tuple; the engine then names the policy that decided.

use crate::layout::LOG_TAG;
use crate::topology::{NsRef, Topology};
use membrane_cluster::decision_json::{FileNames, event_decision_json};
use membrane_cluster::world::World;
use membrane_policy::model::{Direction, Protocol};
use membrane_policy::resolve::Enforcement;
use membrane_policy::verdict::{FlowDecision, L7Request, Outcome, SideDecision};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One packet a node's datapath dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropEvent {
    /// Index of the node (in [`Topology::nodes`]) whose datapath dropped it.
    pub node: usize,
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub direction: Direction,
    /// `default-deny` or `deny-rule`.
    pub reason: String,
    /// Key of the endpoint whose policy dropped it (`p3`, `h0`).
    pub endpoint: String,
    pub endpoint_name: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// ICMP type and identifier.
    pub icmp: Option<(u8, u16)>,
    pub tcp_flags: u8,
    /// Source identity (the mark the datapath set).
    pub mark: Option<u32>,
}

/// Reads `mbr <direction> <reason> <key> <name>`.
pub fn parse_prefix(p: &str) -> Option<(Direction, String, String, String)> {
    let mut w = p.split_whitespace();
    if w.next()? != LOG_TAG {
        return None;
    }
    let d = match w.next()? {
        "egress" => Direction::Egress,
        "ingress" => Direction::Ingress,
        _ => return None,
    };
    let reason = w.next()?.to_string();
    let key = w.next()?.to_string();
    let name = w.next().unwrap_or("").to_string();
    Some((d, reason, key, name))
}

/// A pcap file that tcpdump is still writing, read record by record.
pub struct PcapTail {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    big_endian: bool,
    nanos: bool,
    header_done: bool,
    from_end: bool,
}

impl PcapTail {
    /// `from_end`: skip what is already in the file (events from before this reader).
    pub fn new(path: PathBuf, from_end: bool) -> PcapTail {
        PcapTail {
            path,
            file: None,
            buf: vec![],
            big_endian: false,
            nanos: false,
            header_done: false,
            from_end,
        }
    }

    /// A pcap stream read by the caller (tcpdump's standard output), fed with [`feed`](Self::feed).
    pub fn stream() -> PcapTail {
        PcapTail::new(PathBuf::new(), false)
    }

    /// The records completed by `bytes` (the next bytes of a stream).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
        self.buf.extend_from_slice(bytes);
        self.records()
    }

    /// New complete records: (time in µs, packet bytes).
    pub fn poll(&mut self) -> Vec<(u64, Vec<u8>)> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else {
            return vec![];
        };
        let mut chunk = [0u8; 65536];
        while let Ok(n) = f.read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.records()
    }

    fn records(&mut self) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        if !self.header_done {
            if self.buf.len() < 24 {
                return out;
            }
            let magic = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
            (self.big_endian, self.nanos) = match magic {
                [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
                [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
                [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
                [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
                _ => return out,
            };
            self.buf.drain(..24);
            self.header_done = true;
            if self.from_end {
                // tcpdump -U writes whole records, so the end is a record boundary.
                self.buf.clear();
                if let Some(f) = self.file.as_mut() {
                    let _ = f.seek(SeekFrom::End(0));
                }
            }
        }
        let u32_at = |b: &[u8], i: usize, be: bool| {
            let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
            if be {
                u32::from_be_bytes(a)
            } else {
                u32::from_le_bytes(a)
            }
        };
        let mut off = 0;
        while self.buf.len() >= off + 16 {
            let sec = u64::from(u32_at(&self.buf, off, self.big_endian));
            let frac = u64::from(u32_at(&self.buf, off + 4, self.big_endian));
            let len = u32_at(&self.buf, off + 8, self.big_endian) as usize;
            if self.buf.len() < off + 16 + len {
                break;
            }
            let us = if self.nanos { frac / 1000 } else { frac };
            out.push((
                sec * 1_000_000 + us,
                self.buf[off + 16..off + 16 + len].to_vec(),
            ));
            off += 16 + len;
        }
        self.buf.drain(..off);
        out
    }
}

/// Prefix, mark and payload of an NFLOG record (DLT_NFLOG: TLVs in host byte order).
pub fn parse_nflog(p: &[u8]) -> Option<(String, Option<u32>, Vec<u8>)> {
    if p.len() < 4 {
        return None;
    }
    let mut i = 4;
    let (mut prefix, mut mark, mut payload) = (String::new(), None, Vec::new());
    while i + 4 <= p.len() {
        let len = usize::from(u16::from_le_bytes([p[i], p[i + 1]]));
        let ty = u16::from_le_bytes([p[i + 2], p[i + 3]]) & 0x7fff;
        if len < 4 || i + len > p.len() {
            break;
        }
        let v = &p[i + 4..i + len];
        match ty {
            10 => {
                prefix = String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string()
            }
            2 if v.len() >= 4 => mark = Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]])),
            9 => payload = v.to_vec(),
            _ => {}
        }
        i += (len + 3) & !3;
    }
    Some((prefix, mark, payload))
}

/// A drop event from one NFLOG record, if it is one of ours.
pub fn drop_event(node: usize, time_us: u64, record: &[u8]) -> Option<DropEvent> {
    let (prefix, mark, p) = parse_nflog(record)?;
    let (direction, reason, endpoint, endpoint_name) = parse_prefix(&prefix)?;
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let proto = p[9];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let l4 = p.get(ihl..).unwrap_or(&[]);
    let (mut sport, mut dport, mut icmp, mut tcp_flags) = (0, 0, None, 0);
    match proto {
        6 | 17 | 132 if l4.len() >= 4 => {
            sport = u16::from_be_bytes([l4[0], l4[1]]);
            dport = u16::from_be_bytes([l4[2], l4[3]]);
            if proto == 6 && l4.len() >= 14 {
                tcp_flags = l4[13];
            }
        }
        1 if l4.len() >= 8 => icmp = Some((l4[0], u16::from_be_bytes([l4[4], l4[5]]))),
        _ => {}
    }
    Some(DropEvent {
        node,
        time_us,
        direction,
        reason,
        endpoint,
        endpoint_name,
        src,
        dst,
        proto,
        sport,
        dport,
        icmp,
        tcp_flags,
        mark,
    })
}

type Shared = Arc<(Mutex<Vec<DropEvent>>, Condvar)>;

/// Collects drop events of every node in the background, for probes to wait on.
pub struct Collector {
    shared: Shared,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Collector {
    pub fn start(files: Vec<(usize, PathBuf)>, from_end: bool) -> Collector {
        Collector::start_with_keys(files, from_end, BTreeMap::new())
    }

    /// As [`Collector::start`], naming endpoints by `keys`: (node, key in the ruleset) →
    /// key reported (a lab whose nodes run agents, which key endpoints by address).
    pub fn start_with_keys(
        files: Vec<(usize, PathBuf)>,
        from_end: bool,
        keys: BTreeMap<(usize, String), String>,
    ) -> Collector {
        let shared: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2) = (shared.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut tails: Vec<(usize, PcapTail)> = files
                .into_iter()
                .map(|(n, p)| (n, PcapTail::new(p, from_end)))
                .collect();
            while !stop2.load(Ordering::Relaxed) {
                let mut new = Vec::new();
                for (node, t) in &mut tails {
                    for (time, rec) in t.poll() {
                        new.extend(drop_event(*node, time, &rec).map(|mut e| {
                            if let Some(k) = keys.get(&(*node, e.endpoint.clone())) {
                                e.endpoint = k.clone();
                            }
                            e
                        }));
                    }
                }
                if new.is_empty() {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                let (m, cv) = &*s2;
                m.lock().unwrap_or_else(|e| e.into_inner()).extend(new);
                cv.notify_all();
            }
        });
        Collector {
            shared,
            stop,
            handle: Some(handle),
        }
    }

    /// Waits up to `timeout` for an event matching `pred`.
    pub fn wait_for(
        &self,
        pred: impl Fn(&DropEvent) -> bool,
        timeout: Duration,
    ) -> Option<DropEvent> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut events = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = events.iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            events = cv
                .wait_timeout(events, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    pub fn events(&self) -> Vec<DropEvent> {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// RFC 3339 UTC time of microseconds since the epoch (Howard Hinnant's civil_from_days).
pub fn rfc3339(us: u64) -> String {
    let secs = us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        us % 1_000_000
    )
}

fn endpoint_json(world: &World, topo: &Topology, addr: Ipv4Addr, identity: u32) -> Value {
    let mut v = json!({ "ip": addr.to_string(), "identity": identity });
    if let Some(i) = world.identities().get(identity) {
        let labels: Vec<String> = i.labels.iter().map(ToString::to_string).collect();
        v["labels"] = json!(labels);
    }
    match topo.locate(addr) {
        Some(NsRef::Pod(k)) => {
            let ep = &world.scenario.endpoints[topo.pods[k].endpoint];
            v["namespace"] = json!(ep.namespace);
            v["pod_name"] = json!(ep.name);
            v["node_name"] = json!(ep.node);
        }
        Some(NsRef::Node(k)) => {
            v["node_name"] = json!(topo.nodes[k].name);
        }
        _ => {}
    }
    v
}

fn policy_refs(side: &SideDecision) -> Vec<Value> {
    let mut origins: Vec<Value> = Vec::new();
    let mut push = |p: &membrane_policy::model::PolicyOrigin| {
        let v = json!({
            "kind": p.kind.as_str(),
            "namespace": p.namespace,
            "name": p.name,
        });
        if !origins.contains(&v) {
            origins.push(v);
        }
    };
    match side.outcome {
        Outcome::DenyRule => side
            .deciding
            .iter()
            .filter_map(|o| o.policy())
            .for_each(|p| push(p)),
        _ => {
            if let Enforcement::Selected { rules } = &side.enforcement {
                rules.iter().for_each(|r| push(&r.policy));
            }
        }
    }
    origins
}

/// The event as JSON close to Hubble's flow format (`hubble observe -o json`), plus what
/// the engine says decided it: `policy` (a summary) and `decision`, the engine's decision of
/// the flow in the decision schema (`docs/schema/decision-v1.json`); `files` names the
/// world's source files for the origins' `file`.
/// What naming a drop needs, from whoever knows the cluster: the lab (its world and topology)
/// or the node agent (the engine's snapshot).
pub trait FlowNames {
    /// The node whose datapath dropped the packet.
    fn node_name(&self, ev: &DropEvent) -> String;
    /// An address's identity as the node that dropped `ev` sees it.
    fn identity(&self, ev: &DropEvent, addr: Ipv4Addr) -> u32;
    /// Hubble's endpoint object: `ip`, `identity`, `labels`, and `namespace`/`pod_name`/
    /// `node_name` where known.
    fn endpoint(&self, addr: Ipv4Addr, identity: u32) -> Value;
    /// The engine's decision of the dropped flow, for the deciding policies.
    fn decide(&self, ev: &DropEvent, protocol: Protocol, port: u16) -> Option<FlowDecision>;
}

/// The lab's names: its world and topology.
struct LabNames<'a> {
    world: &'a World,
    topo: &'a Topology,
}

impl FlowNames for LabNames<'_> {
    fn node_name(&self, ev: &DropEvent) -> String {
        self.topo.nodes[ev.node].name.clone()
    }

    fn identity(&self, ev: &DropEvent, a: Ipv4Addr) -> u32 {
        let observer = self.topo.nodes[ev.node].scenario_node;
        self.world
            .party(&a.to_string())
            .map_or(2, |p| self.world.identity_of(p, observer, false))
    }

    fn endpoint(&self, addr: Ipv4Addr, identity: u32) -> Value {
        endpoint_json(self.world, self.topo, addr, identity)
    }

    fn decide(&self, ev: &DropEvent, protocol: Protocol, port: u16) -> Option<FlowDecision> {
        let from = self.world.party(&ev.src.to_string())?;
        let to = self.world.party(&ev.dst.to_string())?;
        Some(
            self.world
                .decide(from, to, protocol, port, &L7Request::None, false),
        )
    }
}

/// One drop as `hubble observe -o json` prints a flow, plus what the engine says decided it.
pub fn flow_json(world: &World, topo: &Topology, ev: &DropEvent, files: &dyn FileNames) -> Value {
    drop_flow_json(&LabNames { world, topo }, ev, files)
}

/// A drop in Hubble's flow shape (see [`flow_json`]), named by `names`.
pub fn drop_flow_json(names: &dyn FlowNames, ev: &DropEvent, files: &dyn FileNames) -> Value {
    let id_of = |a: Ipv4Addr| names.identity(ev, a);
    let (protocol, port) = match ev.proto {
        6 => (Protocol::Tcp, ev.dport),
        17 => (Protocol::Udp, ev.dport),
        132 => (Protocol::Sctp, ev.dport),
        1 => (Protocol::Icmp, u16::from(ev.icmp.map_or(0, |i| i.0))),
        _ => (Protocol::Any, 0),
    };
    let l4 = match ev.proto {
        6 => {
            let f = ev.tcp_flags;
            let mut flags = serde_json::Map::new();
            for (bit, name) in [
                (0x02, "SYN"),
                (0x10, "ACK"),
                (0x01, "FIN"),
                (0x04, "RST"),
                (0x08, "PSH"),
            ] {
                if f & bit != 0 {
                    flags.insert(name.into(), json!(true));
                }
            }
            json!({"TCP": {"source_port": ev.sport, "destination_port": ev.dport, "flags": flags}})
        }
        17 => json!({"UDP": {"source_port": ev.sport, "destination_port": ev.dport}}),
        132 => json!({"SCTP": {"source_port": ev.sport, "destination_port": ev.dport}}),
        1 => json!({"ICMPv4": {"type": ev.icmp.map_or(0, |i| i.0)}}),
        p => json!({"protocol": p}),
    };
    // Hubble's drop reasons: 133 POLICY_DENIED (no allow), 181 POLICY_DENY (deny rule).
    let (code, desc) = if ev.reason == "deny-rule" {
        (181, "POLICY_DENY")
    } else {
        (133, "POLICY_DENIED")
    };
    let mut flow = json!({
        "time": rfc3339(ev.time_us),
        "verdict": "DROPPED",
        "drop_reason": code,
        "drop_reason_desc": desc,
        "IP": {"source": ev.src.to_string(), "destination": ev.dst.to_string(), "ipVersion": "IPv4"},
        "l4": l4,
        "source": names.endpoint(ev.src, id_of(ev.src)),
        "destination": names.endpoint(ev.dst, id_of(ev.dst)),
        "Type": "L3_L4",
        "node_name": names.node_name(ev),
        "event_type": {"type": 1, "sub_type": code},
        "traffic_direction": if ev.direction == Direction::Egress { "EGRESS" } else { "INGRESS" },
        "Summary": format!("{} {} {} {}:{} -> {}:{}", ev.direction, ev.reason, proto_name(ev.proto), ev.src, ev.sport, ev.dst, ev.dport),
    });
    if let Some(d) = names.decide(ev, protocol, port) {
        let side = if ev.direction == Direction::Egress {
            Some(&d.egress)
        } else {
            d.ingress.as_ref()
        };
        if let Some(side) = side {
            let refs = policy_refs(side);
            let key = if ev.direction == Direction::Egress {
                "egress_denied_by"
            } else {
                "ingress_denied_by"
            };
            flow[key] = json!(refs);
            flow["policy"] = json!({
                "engine_outcome": side.outcome.reason(),
                "agrees": side.outcome.reason() == ev.reason,
                "deciding": side.deciding.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "endpoint": ev.endpoint_name,
            });
        }
        flow["decision"] =
            event_decision_json(d.verdict, Some(&d.egress), d.ingress.as_ref(), files);
    }
    json!({ "flow": flow })
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        1 => "ICMP".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        let p = crate::nft::compile::log_prefix(Direction::Ingress, "deny-rule", "p3", "ns/echo");
        assert_eq!(
            parse_prefix(&p),
            Some((
                Direction::Ingress,
                "deny-rule".into(),
                "p3".into(),
                "ns/echo".into()
            ))
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(1_700_000_000_123_456),
            "2023-11-14T22:13:20.123456Z"
        );
    }
}
