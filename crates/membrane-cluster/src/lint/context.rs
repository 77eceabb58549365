//! What every check reads: the loaded cluster seen from lint (`Cx`), its endpoints grouped by
//! identity and by resolved policy, and its policies (`PolicyView`). Built once per `lint()`
//! call, from what `manifests::load` already parsed, so that the checks only look things up.

use super::policy_view::{PolicyView, RawPolicy};
use super::wording::names_list;
use crate::manifests::Loaded;
use crate::scenario::{ContainerPort, EndpointSpec};
use crate::world::{Party, World};
use membrane_policy::api::Resource;
use membrane_policy::engine::DirectionRef;
use membrane_policy::identity::IdentityId;
use membrane_policy::labels::{LabelSet, Selector};
use membrane_policy::model::{self, Direction, Entry, FileId, Peers};
use membrane_policy::resolve::{DirectionPolicy, peer_selects};
use membrane_policy::yaml::{Node, Span, Value};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// An endpoint of the loaded cluster with its identity.
pub(super) struct Ep<'a> {
    pub(super) spec: &'a EndpointSpec,
    pub(super) party: Party,
    pub(super) id: IdentityId,
    /// Its identity's labels (shared by every endpoint of the identity).
    pub(super) labels: &'a LabelSet,
    /// A pod (not a reserved-identity endpoint such as a Gateway's proxy).
    pub(super) pod: bool,
    /// Endpoints with the same key have the same resolved policy (identity and container
    /// ports, and the node when CIDR selectors may select nodes).
    pub(super) pkey: usize,
}

impl Ep<'_> {
    pub(super) fn name(&self) -> &str {
        &self.spec.name
    }

    pub(super) fn ports(&self) -> &[ContainerPort] {
        &self.spec.ports
    }
}

/// An object of any kind, for duplicate detection.
pub(super) struct Object {
    pub(super) file: FileId,
    pub(super) kind: String,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) span: Span,
}

/// The loaded cluster as the checks see it.
pub(super) struct Cx<'a> {
    pub(super) loaded: &'a Loaded,
    pub(super) world: &'a World,
    pub(super) policies: Vec<PolicyView<'a>>,
    pub(super) objects: Vec<Object>,
    pub(super) eps: Vec<Ep<'a>>,
    /// Endpoints by identity: a selector is matched once per identity.
    pub(super) groups: Vec<(LabelSet, Vec<usize>)>,
    /// Policies by the address of their origin (rules share it with their policy).
    pub(super) view_index: HashMap<usize, usize>,
    /// kube-dns: its endpoint index in `eps` and identity.
    pub(super) dns: Option<(usize, IdentityId)>,
    /// Whether the manifests describe a cluster (workloads), so that "selects nothing" means
    /// something.
    pub(super) cluster_known: bool,
    /// Nodes come from the input (not the loader's stand-in node).
    pub(super) nodes_declared: bool,
    /// Endpoints the input declares (not the loader's stand-in kube-dns), by name.
    pub(super) declared: BTreeSet<String>,
    /// Endpoints whose address the input gives (`status.podIP`, scenario files); the others
    /// have addresses the loader synthesized.
    pub(super) declared_addr: BTreeSet<String>,
    /// How many distinct policy keys (`Ep::pkey`) there are.
    pub(super) pkey_count: usize,
    /// Declared pods with their addresses, for the CIDR checks (built on first use).
    pub(super) cidr_pods: std::cell::OnceCell<Vec<(&'a str, IpAddr)>>,
    /// Every pod's container ports by name: (pod, number, protocol), built on first use.
    pub(super) port_defs: std::cell::OnceCell<PortDefs<'a>>,
}

/// Container ports by name: (pod, number, protocol in upper case).
type PortDefs<'a> = HashMap<&'a str, Vec<(&'a str, u16, String)>>;

/// Kinds without a namespace: their duplicates are keyed by name only.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "CiliumClusterwideNetworkPolicy",
    "CiliumCIDRGroup",
    "GatewayClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "IngressClass",
    "CiliumClusterwideEnvoyConfig",
    "ConnectivityTest",
];

