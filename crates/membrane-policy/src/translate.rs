//! From policy resources as written to sanitized rules: Cilium's validation (with its
//! messages), namespace injection, entity expansion and the NetworkPolicy translation.

use crate::api::{self, CiliumPolicy, KubePolicy, LabelSelector, PolicyKind, RuleSection, SString};
use crate::diag::Diagnostic;
use crate::l7::dns_pattern::{self, DnsMatcher};
use crate::l7::go_regex::GoRegex;
use crate::labels::{
    KEY_CLUSTER, KEY_NAMESPACE, Operator, PREFIX_NAMESPACE_LABELS, SOURCE_K8S, SOURCE_RESERVED,
    Selector, SelectorKey,
};
use crate::model::*;
use crate::options::Options;
use crate::yaml::Span;
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Secrets referenced by `headerMatches`: (namespace, name) → key → value.
pub type Secrets = BTreeMap<(String, String), BTreeMap<String, String>>;

/// A CiliumCIDRGroup, already parsed.
#[derive(Debug, Clone)]
pub struct CidrGroupInfo {
    pub name: String,
    pub labels: crate::labels::LabelSet,
    pub cidrs: Vec<IpNet>,
}

pub struct Context<'a> {
    pub options: &'a Options,
    pub file: FileId,
    pub secrets: &'a Secrets,
    pub cidr_groups: &'a [CidrGroupInfo],
}

/// The outcome for one policy resource: its rules, or why it is not enforced.
#[derive(Debug, Clone)]
pub struct Translated {
    pub origin: Arc<PolicyOrigin>,
    /// Empty when the policy is invalid: the agent refuses to enforce it as a whole.
    pub rules: Vec<Rule>,
    /// What an invalid policy would have enforced (for explanations: "policy X would
    /// select this endpoint but is invalid").
    pub rejected: Vec<Rule>,
    pub diagnostics: Vec<Diagnostic>,
    pub valid: bool,
}

struct Errors<'p> {
    prefix: &'p str,
    diags: Vec<Diagnostic>,
    /// The object already failed schema decoding: checks whose input may be missing only
    /// because of that stay quiet, so the user sees the cause rather than its echoes.
    after_schema_errors: bool,
}

impl Errors<'_> {
    fn reject(&mut self, message: impl AsRef<str>, span: Span) {
        self.diags.push(Diagnostic::error(
            "invalid-policy",
            format!("{}{}", self.prefix, message.as_ref()),
            Some(span),
        ));
    }

    fn reject_help(&mut self, message: impl AsRef<str>, span: Span, help: impl Into<String>) {
        self.diags.push(
            Diagnostic::error(
                "invalid-policy",
                format!("{}{}", self.prefix, message.as_ref()),
                Some(span),
            )
            .with_help(help),
        );
    }

    fn warn(
        &mut self,
        code: &'static str,
        message: impl Into<String>,
        span: Span,
        help: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::warning(code, message, Some(span)).with_help(help));
    }
}

pub fn translate_cilium(policy: &CiliumPolicy, cx: &Context<'_>) -> Translated {
    let kind = policy.kind;
    let cluster_scoped = kind == PolicyKind::CiliumClusterwideNetworkPolicy;
    let name = policy
        .meta
        .name
        .as_ref()
        .map(|n| n.value.clone())
        .unwrap_or_default();
    let namespace = if cluster_scoped {
        None
    } else {
        Some(
            policy
                .meta
                .namespace
                .as_ref()
                .map(|n| n.value.clone())
                .unwrap_or_else(|| "default".to_string()),
        )
    };
    let origin = Arc::new(PolicyOrigin {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
        file: cx.file,
        span: policy.span,
    });
    // Without a `metadata:` block, point at the object itself.
    let meta_span = if policy.meta.span.line == 0 {
        policy.span
    } else {
        policy.meta.span
    };
    let mut diags = Vec::new();
    if name.is_empty() {
        diags.push(
            Diagnostic::error(
                "invalid-policy",
                format!("{} has no metadata.name", kind.as_str()),
                Some(meta_span),
            )
            .with_help("every Kubernetes object needs a name"),
        );
    }
    if cluster_scoped {
        if let Some(ns) = &policy.meta.namespace {
            diags.push(
                Diagnostic::warning("ccnp-namespace", format!("{} is cluster-scoped: metadata.namespace `{}` is ignored", kind.as_str(), ns.value), Some(ns.span))
                    .with_help("remove metadata.namespace, or use a CiliumNetworkPolicy to scope the policy to a namespace"),
            );
        }
    } else if policy.meta.namespace.is_none() {
        diags.push(
            Diagnostic::warning("namespace-missing", format!("{} `{name}` has no metadata.namespace: it applies to the namespace it is created in (kubectl's default: `default`)", kind.as_str()), Some(meta_span))
                .with_help("set metadata.namespace explicitly; a CiliumNetworkPolicy only ever selects pods of its own namespace"),
        );
    }
    let mut rules = Vec::new();
    let kind_name = kind.as_str();
    if policy.spec.is_none() && policy.specs.is_none() {
        diags.push(
            Diagnostic::error("invalid-policy", format!("Invalid {kind_name} spec(s): empty policy"), Some(policy.span))
                .with_help("add a `spec:` with an endpointSelector and at least one of ingress, ingressDeny, egress, egressDeny"),
        );
    }
    let spec_prefix = format!("Invalid {kind_name} spec: ");
    let specs_prefix = format!("Invalid {kind_name} specs: ");
    let mut all: Vec<(Option<usize>, &api::Rule, &str)> = Vec::new();
    if let Some(spec) = &policy.spec {
        all.push((None, spec, &spec_prefix));
    }
    if let Some(specs) = &policy.specs {
        for (i, s) in specs.iter().enumerate() {
            all.push((Some(i), s, &specs_prefix));
        }
    }
    for (spec_index, raw, prefix) in all {
        let mut errs = Errors {
            prefix,
            diags: Vec::new(),
            after_schema_errors: policy.schema_errors,
        };
        let rule_origin = Arc::new(RuleOrigin {
            policy: origin.clone(),
            spec_index,
            span: raw.span,
        });
        if let Some(rule) =
            translate_rule(raw, rule_origin, kind, namespace.as_deref(), cx, &mut errs)
        {
            rules.push(rule);
        }
        diags.extend(errs.diags);
    }
    let valid = !policy.schema_errors && !diags.iter().any(Diagnostic::is_error);
    let rejected = if valid {
        Vec::new()
    } else {
        std::mem::take(&mut rules)
    };
    Translated {
        rejected,
        origin,
        rules,
        diagnostics: diags,
        valid,
    }
}

