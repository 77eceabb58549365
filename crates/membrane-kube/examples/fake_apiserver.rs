//! Serves manifests as a cluster would, from the in-process fake apiserver, until killed:
//! `cargo run -p membrane-kube --features fake --example fake_apiserver -- DIR [ADDR]`, or a
//! generated cluster (`--synthetic N`: 20 namespaces, N Deployments of 10 pods with a Service
//! each, N×2/5 CiliumNetworkPolicies, 3 nodes; the figure in docs/live-clusters.md is N=500).
//! Prints a kubeconfig for it on standard output.
#![forbid(unsafe_code)]

use membrane_kube::fake::{FakeApiServer, cluster_objects, default_served_kinds, yaml_to_json};
use std::path::Path;

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        out.push(dir.to_path_buf());
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn synthetic(deployments: usize) -> Vec<serde_json::Value> {
    use serde_json::json;
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

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fake_apiserver DIR [ADDR] | fake_apiserver --synthetic N [ADDR]";
    let mut args = args.into_iter();
    let first = args.next().ok_or(usage)?;
    let docs = if first == "--synthetic" {
        let n = args.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
        synthetic(n)
    } else {
        let mut files = Vec::new();
        yaml_files(Path::new(&first), &mut files);
        files.sort();
        let mut docs = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            docs.extend(yaml_to_json(&text).map_err(|e| format!("{}:{e}", f.display()))?);
        }
        docs
    };
    let args: Vec<String> = std::iter::once(String::new()).chain(args).collect();
    let bind = args.get(1).map_or("127.0.0.1:0", String::as_str);
    let server = FakeApiServer::start_on(
        bind.parse().map_err(|e| format!("{bind}: {e}"))?,
        default_served_kinds(),
    )
    .map_err(|e| e.to_string())?;
    server.apply_all(cluster_objects(docs))?;
    print!("{}", server.kubeconfig("membrane-fake-token"));
    loop {
        std::thread::park();
    }
}
