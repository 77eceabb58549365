//! MEM006, MEM007, MEM008, MEM018: DNS. Default-deny egress must still reach kube-dns, and
//! `toFQDNs` only learns addresses from answers that went through the DNS proxy.

use super::context::{Cx, Ep};
use super::default_deny::deny_intent;
use super::policy_view::{
    PolicyView, RawPolicy, direction_span, field_span, model_entry, sections,
};
use super::{DNS_UDP_ONLY, DOUBLE_STAR, FQDN_NO_DNS, NO_DNS, Out, rule};
use membrane_policy::api::{self, RuleSection};
use membrane_policy::model::{self, Direction, FileId, PortValue};
use membrane_policy::resolve::Enforcement;
use std::collections::BTreeMap;

/// MEM018: `**.` in DNS patterns.
pub(super) fn dns_patterns(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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

/// Whether the policy has DNS rules (`rules.dns`) on any egress port.
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

/// MEM007: `toFQDNs` whose DNS traffic does not go through the DNS proxy, or whose DNS rules
/// refuse the name.
pub(super) fn fqdns(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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

/// MEM008: DNS to kube-dns on 53/UDP without 53/TCP.
pub(super) fn dns_udp_only(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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

/// MEM006: egress default deny that leaves no way to kube-dns on 53/UDP.
pub(super) fn dns_reachability(cx: &Cx<'_>, out: &mut Out) {
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
