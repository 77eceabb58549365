//! Who can talk to whom: every source × destination × port and protocol in play, decided by
//! the engine with the rules that decided it.
//!
//! Parties are the workloads of the manifests (or the endpoints of a scenario file), the
//! Cilium gateways, and `world`. Ports in play are the container ports the parties declare
//! plus the single ports policies name (named ports resolved against the container ports).
//!
//! Cells are decided once per *class* pair and port: endpoints with the same identity and
//! the same container ports (and node, when CIDR selectors may match nodes) have the same
//! resolved policy and are seen as the same peer, so their cells are identical. Workloads are
//! already one endpoint per pod template, so a 50-replica deployment costs one row.

use crate::manifests::Loaded;
use crate::world::{Party, World};
use membrane_policy::identity::IdentityId;
use membrane_policy::model::{Direction, PortValue, Protocol, Subject};
use membrane_policy::resolve::host_labels;
use membrane_policy::verdict::{FlowDecision, L7Request, Outcome, Verdict};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What a party of the matrix stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartyKind {
    /// A workload of the manifests (Deployment, Pod, ...).
    Workload,
    /// An endpoint of a scenario file.
    Endpoint,
    /// A Cilium Gateway's proxy (reserved `ingress` identity).
    Gateway,
    /// Outside the cluster.
    World,
    /// The kube-dns membrane adds when the manifests have none.
    KubeDns,
}

impl PartyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PartyKind::Workload => "workload",
            PartyKind::Endpoint => "endpoint",
            PartyKind::Gateway => "gateway",
            PartyKind::World => "world",
            PartyKind::KubeDns => "kube-dns",
        }
    }
}

/// A port a party declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One row and/or column of the matrix.
#[derive(Debug, Clone)]
pub struct MatrixParty {
    /// `namespace/name`, or `world`.
    pub name: String,
    pub kind: PartyKind,
    /// `Deployment`, `Pod`, ... for workloads.
    pub workload_kind: Option<String>,
    pub namespace: Option<String>,
    /// Pods behind it (1 for endpoints and gateways, 0 for world).
    pub replicas: u32,
    pub party: Party,
    /// Index in `world.scenario.endpoints`.
    pub endpoint: Option<usize>,
    pub identity: IdentityId,
    pub labels: Vec<(String, String)>,
    pub ports: Vec<DeclaredPort>,
    pub is_source: bool,
    pub is_destination: bool,
    /// For gateways: `route path → backend:port`.
    pub routes: Vec<String>,
}

impl MatrixParty {
    /// Whether the party declares this port (world accepts anything; a party that declares
    /// no port at all may listen anywhere).
    pub fn declares(&self, protocol: Protocol, port: u16) -> bool {
        self.kind == PartyKind::World
            || self
                .ports
                .iter()
                .any(|p| p.protocol == protocol && p.port == port)
    }

    /// Whether the party's ports are unknown: it declares none (Kubernetes does not require
    /// containerPort), so any port may be open.
    pub fn ports_unknown(&self) -> bool {
        self.ports.is_empty() && self.kind != PartyKind::World
    }
}

/// A port and protocol in play, and why.
#[derive(Debug, Clone)]
pub struct MatrixPort {
    pub protocol: Protocol,
    pub port: u16,
    /// Parties (indices) that declare it as a container port or listener.
    pub declared_by: Vec<usize>,
    /// Policies (`CNP ns/name`) that name it in `toPorts` / KNP `ports`.
    pub named_by: Vec<String>,
}

impl MatrixPort {
    pub fn label(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

/// A cell's verdict as the matrix shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellVerdict {
    Allow,
    Deny,
    /// Allowed at L3/L4, and a proxy on some side checks each request (HTTP, DNS, Kafka,
    /// TLS SNI): some requests may still be refused.
    L7,
}

impl CellVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            CellVerdict::Allow => "allow",
            CellVerdict::Deny => "deny",
            CellVerdict::L7 => "l7",
        }
    }
}

