//! MEM021, MEM022, and MEM009 for Gateway backends: `fromEntities: [ingress]`, the identity of
//! traffic proxied by Cilium's Ingress and Gateway API, checked against the HTTPRoutes.

use super::context::{Cx, Ep};
use super::policy_view::{PolicyView, field_span};
use super::{GATEWAY_ENTITY, Out, PORT_MISMATCH, SECOND_PASS, rule};
use membrane_policy::api::{self};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// MEM021 for `fromEntities: [ingress]`, MEM022 for HTTP rules on that traffic, MEM009 for
/// gateway backend ports the rule does not allow.
pub(super) fn gateway_entity(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    for (si, r) in p.cilium_rules() {
        let subjects: Vec<&Ep<'_>> = p
            .model_rule(si)
            .map(|m| cx.subject_eps(m).into_iter().filter(|e| e.pod).collect())
            .unwrap_or_default();
        for pr in r.ingress.iter().flatten() {
            let Some(entity) = pr.entities.iter().flatten().find(|e| e.value == "ingress") else {
                continue;
            };
            let raw_ports: Vec<&api::PortProtocol> = pr
                .to_ports
                .iter()
                .flatten()
                .flat_map(|r| r.ports.iter().flatten())
                .collect();
            let allows = |ep: &Ep<'_>, port: u16| -> bool {
                if raw_ports.is_empty() {
                    return true;
                }
                raw_ports.iter().any(|pp| {
                    let proto_ok = pp.protocol.as_ref().is_none_or(|s| {
                        matches!(s.value.to_ascii_uppercase().as_str(), "" | "TCP" | "ANY")
                    });
                    let Some(text) = pp.port.as_ref().map(|s| s.value.trim()) else {
                        return false;
                    };
                    let in_range = match text.parse::<u16>() {
                        Ok(0) => true,
                        Ok(lo) => {
                            let hi = pp
                                .end_port
                                .as_ref()
                                .map(|e| e.value)
                                .filter(|e| *e >= i64::from(lo) && *e <= 65535)
                                .map_or(lo, |e| e as u16);
                            (lo..=hi).contains(&port)
                        }
                        Err(_) => ep
                            .ports()
                            .iter()
                            .any(|c| c.name.eq_ignore_ascii_case(text) && c.port == port),
                    };
                    proto_ok && in_range
                })
            };
            let who = if subjects.is_empty() {
                "the selected endpoints".to_string()
            } else {
                cx.workload_names(&subjects)
            };
            let mut message = format!(
                "`ingress` is the identity of traffic proxied by Cilium's Ingress and Gateway API: this rule admits requests that come through the gateway to {who}, not pods calling {} directly",
                if subjects.len() == 1 { "it" } else { "them" }
            );
            let mut routes: BTreeSet<String> = BTreeSet::new();
            let mut allowed_ports: BTreeSet<u16> = BTreeSet::new();
            for route in &cx.world.scenario.routes {
                for (backend, port) in &route.backends {
                    let Some(ep) = subjects.iter().find(|e| e.name() == backend) else {
                        continue;
                    };
                    routes.insert(format!(
                        "HTTPRoute `{}` sends `{}` from Gateway `{}` to `{backend}` on port {port}",
                        route.route, route.path, route.gateway
                    ));
                    if allows(ep, *port) {
                        allowed_ports.insert(*port);
                    } else {
                        let span = field_span(pr, "toPorts");
                        out.push(
                            PORT_MISMATCH,
                            p.file,
                            Some(span),
                            format!(
                                "Gateway `{}` connects to `{backend}` on port {port} (HTTPRoute `{}`, the Service's targetPort), which this rule does not allow: requests through the gateway are dropped",
                                route.gateway, route.route
                            ),
                            Some(format!("allow port {port}: after service translation the gateway connects to the pod's port, not the Service port")),
                        );
                    }
                }
            }
            if !subjects.is_empty() {
                if routes.is_empty() {
                    let _ = write!(
                        message,
                        "; no Cilium Gateway in these manifests routes to {who}"
                    );
                } else {
                    let _ = write!(
                        message,
                        "; {}",
                        routes.into_iter().collect::<Vec<_>>().join("; ")
                    );
                    if !allowed_ports.is_empty() {
                        let list: Vec<String> = allowed_ports.iter().map(u16::to_string).collect();
                        let _ = write!(
                            message,
                            "; the gateway connects to the Service's targetPort ({}), which this rule allows",
                            list.join(", ")
                        );
                    }
                }
            }
            out.push(
                GATEWAY_ENTITY,
                p.file,
                Some(entity.span),
                message,
                Some(rule(GATEWAY_ENTITY).map_or(String::new(), |r| r.help.to_string())),
            );
            for port_rule in pr.to_ports.iter().flatten() {
                let Some(l7) = &port_rule.rules else { continue };
                if l7.http.is_none() {
                    continue;
                }
                let span = cx.key_span(p.file, l7.span, "http").unwrap_or(l7.span);
                out.push(
                    SECOND_PASS,
                    p.file,
                    Some(span),
                    format!(
                        "HTTP rules on traffic from the gateway: each request is proxied twice, by the gateway's Envoy and again by the Envoy on the node of {who}; a request these rules do not allow gets 403 `Access denied` from that second proxy (an L7 DENIED in Hubble), not a drop"
                    ),
                    Some(rule(SECOND_PASS).map_or(String::new(), |r| r.help.to_string())),
                );
            }
        }
    }
}
