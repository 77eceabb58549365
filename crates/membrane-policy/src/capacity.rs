//! Policy-map capacity: how many entries Cilium 1.17 installs in an endpoint's BPF policy
//! map (`cilium_policy_<epid>`, ingress and egress in one map), and how many identities a
//! cluster allocates, against their limits. See `docs/capacity.md` for the Cilium sources.
//!
//! The count is computed from a resolved [`DirectionPolicy`]'s raw keys (the keys the
//! rules wrote), not from its lookup-ordered `map`: that map carries intersection keys the
//! nftables compiler needs and Cilium does not install. The raw keys are run through
//! Cilium's insertion rules ([`mapstate`]), after one substitution: membrane gives an
//! identity to each address a scenario names, where Cilium gives one to each CIDR prefix
//! written in a policy ([`CidrPrefixes`]).

use crate::identity::{HOST, IdentityId, IdentityKind, IdentityTable, WORLD};
use crate::model::{Direction, Entry, Origin, PeerSelector, Peers, PortValue, Protocol, Rule};
use crate::resolve::{Contribution, DirectionPolicy, MapKey, range_to_prefixes};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Cilium's default `bpf-policy-map-max`.
pub const DEFAULT_POLICY_MAP_MAX: usize = 16_384;
/// From this share of the map (percent) a warning is due.
pub const WARN_PERCENT: usize = 90;
/// Cluster-scoped identities: 256..=65535 (`MinimalAllocationIdentity`,
/// `MaximalAllocationIdentity` without cluster mesh).
pub const CLUSTER_IDENTITY_LIMIT: usize = 65_535 - 256 + 1;
/// Node-local identities (CIDR, FQDN addresses): the 24-bit local scope.
pub const LOCAL_IDENTITY_LIMIT: usize = (1 << 24) - 1;

/// Synthetic ids for CIDR prefix identities, far above anything membrane allocates.
const PREFIX_ID_BASE: IdentityId = 0x8000_0000;

/// A policy-map key's entry: deny or allow (a redirect is an allow with a proxy port; it
/// takes one key like any allow).
pub type Keys = BTreeMap<MapKey, bool>;

/// Whether `a` is broader than or equal to `b` in port and protocol (Cilium's LPM trie:
/// the protocol is 8 bits of prefix, then the port's prefix).
fn port_proto_covers(a: &MapKey, b: &MapKey) -> bool {
    if a.protocol == 0 {
        return true;
    }
    if a.protocol != b.protocol {
        return false;
    }
    a.prefix_len <= b.prefix_len && mask(b.port, a.prefix_len) == a.port
}

fn mask(port: u16, prefix_len: u8) -> u16 {
    match prefix_len {
        0 => 0,
        16.. => port,
        n => port & !((1u32 << (16 - n)) - 1) as u16,
    }
}

/// `BroaderOrEqualKeys`: the same or the wildcard identity, broader or equal port/proto.
fn covers(a: &MapKey, b: &MapKey) -> bool {
    (a.peer == 0 || a.peer == b.peer) && port_proto_covers(a, b)
}

/// `Key.HasPortWildcard`: the protocol or part of the port is wildcarded.
fn has_port_wildcard(k: &MapKey) -> bool {
    k.protocol == 0 || k.prefix_len < 16
}