fn translate_rule(
    raw: &api::Rule,
    origin: Arc<RuleOrigin>,
    kind: PolicyKind,
    namespace: Option<&str>,
    cx: &Context<'_>,
    errs: &mut Errors<'_>,
) -> Option<Rule> {
    let nonempty = |l: &Option<Vec<api::PeerRule>>| l.as_ref().is_some_and(|v| !v.is_empty());
    let has_ingress = nonempty(&raw.ingress) || nonempty(&raw.ingress_deny);
    let has_egress = nonempty(&raw.egress) || nonempty(&raw.egress_deny);
    if !has_ingress && !has_egress && !errs.after_schema_errors {
        errs.reject_help(
            "rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny",
            raw.span,
            "an empty list (`ingress: []`) counts as missing; to deny everything write `ingress: [{}]` or, on any Cilium version, `ingress: [{fromEntities: []}]`",
        );
    }
    let subject = match (&raw.endpoint_selector, &raw.node_selector) {
        (Some(_), Some(_)) => {
            errs.reject(
                "rule cannot have both EndpointSelector and NodeSelector",
                raw.span,
            );
            return None;
        }
        (None, None) if errs.after_schema_errors => return None,
        (None, None) => {
            errs.reject_help(
                "rule must have one of EndpointSelector or NodeSelector",
                raw.span,
                "add `endpointSelector: {}` to select every endpoint",
            );
            return None;
        }
        (Some(sel), None) => {
            let mut s = convert_selector(sel, errs)?;
            if let Some(ns) = namespace {
                inject_subject_namespace(&mut s, sel, ns, errs);
            }
            Subject::Endpoints(s)
        }
        (None, Some(sel)) => {
            if kind == PolicyKind::CiliumNetworkPolicy {
                errs.reject_help(
                    "rule cannot have NodeSelector",
                    sel.span,
                    "host policies (nodeSelector) must be CiliumClusterwideNetworkPolicies",
                );
                return None;
            }
            Subject::Nodes(convert_selector(sel, errs)?)
        }
    };
    let is_host = matches!(subject, Subject::Nodes(_));
    let subject_selects_init = match &subject {
        Subject::Endpoints(s) => s
            .requirements
            .iter()
            .any(|r| r.key.key == "init" && r.key.source.as_deref() == Some(SOURCE_RESERVED)),
        Subject::Nodes(_) => false,
    };
    let peer_cx = PeerContext {
        kind,
        namespace,
        subject_selects_init,
        cx,
    };
    let mut entries = Vec::new();
    let mut requires_ingress = Vec::new();
    let mut requires_egress = Vec::new();
    for section in [
        RuleSection::Ingress,
        RuleSection::IngressDeny,
        RuleSection::Egress,
        RuleSection::EgressDeny,
    ] {
        let Some(list) = raw.section(section) else {
            continue;
        };
        for (index, pr) in list.iter().enumerate() {
            let eorigin = Arc::new(EntryOrigin {
                rule: origin.clone(),
                section,
                index,
                span: pr.span,
            });
            let requires = if section.is_ingress() {
                &mut requires_ingress
            } else {
                &mut requires_egress
            };
            if let Some(entry) = translate_entry(pr, eorigin, is_host, &peer_cx, requires, errs) {
                entries.push(entry);
            }
        }
    }
    if let Some(log) = &raw.log {
        if log.value.chars().count() > 32 || log.value.chars().any(|c| c.is_control()) {
            errs.reject(
                "log value must be at most 32 printable characters",
                log.span,
            );
        }
    }
    let non_default = cx.options.non_default_deny_policies;
    Some(Rule {
        origin,
        subject,
        has_ingress,
        has_egress,
        default_deny_ingress: if non_default {
            raw.enable_default_deny_ingress
        } else {
            None
        },
        default_deny_egress: if non_default {
            raw.enable_default_deny_egress
        } else {
            None
        },
        entries,
        requires_ingress,
        requires_egress,
    })
}

fn convert_selector(sel: &LabelSelector, errs: &mut Errors<'_>) -> Option<Selector> {
    let mut out = Selector::default();
    let mut ok = true;
    for (k, v) in &sel.match_labels {
        if !is_label_value(&v.value) {
            errs.reject_help(
                format!("invalid label selector: matchLabels: Invalid value: {:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", v.value),
                v.span,
                "label values are at most 63 characters of A-Z a-z 0-9 - _ .",
            );
            ok = false;
        }
        out.push(
            SelectorKey::parse(&k.value),
            Operator::In,
            vec![v.value.clone()],
        );
    }
    for (i, req) in sel.match_expressions.iter().enumerate() {
        let Some(op) = Operator::parse(&req.operator.value) else {
            errs.reject_help(
                format!(
                    "invalid label selector: matchExpressions[{i}].operator: Invalid value: \"{}\": not a valid selector operator",
                    req.operator.value
                ),
                req.operator.span,
                "use one of In, NotIn, Exists, DoesNotExist",
            );
            ok = false;
            continue;
        };
        let values: Vec<String> = req.values.iter().map(|v| v.value.clone()).collect();
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                errs.reject(
                    format!("invalid label selector: matchExpressions[{i}].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"),
                    req.span,
                );
                ok = false;
                continue;
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                errs.reject(
                    format!("invalid label selector: matchExpressions[{i}].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
                    req.span,
                );
                ok = false;
                continue;
            }
            _ => {}
        }
        out.push(SelectorKey::parse(&req.key.value), op, values);
    }
    ok.then_some(out)
}

/// §1.9 and §9.3: a CNP's endpointSelector always gets the policy namespace. A `k8s:`
/// namespace key is overwritten; an unprefixed one stays beside it (and then usually
/// selects nothing).
fn inject_subject_namespace(
    s: &mut Selector,
    raw: &LabelSelector,
    ns: &str,
    errs: &mut Errors<'_>,
) {
    let k8s_ns = SelectorKey::k8s(KEY_NAMESPACE);
    let before = s.requirements.len();
    s.requirements.retain(|r| r.key != k8s_ns);
    if s.requirements.len() != before {
        errs.warn(
            "subject-namespace-overwritten",
            format!("the namespace in endpointSelector is replaced by the policy's namespace `{ns}`"),
            raw.span,
            "a CiliumNetworkPolicy only selects pods of its own namespace; create the policy in the other namespace instead",
        );
    } else if s
        .requirements
        .iter()
        .any(|r| r.key.key == KEY_NAMESPACE && r.key.source.is_none())
    {
        errs.warn(
            "subject-namespace-any",
            format!("endpointSelector names `{KEY_NAMESPACE}` without `k8s:`: it is kept beside the injected `k8s:{KEY_NAMESPACE}={ns}`, so the policy can only select pods of `{ns}`"),
            raw.span,
            "remove the namespace key from endpointSelector; a CiliumNetworkPolicy always applies to its own namespace",
        );
    }
    s.push(k8s_ns, Operator::In, vec![ns.to_string()]);
}

