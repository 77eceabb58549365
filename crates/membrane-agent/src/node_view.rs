//! The engine's state as one node's datapath input: the pods this node runs, each with its
//! resolved policy, and the ipcache (every known address's identity as this node sees it: a
//! node is `host` on itself and `remote-node` elsewhere).

use ipnet::{IpNet, Ipv4Net};
use membrane_datapath::layout::{AGENT_HOST_KEY, agent_endpoint_key};
use membrane_datapath::nft::compile::{DirectionTable, LocalEndpoint, NodeInput};
use membrane_policy::engine::{Party, Snapshot};
use membrane_policy::model::{Direction, PeerSelector, Peers};
use membrane_proxy::policy::EndpointPolicies;
use membrane_proxy::{FqdnCache, ProxyPolicy};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// The IPv4 prefixes the policies name: `toCIDR`/`fromCIDR`, CIDR sets with their
/// exceptions, CIDR groups, Services without selectors (their addresses).
pub fn policy_prefixes(state: &Snapshot) -> BTreeSet<Ipv4Net> {
    let mut out = BTreeSet::new();
    for rule in state.repository().rules() {
        for entry in &rule.entries {
            let Peers::Selectors(selectors) = &entry.peers else {
                continue;
            };
            for sel in selectors {
                if let PeerSelector::Cidr { net, except } = sel {
                    for n in std::iter::once(net).chain(except) {
                        if let IpNet::V4(v4) = n {
                            out.insert(v4.trunc());
                        }
                    }
                }
            }
        }
    }
    out
}

/// One stretch of addresses covered by the same policy prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrRegion {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// An address standing for every address covered by the same prefixes: its CIDR
    /// identity is what the whole region (and every region with those prefixes) gets, as
    /// Cilium's ipcache gives an address the identity of its longest matching prefix.
    pub representative: Ipv4Addr,
}

/// Splits the address space at every prefix's edges: within a region, every address lies
/// in the same prefixes (so every CIDR selector, `except` included, selects all of it or
/// none). Addresses in no prefix are left out (they are `world`).
pub fn cidr_regions(prefixes: &BTreeSet<Ipv4Net>) -> Vec<CidrRegion> {
    let nets: Vec<(u64, u64)> = prefixes
        .iter()
        .map(|n| {
            (
                u64::from(u32::from(n.network())),
                u64::from(u32::from(n.broadcast())),
            )
        })
        .collect();
    let mut edges: BTreeSet<u64> = BTreeSet::new();
    for (first, last) in &nets {
        edges.insert(*first);
        edges.insert(last + 1);
    }
    let edges: Vec<u64> = edges.into_iter().collect();
    let mut by_cover: BTreeMap<Vec<usize>, Ipv4Addr> = BTreeMap::new();
    let mut out = Vec::new();
    for pair in edges.windows(2) {
        let (first, end) = (pair[0], pair[1]);
        let cover: Vec<usize> = nets
            .iter()
            .enumerate()
            .filter(|(_, (a, b))| *a <= first && first <= *b)
            .map(|(i, _)| i)
            .collect();
        if cover.is_empty() {
            continue;
        }
        // Edges are at most 2^32, so both ends are addresses.
        let first = Ipv4Addr::from(u32::try_from(first).unwrap_or(u32::MAX));
        let last = Ipv4Addr::from(u32::try_from(end - 1).unwrap_or(u32::MAX));
        let representative = *by_cover.entry(cover).or_insert(first);
        out.push(CidrRegion {
            first,
            last,
            representative,
        });
    }
    out
}

fn table(state: &Snapshot, party: Party, d: Direction) -> Option<DirectionTable> {
    state
        .policy(party, d)
        .and_then(|p| DirectionTable::from_policy(&p))
}