/// Cilium's MapState for one direction, from the keys the rules wrote (a key with both an
/// allow and a deny contribution is a deny), inserted as `denyPreferredInsertWithChanges`
/// does (pkg/policy/mapstate.go). The result does not depend on the insertion order:
/// - a deny covered by a broader-or-equal other deny is not inserted;
/// - an allow covered by a broader-or-equal deny is not inserted; allows covered by
///   broader allows are kept ("We do not delete redundant allow entries");
/// - for a deny with a specific identity and a wildcarded port and each narrower allow
///   with the wildcard identity, a deny with the deny's identity and the allow's port is
///   added, or the datapath's longest-port-prefix choice would pick the allow.
pub fn mapstate(raw: impl IntoIterator<Item = (MapKey, bool)>) -> Keys {
    let mut written: BTreeMap<MapKey, bool> = BTreeMap::new();
    for (k, deny) in raw {
        *written.entry(k).or_default() |= deny;
    }
    let raw_denies: Vec<MapKey> = written
        .iter()
        .filter(|(_, d)| **d)
        .map(|(k, _)| *k)
        .collect();
    // Per identity, the denies of that identity (0: of every identity).
    let mut denies_by_peer: BTreeMap<IdentityId, Vec<MapKey>> = BTreeMap::new();
    for d in &raw_denies {
        let covered = raw_denies.iter().any(|o| o != d && covers(o, d));
        if !covered {
            denies_by_peer.entry(d.peer).or_default().push(*d);
        }
    }
    let none = Vec::new();
    let wild_denies = denies_by_peer.get(&0).unwrap_or(&none);
    let covered_by_deny = |k: &MapKey| {
        wild_denies.iter().any(|d| covers(d, k))
            || (k.peer != 0
                && denies_by_peer
                    .get(&k.peer)
                    .is_some_and(|ds| ds.iter().any(|d| covers(d, k))))
    };
    let mut out: Keys = BTreeMap::new();
    let mut wild_allows = Vec::new();
    for (k, deny) in &written {
        if *deny || covered_by_deny(k) {
            continue;
        }
        out.insert(*k, false);
        if k.peer == 0 && k.protocol != 0 {
            wild_allows.push(*k);
        }
    }
    for ds in denies_by_peer.values() {
        for d in ds {
            out.insert(*d, true);
        }
    }
    // The L3/4 deny keys (`NarrowerKeysWithWildcardID`, `BroaderKeysWithSpecificID`).
    for (peer, ds) in &denies_by_peer {
        if *peer == 0 {
            continue;
        }
        for d in ds.iter().filter(|d| has_port_wildcard(d)) {
            for a in &wild_allows {
                let same = a.protocol == d.protocol && a.prefix_len == d.prefix_len;
                if !same && port_proto_covers(d, a) {
                    out.insert(MapKey { peer: *peer, ..*a }, true);
                }
            }
        }
    }
    out
}

/// The CIDR prefixes Cilium gives identities to: every `toCIDR`/`toCIDRSet` prefix and
/// exception of every policy (the ipcache holds them all, so each is one local identity),
/// and each address learned through DNS (`toFQDNs`, one /32 or /128 identity each). A
/// prefix of length 0 is `world`.
#[derive(Debug, Clone, Default)]
pub struct CidrPrefixes {
    prefixes: BTreeMap<IpNet, IdentityId>,
    fqdn: BTreeSet<IdentityId>,
}

