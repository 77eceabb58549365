//! Serves manifests as a cluster would, from the in-process fake apiserver, until killed:
//! `cargo run -p membrane-kube --features fake --example fake_apiserver -- DIR [ADDR]`, or a
//! generated cluster (`--synthetic N`: 20 namespaces, N Deployments of 10 pods with a Service
//! each, N×2/5 CiliumNetworkPolicies, 3 nodes; the figure in docs/live-clusters.md is N=500).
//! Prints a kubeconfig for it on standard output.
#![forbid(unsafe_code)]

use membrane_kube::fake::{FakeApiServer, cluster_objects, default_served_kinds};
use std::path::Path;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fake_apiserver DIR [ADDR] | fake_apiserver --synthetic N [ADDR]";
    let mut args = args.into_iter();
    let first = args.next().ok_or(usage)?;
    let docs = if first == "--synthetic" {
        let n = args.next().and_then(|n| n.parse().ok()).ok_or(usage)?;
        membrane_kube::fake::synthetic(n)
    } else {
        membrane_kube::json::read_manifests(Path::new(&first))?
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
