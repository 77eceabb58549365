//! `membrane replay` on the whole conformance suite: every flow of every scenario file of
//! `tests/conformance/` is written as the `hubble observe -o json` line Hubble would record
//! for it, replayed with the scenario file as the policies and workloads, and the replayed
//! verdict must be the flow's `expect`.
//!
//! How a scenario flow becomes Hubble lines (what Hubble records, not what membrane knows):
//!
//! - a pod: its labels as `k8s:key=value`, with `k8s:io.kubernetes.pod.namespace`,
//!   `k8s:io.cilium.k8s.policy.cluster`, `k8s:io.cilium.k8s.policy.serviceaccount` and its
//!   namespace's labels as `k8s:io.cilium.k8s.namespace.labels.KEY=VALUE`; `namespace`,
//!   `pod_name` and the pod's address in `IP`;
//! - a host-network pod or a node of a Cilium node: `reserved:host` as seen from the same
//!   node, `reserved:remote-node` from another node, with the node's address;
//! - a pod with a reserved identity (`entity: ingress`): `reserved:<entity>`;
//! - a node without Cilium, an address outside the cluster: `reserved:world`;
//! - an external name: first the DNS request the client sent to kube-dns (`l7.dns.query`,
//!   UDP/53), then, if the lookup was answered, the connection to the name's first address
//!   as `reserved:world` with `destination_names` when the DNS proxy saw the lookup (Hubble
//!   names an address only when the proxy learned it); a lookup that was not answered means
//!   no connection, so the flow's verdict is `deny`, as in the scenario format;
//! - a DNS query flow: the DNS request to kube-dns;
//! - L4 as `l4.TCP|UDP|SCTP.destination_port` or `l4.ICMPv4|ICMPv6.type`; HTTP as
//!   `l7.http` (method, `http://host:port/path`, headers).
//!
//! Every line is recorded `FORWARDED`: only the replayed verdict is checked. The suite runs
//! twice: with the pods' scenario addresses, and with addresses no manifest knows, so that
//! replay identifies every pod from Hubble's labels alone.
//!
//! Flows Hubble has no record shape for are excluded, each with its reason, and counted:
//! TLS flows (Hubble records neither the SNI of a TLS handshake nor, for a handshake the
//! proxy aborted, anything above layer 4).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::scenario::{FlowSpec, Scenario, parse_scenario};
use membrane_policy::verdict::HttpRequest;
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The most flows the suite may exclude (they are printed with their reasons).
const MAX_EXCLUDED: usize = 12;

/// One side of a flow as Hubble records it.
struct Side {
    endpoint: Value,
    ip: IpAddr,
}

/// The node an endpoint or node name runs on.
fn node_of(sc: &Scenario, name: &str) -> Option<String> {
    if let Some(e) = sc.endpoints.iter().find(|e| e.name == name) {
        return Some(e.node.clone());
    }
    sc.nodes
        .iter()
        .find(|n| n.name == name)
        .map(|n| n.name.clone())
}

fn cilium_node(sc: &Scenario, node: &str) -> bool {
    sc.nodes.iter().any(|n| n.name == node && n.cilium)
}

fn reserved(label: &str, ip: IpAddr) -> Side {
    Side {
        endpoint: json!({"labels": [format!("reserved:{label}")]}),
        ip,
    }
}

/// A node's address as seen from `observer`'s node.
fn host_side(sc: &Scenario, node: &str, ip: IpAddr, observer: Option<&str>) -> Side {
    if !cilium_node(sc, node) {
        return reserved("world", ip);
    }
    if observer.is_none_or(|o| o == node) {
        reserved("host", ip)
    } else {
        reserved("remote-node", ip)
    }
}

