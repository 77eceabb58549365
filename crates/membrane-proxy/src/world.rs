//! A [`ProxyPolicy`] from a `membrane_cluster::World` (feature `cluster`).

use crate::fqdn::FqdnCache;
use crate::policy::{EndpointPolicies, ProxyPolicy};
use membrane_cluster::world::{Party, World};
use membrane_policy::model::Direction;

/// The proxies' view of `world` as seen from the node at index `observer` in
/// `world.scenario.nodes` (`None`: from no node, so every node is `remote-node`).
///
/// - ipcache: every endpoint's address (pods, reserved-identity endpoints), every node's,
///   and every external name's addresses. An external address has its name's FQDN identity
///   (toFQDNs) only once `learned` holds it, as Cilium only selects addresses the DNS proxy
///   saw; without a cache, none is learned.
/// - policies: every managed endpoint's resolved egress and ingress policy (and the nodes'
///   with the host firewall), shared between endpoints that share them.
pub fn proxy_policy_from_world(
    world: &World,
    observer: Option<usize>,
    learned: Option<&FqdnCache>,
) -> ProxyPolicy {
    let mut policy = ProxyPolicy::new();
    let s = &world.scenario;
    let mut parties: Vec<(std::net::IpAddr, Party)> = Vec::new();
    for ep in s.endpoints.iter().filter(|e| !e.host_network) {
        if let Some(p) = world.party(&ep.name) {
            parties.push((ep.ip, p));
        }
    }
    for (i, n) in s.nodes.iter().enumerate() {
        let p = if n.cilium {
            Party::Node {
                node: i,
                addr: n.ip,
            }
        } else {
            Party::World {
                addr: n.ip,
                learned_as: None,
            }
        };
        parties.push((n.ip, p));
    }
    for (ip, party) in parties {
        if policy.ipcache().contains_key(&ip) {
            continue; // the first endpoint with an address wins, as in the world
        }
        policy.set_identity(ip, world.identity_of(party, observer, false));
        // The engine's resolved policies, shared (no copy of any map).
        let egress = world.policy(party, Direction::Egress);
        let ingress = world.policy(party, Direction::Ingress);
        if egress.is_some() || ingress.is_some() {
            policy.set_endpoint(ip, EndpointPolicies { egress, ingress });
        }
    }
    for (i, ext) in s.external.iter().enumerate() {
        let known = learned.map(|c| c.lookup(&ext.name)).unwrap_or_default();
        for ip in &ext.ips {
            if policy.ipcache().contains_key(ip) {
                continue;
            }
            let party = Party::World {
                addr: *ip,
                learned_as: Some(i),
            };
            let id = world.identity_of(party, observer, known.contains(ip));
            policy.set_identity(*ip, id);
        }
    }
    policy
}
