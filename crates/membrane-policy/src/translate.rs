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
    if let Some(log) = &raw.log
        && (log.value.chars().count() > 32 || log.value.chars().any(|c| c.is_control()))
    {
        errs.reject(
            "log value must be at most 32 printable characters",
            log.span,
        );
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
/// namespace key in matchLabels is overwritten (Cilium's `EndpointSelector.AddMatch` sets
/// `MatchLabels[key]`); an unprefixed one, and any matchExpressions requirement on the key,
/// stays beside it (and then usually selects nothing).
fn inject_subject_namespace(
    s: &mut Selector,
    raw: &LabelSelector,
    ns: &str,
    errs: &mut Errors<'_>,
) {
    let k8s_ns = SelectorKey::k8s(KEY_NAMESPACE);
    // convert_selector pushes one requirement per matchLabels entry, first.
    let from_labels = raw.match_labels.len().min(s.requirements.len());
    let before = s.requirements.len();
    let mut index = 0;
    s.requirements.retain(|r| {
        let keep = index >= from_labels || r.key != k8s_ns;
        index += 1;
        keep
    });
    let overwritten = s.requirements.len() != before;
    if overwritten {
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
    } else if s.requirements.iter().any(|r| r.key == k8s_ns) {
        errs.warn(
            "subject-namespace-any",
            format!("endpointSelector has a matchExpressions requirement on `k8s:{KEY_NAMESPACE}`: it is kept beside the injected `k8s:{KEY_NAMESPACE}={ns}`, so the policy can only select pods of `{ns}`"),
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
        // Go's netip.ParsePrefix: plain decimal bits, no sign and no leading zero.
        let plain_decimal = !len.is_empty()
            && len.bytes().all(|b| b.is_ascii_digit())
            && (len.len() == 1 || !len.starts_with('0'));
        if !plain_decimal {
            return Err(format!(
                "unable to parse CIDR: invalid CIDR address: {text}"
            ));
        }
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
    } else if let Some(sel) = &rule.group_selector
        && let Some(s) = convert_selector(sel, errs)
    {
        for group in pc.cx.cidr_groups.iter().filter(|g| s.matches(&g.labels)) {
            nets.extend(group.cidrs.iter().copied());
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

/// A `port` string: a named port, or a number 0-65535 (Go's ParseUint with base 0).
///
/// As in Cilium's `PortProtocol.sanitize`, the IANA service-name check comes first, so
/// `0x50` and `0o120` are names rather than port 80 (Go's `iana.IsSvcName` is
/// case-insensitive; the name is lowercased).
fn parse_port(text: &str) -> Result<PortValue, String> {
    let lower = text.to_ascii_lowercase();
    if is_service_name(&lower) {
        return Ok(PortValue::Named(lower));
    }
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
        None => Err(format!(
            "unable to parse port: strconv.ParseUint: parsing {text:?}: invalid syntax"
        )),
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
        // The number as written, before port 0 is widened to every port.
        let number = match value {
            PortValue::Range(lo, _) => Some(lo),
            PortValue::Named(_) => None,
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
        if has_l7 && !has_dns && !deny && protocol != Protocol::Tcp {
            errs.reject_help(
                format!(
                    "L7 rules can only apply to TCP (not {}) except for DNS rules",
                    protocol.as_str()
                ),
                p.protocol.as_ref().map_or(p.span, |s| s.span),
                "set `protocol: TCP` on ports with HTTP rules",
            );
        }
        // Cilium's `PortProtocol.sanitize`: with DNS rules, an endPort above the port is a
        // range (port 0 included); without endPort, port 0 is not a range here.
        let dns_range = has_dns
            && number
                .is_some_and(|lo| p.end_port.as_ref().is_some_and(|e| e.value > i64::from(lo)));
        if dns_range {
            errs.reject(
                "DNS rules do not support port ranges",
                p.end_port.as_ref().map_or(p.span, |e| e.span),
            );
        }
        // `PortRule.sanitize` rejects port 0 for every kind of L7 rule, DNS included (it
        // returns the range error above first).
        if has_l7 && !deny && number == Some(0) && !dns_range {
            errs.reject("L7 rules can not be used when a port is 0", port_text.span);
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

    // The API server defaults an absent or empty policyTypes to [Ingress], plus Egress when
    // `spec.egress` has rules (networking/v1 SetDefaults_NetworkPolicy).
    let has_ingress_rules = policy.ingress.as_ref().is_some_and(|r| !r.is_empty());
    let has_egress_rules = policy.egress.as_ref().is_some_and(|r| !r.is_empty());
    let mut ingress_type = true;
    let mut egress_type = has_egress_rules;
    if let Some(types) = policy.policy_types.as_ref().filter(|t| !t.is_empty()) {
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
    // Cilium's ParseNetworkPolicy translates every ingress and egress rule whatever
    // policyTypes says; policyTypes only adds the default deny of a direction without rules:
    // ingress unless only Egress is listed, egress when Egress is listed.
    let enforce_ingress = has_ingress_rules || ingress_type || !egress_type;
    let enforce_egress = has_egress_rules || egress_type;
    for (has_rules, listed, field, type_name) in [
        (has_ingress_rules, ingress_type, "ingress", "Ingress"),
        (has_egress_rules, egress_type, "egress", "Egress"),
    ] {
        if has_rules && !listed {
            errs.warn(
                "knp-rules-outside-policy-types",
                format!("`{field}` rules are enforced by Cilium although policyTypes does not list {type_name} (Kubernetes would ignore them)"),
                policy.policy_types.as_ref().and_then(|t| t.first()).map_or(policy.span, |t| t.span),
                format!("add {type_name} to policyTypes, or remove the `{field}` rules"),
            );
        }
    }
    let mut entries = Vec::new();
    for (dir, section, rules) in [
        (Direction::Ingress, RuleSection::Ingress, &policy.ingress),
        (Direction::Egress, RuleSection::Egress, &policy.egress),
    ] {
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
        has_ingress: enforce_ingress,
        has_egress: enforce_egress,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::api::Resource;
    use crate::labels::{Label, LabelSet};
    use crate::policy_set::{PolicySet, parse_resources};
    use crate::yaml::Embedding;

    fn indent(body: &str) -> String {
        body.lines().map(|l| format!("  {l}\n")).collect::<String>()
    }

    /// A CiliumNetworkPolicy `p` in namespace `ns1` with this `spec:` body.
    fn cnp(spec: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: ns1\nspec:\n{}",
            indent(spec)
        )
    }

    fn ccnp(spec: &str) -> String {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: p\nspec:\n{}",
            indent(spec)
        )
    }

    fn knp(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns1\nspec:\n{}",
            indent(spec)
        )
    }

    fn build_with(yaml: &str, options: &Options) -> (PolicySet, Vec<Diagnostic>) {
        let (resources, parse) = parse_resources(yaml, Embedding::default());
        let resources: Vec<(FileId, Resource)> = resources.into_iter().map(|r| (0, r)).collect();
        (
            PolicySet::build(&resources, options, &Secrets::default()),
            parse,
        )
    }

    /// Every diagnostic, schema and translation, as (severity is error, code, message).
    fn diags_with(yaml: &str, options: &Options) -> (bool, Vec<Diagnostic>) {
        let (set, mut all) = build_with(yaml, options);
        all.extend(set.diagnostics().map(|(_, d)| d.clone()));
        let valid = !set.policies.is_empty() && set.policies.iter().all(|p| p.valid);
        (valid, all)
    }

    fn error_messages_with(yaml: &str, options: &Options) -> Vec<String> {
        let (_, diags) = diags_with(yaml, options);
        diags
            .into_iter()
            .filter(Diagnostic::is_error)
            .map(|d| d.message)
            .collect()
    }

    fn error_messages(yaml: &str) -> Vec<String> {
        error_messages_with(yaml, &Options::default())
    }

    fn warning_codes(yaml: &str) -> Vec<&'static str> {
        let (_, diags) = diags_with(yaml, &Options::default());
        diags
            .into_iter()
            .filter(|d| d.severity == crate::Severity::Warning)
            .map(|d| d.code)
            .collect()
    }

    #[track_caller]
    fn assert_rejected_with(yaml: &str, options: &Options, wanted: &str) {
        let (valid, diags) = diags_with(yaml, options);
        assert!(!valid, "should be rejected: {yaml}");
        assert!(
            diags
                .iter()
                .any(|d| d.is_error() && d.message.contains(wanted)),
            "no error containing {wanted:?} in {:#?}",
            diags.iter().map(|d| &d.message).collect::<Vec<_>>()
        );
    }

    #[track_caller]
    fn assert_rejected(yaml: &str, wanted: &str) {
        assert_rejected_with(yaml, &Options::default(), wanted);
    }

    #[track_caller]
    fn rules_with(yaml: &str, options: &Options) -> Vec<Rule> {
        let (set, _) = build_with(yaml, options);
        let (valid, diags) = diags_with(yaml, options);
        let errors: Vec<&String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| &d.message)
            .collect();
        assert!(valid && errors.is_empty(), "should be valid: {errors:#?}");
        set.rules()
    }

    #[track_caller]
    fn rules(yaml: &str) -> Vec<Rule> {
        rules_with(yaml, &Options::default())
    }

    #[track_caller]
    fn rule(yaml: &str) -> Rule {
        let mut r = rules(yaml);
        assert_eq!(r.len(), 1);
        r.remove(0)
    }

    #[track_caller]
    fn assert_valid(yaml: &str) {
        let _ = rules(yaml);
    }

    fn subject(r: &Rule) -> String {
        match &r.subject {
            Subject::Endpoints(s) => format!("endpoints {s}"),
            Subject::Nodes(s) => format!("nodes {s}"),
        }
    }

    /// The peers of an entry, each as displayed; `None` for the wildcard.
    fn peers(e: &Entry) -> Option<Vec<String>> {
        match &e.peers {
            Peers::Wildcard => None,
            Peers::Selectors(s) => Some(s.iter().map(ToString::to_string).collect()),
        }
    }

    fn ports(e: &Entry) -> Vec<(Protocol, PortValue)> {
        e.ports
            .iter()
            .flatten()
            .flat_map(|pr| pr.ports.iter().map(|p| (p.protocol, p.port.clone())))
            .collect()
    }

    fn pod(labels: &[(&str, &str)]) -> LabelSet {
        LabelSet::new(labels.iter().map(|(k, v)| Label::k8s(k, v)).collect())
    }

    fn reserved(name: &str) -> LabelSet {
        LabelSet::new(vec![Label::reserved(name)])
    }

    fn label_peer(e: &Entry, i: usize) -> &Selector {
        match &e.peers {
            Peers::Selectors(s) => match &s[i] {
                PeerSelector::Labels(sel) => sel,
                other => panic!("not a label selector: {other}"),
            },
            Peers::Wildcard => panic!("wildcard peers"),
        }
    }

    const HTTP_GET: &str = "rules: {http: [{method: GET, path: \"/\"}]}";

    // ---- §7.1 validation vectors ----

    // semantics §7.1 vector 1
    #[test]
    fn http_on_tcp_ports_is_valid() {
        let r = rule(&cnp(&format!(
            "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}, {{port: \"81\", protocol: TCP}}]\n    {HTTP_GET}"
        )));
        let e = &r.entries[0];
        assert_eq!(
            ports(e),
            vec![
                (Protocol::Tcp, PortValue::Range(80, 80)),
                (Protocol::Tcp, PortValue::Range(81, 81))
            ]
        );
        let l7 = e.ports.as_ref().unwrap()[0].l7.as_ref().unwrap();
        assert_eq!(l7.parser(), "http");
        let http = l7.http.as_ref().unwrap();
        assert_eq!(http.len(), 1);
        assert!(http[0].method.as_ref().unwrap().is_full_match("GET"));
        assert!(http[0].path.as_ref().unwrap().is_full_match("/"));
        assert!(!http[0].path.as_ref().unwrap().is_full_match("/x"));
    }

    // semantics §7.1 vector 2
    #[test]
    fn dns_rules_need_ports() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toEndpoints: [{}]\n  toPorts:\n  - rules: {dns: [{matchName: domain.com}]}",
            ),
            "port 53 must be specified for DNS rules",
        );
    }

    // semantics §7.1 vector 3
    #[test]
    fn dns_on_tcp_and_udp_53_is_valid() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toEndpoints: [{}]\n  toPorts:\n  - ports: [{port: \"53\", protocol: TCP}, {port: \"53\", protocol: UDP}]\n    rules: {dns: [{matchName: domain.com}]}",
        ));
        let e = &r.entries[0];
        assert_eq!(
            ports(e),
            vec![
                (Protocol::Tcp, PortValue::Range(53, 53)),
                (Protocol::Udp, PortValue::Range(53, 53))
            ]
        );
        let l7 = e.ports.as_ref().unwrap()[0].l7.as_ref().unwrap();
        assert_eq!(l7.parser(), "dns");
        let dns = l7.dns.as_ref().unwrap();
        assert!(dns[0].matches("DOMAIN.com."));
        assert!(!dns[0].matches("www.domain.com"));
    }

    // semantics §7.1 vector 8 and §2.8: the port number of DNS rules is not checked.
    #[test]
    fn dns_on_any_port_and_any_protocol_is_valid_on_egress() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"5353\"}]\n    rules: {dns: [{matchPattern: \"*\"}]}",
        ));
        assert_eq!(
            ports(&r.entries[0]),
            vec![
                (Protocol::Tcp, PortValue::Range(5353, 5353)),
                (Protocol::Udp, PortValue::Range(5353, 5353)),
                (Protocol::Sctp, PortValue::Range(5353, 5353))
            ]
        );
    }

    // semantics §7.1 vector 4
    #[test]
    fn sctp_without_l7_is_valid_in_allow_and_deny() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toPorts: [{ports: [{port: \"4000\", protocol: SCTP}]}]\negressDeny:\n- toPorts: [{ports: [{port: \"4000\", protocol: SCTP}]}]",
        ));
        assert_eq!(r.entries.len(), 2);
        for e in &r.entries {
            assert_eq!(
                ports(e),
                vec![(Protocol::Sctp, PortValue::Range(4000, 4000))]
            );
        }
        assert!(!r.entries[0].deny);
        assert!(r.entries[1].deny);
    }

    // semantics §7.1 vectors 5, 6 and 7
    #[test]
    fn l7_only_on_tcp() {
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: UDP}}]\n    {HTTP_GET}"
            )),
            "L7 rules can only apply to TCP (not UDP) except for DNS rules",
        );
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: ANY}}]\n    {HTTP_GET}"
            )),
            "L7 rules can only apply to TCP (not ANY) except for DNS rules",
        );
        // No protocol means ANY.
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\"}}]\n    {HTTP_GET}"
            )),
            "(not ANY)",
        );
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: SCTP}}]\n    {HTTP_GET}"
            )),
            "(not SCTP)",
        );
        for order in [
            "[{port: \"80\", protocol: TCP}, {port: \"12345\", protocol: UDP}]",
            "[{port: \"12345\", protocol: UDP}, {port: \"80\", protocol: TCP}]",
        ] {
            assert_rejected(
                &cnp(&format!(
                    "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: {order}\n    {HTTP_GET}"
                )),
                "L7 rules can only apply to TCP (not UDP) except for DNS rules",
            );
        }
    }

    // semantics §7.1 vector 8
    #[test]
    fn dns_on_ingress_is_rejected() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"53\", protocol: ANY}]\n    rules: {dns: [{matchName: a.com}]}",
            ),
            "L7 protocol DNS is not supported on ingress yet",
        );
    }

    // semantics §7.1 vector 9
    #[test]
    fn server_names() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"443\", protocol: TCP}]\n    serverNames: [foo.bar.com]",
        ));
        let l7 = r.entries[0].ports.as_ref().unwrap()[0].l7.clone().unwrap();
        assert_eq!(l7.server_names, vec!["foo.bar.com".to_string()]);
        assert_eq!(l7.parser(), "tls");
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"443\", protocol: TCP}]\n    serverNames: [\"\"]",
            ),
            "empty server name is not allowed",
        );
    }

    // semantics §7.1 vector 10
    #[test]
    fn server_names_with_l7_need_tls_termination() {
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\negress:\n- toPorts:\n  - ports: [{{port: \"443\", protocol: TCP}}]\n    serverNames: [foo.bar.com]\n    {HTTP_GET}"
            )),
            "ServerNames are not allowed with L7 rules without TLS termination",
        );
        let r = rule(&cnp(&format!(
            "endpointSelector: {{}}\negress:\n- toPorts:\n  - ports: [{{port: \"443\", protocol: TCP}}]\n    serverNames: [foo.bar.com]\n    terminatingTLS: {{secret: {{name: tls, namespace: ns1}}}}\n    {HTTP_GET}"
        )));
        let l7 = r.entries[0].ports.as_ref().unwrap()[0].l7.clone().unwrap();
        assert!(l7.terminating_tls);
        assert_eq!(l7.parser(), "http");
    }

    // semantics §7.1 vector 11
    #[test]
    fn listeners() {
        let listener =
            "listener: {envoyConfig: {kind: CiliumEnvoyConfig, name: cec}, name: myCustomListener}";
        assert_valid(&cnp(&format!(
            "endpointSelector: {{}}\negress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {listener}"
        )));
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {listener}"
            )),
            "Listener is not allowed on ingress (myCustomListener)",
        );
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\negress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {listener}\n    {HTTP_GET}"
            )),
            "Listener is not allowed with L7 rules (myCustomListener)",
        );
    }

    // semantics §7.1 vector 12
    #[test]
    fn l7_on_port_zero_is_rejected() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"0\", protocol: TCP}]\n    rules: {http: [{}]}",
            ),
            "L7 rules can not be used when a port is 0",
        );
    }

    // semantics §7.1 vector 13
    #[test]
    fn http_regexes_are_checked() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {http: [{path: \"*\"}]}",
            ),
            "invalid path regex \"*\": error parsing regexp: missing argument to repetition operator: `*`",
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {http: [{method: \"*\"}]}",
            ),
            "invalid method regex",
        );
        // semantics §2.13: `host` is not checked by the agent.
        assert_valid(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {http: [{host: \"*\"}]}",
        ));
    }

    // semantics §7.1 vector 14
    #[test]
    fn cidr_rules() {
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{}]"),
            "one of cidr, cidrGroupRef, or cidrGroupSelector is required",
        );
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 0.0.0.0/0}, {cidr: \"::/0\"}, {cidr: \"ff02::/64\"}]",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec!["cidr 0.0.0.0/0", "cidr ::/0", "cidr ff02::/64"]
        );
        // A reference alone is valid (the group is not defined: a warning, not an error).
        let yaml = cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidrGroupRef: g}]");
        assert_valid(&yaml);
        assert!(warning_codes(&yaml).contains(&"cidr-group-missing"));
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toCIDRSet: [{cidrGroupRef: g, cidrGroupSelector: {matchLabels: {a: b}}}]",
            ),
            "more than one of cidr, cidrGroupRef, or cidrGroupSelector may not be set",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/254.0.0.255}]"),
            "CIDR cannot specify non-contiguous mask",
        );
    }

    // semantics §7.1 vector 15
    #[test]
    fn dns_rules_on_a_port_range_are_rejected() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"443\", endPort: 445, protocol: TCP}]\n    rules: {dns: [{matchName: a.com}]}",
            ),
            "DNS rules do not support port ranges",
        );
    }

    // semantics §7.1 vector 16
    #[test]
    fn host_policies_and_l7() {
        assert_rejected(
            &ccnp(&format!(
                "nodeSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {HTTP_GET}"
            )),
            "L7 policy is not supported on host ingress yet",
        );
        assert_rejected(
            &ccnp(&format!(
                "nodeSelector: {{}}\negress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {HTTP_GET}"
            )),
            "L7 protocol HTTP is not supported on host egress yet",
        );
        let r = rule(&ccnp(
            "nodeSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"53\", protocol: UDP}]\n    rules: {dns: [{matchPattern: \"*\"}]}",
        ));
        assert_eq!(subject(&r), "nodes {}");
        let r = rule(&ccnp(
            "nodeSelector: {}\ningressDeny:\n- fromEndpoints: [{}]",
        ));
        assert!(r.entries[0].deny);
        assert!(r.has_ingress && !r.has_egress);
    }

    // semantics §7.1 vector 17
    #[test]
    fn exactly_one_subject_selector() {
        assert_rejected(
            &ccnp("endpointSelector: {}\nnodeSelector: {}\ningress: [{}]"),
            "Invalid CiliumClusterwideNetworkPolicy spec: rule cannot have both EndpointSelector and NodeSelector",
        );
        assert_rejected(
            &cnp("ingress: [{}]"),
            "Invalid CiliumNetworkPolicy spec: rule must have one of EndpointSelector or NodeSelector",
        );
    }

    fn many_ports(n: u16) -> String {
        let ports: Vec<String> = (0..n)
            .map(|i| format!("{{port: \"{}\", protocol: TCP}}", 1000 + i))
            .collect();
        format!("[{}]", ports.join(", "))
    }

    // semantics §7.1 vector 18
    #[test]
    fn at_most_40_ports_per_port_rule() {
        let r = rule(&cnp(&format!(
            "endpointSelector: {{}}\ningress:\n- toPorts: [{{ports: {}}}]",
            many_ports(40)
        )));
        assert_eq!(ports(&r.entries[0]).len(), 40);
        for section in ["ingress", "ingressDeny", "egress", "egressDeny"] {
            assert_rejected(
                &cnp(&format!(
                    "endpointSelector: {{}}\n{section}:\n- toPorts: [{{ports: {}}}]",
                    many_ports(41)
                )),
                "too many ports, the max is 40",
            );
        }
    }

    // semantics §7.1 vector 19: the extended protocols need a flag membrane does not have.
    #[test]
    fn extended_protocols_are_rejected() {
        for proto in ["VRRP", "IGMP"] {
            assert_rejected(
                &cnp(&format!(
                    "endpointSelector: {{}}\ningress:\n- toPorts: [{{ports: [{{port: \"1\", protocol: {proto}}}]}}]"
                )),
                &format!("invalid protocol \"{proto}\", must be {{ tcp | udp | sctp | any }}"),
            );
        }
        // ICMP in ports gets a pointer to `icmps`.
        let (_, diags) = diags_with(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"8\", protocol: ICMP}]}]",
            ),
            &Options::default(),
        );
        let d = diags.iter().find(|d| d.is_error()).unwrap();
        assert!(d.help.as_deref().unwrap().contains("icmps"));
    }

    // semantics §7.1 vector 20
    #[test]
    fn icmp_validation() {
        let fields: Vec<String> = (0..41).map(|i| format!("{{type: {i}}}")).collect();
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- icmps: [{{fields: [{}]}}]",
                fields.join(", ")
            )),
            "too many types, the max is 40",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\ningress:\n- icmps: [{fields: [{type: 8, family: hoge}]}]"),
            "wrong family: hoge",
        );
        for section in ["ingress", "ingressDeny", "egress", "egressDeny"] {
            assert_rejected(
                &cnp(&format!(
                    "endpointSelector: {{}}\n{section}:\n- icmps: [{{fields: [{{type: 8}}]}}]\n  toPorts: [{{ports: [{{port: \"80\", protocol: TCP}}]}}]"
                )),
                "the ICMPs block may only be present without ToPorts. Define a separate rule to use ToPorts",
            );
        }
    }

    // semantics §7.3 vector 57 and §9.13: ICMP types by number and by name, per family.
    #[test]
    fn icmp_types() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest}, {type: EchoRequest, family: IPv6}, {type: \"128\", family: IPv6}]}]",
        ));
        let icmps = r.entries[0].icmps.clone().unwrap();
        assert_eq!(
            icmps,
            vec![
                IcmpSpec {
                    v6: false,
                    icmp_type: 8
                },
                IcmpSpec {
                    v6: false,
                    icmp_type: 8
                },
                IcmpSpec {
                    v6: true,
                    icmp_type: 128
                },
                IcmpSpec {
                    v6: true,
                    icmp_type: 128
                },
            ]
        );
        assert!(r.entries[0].ports.is_none());
        assert_rejected(
            &cnp("endpointSelector: {}\ningress:\n- icmps: [{fields: [{type: Bogus}]}]"),
            "invalid ICMP type: Bogus",
        );
        // An empty icmps list is the same as none (Go's len()==0).
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- icmps: []\n  toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]",
        ));
        assert!(r.entries[0].icmps.is_none());
    }

    #[test]
    fn icmp_rules_need_the_flag() {
        let off = Options {
            icmp_rules: false,
            ..Options::default()
        };
        assert_rejected_with(
            &cnp("endpointSelector: {}\ningress:\n- icmps: [{fields: [{type: 8}]}]"),
            &off,
            "ICMP rules can only be applied when the \"enable-icmp-rules\" flag is set",
        );
    }

    // semantics §7.1 vector 21
    #[test]
    fn generic_l7_proto() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {l7proto: test.lineparser, l7: [{method: PUT, path: /}]}",
        ));
        let l7 = r.entries[0].ports.as_ref().unwrap()[0].l7.clone().unwrap();
        assert_eq!(l7.parser(), "test.lineparser");
        assert_valid(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {l7proto: test.lineparser}",
        ));
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {l7proto: test.lineparser, l7: [{\"\": x}]}",
            ),
            "empty key in l7 rule",
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {l7: [{method: PUT}]}",
            ),
            "'l7' may only be specified when a 'l7proto' is also specified",
        );
    }

    // semantics §7.1 vector 22
    #[test]
    fn bad_selector_operator() {
        assert_rejected(
            &cnp(
                "endpointSelector: {matchExpressions: [{key: app, operator: asdfasdfasdf}]}\ningress: [{}]",
            ),
            "invalid label selector: matchExpressions[0].operator: Invalid value: \"asdfasdfasdf\": not a valid selector operator",
        );
    }

    #[test]
    fn selector_values_follow_kubernetes_rules() {
        assert_rejected(
            &cnp("endpointSelector: {matchExpressions: [{key: app, operator: In}]}\ningress: [{}]"),
            "matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}\ningress: [{}]",
            ),
            "matchExpressions[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        );
        assert_rejected(
            &cnp("endpointSelector: {matchLabels: {app: \"-bad\"}}\ningress: [{}]"),
            "invalid label selector: matchLabels: Invalid value: \"-bad\"",
        );
        // An empty value is a valid label value.
        assert_valid(&cnp(
            "endpointSelector: {matchLabels: {app: \"\"}}\ningress: [{}]",
        ));
    }

    // semantics §7.1 vectors 23 and 41, §2.1
    #[test]
    fn a_rule_needs_a_rule_list() {
        let msg = "Invalid CiliumNetworkPolicy spec: rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny";
        assert_rejected(&cnp("endpointSelector: {}"), msg);
        // vector 41: the seed's `ingress: []` / `egress: []` count as missing.
        assert_rejected(&cnp("endpointSelector: {}\ningress: []\negress: []"), msg);
        // semantics §3.2: enableDefaultDeny alone does not make a rule.
        assert_rejected(
            &cnp("endpointSelector: {}\nenableDefaultDeny: {ingress: true}"),
            msg,
        );
    }

    // semantics §7.1 vectors 24 and 25
    #[test]
    fn one_kind_of_peer_per_rule() {
        let msgs = error_messages(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  fromCIDR: [10.0.0.0/8]",
        ));
        assert_eq!(
            msgs,
            vec![
                "Invalid CiliumNetworkPolicy spec: combining FromEndpoints and FromCIDR is not supported yet"
            ]
        );
        for (a, b) in [
            ("toFQDNs: [{matchName: a.com}]", "toEndpoints: [{}]"),
            ("toEndpoints: [{}]", "toFQDNs: [{matchName: a.com}]"),
        ] {
            let msgs = error_messages(&cnp(&format!(
                "endpointSelector: {{}}\negress:\n- {a}\n  {b}"
            )));
            assert_eq!(msgs.len(), 1, "{msgs:?}");
            assert!(msgs[0].contains("combining"), "{msgs:?}");
            assert!(msgs[0].contains("ToFQDNs") && msgs[0].contains("ToEndpoints"));
        }
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toEntities: [world]\n  toServices: [{k8sService: {serviceName: s, namespace: ns1}}]",
            ),
            "combining ToEntities and ToServices is not supported yet",
        );
        // toFQDNs and toServices may carry toPorts.
        assert_valid(&cnp(
            "endpointSelector: {}\negress:\n- toFQDNs: [{matchName: a.com}]\n  toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]",
        ));
        // Empty lists do not count (Go's len()).
        assert_valid(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  fromCIDR: []",
        ));
    }

    // semantics §9.10: deny rules are checked too (membrane does not copy the v1.17 bug).
    #[test]
    fn deny_rules_cannot_mix_peer_kinds_either() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningressDeny:\n- fromEndpoints: [{}]\n  fromCIDR: [10.0.0.0/8]",
            ),
            "combining FromEndpoints and FromCIDR is not supported yet",
        );
    }

    // semantics §7.1 vector 26
    #[test]
    fn unknown_entity() {
        let (valid, diags) = diags_with(
            &cnp("endpointSelector: {}\ningress:\n- fromEntities: [foo]"),
            &Options::default(),
        );
        assert!(!valid);
        let d = diags.iter().find(|d| d.is_error()).unwrap();
        assert_eq!(
            d.message,
            "Invalid CiliumNetworkPolicy spec: unsupported entity: foo"
        );
    }

    // semantics §7.1 vector 27
    #[test]
    fn except_must_be_inside_the_cidr() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]",
            ),
            "allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix 192.168.0.0/16",
        );
    }

    // semantics §7.1 vector 28
    #[test]
    fn node_selector_only_in_ccnp() {
        assert_rejected(
            &cnp("nodeSelector: {}\ningress: [{}]"),
            "Invalid CiliumNetworkPolicy spec: rule cannot have NodeSelector",
        );
        let r = rule(&ccnp("nodeSelector: {}\ningress: [{}]"));
        assert!(matches!(r.subject, Subject::Nodes(_)));
    }

    // semantics §7.1 vector 29
    #[test]
    fn fqdn_selectors() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]",
            ),
            "only one of MatchName or MatchPattern is allowed in an FQDNSelector",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchPattern: foo$.com}]"),
            "Invalid characters in MatchPattern: \"foo$.com\"",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toFQDNs: [{matchName: \"*.a.com\"}]"),
            "Invalid characters in MatchName",
        );
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toFQDNs: [{matchPattern: \"*.a.com\"}, {matchName: b.com}]",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec!["fqdn *.a.com", "fqdn b.com"]
        );
    }

    // semantics §7.1 vector 30
    #[test]
    fn one_l7_kind_per_port_rule() {
        assert_rejected(
            &cnp(
                "endpointSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"53\", protocol: TCP}]\n    rules: {http: [{}], dns: [{matchName: a.com}]}",
            ),
            "multiple L7 protocol rule types specified in single rule",
        );
    }

    #[test]
    fn l7_needs_the_proxy() {
        let off = Options {
            l7_proxy: false,
            ..Options::default()
        };
        assert_rejected_with(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {HTTP_GET}"
            )),
            &off,
            "L7 policy is not supported since L7 proxy is not enabled",
        );
    }

    // semantics §1.4 and deny.rst: deny rules have no L7; `rules` is not a field there, so the
    // object fails schema validation and is not enforced.
    #[test]
    fn deny_sections_cannot_carry_l7() {
        let yaml = cnp(&format!(
            "endpointSelector: {{}}\ningressDeny:\n- toPorts:\n  - ports: [{{port: \"80\", protocol: TCP}}]\n    {HTTP_GET}"
        ));
        assert_rejected(&yaml, "unknown field `rules` in a deny toPorts entry");
        let (set, _) = build_with(&yaml, &Options::default());
        assert!(set.rules().is_empty());
        assert_rejected(
            &cnp("endpointSelector: {}\negressDeny:\n- toFQDNs: [{matchName: a.com}]"),
            "unknown field `toFQDNs`",
        );
    }

    #[test]
    fn empty_policy() {
        assert_rejected(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns1}\n",
            "Invalid CiliumNetworkPolicy spec(s): empty policy",
        );
        assert_rejected(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\n",
            "Invalid CiliumClusterwideNetworkPolicy spec(s): empty policy",
        );
    }

    // semantics §1.1: spec and specs are unioned; errors name which one failed.
    #[test]
    fn spec_and_specs_are_unioned() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns1}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\nspecs:\n- endpointSelector: {}\n  egress: [{}]\n- endpointSelector: {}\n  ingressDeny: [{}]\n";
        let r = rules(yaml);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].origin.spec_index, None);
        assert_eq!(r[1].origin.spec_index, Some(0));
        assert_eq!(r[2].origin.spec_index, Some(1));
        let bad = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns1}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\nspecs:\n- endpointSelector: {}\n";
        assert_rejected(
            bad,
            "Invalid CiliumNetworkPolicy specs: rule must have at least one of",
        );
        // One bad rule makes the whole policy unenforced.
        let (set, _) = build_with(bad, &Options::default());
        assert!(set.rules().is_empty());
        assert_eq!(set.policies[0].rejected.len(), 2);
    }

    #[test]
    fn metadata_checks() {
        assert_rejected(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {namespace: ns1}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n",
            "CiliumNetworkPolicy has no metadata.name",
        );
        let no_ns = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n";
        assert_eq!(warning_codes(no_ns), vec!["namespace-missing"]);
        // Without a namespace the policy applies to `default`.
        let r = rule(no_ns);
        assert_eq!(
            subject(&r),
            "endpoints k8s:io.kubernetes.pod.namespace=default"
        );
        let ccnp_ns = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n";
        assert_eq!(warning_codes(ccnp_ns), vec!["ccnp-namespace"]);
        assert_eq!(subject(&rule(ccnp_ns)), "endpoints {}");
    }

    #[test]
    fn log_value_length() {
        assert_valid(&cnp(&format!(
            "endpointSelector: {{}}\ningress: [{{}}]\nlog: {{value: {}}}",
            "a".repeat(32)
        )));
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress: [{{}}]\nlog: {{value: {}}}",
                "a".repeat(33)
            )),
            "log value must be at most 32 printable characters",
        );
    }

    // ---- §1.9 namespace injection ----

    // semantics §1.9: a CNP endpointSelector always gets the policy namespace.
    #[test]
    fn cnp_subject_gets_the_namespace() {
        let r = rule(&cnp(
            "endpointSelector: {matchLabels: {app: b}}\ningress: [{}]",
        ));
        assert_eq!(
            subject(&r),
            "endpoints any:app=b, k8s:io.kubernetes.pod.namespace=ns1"
        );
        let Subject::Endpoints(s) = &r.subject else {
            panic!()
        };
        assert!(s.matches(&pod(&[("app", "b"), (crate::labels::KEY_NAMESPACE, "ns1")])));
        assert!(!s.matches(&pod(&[("app", "b"), (crate::labels::KEY_NAMESPACE, "ns2")])));
        assert!(!s.matches(&reserved("host")));
    }

    // semantics §7.3 vector 48 and §9.3: a `k8s:` namespace in the subject is overwritten.
    #[test]
    fn cnp_subject_namespace_is_overwritten() {
        let yaml = cnp(
            "endpointSelector: {matchLabels: {\"k8s:io.kubernetes.pod.namespace\": ns2}}\ningress: [{}]",
        );
        assert_eq!(
            subject(&rule(&yaml)),
            "endpoints k8s:io.kubernetes.pod.namespace=ns1"
        );
        assert_eq!(warning_codes(&yaml), vec!["subject-namespace-overwritten"]);
    }

    // semantics §9.3: an unprefixed namespace key stays beside the injected one.
    #[test]
    fn cnp_subject_unprefixed_namespace_is_kept() {
        let yaml = cnp(
            "endpointSelector: {matchLabels: {io.kubernetes.pod.namespace: ns2}}\ningress: [{}]",
        );
        let r = rule(&yaml);
        assert_eq!(
            subject(&r),
            "endpoints any:io.kubernetes.pod.namespace=ns2, k8s:io.kubernetes.pod.namespace=ns1"
        );
        let Subject::Endpoints(s) = &r.subject else {
            panic!()
        };
        // It selects nothing: no pod is in both namespaces.
        assert!(!s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns1")])));
        assert!(!s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns2")])));
        assert_eq!(warning_codes(&yaml), vec!["subject-namespace-any"]);
    }

    // semantics §7.3 vector 44
    #[test]
    fn cnp_empty_peer_is_the_policy_namespace() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{}]",
        ));
        let e = &r.entries[0];
        assert_eq!(
            peers(e).unwrap(),
            vec!["k8s:io.kubernetes.pod.namespace=ns1"]
        );
        let s = label_peer(e, 0);
        assert!(s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns1")])));
        assert!(!s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns2")])));
        assert!(!s.matches(&reserved("world")));
        assert!(e.endpoint_peers);
        assert!(e.ports.is_none());
    }

    // semantics §7.3 vectors 46 and 47
    #[test]
    fn cnp_peer_namespace_unless_named() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{matchLabels: {app: fe}}]\n- fromEndpoints: [{matchLabels: {\"k8s:io.kubernetes.pod.namespace\": ns2, app: fe}}]\n- fromEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: ns3}}]\n- fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: a}}]",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec!["any:app=fe, k8s:io.kubernetes.pod.namespace=ns1"]
        );
        let s = label_peer(&r.entries[1], 0);
        assert!(s.matches(&pod(&[
            ("app", "fe"),
            (crate::labels::KEY_NAMESPACE, "ns2")
        ])));
        assert!(!s.matches(&pod(&[
            ("app", "fe"),
            (crate::labels::KEY_NAMESPACE, "ns1")
        ])));
        assert!(!s.mentions_key_prefix("x") && s.requirements.len() == 2);
        assert_eq!(
            peers(&r.entries[2]).unwrap(),
            vec!["any:io.kubernetes.pod.namespace=ns3"]
        );
        // Namespace-label keys also stop the injection (semantics §1.9 "docs vs code").
        assert_eq!(
            peers(&r.entries[3]).unwrap(),
            vec!["any:io.cilium.k8s.namespace.labels.team=a"]
        );
    }

    // semantics §9.2: a NotIn on the namespace stops the injection and admits reserved
    // identities.
    #[test]
    fn cnp_peer_namespace_not_in_selects_reserved_identities() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: NotIn, values: [x]}]}]",
        ));
        let s = label_peer(&r.entries[0], 0);
        assert_eq!(s.requirements.len(), 1);
        for id in ["world", "remote-node", "host"] {
            assert!(s.matches(&reserved(id)), "{id}");
        }
    }

    // semantics §1.9: reserved-label peers get no namespace.
    #[test]
    fn reserved_peers_get_no_namespace() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: [{matchLabels: {\"reserved:host\": \"\"}}]",
        ));
        let s = label_peer(&r.entries[0], 0);
        assert_eq!(s.to_string(), "reserved:host=");
        assert!(s.matches(&reserved("host")));
    }

    // semantics §7.3 vector 45 and §9.9
    #[test]
    fn ccnp_empty_peer_is_every_pod() {
        let r = rule(&ccnp(
            "endpointSelector: {matchLabels: {app: b}}\ningress:\n- fromEndpoints: [{}]",
        ));
        // CCNP subjects get no namespace.
        assert_eq!(subject(&r), "endpoints any:app=b");
        let s = label_peer(&r.entries[0], 0);
        assert_eq!(s.to_string(), "k8s:io.kubernetes.pod.namespace");
        assert!(s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "any-ns")])));
        for id in ["world", "remote-node", "host"] {
            assert!(!s.matches(&reserved(id)), "{id}");
        }
    }

    // semantics §1.9: the CCNP injection is skipped when the subject selects reserved:init.
    #[test]
    fn ccnp_init_subject_gets_no_peer_namespace() {
        let r = rule(&ccnp(
            "endpointSelector: {matchLabels: {\"reserved:init\": \"\"}}\ningress:\n- fromEndpoints: [{}]",
        ));
        assert!(label_peer(&r.entries[0], 0).is_wildcard());
    }

    // semantics §1.9: fromRequires/toRequires get the same namespace treatment and do not
    // become peers themselves.
    #[test]
    fn requires_are_kept_apart() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromRequires: [{matchLabels: {env: prod}}]\n- fromEndpoints: [{matchLabels: {app: a}}]\negress:\n- toRequires: [{matchLabels: {env: prod}}]",
        ));
        assert_eq!(r.requires_ingress.len(), 1);
        assert_eq!(
            r.requires_ingress[0].to_string(),
            "any:env=prod, k8s:io.kubernetes.pod.namespace=ns1"
        );
        assert_eq!(r.requires_egress.len(), 1);
        // An entry with only fromRequires has no L3 field: wildcard peers.
        assert!(peers(&r.entries[0]).is_none());
        assert!(!r.entries[0].endpoint_peers);
        assert!(r.entries[1].endpoint_peers);
    }

    #[test]
    fn default_local_cluster_adds_the_cluster() {
        let o = Options {
            default_local_cluster: true,
            cluster_name: "c1".into(),
            ..Options::default()
        };
        let r = rules_with(
            &cnp(
                "endpointSelector: {}\ningress:\n- fromEndpoints: [{matchLabels: {app: a}}, {matchLabels: {io.cilium.k8s.policy.cluster: c2}}]",
            ),
            &o,
        );
        assert_eq!(
            peers(&r[0].entries[0]).unwrap(),
            vec![
                "any:app=a, k8s:io.kubernetes.pod.namespace=ns1, k8s:io.cilium.k8s.policy.cluster=c1",
                "any:io.cilium.k8s.policy.cluster=c2, k8s:io.kubernetes.pod.namespace=ns1",
            ]
        );
    }

    // ---- peers: entities, CIDRs, nodes, services ----

    // semantics §1.8 and §7.3 vectors 49-51
    #[test]
    fn entities_expand_to_reserved_selectors() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toEntities: [world]\n- toEntities: [world-ipv4]\n- toEntities: [cluster]\n- toEntities: [all]\n- toEntities: [none]\n- toEntities: [kube-apiserver, host]",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec![
                "reserved:world",
                "reserved:world-ipv4",
                "reserved:world-ipv6"
            ]
        );
        assert_eq!(peers(&r.entries[1]).unwrap(), vec!["reserved:world-ipv4"]);
        assert_eq!(
            peers(&r.entries[2]).unwrap(),
            vec![
                "reserved:host",
                "reserved:remote-node",
                "reserved:init",
                "reserved:ingress",
                "reserved:health",
                "reserved:unmanaged",
                "reserved:kube-apiserver",
                "k8s:io.cilium.k8s.policy.cluster=default",
            ]
        );
        // `all` is the wildcard, world included; no namespace is injected for entities.
        assert_eq!(peers(&r.entries[3]).unwrap(), vec!["{}"]);
        assert!(label_peer(&r.entries[3], 0).matches(&reserved("world")));
        assert_eq!(peers(&r.entries[4]).unwrap(), vec!["reserved:none"]);
        assert!(!label_peer(&r.entries[4], 0).matches(&reserved("world")));
        assert_eq!(
            peers(&r.entries[5]).unwrap(),
            vec!["reserved:kube-apiserver", "reserved:host"]
        );
        assert!(!r.entries[0].endpoint_peers);
    }

    #[test]
    fn cluster_entity_uses_the_cluster_name() {
        let o = Options {
            cluster_name: "prod".into(),
            ..Options::default()
        };
        let r = rules_with(
            &cnp("endpointSelector: {}\negress:\n- toEntities: [cluster]"),
            &o,
        );
        let s = label_peer(&r[0].entries[0], 7);
        assert!(s.matches(&pod(&[(crate::labels::KEY_CLUSTER, "prod")])));
        assert!(!s.matches(&pod(&[(crate::labels::KEY_CLUSTER, "default")])));
        assert!(entity_selectors("bogus", "x").is_none());
    }

    // semantics §7.3 vector 52 and §1.7
    #[test]
    fn cidr_peers() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]\n- toCIDR: [192.168.1.7, 172.16.5.0/24]",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec!["cidr 10.0.0.0/8 except 10.96.0.0/12"]
        );
        // A bare IP is allowed in toCIDR (as a /32).
        assert_eq!(
            peers(&r.entries[1]).unwrap(),
            vec!["cidr 192.168.1.7/32", "cidr 172.16.5.0/24"]
        );
        // ...but not in toCIDRSet.
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 192.168.1.7}]"),
            "unable to parse CIDRRule \"192.168.1.7\"",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toCIDR: [not-an-ip]"),
            "unable to parse CIDR: invalid CIDR address: not-an-ip",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toCIDR: [10.0.0.0/33]"),
            "unable to parse CIDR",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [bad]}]"),
            "unable to parse CIDRRule \"bad\"",
        );
    }

    #[test]
    fn parse_cidr_like_go() {
        assert_eq!(
            parse_cidr("", true),
            Err("IP must be specified".to_string())
        );
        // Host bits are masked.
        assert_eq!(
            parse_cidr("10.1.2.3/8", false).unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("2001:db8::1/32", false).unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_cidr("::1", true).unwrap().to_string(), "::1/128");
        assert!(parse_cidr("10.0.0.1", false).is_err());
        assert_eq!(
            parse_cidr("10.0.0.0/255.0.0.0", false),
            Err("CIDR cannot specify non-contiguous mask 255.0.0.0".to_string())
        );
        assert!(parse_cidr("10.0.0.0/", false).is_err());
        assert!(parse_cidr("::/129", false).is_err());
    }

    // CiliumCIDRGroups are resolved by name and by label selector.
    #[test]
    fn cidr_groups() {
        let group = "apiVersion: cilium.io/v2alpha1\nkind: CiliumCIDRGroup\nmetadata: {name: g, labels: {team: a}}\nspec:\n  externalCIDRs: [203.0.113.0/24, 198.51.100.0/24]\n---\n";
        let yaml = format!(
            "{group}{}",
            cnp(
                "endpointSelector: {}\negress:\n- toCIDRSet: [{cidrGroupRef: g, except: [203.0.113.8/29]}]\n- toCIDRSet: [{cidrGroupSelector: {matchLabels: {team: a}}}]\n- toCIDRSet: [{cidrGroupSelector: {matchLabels: {team: b}}}]"
            )
        );
        let r = rule(&yaml);
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec![
                "cidr 203.0.113.0/24 except 203.0.113.8/29",
                "cidr 198.51.100.0/24"
            ]
        );
        assert_eq!(
            peers(&r.entries[1]).unwrap(),
            vec!["cidr 203.0.113.0/24", "cidr 198.51.100.0/24"]
        );
        assert_eq!(peers(&r.entries[2]).unwrap(), Vec::<String>::new());
    }

    // semantics §2.12 and §1.9: node peers need the flag and get `reserved:remote-node`.
    #[test]
    fn node_peers() {
        let yaml = cnp("endpointSelector: {}\ningress:\n- fromNodes: [{matchLabels: {role: db}}]");
        assert_rejected(
            &yaml,
            "FromNodes/ToNodes rules can only be applied when the \"enable-node-selector-labels\" flag is set",
        );
        let o = Options {
            node_selector_labels: true,
            ..Options::default()
        };
        let r = rules_with(&yaml, &o);
        assert_eq!(
            peers(&r[0].entries[0]).unwrap(),
            vec!["any:role=db, reserved:remote-node"]
        );
    }

    #[test]
    fn services_default_to_the_policy_namespace() {
        let r = rule(&cnp(
            "endpointSelector: {}\negress:\n- toServices: [{k8sService: {serviceName: api}}, {k8sService: {serviceName: db, namespace: data}}, {k8sServiceSelector: {selector: {matchLabels: {app: x}}}}]",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec!["service ns1/api", "service data/db", "services in ns1"]
        );
    }

    // ---- §3.3 empty vs absent ----

    // semantics §3.3 and §9.1: `ingress: [{}]` enforces and allows nothing; an explicit empty
    // peer list selects nothing.
    #[test]
    fn empty_entries_and_empty_peer_lists() {
        let r = rule(&cnp("endpointSelector: {}\ningress: [{}]"));
        assert!(r.has_ingress && !r.has_egress);
        assert!(r.entries[0].allows_nothing());
        // semantics §7.3 vector 43
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromEndpoints: []\n  toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]\n- fromEntities: []",
        ));
        assert_eq!(peers(&r.entries[0]).unwrap(), Vec::<String>::new());
        assert!(!r.entries[0].allows_nothing());
        assert_eq!(peers(&r.entries[1]).unwrap(), Vec::<String>::new());
        // semantics §7.3 vector 42: ports without peers is every peer on those ports.
        let r = rule(&cnp(
            "endpointSelector: {matchLabels: {app: b}}\ningress:\n- toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]",
        ));
        assert!(peers(&r.entries[0]).is_none());
        assert_eq!(
            ports(&r.entries[0]),
            vec![(Protocol::Tcp, PortValue::Range(80, 80))]
        );
        // An empty toPorts list is the same as none.
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- fromEntities: [world]\n  toPorts: []",
        ));
        assert!(r.entries[0].ports.is_none());
    }

    // semantics §3.1: any list, allow or deny, enables enforcement of its direction.
    #[test]
    fn directions_with_rules() {
        let r = rule(&cnp(
            "endpointSelector: {}\negressDeny: [{toEntities: [world]}]",
        ));
        assert!(!r.has_ingress && r.has_egress);
        assert!(r.entries[0].deny);
        assert_eq!(r.entries[0].direction, Direction::Egress);
        let r = rule(&cnp(
            "endpointSelector: {}\ningressDeny: [{}]\negress: [{}]",
        ));
        assert!(r.has_ingress && r.has_egress);
    }

    // semantics §3.2
    #[test]
    fn enable_default_deny() {
        let yaml = cnp(
            "endpointSelector: {}\ningress: [{fromEntities: [world]}]\negress: [{toEntities: [world]}]\nenableDefaultDeny: {ingress: false}",
        );
        let r = rule(&yaml);
        assert_eq!(r.default_deny(Direction::Ingress), Some(false));
        assert_eq!(r.default_deny(Direction::Egress), None);
        let r = rule(&cnp(
            "endpointSelector: {}\ningress: [{}]\nenableDefaultDeny: {ingress: true, egress: false}",
        ));
        assert_eq!(r.default_deny_ingress, Some(true));
        assert_eq!(r.default_deny_egress, Some(false));
        // With EnableNonDefaultDenyPolicies off the field is ignored (both directions deny).
        let off = Options {
            non_default_deny_policies: false,
            ..Options::default()
        };
        let r = rules_with(&yaml, &off);
        assert_eq!(r[0].default_deny(Direction::Ingress), None);
    }

    // ---- ports ----

    // semantics §7.3 vector 54
    #[test]
    fn port_ranges() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"8000\", endPort: 8080, protocol: TCP}]}]",
        ));
        assert_eq!(
            ports(&r.entries[0]),
            vec![(Protocol::Tcp, PortValue::Range(8000, 8080))]
        );
        // semantics §2.7: HTTP rules on port ranges are fine.
        assert_valid(&cnp(&format!(
            "endpointSelector: {{}}\ningress:\n- toPorts:\n  - ports: [{{port: \"8000\", endPort: 8080, protocol: TCP}}]\n    {HTTP_GET}"
        )));
        // endPort below port matches only the port, with a warning.
        let yaml = cnp(
            "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"8080\", endPort: 80, protocol: TCP}]}]",
        );
        assert_eq!(
            ports(&rule(&yaml).entries[0]),
            vec![(Protocol::Tcp, PortValue::Range(8080, 8080))]
        );
        assert_eq!(warning_codes(&yaml), vec!["end-port-before-port"]);
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"80\", endPort: 70000, protocol: TCP}]}]",
            ),
            "unable to parse endPort: 70000 is out of range",
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"80\", endPort: -1, protocol: TCP}]}]",
            ),
            "endPort: Invalid value: -1",
        );
    }

    // semantics §7.3 vector 55 and §9.4: port 0 is every port; ANY is TCP, UDP and SCTP.
    #[test]
    fn port_zero_and_any_protocol() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"0\", protocol: TCP}]}]\n- toPorts: [{ports: [{port: \"0\"}]}]\n- toPorts: [{ports: [{port: \"53\", protocol: any}]}]",
        ));
        assert_eq!(
            ports(&r.entries[0]),
            vec![(Protocol::Tcp, PortValue::Range(0, 65535))]
        );
        assert_eq!(
            ports(&r.entries[1]),
            vec![
                (Protocol::Tcp, PortValue::Range(0, 65535)),
                (Protocol::Udp, PortValue::Range(0, 65535)),
                (Protocol::Sctp, PortValue::Range(0, 65535)),
            ]
        );
        // Protocols are case-insensitive.
        assert_eq!(ports(&r.entries[2]).len(), 3);
        assert!(
            !ports(&r.entries[1])
                .iter()
                .any(|(p, _)| matches!(p, Protocol::Icmp | Protocol::Icmpv6 | Protocol::Any))
        );
        // Port 0 with an endPort is still every port.
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"0\", endPort: 100, protocol: UDP}]}]",
        ));
        assert_eq!(
            ports(&r.entries[0]),
            vec![(Protocol::Udp, PortValue::Range(0, 65535))]
        );
    }

    // semantics §7.3 vector 56 and §1.5: named ports, lower-cased.
    #[test]
    fn named_ports() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: http, protocol: TCP}, {port: HTTP-Alt, protocol: TCP}]}]",
        ));
        assert_eq!(
            ports(&r.entries[0]),
            vec![
                (Protocol::Tcp, PortValue::Named("http".into())),
                (Protocol::Tcp, PortValue::Named("http-alt".into())),
            ]
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: this-name-is-too-long, protocol: TCP}]}]",
            ),
            "unable to parse port: strconv.ParseUint: parsing \"this-name-is-too-long\": invalid syntax",
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"65536\", protocol: TCP}]}]",
            ),
            "unable to parse port: strconv.ParseUint: parsing \"65536\": value out of range",
        );
        assert_rejected(
            &cnp("endpointSelector: {}\ningress:\n- toPorts: [{ports: [{protocol: TCP}]}]"),
            "port must be specified",
        );
        assert_rejected(
            &cnp(
                "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"\", protocol: TCP}]}]",
            ),
            "port must be specified",
        );
    }

    // Go's strconv.ParseUint(port, 0, 16): prefixes select the base.
    #[test]
    fn numeric_ports_use_go_bases() {
        assert_eq!(parse_port("80"), Ok(PortValue::Range(80, 80)));
        // A leading 0 without letters is octal (it is not a service name).
        assert_eq!(parse_port("0120"), Ok(PortValue::Range(80, 80)));
        assert_eq!(parse_port("0"), Ok(PortValue::Range(0, 0)));
        assert_eq!(parse_port("65535"), Ok(PortValue::Range(65535, 65535)));
        assert!(parse_port("99999").is_err());
        assert_eq!(parse_port("dns"), Ok(PortValue::Named("dns".into())));
    }

    #[test]
    fn service_names() {
        for ok in ["http", "dns-tcp", "h2", "a", "abcdefghijklmno"] {
            assert!(is_service_name(ok), "{ok}");
        }
        for bad in [
            "",
            "123",
            "-http",
            "http-",
            "ht--tp",
            "HTTP",
            "abcdefghijklmnop",
            "my_port",
        ] {
            assert!(!is_service_name(bad), "{bad}");
        }
    }

    // ---- HTTP details ----

    // semantics §1.6, §7.5 vectors 72-74 and §8 (the "Name value" quirk).
    #[test]
    fn http_headers() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules:\n      http:\n      - headers: [\"X-My-Header: true\", \"X-Other value\", \"X-Present\", \"X-Key:true\"]\n        headerMatches:\n        - {name: X-Token, value: abc, mismatch: LOG}\n        - {name: X-Fail, value: v}",
        ));
        let l7 = r.entries[0].ports.as_ref().unwrap()[0].l7.clone().unwrap();
        let h = &l7.http.as_ref().unwrap()[0];
        assert_eq!(
            h.headers,
            vec![
                ("X-My-Header".to_string(), Some("true".to_string())),
                ("X-Other".to_string(), Some("value".to_string())),
                ("X-Present".to_string(), None),
                ("X-Key:true".to_string(), None),
            ]
        );
        assert_eq!(h.header_matches.len(), 2);
        assert_eq!(h.header_matches[0].name, "X-Token");
        assert_eq!(h.header_matches[0].value.as_deref(), Some("abc"));
        assert_eq!(h.header_matches[0].mismatch, MismatchAction::Log);
        assert_eq!(h.header_matches[1].mismatch, MismatchAction::Fail);
        assert!(h.method.is_none() && h.path.is_none() && h.host.is_none());
    }

    // semantics §2.13
    #[test]
    fn header_match_errors() {
        let port = "ports: [{port: \"80\", protocol: TCP}]";
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - {port}\n    rules: {{http: [{{headerMatches: [{{value: x}}]}}]}}"
            )),
            "Header name missing",
        );
        assert_rejected(
            &cnp(&format!(
                "endpointSelector: {{}}\ningress:\n- toPorts:\n  - {port}\n    rules: {{http: [{{headerMatches: [{{name: a, value: x, mismatch: FOO}}]}}]}}"
            )),
            "Invalid header action: FOO",
        );
    }

    // semantics §5.1: a secret that is not available leaves no value (the match fails).
    #[test]
    fn header_match_secrets() {
        let yaml = cnp(
            "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {http: [{headerMatches: [{name: X-Token, secret: {namespace: ns1, name: tok}}]}]}",
        );
        let r = rule(&yaml);
        let l7 = r.entries[0].ports.as_ref().unwrap()[0].l7.clone().unwrap();
        assert_eq!(l7.http.as_ref().unwrap()[0].header_matches[0].value, None);

        let (resources, _) = parse_resources(&yaml, Embedding::default());
        let resources: Vec<(FileId, Resource)> = resources.into_iter().map(|r| (0, r)).collect();
        let mut secrets = Secrets::default();
        secrets.insert(
            ("ns1".into(), "tok".into()),
            [("value".to_string(), "s3cret".to_string())]
                .into_iter()
                .collect(),
        );
        let set = PolicySet::build(&resources, &Options::default(), &secrets);
        let rules = set.rules();
        let l7 = rules[0].entries[0].ports.as_ref().unwrap()[0]
            .l7
            .clone()
            .unwrap();
        assert_eq!(
            l7.http.as_ref().unwrap()[0].header_matches[0]
                .value
                .as_deref(),
            Some("s3cret")
        );
    }

    // semantics §1.6: an empty HTTP rule allows every request; an empty field matches
    // anything.
    #[test]
    fn empty_http_rule() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts:\n  - ports: [{port: \"80\", protocol: TCP}]\n    rules: {http: [{}, {path: \"\", method: GET}]}",
        ));
        let l7 = r.entries[0].ports.as_ref().unwrap()[0].l7.clone().unwrap();
        let http = l7.http.as_ref().unwrap();
        assert_eq!(http.len(), 2);
        assert!(http[0].method.is_none() && http[0].path.is_none());
        assert!(http[1].path.is_none());
        assert!(http[1].method.is_some());
    }

    #[test]
    fn plain_port_rules_have_no_l7() {
        let r = rule(&cnp(
            "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]",
        ));
        assert!(r.entries[0].ports.as_ref().unwrap()[0].l7.is_none());
    }

    // ---- Kubernetes NetworkPolicy ----

    #[test]
    fn knp_subject_and_policy_types() {
        let r = rule(&knp("podSelector: {matchLabels: {app: b}}\ningress: [{}]"));
        assert_eq!(
            subject(&r),
            "endpoints any:app=b, k8s:io.kubernetes.pod.namespace=ns1"
        );
        // Ingress is always a policy type; Egress only when egress rules are present.
        assert!(r.has_ingress && !r.has_egress);
        // `egress: []` has no egress rules: the API server defaults policyTypes to [Ingress].
        let r = rule(&knp("podSelector: {}\negress: []"));
        assert!(r.has_ingress && !r.has_egress);
        assert!(r.entries.is_empty());
        let r = rule(&knp("podSelector: {}\negress: [{}]"));
        assert!(r.has_ingress && r.has_egress);
        let r = rule(&knp("podSelector: {}\npolicyTypes: [Egress]"));
        assert!(!r.has_ingress && r.has_egress);
        assert!(r.entries.is_empty());
        let r = rule(&knp("podSelector: {}\npolicyTypes: [Ingress, Egress]"));
        assert!(r.has_ingress && r.has_egress);
        assert_rejected(
            &knp("podSelector: {}\npolicyTypes: [Sideways]"),
            "Invalid NetworkPolicy: policyTypes: Unsupported value: \"Sideways\"",
        );
    }

    #[test]
    fn knp_peers() {
        let r = rule(&knp(
            "podSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {app: a}}\n  - namespaceSelector: {}\n  - namespaceSelector: {matchLabels: {team: x}}\n    podSelector: {matchLabels: {app: c}}\n  - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n- {}\n- from: []",
        ));
        assert_eq!(
            peers(&r.entries[0]).unwrap(),
            vec![
                "any:app=a, k8s:io.kubernetes.pod.namespace=ns1",
                "k8s:io.kubernetes.pod.namespace",
                "any:app=c, k8s:io.cilium.k8s.namespace.labels.team=x",
                "cidr 10.0.0.0/8 except 10.1.0.0/16",
            ]
        );
        // No peers, or `from: []`: every peer, world included.
        for e in &r.entries[1..] {
            assert_eq!(peers(e).unwrap(), vec!["{}"]);
            assert!(label_peer(e, 0).matches(&reserved("world")));
        }
        let s = label_peer(&r.entries[0], 2);
        assert!(s.matches(&pod(&[
            ("app", "c"),
            ("io.cilium.k8s.namespace.labels.team", "x")
        ])));
        assert!(!r.entries[0].endpoint_peers);
    }

    #[test]
    fn knp_ip_block_errors() {
        assert_rejected(
            &knp(
                "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]",
            ),
            "allow CIDR prefix 10.0.0.0/8 does not contain exclude CIDR prefix 192.168.0.0/16",
        );
        assert_rejected(
            &knp("podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.1}}]"),
            "unable to parse CIDR",
        );
        assert_rejected(
            &knp(
                "podSelector: {}\ningress:\n- from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]",
            ),
            "may not combine ipBlock with podSelector or namespaceSelector",
        );
    }

    #[test]
    fn knp_ports() {
        let r = rule(&knp(
            "podSelector: {}\ningress:\n- ports:\n  - port: 80\n  - {port: 53, protocol: UDP}\n  - {port: 8000, endPort: 8080}\n  - {port: http}\n  - {protocol: SCTP}",
        ));
        assert_eq!(
            ports(&r.entries[0]),
            vec![
                (Protocol::Tcp, PortValue::Range(80, 80)),
                (Protocol::Udp, PortValue::Range(53, 53)),
                (Protocol::Tcp, PortValue::Range(8000, 8080)),
                (Protocol::Tcp, PortValue::Named("http".into())),
                (Protocol::Sctp, PortValue::Range(0, 65535)),
            ]
        );
        // Peers absent with ports: every peer on those ports.
        assert_eq!(peers(&r.entries[0]).unwrap(), vec!["{}"]);
        assert_rejected(
            &knp("podSelector: {}\ningress:\n- ports: [{port: 0}]"),
            "port: Invalid value: 0: must be between 1 and 65535, inclusive",
        );
        assert_rejected(
            &knp("podSelector: {}\ningress:\n- ports: [{port: 80, endPort: 79}]"),
            "endPort: Invalid value: 79: must be greater than or equal to port",
        );
        assert_rejected(
            &knp("podSelector: {}\ningress:\n- ports: [{port: 80, protocol: tcp}]"),
            "protocol: Unsupported value: \"tcp\"",
        );
        assert_rejected(
            &knp("podSelector: {}\ningress:\n- ports: [{port: 70000}]"),
            "port: Invalid value: 70000",
        );
    }

    #[test]
    fn knp_metadata() {
        let no_ns = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n";
        assert_eq!(warning_codes(no_ns), vec!["namespace-missing"]);
        assert_eq!(
            subject(&rule(no_ns)),
            "endpoints k8s:io.kubernetes.pod.namespace=default"
        );
        assert_rejected(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: ns1}\nspec:\n  podSelector: {}\n",
            "Invalid NetworkPolicy: metadata.name is required",
        );
    }

    #[test]
    fn errors_carry_the_spec_prefix_and_a_span() {
        let (_, diags) = diags_with(
            &ccnp("endpointSelector: {}\ningress:\n- fromEntities: [foo]"),
            &Options::default(),
        );
        let d = diags.iter().find(|d| d.is_error()).unwrap();
        assert_eq!(d.code, "invalid-policy");
        assert!(
            d.message
                .starts_with("Invalid CiliumClusterwideNetworkPolicy spec: "),
            "{}",
            d.message
        );
        let span = d.span.unwrap();
        assert_eq!(span.line, 8);
        // No entity is close to `foo`: the help lists them all.
        assert!(
            d.help
                .as_deref()
                .unwrap()
                .starts_with("use one of: all, world, cluster, host"),
            "{:?}",
            d.help
        );
    }

    // semantics §1.5: a port is a decimal number or an IANA service name. Cilium checks
    // `iana.IsSvcName` before `strconv.ParseUint(port, 0, 16)` (its comment: "0x10 is now
    // considered a name rather than number 16"), so `0x50` and `0o120` are named ports.
    #[test]
    fn prefixed_numbers_with_letters_are_named_ports() {
        assert_eq!(parse_port("0x50"), Ok(PortValue::Named("0x50".into())));
        assert_eq!(parse_port("0o120"), Ok(PortValue::Named("0o120".into())));
    }

    // semantics §2.7: `L7 rules can not be used when a port is 0` applies to every L7 kind
    // (pkg/policy/api/l4.go `PortRule.Validate` checks `haveZeroPort` for any non-empty
    // rules); the DNS range check (`EndPort > port`) does not fire for port 0 without endPort.
    #[test]
    fn dns_on_port_zero_gives_ciliums_message() {
        let msgs = error_messages(&cnp(
            "endpointSelector: {}\negress:\n- toPorts:\n  - ports: [{port: \"0\", protocol: UDP}]\n    rules: {dns: [{matchPattern: \"*\"}]}",
        ));
        assert_eq!(
            msgs,
            vec!["Invalid CiliumNetworkPolicy spec: L7 rules can not be used when a port is 0"]
        );
    }

    // Kubernetes defaults policyTypes when the list is empty: [Ingress], plus Egress only when
    // `len(spec.egress) != 0` (networking/v1 SetDefaults_NetworkPolicy). Cilium sees the
    // defaulted object, so `egress: []` does not make the policy an egress policy.
    #[test]
    fn knp_empty_egress_list_is_not_an_egress_policy() {
        let r = rule(&knp("podSelector: {}\ningress: [{}]\negress: []"));
        assert!(r.has_ingress);
        assert!(!r.has_egress);
    }

    // Same defaulting: an empty `policyTypes: []` is replaced by [Ingress] (and Cilium's own
    // ParseNetworkPolicy enforces ingress unless the Egress type is listed).
    #[test]
    fn knp_empty_policy_types_default_to_ingress() {
        let r = rule(&knp("podSelector: {}\npolicyTypes: []"));
        assert!(r.has_ingress);
        assert!(!r.has_egress);
    }

    // Cilium validates CIDRs with Go's `netip.ParsePrefix` (pkg/policy/api/l4.go
    // `CIDR.Validate`, `CIDRRule.Validate`), whose prefix length is plain decimal: no sign and
    // no leading zero ("bad bits after slash").
    #[test]
    fn cidr_prefix_length_is_plain_decimal() {
        assert!(parse_cidr("10.0.0.0/+8", false).is_err());
        assert!(parse_cidr("::/+0", false).is_err());
        assert!(parse_cidr("10.0.0.0/08", false).is_err());
    }

    // Go's netip also refuses IPv4 octets with leading zeros and IPv6 zones.
    #[test]
    fn cidr_addresses_are_strict() {
        assert!(parse_cidr("010.0.0.0/8", false).is_err());
        assert!(parse_cidr("10.0.0.01", true).is_err());
        assert!(parse_cidr("fe80::1%eth0/64", false).is_err());
        assert!(parse_cidr("10.0.0/8", false).is_err());
        assert_eq!(
            parse_cidr("0.0.0.0/0", false).unwrap().to_string(),
            "0.0.0.0/0"
        );
    }

    // Cilium's ParseNetworkPolicy (pkg/k8s/network_policy.go, v1.17 and main) translates every
    // `spec.ingress`/`spec.egress` rule whatever `policyTypes` says; policyTypes only decides
    // the default deny of a direction *without* rules. So `policyTypes: [Egress]` with ingress
    // rules still enforces those ingress rules under Cilium (Kubernetes would ignore them).
    #[test]
    fn knp_rules_are_translated_whatever_the_policy_types() {
        let yaml = knp(
            "podSelector: {}\npolicyTypes: [Egress]\ningress:\n- from: [{podSelector: {matchLabels: {app: a}}}]",
        );
        let r = rule(&yaml);
        assert!(r.has_ingress);
        assert_eq!(
            r.entries
                .iter()
                .filter(|e| e.direction == Direction::Ingress)
                .count(),
            1
        );
        assert!(r.has_egress);
        assert_eq!(warning_codes(&yaml), vec!["knp-rules-outside-policy-types"]);
        // The same for egress rules under `policyTypes: [Ingress]`.
        let yaml = knp("podSelector: {}\npolicyTypes: [Ingress]\negress: [{}]");
        let r = rule(&yaml);
        assert!(r.has_ingress && r.has_egress);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(warning_codes(&yaml), vec!["knp-rules-outside-policy-types"]);
    }

    // semantics §9.3 covers a `k8s:` namespace in matchLabels. Cilium injects the policy
    // namespace with `EndpointSelector.AddMatch`, which only sets `MatchLabels[key]`: a
    // matchExpressions requirement on the same key stays and is ANDed with it.
    #[test]
    fn cnp_subject_namespace_expression_is_kept() {
        let r = rule(&cnp(
            "endpointSelector: {matchExpressions: [{key: \"k8s:io.kubernetes.pod.namespace\", operator: In, values: [ns2]}]}\ningress: [{}]",
        ));
        let Subject::Endpoints(s) = &r.subject else {
            panic!()
        };
        assert!(!s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns1")])));
        assert!(!s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns2")])));
        // A NotIn expression on the key narrows the policy namespace instead.
        let yaml = cnp(
            "endpointSelector: {matchExpressions: [{key: \"k8s:io.kubernetes.pod.namespace\", operator: NotIn, values: [ns2]}]}\ningress: [{}]",
        );
        let r = rule(&yaml);
        let Subject::Endpoints(s) = &r.subject else {
            panic!()
        };
        assert!(s.matches(&pod(&[(crate::labels::KEY_NAMESPACE, "ns1")])));
        assert_eq!(warning_codes(&yaml), vec!["subject-namespace-any"]);
    }
}