impl CidrPrefixes {
    pub fn new<'r>(rules: impl IntoIterator<Item = &'r Rule>, identities: &IdentityTable) -> Self {
        let rules: Vec<&Rule> = rules.into_iter().collect();
        let fqdn_selected = |names: &[String]| {
            rules.iter().any(|r| {
                r.entries.iter().any(|e| match &e.peers {
                    Peers::Selectors(list) => list.iter().any(|s| match s {
                        PeerSelector::Fqdn(m) => names.iter().any(|n| m.matches(n)),
                        _ => false,
                    }),
                    Peers::Wildcard => false,
                })
            })
        };
        let mut prefixes: BTreeMap<IpNet, IdentityId> = BTreeMap::new();
        let mut fqdn = BTreeSet::new();
        for i in identities.iter() {
            if i.kind == IdentityKind::Cidr
                && !i.fqdn_names.is_empty()
                && let Some(addr) = i.addr
                && fqdn_selected(&i.fqdn_names)
            {
                prefixes.insert(IpNet::from(addr), i.id);
                fqdn.insert(i.id);
            }
        }
        let mut next = PREFIX_ID_BASE;
        let mut add = |net: IpNet, prefixes: &mut BTreeMap<IpNet, IdentityId>| {
            let net = net.trunc();
            if prefixes.contains_key(&net) {
                return;
            }
            let id = if net.prefix_len() == 0 {
                WORLD
            } else {
                next += 1;
                next
            };
            prefixes.insert(net, id);
        };
        for rule in &rules {
            for entry in &rule.entries {
                for (net, except) in cidr_selectors(entry) {
                    add(*net, &mut prefixes);
                    for e in except {
                        add(*e, &mut prefixes);
                    }
                }
            }
        }
        CidrPrefixes { prefixes, fqdn }
    }

    /// Whether an identity of membrane's is one Cilium has too: an address learned through
    /// DNS for a `toFQDNs` selector. (membrane's other CIDR identities, one per address a
    /// scenario names, stand for the prefixes here.)
    pub fn is_fqdn_identity(&self, id: IdentityId) -> bool {
        self.fqdn.contains(&id)
    }

    /// The identities a CIDR selector selects: every known prefix inside `net` and not
    /// inside an exception.
    pub fn selected<'s>(
        &'s self,
        net: &'s IpNet,
        except: &'s [IpNet],
    ) -> impl Iterator<Item = IdentityId> + 's {
        self.prefixes
            .iter()
            .filter(move |(p, _)| net.contains(*p) && !except.iter().any(|e| e.contains(*p)))
            .map(|(_, id)| *id)
    }

    /// Node-local identities: the prefixes other than `world` (and the DNS addresses).
    pub fn local_identities(&self) -> usize {
        self.prefixes.keys().filter(|p| p.prefix_len() > 0).count()
    }
}

fn selects_wildcard(entry: &Entry) -> bool {
    match &entry.peers {
        Peers::Selectors(list) => list
            .iter()
            .any(|s| matches!(s, PeerSelector::Labels(sel) if sel.is_wildcard())),
        Peers::Wildcard => false,
    }
}

fn cidr_selectors(entry: &Entry) -> impl Iterator<Item = (&IpNet, &Vec<IpNet>)> {
    let list: &[PeerSelector] = match &entry.peers {
        Peers::Selectors(list) => list,
        Peers::Wildcard => &[],
    };
    list.iter().filter_map(|s| match s {
        PeerSelector::Cidr { net, except } => Some((net, except)),
        _ => None,
    })
}

/// The port keys (identity 0) of one rule entry, as `resolve` writes them: ICMP types,
/// port ranges as prefixes, named ports resolved against `own_ports` (ingress only).
fn entry_port_keys(entry: &Entry, own_ports: &[(String, Protocol, u16)]) -> Vec<MapKey> {
    let key = |protocol: u8, port: u16, prefix_len: u8| MapKey {
        peer: 0,
        protocol,
        port,
        prefix_len,
    };
    let mut out = Vec::new();
    if entry.ports.is_none() && entry.icmps.is_none() {
        out.push(key(0, 0, 0));
    }
    for icmp in entry.icmps.iter().flatten() {
        let p = if icmp.v6 {
            Protocol::Icmpv6
        } else {
            Protocol::Icmp
        };
        out.push(key(p.number(), u16::from(icmp.icmp_type), 16));
    }
    for rule in entry.ports.iter().flatten() {
        for spec in &rule.ports {
            let range = match &spec.port {
                PortValue::Range(lo, hi) => Some((*lo, *hi)),
                PortValue::Named(name) if entry.direction == Direction::Ingress => own_ports
                    .iter()
                    .find(|(n, p, _)| n == name && *p == spec.protocol)
                    .map(|(_, _, port)| (*port, *port)),
                PortValue::Named(_) => None,
            };
            if let Some((lo, hi)) = range {
                for (port, prefix_len) in range_to_prefixes(lo, hi) {
                    out.push(key(spec.protocol.number(), port, prefix_len));
                }
            }
        }
    }
    out
}

/// What one direction of one endpoint needs besides its resolved policy.
pub struct DirectionContext<'a> {
    /// The rules selecting the endpoint (for their CIDR selectors).
    pub rules: &'a [&'a Rule],
    pub identities: &'a IdentityTable,
    pub prefixes: &'a CidrPrefixes,
    /// The endpoint's named container ports.
    pub own_ports: &'a [(String, Protocol, u16)],
    /// `allow-localhost` applies: an ingress direction of a pod (not a host endpoint).
    pub localhost: bool,
}

