//! A cluster followed event by event (`live::LiveCluster`, what a node agent does with its
//! watches) decides every flow as `manifests::load` of the final objects does, whatever order
//! the events come in (separate watches per kind interleave arbitrarily), with objects deleted
//! and applied again on the way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::live::LiveCluster;
use membrane_cluster::manifests::{SourceFile, load};
use membrane_kube::fake::cluster_objects;
use membrane_kube::json::read_manifests;
use membrane_policy::engine::Party;
use membrane_policy::model::Protocol;
use membrane_policy::options::Options;
use membrane_policy::verdict::L7Request;
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;

/// The fixed seed demo as a cluster serves it (Gateways aside: the agent's gateway is not an
/// object it follows).
fn objects() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed-demo-fixed");
    let mut objects: Vec<Value> = cluster_objects(read_manifests(&root).unwrap())
        .into_iter()
        .filter(|o| !matches!(o["kind"].as_str(), Some("Gateway" | "HTTPRoute")))
        .collect();
    // A namespace label that a policy selects by, so namespace events matter: pods of
    // namespaces labelled `team: ops` may reach redis.
    for o in &mut objects {
        if o["kind"] == "Namespace" && o["metadata"]["name"] == "tools" {
            o["metadata"]["labels"]["team"] = "ops".into();
        }
    }
    objects.push(serde_json::json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "ops-to-redis", "namespace": "database"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "redis"}},
            "ingress": [{"fromEndpoints": [{"matchLabels": {
                "k8s:io.cilium.k8s.namespace.labels.team": "ops",
                "k8s:io.kubernetes.pod.namespace": "tools"}}],
                "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]}]}}));
    objects
}

/// An earlier version of an object: other labels (so a later apply is an update).
fn stale(o: &Value) -> Value {
    let mut old = o.clone();
    old["metadata"]["labels"] = serde_json::json!({"app": "stale", "version": "old"});
    old
}

const PORTS: &[(Protocol, u16)] = &[
    (Protocol::Udp, 53),
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 3000),
    (Protocol::Tcp, 6379),
    (Protocol::Tcp, 8000),
    (Protocol::Tcp, 443),
];

/// Every verdict between running pods (and from/to the world), by pod name.
fn cold_verdicts(objects: &[Value]) -> Vec<String> {
    let files = objects
        .iter()
        .map(|o| SourceFile {
            name: "cluster.json".into(),
            text: o.to_string(),
        })
        .collect();
    let loaded = load(files);
    let world = &loaded.world;
    let pods = pod_names(objects);
    let party = |name: &str| {
        if name == "world" {
            world.party("world").unwrap()
        } else {
            world.party(name).unwrap()
        }
    };
    verdicts(&pods, |from, to, protocol, port| {
        let d = world.decide(
            party(from),
            party(to),
            protocol,
            port,
            &L7Request::None,
            false,
        );
        format!("{:?}", d.verdict)
    })
}

fn pod_names(objects: &[Value]) -> Vec<String> {
    let mut pods: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Pod")
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    pods.push("world".into());
    pods
}

fn verdicts(pods: &[String], decide: impl Fn(&str, &str, Protocol, u16) -> String) -> Vec<String> {
    let mut out = Vec::new();
    for from in pods {
        for to in pods {
            if from == to {
                continue;
            }
            for &(protocol, port) in PORTS {
                out.push(format!(
                    "{from} → {to} {port}/{protocol:?}: {}",
                    decide(from, to, protocol, port)
                ));
            }
        }
    }
    out
}

fn live_verdicts(live: &LiveCluster, objects: &[Value]) -> Vec<String> {
    let pods = pod_names(objects);
    let state = live.engine().state();
    let party = |name: &str| -> Party {
        if name == "world" {
            return Party::World {
                addr: membrane_cluster::world::WORLD_ADDR,
                learned_as: None,
            };
        }
        let (ns, pod) = name.split_once('/').unwrap();
        Party::Pod(
            live.pod(ns, pod)
                .unwrap_or_else(|| panic!("{name} is not an endpoint")),
        )
    };
    verdicts(&pods, |from, to, protocol, port| {
        let d = state.decide(
            party(from),
            party(to),
            protocol,
            port,
            &L7Request::None,
            false,
        );
        format!("{:?}", d.verdict)
    })
}

