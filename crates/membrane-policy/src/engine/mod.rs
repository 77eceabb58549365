//! The engine: one owner for the whole pipeline after parsing — identities, nodes,
//! endpoints, Services, DNS answers, agent options and the policy repository — told what
//! changed and answering with what that changed in the endpoints' policy maps.
//!
//! Writers hold an [`Engine`]; readers take [`Snapshot`]s, immutable and `Send + Sync`,
//! behind an `Arc`. The engine is copy-on-write: taking a snapshot costs one reference
//! count, and the next change copies the state once if a reader still holds it.
//!
//! Resolution is lazy per endpoint (a one-shot analysis only pays for the endpoints its
//! flows touch) and incremental once computed: a change set covers every endpoint whose
//! policy has been computed, so a node agent calls [`Engine::resolve_endpoint`] for its own
//! endpoints and then applies the deltas it is given.

mod change;
mod flow;
mod inputs;

pub use change::{ChangeSet, SubjectChange};
pub use flow::{DirectionRef, Party};
pub use inputs::{EndpointSpec, NamedPort, NodeSpec, ServiceSpec};

use crate::identity::{self, Identity, IdentityId, IdentityKind, IdentityTable};
use crate::labels::{KEY_NAMESPACE, Label, LabelSet, Operator, Selector, SelectorKey};
use crate::model::{Direction, PeerSelector, Peers, PolicyOrigin, Protocol, Rule};
use crate::options::Options;
use crate::resolve::{
    DirectionPolicy, EntryRef, MapDelta, PartCache, PeerPart, Repository, Subject, host_labels,
};
use crate::translate::Translated;
// Keys are ids, addresses and short names hashed per endpoint: FxHash, not SipHash.
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

/// An endpoint's handle (stable until the endpoint is removed).
pub type EndpointId = usize;

/// A policy's identity in the repository: kind, namespace and name, like the API server's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyKey {
    pub fn of(origin: &PolicyOrigin) -> PolicyKey {
        PolicyKey {
            kind: origin.kind.short(),
            namespace: origin.namespace.clone(),
            name: origin.name.clone(),
        }
    }
}

/// Both directions of one endpoint's resolved policy.
#[derive(Debug, Clone)]
pub struct EndpointPolicy {
    pub ingress: DirectionPolicy,
    pub egress: DirectionPolicy,
}

impl EndpointPolicy {
    pub fn direction(&self, d: Direction) -> &DirectionPolicy {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    fn direction_mut(&mut self, d: Direction) -> &mut DirectionPolicy {
        match d {
            Direction::Ingress => &mut self.ingress,
            Direction::Egress => &mut self.egress,
        }
    }
}

fn add_user(users: &mut Arc<Vec<EndpointId>>, endpoint: EndpointId) {
    let users = Arc::make_mut(users);
    if let Err(pos) = users.binary_search(&endpoint) {
        users.insert(pos, endpoint);
    }
}

/// Endpoints by address, oldest first (the first is the address's endpoint, as a linear
/// search would find it), in shards shared with older snapshots: a change copies one shard.
#[derive(Debug, Clone)]
struct IpIndex {
    shards: Vec<Arc<HashMap<IpAddr, Vec<EndpointId>>>>,
}

impl Default for IpIndex {
    fn default() -> Self {
        IpIndex {
            shards: vec![Arc::default(); 64],
        }
    }
}

impl IpIndex {
    fn shard(ip: IpAddr) -> usize {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let h = BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(ip);
        (h >> 58) as usize
    }

    fn first(&self, ip: IpAddr) -> Option<EndpointId> {
        self.shards[Self::shard(ip)].get(&ip)?.first().copied()
    }

    fn insert(&mut self, ip: IpAddr, id: EndpointId) {
        let owners = Arc::make_mut(&mut self.shards[Self::shard(ip)])
            .entry(ip)
            .or_default();
        if let Err(pos) = owners.binary_search(&id) {
            owners.insert(pos, id);
        }
    }

    fn remove(&mut self, ip: IpAddr, id: EndpointId) {
        let shard = Arc::make_mut(&mut self.shards[Self::shard(ip)]);
        if let Some(owners) = shard.get_mut(&ip) {
            owners.retain(|o| *o != id);
            if owners.is_empty() {
                shard.remove(&ip);
            }
        }
    }
}

/// What a pod's identity is derived from, besides its namespace's labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PodKey {
    namespace: String,
    service_account: String,
    /// Identity-relevant labels, sorted.
    labels: Vec<(String, String)>,
}

impl PodKey {
    /// The hash of a pod's key and its identity labels sorted, without copying them.
    fn hash_of(spec: &EndpointSpec) -> (u64, Vec<&(String, String)>) {
        use std::hash::{Hash, Hasher};
        let mut sorted: Vec<&(String, String)> = spec
            .labels
            .iter()
            .filter(|(k, _)| crate::labels::is_identity_label(k))
            .collect();
        sorted.sort_unstable();
        let mut h = rustc_hash::FxHasher::default();
        spec.namespace.hash(&mut h);
        spec.service_account.hash(&mut h);
        for (k, v) in &sorted {
            k.hash(&mut h);
            v.hash(&mut h);
        }
        (h.finish(), sorted)
    }

    fn matches(&self, spec: &EndpointSpec, sorted: &[&(String, String)]) -> bool {
        self.namespace == spec.namespace
            && self.service_account == spec.service_account
            && self.labels.len() == sorted.len()
            && self.labels.iter().zip(sorted).all(|(a, b)| a == *b)
    }

