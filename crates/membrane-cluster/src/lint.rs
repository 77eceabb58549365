//! `membrane lint`: mistakes in policies, found statically against the loaded cluster
//! (workloads, Services, Gateways), each with a stable rule id.
//!
//! Rule ids never change meaning and are never reused; tools may key on them. Severity:
//! `error` (the policy is not enforced at all), `warning` (it does not do what it looks like),
//! `info` (it does what it says, with a consequence worth knowing).
//!
//! | id | name | severity | finds |
//! |---|---|---|---|
//! | MEM001 | policy-rejected | error | An object the agent (or the API server's schema) refuses: Cilium's own message. The policy is not enforced at all. |
//! | MEM002 | empty-rule-list | warning | `ingress: []` / `egress: []` (and the deny lists): a list of length 0 counts as absent, so it enforces nothing; with all four empty the rule is rejected (Cilium ≥ 1.17) or inert (older). |
//! | MEM003 | namespace-missing | warning | A namespaced object (policy, workload, Service, route) without `metadata.namespace`: it lands in whatever namespace kubectl uses, usually `default`. |
//! | MEM004 | default-deny-denies-nothing | warning | A policy written as a default deny that denies nothing: rejected, inert, `enableDefaultDeny: false`, or selecting no workload (e.g. created in `default`). |
//! | MEM005 | http-regex-anchored | warning | HTTP `path`/`method` regexes match the whole string only: a path that looks like a prefix (`/api` vs `/api/users/1`, `/api?page=2`), `/*` globs, an unescaped `?` before a query, a path without a leading `/`, lowercase or comma-separated methods. |
//! | MEM006 | egress-deny-without-dns | warning | An endpoint whose egress is (or is meant to be) default deny and that cannot reach kube-dns on 53/UDP: name resolution fails. |
//! | MEM007 | fqdn-without-dns-rule | warning | `toFQDNs` for endpoints whose DNS traffic does not go through the DNS proxy (no `rules.dns` towards kube-dns), or whose DNS rules refuse the name: no address is ever learned. |
//! | MEM008 | dns-udp-only | warning | DNS to kube-dns allowed on 53/UDP but not 53/TCP: truncated answers are retried over TCP and fail. |
//! | MEM009 | port-not-container-port | warning | A numeric policy port that no selected pod listens on (often the Service port instead of its targetPort), or a Gateway backend port the rule does not allow. Policy is enforced after service translation. |
//! | MEM010 | cidr-selects-cluster | warning | A CIDR or KNP `ipBlock` that contains pod or node addresses, as if it selected them: CIDR selectors never select Cilium-managed pods or nodes (unlike upstream Kubernetes for `ipBlock`). |
//! | MEM011 | notin-namespace-admits-reserved | warning | A peer selector with `NotIn`/`DoesNotExist` on the namespace: no namespace is injected and it also matches world, host and remote-node. |
//! | MEM012 | namespace-key-in-endpoint-selector | warning | A namespace key in a CNP `endpointSelector`: without `k8s:` it is kept beside the injected namespace (usually selecting nothing); with `k8s:` it is overwritten. |
//! | MEM013 | named-port-unresolved | warning | A named port that resolves to nothing: defined with different numbers across pods (egress), not defined by any (selected) pod, or with another protocol. |
//! | MEM014 | selector-matches-nothing | warning | An `endpointSelector`/`podSelector` or a peer selector that matches no workload in the loaded manifests. |
//! | MEM015 | shadowed-rule | warning | A rule without effect: HTTP rules wildcarded by an allow of the same peer and port without L7 rules, or an allow whose peers and ports are all denied. |
//! | MEM016 | too-many-ports | error | More than 40 ports in one `toPorts` entry (or 40 ICMP types): the agent rejects the policy. |
//! | MEM017 | kube-dns-peer-without-namespace | warning | A CNP peer selecting kube-dns without a namespace key: the policy's namespace is injected, so it never matches kube-dns in `kube-system`. |
//! | MEM018 | dns-double-star | warning | `**.` in a DNS `matchPattern`: Cilium v1.17 compiles it like `*.` (exactly one label); newer agents match one or more. |
//! | MEM019 | duplicate-object | warning | The same kind/namespace/name defined more than once: each copy replaces the previous one. |
//! | MEM020 | implicit-default-deny | info | An allow rule that, alone, puts the endpoints it selects into default deny for that direction: everything else is dropped. |
//! | MEM021 | gateway-entity | info | `fromEntities: [ingress]`: admits traffic proxied by Cilium's Ingress/Gateway only; names the routes and the ports the gateway connects to. |
//! | MEM022 | l7-second-proxy-pass | info | HTTP rules on traffic from the gateway: requests are proxied a second time at the backend's node; refused requests get 403, not a drop. |
//! | MEM023 | manifest-warning | warning | Other warnings from loading the manifests (gateway class, missing CIDR group, cloud groups, endPort below port, namespace on a CCNP). |