/// How Hubble records the party `name` of a scenario, seen from `observer`'s node.
fn side(sc: &Scenario, name: &str, observer: Option<&str>, anonymous: bool) -> Option<Side> {
    if let Some(e) = sc.endpoints.iter().find(|e| e.name == name) {
        if e.host_network {
            return Some(host_side(sc, &e.node, e.ip, observer));
        }
        if let Some(entity) = &e.entity {
            return Some(reserved(entity, e.ip));
        }
        let mut labels: Vec<String> = e
            .labels
            .iter()
            .map(|(k, v)| format!("k8s:{k}={v}"))
            .collect();
        labels.push(format!("k8s:io.kubernetes.pod.namespace={}", e.namespace));
        labels.push(format!(
            "k8s:io.cilium.k8s.policy.cluster={}",
            sc.cluster_name
        ));
        let sa = if e.service_account.is_empty() {
            "default"
        } else {
            &e.service_account
        };
        labels.push(format!("k8s:io.cilium.k8s.policy.serviceaccount={sa}"));
        if let Some(ns) = sc.namespaces.iter().find(|n| n.name == e.namespace) {
            for (k, v) in &ns.labels {
                labels.push(format!("k8s:io.cilium.k8s.namespace.labels.{k}={v}"));
            }
        }
        labels.sort();
        return Some(Side {
            endpoint: json!({"labels": labels, "namespace": e.namespace, "pod_name": e.name}),
            ip: if anonymous {
                anonymous_ip(sc, &e.name, e.ip)
            } else {
                e.ip
            },
        });
    }
    if let Some(n) = sc.nodes.iter().find(|n| n.name == name) {
        return Some(host_side(sc, &n.name, n.ip, observer));
    }
    if let Some(x) = sc.external.iter().find(|x| x.name == name) {
        return Some(reserved("world", *x.ips.first()?));
    }
    let ip: IpAddr = name.parse().ok()?;
    if let Some(e) = sc.endpoints.iter().find(|e| e.ip == ip && !e.host_network) {
        return side(sc, &e.name.clone(), observer, anonymous);
    }
    if let Some(n) = sc.nodes.iter().find(|n| n.ip == ip) {
        return Some(host_side(sc, &n.name, n.ip, observer));
    }
    Some(reserved("world", ip))
}

/// An address no manifest knows, for a pod identified by its labels only.
fn anonymous_ip(sc: &Scenario, name: &str, ip: IpAddr) -> IpAddr {
    let i = sc
        .endpoints
        .iter()
        .position(|e| e.name == name)
        .unwrap_or(0)
        + 1;
    match ip {
        IpAddr::V4(_) => IpAddr::from([100, 64, (i / 256) as u8, (i % 256) as u8]),
        IpAddr::V6(_) => IpAddr::from([0xfd00, 0x64, 0, 0, 0, 0, 0, i as u16]),
    }
}

fn kube_dns(sc: &Scenario) -> Option<&str> {
    sc.endpoints
        .iter()
        .find(|e| {
            e.labels
                .iter()
                .any(|(k, v)| k == "k8s-app" && v == "kube-dns")
                || e.name == "kube-dns"
        })
        .map(|e| e.name.as_str())
}

/// A Hubble `-o json` flow line.
fn line(from: &Side, to: &Side, l4: Value, l7: Option<Value>, names: &[&str]) -> String {
    let mut f = json!({
        "time": "2026-12-07T10:00:00Z",
        "verdict": "FORWARDED",
        "IP": {"source": from.ip.to_string(), "destination": to.ip.to_string(),
               "ipVersion": if from.ip.is_ipv4() { "IPv4" } else { "IPv6" }},
        "l4": l4,
        "source": from.endpoint,
        "destination": to.endpoint,
        "Type": if l7.is_some() { "L7" } else { "L3_L4" },
        "node_name": "replay",
        "traffic_direction": "EGRESS",
        "is_reply": false,
    });
    if let Some(l7) = l7 {
        f["l7"] = l7;
    }
    if !names.is_empty() {
        f["destination_names"] = json!(names);
    }
    f.to_string()
}

/// The DNS request `from` sends to kube-dns for `name`.
/// The DNS request `from` sends to kube-dns for `name`: with its query when the DNS proxy
/// saw it (`proxied`), as a bare UDP/53 flow otherwise.
fn dns_line(
    sc: &Scenario,
    from: &str,
    name: &str,
    proxied: bool,
    anonymous: bool,
) -> Result<String, String> {
    let dns = kube_dns(sc).ok_or("no kube-dns endpoint")?;
    let src = side(sc, from, node_of(sc, dns).as_deref(), anonymous).ok_or("unknown source")?;
    let dst = side(sc, dns, node_of(sc, from).as_deref(), anonymous).ok_or("kube-dns")?;
    Ok(line(
        &src,
        &dst,
        json!({"UDP": {"source_port": 40000, "destination_port": 53}}),
        proxied.then(
            || json!({"type": "REQUEST", "dns": {"query": format!("{name}."), "qtypes": ["A"]}}),
        ),
        &[],
    ))
}

