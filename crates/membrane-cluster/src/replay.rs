//! Replays recorded Hubble flows against policies: Cilium's audit mode, offline.
//!
//! Each flow's endpoints are identified from what Hubble recorded: a side with Kubernetes
//! labels (`k8s:app=x`, `k8s:io.kubernetes.pod.namespace=ns`) becomes a pod of that label
//! set (one engine endpoint per distinct label set, so one identity, as in Cilium; placed
//! on a node when the other side is that node's `reserved:host`); a reserved label
//! (`reserved:host`, `reserved:remote-node`, `reserved:kube-apiserver`, `reserved:ingress`,
//! ...) becomes that entity (`host` or `remote-node` with a node's address: that node,
//! whose host firewall and CIDR apply); `reserved:world` or a bare address becomes a world
//! peer with the address's CIDR identity, learned under the flow's DNS names
//! (`destination_names`) when it has some. Workloads of the manifests add what a flow lacks:
//! a flow address that is a manifest pod's is that pod, and a synthetic pod takes the
//! named ports of the manifest workload its labels match.
//!
//! Decisions are cached per distinct (source, destination, protocol, port, L7 request), so
//! a replay costs one engine decision per distinct flow shape; nothing is kept per flow.

use crate::decision_json::decision_json;
use crate::hubble::{FlowEndpoint, HubbleFlow, L4, L7};
use crate::manifests::Loaded;
use membrane_policy::engine::{EndpointSpec, NamedPort, Party};
use membrane_policy::model::Protocol;
use membrane_policy::verdict::{FlowDecision, HttpRequest, L7Request, Outcome, Verdict};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::rc::Rc;

/// How many bad or undecidable lines are kept with their reasons (the rest are counted).
pub const KEPT_PROBLEMS: usize = 100;

/// Reserved identities a flow endpoint can carry, in the order one is chosen when several
/// labels are present (Cilium gives the host its own identity even when it also serves the
/// kube-apiserver).
const ENTITIES: [&str; 7] = [
    "host",
    "remote-node",
    "kube-apiserver",
    "ingress",
    "health",
    "init",
    "unmanaged",
];

/// One policy rule entry (`CNP ns/name ingress[0]`) and the flows it decided.
#[derive(Debug, Clone)]
pub struct RuleHits {
    /// `CNP ns/name ingress[0]` (with `specs[i]` for multi-rule policies).
    pub rule: String,
    /// `CNP ns/name`.
    pub policy: String,
    pub file: String,
    pub line: u32,
    pub hits: u64,
}

/// One policy and the flows it took part in deciding (allowed, denied, or default-denied
/// because it made the side enforced).
#[derive(Debug, Clone)]
pub struct PolicyHits {
    pub policy: String,
    pub hits: u64,
}

/// One distinct flow shape and its decision.
#[derive(Debug)]
pub struct Decided {
    pub decision: FlowDecision,
    /// The flow shape, in words: `frontend/frontend-7c9d → backend/backend-5f:3000/TCP GET /api`
    /// (as the first flow of this shape names its endpoints).
    pub description: String,
    rules: Vec<usize>,
    policies: Vec<usize>,
    json: OnceCell<String>,
}

impl Decided {
    /// The verdict in replay's words: `allow` (a DNS answer is an allow), `deny`,
    /// `http-403`, `dns-refused`, `tls-denied`.
    pub fn verdict(&self) -> &'static str {
        verdict_word(self.decision.verdict)
    }

    pub fn allows(&self) -> bool {
        matches!(self.decision.verdict, Verdict::Allow | Verdict::DnsOk)
    }

    /// The decision rendered as `docs/schema/decision-v1.json`, once per flow shape.
    pub fn json(&self, loaded: &Loaded) -> &str {
        self.json
            .get_or_init(|| decision_json(&self.decision, loaded).to_string())
    }
}

pub fn verdict_word(v: Verdict) -> &'static str {
    match v {
        Verdict::DnsOk => "allow",
        v => v.as_str(),
    }
}

/// What replay made of one flow.
#[derive(Debug)]
pub enum LineOutcome {
    Decided {
        decided: Rc<Decided>,
        /// Whether the recorded verdict allowed the flow; `None` when it says nothing about
        /// policy (`ERROR`, a drop for a reason other than policy).
        recorded_allowed: Option<bool>,
        changed: bool,
    },
    /// A reply or an L7 response: decided when its connection was opened.
    Reply,
    /// A flow that cannot be decided (no endpoint information, an L7 protocol membrane does
    /// not model): why.
    Undecidable(String),
}