struct PeerContext<'a> {
    kind: PolicyKind,
    namespace: Option<&'a str>,
    subject_selects_init: bool,
    cx: &'a Context<'a>,
}

impl PeerContext<'_> {
    /// §1.9: peers of namespaced policies stay in the namespace unless they name one; CCNP
    /// peers get "some namespace" (pods only).
    fn inject_peer(&self, mut s: Selector) -> Selector {
        if s.uses_source(SOURCE_RESERVED) {
            return s;
        }
        let names_ns = s.requirements.iter().any(|r| {
            r.key.key == KEY_NAMESPACE
                && (r.key.source.is_none() || r.key.source.as_deref() == Some(SOURCE_K8S))
        }) || s.mentions_key_prefix(PREFIX_NAMESPACE_LABELS);
        if !names_ns {
            match (self.kind, self.namespace) {
                (PolicyKind::CiliumClusterwideNetworkPolicy, _) if !self.subject_selects_init => {
                    s.push(SelectorKey::k8s(KEY_NAMESPACE), Operator::Exists, vec![]);
                }
                (PolicyKind::CiliumClusterwideNetworkPolicy, _) => {}
                (_, Some(ns)) => s.push(
                    SelectorKey::k8s(KEY_NAMESPACE),
                    Operator::In,
                    vec![ns.to_string()],
                ),
                _ => {}
            }
        }
        if self.cx.options.default_local_cluster && !s.mentions_key(KEY_CLUSTER) {
            s.push(
                SelectorKey::k8s(KEY_CLUSTER),
                Operator::In,
                vec![self.cx.options.cluster_name.clone()],
            );
        }
        s
    }
}

/// §1.8: the selectors an entity stands for.
pub fn entity_selectors(name: &str, cluster_name: &str) -> Option<Vec<Selector>> {
    let reserved = |n: &str| Selector::reserved(n);
    Some(match name {
        "all" => vec![Selector::default()],
        "world" => vec![
            reserved("world"),
            reserved("world-ipv4"),
            reserved("world-ipv6"),
        ],
        "world-ipv4" => vec![reserved("world-ipv4")],
        "world-ipv6" => vec![reserved("world-ipv6")],
        "cluster" => {
            let mut v: Vec<Selector> = [
                "host",
                "remote-node",
                "init",
                "ingress",
                "health",
                "unmanaged",
                "kube-apiserver",
            ]
            .iter()
            .map(|n| reserved(n))
            .collect();
            v.push(Selector::default().with(
                SelectorKey::k8s(KEY_CLUSTER),
                Operator::In,
                vec![cluster_name.to_string()],
            ));
            v
        }
        "host" | "remote-node" | "init" | "ingress" | "health" | "unmanaged" | "kube-apiserver" => {
            vec![reserved(name)]
        }
        "none" => vec![reserved("none")],
        _ => return None,
    })
}

const ENTITIES: &[&str] = &[
    "all",
    "world",
    "cluster",
    "host",
    "init",
    "ingress",
    "unmanaged",
    "remote-node",
    "health",
    "none",
    "kube-apiserver",
    "world-ipv4",
    "world-ipv6",
];

