//! Builds a `World` from generated text and enumerates side decisions: every subject
//! endpoint, both directions, every identity of the cluster as the peer, every probe.

use super::model::{Cluster, Policy, policies_yaml};
use super::reference::{RefSide, RefSubject, Reference};
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_policy::identity::{self, Identity, IdentityId, IdentityKind};
use membrane_policy::model::{Direction, Peers, PortValue, Protocol, Rule};
use membrane_policy::options::{EnforcementMode, Options};
use membrane_policy::resolve::{DirectionPolicy, Repository, Subject, host_labels, peer_selects};
use membrane_policy::verdict::{HttpRequest, L7Request, Outcome, SideDecision, decide_side};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Agent options the properties vary (the rest stay at Cilium's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    pub enforcement: EnforcementMode,
    pub allow_localhost: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            enforcement: EnforcementMode::Default,
            allow_localhost: true,
        }
    }
}

/// One (protocol, port, request) a flow may carry.
#[derive(Debug, Clone)]
pub struct Probe {
    pub protocol: Protocol,
    pub port: u16,
    pub request: L7Request,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.protocol {
            Protocol::Icmp | Protocol::Icmpv6 => write!(f, "{} type {}", self.protocol, self.port)?,
            p => write!(f, "{}/{}", self.port, p)?,
        }
        match &self.request {
            L7Request::Http(h) => write!(f, " HTTP {} {}", h.method, h.path),
            L7Request::Dns { qname } => write!(f, " DNS {qname}"),
            _ => Ok(()),
        }
    }
}

pub fn http(method: &str, path: &str) -> L7Request {
    L7Request::Http(HttpRequest {
        method: method.into(),
        path: path.into(),
        host: String::new(),
        headers: vec![],
    })
}

pub fn dns(qname: &str) -> L7Request {
    L7Request::Dns {
        qname: qname.into(),
    }
}

pub fn probe(protocol: Protocol, port: u16, request: L7Request) -> Probe {
    Probe {
        protocol,
        port,
        request,
    }
}

/// Ports and requests around every value the generators write: exact ports, both ends of
/// each range and their neighbours, named-port targets, DNS and HTTP requests that match
/// some rules and not others, and the ICMP types.
pub fn fixed_probes() -> Vec<Probe> {
    use Protocol::*;
    let none = || L7Request::None;
    vec![
        probe(Tcp, 80, none()),
        probe(Tcp, 80, http("GET", "/")),
        probe(Tcp, 80, http("POST", "/api/x")),
        probe(Tcp, 80, http("HEAD", "/public")),
        probe(Tcp, 8080, http("GET", "/public")),
        probe(Tcp, 8080, http("PUT", "/")),
        probe(Tcp, 8045, http("GET", "/api/v1")),
        probe(Tcp, 8000, none()),
        probe(Tcp, 8090, http("POST", "/")),
        probe(Tcp, 8091, none()),
        probe(Tcp, 88, none()),
        probe(Tcp, 89, none()),
        probe(Tcp, 443, none()),
        probe(Tcp, 1024, none()),
        probe(Tcp, 9090, none()),
        probe(Tcp, 53, dns("example.com")),
        probe(Tcp, 65535, none()),
        probe(Udp, 53, none()),
        probe(Udp, 53, dns("example.com")),
        probe(Udp, 53, dns("www.example.com")),
        probe(Udp, 53, dns("api.example.com")),
        probe(Udp, 53, dns("other.org")),
        probe(Udp, 5353, dns("example.com")),
        probe(Udp, 55, none()),
        probe(Udp, 8080, none()),
        probe(Sctp, 80, none()),
        probe(Sctp, 53, dns("other.org")),
        probe(Icmp, 8, none()),
        probe(Icmp, 0, none()),
        probe(Icmp, 3, none()),
        probe(Icmpv6, 128, none()),
    ]
}

/// Probes on both sides of every port range the rules contain (sanitized: ANY is already
/// TCP+UDP+SCTP), where an off-by-one in the prefix decomposition would show.
pub fn boundary_probes(rules: &[Rule]) -> Vec<Probe> {
    let mut seen = std::collections::BTreeSet::new();
    for r in rules {
        for e in &r.entries {
            for pr in e.ports.iter().flatten() {
                for spec in &pr.ports {
                    if let PortValue::Range(lo, hi) = spec.port {
                        if (lo, hi) == (0, 65535) {
                            continue;
                        }
                        for p in [lo.checked_sub(1), Some(lo), Some(hi), hi.checked_add(1)]
                            .into_iter()
                            .flatten()
                        {
                            seen.insert((spec.protocol, p));
                        }
                    }
                }
            }
        }
    }
    seen.into_iter()
        .map(|(protocol, port)| {
            let request = if protocol == Protocol::Tcp && port % 2 == 0 {
                http("GET", "/public")
            } else {
                L7Request::None
            };
            probe(protocol, port, request)
        })
        .collect()
}

