//! Hubble flow records, as `hubble observe -o json` (one bare `Flow` per line) and
//! `hubble observe -o jsonpb` (one `GetFlowsResponse` per line: `{"flow": {...},
//! "node_name": ..., "time": ...}`) write them.
//!
//! Field names follow `api/v1/flow/flow.proto` in Cilium's repository, as the Hubble CLI
//! marshals them (proto names: `source_port`, `is_reply`, `IP`, `Type`, ...). The
//! lowerCamelCase spelling other protobuf JSON encoders use (`sourcePort`, `isReply`) is
//! accepted too. Only what policy decisions need is read; the rest of a record is ignored.

use serde_json::Value;
use std::net::IpAddr;

/// One side of a flow: what Hubble knows of the endpoint, and its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowEndpoint {
    /// Cilium labels with their source: `k8s:app=x`, `reserved:world`, `cidr:1.2.3.4/32`.
    pub labels: Vec<String>,
    pub namespace: String,
    pub pod_name: String,
    /// The address from the flow's `IP` section.
    pub ip: Option<IpAddr>,
    /// DNS names the address was learned under (`source_names` / `destination_names`).
    pub names: Vec<String>,
}

impl FlowEndpoint {
    /// The reserved labels (`reserved:host` → `host`).
    pub fn reserved(&self) -> impl Iterator<Item = &str> {
        self.labels
            .iter()
            .filter_map(|l| l.strip_prefix("reserved:"))
    }

    /// The Kubernetes labels (`k8s:app=x` → `("app", "x")`).
    pub fn k8s_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().filter_map(|l| {
            let rest = l.strip_prefix("k8s:")?;
            Some(rest.split_once('=').unwrap_or((rest, "")))
        })
    }
}

/// Layer 4 of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        port: u16,
    },
    Udp {
        port: u16,
    },
    Sctp {
        port: u16,
    },
    Icmp {
        v6: bool,
        icmp_type: u8,
    },
    /// No layer 4 section.
    None,
}

/// Layer 7 of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7 {
    None,
    Http {
        method: String,
        /// The URL's path and query.
        path: String,
        /// The URL's host, without port.
        host: String,
        headers: Vec<(String, String)>,
    },
    Dns {
        query: String,
        ips: Vec<IpAddr>,
    },
    /// Kafka and other parsers: not decided here.
    Other(String),
}

/// The fields of one Hubble flow that a policy decision reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubbleFlow {
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    pub l4: L4,
    pub l7: L7,
    /// `l7.type`: `REQUEST`, `RESPONSE`, `SAMPLE` (empty for L3/L4 flows).
    pub l7_type: String,
    /// Hubble's verdict: `FORWARDED`, `DROPPED`, `AUDIT`, `REDIRECTED`, `ERROR`, ...
    pub verdict: String,
    /// `drop_reason_desc`: `POLICY_DENIED`, ... (empty when not dropped).
    pub drop_reason: String,
    /// `INGRESS` or `EGRESS` (empty when unknown).
    pub direction: String,
    pub is_reply: bool,
    pub node_name: String,
    /// Hubble's one-line summary (`Summary`).
    pub summary: String,
}

impl HubbleFlow {
    /// A reply (`is_reply`, or an L7 response): the answer of a connection decided when it
    /// was opened, not a policy decision of its own.
    pub fn is_response(&self) -> bool {
        self.is_reply || self.l7_type.eq_ignore_ascii_case("RESPONSE")
    }
}

/// What one line of an export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Flow(Box<HubbleFlow>),
    /// A `GetFlowsResponse` that carries no flow (`node_status`, `lost_events`): its kind.
    NotAFlow(String),
}

/// Reads one line of `hubble observe -o json` or `-o jsonpb`. `Ok(None)` for a blank line.
pub fn parse_line(line: &str) -> Result<Option<Record>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let (flow, outer_node) = match obj.get("flow") {
        Some(f) => (f, obj.get("node_name").and_then(Value::as_str)),
        None => {
            if let Some(kind) = ["node_status", "lost_events", "nodeStatus", "lostEvents"]
                .iter()
                .find(|k| obj.contains_key(**k))
            {
                return Ok(Some(Record::NotAFlow((*kind).to_string())));
            }
            (&v, None)
        }
    };
    parse_flow(flow, outer_node).map(|f| Some(Record::Flow(Box::new(f))))
}

/// The first of the given keys that is present.
fn field<'v>(v: &'v Value, keys: &[&str]) -> Option<&'v Value> {
    keys.iter().find_map(|k| v.get(*k)).filter(|x| !x.is_null())
}