// The checks, grouped by what they examine; `context` and `policy_view` hold what they share.
mod cidr;
mod context;
mod default_deny;
mod dns;
mod gateway;
mod http;
mod loading;
mod policy_view;
mod ports;
mod selectors;
mod shadowed;
mod wording;

use crate::manifests::Loaded;
use context::Cx;
use membrane_policy::diag::Severity;
use membrane_policy::model::FileId;
use membrane_policy::yaml::Span;

/// One lint rule: its stable id, a short name, its severity and what it is about.
#[derive(Debug)]
pub struct LintRule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    pub help: &'static str,
}

const REJECTED: &str = "MEM001";
const EMPTY_LIST: &str = "MEM002";
const NAMESPACE_MISSING: &str = "MEM003";
const DENY_NOTHING: &str = "MEM004";
const HTTP_ANCHORED: &str = "MEM005";
const NO_DNS: &str = "MEM006";
const FQDN_NO_DNS: &str = "MEM007";
const DNS_UDP_ONLY: &str = "MEM008";
const PORT_MISMATCH: &str = "MEM009";
const CIDR_CLUSTER: &str = "MEM010";
const NOTIN_NS: &str = "MEM011";
const SUBJECT_NS_KEY: &str = "MEM012";
const NAMED_PORT: &str = "MEM013";
const SELECTS_NOTHING: &str = "MEM014";
const SHADOWED: &str = "MEM015";
const TOO_MANY_PORTS: &str = "MEM016";
const KUBE_DNS_NS: &str = "MEM017";
const DOUBLE_STAR: &str = "MEM018";
const DUPLICATE: &str = "MEM019";
const IMPLICIT_DENY: &str = "MEM020";
const GATEWAY_ENTITY: &str = "MEM021";
const SECOND_PASS: &str = "MEM022";
const MANIFEST_WARNING: &str = "MEM023";