    fn of(spec: &EndpointSpec) -> PodKey {
        let mut labels: Vec<(String, String)> = spec
            .labels
            .iter()
            .filter(|(k, _)| crate::labels::is_identity_label(k))
            .cloned()
            .collect();
        labels.sort_unstable();
        PodKey {
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.clone(),
            labels,
        }
    }
}

/// A cheap key for parts computed within one change (the entries are compared on a hit).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LocalPartKey {
    direction: Direction,
    first: Option<EntryRef>,
    len: usize,
    sum: usize,
    ports: Vec<(String, Protocol, u16)>,
    wildcard: usize,
    is_host: bool,
}

/// What a resolved policy is computed for: endpoints with the same key share one policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum SubjectKey {
    /// A pod or reserved-identity endpoint: its identity, its named container ports and,
    /// when CIDR selectors may select nodes, its node's addresses.
    Endpoint {
        identity: IdentityId,
        ports: Vec<(String, Protocol, u16)>,
        node_addrs: Vec<IpAddr>,
    },
    /// A node's host endpoint (host firewall).
    Host { node: usize },
}

#[derive(Debug, Clone)]
struct SubjectState {
    key: SubjectKey,
    identity: Identity,
    is_host: bool,
    node_addrs: Vec<IpAddr>,
    ports: Vec<(String, Protocol, u16)>,
    /// Slots of the rules selecting it, sorted.
    rules: Vec<usize>,
    /// The endpoints using it.
    /// Sorted; shared with the change sets that name them.
    users: Arc<Vec<EndpointId>>,
    policy: OnceLock<Arc<EndpointPolicy>>,
}

impl SubjectState {
    fn subject(&self) -> Subject<'_> {
        Subject {
            identity: &self.identity,
            is_host: self.is_host,
            local_node_addrs: &self.node_addrs,
            own_ports: &self.ports,
        }
    }
}

#[derive(Debug, Clone)]
struct EndpointState {
    spec: EndpointSpec,
    /// 0 for a hostNetwork pod (it has its node's identity).
    identity: IdentityId,
    node: Option<usize>,
    subject: Option<usize>,
}

#[derive(Debug, Clone)]
struct StoredPolicy {
    translated: Translated,
    slots: Vec<usize>,
}

/// The engine's state; what readers see.
#[derive(Debug, Clone)]
pub struct Snapshot {
    revision: u64,
    options: Options,
    repo: Repository,
    policies: BTreeMap<PolicyKey, Arc<StoredPolicy>>,
    namespaces: HashMap<String, Vec<(String, String)>>,
    nodes: Vec<NodeSpec>,
    node_identities: Vec<Option<IdentityId>>,
    /// Nodes removed (their index stays reserved, for endpoints and parties that name it).
    node_gone: Vec<bool>,
    /// Shared with older snapshots: a change copies only the endpoint it touches.
    endpoints: Vec<Option<Arc<EndpointState>>>,
    /// Endpoints (not hostNetwork) by address, oldest first: the first one is the address's
    /// endpoint, as a linear search would find it.
    endpoint_by_ip: IpIndex,
    identity_users: HashMap<IdentityId, u32>,
    services: Vec<ServiceSpec>,
    /// Names learned from DNS answers (toFQDNs), in the order they were first seen.
    dns_names: Vec<String>,
    subjects: Vec<Option<SubjectState>>,
    subject_by_key: HashMap<SubjectKey, usize>,
    /// Per rule slot: the subjects its subject selector selects.
    rule_subjects: Vec<Vec<usize>>,
    /// Peer parts shared between policies (and snapshots).
    parts: Arc<PartCache>,
    node_by_name: HashMap<String, usize>,
    /// The identity of each pod label set seen (namespace, service account, labels), by
    /// hash, so that a pod whose set is known is placed without building any label.
    pod_identities: HashMap<u64, Vec<(PodKey, IdentityId)>>,
}

/// The writer: every change goes through it and returns what changed.
#[derive(Debug, Clone)]
pub struct Engine {
    state: Arc<Snapshot>,
}

impl Engine {
    pub fn new(options: Options) -> Engine {
        Engine {
            state: Arc::new(Snapshot {
                revision: 0,
                repo: Repository::new(Vec::new(), options.clone(), IdentityTable::default(), &[]),
                options,
                policies: BTreeMap::new(),
                namespaces: HashMap::default(),
                nodes: Vec::new(),
                node_identities: Vec::new(),
                node_gone: Vec::new(),
                endpoints: Vec::new(),
                endpoint_by_ip: IpIndex::default(),
                identity_users: HashMap::default(),
                services: Vec::new(),
                dns_names: Vec::new(),
                subjects: Vec::new(),
                subject_by_key: HashMap::default(),
                rule_subjects: Vec::new(),
                parts: Arc::new(PartCache::default()),
                node_by_name: HashMap::default(),
                pod_identities: HashMap::default(),
            }),
        }
    }

