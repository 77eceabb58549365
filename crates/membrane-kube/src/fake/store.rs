//! The fake's state: served kinds, objects, the event log and injected faults.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// One kind the fake serves (discovery lists it; list and watch answer for it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedKind {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

impl ServedKind {
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ServedKind {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// What a cluster with Cilium 1.17 and the Gateway API serves of interest here, plus the
/// workload kinds whose objects a real cluster holds beside the pods.
pub fn default_served_kinds() -> Vec<ServedKind> {
    let mut kinds: Vec<ServedKind> = crate::catalog::KINDS
        .iter()
        .map(|k| ServedKind::new(k.group, k.versions[0], k.kind, k.plural, k.namespaced))
        .collect();
    kinds.push(ServedKind::new(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
    ));
    kinds.push(ServedKind::new(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
    ));
    kinds.push(ServedKind::new("", "v1", "Secret", "secrets", true));
    kinds
}

/// An injected failure for requests whose path contains a given text.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status code and a `metav1.Status` body.
    Status(u16),
    /// Wait this long before answering.
    Delay(Duration),
    /// Send the first half of the answer and close the connection.
    Truncate,
}

#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub rv: u64,
    pub kind: usize,
    pub namespace: Option<String>,
    pub event_type: &'static str,
    pub object: Value,
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    pub kinds: Vec<ServedKind>,
    /// Per served kind: (namespace, name) → object (with apiVersion and kind).
    pub objects: Vec<BTreeMap<(String, String), Value>>,
    pub rv: u64,
    /// Watches and continue tokens from before this version get `410 Gone`.
    pub compacted: u64,
    pub log: Vec<Event>,
    pub faults: Vec<(String, Fault)>,
    /// The bearer token every request must carry, when set.
    pub token: Option<String>,
    /// Every request's path and query, in order.
    pub requests: Vec<String>,
}

impl Store {
    pub fn kind_index(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.api_version() == api_version && k.kind == kind)
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn apply(&mut self, mut object: Value) -> Result<u64, String> {
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let index = self
            .kind_index(&api_version, &kind)
            .ok_or_else(|| format!("the fake does not serve {api_version} {kind}"))?;
        let namespaced = self.kinds[index].namespaced;
        let name = object["metadata"]["name"]
            .as_str()
            .ok_or("metadata.name is missing")?
            .to_string();
        let namespace = if namespaced {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            object["metadata"]["namespace"] = Value::String(ns.clone());
            ns
        } else {
            String::new()
        };
        self.rv += 1;
        let rv = self.rv;
        let key = (namespace.clone(), name.clone());
        let existing = self.objects[index].get(&key);
        let event_type = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let uid = existing
            .and_then(|o| o["metadata"]["uid"].as_str())
            .map_or_else(
                || format!("{:08x}-0000-4000-8000-{rv:012x}", rv),
                str::to_string,
            );
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = Value::String(rv.to_string());
        meta["uid"] = Value::String(uid);
        meta["creationTimestamp"] = json!("2026-12-01T00:00:00Z");
        // What a real server adds to every object, so readers must drop it.
        meta["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply",
            "apiVersion": api_version, "fieldsType": "FieldsV1", "fieldsV1": {}}]);
        self.objects[index].insert(key, object.clone());
        self.log.push(Event {
            rv,
            kind: index,
            namespace: namespaced.then_some(namespace),
            event_type,
            object,
        });
        Ok(rv)
    }

    pub fn delete(&mut self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let Some(index) = self.kind_index(api_version, kind) else {
            return false;
        };
        let ns = if self.kinds[index].namespaced {
            namespace.to_string()
        } else {
            String::new()
        };
        let Some(mut object) = self.objects[index].remove(&(ns.clone(), name.to_string())) else {
            return false;
        };
        self.rv += 1;
        object["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.log.push(Event {
            rv: self.rv,
            kind: index,
            namespace: self.kinds[index].namespaced.then_some(ns),
            event_type: "DELETED",
            object,
        });
        true
    }

    pub fn fault_for(&self, path: &str) -> Option<Fault> {
        self.faults
            .iter()
            .find(|(p, _)| path.contains(p.as_str()))
            .map(|(_, f)| f.clone())
    }
}

/// A `metav1.Status` failure as the apiserver writes it.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

pub(crate) fn reason_of(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        410 => "Expired",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}