/// Finer than the verdict, for compact displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// Allowed by some rule (at least one side enforced).
    AllowedByRule,
    /// Allowed because no policy enforces either side.
    Open,
    L7,
    /// Dropped because no rule allows it.
    DefaultDeny,
    /// Dropped by a deny rule.
    DenyRule,
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub source: usize,
    pub destination: usize,
    /// Index in `Matrix::ports`.
    pub port: usize,
    pub verdict: CellVerdict,
    pub kind: CellKind,
    /// The destination declares this port (or is world).
    pub declared: bool,
    /// Index in `Matrix::decisions` (shared by cells of the same classes).
    pub decision: usize,
}

pub struct Matrix {
    pub parties: Vec<MatrixParty>,
    pub ports: Vec<MatrixPort>,
    /// Ordered by source, destination, port; world → world is left out.
    pub cells: Vec<Cell>,
    pub decisions: Vec<FlowDecision>,
    /// Whether the kube-dns membrane synthesized is a destination (only when port 53 is in
    /// play through a policy); it is never a source.
    pub kube_dns_included: bool,
    /// Cells decided by the engine (the rest came from the class cache).
    pub evaluated: usize,
    index: Vec<u32>,
    sources: Vec<usize>,
    destinations: Vec<usize>,
}

impl Matrix {
    pub fn sources(&self) -> &[usize] {
        &self.sources
    }

    pub fn destinations(&self) -> &[usize] {
        &self.destinations
    }

    /// The cell of a source, destination (party indices) and port index.
    pub fn cell(&self, source: usize, destination: usize, port: usize) -> Option<&Cell> {
        let n = self.parties.len();
        let np = self.ports.len();
        let i = *self.index.get((source * n + destination) * np + port)?;
        self.cells.get(i as usize)
    }

    pub fn decision(&self, cell: &Cell) -> &FlowDecision {
        &self.decisions[cell.decision]
    }

    pub fn count(&self, v: CellVerdict) -> usize {
        self.cells.iter().filter(|c| c.verdict == v).count()
    }
}

/// What can be asked of the matrix.
#[derive(Debug, Clone, Default)]
pub struct MatrixOptions {
    /// Only these ports (empty: every port in play).
    pub ports: Vec<(Protocol, u16)>,
}

fn protocol_of(text: &str) -> Option<Protocol> {
    match Protocol::parse(text)? {
        p @ (Protocol::Tcp | Protocol::Udp | Protocol::Sctp) => Some(p),
        _ => None,
    }
}

