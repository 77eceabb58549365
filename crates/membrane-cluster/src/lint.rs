//! `membrane lint`: mistakes in policies, found statically against the loaded cluster
//! (workloads, Services, Gateways), each with a stable rule id.
//!
//! Rule ids never change meaning and are never reused; tools may key on them. Severity:
//! `error` (the policy is not enforced at all), `warning` (it does not do what it looks like),
//! `info` (it does what it says, with a consequence worth knowing).
//!
//! | id | name | severity | finds |
//! |---|---|---|---|
//! | MEM001 | policy-rejected | error | An object the agent (or the API server's schema) refuses: Cilium's own message. The policy is not enforced at all. |
//! | MEM002 | empty-rule-list | warning | `ingress: []` / `egress: []` (and the deny lists): a list of length 0 counts as absent, so it enforces nothing; with all four empty the rule is rejected (Cilium ≥ 1.17) or inert (older). |
//! | MEM003 | namespace-missing | warning | A namespaced object (policy, workload, Service, route) without `metadata.namespace`: it lands in whatever namespace kubectl uses, usually `default`. |
//! | MEM004 | default-deny-denies-nothing | warning | A policy written as a default deny that denies nothing: rejected, inert, `enableDefaultDeny: false`, or selecting no workload (e.g. created in `default`). |
//! | MEM005 | http-regex-anchored | warning | HTTP `path`/`method` regexes match the whole string only: a path that looks like a prefix (`/api` vs `/api/users/1`, `/api?page=2`), `/*` globs, an unescaped `?` before a query, a path without a leading `/`, lowercase or comma-separated methods. |
//! | MEM006 | egress-deny-without-dns | warning | An endpoint whose egress is (or is meant to be) default deny and that cannot reach kube-dns on 53/UDP: name resolution fails. |
//! | MEM007 | fqdn-without-dns-rule | warning | `toFQDNs` for endpoints whose DNS traffic does not go through the DNS proxy (no `rules.dns` towards kube-dns), or whose DNS rules refuse the name: no address is ever learned. |
//! | MEM008 | dns-udp-only | warning | DNS to kube-dns allowed on 53/UDP but not 53/TCP: truncated answers are retried over TCP and fail. |
//! | MEM009 | port-not-container-port | warning | A numeric policy port that no selected pod listens on (often the Service port instead of its targetPort), or a Gateway backend port the rule does not allow. Policy is enforced after service translation. |
//! | MEM010 | cidr-selects-cluster | warning | A CIDR or KNP `ipBlock` that contains pod or node addresses, as if it selected them: CIDR selectors never select Cilium-managed pods or nodes (unlike upstream Kubernetes for `ipBlock`). |
//! | MEM011 | notin-namespace-admits-reserved | warning | A peer selector with `NotIn`/`DoesNotExist` on the namespace: no namespace is injected and it also matches world, host and remote-node. |
//! | MEM012 | namespace-key-in-endpoint-selector | warning | A namespace key in a CNP `endpointSelector`: without `k8s:` it is kept beside the injected namespace (usually selecting nothing); with `k8s:` it is overwritten. |
//! | MEM013 | named-port-unresolved | warning | A named port that resolves to nothing: defined with different numbers across pods (egress), not defined by any (selected) pod, or with another protocol. |
//! | MEM014 | selector-matches-nothing | warning | An `endpointSelector`/`podSelector` or a peer selector that matches no workload in the loaded manifests. |
//! | MEM015 | shadowed-rule | warning | A rule without effect: HTTP rules wildcarded by an allow of the same peer and port without L7 rules, or an allow whose peers and ports are all denied. |
//! | MEM016 | too-many-ports | error | More than 40 ports in one `toPorts` entry (or 40 ICMP types): the agent rejects the policy. |
//! | MEM017 | kube-dns-peer-without-namespace | warning | A CNP peer selecting kube-dns without a namespace key: the policy's namespace is injected, so it never matches kube-dns in `kube-system`. |
//! | MEM018 | dns-double-star | warning | `**.` in a DNS `matchPattern`: Cilium v1.17 compiles it like `*.` (exactly one label); newer agents match one or more. |
//! | MEM019 | duplicate-object | warning | The same kind/namespace/name defined more than once: each copy replaces the previous one. |
//! | MEM020 | implicit-default-deny | info | An allow rule that, alone, puts the endpoints it selects into default deny for that direction: everything else is dropped. |
//! | MEM021 | gateway-entity | info | `fromEntities: [ingress]`: admits traffic proxied by Cilium's Ingress/Gateway only; names the routes and the ports the gateway connects to. |
//! | MEM022 | l7-second-proxy-pass | info | HTTP rules on traffic from the gateway: requests are proxied a second time at the backend's node; refused requests get 403, not a drop. |
//! | MEM023 | manifest-warning | warning | Other warnings from loading the manifests (gateway class, missing CIDR group, cloud groups, endPort below port, namespace on a CCNP). |

use crate::manifests::Loaded;
use crate::scenario::{ContainerPort, EndpointSpec};
use crate::world::{Party, World};
use membrane_policy::api::{
    self, CiliumPolicy, KubePolicy, LabelSelector, PeerRule, PolicyKind, Resource, RuleSection,
};
use membrane_policy::diag::Severity;
use membrane_policy::engine::DirectionRef;
use membrane_policy::identity::{self, IdentityId};
use membrane_policy::labels::{
    KEY_NAMESPACE, Label, LabelSet, Operator, PREFIX_NAMESPACE_LABELS, SOURCE_K8S, SOURCE_RESERVED,
    Selector, SelectorKey, is_identity_label,
};
use membrane_policy::model::{self, Direction, Entry, FileId, PeerSelector, Peers, PortValue};
use membrane_policy::policy_set::{decode_documents, parse_resources};
use membrane_policy::resolve::{DirectionPolicy, Enforcement, peer_selects};
use membrane_policy::translate::{Translated, parse_cidr};
use membrane_policy::yaml::{Embedding, Node, Span, Value, parse_documents};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

/// One lint rule: its stable id, a short name, its severity and what it is about.
#[derive(Debug)]
pub struct LintRule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    pub help: &'static str,
}

const REJECTED: &str = "MEM001";
const EMPTY_LIST: &str = "MEM002";
const NAMESPACE_MISSING: &str = "MEM003";
const DENY_NOTHING: &str = "MEM004";
const HTTP_ANCHORED: &str = "MEM005";
const NO_DNS: &str = "MEM006";
const FQDN_NO_DNS: &str = "MEM007";
const DNS_UDP_ONLY: &str = "MEM008";
const PORT_MISMATCH: &str = "MEM009";
const CIDR_CLUSTER: &str = "MEM010";
const NOTIN_NS: &str = "MEM011";
const SUBJECT_NS_KEY: &str = "MEM012";
const NAMED_PORT: &str = "MEM013";
const SELECTS_NOTHING: &str = "MEM014";
const SHADOWED: &str = "MEM015";
const TOO_MANY_PORTS: &str = "MEM016";
const KUBE_DNS_NS: &str = "MEM017";
const DOUBLE_STAR: &str = "MEM018";
const DUPLICATE: &str = "MEM019";
const IMPLICIT_DENY: &str = "MEM020";
const GATEWAY_ENTITY: &str = "MEM021";
const SECOND_PASS: &str = "MEM022";
const MANIFEST_WARNING: &str = "MEM023";

/// Every rule, in id order (the table at the top of this module).
pub const RULES: &[LintRule] = &[
    LintRule {
        id: REJECTED,
        name: "policy-rejected",
        severity: Severity::Error,
        summary: "the agent (or the API server's schema) refuses this object: it is not enforced at all",
        help: "fix the error: until then the policy does not exist as far as the datapath is concerned",
    },
    LintRule {
        id: EMPTY_LIST,
        name: "empty-rule-list",
        severity: Severity::Warning,
        summary: "an empty rule list (`ingress: []`) counts as absent: it enforces nothing",
        help: "to deny everything in a direction write `ingress: [{}]` (Cilium ≤ 1.18) or, on any version, `ingress: [{fromEntities: []}]`",
    },
    LintRule {
        id: NAMESPACE_MISSING,
        name: "namespace-missing",
        severity: Severity::Warning,
        summary: "a namespaced object without metadata.namespace lands in kubectl's namespace, usually `default`",
        help: "set metadata.namespace explicitly",
    },
    LintRule {
        id: DENY_NOTHING,
        name: "default-deny-denies-nothing",
        severity: Severity::Warning,
        summary: "a policy written as a default deny that denies nothing",
        help: "create the default deny in each namespace with `ingress: [{}]` / `egress: [{}]` (or `[{fromEntities: []}]`, `[{toEntities: []}]` on any version)",
    },
    LintRule {
        id: HTTP_ANCHORED,
        name: "http-regex-anchored",
        severity: Severity::Warning,
        summary: "HTTP path and method are regexes matched against the whole value",
        help: "write `/api(/.*)?` for everything under `/api`, `/api.*` to include query strings; methods are upper case (`GET|HEAD`)",
    },
    LintRule {
        id: NO_DNS,
        name: "egress-deny-without-dns",
        severity: Severity::Warning,
        summary: "egress default deny without an allow to kube-dns on 53/UDP: name resolution fails",
        help: "allow egress to `{k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}` on 53/UDP and 53/TCP",
    },
    LintRule {
        id: FQDN_NO_DNS,
        name: "fqdn-without-dns-rule",
        severity: Severity::Warning,
        summary: "toFQDNs without DNS rules on the way to kube-dns: no address is ever learned",
        help: "add an egress rule to kube-dns on 53/UDP and 53/TCP with `rules: {dns: [{matchPattern: \"*\"}]}`",
    },
    LintRule {
        id: DNS_UDP_ONLY,
        name: "dns-udp-only",
        severity: Severity::Warning,
        summary: "DNS allowed on 53/UDP only: truncated answers are retried over TCP and fail",
        help: "allow 53/TCP as well (or write `protocol: ANY`)",
    },
    LintRule {
        id: PORT_MISMATCH,
        name: "port-not-container-port",
        severity: Severity::Warning,
        summary: "a policy port that the selected pods do not listen on",
        help: "policy is enforced after service translation: use the container port (the Service's targetPort), not the Service port",
    },
    LintRule {
        id: CIDR_CLUSTER,
        name: "cidr-selects-cluster",
        severity: Severity::Warning,
        summary: "a CIDR or ipBlock containing pod or node addresses: CIDR selectors never select them",
        help: "select pods with fromEndpoints/toEndpoints (or a namespaceSelector in a NetworkPolicy) and nodes with the `host` and `remote-node` entities",
    },
    LintRule {
        id: NOTIN_NS,
        name: "notin-namespace-admits-reserved",
        severity: Severity::Warning,
        summary: "a NotIn/DoesNotExist namespace selector also matches world, host and remote-node",
        help: "add `{key: k8s:io.kubernetes.pod.namespace, operator: Exists}` to keep the selector to pods",
    },
    LintRule {
        id: SUBJECT_NS_KEY,
        name: "namespace-key-in-endpoint-selector",
        severity: Severity::Warning,
        summary: "a namespace key in a CiliumNetworkPolicy's endpointSelector",
        help: "remove the namespace key: a CiliumNetworkPolicy always applies to its own namespace",
    },
    LintRule {
        id: NAMED_PORT,
        name: "named-port-unresolved",
        severity: Severity::Warning,
        summary: "a named port that resolves to nothing",
        help: "use the port number, or give the name one number and protocol across all pods",
    },
    LintRule {
        id: SELECTS_NOTHING,
        name: "selector-matches-nothing",
        severity: Severity::Warning,
        summary: "a selector that matches no workload in the loaded manifests",
        help: "check the labels and the namespace: a CiliumNetworkPolicy only selects pods of its own namespace",
    },
    LintRule {
        id: SHADOWED,
        name: "shadowed-rule",
        severity: Severity::Warning,
        summary: "a rule without effect: L7 rules wildcarded by a plain allow, or an allow covered by deny rules",
        help: "remove the rule that hides it, or narrow its peers or ports",
    },
    LintRule {
        id: TOO_MANY_PORTS,
        name: "too-many-ports",
        severity: Severity::Error,
        summary: "more than 40 ports in one toPorts entry (or 40 ICMP types): the agent rejects the policy",
        help: "split the ports into several toPorts entries, or use a range with endPort",
    },
    LintRule {
        id: KUBE_DNS_NS,
        name: "kube-dns-peer-without-namespace",
        severity: Severity::Warning,
        summary: "a CNP peer selecting kube-dns without a namespace key never matches kube-dns",
        help: "add `k8s:io.kubernetes.pod.namespace: kube-system` to the selector",
    },
    LintRule {
        id: DOUBLE_STAR,
        name: "dns-double-star",
        severity: Severity::Warning,
        summary: "`**.` in a DNS matchPattern: Cilium v1.17 agents match exactly one label",
        help: "for v1.17 agents list the depths you need (`*.example.com`, `*.*.example.com`)",
    },
    LintRule {
        id: DUPLICATE,
        name: "duplicate-object",
        severity: Severity::Warning,
        summary: "the same kind, namespace and name defined more than once",
        help: "keep one definition; if each copy was meant for a namespace of its own, set metadata.namespace in each",
    },
    LintRule {
        id: IMPLICIT_DENY,
        name: "implicit-default-deny",
        severity: Severity::Info,
        summary: "an allow rule that alone puts endpoints into default deny for a direction",
        help: "if that is intended, say so with a default-deny policy (`ingress: [{}]` or `enableDefaultDeny`); otherwise also allow the other traffic",
    },
    LintRule {
        id: GATEWAY_ENTITY,
        name: "gateway-entity",
        severity: Severity::Info,
        summary: "`fromEntities: [ingress]` admits traffic proxied by Cilium's Ingress/Gateway, and only that",
        help: "to also admit pods calling these endpoints directly, add a fromEndpoints rule",
    },
    LintRule {
        id: SECOND_PASS,
        name: "l7-second-proxy-pass",
        severity: Severity::Info,
        summary: "HTTP rules on traffic from the gateway: a second proxy pass at the backend's node",
        help: "look for these denials as L7 `DENIED` (HTTP 403) in Hubble, not as packet drops",
    },
    LintRule {
        id: MANIFEST_WARNING,
        name: "manifest-warning",
        severity: Severity::Warning,
        summary: "a warning from loading the manifests",
        help: "see the message",
    },
];

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static LintRule> {
    RULES.iter().find(|r| r.id == id)
}

