//! A cluster with its identities and resolved policies, answering "what happens to this
//! flow, and why".

use crate::scenario::{EndpointSpec, Scenario};
use membrane_policy::api::Resource;
use membrane_policy::diag::Diagnostic;
use membrane_policy::engine::{self, DirectionRef, Engine, Snapshot};
use membrane_policy::identity::{IdentityId, IdentityTable};
use membrane_policy::labels::{Label, LabelSet};
use membrane_policy::model::{Direction, FileId, Protocol};
use membrane_policy::options::Options;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::verdict::{FlowDecision, HttpRequest, L7Request};
use std::collections::HashMap;
use std::net::IpAddr;

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

pub use membrane_policy::engine::Party;

pub struct World {
    pub scenario: Scenario,
    pub options: Options,
    pub policy_set: PolicySet,
    pub diagnostics: Vec<Diagnostic>,
    /// The engine, fed from the scenario: endpoint ids are the scenario's endpoint indexes.
    pub engine: Engine,
    endpoint_by_name: HashMap<String, usize>,
    /// Per `scenario.external` entry: the engine's index of its DNS name.
    external_names: Vec<Option<usize>>,
}

fn protocol_of(text: &str) -> Protocol {
    Protocol::parse(text).unwrap_or(Protocol::Tcp)
}

/// The engine's view of a scenario endpoint.
pub fn endpoint_spec(ep: &EndpointSpec) -> engine::EndpointSpec {
    engine::EndpointSpec {
        name: ep.name.clone(),
        namespace: ep.namespace.clone(),
        node: ep.node.clone(),
        ip: Some(ep.ip),
        service_account: ep.service_account.clone(),
        labels: ep.labels.clone(),
        ports: ep
            .ports
            .iter()
            .map(|c| engine::NamedPort {
                name: c.name.clone(),
                protocol: protocol_of(&c.protocol),
                port: c.port,
            })
            .collect(),
        host_network: ep.host_network,
        entity: ep.entity.clone(),
    }
}

/// `KEY=VALUE` of Cilium's agent configuration, checked against the flags membrane knows
/// ([`crate::scenario::AGENT_FLAGS`]).
pub fn parse_agent_flag(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: write KEY=VALUE"))?;
    let Some((_, allowed)) = crate::scenario::AGENT_FLAGS.iter().find(|(f, _)| *f == k) else {
        let known: Vec<&str> = crate::scenario::AGENT_FLAGS
            .iter()
            .map(|(f, _)| *f)
            .collect();
        return Err(format!(
            "unknown agent option `{k}`; known: {}",
            known.join(", ")
        ));
    };
    if !allowed.contains(&v) {
        return Err(format!("{k}: `{v}` is not one of {}", allowed.join(", ")));
    }
    Ok((k.to_string(), v.to_string()))
}

/// The agent flags that give a scenario's `requires:` features and `agent:` flags (what
/// an agent started for the scenario's cluster needs).
pub fn scenario_agent_flags(scenario: &Scenario) -> Vec<(String, String)> {
    let mut flags = Vec::new();
    for r in &scenario.requires {
        match r.as_str() {
            "host-firewall" => flags.push(("enable-host-firewall".into(), "true".into())),
            "cidr-match-nodes" => flags.push(("policy-cidr-match-mode".into(), "nodes".into())),
            _ => {}
        }
    }
    flags.extend(scenario.agent.iter().cloned());
    flags
}

