//! A cluster with its identities and resolved policies, answering "what happens to this
//! flow, and why".

use crate::scenario::{EndpointSpec, Scenario};
use membrane_policy::api::Resource;
use membrane_policy::diag::Diagnostic;
use membrane_policy::identity::{self, IdentityId, IdentityTable};
use membrane_policy::labels::{Label, LabelSet};
use membrane_policy::model::{Direction, FileId, Protocol};
use membrane_policy::options::Options;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::resolve::{DirectionPolicy, Repository, Subject, host_labels};
use membrane_policy::verdict::{self, FlowDecision, HttpRequest, L7Request, Outcome, SideDecision};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

/// The address that stands for "somewhere outside the cluster" (`world` in flows): from
/// TEST-NET-3, a documentation range that is never a real destination.
pub const WORLD_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 10));

/// An address named in a flow: an IP, or a CIDR standing for an address inside it.
pub fn address_of_name(name: &str) -> Option<IpAddr> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Some(ip);
    }
    let net: ipnet::IpNet = name.parse().ok()?;
    // The first host address: inside the range, and not its network address.
    net.hosts().next().or(Some(net.addr()))
}

/// One party of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Pod(usize),
    /// A node, or a hostNetwork pod on it.
    Node {
        node: usize,
        addr: IpAddr,
    },
    /// A reserved-identity endpoint (a Gateway's proxy, ...).
    Entity {
        endpoint: usize,
        id: IdentityId,
    },
    /// Outside the cluster (or on a node without Cilium).
    World {
        addr: IpAddr,
        learned_as: Option<usize>,
    },
}

/// What identifies a subject endpoint's resolved policy: cache key, host labels (host
/// endpoints only), whether it is a host endpoint, its container ports, its node's addresses.
type SubjectParts = (
    String,
    Option<LabelSet>,
    bool,
    Vec<(String, Protocol, u16)>,
    Vec<IpAddr>,
);

pub struct World {
    pub scenario: Scenario,
    pub options: Options,
    pub repo: Repository,
    pub policy_set: PolicySet,
    pub diagnostics: Vec<Diagnostic>,
    pod_ids: Vec<IdentityId>,
    node_ids: Vec<Option<IdentityId>>,
    kube_dns: Option<usize>,
    endpoint_by_name: HashMap<String, usize>,
    endpoint_by_ip: HashMap<IpAddr, usize>,
    cache: RefCell<HashMap<(String, Direction), Rc<DirectionPolicy>>>,
}

fn protocol_of(text: &str) -> Protocol {
    Protocol::parse(text).unwrap_or(Protocol::Tcp)
}

impl World {
    pub fn from_scenario(scenario: Scenario, file: FileId) -> World {
        let (resources, diagnostics) =
            parse_resources(&scenario.policies, scenario.policies_embedding);
        let resources: Vec<(FileId, Resource)> = resources.into_iter().map(|r| (file, r)).collect();
        World::from_parts(scenario, resources, diagnostics)
    }

