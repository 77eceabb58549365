//! The nftables compiler: the engine's resolved policy maps (`DirectionPolicy.map`) turned
//! into ruleset text for `nft -f -`. Pure: data in, text out, no I/O.
//!
//! # Layout (one `table inet membrane` per node network namespace)
//!
//! * `ip2id`: address → identity (the ipcache), and `cidr2id`: address ranges → the identity
//!   of the policy CIDR prefixes covering them (consulted first, so exact addresses win).
//!   `classify` copies the source identity into `meta mark` and the destination identity
//!   into `ct mark` (2, `world`, when unknown).
//! * `egress_enforced` / `ingress_enforced`: address → `jump <endpoint chain>` for the local
//!   endpoints whose direction is enforced; other addresses pass.
//! * Per enforced endpoint and direction, one chain plus small maps, one per lookup level of
//!   [`DirectionPolicy::lookup`], in the lookup's order (§9.12):
//!   1. peer, protocol, port prefix (longest first): `_l4` (exact ports, hash), `_l4r`
//!      (ranges, interval map), `_icmp`/`_icmp6` (ICMP types);
//!   2. any peer, protocol, port prefix: `_any_l4`, `_any_l4r`, `_any_icmp`, `_any_icmp6`;
//!   3. peer, protocol, every port: `_proto`;
//!   4. any peer, protocol, every port: `_any_proto`;
//!   5. peer, every protocol: `_l3`;
//!   6. any peer, every protocol: one rule;
//!   7. `log group 1` and `drop` (default deny).
//!
//! Each level is one rule; a vmap miss falls through to the next rule, so the chain is the
//! lookup's first-match order. Within levels 1 and 2 the engine takes the longest matching
//! prefix; prefixes nest, so they are flattened here into disjoint port runs, each with the
//! verdict of the longest prefix covering it. Interval maps reject overlaps, which is why the
//! flattening is needed anyway, and it keeps big exact-port policies in hash maps (fast to
//! flush and look up, docs/datapath.md §3) with only true ranges in small interval maps.
//!
//! Verdicts: allow is `return` in egress chains (so that the destination's ingress check
//! still runs) and `accept` in ingress chains; deny is `goto <chain>_deny`, which logs
//! `deny-rule` and drops; L7 entries `goto to_http_proxy` / `to_dns_proxy`, which for now
//! `return` (L4 allow): the proxies are the next step.
//!
//! Maps are per endpoint (keyed by the peer identity only), as Cilium's policy maps are: two
//! endpoints with one identity can still differ by their named ports.

use membrane_policy::model::Direction;
use membrane_policy::resolve::{DirectionPolicy, MapKey};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::layout::{LOG_TAG, NFLOG_GROUP, TABLE};

/// The drop reason of a connection meant for an L7 proxy that was not listening.
pub const PROXY_UNAVAILABLE: &str = "proxy-unavailable";

/// What a policy-map entry does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
    /// Allowed at L4, then handed to the HTTP (or other non-DNS L7) proxy.
    HttpProxy,
    /// Allowed at L4, then handed to the DNS proxy.
    DnsProxy,
    /// Allowed at L4, then handed to the TLS (SNI) proxy.
    TlsProxy,
}

/// A run of ports (or ICMP types) with one action, `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Run {
    pub lo: u16,
    pub hi: u16,
    pub action: Action,
}

/// One direction of one endpoint, as the six levels of the engine's lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirectionTable {
    /// Level 1: (peer, protocol) → disjoint port runs.
    pub peer_ports: BTreeMap<(u32, u8), Vec<Run>>,
    /// Level 2: protocol → disjoint port runs, any peer.
    pub any_ports: BTreeMap<u8, Vec<Run>>,
    /// Level 3: (peer, protocol), every port.
    pub peer_proto: BTreeMap<(u32, u8), Action>,
    /// Level 4: protocol, every port, any peer.
    pub any_proto: BTreeMap<u8, Action>,
    /// Level 5: peer, every protocol.
    pub peer_l3: BTreeMap<u32, Action>,
    /// Level 6: everything.
    pub any_l3: Option<Action>,
    /// Keys with protocol "any" and a port: the engine's lookup never consults them (it only
    /// looks at protocol-any keys without a port), so neither does the datapath.
    pub unreachable: usize,
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SCTP: u8 = 132;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

