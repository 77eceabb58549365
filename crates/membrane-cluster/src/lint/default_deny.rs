//! MEM002, MEM004, MEM020: default deny, whether meant or not. These checks share the
//! question of which directions a rule as written means to put into default deny.

use super::context::{Cx, Ep};
use super::policy_view::{PolicyView, RawPolicy, direction_span, sections};
use super::selectors::without_namespace;
use super::wording::{names_list, plural};
use super::{DENY_NOTHING, EMPTY_LIST, IMPLICIT_DENY, Out, rule};
use membrane_policy::api::{self, PeerRule, PolicyKind, RuleSection};
use membrane_policy::model::{self, Direction, FileId};
use membrane_policy::resolve::Enforcement;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// An entry written as `{}` (or with only explicitly empty peer lists): it enforces the
/// direction and allows nothing.
pub(super) fn allows_nothing(pr: &PeerRule) -> bool {
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
pub(super) fn deny_intent(rule: &api::Rule) -> Vec<Direction> {
    let mut out = Vec::new();
    for (section, d) in [
        (RuleSection::Ingress, Direction::Ingress),
        (RuleSection::Egress, Direction::Egress),
    ] {
        if let Some(list) = rule.section(section)
            && (list.is_empty() || list.iter().all(allows_nothing))
        {
            out.push(d);
        }
    }
    out
}

/// MEM004: a policy written as a default deny that denies nothing. Returns the policies it
/// fired for, whose subjects MEM014 then leaves alone (one finding says it).
pub(super) fn default_deny_denies_nothing(cx: &Cx<'_>, out: &mut Out) -> BTreeSet<usize> {
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

/// MEM002: `ingress: []` and the like, which count as absent.
pub(super) fn empty_lists(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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

/// Whether the rule says it means default deny for `d` (then MEM020 has nothing to add).
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

/// MEM020: endpoints put into default deny by allow rules that do not say so.
pub(super) fn implicit_default_deny(cx: &Cx<'_>, out: &mut Out) {
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