/// Agent options of a scenario: its cluster name, `requires:` features and `agent:` flags.
pub fn scenario_options(scenario: &Scenario) -> Options {
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
    options
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
        diagnostics: Vec<Diagnostic>,
    ) -> World {
        World::from_resources(scenario, &resources, diagnostics)
    }

    /// Like [`World::from_parts`], leaving the resources to the caller (resources other than
    /// policies and CIDR groups are skipped).
    pub fn from_resources<'r, I>(
        scenario: Scenario,
        resources: I,
        mut diagnostics: Vec<Diagnostic>,
    ) -> World
    where
        I: IntoIterator<Item = &'r (FileId, Resource)>,
        I::IntoIter: Clone,
    {
        let options = scenario_options(&scenario);
        let policy_set = PolicySet::build(resources, &options, &scenario.secrets);
        diagnostics.extend(policy_set.diagnostics().map(|(_, d)| d.clone()));
        let engine = load_engine(&scenario, &policy_set, &options);
        let external_names = scenario
            .external
            .iter()
            .map(|e| engine.state().dns_names().iter().position(|n| *n == e.name))
            .collect();
        // First endpoint wins for a name, as a linear search would.
        let mut endpoint_by_name: HashMap<String, usize> = HashMap::new();
        for (i, e) in scenario.endpoints.iter().enumerate() {
            endpoint_by_name.entry(e.name.clone()).or_insert(i);
        }
        World {
            scenario,
            options,
            policy_set,
            diagnostics,
            engine,
            endpoint_by_name,
            external_names,
        }
    }

    /// Lets flows name an endpoint by another name (a workload's `namespace/name` for the
    /// first of its pods). An existing name is never shadowed.
    pub fn add_alias(&mut self, alias: String, endpoint: &str) {
        if let Some(&i) = self.endpoint_by_name.get(endpoint) {
            self.endpoint_by_name.entry(alias).or_insert(i);
        }
    }

    fn state(&self) -> &Snapshot {
        self.engine.state()
    }

    pub fn identities(&self) -> &IdentityTable {
        self.state().identities()
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
            return self.state().endpoint_party(*i);
        }
        if let Some(i) = s.nodes.iter().position(|n| n.name == name) {
            return self.state().node_party(i);
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
        Some(self.state().address_party(ip))
    }

    /// A party in the engine's terms (external names indexed by the engine's DNS names).
    fn to_engine(&self, p: Party) -> Party {
        match p {
            Party::World {
                addr,
                learned_as: Some(i),
            } => Party::World {
                addr,
                learned_as: self.external_names.get(i).copied().flatten(),
            },
            other => other,
        }
    }

    /// The identity of `p` as seen on `observer`'s node.
    pub fn identity_of(&self, p: Party, observer: Option<usize>, learned: bool) -> IdentityId {
        self.state()
            .identity_of(self.to_engine(p), observer, learned)
    }

    /// The resolved policy of a party's endpoint, if Cilium manages it.
    pub fn policy(&self, p: Party, direction: Direction) -> Option<DirectionRef> {
        self.state().policy(p, direction)
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
        self.state().decide(
            self.to_engine(from),
            self.to_engine(to),
            protocol,
            port,
            req,
            learned,
        )
    }

    pub fn kube_dns(&self) -> Option<Party> {
        self.state().kube_dns()
    }

    /// A DNS query from `from` to kube-dns over UDP/53.
    pub fn dns_query(&self, from: Party, qname: &str) -> Option<FlowDecision> {
        self.state().dns_query(self.to_engine(from), qname)
    }
}

/// Feeds an engine from a scenario: namespaces, nodes, Services, endpoints, the addresses
/// flows name, DNS answers (`external:`), then the policies.
pub fn load_engine(scenario: &Scenario, policy_set: &PolicySet, options: &Options) -> Engine {
    let mut engine = Engine::new(options.clone());
    for ns in &scenario.namespaces {
        engine.upsert_namespace(&ns.name, ns.labels.clone());
    }
    for n in &scenario.nodes {
        engine.upsert_node(engine::NodeSpec {
            name: n.name.clone(),
            ip: n.ip,
            cilium: n.cilium,
            labels: n.labels.clone(),
        });
    }
    for svc in &scenario.services {
        engine.upsert_service(engine::ServiceSpec {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            labels: svc.labels.clone(),
            selector: svc.selector.clone(),
            addresses: svc.addresses.clone(),
        });
    }
    for (id, labels) in &scenario.cluster_identities {
        let labels = labels
            .iter()
            .map(|(k, v)| {
                let (source, key) = k.split_once(':').unwrap_or(("unspec", k.as_str()));
                Label::new(source, key, v)
            })
            .collect();
        engine.assign_identity(LabelSet::new(labels), *id);
    }
    engine.reserve_endpoints(scenario.endpoints.len());
    for ep in &scenario.endpoints {
        engine.add_endpoint(endpoint_spec(ep));
    }
    for ext in &scenario.external {
        engine.dns_answer(&ext.name, &ext.ips);
    }
    for flow in &scenario.flows {
        for name in [Some(&flow.from), flow.to.as_ref()].into_iter().flatten() {
            if let Some(ip) = address_of_name(name) {
                if !matches!(engine.state().address_party(ip), Party::World { .. }) {
                    continue;
                }
                if scenario
                    .endpoints
                    .iter()
                    .any(|e| e.host_network && e.ip == ip)
                {
                    continue;
                }
                engine.add_world_address(ip);
            }
        }
    }
    engine.add_world_address(WORLD_ADDR);
    for t in &policy_set.policies {
        if t.valid {
            engine.upsert_policy(t.clone());
        }
    }
    engine
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
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => self
                .state()
                .endpoint_identity(i)
                .and_then(|id| self.identities().get(id).cloned()),
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

/// Agent flags from a scenario's `agent:` map (values already validated by the decoder,
/// or by [`parse_agent_flag`]).
pub fn apply_agent_flags(options: &mut Options, flags: &[(String, String)]) {
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
