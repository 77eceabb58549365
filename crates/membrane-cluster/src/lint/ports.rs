//! MEM009, MEM013: L4 ports checked against the container ports of the pods a rule applies
//! to, since policy is enforced after service translation (on the pod's port).

use super::context::{Cx, Ep};
use super::policy_view::{PolicyView, RawPolicy, model_entry, sections};
use super::wording::names_list;
use super::{NAMED_PORT, Out, PORT_MISMATCH, rule};
use membrane_policy::api::{self, RuleSection};
use membrane_policy::model::FileId;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// A port as written in a policy (Cilium `toPorts` or NetworkPolicy `ports`).
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

/// `pod` (8080/TCP, 53/UDP), for messages.
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

/// Checks the ports of one entry against `targets`, the pods the traffic goes to.
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

/// MEM009, MEM013: the numeric and named ports of each rule against the pods it applies to.
pub(super) fn ports(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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
