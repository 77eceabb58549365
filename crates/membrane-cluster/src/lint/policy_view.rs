//! A policy as written (the decoded resource, for spans and the fields the engine does not
//! keep) next to what the engine made of it (`Translated`), and where its parts are written.

use super::context::Cx;
use membrane_policy::api::{self, CiliumPolicy, KubePolicy, PeerRule, PolicyKind, RuleSection};
use membrane_policy::model::{self, Direction, Entry, FileId};
use membrane_policy::translate::Translated;
use membrane_policy::yaml::{Node, Span};

/// A policy resource as written, next to what the engine made of it.
pub(super) struct PolicyView<'a> {
    pub(super) t: &'a Translated,
    pub(super) raw: RawPolicy<'a>,
    pub(super) file: FileId,
}

/// A policy resource as decoded from its YAML (borrowed from the loader's index).
pub(super) enum RawPolicy<'a> {
    Cilium(&'a CiliumPolicy),
    Kube(&'a KubePolicy),
}

impl PolicyView<'_> {
    pub(super) fn name(&self) -> &str {
        &self.t.origin.name
    }

    pub(super) fn namespace(&self) -> Option<&str> {
        self.t.origin.namespace.as_deref()
    }

    pub(super) fn kind(&self) -> PolicyKind {
        self.t.origin.kind
    }

    /// Every rule of the policy, enforced or not.
    pub(super) fn rules(&self) -> impl Iterator<Item = &model::Rule> {
        self.t.rules.iter().chain(self.t.rejected.iter())
    }

    /// The raw Cilium rules with their `specs` index.
    pub(super) fn cilium_rules(&self) -> Vec<(Option<usize>, &api::Rule)> {
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

    pub(super) fn model_rule(&self, spec_index: Option<usize>) -> Option<&model::Rule> {
        self.rules().find(|r| r.origin.spec_index == spec_index)
    }

    pub(super) fn name_span(&self) -> Span {
        let meta = match &self.raw {
            RawPolicy::Cilium(p) => &p.meta,
            RawPolicy::Kube(p) => &p.meta,
        };
        meta.name.as_ref().map_or(self.t.origin.span, |n| n.span)
    }
}

/// The engine's entry for `section[index]` of a rule as written.
pub(super) fn model_entry(
    rule: &model::Rule,
    section: RuleSection,
    index: usize,
) -> Option<&Entry> {
    rule.entries
        .iter()
        .find(|e| e.origin.section == section && e.origin.index == index)
}

/// The four rule lists, in the order they are checked.
pub(super) fn sections() -> [RuleSection; 4] {
    [
        RuleSection::Ingress,
        RuleSection::IngressDeny,
        RuleSection::Egress,
        RuleSection::EgressDeny,
    ]
}

/// The field name of a rule list (`ingressDeny`, ...).
fn section_name(section: RuleSection) -> &'static str {
    section.field_name()
}

/// `from` or `to`, as in `fromEndpoints`.
pub(super) fn dir_prefix(section: RuleSection) -> &'static str {
    if section.is_ingress() { "from" } else { "to" }
}

/// The span of the peer field of an entry (`fromEntities`, `toFQDNs`, ...), or the entry.
pub(super) fn field_span(pr: &PeerRule, name: &str) -> Span {
    pr.field_span(name).unwrap_or(pr.span)
}

/// Where a rule's lists for one direction are written (`ingress:`, `egressDeny:`, ...).
pub(super) fn direction_span(
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
