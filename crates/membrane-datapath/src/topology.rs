//! Where every party of a scenario lives in the lab, decided from the world alone (pure).
//!
//! * Each scenario node is a **node namespace** holding the node's addresses (on `lo`), the
//!   nftables table and the routes to its pods (`lxc<i>` veths, routed /32s, docs/datapath.md §4).
//! * Each pod (and each reserved-identity endpoint such as a Gateway's `ingress`) is a **pod
//!   namespace** with `eth0 <ip>/32` behind its node.
//! * **hostNetwork pods live in their node's namespace**: they share the node's address and
//!   stack, as in Kubernetes, so their traffic is the node's (`host` on their node,
//!   `remote-node` elsewhere), which is what the engine assumes.
//! * Everything outside the cluster (external names, nodes without Cilium and their
//!   hostNetwork pods, IP literals in flows, `world`) is one **world namespace** that also
//!   routes between nodes, like the network between real nodes.

use crate::nft::compile::{DirectionTable, LocalEndpoint, NodeInput};
use membrane_cluster::world::{Party, WORLD_ADDR, World, address_of_name};
use membrane_policy::model::Direction;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// A namespace of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsRef {
    Node(usize),
    Pod(usize),
    World,
}

#[derive(Debug, Clone)]
pub struct NodeNs {
    /// Short key, unique in the lab: `n0`, `n1`, …
    pub key: String,
    pub name: String,
    /// Index in `scenario.nodes`, if the node is declared there.
    pub scenario_node: Option<usize>,
    pub cilium: bool,
    /// The node's own addresses (node IP, addresses of hostNetwork pods); empty for nodes
    /// without Cilium, whose address is part of the world.
    pub addrs: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct PodNs {
    /// Short key: `p<endpoint index>`.
    pub key: String,
    pub endpoint: usize,
    /// `namespace/name`.
    pub name: String,
    /// Index into [`Topology::nodes`].
    pub node: usize,
    pub addr: Ipv4Addr,
}

#[derive(Debug, Clone, Default)]
pub struct Topology {
    pub nodes: Vec<NodeNs>,
    pub pods: Vec<PodNs>,
    pub world_addrs: BTreeSet<Ipv4Addr>,
    /// Parties the lab cannot place (IPv6, duplicate addresses), with the reason.
    pub unplaced: BTreeMap<String, String>,
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

impl Topology {
    pub fn plan(world: &World) -> Topology {
        let s = &world.scenario;
        let mut t = Topology::default();
        let mut node_index: BTreeMap<String, usize> = BTreeMap::new();
        let mut add_node = |t: &mut Topology, name: &str| -> usize {
            if let Some(i) = node_index.get(name) {
                return *i;
            }
            let scenario_node = s.nodes.iter().position(|n| n.name == name);
            let cilium = scenario_node.is_some_and(|i| s.nodes[i].cilium);
            let i = t.nodes.len();
            t.nodes.push(NodeNs {
                key: format!("n{i}"),
                name: name.to_string(),
                scenario_node,
                cilium,
                addrs: vec![],
            });
            node_index.insert(name.to_string(), i);
            i
        };
        for n in s.nodes.iter().filter(|n| n.cilium) {
            let i = add_node(&mut t, &n.name);
            match v4(n.ip) {
                Some(a) => t.nodes[i].addrs.push(a),
                None => {
                    t.unplaced
                        .insert(n.name.clone(), "IPv6 node address (the lab is IPv4)".into());
                }
            }
        }
        let mut taken: BTreeSet<Ipv4Addr> = t.nodes.iter().flat_map(|n| n.addrs.clone()).collect();
        for (i, ep) in s.endpoints.iter().enumerate() {
            let Some(addr) = v4(ep.ip) else {
                t.unplaced
                    .insert(ep.name.clone(), "IPv6 address (the lab is IPv4)".into());
                continue;
            };
            if ep.host_network {
                // Same rule as the engine: hostNetwork on a Cilium node is that node.
                match world.party(&ep.name) {
                    Some(Party::Node { .. }) => {
                        let n = add_node(&mut t, &ep.node);
                        if !t.nodes[n].addrs.contains(&addr) {
                            t.nodes[n].addrs.push(addr);
                            taken.insert(addr);
                        }
                    }
                    _ => {
                        t.world_addrs.insert(addr);
                    }
                }
                continue;
            }
            if !taken.insert(addr) {
                t.unplaced.insert(
                    ep.name.clone(),
                    format!("address {addr} is already used by another party"),
                );
                continue;
            }
            let node = add_node(&mut t, &ep.node);
            t.pods.push(PodNs {
                key: format!("p{i}"),
                endpoint: i,
                // Manifests name endpoints `namespace/workload` already.
                name: if ep.name.starts_with(&format!("{}/", ep.namespace)) {
                    ep.name.clone()
                } else {
                    format!("{}/{}", ep.namespace, ep.name)
                },
                node,
                addr,
            });
        }
        // The world: everything else a flow or the ipcache can name.
        let mut world_ips: Vec<IpAddr> = vec![WORLD_ADDR];
        for n in s.nodes.iter().filter(|n| !n.cilium) {
            world_ips.push(n.ip);
        }
        for e in &s.external {
            world_ips.extend(e.ips.iter().copied());
        }
        for f in &s.flows {
            for name in [Some(&f.from), f.to.as_ref()].into_iter().flatten() {
                // An IP, or a CIDR standing for its first address, as the engine reads it.
                if let Some(ip) = address_of_name(name) {
                    world_ips.push(ip);
                }
            }
        }
        for ip in world_ips {
            match v4(ip) {
                Some(a) if !taken.contains(&a) => {
                    t.world_addrs.insert(a);
                }
                Some(_) => {}
                None => {
                    t.unplaced
                        .insert(ip.to_string(), "IPv6 address (the lab is IPv4)".into());
                }
            }
        }
        t
    }