impl<'a> Cx<'a> {
    pub(super) fn new(loaded: &'a Loaded) -> Self {
        let world = &loaded.world;
        // The resources as `load` decoded them: the files are not parsed again.
        let mut objects = Vec::new();
        let mut raw_policies = Vec::new();
        let mut nodes_declared = false;
        let mut declared_addr = BTreeSet::new();
        for (file, r) in &loaded.index.resources {
            let file = *file;
            let (kind, meta_ns, name) = match &r {
                Resource::Cilium(p) => (
                    p.kind.as_str().to_string(),
                    p.meta.namespace.as_ref().map(|n| n.value.clone()),
                    p.meta.name.as_ref().map(|n| (n.value.clone(), n.span)),
                ),
                Resource::Kube(p) => (
                    "NetworkPolicy".to_string(),
                    p.meta.namespace.as_ref().map(|n| n.value.clone()),
                    p.meta.name.as_ref().map(|n| (n.value.clone(), n.span)),
                ),
                Resource::CidrGroup(g) => (
                    "CiliumCIDRGroup".to_string(),
                    None,
                    g.meta.name.as_ref().map(|n| (n.value.clone(), n.span)),
                ),
                Resource::Other { kind, node, .. } => {
                    let meta = node.get("metadata");
                    let name = meta
                        .and_then(|m| m.get("name"))
                        .and_then(|n| n.scalar_text().map(|t| (t.to_string(), n.span)));
                    let ns = meta
                        .and_then(|m| m.get("namespace"))
                        .and_then(Node::scalar_text)
                        .map(str::to_string);
                    if kind == "Node" {
                        nodes_declared = true;
                    }
                    let pod_ip = node.get("status").and_then(|s| s.get("podIP"));
                    if let (true, Some(_), Some((n, _))) = (kind == "Pod", pod_ip, &name) {
                        let ns = ns.as_deref().unwrap_or("default");
                        declared_addr.insert(format!("{ns}/{n}"));
                    }
                    (kind.clone(), ns, name)
                }
            };
            if let Some((name, span)) = name {
                let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
                    String::new()
                } else {
                    meta_ns.unwrap_or_else(|| "default".into())
                };
                objects.push(Object {
                    file,
                    kind,
                    namespace,
                    name,
                    span,
                });
            }
            match r {
                Resource::Cilium(p) => raw_policies.push((file, RawPolicy::Cilium(p))),
                Resource::Kube(p) => raw_policies.push((file, RawPolicy::Kube(p))),
                _ => {}
            }
        }
        let mut policies = Vec::new();
        // Every policy as written (a replaced copy too: its mistakes are in its file).
        let written = loaded.as_written.as_ref().unwrap_or(&world.policy_set);
        for (t, (file, raw)) in written.policies.iter().zip(raw_policies) {
            let span = match &raw {
                RawPolicy::Cilium(p) => p.span,
                RawPolicy::Kube(p) => p.span,
            };
            if t.origin.file == file && t.origin.span == span {
                policies.push(PolicyView { t, raw, file });
            }
        }