fn translate_entry(
    pr: &api::PeerRule,
    origin: Arc<EntryOrigin>,
    is_host: bool,
    pc: &PeerContext<'_>,
    requires: &mut Vec<Selector>,
    errs: &mut Errors<'_>,
) -> Option<Entry> {
    let section = pr.section;
    let ingress = section.is_ingress();
    let deny = section.is_deny();
    let dir = if ingress { "From" } else { "To" };
    let options = pc.cx.options;

    // §2.3, for deny rules too: a v1.17 development build skipped them (§9.10), a bug
    // membrane does not reproduce.
    {
        let mut l3: Vec<(String, usize)> = vec![
            (
                format!("{dir}Endpoints"),
                pr.endpoints.as_ref().map_or(0, Vec::len),
            ),
            (format!("{dir}CIDR"), pr.cidr.as_ref().map_or(0, Vec::len)),
            (
                format!("{dir}CIDRSet"),
                pr.cidr_set.as_ref().map_or(0, Vec::len),
            ),
            (
                format!("{dir}Entities"),
                pr.entities.as_ref().map_or(0, Vec::len),
            ),
            (format!("{dir}Nodes"), pr.nodes.as_ref().map_or(0, Vec::len)),
            (
                format!("{dir}Groups"),
                pr.groups.as_ref().map_or(0, Vec::len),
            ),
        ];
        if !ingress {
            l3.push((
                "ToServices".into(),
                pr.services.as_ref().map_or(0, Vec::len),
            ));
            l3.push(("ToFQDNs".into(), pr.fqdns.as_ref().map_or(0, Vec::len)));
        }
        let used: Vec<&String> = l3.iter().filter(|(_, n)| *n > 0).map(|(k, _)| k).collect();
        if used.len() > 1 {
            errs.reject_help(
                format!("combining {} and {} is not supported yet", used[0], used[1]),
                pr.span,
                "split them into separate rules: each rule may use one kind of peer",
            );
        }
    }
    if (pr.nodes.is_some()) && !options.node_selector_labels {
        let span = pr
            .field_span(if ingress { "fromNodes" } else { "toNodes" })
            .unwrap_or(pr.span);
        errs.reject_help(
            "FromNodes/ToNodes rules can only be applied when the \"enable-node-selector-labels\" flag is set",
            span,
            "use the `remote-node` or `host` entity, or enable node selector labels in the agent",
        );
    }
    if pr.groups.as_ref().is_some_and(|g| !g.is_empty()) {
        let span = pr
            .field_span(if ingress { "fromGroups" } else { "toGroups" })
            .unwrap_or(pr.span);
        errs.warn(
            "cloud-groups",
            format!(
                "{}Groups needs a cloud provider integration; membrane selects nothing for it",
                dir.to_lowercase()
            ),
            span,
            "use CIDR rules for the addresses of those security groups",
        );
    }

    // Peers.
    let mut selectors: Vec<PeerSelector> = Vec::new();
    let mut any_l3 = false;
    if let Some(list) = &pr.endpoints {
        any_l3 = true;
        for sel in list {
            if let Some(s) = convert_selector(sel, errs) {
                selectors.push(PeerSelector::Labels(pc.inject_peer(s)));
            }
        }
    }
    if let Some(list) = &pr.requires {
        for sel in list {
            if let Some(s) = convert_selector(sel, errs) {
                requires.push(pc.inject_peer(s));
            }
        }
    }
    if let Some(list) = &pr.entities {
        any_l3 = true;
        for e in list {
            match entity_selectors(&e.value, &options.cluster_name) {
                Some(sels) => selectors.extend(sels.into_iter().map(PeerSelector::Labels)),
                None => errs.reject_help(
                    format!("unsupported entity: {}", e.value),
                    e.span,
                    suggest(&e.value, ENTITIES),
                ),
            }
        }
    }
    if let Some(list) = &pr.nodes {
        any_l3 = true;
        for sel in list {
            if let Some(mut s) = convert_selector(sel, errs) {
                s.push(
                    SelectorKey {
                        source: Some(SOURCE_RESERVED.into()),
                        key: "remote-node".into(),
                    },
                    Operator::Exists,
                    vec![],
                );
                selectors.push(PeerSelector::Labels(s));
            }
        }
    }
    if let Some(list) = &pr.cidr {
        any_l3 = true;
        for c in list {
            match parse_cidr(&c.value, true) {
                Ok(net) => selectors.push(PeerSelector::Cidr {
                    net,
                    except: vec![],
                }),
                Err(e) => errs.reject(e, c.span),
            }
        }
    }
    if let Some(list) = &pr.cidr_set {
        any_l3 = true;
        for rule in list {
            selectors.extend(translate_cidr_rule(rule, pc, errs));
        }
    }
    if let Some(list) = &pr.groups {
        any_l3 = true;
        let _ = list;
    }
    if let Some(list) = &pr.services {
        any_l3 = true;
        for svc in list {
            match svc {
                api::ServiceSelector::Name {
                    name, namespace, ..
                } => selectors.push(PeerSelector::Service {
                    namespace: namespace
                        .as_ref()
                        .map(|n| n.value.clone())
                        .or_else(|| pc.namespace.map(str::to_string))
                        .unwrap_or_else(|| "default".into()),
                    name: Some(name.value.clone()),
                    selector: None,
                }),
                api::ServiceSelector::Selector {
                    selector,
                    namespace,
                    ..
                } => {
                    if let Some(s) = convert_selector(selector, errs) {
                        selectors.push(PeerSelector::Service {
                            namespace: namespace
                                .as_ref()
                                .map(|n| n.value.clone())
                                .or_else(|| pc.namespace.map(str::to_string))
                                .unwrap_or_default(),
                            name: None,
                            selector: Some(s),
                        });
                    }
                }
            }
        }
    }
    if let Some(list) = &pr.fqdns {
        any_l3 = true;
        for f in list {
            if let Some(m) = translate_fqdn(f, errs) {
                selectors.push(PeerSelector::Fqdn(m));
            }
        }
    }
    let peers = if any_l3 {
        Peers::Selectors(selectors)
    } else {
        Peers::Wildcard
    };

    // ICMP and ports.
    if pr.icmps.as_ref().is_some_and(|v| !v.is_empty())
        && pr.to_ports.as_ref().is_some_and(|v| !v.is_empty())
    {
        errs.reject_help(
            "the ICMPs block may only be present without ToPorts. Define a separate rule to use ToPorts",
            pr.field_span("icmps").unwrap_or(pr.span),
            "move `icmps` into a rule of its own with the same peers",
        );
    }
    // Go's len()==0: an empty list is the same as an absent one.
    let icmps = pr.icmps.as_ref().filter(|l| !l.is_empty()).map(|list| {
        if !options.icmp_rules && !list.is_empty() {
            errs.reject(
                "ICMP rules can only be applied when the \"enable-icmp-rules\" flag is set",
                pr.span,
            );
        }
        let mut out = Vec::new();
        for rule in list {
            if rule.fields.len() > 40 {
                errs.reject("too many types, the max is 40", rule.span);
            }
            for f in &rule.fields {
                if let Some(spec) = translate_icmp(f, errs) {
                    out.push(spec);
                }
            }
        }
        out
    });
    let ports = pr.to_ports.as_ref().filter(|l| !l.is_empty()).map(|list| {
        let mut out = Vec::new();
        for rule in list {
            if let Some(p) = translate_port_rule(rule, &origin, ingress, deny, is_host, pc, errs) {
                out.push(p);
            }
        }
        out
    });
    Some(Entry {
        origin,
        direction: if ingress {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        deny,
        peers,
        ports,
        icmps,
        endpoint_peers: pr.endpoints.as_ref().is_some_and(|e| !e.is_empty()),
    })
}

fn suggest(word: &str, candidates: &[&str]) -> String {
    match crate::diag::did_you_mean(word, candidates) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("use one of: {}", candidates.join(", ")),
    }
}

/// Parses a CIDR the way Go does: `a.b.c.d/n` (host bits are masked), or a bare address
/// when `allow_bare` (then a /32 or /128).
pub fn parse_cidr(text: &str, allow_bare: bool) -> Result<IpNet, String> {
    if text.is_empty() {
        return Err("IP must be specified".into());
    }
    if let Some((addr, len)) = text.split_once('/') {
        if len.contains('.') || len.contains(':') {
            return Err(format!("CIDR cannot specify non-contiguous mask {len}"));
        }
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("unable to parse CIDR: invalid CIDR address: {text}"))?;
        let len: u8 = len
            .parse()
            .map_err(|_| format!("unable to parse CIDR: invalid CIDR address: {text}"))?;
        return IpNet::new(ip, len)
            .map(|n| n.trunc())
            .map_err(|_| format!("unable to parse CIDR: invalid CIDR address: {text}"));
    }
    match text.parse::<IpAddr>() {
        Ok(ip) if allow_bare => Ok(IpNet::from(ip)),
        Ok(_) => Err(format!(
            "unable to parse CIDR: invalid CIDR address: {text}"
        )),
        Err(_) => Err(format!(
            "unable to parse CIDR: invalid CIDR address: {text}"
        )),
    }
}