    /// The current state, for readers (cheap: one reference count).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.clone()
    }

    /// The current state, borrowed.
    pub fn state(&self) -> &Snapshot {
        &self.state
    }

    fn write(&mut self) -> &mut Snapshot {
        Arc::make_mut(&mut self.state)
    }

    fn finish(&mut self, mut changes: ChangeSet) -> ChangeSet {
        let s = self.write();
        s.revision += 1;
        changes.revision = s.revision;
        changes.normalize();
        changes
    }

    /// Gives pods with `labels` the identity number a cluster already gave them (its
    /// CiliumIdentity), so membrane shows and keys its maps by the cluster's own numbers. Call
    /// before the pods are added; false when the number or the labels are taken.
    pub fn assign_identity(&mut self, labels: LabelSet, id: IdentityId) -> bool {
        self.write().repo.identities_mut().assign(labels, id)
    }

    /// Sets a namespace's labels (part of its pods' identities).
    pub fn upsert_namespace(&mut self, name: &str, labels: Vec<(String, String)>) -> ChangeSet {
        let s = self.write();
        if s.namespaces.get(name) == Some(&labels) {
            return self.finish(ChangeSet::default());
        }
        s.namespaces.insert(name.to_string(), labels);
        for list in s.pod_identities.values_mut() {
            list.retain(|(k, _)| k.namespace != name);
        }
        // Every pod of the namespace gets a new identity: re-add them.
        let ids: Vec<EndpointId> = s
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().filter(|e| e.spec.namespace == name).map(|_| i))
            .collect();
        let mut changes = ChangeSet::default();
        for id in ids {
            if let Some(spec) = self.state.endpoint(id).cloned() {
                changes.merge(self.write().remove_endpoint_inner(id));
                changes.merge(self.write().insert_endpoint_at(id, spec));
            }
        }
        self.finish(changes)
    }

    /// Adds or replaces a node (by name).
    pub fn upsert_node(&mut self, node: NodeSpec) -> ChangeSet {
        let s = self.write();
        match s.nodes.iter().position(|n| n.name == node.name) {
            Some(i) => {
                s.node_by_name.insert(node.name.clone(), i);
                s.node_gone[i] = false;
                s.nodes[i] = node;
            }
            None => {
                s.node_by_name.insert(node.name.clone(), s.nodes.len());
                s.nodes.push(node);
                s.node_identities.push(None);
                s.node_gone.push(false);
            }
        }
        let changes = s.refresh_nodes();
        self.finish(changes)
    }

    /// Removes a node: its host endpoint's policy and its node identity go; endpoints still
    /// placed on it have no node until it comes back (the loader removes its pods).
    pub fn remove_node(&mut self, name: &str) -> ChangeSet {
        let s = self.write();
        let mut changes = ChangeSet::default();
        let Some(i) = s.node_by_name.remove(name) else {
            return self.finish(changes);
        };
        s.node_gone[i] = true;
        if let Some(id) = s.node_identities[i].take() {
            // A node's own identity (cidr-match-nodes); an address outside the cluster keeps
            // its CIDR identity, which flows and policies may still name.
            if s.repo
                .identities()
                .get(id)
                .is_some_and(|x| x.kind == IdentityKind::Node)
            {
                changes.merge(s.identity_vanished(id));
            }
        }
        if let Some(sub) = s.subject_by_key.remove(&SubjectKey::Host { node: i }) {
            s.subjects[sub] = None;
            for list in &mut s.rule_subjects {
                list.retain(|x| *x != sub);
            }
            changes.subjects_removed.push(sub);
        }
        for e in s.endpoints.iter_mut().flatten() {
            if e.node == Some(i) {
                Arc::make_mut(e).node = None;
            }
        }
        self.finish(changes)
    }

    /// Room for `n` more endpoints (a loader that knows how many are coming).
    pub fn reserve_endpoints(&mut self, n: usize) {
        self.write().endpoints.reserve_exact(n);
    }

    /// Adds an endpoint; returns its id and what changed.
    pub fn add_endpoint(&mut self, spec: EndpointSpec) -> (EndpointId, ChangeSet) {
        let s = self.write();
        let id = s.endpoints.len();
        s.endpoints.push(None);
        let changes = s.insert_endpoint_at(id, spec);
        (id, self.finish(changes))
    }

    /// Replaces an endpoint's spec (labels, ports, ...).
    pub fn update_endpoint(&mut self, id: EndpointId, spec: EndpointSpec) -> ChangeSet {
        let s = self.write();
        let mut changes = s.remove_endpoint_inner(id);
        changes.merge(s.insert_endpoint_at(id, spec));
        self.finish(changes)
    }

    pub fn remove_endpoint(&mut self, id: EndpointId) -> ChangeSet {
        let changes = self.write().remove_endpoint_inner(id);
        self.finish(changes)
    }

    /// Adds or replaces a policy (by kind, namespace and name).
    pub fn upsert_policy(&mut self, translated: Translated) -> ChangeSet {
        let key = PolicyKey::of(&translated.origin);
        let s = self.write();
        let mut changes = s.remove_policy_inner(&key);
        changes.merge(s.insert_policy(key, translated));
        self.finish(changes)
    }

    pub fn remove_policy(&mut self, key: &PolicyKey) -> ChangeSet {
        let changes = self.write().remove_policy_inner(key);
        self.finish(changes)
    }

    /// Adds or replaces a Service (by namespace and name); `toServices` peers naming it are
    /// re-expanded.
    pub fn upsert_service(&mut self, service: ServiceSpec) -> ChangeSet {
        let s = self.write();
        let ns = service.namespace.clone();
        match s
            .services
            .iter()
            .position(|x| x.namespace == service.namespace && x.name == service.name)
        {
            Some(i) => s.services[i] = service,
            None => s.services.push(service),
        }
        let changes = s.reexpand_services(&ns);
        self.finish(changes)
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) -> ChangeSet {
        let s = self.write();
        s.services
            .retain(|x| !(x.namespace == namespace && x.name == name));
        let changes = s.reexpand_services(namespace);
        self.finish(changes)
    }

    /// A DNS answer seen by the DNS proxy: `name` resolves to `addrs`, which become
    /// identities toFQDNs selectors can select.
    pub fn dns_answer(&mut self, name: &str, addrs: &[IpAddr]) -> ChangeSet {
        let s = self.write();
        if !s.dns_names.iter().any(|n| n == name) {
            s.dns_names.push(name.to_string());
        }
        let mut changes = ChangeSet::default();
        for a in addrs {
            changes.merge(s.add_address(*a, None));
            changes.merge(s.add_address(*a, Some(name)));
        }
        self.finish(changes)
    }

    /// A DNS answer expired (its TTL ran out): the addresses are no longer learned under
    /// `name`, so toFQDNs selectors stop selecting them (their plain CIDR identity stays).
    pub fn dns_expire(&mut self, name: &str, addrs: &[IpAddr]) -> ChangeSet {
        let s = self.write();
        let mut changes = ChangeSet::default();
        for a in addrs {
            if let Some(id) = s.repo.identities().find_cidr(*a, Some(name)) {
                changes.merge(s.identity_vanished(id));
            }
        }
        self.finish(changes)
    }

    /// An address outside the cluster that flows may name: gets its CIDR identity.
    pub fn add_world_address(&mut self, addr: IpAddr) -> ChangeSet {
        let changes = self.write().add_address(addr, None);
        self.finish(changes)
    }

    // Computing a policy fills its slot in the current snapshot (shared with readers who
    // hold it, who would compute the same): no copy is needed.

    /// Computes an endpoint's policy now, so later change sets report its deltas.
    pub fn resolve_endpoint(&mut self, id: EndpointId) -> Option<Arc<EndpointPolicy>> {
        self.state.endpoint_policy(id)
    }

    /// Computes a host endpoint's policy now (host firewall).
    pub fn resolve_host(&mut self, node: usize) -> Option<Arc<EndpointPolicy>> {
        self.state.host_policy(node)
    }

    /// Computes every endpoint's policy.
    pub fn resolve_all(&mut self) {
        let s = &self.state;
        for i in 0..s.subjects.len() {
            if s.subjects[i].is_some() {
                s.subject_policy_lazy(i);
            }
        }
    }
}