/// One finding: a rule, where, what and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub file: FileId,
    pub span: Option<Span>,
    pub message: String,
    pub help: Option<String>,
}

/// Lints loaded manifests. Findings are sorted by file, line, column and rule id.
pub fn lint(loaded: &Loaded) -> Vec<Finding> {
    let cx = Cx::new(loaded);
    let mut out = Out::default();
    engine_diagnostics(&cx, &mut out);
    defaulted_namespaces(&cx, &mut out);
    duplicates(&cx, &mut out);
    let deny_nothing = default_deny_denies_nothing(&cx, &mut out);
    for (i, p) in cx.policies.iter().enumerate() {
        empty_lists(&cx, p, &mut out);
        http_regexes(&cx, p, &mut out);
        peer_selectors(&cx, p, &mut out);
        dns_patterns(&cx, p, &mut out);
        cidrs(&cx, p, &mut out);
        ports(&cx, p, &mut out);
        gateway_entity(&cx, p, &mut out);
        fqdns(&cx, p, &mut out);
        dns_udp_only(&cx, p, &mut out);
        subjects_matching_nothing(&cx, p, deny_nothing.contains(&i), &mut out);
    }
    dns_reachability(&cx, &mut out);
    implicit_default_deny(&cx, &mut out);
    shadowed(&cx, &mut out);
    out.finish()
}

#[derive(Default)]
struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn push(
        &mut self,
        id: &'static str,
        file: FileId,
        span: Option<Span>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let severity = rule(id).map_or(Severity::Warning, |r| r.severity);
        self.findings.push(Finding {
            rule: id,
            severity,
            file,
            span,
            message: message.into(),
            help,
        });
    }

    fn finish(mut self) -> Vec<Finding> {
        self.findings.sort_by(|a, b| {
            let key = |f: &Finding| {
                (
                    f.file,
                    f.span.map_or(0, |s| s.line),
                    f.span.map_or(0, |s| s.col),
                    f.rule,
                )
            };
            key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
        });
        self.findings.dedup();
        self.findings
    }
}

/// A policy resource as written, next to what the engine made of it.
struct PolicyView<'a> {
    t: &'a Translated,
    raw: RawPolicy,
    file: FileId,
}

enum RawPolicy {
    Cilium(Box<CiliumPolicy>),
    Kube(Box<KubePolicy>),
}

impl PolicyView<'_> {
    fn name(&self) -> &str {
        &self.t.origin.name
    }

    fn namespace(&self) -> Option<&str> {
        self.t.origin.namespace.as_deref()
    }

    fn kind(&self) -> PolicyKind {
        self.t.origin.kind
    }

    /// Every rule of the policy, enforced or not.
    fn rules(&self) -> impl Iterator<Item = &model::Rule> {
        self.t.rules.iter().chain(self.t.rejected.iter())
    }

    /// The raw Cilium rules with their `specs` index.
    fn cilium_rules(&self) -> Vec<(Option<usize>, &api::Rule)> {
        let RawPolicy::Cilium(p) = &self.raw else {
            return vec![];
        };
        let mut out = Vec::new();
        if let Some(s) = &p.spec {
            out.push((None, s));
        }
        for (i, s) in p.specs.iter().flatten().enumerate() {
            out.push((Some(i), s));
        }
        out
    }

    fn model_rule(&self, spec_index: Option<usize>) -> Option<&model::Rule> {
        self.rules().find(|r| r.origin.spec_index == spec_index)
    }

    fn name_span(&self) -> Span {
        let meta = match &self.raw {
            RawPolicy::Cilium(p) => &p.meta,
            RawPolicy::Kube(p) => &p.meta,
        };
        meta.name.as_ref().map_or(self.t.origin.span, |n| n.span)
    }
}

fn model_entry(rule: &model::Rule, section: RuleSection, index: usize) -> Option<&Entry> {
    rule.entries
        .iter()
        .find(|e| e.origin.section == section && e.origin.index == index)
}

/// An endpoint of the loaded cluster with its identity.
struct Ep<'a> {
    spec: &'a EndpointSpec,
    party: Party,
    id: IdentityId,
    /// Its identity's labels (shared by every endpoint of the identity).
    labels: &'a LabelSet,
    /// A pod (not a reserved-identity endpoint such as a Gateway's proxy).
    pod: bool,
    /// Endpoints with the same key have the same resolved policy (identity and container
    /// ports, and the node when CIDR selectors may select nodes).
    pkey: usize,
}

impl Ep<'_> {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn ports(&self) -> &[ContainerPort] {
        &self.spec.ports
    }
}

/// An object of any kind, for duplicate detection.
struct Object {
    file: FileId,
    kind: String,
    namespace: String,
    name: String,
    span: Span,
}

struct Cx<'a> {
    loaded: &'a Loaded,
    world: &'a World,
    /// Per file, the YAML documents (policies of a scenario file), to find key positions.
    docs: Vec<Vec<Node>>,
    policies: Vec<PolicyView<'a>>,
    objects: Vec<Object>,
    eps: Vec<Ep<'a>>,
    /// Endpoints by identity: a selector is matched once per identity.
    groups: Vec<(LabelSet, Vec<usize>)>,
    /// Policies by the address of their origin (rules share it with their policy).
    view_index: HashMap<usize, usize>,
    /// kube-dns: its endpoint index in `eps` and identity.
    dns: Option<(usize, IdentityId)>,
    /// Whether the manifests describe a cluster (workloads), so that "selects nothing" means
    /// something.
    cluster_known: bool,
    /// Nodes come from the input (not the loader's stand-in node).
    nodes_declared: bool,
    /// Endpoints the input declares (not the loader's stand-in kube-dns), by name.
    declared: BTreeSet<String>,
    /// Endpoints whose address the input gives (`status.podIP`, scenario files); the others
    /// have addresses the loader synthesized.
    declared_addr: BTreeSet<String>,
    /// How many distinct policy keys (`Ep::pkey`) there are.
    pkey_count: usize,
    /// Declared pods with their addresses, for the CIDR checks (built on first use).
    cidr_pods: std::cell::OnceCell<Vec<(&'a str, IpAddr)>>,
    /// Every pod's container ports by name: (pod, number, protocol), built on first use.
    port_defs: std::cell::OnceCell<PortDefs<'a>>,
}

/// Container ports by name: (pod, number, protocol in upper case).
type PortDefs<'a> = HashMap<&'a str, Vec<(&'a str, u16, String)>>;

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "Node",
    "CiliumClusterwideNetworkPolicy",
    "CiliumCIDRGroup",
    "GatewayClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "IngressClass",
    "CiliumClusterwideEnvoyConfig",
    "ConnectivityTest",
];

fn is_scenario(root: &Node) -> bool {
    root.get("kind").is_none() && (root.get("flows").is_some() || root.get("endpoints").is_some())
}

impl<'a> Cx<'a> {
    fn new(loaded: &'a Loaded) -> Self {
        let world = &loaded.world;
        let mut docs = Vec::new();
        let mut resources: Vec<(FileId, Resource)> = Vec::new();
        for (i, f) in loaded.files.iter().enumerate() {
            let file = i as FileId;
            let plain = parse_documents(&f.text, Embedding::default()).ok();
            let scenario_shaped = plain
                .as_ref()
                .is_some_and(|d| d.len() == 1 && is_scenario(&d[0]));
            if scenario_shaped {
                let decoded = match plain.as_deref() {
                    Some([root]) => crate::scenario::decode_scenario(root, &f.text),
                    _ => crate::scenario::parse_scenario(&f.text),
                };
                match decoded {
                    Ok(sc) => {
                        let (res, policy_docs) =
                            match parse_documents(&sc.policies, sc.policies_embedding) {
                                Ok(pd) => (decode_documents(&pd).0, pd),
                                Err(_) => (
                                    parse_resources(&sc.policies, sc.policies_embedding).0,
                                    Vec::new(),
                                ),
                            };
                        docs.push(policy_docs);
                        resources.extend(res.into_iter().map(|r| (file, r)));
                    }
                    Err(_) => docs.push(vec![]),
                }
                continue;
            }
            let (res, _) = match &plain {
                Some(pd) => decode_documents(pd),
                None => parse_resources(&f.text, Embedding::default()),
            };
            docs.push(plain.unwrap_or_default());
            resources.extend(res.into_iter().map(|r| (file, r)));
        }

        let mut objects = Vec::new();
        let mut raw_policies = Vec::new();
        let mut nodes_declared = false;
        let mut declared_addr = BTreeSet::new();
        for (file, r) in resources {
            let (kind, meta_ns, name) = match &r {
                Resource::Cilium(p) => (
                    p.kind.as_str().to_string(),
                    p.meta.namespace.as_ref().map(|n| n.value.clone()),
                    p.meta.name.as_ref().map(|n| (n.value.clone(), n.span)),
                ),
                Resource::Kube(p) => (
                    "NetworkPolicy".to_string(),
                    p.meta.namespace.as_ref().map(|n| n.value.clone()),
                    p.meta.name.as_ref().map(|n| (n.value.clone(), n.span)),
                ),
                Resource::CidrGroup(g) => (
                    "CiliumCIDRGroup".to_string(),
                    None,
                    g.meta.name.as_ref().map(|n| (n.value.clone(), n.span)),
                ),
                Resource::Other { kind, node, .. } => {
                    let meta = node.get("metadata");
                    let name = meta
                        .and_then(|m| m.get("name"))
                        .and_then(|n| n.scalar_text().map(|t| (t.to_string(), n.span)));
                    let ns = meta
                        .and_then(|m| m.get("namespace"))
                        .and_then(Node::scalar_text)
                        .map(str::to_string);
                    if kind == "Node" {
                        nodes_declared = true;
                    }
                    let pod_ip = node.get("status").and_then(|s| s.get("podIP"));
                    if let (true, Some(_), Some((n, _))) = (kind == "Pod", pod_ip, &name) {
                        let ns = ns.as_deref().unwrap_or("default");
                        declared_addr.insert(format!("{ns}/{n}"));
                    }
                    (kind.clone(), ns, name)
                }
            };
            if let Some((name, span)) = name {
                let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
                    String::new()
                } else {
                    meta_ns.unwrap_or_else(|| "default".into())
                };
                objects.push(Object {
                    file,
                    kind,
                    namespace,
                    name,
                    span,
                });
            }
            match r {
                Resource::Cilium(p) => raw_policies.push((file, RawPolicy::Cilium(p))),
                Resource::Kube(p) => raw_policies.push((file, RawPolicy::Kube(p))),
                _ => {}
            }
        }
        let mut policies = Vec::new();
        for (t, (file, raw)) in world.policy_set.policies.iter().zip(raw_policies) {
            let span = match &raw {
                RawPolicy::Cilium(p) => p.span,
                RawPolicy::Kube(p) => p.span,
            };
            if t.origin.file == file && t.origin.span == span {
                policies.push(PolicyView { t, raw, file });
            }
        }