/// Names end up in nft comments and log prefixes: printable characters only.
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// This node's input, or None while the node itself is not known (no Node object yet).
/// `regions`: the policy prefixes' regions (their representatives must be known to the
/// engine); `learned`: what the DNS proxy learned (its addresses get their names' FQDN
/// identities).
pub fn node_input(
    state: &Snapshot,
    node: &str,
    regions: &[CidrRegion],
    learned: &FqdnCache,
) -> Option<NodeInput> {
    let observer = state.node_index(node)?;
    let mut ip2id = BTreeMap::new();
    for id in state.endpoint_ids() {
        let (Some(ep), Some(party)) = (state.endpoint(id), state.endpoint_party(id)) else {
            continue;
        };
        if let Some(IpAddr::V4(a)) = ep.ip {
            ip2id.insert(a, state.identity_of(party, Some(observer), false));
        }
    }
    for (i, n) in state.nodes().iter().enumerate() {
        if let (IpAddr::V4(a), Some(party)) = (n.ip, state.node_party(i)) {
            ip2id.insert(a, state.identity_of(party, Some(observer), false));
        }
    }
    // A learned address has the identity of the first name it was learned as (in the
    // engine's order of names), as the lab gives an external address its name's.
    let mut learned_as: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (name, ip, _) in learned.iter() {
        let name = name.trim_end_matches('.');
        let known = state
            .dns_names()
            .iter()
            .position(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name));
        let (IpAddr::V4(a), Some(i)) = (ip, known) else {
            continue;
        };
        let e = learned_as.entry(a).or_insert(i);
        *e = (*e).min(i);
    }
    for (a, i) in learned_as {
        ip2id.entry(a).or_insert_with(|| {
            let party = Party::World {
                addr: IpAddr::V4(a),
                learned_as: Some(i),
            };
            state.identity_of(party, Some(observer), true)
        });
    }
    let cidr2id = regions
        .iter()
        .map(|r| {
            let party = Party::World {
                addr: IpAddr::V4(r.representative),
                learned_as: None,
            };
            (
                r.first,
                r.last,
                state.identity_of(party, Some(observer), false),
            )
        })
        .collect();
    let mut endpoints: Vec<LocalEndpoint> = Vec::new();
    // An address briefly held by two pods (a terminating one and its successor) must not
    // reach nft twice (a duplicate map key makes it refuse the whole transaction): the
    // newest pod, the one added last, owns it.
    let mut by_addr: BTreeMap<std::net::Ipv4Addr, usize> = BTreeMap::new();
    for id in state.endpoint_ids() {
        let Some(ep) = state.endpoint(id) else {
            continue;
        };
        // hostNetwork pods are the node. A Gateway's proxy address (the `ingress` entity)
        // is enforced like a pod's where it has a policy.
        if ep.node != node || ep.host_network {
            continue;
        }
        let Some(IpAddr::V4(addr)) = ep.ip else {
            continue;
        };
        let party = Party::Pod(id);
        let endpoint = LocalEndpoint {
            key: agent_endpoint_key(addr),
            name: printable(&ep.name),
            addrs: vec![addr],
            egress: table(state, party, Direction::Egress),
            ingress: table(state, party, Direction::Ingress),
        };
        match by_addr.get(&addr) {
            Some(&i) => endpoints[i] = endpoint,
            None => {
                by_addr.insert(addr, endpoints.len());
                endpoints.push(endpoint);
            }
        }
    }
    // The node itself, where the host firewall gives it a policy (its addresses: the node's
    // and those of its hostNetwork pods, which are the node).
    if let (Some(spec), Some(party)) = (state.nodes().get(observer), state.node_party(observer)) {
        let egress = table(state, party, Direction::Egress);
        let ingress = table(state, party, Direction::Ingress);
        if let (true, IpAddr::V4(a)) = (egress.is_some() || ingress.is_some(), spec.ip) {
            let mut addrs = vec![a];
            for id in state.endpoint_ids() {
                if let Some(ep) = state.endpoint(id)
                    && ep.host_network
                    && ep.node == node
                    && let Some(IpAddr::V4(h)) = ep.ip
                    && !addrs.contains(&h)
                {
                    addrs.push(h);
                }
            }
            endpoints.insert(
                0,
                LocalEndpoint {
                    key: AGENT_HOST_KEY.into(),
                    name: printable(&format!("host:{node}")),
                    addrs,
                    egress,
                    ingress,
                },
            );
        }
    }
    Some(NodeInput {
        node: node.to_string(),
        ip2id,
        cidr2id,
        endpoints,
    })
}