impl Snapshot {
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    pub fn identities(&self) -> &IdentityTable {
        self.repo.identities()
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn endpoint(&self, id: EndpointId) -> Option<&EndpointSpec> {
        self.endpoints.get(id)?.as_ref().map(|e| &e.spec)
    }

    pub fn endpoint_identity(&self, id: EndpointId) -> Option<IdentityId> {
        self.endpoints.get(id)?.as_ref().map(|e| e.identity)
    }

    pub fn endpoint_count(&self) -> usize {
        self.endpoints.iter().flatten().count()
    }

    /// The ids of the endpoints that exist, in order.
    pub fn endpoint_ids(&self) -> impl Iterator<Item = EndpointId> + '_ {
        self.endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.as_ref().map(|_| i))
    }

    /// The endpoint (not hostNetwork) with this address.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<EndpointId> {
        self.endpoint_by_ip.first(ip)
    }

    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.node_by_name.get(name).copied()
    }

    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// The valid and invalid policies, translated.
    pub fn policies(&self) -> impl Iterator<Item = &Translated> {
        self.policies.values().map(|p| &p.translated)
    }

    /// The resolved policy of an endpoint (computed on first use).
    pub fn endpoint_policy(&self, id: EndpointId) -> Option<Arc<EndpointPolicy>> {
        let subject = self.endpoints.get(id)?.as_ref()?.subject?;
        Some(self.subject_policy_lazy(subject))
    }

    /// The resolved policy of a node's host endpoint (host firewall only).
    pub fn host_policy(&self, node: usize) -> Option<Arc<EndpointPolicy>> {
        let subject = *self.subject_by_key.get(&SubjectKey::Host { node })?;
        Some(self.subject_policy_lazy(subject))
    }

    fn subject_policy_lazy(&self, subject: usize) -> Arc<EndpointPolicy> {
        let Some(Some(state)) = self.subjects.get(subject) else {
            return Arc::new(self.resolve_fresh(None));
        };
        state
            .policy
            .get_or_init(|| Arc::new(self.resolve_fresh(Some(state))))
            .clone()
    }

    fn resolve_fresh(&self, state: Option<&SubjectState>) -> EndpointPolicy {
        let empty = Identity {
            id: 0,
            labels: LabelSet::default(),
            kind: IdentityKind::Reserved,
            addr: None,
            fqdn_names: vec![],
        };
        let subject = match state {
            Some(s) => s.subject(),
            None => Subject {
                identity: &empty,
                is_host: false,
                local_node_addrs: &[],
                own_ports: &[],
            },
        };
        EndpointPolicy {
            ingress: self
                .repo
                .resolve_cached(&subject, Direction::Ingress, &self.parts),
            egress: self
                .repo
                .resolve_cached(&subject, Direction::Egress, &self.parts),
        }
    }

    /// An endpoint's policy resolved from scratch, sharing nothing with other policies (no
    /// part cache): the reference the shared, incremental maps are checked against.
    pub fn endpoint_policy_unshared(&self, id: EndpointId) -> Option<EndpointPolicy> {
        let subject = self.endpoints.get(id)?.as_ref()?.subject?;
        let state = self.subjects.get(subject)?.as_ref()?;
        let s = state.subject();
        Some(EndpointPolicy {
            ingress: self.repo.resolve(&s, Direction::Ingress),
            egress: self.repo.resolve(&s, Direction::Egress),
        })
    }

    /// The subject (shared resolved policy) an endpoint uses.
    pub fn endpoint_subject(&self, id: EndpointId) -> Option<usize> {
        self.endpoints.get(id)?.as_ref()?.subject
    }

    /// Every policy computed so far, by subject.
    pub fn computed_policies(&self) -> Vec<(usize, Arc<EndpointPolicy>)> {
        self.subjects
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?.policy.get()?.clone())))
            .collect()
    }

    /// The endpoints that share a subject's policy.
    fn subject_endpoints(&self, subject: usize) -> Arc<Vec<EndpointId>> {
        match self.subjects.get(subject) {
            Some(Some(s)) => s.users.clone(),
            _ => Arc::default(),
        }
    }

    fn namespace_labels(&self, ns: &str) -> Vec<(String, String)> {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    // ---- endpoints ----

    fn insert_endpoint_at(&mut self, id: EndpointId, spec: EndpointSpec) -> ChangeSet {
        let mut changes = ChangeSet::default();
        let node = self.node_by_name.get(&spec.node).copied();
        let identity = match (&spec.entity, spec.host_network) {
            (Some(e), _) => identity::reserved_id(e).unwrap_or(identity::UNMANAGED),
            (None, true) => 0,
            (None, false) => {
                // Most pods share their label set with others: found without building it.
                let (hash, sorted) = PodKey::hash_of(&spec);
                let known = self.pod_identities.get(&hash).and_then(|list| {
                    list.iter()
                        .find(|(k, _)| k.matches(&spec, &sorted))
                        .map(|(_, id)| *id)
                });
                if let Some(known) = known {
                    *self.identity_users.entry(known).or_default() += 1;
                    return self.insert_endpoint_tail(id, known, spec, node, changes);
                }
                let key = PodKey::of(&spec);
                let nsl = self.namespace_labels(&spec.namespace);
                let labels = identity::pod_identity_labels(
                    spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    &spec.namespace,
                    nsl.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    &spec.service_account,
                    &self.options.cluster_name,
                );
                let id = match self.repo.identities().find_pod(&labels) {
                    Some(id) => id,
                    None => {
                        let id = self.repo.identities_mut().pod(labels);
                        changes.merge(self.identity_appeared(id));
                        id
                    }
                };
                self.pod_identities.entry(hash).or_default().push((key, id));
                id
            }
        };
        if identity != 0 {
            *self.identity_users.entry(identity).or_default() += 1;
        }
        self.insert_endpoint_tail(id, identity, spec, node, changes)
    }

    /// Everything about a new endpoint but its identity.
    fn insert_endpoint_tail(
        &mut self,
        id: EndpointId,
        identity: IdentityId,
        spec: EndpointSpec,
        node: Option<usize>,
        mut changes: ChangeSet,
    ) -> ChangeSet {
        let mut ports_changed = false;
        for p in &spec.ports {
            if !p.name.is_empty() {
                ports_changed |= self.repo.add_named_port(&p.name, p.protocol, p.port);
            }
        }
        if !spec.host_network
            && let Some(ip) = spec.ip
        {
            self.endpoint_by_ip.insert(ip, id);
        }
        let subject = if spec.host_network || identity == 0 {
            None
        } else {
            self.attach_subject(id, identity, &spec, node)
        };
        self.endpoints[id] = Some(Arc::new(EndpointState {
            spec,
            identity,
            node,
            subject,
        }));
        if let Some(s) = subject {
            changes.endpoints_added.push((id, s));
        }
        if ports_changed {
            changes.merge(self.refresh_named_ports());
        }
        changes
    }

    fn remove_endpoint_inner(&mut self, id: EndpointId) -> ChangeSet {
        let mut changes = ChangeSet::default();
        let Some(Some(ep)) = self.endpoints.get_mut(id).map(Option::take) else {
            return changes;
        };
        if let Some(ip) = ep.spec.ip {
            self.endpoint_by_ip.remove(ip, id);
        }
        let mut ports_changed = false;
        for p in &ep.spec.ports {
            if !p.name.is_empty() {
                ports_changed |= self.repo.remove_named_port(&p.name, p.protocol, p.port);
            }
        }
        if let Some(s) = ep.subject {
            changes.endpoints_removed.push((id, s));
            if self.detach_subject(s, id) {
                changes.subjects_removed.push(s);
            }
        }
        if ep.identity != 0 {
            let users = self.identity_users.entry(ep.identity).or_default();
            *users = users.saturating_sub(1);
            if *users == 0 {
                self.identity_users.remove(&ep.identity);
                if ep.spec.entity.is_none() {
                    changes.merge(self.identity_vanished(ep.identity));
                }
            }
        }
        if ports_changed {
            changes.merge(self.refresh_named_ports());
        }
        changes
    }

    fn attach_subject(
        &mut self,
        endpoint: EndpointId,
        identity: IdentityId,
        spec: &EndpointSpec,
        node: Option<usize>,
    ) -> Option<usize> {
        let ports: Vec<(String, Protocol, u16)> = spec
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.protocol, p.port))
            .collect();
        let node_addrs: Vec<IpAddr> = node.map(|n| self.nodes[n].addrs()).unwrap_or_default();
        let key = SubjectKey::Endpoint {
            identity,
            ports: ports.clone(),
            node_addrs: if self.options.cidr_match_nodes {
                node_addrs.clone()
            } else {
                Vec::new()
            },
        };
        if let Some(s) = self.subject_by_key.get(&key) {
            if let Some(Some(state)) = self.subjects.get_mut(*s) {
                add_user(&mut state.users, endpoint);
            }
            return Some(*s);
        }
        let identity = self.repo.identities().get(identity).cloned()?;
        let s = self.new_subject(key, identity, false, node_addrs, ports);
        if let Some(Some(state)) = self.subjects.get_mut(s) {
            add_user(&mut state.users, endpoint);
        }
        Some(s)
    }

    fn new_subject(
        &mut self,
        key: SubjectKey,
        identity: Identity,
        is_host: bool,
        node_addrs: Vec<IpAddr>,
        ports: Vec<(String, Protocol, u16)>,
    ) -> usize {
        let mut state = SubjectState {
            key: key.clone(),
            identity,
            is_host,
            node_addrs,
            ports,
            rules: Vec::new(),
            users: Default::default(),
            policy: OnceLock::new(),
        };
        let index = match self.subjects.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.subjects.push(None);
                self.subjects.len() - 1
            }
        };
        let subject = state.subject();
        let selecting: Vec<usize> = self
            .repo
            .selecting_rules(&subject)
            .map(|(s, _)| s)
            .collect();
        for slot in &selecting {
            if self.rule_subjects.len() <= *slot {
                self.rule_subjects.resize(slot + 1, Vec::new());
            }
            self.rule_subjects[*slot].push(index);
        }
        state.rules = selecting;
        self.subject_by_key.insert(key, index);
        self.subjects[index] = Some(state);
        index
    }

    /// Drops one user of a subject; true when that was the last one.
    fn detach_subject(&mut self, s: usize, endpoint: EndpointId) -> bool {
        let Some(Some(state)) = self.subjects.get_mut(s) else {
            return false;
        };
        let users = Arc::make_mut(&mut state.users);
        if let Ok(pos) = users.binary_search(&endpoint) {
            users.remove(pos);
        }
        if !state.users.is_empty() {
            return false;
        }
        let rules = std::mem::take(&mut state.rules);
        let key = state.key.clone();
        for slot in rules {
            if let Some(list) = self.rule_subjects.get_mut(slot) {
                list.retain(|x| *x != s);
            }
        }
        self.subject_by_key.remove(&key);
        self.subjects[s] = None;
        true
    }

    // ---- identities as peers ----

    /// A new identity exists: the selectors that select it gain it, and every computed
    /// policy with an entry selecting it gains that peer's part (only that), shared between
    /// policies that compute it from the same entries, ports and every-peer keys.
    fn identity_appeared(&mut self, id: IdentityId) -> ChangeSet {
        let mut gained = self.repo.identity_added(id);
        gained.sort_unstable();
        // Entries of rules selecting every policy (a CCNP selecting all pods) are the same
        // for each: only the others are gathered per policy.
        let live = self.subjects.iter().filter(|s| s.is_some()).count();
        let universal =
            |slot: usize| self.rule_subjects.get(slot).map_or(0, Vec::len) == live && live > 0;
        let common: Vec<EntryRef> = gained.iter().copied().filter(|e| universal(e.0)).collect();
        let mut extra: BTreeMap<usize, Vec<EntryRef>> = BTreeMap::new();
        for e in gained.iter().filter(|e| !universal(e.0)) {
            for s in self.rule_subjects.get(e.0).into_iter().flatten() {
                extra.entry(*s).or_default().push(*e);
            }
        }
        let touched: Vec<usize> = if common.is_empty() {
            extra.keys().copied().collect()
        } else {
            self.all_subjects()
        };
        let common = [Direction::Ingress, Direction::Egress]
            .map(|d| self.repo.entries_for_peer(d, id, &common));
        let mut memo: HashMap<LocalPartKey, (PeerPart, Vec<EntryRef>)> = HashMap::default();
        let mut changes = ChangeSet::default();
        for s in touched {
            let more = extra.get(&s).map_or(&[][..], Vec::as_slice);
            changes.merge(self.update_peer(s, id, &common, more, &mut memo));
        }
        changes
    }

    /// An identity is gone: every computed policy loses its part for that peer.
    fn identity_vanished(&mut self, id: IdentityId) -> ChangeSet {
        self.repo.identity_removed(id);
        for list in self.pod_identities.values_mut() {
            list.retain(|(_, v)| *v != id);
        }
        let mut changes = ChangeSet::default();
        for s in 0..self.subjects.len() {
            let Some(Some(state)) = self.subjects.get_mut(s) else {
                continue;
            };
            let Some(policy) = state.policy.get_mut() else {
                continue;
            };
            let has_peer = |d: &DirectionPolicy| d.map.peer(id).is_some() || d.raw_has_peer(id);
            if !has_peer(&policy.ingress) && !has_peer(&policy.egress) {
                continue;
            }
            let policy = Arc::make_mut(policy);
            let mut change = SubjectChange::new(s);
            change.ingress = policy.ingress.set_peer_part(id, PeerPart::default());
            change.egress = policy.egress.set_peer_part(id, PeerPart::default());
            if !change.is_empty() {
                change.endpoints = self.subject_endpoints(s);
                changes.subjects.push(change);
            }
        }
        changes
    }

    fn update_peer(
        &mut self,
        s: usize,
        peer: IdentityId,
        common: &[Vec<EntryRef>; 2],
        extra: &[EntryRef],
        memo: &mut HashMap<LocalPartKey, (PeerPart, Vec<EntryRef>)>,
    ) -> ChangeSet {
        let mut changes = ChangeSet::default();
        let Some(Some(state)) = self.subjects.get_mut(s) else {
            return changes;
        };
        let Some(policy) = state.policy.get_mut() else {
            return changes;
        };
        let subject = Subject {
            identity: &state.identity,
            is_host: state.is_host,
            local_node_addrs: &state.node_addrs,
            own_ports: &state.ports,
        };
        let policy = Arc::make_mut(policy);
        let mut change = SubjectChange::new(s);
        for d in [Direction::Ingress, Direction::Egress] {
            let dir = policy.direction_mut(d);
            if !dir.enforced {
                continue;
            }
            // Entries of rules selecting every policy were filtered once for all of them;
            // only `fromRequires`/`toRequires` can still remove some for this one.
            let shared = &common[usize::from(d == Direction::Egress)];
            let mut entries = if self.repo.requires_exclude(&state.rules, d, peer) {
                self.repo.without_endpoint_peers(shared)
            } else {
                shared.clone()
            };
            if !extra.is_empty() {
                entries.extend(
                    self.repo
                        .entries_selecting(&subject, &state.rules, d, peer, extra),
                );
                entries.sort_unstable();
            }
            if entries.is_empty() && peer != identity::HOST {
                continue;
            }
            // Within one change, policies with the same entries for this peer, ports and
            // every-peer chunk get the same part without hashing the entries again.
            let key = LocalPartKey {
                direction: d,
                first: entries.first().copied(),
                len: entries.len(),
                sum: entries.iter().fold(0usize, |a, (x, y)| {
                    a.wrapping_mul(31)
                        .wrapping_add(x.wrapping_mul(131).wrapping_add(*y))
                }),
                ports: if d == Direction::Ingress {
                    state.ports.clone()
                } else {
                    Vec::new()
                },
                wildcard: dir.wildcard_part().map_or(0, |w| Arc::as_ptr(w) as usize),
                is_host: state.is_host,
            };
            let part = match memo.get(&key) {
                Some((p, e)) if peer != identity::HOST && *e == entries => p.clone(),
                _ => {
                    let p = self.repo.cached_part(
                        dir,
                        &subject,
                        &state.rules,
                        peer,
                        &entries,
                        &self.parts,
                    );
                    memo.insert(key, (p.clone(), entries));
                    p
                }
            };
            *change.delta_mut(d) = dir.set_peer_part(peer, part);
        }
        if !change.is_empty() {
            change.endpoints = self.subject_endpoints(s);
            changes.subjects.push(change);
        }
        changes
    }

    fn add_address(&mut self, addr: IpAddr, fqdn: Option<&str>) -> ChangeSet {
        if self.repo.identities().find_cidr(addr, fqdn).is_some() {
            return ChangeSet::default();
        }
        let id = self.repo.identities_mut().cidr(addr, fqdn);
        self.identity_appeared(id)
    }

    // ---- policies ----

    fn insert_policy(&mut self, key: PolicyKey, translated: Translated) -> ChangeSet {
        let rules = expand_services(translated.rules.clone(), &self.services);
        let mut slots = Vec::with_capacity(rules.len());
        for rule in rules {
            slots.push(self.repo.add_rule(rule));
        }
        let mut affected = Vec::new();
        for slot in &slots {
            if self.rule_subjects.len() <= *slot {
                self.rule_subjects.resize(slot + 1, Vec::new());
            }
            let Some(rule) = self.repo.rule(*slot).cloned() else {
                continue;
            };
            let mut selected = Vec::new();
            for (i, s) in self.subjects.iter_mut().enumerate() {
                let Some(state) = s else { continue };
                if Repository::rule_selects(&rule, &state.subject()) {
                    if let Err(pos) = state.rules.binary_search(slot) {
                        state.rules.insert(pos, *slot);
                    }
                    selected.push(i);
                }
            }
            affected.extend(selected.iter().copied());
            self.rule_subjects[*slot] = selected;
        }
        self.policies
            .insert(key, Arc::new(StoredPolicy { translated, slots }));
        self.re_resolve(affected)
    }

    fn remove_policy_inner(&mut self, key: &PolicyKey) -> ChangeSet {
        let Some(stored) = self.policies.remove(key) else {
            return ChangeSet::default();
        };
        let mut affected = Vec::new();
        for slot in &stored.slots {
            self.repo.remove_rule(*slot);
            let subjects = self
                .rule_subjects
                .get_mut(*slot)
                .map(std::mem::take)
                .unwrap_or_default();
            for s in &subjects {
                if let Some(Some(state)) = self.subjects.get_mut(*s) {
                    state.rules.retain(|r| r != slot);
                }
            }
            affected.extend(subjects);
        }
        self.re_resolve(affected)
    }

    /// Resolves the given subjects again from scratch (those computed), reporting deltas.
    fn re_resolve(&mut self, mut subjects: Vec<usize>) -> ChangeSet {
        subjects.sort_unstable();
        subjects.dedup();
        let mut changes = ChangeSet::default();
        for s in subjects {
            let Some(Some(state)) = self.subjects.get(s) else {
                continue;
            };
            let Some(old) = state.policy.get().cloned() else {
                continue;
            };
            let new = self.resolve_fresh(Some(state));
            let mut change = SubjectChange::new(s);
            change.ingress = MapDelta::between(&old.ingress.map, &new.ingress.map);
            change.egress = MapDelta::between(&old.egress.map, &new.egress.map);
            change.enforcement_changed = old.ingress.enforced != new.ingress.enforced
                || old.egress.enforced != new.egress.enforced;
            if let Some(Some(state)) = self.subjects.get_mut(s) {
                state.policy = OnceLock::from(Arc::new(new));
            }
            if !change.is_empty() {
                change.endpoints = self.subject_endpoints(s);
                changes.subjects.push(change);
            }
        }
        changes
    }

    fn all_subjects(&self) -> Vec<usize> {
        (0..self.subjects.len())
            .filter(|s| self.subjects[*s].is_some())
            .collect()
    }

    fn refresh_named_ports(&mut self) -> ChangeSet {
        // Egress named ports resolve across the cluster: a rare change, resolved in full.
        let all = self.all_subjects();
        self.re_resolve(all)
    }

    fn reexpand_services(&mut self, namespace: &str) -> ChangeSet {
        let keys: Vec<PolicyKey> = self
            .policies
            .iter()
            .filter(|(_, p)| uses_services_in(&p.translated.rules, namespace))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changes = ChangeSet::default();
        for key in keys {
            let Some(stored) = self.policies.get(&key).cloned() else {
                continue;
            };
            changes.merge(self.remove_policy_inner(&key));
            changes.merge(self.insert_policy(key, stored.translated.clone()));
        }
        changes
    }

    /// Nodes changed: their identities, host endpoints and the node addresses of subjects.
    fn refresh_nodes(&mut self) -> ChangeSet {
        let mut changes = ChangeSet::default();
        for i in 0..self.nodes.len() {
            if self.node_gone[i] {
                continue;
            }
            let n = self.nodes[i].clone();
            let want = if !n.cilium {
                Some(self.repo.identities_mut().cidr(n.ip, None))
            } else if self.options.cidr_match_nodes {
                Some(self.repo.identities_mut().node(n.ip, &n.labels))
            } else {
                None
            };
            if want != self.node_identities[i] {
                self.node_identities[i] = want;
                if let Some(id) = want {
                    changes.merge(self.identity_appeared(id));
                }
            }
            if self.options.host_firewall {
                let key = SubjectKey::Host { node: i };
                if let Some(old) = self.subject_by_key.get(&key).copied() {
                    self.subjects[old] = None;
                    self.subject_by_key.remove(&key);
                    for list in &mut self.rule_subjects {
                        list.retain(|x| *x != old);
                    }
                }
                let identity = Identity {
                    id: identity::HOST,
                    labels: host_labels(&n.labels),
                    kind: IdentityKind::Reserved,
                    addr: None,
                    fqdn_names: vec![],
                };
                self.new_subject(key, identity, true, n.addrs(), Vec::new());
            }
        }
        // Endpoints placed on a node that did not exist yet. With cidr-match-nodes their
        // policy depends on their node's address (the local host is selected through it),
        // so they are placed again, as if they had come after their node; so are the
        // endpoints of a node whose address changed.
        let mut replace = Vec::new();
        for (id, slot) in self.endpoints.iter_mut().enumerate() {
            let Some(e) = slot else { continue };
            let node = self.node_by_name.get(&e.spec.node).copied();
            if e.node.is_none()
                && let Some(n) = node
            {
                if self.options.cidr_match_nodes {
                    replace.push((id, e.spec.clone()));
                } else {
                    Arc::make_mut(e).node = Some(n);
                }
            } else if self.options.cidr_match_nodes
                && let (Some(n), Some(subject)) = (node, e.subject)
                && let Some(Some(state)) = self.subjects.get(subject)
                && let SubjectKey::Endpoint { node_addrs, .. } = &state.key
                && *node_addrs != self.nodes[n].addrs()
            {
                replace.push((id, e.spec.clone()));
            }
        }
        for (id, spec) in replace {
            changes.merge(self.remove_endpoint_inner(id));
            changes.merge(self.insert_endpoint_at(id, spec));
        }
        changes
    }
}

