//! The engine's state as one node's datapath input: the pods this node runs, each with its
//! resolved policy, and the ipcache (every known address's identity as this node sees it: a
//! node is `host` on itself and `remote-node` elsewhere).

use membrane_datapath::nft::compile::{DirectionTable, LocalEndpoint, NodeInput};
use membrane_policy::engine::{Party, Snapshot};
use membrane_policy::model::Direction;
use std::collections::BTreeMap;
use std::net::IpAddr;

fn table(state: &Snapshot, party: Party, d: Direction) -> Option<DirectionTable> {
    state
        .policy(party, d)
        .and_then(|p| DirectionTable::from_policy(&p))
}

/// This node's input, or None while the node itself is not known (no Node object yet).
pub fn node_input(state: &Snapshot, node: &str) -> Option<NodeInput> {
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
    let mut endpoints: Vec<LocalEndpoint> = Vec::new();
    // An address briefly held by two pods (a terminating one and its successor) must not
    // reach nft twice (a duplicate map key makes it refuse the whole transaction): the
    // newest pod, the one added last, owns it.
    let mut by_addr: BTreeMap<std::net::Ipv4Addr, usize> = BTreeMap::new();
    for id in state.endpoint_ids() {
        let Some(ep) = state.endpoint(id) else {
            continue;
        };
        // hostNetwork pods are the node; entities (gateways) have no veth here.
        if ep.node != node || ep.host_network || ep.entity.is_some() {
            continue;
        }
        let Some(IpAddr::V4(addr)) = ep.ip else {
            continue;
        };
        let party = Party::Pod(id);
        let endpoint = LocalEndpoint {
            key: format!("p{id}"),
            // Names end up in nft comments and log prefixes: printable characters only.
            name: ep
                .name
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect(),
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
    Some(NodeInput {
        node: node.to_string(),
        ip2id,
        endpoints,
    })
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
        let input = node_input(live.engine().state(), "n1").unwrap();
        assert_eq!(input.endpoints.len(), 1);
        assert_eq!(input.endpoints[0].name, "a/new");
        // Names reach nft comments: never a line break.
        assert!(input.endpoints.iter().all(|e| !e.name.contains('\n')));
    }
}