fn is_port_proto(p: u8) -> bool {
    matches!(p, TCP | UDP | SCTP)
}

fn is_type_proto(p: u8) -> bool {
    matches!(p, ICMP | ICMPV6)
}

fn prefix_range(port: u16, prefix_len: u8) -> (u32, u32) {
    let k = MapKey {
        peer: 0,
        protocol: 0,
        port,
        prefix_len,
    };
    let (lo, hi) = k.port_range();
    (u32::from(lo), u32::from(hi))
}

fn mask(port: u32, prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 16 {
        port
    } else {
        port & !((1u32 << (16 - prefix_len)) - 1) & 0xffff
    }
}

/// A port prefix (port, prefix length) with its action.
pub type Prefix = (u16, u8, Action);

/// Longest-prefix flattening: nested prefixes → disjoint runs, each point keeping the action
/// of the longest prefix that covers it (the engine's "longest port prefix first").
pub fn flatten_prefixes(prefixes: &[Prefix], max: u16) -> Vec<Run> {
    let mut by_key: HashMap<(u32, u8), Action> = HashMap::new();
    let mut lens: BTreeSet<u8> = BTreeSet::new();
    let mut bounds: BTreeSet<u32> = BTreeSet::new();
    for (port, len, action) in prefixes {
        by_key.insert((mask(u32::from(*port), *len), *len), *action);
        lens.insert(*len);
        let (lo, hi) = prefix_range(*port, *len);
        bounds.insert(lo);
        bounds.insert(hi + 1);
    }
    // Every prefix starts and ends on a boundary, so each elementary interval lies wholly
    // inside or wholly outside each prefix: the longest match at its first point holds for
    // all of it.
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut runs: Vec<Run> = Vec::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        if lo > u32::from(max) {
            break;
        }
        let hi = hi.min(u32::from(max));
        let found = lens
            .iter()
            .rev()
            .find_map(|l| by_key.get(&(mask(lo, *l), *l)).copied());
        let Some(action) = found else { continue };
        match runs.last_mut() {
            Some(last) if last.action == action && u32::from(last.hi) + 1 == lo => {
                last.hi = hi as u16;
            }
            _ => runs.push(Run {
                lo: lo as u16,
                hi: hi as u16,
                action,
            }),
        }
    }
    runs
}

fn max_port(proto: u8) -> u16 {
    // ICMP "ports" are message types: eight bits on the wire.
    if is_type_proto(proto) { 255 } else { u16::MAX }
}

impl DirectionTable {
    /// The table of an enforced direction (`None` when the direction is not enforced: the
    /// datapath lets everything through, as the engine does).
    pub fn from_policy(policy: &DirectionPolicy) -> Option<DirectionTable> {
        if !policy.enforced {
            return None;
        }
        let mut t = DirectionTable::default();
        let mut peer_pref: BTreeMap<(u32, u8), Vec<Prefix>> = BTreeMap::new();
        let mut any_pref: BTreeMap<u8, Vec<Prefix>> = BTreeMap::new();
        for (key, entry) in policy.map.iter() {
            let key = &key;
            let action = if entry.deny {
                Action::Deny
            } else if entry.redirect {
                proxy_kind(policy, key)
            } else {
                Action::Allow
            };
            match (key.peer, key.protocol, key.prefix_len) {
                (_, 0, l) if l > 0 => t.unreachable += 1,
                (0, 0, _) => t.any_l3 = Some(action),
                (peer, 0, _) => {
                    t.peer_l3.insert(peer, action);
                }
                (0, proto, 0) => {
                    t.any_proto.insert(proto, action);
                }
                (peer, proto, 0) => {
                    t.peer_proto.insert((peer, proto), action);
                }
                (0, proto, l) => any_pref
                    .entry(proto)
                    .or_default()
                    .push((key.port, l, action)),
                (peer, proto, l) => peer_pref
                    .entry((peer, proto))
                    .or_default()
                    .push((key.port, l, action)),
            }
        }
        for ((peer, proto), p) in peer_pref {
            let runs = flatten_prefixes(&p, max_port(proto));
            if !runs.is_empty() {
                t.peer_ports.insert((peer, proto), runs);
            }
        }
        for (proto, p) in any_pref {
            let runs = flatten_prefixes(&p, max_port(proto));
            if !runs.is_empty() {
                t.any_ports.insert(proto, runs);
            }
        }
        Some(t)
    }

