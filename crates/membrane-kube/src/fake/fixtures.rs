//! Manifests turned into what a cluster serves after applying them: the objects as written
//! (namespaced ones in `default` when they name none, as kubectl applies them), plus what the
//! controllers and kubelets create: ReplicaSets and their Pods for Deployments (names with
//! hashes, `pod-template-hash` labels), Pods scheduled on nodes with addresses and a Running
//! phase, EndpointSlices for Services, and the namespaces' `kubernetes.io/metadata.name` label.
//! A cluster's own CoreDNS (`kube-system`, `k8s-app: kube-dns`) is added when absent.

pub use crate::json::yaml_to_json;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// FNV-1a, as Kubernetes hashes pod templates, rendered in its "safe" alphabet.
fn safe_hash(seed: &str, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c_9dc5;
    for b in seed.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let mut out = String::with_capacity(len);
    let mut x = u64::from(h) | (u64::from(h.rotate_left(13)) << 32);
    for _ in 0..len {
        out.push(char::from(ALPHABET[(x % 27) as usize]));
        x /= 27;
        if x == 0 {
            x = u64::from(h) + 7;
        }
    }
    out
}

fn meta<'v>(o: &'v Value, key: &str) -> Option<&'v str> {
    o["metadata"][key].as_str()
}

struct NodeSlot {
    name: String,
    address: String,
    next_host: u32,
    index: usize,
}

struct Builder {
    out: Vec<Value>,
    nodes: Vec<NodeSlot>,
    pods: Vec<Value>,
    namespaces: BTreeMap<String, Option<Value>>,
    next_cluster_ip: u32,
}

impl Builder {
    fn schedule(&mut self, wanted: Option<&str>) -> (String, String, String) {
        if self.nodes.is_empty() {
            self.nodes.push(NodeSlot {
                name: "node-1".into(),
                address: "172.18.0.2".into(),
                next_host: 10,
                index: 0,
            });
        }
        // Pods without a nodeName go to the first node, where the offline loader places
        // them, so a fixture and its manifests agree on which node is local to a pod.
        let i = wanted
            .and_then(|w| self.nodes.iter().position(|n| n.name == w))
            .unwrap_or(0);
        let slot = &mut self.nodes[i];
        let ip = format!("10.244.{}.{}", slot.index + 1, slot.next_host);
        slot.next_host += 1;
        (slot.name.clone(), slot.address.clone(), ip)
    }

    fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: Value,
        spec: &Value,
        owner: Option<(&str, &str, &str)>,
    ) {
        let mut spec = spec.clone();
        let host_network = spec["hostNetwork"].as_bool() == Some(true);
        let (node, node_ip, ip) = self.schedule(spec["nodeName"].as_str());
        spec["nodeName"] = json!(node);
        let mut metadata = json!({"name": name, "namespace": namespace, "labels": labels});
        if let Some((api_version, kind, owner_name)) = owner {
            metadata["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind,
                "name": owner_name, "uid": format!("uid-{owner_name}"), "controller": true,
                "blockOwnerDeletion": true}]);
        }
        let pod_ip = if host_network { node_ip.clone() } else { ip };
        self.pods.push(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec,
            "status": {"phase": "Running", "hostIP": node_ip, "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        }));
    }

    fn workload(&mut self, object: &Value) {
        let kind = object["kind"].as_str().unwrap_or_default();
        let namespace = meta(object, "namespace").unwrap_or("default").to_string();
        let name = meta(object, "name").unwrap_or_default().to_string();
        let template = &object["spec"]["template"];
        let labels = template["metadata"]["labels"].clone();
        let spec = template["spec"].clone();
        match kind {
            "Deployment" => {
                let replicas = object["spec"]["replicas"].as_u64().unwrap_or(1);
                let hash = safe_hash(&format!("{namespace}/{name}/{template}"), 10);
                let rs = format!("{name}-{hash}");
                let mut pod_labels = labels.clone();
                pod_labels["pod-template-hash"] = json!(hash);
                self.out
                    .push(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": rs, "namespace": namespace, "labels": pod_labels,
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                            "name": name, "uid": format!("uid-{name}"), "controller": true}]},
                    "spec": {"replicas": replicas, "template": {"metadata": {"labels": pod_labels},
                        "spec": spec}}}));
                for i in 0..replicas {
                    let pod = format!("{rs}-{}", safe_hash(&format!("{rs}/{i}"), 5));
                    self.pod(
                        &namespace,
                        &pod,
                        pod_labels.clone(),
                        &spec,
                        Some(("apps/v1", "ReplicaSet", &rs)),
                    );
                }
            }
            "StatefulSet" => {
                let replicas = object["spec"]["replicas"].as_u64().unwrap_or(1);
                for i in 0..replicas {
                    let mut l = labels.clone();
                    l["statefulset.kubernetes.io/pod-name"] = json!(format!("{name}-{i}"));
                    self.pod(
                        &namespace,
                        &format!("{name}-{i}"),
                        l,
                        &spec,
                        Some(("apps/v1", "StatefulSet", &name)),
                    );
                }
            }
            "DaemonSet" => {
                let nodes: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
                for node in nodes {
                    let mut s = spec.clone();
                    s["nodeName"] = json!(node);
                    let pod = format!("{name}-{}", safe_hash(&format!("{name}/{node}"), 5));
                    self.pod(
                        &namespace,
                        &pod,
                        labels.clone(),
                        &s,
                        Some(("apps/v1", "DaemonSet", &name)),
                    );
                }
            }
            _ => {}
        }
    }

    /// One EndpointSlice per Service with a selector: the ready pods it selects.
    fn endpoint_slice(&self, service: &Value) -> Option<Value> {
        let selector = service["spec"]["selector"].as_object()?;
        let namespace = meta(service, "namespace")?;
        let name = meta(service, "name")?;
        let endpoints: Vec<Value> = self
            .pods
            .iter()
            .filter(|p| meta(p, "namespace") == Some(namespace))
            .filter(|p| {
                selector
                    .iter()
                    .all(|(k, v)| p["metadata"]["labels"][k.as_str()] == *v)
            })
            .map(|p| {
                json!({"addresses": [p["status"]["podIP"]], "conditions": {"ready": true},
                    "nodeName": p["spec"]["nodeName"],
                    "targetRef": {"kind": "Pod", "namespace": namespace,
                        "name": p["metadata"]["name"]}})
            })
            .collect();
        let ports: Vec<Value> = service["spec"]["ports"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        json!({"name": p["name"].as_str().unwrap_or(""),
                            "port": p["targetPort"].as_u64().or(p["port"].as_u64()),
                            "protocol": p["protocol"].as_str().unwrap_or("TCP")})
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-{}", safe_hash(name, 5)), "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                    "uid": format!("uid-{name}"), "controller": true}]},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports}),
        )
    }
}

const COREDNS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      containers:
      - name: coredns
        image: registry.k8s.io/coredns/coredns:v1.11.3
        ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  selector: {k8s-app: kube-dns}
  clusterIP: 10.96.0.10
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: 53}, {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}]
"#;

