//! Policy replaced hundreds of times in place while a client keeps connecting: no allowed
//! connection may be dropped and no denied one let through (docs/datapath.md §3.3: deleting and
//! re-creating the table would drop about one allowed SYN in 50 replacements).
//! Its own test binary, so that it does not share the CPUs with the conformance runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_datapath::lab::Lab;
use membrane_datapath::topology::NsRef;
use membrane_datapath::wire::{self, Request};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use support::{options, root_or_skip};

const CLUSTER: &str = r#"
name: hitless
cluster: {name: default}
namespaces:
  - {name: ns1, labels: {kubernetes.io/metadata.name: ns1}}
nodes:
  - {name: node1, ip: 192.168.1.10, cilium: true, labels: {kubernetes.io/hostname: node1}}
  - {name: node2, ip: 192.168.1.11, cilium: true, labels: {kubernetes.io/hostname: node2}}
endpoints:
  - {name: client, namespace: ns1, node: node1, ip: 10.0.1.10, labels: {app: client}}
  - {name: other, namespace: ns1, node: node1, ip: 10.0.1.30, labels: {app: other}}
  - {name: server, namespace: ns1, node: node2, ip: 10.0.2.20, labels: {app: server}}
flows:
  - {from: client, to: server, port: 8080, protocol: TCP, expect: allow}
  - {from: client, to: server, port: 9090, protocol: TCP, expect: deny}
  - {from: other, to: server, port: 8443, protocol: TCP, expect: deny}
policies: |
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: server-in, namespace: ns1}
  spec:
    endpointSelector: {matchLabels: {app: server}}
    ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  ---
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: client-out, namespace: ns1}
  spec:
    endpointSelector: {matchLabels: {app: client}}
    egress:
    - toEndpoints: [{matchLabels: {app: server}}]
      toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "9090", protocol: TCP}]}]
"#;

/// Rules unrelated to client → server:8080/9090, but in the same maps (the client's egress,
/// the server's ingress), so every replacement flushes and refills the maps the allowed
/// connections go through.
const EXTRA: &str = r#"
  ---
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: unrelated, namespace: ns1}
  spec:
    endpointSelector: {matchLabels: {app: server}}
    ingress:
    - fromEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "7000", endPort: 7100, protocol: TCP}, {port: "53", protocol: UDP}]}]
  ---
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: unrelated-out, namespace: ns1}
  spec:
    endpointSelector: {matchLabels: {app: client}}
    egress:
    - toEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "6000", protocol: TCP}]}]
    egressDeny:
    - toEndpoints: [{matchLabels: {app: other}}]
      toPorts: [{ports: [{port: "6001", protocol: TCP}]}]
"#;

fn world(extra: bool) -> World {
    let mut text = CLUSTER.to_string();
    if extra {
        text.push_str(EXTRA);
    }
    World::from_scenario(parse_scenario(&text).unwrap(), 0)
}

#[test]
fn policy_replacements_are_hitless() {
    if !root_or_skip("policy_replacements_are_hitless") {
        return;
    }
    let (a, b) = (world(false), world(true));
    let mut lab = Lab::up(&a, &options("hitless")).unwrap();
    let collector = lab.drop_collector(false);
    let client = lab.socket(NsRef::Pod(0));
    let (src, dst) = (Ipv4Addr::new(10, 0, 1, 10), Ipv4Addr::new(10, 0, 2, 20));
    let duration = Duration::from_secs(12);
    let conn_loop = |port: u16, timeout_ms: u64| {
        let client = client.clone();
        std::thread::spawn(move || {
            // Every drop of an allowed SYN is recorded by NFLOG (asserted below), so the
            // timeout only needs to catch connections that never complete; it is generous
            // because a loaded 2-core machine can stall a connect for over a second.
            let req = Request::ConnLoop {
                src,
                dst,
                port,
                duration_ms: duration.as_millis() as u64,
                timeout_ms,
            };
            wire::call(&client, &req, duration + Duration::from_secs(30)).unwrap()
        })
    };
    let allowed = conn_loop(8080, 3000);
    let denied = conn_loop(9090, 50);
    let start = Instant::now();
    let mut replacements = 0;
    while start.elapsed() < duration {
        lab.apply(if replacements % 2 == 0 { &b } else { &a })
            .unwrap();
        replacements += 1;
    }
    let allowed = allowed.join().unwrap();
    let denied = denied.join().unwrap();
    let events = collector.events();
    let drops_8080: Vec<_> = events.iter().filter(|e| e.dport == 8080).collect();
    for e in &drops_8080 {
        // What the datapath said about each drop on the allowed port, for diagnosis.
        eprintln!("dropped packet to the allowed port: {e:?}");
    }
    // A connection is lost only if its SYN is. The client closes with RST (SO_LINGER 0):
    // under heavy load a late RST of an already-closed connection is occasionally logged.
    // Its conntrack entry is gone, so `ct mark` cannot carry the peer identity and the
    // lookup misses; it ends nothing, so it is reported but not counted.
    let dropped_allowed = drops_8080
        .iter()
        .filter(|e| e.tcp_flags & 0x02 != 0)
        .count();
    eprintln!(
        "{replacements} replacements in {:.1} s; allowed: {} ok, {} failed; denied: {} let through, {} dropped; \
         {dropped_allowed} drops of allowed SYNs logged",
        start.elapsed().as_secs_f64(),
        allowed.ok,
        allowed.failed,
        denied.ok,
        denied.failed
    );
    eprintln!("allowed failures: {:?}", allowed.errors);
    // How many replacements fit in the window depends on the machine's load (108 were seen
    // under two builds and a fuzzer): the property is that none of them lets a denied
    // connection through or loses an allowed one, so only require enough of them to overlap
    // thousands of connections.
    assert!(replacements >= 50, "only {replacements} replacements");
    assert!(
        allowed.ok > 1000,
        "too few allowed connections: {}",
        allowed.ok
    );
    assert_eq!(
        allowed.failed, 0,
        "allowed connections failed during replacements"
    );
    assert_eq!(dropped_allowed, 0, "the datapath dropped allowed SYNs");
    assert_eq!(denied.ok, 0, "denied connections were let through");
    assert!(denied.failed > 10);
    drop(collector);
    lab.down().unwrap();
}