    /// Whether any entry has this action.
    pub fn uses(&self, a: Action) -> bool {
        self.peer_ports.values().flatten().any(|r| r.action == a)
            || self.any_ports.values().flatten().any(|r| r.action == a)
            || self.peer_proto.values().any(|x| *x == a)
            || self.any_proto.values().any(|x| *x == a)
            || self.peer_l3.values().any(|x| *x == a)
            || self.any_l3 == Some(a)
    }

    /// Number of policy entries the datapath holds for this direction.
    pub fn len(&self) -> usize {
        self.peer_ports.values().map(Vec::len).sum::<usize>()
            + self.any_ports.values().map(Vec::len).sum::<usize>()
            + self.peer_proto.len()
            + self.any_proto.len()
            + self.peer_l3.len()
            + usize::from(self.any_l3.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which proxy a redirecting key goes to: DNS when any of its L7 rules is a DNS rule (the
/// engine's verdict checks DNS rules first), the HTTP proxy otherwise.
fn proxy_kind(policy: &DirectionPolicy, key: &MapKey) -> Action {
    let dns = policy
        .contributions(key)
        .iter()
        .filter(|c| !c.deny)
        .filter_map(|c| c.l7.as_ref())
        .any(|l7| l7.dns.is_some());
    let tls = policy
        .contributions(key)
        .iter()
        .filter(|c| !c.deny)
        .filter_map(|c| c.l7.as_ref())
        .any(|l7| l7.parser() == "tls");
    if dns {
        Action::DnsProxy
    } else if tls {
        Action::TlsProxy
    } else {
        Action::HttpProxy
    }
}

/// An endpoint whose policy this node enforces (a pod, or the node itself with the host
/// firewall on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// Stable short key used in chain and map names (`p3` for endpoint 3, `h0` for node 0).
    pub key: String,
    /// Shown in comments and log prefixes.
    pub name: String,
    pub addrs: Vec<Ipv4Addr>,
    pub egress: Option<DirectionTable>,
    pub ingress: Option<DirectionTable>,
}

/// Everything one node's ruleset is compiled from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInput {
    pub node: String,
    /// The ipcache as this node sees it (a node is `host` on itself, `remote-node` elsewhere).
    pub ip2id: BTreeMap<Ipv4Addr, u32>,
    /// Address ranges (first, last) with the identity of the policy CIDR prefixes covering
    /// them, disjoint: what `ip2id` does not name exactly (the agent's prefix ipcache; the
    /// lab names every address exactly and leaves this empty).
    pub cidr2id: Vec<(Ipv4Addr, Ipv4Addr, u32)>,
    pub endpoints: Vec<LocalEndpoint>,
}

/// A map of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    pub name: String,
    /// `type …` line, e.g. `mark . inet_proto . inet_service : verdict`.
    pub ty: String,
    pub interval: bool,
    /// Rendered `key : value` pairs.
    pub elements: Vec<(String, String)>,
}

/// A chain of the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDef {
    pub name: String,
    /// `type filter hook … priority …; policy accept;` for base chains.
    pub hook: Option<String>,
    pub rules: Vec<String>,
    /// Comment lines shown above the chain in the full text.
    pub comment: Vec<String>,
}

/// The compiled ruleset of one node: objects in the order they are declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub node: String,
    pub maps: Vec<MapDef>,
    pub chains: Vec<ChainDef>,
}

fn proto_name(p: u8) -> String {
    match p {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        SCTP => "sctp".into(),
        ICMP => "icmp".into(),
        ICMPV6 => "ipv6-icmp".into(),
        n => n.to_string(),
    }
}

fn dir_short(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "egr",
        Direction::Ingress => "ing",
    }
}

/// Where the peer's identity is during evaluation: the destination (`ct mark`) for egress,
/// the source (`meta mark`) for ingress.
fn peer_expr(d: Direction) -> &'static str {
    match d {
        Direction::Egress => "ct mark",
        Direction::Ingress => "meta mark",
    }
}