/// An endpoint whose policy is resolved.
#[derive(Debug, Clone)]
pub struct SubjectEp {
    pub name: String,
    pub identity: Identity,
    pub is_host: bool,
    pub own_ports: Vec<(String, Protocol, u16)>,
    pub node_addrs: Vec<IpAddr>,
}

pub struct Built {
    pub text: String,
    pub world: World,
    pub rules: Vec<Rule>,
    pub options: Options,
    pub repo: Repository,
    pub subjects: Vec<SubjectEp>,
    pub cluster_ports: Vec<(String, Protocol, u16)>,
}

fn protocol_of(text: &str) -> Protocol {
    Protocol::parse(text).unwrap_or(Protocol::Tcp)
}

/// Scenario text → `World` (through `parse_scenario`, as the CLI does), then a repository
/// with the knobs applied. Any error diagnostic is an error here: the generators only write
/// valid policies, so an error is a generator (or validation) bug worth seeing.
pub fn build(cluster: &Cluster, policies: &[Policy], knobs: Knobs) -> Result<Built, String> {
    build_text(cluster.scenario_yaml(&policies_yaml(policies)), knobs)
}

pub fn build_text(text: String, knobs: Knobs) -> Result<Built, String> {
    let scenario = match parse_scenario(&text) {
        Ok(s) => s,
        Err(d) => return Err(format!("generated scenario does not parse: {d:?}\n{text}")),
    };
    let world = World::from_scenario(scenario, 0);
    let errors: Vec<&str> = world
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.message.as_str())
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "generated policies are invalid: {errors:?}\n{text}"
        ));
    }
    let options = Options {
        enforcement: knobs.enforcement,
        allow_localhost: knobs.allow_localhost,
        ..world.options.clone()
    };
    let mut cluster_ports = Vec::new();
    for ep in &world.scenario.endpoints {
        for p in &ep.ports {
            if !p.name.is_empty() {
                cluster_ports.push((p.name.clone(), protocol_of(&p.protocol), p.port));
            }
        }
    }
    let rules = world.policy_set.rules();
    let repo = Repository::new(
        rules.clone(),
        options.clone(),
        world.identities().clone(),
        &cluster_ports,
    );
    let mut subjects = Vec::new();
    for (i, ep) in world.scenario.endpoints.iter().enumerate() {
        if ep.host_network {
            continue;
        }
        let id = world.identity_of(membrane_cluster::world::Party::Pod(i), None, false);
        let Some(identity) = world.identities().get(id).cloned() else {
            continue;
        };
        let node_addrs = world
            .scenario
            .nodes
            .iter()
            .filter(|n| n.name == ep.node)
            .map(|n| n.ip)
            .collect();
        subjects.push(SubjectEp {
            name: ep.name.clone(),
            identity,
            is_host: false,
            own_ports: ep
                .ports
                .iter()
                .map(|c| (c.name.clone(), protocol_of(&c.protocol), c.port))
                .collect(),
            node_addrs,
        });
    }
    if options.host_firewall {
        for n in &world.scenario.nodes {
            subjects.push(SubjectEp {
                name: format!("host {}", n.name),
                identity: Identity {
                    id: identity::HOST,
                    labels: host_labels(&n.labels),
                    kind: IdentityKind::Reserved,
                    addr: None,
                    fqdn_names: vec![],
                },
                is_host: true,
                own_ports: vec![],
                node_addrs: vec![n.ip],
            });
        }
    }
    Ok(Built {
        text,
        world,
        rules,
        options,
        repo,
        subjects,
        cluster_ports,
    })
}

/// (subject index, direction, peer identity, probe index)
pub type FlowKey = (usize, Direction, IdentityId, usize);

pub const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

impl Built {
    pub fn resolve(&self, subject: &SubjectEp, d: Direction) -> DirectionPolicy {
        let s = Subject {
            identity: &subject.identity,
            is_host: subject.is_host,
            local_node_addrs: &subject.node_addrs,
            own_ports: &subject.own_ports,
        };
        self.repo.resolve(&s, d)
    }

