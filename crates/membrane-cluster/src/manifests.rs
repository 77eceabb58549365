//! The manifests users already have: Namespaces, Nodes, Pods and workloads, Services,
//! Gateways and HTTPRoutes, policies, and membrane's own `ConnectivityTest` kind, turned into
//! the cluster model the engine evaluates.
//!
//! Pod templates become endpoints (one per workload); addresses are synthesized
//! deterministically where the manifests have none, so results are reproducible.

use crate::scenario::{
    ContainerPort, EndpointSpec, ExternalName, FlowSpec, GatewayRoute, Namespace, NodeSpec,
    Scenario, decode_flow,
};
use crate::world::World;
use membrane_policy::api::Resource;
use membrane_policy::decode::Decoder;
use membrane_policy::diag::Diagnostic;
use membrane_policy::model::FileId;
use membrane_policy::policy_set::{decode_documents, parse_resources};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::{Embedding, Node, Span};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

pub const TEST_API_VERSION: &str = "membrane.dev/v1alpha1";
pub const TEST_KIND: &str = "ConnectivityTest";

/// A file as read by the caller (the engine does no I/O).
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// A workload as written: what became of it in the model.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    /// The endpoint that stands for its pods.
    pub endpoint: String,
    pub file: FileId,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// A number, or a container port name.
    pub target: String,
    pub protocol: String,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub selector: Vec<(String, String)>,
    pub ports: Vec<ServicePort>,
    pub file: FileId,
    pub span: Span,
}

/// One `ConnectivityTest` expectation.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub test: String,
    pub flow: FlowSpec,
    pub file: FileId,
}

/// Everything loaded from a set of files.
pub struct Loaded {
    pub files: Vec<SourceFile>,
    pub world: World,
    /// Problems with the input itself (syntax, schema, validation), per file.
    pub diagnostics: Vec<(FileId, Diagnostic)>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub expectations: Vec<Expectation>,
    /// Objects without a namespace that landed in `default`.
    pub defaulted_namespace: Vec<(FileId, Span, String)>,
    /// Listed pods that are not running (`status.phase` other than Running): not endpoints.
    pub pods_not_running: usize,
    /// Every policy as written, replaced copies included, when some are replaced (else the
    /// world's set is the same): what lint and the input's diagnostics read.
    pub as_written: Option<membrane_policy::policy_set::PolicySet>,
    /// What loading parsed, kept for the passes that read the manifests as written (lint).
    pub index: ParsedIndex,
}

/// The YAML and resources `load` parsed, so that nothing parses a file twice.
#[derive(Debug, Default)]
pub struct ParsedIndex {
    /// Per file (indexed by `FileId`), its YAML documents: for a scenario file the documents of
    /// its `policies`. Empty when the text does not parse. Lint finds key positions in them.
    pub documents: Vec<Vec<Node>>,
    /// Every decoded resource with its file, in file and document order, kinds the engine does
    /// not read (`Resource::Other`) included. The world's policies are translated from these.
    pub resources: Vec<(FileId, Resource)>,
    /// Per resource: a later object of the same kind, namespace and name replaces it, as the
    /// API server keeps only the last one applied (manifests only; lint MEM019 reports it).
    pub replaced: Vec<bool>,
}

impl ParsedIndex {
    /// The YAML documents of a file (none for an unknown file).
    pub fn documents(&self, file: FileId) -> &[Node] {
        self.documents.get(file as usize).map_or(&[], Vec::as_slice)
    }

    /// The resources in effect: those no later object replaces.
    pub fn live(&self) -> impl Iterator<Item = &(FileId, Resource)> + Clone {
        self.resources
            .iter()
            .zip(&self.replaced)
            .filter(|(_, replaced)| !**replaced)
            .map(|(r, _)| r)
    }
}

impl Loaded {
    pub fn file_name(&self, id: FileId) -> &str {
        self.files
            .get(id as usize)
            .map_or("<agent>", |f| f.name.as_str())
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|(_, d)| d.is_error())
    }
}

pub(crate) fn s(node: Option<&Node>) -> Option<String> {
    node.and_then(Node::scalar_text).map(str::to_string)
}

pub(crate) fn labels_of(node: Option<&Node>) -> Vec<(String, String)> {
    node.and_then(Node::as_map)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.scalar_text().unwrap_or("").to_string(),
                        v.scalar_text().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn path<'n>(node: &'n Node, keys: &[&str]) -> Option<&'n Node> {
    let mut cur = node;
    for k in keys {
        cur = cur.get(k)?;
    }
    Some(cur)
}

struct PodTemplate<'n> {
    labels: Vec<(String, String)>,
    spec: Option<&'n Node>,
}