/// Log prefix of a drop: `mbr <direction> <reason> <endpoint key> <name> `. nft allows 127
/// characters; the name is cut to keep within that.
pub fn log_prefix(d: Direction, reason: &str, key: &str, name: &str) -> String {
    let mut s = format!("{LOG_TAG} {} {reason} {key} ", d.as_str());
    let room = 120usize.saturating_sub(s.len());
    let name: String = name
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '"')
        .take(room)
        .collect();
    s.push_str(&name);
    s.push(' ');
    s
}

struct Verdicts<'a> {
    chain: &'a str,
    direction: Direction,
}

impl Verdicts<'_> {
    fn of(&self, a: Action) -> String {
        match a {
            // Egress allows return to `classify` so that the ingress check still runs.
            Action::Allow if self.direction == Direction::Egress => "return".into(),
            Action::Allow => "accept".into(),
            Action::Deny => format!("goto {}_deny", self.chain),
            Action::HttpProxy => "goto to_http_proxy".into(),
            Action::DnsProxy => "goto to_dns_proxy".into(),
            Action::TlsProxy => "goto to_tls_proxy".into(),
        }
    }
}

fn runs_to_elements(
    prefix: &str,
    runs: &[Run],
    v: &Verdicts<'_>,
    exact: &mut Vec<(String, String)>,
    ranges: &mut Vec<(String, String)>,
    expand_ranges: bool,
) {
    for r in runs {
        if r.lo == r.hi {
            exact.push((format!("{prefix}{}", r.lo), v.of(r.action)));
        } else if expand_ranges {
            for t in r.lo..=r.hi {
                exact.push((format!("{prefix}{t}"), v.of(r.action)));
            }
        } else {
            ranges.push((format!("{prefix}{}-{}", r.lo, r.hi), v.of(r.action)));
        }
    }
}

const PORT_PROTOS: &str = "meta l4proto { tcp, udp, sctp }";