        let mut eps = Vec::new();
        type PolicyKey = (IdentityId, Vec<(u16, String, String)>, String);
        let mut pkeys: HashMap<PolicyKey, usize> = HashMap::new();
        for spec in &world.scenario.endpoints {
            let Some(party) = world.party(&spec.name) else {
                continue;
            };
            let pod = match party {
                Party::Pod(_) => true,
                Party::Entity { .. } => false,
                _ => continue,
            };
            let id = world.identity_of(party, None, false);
            let Some(identity) = world.identities().get(id) else {
                continue;
            };
            let ports: Vec<(u16, String, String)> = spec
                .ports
                .iter()
                .map(|c| (c.port, c.name.clone(), c.protocol.to_ascii_uppercase()))
                .collect();
            let node = if world.options.cidr_match_nodes {
                spec.node.clone()
            } else {
                String::new()
            };
            let next = pkeys.len();
            let pkey = *pkeys.entry((id, ports, node)).or_insert(next);
            eps.push(Ep {
                spec,
                party,
                id,
                labels: &identity.labels,
                pod,
                pkey,
            });
        }
        let pkey_count = pkeys.len();
        let dns = world.kube_dns().and_then(|party| {
            let i = eps.iter().position(|e| e.party == party)?;
            Some((i, eps[i].id))
        });
        // A scenario file declares its endpoints, nodes and addresses itself.
        let scenario_mode = world.scenario.name != "manifests";
        let mut declared: BTreeSet<String> = loaded
            .workloads
            .iter()
            .map(|w| w.endpoint.clone())
            .collect();
        if scenario_mode {
            for e in &world.scenario.endpoints {
                declared.insert(e.name.clone());
                declared_addr.insert(e.name.clone());
            }
        }
        let cluster_known = !declared.is_empty();
        let mut group_of: HashMap<IdentityId, usize> = HashMap::new();
        let mut groups: Vec<(LabelSet, Vec<usize>)> = Vec::new();
        for (i, e) in eps.iter().enumerate() {
            match group_of.get(&e.id) {
                Some(&g) => groups[g].1.push(i),
                None => {
                    group_of.insert(e.id, groups.len());
                    groups.push((e.labels.clone(), vec![i]));
                }
            }
        }
        let view_index = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (std::sync::Arc::as_ptr(&p.t.origin) as usize, i))
            .collect();
        let nodes_declared = nodes_declared || scenario_mode;
        Cx {
            loaded,
            world,
            docs,
            policies,
            objects,
            eps,
            groups,
            view_index,
            dns,
            cluster_known,
            nodes_declared,
            declared,
            declared_addr,
            cidr_pods: std::cell::OnceCell::new(),
            port_defs: std::cell::OnceCell::new(),
            pkey_count,
        }
    }

    /// The pods that define a container port named `name` (egress names resolve across the
    /// cluster, §9.5): (pod, number, protocol in upper case).
    fn named_port_defs(&self, name: &str) -> &[(&'a str, u16, String)] {
        let all = self.port_defs.get_or_init(|| {
            let mut all: PortDefs<'a> = HashMap::new();
            for e in &self.world.scenario.endpoints {
                for c in e.ports.iter().filter(|c| !c.name.is_empty()) {
                    all.entry(c.name.as_str()).or_default().push((
                        e.name.as_str(),
                        c.port,
                        c.protocol.to_ascii_uppercase(),
                    ));
                }
            }
            all
        });
        all.get(name).map_or(&[], Vec::as_slice)
    }

    fn file_name(&self, file: FileId) -> &str {
        self.loaded.file_name(file)
    }

    /// The mapping node that starts at `span`.
    fn map_at(&self, file: FileId, span: Span) -> Option<&Node> {
        self.docs
            .get(file as usize)?
            .iter()
            .find_map(|d| find_map(d, span))
    }

    /// Where `key` is written in the mapping that starts at `map_span`.
    fn key_span(&self, file: FileId, map_span: Span, key: &str) -> Option<Span> {
        self.map_at(file, map_span)?
            .as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(k, _)| k.span)
    }

    /// Pods the selector selects.
    fn selected_pods(&self, sel: &Selector) -> Vec<&Ep<'a>> {
        self.matching(sel).into_iter().filter(|e| e.pod).collect()
    }

    /// Endpoints whose identity the selector matches.
    fn matching(&self, sel: &Selector) -> Vec<&Ep<'a>> {
        let mut out = Vec::new();
        for (labels, members) in &self.groups {
            if sel.matches(labels) {
                out.extend(members.iter().map(|i| &self.eps[*i]));
            }
        }
        out
    }

    /// Endpoints (pods and reserved-identity endpoints) a rule applies to.
    fn subject_eps(&self, rule: &model::Rule) -> Vec<&Ep<'a>> {
        match &rule.subject {
            model::Subject::Endpoints(sel) => self.matching(sel),
            model::Subject::Nodes(_) => vec![],
        }
    }

    /// The identities an entry's peers select (`None`: every peer).
    fn peer_ids(&self, entry: &Entry) -> Option<Vec<IdentityId>> {
        match &entry.peers {
            Peers::Wildcard => None,
            Peers::Selectors(list) => Some(
                self.world
                    .identities()
                    .iter()
                    .filter(|i| list.iter().any(|s| peer_selects(s, i, &self.world.options)))
                    .map(|i| i.id)
                    .collect(),
            ),
        }
    }

    /// Pods whose identity is among `ids`.
    fn pods_with_ids(&self, ids: &[IdentityId]) -> Vec<&Ep<'a>> {
        let ids: BTreeSet<IdentityId> = ids.iter().copied().collect();
        self.eps
            .iter()
            .filter(|e| e.pod && ids.contains(&e.id))
            .collect()
    }

    /// Endpoints grouped by their resolved policy for a direction (equal identities and
    /// ports share one), so that each policy is examined once.
    fn by_policy<'e>(
        &self,
        eps: &[&'e Ep<'a>],
        d: Direction,
    ) -> Vec<(DirectionRef, Vec<&'e Ep<'a>>)> {
        // Policy keys are dense indexes: group without a map (this runs once per rule over
        // every endpoint it selects).
        let mut by_key: Vec<Vec<&'e Ep<'a>>> = vec![Vec::new(); self.pkey_count];
        for ep in eps {
            if let Some(g) = by_key.get_mut(ep.pkey) {
                g.push(*ep);
            }
        }
        let mut index: HashMap<*const DirectionPolicy, usize> = HashMap::new();
        let mut out: Vec<(DirectionRef, Vec<&'e Ep<'a>>)> = Vec::new();
        for group in by_key.into_iter().filter(|g| !g.is_empty()) {
            let Some(pol) = self.policy(group[0], d) else {
                continue;
            };
            match index.get(&std::ptr::from_ref::<DirectionPolicy>(&pol)) {
                Some(&i) => out[i].1.extend(group),
                None => {
                    index.insert(std::ptr::from_ref::<DirectionPolicy>(&pol), out.len());
                    out.push((pol, group));
                }
            }
        }
        out
    }

    fn policy(&self, ep: &Ep<'_>, d: Direction) -> Option<DirectionRef> {
        self.world.policy(ep.party, d)
    }

    fn view_of(&self, origin: &std::sync::Arc<model::PolicyOrigin>) -> Option<&PolicyView<'a>> {
        let ptr = std::sync::Arc::as_ptr(origin) as usize;
        match self.view_index.get(&ptr) {
            Some(i) => self.policies.get(*i),
            None => self.policies.iter().find(|p| *p.t.origin == **origin),
        }
    }

    /// Workloads as the user named them (`namespace/name`), for messages.
    fn workload_names(&self, eps: &[&Ep<'_>]) -> String {
        // Only what will be shown is formatted: `eps` may be every pod of a big cluster.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut shown = Vec::new();
        for e in eps {
            if seen.insert(e.name()) && shown.len() < 4 {
                shown.push(format!("`{}`", e.name()));
            }
        }
        if seen.len() > shown.len() {
            shown.truncate(3);
            return format!("{} and {} more", shown.join(", "), seen.len() - 3);
        }
        names_list(shown)
    }
}

fn find_map(n: &Node, span: Span) -> Option<&Node> {
    if span.offset < n.span.offset {
        return None;
    }
    if n.span.offset == span.offset && n.span.line == span.line && n.as_map().is_some() {
        return Some(n);
    }
    match &n.value {
        Value::Seq(items) => items.iter().find_map(|i| find_map(i, span)),
        Value::Map(entries) => entries.iter().find_map(|(_, v)| find_map(v, span)),
        _ => None,
    }
}

/// `a, b, c and 2 more`.
fn names_list(mut names: Vec<String>) -> String {
    names.dedup();
    const SHOWN: usize = 3;
    if names.len() > SHOWN + 1 {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        return format!("{} and {more} more", names.join(", "));
    }
    names.join(", ")
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        many.to_string()
    }
}

/// The selector a raw LabelSelector stands for, before any namespace injection.
fn raw_selector(sel: &LabelSelector) -> Selector {
    let mut s = Selector::default();
    for (k, v) in &sel.match_labels {
        s.push(
            SelectorKey::parse(&k.value),
            Operator::In,
            vec![v.value.clone()],
        );
    }
    for r in &sel.match_expressions {
        if let Some(op) = Operator::parse(&r.operator.value) {
            s.push(
                SelectorKey::parse(&r.key.value),
                op,
                r.values.iter().map(|v| v.value.clone()).collect(),
            );
        }
    }
    s
}

fn is_ns_key(k: &SelectorKey) -> bool {
    k.key == KEY_NAMESPACE && (k.source.is_none() || k.source.as_deref() == Some(SOURCE_K8S))
}

/// Whether a peer selector names the namespace (so that none is injected).
fn names_namespace(s: &Selector) -> bool {
    s.requirements
        .iter()
        .any(|r| is_ns_key(&r.key) || r.key.key.starts_with(PREFIX_NAMESPACE_LABELS))
}

/// The selector without its namespace requirements: what it would select in any namespace.
fn without_namespace(s: &Selector) -> Selector {
    Selector {
        requirements: s
            .requirements
            .iter()
            .filter(|r| !is_ns_key(&r.key))
            .cloned()
            .collect(),
    }
}

fn world_labels() -> LabelSet {
    LabelSet::new(vec![Label::reserved("world")])
}

/// The span of the peer field of an entry (`fromEntities`, `toFQDNs`, ...), or the entry.
fn field_span(pr: &PeerRule, name: &str) -> Span {
    pr.field_span(name).unwrap_or(pr.span)
}

fn dir_prefix(section: RuleSection) -> &'static str {
    if section.is_ingress() { "from" } else { "to" }
}

fn sections() -> [RuleSection; 4] {
    [
        RuleSection::Ingress,
        RuleSection::IngressDeny,
        RuleSection::Egress,
        RuleSection::EgressDeny,
    ]
}

/// An entry written as `{}` (or with only explicitly empty peer lists): it enforces the
/// direction and allows nothing.
fn allows_nothing(pr: &PeerRule) -> bool {
    let empty = |l: &Option<Vec<_>>| l.as_ref().is_none_or(Vec::is_empty);
    pr.to_ports.as_ref().is_none_or(Vec::is_empty)
        && pr.icmps.as_ref().is_none_or(Vec::is_empty)
        && empty(&pr.endpoints)
        && pr.cidr.as_ref().is_none_or(Vec::is_empty)
        && pr.cidr_set.as_ref().is_none_or(Vec::is_empty)
        && pr.entities.as_ref().is_none_or(Vec::is_empty)
        && empty(&pr.nodes)
        && pr.services.as_ref().is_none_or(Vec::is_empty)
        && pr.fqdns.as_ref().is_none_or(Vec::is_empty)
}

/// The directions a raw Cilium rule means to put into default deny: a list that is empty or
/// holds only entries that allow nothing.
fn deny_intent(rule: &api::Rule) -> Vec<Direction> {
    let mut out = Vec::new();
    for (section, d) in [
        (RuleSection::Ingress, Direction::Ingress),
        (RuleSection::Egress, Direction::Egress),
    ] {
        if let Some(list) = rule.section(section) {
            if list.is_empty() || list.iter().all(allows_nothing) {
                out.push(d);
            }
        }
    }
    out
}

fn section_name(section: RuleSection) -> &'static str {
    section.field_name()
}

// ---------------------------------------------------------------------------------------
// MEM001, MEM003, MEM012, MEM016, MEM023: what loading already reported.

fn engine_diagnostics(cx: &Cx<'_>, out: &mut Out) {
    for (file, d) in &cx.loaded.diagnostics {
        let too_many = d.message.contains("too many ports, the max is 40")
            || d.message.contains("too many types, the max is 40");
        let id = match d.code {
            "namespace-missing" => NAMESPACE_MISSING,
            "subject-namespace-any" | "subject-namespace-overwritten" => SUBJECT_NS_KEY,
            _ if d.is_error() && too_many => TOO_MANY_PORTS,
            _ if d.is_error() => REJECTED,
            _ => MANIFEST_WARNING,
        };
        let message = if id == TOO_MANY_PORTS {
            format!("{}: the agent rejects this policy", d.message)
        } else {
            d.message.clone()
        };
        let help = d
            .help
            .clone()
            .or_else(|| rule(id).map(|r| r.help.to_string()));
        out.push(id, *file, d.span, message, help);
        if id == MANIFEST_WARNING {
            if let Some(last) = out.findings.last_mut() {
                last.severity = d.severity;
            }
        }
    }
}

/// MEM003 for workloads, Services, Gateways and routes (policies come from the engine).
fn defaulted_namespaces(cx: &Cx<'_>, out: &mut Out) {
    for (file, span, what) in &cx.loaded.defaulted_namespace {
        let (kind, name) = what.split_once(' ').unwrap_or((what.as_str(), ""));
        let at = cx.key_span(*file, *span, "metadata").unwrap_or(*span);
        out.push(
            NAMESPACE_MISSING,
            *file,
            Some(at),
            format!("{kind} `{name}` has no metadata.namespace: it lands in the namespace kubectl uses (usually `default`)"),
            Some("set metadata.namespace explicitly: policies, Services and routes only meet the pods of their own namespace".into()),
        );
    }
}

/// MEM019: the same object more than once.
fn duplicates(cx: &Cx<'_>, out: &mut Out) {
    let mut first: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    for (i, o) in cx.objects.iter().enumerate() {
        let key = (o.kind.as_str(), o.namespace.as_str(), o.name.as_str());
        let Some(&j) = first.get(&key) else {
            first.insert(key, i);
            continue;
        };
        let f = &cx.objects[j];
        let shown = if o.namespace.is_empty() {
            o.name.clone()
        } else {
            format!("{}/{}", o.namespace, o.name)
        };
        out.push(
            DUPLICATE,
            o.file,
            Some(o.span),
            format!(
                "{} `{shown}` is already defined at {}:{}: applied together, each copy replaces the previous one, so only the last takes effect",
                o.kind,
                cx.file_name(f.file),
                f.span.line
            ),
            Some(rule(DUPLICATE).map_or(String::new(), |r| r.help.to_string())),
        );
    }
}

