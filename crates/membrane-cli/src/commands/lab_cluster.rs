//! The lab's agent mode (`membrane lab run --agent`): a world as the objects a cluster
//! holds (namespaces, nodes, running pods with their addresses, policies, CIDR groups,
//! services, secrets), served by the apiserver fake inside the lab (`lab helper
//! apiserver`), which real `membrane agent` processes in the node namespaces follow.

use membrane_cluster::world::World;
use membrane_datapath::lab::AgentCluster;
use membrane_kube::fake::{FakeApiServer, default_served_kinds};
use membrane_kube::json::{read_manifests, yaml_to_json};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The kinds of a manifests directory that reach the cluster as they are written (the
/// workloads become the world's pods instead).
const AS_WRITTEN: &[&str] = &[
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "NetworkPolicy",
    "CiliumCIDRGroup",
    "Service",
    "EndpointSlice",
    "Secret",
];

fn labels(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<String, Value>>(),
    )
}

/// Where the agents read policy secrets (Cilium's default `policy-secrets-namespace`).
const SECRETS_NAMESPACE: &str = "cilium-secrets";

/// A pod name from an endpoint's (`ns/name` in manifests worlds): the last segment, with
/// what a pod name cannot hold replaced.
fn pod_name(endpoint: &str) -> String {
    let last = endpoint.rsplit('/').next().unwrap_or(endpoint);
    let name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    if name.is_empty() { "pod".into() } else { name }
}

/// The cluster for `world` (see [`world_objects`]) and the arguments its agents need for
/// what the world assumes of Cilium's configuration: cluster name, `requires:` features,
/// `agent:` flags.
pub fn world_cluster(source: &Path, world: &World) -> Result<AgentCluster, String> {
    let objects = world_objects(source, world)?;
    let mut args = vec![
        "--cluster-name".to_string(),
        world.scenario.cluster_name.clone(),
    ];
    for (k, v) in membrane_cluster::world::scenario_agent_flags(&world.scenario) {
        args.push("--agent-option".into());
        args.push(format!("{k}={v}"));
    }
    Ok(AgentCluster {
        objects,
        agent_args: args,
    })
}

/// The objects a cluster holds for `world`, loaded from `source` (a scenario file or a
/// manifests directory), as a JSON array. A Gateway's `ingress` endpoint is its node's
/// CiliumNode ingress address; other reserved-identity endpoints have no object the agent
/// follows, and such worlds are refused rather than run with another meaning.
pub fn world_objects(source: &Path, world: &World) -> Result<String, String> {
    let s = &world.scenario;
    let mut out: Vec<Value> = Vec::new();
    // A Gateway's proxy: the node's ingress address in its CiliumNode, as Cilium keeps it.
    let mut ingress_nodes: BTreeSet<&str> = BTreeSet::new();
    let mut apiserver: Vec<String> = Vec::new();
    for ep in s.endpoints.iter().filter(|e| e.entity.is_some()) {
        // The API server: the endpoints of `default/kubernetes`.
        if ep.entity.as_deref() == Some("kube-apiserver") {
            apiserver.push(ep.ip.to_string());
            continue;
        }
        if ep.entity.as_deref() != Some("ingress") || !ingress_nodes.insert(&ep.node) {
            return Err(format!(
                "endpoint {} has the reserved identity `{}`: the agent learns only one `ingress` address per node (its CiliumNode)",
                ep.name,
                ep.entity.as_deref().unwrap_or_default()
            ));
        }
        out.push(json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNode",
            "metadata": {"name": ep.node},
            "spec": {"ingress": {"ipv4": ep.ip.to_string()}}}));
    }
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    for n in &s.namespaces {
        namespaces.insert(&n.name);
        let mut l = n.labels.clone();
        if !l.iter().any(|(k, _)| k == "kubernetes.io/metadata.name") {
            l.push(("kubernetes.io/metadata.name".into(), n.name.clone()));
        }
        out.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": n.name, "labels": labels(&l)}}));
    }
    for ep in &s.endpoints {
        if namespaces.insert(&ep.namespace) {
            out.push(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ep.namespace,
                    "labels": {"kubernetes.io/metadata.name": ep.namespace}}}));
        }
    }
    for n in &s.nodes {
        let mut l = n.labels.clone();
        if !n.cilium {
            l.push(("membrane.dev/cilium".into(), "false".into()));
        }
        out.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": n.name, "labels": labels(&l)},
            "status": {"addresses": [{"type": "InternalIP", "address": n.ip.to_string()}]}}));
    }
    if !apiserver.is_empty() {
        out.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}));
        out.push(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": apiserver}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}),
        );
    }
    let mut taken: BTreeSet<(String, String)> = BTreeSet::new();
    for ep in s.endpoints.iter().filter(|e| e.entity.is_none()) {
        let mut name = pod_name(&ep.name);
        let base = name.clone();
        let mut n = 1;
        while !taken.insert((ep.namespace.clone(), name.clone())) {
            n += 1;
            name = format!("{base}-{n}");
        }
        let ports: Vec<Value> = ep
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({"containerPort": p.port, "protocol": p.protocol});
                if !p.name.is_empty() {
                    v["name"] = json!(p.name);
                }
                v
            })
            .collect();
        out.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ep.namespace, "labels": labels(&ep.labels)},
            "spec": {"nodeName": ep.node, "hostNetwork": ep.host_network,
                "serviceAccountName": ep.service_account,
                "containers": [{"name": "main", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ep.ip.to_string(),
                "podIPs": [{"ip": ep.ip.to_string()}]}}));
    }
    let written: Vec<Value> = if source.is_dir() {
        read_manifests(source)
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|o| o["kind"].as_str().is_some_and(|k| AS_WRITTEN.contains(&k)))
            .collect()
    } else {
        let mut docs = yaml_to_json(&s.policies).map_err(|e| format!("policies: {e}"))?;
        for ((namespace, name), data) in &s.secrets {
            docs.push(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace},
                "stringData": data}));
        }
        docs
    };
    // Cilium's operator copies the secrets policies use into the agents' secrets namespace
    // as `<namespace>-<name>`: that copy is what an agent reads.
    let copies: Vec<Value> = written
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .map(|o| {
            let mut copy = o.clone();
            copy["metadata"] = json!({
                "name": format!("{}-{}",
                    o["metadata"]["namespace"].as_str().unwrap_or("default"),
                    o["metadata"]["name"].as_str().unwrap_or_default()),
                "namespace": SECRETS_NAMESPACE,
            });
            copy
        })
        .collect();
    if !copies.is_empty() && namespaces.insert(SECRETS_NAMESPACE) {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": SECRETS_NAMESPACE,
                "labels": {"kubernetes.io/metadata.name": SECRETS_NAMESPACE}}}));
    }
    out.extend(written.into_iter().filter(|o| o.is_object()));
    out.extend(copies);
    serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
}

