//! The policy resources as written (Cilium v1.17 schema), decoded with positions.
//!
//! Nil and empty are kept apart (`Option<Vec<_>>`): in Cilium `ingress: []` and an absent
//! `ingress` mean something different from `ingress: [{}]`.

use crate::decode::{Decoder, Fields, Spanned};
use crate::yaml::{Node, Span};

pub type SString = Spanned<String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
    NetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CNP",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CCNP",
            PolicyKind::NetworkPolicy => "KNP",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ObjectMeta {
    pub name: Option<SString>,
    pub namespace: Option<SString>,
    pub uid: Option<String>,
    pub labels: Vec<(SString, SString)>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct LabelSelector {
    pub match_labels: Vec<(SString, SString)>,
    pub match_expressions: Vec<SelectorRequirement>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct SelectorRequirement {
    pub key: SString,
    pub operator: SString,
    pub values: Vec<SString>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleSection {
    Ingress,
    IngressDeny,
    Egress,
    EgressDeny,
}

impl RuleSection {
    pub fn is_ingress(self) -> bool {
        matches!(self, RuleSection::Ingress | RuleSection::IngressDeny)
    }
    pub fn is_deny(self) -> bool {
        matches!(self, RuleSection::IngressDeny | RuleSection::EgressDeny)
    }
    pub fn field_name(self) -> &'static str {
        match self {
            RuleSection::Ingress => "ingress",
            RuleSection::IngressDeny => "ingressDeny",
            RuleSection::Egress => "egress",
            RuleSection::EgressDeny => "egressDeny",
        }
    }
}

/// A CNP/CCNP `Rule`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub endpoint_selector: Option<LabelSelector>,
    pub node_selector: Option<LabelSelector>,
    pub ingress: Option<Vec<PeerRule>>,
    pub ingress_deny: Option<Vec<PeerRule>>,
    pub egress: Option<Vec<PeerRule>>,
    pub egress_deny: Option<Vec<PeerRule>>,
    pub labels: Vec<SString>,
    pub enable_default_deny_ingress: Option<bool>,
    pub enable_default_deny_egress: Option<bool>,
    pub description: Option<String>,
    pub log: Option<SString>,
    pub span: Span,
}

impl Rule {
    pub fn section(&self, s: RuleSection) -> Option<&Vec<PeerRule>> {
        match s {
            RuleSection::Ingress => self.ingress.as_ref(),
            RuleSection::IngressDeny => self.ingress_deny.as_ref(),
            RuleSection::Egress => self.egress.as_ref(),
            RuleSection::EgressDeny => self.egress_deny.as_ref(),
        }
    }
}

/// One entry of `ingress`, `ingressDeny`, `egress` or `egressDeny`. The peer fields are
/// stored direction-neutral (`endpoints` is `fromEndpoints` or `toEndpoints`).
#[derive(Debug, Clone)]
pub struct PeerRule {
    pub section: RuleSection,
    pub endpoints: Option<Vec<LabelSelector>>,
    pub requires: Option<Vec<LabelSelector>>,
    pub cidr: Option<Vec<SString>>,
    pub cidr_set: Option<Vec<CidrRule>>,
    pub entities: Option<Vec<SString>>,
    pub nodes: Option<Vec<LabelSelector>>,
    pub groups: Option<Vec<Span>>,
    pub services: Option<Vec<ServiceSelector>>,
    pub fqdns: Option<Vec<FqdnSelector>>,
    pub to_ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<IcmpRule>>,
    pub authentication: Option<SString>,
    pub span: Span,
    /// Positions of the fields as written, for messages naming the field.
    pub field_spans: Vec<(&'static str, Span)>,
}

impl PeerRule {
    pub fn field_span(&self, name: &str) -> Option<Span> {
        self.field_spans
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| *s)
    }
}

#[derive(Debug, Clone)]
pub struct CidrRule {
    pub cidr: Option<SString>,
    pub group_ref: Option<SString>,
    pub group_selector: Option<LabelSelector>,
    pub except: Vec<SString>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum ServiceSelector {
    Name {
        name: SString,
        namespace: Option<SString>,
        span: Span,
    },
    Selector {
        selector: LabelSelector,
        namespace: Option<SString>,
        span: Span,
    },
}

#[derive(Debug, Clone)]
pub struct FqdnSelector {
    pub match_name: Option<SString>,
    pub match_pattern: Option<SString>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct PortRule {
    pub ports: Option<Vec<PortProtocol>>,
    pub terminating_tls: Option<TlsContext>,
    pub originating_tls: Option<TlsContext>,
    pub server_names: Option<Vec<SString>>,
    pub listener: Option<Listener>,
    pub rules: Option<L7Rules>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct PortProtocol {
    pub port: Option<SString>,
    pub end_port: Option<Spanned<i64>>,
    pub protocol: Option<SString>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct TlsContext {
    pub secret: Option<SecretRef>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct SecretRef {
    pub namespace: Option<SString>,
    pub name: SString,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: SString,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct L7Rules {
    pub http: Option<Vec<HttpRule>>,
    pub kafka: Option<Vec<Span>>,
    pub dns: Option<Vec<FqdnSelector>>,
    pub l7proto: Option<SString>,
    pub l7: Option<Vec<Vec<(SString, SString)>>>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct HttpRule {
    pub path: Option<SString>,
    pub method: Option<SString>,
    pub host: Option<SString>,
    pub headers: Vec<SString>,
    pub header_matches: Vec<HeaderMatch>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: Option<SString>,
    pub value: Option<SString>,
    pub secret: Option<SecretRef>,
    pub mismatch: Option<SString>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct IcmpRule {
    pub fields: Vec<IcmpField>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct IcmpField {
    pub family: Option<SString>,
    pub icmp_type: SString,
    pub span: Span,
}

/// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
#[derive(Debug, Clone)]
pub struct CiliumPolicy {
    /// The object had schema errors: the API server would refuse it, so it is never enforced.
    pub schema_errors: bool,
    pub kind: PolicyKind,
    pub meta: ObjectMeta,
    pub spec: Option<Rule>,
    pub specs: Option<Vec<Rule>>,
    pub span: Span,
}

/// A networking.k8s.io/v1 NetworkPolicy.
#[derive(Debug, Clone)]
pub struct KubePolicy {
    /// As for [`CiliumPolicy::schema_errors`].
    pub schema_errors: bool,
    pub meta: ObjectMeta,
    pub pod_selector: Option<LabelSelector>,
    pub policy_types: Option<Vec<SString>>,
    pub ingress: Option<Vec<KnpRule>>,
    pub egress: Option<Vec<KnpRule>>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct KnpRule {
    pub peers: Option<Vec<KnpPeer>>,
    pub ports: Option<Vec<KnpPort>>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct KnpPeer {
    pub pod_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
    pub ip_block: Option<IpBlock>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct IpBlock {
    pub cidr: SString,
    pub except: Vec<SString>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct KnpPort {
    pub protocol: Option<SString>,
    pub port: Option<SString>,
    pub end_port: Option<Spanned<i64>>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct CidrGroup {
    pub meta: ObjectMeta,
    pub external_cidrs: Vec<SString>,
    pub span: Span,
}

/// Any resource found in a manifest.
#[derive(Debug, Clone)]
pub enum Resource {
    Cilium(Box<CiliumPolicy>),
    Kube(Box<KubePolicy>),
    CidrGroup(CidrGroup),
    /// Kinds the policy engine does not read (Pods, Deployments, ...); kept for the cluster
    /// loader.
    Other {
        api_version: String,
        kind: String,
        node: Node,
    },
}

const META_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

pub fn decode_meta(d: &mut Decoder, node: &Node) -> ObjectMeta {
    let mut meta = ObjectMeta {
        span: node.span,
        ..Default::default()
    };
    let Some(mut f) = d.fields(node, "metadata") else {
        return meta;
    };
    meta.name = f.get("name").and_then(|n| d.string(n, "metadata.name"));
    meta.namespace = f
        .get("namespace")
        .and_then(|n| d.string(n, "metadata.namespace"));
    meta.uid = f
        .get("uid")
        .and_then(|n| d.string(n, "metadata.uid"))
        .map(|s| s.value);
    meta.labels = f
        .get("labels")
        .map(|n| d.string_map(n, "metadata.labels"))
        .unwrap_or_default();
    f.ignore(&META_FIELDS[3..]);
    f.finish(d, "metadata", META_FIELDS);
    meta
}

const SELECTOR_FIELDS: &[&str] = &["matchLabels", "matchExpressions"];

pub fn decode_selector(d: &mut Decoder, node: &Node, what: &str) -> Option<LabelSelector> {
    let mut f = d.fields(node, what)?;
    let match_labels = f
        .get("matchLabels")
        .map(|n| d.string_map(n, "matchLabels"))
        .unwrap_or_default();
    let match_expressions = f
        .get("matchExpressions")
        .and_then(|n| d.list(n, "matchExpressions", decode_requirement))
        .unwrap_or_default();
    let span = f.span;
    f.finish(d, what, SELECTOR_FIELDS);
    Some(LabelSelector {
        match_labels,
        match_expressions,
        span,
    })
}

fn decode_requirement(d: &mut Decoder, node: &Node) -> Option<SelectorRequirement> {
    let mut f = d.fields(node, "a matchExpressions entry")?;
    let key = f.get("key").and_then(|n| d.string(n, "key"));
    let operator = f.get("operator").and_then(|n| d.string(n, "operator"));
    let values = f
        .get("values")
        .and_then(|n| d.string_list(n, "values"))
        .unwrap_or_default();
    let span = f.span;
    f.finish(
        d,
        "a matchExpressions entry",
        &["key", "operator", "values"],
    );
    let Some(key) = key else {
        d.error("matchExpressions entry needs a `key`", span);
        return None;
    };
    let Some(operator) = operator else {
        d.error_help(
            "matchExpressions entry needs an `operator`",
            span,
            "use one of In, NotIn, Exists, DoesNotExist",
        );
        return None;
    };
    Some(SelectorRequirement {
        key,
        operator,
        values,
        span,
    })
}

fn selector_list(d: &mut Decoder, node: &Node, what: &str) -> Option<Vec<LabelSelector>> {
    d.list(node, what, |d, n| decode_selector(d, n, what))
}

const RULE_FIELDS: &[&str] = &[
    "endpointSelector",
    "nodeSelector",
    "ingress",
    "ingressDeny",
    "egress",
    "egressDeny",
    "labels",
    "enableDefaultDeny",
    "description",
    "log",
];

pub fn decode_rule(d: &mut Decoder, node: &Node) -> Option<Rule> {
    let mut f = d.fields(node, "a policy rule")?;
    let endpoint_selector = f
        .get("endpointSelector")
        .and_then(|n| decode_selector(d, n, "endpointSelector"));
    let node_selector = f
        .get("nodeSelector")
        .and_then(|n| decode_selector(d, n, "nodeSelector"));
    let ingress = f.get("ingress").and_then(|n| {
        d.list(n, "ingress", |d, n| {
            decode_peer_rule(d, n, RuleSection::Ingress)
        })
    });
    let ingress_deny = f.get("ingressDeny").and_then(|n| {
        d.list(n, "ingressDeny", |d, n| {
            decode_peer_rule(d, n, RuleSection::IngressDeny)
        })
    });
    let egress = f.get("egress").and_then(|n| {
        d.list(n, "egress", |d, n| {
            decode_peer_rule(d, n, RuleSection::Egress)
        })
    });
    let egress_deny = f.get("egressDeny").and_then(|n| {
        d.list(n, "egressDeny", |d, n| {
            decode_peer_rule(d, n, RuleSection::EgressDeny)
        })
    });
    let labels = f
        .get("labels")
        .and_then(|n| d.list(n, "labels", decode_rule_label))
        .unwrap_or_default();
    let (mut edd_in, mut edd_eg) = (None, None);
    if let Some(n) = f.get("enableDefaultDeny")
        && let Some(mut e) = d.fields(n, "enableDefaultDeny")
    {
        edd_in = e
            .get("ingress")
            .and_then(|n| d.bool(n, "enableDefaultDeny.ingress"));
        edd_eg = e
            .get("egress")
            .and_then(|n| d.bool(n, "enableDefaultDeny.egress"));
        e.finish(d, "enableDefaultDeny", &["ingress", "egress"]);
    }
    let description = f
        .get("description")
        .and_then(|n| d.string(n, "description"))
        .map(|s| s.value);
    let mut log = None;
    if let Some(n) = f.get("log")
        && let Some(mut l) = d.fields(n, "log")
    {
        log = l.get("value").and_then(|n| d.string(n, "log.value"));
        l.finish(d, "log", &["value"]);
    }
    let span = f.span;
    f.finish(d, "a policy rule", RULE_FIELDS);
    Some(Rule {
        endpoint_selector,
        node_selector,
        ingress,
        ingress_deny,
        egress,
        egress_deny,
        labels,
        enable_default_deny_ingress: edd_in,
        enable_default_deny_egress: edd_eg,
        description,
        log,
        span,
    })
}

/// Rule labels come as `"source:key=value"` strings or `{key, value, source}` objects.
fn decode_rule_label(d: &mut Decoder, node: &Node) -> Option<SString> {
    if node.as_map().is_some() {
        let mut f = d.fields(node, "a label")?;
        let key = f.get("key").and_then(|n| d.string(n, "key"));
        let value = f.get("value").and_then(|n| d.string(n, "value"));
        let source = f.get("source").and_then(|n| d.string(n, "source"));
        f.finish(d, "a label", &["key", "value", "source"]);
        let key = key?;
        let mut text = String::new();
        if let Some(s) = source {
            text.push_str(&s.value);
            text.push(':');
        }
        text.push_str(&key.value);
        if let Some(v) = value {
            text.push('=');
            text.push_str(&v.value);
        }
        return Some(Spanned::new(text, node.span));
    }
    d.string(node, "a label")
}

fn peer_fields(section: RuleSection) -> &'static [&'static str] {
    match section {
        RuleSection::Ingress => &[
            "fromEndpoints",
            "fromRequires",
            "fromCIDR",
            "fromCIDRSet",
            "fromEntities",
            "fromGroups",
            "fromNodes",
            "toPorts",
            "icmps",
            "authentication",
        ],
        RuleSection::IngressDeny => &[
            "fromEndpoints",
            "fromRequires",
            "fromCIDR",
            "fromCIDRSet",
            "fromEntities",
            "fromGroups",
            "fromNodes",
            "toPorts",
            "icmps",
        ],
        RuleSection::Egress => &[
            "toEndpoints",
            "toRequires",
            "toCIDR",
            "toCIDRSet",
            "toEntities",
            "toServices",
            "toGroups",
            "toNodes",
            "toFQDNs",
            "toPorts",
            "icmps",
            "authentication",
        ],
        RuleSection::EgressDeny => &[
            "toEndpoints",
            "toRequires",
            "toCIDR",
            "toCIDRSet",
            "toEntities",
            "toServices",
            "toGroups",
            "toNodes",
            "toPorts",
            "icmps",
        ],
    }
}

fn decode_peer_rule(d: &mut Decoder, node: &Node, section: RuleSection) -> Option<PeerRule> {
    let what = format!("an {} rule", section.field_name());
    let mut f = d.fields(node, &what)?;
    let dir = if section.is_ingress() { "from" } else { "to" };
    let mut field_spans = Vec::new();
    let names = peer_fields(section);
    for name in names {
        if let Some(s) = f.key_span(name) {
            field_spans.push((*name, s));
        }
    }
    let fname = |s: &str| format!("{dir}{s}");
    let endpoints = f
        .get(&fname("Endpoints"))
        .and_then(|n| selector_list(d, n, &fname("Endpoints")));
    let requires = f
        .get(&fname("Requires"))
        .and_then(|n| selector_list(d, n, &fname("Requires")));
    let cidr = f
        .get(&fname("CIDR"))
        .and_then(|n| d.string_list(n, &fname("CIDR")));
    let cidr_set = f
        .get(&fname("CIDRSet"))
        .and_then(|n| d.list(n, &fname("CIDRSet"), decode_cidr_rule));
    let entities = f
        .get(&fname("Entities"))
        .and_then(|n| d.string_list(n, &fname("Entities")));
    let nodes = f
        .get(&fname("Nodes"))
        .and_then(|n| selector_list(d, n, &fname("Nodes")));
    let groups = f
        .get(&fname("Groups"))
        .and_then(|n| d.list(n, &fname("Groups"), |_, n| Some(n.span)));
    let (mut services, mut fqdns) = (None, None);
    if !section.is_ingress() {
        services = f
            .get("toServices")
            .and_then(|n| d.list(n, "toServices", decode_service));
        if section == RuleSection::Egress {
            fqdns = f
                .get("toFQDNs")
                .and_then(|n| d.list(n, "toFQDNs", |d, n| decode_fqdn(d, n, "a toFQDNs entry")));
        }
    }
    let deny = section.is_deny();
    let to_ports = f
        .get("toPorts")
        .and_then(|n| d.list(n, "toPorts", |d, n| decode_port_rule(d, n, deny)));
    let icmps = f
        .get("icmps")
        .and_then(|n| d.list(n, "icmps", decode_icmp_rule));
    let mut authentication = None;
    if !deny
        && let Some(n) = f.get("authentication")
        && let Some(mut a) = d.fields(n, "authentication")
    {
        authentication = a
            .get("mode")
            .and_then(|n| d.string(n, "authentication.mode"));
        a.finish(d, "authentication", &["mode"]);
        if let Some(m) = &authentication
            && !matches!(
                m.value.as_str(),
                "disabled" | "required" | "test-always-fail"
            )
        {
            d.error_help(
                format!("unsupported authentication mode `{}`", m.value),
                m.span,
                "use one of disabled, required, test-always-fail",
            );
        }
    }
    let span = f.span;
    f.finish(d, &what, names);
    Some(PeerRule {
        section,
        endpoints,
        requires,
        cidr,
        cidr_set,
        entities,
        nodes,
        groups,
        services,
        fqdns,
        to_ports,
        icmps,
        authentication,
        span,
        field_spans,
    })
}

fn decode_cidr_rule(d: &mut Decoder, node: &Node) -> Option<CidrRule> {
    let mut f = d.fields(node, "a CIDR rule")?;
    let cidr = f.get("cidr").and_then(|n| d.string(n, "cidr"));
    let group_ref = f
        .get("cidrGroupRef")
        .and_then(|n| d.string(n, "cidrGroupRef"));
    let group_selector = f
        .get("cidrGroupSelector")
        .and_then(|n| decode_selector(d, n, "cidrGroupSelector"));
    let except = f
        .get("except")
        .and_then(|n| d.string_list(n, "except"))
        .unwrap_or_default();
    let span = f.span;
    f.finish(
        d,
        "a CIDR rule",
        &["cidr", "cidrGroupRef", "cidrGroupSelector", "except"],
    );
    Some(CidrRule {
        cidr,
        group_ref,
        group_selector,
        except,
        span,
    })
}

fn decode_service(d: &mut Decoder, node: &Node) -> Option<ServiceSelector> {
    let mut f = d.fields(node, "a toServices entry")?;
    let span = f.span;
    let by_name = f.get("k8sService");
    let by_selector = f.get("k8sServiceSelector");
    f.finish(
        d,
        "a toServices entry",
        &["k8sService", "k8sServiceSelector"],
    );
    if let Some(n) = by_name {
        let mut s = d.fields(n, "k8sService")?;
        let name = s
            .get("serviceName")
            .and_then(|n| d.string(n, "serviceName"));
        let namespace = s.get("namespace").and_then(|n| d.string(n, "namespace"));
        s.finish(d, "k8sService", &["serviceName", "namespace"]);
        let Some(name) = name else {
            d.error("k8sService needs a `serviceName`", n.span);
            return None;
        };
        return Some(ServiceSelector::Name {
            name,
            namespace,
            span,
        });
    }
    if let Some(n) = by_selector {
        let mut s = d.fields(n, "k8sServiceSelector")?;
        let selector = s
            .get("selector")
            .and_then(|n| decode_selector(d, n, "selector"));
        let namespace = s.get("namespace").and_then(|n| d.string(n, "namespace"));
        s.finish(d, "k8sServiceSelector", &["selector", "namespace"]);
        let Some(selector) = selector else {
            d.error("k8sServiceSelector needs a `selector`", n.span);
            return None;
        };
        return Some(ServiceSelector::Selector {
            selector,
            namespace,
            span,
        });
    }
    d.error_help(
        "a toServices entry needs `k8sService` or `k8sServiceSelector`",
        span,
        "name the service: k8sService: {serviceName: my-svc, namespace: my-ns}",
    );
    None
}

fn decode_fqdn(d: &mut Decoder, node: &Node, what: &str) -> Option<FqdnSelector> {
    let mut f = d.fields(node, what)?;
    let match_name = f.get("matchName").and_then(|n| d.string(n, "matchName"));
    let match_pattern = f
        .get("matchPattern")
        .and_then(|n| d.string(n, "matchPattern"));
    let span = f.span;
    f.finish(d, what, &["matchName", "matchPattern"]);
    Some(FqdnSelector {
        match_name,
        match_pattern,
        span,
    })
}

const PORT_RULE_FIELDS: &[&str] = &[
    "ports",
    "terminatingTLS",
    "originatingTLS",
    "serverNames",
    "listener",
    "rules",
];

fn decode_port_rule(d: &mut Decoder, node: &Node, deny: bool) -> Option<PortRule> {
    let what = if deny {
        "a deny toPorts entry"
    } else {
        "a toPorts entry"
    };
    let mut f = d.fields(node, what)?;
    let ports = f.get("ports").and_then(|n| d.list(n, "ports", decode_port));
    let span = f.span;
    if deny {
        f.finish(d, what, &["ports"]);
        return Some(PortRule {
            ports,
            terminating_tls: None,
            originating_tls: None,
            server_names: None,
            listener: None,
            rules: None,
            span,
        });
    }
    let terminating_tls = f
        .get("terminatingTLS")
        .and_then(|n| decode_tls(d, n, "terminatingTLS"));
    let originating_tls = f
        .get("originatingTLS")
        .and_then(|n| decode_tls(d, n, "originatingTLS"));
    let server_names = f
        .get("serverNames")
        .and_then(|n| d.string_list(n, "serverNames"));
    let listener = f.get("listener").and_then(|n| decode_listener(d, n));
    let rules = f.get("rules").and_then(|n| decode_l7(d, n));
    f.finish(d, what, PORT_RULE_FIELDS);
    Some(PortRule {
        ports,
        terminating_tls,
        originating_tls,
        server_names,
        listener,
        rules,
        span,
    })
}

fn decode_port(d: &mut Decoder, node: &Node) -> Option<PortProtocol> {
    let mut f = d.fields(node, "a port")?;
    let port = f.get("port").and_then(|n| d.string(n, "port"));
    let end_port = f.get("endPort").and_then(|n| d.int(n, "endPort"));
    let protocol = f.get("protocol").and_then(|n| d.string(n, "protocol"));
    let span = f.span;
    f.finish(d, "a port", &["port", "endPort", "protocol"]);
    Some(PortProtocol {
        port,
        end_port,
        protocol,
        span,
    })
}

fn decode_secret(d: &mut Decoder, node: &Node) -> Option<SecretRef> {
    let mut f = d.fields(node, "secret")?;
    let name = f.get("name").and_then(|n| d.string(n, "secret.name"));
    let namespace = f
        .get("namespace")
        .and_then(|n| d.string(n, "secret.namespace"));
    let span = f.span;
    f.finish(d, "secret", &["name", "namespace"]);
    let Some(name) = name else {
        d.error("Secret name missing", span);
        return None;
    };
    Some(SecretRef { namespace, name })
}

fn decode_tls(d: &mut Decoder, node: &Node, what: &str) -> Option<TlsContext> {
    let mut f = d.fields(node, what)?;
    let secret = f.get("secret").and_then(|n| decode_secret(d, n));
    f.ignore(&["trustedCA", "certificate", "privateKey"]);
    let span = f.span;
    f.finish(
        d,
        what,
        &["secret", "trustedCA", "certificate", "privateKey"],
    );
    Some(TlsContext { secret, span })
}

fn decode_listener(d: &mut Decoder, node: &Node) -> Option<Listener> {
    let mut f = d.fields(node, "listener")?;
    let name = f.get("name").and_then(|n| d.string(n, "listener.name"));
    if let Some(n) = f.get("envoyConfig")
        && let Some(mut e) = d.fields(n, "envoyConfig")
    {
        let _ = e.get("name").and_then(|n| d.string(n, "envoyConfig.name"));
        if let Some(k) = e.get("kind").and_then(|n| d.string(n, "envoyConfig.kind"))
            && !matches!(
                k.value.as_str(),
                "CiliumEnvoyConfig" | "CiliumClusterwideEnvoyConfig"
            )
        {
            d.error_help(
                format!("unsupported envoyConfig kind `{}`", k.value),
                k.span,
                "use CiliumEnvoyConfig or CiliumClusterwideEnvoyConfig",
            );
        }
        e.finish(d, "envoyConfig", &["kind", "name"]);
    }
    let _ = f
        .get("priority")
        .and_then(|n| d.int(n, "listener.priority"));
    let span = f.span;
    f.finish(d, "listener", &["envoyConfig", "name", "priority"]);
    let Some(name) = name else {
        d.error("listener needs a `name`", span);
        return None;
    };
    Some(Listener { name, span })
}

fn decode_l7(d: &mut Decoder, node: &Node) -> Option<L7Rules> {
    let mut f = d.fields(node, "rules")?;
    let http = f
        .get("http")
        .and_then(|n| d.list(n, "http", decode_http_rule));
    let kafka = f
        .get("kafka")
        .and_then(|n| d.list(n, "kafka", |_, n| Some(n.span)));
    let dns = f
        .get("dns")
        .and_then(|n| d.list(n, "dns", |d, n| decode_fqdn(d, n, "a dns rule")));
    let l7proto = f.get("l7proto").and_then(|n| d.string(n, "l7proto"));
    let l7 = f
        .get("l7")
        .and_then(|n| d.list(n, "l7", |d, n| Some(d.string_map(n, "an l7 rule"))));
    let span = f.span;
    f.finish(d, "rules", &["http", "kafka", "dns", "l7proto", "l7"]);
    Some(L7Rules {
        http,
        kafka,
        dns,
        l7proto,
        l7,
        span,
    })
}

fn decode_http_rule(d: &mut Decoder, node: &Node) -> Option<HttpRule> {
    let mut f = d.fields(node, "an http rule")?;
    let path = f.get("path").and_then(|n| d.string(n, "path"));
    let method = f.get("method").and_then(|n| d.string(n, "method"));
    let host = f.get("host").and_then(|n| d.string(n, "host"));
    let headers = f
        .get("headers")
        .and_then(|n| d.string_list(n, "headers"))
        .unwrap_or_default();
    let header_matches = f
        .get("headerMatches")
        .and_then(|n| d.list(n, "headerMatches", decode_header_match))
        .unwrap_or_default();
    let span = f.span;
    f.finish(
        d,
        "an http rule",
        &["path", "method", "host", "headers", "headerMatches"],
    );
    Some(HttpRule {
        path,
        method,
        host,
        headers,
        header_matches,
        span,
    })
}

fn decode_header_match(d: &mut Decoder, node: &Node) -> Option<HeaderMatch> {
    let mut f = d.fields(node, "a headerMatches entry")?;
    let name = f.get("name").and_then(|n| d.string(n, "name"));
    let value = f.get("value").and_then(|n| d.string(n, "value"));
    let secret = f.get("secret").and_then(|n| decode_secret(d, n));
    let mismatch = f.get("mismatch").and_then(|n| d.string(n, "mismatch"));
    let span = f.span;
    f.finish(
        d,
        "a headerMatches entry",
        &["name", "value", "secret", "mismatch"],
    );
    Some(HeaderMatch {
        name,
        value,
        secret,
        mismatch,
        span,
    })
}

fn decode_icmp_rule(d: &mut Decoder, node: &Node) -> Option<IcmpRule> {
    let mut f = d.fields(node, "an icmps entry")?;
    let fields = f
        .get("fields")
        .and_then(|n| d.list(n, "fields", decode_icmp_field))
        .unwrap_or_default();
    let span = f.span;
    f.finish(d, "an icmps entry", &["fields"]);
    Some(IcmpRule { fields, span })
}

fn decode_icmp_field(d: &mut Decoder, node: &Node) -> Option<IcmpField> {
    let mut f = d.fields(node, "an ICMP field")?;
    let family = f.get("family").and_then(|n| d.string(n, "family"));
    let icmp_type = f.get("type").and_then(|n| d.int_or_string(n, "type"));
    let span = f.span;
    f.finish(d, "an ICMP field", &["family", "type"]);
    let Some(icmp_type) = icmp_type else {
        d.error("an ICMP field needs a `type`", span);
        return None;
    };
    Some(IcmpField {
        family,
        icmp_type,
        span,
    })
}

fn decode_cilium(
    d: &mut Decoder,
    mut top: Fields<'_>,
    kind: PolicyKind,
    span: Span,
) -> CiliumPolicy {
    let meta = top
        .get("metadata")
        .map(|n| decode_meta(d, n))
        .unwrap_or_default();
    let spec = top.get("spec").and_then(|n| decode_rule(d, n));
    let specs = top
        .get("specs")
        .and_then(|n| d.list(n, "specs", decode_rule));
    top.ignore(&["status"]);
    top.finish(
        d,
        kind.as_str(),
        &["apiVersion", "kind", "metadata", "spec", "specs", "status"],
    );
    CiliumPolicy {
        schema_errors: false,
        kind,
        meta,
        spec,
        specs,
        span,
    }
}

fn decode_knp(d: &mut Decoder, mut top: Fields<'_>, span: Span) -> KubePolicy {
    let meta = top
        .get("metadata")
        .map(|n| decode_meta(d, n))
        .unwrap_or_default();
    let mut policy = KubePolicy {
        schema_errors: false,
        meta,
        pod_selector: None,
        policy_types: None,
        ingress: None,
        egress: None,
        span,
    };
    if let Some(spec_node) = top.get("spec") {
        if let Some(mut s) = d.fields(spec_node, "NetworkPolicy spec") {
            policy.pod_selector = s
                .get("podSelector")
                .and_then(|n| decode_selector(d, n, "podSelector"));
            if policy.pod_selector.is_none() && !s.has("podSelector") {
                // podSelector is required by the API; `{}` selects every pod of the namespace.
                d.error_help(
                    "NetworkPolicy spec needs a `podSelector`",
                    spec_node.span,
                    "use `podSelector: {}` to select every pod in the namespace",
                );
            }
            policy.policy_types = s
                .get("policyTypes")
                .and_then(|n| d.string_list(n, "policyTypes"));
            policy.ingress = s
                .get("ingress")
                .and_then(|n| d.list(n, "ingress", |d, n| decode_knp_rule(d, n, "from")));
            policy.egress = s
                .get("egress")
                .and_then(|n| d.list(n, "egress", |d, n| decode_knp_rule(d, n, "to")));
            s.finish(
                d,
                "NetworkPolicy spec",
                &["podSelector", "policyTypes", "ingress", "egress"],
            );
        }
    } else {
        d.error("NetworkPolicy needs a `spec`", span);
    }
    top.ignore(&["status"]);
    top.finish(
        d,
        "NetworkPolicy",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    );
    policy
}

fn decode_knp_rule(d: &mut Decoder, node: &Node, peers_field: &str) -> Option<KnpRule> {
    let what = if peers_field == "from" {
        "a NetworkPolicy ingress rule"
    } else {
        "a NetworkPolicy egress rule"
    };
    let mut f = d.fields(node, what)?;
    let peers = f
        .get(peers_field)
        .and_then(|n| d.list(n, peers_field, decode_knp_peer));
    let ports = f
        .get("ports")
        .and_then(|n| d.list(n, "ports", decode_knp_port));
    let span = f.span;
    f.finish(d, what, &[peers_field, "ports"]);
    Some(KnpRule { peers, ports, span })
}

fn decode_knp_peer(d: &mut Decoder, node: &Node) -> Option<KnpPeer> {
    let mut f = d.fields(node, "a NetworkPolicy peer")?;
    let pod_selector = f
        .get("podSelector")
        .and_then(|n| decode_selector(d, n, "podSelector"));
    let namespace_selector = f
        .get("namespaceSelector")
        .and_then(|n| decode_selector(d, n, "namespaceSelector"));
    let mut ip_block = None;
    if let Some(n) = f.get("ipBlock")
        && let Some(mut b) = d.fields(n, "ipBlock")
    {
        let cidr = b.get("cidr").and_then(|n| d.string(n, "ipBlock.cidr"));
        let except = b
            .get("except")
            .and_then(|n| d.string_list(n, "ipBlock.except"))
            .unwrap_or_default();
        b.finish(d, "ipBlock", &["cidr", "except"]);
        match cidr {
            Some(cidr) => {
                ip_block = Some(IpBlock {
                    cidr,
                    except,
                    span: n.span,
                })
            }
            None => d.error("ipBlock needs a `cidr`", n.span),
        }
    }
    let span = f.span;
    f.finish(
        d,
        "a NetworkPolicy peer",
        &["podSelector", "namespaceSelector", "ipBlock"],
    );
    if ip_block.is_some() && (pod_selector.is_some() || namespace_selector.is_some()) {
        d.error(
            "a NetworkPolicy peer may not combine ipBlock with podSelector or namespaceSelector",
            span,
        );
        return None;
    }
    Some(KnpPeer {
        pod_selector,
        namespace_selector,
        ip_block,
        span,
    })
}

fn decode_knp_port(d: &mut Decoder, node: &Node) -> Option<KnpPort> {
    let mut f = d.fields(node, "a NetworkPolicy port")?;
    let protocol = f.get("protocol").and_then(|n| d.string(n, "protocol"));
    let port = f.get("port").and_then(|n| d.int_or_string(n, "port"));
    let end_port = f.get("endPort").and_then(|n| d.int(n, "endPort"));
    let span = f.span;
    f.finish(d, "a NetworkPolicy port", &["protocol", "port", "endPort"]);
    Some(KnpPort {
        protocol,
        port,
        end_port,
        span,
    })
}

fn decode_cidr_group(d: &mut Decoder, mut top: Fields<'_>, span: Span) -> CidrGroup {
    let meta = top
        .get("metadata")
        .map(|n| decode_meta(d, n))
        .unwrap_or_default();
    let mut external_cidrs = Vec::new();
    if let Some(spec) = top.get("spec")
        && let Some(mut s) = d.fields(spec, "CiliumCIDRGroup spec")
    {
        external_cidrs = s
            .get("externalCIDRs")
            .and_then(|n| d.string_list(n, "externalCIDRs"))
            .unwrap_or_default();
        s.finish(d, "CiliumCIDRGroup spec", &["externalCIDRs"]);
    }
    top.ignore(&["status"]);
    top.finish(
        d,
        "CiliumCIDRGroup",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    );
    CidrGroup {
        meta,
        external_cidrs,
        span,
    }
}

const POLICY_KINDS: &[&str] = &[
    "CiliumNetworkPolicy",
    "CiliumClusterwideNetworkPolicy",
    "NetworkPolicy",
    "CiliumCIDRGroup",
    "List",
];

/// Decodes one YAML document into resources (`kind: List` yields its items).
pub fn decode_resources(d: &mut Decoder, node: &Node, out: &mut Vec<Resource>) {
    let Some(map) = node.as_map() else {
        d.error_help(
            format!(
                "a Kubernetes object must be a mapping, found {}",
                node.type_name()
            ),
            node.span,
            "each YAML document should start with `apiVersion:` and `kind:`",
        );
        return;
    };
    let _ = map;
    let kind = node
        .get("kind")
        .and_then(|n| n.scalar_text())
        .map(str::to_string);
    let api_version = node
        .get("apiVersion")
        .and_then(|n| n.scalar_text())
        .unwrap_or("")
        .to_string();
    let Some(kind) = kind else {
        d.error_help(
            "missing `kind`",
            node.span,
            "add e.g. `kind: CiliumNetworkPolicy`",
        );
        return;
    };
    let Some(mut top) = d.fields(node, &kind) else {
        return;
    };
    top.ignore(&["apiVersion", "kind"]);
    let span = node.span;
    let check_group = |d: &mut Decoder, groups: &[&str]| {
        if !groups.iter().any(|g| api_version == *g) {
            let shown = node.get("apiVersion").map(|n| n.span).unwrap_or(span);
            d.error_help(
                format!("unexpected apiVersion `{api_version}` for {kind}"),
                shown,
                format!("use apiVersion: {}", groups[0]),
            );
        }
    };
    match kind.as_str() {
        "CiliumNetworkPolicy" => {
            check_group(d, &["cilium.io/v2"]);
            let policy = decode_cilium(d, top, PolicyKind::CiliumNetworkPolicy, span);
            out.push(Resource::Cilium(Box::new(policy)));
        }
        "CiliumClusterwideNetworkPolicy" => {
            check_group(d, &["cilium.io/v2"]);
            let policy = decode_cilium(d, top, PolicyKind::CiliumClusterwideNetworkPolicy, span);
            out.push(Resource::Cilium(Box::new(policy)));
        }
        "NetworkPolicy" => {
            check_group(d, &["networking.k8s.io/v1"]);
            out.push(Resource::Kube(Box::new(decode_knp(d, top, span))));
        }
        "CiliumCIDRGroup" => {
            check_group(d, &["cilium.io/v2alpha1", "cilium.io/v2"]);
            out.push(Resource::CidrGroup(decode_cidr_group(d, top, span)));
        }
        "List"
        | "NetworkPolicyList"
        | "CiliumNetworkPolicyList"
        | "CiliumClusterwideNetworkPolicyList" => {
            if let Some(items) = node.get("items") {
                match items.as_seq() {
                    Some(items) => {
                        for item in items {
                            decode_resources(d, item, out);
                        }
                    }
                    None if items.is_null() => {}
                    None => d.error(
                        format!("items must be a list, found {}", items.type_name()),
                        items.span,
                    ),
                }
            }
        }
        other => {
            if let Some(s) = crate::diag::did_you_mean(other, POLICY_KINDS)
                && s != other
                && other.contains("Policy")
            {
                d.error_help(
                    format!("unknown kind `{other}`"),
                    node.get("kind").map(|n| n.span).unwrap_or(span),
                    format!("did you mean `{s}`?"),
                );
                return;
            }
            out.push(Resource::Other {
                api_version,
                kind,
                node: node.clone(),
            });
        }
    }
}
