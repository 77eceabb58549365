//! proptest strategies: a grammar of small clusters and valid CNP/CCNP policies. Every
//! choice comes from a small alphabet so that random selectors, ports and names actually
//! collide with the cluster and with each other (a random string would select nothing).

use super::harness::{Knobs, Probe, dns, http, probe};
use super::model::*;
use membrane_policy::model::Protocol;
use membrane_policy::options::EnforcementMode;
use membrane_policy::verdict::L7Request;
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------

fn pod() -> impl Strategy<Value = Pod> {
    let app = prop::option::weighted(0.8, select(vec!["a", "b", "c"]));
    let tier = prop::option::weighted(0.5, select(vec!["x", "y"]));
    // Named ports: `http` is declared with two different numbers by different pods now and
    // then, so that egress named ports sometimes resolve to nothing (§9.5).
    let ports = prop::collection::vec(
        select(vec![
            ("http", 80u16, "TCP"),
            ("http", 8080, "TCP"),
            ("dns", 53, "UDP"),
            ("metrics", 9090, "TCP"),
        ]),
        0..=2,
    );
    (0..2usize, 0..2usize, app, tier, ports).prop_map(|(ns, node, app, tier, mut ports)| {
        let mut labels = Vec::new();
        if let Some(a) = app {
            labels.push(("app", a));
        }
        if let Some(t) = tier {
            labels.push(("tier", t));
        }
        ports.sort();
        ports.dedup_by(|a, b| a.0 == b.0);
        Pod {
            ns,
            node,
            labels,
            ports,
        }
    })
}

pub fn cluster() -> impl Strategy<Value = Cluster> {
    let team = || prop::option::weighted(0.6, select(vec!["red", "blue"]));
    let role = || select(vec!["worker", "control"]);
    (
        team(),
        team(),
        role(),
        role(),
        prop::collection::vec(pod(), 2..=4),
        prop::sample::subsequence(vec!["init", "ingress", "kube-apiserver", "health"], 0..=2),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(t1, t2, r1, r2, pods, entities, host_firewall)| Cluster {
            ns_team: [t1, t2],
            node_roles: [r1, r2],
            pods,
            entities,
            host_firewall,
        })
}

pub fn knobs() -> impl Strategy<Value = Knobs> {
    (
        prop_oneof![
            8 => Just(EnforcementMode::Default),
            1 => Just(EnforcementMode::Always),
            1 => Just(EnforcementMode::Never),
        ],
        prop::bool::weighted(0.8),
    )
        .prop_map(|(enforcement, allow_localhost)| Knobs {
            enforcement,
            allow_localhost,
        })
}

// ---------------------------------------------------------------------------------------
// Selectors
// ---------------------------------------------------------------------------------------

fn dedup_keys(mut labels: Vec<(&'static str, &'static str)>) -> Vec<(&'static str, &'static str)> {
    let mut seen = Vec::new();
    labels.retain(|(k, _)| {
        let fresh = !seen.contains(k);
        seen.push(*k);
        fresh
    });
    labels
}

