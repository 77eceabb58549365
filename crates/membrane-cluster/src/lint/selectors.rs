//! MEM011, MEM014, MEM017: endpoint, pod and peer selectors: what they match in the loaded
//! cluster, and the namespace Cilium injects (or does not) into them.

use super::context::Cx;
use super::policy_view::{PolicyView, RawPolicy, dir_prefix, model_entry, sections};
use super::wording::{names_list, plural};
use super::{KUBE_DNS_NS, NOTIN_NS, Out, SELECTS_NOTHING, rule};
use membrane_policy::api::{KubePolicy, LabelSelector, PolicyKind, RuleSection};
use membrane_policy::labels::{
    KEY_NAMESPACE, Label, LabelSet, Operator, PREFIX_NAMESPACE_LABELS, SOURCE_K8S, SOURCE_RESERVED,
    Selector, SelectorKey, is_identity_label,
};
use membrane_policy::model::{self, PeerSelector, Peers};
use membrane_policy::yaml::Span;
use std::collections::BTreeSet;
use std::fmt::Write as _;

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

/// The namespace key, with the `k8s:` source or none.
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
pub(super) fn without_namespace(s: &Selector) -> Selector {
    Selector {
        requirements: s
            .requirements
            .iter()
            .filter(|r| !is_ns_key(&r.key))
            .cloned()
            .collect(),
    }
}

/// The labels of the world identity: a selector that matches them admits reserved identities.
fn world_labels() -> LabelSet {
    LabelSet::new(vec![Label::reserved("world")])
}

/// Whether the selector names kube-dns (or CoreDNS) by its `k8s-app` label.
fn selects_kube_dns(s: &Selector) -> bool {
    s.requirements.iter().any(|r| {
        r.key.key == "k8s-app"
            && r.op == Operator::In
            && r.values.iter().any(|v| v == "kube-dns" || v == "coredns")
    })
}

/// What a peer of this section does, for messages.
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

/// MEM011, MEM014 (peers), MEM017: the peer selectors of a policy.
pub(super) fn peer_selectors(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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

/// MEM014 for subjects: an `endpointSelector`/`podSelector` that selects no workload. `skip`:
/// MEM004 already reported the policy.
pub(super) fn subjects_matching_nothing(
    cx: &Cx<'_>,
    p: &PolicyView<'_>,
    skip: bool,
    out: &mut Out,
) {
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