fn translate_cidr_rule(
    rule: &api::CidrRule,
    pc: &PeerContext<'_>,
    errs: &mut Errors<'_>,
) -> Vec<PeerSelector> {
    let set = [
        rule.cidr.is_some(),
        rule.group_ref.is_some(),
        rule.group_selector.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set == 0 {
        errs.reject_help(
            "one of cidr, cidrGroupRef, or cidrGroupSelector is required",
            rule.span,
            "add e.g. `cidr: 10.0.0.0/8`",
        );
        return vec![];
    }
    if set > 1 {
        errs.reject(
            "more than one of cidr, cidrGroupRef, or cidrGroupSelector may not be set",
            rule.span,
        );
        return vec![];
    }
    let mut except = Vec::new();
    for e in &rule.except {
        match parse_cidr(&e.value, false) {
            Ok(n) => except.push((n, e.span)),
            Err(err) => errs.reject(
                format!("unable to parse CIDRRule {:?}: {err}", e.value),
                e.span,
            ),
        }
    }
    let mut nets = Vec::new();
    if let Some(c) = &rule.cidr {
        match parse_cidr(&c.value, false) {
            Ok(net) => {
                for (ex, span) in &except {
                    if !net.contains(ex) {
                        errs.reject(
                            format!(
                                "allow CIDR prefix {net} does not contain exclude CIDR prefix {ex}"
                            ),
                            *span,
                        );
                    }
                }
                nets.push(net);
            }
            Err(err) => errs.reject(
                format!("unable to parse CIDRRule {:?}: {err}", c.value),
                c.span,
            ),
        }
    } else if let Some(g) = &rule.group_ref {
        match pc.cx.cidr_groups.iter().find(|cg| cg.name == g.value) {
            Some(group) => nets.extend(group.cidrs.iter().copied()),
            None => errs.warn(
                "cidr-group-missing",
                format!("CiliumCIDRGroup `{}` is not defined: this rule selects nothing until it exists", g.value),
                g.span,
                "add the CiliumCIDRGroup manifest next to the policy",
            ),
        }
    } else if let Some(sel) = &rule.group_selector {
        if let Some(s) = convert_selector(sel, errs) {
            for group in pc.cx.cidr_groups.iter().filter(|g| s.matches(&g.labels)) {
                nets.extend(group.cidrs.iter().copied());
            }
        }
    }
    let except: Vec<IpNet> = except.into_iter().map(|(n, _)| n).collect();
    nets.into_iter()
        .map(|net| PeerSelector::Cidr {
            net,
            except: except.iter().copied().filter(|e| net.contains(e)).collect(),
        })
        .collect()
}

fn translate_fqdn(f: &api::FqdnSelector, errs: &mut Errors<'_>) -> Option<DnsMatcher> {
    match (&f.match_name, &f.match_pattern) {
        (Some(_), Some(_)) => {
            errs.reject(
                "only one of MatchName or MatchPattern is allowed in an FQDNSelector",
                f.span,
            );
            None
        }
        (Some(n), None) => match dns_pattern::validate_match_name(&n.value) {
            Ok(()) => Some(DnsMatcher::match_name(&n.value)),
            Err(e) => {
                errs.reject(e, n.span);
                None
            }
        },
        (None, Some(p)) => match dns_pattern::validate_match_pattern(&p.value) {
            Ok(()) => Some(DnsMatcher::match_pattern(&p.value)),
            Err(e) => {
                errs.reject(e, p.span);
                None
            }
        },
        (None, None) if errs.after_schema_errors => None,
        (None, None) => {
            errs.reject_help(
                "one of MatchName or MatchPattern is required",
                f.span,
                "add `matchName: example.com` or `matchPattern: \"*.example.com\"`",
            );
            None
        }
    }
}

fn icmp_type_by_name(name: &str, v6: bool) -> Option<u8> {
    let table: &[(&str, u8)] = if v6 {
        &[
            ("DestinationUnreachable", 1),
            ("PacketTooBig", 2),
            ("TimeExceeded", 3),
            ("ParameterProblem", 4),
            ("EchoRequest", 128),
            ("EchoReply", 129),
            ("MulticastListenerQuery", 130),
            ("MulticastListenerReport", 131),
            ("MulticastListenerDone", 132),
            ("RouterSolicitation", 133),
            ("RouterAdvertisement", 134),
            ("NeighborSolicitation", 135),
            ("NeighborAdvertisement", 136),
            ("RedirectMessage", 137),
            ("RouterRenumbering", 138),
            ("ICMPNodeInformationQuery", 139),
            ("ICMPNodeInformationResponse", 140),
            ("InverseNeighborDiscoverySolicitation", 141),
            ("InverseNeighborDiscoveryAdvertisement", 142),
            ("HomeAgentAddressDiscoveryRequest", 144),
            ("HomeAgentAddressDiscoveryReply", 145),
            ("MobilePrefixSolicitation", 146),
            ("MobilePrefixAdvertisement", 147),
            ("DuplicateAddressRequestCodeSuffix", 157),
            ("DuplicateAddressConfirmationCodeSuffix", 158),
            ("ExtendedEchoRequest", 160),
            ("ExtendedEchoReply", 161),
        ]
    } else {
        &[
            ("EchoReply", 0),
            ("DestinationUnreachable", 3),
            ("Redirect", 5),
            ("Echo", 8),
            ("EchoRequest", 8),
            ("RouterAdvertisement", 9),
            ("RouterSelection", 10),
            ("TimeExceeded", 11),
            ("ParameterProblem", 12),
            ("Timestamp", 13),
            ("TimestampReply", 14),
            ("Photuris", 40),
            ("ExtendedEchoRequest", 42),
            ("ExtendedEchoReply", 43),
        ]
    };
    table.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

fn translate_icmp(f: &api::IcmpField, errs: &mut Errors<'_>) -> Option<IcmpSpec> {
    let v6 = match f.family.as_ref().map(|s| s.value.as_str()) {
        None | Some("IPv4") | Some("") => false,
        Some("IPv6") => true,
        Some(other) => {
            let span = f.family.as_ref().map_or(f.span, |s| s.span);
            errs.reject_help(format!("wrong family: {other}"), span, "use IPv4 or IPv6");
            return None;
        }
    };
    let text = &f.icmp_type.value;
    let t = match text.parse::<u8>() {
        Ok(t) => Some(t),
        Err(_) => icmp_type_by_name(text, v6),
    };
    if t.is_none() {
        errs.reject_help(
            format!("invalid ICMP type: {text}"),
            f.icmp_type.span,
            "use a number 0-255 or a name such as EchoRequest",
        );
    }
    Some(IcmpSpec { v6, icmp_type: t? })
}

/// Kubernetes label values: empty, or at most 63 of `[A-Za-z0-9-_.]` starting and ending
/// alphanumeric.
fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// IANA service names (RFC 6335): 1-15 of `[a-z0-9-]`, at least one letter, no hyphen at
/// either end and no double hyphen.
pub fn is_service_name(text: &str) -> bool {
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    (1..=15).contains(&text.len())
        && ok_chars
        && text.chars().any(|c| c.is_ascii_lowercase())
        && !text.starts_with('-')
        && !text.ends_with('-')
        && !text.contains("--")
}

/// A `port` string: a number 0-65535 (Go's ParseUint with base 0), or a named port.
fn parse_port(text: &str) -> Result<PortValue, String> {
    let number = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if let Some(oct) = text.strip_prefix("0o").or_else(|| text.strip_prefix("0O")) {
        u64::from_str_radix(oct, 8).ok()
    } else if text.len() > 1 && text.starts_with('0') {
        u64::from_str_radix(&text[1..], 8).ok()
    } else {
        text.parse::<u64>().ok()
    };
    match number {
        Some(n) if n <= 65535 => Ok(PortValue::Range(n as u16, n as u16)),
        Some(_) => Err(format!(
            "unable to parse port: strconv.ParseUint: parsing {text:?}: value out of range"
        )),
        None => {
            let lower = text.to_ascii_lowercase();
            if is_service_name(&lower) {
                Ok(PortValue::Named(lower))
            } else {
                Err(format!(
                    "unable to parse port: strconv.ParseUint: parsing {text:?}: invalid syntax"
                ))
            }
        }
    }
}

fn translate_port_rule(
    rule: &api::PortRule,
    origin: &Arc<EntryOrigin>,
    ingress: bool,
    deny: bool,
    is_host: bool,
    pc: &PeerContext<'_>,
    errs: &mut Errors<'_>,
) -> Option<PortRule> {
    let options = pc.cx.options;
    let ports_in = rule.ports.as_deref().unwrap_or(&[]);
    if ports_in.len() > 40 {
        errs.reject_help(
            "too many ports, the max is 40",
            rule.span,
            "split the ports into several toPorts entries, or use a range with endPort",
        );
    }
    let l7 = rule.rules.as_ref();
    let l7_kinds = l7.map_or(0, |r| {
        [
            r.http.is_some(),
            r.kafka.is_some(),
            r.dns.is_some(),
            r.l7proto.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    });
    let has_dns = l7.is_some_and(|r| r.dns.is_some());
    let has_l7 = l7_kinds > 0;
    if let Some(r) = l7 {
        if l7_kinds > 1 {
            errs.reject(
                "multiple L7 protocol rule types specified in single rule",
                r.span,
            );
        }
        if r.l7.is_some() && r.l7proto.is_none() {
            errs.reject(
                "'l7' may only be specified when a 'l7proto' is also specified",
                r.span,
            );
        }
        if has_l7 && !options.l7_proxy {
            errs.reject(
                "L7 policy is not supported since L7 proxy is not enabled",
                r.span,
            );
        }
        if ingress && has_dns {
            errs.reject_help(
                "L7 protocol DNS is not supported on ingress yet",
                r.span,
                "DNS rules belong in the egress rules of the clients",
            );
        }
        if is_host {
            if ingress && has_l7 {
                errs.reject("L7 policy is not supported on host ingress yet", r.span);
            } else if !ingress && r.http.is_some() {
                errs.reject(
                    "L7 protocol HTTP is not supported on host egress yet",
                    r.span,
                );
            }
        }
    }
    if let Some(names) = &rule.server_names {
        for n in names {
            if n.value.is_empty() {
                errs.reject("empty server name is not allowed", n.span);
            }
        }
        if !names.is_empty() && has_l7 && rule.terminating_tls.is_none() {
            errs.reject_help(
                "ServerNames are not allowed with L7 rules without TLS termination",
                rule.span,
                "add terminatingTLS (and originatingTLS) so the proxy can see inside TLS, or drop the L7 rules",
            );
        }
    }
    if let Some(listener) = &rule.listener {
        if ingress {
            errs.reject(
                format!(
                    "Listener is not allowed on ingress ({})",
                    listener.name.value
                ),
                listener.span,
            );
        }
        if has_l7 {
            errs.reject(
                format!(
                    "Listener is not allowed with L7 rules ({})",
                    listener.name.value
                ),
                listener.span,
            );
        }
    }
    if has_dns && ports_in.is_empty() {
        errs.reject_help(
            "port 53 must be specified for DNS rules",
            rule.span,
            "add `ports: [{port: \"53\", protocol: ANY}]`",
        );
    }

    let mut ports = Vec::new();
    for p in ports_in {
        let port_text = match &p.port {
            Some(t) if t.value.is_empty() => None,
            other => other.as_ref(),
        };
        let Some(port_text) = port_text else {
            if errs.after_schema_errors {
                continue;
            }
            errs.reject_help(
                "port must be specified",
                p.span,
                "add `port: \"80\"`; use \"0\" for every port",
            );
            continue;
        };
        let proto_text = p.protocol.as_ref().map_or("", |s| s.value.as_str());
        let protocol = match proto_text.to_ascii_uppercase().as_str() {
            "" | "ANY" => Protocol::Any,
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            _ => {
                let span = p.protocol.as_ref().map_or(p.span, |s| s.span);
                errs.reject_help(
                    format!(
                        "invalid protocol {proto_text:?}, must be {{ tcp | udp | sctp | any }}"
                    ),
                    span,
                    if proto_text.eq_ignore_ascii_case("icmp") {
                        "ICMP is not written in ports: use an `icmps` block"
                    } else {
                        "use TCP, UDP, SCTP or ANY"
                    },
                );
                continue;
            }
        };
        let value = match parse_port(&port_text.value) {
            Ok(v) => v,
            Err(e) => {
                errs.reject_help(e, port_text.span, "use a number 0-65535 or a container port name (1-15 characters of a-z, 0-9 and -)");
                continue;
            }
        };
        let value = match (value, &p.end_port) {
            (_, Some(end)) if end.value < 0 => {
                errs.reject(
                    format!(
                        "endPort: Invalid value: {}: must be between 0 and 65535, inclusive",
                        end.value
                    ),
                    end.span,
                );
                continue;
            }
            (PortValue::Range(lo, _), Some(end)) if end.value > 0 && lo > 0 => {
                if end.value > 65535 {
                    errs.reject(
                        format!("unable to parse endPort: {} is out of range", end.value),
                        end.span,
                    );
                    continue;
                }
                let hi = end.value as u16;
                if hi < lo {
                    errs.warn(
                        "end-port-before-port",
                        format!("endPort {hi} is below port {lo}: only port {lo} is matched"),
                        end.span,
                        "endPort must be at least port",
                    );
                    PortValue::Range(lo, lo)
                } else {
                    PortValue::Range(lo, hi)
                }
            }
            (PortValue::Range(0, _), _) => PortValue::Range(0, 65535),
            (v, _) => v,
        };
        if has_l7 && !has_dns && !deny {
            if protocol != Protocol::Tcp {
                errs.reject_help(
                    format!(
                        "L7 rules can only apply to TCP (not {}) except for DNS rules",
                        protocol.as_str()
                    ),
                    p.protocol.as_ref().map_or(p.span, |s| s.span),
                    "set `protocol: TCP` on ports with HTTP rules",
                );
            }
            if value == PortValue::Range(0, 65535) {
                errs.reject("L7 rules can not be used when a port is 0", port_text.span);
            }
        }
        if has_dns {
            if let PortValue::Range(lo, hi) = value {
                if lo != hi {
                    errs.reject(
                        "DNS rules do not support port ranges",
                        p.end_port.as_ref().map_or(p.span, |e| e.span),
                    );
                }
            }
        }
        let protos: &[Protocol] = if protocol == Protocol::Any {
            &[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        } else {
            &[protocol]
        };
        for proto in protos {
            ports.push(PortSpec {
                protocol: *proto,
                port: value.clone(),
            });
        }
    }

    let l7_policy = if deny {
        None
    } else {
        let terminating = rule.terminating_tls.is_some();
        let server_names: Vec<String> = rule
            .server_names
            .iter()
            .flatten()
            .map(|s| s.value.clone())
            .collect();
        let mut http = None;
        let mut dns = None;
        let mut other = None;
        if let Some(r) = l7 {
            if let Some(rules) = &r.http {
                http = Some(
                    rules
                        .iter()
                        .filter_map(|h| translate_http(h, pc.cx, errs))
                        .collect(),
                );
            }
            if let Some(rules) = &r.dns {
                dns = Some(
                    rules
                        .iter()
                        .filter_map(|f| translate_fqdn(f, errs))
                        .collect(),
                );
            }
            if r.kafka.is_some() {
                other = Some("kafka".to_string());
            }
            if let Some(p) = &r.l7proto {
                if let Some(l7) = &r.l7 {
                    for m in l7 {
                        for (k, _) in m {
                            if k.value.is_empty() {
                                errs.reject("empty key in l7 rule", k.span);
                            }
                        }
                    }
                }
                other = Some(p.value.clone());
            }
        }
        if http.is_none()
            && dns.is_none()
            && other.is_none()
            && server_names.is_empty()
            && !terminating
            && rule.originating_tls.is_none()
        {
            None
        } else {
            Some(Arc::new(L7Policy {
                origin: origin.clone(),
                span: l7.map_or(rule.span, |r| r.span),
                http,
                dns,
                other_parser: other,
                server_names,
                terminating_tls: terminating,
            }))
        }
    };
    Some(PortRule {
        ports,
        l7: l7_policy,
    })
}

fn compile_regex(
    field: &str,
    s: &Option<SString>,
    errs: &mut Errors<'_>,
) -> Result<Option<GoRegex>, ()> {
    let Some(s) = s else { return Ok(None) };
    if s.value.is_empty() {
        return Ok(None);
    }
    match GoRegex::new(&s.value) {
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            errs.reject_help(
                format!("invalid {field} regex {:?}: {}", s.value, e.message()),
                s.span,
                "HTTP fields are Go RE2 regexes matched against the whole value, e.g. `/api/.*`",
            );
            Err(())
        }
    }
}

fn translate_http(h: &api::HttpRule, cx: &Context<'_>, errs: &mut Errors<'_>) -> Option<HttpRule> {
    let method = compile_regex("method", &h.method, errs);
    let path = compile_regex("path", &h.path, errs);
    let host = match &h.host {
        // The agent does not check `host`; Envoy would reject a broken one later.
        Some(s) if !s.value.is_empty() => GoRegex::new(&s.value).ok(),
        _ => None,
    };
    let headers = h
        .headers
        .iter()
        .map(|line| {
            // "Name: value" or "Name value" (split on the first space; a trailing ':' on the
            // name is trimmed); a bare name only requires presence.
            match line.value.split_once(' ') {
                Some((name, value)) => (
                    name.trim_end_matches(':').to_string(),
                    Some(value.trim_start().to_string()),
                ),
                None => (line.value.clone(), None),
            }
        })
        .collect();
    let mut header_matches = Vec::new();
    for m in &h.header_matches {
        let Some(name) = m.name.as_ref().filter(|n| !n.value.is_empty()) else {
            errs.reject("Header name missing", m.span);
            continue;
        };
        let mismatch = match m.mismatch.as_ref().map(|s| s.value.as_str()) {
            None | Some("") => MismatchAction::Fail,
            Some("LOG") => MismatchAction::Log,
            Some("ADD") => MismatchAction::Add,
            Some("DELETE") => MismatchAction::Delete,
            Some("REPLACE") => MismatchAction::Replace,
            Some(other) => {
                errs.reject_help(
                    format!("Invalid header action: {other}"),
                    m.mismatch.as_ref().map_or(m.span, |s| s.span),
                    "use LOG, ADD, DELETE or REPLACE",
                );
                continue;
            }
        };
        let value = match (&m.value, &m.secret) {
            (Some(v), _) => Some(v.value.clone()),
            (None, Some(secret)) => {
                let ns = secret
                    .namespace
                    .as_ref()
                    .map(|n| n.value.clone())
                    .unwrap_or_default();
                let data = cx.secrets.get(&(ns, secret.name.value.clone()));
                data.and_then(|d| d.get("value").or_else(|| d.values().next()))
                    .cloned()
            }
            (None, None) => Some(String::new()),
        };
        header_matches.push(HeaderMatch {
            name: name.value.clone(),
            value,
            mismatch,
        });
    }
    let (Ok(method), Ok(path)) = (method, path) else {
        return None;
    };
    Some(HttpRule {
        method,
        path,
        host,
        headers,
        header_matches,
        span: h.span,
    })
}

/// Kubernetes NetworkPolicy → Cilium rules, as Cilium's `ParseNetworkPolicy` does.
pub fn translate_kube(policy: &KubePolicy, cx: &Context<'_>) -> Translated {
    let name = policy
        .meta
        .name
        .as_ref()
        .map(|n| n.value.clone())
        .unwrap_or_default();
    let namespace = policy
        .meta
        .namespace
        .as_ref()
        .map(|n| n.value.clone())
        .unwrap_or_else(|| "default".into());
    let origin = Arc::new(PolicyOrigin {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(namespace.clone()),
        name: name.clone(),
        file: cx.file,
        span: policy.span,
    });
    let prefix = "Invalid NetworkPolicy: ";
    let mut errs = Errors {
        prefix,
        diags: Vec::new(),
        after_schema_errors: policy.schema_errors,
    };
    let meta_span = if policy.meta.span.line == 0 {
        policy.span
    } else {
        policy.meta.span
    };
    if name.is_empty() {
        errs.reject("metadata.name is required", meta_span);
    }
    if policy.meta.namespace.is_none() {
        errs.warn(
            "namespace-missing",
            format!("NetworkPolicy `{name}` has no metadata.namespace: it applies to the namespace it is created in (kubectl's default: `default`)"),
            meta_span,
            "set metadata.namespace explicitly",
        );
    }
    let rule_origin = Arc::new(RuleOrigin {
        policy: origin.clone(),
        spec_index: None,
        span: policy.span,
    });
    let pc = PeerContext {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(&namespace),
        subject_selects_init: false,
        cx,
    };
    let mut subject = policy
        .pod_selector
        .as_ref()
        .and_then(|s| convert_selector(s, &mut errs))
        .unwrap_or_default();
    subject.push(
        SelectorKey::k8s(KEY_NAMESPACE),
        Operator::In,
        vec![namespace.clone()],
    );

    // policyTypes defaults: Ingress always, Egress when egress rules are present.
    let mut ingress_type = true;
    let mut egress_type = policy.egress.is_some();
    if let Some(types) = &policy.policy_types {
        ingress_type = false;
        egress_type = false;
        for t in types {
            match t.value.as_str() {
                "Ingress" => ingress_type = true,
                "Egress" => egress_type = true,
                other => errs.reject_help(
                    format!("policyTypes: Unsupported value: {other:?}"),
                    t.span,
                    "use Ingress or Egress",
                ),
            }
        }
    }
    let mut entries = Vec::new();
    for (dir, section, rules, enabled) in [
        (
            Direction::Ingress,
            RuleSection::Ingress,
            &policy.ingress,
            ingress_type,
        ),
        (
            Direction::Egress,
            RuleSection::Egress,
            &policy.egress,
            egress_type,
        ),
    ] {
        if !enabled {
            continue;
        }
        for (index, r) in rules.iter().flatten().enumerate() {
            let eorigin = Arc::new(EntryOrigin {
                rule: rule_origin.clone(),
                section,
                index,
                span: r.span,
            });
            // No peers means every peer, wildcard selector included world (`from: []` too).
            let peers = match &r.peers {
                Some(list) if !list.is_empty() => Peers::Selectors(
                    list.iter()
                        .flat_map(|p| knp_peer(p, &pc, &mut errs))
                        .collect(),
                ),
                _ => Peers::Selectors(vec![PeerSelector::Labels(Selector::default())]),
            };
            let ports = match &r.ports {
                Some(list) if !list.is_empty() => Some(vec![PortRule {
                    ports: list.iter().filter_map(|p| knp_port(p, &mut errs)).collect(),
                    l7: None,
                }]),
                _ => None,
            };
            entries.push(Entry {
                origin: eorigin,
                direction: dir,
                deny: false,
                peers,
                ports,
                icmps: None,
                endpoint_peers: false,
            });
        }
    }
    let valid = !policy.schema_errors && !errs.diags.iter().any(Diagnostic::is_error);
    let rule = Rule {
        origin: rule_origin,
        subject: Subject::Endpoints(subject),
        has_ingress: ingress_type,
        has_egress: egress_type,
        default_deny_ingress: None,
        default_deny_egress: None,
        entries,
        requires_ingress: vec![],
        requires_egress: vec![],
    };
    let (rules, rejected) = if valid {
        (vec![rule], vec![])
    } else {
        (vec![], vec![rule])
    };
    Translated {
        rejected,
        origin,
        rules,
        diagnostics: errs.diags,
        valid,
    }
}

fn knp_peer(p: &api::KnpPeer, pc: &PeerContext<'_>, errs: &mut Errors<'_>) -> Vec<PeerSelector> {
    if let Some(block) = &p.ip_block {
        let net = match parse_cidr(&block.cidr.value, false) {
            Ok(n) => n,
            Err(e) => {
                errs.reject(e, block.cidr.span);
                return vec![];
            }
        };
        let mut except = Vec::new();
        for e in &block.except {
            match parse_cidr(&e.value, false) {
                Ok(n) if net.contains(&n) => except.push(n),
                Ok(n) => errs.reject(
                    format!("allow CIDR prefix {net} does not contain exclude CIDR prefix {n}"),
                    e.span,
                ),
                Err(err) => errs.reject(err, e.span),
            }
        }
        return vec![PeerSelector::Cidr { net, except }];
    }
    let mut s = match &p.pod_selector {
        Some(ps) => match convert_selector(ps, errs) {
            Some(s) => s,
            None => return vec![],
        },
        None => Selector::default(),
    };
    match &p.namespace_selector {
        None => {
            if let Some(ns) = pc.namespace {
                s.push(
                    SelectorKey::k8s(KEY_NAMESPACE),
                    Operator::In,
                    vec![ns.to_string()],
                );
            }
        }
        Some(nss) => {
            let Some(ns_sel) = convert_selector(nss, errs) else {
                return vec![];
            };
            if ns_sel.is_wildcard() {
                s.push(SelectorKey::k8s(KEY_NAMESPACE), Operator::Exists, vec![]);
            }
            for r in ns_sel.requirements {
                s.push(
                    SelectorKey::k8s(&format!("{PREFIX_NAMESPACE_LABELS}{}", r.key.key)),
                    r.op,
                    r.values,
                );
            }
        }
    }
    vec![PeerSelector::Labels(s)]
}

fn knp_port(p: &api::KnpPort, errs: &mut Errors<'_>) -> Option<PortSpec> {
    let protocol = match p.protocol.as_ref().map(|s| s.value.as_str()) {
        None | Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            errs.reject_help(
                format!("protocol: Unsupported value: {other:?}"),
                p.protocol.as_ref().map_or(p.span, |s| s.span),
                "use TCP, UDP or SCTP (NetworkPolicy protocols are upper case)",
            );
            return None;
        }
    };
    let port = match &p.port {
        None => PortValue::Range(0, 65535),
        Some(text) => {
            match text.value.parse::<u32>() {
                Ok(0) => {
                    errs.reject(
                        "port: Invalid value: 0: must be between 1 and 65535, inclusive",
                        text.span,
                    );
                    return None;
                }
                Ok(n) if n <= 65535 => {
                    let lo = n as u16;
                    match &p.end_port {
                        Some(end) if end.value >= i64::from(lo) && end.value <= 65535 => {
                            PortValue::Range(lo, end.value as u16)
                        }
                        Some(end) => {
                            errs.reject(format!("endPort: Invalid value: {}: must be greater than or equal to port", end.value), end.span);
                            return None;
                        }
                        None => PortValue::Range(lo, lo),
                    }
                }
                Ok(n) => {
                    errs.reject(
                        format!("port: Invalid value: {n}: must be between 1 and 65535, inclusive"),
                        text.span,
                    );
                    return None;
                }
                Err(_) if is_service_name(&text.value) => PortValue::Named(text.value.clone()),
                Err(_) => {
                    errs.reject(
                        format!(
                            "port: Invalid value: {:?}: must be a valid port name",
                            text.value
                        ),
                        text.span,
                    );
                    return None;
                }
            }
        }
    };
    Some(PortSpec { protocol, port })
}