/// The objects a cluster holds after `kubectl apply` of `manifests` (see the module docs).
/// Kinds membrane's `ConnectivityTest` and anything the fake does not serve are left out.
pub fn cluster_objects(manifests: Vec<Value>) -> Vec<Value> {
    let mut manifests = manifests;
    let has_dns = manifests.iter().any(|o| {
        o["spec"]["template"]["metadata"]["labels"]["k8s-app"] == "kube-dns"
            || o["metadata"]["labels"]["k8s-app"] == "kube-dns" && o["kind"] == "Pod"
    });
    if !has_dns {
        manifests.extend(yaml_to_json(COREDNS).unwrap_or_default());
    }
    let cluster_scoped = [
        "Namespace",
        "Node",
        "CiliumClusterwideNetworkPolicy",
        "CiliumCIDRGroup",
        "CiliumIdentity",
    ];
    let mut b = Builder {
        out: Vec::new(),
        nodes: Vec::new(),
        pods: Vec::new(),
        namespaces: BTreeMap::new(),
        next_cluster_ip: 1,
    };
    b.namespaces.insert("default".into(), None);
    b.namespaces.insert("kube-system".into(), None);
    for o in &mut manifests {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        if kind.is_empty() || kind == "ConnectivityTest" {
            continue;
        }
        if !cluster_scoped.contains(&kind.as_str()) && meta(o, "namespace").is_none() {
            o["metadata"]["namespace"] = json!("default");
        }
        if let Some(ns) = meta(o, "namespace") {
            b.namespaces.entry(ns.to_string()).or_insert(None);
        }
        if let ("Namespace", Some(name)) = (kind.as_str(), meta(o, "name")) {
            b.namespaces.insert(name.to_string(), Some(o.clone()));
        }
        if kind == "Node" {
            let address = o["status"]["addresses"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
                .and_then(|x| x["address"].as_str())
                .unwrap_or("172.18.0.2")
                .to_string();
            let index = b.nodes.len();
            b.nodes.push(NodeSlot {
                name: meta(o, "name").unwrap_or_default().to_string(),
                address,
                next_host: 10,
                index,
            });
        }
    }
    for (name, declared) in &b.namespaces.clone() {
        let mut ns = declared.clone().unwrap_or_else(
            || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        );
        ns["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
        b.out.push(ns);
    }
    for o in &manifests {
        match o["kind"].as_str().unwrap_or_default() {
            "" | "ConnectivityTest" | "Namespace" => {}
            "Deployment" | "StatefulSet" | "DaemonSet" => {
                b.out.push(o.clone());
                b.workload(o);
            }
            "Pod" => {
                let namespace = meta(o, "namespace").unwrap_or("default").to_string();
                let name = meta(o, "name").unwrap_or_default().to_string();
                let labels = o["metadata"]["labels"].clone();
                b.pod(&namespace, &name, labels, &o["spec"], None);
            }
            "Service" => {
                let mut svc = o.clone();
                if svc["spec"]["clusterIP"].is_null() {
                    svc["spec"]["clusterIP"] = json!(format!(
                        "10.96.{}.{}",
                        b.next_cluster_ip / 250,
                        b.next_cluster_ip % 250 + 1
                    ));
                    b.next_cluster_ip += 1;
                }
                svc["spec"]["type"] = svc["spec"]["type"]
                    .as_str()
                    .map_or(json!("ClusterIP"), |t| json!(t));
                b.out.push(svc);
            }
            _ => b.out.push(o.clone()),
        }
    }
    let pods = std::mem::take(&mut b.pods);
    b.pods = pods;
    let slices: Vec<Value> = b
        .out
        .iter()
        .filter(|o| o["kind"] == "Service")
        .filter_map(|s| b.endpoint_slice(s))
        .collect();
    let identities = cilium_identities(&b.out, &b.pods);
    let mut out = b.out;
    out.extend(b.pods);
    out.extend(slices);
    out.extend(identities);
    out.into_iter()
        .map(|mut o| {
            if let Some(m) = o.as_object_mut() {
                m.entry("metadata")
                    .or_insert_with(|| Value::Object(Map::new()));
            }
            o
        })
        .collect()
}

/// Labels Cilium leaves out of identities by default (those the fixtures' controllers add).
const NOT_IDENTITY: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "pod-template-generation",
];

/// The CiliumIdentities Cilium's operator would have created for these pods, numbered from
/// 10,000 (so that they differ from the numbers membrane would pick itself): a pod's labels
/// with the `k8s:` source, its namespace and the namespace's labels, its service account and
/// the cluster name.
fn cilium_identities(objects: &[Value], pods: &[Value]) -> Vec<Value> {
    let namespace_labels = |ns: &str| -> Vec<(String, String)> {
        objects
            .iter()
            .find(|o| o["kind"] == "Namespace" && meta(o, "name") == Some(ns))
            .and_then(|o| o["metadata"]["labels"].as_object())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut sets: Vec<Map<String, Value>> = Vec::new();
    let mut pod_sets = Vec::new();
    for pod in pods {
        if pod["spec"]["hostNetwork"] == true {
            continue;
        }
        let ns = meta(pod, "namespace").unwrap_or("default");
        let mut labels = Map::new();
        if let Some(m) = pod["metadata"]["labels"].as_object() {
            for (k, v) in m
                .iter()
                .filter(|(k, _)| !NOT_IDENTITY.contains(&k.as_str()))
            {
                labels.insert(format!("k8s:{k}"), v.clone());
            }
        }
        for (k, v) in namespace_labels(ns) {
            labels.insert(format!("k8s:io.cilium.k8s.namespace.labels.{k}"), json!(v));
        }
        let account = pod["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or("default");
        labels.insert("k8s:io.cilium.k8s.policy.cluster".into(), json!("default"));
        labels.insert(
            "k8s:io.cilium.k8s.policy.serviceaccount".into(),
            json!(account),
        );
        labels.insert("k8s:io.kubernetes.pod.namespace".into(), json!(ns));
        if !sets.contains(&labels) {
            sets.push(labels.clone());
        }
        pod_sets.push(labels);
    }
    let mut out: Vec<Value> = sets
        .iter()
        .enumerate()
        .map(|(i, labels)| {
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumIdentity",
                "metadata": {"name": (10_000 + i).to_string()},
                "security-labels": labels})
        })
        .collect();
    // Each pod's CiliumEndpoint names the identity it carries.
    for (pod, labels) in pods
        .iter()
        .filter(|p| p["spec"]["hostNetwork"] != true)
        .zip(&pod_sets)
    {
        let Some(i) = sets.iter().position(|s| s == labels) else {
            continue;
        };
        out.push(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"]},
            "status": {"id": 100 + i, "identity": {"id": 10_000 + i},
                "networking": {"addressing": [{"ipv4": pod["status"]["podIP"]}],
                    "node": pod["status"]["hostIP"]}}}));
    }
    out
}