        let mut eps = Vec::new();
        type PolicyKey = (IdentityId, Vec<(u16, String, String)>, String);
        let mut pkeys: HashMap<PolicyKey, usize> = HashMap::new();
        for spec in &world.scenario.endpoints {
            let Some(party) = world.party(&spec.name) else {
                continue;
            };
            let pod = match party {
                Party::Pod(_) => true,
                Party::Entity { .. } => false,
                _ => continue,
            };
            let id = world.identity_of(party, None, false);
            let Some(identity) = world.identities().get(id) else {
                continue;
            };
            let ports: Vec<(u16, String, String)> = spec
                .ports
                .iter()
                .map(|c| (c.port, c.name.clone(), c.protocol.to_ascii_uppercase()))
                .collect();
            let node = if world.options.cidr_match_nodes {
                spec.node.clone()
            } else {
                String::new()
            };
            let next = pkeys.len();
            let pkey = *pkeys.entry((id, ports, node)).or_insert(next);
            eps.push(Ep {
                spec,
                party,
                id,
                labels: &identity.labels,
                pod,
                pkey,
            });
        }
        let pkey_count = pkeys.len();
        let dns = world.kube_dns().and_then(|party| {
            let i = eps.iter().position(|e| e.party == party)?;
            Some((i, eps[i].id))
        });
        // A scenario file declares its endpoints, nodes and addresses itself.
        let scenario_mode = world.scenario.name != "manifests";
        let mut declared: BTreeSet<String> = loaded
            .workloads
            .iter()
            .map(|w| w.endpoint.clone())
            .collect();
        if scenario_mode {
            for e in &world.scenario.endpoints {
                declared.insert(e.name.clone());
                declared_addr.insert(e.name.clone());
            }
        }
        let cluster_known = !declared.is_empty();
        let mut group_of: HashMap<IdentityId, usize> = HashMap::new();
        let mut groups: Vec<(LabelSet, Vec<usize>)> = Vec::new();
        for (i, e) in eps.iter().enumerate() {
            match group_of.get(&e.id) {
                Some(&g) => groups[g].1.push(i),
                None => {
                    group_of.insert(e.id, groups.len());
                    groups.push((e.labels.clone(), vec![i]));
                }
            }
        }
        let view_index = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (std::sync::Arc::as_ptr(&p.t.origin) as usize, i))
            .collect();
        let nodes_declared = nodes_declared || scenario_mode;
        Cx {
            loaded,
            world,
            policies,
            objects,
            eps,
            groups,
            view_index,
            dns,
            cluster_known,
            nodes_declared,
            declared,
            declared_addr,
            cidr_pods: std::cell::OnceCell::new(),
            port_defs: std::cell::OnceCell::new(),
            pkey_count,
        }
    }

    /// The pods that define a container port named `name` (egress names resolve across the
    /// cluster, §9.5): (pod, number, protocol in upper case).
    pub(super) fn named_port_defs(&self, name: &str) -> &[(&'a str, u16, String)] {
        let all = self.port_defs.get_or_init(|| {
            let mut all: PortDefs<'a> = HashMap::new();
            for e in &self.world.scenario.endpoints {
                for c in e.ports.iter().filter(|c| !c.name.is_empty()) {
                    all.entry(c.name.as_str()).or_default().push((
                        e.name.as_str(),
                        c.port,
                        c.protocol.to_ascii_uppercase(),
                    ));
                }
            }
            all
        });
        all.get(name).map_or(&[], Vec::as_slice)
    }

    pub(super) fn file_name(&self, file: FileId) -> &str {
        self.loaded.file_name(file)
    }

    /// The mapping node that starts at `span`.
    pub(super) fn map_at(&self, file: FileId, span: Span) -> Option<&Node> {
        self.loaded
            .index
            .documents(file)
            .iter()
            .find_map(|d| find_map(d, span))
    }

    /// Where `key` is written in the mapping that starts at `map_span`.
    pub(super) fn key_span(&self, file: FileId, map_span: Span, key: &str) -> Option<Span> {
        self.map_at(file, map_span)?
            .as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(k, _)| k.span)
    }

    /// Pods the selector selects.
    pub(super) fn selected_pods(&self, sel: &Selector) -> Vec<&Ep<'a>> {
        self.matching(sel).into_iter().filter(|e| e.pod).collect()
    }

    /// Endpoints whose identity the selector matches.
    pub(super) fn matching(&self, sel: &Selector) -> Vec<&Ep<'a>> {
        let mut out = Vec::new();
        for (labels, members) in &self.groups {
            if sel.matches(labels) {
                out.extend(members.iter().map(|i| &self.eps[*i]));
            }
        }
        out
    }

    /// Endpoints (pods and reserved-identity endpoints) a rule applies to.
    pub(super) fn subject_eps(&self, rule: &model::Rule) -> Vec<&Ep<'a>> {
        match &rule.subject {
            model::Subject::Endpoints(sel) => self.matching(sel),
            model::Subject::Nodes(_) => vec![],
        }
    }

    /// The identities an entry's peers select (`None`: every peer).
    pub(super) fn peer_ids(&self, entry: &Entry) -> Option<Vec<IdentityId>> {
        match &entry.peers {
            Peers::Wildcard => None,
            Peers::Selectors(list) => Some(
                self.world
                    .identities()
                    .iter()
                    .filter(|i| list.iter().any(|s| peer_selects(s, i, &self.world.options)))
                    .map(|i| i.id)
                    .collect(),
            ),
        }
    }

    /// Pods whose identity is among `ids`.
    pub(super) fn pods_with_ids(&self, ids: &[IdentityId]) -> Vec<&Ep<'a>> {
        let ids: BTreeSet<IdentityId> = ids.iter().copied().collect();
        self.eps
            .iter()
            .filter(|e| e.pod && ids.contains(&e.id))
            .collect()
    }

    /// Endpoints grouped by their resolved policy for a direction (equal identities and
    /// ports share one), so that each policy is examined once.
    pub(super) fn by_policy<'e>(
        &self,
        eps: &[&'e Ep<'a>],
        d: Direction,
    ) -> Vec<(DirectionRef, Vec<&'e Ep<'a>>)> {
        // Policy keys are dense indexes: group without a map (this runs once per rule over
        // every endpoint it selects).
        let mut by_key: Vec<Vec<&'e Ep<'a>>> = vec![Vec::new(); self.pkey_count];
        for ep in eps {
            if let Some(g) = by_key.get_mut(ep.pkey) {
                g.push(*ep);
            }
        }
        let mut index: HashMap<*const DirectionPolicy, usize> = HashMap::new();
        let mut out: Vec<(DirectionRef, Vec<&'e Ep<'a>>)> = Vec::new();
        for group in by_key.into_iter().filter(|g| !g.is_empty()) {
            let Some(pol) = self.policy(group[0], d) else {
                continue;
            };
            match index.get(&std::ptr::from_ref::<DirectionPolicy>(&pol)) {
                Some(&i) => out[i].1.extend(group),
                None => {
                    index.insert(std::ptr::from_ref::<DirectionPolicy>(&pol), out.len());
                    out.push((pol, group));
                }
            }
        }
        out
    }

    pub(super) fn policy(&self, ep: &Ep<'_>, d: Direction) -> Option<DirectionRef> {
        self.world.policy(ep.party, d)
    }

    pub(super) fn view_of(
        &self,
        origin: &std::sync::Arc<model::PolicyOrigin>,
    ) -> Option<&PolicyView<'a>> {
        let ptr = std::sync::Arc::as_ptr(origin) as usize;
        match self.view_index.get(&ptr) {
            Some(i) => self.policies.get(*i),
            None => self.policies.iter().find(|p| *p.t.origin == **origin),
        }
    }

    /// Workloads as the user named them (`namespace/name`), for messages.
    pub(super) fn workload_names(&self, eps: &[&Ep<'_>]) -> String {
        // Only what will be shown is formatted: `eps` may be every pod of a big cluster.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut shown = Vec::new();
        for e in eps {
            if seen.insert(e.name()) && shown.len() < 4 {
                shown.push(format!("`{}`", e.name()));
            }
        }
        if seen.len() > shown.len() {
            shown.truncate(3);
            return format!("{} and {} more", shown.join(", "), seen.len() - 3);
        }
        names_list(shown)
    }
}

/// The mapping node under `n` that starts at `span`.
fn find_map(n: &Node, span: Span) -> Option<&Node> {
    if span.offset < n.span.offset {
        return None;
    }
    if n.span.offset == span.offset && n.span.line == span.line && n.as_map().is_some() {
        return Some(n);
    }
    match &n.value {
        Value::Seq(items) => items.iter().find_map(|i| find_map(i, span)),
        Value::Map(entries) => entries.iter().find_map(|(_, v)| find_map(v, span)),
        _ => None,
    }
}
