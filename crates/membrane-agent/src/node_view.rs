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
    let mut endpoints = Vec::new();
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
        endpoints.push(LocalEndpoint {
            key: format!("p{id}"),
            name: ep.name.clone(),
            addrs: vec![addr],
            egress: table(state, party, Direction::Egress),
            ingress: table(state, party, Direction::Ingress),
        });
    }
    Some(NodeInput {
        node: node.to_string(),
        ip2id,
        endpoints,
    })
}