fn direction_objects(
    ep: &LocalEndpoint,
    d: Direction,
    t: &DirectionTable,
    maps: &mut Vec<MapDef>,
    chains: &mut Vec<ChainDef>,
) {
    let chain = format!("{}_{}", ep.key, dir_short(d));
    let v = Verdicts {
        chain: &chain,
        direction: d,
    };
    let peer = peer_expr(d);
    let mut rules: Vec<String> = Vec::new();
    let add = |maps: &mut Vec<MapDef>,
               rules: &mut Vec<String>,
               suffix: &str,
               ty: &str,
               interval: bool,
               elements: Vec<(String, String)>,
               rule: String| {
        if elements.is_empty() {
            return;
        }
        let name = format!("{chain}_{suffix}");
        rules.push(format!("{rule} vmap @{name}"));
        maps.push(MapDef {
            name,
            ty: ty.into(),
            interval,
            elements,
        });
    };

    // Level 1: this peer, this protocol, longest port prefix.
    let (mut l4, mut l4r, mut icmp, mut icmp6) = (vec![], vec![], vec![], vec![]);
    for ((p, proto), runs) in &t.peer_ports {
        let pre = format!("{p} . {} . ", proto_name(*proto));
        match *proto {
            ICMP => runs_to_elements(&format!("{p} . "), runs, &v, &mut icmp, &mut vec![], true),
            ICMPV6 => runs_to_elements(&format!("{p} . "), runs, &v, &mut icmp6, &mut vec![], true),
            x if is_port_proto(x) => runs_to_elements(&pre, runs, &v, &mut l4, &mut l4r, false),
            _ => {}
        }
    }
    let l4ty = "mark . inet_proto . inet_service : verdict";
    let l4rule = format!("{PORT_PROTOS} {peer} . meta l4proto . th dport");
    add(maps, &mut rules, "l4", l4ty, false, l4, l4rule.clone());
    add(maps, &mut rules, "l4r", l4ty, true, l4r, l4rule);
    let ity = "mark . icmp_type : verdict";
    add(
        maps,
        &mut rules,
        "icmp",
        ity,
        false,
        icmp,
        format!("{peer} . icmp type"),
    );
    let i6ty = "mark . icmpv6_type : verdict";
    add(
        maps,
        &mut rules,
        "icmp6",
        i6ty,
        false,
        icmp6,
        format!("{peer} . icmpv6 type"),
    );

    // Level 2: any peer, this protocol, longest port prefix.
    let (mut l4, mut l4r, mut icmp, mut icmp6) = (vec![], vec![], vec![], vec![]);
    for (proto, runs) in &t.any_ports {
        let pre = format!("{} . ", proto_name(*proto));
        match *proto {
            ICMP => runs_to_elements("", runs, &v, &mut icmp, &mut vec![], true),
            ICMPV6 => runs_to_elements("", runs, &v, &mut icmp6, &mut vec![], true),
            x if is_port_proto(x) => runs_to_elements(&pre, runs, &v, &mut l4, &mut l4r, false),
            _ => {}
        }
    }
    let aty = "inet_proto . inet_service : verdict";
    let arule = format!("{PORT_PROTOS} meta l4proto . th dport");
    add(maps, &mut rules, "any_l4", aty, false, l4, arule.clone());
    add(maps, &mut rules, "any_l4r", aty, true, l4r, arule);
    let aity = "icmp_type : verdict";
    add(
        maps,
        &mut rules,
        "any_icmp",
        aity,
        false,
        icmp,
        "icmp type".into(),
    );
    let ai6ty = "icmpv6_type : verdict";
    add(
        maps,
        &mut rules,
        "any_icmp6",
        ai6ty,
        false,
        icmp6,
        "icmpv6 type".into(),
    );

    // Level 3: this peer, this protocol, every port.
    let els = t
        .peer_proto
        .iter()
        .map(|((p, proto), a)| (format!("{p} . {}", proto_name(*proto)), v.of(*a)))
        .collect();
    let ty = "mark . inet_proto : verdict";
    add(
        maps,
        &mut rules,
        "proto",
        ty,
        false,
        els,
        format!("{peer} . meta l4proto"),
    );
    // Level 4: any peer, this protocol, every port.
    let els = t
        .any_proto
        .iter()
        .map(|(proto, a)| (proto_name(*proto), v.of(*a)))
        .collect();
    let ty = "inet_proto : verdict";
    add(
        maps,
        &mut rules,
        "any_proto",
        ty,
        false,
        els,
        "meta l4proto".into(),
    );
    // Level 5: this peer, everything.
    let els = t
        .peer_l3
        .iter()
        .map(|(p, a)| (p.to_string(), v.of(*a)))
        .collect();
    add(
        maps,
        &mut rules,
        "l3",
        "mark : verdict",
        false,
        els,
        peer.into(),
    );
    // Level 6: everything.
    if let Some(a) = t.any_l3 {
        rules.push(v.of(a));
    }
    rules.push(format!(
        "counter log prefix \"{}\" group {NFLOG_GROUP} queue-threshold 1 drop",
        log_prefix(d, "default-deny", &ep.key, &ep.name)
    ));
    let has_deny = t.uses(Action::Deny);
    let mut comment = vec![format!(
        "{} {} of {} ({}): {} entries",
        ep.key,
        d.as_str(),
        ep.name,
        ep.addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        t.len()
    )];
    if t.unreachable > 0 {
        comment.push(format!(
            "{} protocol-any keys with ports left out: the lookup never consults them",
            t.unreachable
        ));
    }
    chains.push(ChainDef {
        name: chain.clone(),
        hook: None,
        rules,
        comment,
    });
    if has_deny {
        chains.push(ChainDef {
            name: format!("{chain}_deny"),
            hook: None,
            rules: vec![format!(
                "counter log prefix \"{}\" group {NFLOG_GROUP} queue-threshold 1 drop",
                log_prefix(d, "deny-rule", &ep.key, &ep.name)
            )],
            comment: vec![],
        });
    }
}