pub(crate) fn container_ports(spec: Option<&Node>) -> Vec<ContainerPort> {
    let mut out = Vec::new();
    for key in ["containers", "initContainers"] {
        for c in spec
            .and_then(|s| s.get(key))
            .and_then(Node::as_seq)
            .unwrap_or(&[])
        {
            for p in c.get("ports").and_then(Node::as_seq).unwrap_or(&[]) {
                let port = s(p.get("containerPort")).and_then(|t| t.parse::<u16>().ok());
                if let Some(port) = port {
                    out.push(ContainerPort {
                        name: s(p.get("name")).unwrap_or_default(),
                        port,
                        protocol: s(p.get("protocol")).unwrap_or_else(|| "TCP".into()),
                    });
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct Builder {
    namespaces: BTreeMap<String, Vec<(String, String)>>,
    nodes: Vec<NodeSpec>,
    endpoints: Vec<EndpointSpec>,
    /// Endpoints still to be placed on a node.
    unplaced: Vec<usize>,
    external: Vec<ExternalName>,
    workloads: Vec<Workload>,
    services: Vec<Service>,
    gateways: Vec<(String, String, Vec<u16>)>,
    routes: Vec<(FileId, Node)>,
    expectations: Vec<Expectation>,
    secrets: Secrets,
    defaulted: Vec<(FileId, Span, String)>,
    diagnostics: Vec<(FileId, Diagnostic)>,
    /// Pods a cluster listed that are not running (no endpoint, as in Cilium).
    pods_not_running: usize,
    /// (namespace, kind, name) of a workload whose pods were listed → its `workloads` index.
    pod_workloads: HashMap<(String, String, String), usize>,
    /// Names flows may use for a workload of listed pods → its first pod's endpoint.
    aliases: Vec<(String, String)>,
    /// EndpointSlices: (namespace, service name) → ready addresses.
    slices: BTreeMap<(String, String), Vec<IpAddr>>,
    /// CiliumIdentities: (number, security labels).
    cluster_identities: Vec<(u32, Vec<(String, String)>)>,
    /// CiliumEndpoints: the identity the cluster gave a pod, where it says so.
    cilium_endpoints: Vec<(FileId, Span, String, u32)>,
}

/// A pod as an endpoint (manifests and the live cluster read pods alike).
pub(crate) fn pod_endpoint(node: &Node, namespace: &str, name: &str, ip: IpAddr) -> EndpointSpec {
    let spec = node.get("spec");
    EndpointSpec {
        name: format!("{namespace}/{name}"),
        namespace: namespace.to_string(),
        node: s(spec.and_then(|s| s.get("nodeName"))).unwrap_or_default(),
        ip,
        service_account: s(spec.and_then(|s| s.get("serviceAccountName")))
            .unwrap_or_else(|| "default".into()),
        labels: labels_of(path(node, &["metadata", "labels"])),
        ports: container_ports(spec),
        host_network: s(spec.and_then(|s| s.get("hostNetwork"))).as_deref() == Some("true"),
        entity: None,
    }
}

/// A Node's InternalIP.
pub(crate) fn node_address(node: &Node) -> Option<IpAddr> {
    path(node, &["status", "addresses"])
        .and_then(Node::as_seq)?
        .iter()
        .find(|x| s(x.get("type")).as_deref() == Some("InternalIP"))
        .and_then(|x| s(x.get("address")))?
        .parse()
        .ok()
}

/// A Node object as the cluster model's node (a `membrane.dev/cilium: "false"` label: a node
/// without Cilium).
pub(crate) fn node_spec(node: &Node, name: String, ip: IpAddr) -> NodeSpec {
    let labels = labels_of(path(node, &["metadata", "labels"]));
    let cilium = !labels
        .iter()
        .any(|(k, v)| k == "membrane.dev/cilium" && v == "false");
    NodeSpec {
        name,
        ip,
        cilium,
        labels,
    }
}

/// The workload that owns a pod, from its controller reference: a ReplicaSet made by a
/// Deployment (its name is the Deployment's plus `-<pod-template-hash>`) stands for the
/// Deployment; StatefulSets, DaemonSets and Jobs are named as they are.
fn owning_workload(node: &Node) -> Option<(String, String)> {
    let owners = path(node, &["metadata", "ownerReferences"]).and_then(Node::as_seq)?;
    let owner = owners
        .iter()
        .find(|o| s(o.get("controller")).as_deref() == Some("true"))
        .or_else(|| owners.first())?;
    let kind = s(owner.get("kind"))?;
    let name = s(owner.get("name"))?;
    if kind == "ReplicaSet" {
        let hash = s(path(node, &["metadata", "labels", "pod-template-hash"]));
        if let Some(base) =
            hash.and_then(|h| name.strip_suffix(&format!("-{h}")).map(str::to_string))
        {
            return Some(("Deployment".into(), base));
        }
    }
    Some((kind, name))
}

impl Builder {
    fn namespace_of(&mut self, file: FileId, node: &Node, kind: &str) -> String {
        match s(path(node, &["metadata", "namespace"])) {
            Some(ns) => {
                self.namespaces.entry(ns.clone()).or_default();
                ns
            }
            None => {
                let name = s(path(node, &["metadata", "name"])).unwrap_or_default();
                self.defaulted
                    .push((file, node.span, format!("{kind} {name}")));
                self.namespaces.entry("default".into()).or_default();
                "default".into()
            }
        }
    }

    fn add_endpoint(&mut self, ep: EndpointSpec, placed: bool) -> usize {
        self.endpoints.push(ep);
        let i = self.endpoints.len() - 1;
        if !placed {
            self.unplaced.push(i);
        }
        i
    }

    fn workload(
        &mut self,
        file: FileId,
        node: &Node,
        kind: &str,
        template: PodTemplate<'_>,
        replicas: u32,
    ) {
        let name = s(path(node, &["metadata", "name"])).unwrap_or_default();
        let namespace = self.namespace_of(file, node, kind);
        let endpoint_name = format!("{namespace}/{name}");
        let spec = template.spec;
        let host_network = s(spec.and_then(|s| s.get("hostNetwork"))).as_deref() == Some("true");
        let service_account = s(spec.and_then(|s| s.get("serviceAccountName")))
            .or_else(|| s(spec.and_then(|s| s.get("serviceAccount"))))
            .unwrap_or_else(|| "default".into());
        let node_name = s(spec.and_then(|s| s.get("nodeName"))).unwrap_or_default();
        let ep = EndpointSpec {
            name: endpoint_name.clone(),
            namespace: namespace.clone(),
            node: node_name.clone(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            service_account,
            labels: template.labels,
            ports: container_ports(spec),
            host_network,
            entity: None,
        };
        self.add_endpoint(ep, false);
        self.workloads.push(Workload {
            kind: kind.into(),
            namespace,
            name,
            replicas,
            endpoint: endpoint_name,
            file,
            span: node.span,
        });
    }

    fn object(&mut self, file: FileId, api_version: &str, kind: &str, node: &Node) {
        let name = s(path(node, &["metadata", "name"])).unwrap_or_default();
        let replicas = |n: &Node| {
            s(path(n, &["spec", "replicas"]))
                .and_then(|r| r.parse().ok())
                .unwrap_or(1)
        };
        match kind {
            "Namespace" => {
                let mut labels = labels_of(path(node, &["metadata", "labels"]));
                if !labels
                    .iter()
                    .any(|(k, _)| k == "kubernetes.io/metadata.name")
                {
                    labels.push(("kubernetes.io/metadata.name".into(), name.clone()));
                }
                self.namespaces.insert(name, labels);
            }
            "Node" => {
                let fallback = IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2 + self.nodes.len() as u8));
                let ip = node_address(node).unwrap_or(fallback);
                self.nodes.push(node_spec(node, name, ip));
            }
            "Pod" => {
                // A listed pod that is not running has no endpoint (hand-written pods have no
                // status and are placed like workloads).
                let phase = s(path(node, &["status", "phase"]));
                if phase.as_deref().is_some_and(|p| p != "Running") {
                    self.pods_not_running += 1;
                    return;
                }
                let namespace = self.namespace_of(file, node, kind);
                let ip = s(path(node, &["status", "podIP"])).and_then(|t| t.parse().ok());
                let ep = pod_endpoint(
                    node,
                    &namespace,
                    &name,
                    ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                );
                let placed = false;
                self.add_endpoint(ep, placed);
                let endpoint = format!("{namespace}/{name}");
                let (workload_kind, workload_name) =
                    owning_workload(node).unwrap_or_else(|| (kind.to_string(), name.clone()));
                let key = (
                    namespace.clone(),
                    workload_kind.clone(),
                    workload_name.clone(),
                );
                if let Some(&w) = self.pod_workloads.get(&key) {
                    self.workloads[w].replicas += 1;
                } else {
                    if workload_name != name {
                        self.aliases
                            .push((format!("{namespace}/{workload_name}"), endpoint.clone()));
                    }
                    self.pod_workloads.insert(key, self.workloads.len());
                    self.workloads.push(Workload {
                        kind: workload_kind,
                        namespace: namespace.clone(),
                        name: workload_name,
                        replicas: 1,
                        endpoint,
                        file,
                        span: node.span,
                    });
                }
            }
            "CiliumIdentity" if api_version.starts_with("cilium.io/") => {
                if let Ok(id) = name.parse::<u32>() {
                    let labels = labels_of(node.get("security-labels"));
                    self.cluster_identities.push((id, labels));
                }
            }
            "CiliumEndpoint" if api_version.starts_with("cilium.io/") => {
                let namespace = self.namespace_of(file, node, kind);
                if let Some(id) =
                    s(path(node, &["status", "identity", "id"])).and_then(|t| t.parse::<u32>().ok())
                {
                    self.cilium_endpoints.push((
                        file,
                        node.span,
                        format!("{namespace}/{name}"),
                        id,
                    ));
                }
            }
            "EndpointSlice" => {
                let namespace = self.namespace_of(file, node, kind);
                let Some(service) = s(path(
                    node,
                    &["metadata", "labels", "kubernetes.io/service-name"],
                )) else {
                    return;
                };
                let ready =
                    |e: &Node| s(path(e, &["conditions", "ready"])).as_deref() != Some("false");
                let addrs = node
                    .get("endpoints")
                    .and_then(Node::as_seq)
                    .unwrap_or(&[])
                    .iter()
                    .filter(|e| ready(e))
                    .flat_map(|e| e.get("addresses").and_then(Node::as_seq).unwrap_or(&[]))
                    .filter_map(|a| a.scalar_text()?.parse::<IpAddr>().ok());
                self.slices
                    .entry((namespace, service))
                    .or_default()
                    .extend(addrs);
            }
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                let t = PodTemplate {
                    labels: labels_of(path(node, &["spec", "template", "metadata", "labels"])),
                    spec: path(node, &["spec", "template", "spec"]),
                };
                let r = if kind == "DaemonSet" {
                    self.nodes.len().max(1) as u32
                } else {
                    replicas(node)
                };
                self.workload(file, node, kind, t, r);
            }
            "CronJob" => {
                let t = PodTemplate {
                    labels: labels_of(path(
                        node,
                        &[
                            "spec",
                            "jobTemplate",
                            "spec",
                            "template",
                            "metadata",
                            "labels",
                        ],
                    )),
                    spec: path(node, &["spec", "jobTemplate", "spec", "template", "spec"]),
                };
                self.workload(file, node, kind, t, 1);
            }
            "Service" => {
                let namespace = self.namespace_of(file, node, kind);
                let ports = path(node, &["spec", "ports"])
                    .and_then(Node::as_seq)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|p| {
                        let port: u16 = s(p.get("port"))?.parse().ok()?;
                        Some(ServicePort {
                            name: s(p.get("name")).unwrap_or_default(),
                            port,
                            target: s(p.get("targetPort")).unwrap_or_else(|| port.to_string()),
                            protocol: s(p.get("protocol")).unwrap_or_else(|| "TCP".into()),
                        })
                    })
                    .collect();
                let selector = labels_of(path(node, &["spec", "selector"]));
                let labels = labels_of(path(node, &["metadata", "labels"]));
                self.services.push(Service {
                    namespace,
                    name,
                    labels,
                    selector,
                    ports,
                    file,
                    span: node.span,
                });
            }
            "Gateway" if api_version.starts_with("gateway.networking.k8s.io/") => {
                let namespace = self.namespace_of(file, node, kind);
                let class = s(path(node, &["spec", "gatewayClassName"])).unwrap_or_default();
                let ports: Vec<u16> = path(node, &["spec", "listeners"])
                    .and_then(Node::as_seq)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(|l| s(l.get("port"))?.parse().ok())
                    .collect();
                let endpoint = format!("{namespace}/{name}");
                if class.contains("cilium") {
                    // Cilium's gateway proxy is an endpoint with the reserved ingress identity.
                    let ep = EndpointSpec {
                        name: endpoint.clone(),
                        namespace: namespace.clone(),
                        node: String::new(),
                        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        service_account: "default".into(),
                        labels: vec![],
                        ports: ports
                            .iter()
                            .map(|p| ContainerPort {
                                name: String::new(),
                                port: *p,
                                protocol: "TCP".into(),
                            })
                            .collect(),
                        host_network: false,
                        entity: Some("ingress".into()),
                    };
                    self.add_endpoint(ep, false);
                    self.gateways.push((namespace, name, ports));
                } else {
                    self.diagnostics.push((
                        file,
                        Diagnostic::warning("gateway-class", format!("Gateway {endpoint} has class `{class}`, not Cilium's: membrane does not model it"), Some(node.span))
                            .with_help("gatewayClassName: cilium makes traffic through the gateway carry the `ingress` identity"),
                    ));
                }
            }
            "HTTPRoute" if api_version.starts_with("gateway.networking.k8s.io/") => {
                self.namespace_of(file, node, kind);
                self.routes.push((file, node.clone()));
            }
            "Secret" => {
                let namespace = self.namespace_of(file, node, kind);
                let data = labels_of(node.get("stringData")).into_iter().collect();
                self.secrets.insert((namespace, name), data);
            }
            TEST_KIND if api_version == TEST_API_VERSION => self.test(file, node, &name),
            _ => {}
        }
    }

    fn test(&mut self, file: FileId, node: &Node, name: &str) {
        let mut d = Decoder::default();
        if let Some(spec) = node.get("spec") {
            if let Some(ext) = spec.get("external").and_then(Node::as_seq) {
                for e in ext {
                    let ips: Vec<IpAddr> = e
                        .get("ips")
                        .and_then(Node::as_seq)
                        .unwrap_or(&[])
                        .iter()
                        .filter_map(|n| n.scalar_text()?.parse().ok())
                        .collect();
                    if let Some(n) = s(e.get("name")) {
                        self.external.push(ExternalName { name: n, ips });
                    }
                }
            }
            if let Some(dns) = spec.get("dns") {
                self.dns_answers(&mut d, dns);
            }
            match spec.get("flows").and_then(Node::as_seq) {
                Some(flows) => {
                    for f in flows {
                        if let Some(flow) = decode_flow(&mut d, f) {
                            self.expectations.push(Expectation {
                                test: name.to_string(),
                                flow,
                                file,
                            });
                        }
                    }
                }
                None => d.error_help(
                    "a ConnectivityTest needs `spec.flows`",
                    node.span,
                    "list flows as in scenario files: {from, to, port, protocol, expect}",
                ),
            }
        }
        self.diagnostics
            .extend(d.diagnostics.into_iter().map(|x| (file, x)));
    }

    /// `spec.dns` of a ConnectivityTest: DNS answers as the DNS proxy would see them, a name
    /// to its addresses (`api.example.com: [192.0.2.10]`) or to `{addresses, ttl}`. Flows to
    /// the name look it up and connect to its first address, as flows of scenario files to
    /// `external:` names do, so toFQDNs policies decide them.
    fn dns_answers(&mut self, d: &mut Decoder, dns: &Node) {
        const HELP: &str = "dns: {api.example.com: [192.0.2.10]} or {api.example.com: {addresses: [192.0.2.10], ttl: 300}}";
        let Some(entries) = dns.as_map() else {
            test_error(
                d,
                format!(
                    "`dns` is a mapping of names to addresses, not a {}",
                    dns.type_name()
                ),
                dns.span,
                HELP,
            );
            return;
        };
        for (key, value) in entries {
            let Some(name) = key.scalar_text().map(str::trim).filter(|n| !n.is_empty()) else {
                test_error(d, "a DNS name is a non-empty string", key.span, HELP);
                continue;
            };
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Err(e) = membrane_policy::l7::dns_pattern::validate_match_name(&name) {
                test_error(
                    d,
                    format!("`{name}` is not a DNS name: {e}"),
                    key.span,
                    HELP,
                );
                continue;
            }
            let addresses = match value.as_map() {
                Some(fields) => {
                    for (k, v) in fields {
                        match k.scalar_text() {
                            Some("addresses") => {}
                            Some("ttl") => {
                                if v.scalar_text()
                                    .and_then(|t| t.parse::<u32>().ok())
                                    .is_none()
                                {
                                    test_error(d, "`ttl` is a number of seconds", v.span, HELP);
                                }
                            }
                            other => test_error(
                                d,
                                format!("unknown field `{}` of a DNS answer", other.unwrap_or("?")),
                                k.span,
                                "a DNS answer has `addresses` and an optional `ttl`",
                            ),
                        }
                    }
                    match value.get("addresses") {
                        Some(a) => a,
                        None => {
                            test_error(
                                d,
                                format!("the DNS answer for `{name}` needs `addresses`"),
                                value.span,
                                HELP,
                            );
                            continue;
                        }
                    }
                }
                None => value,
            };
            let Some(list) = addresses.as_seq() else {
                test_error(
                    d,
                    format!("the addresses of `{name}` are a list of IP addresses"),
                    addresses.span,
                    HELP,
                );
                continue;
            };
            let mut ips = Vec::new();
            for a in list {
                match a
                    .scalar_text()
                    .and_then(|t| t.trim().parse::<IpAddr>().ok())
                {
                    Some(ip) => ips.push(ip),
                    None => test_error(
                        d,
                        format!(
                            "`{}` is not an IP address (the answer for `{name}`)",
                            a.scalar_text().unwrap_or("?")
                        ),
                        a.span,
                        "an IPv4 or IPv6 address, e.g. 192.0.2.10",
                    ),
                }
            }
            if list.is_empty() {
                test_error(
                    d,
                    format!("the DNS answer for `{name}` has no address"),
                    addresses.span,
                    HELP,
                );
                continue;
            }
            match self.external.iter_mut().find(|e| e.name == name) {
                Some(e) => {
                    for ip in ips {
                        if !e.ips.contains(&ip) {
                            e.ips.push(ip);
                        }
                    }
                }
                None => self.external.push(ExternalName { name, ips }),
            }
        }
    }

    /// Places pods on nodes and gives them addresses, deterministically.
    fn place(&mut self) {
        if self.nodes.is_empty() {
            self.nodes.push(NodeSpec {
                name: "node-1".into(),
                ip: IpAddr::V4(Ipv4Addr::new(172, 18, 0, 2)),
                cilium: true,
                labels: vec![("kubernetes.io/hostname".into(), "node-1".into())],
            });
        }
        let mut next_host: Vec<u32> = vec![10; self.nodes.len()];
        for &i in &self.unplaced.clone() {
            let ep = &mut self.endpoints[i];
            let node_idx = self
                .nodes
                .iter()
                .position(|n| n.name == ep.node)
                .unwrap_or(0);
            ep.node = self.nodes[node_idx].name.clone();
            if ep.ip.is_unspecified() {
                if ep.host_network {
                    ep.ip = self.nodes[node_idx].ip;
                } else {
                    let host = next_host[node_idx];
                    next_host[node_idx] += 1;
                    ep.ip = IpAddr::V4(Ipv4Addr::new(
                        10,
                        244,
                        (node_idx + 1).min(255) as u8,
                        (host % 250) as u8 + 1,
                    ));
                }
            }
        }
    }

    /// The API server, so flows can name `kube-apiserver` (identity 7, as a remote node
    /// hosting it has).
    fn add_kube_apiserver(&mut self) {
        if self.endpoints.iter().any(|e| e.name == "kube-apiserver") {
            return;
        }
        let ep = EndpointSpec {
            name: "kube-apiserver".into(),
            namespace: "default".into(),
            node: String::new(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            service_account: "default".into(),
            labels: vec![],
            ports: vec![ContainerPort {
                name: "https".into(),
                port: 6443,
                protocol: "TCP".into(),
            }],
            host_network: false,
            entity: Some("kube-apiserver".into()),
        };
        self.add_endpoint(ep, false);
    }

    fn add_kube_dns(&mut self) {
        let has = self.endpoints.iter().any(|e| {
            e.labels
                .iter()
                .any(|(k, v)| k == "k8s-app" && v == "kube-dns")
        });
        if has {
            return;
        }
        self.namespaces.entry("kube-system".into()).or_default();
        let ep = EndpointSpec {
            name: "kube-system/kube-dns".into(),
            namespace: "kube-system".into(),
            node: String::new(),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            service_account: "coredns".into(),
            labels: vec![("k8s-app".into(), "kube-dns".into())],
            ports: vec![
                ContainerPort {
                    name: "dns".into(),
                    port: 53,
                    protocol: "UDP".into(),
                },
                ContainerPort {
                    name: "dns-tcp".into(),
                    port: 53,
                    protocol: "TCP".into(),
                },
            ],
            host_network: false,
            entity: None,
        };
        self.add_endpoint(ep, false);
    }

    /// HTTPRoutes: each rule's path goes to the endpoints behind its backend Services.
    fn resolve_routes(&self) -> Vec<GatewayRoute> {
        let mut out = Vec::new();
        for (file, node) in &self.routes {
            let ns = s(path(node, &["metadata", "namespace"])).unwrap_or_else(|| "default".into());
            let route_name = s(path(node, &["metadata", "name"])).unwrap_or_default();
            let parents = path(node, &["spec", "parentRefs"])
                .and_then(Node::as_seq)
                .unwrap_or(&[]);
            for parent in parents {
                let gw_name = s(parent.get("name")).unwrap_or_default();
                let gw_ns = s(parent.get("namespace")).unwrap_or_else(|| ns.clone());
                if !self
                    .gateways
                    .iter()
                    .any(|(n, name, _)| *n == gw_ns && *name == gw_name)
                {
                    continue;
                }
                for rule in path(node, &["spec", "rules"])
                    .and_then(Node::as_seq)
                    .unwrap_or(&[])
                {
                    let mut backends = Vec::new();
                    for b in rule
                        .get("backendRefs")
                        .and_then(Node::as_seq)
                        .unwrap_or(&[])
                    {
                        let svc_name = s(b.get("name")).unwrap_or_default();
                        let svc_ns = s(b.get("namespace")).unwrap_or_else(|| ns.clone());
                        let port: Option<u16> = s(b.get("port")).and_then(|p| p.parse().ok());
                        backends.extend(self.service_backends(&svc_ns, &svc_name, port));
                    }
                    let matches = rule.get("matches").and_then(Node::as_seq).unwrap_or(&[]);
                    let paths: Vec<(String, bool)> = if matches.is_empty() {
                        vec![("/".into(), false)]
                    } else {
                        matches
                            .iter()
                            .map(|m| {
                                let value =
                                    s(path(m, &["path", "value"])).unwrap_or_else(|| "/".into());
                                let exact =
                                    s(path(m, &["path", "type"])).as_deref() == Some("Exact");
                                (value, exact)
                            })
                            .collect()
                    };
                    for (p, exact) in paths {
                        out.push(GatewayRoute {
                            gateway: format!("{gw_ns}/{gw_name}"),
                            route: format!("{ns}/{route_name}"),
                            path: p,
                            exact,
                            backends: backends.clone(),
                            file: *file,
                            line: rule.span.line,
                        });
                    }
                }
            }
        }
        out
    }

    /// The endpoints a Service selects, with the target port for `port`.
    fn service_backends(&self, ns: &str, name: &str, port: Option<u16>) -> Vec<(String, u16)> {
        let Some(svc) = self
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
        else {
            return vec![];
        };
        let sp = svc
            .ports
            .iter()
            .find(|p| Some(p.port) == port)
            .or(svc.ports.first());
        let mut out = Vec::new();
        for ep in self
            .endpoints
            .iter()
            .filter(|e| e.namespace == ns && e.entity.is_none())
        {
            if svc.selector.is_empty() || !svc.selector.iter().all(|kv| ep.labels.contains(kv)) {
                continue;
            }
            let target = match sp {
                Some(p) => match p.target.parse::<u16>() {
                    Ok(n) => Some(n),
                    Err(_) => ep.ports.iter().find(|c| c.name == p.target).map(|c| c.port),
                },
                None => port,
            };
            if let Some(t) = target {
                out.push((ep.name.clone(), t));
            }
        }
        out
    }
}

/// The code of a ConnectivityTest's errors that make the test unusable (`check` exits 2).
pub const TEST_ERROR: &str = "connectivity-test";

fn test_error(d: &mut Decoder, message: impl Into<String>, span: Span, help: impl Into<String>) {
    d.diagnostics
        .push(Diagnostic::error(TEST_ERROR, message, Some(span)).with_help(help));
}

/// Whether a YAML text is a scenario file rather than manifests.
fn is_scenario(root: &Node) -> bool {
    root.get("kind").is_none() && (root.get("flows").is_some() || root.get("endpoints").is_some())
}

/// The object a policy resource is in the API server: kind, namespace (namespaced kinds land
/// in `default` without one) and name.
fn object_key(r: &Resource) -> Option<(&'static str, String, String)> {
    let name_of =
        |m: &membrane_policy::api::ObjectMeta| m.name.as_ref().map(|n| n.value.to_string());
    let ns_of = |m: &membrane_policy::api::ObjectMeta| {
        m.namespace
            .as_ref()
            .map_or_else(|| "default".to_string(), |n| n.value.to_string())
    };
    match r {
        Resource::Cilium(p) => {
            let ns = if p.kind == membrane_policy::api::PolicyKind::CiliumNetworkPolicy {
                ns_of(&p.meta)
            } else {
                String::new()
            };
            Some((p.kind.as_str(), ns, name_of(&p.meta)?))
        }
        Resource::Kube(p) => Some(("NetworkPolicy", ns_of(&p.meta), name_of(&p.meta)?)),
        Resource::CidrGroup(g) => Some(("CiliumCIDRGroup", String::new(), name_of(&g.meta)?)),
        Resource::Other { .. } => None,
    }
}

/// What the API server holds after applying the objects in order: per resource, whether a
/// later object of the same kind, namespace and name replaces it.
fn replaced_by_later(resources: &[(FileId, Resource)]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    let mut replaced: Vec<bool> = resources
        .iter()
        .rev()
        .map(|(_, r)| object_key(r).is_some_and(|k| !seen.insert(k)))
        .collect();
    replaced.reverse();
    replaced
}

/// Loads files of manifests (or one scenario file) into a world.
pub fn load(files: Vec<SourceFile>) -> Loaded {
    let mut b = Builder::default();
    let mut index = ParsedIndex::default();
    let mut scenario_base: Option<Scenario> = None;
    for (i, f) in files.iter().enumerate() {
        let file = i as FileId;
        // One YAML parse per file: the tree is decoded either as a scenario or as resources
        // (a syntax error is reported by `parse_resources`).
        let mut parsed = membrane_policy::yaml::parse_documents(&f.text, Embedding::default());
        if let Ok(docs) = &mut parsed
            && docs.len() == 1
            && is_scenario(&docs[0])
        {
            let root = docs.remove(0);
            match crate::scenario::decode_scenario_owned(root, &f.text) {
                Ok(sc) => {
                    // The policies are parsed here rather than by `parse_resources` so
                    // that their documents can be kept; an error is reported as it does.
                    let emb = sc.policies_embedding;
                    let (res, diags, policy_docs) =
                        match membrane_policy::yaml::parse_documents(&sc.policies, emb) {
                            Ok(pd) => {
                                let (res, diags) = decode_documents(&pd);
                                (res, diags, pd)
                            }
                            Err(_) => {
                                let (res, diags) = parse_resources(&sc.policies, emb);
                                (res, diags, Vec::new())
                            }
                        };
                    index.documents.push(policy_docs);
                    index.resources.extend(res.into_iter().map(|r| (file, r)));
                    b.diagnostics.extend(diags.into_iter().map(|d| (file, d)));
                    for flow in &sc.flows {
                        b.expectations.push(Expectation {
                            test: sc.name.clone(),
                            flow: flow.clone(),
                            file,
                        });
                    }
                    scenario_base = Some(sc);
                }
                Err(diags) => {
                    index.documents.push(Vec::new());
                    b.diagnostics.extend(diags.into_iter().map(|d| (file, d)));
                }
            }
            continue;
        }
        let (res, diags, docs) = match parsed {
            Ok(docs) => {
                let (res, diags) = decode_documents(&docs);
                (res, diags, docs)
            }
            Err(_) => {
                let (res, diags) = parse_resources(&f.text, Embedding::default());
                (res, diags, Vec::new())
            }
        };
        index.documents.push(docs);
        b.diagnostics.extend(diags.into_iter().map(|d| (file, d)));
        for r in &res {
            match r {
                Resource::Other {
                    api_version,
                    kind,
                    node,
                } => b.object(file, api_version, kind, node),
                other => {
                    if let Resource::Cilium(p) = other
                        && p.kind == membrane_policy::api::PolicyKind::CiliumNetworkPolicy
                        && p.meta.namespace.is_none()
                    {
                        b.namespaces.entry("default".into()).or_default();
                    }
                    if let Resource::Kube(p) = other
                        && let Some(ns) = &p.meta.namespace
                    {
                        b.namespaces.entry(ns.value.clone()).or_default();
                    }
                    if let Resource::Cilium(p) = other
                        && let Some(ns) = &p.meta.namespace
                    {
                        b.namespaces.entry(ns.value.clone()).or_default();
                    }
                }
            }
        }
        // Kept whole (the engine skips `Other`): lint reads every object as written.
        index.resources.extend(res.into_iter().map(|r| (file, r)));
    }
    index.replaced = if scenario_base.is_none() {
        replaced_by_later(&index.resources)
    } else {
        vec![false; index.resources.len()]
    };
    let scenario = match scenario_base {
        Some(mut sc) => {
            sc.policies.clear();
            sc
        }
        None => {
            b.add_kube_dns();
            b.add_kube_apiserver();
            b.place();
            let routes = b.resolve_routes();
            let namespaces = b
                .namespaces
                .iter()
                .map(|(name, labels)| {
                    let mut labels = labels.clone();
                    if !labels
                        .iter()
                        .any(|(k, _)| k == "kubernetes.io/metadata.name")
                    {
                        labels.push(("kubernetes.io/metadata.name".into(), name.clone()));
                    }
                    Namespace {
                        name: name.clone(),
                        labels,
                    }
                })
                .collect();
            Scenario {
                name: "manifests".into(),
                requires: vec![],
                cluster_name: "default".into(),
                namespaces,
                nodes: std::mem::take(&mut b.nodes),
                endpoints: std::mem::take(&mut b.endpoints),
                external: std::mem::take(&mut b.external),
                secrets: std::mem::take(&mut b.secrets),
                policies: String::new(),
                policies_embedding: Embedding::default(),
                flows: b.expectations.iter().map(|e| e.flow.clone()).collect(),
                routes,
                agent: vec![],
                cluster_identities: std::mem::take(&mut b.cluster_identities),
                services: b
                    .services
                    .iter()
                    .map(|svc| crate::scenario::ServiceSpec {
                        namespace: svc.namespace.clone(),
                        name: svc.name.clone(),
                        labels: svc.labels.clone(),
                        selector: svc.selector.clone(),
                        // Cilium takes a selector-less Service's backends from its slices.
                        addresses: if svc.selector.is_empty() {
                            b.slices
                                .get(&(svc.namespace.clone(), svc.name.clone()))
                                .cloned()
                                .unwrap_or_default()
                        } else {
                            Vec::new()
                        },
                    })
                    .collect(),
            }
        }
    };
    let mut world = World::from_resources(scenario, index.live(), vec![]);
    for (alias, endpoint) in std::mem::take(&mut b.aliases) {
        world.add_alias(alias, &endpoint);
    }
    // Where the cluster says which identity a pod carries, membrane's derivation must agree:
    // a difference means its labels are read differently, so selectors may match differently.
    for (file, span, pod, cluster_id) in &b.cilium_endpoints {
        let Some(party) = world.party(pod) else {
            continue;
        };
        let derived = world.identity_of(party, None, false);
        if derived != *cluster_id {
            let labels = world
                .identities()
                .get(derived)
                .map(|i| i.name())
                .unwrap_or_default();
            b.diagnostics.push((
                *file,
                Diagnostic::warning(
                    "identity-mismatch",
                    format!("pod {pod} carries identity {cluster_id} in the cluster, but membrane derives identity {derived} from its labels ({labels})"),
                    Some(*span),
                )
                .with_help("the cluster's CiliumIdentity for this pod has other labels than membrane computes: check the agent's label filter (--label-prefix-file) and the namespace's labels"),
            ));
        }
    }
    // Replaced copies are not in the world, but they are in the files: lint and the input's
    // diagnostics read every copy as written.
    let as_written = index.replaced.iter().any(|r| *r).then(|| {
        membrane_policy::policy_set::PolicySet::build(
            &index.resources,
            &world.options,
            &world.scenario.secrets,
        )
    });
    let mut diagnostics = b.diagnostics;
    for p in &as_written.as_ref().unwrap_or(&world.policy_set).policies {
        diagnostics.extend(p.diagnostics.iter().map(|d| (p.origin.file, d.clone())));
    }
    Loaded {
        files,
        world,
        diagnostics,
        workloads: b.workloads,
        services: b.services,
        expectations: b.expectations,
        defaulted_namespace: b.defaulted,
        pods_not_running: b.pods_not_running,
        index,
        as_written,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::Party;

    fn loaded(spec: &str) -> Loaded {
        load(vec![SourceFile {
            name: "t.yaml".into(),
            text: format!(
                "apiVersion: membrane.dev/v1alpha1\nkind: ConnectivityTest\nmetadata: {{name: t}}\nspec:\n{spec}  flows: []\n"
            ),
        }])
    }

    fn errors(l: &Loaded) -> Vec<(u32, u32, String)> {
        l.diagnostics
            .iter()
            .filter(|(_, d)| d.code == TEST_ERROR)
            .map(|(_, d)| {
                let s = d.span.unwrap_or_default();
                (s.line, s.col, d.message.clone())
            })
            .collect()
    }

    #[test]
    fn dns_answers_become_external_names() {
        let l = loaded(
            "  dns:\n    API.Example.com.: [192.0.2.10]\n    b.example.com: {addresses: [192.0.2.20, '2001:db8::1'], ttl: 30}\n",
        );
        assert_eq!(errors(&l), []);
        let ext: Vec<(String, usize)> = l
            .world
            .scenario
            .external
            .iter()
            .map(|e| (e.name.clone(), e.ips.len()))
            .collect();
        assert_eq!(
            ext,
            [
                ("api.example.com".to_string(), 1),
                ("b.example.com".to_string(), 2)
            ]
        );
        assert!(matches!(
            l.world.party("api.example.com"),
            Some(Party::World {
                learned_as: Some(0),
                ..
            })
        ));
    }

    #[test]
    fn bad_dns_answers_are_errors_at_their_place() {
        let l = loaded(
            "  dns:\n    a.example.com: [not-an-ip]\n    b.example.com: {ttl: 5}\n    c.example.com: {addresses: [192.0.2.1], tll: 5}\n    d.example.com: 192.0.2.1\n    e.example.com: []\n",
        );
        let got = errors(&l);
        let lines: Vec<(u32, u32)> = got.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(
            lines,
            [(6, 21), (7, 20), (8, 45), (9, 20), (10, 20)],
            "{got:?}"
        );
        assert!(got[0].2.contains("`not-an-ip` is not an IP address"));
        assert!(got[1].2.contains("needs `addresses`"));
        assert!(got[2].2.contains("unknown field `tll`"));
        assert!(got[3].2.contains("are a list of IP addresses"));
        assert!(got[4].2.contains("has no address"));
        let l = loaded("  dns: [a.example.com]\n");
        assert_eq!(errors(&l).len(), 1);
    }
}
