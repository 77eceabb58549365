//! Security identities (`pkg/identity`): numeric ids for label sets, reserved ids 1-10,
//! cluster identities from 256 and node-local CIDR identities with bit 24 set.

use crate::labels::{
    KEY_CLUSTER, KEY_NAMESPACE, KEY_SERVICE_ACCOUNT, Label, LabelSet, PREFIX_NAMESPACE_LABELS,
    SOURCE_CIDR, SOURCE_FQDN, SOURCE_K8S, SOURCE_RESERVED, is_identity_label,
};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

pub type IdentityId = u32;

pub const UNKNOWN: IdentityId = 0;
pub const HOST: IdentityId = 1;
pub const WORLD: IdentityId = 2;
pub const UNMANAGED: IdentityId = 3;
pub const HEALTH: IdentityId = 4;
pub const INIT: IdentityId = 5;
pub const REMOTE_NODE: IdentityId = 6;
pub const KUBE_APISERVER: IdentityId = 7;
pub const INGRESS: IdentityId = 8;
pub const WORLD_IPV4: IdentityId = 9;
pub const WORLD_IPV6: IdentityId = 10;

const RESERVED: &[(IdentityId, &str)] = &[
    (HOST, "host"),
    (WORLD, "world"),
    (UNMANAGED, "unmanaged"),
    (HEALTH, "health"),
    (INIT, "init"),
    (REMOTE_NODE, "remote-node"),
    (KUBE_APISERVER, "kube-apiserver"),
    (INGRESS, "ingress"),
    (WORLD_IPV4, "world-ipv4"),
    (WORLD_IPV6, "world-ipv6"),
];

const FIRST_CLUSTER_ID: IdentityId = 256;
const FIRST_LOCAL_ID: IdentityId = 1 << 24;

pub fn reserved_id(name: &str) -> Option<IdentityId> {
    RESERVED.iter().find(|(_, n)| *n == name).map(|(id, _)| *id)
}

pub fn reserved_name(id: IdentityId) -> Option<&'static str> {
    RESERVED.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityKind {
    Reserved,
    Pod,
    /// An address outside the cluster (or a node without Cilium): world, CIDR-selectable.
    Cidr,
    /// A node address seen from another node when CIDR selectors may match nodes.
    Node,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub id: IdentityId,
    pub labels: LabelSet,
    pub kind: IdentityKind,
    /// The address of a CIDR or node identity.
    pub addr: Option<IpAddr>,
    /// The DNS names this address was learned under through the DNS proxy (toFQDNs).
    pub fqdn_names: Vec<String>,
}

impl Identity {
    pub fn name(&self) -> String {
        if let Some(n) = reserved_name(self.id) {
            return n.to_string();
        }
        match (self.kind, self.addr) {
            (IdentityKind::Cidr | IdentityKind::Node, Some(a)) => a.to_string(),
            _ => self.labels.to_string(),
        }
    }
}

/// The labels of a pod's identity (§4): its filtered labels, namespace, service account,
/// cluster, and the labels of its namespace.
pub fn pod_identity_labels<'a>(
    pod_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    namespace: &str,
    namespace_labels: impl IntoIterator<Item = (&'a str, &'a str)>,
    service_account: &str,
    cluster: &str,
) -> LabelSet {
    let mut labels: Vec<Label> = pod_labels
        .into_iter()
        .filter(|(k, _)| is_identity_label(k))
        .map(|(k, v)| Label::k8s(k, v))
        .collect();
    labels.push(Label::k8s(KEY_NAMESPACE, namespace));
    labels.push(Label::k8s(KEY_SERVICE_ACCOUNT, service_account));
    labels.push(Label::k8s(KEY_CLUSTER, cluster));
    for (k, v) in namespace_labels {
        labels.push(Label::k8s(&format!("{PREFIX_NAMESPACE_LABELS}{k}"), v));
    }
    LabelSet::new(labels)
}

/// Allocates identities: equal label sets share one id. Ids of released identities are not
/// reused within one table, so a stale id never names a different label set.
#[derive(Debug, Clone)]
pub struct IdentityTable {
    /// In id order: reserved, then cluster-local, then node-local (CIDR/FQDN) identities.
    by_id: BTreeMap<IdentityId, Identity>,
    by_labels: HashMap<LabelSet, IdentityId>,
    by_addr: HashMap<(IpAddr, Option<String>), IdentityId>,
    /// Numbers a cluster already gave label sets (its CiliumIdentities): a pod with those
    /// labels gets that number, and fresh allocations skip them.
    assigned: HashMap<LabelSet, IdentityId>,
    assigned_ids: std::collections::HashSet<IdentityId>,
    next_cluster: IdentityId,
    next_local: IdentityId,
}