/// The keys Cilium installs for one direction. A direction that is not enforced gets the
/// allow-all key (`allowAllIdentities`); the ingress of a pod also gets the local host's
/// key (`determineAllowLocalhostIngress`, added after the rules' keys whether or not the
/// direction is enforced, as `DistillPolicy` does).
pub fn direction_keys(policy: &DirectionPolicy, cx: &DirectionContext<'_>) -> Keys {
    let any = |peer| MapKey {
        peer,
        protocol: 0,
        port: 0,
        prefix_len: 0,
    };
    let mut raw: Vec<(MapKey, bool)> = Vec::new();
    if !policy.enforced {
        raw.push((any(0), false));
    } else {
        // membrane's per-address CIDR identities stand for Cilium's per-prefix ones.
        let per_address = |peer: IdentityId| {
            !cx.prefixes.is_fqdn_identity(peer)
                && cx
                    .identities
                    .get(peer)
                    .is_some_and(|i| i.kind == IdentityKind::Cidr)
        };
        // An empty label selector (`toEntities: all`; a CCNP's `{}` only in a rule selecting
        // init endpoints, elsewhere it gets a namespace-exists requirement) is Cilium's
        // wildcard selector: `toMapState` writes identity 0 for it, not a key per identity.
        let wildcard_entries: Vec<&Entry> = cx
            .rules
            .iter()
            .flat_map(|r| r.entries.iter())
            .filter(|e| e.direction == policy.direction && selects_wildcard(e))
            .collect();
        let from_wildcard = |c: &Contribution| match &c.origin {
            Origin::Rule(o) => wildcard_entries
                .iter()
                .any(|e| Arc::ptr_eq(&e.origin, o) || e.origin == *o),
            _ => false,
        };
        for (k, cs) in policy.raw_keys() {
            let deny = cs.iter().any(|c| c.deny);
            if per_address(k.peer) {
                continue;
            }
            if k.peer != 0 && !cs.is_empty() && cs.iter().all(from_wildcard) {
                raw.push((MapKey { peer: 0, ..k }, deny));
                continue;
            }
            raw.push((k, deny));
        }
        for rule in cx.rules {
            for entry in rule
                .entries
                .iter()
                .filter(|e| e.direction == policy.direction && !e.allows_nothing())
            {
                let mut peers: BTreeSet<IdentityId> = BTreeSet::new();
                for (net, except) in cidr_selectors(entry) {
                    peers.extend(cx.prefixes.selected(net, except));
                }
                if peers.is_empty() {
                    continue;
                }
                for pk in entry_port_keys(entry, cx.own_ports) {
                    for peer in &peers {
                        raw.push((MapKey { peer: *peer, ..pk }, entry.deny));
                    }
                }
            }
        }
    }
    if cx.localhost && policy.direction == Direction::Ingress {
        raw.push((any(HOST), false));
    }
    mapstate(raw)
}

/// How full a map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fullness {
    Ok,
    /// At or above `WARN_PERCENT`.
    Warning,
    /// At or above the size: Cilium fails to regenerate the endpoint.
    Full,
}