/// (apiVersion, kind, namespace, name) of an object.
type ObjectKey = (String, String, String, String);

fn key(o: &Value) -> ObjectKey {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&o["apiVersion"]),
        text(&o["kind"]),
        text(&o["metadata"]["namespace"]),
        text(&o["metadata"]["name"]),
    )
}

fn read_objects(path: &Path) -> Result<BTreeMap<ObjectKey, Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let list: Vec<Value> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(list.into_iter().map(|o| (key(&o), o)).collect())
}

/// Creates or replaces `o`; a kind written in another version than the one served (a v2
/// CiliumCIDRGroup where v2alpha1 is served, as Cilium 1.17 serves both) is stored under
/// the served one. What cannot be stored is logged, and the rest still served.
fn apply(server: &FakeApiServer, k: &ObjectKey, o: &Value) {
    let Err(e) = server.apply(o.clone()) else {
        return;
    };
    let group = k.0.split_once('/').map_or("", |(g, _)| g);
    let served = default_served_kinds()
        .into_iter()
        .find(|s| s.kind == k.1 && s.group == group);
    if let Some(kind) = served {
        let mut o = o.clone();
        o["apiVersion"] = json!(kind.api_version());
        if server.apply(o).is_ok() {
            return;
        }
    }
    eprintln!("membrane lab apiserver: {} {}/{}: {e}", k.1, k.2, k.3);
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// `lab helper apiserver --objects FILE --listen ADDR --kubeconfig OUT --ready FILE`:
/// serves the objects (the fake apiserver), writes a kubeconfig for it and the ready file,
/// then follows the objects file (changes become watch events) until it is removed.
pub fn apiserver_main(args: &[String]) -> u8 {
    match apiserver(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("membrane lab apiserver: {e}");
            1
        }
    }
}

fn apiserver(args: &[String]) -> Result<(), String> {
    let opt = |name: &str| -> Result<String, String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .ok_or_else(|| format!("needs {name}"))
    };
    let objects = PathBuf::from(opt("--objects")?);
    let listen: std::net::SocketAddr = opt("--listen")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let kubeconfig = PathBuf::from(opt("--kubeconfig")?);
    let ready = PathBuf::from(opt("--ready")?);
    let server = FakeApiServer::start_on(listen, default_served_kinds())
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let mut served = read_objects(&objects)?;
    for (k, o) in &served {
        apply(&server, k, o);
    }
    std::fs::write(&kubeconfig, server.kubeconfig("lab"))
        .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    std::fs::write(&ready, b"serving\n").map_err(|e| format!("{}: {e}", ready.display()))?;
    let mut seen = mtime(&objects);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = mtime(&objects);
        if now.is_none() {
            return Ok(()); // the lab is gone
        }
        if now == seen {
            continue;
        }
        seen = now;
        let next = match read_objects(&objects) {
            Ok(n) => n,
            Err(e) => {
                // Half-written: the next change completes it.
                eprintln!("membrane lab apiserver: {e}");
                continue;
            }
        };
        for (k, _) in served.iter().filter(|(k, _)| !next.contains_key(*k)) {
            server.delete(&k.0, &k.1, &k.2, &k.3);
        }
        for (k, o) in &next {
            if served.get(k) != Some(o) {
                apply(&server, k, o);
            }
        }
        served = next;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_are_valid_and_unique_per_namespace() {
        assert_eq!(pod_name("shop/Front_End"), "front-end");
        assert_eq!(pod_name("client"), "client");
        assert_eq!(pod_name("--"), "pod");
    }
}