    /// Every address in the lab.
    pub fn all_addrs(&self) -> BTreeSet<Ipv4Addr> {
        let mut out: BTreeSet<Ipv4Addr> = self.world_addrs.clone();
        out.extend(self.pods.iter().map(|p| p.addr));
        out.extend(self.nodes.iter().flat_map(|n| n.addrs.iter().copied()));
        out
    }

    /// The namespace that owns an address.
    pub fn locate(&self, addr: Ipv4Addr) -> Option<NsRef> {
        if let Some(i) = self.pods.iter().position(|p| p.addr == addr) {
            return Some(NsRef::Pod(i));
        }
        if let Some(i) = self.nodes.iter().position(|n| n.addrs.contains(&addr)) {
            return Some(NsRef::Node(i));
        }
        self.world_addrs.contains(&addr).then_some(NsRef::World)
    }

    /// The namespace a party sends from or is reached in, and its address.
    pub fn place(&self, party: Party) -> Option<(NsRef, Ipv4Addr)> {
        match party {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => self
                .pods
                .iter()
                .position(|p| p.endpoint == i)
                .map(|k| (NsRef::Pod(k), self.pods[k].addr)),
            Party::Node { addr, .. } | Party::World { addr, .. } => {
                let a = v4(addr)?;
                Some((self.locate(a)?, a))
            }
        }
    }

    /// A namespace's short key (`n0`, `p3`, `w`).
    pub fn key(&self, ns: NsRef) -> String {
        match ns {
            NsRef::Node(i) => self.nodes[i].key.clone(),
            NsRef::Pod(i) => self.pods[i].key.clone(),
            NsRef::World => "w".into(),
        }
    }

    /// A namespace's human name.
    pub fn describe(&self, ns: NsRef) -> String {
        match ns {
            NsRef::Node(i) => format!("node {}", self.nodes[i].name),
            NsRef::Pod(i) => self.pods[i].name.clone(),
            NsRef::World => "world".into(),
        }
    }

    /// Every namespace of the lab.
    pub fn namespaces(&self) -> Vec<NsRef> {
        let mut v: Vec<NsRef> = vec![NsRef::World];
        v.extend((0..self.nodes.len()).map(NsRef::Node));
        v.extend((0..self.pods.len()).map(NsRef::Pod));
        v
    }

    /// What each node namespace's ruleset is compiled from.
    pub fn node_inputs(&self, world: &World) -> Vec<NodeInput> {
        let addrs = self.all_addrs();
        self.nodes
            .iter()
            .enumerate()
            .map(|(ni, node)| {
                let observer = node.scenario_node;
                let ip2id = addrs
                    .iter()
                    .filter_map(|a| {
                        let party = world.party(&a.to_string())?;
                        Some((*a, world.identity_of(party, observer, false)))
                    })
                    .collect();
                let mut endpoints = Vec::new();
                if let (true, Some(sn), Some(addr)) =
                    (node.cilium, node.scenario_node, node.addrs.first())
                {
                    let party = Party::Node {
                        node: sn,
                        addr: IpAddr::V4(*addr),
                    };
                    endpoints.push(LocalEndpoint {
                        key: format!("h{ni}"),
                        name: format!("host:{}", node.name),
                        addrs: node.addrs.clone(),
                        egress: table(world, party, Direction::Egress),
                        ingress: table(world, party, Direction::Ingress),
                    });
                }
                for pod in self.pods.iter().filter(|p| p.node == ni) {
                    let Some(party) = world.party(&pod.addr.to_string()) else {
                        continue;
                    };
                    endpoints.push(LocalEndpoint {
                        key: pod.key.clone(),
                        name: pod.name.clone(),
                        addrs: vec![pod.addr],
                        egress: table(world, party, Direction::Egress),
                        ingress: table(world, party, Direction::Ingress),
                    });
                }
                NodeInput {
                    node: node.name.clone(),
                    ip2id,
                    cidr2id: Vec::new(),
                    endpoints,
                }
            })
            .collect()
    }
}

fn table(world: &World, party: Party, d: Direction) -> Option<DirectionTable> {
    world
        .policy(party, d)
        .and_then(|p| DirectionTable::from_policy(&p))
}