// ---------------------------------------------------------------------------------------
// MEM004: a default deny that denies nothing.

fn default_deny_denies_nothing(cx: &Cx<'_>, out: &mut Out) -> BTreeSet<usize> {
    let mut fired = BTreeSet::new();
    for (pi, p) in cx.policies.iter().enumerate() {
        let mut intent: BTreeSet<Direction> = BTreeSet::new();
        match &p.raw {
            RawPolicy::Cilium(_) => {
                for (_, r) in p.cilium_rules() {
                    intent.extend(deny_intent(r));
                }
            }
            RawPolicy::Kube(k) => {
                let types: Vec<&str> = k
                    .policy_types
                    .iter()
                    .flatten()
                    .map(|t| t.value.as_str())
                    .collect();
                // An absent or empty policyTypes defaults to [Ingress] (Kubernetes defaulting).
                let ingress = types.is_empty() || types.contains(&"Ingress");
                let egress = types.contains(&"Egress");
                if ingress && k.ingress.as_ref().is_none_or(Vec::is_empty) {
                    intent.insert(Direction::Ingress);
                }
                if egress && k.egress.as_ref().is_none_or(Vec::is_empty) {
                    intent.insert(Direction::Egress);
                }
            }
        }
        let lname = p.name().to_ascii_lowercase();
        let named = lname.contains("default-deny") || lname.contains("deny-all");
        if intent.is_empty() && !named {
            continue;
        }
        let mut reasons = Vec::new();
        if !p.t.valid {
            match p.t.diagnostics.iter().find(|d| d.is_error()) {
                Some(d) => reasons.push(format!("the agent rejects it (`{}`)", d.message)),
                None => reasons.push("the agent rejects it".to_string()),
            }
        }
        for r in &p.t.rules {
            for d in &intent {
                if r.default_deny(*d) == Some(false) {
                    reasons.push(format!(
                        "`enableDefaultDeny: {{{d}: false}}` makes it allow everything for {d}"
                    ));
                }
            }
        }
        let rules: Vec<&model::Rule> = p.rules().collect();
        if cx.cluster_known && !rules.is_empty() {
            let selected = rules.iter().any(|r| !cx.subject_eps(r).is_empty());
            if !selected {
                let mut reason = match p.namespace() {
                    Some(ns) => {
                        format!("it only applies to namespace `{ns}`, where it selects no workload")
                    }
                    None => "it selects no workload".to_string(),
                };
                if p.namespace().is_some() {
                    let mut meant: BTreeSet<&str> = BTreeSet::new();
                    for r in &rules {
                        let model::Subject::Endpoints(sel) = &r.subject else {
                            continue;
                        };
                        let relaxed = without_namespace(sel);
                        for w in &cx.loaded.workloads {
                            if cx
                                .eps
                                .iter()
                                .any(|e| e.name() == w.endpoint && relaxed.matches(e.labels))
                            {
                                meant.insert(w.namespace.as_str());
                            }
                        }
                    }
                    if !meant.is_empty() {
                        let list = names_list(meant.iter().map(|n| format!("`{n}`")).collect());
                        let _ = write!(
                            reason,
                            " (the workloads it would select run in {} {list})",
                            plural(meant.len(), "namespace", "namespaces")
                        );
                    }
                }
                reasons.push(reason);
            }
        }
        if reasons.is_empty() {
            continue;
        }
        fired.insert(pi);
        let help = match p.kind() {
            PolicyKind::NetworkPolicy => "set metadata.namespace for each namespace to protect; `podSelector: {}` with `policyTypes: [Ingress, Egress]` and no rules denies both directions".to_string(),
            _ => "a CiliumNetworkPolicy applies only in its own namespace: create the default deny in each namespace (`metadata.namespace`) with `ingress: [{}]` and `egress: [{}]` (on any Cilium version `[{fromEntities: []}]` / `[{toEntities: []}]`); a CiliumClusterwideNetworkPolicy covers every namespace but also selects kube-system".to_string(),
        };
        out.push(
            DENY_NOTHING,
            p.file,
            Some(p.name_span()),
            format!(
                "`{}` is written as a default deny but denies nothing: {}",
                p.name(),
                reasons.join("; ")
            ),
            Some(help),
        );
    }
    fired
}

// ---------------------------------------------------------------------------------------
// MEM002: empty lists.

fn empty_lists(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    for (_, r) in p.cilium_rules() {
        let empties: Vec<RuleSection> = sections()
            .into_iter()
            .filter(|s| r.section(*s).is_some_and(Vec::is_empty))
            .collect();
        let Some(first) = empties.first() else {
            continue;
        };
        let all_empty = sections()
            .into_iter()
            .all(|s| r.section(s).is_none_or(Vec::is_empty));
        let names: Vec<String> = empties
            .iter()
            .map(|s| format!("`{}: []`", s.field_name()))
            .collect();
        let verb = plural(
            empties.len(),
            "is an empty list, which counts",
            "are empty lists, which count",
        );
        let message = if all_empty {
            format!(
                "{} {verb} as absent: the rule has no rules at all, so Cilium ≥ 1.17 rejects it and older agents enforce nothing; either way nothing is denied",
                names.join(" and ")
            )
        } else {
            let dirs: BTreeSet<&str> = empties
                .iter()
                .map(|s| if s.is_ingress() { "ingress" } else { "egress" })
                .collect();
            format!(
                "{} {verb} as absent: this rule does not enforce {} on the selected endpoints",
                names.join(" and "),
                dirs.into_iter().collect::<Vec<_>>().join(" or ")
            )
        };
        let span = cx
            .key_span(p.file, r.span, first.field_name())
            .unwrap_or(r.span);
        out.push(
            EMPTY_LIST,
            p.file,
            Some(span),
            message,
            Some(rule(EMPTY_LIST).map_or(String::new(), |r| r.help.to_string())),
        );
    }
}

// ---------------------------------------------------------------------------------------
// MEM005: HTTP regexes are anchored.

fn http_rules<'p>(p: &'p PolicyView<'_>) -> Vec<&'p api::HttpRule> {
    let mut out = Vec::new();
    for (_, r) in p.cilium_rules() {
        for s in [RuleSection::Ingress, RuleSection::Egress] {
            for pr in r.section(s).into_iter().flatten() {
                for port_rule in pr.to_ports.iter().flatten() {
                    if let Some(http) = port_rule.rules.as_ref().and_then(|l| l.http.as_ref()) {
                        out.extend(http.iter());
                    }
                }
            }
        }
    }
    out
}

fn is_literal(s: &str) -> bool {
    !s.chars().any(|c| ".*+?()[]{}|^$\\".contains(c))
}

/// What is wrong with an HTTP path regex, if anything: (message, help).
fn path_problem(
    path: &str,
    siblings: &[&str],
    route_prefixes: &[&str],
) -> Option<(String, String)> {
    let p = path.strip_prefix('^').unwrap_or(path);
    let first = p.chars().next()?;
    if first.is_ascii_alphanumeric() {
        return Some((
            format!(
                "path `{path}` never matches: it is matched against the whole request path, which starts with `/`"
            ),
            format!("write `/{p}`"),
        ));
    }
    if let Some(base) = p.strip_suffix("/*") {
        if !base.ends_with('.') {
            return Some((
                format!(
                    "path `{path}` is a regex, not a glob: `/*` means \"zero or more slashes\", so it matches `{base}` and `{base}/` but not `{base}/x`"
                ),
                format!(
                    "write `{base}/.*` for everything under `{base}/`, or `{base}(/.*)?` to include `{base}` itself"
                ),
            ));
        }
    }
    let bytes: Vec<char> = p.chars().collect();
    for (i, c) in bytes.iter().enumerate() {
        if *c != '?' || i == 0 {
            continue;
        }
        let prev = bytes[i - 1];
        if prev == '\\' || ")*+?}]".contains(prev) {
            continue;
        }
        let rest: String = bytes[i + 1..].iter().collect();
        let param_len = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .count();
        if param_len > 0 && rest[param_len..].starts_with('=') {
            return Some((
                format!(
                    "path `{path}`: `?` is a regex quantifier that makes `{prev}` optional, so this never matches a query string"
                ),
                "escape it as `\\?` (and end with `.*` if other parameters may follow)".to_string(),
            ));
        }
    }
    if !is_literal(p) {
        return None;
    }
    if p == "/" {
        return Some((
            "path `/` matches only the root path `/`, not every path".to_string(),
            "omit `path` to allow every path, or write `/.*`".to_string(),
        ));
    }
    let trimmed = p.trim_end_matches('/');
    let mut why = Vec::new();
    if route_prefixes
        .iter()
        .any(|r| r.trim_end_matches('/') == trimmed)
    {
        why.push("the HTTPRoute in front forwards everything under it (PathPrefix)");
    }
    let under = format!("{trimmed}/");
    if siblings.iter().any(|s| *s != p && s.starts_with(&under)) {
        why.push("other rules list paths under it");
    }
    if p.len() > 1 && p.ends_with('/') {
        why.push("it ends with `/`, like a directory");
    }
    if why.is_empty() {
        return None;
    }
    Some((
        format!(
            "path `{p}` is a regex matched against the whole path (query string included): it allows exactly `{p}`, not `{trimmed}/x` nor `{p}?page=2`, yet it looks like a prefix ({})",
            why.join(", ")
        ),
        format!(
            "to allow everything under it write `{trimmed}(/.*)?` (add `(\\?.*)?` for query strings); keep it literal only for exactly `{p}`"
        ),
    ))
}

fn method_problem(method: &str) -> Option<(String, String)> {
    let m = method
        .strip_prefix('^')
        .unwrap_or(method)
        .trim_end_matches('$');
    if m.contains(',') || m.contains(' ') {
        return Some((
            format!(
                "method `{method}` never matches: it is one regex matched against the whole method"
            ),
            format!("write `{}`", m.replace([',', ' '], "|").replace("||", "|")),
        ));
    }
    let plain = m
        .chars()
        .all(|c| c.is_ascii_alphabetic() || "|()".contains(c));
    if plain && m.chars().any(|c| c.is_ascii_lowercase()) {
        return Some((
            format!(
                "method `{method}` never matches: methods are upper case and matched case-sensitively (`get /` gets 403)"
            ),
            format!("write `{}`", m.to_ascii_uppercase()),
        ));
    }
    None
}

