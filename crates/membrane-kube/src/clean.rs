//! Each object as the analysis needs it: checked against its typed schema (k8s-openapi for the
//! core kinds, so one malformed object is reported by name and the rest still analysed), then
//! reduced to what membrane reads. Status, managedFields and volatile metadata are dropped, and
//! so are pod fields that can carry secrets (environment values, volumes, commands).

use crate::catalog::Kind;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;
use serde_json::{Map, Value};

/// What became of one listed object.
#[derive(Debug)]
pub enum Cleaned {
    Keep(Value),
    /// A pod that is not running or has no address yet: not an endpoint.
    NotAnEndpoint,
}

fn check_typed<'a, T: Deserialize<'a>>(item: &'a Value) -> Result<(), String> {
    T::deserialize(item).map(drop).map_err(|e| e.to_string())
}

/// Checks one listed item against its kind's schema and reduces it.
pub fn clean(kind: &Kind, api_version: &str, item: &Value) -> Result<Cleaned, String> {
    let Some(object) = item.as_object() else {
        return Err("not a JSON object".into());
    };
    match kind.kind {
        "Namespace" => check_typed::<Namespace>(item)?,
        "Node" => check_typed::<Node>(item)?,
        "Pod" => check_typed::<Pod>(item)?,
        "Service" => check_typed::<Service>(item)?,
        "EndpointSlice" => check_typed::<EndpointSlice>(item)?,
        "NetworkPolicy" => check_typed::<NetworkPolicy>(item)?,
        _ => {}
    }
    let metadata = object
        .get("metadata")
        .and_then(Value::as_object)
        .ok_or("no metadata")?;
    if metadata.get("name").and_then(Value::as_str).is_none() {
        return Err("metadata.name is missing".into());
    }
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.to_string()));
    out.insert("kind".into(), Value::String(kind.kind.to_string()));
    out.insert("metadata".into(), Value::Object(clean_metadata(metadata)));
    let spec = object.get("spec");
    let status = object.get("status");
    match kind.kind {
        "Namespace" => {}
        "Node" => {
            if let Some(addresses) = status.and_then(|s| s.get("addresses")) {
                out.insert("status".into(), only(&[("addresses", addresses)]));
            }
        }
        "Pod" => {
            let phase = status.and_then(|s| s.get("phase")).and_then(Value::as_str);
            let ip = status.and_then(|s| s.get("podIP")).and_then(Value::as_str);
            if phase != Some("Running") || ip.is_none_or(str::is_empty) {
                return Ok(Cleaned::NotAnEndpoint);
            }
            if let Some(spec) = spec {
                out.insert("spec".into(), pod_spec(spec));
            }
            if let Some(status) = status.and_then(Value::as_object) {
                out.insert(
                    "status".into(),
                    pick(status, &["phase", "podIP", "podIPs", "hostIP"]),
                );
            }
        }
        "Service" => {
            if let Some(spec) = spec.and_then(Value::as_object) {
                out.insert(
                    "spec".into(),
                    pick(
                        spec,
                        &[
                            "type",
                            "selector",
                            "ports",
                            "clusterIP",
                            "clusterIPs",
                            "externalName",
                        ],
                    ),
                );
            }
        }
        "EndpointSlice" => {
            for key in ["addressType", "endpoints", "ports"] {
                if let Some(v) = object.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
        }
        "CiliumIdentity" => {
            if let Some(v) = object.get("security-labels") {
                out.insert("security-labels".into(), v.clone());
            }
        }
        "CiliumEndpoint" => {
            if let Some(status) = status.and_then(Value::as_object) {
                out.insert(
                    "status".into(),
                    pick(status, &["id", "identity", "networking"]),
                );
            }
        }
        _ => {
            // Policies, CIDR groups, Gateways and routes: their spec is what they say.
            for key in ["spec", "specs"] {
                if let Some(v) = object.get(key) {
                    out.insert(key.into(), v.clone());
                }
            }
        }
    }
    Ok(Cleaned::Keep(Value::Object(out)))
}

fn only(pairs: &[(&str, &Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).clone()))
            .collect(),
    )
}

fn pick(from: &Map<String, Value>, keys: &[&str]) -> Value {
    Value::Object(
        keys.iter()
            .filter_map(|k| Some(((*k).to_string(), from.get(*k)?.clone())))
            .collect(),
    )
}

