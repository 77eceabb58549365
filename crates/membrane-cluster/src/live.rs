//! A cluster kept current one object at a time: what a node agent sees through its watches.
//!
//! Every event (one Kubernetes object applied or deleted, as a watch reports it) becomes
//! operations on the incremental [`Engine`] and returns the engine's change set: the policy-map
//! entries to add and remove, per policy and peer. Objects arrive as JSON, as the API server
//! sends them; they are read through the same decoders as manifests (JSON is YAML), so a
//! cluster followed event by event decides as `manifests::load` of its final objects does
//! (`tests/live_events.rs` checks it on shuffled event sequences).

use crate::manifests::{labels_of, node_address, path, pod_endpoint, s};
use crate::world::endpoint_spec;
use membrane_policy::api::Resource;
use membrane_policy::engine::{self, ChangeSet, EndpointId, Engine, PolicyKey};
use membrane_policy::labels::{Label, LabelSet};
use membrane_policy::model::FileId;
use membrane_policy::options::Options;
use membrane_policy::policy_set::parse_resources;
use membrane_policy::translate::{self, CidrGroupInfo, Context, Secrets};
use membrane_policy::yaml::{Embedding, Node, parse_documents};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Why an object could not be applied (the rest of the cluster is unaffected).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LiveError {
    #[error("{0}: not a Kubernetes object (no kind or metadata.name)")]
    NotAnObject(String),
    #[error("{kind} {name}: {reason}")]
    Unreadable {
        kind: String,
        name: String,
        reason: String,
    },
}

/// (kind, namespace or "", name).
type ObjectKey = (String, String, String);

/// The engine with the objects it was fed, so deletions and CIDR-group changes can be undone
/// and redone.
pub struct LiveCluster {
    engine: Engine,
    options: Options,
    secrets: Secrets,
    cidr_groups: BTreeMap<String, CidrGroupInfo>,
    /// Policy objects in effect, decoded, with the engine's key and their FileId.
    policies: BTreeMap<ObjectKey, (Resource, PolicyKey, FileId)>,
    pods: HashMap<(String, String), EndpointId>,
    /// Services as applied (selector-less ones take their addresses from `slices`).
    services: BTreeMap<(String, String), engine::ServiceSpec>,
    /// EndpointSlices: (namespace, slice name) → (service, ready addresses).
    slices: BTreeMap<(String, String), (String, Vec<IpAddr>)>,
    /// A name per object that produced diagnostics (`Kind namespace/name`), by FileId.
    names: Vec<String>,
    /// The FileId of each object, reused when it is applied again.
    files: HashMap<ObjectKey, FileId>,
}

/// Namespaced kinds without a namespace land in `default`, as the API server puts them: an
/// object's key is the same on apply and delete, and equals the engine's.
fn key_of(kind: &str, namespace: Option<&str>, name: &str) -> ObjectKey {
    let namespaced = matches!(kind, "CiliumNetworkPolicy" | "NetworkPolicy");
    let ns = match namespace {
        Some(ns) if namespaced => ns,
        None if namespaced => "default",
        _ => "",
    };
    (kind.to_string(), ns.to_string(), name.to_string())
}