pub fn fullness(entries: usize, max: usize) -> Fullness {
    if entries >= max {
        Fullness::Full
    } else if entries.saturating_mul(100) >= max.saturating_mul(WARN_PERCENT) {
        Fullness::Warning
    } else {
        Fullness::Ok
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn k(peer: IdentityId, protocol: u8, port: u16, prefix_len: u8) -> MapKey {
        MapKey {
            peer,
            protocol,
            port,
            prefix_len,
        }
    }
    const TCP: u8 = 6;
    const UDP: u8 = 17;

    #[test]
    fn allows_are_kept_even_when_redundant() {
        // L3-only for 300, L4-only TCP/80 for everyone, and L3/L4 300:TCP/80 (covered by
        // both): Cilium keeps all three.
        let m = mapstate([
            (k(300, 0, 0, 0), false),
            (k(0, TCP, 80, 16), false),
            (k(300, TCP, 80, 16), false),
        ]);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn same_key_twice_is_one_entry_and_redirects_count_once() {
        // Two rules (one with L7: a redirect) writing 300:TCP/80: one key.
        let m = mapstate([(k(300, TCP, 80, 16), false), (k(300, TCP, 80, 16), false)]);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn deny_supersedes_narrower_allows_and_denies() {
        // Deny all from 300; allows 300:TCP/80 and a narrower deny 300:UDP/53 vanish; the
        // allow for 301 stays.
        let m = mapstate([
            (k(300, 0, 0, 0), true),
            (k(300, TCP, 80, 16), false),
            (k(300, UDP, 53, 16), true),
            (k(301, TCP, 80, 16), false),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&k(300, 0, 0, 0)), Some(&true));
        assert_eq!(m.get(&k(301, TCP, 80, 16)), Some(&false));
    }

    #[test]
    fn wildcard_deny_covers_every_identity() {
        // Deny TCP/80 from everyone: the allows 300:TCP/80 and 301:TCP/80 are not
        // inserted, 300:any stays (its other ports are allowed).
        let m = mapstate([
            (k(0, TCP, 80, 16), true),
            (k(300, TCP, 80, 16), false),
            (k(301, TCP, 80, 16), false),
            (k(300, 0, 0, 0), false),
        ]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn specific_deny_with_wildcard_port_adds_l3l4_denies() {
        // Deny all from 300, allow TCP/80 and TCP/8000-8003 from everyone: Cilium adds
        // 300:TCP/80 and 300:TCP/8000/14 denies, so 5 keys.
        let m = mapstate([
            (k(300, 0, 0, 0), true),
            (k(0, TCP, 80, 16), false),
            (k(0, TCP, 8000, 14), false),
        ]);
        assert_eq!(m.len(), 5);
        assert_eq!(m.get(&k(300, TCP, 80, 16)), Some(&true));
        assert_eq!(m.get(&k(300, TCP, 8000, 14)), Some(&true));
        // An exact-port deny has no narrower keys: nothing is added.
        let m = mapstate([(k(300, TCP, 80, 16), true), (k(0, TCP, 80, 16), false)]);
        assert_eq!(m.len(), 2);
        // A deny of a range adds a key for the narrower wildcard-identity allow inside it.
        let m = mapstate([(k(300, TCP, 8000, 14), true), (k(0, TCP, 8001, 16), false)]);
        assert_eq!(m.len(), 3);
        // ... but not for an allow outside it.
        let m = mapstate([(k(300, TCP, 8000, 14), true), (k(0, TCP, 9000, 16), false)]);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn port_ranges_are_masked_keys() {
        // 1000-1999 as Cilium's PortRangeToMaskedPorts: 1000-1007, 1008-1023, 1024-1535,
        // 1536-1791, 1792-1919, 1920-1983, 1984-1999.
        let p = range_to_prefixes(1000, 1999);
        assert_eq!(
            p,
            vec![
                (1000, 13),
                (1008, 12),
                (1024, 7),
                (1536, 8),
                (1792, 9),
                (1920, 10),
                (1984, 12)
            ]
        );
        let m = mapstate(p.iter().map(|(port, len)| (k(0, TCP, *port, *len), false)));
        assert_eq!(m.len(), 7);
        assert_eq!(range_to_prefixes(0, 65535).len(), 1);
        assert_eq!(range_to_prefixes(1, 65535).len(), 16);
    }

    #[test]
    fn cidr_prefixes_are_identities() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let mut p = CidrPrefixes::default();
        for (i, net) in ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "192.168.0.0/16"]
            .iter()
            .enumerate()
        {
            p.prefixes.insert(n(net), PREFIX_ID_BASE + i as u32);
        }
        p.prefixes.insert(n("0.0.0.0/0"), WORLD);
        // 10/8 selects itself and the two sub-prefixes.
        assert_eq!(p.selected(&n("10.0.0.0/8"), &[]).count(), 3);
        // Except 10.1/16: only 10/8 itself.
        assert_eq!(p.selected(&n("10.0.0.0/8"), &[n("10.1.0.0/16")]).count(), 1);
        // 0/0 selects world and every IPv4 prefix.
        assert_eq!(p.selected(&n("0.0.0.0/0"), &[]).count(), 5);
        assert_eq!(p.local_identities(), 4);
    }

    fn resolved_engine(policy: &str) -> (crate::engine::Engine, usize, usize) {
        use crate::engine::{EndpointSpec, Engine, NodeSpec};
        use crate::options::Options;
        use crate::policy_set::{PolicySet, parse_resources};
        use crate::translate::Secrets;
        use crate::yaml::Embedding;
        let mut e = Engine::new(Options::default());
        e.upsert_namespace(
            "ns1",
            vec![("kubernetes.io/metadata.name".into(), "ns1".into())],
        );
        e.upsert_node(NodeSpec {
            name: "node1".into(),
            ip: "192.168.1.10".parse().unwrap(),
            cilium: true,
            labels: vec![],
        });
        let pod = |name: &str, ip: &str| EndpointSpec {
            name: name.into(),
            namespace: "ns1".into(),
            node: "node1".into(),
            ip: Some(ip.parse().unwrap()),
            service_account: "default".into(),
            labels: vec![("app".into(), name.into())],
            ports: vec![],
            host_network: false,
            entity: None,
        };
        let (server, _) = e.add_endpoint(pod("server", "10.0.1.1"));
        let (client, _) = e.add_endpoint(pod("client", "10.0.1.2"));
        let (resources, _) = parse_resources(policy, Embedding::default());
        let resources: Vec<_> = resources.into_iter().map(|r| (0, r)).collect();
        let set = PolicySet::build(&resources, &Options::default(), &Secrets::default());
        for t in set.policies {
            e.upsert_policy(t);
        }
        (e, server, client)
    }

    fn counts(e: &crate::engine::Engine, id: usize) -> (usize, usize) {
        use crate::resolve::Subject;
        let s = e.state();
        let policy = s.endpoint_policy(id).unwrap();
        let identity = s
            .identities()
            .get(s.endpoint_identity(id).unwrap())
            .unwrap();
        let subject = Subject {
            identity,
            is_host: false,
            local_node_addrs: &[],
            own_ports: &[],
        };
        let rules: Vec<&Rule> = s
            .repository()
            .selecting_rules(&subject)
            .map(|(_, r)| r)
            .collect();
        let prefixes = CidrPrefixes::new(s.repository().rules(), s.identities());
        let cx = |localhost| DirectionContext {
            rules: &rules,
            identities: s.identities(),
            prefixes: &prefixes,
            own_ports: &[],
            localhost,
        };
        (
            direction_keys(&policy.ingress, &cx(true)).len(),
            direction_keys(&policy.egress, &cx(false)).len(),
        )
    }

    #[test]
    fn resolved_policies_counted_as_cilium() {
        // server: ingress TCP/80 and TCP/443 from everyone, everything from client denied.
        // Cilium: any/TCP80, any/TCP443, client/any (deny), client/TCP80 and client/TCP443
        // (L3/4 denies), host/any = 6. Egress not enforced: allow-all = 1.
        let (e, server, client) = resolved_engine(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: s, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '443', protocol: TCP}]}]\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n",
        );
        assert_eq!(counts(&e, server), (6, 1));
        // client: selected by nothing: allow-all and the local host in, allow-all out.
        assert_eq!(counts(&e, client), (2, 1));
    }

    #[test]
    fn fullness_thresholds() {
        // 90 % of 16,384 is 14,745.6.
        assert_eq!(fullness(14_746, 16_384), Fullness::Warning);
        assert_eq!(fullness(14_745, 16_384), Fullness::Ok);
        assert_eq!(fullness(16_384, 16_384), Fullness::Full);
        assert_eq!(fullness(9, 10), Fullness::Warning);
        assert_eq!(fullness(8, 10), Fullness::Ok);
    }
}
