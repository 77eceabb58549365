//! Scenario files: a small cluster, its policies, and the expected verdict of each flow
//! (the format of the conformance suite).

use membrane_policy::decode::{Decoder, Spanned};
use membrane_policy::diag::Diagnostic;
use membrane_policy::model::Direction;
use membrane_policy::translate::Secrets;
use membrane_policy::verdict::{HttpRequest, Verdict};
use membrane_policy::yaml::{Embedding, Node, Span, Value, parse_documents};
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub ip: IpAddr,
    pub cilium: bool,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ContainerPort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone)]
pub struct EndpointSpec {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub ip: IpAddr,
    pub service_account: String,
    pub labels: Vec<(String, String)>,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
    /// A reserved identity instead of labels (`ingress`, `kube-apiserver`, ...).
    pub entity: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ExternalName {
    pub name: String,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct TlsSpec {
    pub sni: String,
    pub path: Option<String>,
    pub intercept: bool,
}

#[derive(Debug, Clone)]
pub struct FlowSpec {
    pub from: String,
    pub to: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
    pub icmp: Option<(bool, u8)>,
    pub http: Option<HttpRequest>,
    pub tls: Option<TlsSpec>,
    pub dns: Option<String>,
    pub expect: Verdict,
    pub drop: Option<Direction>,
    pub reason: Option<String>,
    pub inject_headers: Vec<(String, String)>,
    /// What the flow stands for (a claim, a requirement), shown with results.
    pub note: Option<String>,
    pub span: Span,
}

/// One HTTPRoute rule attached to a Gateway: requests whose path matches go to the backends.
#[derive(Debug, Clone)]
pub struct GatewayRoute {
    /// The gateway endpoint's name.
    pub gateway: String,
    pub route: String,
    pub path: String,
    /// `Exact` rather than `PathPrefix`.
    pub exact: bool,
    /// Backend endpoint names with the port the gateway connects to (the target port).
    pub backends: Vec<(String, u16)>,
    pub file: u32,
    pub line: u32,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub requires: Vec<String>,
    pub cluster_name: String,
    pub namespaces: Vec<Namespace>,
    pub nodes: Vec<NodeSpec>,
    pub endpoints: Vec<EndpointSpec>,
    pub external: Vec<ExternalName>,
    pub secrets: Secrets,
    pub policies: String,
    pub policies_embedding: Embedding,
    pub flows: Vec<FlowSpec>,
    /// Gateway routes (from manifests; scenario files have none).
    pub routes: Vec<GatewayRoute>,
    /// Services (from manifests), which `toServices` peers name.
    pub services: Vec<ServiceSpec>,
    /// Agent flags (membrane's extension of the format: `agent: {enable-policy: always}`).
    pub agent: Vec<(String, String)>,
    /// Identity numbers a cluster already gave label sets (its CiliumIdentities): (number,
    /// security labels as `source:key` → value).
    pub cluster_identities: Vec<(u32, Vec<(String, String)>)>,
}

/// The agent flags a scenario may set, with their allowed values.
pub const AGENT_FLAGS: &[(&str, &[&str])] = &[
    ("enable-policy", &["default", "always", "never"]),
    ("allow-localhost", &["auto", "always", "policy"]),
    (
        "tofqdns-dns-reject-response-code",
        &["refused", "nameError"],
    ),
    ("policy-cidr-match-mode", &["", "nodes"]),
    ("enable-host-firewall", &["true", "false"]),
    ("enable-node-selector-labels", &["true", "false"]),
    ("enable-icmp-rules", &["true", "false"]),
    ("enable-l7-proxy", &["true", "false"]),
];

/// A Service as `toServices` sees it: its backends are the pods its selector selects.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub selector: Vec<(String, String)>,
    /// A selector-less Service's backend addresses (its EndpointSlices).
    pub addresses: Vec<IpAddr>,
}

/// Scenario features membrane knows (`requires:`).
pub const FEATURES: &[&str] = &[
    "l7-proxy",
    "l7-port-ranges",
    "icmp-policy",
    "host-firewall",
    "node-without-cilium",
    "cidr-match-nodes",
    "ccnp",
    "sctp",
    "tls-interception",
    "policy-secret-sync",
    "policy-secrets-only-from-secrets-namespace",
];

const TOP_FIELDS: &[&str] = &[
    "name",
    "source",
    "upstream_tests",
    "requires",
    "cluster",
    "namespaces",
    "nodes",
    "endpoints",
    "external",
    "secrets",
    "policies",
    "flows",
    "notes",
    "agent",
];

fn req_string(
    d: &mut Decoder,
    f: &mut membrane_policy::decode::Fields<'_>,
    name: &str,
    what: &str,
) -> Option<Spanned<String>> {
    match f.get(name) {
        Some(n) => d.int_or_string(n, name),
        None => {
            d.error(format!("{what} needs `{name}`"), f.span);
            None
        }
    }
}

fn ip(d: &mut Decoder, s: &Spanned<String>) -> Option<IpAddr> {
    match s.value.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            d.error(format!("`{}` is not an IP address", s.value), s.span);
            None
        }
    }
}