type Expr = (&'static str, &'static str, Vec<&'static str>);

fn expr(pool: Vec<Expr>) -> impl Strategy<Value = Expr> {
    select(pool)
}

/// Peer selectors: pod labels, explicit namespaces (which stop the namespace injection),
/// namespace labels, kube-dns, and reserved labels (no injection at all).
fn peer_sel() -> impl Strategy<Value = Sel> {
    let labels = prop::collection::vec(
        select(vec![
            ("app", "a"),
            ("app", "b"),
            ("tier", "x"),
            ("k8s:app", "a"),
            ("io.kubernetes.pod.namespace", "ns2"),
            ("k8s:io.kubernetes.pod.namespace", "ns1"),
            ("io.cilium.k8s.namespace.labels.team", "red"),
            ("k8s-app", "kube-dns"),
            ("io.kubernetes.pod.namespace", "kube-system"),
            ("reserved:host", ""),
            ("reserved:world", ""),
        ]),
        0..=2,
    )
    .prop_map(dedup_keys);
    let exprs = prop::collection::vec(
        expr(vec![
            ("app", "In", vec!["a", "b"]),
            ("app", "NotIn", vec!["a"]),
            ("tier", "Exists", vec![]),
            ("tier", "DoesNotExist", vec![]),
            ("io.kubernetes.pod.namespace", "NotIn", vec!["ns1"]),
            ("io.kubernetes.pod.namespace", "In", vec!["ns1", "ns2"]),
            ("k8s:app", "Exists", vec![]),
        ]),
        0..=1,
    );
    (labels, exprs).prop_map(|(labels, exprs)| Sel { labels, exprs })
}

fn endpoint_subject(ccnp: bool) -> BoxedStrategy<Sel> {
    let mut pool = vec![("app", "a"), ("app", "b"), ("tier", "x"), ("k8s:app", "c")];
    if ccnp {
        // Cluster-wide policies may select the reserved-identity endpoints.
        pool.extend([
            ("reserved:init", ""),
            ("io.kubernetes.pod.namespace", "ns2"),
        ]);
    }
    let labels = prop::collection::vec(select(pool), 0..=1).prop_map(dedup_keys);
    let exprs = prop::collection::vec(
        expr(vec![
            ("app", "In", vec!["a", "c"]),
            ("app", "NotIn", vec!["b"]),
            ("tier", "Exists", vec![]),
            ("tier", "DoesNotExist", vec![]),
        ]),
        0..=1,
    );
    (labels, exprs)
        .prop_map(|(labels, exprs)| Sel { labels, exprs })
        .boxed()
}

fn node_subject() -> impl Strategy<Value = Sel> {
    prop_oneof![
        Just(vec![]),
        Just(vec![("role", "worker")]),
        Just(vec![("role", "control")]),
    ]
    .prop_map(|labels| Sel {
        labels,
        exprs: vec![],
    })
}

// ---------------------------------------------------------------------------------------
// Peers, ports, L7
// ---------------------------------------------------------------------------------------

const ENTITIES: [&str; 12] = [
    "all",
    "world",
    "cluster",
    "host",
    "remote-node",
    "init",
    "ingress",
    "kube-apiserver",
    "health",
    "none",
    "world-ipv4",
    "unmanaged",
];

fn fqdn() -> impl Strategy<Value = Fqdn> {
    select(vec![
        Fqdn::Name("api.example.com"),
        Fqdn::Name("example.com"),
        Fqdn::Pattern("*.example.com"),
        Fqdn::Pattern("*.example.org"),
        Fqdn::Pattern("*"),
    ])
}

/// toFQDNs only in egress allow sections (deny sections have no such field).
fn peer(egress: bool, deny: bool) -> BoxedStrategy<Peer> {
    let endpoints = prop::collection::vec(peer_sel(), 0..=2).prop_map(Peer::Endpoints);
    let entities = prop::collection::vec(select(ENTITIES.to_vec()), 0..=2).prop_map(|mut v| {
        v.dedup();
        Peer::Entities(v)
    });
    let cidr = prop::collection::vec(
        select(vec!["198.51.100.7", "203.0.113.0/24", "0.0.0.0/0"]),
        1..=2,
    )
    .prop_map(Peer::Cidr);
    let cidr_set = prop::collection::vec(
        select(vec![
            ("0.0.0.0/0", vec!["198.51.100.0/24"]),
            ("203.0.113.0/24", vec!["203.0.113.5/32"]),
            ("198.51.100.0/24", vec![]),
            ("10.0.0.0/8", vec![]),
        ]),
        1..=2,
    )
    .prop_map(Peer::CidrSet);
    if egress && !deny {
        prop_oneof![
            5 => Just(Peer::Wildcard),
            6 => endpoints,
            4 => entities,
            1 => cidr,
            2 => cidr_set,
            2 => prop::collection::vec(fqdn(), 1..=2).prop_map(Peer::Fqdns),
        ]
        .boxed()
    } else {
        prop_oneof![
            5 => Just(Peer::Wildcard),
            6 => endpoints,
            4 => entities,
            1 => cidr,
            2 => cidr_set,
        ]
        .boxed()
    }
}

fn plain_port() -> impl Strategy<Value = Port> {
    let number = select(vec![
        ("80", None),
        ("443", None),
        ("53", None),
        ("8080", None),
        ("0", None),
        ("8000", Some(8090u16)),
        ("80", Some(88)),
        ("50", Some(60)),
        ("1", Some(1024)),
        ("53", Some(53)),
        ("http", None),
        ("dns", None),
        ("metrics", None),
    ]);
    // Odd ranges too: their prefix decomposition in the policy map has many pieces.
    let odd_range = (
        select(vec![
            "1", "7", "79", "443", "1023", "8081", "32768", "65535",
        ]),
        select(vec![8u16, 80, 444, 1024, 8089, 40000, 65534, 65535]),
    )
        .prop_map(|(p, e)| (p, Some(e)));
    let number = prop_oneof![4 => number, 1 => odd_range];
    let protocol = select(vec![
        None,
        Some("TCP"),
        Some("UDP"),
        Some("SCTP"),
        Some("ANY"),
        Some("udp"),
    ]);
    (number, protocol).prop_map(|((port, end_port), protocol)| Port {
        port,
        end_port,
        protocol,
    })
}

fn http_rules() -> impl Strategy<Value = L7> {
    prop::collection::vec(
        (
            select(vec![None, Some("GET"), Some("POST"), Some("GET|HEAD")]),
            select(vec![None, Some("/"), Some("/api/.*"), Some("/public")]),
        ),
        1..=2,
    )
    .prop_map(L7::Http)
}

/// HTTP only on TCP ports that no DNS rule uses (two parsers on one port is an error that
/// the generators stay clear of).
fn http_port_rule() -> impl Strategy<Value = PortRule> {
    let ports = prop::collection::vec(
        select(vec![("80", None), ("8080", None), ("8000", Some(8090u16))]),
        1..=2,
    );
    (ports, http_rules()).prop_map(|(ports, l7)| PortRule {
        ports: ports
            .into_iter()
            .map(|(port, end_port)| Port {
                port,
                end_port,
                protocol: Some("TCP"),
            })
            .collect(),
        l7,
    })
}

/// DNS rules: egress only, one exact port 53, any of TCP / UDP / ANY.
fn dns_port_rule() -> impl Strategy<Value = PortRule> {
    (
        select(vec![Some("UDP"), Some("ANY"), Some("TCP"), None]),
        prop::collection::vec(fqdn(), 1..=2),
    )
        .prop_map(|(protocol, names)| PortRule {
            ports: vec![Port {
                port: "53",
                end_port: None,
                protocol,
            }],
            l7: L7::Dns(names),
        })
}

fn plain_port_rule() -> impl Strategy<Value = PortRule> {
    prop::collection::vec(plain_port(), 1..=2).prop_map(|ports| PortRule {
        ports,
        l7: L7::None,
    })
}

fn icmps() -> impl Strategy<Value = Vec<Vec<Icmp>>> {
    prop::collection::vec(
        prop::collection::vec(
            select(vec![
                Icmp {
                    family: None,
                    ty: "8",
                },
                Icmp {
                    family: Some("IPv4"),
                    ty: "EchoReply",
                },
                Icmp {
                    family: Some("IPv6"),
                    ty: "128",
                },
            ]),
            1..=2,
        ),
        1..=1,
    )
}

/// What an entry may carry besides its peers.
#[derive(Debug, Clone, Copy)]
pub struct EntryKind {
    pub egress: bool,
    pub deny: bool,
    /// L7 is not allowed on host ingress, nor HTTP on host egress; deny rules have none.
    pub l7: bool,
}

pub fn entry(kind: EntryKind) -> BoxedStrategy<Entry> {
    let port_rule: BoxedStrategy<PortRule> = match (kind.l7 && !kind.deny, kind.egress) {
        (false, _) => plain_port_rule().boxed(),
        (true, false) => prop_oneof![3 => plain_port_rule(), 2 => http_port_rule()].boxed(),
        (true, true) => prop_oneof![
            3 => plain_port_rule(),
            2 => http_port_rule(),
            2 => dns_port_rule(),
        ]
        .boxed(),
    };
    let l4 = prop_oneof![
        3 => Just((None, None)),
        6 => prop::collection::vec(port_rule, 1..=2).prop_map(|p| (Some(p), None)),
        1 => icmps().prop_map(|i| (None, Some(i))),
    ];
    (peer(kind.egress, kind.deny), l4)
        .prop_map(|(peer, (ports, icmps))| Entry { peer, ports, icmps })
        .boxed()
}

// ---------------------------------------------------------------------------------------
// Rules and policies
// ---------------------------------------------------------------------------------------

fn section_entries(
    section: Section,
    host: bool,
    primary: bool,
) -> BoxedStrategy<Option<Vec<Entry>>> {
    let kind = EntryKind {
        egress: !section.is_ingress(),
        deny: section.is_deny(),
        l7: !host,
    };
    let list = prop::collection::vec(entry(kind), if primary { 1..=2 } else { 0..=2 });
    if primary {
        list.prop_map(Some).boxed()
    } else {
        prop::option::weighted(0.35, list).boxed()
    }
}

fn default_deny() -> impl Strategy<Value = Option<bool>> {
    prop_oneof![5 => Just(None), 2 => Just(Some(true)), 3 => Just(Some(false))]
}

pub fn rule(ccnp: bool) -> BoxedStrategy<Rule> {
    let subject = if ccnp {
        prop_oneof![
            4 => endpoint_subject(true).prop_map(Subject::Endpoints),
            1 => node_subject().prop_map(Subject::Nodes),
        ]
        .boxed()
    } else {
        endpoint_subject(false).prop_map(Subject::Endpoints).boxed()
    };
    (subject, 0..4usize)
        .prop_flat_map(|(subject, primary)| {
            let host = matches!(subject, Subject::Nodes(_));
            let sections: Vec<BoxedStrategy<Option<Vec<Entry>>>> = SECTIONS
                .iter()
                .map(|s| section_entries(*s, host, s.index() == primary))
                .collect();
            (Just(subject), sections, default_deny(), default_deny())
        })
        .prop_map(|(subject, sections, ddi, dde)| {
            let mut it = sections.into_iter();
            let mut next = || it.next().flatten();
            Rule {
                subject,
                sections: [next(), next(), next(), next()],
                default_deny: [ddi, dde],
            }
        })
        .boxed()
}

fn policy() -> impl Strategy<Value = Policy> {
    (prop::bool::weighted(0.35), 0..2usize)
        .prop_flat_map(|(ccnp, ns)| {
            (
                Just(ccnp),
                Just(ns),
                prop::collection::vec(rule(ccnp), 1..=2),
                select(vec![Form::Spec, Form::Specs, Form::Mixed]),
            )
        })
        .prop_map(|(ccnp, ns, rules, form)| Policy {
            name: String::new(),
            ns: if ccnp { None } else { Some(ns) },
            rules,
            form,
        })
}

pub fn name_policies(mut policies: Vec<Policy>) -> Vec<Policy> {
    for (i, p) in policies.iter_mut().enumerate() {
        p.name = format!("p{i}");
    }
    policies
}

pub fn policies() -> impl Strategy<Value = Vec<Policy>> {
    prop::collection::vec(policy(), 1..=3).prop_map(name_policies)
}

// ---------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------

/// A few random probes on top of the fixed ones: any port, any protocol.
pub fn random_probes() -> impl Strategy<Value = Vec<Probe>> {
    let one = (
        select(vec![
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Icmp,
            Protocol::Icmpv6,
        ]),
        prop_oneof![
            Just(53u16),
            Just(80),
            Just(8080),
            7990..8100u16,
            0..=1100u16,
            any::<u16>()
        ],
        select(vec!["GET", "POST", "HEAD", "DELETE"]),
        select(vec!["/", "/public", "/api/", "/api/users/1", "/private"]),
        select(vec![
            "example.com",
            "a.example.com",
            "api.example.com.",
            "EXAMPLE.COM",
            "x.org",
        ]),
    )
        .prop_map(|(protocol, port, method, path, qname)| {
            let request = match protocol {
                Protocol::Tcp if port % 3 != 0 => http(method, path),
                Protocol::Udp | Protocol::Tcp if port % 2 == 1 || port == 53 => dns(qname),
                _ => L7Request::None,
            };
            let port = match protocol {
                Protocol::Icmp | Protocol::Icmpv6 => port % 256,
                _ => port,
            };
            probe(protocol, port, request)
        });
    prop::collection::vec(one, 0..=4)
}