impl Default for IdentityTable {
    fn default() -> Self {
        let mut t = IdentityTable {
            by_id: BTreeMap::new(),
            by_labels: HashMap::new(),
            by_addr: HashMap::new(),
            assigned: HashMap::new(),
            assigned_ids: std::collections::HashSet::new(),
            next_cluster: FIRST_CLUSTER_ID,
            next_local: FIRST_LOCAL_ID,
        };
        for (id, name) in RESERVED {
            let labels = LabelSet::new(vec![Label::reserved(name)]);
            t.insert(Identity {
                id: *id,
                labels,
                kind: IdentityKind::Reserved,
                addr: None,
                fqdn_names: vec![],
            });
        }
        t
    }
}

impl IdentityTable {
    fn insert(&mut self, identity: Identity) -> IdentityId {
        let id = identity.id;
        if identity.kind == IdentityKind::Pod || identity.kind == IdentityKind::Reserved {
            self.by_labels.insert(identity.labels.clone(), id);
        }
        self.by_id.insert(id, identity);
        id
    }

    pub fn get(&self, id: IdentityId) -> Option<&Identity> {
        self.by_id.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Identity> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The identity a pod label set already has, without allocating one.
    pub fn find_pod(&self, labels: &LabelSet) -> Option<IdentityId> {
        self.by_labels.get(labels).copied()
    }

    /// The identity of an address (as learned under `fqdn`), without allocating one.
    pub fn find_cidr(&self, addr: IpAddr, fqdn: Option<&str>) -> Option<IdentityId> {
        self.by_addr.get(&(addr, fqdn.map(str::to_string))).copied()
    }

    /// Forgets an identity that nothing uses any more. Reserved identities stay.
    pub fn release(&mut self, id: IdentityId) -> Option<Identity> {
        if reserved_name(id).is_some() {
            return None;
        }
        let identity = self.by_id.remove(&id)?;
        match identity.kind {
            IdentityKind::Pod | IdentityKind::Reserved => {
                self.by_labels.remove(&identity.labels);
            }
            IdentityKind::Cidr | IdentityKind::Node => {
                self.by_addr.retain(|_, v| *v != id);
            }
        }
        Some(identity)
    }

    /// Gives `labels` the number a cluster already gave them (a CiliumIdentity), for when a
    /// pod with them arrives. Refused (false) for numbers outside the cluster-local range or
    /// already in use, and for label sets that already have an identity.
    pub fn assign(&mut self, labels: LabelSet, id: IdentityId) -> bool {
        let in_range = (FIRST_CLUSTER_ID..FIRST_LOCAL_ID).contains(&id);
        if !in_range
            || self.by_id.contains_key(&id)
            || self.assigned_ids.contains(&id)
            || self.by_labels.contains_key(&labels)
            || self.assigned.contains_key(&labels)
        {
            return false;
        }
        self.assigned_ids.insert(id);
        self.assigned.insert(labels, id);
        true
    }

    /// The identity of a pod's label set.
    pub fn pod(&mut self, labels: LabelSet) -> IdentityId {
        if let Some(id) = self.by_labels.get(&labels) {
            return *id;
        }
        let id = match self.assigned.get(&labels) {
            Some(id) => *id,
            None => self.next_free_cluster_id(),
        };
        self.insert(Identity {
            id,
            labels,
            kind: IdentityKind::Pod,
            addr: None,
            fqdn_names: vec![],
        })
    }

    fn next_free_cluster_id(&mut self) -> IdentityId {
        loop {
            let id = self.next_cluster;
            self.next_cluster += 1;
            if !self.assigned_ids.contains(&id) && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// A reserved identity plus extra labels (e.g. a host endpoint's node labels); the id
    /// stays the reserved one.
    pub fn reserved_with_labels(&self, id: IdentityId, extra: &[Label]) -> Option<Identity> {
        let mut base = self.get(id)?.clone();
        let mut labels: Vec<Label> = base.labels.iter().cloned().collect();
        labels.extend(extra.iter().cloned());
        base.labels = LabelSet::new(labels);
        Some(base)
    }

    /// The identity of an address outside the cluster, optionally as learned from a DNS
    /// answer for `fqdn` (which is what toFQDNs selectors select).
    pub fn cidr(&mut self, addr: IpAddr, fqdn: Option<&str>) -> IdentityId {
        let key = (addr, fqdn.map(str::to_string));
        if let Some(id) = self.by_addr.get(&key) {
            return *id;
        }
        let family = if addr.is_ipv4() {
            "world-ipv4"
        } else {
            "world-ipv6"
        };
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        let mut labels = vec![
            Label::new(SOURCE_RESERVED, "world", ""),
            Label::new(SOURCE_RESERVED, family, ""),
            Label::new(SOURCE_CIDR, &format!("{addr}/{prefix}"), ""),
        ];
        if let Some(name) = fqdn {
            labels.push(Label::new(SOURCE_FQDN, name, ""));
        }
        let id = self.next_local;
        self.next_local += 1;
        self.by_addr.insert(key, id);
        self.insert(Identity {
            id,
            labels: LabelSet::new(labels),
            kind: IdentityKind::Cidr,
            addr: Some(addr),
            fqdn_names: fqdn.map(|n| vec![n.to_string()]).unwrap_or_default(),
        })
    }

    /// A remote node's address as its own identity (with remote-node's labels), so that CIDR
    /// selectors can tell nodes apart (`policy-cidr-match-mode=nodes`).
    pub fn node(&mut self, addr: IpAddr, node_labels: &[(String, String)]) -> IdentityId {
        let key = (addr, Some("\0node".to_string()));
        if let Some(id) = self.by_addr.get(&key) {
            return *id;
        }
        let mut labels = vec![Label::reserved("remote-node")];
        labels.extend(
            node_labels
                .iter()
                .map(|(k, v)| Label::new(SOURCE_K8S, k, v)),
        );
        let id = (1 << 25) | (self.next_local & 0xffff);
        self.next_local += 1;
        self.by_addr.insert(key, id);
        self.insert(Identity {
            id,
            labels: LabelSet::new(labels),
            kind: IdentityKind::Node,
            addr: Some(addr),
            fqdn_names: vec![],
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    #[test]
    fn a_cluster_number_is_used_for_its_labels_and_skipped_by_fresh_allocations() {
        let mut t = IdentityTable::default();
        let web = LabelSet::new(vec![Label::k8s("app", "web")]);
        let db = LabelSet::new(vec![Label::k8s("app", "db")]);
        assert!(t.assign(web.clone(), 256));
        assert!(!t.assign(db.clone(), 256), "a number is given once");
        assert!(
            !t.assign(db.clone(), 5),
            "reserved numbers are not the cluster's to give"
        );
        // A fresh label set does not take the assigned number.
        assert_eq!(t.pod(db.clone()), 257);
        assert_eq!(t.pod(web.clone()), 256);
        assert!(!t.assign(db, 300), "labels that have an identity keep it");
        // Released and back: the cluster's number again, never another set's.
        assert!(t.release(256).is_some());
        let other = LabelSet::new(vec![Label::k8s("app", "other")]);
        assert_eq!(t.pod(other), 258);
        assert_eq!(t.pod(web), 256);
    }

    use super::*;

    #[test]
    fn reserved_numbers_match_cilium() {
        // semantics §7.7 vector 90
        let expect = [
            ("host", 1),
            ("world", 2),
            ("unmanaged", 3),
            ("health", 4),
            ("init", 5),
            ("remote-node", 6),
            ("kube-apiserver", 7),
            ("ingress", 8),
            ("world-ipv4", 9),
            ("world-ipv6", 10),
        ];
        for (name, id) in expect {
            assert_eq!(reserved_id(name), Some(id));
            assert_eq!(reserved_name(id), Some(name));
        }
        assert_eq!(reserved_name(700), None);
    }

    #[test]
    fn equal_label_sets_share_an_identity() {
        let mut t = IdentityTable::default();
        let a = pod_identity_labels(
            [("app", "x"), ("pod-template-hash", "abc")],
            "ns",
            [],
            "default",
            "c",
        );
        let b = pod_identity_labels(
            [("app", "x"), ("pod-template-hash", "def")],
            "ns",
            [],
            "default",
            "c",
        );
        assert_eq!(
            t.pod(a),
            t.pod(b),
            "pod-template-hash is not part of the identity (§7.7 92)"
        );
        let c = pod_identity_labels([("app", "y")], "ns", [], "default", "c");
        let (ia, ic) = (t.pod(c.clone()), t.pod(c));
        assert_eq!(ia, ic);
        assert!(ia >= 256);
        let w = t.cidr("1.1.1.1".parse().unwrap(), None);
        assert!(w >= 1 << 24);
    }
}