fn labels(
    d: &mut Decoder,
    f: &mut membrane_policy::decode::Fields<'_>,
    name: &str,
) -> Vec<(String, String)> {
    f.get(name)
        .map(|n| {
            d.string_map(n, name)
                .into_iter()
                .map(|(k, v)| (k.value, v.value))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses a scenario file. Every problem is returned with its position.
pub fn parse_scenario(text: &str) -> Result<Scenario, Vec<Diagnostic>> {
    let docs = parse_documents(text, Embedding::default()).map_err(|e| {
        vec![Diagnostic::error(
            "yaml",
            format!("invalid YAML: {}", e.message),
            Some(e.span),
        )]
    })?;
    let Some(root) = docs.into_iter().next() else {
        return Err(vec![Diagnostic::error(
            "scenario",
            "the scenario file is empty",
            None,
        )]);
    };
    decode_scenario_owned(root, text)
}

/// Decodes a scenario from the already parsed root of its file (`text` is the file's text,
/// for the position of the embedded policies).
pub fn decode_scenario(root: &Node, text: &str) -> Result<Scenario, Vec<Diagnostic>> {
    let mut d = Decoder::default();
    let scenario = decode(&mut d, root, text, None);
    if d.has_errors() {
        return Err(d.diagnostics);
    }
    scenario.ok_or(d.diagnostics)
}

/// [`decode_scenario`] that consumes the tree: each endpoint's subtree is freed as soon as
/// it is decoded, so the tree and the decoded cluster do not both stay whole in memory.
pub fn decode_scenario_owned(mut root: Node, text: &str) -> Result<Scenario, Vec<Diagnostic>> {
    let mut taken = None;
    if let Value::Map(entries) = &mut root.value
        && let Some((_, v)) = entries
            .iter_mut()
            .find(|(k, _)| k.scalar_text() == Some("endpoints"))
        && let Value::Seq(items) = &mut v.value
    {
        taken = Some(std::mem::take(items));
    }
    let mut d = Decoder::default();
    let scenario = decode(&mut d, &root, text, taken);
    if d.has_errors() {
        return Err(d.diagnostics);
    }
    scenario.ok_or(d.diagnostics)
}

/// `endpoints`: the items of the `endpoints:` list when they were taken out of the tree.
fn decode(
    d: &mut Decoder,
    root: &Node,
    text: &str,
    endpoints: Option<Vec<Node>>,
) -> Option<Scenario> {
    let taken = endpoints;
    let mut f = d.fields(root, "a scenario")?;
    let name = f
        .get("name")
        .and_then(|n| d.string(n, "name"))
        .map(|s| s.value)
        .unwrap_or_default();
    f.ignore(&["source", "upstream_tests", "notes"]);
    let requires: Vec<String> = f
        .get("requires")
        .and_then(|n| d.string_list(n, "requires"))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            if FEATURES.contains(&s.value.as_str()) {
                Some(s.value)
            } else {
                d.error_help(
                    format!("unknown feature `{}` in requires", s.value),
                    s.span,
                    format!("known features: {}", FEATURES.join(", ")),
                );
                None
            }
        })
        .collect();
    let mut cluster_name = "default".to_string();
    if let Some(n) = f.get("cluster")
        && let Some(mut c) = d.fields(n, "cluster")
    {
        if let Some(s) = c.get("name").and_then(|n| d.string(n, "cluster.name")) {
            cluster_name = s.value;
        }
        c.finish(d, "cluster", &["name"]);
    }
    let namespaces = f
        .get("namespaces")
        .and_then(|n| {
            d.list(n, "namespaces", |d, n| {
                let mut f = d.fields(n, "a namespace")?;
                let name = req_string(d, &mut f, "name", "a namespace")?.value;
                let labels = labels(d, &mut f, "labels");
                f.finish(d, "a namespace", &["name", "labels"]);
                Some(Namespace { name, labels })
            })
        })
        .unwrap_or_default();
    let nodes = f
        .get("nodes")
        .and_then(|n| {
            d.list(n, "nodes", |d, n| {
                let mut f = d.fields(n, "a node")?;
                let name = req_string(d, &mut f, "name", "a node")?.value;
                let ip_s = req_string(d, &mut f, "ip", "a node")?;
                let ip = ip(d, &ip_s)?;
                let cilium = f
                    .get("cilium")
                    .and_then(|n| d.bool(n, "cilium"))
                    .unwrap_or(true);
                let labels = labels(d, &mut f, "labels");
                f.ignore(&["podCIDR"]);
                f.finish(d, "a node", &["name", "ip", "podCIDR", "cilium", "labels"]);
                Some(NodeSpec {
                    name,
                    ip,
                    cilium,
                    labels,
                })
            })
        })
        .unwrap_or_default();
    let endpoints = match (f.get("endpoints"), taken) {
        (Some(_), Some(items)) => decode_endpoints(d, items),
        (Some(n), None) => d.list(n, "endpoints", decode_endpoint).unwrap_or_default(),
        (None, _) => Vec::new(),
    };
    let external = f
        .get("external")
        .and_then(|n| {
            d.list(n, "external", |d, n| {
                let mut f = d.fields(n, "an external name")?;
                let name = req_string(d, &mut f, "name", "an external name")?.value;
                let ips = f
                    .get("ips")
                    .and_then(|n| d.string_list(n, "ips"))
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|s| ip(d, s))
                    .collect();
                f.finish(d, "an external name", &["name", "ips"]);
                Some(ExternalName { name, ips })
            })
        })
        .unwrap_or_default();
    let mut secrets = Secrets::new();
    if let Some(n) = f.get("secrets") {
        let _ = d.list(n, "secrets", |d, n| {
            let mut f = d.fields(n, "a secret")?;
            let ns = req_string(d, &mut f, "namespace", "a secret")?.value;
            let name = req_string(d, &mut f, "name", "a secret")?.value;
            let data = match f.get("data") {
                Some(n) if n.as_map().is_some() => d
                    .string_map(n, "data")
                    .into_iter()
                    .map(|(k, v)| (k.value, v.value))
                    .collect(),
                _ => Default::default(),
            };
            f.ignore(&["type"]);
            f.finish(d, "a secret", &["namespace", "name", "data", "type"]);
            secrets.insert((ns, name), data);
            Some(())
        });
    }
    let mut policies = String::new();
    let mut policies_embedding = Embedding::default();
    if let Some(n) = f.get("policies")
        && let Some(s) = d.string(n, "policies")
    {
        policies = s.value;
        policies_embedding = block_embedding(text, n.span);
    }
    let mut agent = Vec::new();
    if let Some(n) = f.get("agent") {
        for (k, v) in d.string_map(n, "agent") {
            match AGENT_FLAGS.iter().find(|(name, _)| *name == k.value) {
                None => d.error_help(
                    format!("unknown agent flag `{}`", k.value),
                    k.span,
                    format!(
                        "known flags: {}",
                        AGENT_FLAGS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                Some((_, values)) if !values.contains(&v.value.as_str()) => d.error_help(
                    format!("`{}` is not a value of {}", v.value, k.value),
                    v.span,
                    format!("use one of: {}", values.join(", ")),
                ),
                Some(_) => agent.push((k.value, v.value)),
            }
        }
    }
    let flows = f
        .get("flows")
        .and_then(|n| d.list(n, "flows", decode_flow))
        .unwrap_or_default();
    f.finish(d, "a scenario", TOP_FIELDS);
    Some(Scenario {
        name,
        requires,
        cluster_name,
        namespaces,
        nodes,
        endpoints,
        external,
        secrets,
        policies,
        policies_embedding,
        flows,
        routes: Vec::new(),
        services: Vec::new(),
        agent,
        cluster_identities: Vec::new(),
    })
}

/// Where the content of a block scalar (`policies: |`) starts in the file, so diagnostics
/// about the embedded policies point at the right line and column.
fn block_embedding(text: &str, span: Span) -> Embedding {
    // The span starts at the `|` indicator or at the first content line, depending on the
    // parser: skip a line that is only the header.
    let start_line = span.line as usize;
    let mut offset = 0usize;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let is_header = i + 1 == start_line && line.trim_end().ends_with(['|', '>', '-', '+']);
        if i + 1 >= start_line && !line.trim().is_empty() && !is_header {
            let indent = line.len() - line.trim_start_matches(' ').len();
            return Embedding {
                line_offset: (i + 1 - 1) as u32,
                col_offset: indent as u32,
                byte_offset: (offset + indent) as u32,
            };
        }
        offset += line.len();
    }
    Embedding::default()
}

/// Endpoint lists this long are decoded by two threads.
const PARALLEL_ENDPOINTS: usize = 8192;

/// The items of the `endpoints:` list, each freed once decoded; a long list (a large
/// cluster) is decoded in two halves at once, with the diagnostics in the order of one pass.
fn decode_endpoints(d: &mut Decoder, mut items: Vec<Node>) -> Vec<EndpointSpec> {
    fn half(d: &mut Decoder, items: Vec<Node>) -> Vec<EndpointSpec> {
        items
            .into_iter()
            .filter_map(|n| decode_endpoint(d, &n))
            .collect()
    }
    if items.len() < PARALLEL_ENDPOINTS
        || !std::thread::available_parallelism().is_ok_and(|c| c.get() > 1)
    {
        return half(d, items);
    }
    let second = std::sync::Mutex::new(Some(items.split_off(items.len() / 2)));
    let take = || {
        second
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_default()
    };
    let mut d2 = Decoder::default();
    let (mut out, rest) = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new().spawn_scoped(scope, || half(&mut d2, take()));
        let out = half(d, items);
        (out, worker.map(|h| h.join()))
    });
    match rest {
        Ok(Ok(rest)) => {
            out.extend(rest);
            d.diagnostics.append(&mut d2.diagnostics);
        }
        // The thread could not be started: the second half is still in its slot.
        Err(_) => out.extend(half(d, take())),
        // What would have panicked on one thread panics here too.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
    }
    out
}