/// The connection of a flow (`names`: the destination's DNS names, when the proxy learned
/// them).
fn connection_line(
    sc: &Scenario,
    f: &FlowSpec,
    to_name: &str,
    names: &[&str],
    anonymous: bool,
) -> Result<String, String> {
    let src =
        side(sc, &f.from, node_of(sc, to_name).as_deref(), anonymous).ok_or("unknown source")?;
    let dst = side(sc, to_name, node_of(sc, &f.from).as_deref(), anonymous)
        .ok_or("unknown destination")?;
    let protocol = f.protocol.as_deref().unwrap_or("TCP").to_ascii_uppercase();
    let l4 = match protocol.as_str() {
        "ICMP" | "ICMPV4" | "ICMPV6" => {
            let (v6, t) = f.icmp.unwrap_or((protocol == "ICMPV6", 8));
            if v6 {
                json!({"ICMPv6": {"type": t}})
            } else {
                json!({"ICMPv4": {"type": t}})
            }
        }
        p @ ("TCP" | "UDP" | "SCTP") => {
            let port = f.port.ok_or("no port")?;
            json!({p: {"source_port": 40000, "destination_port": port}})
        }
        other => return Err(format!("protocol {other}")),
    };
    // TLS the proxy intercepts: Hubble records the HTTP request inside, as `https://SNI/..`;
    // other TLS is layer 4 to Hubble.
    let intercepted = f.tls.as_ref().filter(|t| t.intercept).map(|t| {
        let mut h = f.http.clone().unwrap_or_else(|| HttpRequest {
            method: "GET".into(),
            path: t.path.clone().unwrap_or_else(|| "/".into()),
            host: String::new(),
            headers: vec![],
        });
        h.host = t.sni.clone();
        h
    });
    let http = match &f.tls {
        Some(_) => intercepted.as_ref(),
        None => f.http.as_ref(),
    };
    let scheme = if intercepted.is_some() {
        "https"
    } else {
        "http"
    };
    let l7 = http.map(|h| {
        let host = if !h.host.is_empty() {
            h.host.clone()
        } else if sc.external.iter().any(|x| x.name == to_name) {
            to_name.to_string()
        } else {
            dst.ip.to_string()
        };
        let url = format!("{scheme}://{host}:{}{}", f.port.unwrap_or(80), h.path);
        let headers: Vec<Value> = h
            .headers
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        json!({"type": "REQUEST", "http": {"method": h.method, "url": url, "protocol": "HTTP/1.1", "headers": headers}})
    });
    Ok(line(&src, &dst, l4, l7, names))
}

/// How one scenario flow is replayed.
enum Plan {
    Excluded(String),
    /// The flow's own line (0-based index into the lines).
    Single(usize),
    /// A lookup, then (if answered) a connection.
    Lookup {
        lookup: usize,
        connection: usize,
    },
}

