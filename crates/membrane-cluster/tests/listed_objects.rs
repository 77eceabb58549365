//! Objects as a cluster lists them (what `membrane snapshot` writes and `--kubeconfig` reads):
//! pods with a phase and an owner, EndpointSlices, CiliumIdentities, duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::manifests::{SourceFile, load};

fn loaded(text: &str) -> membrane_cluster::manifests::Loaded {
    load(vec![SourceFile {
        name: "cluster.yaml".into(),
        text: text.into(),
    }])
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c8f5-x2x9k
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9c8f5}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c8f5, controller: true}]
spec: {nodeName: node-1, containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIP: 10.0.1.5}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c8f5-q8w2z
  namespace: shop
  labels: {app: web, pod-template-hash: 7d4b9c8f5}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4b9c8f5, controller: true}]
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.6}
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  labels: {app: db}
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, controller: true}]
spec: {nodeName: node-1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.7}
---
apiVersion: v1
kind: Pod
metadata: {name: job-abc, namespace: shop, labels: {app: job}}
spec: {containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.0.1.8}
"#;

#[test]
fn listed_pods_are_grouped_by_their_owning_workload() {
    let l = loaded(PODS);
    let w: Vec<(String, String, u32)> = l
        .workloads
        .iter()
        .map(|w| {
            (
                w.kind.clone(),
                format!("{}/{}", w.namespace, w.name),
                w.replicas,
            )
        })
        .collect();
    assert_eq!(
        w,
        [
            ("Deployment".to_string(), "shop/web".to_string(), 2),
            ("StatefulSet".to_string(), "shop/db".to_string(), 1),
        ]
    );
    assert_eq!(l.pods_not_running, 1);
    // Both pods are endpoints with their own addresses; the workload's name finds the first.
    let world = &l.world;
    let by_workload = world.party("shop/web").unwrap();
    let by_pod = world.party("shop/web-7d4b9c8f5-x2x9k").unwrap();
    assert_eq!(by_workload, by_pod);
    assert!(world.party("shop/web-7d4b9c8f5-q8w2z").is_some());
    assert!(
        world.party("shop/job-abc").is_none(),
        "a finished pod is no endpoint"
    );
    assert!(world.party("10.0.1.6").is_some());
}

#[test]
fn a_selectorless_service_takes_its_backends_from_endpoint_slices() {
    let text = r#"
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec: {ports: [{port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-abcde, namespace: shop, labels: {kubernetes.io/service-name: legacy}}
addressType: IPv4
endpoints:
- addresses: [192.0.2.10]
  conditions: {ready: true}
- addresses: [192.0.2.11]
  conditions: {ready: false}
ports: [{port: 5432}]
"#;
    let l = loaded(text);
    let svc = l
        .world
        .scenario
        .services
        .iter()
        .find(|s| s.name == "legacy")
        .unwrap();
    assert_eq!(
        svc.addresses,
        ["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[test]
fn cilium_identities_number_the_pods_that_have_their_labels() {
    let text = format!(
        "{PODS}---\napiVersion: cilium.io/v2\nkind: CiliumIdentity\nmetadata: {{name: \"31337\"}}\nsecurity-labels:\n  k8s:app: web\n  k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name: shop\n  k8s:io.cilium.k8s.policy.cluster: default\n  k8s:io.cilium.k8s.policy.serviceaccount: default\n  k8s:io.kubernetes.pod.namespace: shop\n"
    );
    let l = loaded(&text);
    let world = &l.world;
    let web = world.party("shop/web").unwrap();
    assert_eq!(world.identity_of(web, None, false), 31337);
    let db = world.party("shop/db").unwrap();
    assert_ne!(world.identity_of(db, None, false), 31337);
}

#[test]
fn the_last_object_applied_wins() {
    let policy = |port: u16| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{{toPorts: [{{ports: [{{port: \"{port}\"}}]}}]}}]\n"
        )
    };
    let l = loaded(&format!("{PODS}---\n{}---\n{}", policy(80), policy(8080)));
    assert_eq!(l.world.policy_set.policies.len(), 1);
    assert!(l.as_written.as_ref().is_some_and(|s| s.policies.len() == 2));
    let written = l.as_written.as_ref().unwrap();
    let lines: Vec<u32> = written
        .policies
        .iter()
        .map(|p| p.origin.span.line)
        .collect();
    assert_eq!(
        l.world.policy_set.policies[0].origin.span.line, lines[1],
        "{lines:?}"
    );
}