/// Every rule, in id order (the table at the top of this module).
pub const RULES: &[LintRule] = &[
    LintRule {
        id: REJECTED,
        name: "policy-rejected",
        severity: Severity::Error,
        summary: "the agent (or the API server's schema) refuses this object: it is not enforced at all",
        help: "fix the error: until then the policy does not exist as far as the datapath is concerned",
    },
    LintRule {
        id: EMPTY_LIST,
        name: "empty-rule-list",
        severity: Severity::Warning,
        summary: "an empty rule list (`ingress: []`) counts as absent: it enforces nothing",
        help: "to deny everything in a direction write `ingress: [{}]` (Cilium ≤ 1.18) or, on any version, `ingress: [{fromEntities: []}]`",
    },
    LintRule {
        id: NAMESPACE_MISSING,
        name: "namespace-missing",
        severity: Severity::Warning,
        summary: "a namespaced object without metadata.namespace lands in kubectl's namespace, usually `default`",
        help: "set metadata.namespace explicitly",
    },
    LintRule {
        id: DENY_NOTHING,
        name: "default-deny-denies-nothing",
        severity: Severity::Warning,
        summary: "a policy written as a default deny that denies nothing",
        help: "create the default deny in each namespace with `ingress: [{}]` / `egress: [{}]` (or `[{fromEntities: []}]`, `[{toEntities: []}]` on any version)",
    },
    LintRule {
        id: HTTP_ANCHORED,
        name: "http-regex-anchored",
        severity: Severity::Warning,
        summary: "HTTP path and method are regexes matched against the whole value",
        help: "write `/api(/.*)?` for everything under `/api`, `/api.*` to include query strings; methods are upper case (`GET|HEAD`)",
    },
    LintRule {
        id: NO_DNS,
        name: "egress-deny-without-dns",
        severity: Severity::Warning,
        summary: "egress default deny without an allow to kube-dns on 53/UDP: name resolution fails",
        help: "allow egress to `{k8s:io.kubernetes.pod.namespace: kube-system, k8s:k8s-app: kube-dns}` on 53/UDP and 53/TCP",
    },
    LintRule {
        id: FQDN_NO_DNS,
        name: "fqdn-without-dns-rule",
        severity: Severity::Warning,
        summary: "toFQDNs without DNS rules on the way to kube-dns: no address is ever learned",
        help: "add an egress rule to kube-dns on 53/UDP and 53/TCP with `rules: {dns: [{matchPattern: \"*\"}]}`",
    },
    LintRule {
        id: DNS_UDP_ONLY,
        name: "dns-udp-only",
        severity: Severity::Warning,
        summary: "DNS allowed on 53/UDP only: truncated answers are retried over TCP and fail",
        help: "allow 53/TCP as well (or write `protocol: ANY`)",
    },
    LintRule {
        id: PORT_MISMATCH,
        name: "port-not-container-port",
        severity: Severity::Warning,
        summary: "a policy port that the selected pods do not listen on",
        help: "policy is enforced after service translation: use the container port (the Service's targetPort), not the Service port",
    },
    LintRule {
        id: CIDR_CLUSTER,
        name: "cidr-selects-cluster",
        severity: Severity::Warning,
        summary: "a CIDR or ipBlock containing pod or node addresses: CIDR selectors never select them",
        help: "select pods with fromEndpoints/toEndpoints (or a namespaceSelector in a NetworkPolicy) and nodes with the `host` and `remote-node` entities",
    },
    LintRule {
        id: NOTIN_NS,
        name: "notin-namespace-admits-reserved",
        severity: Severity::Warning,
        summary: "a NotIn/DoesNotExist namespace selector also matches world, host and remote-node",
        help: "add `{key: k8s:io.kubernetes.pod.namespace, operator: Exists}` to keep the selector to pods",
    },
    LintRule {
        id: SUBJECT_NS_KEY,
        name: "namespace-key-in-endpoint-selector",
        severity: Severity::Warning,
        summary: "a namespace key in a CiliumNetworkPolicy's endpointSelector",
        help: "remove the namespace key: a CiliumNetworkPolicy always applies to its own namespace",
    },
    LintRule {
        id: NAMED_PORT,
        name: "named-port-unresolved",
        severity: Severity::Warning,
        summary: "a named port that resolves to nothing",
        help: "use the port number, or give the name one number and protocol across all pods",
    },
    LintRule {
        id: SELECTS_NOTHING,
        name: "selector-matches-nothing",
        severity: Severity::Warning,
        summary: "a selector that matches no workload in the loaded manifests",
        help: "check the labels and the namespace: a CiliumNetworkPolicy only selects pods of its own namespace",
    },
    LintRule {
        id: SHADOWED,
        name: "shadowed-rule",
        severity: Severity::Warning,
        summary: "a rule without effect: L7 rules wildcarded by a plain allow, or an allow covered by deny rules",
        help: "remove the rule that hides it, or narrow its peers or ports",
    },
    LintRule {
        id: TOO_MANY_PORTS,
        name: "too-many-ports",
        severity: Severity::Error,
        summary: "more than 40 ports in one toPorts entry (or 40 ICMP types): the agent rejects the policy",
        help: "split the ports into several toPorts entries, or use a range with endPort",
    },
    LintRule {
        id: KUBE_DNS_NS,
        name: "kube-dns-peer-without-namespace",
        severity: Severity::Warning,
        summary: "a CNP peer selecting kube-dns without a namespace key never matches kube-dns",
        help: "add `k8s:io.kubernetes.pod.namespace: kube-system` to the selector",
    },
    LintRule {
        id: DOUBLE_STAR,
        name: "dns-double-star",
        severity: Severity::Warning,
        summary: "`**.` in a DNS matchPattern: Cilium v1.17 agents match exactly one label",
        help: "for v1.17 agents list the depths you need (`*.example.com`, `*.*.example.com`)",
    },
    LintRule {
        id: DUPLICATE,
        name: "duplicate-object",
        severity: Severity::Warning,
        summary: "the same kind, namespace and name defined more than once",
        help: "keep one definition; if each copy was meant for a namespace of its own, set metadata.namespace in each",
    },
    LintRule {
        id: IMPLICIT_DENY,
        name: "implicit-default-deny",
        severity: Severity::Info,
        summary: "an allow rule that alone puts endpoints into default deny for a direction",
        help: "if that is intended, say so with a default-deny policy (`ingress: [{}]` or `enableDefaultDeny`); otherwise also allow the other traffic",
    },
    LintRule {
        id: GATEWAY_ENTITY,
        name: "gateway-entity",
        severity: Severity::Info,
        summary: "`fromEntities: [ingress]` admits traffic proxied by Cilium's Ingress/Gateway, and only that",
        help: "to also admit pods calling these endpoints directly, add a fromEndpoints rule",
    },
    LintRule {
        id: SECOND_PASS,
        name: "l7-second-proxy-pass",
        severity: Severity::Info,
        summary: "HTTP rules on traffic from the gateway: a second proxy pass at the backend's node",
        help: "look for these denials as L7 `DENIED` (HTTP 403) in Hubble, not as packet drops",
    },
    LintRule {
        id: MANIFEST_WARNING,
        name: "manifest-warning",
        severity: Severity::Warning,
        summary: "a warning from loading the manifests",
        help: "see the message",
    },
];