/// The parties of a loaded cluster, in display order: workloads (or scenario endpoints)
/// sorted by name, gateways, the synthesized kube-dns (added later if needed), world.
fn parties(loaded: &Loaded) -> (Vec<MatrixParty>, Option<MatrixParty>) {
    let world = &loaded.world;
    let eps = &world.scenario.endpoints;
    let by_name: HashMap<&str, usize> = eps
        .iter()
        .enumerate()
        .rev()
        .map(|(i, e)| (e.name.as_str(), i))
        .collect();
    let make = |i: usize, kind: PartyKind, workload_kind: Option<String>, replicas: u32| {
        let ep = &eps[i];
        let party = world.party(&ep.name).unwrap_or(Party::Pod(i));
        MatrixParty {
            name: ep.name.clone(),
            kind,
            workload_kind,
            namespace: Some(ep.namespace.clone()),
            replicas,
            party,
            endpoint: Some(i),
            identity: world.identity_of(party, None, false),
            labels: ep.labels.clone(),
            ports: ep
                .ports
                .iter()
                .filter_map(|p| {
                    Some(DeclaredPort {
                        name: p.name.clone(),
                        protocol: protocol_of(&p.protocol)?,
                        port: p.port,
                    })
                })
                .collect(),
            is_source: kind != PartyKind::KubeDns,
            is_destination: true,
            routes: vec![],
        }
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut gateways = Vec::new();
    if loaded.workloads.is_empty() {
        // A scenario file: its endpoints, as written.
        for (i, ep) in eps.iter().enumerate() {
            if !seen.insert(ep.name.clone()) {
                continue;
            }
            if ep.entity.as_deref() == Some("ingress") {
                gateways.push(make(i, PartyKind::Gateway, None, 1));
            } else {
                out.push(make(i, PartyKind::Endpoint, None, 1));
            }
        }
    } else {
        for w in &loaded.workloads {
            let Some(&i) = by_name.get(w.endpoint.as_str()) else {
                continue;
            };
            if !seen.insert(w.endpoint.clone()) {
                continue;
            }
            let mut party = make(i, PartyKind::Workload, Some(w.kind.clone()), w.replicas);
            // A workload read from a cluster is named as it is, not as its first pod.
            party.name = format!("{}/{}", w.namespace, w.name);
            out.push(party);
        }
        for (i, ep) in eps.iter().enumerate() {
            if ep.entity.as_deref() == Some("ingress") && seen.insert(ep.name.clone()) {
                gateways.push(make(i, PartyKind::Gateway, None, 1));
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    gateways.sort_by(|a, b| a.name.cmp(&b.name));
    for g in &mut gateways {
        g.routes = world
            .scenario
            .routes
            .iter()
            .filter(|r| r.gateway == g.name)
            .map(|r| {
                let backends: Vec<String> =
                    r.backends.iter().map(|(b, p)| format!("{b}:{p}")).collect();
                let path = if r.exact {
                    r.path.clone()
                } else {
                    format!("{}*", r.path)
                };
                let to = if backends.is_empty() {
                    "no backend".to_string()
                } else {
                    backends.join(", ")
                };
                format!("{path} → {to} (HTTPRoute {})", r.route)
            })
            .collect();
    }
    out.extend(gateways);
    // kube-dns that membrane synthesized: not a workload of the input.
    let kube_dns = if loaded.workloads.is_empty() {
        None
    } else {
        eps.iter()
            .position(|e| e.name == "kube-system/kube-dns" && !seen.contains(&e.name))
            .map(|i| make(i, PartyKind::KubeDns, None, 1))
    };
    let world_party = Party::World {
        addr: crate::world::WORLD_ADDR,
        learned_as: None,
    };
    out.push(MatrixParty {
        name: "world".into(),
        kind: PartyKind::World,
        workload_kind: None,
        namespace: None,
        replicas: 0,
        party: world.party("world").unwrap_or(world_party),
        endpoint: None,
        identity: world.identity_of(world.party("world").unwrap_or(world_party), None, false),
        labels: vec![],
        ports: vec![],
        is_source: true,
        is_destination: true,
        routes: vec![],
    });
    (out, kube_dns)
}

/// Ports in play: declared by parties, or named by a valid policy's port rules.
fn ports_in_play(world: &World, parties: &[MatrixParty]) -> Vec<MatrixPort> {
    let mut out: BTreeMap<(u16, Protocol), MatrixPort> = BTreeMap::new();
    fn entry(
        out: &mut BTreeMap<(u16, Protocol), MatrixPort>,
        protocol: Protocol,
        port: u16,
    ) -> &mut MatrixPort {
        out.entry((port, protocol)).or_insert_with(|| MatrixPort {
            protocol,
            port,
            declared_by: vec![],
            named_by: vec![],
        })
    }
    for (i, p) in parties.iter().enumerate() {
        for d in &p.ports {
            let e = entry(&mut out, d.protocol, d.port);
            if !e.declared_by.contains(&i) {
                e.declared_by.push(i);
            }
        }
    }
    // Named ports resolve against every endpoint's container ports (as egress rules do).
    let mut named: HashMap<&str, BTreeSet<(Protocol, u16)>> = HashMap::new();
    for ep in &world.scenario.endpoints {
        for p in &ep.ports {
            if let Some(proto) = protocol_of(&p.protocol)
                && !p.name.is_empty()
            {
                named
                    .entry(p.name.as_str())
                    .or_default()
                    .insert((proto, p.port));
            }
        }
    }
    for t in &world.policy_set.policies {
        let name = t.origin.to_string();
        for rule in &t.rules {
            for e in &rule.entries {
                for spec in e.ports.iter().flatten().flat_map(|pr| pr.ports.iter()) {
                    let proto = spec.protocol;
                    if !matches!(proto, Protocol::Tcp | Protocol::Udp | Protocol::Sctp) {
                        continue;
                    }
                    let ports: Vec<u16> = match &spec.port {
                        PortValue::Range(lo, hi) if lo == hi && *lo != 0 => vec![*lo],
                        PortValue::Range(..) => vec![],
                        PortValue::Named(n) => named
                            .get(n.as_str())
                            .into_iter()
                            .flatten()
                            .filter(|(p, _)| *p == proto)
                            .map(|(_, port)| *port)
                            .collect(),
                    };
                    for port in ports {
                        let e = entry(&mut out, proto, port);
                        if !e.named_by.contains(&name) {
                            e.named_by.push(name.clone());
                        }
                    }
                }
            }
        }
    }
    out.into_values().collect()
}

/// What makes two parties' cells identical.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Class {
    /// Same identity, same container ports (same resolved policy, same peer identity), and
    /// the same node when CIDR selectors may select the local node.
    Endpoint {
        identity: IdentityId,
        ports: u32,
        node: Option<usize>,
    },
    /// Nodes (hostNetwork) and world: seen differently from each node.
    Unique(usize),
}

fn node_index(world: &World, p: Party) -> Option<usize> {
    match p {
        Party::Pod(i) | Party::Entity { endpoint: i, .. } => {
            let node = &world.scenario.endpoints[i].node;
            world.scenario.nodes.iter().position(|n| &n.name == node)
        }
        Party::Node { node, .. } => Some(node),
        Party::World { .. } => None,
    }
}

/// Per party, its class: parties of one class have identical rows and columns.
pub fn classes(world: &World, parties: &[MatrixParty]) -> Vec<Class> {
    let mut signatures: HashMap<String, u32> = HashMap::new();
    parties
        .iter()
        .enumerate()
        .map(|(i, p)| match p.party {
            Party::Pod(e) | Party::Entity { endpoint: e, .. } => {
                let ep = &world.scenario.endpoints[e];
                let sig: Vec<(&str, &str, u16)> = ep
                    .ports
                    .iter()
                    .map(|c| (c.name.as_str(), c.protocol.as_str(), c.port))
                    .collect();
                let n = signatures.len() as u32;
                let ports = *signatures.entry(format!("{sig:?}")).or_insert(n);
                Class::Endpoint {
                    identity: p.identity,
                    ports,
                    node: if world.options.cidr_match_nodes {
                        node_index(world, p.party)
                    } else {
                        None
                    },
                }
            }
            _ => Class::Unique(i),
        })
        .collect()
}

/// Whether an allowing side's proxy actually checks requests: L7 rules that no plain allow
/// of the same peer and port wildcards (for DNS: unless a plain allow on that exact port).
fn proxy_restricts(
    world: &World,
    subject: Party,
    peer: Party,
    direction: Direction,
    protocol: Protocol,
    port: u16,
    learned: bool,
) -> bool {
    let peer_id = world.identity_of(peer, node_index(world, subject), learned);
    let Some(policy) = world.policy(subject, direction) else {
        return false;
    };
    if !policy.enforced {
        return false;
    }
    let Some(hit) = policy.lookup(peer_id, protocol.number(), port) else {
        return false;
    };
    if hit.value.deny {
        return false;
    }
    let l7 = hit.value.l7();
    if l7.policies.iter().any(|p| p.dns.is_some()) {
        !l7.dns_wildcard
    } else {
        !l7.policies.is_empty() && !l7.plain_allow
    }
}

/// A decision as a cell shows it: its verdict and finer kind.
/// `learned`: as for the decision `d`, the destination's address was learned under its
/// name (toFQDNs selectors see it).
pub fn classify(
    world: &World,
    from: Party,
    to: Party,
    protocol: Protocol,
    port: u16,
    d: &FlowDecision,
    learned: bool,
) -> (CellVerdict, CellKind) {
    if d.verdict != Verdict::Allow {
        let rule = d
            .blocking_side()
            .is_some_and(|s| s.outcome == Outcome::DenyRule);
        let kind = if rule {
            CellKind::DenyRule
        } else {
            CellKind::DefaultDeny
        };
        return (CellVerdict::Deny, kind);
    }
    let egress_l7 = d.egress.proxy.is_some()
        && proxy_restricts(world, from, to, Direction::Egress, protocol, port, learned);
    let ingress_l7 = d.ingress.as_ref().is_some_and(|i| i.proxy.is_some())
        && proxy_restricts(world, to, from, Direction::Ingress, protocol, port, false);
    if egress_l7 || ingress_l7 {
        return (CellVerdict::L7, CellKind::L7);
    }
    let open = d.egress.outcome == Outcome::NotEnforced
        && d.ingress
            .as_ref()
            .is_none_or(|i| i.outcome == Outcome::NotEnforced);
    let kind = if open {
        CellKind::Open
    } else {
        CellKind::AllowedByRule
    };
    (CellVerdict::Allow, kind)
}

/// The parties (world last) and the ports in play of a loaded cluster, and whether the
/// synthesized kube-dns is among the parties (only when a policy names port 53).
pub fn parties_and_ports(loaded: &Loaded) -> (Vec<MatrixParty>, Vec<MatrixPort>, bool) {
    let world = &loaded.world;
    let (mut parties, kube_dns) = parties(loaded);
    let mut ports = ports_in_play(world, &parties);
    let mut kube_dns_included = false;
    if let Some(k) = kube_dns {
        let dns_named = ports.iter().any(|p| p.port == 53 && !p.named_by.is_empty());
        if dns_named {
            // Before world, which stays last.
            let at = parties.len() - 1;
            parties.insert(at, k);
            kube_dns_included = true;
            ports = ports_in_play(world, &parties);
        }
    }
    (parties, ports, kube_dns_included)
}

/// The L7 rules the proxies of an allowed flow check, one text per rule (`http GET /api`,
/// `dns *.example.com`, `tls sni api.example.com`), sorted, per side that restricts requests.
/// `learned`: the destination's address was learned under its name (see [`classify`]).
pub fn l7_rules(
    world: &World,
    from: Party,
    to: Party,
    protocol: Protocol,
    port: u16,
    learned: bool,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (subject, peer, direction, learned) in [
        (from, to, Direction::Egress, learned),
        (to, from, Direction::Ingress, false),
    ] {
        if !proxy_restricts(world, subject, peer, direction, protocol, port, learned) {
            continue;
        }
        let peer_id = world.identity_of(peer, node_index(world, subject), learned);
        let Some(policy) = world.policy(subject, direction) else {
            continue;
        };
        let Some(hit) = policy.lookup(peer_id, protocol.number(), port) else {
            continue;
        };
        for p in hit.value.l7().policies {
            for h in p.http.iter().flatten() {
                let part = |name: &str, r: &Option<membrane_policy::l7::go_regex::GoRegex>| {
                    r.as_ref().map(|r| format!(" {name}={}", r.as_str()))
                };
                let mut t = format!("{direction} http");
                t.extend(part("method", &h.method));
                t.extend(part("path", &h.path));
                t.extend(part("host", &h.host));
                for (k, v) in &h.headers {
                    match v {
                        Some(v) => t.push_str(&format!(" header {k}={v}")),
                        None => t.push_str(&format!(" header {k}")),
                    }
                }
                out.insert(t);
            }
            for d in p.dns.iter().flatten() {
                out.insert(format!("{direction} dns {}", d.source()));
            }
            for n in &p.server_names {
                out.insert(format!("{direction} tls sni {n}"));
            }
            if let Some(o) = &p.other_parser {
                out.insert(format!("{direction} {o}"));
            }
        }
    }
    out.into_iter().collect()
}

/// Builds the matrix. `progress(done, total)` is called as cells are filled.
pub fn build(
    loaded: &Loaded,
    options: &MatrixOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Matrix {
    let world = &loaded.world;
    let (parties, mut ports, kube_dns_included) = parties_and_ports(loaded);
    if !options.ports.is_empty() {
        ports.retain(|p| options.ports.contains(&(p.protocol, p.port)));
    }
    let sources: Vec<usize> = (0..parties.len())
        .filter(|&i| parties[i].is_source)
        .collect();
    let destinations: Vec<usize> = (0..parties.len())
        .filter(|&i| parties[i].is_destination)
        .collect();
    let classes = classes(world, &parties);
    let n = parties.len();
    let np = ports.len();
    let mut index = vec![u32::MAX; n * n * np];
    let total = sources.len() * destinations.len() * np;
    let mut cells = Vec::with_capacity(total);
    let mut decisions = Vec::new();
    let mut cache: HashMap<(&Class, &Class, usize), (usize, CellVerdict, CellKind)> =
        HashMap::new();
    let mut done = 0;
    progress(0, total);
    for &s in &sources {
        for &d in &destinations {
            if parties[s].kind == PartyKind::World && parties[d].kind == PartyKind::World {
                done += np;
                continue;
            }
            for (pi, port) in ports.iter().enumerate() {
                let key = (&classes[s], &classes[d], pi);
                let (decision, verdict, kind) = match cache.get(&key) {
                    Some(hit) => *hit,
                    None => {
                        let (from, to) = (parties[s].party, parties[d].party);
                        let dec = world.decide(
                            from,
                            to,
                            port.protocol,
                            port.port,
                            &L7Request::None,
                            false,
                        );
                        let (v, k) =
                            classify(world, from, to, port.protocol, port.port, &dec, false);
                        decisions.push(dec);
                        let hit = (decisions.len() - 1, v, k);
                        cache.insert(key, hit);
                        hit
                    }
                };
                index[(s * n + d) * np + pi] = cells.len() as u32;
                cells.push(Cell {
                    source: s,
                    destination: d,
                    port: pi,
                    verdict,
                    kind,
                    declared: parties[d].declares(port.protocol, port.port),
                    decision,
                });
                done += 1;
                if done % 4096 == 0 {
                    progress(done, total);
                }
            }
        }
    }
    progress(total, total);
    let evaluated = decisions.len();
    Matrix {
        parties,
        ports,
        cells,
        decisions,
        kube_dns_included,
        evaluated,
        index,
        sources,
        destinations,
    }
}

/// Which parties and nodes a policy selects (for an invalid policy: would select).
#[derive(Debug, Clone)]
pub struct PolicySelection {
    /// Index in `world.policy_set.policies`.
    pub policy: usize,
    /// Party indices of the matrix.
    pub parties: Vec<usize>,
    /// Node names (host policies, `nodeSelector`).
    pub nodes: Vec<String>,
    /// The directions its rules have (ingress, egress).
    pub directions: Vec<Direction>,
}

pub fn policy_selections(world: &World, parties: &[MatrixParty]) -> Vec<PolicySelection> {
    let labels: Vec<Option<&membrane_policy::labels::LabelSet>> = parties
        .iter()
        .map(|p| match p.party {
            Party::Pod(_) | Party::Entity { .. } => {
                world.identities().get(p.identity).map(|i| &i.labels)
            }
            _ => None,
        })
        .collect();
    let node_labels: Vec<_> = world
        .scenario
        .nodes
        .iter()
        .map(|n| host_labels(&n.labels))
        .collect();
    world
        .policy_set
        .policies
        .iter()
        .enumerate()
        .map(|(pi, t)| {
            let rules = if t.valid { &t.rules } else { &t.rejected };
            let mut sel_parties = BTreeSet::new();
            let mut nodes = BTreeSet::new();
            let mut directions = BTreeSet::new();
            for r in rules {
                for d in [Direction::Ingress, Direction::Egress] {
                    if r.has(d) {
                        directions.insert(d);
                    }
                }
                match &r.subject {
                    Subject::Endpoints(sel) => {
                        for (i, l) in labels.iter().enumerate() {
                            if l.is_some_and(|l| sel.matches(l)) {
                                sel_parties.insert(i);
                            }
                        }
                    }
                    Subject::Nodes(sel) => {
                        for (i, l) in node_labels.iter().enumerate() {
                            if sel.matches(l) {
                                nodes.insert(world.scenario.nodes[i].name.clone());
                            }
                        }
                    }
                }
            }
            PolicySelection {
                policy: pi,
                parties: sel_parties.into_iter().collect(),
                nodes: nodes.into_iter().collect(),
                directions: directions.into_iter().collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::{SourceFile, load};

    const DEMO: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web-canary, namespace: app}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: app}
spec:
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: c, image: busybox}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: http, protocol: TCP}]
      rules: {http: [{method: GET}]}
  - fromEntities: [world]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
"#;

    fn demo() -> Matrix {
        let loaded = load(vec![SourceFile {
            name: "demo.yaml".into(),
            text: DEMO.into(),
        }]);
        build(&loaded, &MatrixOptions::default(), &mut |_, _| {})
    }

    fn find(m: &Matrix, name: &str) -> usize {
        m.parties
            .iter()
            .position(|p| p.name == name)
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn ports_and_parties() {
        let m = demo();
        let names: Vec<&str> = m.parties.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["app/client", "app/web", "app/web-canary", "world"]);
        let ports: Vec<String> = m.ports.iter().map(MatrixPort::label).collect();
        assert_eq!(ports, ["8080/TCP", "9090/TCP"]);
        assert!(!m.kube_dns_included);
    }

    #[test]
    fn verdicts_and_dedup() {
        let m = demo();
        let (client, web, canary, world) = (
            find(&m, "app/client"),
            find(&m, "app/web"),
            find(&m, "app/web-canary"),
            find(&m, "world"),
        );
        let c = m.cell(client, web, 0).map(|c| c.verdict);
        assert_eq!(c, Some(CellVerdict::L7));
        let c = m.cell(world, web, 0).map(|c| c.kind);
        assert_eq!(c, Some(CellKind::DefaultDeny));
        let c = m.cell(world, web, 1).map(|c| c.kind);
        assert_eq!(c, Some(CellKind::AllowedByRule));
        let c = m.cell(client, world, 1).map(|c| c.kind);
        assert_eq!(c, Some(CellKind::Open));
        assert!(m.cell(world, world, 0).is_none());
        // web and web-canary share identity and ports: one decision for both.
        let a = m.cell(client, web, 0).map(|c| c.decision);
        let b = m.cell(client, canary, 0).map(|c| c.decision);
        assert_eq!(a, b);
        assert!(m.evaluated < m.cells.len());
    }

    #[test]
    fn selections() {
        let m = demo();
        let loaded = load(vec![SourceFile {
            name: "demo.yaml".into(),
            text: DEMO.into(),
        }]);
        let sel = policy_selections(&loaded.world, &m.parties);
        assert_eq!(sel.len(), 1);
        let names: Vec<&str> = sel[0]
            .parties
            .iter()
            .map(|&i| m.parties[i].name.as_str())
            .collect();
        assert_eq!(names, ["app/web", "app/web-canary"]);
    }
}