fn decode_endpoint(d: &mut Decoder, n: &Node) -> Option<EndpointSpec> {
    let mut f = d.fields(n, "an endpoint")?;
    let name = req_string(d, &mut f, "name", "an endpoint")?.value;
    let namespace = f
        .get("namespace")
        .and_then(|n| d.string(n, "namespace"))
        .map(|s| s.value)
        .unwrap_or_else(|| "default".into());
    let node = f
        .get("node")
        .and_then(|n| d.string(n, "node"))
        .map(|s| s.value)
        .unwrap_or_default();
    let ip_s = req_string(d, &mut f, "ip", "an endpoint")?;
    let ip = ip(d, &ip_s)?;
    let service_account = f
        .get("serviceAccount")
        .and_then(|n| d.string(n, "serviceAccount"))
        .map(|s| s.value)
        .unwrap_or_else(|| "default".into());
    let labels = labels(d, &mut f, "labels");
    let ports = f
        .get("ports")
        .and_then(|n| {
            d.list(n, "ports", |d, n| {
                let mut f = d.fields(n, "a container port")?;
                let name = f
                    .get("name")
                    .and_then(|n| d.string(n, "name"))
                    .map(|s| s.value)
                    .unwrap_or_default();
                let port = f.get("port").and_then(|n| d.int(n, "port"))?;
                let protocol = f
                    .get("protocol")
                    .and_then(|n| d.string(n, "protocol"))
                    .map(|s| s.value)
                    .unwrap_or_else(|| "TCP".into());
                f.finish(d, "a container port", &["name", "port", "protocol"]);
                let Ok(port) = u16::try_from(port.value) else {
                    d.error(format!("port {} is out of range", port.value), port.span);
                    return None;
                };
                Some(ContainerPort {
                    name,
                    port,
                    protocol,
                })
            })
        })
        .unwrap_or_default();
    let host_network = f
        .get("hostNetwork")
        .and_then(|n| d.bool(n, "hostNetwork"))
        .unwrap_or(false);
    let entity = f
        .get("entity")
        .and_then(|n| d.string(n, "entity"))
        .map(|s| s.value);
    f.finish(
        d,
        "an endpoint",
        &[
            "name",
            "namespace",
            "node",
            "ip",
            "serviceAccount",
            "labels",
            "ports",
            "hostNetwork",
            "entity",
        ],
    );
    Some(EndpointSpec {
        name,
        namespace,
        node,
        ip,
        service_account,
        labels,
        ports,
        host_network,
        entity,
    })
}