/// Compiles one node's ruleset.
pub fn compile_node(input: &NodeInput) -> Ruleset {
    let mut maps = vec![
        MapDef {
            name: "ip2id".into(),
            ty: "ipv4_addr : mark".into(),
            interval: false,
            elements: input
                .ip2id
                .iter()
                .map(|(a, id)| (a.to_string(), id.to_string()))
                .collect(),
        },
        MapDef {
            name: "cidr2id".into(),
            ty: "ipv4_addr : mark".into(),
            interval: true,
            elements: input
                .cidr2id
                .iter()
                .map(|(first, last, id)| {
                    let key = if first == last {
                        first.to_string()
                    } else {
                        format!("{first}-{last}")
                    };
                    (key, id.to_string())
                })
                .collect(),
        },
    ];
    let mut egress_enf = Vec::new();
    let mut ingress_enf = Vec::new();
    let mut chains = vec![
        ChainDef {
            name: "pre".into(),
            hook: Some("type filter hook prerouting priority mangle; policy accept;".into()),
            rules: vec!["iif lo accept".into(), "jump classify".into()],
            comment: vec![
                "Forwarded and locally delivered packets: pods, the world, other nodes.".into(),
            ],
        },
        ChainDef {
            name: "out".into(),
            hook: Some("type filter hook output priority mangle; policy accept;".into()),
            rules: vec!["oif lo accept".into(), "jump classify".into()],
            comment: vec![
                "Packets the node itself sends (hostNetwork pods live in the node namespace)."
                    .into(),
            ],
        },
        ChainDef {
            name: "classify".into(),
            hook: None,
            rules: vec![
                // Replies and later packets of allowed connections: one lookup per connection.
                "ct state established,related accept".into(),
                // Packets conntrack cannot place (late RSTs of closed connections) carry no
                // ct mark for the destination identity: drop them before any policy lookup,
                // so they are not reported as policy drops.
                "ct state invalid drop".into(),
                // Unknown addresses are world (2), addresses in a policy's CIDR prefix have
                // that prefix's identity, and known addresses their own: a map miss ends
                // its rule, keeping what the rule before set.
                "meta mark set 2 meta mark set ip saddr map @cidr2id".into(),
                "meta mark set ip saddr map @ip2id".into(),
                "ct mark set 2 ct mark set ip daddr map @cidr2id".into(),
                "ct mark set ip daddr map @ip2id".into(),
                "ip saddr vmap @egress_enforced".into(),
                "ip daddr vmap @ingress_enforced".into(),
                "accept".into(),
            ],
            comment: vec![
                "Source identity → meta mark, destination identity → ct mark, then the".into(),
                "source's egress and the destination's ingress policy.".into(),
            ],
        },
        ChainDef {
            name: "to_http_proxy".into(),
            hook: None,
            rules: vec![
                "counter return comment \"L7: the HTTP proxy is not wired yet, L4 allow\"".into(),
            ],
            comment: vec!["L7 entries land here; the proxies replace these stubs.".into()],
        },
        ChainDef {
            name: "to_dns_proxy".into(),
            hook: None,
            rules: vec![
                "counter return comment \"L7: the DNS proxy is not wired yet, L4 allow\"".into(),
            ],
            comment: vec![],
        },
        ChainDef {
            name: "to_tls_proxy".into(),
            hook: None,
            rules: vec![
                "counter return comment \"L7: the TLS proxy is not wired yet, L4 allow\"".into(),
            ],
            comment: vec![],
        },
    ];
    for ep in &input.endpoints {
        for (d, t) in [
            (Direction::Egress, &ep.egress),
            (Direction::Ingress, &ep.ingress),
        ] {
            let Some(t) = t else { continue };
            let chain = format!("{}_{}", ep.key, dir_short(d));
            for a in &ep.addrs {
                let el = (a.to_string(), format!("jump {chain}"));
                match d {
                    Direction::Egress => egress_enf.push(el),
                    Direction::Ingress => ingress_enf.push(el),
                }
            }
            direction_objects(ep, d, t, &mut maps, &mut chains);
        }
    }
    maps.insert(
        1,
        MapDef {
            name: "egress_enforced".into(),
            ty: "ipv4_addr : verdict".into(),
            interval: false,
            elements: egress_enf,
        },
    );
    maps.insert(
        2,
        MapDef {
            name: "ingress_enforced".into(),
            ty: "ipv4_addr : verdict".into(),
            interval: false,
            elements: ingress_enf,
        },
    );
    Ruleset {
        node: input.node.clone(),
        maps,
        chains,
    }
}

fn map_decl(m: &MapDef) -> String {
    let mut s = format!("type {};", m.ty);
    if m.interval {
        s.push_str(" flags interval;");
    }
    s
}