fn clean_metadata(metadata: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for key in ["name", "namespace", "labels"] {
        if let Some(v) = metadata.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    // Annotations are dropped: membrane reads none, and tools keep whole objects in them
    // (kubectl's last-applied copy, other appliers' copies, injection templates) that can
    // carry secrets into a snapshot.
    if let Some(owners) = metadata.get("ownerReferences").and_then(Value::as_array) {
        let owners: Vec<Value> = owners
            .iter()
            .filter_map(Value::as_object)
            .map(|o| pick(o, &["apiVersion", "kind", "name", "controller"]))
            .collect();
        out.insert("ownerReferences".into(), Value::Array(owners));
    }
    out
}

/// A pod's spec without what can hold secrets: only placement, identity and ports.
fn pod_spec(spec: &Value) -> Value {
    let Some(spec) = spec.as_object() else {
        return Value::Object(Map::new());
    };
    let mut out = match pick(
        spec,
        &[
            "nodeName",
            "hostNetwork",
            "serviceAccountName",
            "serviceAccount",
        ],
    ) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let containers: Vec<Value> = spec
        .get("containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(Value::as_object)
                .map(|c| pick(c, &["name", "ports"]))
                .collect()
        })
        .unwrap_or_default();
    out.insert("containers".into(), Value::Array(containers));
    Value::Object(out)
}

/// Namespace and name, for sorting and for naming an object in a report.
pub fn namespace_and_name(item: &Value) -> (Option<String>, String) {
    let meta = item.get("metadata");
    let field = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (field("namespace"), field("name").unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::catalog::by_kind;
    use serde_json::json;

    fn pod(phase: &str, ip: Option<&str>) -> Value {
        json!({
            "metadata": {"name": "frontend-7d4b9c8f5-x2x9k", "namespace": "frontend",
                "labels": {"app": "frontend", "pod-template-hash": "7d4b9c8f5"},
                "managedFields": [{"manager": "kube-controller-manager"}],
                "annotations": {"vault.hashicorp.com/agent-inject-template-db": "password=hunter2"},
                "uid": "1", "resourceVersion": "12",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "frontend-7d4b9c8f5", "uid": "2", "controller": true}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx",
                "env": [{"name": "PASSWORD", "value": "hunter2"}],
                "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"phase": phase, "podIP": ip, "conditions": []}
        })
    }

    #[test]
    fn a_running_pod_keeps_placement_ports_and_address_only() {
        let kind = by_kind("Pod").unwrap();
        let Ok(Cleaned::Keep(v)) = clean(kind, "v1", &pod("Running", Some("10.0.1.5"))) else {
            panic!("a running pod with an address is kept")
        };
        let text = v.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("managedFields") && !text.contains("resourceVersion"));
        assert_eq!(
            v["status"],
            json!({"phase": "Running", "podIP": "10.0.1.5"})
        );
        assert_eq!(
            v["metadata"]["ownerReferences"][0]["name"],
            "frontend-7d4b9c8f5"
        );
        assert_eq!(v["spec"]["containers"][0]["ports"][0]["containerPort"], 80);
        assert_eq!(v["kind"], "Pod");
    }

    #[test]
    fn pending_pods_and_pods_without_an_address_are_not_endpoints() {
        let kind = by_kind("Pod").unwrap();
        assert!(matches!(
            clean(kind, "v1", &pod("Pending", None)),
            Ok(Cleaned::NotAnEndpoint)
        ));
        assert!(matches!(
            clean(kind, "v1", &pod("Running", None)),
            Ok(Cleaned::NotAnEndpoint)
        ));
        assert!(matches!(
            clean(kind, "v1", &pod("Succeeded", Some("10.0.0.1"))),
            Ok(Cleaned::NotAnEndpoint)
        ));
    }

    #[test]
    fn a_malformed_core_object_is_refused_with_the_reason() {
        let kind = by_kind("Pod").unwrap();
        let bad = json!({"metadata": {"name": "p", "labels": {"app": 5}}});
        let err = clean(kind, "v1", &bad).unwrap_err();
        assert!(err.contains("invalid type"), "{err}");
    }
}