/// The proxies' view, from the same state and ipcache as the datapath's `input`: every
/// endpoint's resolved policies (a proxy decides both sides of a flow, as the lab's do),
/// the ipcache and the prefix ranges.
pub fn proxy_policy(state: &Snapshot, input: &NodeInput) -> ProxyPolicy {
    let mut policy = ProxyPolicy::new();
    for (a, id) in &input.ip2id {
        policy.set_identity(IpAddr::V4(*a), *id);
    }
    policy.set_ranges(
        input
            .cidr2id
            .iter()
            .map(|(first, last, id)| (IpAddr::V4(*first), IpAddr::V4(*last), *id))
            .collect(),
    );
    let mut parties: Vec<(IpAddr, Party)> = Vec::new();
    for id in state.endpoint_ids() {
        if let (Some(ep), Some(party)) = (state.endpoint(id), state.endpoint_party(id))
            && let Some(ip) = ep.ip
            && !ep.host_network
        {
            parties.push((ip, party));
        }
    }
    for (i, n) in state.nodes().iter().enumerate() {
        if let Some(party) = state.node_party(i) {
            parties.push((n.ip, party));
        }
    }
    let mut seen = BTreeSet::new();
    for (ip, party) in parties {
        // The first endpoint with an address is its endpoint, as in the ipcache.
        if !seen.insert(ip) {
            continue;
        }
        let egress = state.policy(party, Direction::Egress);
        let ingress = state.policy(party, Direction::Ingress);
        if egress.is_some() || ingress.is_some() {
            policy.set_endpoint(ip, EndpointPolicies { egress, ingress });
        }
    }
    policy
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use membrane_cluster::live::LiveCluster;
    use membrane_policy::options::Options;

    #[test]
    fn an_address_held_by_two_pods_reaches_the_datapath_once_for_the_newest() {
        let mut live = LiveCluster::new(Options::default());
        live.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}))
            .unwrap();
        for name in ["old\nname", "new"] {
            live.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "a", "labels": {"app": name}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.5"}}))
                .unwrap();
        }
        let input = node_input(live.engine().state(), "n1", &[], &FqdnCache::new()).unwrap();
        assert_eq!(input.endpoints.len(), 1);
        assert_eq!(input.endpoints[0].name, "a/new");
        // Names reach nft comments: never a line break.
        assert!(input.endpoints.iter().all(|e| !e.name.contains('\n')));
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn regions_split_at_every_prefix_edge_and_share_representatives_by_cover() {
        let prefixes: BTreeSet<Ipv4Net> =
            [net("10.0.0.0/8"), net("10.1.0.0/16"), net("192.168.1.7/32")]
                .into_iter()
                .collect();
        let regions = cidr_regions(&prefixes);
        let spans: Vec<(Ipv4Addr, Ipv4Addr, Ipv4Addr)> = regions
            .iter()
            .map(|r| (r.first, r.last, r.representative))
            .collect();
        assert_eq!(
            spans,
            vec![
                (ip("10.0.0.0"), ip("10.0.255.255"), ip("10.0.0.0")),
                (ip("10.1.0.0"), ip("10.1.255.255"), ip("10.1.0.0")),
                // Covered by the /8 alone again: the same identity as the first region.
                (ip("10.2.0.0"), ip("10.255.255.255"), ip("10.0.0.0")),
                (ip("192.168.1.7"), ip("192.168.1.7"), ip("192.168.1.7")),
            ]
        );
        // The top of the address space is an edge too.
        let top = cidr_regions(&[net("255.255.255.0/24")].into_iter().collect());
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].last, ip("255.255.255.255"));
    }

    #[test]
    fn a_cidr_policy_gives_its_prefix_an_identity_in_the_datapath_and_the_proxies() {
        let mut live = LiveCluster::new(Options::default());
        for o in [
            serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"}]}}),
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "c", "namespace": "a", "labels": {"app": "c"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
                "status": {"phase": "Running", "podIP": "10.0.0.5"}}),
            serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": "out", "namespace": "a"},
                "spec": {"endpointSelector": {}, "egress": [{"toCIDRSet": [
                    {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25"]}]}]}}),
        ] {
            live.apply(&o).unwrap();
        }
        let regions = cidr_regions(&policy_prefixes(live.engine().state()));
        assert_eq!(regions.len(), 2);
        for r in &regions {
            live.add_world_address(IpAddr::V4(r.representative));
        }
        let state = live.engine().state();
        let input = node_input(state, "n1", &regions, &FqdnCache::new()).unwrap();
        let (allowed, excepted) = (input.cidr2id[0].2, input.cidr2id[1].2);
        assert_ne!(allowed, excepted);
        assert!(allowed > 2 && excepted > 2, "CIDR identities, not world");
        // The proxies see the same identities for addresses inside the regions.
        let proxies = proxy_policy(state, &input);
        assert_eq!(proxies.identity_of("203.0.113.9".parse().unwrap()), allowed);
        assert_eq!(
            proxies.identity_of("203.0.113.200".parse().unwrap()),
            excepted
        );
        assert_eq!(proxies.identity_of("198.51.100.1".parse().unwrap()), 2);
        assert_eq!(
            proxies.identity_of("10.0.0.5".parse().unwrap()),
            input.ip2id[&ip("10.0.0.5")]
        );
        // The pod's egress allows the /24 but not its exception.
        let ruleset = membrane_datapath::nft::compile::compile_node(&input);
        let text = ruleset.render();
        assert!(text.contains("203.0.113.0-203.0.113.127"), "{text}");
        // Packets through the ruleset: the prefix passes, its exception and the rest of
        // the world do not, whatever address in them.
        let table = membrane_datapath::nft::sim::Table::load(&text).unwrap();
        let send = |dst: &str| {
            table
                .eval(&membrane_datapath::nft::sim::Packet {
                    src: ip("10.0.0.5"),
                    dst: ip(dst),
                    proto: 6,
                    port: 443,
                    local_out: false,
                })
                .unwrap()
                .accepted
        };
        assert!(send("203.0.113.1"));
        assert!(send("203.0.113.127"));
        assert!(!send("203.0.113.128"));
        assert!(!send("203.0.113.255"));
        assert!(!send("198.51.100.1"));
    }
}