impl Ruleset {
    /// The whole table, for the first load into a fresh namespace.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# membrane datapath for node {} (generated: edit the policies, not this)",
            self.node
        );
        let _ = writeln!(s, "table inet {TABLE} {{");
        for m in &self.maps {
            let _ = writeln!(s, "\tmap {} {{", m.name);
            let _ = writeln!(s, "\t\ttype {}", m.ty);
            if m.interval {
                let _ = writeln!(s, "\t\tflags interval");
            }
            if !m.elements.is_empty() {
                let _ = writeln!(s, "\t\telements = {{");
                let n = m.elements.len();
                for (i, (k, v)) in m.elements.iter().enumerate() {
                    let sep = if i + 1 == n { "" } else { "," };
                    let _ = writeln!(s, "\t\t\t{k} : {v}{sep}");
                }
                let _ = writeln!(s, "\t\t}}");
            }
            let _ = writeln!(s, "\t}}");
        }
        for c in &self.chains {
            for line in &c.comment {
                let _ = writeln!(s, "\t# {line}");
            }
            let _ = writeln!(s, "\tchain {} {{", c.name);
            if let Some(h) = &c.hook {
                let _ = writeln!(s, "\t\t{h}");
            }
            for r in &c.rules {
                let _ = writeln!(s, "\t\t{r}");
            }
            let _ = writeln!(s, "\t}}");
        }
        let _ = writeln!(s, "}}");
        s
    }

    /// One `nft -f` transaction from `prev` (what is loaded) to `self`, changing the table in
    /// place: never `delete table` (that is not hitless, docs/datapath.md §3.3). Only maps and
    /// chains whose content changed are flushed and refilled; objects that are gone are
    /// deleted after everything that referenced them was flushed (anything that referenced
    /// them changed too, or it would still reference them).
    pub fn update_from(&self, prev: &Ruleset) -> String {
        let t = format!("inet {TABLE}");
        let old_maps: HashMap<&str, &MapDef> =
            prev.maps.iter().map(|m| (m.name.as_str(), m)).collect();
        let old_chains: HashMap<&str, &ChainDef> =
            prev.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let new_maps: HashMap<&str, &MapDef> =
            self.maps.iter().map(|m| (m.name.as_str(), m)).collect();
        let new_chains: HashMap<&str, &ChainDef> =
            self.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        // A map whose declaration changed is replaced (names encode the type, so this only
        // happens if the naming scheme changes).
        let replaced = |m: &MapDef| {
            old_maps
                .get(m.name.as_str())
                .is_some_and(|o| map_decl(o) != map_decl(m))
        };
        let mut s = String::new();
        let _ = writeln!(s, "# membrane datapath update for node {}", self.node);
        // 1. Flush changed and vanished chains: their rules are what references maps.
        for c in &prev.chains {
            let changed = match new_chains.get(c.name.as_str()) {
                Some(n) => n.rules != c.rules || n.hook != c.hook,
                None => true,
            };
            if changed {
                let _ = writeln!(s, "flush chain {t} {}", c.name);
            }
        }
        // 2. Flush changed and vanished maps: vmap elements are what references chains.
        for m in &prev.maps {
            let changed = match new_maps.get(m.name.as_str()) {
                Some(n) => n.elements != m.elements || replaced(n),
                None => true,
            };
            if changed {
                let _ = writeln!(s, "flush map {t} {}", m.name);
            }
        }
        // 3. Delete what is gone (chains first: they may use the maps).
        for c in &prev.chains {
            if !new_chains.contains_key(c.name.as_str()) {
                let _ = writeln!(s, "delete chain {t} {}", c.name);
            }
        }
        for m in &prev.maps {
            let gone = new_maps.get(m.name.as_str()).is_none_or(|n| replaced(n));
            if gone {
                let _ = writeln!(s, "delete map {t} {}", m.name);
            }
        }
        // 4. Declare what is new, so that rules and jumps below can name it.
        for m in &self.maps {
            if !old_maps.contains_key(m.name.as_str()) || replaced(m) {
                let _ = writeln!(s, "add map {t} {} {{ {} }}", m.name, map_decl(m));
            }
        }
        for c in &self.chains {
            if !old_chains.contains_key(c.name.as_str()) {
                match &c.hook {
                    Some(h) => {
                        let _ = writeln!(s, "add chain {t} {} {{ {h} }}", c.name);
                    }
                    None => {
                        let _ = writeln!(s, "add chain {t} {}", c.name);
                    }
                }
            }
        }
        // 5. Refill changed and new maps, then chains (rules may name maps and chains).
        for m in &self.maps {
            let changed = old_maps
                .get(m.name.as_str())
                .is_none_or(|o| o.elements != m.elements || replaced(m));
            if changed && !m.elements.is_empty() {
                let els: Vec<String> = m
                    .elements
                    .iter()
                    .map(|(k, v)| format!("{k} : {v}"))
                    .collect();
                let _ = writeln!(s, "add element {t} {} {{ {} }}", m.name, els.join(", "));
            }
        }
        for c in &self.chains {
            let changed = old_chains
                .get(c.name.as_str())
                .is_none_or(|o| o.rules != c.rules || o.hook != c.hook);
            if changed {
                for r in &c.rules {
                    let _ = writeln!(s, "add rule {t} {} {r}", c.name);
                }
            }
        }
        s
    }

    /// Number of policy-map elements (not counting `ip2id` and the enforcement maps).
    pub fn policy_elements(&self) -> usize {
        self.maps
            .iter()
            .filter(|m| {
                !matches!(
                    m.name.as_str(),
                    "ip2id" | "egress_enforced" | "ingress_enforced"
                )
            })
            .map(|m| m.elements.len())
            .sum()
    }
}