fn text(v: &Value, keys: &[&str]) -> String {
    match field(v, keys) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn strings(v: &Value, keys: &[&str]) -> Vec<String> {
    field(v, keys)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn port(v: &Value) -> Result<u16, String> {
    match field(v, &["destination_port", "destinationPort"]) {
        None => Ok(0),
        Some(p) => p
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| format!("destination_port is not a port number: {p}")),
    }
}

fn parse_flow(flow: &Value, outer_node: Option<&str>) -> Result<HubbleFlow, String> {
    if !flow.is_object() {
        return Err("`flow` is not an object".into());
    }
    if field(flow, &["verdict"]).is_none()
        && field(flow, &["source"]).is_none()
        && field(flow, &["IP", "ip"]).is_none()
    {
        return Err("not a Hubble flow (no verdict, source or IP)".into());
    }
    let ip = field(flow, &["IP", "ip"]);
    let addr = |key: &str| -> Result<Option<IpAddr>, String> {
        match ip.and_then(|ip| field(ip, &[key])).and_then(Value::as_str) {
            None | Some("") => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|_| format!("IP.{key} is not an address: {s}")),
        }
    };
    let endpoint = |key: &str, names: &[&str], ip: Option<IpAddr>| -> FlowEndpoint {
        let e = field(flow, &[key]).cloned().unwrap_or(Value::Null);
        FlowEndpoint {
            labels: strings(&e, &["labels"]),
            namespace: text(&e, &["namespace"]),
            pod_name: text(&e, &["pod_name", "podName"]),
            ip,
            names: strings(flow, names),
        }
    };
    let source = endpoint("source", &["source_names", "sourceNames"], addr("source")?);
    let destination = endpoint(
        "destination",
        &["destination_names", "destinationNames"],
        addr("destination")?,
    );
    let l4 = match field(flow, &["l4"]) {
        None => L4::None,
        Some(l4) => {
            if let Some(t) = field(l4, &["TCP", "tcp"]) {
                L4::Tcp { port: port(t)? }
            } else if let Some(u) = field(l4, &["UDP", "udp"]) {
                L4::Udp { port: port(u)? }
            } else if let Some(s) = field(l4, &["SCTP", "sctp"]) {
                L4::Sctp { port: port(s)? }
            } else if let Some((v6, i)) = field(l4, &["ICMPv4", "icmpv4"])
                .map(|i| (false, i))
                .or_else(|| field(l4, &["ICMPv6", "icmpv6"]).map(|i| (true, i)))
            {
                let t = field(i, &["type"]).and_then(Value::as_u64).unwrap_or(0);
                L4::Icmp {
                    v6,
                    icmp_type: u8::try_from(t).map_err(|_| format!("ICMP type {t}"))?,
                }
            } else {
                L4::None
            }
        }
    };
    let (l7, l7_type) = match field(flow, &["l7"]) {
        None => (L7::None, String::new()),
        Some(l7) => {
            let kind = text(l7, &["type"]);
            let parsed = if let Some(h) = field(l7, &["http"]) {
                let url = text(h, &["url"]);
                let (host, path) = split_url(&url);
                let headers = field(h, &["headers"])
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|kv| (text(kv, &["key"]), text(kv, &["value"])))
                            .collect()
                    })
                    .unwrap_or_default();
                L7::Http {
                    method: text(h, &["method"]),
                    path,
                    host,
                    headers,
                }
            } else if let Some(d) = field(l7, &["dns"]) {
                L7::Dns {
                    query: text(d, &["query"]),
                    ips: strings(d, &["ips"])
                        .iter()
                        .filter_map(|s| s.parse().ok())
                        .collect(),
                }
            } else if let Some(other) = ["kafka"].iter().find(|k| field(l7, &[**k]).is_some()) {
                L7::Other((*other).to_string())
            } else {
                L7::None
            };
            (parsed, kind)
        }
    };
    let is_reply = match field(flow, &["is_reply", "isReply"]) {
        Some(Value::Bool(b)) => *b,
        // A BoolValue some encoders write as an object.
        Some(Value::Object(o)) => o.get("value").and_then(Value::as_bool).unwrap_or(false),
        _ => false,
    };
    let mut node_name = text(flow, &["node_name", "nodeName"]);
    if node_name.is_empty() {
        node_name = outer_node.unwrap_or_default().to_string();
    }
    Ok(HubbleFlow {
        source,
        destination,
        l4,
        l7,
        l7_type,
        verdict: text(flow, &["verdict"]),
        drop_reason: text(flow, &["drop_reason_desc", "dropReasonDesc"]),
        direction: text(flow, &["traffic_direction", "trafficDirection"]),
        is_reply,
        node_name,
        summary: text(flow, &["Summary", "summary"]),
    })
}