/// Runs `membrane replay --output json` on `lines` against `scenario`: the verdict of each
/// line (`None` for a skipped flow, with why) and whether its egress went through the DNS
/// proxy.
/// `jsonpb`: the lines as `hubble observe -o jsonpb` writes them (a `GetFlowsResponse` each).
fn replay(scenario: &Path, lines: &[String], jsonpb: bool) -> Vec<(Option<String>, bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows.json");
    let text: Vec<String> = if jsonpb {
        lines
            .iter()
            .map(|l| {
                format!(r#"{{"flow":{l},"node_name":"replay","time":"2026-12-07T10:00:00Z"}}"#)
            })
            .collect()
    } else {
        lines.to_vec()
    };
    std::fs::write(&flows, text.join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(["replay", "--output", "json"])
        .arg(&flows)
        .arg(scenario)
        .env("NO_COLOR", "1")
        .output()
        .expect("run membrane");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{}: replay output is not JSON ({e}): {}",
            scenario.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let flows = v["flows"].as_array().unwrap();
    assert_eq!(flows.len(), lines.len(), "{}", scenario.display());
    flows
        .iter()
        .map(|f| {
            (
                f["verdict"].as_str().map(str::to_string),
                f["deciding"]["egress"]["proxy"] == "dns",
                f["skipped"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn expected(f: &FlowSpec) -> &'static str {
    match f.expect.as_str() {
        "dns-ok" => "allow",
        other => other,
    }
}

fn excluded(f: &FlowSpec) -> Option<String> {
    if f.tls.is_some() && f.expect.as_str() == "tls-denied" {
        return Some(
            "the proxy aborted the TLS handshake: Hubble records neither the SNI nor a request"
                .into(),
        );
    }
    None
}

/// Replays every conformance flow; pods are known by their labels only when `anonymous`
/// (their addresses are none of the manifests'); as `-o jsonpb` lines when `jsonpb`.
/// (passed, total, exclusions, failures).
fn run_suite(anonymous: bool, jsonpb: bool) -> (usize, usize, Vec<String>, Vec<String>) {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tests/conformance"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (mut total, mut passed) = (0usize, 0usize);
    let mut exclusions: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let sc = parse_scenario(&text).unwrap_or_else(|e| panic!("{rel}: {e:?}"));
        // First the lookups of external names: whether the DNS proxy saw them decides
        // whether Hubble names the connection's destination.
        // The name each flow looks up first: a DNS flow's query, an external destination.
        let lookups: Vec<Option<&str>> = sc
            .flows
            .iter()
            .map(|f| {
                if excluded(f).is_some() {
                    return None;
                }
                if let Some(q) = &f.dns {
                    return Some(q.as_str());
                }
                let to = f.to.as_deref()?;
                sc.external.iter().any(|x| x.name == to).then_some(to)
            })
            .collect();
        // Whether the DNS proxy sees each lookup decides what Hubble records of it (the
        // query, or UDP/53 only) and whether it names the connection's destination.
        let probes: Vec<String> = sc
            .flows
            .iter()
            .zip(&lookups)
            .filter_map(|(f, q)| dns_line(&sc, &f.from, (*q)?, true, anonymous).ok())
            .collect();
        let proxied: Vec<bool> = if probes.is_empty() {
            vec![]
        } else {
            replay(path, &probes, jsonpb)
                .into_iter()
                .map(|r| r.1)
                .collect()
        };
        let mut proxied = proxied.into_iter();
        let mut lines: Vec<String> = Vec::new();
        let mut plans: Vec<Plan> = Vec::new();
        for (f, lookup) in sc.flows.iter().zip(&lookups) {
            let plan = (|| -> Result<Plan, String> {
                if let Some(why) = excluded(f) {
                    return Ok(Plan::Excluded(why));
                }
                let seen = lookup.is_some() && proxied.next().unwrap_or(false);
                if let Some(q) = &f.dns {
                    lines.push(dns_line(&sc, &f.from, q, seen, anonymous)?);
                    return Ok(Plan::Single(lines.len() - 1));
                }
                let to = f.to.as_deref().ok_or("no destination")?;
                if lookup.is_some() {
                    let names: &[&str] = if seen { &[to] } else { &[] };
                    lines.push(dns_line(&sc, &f.from, to, seen, anonymous)?);
                    lines.push(connection_line(&sc, f, to, names, anonymous)?);
                    return Ok(Plan::Lookup {
                        lookup: lines.len() - 2,
                        connection: lines.len() - 1,
                    });
                }
                lines.push(connection_line(&sc, f, to, &[], anonymous)?);
                Ok(Plan::Single(lines.len() - 1))
            })()
            .unwrap_or_else(|e| Plan::Excluded(format!("no Hubble record: {e}")));
            plans.push(plan);
        }
        let results = if lines.is_empty() {
            vec![]
        } else {
            replay(path, &lines, jsonpb)
        };
        let verdict = |i: usize| -> String {
            let (v, _, skipped) = &results[i];
            v.clone().unwrap_or_else(|| format!("skipped ({skipped})"))
        };
        for (i, (f, plan)) in sc.flows.iter().zip(&plans).enumerate() {
            total += 1;
            let what = format!(
                "{rel} flow {i} (line {}): {}",
                f.span.line,
                membrane_cluster::runner::describe_flow(f)
            );
            let got = match plan {
                Plan::Excluded(why) => {
                    exclusions.push(format!("{what}: {why}"));
                    continue;
                }
                Plan::Single(l) => verdict(*l),
                Plan::Lookup { lookup, connection } => {
                    let l = verdict(*lookup);
                    if l == "allow" {
                        verdict(*connection)
                    } else {
                        // An unanswered lookup: no connection.
                        "deny".to_string()
                    }
                }
            };
            if got == expected(f) {
                passed += 1;
            } else {
                failures.push(format!(
                    "{what}: expected {}, replay says {got}\n    {}",
                    expected(f),
                    match plan {
                        Plan::Single(l) | Plan::Lookup { connection: l, .. } => lines[*l].as_str(),
                        Plan::Excluded(_) => "",
                    }
                ));
            }
        }
    }
    (passed, total, exclusions, failures)
}

fn check(
    what: &str,
    (passed, total, exclusions, failures): (usize, usize, Vec<String>, Vec<String>),
) {
    println!(
        "{what}: {passed} of {total} conformance flows replayed with their expected verdict; {} excluded:",
        exclusions.len()
    );
    for e in &exclusions {
        println!("  {e}");
    }
    assert!(
        failures.is_empty(),
        "{} flows replayed with another verdict:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed + exclusions.len(), total);
    assert!(
        exclusions.len() <= MAX_EXCLUDED,
        "{} exclusions (at most {MAX_EXCLUDED})",
        exclusions.len()
    );
}

#[test]
fn every_conformance_flow_replays_with_its_expected_verdict() {
    check("pods with their addresses", run_suite(false, false));
}

/// The same flows with pods known by their labels only (an export replayed against
/// policies without the workloads): identities from Hubble's labels, named ports from the
/// workloads the labels match; written as `-o jsonpb` lines.
#[test]
fn conformance_flows_of_pods_known_by_labels_only() {
    check("pods by labels only (jsonpb)", run_suite(true, true));
}