/// The rule with this id.
pub fn rule(id: &str) -> Option<&'static LintRule> {
    RULES.iter().find(|r| r.id == id)
}

/// One finding: a rule, where, what and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    pub file: FileId,
    pub span: Option<Span>,
    pub message: String,
    pub help: Option<String>,
}

/// Lints loaded manifests. Findings are sorted by file, line, column and rule id.
pub fn lint(loaded: &Loaded) -> Vec<Finding> {
    let cx = Cx::new(loaded);
    let mut out = Out::default();
    loading::engine_diagnostics(&cx, &mut out);
    loading::defaulted_namespaces(&cx, &mut out);
    loading::duplicates(&cx, &mut out);
    let deny_nothing = default_deny::default_deny_denies_nothing(&cx, &mut out);
    for (i, p) in cx.policies.iter().enumerate() {
        default_deny::empty_lists(&cx, p, &mut out);
        http::http_regexes(&cx, p, &mut out);
        selectors::peer_selectors(&cx, p, &mut out);
        dns::dns_patterns(&cx, p, &mut out);
        cidr::cidrs(&cx, p, &mut out);
        ports::ports(&cx, p, &mut out);
        gateway::gateway_entity(&cx, p, &mut out);
        dns::fqdns(&cx, p, &mut out);
        dns::dns_udp_only(&cx, p, &mut out);
        selectors::subjects_matching_nothing(&cx, p, deny_nothing.contains(&i), &mut out);
    }
    dns::dns_reachability(&cx, &mut out);
    default_deny::implicit_default_deny(&cx, &mut out);
    shadowed::shadowed(&cx, &mut out);
    out.finish()
}

#[derive(Default)]
struct Out {
    findings: Vec<Finding>,
}

impl Out {
    fn push(
        &mut self,
        id: &'static str,
        file: FileId,
        span: Option<Span>,
        message: impl Into<String>,
        help: Option<String>,
    ) {
        let severity = rule(id).map_or(Severity::Warning, |r| r.severity);
        self.findings.push(Finding {
            rule: id,
            severity,
            file,
            span,
            message: message.into(),
            help,
        });
    }

    fn finish(mut self) -> Vec<Finding> {
        self.findings.sort_by(|a, b| {
            let key = |f: &Finding| {
                (
                    f.file,
                    f.span.map_or(0, |s| s.line),
                    f.span.map_or(0, |s| s.col),
                    f.rule,
                )
            };
            key(a).cmp(&key(b)).then_with(|| a.message.cmp(&b.message))
        });
        self.findings.dedup();
        self.findings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_in_order() {
        for (i, r) in RULES.iter().enumerate() {
            assert_eq!(r.id, format!("MEM{:03}", i + 1));
            assert_eq!(rule(r.id).map(|x| x.name), Some(r.name));
        }
    }
}
