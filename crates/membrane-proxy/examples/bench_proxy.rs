//! The proxies on 127.0.0.1 for `bench/http.sh` and `bench/dns.sh` (not a product binary).
//!
//! ```text
//! bench_proxy http <listen> <upstream>   # HTTP proxy: client 10.244.1.10 → echo 10.244.1.20:8080
//! bench_proxy dns  <listen> <upstream>   # DNS proxy (UDP and TCP): client → kube-dns 10.244.1.53:53
//! ```
//!
//! Every connection or datagram is mapped onto the scenario's addresses, so each request is
//! decided by the engine exactly as in the tests (GET /public.* allowed; names
//! `*.example.com` allowed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_proxy::world::proxy_policy_from_world;
use membrane_proxy::{
    DnsProxy, DnsProxyConfig, Flow, FqdnLearner, HttpProxyConfig, SystemClock, serve_dns_tcp,
    serve_dns_udp, serve_http,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

const SCENARIO: &str = r#"
name: bench
namespaces:
  - {name: default, labels: {kubernetes.io/metadata.name: default}}
  - {name: kube-system, labels: {kubernetes.io/metadata.name: kube-system}}
nodes:
  - {name: node1, ip: 172.18.0.2, podCIDR: 10.244.1.0/24, cilium: true}
endpoints:
  - {name: client, namespace: default, node: node1, ip: 10.244.1.10, labels: {app: client}}
  - {name: echo, namespace: default, node: node1, ip: 10.244.1.20, labels: {app: echo}}
  - {name: kube-dns, namespace: kube-system, node: node1, ip: 10.244.1.53, labels: {k8s-app: kube-dns}}
policies: |
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: bench, namespace: default}
  spec:
    endpointSelector: {matchLabels: {app: client}}
    egress:
    - toEndpoints: [{matchLabels: {app: echo}}]
      toPorts:
      - ports: [{port: "8080", protocol: TCP}]
        rules:
          http:
          - {method: GET, path: "/public.*"}
          - {method: GET, path: "/"}
    - toEndpoints: [{matchLabels: {k8s-app: kube-dns, io.kubernetes.pod.namespace: kube-system}}]
      toPorts:
      - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
        rules:
          dns:
          - matchPattern: "*.example.com"
flows: []
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, listen, upstream) = match args.as_slice() {
        [_, m, l, u] => (
            m.clone(),
            l.parse::<SocketAddr>().expect("listen address"),
            u.parse::<SocketAddr>().expect("upstream address"),
        ),
        _ => {
            eprintln!("usage: bench_proxy http|dns <listen> <upstream>");
            std::process::exit(2);
        }
    };
    assert!(
        listen.ip().is_loopback() && upstream.ip().is_loopback(),
        "the benchmark stays on loopback"
    );
    let world = World::from_scenario(parse_scenario(SCENARIO).expect("scenario"), 0);
    let policy = proxy_policy_from_world(&world, Some(0), None);
    let (_tx, rx) = watch::channel(Arc::new(policy));
    let client: std::net::IpAddr = "10.244.1.10".parse().unwrap();
    if mode == "http" {
        serve_http_per_core(listen, upstream, client, rx);
        return;
    }
    // The DNS proxy serves each UDP listener from one task (batched receives and sends): a
    // single-threaded runtime, as the lab runs its proxies, spares every query a cross-thread
    // wake-up (0.72x direct on a multi-threaded runtime, 0.79-0.90x on this one).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match mode.as_str() {
            "dns" => {
                let learner = Arc::new(FqdnLearner::new(Arc::new(SystemClock)));
                tokio::spawn(
                    learner
                        .clone()
                        .run_expiry(std::time::Duration::from_secs(1)),
                );
                let proxy = Arc::new(DnsProxy::new(rx, learner, DnsProxyConfig::default()));
                let dst: SocketAddr = "10.244.1.53:53".parse().unwrap();
                let udp = UdpSocket::bind(listen).await.unwrap();
                let tcp = TcpListener::bind(listen).await.unwrap();
                eprintln!("dns proxy on {listen} (udp, tcp) → {upstream}");
                tokio::spawn(serve_dns_tcp(tcp, proxy.clone(), move |s: &TcpStream| {
                    Ok(Flow {
                        src: SocketAddr::new(client, s.peer_addr()?.port()),
                        dst,
                        upstream,
                    })
                }));
                serve_dns_udp(udp, proxy, move |src, _| Flow {
                    src: SocketAddr::new(client, src.port()),
                    dst,
                    upstream,
                })
                .await
                .unwrap();
            }
            other => panic!("unknown mode {other}"),
        }
    });
}

/// One single-threaded runtime per core, all accepting on the same listening socket (as
/// nginx runs one worker process per core): a connection stays on the thread that accepted
/// it, so no request pays for cross-thread wake-ups or work stealing.
fn serve_http_per_core(
    listen: SocketAddr,
    upstream: SocketAddr,
    client: std::net::IpAddr,
    rx: watch::Receiver<Arc<membrane_proxy::ProxyPolicy>>,
) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listener = std::net::TcpListener::bind(listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    eprintln!("http proxy on {listen} → {upstream} ({workers} worker threads)");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone().unwrap();
            let rx = rx.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener).unwrap();
                    let flow_of = move |s: &TcpStream| {
                        Ok(Flow {
                            src: SocketAddr::new(client, s.peer_addr()?.port()),
                            dst: "10.244.1.20:8080".parse().unwrap(),
                            upstream,
                        })
                    };
                    serve_http(listener, rx, flow_of, HttpProxyConfig::default())
                        .await
                        .unwrap();
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