    pub fn reference(&self) -> Reference<'_> {
        Reference {
            rules: &self.rules,
            identities: self.world.identities(),
            options: &self.options,
            cluster_ports: &self.cluster_ports,
        }
    }

    /// Peer identities that every peer selector of the rules treats alike (and that are
    /// alike for allow-localhost) decide every flow alike, in the engine as in the
    /// reference: only one per class needs checking. `seed` picks which one, so that over
    /// many cases every identity number gets its turn. `also` adds the selectors of other
    /// rule sets that will be compared with these (their classes are then refined).
    pub fn peer_representatives(&self, seed: u64, also: &[&Built]) -> Vec<IdentityId> {
        let mut selectors = Vec::new();
        for b in std::iter::once(self).chain(also.iter().copied()) {
            for r in &b.rules {
                for e in &r.entries {
                    if let Peers::Selectors(list) = &e.peers {
                        selectors.extend(list.iter());
                    }
                }
            }
        }
        let mut classes: BTreeMap<Vec<bool>, Vec<IdentityId>> = BTreeMap::new();
        for i in self.world.identities().iter() {
            let mut sig = vec![i.id == identity::HOST];
            sig.extend(selectors.iter().map(|s| peer_selects(s, i, &self.options)));
            classes.entry(sig).or_default().push(i.id);
        }
        classes
            .values()
            .map(|members| members[(seed % members.len() as u64) as usize])
            .collect()
    }

    /// Every subject, both directions, the given peers and probe indexes.
    pub fn flow_keys(&self, peers: &[IdentityId], probes: &[usize]) -> Vec<FlowKey> {
        let mut keys = Vec::new();
        for si in 0..self.subjects.len() {
            for d in DIRECTIONS {
                for peer in peers {
                    for pi in probes {
                        keys.push((si, d, *peer, *pi));
                    }
                }
            }
        }
        keys
    }

    /// The engine's decisions: one resolution per (subject, direction), one lookup per flow.
    pub fn engine_outcomes(
        &self,
        keys: &[FlowKey],
        probes: &[Probe],
    ) -> BTreeMap<FlowKey, Outcome> {
        let mut out = BTreeMap::new();
        let mut cached: Option<((usize, Direction), DirectionPolicy)> = None;
        for key in keys {
            let (si, d, peer, pi) = *key;
            if cached.as_ref().is_none_or(|(k, _)| *k != (si, d)) {
                cached = Some(((si, d), self.resolve(&self.subjects[si], d)));
            }
            let Some((_, policy)) = &cached else { continue };
            let p = &probes[pi];
            let dec = decide_side(policy, peer, p.protocol, p.port, &p.request);
            out.insert(*key, dec.outcome);
        }
        out
    }

    /// The engine's full decision for one flow (for failure messages).
    pub fn engine_decision(&self, key: FlowKey, probes: &[Probe]) -> SideDecision {
        let (si, d, peer, pi) = key;
        let policy = self.resolve(&self.subjects[si], d);
        let p = &probes[pi];
        decide_side(&policy, peer, p.protocol, p.port, &p.request)
    }

    /// The reference's verdicts for the same flows.
    pub fn reference_outcomes(
        &self,
        keys: &[FlowKey],
        probes: &[Probe],
    ) -> BTreeMap<FlowKey, Outcome> {
        let reference = self.reference();
        let mut out = BTreeMap::new();
        let mut cached: Option<((usize, Direction), RefSide<'_>)> = None;
        for key in keys {
            let (si, d, peer, pi) = *key;
            let subject = self.ref_subject(&self.subjects[si]);
            if cached.as_ref().is_none_or(|(k, _)| *k != (si, d)) {
                cached = Some(((si, d), reference.side(&subject, d)));
            }
            let Some((_, side)) = &cached else { continue };
            let Some(peer) = self.world.identities().get(peer) else {
                continue;
            };
            let p = &probes[pi];
            let o = reference.decide_in(side, &subject, d, peer, p.protocol, p.port, &p.request);
            out.insert(*key, o);
        }
        out
    }

    pub fn ref_subject<'s>(&self, subject: &'s SubjectEp) -> RefSubject<'s> {
        RefSubject {
            labels: &subject.identity.labels,
            is_host: subject.is_host,
            own_ports: &subject.own_ports,
        }
    }

    /// A readable description of one flow for failure messages.
    pub fn describe(&self, key: FlowKey, probes: &[Probe]) -> String {
        let (si, d, peer, pi) = key;
        let peer_name = self
            .world
            .identities()
            .get(peer)
            .map_or_else(|| peer.to_string(), |i| format!("{} ({})", i.name(), i.id));
        let subject = &self.subjects[si];
        let what = match d {
            Direction::Ingress => format!("{peer_name} -> {}", subject.name),
            Direction::Egress => format!("{} -> {peer_name}", subject.name),
        };
        format!("{d} of {}: {what} {}", subject.name, probes[pi])
    }
}
