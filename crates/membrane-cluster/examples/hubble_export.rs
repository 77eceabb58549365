//! Writes a synthetic `hubble observe -o jsonpb` export of the seed demo to standard
//! output, for measuring `membrane replay` (see `docs/replay.md`):
//!
//! ```sh
//! cargo run --release -p membrane-cluster --example hubble_export -- 1000000 > /tmp/flows.jsonpb
//! ```
//!
//! The flows are deterministic (a fixed pseudo-random sequence): 50 replicas per workload,
//! their own addresses and source ports, a third of them replies, some L7 HTTP requests and
//! DNS queries, world clients and external names.
#![allow(clippy::print_stdout)]

use std::io::{BufWriter, Write};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pod(ns: &str, app: &str, replica: u64, key: &str) -> (String, String) {
    let ip = format!("10.0.{}.{}", app.len() as u64 * 7 % 250, replica % 250 + 2);
    let ep = format!(
        r#"{{"ID":{},"identity":{},"namespace":"{ns}","labels":["{key}={app}","k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name={ns}","k8s:io.cilium.k8s.policy.cluster=default","k8s:io.cilium.k8s.policy.serviceaccount=default","k8s:io.kubernetes.pod.namespace={ns}"],"pod_name":"{app}-6d8f9c7b5-{replica:05}","workloads":[{{"name":"{app}","kind":"Deployment"}}]}}"#,
        1000 + replica,
        20000 + app.len() as u64
    );
    (ep, ip)
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let paths = [
        "/api/users",
        "/api/profile",
        "/api/admin",
        "/api/version",
        "/metrics",
    ];
    let names = [
        "api.github.com",
        "redis.database.svc.cluster.local",
        "pay.example.com",
    ];
    for i in 0..n {
        let replica = rng.below(50);
        let (src, sip, dst, dip, port) = match rng.below(8) {
            0 | 1 => {
                let (d, dip) = pod("frontend", "frontend", replica, "k8s:app");
                (
                    r#"{"identity":8,"labels":["reserved:ingress"]}"#.to_string(),
                    "10.0.0.185".to_string(),
                    d,
                    dip,
                    80,
                )
            }
            2 => {
                let (s, sip) = pod("backend", "backend", replica, "k8s:app");
                let (d, dip) = pod("database", "redis", rng.below(3), "k8s:app");
                (s, sip, d, dip, 6379)
            }
            3 => {
                let (s, sip) = pod("frontend", "frontend", replica, "k8s:app");
                let (d, dip) = pod("backend", "backend", rng.below(50), "k8s:app");
                (s, sip, d, dip, 3000)
            }
            4 => {
                let (d, dip) = pod("monitor", "monitor", replica, "k8s:app");
                let c = rng.below(200);
                (
                    format!(
                        r#"{{"identity":2,"labels":["reserved:world","cidr:198.51.100.{c}/32"]}}"#
                    ),
                    format!("198.51.100.{c}"),
                    d,
                    dip,
                    8000,
                )
            }
            5 => {
                let (s, sip) = pod("tools", "debug", 0, "k8s:app");
                let (d, dip) = pod("frontend", "frontend", replica, "k8s:app");
                (s, sip, d, dip, 80)
            }
            _ => {
                let (s, sip) = pod("backend", "backend", replica, "k8s:app");
                let (d, dip) = pod("kube-system", "kube-dns", 0, "k8s:k8s-app");
                (s, sip, d, dip, 53)
            }
        };
        let reply = rng.below(3) == 0;
        let (l4, l7, typ) = if port == 53 {
            let q = names[rng.below(names.len() as u64) as usize];
            (
                format!(
                    r#"{{"UDP":{{"source_port":{},"destination_port":53}}}}"#,
                    30000 + rng.below(30000)
                ),
                format!(
                    r#","l7":{{"type":"REQUEST","dns":{{"query":"{q}.","qtypes":["A"],"observation_source":"proxy"}}}}"#
                ),
                "L7",
            )
        } else if port == 3000 && rng.below(2) == 0
            || dip.starts_with("10.0.") && port == 80 && rng.below(4) == 0
        {
            let p = paths[rng.below(paths.len() as u64) as usize];
            (
                format!(
                    r#"{{"TCP":{{"source_port":{},"destination_port":{port}}}}}"#,
                    30000 + rng.below(30000)
                ),
                format!(
                    r#","l7":{{"type":"REQUEST","http":{{"method":"GET","url":"http://svc:{port}{p}","protocol":"HTTP/1.1","headers":[{{"key":"User-Agent","value":"curl/8.5.0"}}]}}}}"#
                ),
                "L7",
            )
        } else {
            (
                format!(
                    r#"{{"TCP":{{"source_port":{},"destination_port":{port},"flags":{{"SYN":true}}}}}}"#,
                    30000 + rng.below(30000)
                ),
                String::new(),
                "L3_L4",
            )
        };
        let verdict = if rng.below(10) == 0 {
            "DROPPED"
        } else {
            "FORWARDED"
        };
        let drop = if verdict == "DROPPED" {
            r#","drop_reason":133,"drop_reason_desc":"POLICY_DENIED""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"{{"flow":{{"time":"2026-12-07T09:{:02}:{:02}.{:06}Z","verdict":"{verdict}"{drop},"IP":{{"source":"{sip}","destination":"{dip}","ipVersion":"IPv4"}},"l4":{l4},"source":{src},"destination":{dst},"Type":"{typ}","node_name":"node-{}"{l7},"is_reply":{reply},"traffic_direction":"INGRESS","Summary":"synthetic"}},"node_name":"node-1","time":"2026-12-07T09:00:00Z"}}"#,
            i / 60_000 % 60,
            i / 1000 % 60,
            i % 1_000_000,
            1 + i % 2,
        );
    }
}