    /// A world from a cluster model and policy resources from any number of files.
    pub fn from_parts(
        scenario: Scenario,
        resources: Vec<(FileId, Resource)>,
        mut diagnostics: Vec<Diagnostic>,
    ) -> World {
        let mut options = Options {
            cluster_name: scenario.cluster_name.clone(),
            ..Options::default()
        };
        for r in &scenario.requires {
            match r.as_str() {
                "host-firewall" => options.host_firewall = true,
                "cidr-match-nodes" => options.cidr_match_nodes = true,
                _ => {}
            }
        }
        apply_agent_flags(&mut options, &scenario.agent);
        let policy_set = PolicySet::build(&resources, &options, &scenario.secrets);
        diagnostics.extend(policy_set.diagnostics().map(|(_, d)| d.clone()));

        let mut table = IdentityTable::default();
        let ns_labels = |ns: &str| -> Vec<(String, String)> {
            scenario
                .namespaces
                .iter()
                .find(|n| n.name == ns)
                .map(|n| n.labels.clone())
                .unwrap_or_default()
        };
        let mut pod_ids = Vec::new();
        for ep in &scenario.endpoints {
            let id = match (&ep.entity, ep.host_network) {
                (Some(e), _) => identity::reserved_id(e).unwrap_or(identity::UNMANAGED),
                (None, true) => 0,
                (None, false) => {
                    let nsl = ns_labels(&ep.namespace);
                    table.pod(identity::pod_identity_labels(
                        ep.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                        &ep.namespace,
                        nsl.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                        &ep.service_account,
                        &scenario.cluster_name,
                    ))
                }
            };
            pod_ids.push(id);
        }
        let mut node_ids = Vec::new();
        for n in &scenario.nodes {
            node_ids.push(if !n.cilium {
                Some(table.cidr(n.ip, None))
            } else if options.cidr_match_nodes {
                Some(table.node(n.ip, &n.labels))
            } else {
                None
            });
        }
        for ext in &scenario.external {
            for ip in &ext.ips {
                table.cidr(*ip, None);
                table.cidr(*ip, Some(&ext.name));
            }
        }
        // First endpoint wins for a name or address, as a linear search would.
        let mut endpoint_by_name: HashMap<String, usize> = HashMap::new();
        let mut endpoint_by_ip: HashMap<IpAddr, usize> = HashMap::new();
        for (i, e) in scenario.endpoints.iter().enumerate() {
            endpoint_by_name.entry(e.name.clone()).or_insert(i);
            if !e.host_network {
                endpoint_by_ip.entry(e.ip).or_insert(i);
            }
        }
        for flow in &scenario.flows {
            for name in [Some(&flow.from), flow.to.as_ref()].into_iter().flatten() {
                if let Some(ip) = address_of_name(name) {
                    if !endpoint_by_ip.contains_key(&ip)
                        && !scenario
                            .endpoints
                            .iter()
                            .any(|e| e.host_network && e.ip == ip)
                        && !scenario.nodes.iter().any(|n| n.ip == ip)
                    {
                        table.cidr(ip, None);
                    }
                }
            }
        }
        table.cidr(WORLD_ADDR, None);
        let mut ports = Vec::new();
        for ep in &scenario.endpoints {
            for p in &ep.ports {
                if !p.name.is_empty() {
                    ports.push((p.name.clone(), protocol_of(&p.protocol), p.port));
                }
            }
        }
        let rules = expand_services(policy_set.rules(), &scenario.services);
        let repo = Repository::new(rules, options.clone(), table, &ports);
        let kube_dns = scenario
            .endpoints
            .iter()
            .position(|e| {
                e.labels
                    .iter()
                    .any(|(k, v)| k == "k8s-app" && v == "kube-dns")
            })
            .or_else(|| scenario.endpoints.iter().position(|e| e.name == "kube-dns"));
        World {
            scenario,
            options,
            repo,
            policy_set,
            diagnostics,
            pod_ids,
            node_ids,
            kube_dns,
            endpoint_by_name,
            endpoint_by_ip,
            cache: RefCell::new(HashMap::new()),
        }
    }

    pub fn identities(&self) -> &IdentityTable {
        self.repo.identities()
    }

    /// Finds a party by endpoint name, node name, external name or IP address.
    pub fn party(&self, name: &str) -> Option<Party> {
        let s = &self.scenario;
        if name == "world" && !s.external.iter().any(|e| e.name == "world") {
            return Some(Party::World {
                addr: WORLD_ADDR,
                learned_as: None,
            });
        }
        if let Some(i) = self.endpoint_by_name.get(name) {
            return Some(self.endpoint_party(*i));
        }
        if let Some(i) = s.nodes.iter().position(|n| n.name == name) {
            let n = &s.nodes[i];
            return Some(if n.cilium {
                Party::Node {
                    node: i,
                    addr: n.ip,
                }
            } else {
                Party::World {
                    addr: n.ip,
                    learned_as: None,
                }
            });
        }
        if let Some(i) = s.external.iter().position(|e| e.name == name) {
            let addr = *s.external[i].ips.first()?;
            return Some(Party::World {
                addr,
                learned_as: Some(i),
            });
        }
        if name == "host" {
            // The node a flow's other side runs on is not known here: the first node.
            let n = s.nodes.first()?;
            return Some(Party::Node {
                node: 0,
                addr: n.ip,
            });
        }
        let ip: IpAddr = address_of_name(name)?;
        if let Some(i) = self.endpoint_by_ip.get(&ip) {
            return Some(self.endpoint_party(*i));
        }
        if let Some(i) = s.nodes.iter().position(|n| n.ip == ip) {
            let n = &s.nodes[i];
            return Some(if n.cilium {
                Party::Node {
                    node: i,
                    addr: n.ip,
                }
            } else {
                Party::World {
                    addr: ip,
                    learned_as: None,
                }
            });
        }
        Some(Party::World {
            addr: ip,
            learned_as: None,
        })
    }

