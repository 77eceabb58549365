//! MEM015: rules without effect, found by looking up the resolved policies: HTTP rules
//! wildcarded by a plain allow of the same peers and ports, and allows that a deny covers.

use super::context::Cx;
use super::wording::names_list;
use super::{Out, SHADOWED};
use membrane_policy::identity::{self, IdentityId};
use membrane_policy::model::{self, Direction, PortValue};
use std::collections::BTreeSet;

/// Bounds the lookups of one check, so that big clusters stay fast (the check is skipped).
const MAX_LOOKUPS: usize = 200_000;

/// `ingress[0]` of policy (file:line), for messages.
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

/// MEM015: HTTP rules that a plain allow wildcards, and allows that a deny covers.
pub(super) fn shadowed(cx: &Cx<'_>, out: &mut Out) {
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