fn uses_services_in(rules: &[Rule], namespace: &str) -> bool {
    rules
        .iter()
        .flat_map(|r| r.entries.iter())
        .any(|e| match &e.peers {
            Peers::Selectors(list) => list.iter().any(
                |p| matches!(p, PeerSelector::Service { namespace: ns, .. } if ns == namespace),
            ),
            Peers::Wildcard => false,
        })
}

/// `toServices` peers become the selectors of the Services' backends (Cilium translates them
/// the same way); a Service without a selector contributes its endpoint addresses as CIDRs.
fn expand_services(mut rules: Vec<Rule>, services: &[ServiceSpec]) -> Vec<Rule> {
    let backends = |svc: &ServiceSpec| {
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
                let PeerSelector::Service {
                    namespace,
                    name,
                    selector,
                } = p
                else {
                    out.push(p);
                    continue;
                };
                for svc in services.iter().filter(|s| s.namespace == namespace) {
                    let by_name = name.as_ref().is_some_and(|n| *n == svc.name);
                    let by_labels = selector.as_ref().is_some_and(|sel| {
                        let labels = LabelSet::new(
                            svc.labels.iter().map(|(k, v)| Label::k8s(k, v)).collect(),
                        );
                        sel.matches(&labels)
                    });
                    if !(by_name || by_labels) {
                        continue;
                    }
                    if !svc.selector.is_empty() {
                        out.push(backends(svc));
                    } else {
                        for a in &svc.addresses {
                            out.push(PeerSelector::Cidr {
                                net: ipnet::IpNet::from(*a),
                                except: vec![],
                            });
                        }
                    }
                }
            }
            *list = out;
        }
    }
    rules
}

#[cfg(test)]
mod tests;