    fn endpoint_party(&self, i: usize) -> Party {
        let ep = &self.scenario.endpoints[i];
        if ep.entity.is_some() {
            return Party::Entity {
                endpoint: i,
                id: self.pod_ids[i],
            };
        }
        if ep.host_network {
            return match self.scenario.nodes.iter().position(|n| n.name == ep.node) {
                Some(n) if self.scenario.nodes[n].cilium => Party::Node {
                    node: n,
                    addr: ep.ip,
                },
                _ => Party::World {
                    addr: ep.ip,
                    learned_as: None,
                },
            };
        }
        Party::Pod(i)
    }

    fn node_of(&self, p: Party) -> Option<usize> {
        let by_name = |name: &str| self.scenario.nodes.iter().position(|n| n.name == name);
        match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => {
                by_name(&self.scenario.endpoints[i].node)
            }
            Party::Node { node, .. } => Some(node),
            Party::World { .. } => None,
        }
    }

    /// The identity of `p` as seen on `observer`'s node.
    pub fn identity_of(&self, p: Party, observer: Option<usize>, learned: bool) -> IdentityId {
        match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => self.pod_ids[i],
            Party::Node { node, .. } => {
                if observer == Some(node) {
                    identity::HOST
                } else {
                    self.node_ids[node].unwrap_or(identity::REMOTE_NODE)
                }
            }
            Party::World { addr, learned_as } => {
                let name = learned_as
                    .filter(|_| learned)
                    .map(|i| self.scenario.external[i].name.as_str());
                self.lookup_cidr(addr, name)
            }
        }
    }

    fn lookup_cidr(&self, addr: IpAddr, name: Option<&str>) -> IdentityId {
        self.identities()
            .iter()
            .find(|i| {
                i.addr == Some(addr)
                    && i.kind == identity::IdentityKind::Cidr
                    && i.fqdn_names.first().map(String::as_str) == name
            })
            .map_or(identity::WORLD, |i| i.id)
    }

    /// The resolved policy of a party's endpoint, if Cilium manages it.
    pub fn policy(&self, p: Party, direction: Direction) -> Option<Rc<DirectionPolicy>> {
        let (key, labels, is_host, ports, node_addrs): SubjectParts = match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => {
                let ep: &EndpointSpec = &self.scenario.endpoints[i];
                let ports = ep
                    .ports
                    .iter()
                    .map(|c| (c.name.clone(), protocol_of(&c.protocol), c.port))
                    .collect();
                let addrs = self
                    .node_of(p)
                    .map(|n| vec![self.scenario.nodes[n].ip])
                    .unwrap_or_default();
                // Endpoints with the same identity and container ports share a policy; the
                // node only matters when CIDR selectors can select the local host.
                let node_part = if self.options.cidr_match_nodes {
                    format!("{addrs:?}")
                } else {
                    String::new()
                };
                let key = format!("id:{}:{ports:?}{node_part}", self.pod_ids[i]);
                (key, None, false, ports, addrs)
            }
            Party::Node { node, .. } if self.options.host_firewall => {
                let n = &self.scenario.nodes[node];
                (
                    format!("node:{node}"),
                    Some(host_labels(&n.labels)),
                    true,
                    vec![],
                    vec![n.ip],
                )
            }
            _ => return None,
        };
        let cache_key = (key, direction);
        if let Some(hit) = self.cache.borrow().get(&cache_key) {
            return Some(hit.clone());
        }
        let identity = match (labels, p) {
            (Some(labels), _) => identity::Identity {
                id: identity::HOST,
                labels,
                kind: identity::IdentityKind::Reserved,
                addr: None,
                fqdn_names: vec![],
            },
            (None, Party::Pod(i) | Party::Entity { endpoint: i, .. }) => {
                self.identities().get(self.pod_ids[i])?.clone()
            }
            _ => return None,
        };
        let subject = Subject {
            identity: &identity,
            is_host,
            local_node_addrs: &node_addrs,
            own_ports: &ports,
        };
        let resolved = Rc::new(self.repo.resolve(&subject, direction));
        self.cache.borrow_mut().insert(cache_key, resolved.clone());
        Some(resolved)
    }

    // Internal plumbing of `decide`; the arguments are the flow's fields.
    #[allow(clippy::too_many_arguments)]
    fn side(
        &self,
        subject: Party,
        peer: Party,
        direction: Direction,
        protocol: Protocol,
        port: u16,
        req: &L7Request,
        learned: bool,
    ) -> SideDecision {
        let observer = self.node_of(subject);
        let peer_id = self.identity_of(peer, observer, learned);
        match self.policy(subject, direction) {
            Some(policy) => verdict::decide_side(&policy, peer_id, protocol, port, req),
            None => SideDecision {
                direction,
                outcome: Outcome::NotEnforced,
                enforcement: membrane_policy::resolve::Enforcement::NotSelected,
                key: None,
                deciding: vec![],
                proxy: None,
                l7_detail: Some("not a Cilium-managed endpoint".into()),
                injected_headers: vec![],
            },
        }
    }

    /// Both sides of one connection or datagram.
    pub fn decide(
        &self,
        from: Party,
        to: Party,
        protocol: Protocol,
        port: u16,
        req: &L7Request,
        learned: bool,
    ) -> FlowDecision {
        if let (Party::Node { node: a, .. }, Party::Node { node: b, .. }) = (from, to) {
            if a == b {
                // A node (or a hostNetwork pod on it) to one of its own addresses: the packet
                // goes over `lo`. Cilium enforces host policies in the programs attached to
                // cilium_host/cilium_net (host ↔ local pods) and the native devices (host ↔
                // everything else); loopback traffic passes none of them, so the host
                // firewall never sees it. Neither side is enforced.
                let side = |direction| SideDecision {
                    direction,
                    outcome: Outcome::NotEnforced,
                    enforcement: membrane_policy::resolve::Enforcement::NotSelected,
                    key: None,
                    deciding: vec![],
                    proxy: None,
                    l7_detail: Some(
                        "the host to itself over loopback: host policies do not apply".into(),
                    ),
                    injected_headers: vec![],
                };
                return verdict::combine(
                    side(Direction::Egress),
                    Some(side(Direction::Ingress)),
                    matches!(req, L7Request::Dns { .. }),
                );
            }
        }
        let egress = self.side(from, to, Direction::Egress, protocol, port, req, learned);
        let ingress = self.side(to, from, Direction::Ingress, protocol, port, req, learned);
        verdict::combine(egress, Some(ingress), matches!(req, L7Request::Dns { .. }))
    }

    pub fn kube_dns(&self) -> Option<Party> {
        self.kube_dns.map(|i| self.endpoint_party(i))
    }

    /// A DNS query from `from` to kube-dns over UDP/53.
    pub fn dns_query(&self, from: Party, qname: &str) -> Option<FlowDecision> {
        let dns = self.kube_dns()?;
        Some(self.decide(
            from,
            dns,
            Protocol::Udp,
            53,
            &L7Request::Dns {
                qname: qname.to_string(),
            },
            false,
        ))
    }
}

