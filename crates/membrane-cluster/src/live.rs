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
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// Secrets that exist as objects (not only as aliases of an operator's copy).
    secret_objects: BTreeSet<(String, String)>,
    /// Per node, the endpoint of its `ingress` address (CiliumNode `spec.ingress`).
    ingress: HashMap<String, EndpointId>,
    /// The endpoints of the API server's addresses.
    apiserver: Vec<(IpAddr, EndpointId)>,
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
            secret_objects: BTreeSet::new(),
            ingress: HashMap::new(),
            apiserver: Vec::new(),
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
            "CiliumNode" => {
                // The node's Gateway/Ingress proxy (Envoy) sends from this address with the
                // reserved `ingress` identity.
                let ip = s(path(&node, &["spec", "ingress", "ipv4"]))
                    .and_then(|t| t.parse::<IpAddr>().ok());
                self.set_ingress_address(&name, ip)
            }
            "Secret" => {
                let data = secret_data(object);
                self.set_secret(&ns, &name, Some(data));
                self.retranslate_all()
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
            // Its labels go: what is left of it (pods still terminating, a namespace of the
            // same name created later without them) has only the name Kubernetes gives.
            "Namespace" => self.engine.upsert_namespace(
                name,
                vec![("kubernetes.io/metadata.name".into(), name.to_string())],
            ),
            "Service" => {
                self.services.remove(&(ns.clone(), name.to_string()));
                self.engine.remove_service(&ns, name)
            }
            "EndpointSlice" => match self.slices.remove(&(ns.clone(), name.to_string())) {
                Some((service, _)) => self.refresh_service(&ns, &service),
                None => ChangeSet::default(),
            },
            "CiliumNode" => self.set_ingress_address(name, None),
            "Secret" => {
                self.set_secret(&ns, name, None);
                self.retranslate_all()
            }
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
        // The API server's addresses (`default/kubernetes`' endpoints) carry the reserved
        // `kube-apiserver` identity, as Cilium's agent gives them.
        let mut changes = if ns == "default" && name == "kubernetes" {
            self.set_apiserver_addresses(&spec.addresses)
        } else {
            ChangeSet::default()
        };
        changes.then(self.engine.upsert_service(spec));
        changes
    }

    fn set_apiserver_addresses(&mut self, addrs: &[IpAddr]) -> ChangeSet {
        let mut changes = ChangeSet::default();
        let old = std::mem::take(&mut self.apiserver);
        for (ip, id) in old {
            if addrs.contains(&ip) {
                self.apiserver.push((ip, id));
            } else {
                changes.then(self.engine.remove_endpoint(id));
            }
        }
        for ip in addrs {
            if self.apiserver.iter().any(|(a, _)| a == ip) {
                continue;
            }
            let (id, c) = self.engine.add_endpoint(engine::EndpointSpec {
                name: "kube-apiserver".into(),
                namespace: "default".into(),
                node: String::new(),
                ip: Some(*ip),
                service_account: String::new(),
                labels: vec![],
                ports: vec![],
                host_network: false,
                entity: Some("kube-apiserver".into()),
            });
            changes.then(c);
            self.apiserver.push((*ip, id));
        }
        changes
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

    /// The `ingress` endpoint of node `node` at `ip` (None: it has none).
    fn set_ingress_address(&mut self, node: &str, ip: Option<IpAddr>) -> ChangeSet {
        let spec = ip.map(|ip| engine::EndpointSpec {
            name: format!("{node}/ingress"),
            namespace: String::new(),
            node: node.to_string(),
            ip: Some(ip),
            service_account: String::new(),
            labels: vec![],
            ports: vec![],
            host_network: false,
            entity: Some("ingress".into()),
        });
        match (self.ingress.get(node).copied(), spec) {
            (Some(id), Some(spec)) => self.engine.update_endpoint(id, spec),
            (None, Some(spec)) => {
                let (id, changes) = self.engine.add_endpoint(spec);
                self.ingress.insert(node.to_string(), id);
                changes
            }
            (Some(id), None) => {
                self.ingress.remove(node);
                self.engine.remove_endpoint(id)
            }
            (None, None) => ChangeSet::default(),
        }
    }

    /// A policy secret set (or removed): under its own name, and, for a name `A-B`, under
    /// every `A/B` it can stand for (Cilium's operator copies `ns/name` into the secrets
    /// namespace as `ns-name`); a secret of that exact name wins over such an alias.
    fn set_secret(&mut self, ns: &str, name: &str, data: Option<BTreeMap<String, String>>) {
        let own = (ns.to_string(), name.to_string());
        let aliases: Vec<(String, String)> = name
            .match_indices('-')
            .map(|(i, _)| (name[..i].to_string(), name[i + 1..].to_string()))
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
            .collect();
        match data {
            Some(d) => {
                for alias in aliases {
                    if !self.secret_objects.contains(&alias) {
                        self.secrets.insert(alias, d.clone());
                    }
                }
                self.secret_objects.insert(own.clone());
                self.secrets.insert(own, d);
            }
            None => {
                self.secret_objects.remove(&own);
                self.secrets.remove(&own);
                for alias in aliases {
                    if !self.secret_objects.contains(&alias) {
                        self.secrets.remove(&alias);
                    }
                }
            }
        }
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

/// A Secret's values: `stringData` as written, `data` decoded from base64 (a value that is
/// not valid base64 or UTF-8 is left out).
fn secret_data(object: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(map) = object["data"].as_object() {
        for (k, v) in map {
            if let Some(text) = v
                .as_str()
                .and_then(base64_decode)
                .and_then(|b| String::from_utf8(b).ok())
            {
                out.insert(k.clone(), text);
            }
        }
    }
    if let Some(map) = object["stringData"].as_object() {
        for (k, v) in map {
            if let Some(text) = v.as_str() {
                out.insert(k.clone(), text.to_string());
            }
        }
    }
    out
}

/// Standard base64 (padding optional, whitespace ignored), as Kubernetes encodes `data`.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod secret_tests {
    use super::*;

    #[test]
    fn base64_as_kubernetes_writes_it() {
        assert_eq!(
            base64_decode("QmVhcmVyIDEyMzQ1Ng==").unwrap(),
            b"Bearer 123456"
        );
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn an_operator_copy_stands_for_its_source_and_an_exact_secret_wins() {
        let mut live = LiveCluster::new(Options::default());
        live.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "cilium-test-1-header-match", "namespace": "cilium-secrets"},
            "data": {"value": "QmVhcmVyIDEyMzQ1Ng=="}}))
            .unwrap();
        let key = ("cilium-test-1".to_string(), "header-match".to_string());
        assert_eq!(live.secrets[&key]["value"], "Bearer 123456");
        live.delete(
            "Secret",
            Some("cilium-secrets"),
            "cilium-test-1-header-match",
        );
        assert!(!live.secrets.contains_key(&key));
    }
}
