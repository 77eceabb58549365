//! `membrane lab helper proxy`: the L7 proxies of one lab node (HTTP, DNS, TLS from
//! `membrane-proxy`), run inside the node's namespace under nftables `tproxy` (the
//! ruleset marks connections for a proxy and hands them to its transparent socket).
//!
//! The policy comes from the scenario file the lab keeps for its proxies: the helper loads
//! it into a `World`, publishes `proxy_policy_from_world` as seen from its node (with the
//! FQDN identities of what its DNS proxy learned), and republishes whenever the file
//! changes (`Lab::apply_source` rewrites it) or the DNS proxy learns something.

use super::NodeError;
use crate::layout::{DNS_PORT, HTTP_PORT, TABLE, TLS_PORT};
use crate::source::{load_world, source_files};
use membrane_cluster::decision_json::{FileNames, event_decision_json};
use membrane_cluster::world::{Party, World};
use membrane_proxy::FqdnCache;
use membrane_proxy::world::proxy_policy_from_world;
use membrane_proxy::{
    DnsProxy, DnsProxyConfig, Flow, FqdnLearner, HttpProxyConfig, ProxyPolicy, SystemClock,
    TlsProxyConfig, serve_dns_tcp, serve_dns_udp, serve_http, serve_tls, transparent_flow,
    transparent_tcp_listener, transparent_udp_socket,
};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// `proxy --scenario FILE [--node I] [--events FILE] [--ready FILE]`: serves until killed;
/// writes the `--ready` file once every listener is bound.
pub fn proxy_main(args: &[String]) -> Result<(), NodeError> {
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let scenario = PathBuf::from(opt("--scenario").ok_or(NodeError::Missing {
        program: "proxy",
        what: "--scenario",
    })?);
    // L7 requests, denied and (HTTP) forwarded, are appended to this file as Hubble-like
    // flow events (`lab observe`): Hubble shows both.
    let events: Option<PathBuf> = opt("--events").map(PathBuf::from);
    let ready: Option<PathBuf> = opt("--ready").map(PathBuf::from);
    let node: Option<usize> = match opt("--node") {
        Some(n) => Some(n.parse().map_err(|_| NodeError::Bad {
            what: "--node",
            value: n.clone(),
        })?),
        None => None,
    };
    let world = load_world(&scenario)?;
    // The names of the world's files, for the origins' `file` in events.
    let files: Arc<Vec<String>> = Arc::new(
        source_files(&scenario)?
            .iter()
            .map(|f| f.display().to_string())
            .collect(),
    );
    // Events name the node as Hubble does (`node_name`), not by its index.
    let node_name = node
        .and_then(|n| world.scenario.nodes.get(n))
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let hook = events.clone().map(|path| -> membrane_proxy::DenialHook {
        let node_name = node_name.clone();
        let files = files.clone();
        Arc::new(move |d: &membrane_proxy::Denial| {
            append_line(&path, &denial_json(d, &node_name, files.as_ref()));
        })
    });
    let forward_hook = events
        .clone()
        .map(|path| -> membrane_proxy::policy::ForwardHook {
            let node_name = node_name.clone();
            let files = files.clone();
            Arc::new(move |f: &membrane_proxy::policy::Forwarded| {
                append_line(&path, &forwarded_json(f, &node_name, files.as_ref()));
            })
        });
    let dns_forward_hook = events.map(|path| -> membrane_proxy::policy::DnsForwardHook {
        Arc::new(move |f: &membrane_proxy::policy::DnsForwarded| {
            append_line(&path, &dns_forwarded_json(f, &node_name, files.as_ref()));
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NodeError::io("tokio runtime"))?;
    rt.block_on(async move {
        let learner = Arc::new(FqdnLearner::new(Arc::new(SystemClock)));
        let mut fqdns = learner.subscribe();
        let policy = proxy_policy_from_world(&world, node, Some(&fqdns.borrow()));
        let (tx, rx) = tokio::sync::watch::channel::<Arc<ProxyPolicy>>(Arc::new(policy));
        let http = transparent_tcp_listener(addr(HTTP_PORT)).map_err(NodeError::io("http"))?;
        let tls = transparent_tcp_listener(addr(TLS_PORT)).map_err(NodeError::io("tls"))?;
        let dns_udp = transparent_udp_socket(addr(DNS_PORT)).map_err(NodeError::io("dns"))?;
        let dns_tcp = transparent_tcp_listener(addr(DNS_PORT)).map_err(NodeError::io("dns"))?;
        tokio::spawn(serve_http(
            http,
            rx.clone(),
            transparent_flow,
            HttpProxyConfig {
                spoof_source: true,
                on_denial: hook.clone(),
                on_forward: forward_hook,
                ..Default::default()
            },
        ));
        tokio::spawn(serve_tls(
            tls,
            rx.clone(),
            transparent_flow,
            TlsProxyConfig {
                spoof_source: true,
                on_denial: hook.clone(),
                ..Default::default()
            },
        ));
        tokio::spawn(learner.clone().run_expiry(Duration::from_secs(1)));
        let dns = Arc::new(DnsProxy::new(
            rx.clone(),
            learner,
            DnsProxyConfig {
                spoof_source: true,
                on_denial: hook.clone(),
                on_forward: dns_forward_hook,
                ..Default::default()
            },
        ));
        tokio::spawn(serve_dns_udp(dns_udp, dns.clone(), Flow::new));
        tokio::spawn(serve_dns_tcp(dns_tcp, dns, transparent_flow));
        // Every listener is bound: from now on tproxy finds a socket. The lab waits for this
        // file before it sends traffic (until then the datapath drops L7 flows, fail closed).
        if let Some(ready) = &ready {
            std::fs::write(ready, b"serving\n").map_err(NodeError::io("ready file"))?;
        }
        eprintln!("membrane lab proxy: serving (node {node:?})");
        // Republish on a new scenario file or newly learned names.
        let mut world = world;
        let mut seen = mtime(&scenario);
        let mut written = BTreeMap::new();
        loop {
            let learned = tokio::select! {
                r = fqdns.changed() => r.is_ok(),
                () = tokio::time::sleep(Duration::from_millis(50)) => false,
            };
            let now = mtime(&scenario);
            if now.is_none() {
                return Ok(()); // the lab is gone
            }
            let reload = now != seen;
            if reload {
                seen = now;
                match load_world(&scenario) {
                    Ok(w) => world = w,
                    Err(e) => eprintln!("membrane lab proxy: {e}"),
                }
            }
            if reload {
                // The lab's update may have refilled ip2id: write every learned entry again.
                written.clear();
            }
            if reload || learned {
                let cache = fqdns.borrow().clone();
                let p = proxy_policy_from_world(&world, node, Some(&cache));
                let _ = tx.send(Arc::new(p));
                sync_ip2id(&world, node, &cache, &mut written);
            }
        }
    })
}

/// Feeds what the DNS proxy learned into this node's `ip2id`: an external name's address
/// gets its FQDN identity (`identity_of(…, learned = true)`) once learned, and the plain one
/// again when it expires. `written` is what this process wrote last.
fn sync_ip2id(
    world: &World,
    node: Option<usize>,
    cache: &FqdnCache,
    written: &mut BTreeMap<Ipv4Addr, u32>,
) {
    for (i, ext) in world.scenario.external.iter().enumerate() {
        let known = cache.lookup(&ext.name);
        for ip in &ext.ips {
            let IpAddr::V4(a) = ip else { continue };
            let learned = known.contains(ip);
            if !learned && !written.contains_key(a) {
                continue; // the lab's own entry is the unlearned identity
            }
            let party = Party::World {
                addr: *ip,
                learned_as: Some(i),
            };
            let id = world.identity_of(party, node, learned);
            if written.get(a) == Some(&id) {
                continue;
            }
            let set = format!("add element inet {t} ip2id {{ {a} : {id} }}\n", t = TABLE);
            let replace = format!("delete element inet {t} ip2id {{ {a} }}\n{set}", t = TABLE);
            if nft(&replace) || nft(&set) {
                written.insert(*a, id);
            } else {
                eprintln!("membrane lab proxy: could not set ip2id {a} : {id}");
            }
        }
    }
}

fn nft(script: &str) -> bool {
    crate::nft::apply::script(script).is_ok()
}

/// Appends one JSON line: a single `write` on an `O_APPEND` file, so the lines of
/// concurrent requests never interleave.
fn append_line(path: &std::path::Path, v: &serde_json::Value) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = std::io::Write::write_all(&mut f, format!("{v}\n").as_bytes());
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |t| t.as_micros() as u64)
}

/// A proxy's decision in the decision schema: `egress` is `null` when the source is not a
/// local endpoint of the node, `ingress` when the destination is not or egress stopped it.
pub fn proxy_decision_json(
    d: &membrane_proxy::ProxyDecision,
    files: &dyn FileNames,
) -> serde_json::Value {
    event_decision_json(d.verdict, d.egress.as_ref(), d.ingress.as_ref(), files)
}

/// An HTTP request the proxy allowed and forwarded, as a flow event in the shape of
/// Hubble's L7 flows (verdict `FORWARDED`): method, path, the answer's status, and the
/// policies and rules that allowed it (both sides). The request's `Host` is not part of
/// what the proxy reports for a forwarded request, so the event has the destination address
/// only.
pub fn forwarded_json(
    f: &membrane_proxy::policy::Forwarded,
    node: &str,
    files: &dyn FileNames,
) -> serde_json::Value {
    use serde_json::json;
    let (method, url) = f
        .request
        .split_once(' ')
        .unwrap_or((f.request.as_str(), ""));
    let mut policies: Vec<String> = Vec::new();
    for p in f.rules.iter().filter_map(|r| r.policy()) {
        let p = p.to_string();
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let rules: Vec<String> = f.rules.iter().map(|r| r.to_string()).collect();
    let code = f.status.map_or(serde_json::Value::Null, |c| json!(c));
    json!({
        "time_us": now_us(),
        "verdict": "FORWARDED",
        "Type": "L7",
        "node_name": node,
        "IP": {"source": f.src.ip().to_string(), "destination": f.dst.ip().to_string()},
        "l4": {"source_port": f.src.port(), "destination_port": f.dst.port()},
        "l7": {"type": "RESPONSE", "http": {"code": code, "method": method, "url": url, "host": f.host}},
        "policies": policies,
        "rules": rules,
        "decision": proxy_decision_json(&f.decision, files),
        "Summary": format!(
            "HTTP {} {} (host {})",
            f.status.map_or_else(|| "(no answer)".to_string(), |c| c.to_string()),
            f.request,
            f.host
        ),
    })
}

/// An allowed DNS query as a flow event (Hubble shows DNS requests that pass, with the rules
/// that let them).
pub fn dns_forwarded_json(
    f: &membrane_proxy::policy::DnsForwarded,
    node: &str,
    files: &dyn FileNames,
) -> serde_json::Value {
    use serde_json::json;
    let mut policies: Vec<String> = Vec::new();
    for p in f.rules.iter().filter_map(|r| r.policy()) {
        let p = p.to_string();
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    let rules: Vec<String> = f.rules.iter().map(|r| r.to_string()).collect();
    json!({
        "time_us": now_us(),
        "verdict": "FORWARDED",
        "Type": "L7",
        "node_name": node,
        "IP": {"source": f.src.ip().to_string(), "destination": f.dst.ip().to_string()},
        "l4": {"source_port": f.src.port(), "destination_port": f.dst.port()},
        "l7": {"type": "REQUEST", "dns": {"query": f.qname}},
        "policies": policies,
        "rules": rules,
        "decision": proxy_decision_json(&f.decision, files),
        "Summary": format!("DNS query {} forwarded", f.qname),
    })
}

/// An L7 denial as a flow event, in the shape of Hubble's L7 flows: what was asked (HTTP
/// method and path, DNS name, TLS server name), the answer (403, REFUSED, aborted), and the
/// policies and rules that decided.
pub fn denial_json(
    d: &membrane_proxy::Denial,
    node: &str,
    files: &dyn FileNames,
) -> serde_json::Value {
    use membrane_proxy::DenialKind;
    use serde_json::json;
    let time = now_us();
    let (l7, summary) = match d.kind {
        DenialKind::Http403 => {
            let (method, url) = d
                .request
                .split_once(' ')
                .unwrap_or((d.request.as_str(), ""));
            (
                json!({"type": "RESPONSE", "http": {"code": 403, "method": method, "url": url}}),
                format!("HTTP 403 {}", d.request),
            )
        }
        DenialKind::DnsRefused => (
            json!({"type": "RESPONSE", "dns": {"query": d.request, "rcode": 5}}),
            format!("DNS REFUSED {}", d.request),
        ),
        DenialKind::TlsDenied => (
            json!({"type": "REQUEST", "tls": {"server_name": d.request}}),
            format!("TLS denied {}", d.request),
        ),
        DenialKind::Dropped => (
            json!({"type": "REQUEST"}),
            format!("dropped by the proxy {}", d.request),
        ),
    };
    let policies: Vec<String> = d.policies().iter().map(|p| p.to_string()).collect();
    let rules: Vec<String> = d.rules.iter().map(|r| r.to_string()).collect();
    json!({
        "time_us": time,
        "verdict": "DROPPED",
        "Type": "L7",
        "node_name": node,
        "IP": {"source": d.src.ip().to_string(), "destination": d.dst.ip().to_string()},
        "l4": {"source_port": d.src.port(), "destination_port": d.dst.port()},
        "l7": l7,
        "traffic_direction": if d.direction == membrane_policy::model::Direction::Egress { "EGRESS" } else { "INGRESS" },
        "reason": d.reason,
        "policies": policies,
        "rules": rules,
        "explanation": d.detail,
        "decision": proxy_decision_json(&d.decision, files),
        "Summary": summary,
    })
}