/// `http://host:port/path?q` → (`host`, `/path?q`); a bare path stays a path.
fn split_url(url: &str) -> (String, String) {
    let Some((_, rest)) = url.split_once("://") else {
        let path = if url.is_empty() { "/" } else { url };
        return (String::new(), path.to_string());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    (host.to_string(), path.to_string())
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"time":"2026-12-07T10:00:00.1Z","verdict":"FORWARDED","IP":{"source":"10.0.1.15","destination":"10.0.2.20","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":43512,"destination_port":3000,"flags":{"SYN":true}}},"source":{"ID":1201,"identity":31000,"namespace":"frontend","labels":["k8s:app=frontend","k8s:io.kubernetes.pod.namespace=frontend"],"pod_name":"frontend-7c9d-x2"},"destination":{"ID":1555,"identity":31001,"namespace":"backend","labels":["k8s:app=backend","k8s:io.kubernetes.pod.namespace=backend"],"pod_name":"backend-5f-a1"},"Type":"L3_L4","node_name":"node-1","traffic_direction":"EGRESS","is_reply":false,"Summary":"TCP Flags: SYN"}"#;

    #[test]
    fn reads_a_bare_flow() {
        let Ok(Some(Record::Flow(f))) = parse_line(JSON) else {
            panic!("not a flow");
        };
        assert_eq!(f.verdict, "FORWARDED");
        assert_eq!(f.l4, L4::Tcp { port: 3000 });
        assert_eq!(f.source.namespace, "frontend");
        assert_eq!(f.source.ip, "10.0.1.15".parse().ok());
        assert_eq!(
            f.destination.k8s_labels().collect::<Vec<_>>(),
            vec![
                ("app", "backend"),
                ("io.kubernetes.pod.namespace", "backend")
            ]
        );
        assert_eq!(f.direction, "EGRESS");
        assert!(!f.is_response());
        assert_eq!(f.node_name, "node-1");
    }

    #[test]
    fn reads_a_get_flows_response() {
        let line = format!(r#"{{"flow":{JSON},"node_name":"node-2","time":"x"}}"#);
        let Ok(Some(Record::Flow(f))) = parse_line(&line) else {
            panic!("not a flow");
        };
        assert_eq!(f.node_name, "node-1");
        assert_eq!(
            parse_line(r#"{"node_status":{"state_change":"NODE_CONNECTED"},"node_name":"n"}"#),
            Ok(Some(Record::NotAFlow("node_status".into())))
        );
    }

    #[test]
    fn reads_l7_http_and_dns() {
        let http = r#"{"verdict":"DROPPED","Type":"L7","l4":{"TCP":{"destination_port":3000}},"l7":{"type":"REQUEST","http":{"method":"GET","url":"http://backend.backend:3000/api/admin?x=1","protocol":"HTTP/1.1","headers":[{"key":"X-Req","value":"1"}]}}}"#;
        let Ok(Some(Record::Flow(f))) = parse_line(http) else {
            panic!("not a flow");
        };
        assert_eq!(
            f.l7,
            L7::Http {
                method: "GET".into(),
                path: "/api/admin?x=1".into(),
                host: "backend.backend".into(),
                headers: vec![("X-Req".into(), "1".into())],
            }
        );
        let dns = r#"{"verdict":"FORWARDED","is_reply":true,"l4":{"UDP":{"destination_port":41000}},"l7":{"type":"RESPONSE","dns":{"query":"api.example.com.","ips":["93.184.216.34"],"rcode":0}}}"#;
        let Ok(Some(Record::Flow(f))) = parse_line(dns) else {
            panic!("not a flow");
        };
        assert!(f.is_response());
        assert_eq!(
            f.l7,
            L7::Dns {
                query: "api.example.com.".into(),
                ips: vec![
                    "93.184.216.34"
                        .parse()
                        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
                ]
            }
        );
    }

    #[test]
    fn camel_case_and_icmp() {
        let line = r#"{"verdict":"DROPPED","dropReasonDesc":"POLICY_DENIED","isReply":false,"l4":{"ICMPv4":{"type":8}},"IP":{"source":"10.0.0.1","destination":"10.0.0.2"}}"#;
        let Ok(Some(Record::Flow(f))) = parse_line(line) else {
            panic!("not a flow");
        };
        assert_eq!(
            f.l4,
            L4::Icmp {
                v6: false,
                icmp_type: 8
            }
        );
        assert_eq!(f.drop_reason, "POLICY_DENIED");
    }

    #[test]
    fn bad_lines_say_why() {
        assert!(parse_line("{").is_err_and(|e| e.starts_with("not JSON")));
        assert!(parse_line("[1]").is_err());
        assert!(parse_line(r#"{"foo":1}"#).is_err());
        assert!(
            parse_line(r#"{"verdict":"FORWARDED","IP":{"source":"10.0.0.300"}}"#)
                .is_err_and(|e| e.contains("IP.source"))
        );
        assert_eq!(parse_line("   "), Ok(None));
    }

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://a:80/x"),
            ("a".to_string(), "/x".to_string())
        );
        assert_eq!(split_url("https://a"), ("a".to_string(), "/".to_string()));
        assert_eq!(split_url("/p"), (String::new(), "/p".to_string()));
    }
}