/// Convenience: compile and render.
pub fn compile(input: &NodeInput) -> String {
    compile_node(input).render()
}

/// The ruleset with the L7 proxies wired in (docs/datapath.md §4.2): `tproxy` is only valid at
/// prerouting, and the endpoint chains are shared with the output hook, so L7 entries only
/// flag the connection (a bit of `ct mark`, whose low bits hold the destination identity
/// that egress maps already matched) and return; allows in ingress chains `return` instead
/// of `accept`; `pre` sends flagged packets to the proxy after `classify`. Packets of
/// connections a proxy owns (`socket transparent 1`) go to it first. What the node itself
/// sends (the output hook) gets L4 only, as before.
pub fn with_proxies(mut rs: Ruleset) -> Ruleset {
    use crate::layout::{DNS_PORT, HTTP_PORT, PROXY_MARK, TLS_PORT};
    const HTTP: u32 = 0x4000_0000;
    const DNS: u32 = 0x2000_0000;
    const TLS: u32 = 0x1000_0000;
    let rs_node = rs.node.clone();
    for m in &mut rs.maps {
        for (_, v) in &mut m.elements {
            if v == "accept" {
                *v = "return".into();
            }
        }
    }
    let tproxy = |bit: u32, proto: &str, port: u16| {
        format!(
            "ct mark & {bit:#x} == {bit:#x} meta l4proto {proto} tproxy ip to :{port} meta mark set {PROXY_MARK:#x} accept"
        )
    };
    for c in &mut rs.chains {
        match c.name.as_str() {
            "pre" => {
                c.rules = vec![
                    "iif lo accept".into(),
                    format!(
                        "meta l4proto {{ tcp, udp }} socket transparent 1 meta mark set {PROXY_MARK:#x} accept"
                    ),
                    "jump classify".into(),
                    tproxy(DNS, "udp", DNS_PORT),
                    tproxy(DNS, "tcp", DNS_PORT),
                    tproxy(TLS, "tcp", TLS_PORT),
                    tproxy(HTTP, "tcp", HTTP_PORT),
                    // `tproxy` finds no socket when the proxy is not listening (not started
                    // yet, crashed, restarting): the rule then does not match, and without
                    // this one the connection would go straight to its destination with no
                    // L7 check. Fail closed: drop (and log) what was meant for a proxy.
                    format!(
                        "ct mark & {:#x} != 0 counter log prefix \"{}\" group {NFLOG_GROUP} queue-threshold 1 drop",
                        HTTP | DNS | TLS,
                        log_prefix(Direction::Ingress, PROXY_UNAVAILABLE, "node", &rs_node)
                    ),
                    "accept".into(),
                ];
            }
            "out" => c.rules.push("accept".into()),
            "to_http_proxy" => c.rules = vec![format!("ct mark set ct mark | {HTTP:#x} return")],
            "to_dns_proxy" => c.rules = vec![format!("ct mark set ct mark | {DNS:#x} return")],
            "to_tls_proxy" => c.rules = vec![format!("ct mark set ct mark | {TLS:#x} return")],
            _ => {
                for r in &mut c.rules {
                    if r == "accept" {
                        *r = "return".into();
                    } else if let Some(head) = r.strip_suffix(" accept")
                        && !head.starts_with("ct state")
                    {
                        *r = format!("{head} return");
                    }
                }
            }
        }
    }
    rs
}
