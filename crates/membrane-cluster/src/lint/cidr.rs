//! MEM010: CIDR selectors and `ipBlock`s that contain pod or node addresses, which Cilium
//! never selects by address (they have identities of their own).

use super::context::Cx;
use super::policy_view::{PolicyView, RawPolicy, sections};
use super::wording::{names_list, plural};
use super::{CIDR_CLUSTER, Out, rule};
use membrane_policy::api::{self, RuleSection};
use membrane_policy::translate::parse_cidr;
use std::net::IpAddr;

/// MEM010: CIDRs and ipBlocks that contain the addresses of pods or nodes.
pub(super) fn cidrs(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
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