fn http_regexes(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    let rules = http_rules(p);
    if rules.is_empty() {
        return;
    }
    let siblings: Vec<&str> = rules
        .iter()
        .filter_map(|h| h.path.as_ref().map(|s| s.value.as_str()))
        .collect();
    let prefixes: Vec<&str> = cx
        .world
        .scenario
        .routes
        .iter()
        .filter(|r| !r.exact && r.path != "/")
        .map(|r| r.path.as_str())
        .collect();
    for h in rules {
        if let Some(path) = &h.path {
            if let Some((message, help)) = path_problem(&path.value, &siblings, &prefixes) {
                out.push(HTTP_ANCHORED, p.file, Some(path.span), message, Some(help));
            }
        }
        if let Some(method) = &h.method {
            if let Some((message, help)) = method_problem(&method.value) {
                out.push(
                    HTTP_ANCHORED,
                    p.file,
                    Some(method.span),
                    message,
                    Some(help),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// MEM011, MEM014 (peers), MEM017: peer selectors.

fn selects_kube_dns(s: &Selector) -> bool {
    s.requirements.iter().any(|r| {
        r.key.key == "k8s-app"
            && r.op == Operator::In
            && r.values.iter().any(|v| v == "kube-dns" || v == "coredns")
    })
}

fn peer_verb(section: RuleSection) -> &'static str {
    match section {
        RuleSection::Ingress => "admits traffic from",
        RuleSection::IngressDeny => "denies traffic from",
        RuleSection::Egress => "allows traffic to",
        RuleSection::EgressDeny => "denies traffic to",
    }
}

/// The span of the first NotIn/DoesNotExist expression on a namespace key.
fn negative_ns_expression(sel: &LabelSelector, ns_labels_too: bool) -> Option<(Span, String)> {
    sel.match_expressions.iter().find_map(|r| {
        let key = SelectorKey::parse(&r.key.value);
        let on_ns =
            is_ns_key(&key) || (ns_labels_too && key.key.starts_with(PREFIX_NAMESPACE_LABELS));
        let negative = matches!(r.operator.value.as_str(), "NotIn" | "DoesNotExist");
        (on_ns && negative).then(|| (r.span, r.operator.value.clone()))
    })
}

/// Why a peer selector selects nothing: hints about namespaces and filtered labels.
fn nothing_hints(cx: &Cx<'_>, selector: &Selector, injected_ns: Option<&str>) -> Vec<String> {
    let mut hints = Vec::new();
    if let Some(ns) = injected_ns {
        let pods = cx.selected_pods(&without_namespace(selector));
        if !pods.is_empty() {
            let namespaces: BTreeSet<&str> =
                pods.iter().map(|e| e.spec.namespace.as_str()).collect();
            hints.push(format!(
                "pods with these labels run in {} {} ({}), but without a namespace key the policy's namespace `{ns}` is injected",
                plural(namespaces.len(), "namespace", "namespaces"),
                names_list(namespaces.iter().map(|n| format!("`{n}`")).collect()),
                cx.workload_names(&pods),
            ));
        }
    }
    for r in &selector.requirements {
        let k8s_or_any = r.key.source.is_none() || r.key.source.as_deref() == Some(SOURCE_K8S);
        if k8s_or_any && !is_identity_label(&r.key.key) {
            hints.push(format!(
                "`{}` is not part of identities (Cilium's label filter drops it), so no selector on it ever matches",
                r.key.key
            ));
        }
    }
    hints
}

fn peer_selectors(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    match &p.raw {
        RawPolicy::Cilium(_) => cilium_peer_selectors(cx, p, out),
        RawPolicy::Kube(k) => kube_peer_selectors(cx, p, k, out),
    }
}

fn cilium_peer_selectors(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    let cnp = p.kind() == PolicyKind::CiliumNetworkPolicy;
    let ns = p.namespace().unwrap_or("default");
    for (si, r) in p.cilium_rules() {
        let mr = p.model_rule(si);
        for section in sections() {
            for (index, pr) in r.section(section).into_iter().flatten().enumerate() {
                let field = format!("{}Endpoints", dir_prefix(section));
                let entry = mr.and_then(|m| model_entry(m, section, index));
                for (k, sel) in pr.endpoints.iter().flatten().enumerate() {
                    let rs = raw_selector(sel);
                    if rs.uses_source(SOURCE_RESERVED) {
                        continue;
                    }
                    let mut kube_dns = false;
                    if cnp && ns != "kube-system" && !names_namespace(&rs) && selects_kube_dns(&rs)
                    {
                        kube_dns = true;
                        let dns_rules = pr
                            .to_ports
                            .iter()
                            .flatten()
                            .any(|pr| pr.rules.as_ref().is_some_and(|l| l.dns.is_some()));
                        out.push(
                            KUBE_DNS_NS,
                            p.file,
                            Some(sel.span),
                            format!(
                                "this selector names kube-dns but no namespace: the policy's namespace `{ns}` is injected, so it never matches kube-dns in `kube-system`{}",
                                if dns_rules { " and the DNS rules of this entry never apply" } else { "" }
                            ),
                            Some(rule(KUBE_DNS_NS).map_or(String::new(), |r| r.help.to_string())),
                        );
                    }
                    if names_namespace(&rs) && rs.matches(&world_labels()) {
                        let (span, op) = negative_ns_expression(sel, true)
                            .unwrap_or((sel.span, "NotIn".to_string()));
                        out.push(
                            NOTIN_NS,
                            p.file,
                            Some(span),
                            format!(
                                "`{op}` on the namespace key: no namespace is injected and the selector also matches identities that have no namespace, so this rule also {} world, host and remote-node",
                                peer_verb(section)
                            ),
                            Some(rule(NOTIN_NS).map_or(String::new(), |r| r.help.to_string())),
                        );
                    }
                    // Selects nothing (valid policies: the engine's selectors line up with
                    // the raw ones).
                    if kube_dns || !cx.cluster_known || !p.t.valid {
                        continue;
                    }
                    let Some(Peers::Selectors(list)) = entry.map(|e| &e.peers) else {
                        continue;
                    };
                    let Some(PeerSelector::Labels(ms)) = list.get(k) else {
                        continue;
                    };
                    let any = cx.world.identities().iter().any(|i| ms.matches(&i.labels));
                    if any {
                        continue;
                    }
                    let injected = (cnp && !names_namespace(&rs)).then_some(ns);
                    let hints = nothing_hints(cx, ms, injected);
                    let help = if injected.is_some() && !hints.is_empty() {
                        "add `k8s:io.kubernetes.pod.namespace: <namespace>` to the selector to reach pods of another namespace".to_string()
                    } else {
                        rule(SELECTS_NOTHING).map_or(String::new(), |r| r.help.to_string())
                    };
                    let mut message = format!(
                        "{field} selector `{ms}` matches no workload in the loaded manifests"
                    );
                    if !hints.is_empty() {
                        let _ = write!(message, ": {}", hints.join("; "));
                    }
                    out.push(SELECTS_NOTHING, p.file, Some(sel.span), message, Some(help));
                }
            }
        }
    }
}

fn kube_peer_selectors(cx: &Cx<'_>, p: &PolicyView<'_>, k: &KubePolicy, out: &mut Out) {
    let ns = p.namespace().unwrap_or("default");
    let Some(mr) = p.rules().next() else {
        return;
    };
    for (section, rules, field) in [
        (RuleSection::Ingress, &k.ingress, "from"),
        (RuleSection::Egress, &k.egress, "to"),
    ] {
        for (index, kr) in rules.iter().flatten().enumerate() {
            let entry = model_entry(mr, section, index);
            for (j, peer) in kr.peers.iter().flatten().enumerate() {
                if let Some(nss) = &peer.namespace_selector {
                    let mut s = Selector::default();
                    for r in &raw_selector(nss).requirements {
                        s.push(
                            SelectorKey::k8s(&format!("{PREFIX_NAMESPACE_LABELS}{}", r.key.key)),
                            r.op,
                            r.values.clone(),
                        );
                    }
                    if let Some(ps) = &peer.pod_selector {
                        s.requirements.extend(raw_selector(ps).requirements);
                    }
                    if !s.is_wildcard() && s.matches(&world_labels()) {
                        let span = nss
                            .match_expressions
                            .iter()
                            .find(|r| matches!(r.operator.value.as_str(), "NotIn" | "DoesNotExist"))
                            .map_or(nss.span, |r| r.span);
                        out.push(
                            NOTIN_NS,
                            p.file,
                            Some(span),
                            format!(
                                "a namespaceSelector with only `NotIn`/`DoesNotExist` also matches identities that have no namespace: under Cilium this peer also {} world, host and remote-node",
                                peer_verb(section)
                            ),
                            Some("add a `matchExpressions` entry that every namespace has, e.g. `{key: kubernetes.io/metadata.name, operator: Exists}`".into()),
                        );
                    }
                }
                if !cx.cluster_known || !p.t.valid || peer.ip_block.is_some() {
                    continue;
                }
                let Some(Peers::Selectors(list)) = entry.map(|e| &e.peers) else {
                    continue;
                };
                let Some(PeerSelector::Labels(ms)) = list.get(j) else {
                    continue;
                };
                if cx.world.identities().iter().any(|i| ms.matches(&i.labels)) {
                    continue;
                }
                let injected = peer.namespace_selector.is_none().then_some(ns);
                let hints = nothing_hints(cx, ms, injected);
                let mut message =
                    format!("`{field}` peer `{ms}` matches no workload in the loaded manifests");
                if !hints.is_empty() {
                    let _ = write!(message, ": {}", hints.join("; "));
                }
                out.push(
                    SELECTS_NOTHING,
                    p.file,
                    Some(peer.span),
                    message,
                    Some("check the labels; a podSelector without namespaceSelector only selects pods of the policy's namespace".into()),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// MEM018: `**.` in DNS patterns.

fn dns_patterns(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    let _ = cx;
    let mut patterns: Vec<&api::SString> = Vec::new();
    for (_, r) in p.cilium_rules() {
        for section in sections() {
            for pr in r.section(section).into_iter().flatten() {
                patterns.extend(
                    pr.fqdns
                        .iter()
                        .flatten()
                        .filter_map(|f| f.match_pattern.as_ref()),
                );
                for port_rule in pr.to_ports.iter().flatten() {
                    let dns = port_rule.rules.as_ref().and_then(|l| l.dns.as_ref());
                    patterns.extend(
                        dns.into_iter()
                            .flatten()
                            .filter_map(|f| f.match_pattern.as_ref()),
                    );
                }
            }
        }
    }
    for pat in patterns {
        let v = pat.value.trim();
        let stars = v.bytes().take_while(|b| *b == b'*').count();
        let Some(rest) = v.get(stars..).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        if stars < 2 || rest.is_empty() {
            continue;
        }
        out.push(
            DOUBLE_STAR,
            p.file,
            Some(pat.span),
            format!(
                "`{v}`: Cilium v1.17 compiles `**.` like `*.` (exactly one label), newer agents match one or more labels: on v1.17 `a.{rest}` matches but `a.b.{rest}` does not"
            ),
            Some(rule(DOUBLE_STAR).map_or(String::new(), |r| r.help.to_string())),
        );
    }
}

// ---------------------------------------------------------------------------------------
// MEM010: CIDRs that contain pods or nodes.

fn cidrs(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    // (text span, net, excepts, section, is ipBlock)
    let mut found: Vec<(
        &api::SString,
        ipnet::IpNet,
        Vec<ipnet::IpNet>,
        RuleSection,
        bool,
    )> = Vec::new();
    match &p.raw {
        RawPolicy::Cilium(_) => {
            for (_, r) in p.cilium_rules() {
                for section in sections() {
                    for pr in r.section(section).into_iter().flatten() {
                        for c in pr.cidr.iter().flatten() {
                            if let Ok(net) = parse_cidr(&c.value, true) {
                                found.push((c, net, vec![], section, false));
                            }
                        }
                        for cr in pr.cidr_set.iter().flatten() {
                            let Some(c) = &cr.cidr else { continue };
                            let Ok(net) = parse_cidr(&c.value, false) else {
                                continue;
                            };
                            let except = cr
                                .except
                                .iter()
                                .filter_map(|e| parse_cidr(&e.value, false).ok())
                                .collect();
                            found.push((c, net, except, section, false));
                        }
                    }
                }
            }
        }
        RawPolicy::Kube(k) => {
            for (section, rules) in [
                (RuleSection::Ingress, &k.ingress),
                (RuleSection::Egress, &k.egress),
            ] {
                for kr in rules.iter().flatten() {
                    for peer in kr.peers.iter().flatten() {
                        let Some(block) = &peer.ip_block else {
                            continue;
                        };
                        let Ok(net) = parse_cidr(&block.cidr.value, false) else {
                            continue;
                        };
                        let except = block
                            .except
                            .iter()
                            .filter_map(|e| parse_cidr(&e.value, false).ok())
                            .collect();
                        found.push((&block.cidr, net, except, section, true));
                    }
                }
            }
        }
    }
    if found.is_empty() {
        return;
    }
    // The same lists for every policy: built once.
    let pods = cx.cidr_pods.get_or_init(|| {
        cx.eps
            .iter()
            .filter(|e| e.pod && !e.spec.host_network && !e.spec.ip.is_unspecified())
            .filter(|e| cx.declared.contains(e.name()))
            .map(|e| (e.spec.name.as_str(), e.spec.ip))
            .collect()
    });
    let nodes: Vec<(&str, IpAddr)> = if cx.nodes_declared && !cx.world.options.cidr_match_nodes {
        cx.world
            .scenario
            .nodes
            .iter()
            .filter(|n| n.cilium)
            .map(|n| (n.name.as_str(), n.ip))
            .collect()
    } else {
        vec![]
    };
    let hits =
        |net: &ipnet::IpNet, except: &[ipnet::IpNet], list: &[(&str, IpAddr)]| -> Vec<String> {
            list.iter()
                .filter(|(_, ip)| net.contains(ip) && !except.iter().any(|e| e.contains(ip)))
                .map(|(n, ip)| {
                    if cx.declared_addr.contains(*n) || !cx.declared.contains(*n) {
                        format!("`{n}` ({ip})")
                    } else {
                        format!("`{n}` ({ip}, modelled)")
                    }
                })
                .collect()
        };
    for (text, net, except, section, ip_block) in found {
        if !ip_block && net.prefix_len() == 0 {
            continue;
        }
        let pod_hits = hits(&net, &except, pods);
        let node_hits = hits(&net, &except, &nodes);
        if pod_hits.is_empty() && node_hits.is_empty() {
            continue;
        }
        let mut what = Vec::new();
        if !pod_hits.is_empty() {
            what.push(format!(
                "{} {}",
                plural(pod_hits.len(), "pod", "pods"),
                names_list(pod_hits)
            ));
        }
        if !node_hits.is_empty() {
            what.push(format!(
                "{} {}",
                plural(node_hits.len(), "node", "nodes"),
                names_list(node_hits)
            ));
        }
        let verb = match section {
            RuleSection::Ingress => "admit traffic from",
            RuleSection::IngressDeny => "deny traffic from",
            RuleSection::Egress => "allow traffic to",
            RuleSection::EgressDeny => "deny traffic to",
        };
        let (message, help) = if ip_block {
            (
                format!(
                    "ipBlock `{}` contains the addresses of {}: unlike upstream Kubernetes, Cilium never lets an ipBlock select pods or nodes (they have identities of their own), so this peer does not {verb} them",
                    text.value,
                    what.join(" and ")
                ),
                "add a peer with `namespaceSelector: {}` (every pod) or a podSelector next to the ipBlock; nodes need a CiliumNetworkPolicy with the `host`/`remote-node` entities".to_string(),
            )
        } else {
            (
                format!(
                    "`{}` contains the addresses of {}: CIDR selectors never select Cilium-managed pods or nodes, so this rule does not {verb} them",
                    text.value,
                    what.join(" and ")
                ),
                rule(CIDR_CLUSTER).map_or(String::new(), |r| r.help.to_string()),
            )
        };
        let mut message = message;
        if message.contains(", modelled)") {
            message.push_str(" (a modelled address is the one membrane gives a pod without `status.podIP`, in 10.244.0.0/16 like many clusters' pod range)");
        }
        out.push(CIDR_CLUSTER, p.file, Some(text.span), message, Some(help));
    }
}

// ---------------------------------------------------------------------------------------
// MEM009, MEM013: ports against the pods they apply to.

struct RawPort<'r> {
    port: &'r api::SString,
    end: Option<i64>,
    protocol: Option<&'r str>,
}

impl RawPort<'_> {
    /// Upper-case protocols the port stands for (ANY is TCP, UDP and SCTP).
    fn protocols(&self) -> Vec<String> {
        match self.protocol.map(str::to_ascii_uppercase).as_deref() {
            None | Some("" | "ANY") => vec!["TCP".into(), "UDP".into(), "SCTP".into()],
            Some(p) => vec![p.to_string()],
        }
    }

    fn protocol_text(&self) -> String {
        self.protocol
            .map_or("ANY".to_string(), str::to_ascii_uppercase)
    }

    /// A numeric port as a range; `None` for names, port 0 and invalid numbers.
    fn range(&self) -> Option<(u16, u16)> {
        let n: u16 = self.port.value.trim().parse().ok()?;
        if n == 0 {
            return None;
        }
        let hi = self
            .end
            .filter(|e| *e >= i64::from(n) && *e <= 65535)
            .map_or(n, |e| e as u16);
        Some((n, hi))
    }

    fn name(&self) -> Option<String> {
        let t = self.port.value.trim();
        (t.parse::<u64>().is_err() && !t.is_empty()).then(|| t.to_ascii_lowercase())
    }
}

fn container_ports_text(e: &Ep<'_>) -> String {
    let ports: Vec<String> = e
        .ports()
        .iter()
        .map(|c| format!("{}/{}", c.port, c.protocol.to_ascii_uppercase()))
        .collect();
    format!("`{}` ({})", e.name(), ports.join(", "))
}

/// A Service in front of `ep` whose port is in `lo..=hi` and whose targetPort differs.
fn service_port_hint(cx: &Cx<'_>, ep: &Ep<'_>, lo: u16, hi: u16) -> Option<(String, String)> {
    for svc in &cx.loaded.services {
        if svc.namespace != ep.spec.namespace
            || svc.selector.is_empty()
            || !svc.selector.iter().all(|kv| ep.spec.labels.contains(kv))
        {
            continue;
        }
        for sp in &svc.ports {
            if sp.port < lo || sp.port > hi || sp.target == sp.port.to_string() {
                continue;
            }
            let target = match sp.target.parse::<u16>() {
                Ok(n) => n.to_string(),
                Err(_) => ep
                    .ports()
                    .iter()
                    .find(|c| c.name == sp.target)
                    .map_or(sp.target.clone(), |c| c.port.to_string()),
            };
            return Some((
                format!(
                    "{} is the port of Service `{}/{}`, whose targetPort is {target}",
                    sp.port, svc.namespace, svc.name
                ),
                target,
            ));
        }
    }
    None
}

fn check_ports(
    cx: &Cx<'_>,
    file: FileId,
    section: RuleSection,
    targets: &[&Ep<'_>],
    raw: &[RawPort<'_>],
    out: &mut Out,
) {
    // One endpoint per identity and set of ports stands for the others.
    let mut seen = vec![false; cx.pkey_count];
    let declared: Vec<&Ep<'_>> = targets
        .iter()
        .copied()
        .filter(|e| {
            let first = seen.get(e.pkey).is_some_and(|s| !s);
            if let Some(s) = seen.get_mut(e.pkey) {
                *s = true;
            }
            !e.ports().is_empty() && first
        })
        .collect();
    for rp in raw {
        let protos = rp.protocols();
        if let Some((lo, hi)) = rp.range() {
            if section.is_deny() || declared.is_empty() {
                continue;
            }
            let listens = declared.iter().any(|e| {
                e.ports().iter().any(|c| {
                    c.port >= lo
                        && c.port <= hi
                        && protos.iter().any(|p| p.eq_ignore_ascii_case(&c.protocol))
                })
            });
            if listens {
                continue;
            }
            let shown = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let mut message = format!(
                "port {shown}/{} is not a container port of {}: it allows traffic to a port nothing listens on",
                rp.protocol_text(),
                names_list(declared.iter().map(|e| container_ports_text(e)).collect())
            );
            let hint = declared
                .iter()
                .find_map(|e| service_port_hint(cx, e, lo, hi));
            let help = match hint {
                Some((h, target)) => {
                    let _ = write!(message, " ({h})");
                    format!(
                        "policy is enforced after service translation, on the pod's port: write `{target}`"
                    )
                }
                None => rule(PORT_MISMATCH).map_or(String::new(), |r| r.help.to_string()),
            };
            out.push(PORT_MISMATCH, file, Some(rp.port.span), message, Some(help));
            continue;
        }
        let Some(name) = rp.name() else { continue };
        if section.is_ingress() {
            if declared.is_empty() {
                continue;
            }
            let defined = declared.iter().any(|e| {
                e.ports().iter().any(|c| {
                    c.name == name && protos.iter().any(|p| p.eq_ignore_ascii_case(&c.protocol))
                })
            });
            if !defined {
                out.push(
                    NAMED_PORT,
                    file,
                    Some(rp.port.span),
                    format!(
                        "named port `{name}` ({}) is not a container port of {}: ingress names resolve against the pod's own ports, so it resolves to nothing and this rule matches nothing on it",
                        rp.protocol_text(),
                        names_list(declared.iter().map(|e| container_ports_text(e)).collect())
                    ),
                    Some(rule(NAMED_PORT).map_or(String::new(), |r| r.help.to_string())),
                );
            }
            continue;
        }
        // Egress: names resolve across the cluster (§9.5).
        let defs = cx.named_port_defs(&name);
        let numbers: BTreeSet<u16> = defs.iter().map(|(_, p, _)| *p).collect();
        let message = if defs.is_empty() {
            if !cx.cluster_known {
                continue;
            }
            format!(
                "no pod defines a container port named `{name}`: it resolves to nothing, so this rule matches nothing on it"
            )
        } else if numbers.len() > 1 {
            let mut by_number: BTreeMap<u16, Vec<String>> = BTreeMap::new();
            for (ep, port, _) in defs {
                by_number.entry(*port).or_default().push(format!("`{ep}`"));
            }
            let list: Vec<String> = by_number
                .iter()
                .map(|(port, eps)| format!("{port} on {}", names_list(eps.clone())))
                .collect();
            format!(
                "named port `{name}` has different numbers across pods ({}): egress rules resolve names across the cluster, so it resolves to nothing and this rule matches nothing on it",
                list.join("; ")
            )
        } else if !defs.iter().any(|(_, _, proto)| protos.contains(proto)) {
            let declared_as: BTreeSet<&str> = defs.iter().map(|(_, _, p)| p.as_str()).collect();
            format!(
                "named port `{name}` is declared as {} only: with protocol {} it resolves to nothing",
                declared_as.into_iter().collect::<Vec<_>>().join("/"),
                rp.protocol_text()
            )
        } else {
            continue;
        };
        out.push(
            NAMED_PORT,
            file,
            Some(rp.port.span),
            message,
            Some(rule(NAMED_PORT).map_or(String::new(), |r| r.help.to_string())),
        );
    }
}

fn ports(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    match &p.raw {
        RawPolicy::Cilium(_) => {
            for (si, r) in p.cilium_rules() {
                let Some(mr) = p.model_rule(si) else { continue };
                let subjects: Vec<&Ep<'_>> =
                    cx.subject_eps(mr).into_iter().filter(|e| e.pod).collect();
                for section in sections() {
                    for (index, pr) in r.section(section).into_iter().flatten().enumerate() {
                        let raw: Vec<RawPort<'_>> = pr
                            .to_ports
                            .iter()
                            .flatten()
                            .flat_map(|r| r.ports.iter().flatten())
                            .filter_map(|pp| {
                                Some(RawPort {
                                    port: pp.port.as_ref()?,
                                    end: pp.end_port.as_ref().map(|e| e.value),
                                    protocol: pp.protocol.as_ref().map(|s| s.value.as_str()),
                                })
                            })
                            .collect();
                        if raw.is_empty() {
                            continue;
                        }
                        let targets: Vec<&Ep<'_>> = if section.is_ingress() {
                            subjects.clone()
                        } else {
                            let only_endpoints =
                                pr.endpoints.as_ref().is_some_and(|l| !l.is_empty())
                                    || pr.services.as_ref().is_some_and(|l| !l.is_empty());
                            match model_entry(mr, section, index).and_then(|e| cx.peer_ids(e)) {
                                Some(ids) if only_endpoints => cx.pods_with_ids(&ids),
                                _ => vec![],
                            }
                        };
                        check_ports(cx, p.file, section, &targets, &raw, out);
                    }
                }
            }
        }
        RawPolicy::Kube(k) => {
            let Some(mr) = p.rules().next() else { return };
            let subjects: Vec<&Ep<'_>> = cx.subject_eps(mr).into_iter().filter(|e| e.pod).collect();
            for (section, rules) in [
                (RuleSection::Ingress, &k.ingress),
                (RuleSection::Egress, &k.egress),
            ] {
                for (index, kr) in rules.iter().flatten().enumerate() {
                    let raw: Vec<RawPort<'_>> = kr
                        .ports
                        .iter()
                        .flatten()
                        .filter_map(|kp| {
                            Some(RawPort {
                                port: kp.port.as_ref()?,
                                end: kp.end_port.as_ref().map(|e| e.value),
                                protocol: Some(
                                    kp.protocol.as_ref().map_or("TCP", |s| s.value.as_str()),
                                ),
                            })
                        })
                        .collect();
                    if raw.is_empty() {
                        continue;
                    }
                    let targets: Vec<&Ep<'_>> = if section.is_ingress() {
                        subjects.clone()
                    } else {
                        let labels_only = kr.peers.as_ref().is_some_and(|l| {
                            !l.is_empty() && l.iter().all(|peer| peer.ip_block.is_none())
                        });
                        match model_entry(mr, section, index).and_then(|e| cx.peer_ids(e)) {
                            Some(ids) if labels_only => cx.pods_with_ids(&ids),
                            _ => vec![],
                        }
                    };
                    check_ports(cx, p.file, section, &targets, &raw, out);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// MEM021, MEM022, and MEM009 for Gateway backends: `fromEntities: [ingress]`.

fn gateway_entity(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    for (si, r) in p.cilium_rules() {
        let subjects: Vec<&Ep<'_>> = p
            .model_rule(si)
            .map(|m| cx.subject_eps(m).into_iter().filter(|e| e.pod).collect())
            .unwrap_or_default();
        for pr in r.ingress.iter().flatten() {
            let Some(entity) = pr.entities.iter().flatten().find(|e| e.value == "ingress") else {
                continue;
            };
            let raw_ports: Vec<&api::PortProtocol> = pr
                .to_ports
                .iter()
                .flatten()
                .flat_map(|r| r.ports.iter().flatten())
                .collect();
            let allows = |ep: &Ep<'_>, port: u16| -> bool {
                if raw_ports.is_empty() {
                    return true;
                }
                raw_ports.iter().any(|pp| {
                    let proto_ok = pp.protocol.as_ref().is_none_or(|s| {
                        matches!(s.value.to_ascii_uppercase().as_str(), "" | "TCP" | "ANY")
                    });
                    let Some(text) = pp.port.as_ref().map(|s| s.value.trim()) else {
                        return false;
                    };
                    let in_range = match text.parse::<u16>() {
                        Ok(0) => true,
                        Ok(lo) => {
                            let hi = pp
                                .end_port
                                .as_ref()
                                .map(|e| e.value)
                                .filter(|e| *e >= i64::from(lo) && *e <= 65535)
                                .map_or(lo, |e| e as u16);
                            (lo..=hi).contains(&port)
                        }
                        Err(_) => ep
                            .ports()
                            .iter()
                            .any(|c| c.name.eq_ignore_ascii_case(text) && c.port == port),
                    };
                    proto_ok && in_range
                })
            };
            let who = if subjects.is_empty() {
                "the selected endpoints".to_string()
            } else {
                cx.workload_names(&subjects)
            };
            let mut message = format!(
                "`ingress` is the identity of traffic proxied by Cilium's Ingress and Gateway API: this rule admits requests that come through the gateway to {who}, not pods calling {} directly",
                if subjects.len() == 1 { "it" } else { "them" }
            );
            let mut routes: BTreeSet<String> = BTreeSet::new();
            let mut allowed_ports: BTreeSet<u16> = BTreeSet::new();
            for route in &cx.world.scenario.routes {
                for (backend, port) in &route.backends {
                    let Some(ep) = subjects.iter().find(|e| e.name() == backend) else {
                        continue;
                    };
                    routes.insert(format!(
                        "HTTPRoute `{}` sends `{}` from Gateway `{}` to `{backend}` on port {port}",
                        route.route, route.path, route.gateway
                    ));
                    if allows(ep, *port) {
                        allowed_ports.insert(*port);
                    } else {
                        let span = field_span(pr, "toPorts");
                        out.push(
                            PORT_MISMATCH,
                            p.file,
                            Some(span),
                            format!(
                                "Gateway `{}` connects to `{backend}` on port {port} (HTTPRoute `{}`, the Service's targetPort), which this rule does not allow: requests through the gateway are dropped",
                                route.gateway, route.route
                            ),
                            Some(format!("allow port {port}: after service translation the gateway connects to the pod's port, not the Service port")),
                        );
                    }
                }
            }
            if !subjects.is_empty() {
                if routes.is_empty() {
                    let _ = write!(
                        message,
                        "; no Cilium Gateway in these manifests routes to {who}"
                    );
                } else {
                    let _ = write!(
                        message,
                        "; {}",
                        routes.into_iter().collect::<Vec<_>>().join("; ")
                    );
                    if !allowed_ports.is_empty() {
                        let list: Vec<String> = allowed_ports.iter().map(u16::to_string).collect();
                        let _ = write!(
                            message,
                            "; the gateway connects to the Service's targetPort ({}), which this rule allows",
                            list.join(", ")
                        );
                    }
                }
            }
            out.push(
                GATEWAY_ENTITY,
                p.file,
                Some(entity.span),
                message,
                Some(rule(GATEWAY_ENTITY).map_or(String::new(), |r| r.help.to_string())),
            );
            for port_rule in pr.to_ports.iter().flatten() {
                let Some(l7) = &port_rule.rules else { continue };
                if l7.http.is_none() {
                    continue;
                }
                let span = cx.key_span(p.file, l7.span, "http").unwrap_or(l7.span);
                out.push(
                    SECOND_PASS,
                    p.file,
                    Some(span),
                    format!(
                        "HTTP rules on traffic from the gateway: each request is proxied twice, by the gateway's Envoy and again by the Envoy on the node of {who}; a request these rules do not allow gets 403 `Access denied` from that second proxy (an L7 DENIED in Hubble), not a drop"
                    ),
                    Some(rule(SECOND_PASS).map_or(String::new(), |r| r.help.to_string())),
                );
            }
        }
    }
}

/// Where a rule's lists for one direction are written (`ingress:`, `egressDeny:`, ...).
fn direction_span(
    cx: &Cx<'_>,
    view: &PolicyView<'_>,
    spec_index: Option<usize>,
    d: Direction,
) -> Span {
    let fallback = view.name_span();
    match &view.raw {
        RawPolicy::Cilium(_) => {
            let Some((_, raw)) = view
                .cilium_rules()
                .into_iter()
                .find(|(i, _)| *i == spec_index)
            else {
                return fallback;
            };
            let (allow, deny) = match d {
                Direction::Ingress => (RuleSection::Ingress, RuleSection::IngressDeny),
                Direction::Egress => (RuleSection::Egress, RuleSection::EgressDeny),
            };
            let section = if raw.section(allow).is_some_and(|l| !l.is_empty()) {
                allow
            } else if raw.section(deny).is_some_and(|l| !l.is_empty()) {
                deny
            } else {
                allow
            };
            cx.key_span(view.file, raw.span, section_name(section))
                .unwrap_or(raw.span)
        }
        RawPolicy::Kube(k) => {
            let spec = cx
                .map_at(view.file, k.span)
                .and_then(|n| n.get("spec"))
                .and_then(Node::as_map);
            let find = |key: &str| {
                spec.and_then(|m| {
                    m.iter()
                        .find(|(k, _)| k.scalar_text() == Some(key))
                        .map(|(k, _)| k.span)
                })
            };
            find(d.as_str())
                .or_else(|| find("policyTypes"))
                .or_else(|| find("podSelector"))
                .unwrap_or(fallback)
        }
    }
}

fn describe_entry(cx: &Cx<'_>, o: &model::Origin) -> String {
    let o = match o {
        model::Origin::Rule(e) => e,
        model::Origin::DefaultAllow { rule, .. } => {
            return format!("`enableDefaultDeny: false` of {rule}");
        }
        model::Origin::AllowLocalhost => return "the agent's allow-localhost".to_string(),
    };
    format!(
        "`{}[{}]` of {} ({}:{})",
        o.section.field_name(),
        o.index,
        o.rule,
        cx.file_name(o.rule.policy.file),
        o.span.line
    )
}

// ---------------------------------------------------------------------------------------
// MEM007: toFQDNs without DNS rules.

fn has_dns_rules(p: &PolicyView<'_>) -> bool {
    p.cilium_rules().iter().any(|(_, r)| {
        r.egress.iter().flatten().any(|pr| {
            pr.to_ports
                .iter()
                .flatten()
                .any(|x| x.rules.as_ref().is_some_and(|l| l.dns.is_some()))
        })
    })
}

fn fqdns(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    let Some((_, dns_id)) = cx.dns else { return };
    let help = || Some(rule(FQDN_NO_DNS).map_or(String::new(), |r| r.help.to_string()));
    for (si, r) in p.cilium_rules() {
        let subjects: Vec<&Ep<'_>> = p
            .model_rule(si)
            .map(|m| cx.subject_eps(m).into_iter().filter(|e| e.pod).collect())
            .unwrap_or_default();
        for pr in r.egress.iter().flatten() {
            let Some(list) = pr.fqdns.as_ref().filter(|l| !l.is_empty()) else {
                continue;
            };
            let span = field_span(pr, "toFQDNs");
            let names: Vec<&str> = list
                .iter()
                .filter_map(|f| f.match_name.as_ref().map(|n| n.value.as_str()))
                .collect();
            if !p.t.valid || subjects.is_empty() {
                if !has_dns_rules(p) {
                    out.push(
                        FQDN_NO_DNS,
                        p.file,
                        Some(span),
                        "toFQDNs only selects addresses learned from DNS answers that went through Cilium's DNS proxy, and this policy has no DNS rules (`rules: {dns: ...}`) on the way to kube-dns: unless another policy adds them for these pods, no address is ever learned and this rule allows nothing",
                        help(),
                    );
                }
                continue;
            }
            let mut unproxied: Vec<&Ep<'_>> = Vec::new();
            let mut refused: BTreeMap<&str, Vec<&Ep<'_>>> = BTreeMap::new();
            for (pol, group) in cx.by_policy(&subjects, Direction::Egress) {
                match pol.lookup(dns_id, 17, 53) {
                    Some(res) if !res.value.deny => {
                        let d = res.value.l7();
                        let dns: Vec<_> = d.policies.iter().filter(|l| l.dns.is_some()).collect();
                        if dns.is_empty() {
                            unproxied.extend(group);
                            continue;
                        }
                        for n in &names {
                            let ok = d.dns_wildcard
                                || dns
                                    .iter()
                                    .any(|l| l.dns.iter().flatten().any(|m| m.matches(n)));
                            if !ok {
                                refused.entry(n).or_default().extend(group.iter().copied());
                            }
                        }
                    }
                    _ => unproxied.extend(group),
                }
            }
            if !unproxied.is_empty() {
                out.push(
                    FQDN_NO_DNS,
                    p.file,
                    Some(span),
                    format!(
                        "toFQDNs only selects addresses learned from DNS answers that went through Cilium's DNS proxy, but DNS from {} to kube-dns does not go through it (no allowed egress on 53/UDP with `rules.dns`): no address is ever learned, so this rule allows nothing",
                        cx.workload_names(&unproxied)
                    ),
                    help(),
                );
            }
            for (name, eps) in refused {
                out.push(
                    FQDN_NO_DNS,
                    p.file,
                    Some(span),
                    format!(
                        "the DNS rules for {} refuse `{name}`: its addresses are never learned, so this toFQDNs entry never allows them",
                        cx.workload_names(&eps)
                    ),
                    Some(format!("add `matchName: {name}` (or a pattern that covers it) to the DNS rules towards kube-dns")),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// MEM008: DNS on UDP only.

fn dns_udp_only(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    let Some((_, dns_id)) = cx.dns else { return };
    let is_53 = |pp: &api::PortProtocol| pp.port.as_ref().is_some_and(|s| s.value.trim() == "53");
    let proto = |pp: &api::PortProtocol| {
        pp.protocol
            .as_ref()
            .map_or(String::new(), |s| s.value.to_ascii_uppercase())
    };
    let static_tcp = p.cilium_rules().iter().any(|(_, r)| {
        r.egress.iter().flatten().any(|pr| {
            pr.to_ports
                .iter()
                .flatten()
                .flat_map(|x| x.ports.iter().flatten())
                .any(|pp| is_53(pp) && matches!(proto(pp).as_str(), "" | "ANY" | "TCP"))
        })
    });
    for (si, r) in p.cilium_rules() {
        let mr = p.model_rule(si);
        let subjects: Vec<&Ep<'_>> = mr
            .map(|m| cx.subject_eps(m).into_iter().filter(|e| e.pod).collect())
            .unwrap_or_default();
        for (index, pr) in r.egress.iter().flatten().enumerate() {
            let dns_rules = pr
                .to_ports
                .iter()
                .flatten()
                .any(|x| x.rules.as_ref().is_some_and(|l| l.dns.is_some()));
            let to_dns = dns_rules
                || mr
                    .and_then(|m| model_entry(m, RuleSection::Egress, index))
                    .and_then(|e| cx.peer_ids(e))
                    .is_some_and(|ids| ids.contains(&dns_id));
            if !to_dns {
                continue;
            }
            for pp in pr
                .to_ports
                .iter()
                .flatten()
                .flat_map(|x| x.ports.iter().flatten())
            {
                if !is_53(pp) || proto(pp) != "UDP" {
                    continue;
                }
                let who = if p.t.valid && !subjects.is_empty() {
                    let missing: Vec<&Ep<'_>> = cx
                        .by_policy(&subjects, Direction::Egress)
                        .into_iter()
                        .filter(|(pol, _)| pol.lookup(dns_id, 6, 53).is_none_or(|r| r.value.deny))
                        .flat_map(|(_, group)| group)
                        .collect();
                    if missing.is_empty() {
                        continue;
                    }
                    format!(" for {}", cx.workload_names(&missing))
                } else if static_tcp {
                    continue;
                } else {
                    String::new()
                };
                let span = pp.port.as_ref().map_or(pp.span, |s| s.span);
                out.push(
                    DNS_UDP_ONLY,
                    p.file,
                    Some(span),
                    format!(
                        "DNS to kube-dns is allowed on 53/UDP only{who}: answers that do not fit in a UDP message are truncated and retried over TCP, and those connections are dropped"
                    ),
                    Some(rule(DNS_UDP_ONLY).map_or(String::new(), |r| r.help.to_string())),
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// MEM014 for subjects.

fn subjects_matching_nothing(cx: &Cx<'_>, p: &PolicyView<'_>, skip: bool, out: &mut Out) {
    if !cx.cluster_known || skip {
        return;
    }
    for mr in p.rules() {
        let model::Subject::Endpoints(sel) = &mr.subject else {
            continue;
        };
        // One match per identity, not per endpoint.
        if cx.groups.iter().any(|(labels, _)| sel.matches(labels)) {
            continue;
        }
        let (span, field) = match &p.raw {
            RawPolicy::Cilium(_) => (
                p.cilium_rules()
                    .into_iter()
                    .find(|(i, _)| *i == mr.origin.spec_index)
                    .and_then(|(_, r)| r.endpoint_selector.as_ref().map(|s| s.span)),
                "endpointSelector",
            ),
            RawPolicy::Kube(k) => (k.pod_selector.as_ref().map(|s| s.span), "podSelector"),
        };
        let mut message = format!("{field} `{sel}` selects no workload in the loaded manifests");
        let mut help = rule(SELECTS_NOTHING).map_or(String::new(), |r| r.help.to_string());
        if let Some(ns) = p.namespace() {
            let pods = cx.selected_pods(&without_namespace(sel));
            if !pods.is_empty() {
                let namespaces: BTreeSet<&str> =
                    pods.iter().map(|e| e.spec.namespace.as_str()).collect();
                let kind = match p.kind() {
                    PolicyKind::NetworkPolicy => "a NetworkPolicy",
                    _ => "a CiliumNetworkPolicy",
                };
                let _ = write!(
                    message,
                    ": pods with these labels run in {} {} ({}), but {kind} only selects pods of its own namespace `{ns}`",
                    plural(namespaces.len(), "namespace", "namespaces"),
                    names_list(namespaces.iter().map(|n| format!("`{n}`")).collect()),
                    cx.workload_names(&pods)
                );
                if let Some(first) = namespaces.iter().next() {
                    help = format!("set `metadata.namespace: {first}` (one policy per namespace)");
                }
            }
        }
        for r in &sel.requirements {
            let k8s_or_any = r.key.source.is_none() || r.key.source.as_deref() == Some(SOURCE_K8S);
            if k8s_or_any && !is_identity_label(&r.key.key) {
                let _ = write!(
                    message,
                    "; `{}` is not part of identities (Cilium's label filter drops it)",
                    r.key.key
                );
            }
        }
        out.push(
            SELECTS_NOTHING,
            p.file,
            Some(span.unwrap_or_else(|| p.name_span())),
            message,
            Some(help),
        );
    }
}

// ---------------------------------------------------------------------------------------
// MEM006: egress default deny without DNS.

fn dns_reachability(cx: &Cx<'_>, out: &mut Out) {
    let Some((dns_i, dns_id)) = cx.dns else {
        return;
    };
    let dns_name = cx.eps[dns_i].name().to_string();
    type Group<'e, 'a> = (std::sync::Arc<model::RuleOrigin>, Vec<&'e Ep<'a>>);
    let mut by_rule: BTreeMap<(FileId, u32), Group<'_, '_>> = BTreeMap::new();
    let candidates: Vec<&Ep<'_>> = cx
        .eps
        .iter()
        .enumerate()
        .filter(|(i, ep)| ep.pod && *i != dns_i && !ep.spec.host_network)
        .map(|(_, ep)| ep)
        .collect();
    for (pol, eps) in cx.by_policy(&candidates, Direction::Egress) {
        if !pol.enforced || !pol.default_deny {
            continue;
        }
        if pol.lookup(dns_id, 17, 53).is_some_and(|r| !r.value.deny) {
            continue;
        }
        let Enforcement::Selected { rules } = &pol.enforcement else {
            continue;
        };
        let Some(ro) = rules.first() else { continue };
        by_rule
            .entry((ro.policy.file, ro.span.offset))
            .or_insert_with(|| (ro.clone(), Vec::new()))
            .1
            .extend(eps);
    }
    for (_, (ro, eps)) in by_rule {
        let Some(view) = cx.view_of(&ro.policy) else {
            continue;
        };
        let span = direction_span(cx, view, ro.spec_index, Direction::Egress);
        out.push(
            NO_DNS,
            view.file,
            Some(span),
            format!(
                "egress of {} is default deny (this rule enforces it) and no rule lets {} reach kube-dns (`{dns_name}`) on 53/UDP: name resolution fails",
                cx.workload_names(&eps),
                if eps.len() == 1 { "it" } else { "them" }
            ),
            Some(rule(NO_DNS).map_or(String::new(), |r| r.help.to_string())),
        );
    }

    // Policies meant as an egress default deny that are not in effect (rejected, or
    // selecting nothing): would DNS still work once they are?
    let any_dns_allow = cx
        .policies
        .iter()
        .filter(|p| p.t.valid)
        .flat_map(|p| p.t.rules.iter())
        .flat_map(|r| r.entries.iter())
        .any(|e| {
            e.direction == Direction::Egress
                && !e.deny
                && !e.allows_nothing()
                && cx.peer_ids(e).is_none_or(|ids| ids.contains(&dns_id))
                && e.ports.as_ref().is_none_or(|prs| {
                    prs.iter().any(|pr| {
                        pr.ports.iter().any(|s| {
                            s.protocol == model::Protocol::Udp
                                && matches!(s.port, PortValue::Range(lo, hi) if lo <= 53 && 53 <= hi)
                        })
                    })
                })
        });
    if any_dns_allow {
        return;
    }
    let message = "this rule is meant to put egress into default deny, but no policy allows DNS to kube-dns on 53/UDP (and 53/TCP): once the default deny takes effect, name resolution fails";
    for p in &cx.policies {
        let effective = p.t.valid && p.t.rules.iter().any(|r| !cx.subject_eps(r).is_empty());
        if effective {
            continue;
        }
        match &p.raw {
            RawPolicy::Cilium(_) => {
                for (_, r) in p.cilium_rules() {
                    if deny_intent(r).contains(&Direction::Egress) {
                        let span = cx.key_span(p.file, r.span, "egress").unwrap_or(r.span);
                        out.push(
                            NO_DNS,
                            p.file,
                            Some(span),
                            message,
                            Some(rule(NO_DNS).map_or(String::new(), |r| r.help.to_string())),
                        );
                    }
                }
            }
            RawPolicy::Kube(k) => {
                let egress_type = k.policy_types.iter().flatten().any(|t| t.value == "Egress");
                if egress_type && k.egress.as_ref().is_none_or(Vec::is_empty) {
                    let span = direction_span(cx, p, None, Direction::Egress);
                    out.push(
                        NO_DNS,
                        p.file,
                        Some(span),
                        message,
                        Some(rule(NO_DNS).map_or(String::new(), |r| r.help.to_string())),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// MEM020: default deny by an allow rule.

fn explicit_deny(cx: &Cx<'_>, ro: &model::RuleOrigin, d: Direction) -> bool {
    let Some(view) = cx.view_of(&ro.policy) else {
        return true;
    };
    match &view.raw {
        RawPolicy::Kube(_) => true,
        RawPolicy::Cilium(_) => view
            .cilium_rules()
            .into_iter()
            .find(|(i, _)| *i == ro.spec_index)
            .is_none_or(|(_, r)| {
                deny_intent(r).contains(&d)
                    || match d {
                        Direction::Ingress => r.enable_default_deny_ingress == Some(true),
                        Direction::Egress => r.enable_default_deny_egress == Some(true),
                    }
            }),
    }
}

fn implicit_default_deny(cx: &Cx<'_>, out: &mut Out) {
    type Group<'e, 'a> = (std::sync::Arc<model::RuleOrigin>, usize, Vec<&'e Ep<'a>>);
    let mut by_rule: BTreeMap<(FileId, u32, Direction), Group<'_, '_>> = BTreeMap::new();
    let candidates: Vec<&Ep<'_>> = cx
        .eps
        .iter()
        .filter(|e| e.pod && !e.spec.host_network)
        .collect();
    for d in [Direction::Ingress, Direction::Egress] {
        for (pol, eps) in cx.by_policy(&candidates, d) {
            if !pol.enforced || !pol.default_deny {
                continue;
            }
            let Enforcement::Selected { rules } = &pol.enforcement else {
                continue;
            };
            if rules.iter().any(|ro| explicit_deny(cx, ro, d)) {
                continue;
            }
            let Some(ro) = rules.first() else { continue };
            by_rule
                .entry((ro.policy.file, ro.span.offset, d))
                .or_insert_with(|| (ro.clone(), rules.len(), Vec::new()))
                .2
                .extend(eps);
        }
    }
    for ((_, _, d), (ro, count, eps)) in by_rule {
        let Some(view) = cx.view_of(&ro.policy) else {
            continue;
        };
        let span = direction_span(cx, view, ro.spec_index, d);
        let who = cx.workload_names(&eps);
        let lead = if count == 1 {
            format!("this rule alone puts {who} into {d} default deny")
        } else {
            format!(
                "this rule and {} other {} put {who} into {d} default deny, and none of them says so",
                count - 1,
                plural(count - 1, "rule", "rules")
            )
        };
        let consequence = match d {
            Direction::Ingress => {
                "every source and port it does not allow is now dropped silently (no 403), pods of the same namespace included; only kubelet probes from the local node still pass"
            }
            Direction::Egress => {
                "every destination and port it does not allow is now dropped, DNS included"
            }
        };
        out.push(
            IMPLICIT_DENY,
            view.file,
            Some(span),
            format!("{lead}: {consequence}"),
            Some(rule(IMPLICIT_DENY).map_or(String::new(), |r| r.help.to_string())),
        );
    }
}

// ---------------------------------------------------------------------------------------
// MEM015: shadowed rules.

/// Bounds the lookups of one check, so that big clusters stay fast (the check is skipped).
const MAX_LOOKUPS: usize = 200_000;

fn shadowed(cx: &Cx<'_>, out: &mut Out) {
    let all_ids: Vec<IdentityId> = cx.world.identities().iter().map(|i| i.id).collect();
    let any_deny = cx
        .policies
        .iter()
        .filter(|p| p.t.valid)
        .flat_map(|p| p.t.rules.iter())
        .flat_map(|r| r.entries.iter())
        .any(|e| e.deny);
    for p in cx.policies.iter().filter(|p| p.t.valid) {
        for mr in &p.t.rules {
            let eps = cx.subject_eps(mr);
            if eps.is_empty() {
                continue;
            }
            for e in mr.entries.iter().filter(|e| !e.deny && !e.allows_nothing()) {
                let by_policy = cx.by_policy(&eps, e.direction);
                let ids = cx.peer_ids(e).unwrap_or_else(|| all_ids.clone());
                if ids.is_empty() {
                    continue;
                }
                for prule in e.ports.iter().flatten() {
                    let Some(l7) = &prule.l7 else { continue };
                    if l7.http.is_none() {
                        continue;
                    }
                    let mut checked = 0usize;
                    let mut all = true;
                    let mut by: BTreeSet<String> = BTreeSet::new();
                    'eps: for (pol, _) in &by_policy {
                        for id in &ids {
                            if e.direction == Direction::Ingress && *id == identity::HOST {
                                continue;
                            }
                            for spec in &prule.ports {
                                let PortValue::Range(lo, _) = spec.port else {
                                    continue;
                                };
                                let Some(res) = pol.lookup(*id, spec.protocol.number(), lo) else {
                                    all = false;
                                    break 'eps;
                                };
                                if res.value.deny {
                                    continue;
                                }
                                checked += 1;
                                let plain: Vec<_> = res
                                    .value
                                    .contributions
                                    .iter()
                                    .filter(|c| {
                                        !c.deny
                                            && c.l7.is_none()
                                            && c.origin != model::Origin::AllowLocalhost
                                    })
                                    .collect();
                                if plain.is_empty() || checked > MAX_LOOKUPS {
                                    all = false;
                                    break 'eps;
                                }
                                by.extend(plain.iter().map(|c| describe_entry(cx, &c.origin)));
                            }
                        }
                    }
                    if all && checked > 0 {
                        let span = cx.key_span(p.file, l7.span, "http").unwrap_or(l7.span);
                        out.push(
                            SHADOWED,
                            p.file,
                            Some(span),
                            format!(
                                "these HTTP rules have no effect: {} {} the same peers on the same port without L7 rules, which wildcards L7 (every request passes, still through the proxy)",
                                names_list(by.into_iter().collect()),
                                "allows"
                            ),
                            Some("put the HTTP rules on the other allow as well, or narrow its peers or ports".into()),
                        );
                    }
                }
                if !any_deny {
                    continue;
                }
                let mut probes: Vec<(u8, u16)> = Vec::new();
                if e.ports.is_none() && e.icmps.is_none() {
                    probes.extend([(6, 80), (6, 443), (17, 53), (132, 80)]);
                }
                for prule in e.ports.iter().flatten() {
                    for spec in &prule.ports {
                        if let PortValue::Range(lo, hi) = spec.port {
                            probes.push((spec.protocol.number(), lo));
                            probes.push((spec.protocol.number(), hi));
                        }
                    }
                }
                for icmp in e.icmps.iter().flatten() {
                    let proto = if icmp.v6 { 58 } else { 1 };
                    probes.push((proto, u16::from(icmp.icmp_type)));
                }
                if probes.is_empty() {
                    continue;
                }
                let mut checked = 0usize;
                let mut all = true;
                let mut deniers: BTreeSet<String> = BTreeSet::new();
                'eps2: for (pol, _) in &by_policy {
                    for id in &ids {
                        for (proto, port) in &probes {
                            match pol.lookup(*id, *proto, *port) {
                                Some(res) if res.value.deny && checked <= MAX_LOOKUPS => {
                                    checked += 1;
                                    deniers.extend(
                                        res.value.deciding().map(|c| describe_entry(cx, &c.origin)),
                                    );
                                }
                                _ => {
                                    all = false;
                                    break 'eps2;
                                }
                            }
                        }
                    }
                }
                if all && checked > 0 {
                    out.push(
                        SHADOWED,
                        p.file,
                        Some(e.origin.span),
                        format!(
                            "this allow never takes effect: {} {} every peer and port it allows, and deny wins",
                            names_list(deniers.into_iter().collect()),
                            "denies"
                        ),
                        Some("remove the allow, or narrow the deny".into()),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, siblings: &[&str], routes: &[&str]) -> Option<String> {
        path_problem(p, siblings, routes).map(|(m, _)| m)
    }

    #[test]
    fn paths_that_look_like_prefixes() {
        assert!(
            path("/api", &[], &["/api"]).is_some(),
            "behind a PathPrefix route"
        );
        assert!(
            path("/api", &["/api", "/api/users"], &[]).is_some(),
            "siblings under it"
        );
        assert!(path("/api/", &[], &[]).is_some(), "a trailing slash");
        assert!(path("/", &[], &[]).is_some(), "the root only");
        assert!(path("/api/register", &["/api", "/api/register"], &["/api"]).is_none());
        assert!(path("/health", &[], &[]).is_none(), "a plain exact path");
        for ok in [
            "/api(/.*)?",
            "/api/.*",
            "/api.*",
            ".*",
            "^/api$",
            "/api(\\?.*)?",
        ] {
            assert!(path(ok, &[], &["/api"]).is_none(), "{ok}");
        }
    }

    #[test]
    fn paths_that_never_match() {
        assert!(path("api/v1", &[], &[]).is_some(), "no leading slash");
        assert!(path("/static/*", &[], &[]).is_some(), "a glob");
        assert!(path("/search?q=.*", &[], &[]).is_some(), "an unescaped `?`");
        assert!(path("/search\\?q=.*", &[], &[]).is_none(), "an escaped `?`");
        assert!(path("/a(/b)?", &[], &[]).is_none(), "`?` after a group");
    }

    #[test]
    fn methods() {
        assert!(method_problem("get").is_some());
        assert!(method_problem("GET|post").is_some());
        assert!(method_problem("GET,POST").is_some());
        assert!(method_problem("GET|HEAD").is_none());
        assert!(
            method_problem("[A-Z]+").is_none(),
            "a class is not a method name"
        );
    }

    #[test]
    fn every_rule_in_order() {
        for (i, r) in RULES.iter().enumerate() {
            assert_eq!(r.id, format!("MEM{:03}", i + 1));
            assert_eq!(rule(r.id).map(|x| x.name), Some(r.name));
        }
    }
}