pub fn decode_flow(d: &mut Decoder, n: &Node) -> Option<FlowSpec> {
    let mut f = d.fields(n, "a flow")?;
    let span = n.span;
    let from = req_string(d, &mut f, "from", "a flow")?.value;
    let to = f
        .get("to")
        .and_then(|n| d.int_or_string(n, "to"))
        .map(|s| s.value);
    let port = match f.get("port").and_then(|n| d.int(n, "port")) {
        Some(p) => match u16::try_from(p.value) {
            Ok(v) => Some(v),
            Err(_) => {
                d.error(format!("port {} is out of range", p.value), p.span);
                None
            }
        },
        None => None,
    };
    let protocol = f
        .get("protocol")
        .and_then(|n| d.string(n, "protocol"))
        .map(|s| s.value);
    let mut icmp = None;
    if let Some(n) = f.get("icmp")
        && let Some(mut i) = d.fields(n, "icmp")
    {
        let v6 = i
            .get("family")
            .and_then(|n| d.string(n, "family"))
            .is_some_and(|s| s.value == "IPv6");
        let t = i
            .get("type")
            .and_then(|n| d.int(n, "type"))
            .map_or(8, |t| t.value.clamp(0, 255) as u8);
        i.finish(d, "icmp", &["family", "type"]);
        icmp = Some((v6, t));
    }
    let http = f.get("http").and_then(|n| decode_http(d, n));
    let mut tls = None;
    if let Some(n) = f.get("tls")
        && let Some(mut t) = d.fields(n, "tls")
    {
        let sni = t
            .get("sni")
            .and_then(|n| d.string(n, "sni"))
            .map(|s| s.value)
            .unwrap_or_default();
        let path = t
            .get("path")
            .and_then(|n| d.string(n, "path"))
            .map(|s| s.value);
        let intercept = t
            .get("intercept")
            .and_then(|n| d.bool(n, "intercept"))
            .unwrap_or(false);
        t.finish(d, "tls", &["sni", "path", "intercept"]);
        tls = Some(TlsSpec {
            sni,
            path,
            intercept,
        });
    }
    let dns = f
        .get("dns")
        .and_then(|n| d.string(n, "dns"))
        .map(|s| s.value);
    let expect_s = req_string(d, &mut f, "expect", "a flow")?;
    let Some(expect) = Verdict::parse(&expect_s.value) else {
        d.error_help(
            format!("unknown expected verdict `{}`", expect_s.value),
            expect_s.span,
            "use allow, deny, http-403, tls-denied, dns-ok or dns-refused",
        );
        return None;
    };
    let drop = match f.get("drop").and_then(|n| d.string(n, "drop")) {
        None => None,
        Some(s) if s.value == "egress" => Some(Direction::Egress),
        Some(s) if s.value == "ingress" => Some(Direction::Ingress),
        Some(s) => {
            d.error_help(
                format!("unknown drop side `{}`", s.value),
                s.span,
                "use egress or ingress",
            );
            None
        }
    };
    let reason = f
        .get("reason")
        .and_then(|n| d.string(n, "reason"))
        .map(|s| s.value);
    let inject_headers = f
        .get("inject_headers")
        .map(|n| {
            d.string_map(n, "inject_headers")
                .into_iter()
                .map(|(k, v)| (k.value, v.value))
                .collect()
        })
        .unwrap_or_default();
    let note = f
        .get("note")
        .and_then(|n| d.string(n, "note"))
        .map(|s| s.value);
    f.ignore(&["cilium", "kubernetes", "origin"]);
    f.finish(
        d,
        "a flow",
        &[
            "from",
            "to",
            "port",
            "protocol",
            "icmp",
            "http",
            "tls",
            "dns",
            "expect",
            "drop",
            "reason",
            "inject_headers",
            "cilium",
            "kubernetes",
            "origin",
            "note",
        ],
    );
    Some(FlowSpec {
        from,
        to,
        port,
        protocol,
        icmp,
        http,
        tls,
        dns,
        expect,
        drop,
        reason,
        inject_headers,
        note,
        span,
    })
}

fn decode_http(d: &mut Decoder, n: &Node) -> Option<HttpRequest> {
    let mut f = d.fields(n, "http")?;
    let method = f
        .get("method")
        .and_then(|n| d.string(n, "method"))
        .map_or_else(|| "GET".into(), |s| s.value);
    let path = f
        .get("path")
        .and_then(|n| d.string(n, "path"))
        .map_or_else(|| "/".into(), |s| s.value);
    let headers = f
        .get("headers")
        .map(|n| {
            d.string_map(n, "headers")
                .into_iter()
                .map(|(k, v)| (k.value, v.value))
                .collect()
        })
        .unwrap_or_default();
    f.finish(d, "http", &["method", "path", "headers"]);
    Some(HttpRequest {
        method,
        path,
        host: String::new(),
        headers,
    })
}