#[test]
fn in_catalog_order_the_live_cluster_decides_as_the_loaded_one() {
    let objects = objects();
    let cold = cold_verdicts(&objects);
    let mut live = LiveCluster::new(Options::default());
    for o in &objects {
        live.apply(o).unwrap();
    }
    assert_eq!(live_verdicts(&live, &objects), cold);
    // Not a trivial comparison: the fixed demo allows some flows and denies others.
    assert!(cold.iter().any(|v| v.ends_with("Deny")));
    assert!(cold.iter().any(|v| v.ends_with("Allow")));
    // The namespace-label policy takes effect: debug (tools, team: ops) reaches redis.
    assert!(
        cold.iter().any(
            |v| v.starts_with("tools/debug → database/redis-") && v.contains("6379/Tcp: Allow")
        ),
        "{cold:#?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_event_order_with_deletions_converges_to_the_loaded_cluster(
        order in Just((0..objects().len()).collect::<Vec<_>>()).prop_shuffle(),
        churn in proptest::collection::vec((0usize..1000, 0usize..1000), 0..8),
    ) {
        let objects = objects();
        let cold = cold_verdicts(&objects);
        let mut live = LiveCluster::new(Options::default());
        // Earlier versions of every pod and namespace first: the final ones are updates.
        for o in objects.iter().filter(|o| matches!(o["kind"].as_str(), Some("Pod" | "Namespace"))) {
            live.apply(&stale(o)).unwrap();
        }
        for (step, &i) in order.iter().enumerate() {
            live.apply(&objects[i]).unwrap();
            // Now and then an object applied earlier is deleted and applied again later.
            for &(at, which) in &churn {
                if at % order.len() == step {
                    let o = &objects[order[which % (step + 1)]];
                    live.delete(
                        o["kind"].as_str().unwrap(),
                        o["metadata"]["namespace"].as_str(),
                        o["metadata"]["name"].as_str().unwrap(),
                    );
                    live.apply(o).unwrap();
                }
            }
        }
        prop_assert_eq!(live_verdicts(&live, &objects), cold);
    }
}

#[test]
fn a_policy_deleted_is_no_longer_enforced_and_its_change_set_says_so() {
    let objects = objects();
    let mut live = LiveCluster::new(Options::default());
    for o in &objects {
        live.apply(o).unwrap();
    }
    live.resolve_all();
    let policy = objects
        .iter()
        .find(|o| o["kind"] == "CiliumNetworkPolicy")
        .unwrap();
    let changes = live.delete(
        "CiliumNetworkPolicy",
        policy["metadata"]["namespace"].as_str(),
        policy["metadata"]["name"].as_str().unwrap(),
    );
    let (added, removed) = changes.entry_count();
    assert!(
        added + removed > 0 || !changes.subjects.is_empty(),
        "{changes:?}"
    );
    let without: Vec<Value> = objects.iter().filter(|o| *o != policy).cloned().collect();
    assert_eq!(live_verdicts(&live, &objects), cold_verdicts(&without));
}

#[test]
fn a_pod_that_stops_running_is_removed() {
    let objects = objects();
    let mut live = LiveCluster::new(Options::default());
    for o in &objects {
        live.apply(o).unwrap();
    }
    let mut pod = objects.iter().find(|o| o["kind"] == "Pod").unwrap().clone();
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap().to_string(),
        pod["metadata"]["name"].as_str().unwrap().to_string(),
    );
    assert!(live.pod(&ns, &name).is_some());
    pod["status"]["phase"] = "Succeeded".into();
    live.apply(&pod).unwrap();
    assert!(live.pod(&ns, &name).is_none());
}