/// A generated cluster's manifests (before [`cluster_objects`]): 20 namespaces, 3 nodes,
/// `deployments` Deployments of 10 pods with a Service each, and `deployments × 2 / 5`
/// CiliumNetworkPolicies pairing them at random (a fixed sequence, so every run is the same).
pub fn synthetic(deployments: usize) -> Vec<serde_json::Value> {
    let ns = |i: usize| format!("team-{:02}", i % 20);
    let mut docs = Vec::new();
    for i in 0..20 {
        docs.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns(i), "labels": {"team": ns(i)}}}));
    }
    for i in 0..3 {
        docs.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{i}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.0.{}", 10 + i)}]}}));
    }
    for d in 0..deployments {
        docs.push(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("app-{d}"), "namespace": ns(d)},
            "spec": {"replicas": 10, "template": {
                "metadata": {"labels": {"app": format!("app-{d}"), "tier": format!("t{}", d % 5)}},
                "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}}}}));
        docs.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("app-{d}"), "namespace": ns(d)},
            "spec": {"selector": {"app": format!("app-{d}")}, "ports": [{"port": 80, "targetPort": 8080}]}}));
    }
    // A fixed pseudo-random pairing, so that every run serves the same cluster.
    let mut x: u64 = 7;
    let mut next = |n: usize| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) as usize % n.max(1)
    };
    for p in 0..deployments * 2 / 5 {
        let (a, b) = (next(deployments), next(deployments));
        docs.push(
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": format!("p-{p}"), "namespace": ns(p)},
            "spec": {"endpointSelector": {"matchLabels": {"app": format!("app-{a}")}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": format!("app-{b}"),
                    "k8s:io.kubernetes.pod.namespace": ns(b)}}],
                    "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}]}}),
        );
    }
    docs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_becomes_its_replicaset_and_hashed_pods() {
        let docs = yaml_to_json(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  replicas: 2\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}\n",
        )
        .unwrap();
        let objects = cluster_objects(docs);
        let pods: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Pod" && o["metadata"]["namespace"] == "shop")
            .collect();
        assert_eq!(pods.len(), 2);
        let hash = pods[0]["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert_eq!(hash.len(), 10);
        let name = pods[0]["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with(&format!("web-{hash}-")), "{name}");
        assert_eq!(pods[0]["status"]["phase"], "Running");
        assert_ne!(pods[0]["status"]["podIP"], pods[1]["status"]["podIP"]);
        assert!(objects.iter().any(|o| o["kind"] == "ReplicaSet"));
        assert!(objects.iter().any(|o| o["kind"] == "Namespace"
            && o["metadata"]["labels"]["kubernetes.io/metadata.name"] == "shop"));
        assert!(objects.iter().any(|o| o["metadata"]["name"] == "coredns"));
    }

    #[test]
    fn yaml_scalars_keep_their_types() {
        let v = yaml_to_json("a: 1\nb: \"1\"\nc: true\nd: x\ne: null\nf: 1.5\n").unwrap();
        assert_eq!(
            v[0],
            json!({"a": 1, "b": "1", "c": true, "d": "x", "e": null, "f": 1.5})
        );
    }
}