/// Builds the request a flow carries.
pub fn l7_request(
    http: Option<&HttpRequest>,
    tls: Option<&crate::scenario::TlsSpec>,
    host: &str,
) -> L7Request {
    if let Some(t) = tls {
        let http = if t.intercept {
            let mut req = http.cloned().unwrap_or_else(|| HttpRequest {
                method: "GET".into(),
                path: t.path.clone().unwrap_or_else(|| "/".into()),
                host: String::new(),
                headers: vec![],
            });
            req.host = t.sni.clone();
            Some(req)
        } else {
            None
        };
        return L7Request::Tls {
            sni: t.sni.clone(),
            http,
        };
    }
    if let Some(h) = http {
        let mut h = h.clone();
        if h.host.is_empty() {
            h.host = host.to_string();
        }
        return L7Request::Http(h);
    }
    L7Request::None
}

/// Labels shown for a party in explanations.
pub fn describe_labels(labels: &LabelSet) -> String {
    let shown: Vec<String> = labels
        .iter()
        .filter(|l: &&Label| l.source != "cidr")
        .map(ToString::to_string)
        .collect();
    shown.join(",")
}

impl World {
    /// Why a direction of an endpoint may not be enforced as its author expected: policies
    /// that would select it but are invalid, or that select the same labels in another
    /// namespace.
    pub fn hints(&self, p: Party, direction: Direction) -> Vec<String> {
        let identity = match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => {
                self.identities().get(self.pod_ids[i]).cloned()
            }
            _ => None,
        };
        let Some(identity) = identity else {
            return vec![];
        };
        let ns_key =
            membrane_policy::labels::SelectorKey::k8s(membrane_policy::labels::KEY_NAMESPACE);
        let mut out = Vec::new();
        for t in &self.policy_set.policies {
            let all_rules = t.rules.iter().chain(t.rejected.iter());
            for rule in all_rules {
                let membrane_policy::model::Subject::Endpoints(sel) = &rule.subject else {
                    continue;
                };
                // An invalid policy's lists may be exactly what made it invalid.
                if t.valid && !rule.has(direction) {
                    continue;
                }
                if sel.matches(&identity.labels) {
                    if !t.valid {
                        let why = t
                            .diagnostics
                            .iter()
                            .find(|d| d.is_error())
                            .map(|d| d.message.clone())
                            .unwrap_or_default();
                        out.push(format!(
                            "{} would select this endpoint but is not enforced: {why}",
                            t.origin
                        ));
                    }
                    continue;
                }
                let mut relaxed = sel.clone();
                let before = relaxed.requirements.len();
                let ns = relaxed
                    .requirements
                    .iter()
                    .find(|r| r.key == ns_key)
                    .and_then(|r| r.values.first().cloned());
                relaxed.requirements.retain(|r| r.key != ns_key);
                // Only a policy that selects nothing where it lives is a likely misplacement.
                let selects_something = self.identities().iter().any(|i| {
                    i.kind == membrane_policy::identity::IdentityKind::Pod && sel.matches(&i.labels)
                });
                if relaxed.requirements.len() < before
                    && !selects_something
                    && relaxed.matches(&identity.labels)
                {
                    let ns = ns.unwrap_or_default();
                    let status = if t.valid { "" } else { " (and it is invalid)" };
                    out.push(format!(
                        "{} matches these labels but applies to namespace `{ns}` only{status}: a CiliumNetworkPolicy selects pods of its own namespace",
                        t.origin
                    ));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// `toServices` peers become the selectors of the Services' backends (Cilium translates them
/// the same way); a Service without a selector has no pod backends.
fn expand_services(
    mut rules: Vec<membrane_policy::model::Rule>,
    services: &[crate::scenario::ServiceSpec],
) -> Vec<membrane_policy::model::Rule> {
    use membrane_policy::labels::{KEY_NAMESPACE, LabelSet, Operator, Selector, SelectorKey};
    use membrane_policy::model::{PeerSelector, Peers};
    let backends = |svc: &crate::scenario::ServiceSpec| {
        let mut sel = Selector::default();
        for (k, v) in &svc.selector {
            sel.push(SelectorKey::k8s(k), Operator::In, vec![v.clone()]);
        }
        sel.push(
            SelectorKey::k8s(KEY_NAMESPACE),
            Operator::In,
            vec![svc.namespace.clone()],
        );
        PeerSelector::Labels(sel)
    };
    for rule in &mut rules {
        for entry in &mut rule.entries {
            let Peers::Selectors(list) = &mut entry.peers else {
                continue;
            };
            if !list
                .iter()
                .any(|p| matches!(p, PeerSelector::Service { .. }))
            {
                continue;
            }
            let mut out = Vec::new();
            for p in list.drain(..) {
                match p {
                    PeerSelector::Service {
                        namespace,
                        name,
                        selector,
                    } => {
                        for svc in services
                            .iter()
                            .filter(|s| s.namespace == namespace && !s.selector.is_empty())
                        {
                            let by_name = name.as_ref().is_some_and(|n| *n == svc.name);
                            let by_labels = selector.as_ref().is_some_and(|sel| {
                                let labels = LabelSet::new(
                                    svc.labels
                                        .iter()
                                        .map(|(k, v)| membrane_policy::labels::Label::k8s(k, v))
                                        .collect(),
                                );
                                sel.matches(&labels)
                            });
                            if by_name || by_labels {
                                out.push(backends(svc));
                            }
                        }
                    }
                    other => out.push(other),
                }
            }
            *list = out;
        }
    }
    rules
}

/// Agent flags from a scenario's `agent:` map (values already validated by the decoder).
fn apply_agent_flags(options: &mut Options, flags: &[(String, String)]) {
    use membrane_policy::options::{DnsRejectCode, EnforcementMode};
    for (k, v) in flags {
        let on = v == "true";
        match k.as_str() {
            "enable-policy" => {
                options.enforcement = match v.as_str() {
                    "always" => EnforcementMode::Always,
                    "never" => EnforcementMode::Never,
                    _ => EnforcementMode::Default,
                }
            }
            "allow-localhost" => options.allow_localhost = v != "policy",
            "tofqdns-dns-reject-response-code" => {
                options.dns_reject = if v == "nameError" {
                    DnsRejectCode::NameError
                } else {
                    DnsRejectCode::Refused
                }
            }
            "policy-cidr-match-mode" => options.cidr_match_nodes = v == "nodes",
            "enable-host-firewall" => options.host_firewall = on,
            "enable-node-selector-labels" => options.node_selector_labels = on,
            "enable-icmp-rules" => options.icmp_rules = on,
            "enable-l7-proxy" => options.l7_proxy = on,
            _ => {}
        }
    }
}