#[test]
fn an_endpoint_slice_that_moves_to_another_service_stops_feeding_the_first() {
    let mut live = LiveCluster::new(Options::default());
    let service = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"}, "spec": {"ports": [{"port": 5432}]}})
    };
    let slice = |svc: &str| {
        serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "db-abcde", "namespace": "shop",
                "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.10"]}]})
    };
    live.apply(&service("old")).unwrap();
    live.apply(&service("new")).unwrap();
    live.apply(&slice("old")).unwrap();
    let addrs = |live: &LiveCluster, name: &str| {
        live.engine()
            .state()
            .services()
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.addresses.clone())
            .unwrap_or_default()
    };
    assert_eq!(addrs(&live, "old").len(), 1);
    live.apply(&slice("new")).unwrap();
    assert!(
        addrs(&live, "old").is_empty(),
        "the moved slice still feeds `old`"
    );
    assert_eq!(addrs(&live, "new").len(), 1);
}

#[test]
fn a_namespaceless_policy_is_the_default_namespaces_for_apply_and_delete() {
    let mut live = LiveCluster::new(Options::default());
    let policy = |ns: Option<&str>| {
        let mut p = serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "p"},
            "spec": {"endpointSelector": {}, "ingress": [{}]}});
        if let Some(ns) = ns {
            p["metadata"]["namespace"] = ns.into();
        }
        p
    };
    live.apply(&policy(None)).unwrap();
    live.apply(&policy(Some("default"))).unwrap();
    // One object in the API server's eyes: deleting it by either name removes it.
    live.delete("CiliumNetworkPolicy", Some("default"), "p");
    assert_eq!(live.engine().state().policies().count(), 0);
}

/// Verdicts from every pod to every node (port 22), as the pod's node sees them.
fn to_node_verdicts(live: &LiveCluster, objects: &[Value]) -> Vec<String> {
    let state = live.engine().state();
    let mut out = Vec::new();
    for o in objects.iter().filter(|o| o["kind"] == "Pod") {
        let (ns, pod) = (
            o["metadata"]["namespace"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap(),
        );
        let from = Party::Pod(live.pod(ns, pod).unwrap());
        for n in objects.iter().filter(|o| o["kind"] == "Node") {
            let name = n["metadata"]["name"].as_str().unwrap();
            let to = state.node_party(state.node_index(name).unwrap()).unwrap();
            let d = state.decide(from, to, Protocol::Tcp, 22, &L7Request::None, false);
            out.push(format!("{ns}/{pod} → {name}: {:?}", d.verdict));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// With cidr-match-nodes a pod's policy selects nodes (its own host included) by their
    /// addresses: whatever the order pods, nodes and policies arrive in (independent
    /// watches), the verdicts are those of the nodes-first order.
    #[test]
    fn under_cidr_match_nodes_any_event_order_gives_the_same_verdicts(
        order in Just((0..objects().len() + 1).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let mut objects = objects();
        objects.push(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "to-nodes", "namespace": "frontend"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}}));
        let options = Options { cidr_match_nodes: true, ..Options::default() };
        let mut reference = LiveCluster::new(options.clone());
        for o in &objects {
            reference.apply(o).unwrap();
        }
        let mut live = LiveCluster::new(options);
        for &i in &order {
            live.apply(&objects[i]).unwrap();
        }
        let expected = to_node_verdicts(&reference, &objects);
        // Not trivial: the frontend reaches the nodes, including its own host.
        prop_assert!(expected.iter().any(|v| v.starts_with("frontend/") && v.ends_with("Allow")));
        prop_assert_eq!(to_node_verdicts(&live, &objects), expected);
        prop_assert_eq!(live_verdicts(&live, &objects), live_verdicts(&reference, &objects));
    }
}

/// A deleted namespace's labels stop selecting: a pod left in it (still terminating) is no
/// longer in `team: ops`.
#[test]
fn a_deleted_namespace_takes_its_labels_with_it() {
    let objects = objects();
    let mut live = LiveCluster::new(Options::default());
    for o in &objects {
        live.apply(o).unwrap();
    }
    let reaches_redis = |live: &LiveCluster| {
        live_verdicts(live, &objects).iter().any(|v| {
            v.starts_with("tools/debug → database/redis-") && v.contains("6379/Tcp: Allow")
        })
    };
    assert!(reaches_redis(&live));
    live.delete("Namespace", None, "tools");
    assert!(!reaches_redis(&live));
}