/// Flows whose verdict changed, grouped by flow shape and recorded verdict.
#[derive(Debug, Clone)]
pub struct ChangedGroup {
    pub decided: Rc<Decided>,
    pub recorded: String,
    pub first_line: u64,
    pub count: u64,
}

/// Counts over the whole replay.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Flow records read (replies included).
    pub flows: u64,
    pub decided: u64,
    pub replies: u64,
    pub changed: u64,
    /// Recorded as allowed, now denied at L3/L4.
    pub newly_dropped: u64,
    /// Recorded as allowed, now denied by L7 rules (HTTP 403, DNS REFUSED, TLS).
    pub newly_l7_denied: u64,
    /// Recorded as denied, now allowed.
    pub newly_allowed: u64,
    /// Records whose recorded verdict says nothing about policy.
    pub not_comparable: u64,
    pub undecidable: u64,
    /// Lines that are not flows (`node_status`, `lost_events` of jsonpb exports).
    pub not_flows: u64,
    pub bad_lines: u64,
    /// The first [`KEPT_PROBLEMS`] bad or undecidable lines: (line, reason).
    pub problems: Vec<(u64, String)>,
}

impl Stats {
    pub fn problem(&mut self, line: u64, why: String) {
        if self.problems.len() < KEPT_PROBLEMS {
            self.problems.push((line, why));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PartyKey {
    Pod(usize),
    Node(usize, IpAddr),
    Entity(usize),
    World(IpAddr, Option<usize>),
}

fn party_key(p: Party) -> PartyKey {
    match p {
        Party::Pod(i) => PartyKey::Pod(i),
        Party::Node { node, addr } => PartyKey::Node(node, addr),
        Party::Entity { endpoint, .. } => PartyKey::Entity(endpoint),
        Party::World { addr, learned_as } => PartyKey::World(addr, learned_as),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    from: PartyKey,
    to: PartyKey,
    protocol: Protocol,
    port: u16,
    l7: String,
}

/// The replay of one export against one set of manifests.
pub struct Replay {
    pub loaded: Loaded,
    manifest_endpoints: usize,
    known_namespaces: HashSet<String>,
    entities: HashMap<&'static str, Party>,
    pods: HashMap<String, Party>,
    worlds: HashSet<IpAddr>,
    learned: HashSet<(String, IpAddr)>,
    cache: HashMap<DecisionKey, Rc<Decided>>,
    pub rules: Vec<RuleHits>,
    rule_by_name: HashMap<String, usize>,
    pub policies: Vec<PolicyHits>,
    policy_by_name: HashMap<String, usize>,
    changed: HashMap<(DecisionKey, String), usize>,
    pub changed_groups: Vec<ChangedGroup>,
    pub stats: Stats,
}

impl Replay {
    pub fn new(loaded: Loaded) -> Replay {
        let mut rules = Vec::new();
        let mut rule_by_name = HashMap::new();
        let mut policies = Vec::new();
        let mut policy_by_name = HashMap::new();
        for t in loaded.world.policy_set.policies.iter().filter(|t| t.valid) {
            let policy = t.origin.to_string();
            policy_by_name.entry(policy.clone()).or_insert_with(|| {
                policies.push(PolicyHits {
                    policy: policy.clone(),
                    hits: 0,
                });
                policies.len() - 1
            });
            for rule in &t.rules {
                for entry in &rule.entries {
                    let name = entry.origin.to_string();
                    if rule_by_name.contains_key(&name) {
                        continue;
                    }
                    rule_by_name.insert(name.clone(), rules.len());
                    rules.push(RuleHits {
                        rule: name,
                        policy: policy.clone(),
                        file: loaded.file_name(t.origin.file).to_string(),
                        line: entry.origin.span.line,
                        hits: 0,
                    });
                }
            }
        }
        let manifest_endpoints = loaded.world.engine.state().endpoint_count();
        let known_namespaces = loaded
            .world
            .scenario
            .namespaces
            .iter()
            .map(|n| n.name.clone())
            .collect();
        Replay {
            loaded,
            manifest_endpoints,
            known_namespaces,
            entities: HashMap::new(),
            pods: HashMap::new(),
            worlds: HashSet::new(),
            learned: HashSet::new(),
            cache: HashMap::new(),
            rules,
            rule_by_name,
            policies,
            policy_by_name,
            changed: HashMap::new(),
            changed_groups: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// Rules no decided flow used, in policy order.
    pub fn unused_rules(&self) -> impl Iterator<Item = &RuleHits> {
        self.rules.iter().filter(|r| r.hits == 0)
    }

    /// Replays one flow record (line `line` of the export).
    pub fn flow(&mut self, line: u64, flow: &HubbleFlow) -> LineOutcome {
        self.stats.flows += 1;
        // A DNS answer teaches the addresses of a name (toFQDNs), reply or not.
        if let L7::Dns { query, ips } = &flow.l7
            && !ips.is_empty()
        {
            self.learn(query, ips);
        }
        for name in &flow.destination.names {
            if let Some(ip) = flow.destination.ip {
                self.learn(name, &[ip]);
            }
        }
        if flow.is_response() {
            self.stats.replies += 1;
            return LineOutcome::Reply;
        }
        match self.decide(flow) {
            Err(why) => {
                self.stats.undecidable += 1;
                self.stats.problem(line, why.clone());
                LineOutcome::Undecidable(why)
            }
            Ok((key, decided)) => {
                self.stats.decided += 1;
                for &r in &decided.rules {
                    self.rules[r].hits += 1;
                }
                for &p in &decided.policies {
                    self.policies[p].hits += 1;
                }
                let recorded_allowed = recorded_allows(flow);
                let now = decided.allows();
                let changed = recorded_allowed.is_some_and(|r| r != now);
                match recorded_allowed {
                    None => self.stats.not_comparable += 1,
                    Some(_) if changed => {
                        self.stats.changed += 1;
                        match decided.decision.verdict {
                            Verdict::Deny => self.stats.newly_dropped += 1,
                            Verdict::Allow | Verdict::DnsOk => self.stats.newly_allowed += 1,
                            _ => self.stats.newly_l7_denied += 1,
                        }
                        let gk = (key, flow.verdict.clone());
                        match self.changed.get(&gk) {
                            Some(&i) => self.changed_groups[i].count += 1,
                            None => {
                                self.changed.insert(gk, self.changed_groups.len());
                                self.changed_groups.push(ChangedGroup {
                                    decided: decided.clone(),
                                    recorded: flow.verdict.clone(),
                                    first_line: line,
                                    count: 1,
                                });
                            }
                        }
                    }
                    Some(_) => {}
                }
                LineOutcome::Decided {
                    decided,
                    recorded_allowed,
                    changed,
                }
            }
        }
    }

    fn learn(&mut self, name: &str, ips: &[IpAddr]) {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let new: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| self.learned.insert((name.clone(), *ip)))
            .collect();
        if !new.is_empty() {
            self.loaded.world.engine.dns_answer(&name, &new);
            // Identities of these addresses changed: decisions about them are recomputed.
            self.cache.clear();
        }
    }

    fn decide(&mut self, flow: &HubbleFlow) -> Result<(DecisionKey, Rc<Decided>), String> {
        let (protocol, port) = match flow.l4 {
            L4::Tcp { port } => (Protocol::Tcp, port),
            L4::Udp { port } => (Protocol::Udp, port),
            L4::Sctp { port } => (Protocol::Sctp, port),
            L4::Icmp { v6, icmp_type } => (
                if v6 { Protocol::Icmpv6 } else { Protocol::Icmp },
                u16::from(icmp_type),
            ),
            L4::None => return Err("no layer 4 (l4) section".into()),
        };
        let (req, l7key) = match &flow.l7 {
            L7::None => (L7Request::None, String::new()),
            L7::Http {
                method,
                path,
                host,
                headers,
            } => {
                let mut key = format!("http\0{method}\0{path}\0{host}");
                for (k, v) in headers {
                    key.push('\0');
                    key.push_str(k);
                    key.push('\0');
                    key.push_str(v);
                }
                (
                    L7Request::Http(HttpRequest {
                        method: method.clone(),
                        path: path.clone(),
                        host: host.clone(),
                        headers: headers.clone(),
                    }),
                    key,
                )
            }
            L7::Dns { query, .. } => {
                let qname = query.trim_end_matches('.').to_ascii_lowercase();
                (
                    L7Request::Dns {
                        qname: qname.clone(),
                    },
                    format!("dns\0{qname}"),
                )
            }
            L7::Other(p) => return Err(format!("L7 protocol `{p}` is not modelled")),
        };
        let (from, _) = self
            .party(&flow.source, false, self.host_node(&flow.destination))
            .map_err(|e| format!("source: {e}"))?;
        let (to, learned) = self
            .party(&flow.destination, true, self.host_node(&flow.source))
            .map_err(|e| format!("destination: {e}"))?;
        let (from, to) = (
            self.as_recorded(from, &flow.source, to),
            self.as_recorded(to, &flow.destination, from),
        );
        let key = DecisionKey {
            from: party_key(from),
            to: party_key(to),
            protocol,
            port,
            l7: l7key,
        };
        if let Some(d) = self.cache.get(&key) {
            return Ok((key, d.clone()));
        }
        let decision = self
            .loaded
            .world
            .engine
            .state()
            .decide(from, to, protocol, port, &req, learned);
        let (rules, policies) = self.hits_of(&decision);
        let decided = Rc::new(Decided {
            description: describe(flow, protocol, port),
            decision,
            rules,
            policies,
            json: OnceCell::new(),
        });
        self.cache.insert(key.clone(), decided.clone());
        Ok((key, decided))
    }

    /// The rule entries and policies behind a decision: the sides the flow reached.
    fn hits_of(&self, d: &FlowDecision) -> (Vec<usize>, Vec<usize>) {
        let mut rules = Vec::new();
        let mut policies = Vec::new();
        let mut sides = vec![&d.egress];
        if d.egress.outcome.passes()
            && let Some(i) = &d.ingress
        {
            sides.push(i);
        }
        for side in sides {
            if side.outcome == Outcome::NotEnforced {
                continue;
            }
            let entries = side
                .deciding
                .iter()
                .filter_map(|o| o.entry())
                .chain(side.l7.as_ref().and_then(|l| l.rule()).map(|r| &r.entry));
            for e in entries {
                if let Some(&i) = self.rule_by_name.get(&e.to_string())
                    && !rules.contains(&i)
                {
                    rules.push(i);
                }
            }
            for p in crate::decision_json::side_policies(side) {
                if let Some(&i) = self.policy_by_name.get(&p)
                    && !policies.contains(&i)
                {
                    policies.push(i);
                }
            }
        }
        (rules, policies)
    }

    /// The node whose host a flow endpoint is (`reserved:host` with a node's address): the
    /// node the flow's other side runs on.
    fn host_node(&self, ep: &FlowEndpoint) -> Option<String> {
        let state = self.loaded.world.engine.state();
        if ep.reserved().any(|r| r == "host")
            && let Some(ip) = ep.ip
            && let Party::Node { node, .. } = state.address_party(ip)
        {
            return state.nodes().get(node).map(|n| n.name.clone());
        }
        None
    }

    /// The engine party of one side of a flow, and whether its address was learned from DNS.
    /// `node`: the node this side runs on, when the other side is that node's host.
    fn party(
        &mut self,
        ep: &FlowEndpoint,
        destination: bool,
        node: Option<String>,
    ) -> Result<(Party, bool), String> {
        let reserved: Vec<&str> = ep.reserved().collect();
        if let Some(entity) = ENTITIES.iter().find(|e| reserved.contains(e)) {
            // The address of a node with the host's identity is that node: its host
            // firewall decides, toCIDR selects its address, and it is `host` on its own node
            // and `remote-node` elsewhere ([`Replay::as_recorded`] checks the label).
            if matches!(*entity, "host" | "remote-node")
                && let Some(ip) = ep.ip
                && let node @ Party::Node { .. } =
                    self.loaded.world.engine.state().address_party(ip)
            {
                return Ok((node, false));
            }
            return Ok((self.entity(entity), false));
        }
        let is_world = reserved
            .iter()
            .any(|r| matches!(*r, "world" | "world-ipv4" | "world-ipv6"));
        if !is_world {
            // A manifest pod with this address is that pod.
            if let Some(ip) = ep.ip
                && let Some(i) = self.loaded.world.engine.state().endpoint_by_ip(ip)
                && i < self.manifest_endpoints
                && let Some(p) = self.loaded.world.engine.state().endpoint_party(i)
            {
                return Ok((p, false));
            }
            if ep.k8s_labels().next().is_some() || !ep.namespace.is_empty() && ep.ip.is_none() {
                return Ok((self.pod(ep, node), false));
            }
        }
        let Some(ip) = ep.ip else {
            return Err("no labels and no address".into());
        };
        let state = self.loaded.world.engine.state();
        if !is_world && !matches!(state.address_party(ip), Party::World { .. }) {
            return Ok((state.address_party(ip), false));
        }
        if self.worlds.insert(ip) {
            // A new address's own identity: decisions about other parties keep theirs.
            self.loaded.world.engine.add_world_address(ip);
        }
        let learned_as = if destination {
            ep.names.iter().find_map(|n| {
                let n = n.trim_end_matches('.').to_ascii_lowercase();
                self.loaded
                    .world
                    .engine
                    .state()
                    .dns_names()
                    .iter()
                    .position(|x| *x == n)
            })
        } else {
            None
        };
        Ok((
            Party::World {
                addr: ip,
                learned_as,
            },
            learned_as.is_some(),
        ))
    }

    /// A node keeps the identity Hubble recorded for it: `host` when the other side runs on
    /// that node, `remote-node` when it does not (or its node is not known). When the
    /// recorded label says otherwise (an export that does not match the manifests' nodes),
    /// the recorded entity is used. Between two nodes, each is `host` on its own node and
    /// `remote-node` on the other, whichever node Hubble observed: both stay nodes.
    fn as_recorded(&mut self, p: Party, ep: &FlowEndpoint, other: Party) -> Party {
        let Party::Node { node, .. } = p else {
            return p;
        };
        if matches!(other, Party::Node { .. }) {
            return p;
        }
        let Some(entity) = ENTITIES
            .iter()
            .find(|e| ep.reserved().any(|r| r == **e))
            .filter(|e| matches!(**e, "host" | "remote-node"))
        else {
            return p;
        };
        let on_same_node = self.loaded.world.engine.state().node_of(other) == Some(node);
        if on_same_node == (*entity == "host") {
            p
        } else {
            self.entity(entity)
        }
    }

    fn entity(&mut self, name: &'static str) -> Party {
        if let Some(p) = self.entities.get(name) {
            return *p;
        }
        let engine = &mut self.loaded.world.engine;
        let (id, _) = engine.add_endpoint(EndpointSpec {
            name: format!("replay:{name}"),
            namespace: String::new(),
            node: String::new(),
            ip: None,
            service_account: String::new(),
            labels: vec![],
            ports: vec![],
            host_network: false,
            entity: Some(name.to_string()),
        });
        let p = engine.state().endpoint_party(id).unwrap_or(Party::World {
            addr: crate::world::WORLD_ADDR,
            learned_as: None,
        });
        self.entities.insert(name, p);
        p
    }

    /// The pod of a flow endpoint's Kubernetes labels, created on first sight.
    fn pod(&mut self, ep: &FlowEndpoint, node: Option<String>) -> Party {
        let node = node.unwrap_or_default();
        let mut namespace = ep.namespace.clone();
        let mut service_account = String::new();
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut ns_labels: Vec<(String, String)> = Vec::new();
        for (k, v) in ep.k8s_labels() {
            if k == "io.kubernetes.pod.namespace" {
                namespace = v.to_string();
            } else if k == "io.cilium.k8s.policy.serviceaccount" {
                service_account = v.to_string();
            } else if let Some(nk) = k.strip_prefix("io.cilium.k8s.namespace.labels.") {
                ns_labels.push((nk.to_string(), v.to_string()));
            } else if !k.starts_with("io.cilium.k8s.") {
                labels.push((k.to_string(), v.to_string()));
            }
        }
        labels.sort();
        // One endpoint per label set and node: a node's host sees the pods on it as local.
        let mut key = format!("{namespace}\n{service_account}\n{node}");
        for (k, v) in &labels {
            key.push('\n');
            key.push_str(k);
            key.push('=');
            key.push_str(v);
        }
        if let Some(p) = self.pods.get(&key) {
            return *p;
        }
        let engine = &mut self.loaded.world.engine;
        if !ns_labels.is_empty() && self.known_namespaces.insert(namespace.clone()) {
            engine.upsert_namespace(&namespace, ns_labels);
        }
        // The manifest workload these labels belong to lends its named ports.
        let mut ports: Vec<NamedPort> = Vec::new();
        for i in 0..self.manifest_endpoints {
            if let Some(spec) = engine.state().endpoint(i)
                && spec.namespace == namespace
                && spec.entity.is_none()
                && !spec.labels.is_empty()
                && spec.labels.iter().all(|l| labels.contains(l))
            {
                ports = spec.ports.clone();
                if service_account.is_empty() {
                    service_account = spec.service_account.clone();
                }
                break;
            }
        }
        let name = if ep.pod_name.is_empty() {
            format!("replay-{}", self.pods.len())
        } else {
            ep.pod_name.clone()
        };
        let (id, _) = engine.add_endpoint(EndpointSpec {
            name,
            namespace,
            node,
            ip: None,
            service_account,
            labels,
            ports,
            host_network: false,
            entity: None,
        });
        let p = engine.state().endpoint_party(id).unwrap_or(Party::Pod(id));
        self.pods.insert(key, p);
        p
    }
}

/// Whether Hubble's verdict allowed the flow, as far as policy is concerned. `AUDIT` is a
/// flow policy denied and audit mode let through: a denial.
pub fn recorded_allows(flow: &HubbleFlow) -> Option<bool> {
    match flow.verdict.as_str() {
        "FORWARDED" | "REDIRECTED" | "TRACED" | "TRANSLATED" => Some(true),
        "AUDIT" => Some(false),
        "DROPPED" => {
            let r = flow.drop_reason.as_str();
            (r.is_empty() || r.starts_with("POLICY") || r.starts_with("AUTH_REQUIRED"))
                .then_some(false)
        }
        _ => None,
    }
}

fn endpoint_name(ep: &FlowEndpoint) -> String {
    if !ep.pod_name.is_empty() {
        return format!("{}/{}", ep.namespace, ep.pod_name);
    }
    if let Some(n) = ep.names.first() {
        return n.trim_end_matches('.').to_string();
    }
    if let Some(r) = ep.reserved().find(|r| *r != "world") {
        return r.to_string();
    }
    match ep.ip {
        Some(ip) => ip.to_string(),
        None => "?".into(),
    }
}

fn describe(flow: &HubbleFlow, protocol: Protocol, port: u16) -> String {
    let mut s = format!(
        "{} → {}",
        endpoint_name(&flow.source),
        endpoint_name(&flow.destination)
    );
    match protocol {
        Protocol::Icmp | Protocol::Icmpv6 => s.push_str(&format!(" {protocol} type {port}")),
        _ => s.push_str(&format!(":{port}/{protocol}")),
    }
    match &flow.l7 {
        L7::Http { method, path, .. } => s.push_str(&format!(" {method} {path}")),
        L7::Dns { query, .. } => s.push_str(&format!(" DNS {query}")),
        _ => {}
    }
    s
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;
    use crate::hubble::{Record, parse_line};
    use crate::manifests::{SourceFile, load};

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec:
  containers: [{name: db, image: db, ports: [{name: pg, containerPort: 5432}]}]
status: {phase: Running, podIP: 10.9.0.5}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: pg, protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  egress:
  - toFQDNs: [{matchName: pay.example.com}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: db}}]
"#;

    fn replay() -> Replay {
        Replay::new(load(vec![SourceFile {
            name: "m.yaml".into(),
            text: MANIFESTS.into(),
        }]))
    }

    fn flow(line: &str) -> HubbleFlow {
        match parse_line(line) {
            Ok(Some(Record::Flow(f))) => *f,
            other => panic!("not a flow: {other:?}"),
        }
    }

    const API: &str = r#""labels":["k8s:app=api","k8s:io.kubernetes.pod.namespace=shop"],"namespace":"shop","pod_name":"api-1""#;

    fn verdict(r: &mut Replay, line: &str) -> (&'static str, bool) {
        match r.flow(1, &flow(line)) {
            LineOutcome::Decided {
                decided, changed, ..
            } => (decided.verdict(), changed),
            other => panic!("not decided: {other:?}"),
        }
    }

    #[test]
    fn pods_from_labels_and_manifest_addresses() {
        let mut r = replay();
        // The destination is known by its address only: the manifest pod, whose named
        // port `pg` is 5432.
        let line = format!(
            r#"{{"verdict":"FORWARDED","IP":{{"source":"10.9.1.1","destination":"10.9.0.5"}},"l4":{{"TCP":{{"destination_port":5432}}}},"source":{{{API}}},"destination":{{}}}}"#
        );
        assert_eq!(verdict(&mut r, &line), ("allow", false));
        // Another pod of the same labels is the same identity: one endpoint, one decision.
        let again = line
            .replace("api-1", "api-2")
            .replace("10.9.1.1", "10.9.1.2");
        assert_eq!(verdict(&mut r, &again), ("allow", false));
        assert_eq!(r.pods.len(), 1);
        assert_eq!(r.cache.len(), 1);
        // Another port is dropped now: a change.
        let other = line.replace("5432", "5433");
        assert_eq!(verdict(&mut r, &other), ("deny", true));
        assert_eq!(r.stats.newly_dropped, 1);
        // api egress[1] allowed all three (its egress passes); db ingress[0] the first two.
        let hits = |name: &str| r.rules.iter().find(|x| x.rule == name).map(|x| x.hits);
        assert_eq!(hits("CNP shop/api egress[1]"), Some(3));
        assert_eq!(hits("CNP shop/db ingress[0]"), Some(2));
        assert_eq!(r.unused_rules().count(), 1);
    }

    #[test]
    fn world_names_learned_from_dns_answers() {
        let mut r = replay();
        let to_pay = format!(
            r#"{{"verdict":"DROPPED","drop_reason_desc":"POLICY_DENIED","IP":{{"source":"10.9.1.1","destination":"198.51.100.9"}},"l4":{{"TCP":{{"destination_port":443}}}},"source":{{{API}}},"destination":{{"labels":["reserved:world"]}},"destination_names":["pay.example.com"]}}"#
        );
        assert_eq!(verdict(&mut r, &to_pay), ("allow", true));
        assert_eq!(r.stats.newly_allowed, 1);
        // Without the name, the address is only world: denied, as recorded.
        let anonymous = to_pay.replace(r#","destination_names":["pay.example.com"]"#, "");
        let anonymous = anonymous.replace("198.51.100.9", "198.51.100.10");
        assert_eq!(verdict(&mut r, &anonymous), ("deny", false));
    }

    #[test]
    fn replies_and_undecidable_flows() {
        let mut r = replay();
        let reply = format!(
            r#"{{"verdict":"FORWARDED","is_reply":true,"l4":{{"TCP":{{"destination_port":40000}}}},"source":{{}},"destination":{{{API}}}}}"#
        );
        assert!(matches!(r.flow(1, &flow(&reply)), LineOutcome::Reply));
        let no_l4 = format!(r#"{{"verdict":"FORWARDED","source":{{{API}}},"destination":{{}}}}"#);
        assert!(matches!(
            r.flow(2, &flow(&no_l4)),
            LineOutcome::Undecidable(w) if w.contains("l4")
        ));
        assert_eq!(r.stats.replies, 1);
        assert_eq!(r.stats.undecidable, 1);
        assert_eq!(
            r.stats.problems,
            vec![(2, "no layer 4 (l4) section".into())]
        );
    }

    /// A scenario file as replay's input: nodes, policy-cidr-match-mode=nodes, a client
    /// whose egress allows the nodes' CIDR.
    const NODES: &str = r#"
name: nodes
requires: [cidr-match-nodes]
nodes:
  - {name: node1, ip: 172.18.0.2, cilium: true}
  - {name: node2, ip: 172.18.0.3, cilium: true}
endpoints:
  - {name: client, namespace: ns, node: node1, ip: 10.244.1.10, labels: {kind: client}}
policies: |
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: to-nodes, namespace: ns}
  spec:
    podSelector: {matchLabels: {kind: client}}
    egress:
    - to: [{ipBlock: {cidr: 172.18.0.0/24}}]
flows: []
"#;

    #[test]
    fn node_addresses_are_their_nodes() {
        let mut r = Replay::new(load(vec![SourceFile {
            name: "nodes.yaml".into(),
            text: NODES.into(),
        }]));
        let to = |labels: &str, ip: &str| {
            format!(
                r#"{{"verdict":"FORWARDED","IP":{{"source":"10.244.1.10","destination":"{ip}"}},"l4":{{"ICMPv4":{{"type":8}}}},"source":{{"labels":["k8s:kind=client","k8s:io.kubernetes.pod.namespace=ns"],"namespace":"ns","pod_name":"client"}},"destination":{{"labels":["{labels}"]}}}}"#
            )
        };
        // Hubble names the other node `remote-node` and the own node `host`: both are the
        // node of that address, whose address the ipBlock selects (with
        // policy-cidr-match-mode=nodes), not an address-less entity.
        assert_eq!(
            verdict(&mut r, &to("reserved:remote-node", "172.18.0.3")),
            ("allow", false)
        );
        assert_eq!(
            verdict(&mut r, &to("reserved:host", "172.18.0.2")),
            ("allow", false)
        );
        // The recorded identity wins: node2 is no `host` of the client on node1, so a
        // record that says so (an export that does not match the nodes) is the entity.
        assert!(r.entities.is_empty());
        verdict(&mut r, &to("reserved:host", "172.18.0.3"));
        assert!(r.entities.contains_key("host"));
        // Node to node: both nodes, as Hubble on node1 records them.
        let nodes = r#"{"verdict":"FORWARDED","IP":{"source":"172.18.0.2","destination":"172.18.0.3"},"l4":{"TCP":{"destination_port":10250}},"source":{"labels":["reserved:host"]},"destination":{"labels":["reserved:remote-node"]}}"#;
        let LineOutcome::Decided { decided, .. } = r.flow(1, &flow(nodes)) else {
            panic!("not decided");
        };
        assert!(decided.description.starts_with("host → remote-node"));
        assert!(
            r.cache
                .keys()
                .any(|k| matches!((k.from, k.to), (PartyKey::Node(0, _), PartyKey::Node(1, _))))
        );
        // Without an address, the entity: no CIDR selects it.
        let bare =
            to("reserved:remote-node", "172.18.0.3").replace(r#","destination":"172.18.0.3""#, "");
        assert_eq!(verdict(&mut r, &bare), ("deny", true));
    }

    #[test]
    fn a_hosts_pods_known_by_labels_run_on_that_node() {
        // Host egress to pods except name=echo-other-node is allowed (host firewall).
        let mut r = Replay::new(load(vec![SourceFile {
            name: "host-firewall-egress.yaml".into(),
            text: include_str!("../../../tests/conformance/host-firewall-egress.yaml").into(),
        }]));
        // node2's host (172.18.0.3) to a pod of echo-other-node's labels at an address no
        // manifest knows: the pod runs on node2 (its host saw it as local), the flow is
        // node2's host egress, and the host firewall denies it.
        let line = r#"{"verdict":"FORWARDED","IP":{"source":"172.18.0.3","destination":"100.64.0.5"},"l4":{"TCP":{"destination_port":8080}},"source":{"labels":["reserved:host"]},"destination":{"labels":["k8s:name=echo-other-node","k8s:kind=echo","k8s:first=echo","k8s:io.kubernetes.pod.namespace=cilium-test-1"],"namespace":"cilium-test-1","pod_name":"echo-other-node-1"}}"#;
        assert_eq!(verdict(&mut r, line), ("deny", true));
        assert!(r.pods.keys().any(|k| k.contains("\nnode2\n")));
        assert!(r.entities.is_empty());
        // Another label set from the same host: allowed.
        let other = line.replace("name=echo-other-node", "name=echo-same-node");
        assert_eq!(verdict(&mut r, &other), ("allow", false));
    }

    #[test]
    fn recorded_verdicts() {
        let f = |v: &str, reason: &str| {
            flow(&format!(
                r#"{{"verdict":"{v}","drop_reason_desc":"{reason}","source":{{}}}}"#
            ))
        };
        assert_eq!(recorded_allows(&f("FORWARDED", "")), Some(true));
        assert_eq!(recorded_allows(&f("REDIRECTED", "")), Some(true));
        assert_eq!(recorded_allows(&f("AUDIT", "")), Some(false));
        assert_eq!(recorded_allows(&f("DROPPED", "POLICY_DENIED")), Some(false));
        assert_eq!(recorded_allows(&f("DROPPED", "POLICY_DENY")), Some(false));
        assert_eq!(
            recorded_allows(&f("DROPPED", "CT_MAP_INSERTION_FAILED")),
            None
        );
        assert_eq!(recorded_allows(&f("ERROR", "")), None);
    }
}