impl LiveCluster {
    pub fn new(options: Options) -> LiveCluster {
        LiveCluster {
            engine: Engine::new(options.clone()),
            options,
            secrets: Secrets::default(),
            cidr_groups: BTreeMap::new(),
            policies: BTreeMap::new(),
            pods: HashMap::new(),
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            names: Vec::new(),
            files: HashMap::new(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// An address outside the cluster that policies may select by prefix (the agent's
    /// prefix representatives): gets its CIDR identity.
    pub fn add_world_address(&mut self, addr: std::net::IpAddr) -> ChangeSet {
        self.engine.add_world_address(addr)
    }

    /// A DNS proxy learned that `name` resolves to `addrs` (toFQDNs selectors select them).
    pub fn dns_answer(&mut self, name: &str, addrs: &[std::net::IpAddr]) -> ChangeSet {
        self.engine.dns_answer(name, addrs)
    }

    /// The DNS proxy's answer for `name` expired for `addrs`.
    pub fn dns_expire(&mut self, name: &str, addrs: &[std::net::IpAddr]) -> ChangeSet {
        self.engine.dns_expire(name, addrs)
    }

    /// Computes every endpoint's policy now; from then on change sets carry the map entries
    /// each change adds and removes (the engine follows only policies already computed).
    pub fn resolve_all(&mut self) {
        self.engine.resolve_all();
    }

    /// The endpoint of a pod, if it is running.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<EndpointId> {
        self.pods
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// What diagnostics with this FileId are about (`CiliumNetworkPolicy shop/allow-web`).
    pub fn object_name(&self, file: FileId) -> &str {
        self.names.get(file as usize).map_or("", String::as_str)
    }

    /// Applies one object (created or changed), as a watch's ADDED/MODIFIED event carries it.
    pub fn apply(&mut self, object: &serde_json::Value) -> Result<ChangeSet, LiveError> {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if kind.is_empty() || name.is_empty() {
            return Err(LiveError::NotAnObject(kind));
        }
        let namespace = object["metadata"]["namespace"].as_str().map(str::to_string);
        let text = object.to_string();
        let unreadable = |reason: String| LiveError::Unreadable {
            kind: kind.clone(),
            name: name.clone(),
            reason,
        };
        let docs =
            parse_documents(&text, Embedding::default()).map_err(|e| unreadable(e.message))?;
        let node = docs
            .into_iter()
            .next()
            .ok_or_else(|| unreadable("empty".into()))?;
        let ns = namespace.clone().unwrap_or_else(|| "default".into());
        Ok(match kind.as_str() {
            "Namespace" => {
                let mut labels = labels_of(path(&node, &["metadata", "labels"]));
                if !labels
                    .iter()
                    .any(|(k, _)| k == "kubernetes.io/metadata.name")
                {
                    labels.push(("kubernetes.io/metadata.name".into(), name.clone()));
                }
                self.engine.upsert_namespace(&name, labels)
            }
            "Node" => match node_spec(&node, &name) {
                Some(spec) => self.engine.upsert_node(spec),
                None => return Err(unreadable("no InternalIP address".into())),
            },
            "Pod" => self.apply_pod(&node, &ns, &name),
            "Service" => {
                let spec = engine::ServiceSpec {
                    namespace: ns.clone(),
                    name: name.clone(),
                    labels: labels_of(path(&node, &["metadata", "labels"])),
                    selector: labels_of(path(&node, &["spec", "selector"])),
                    addresses: Vec::new(),
                };
                self.services.insert((ns.clone(), name.clone()), spec);
                self.refresh_service(&ns, &name)
            }
            "EndpointSlice" => {
                // A slice that moved to another Service (or lost its label) no longer feeds
                // the old one.
                let mut changes = match self.slices.remove(&(ns.clone(), name.clone())) {
                    Some((old, _)) => self.refresh_service(&ns, &old),
                    None => ChangeSet::default(),
                };
                let Some(service) = s(path(
                    &node,
                    &["metadata", "labels", "kubernetes.io/service-name"],
                )) else {
                    return Ok(changes);
                };
                let addrs = node
                    .get("endpoints")
                    .and_then(Node::as_seq)
                    .unwrap_or(&[])
                    .iter()
                    .filter(|e| s(path(e, &["conditions", "ready"])).as_deref() != Some("false"))
                    .flat_map(|e| e.get("addresses").and_then(Node::as_seq).unwrap_or(&[]))
                    .filter_map(|a| a.scalar_text()?.parse::<IpAddr>().ok())
                    .collect();
                self.slices
                    .insert((ns.clone(), name.clone()), (service.clone(), addrs));
                changes.then(self.refresh_service(&ns, &service));
                changes
            }
            "CiliumIdentity" => {
                if let Ok(id) = name.parse::<u32>() {
                    let labels = labels_of(node.get("security-labels"))
                        .into_iter()
                        .map(|(k, v)| {
                            let (source, key) = k.split_once(':').unwrap_or(("unspec", k.as_str()));
                            Label::new(source, key, &v)
                        })
                        .collect();
                    self.engine.assign_identity(LabelSet::new(labels), id);
                }
                ChangeSet::default()
            }
            "CiliumNetworkPolicy"
            | "CiliumClusterwideNetworkPolicy"
            | "NetworkPolicy"
            | "CiliumCIDRGroup" => {
                let key = key_of(&kind, namespace.as_deref(), &name);
                let file = match self.files.get(&key) {
                    Some(f) => *f,
                    None => {
                        let f = self.names.len() as FileId;
                        self.names
                            .push(format!("{kind} {}", display(namespace.as_deref(), &name)));
                        self.files.insert(key.clone(), f);
                        f
                    }
                };
                let (resources, diags) = parse_resources(&text, Embedding::default());
                let Some(resource) = resources.into_iter().next() else {
                    let reason = diags
                        .first()
                        .map_or_else(|| "not a policy".to_string(), |d| d.message.clone());
                    return Err(unreadable(reason));
                };
                match resource {
                    Resource::CidrGroup(g) => self.apply_cidr_group(&name, &g),
                    other => self.apply_policy(key, other, file),
                }
            }
            _ => ChangeSet::default(),
        })
    }

    /// Deletes one object, as a watch's DELETED event names it.
    pub fn delete(&mut self, kind: &str, namespace: Option<&str>, name: &str) -> ChangeSet {
        let ns = namespace.unwrap_or("default").to_string();
        match kind {
            "Pod" => match self.pods.remove(&(ns, name.to_string())) {
                Some(id) => self.engine.remove_endpoint(id),
                None => ChangeSet::default(),
            },
            "Node" => self.engine.remove_node(name),
            "Service" => {
                self.services.remove(&(ns.clone(), name.to_string()));
                self.engine.remove_service(&ns, name)
            }
            "EndpointSlice" => match self.slices.remove(&(ns.clone(), name.to_string())) {
                Some((service, _)) => self.refresh_service(&ns, &service),
                None => ChangeSet::default(),
            },
            "CiliumCIDRGroup" => {
                self.cidr_groups.remove(name);
                self.retranslate_all()
            }
            "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" | "NetworkPolicy" => {
                match self.policies.remove(&key_of(kind, namespace, name)) {
                    Some((_, key, _)) => self.engine.remove_policy(&key),
                    None => ChangeSet::default(),
                }
            }
            _ => ChangeSet::default(),
        }
    }

    fn apply_pod(&mut self, node: &Node, ns: &str, name: &str) -> ChangeSet {
        let key = (ns.to_string(), name.to_string());
        let phase = s(path(node, &["status", "phase"]));
        let ip = s(path(node, &["status", "podIP"])).and_then(|t| t.parse::<IpAddr>().ok());
        // Not running, or no address yet: not an endpoint (a pod that stops is removed).
        let (Some(ip), Some("Running")) = (ip, phase.as_deref()) else {
            return match self.pods.remove(&key) {
                Some(id) => self.engine.remove_endpoint(id),
                None => ChangeSet::default(),
            };
        };
        let ep = pod_endpoint(node, ns, name, ip);
        let spec = endpoint_spec(&ep);
        match self.pods.get(&key) {
            Some(&id) => self.engine.update_endpoint(id, spec),
            None => {
                let (id, changes) = self.engine.add_endpoint(spec);
                self.pods.insert(key, id);
                changes
            }
        }
    }

    /// Sets a Service in the engine with its current backends (a selector-less Service's
    /// come from its EndpointSlices).
    fn refresh_service(&mut self, ns: &str, name: &str) -> ChangeSet {
        let Some(mut spec) = self
            .services
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
        else {
            return ChangeSet::default();
        };
        if spec.selector.is_empty() {
            spec.addresses = self
                .slices
                .iter()
                .filter(|((slice_ns, _), (service, _))| slice_ns == ns && service == name)
                .flat_map(|(_, (_, addrs))| addrs.iter().copied())
                .collect();
        }
        self.engine.upsert_service(spec)
    }

    fn translate(&self, resource: &Resource, file: FileId) -> Option<translate::Translated> {
        let groups: Vec<CidrGroupInfo> = self.cidr_groups.values().cloned().collect();
        let cx = Context {
            options: &self.options,
            file,
            secrets: &self.secrets,
            cidr_groups: &groups,
        };
        match resource {
            Resource::Cilium(p) => Some(translate::translate_cilium(p, &cx)),
            Resource::Kube(p) => Some(translate::translate_kube(p, &cx)),
            _ => None,
        }
    }

    fn apply_policy(&mut self, key: ObjectKey, resource: Resource, file: FileId) -> ChangeSet {
        let Some(translated) = self.translate(&resource, file) else {
            return ChangeSet::default();
        };
        let engine_key = PolicyKey::of(&translated.origin);
        let changes = self.engine.upsert_policy(translated);
        self.policies.insert(key, (resource, engine_key, file));
        changes
    }

    fn apply_cidr_group(
        &mut self,
        name: &str,
        group: &membrane_policy::api::CidrGroup,
    ) -> ChangeSet {
        let cidrs: Result<Vec<_>, _> = group
            .external_cidrs
            .iter()
            .map(|c| translate::parse_cidr(&c.value, false))
            .collect();
        // As the API server's schema: a group with an invalid entry does not exist.
        match cidrs {
            Ok(cidrs) => {
                let labels = LabelSet::new(
                    group
                        .meta
                        .labels
                        .iter()
                        .map(|(k, v)| Label::k8s(&k.value, &v.value))
                        .collect(),
                );
                self.cidr_groups.insert(
                    name.to_string(),
                    CidrGroupInfo {
                        name: name.to_string(),
                        labels,
                        cidrs,
                    },
                );
            }
            Err(_) => {
                self.cidr_groups.remove(name);
            }
        }
        self.retranslate_all()
    }

    /// Every policy translated again (a CIDR group they may name changed).
    fn retranslate_all(&mut self) -> ChangeSet {
        let mut changes = ChangeSet::default();
        let keys: Vec<ObjectKey> = self.policies.keys().cloned().collect();
        for key in keys {
            let Some((resource, _, file)) = self.policies.get(&key) else {
                continue;
            };
            if let Some(t) = self.translate(resource, *file) {
                changes.then(self.engine.upsert_policy(t));
            }
        }
        changes
    }
}

fn display(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn node_spec(node: &Node, name: &str) -> Option<engine::NodeSpec> {
    let ip = node_address(node)?;
    let n = crate::manifests::node_spec(node, name.to_string(), ip);
    Some(engine::NodeSpec {
        name: n.name,
        ip: n.ip,
        cilium: n.cilium,
        labels: n.labels,
    })
}
