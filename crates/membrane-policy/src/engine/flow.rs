//! Deciding flows on a snapshot: who the parties are, which identity each has as seen from
//! the other's node, and both sides' verdicts combined.

use super::{EndpointId, EndpointPolicy, Snapshot};
use crate::identity::{self, IdentityId, IdentityKind};
use crate::model::{Direction, Protocol};
use crate::verdict::{self, FlowDecision, L7Outcome, L7Request, SideDecision};
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

/// One party of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Party {
    Pod(EndpointId),
    /// A node, or a hostNetwork pod on it.
    Node {
        node: usize,
        addr: IpAddr,
    },
    /// A reserved-identity endpoint (a Gateway's proxy, ...).
    Entity {
        endpoint: EndpointId,
        id: IdentityId,
    },
    /// Outside the cluster (or on a node without Cilium); `learned_as` indexes the DNS
    /// names the engine learned ([`Snapshot::dns_names`]).
    World {
        addr: IpAddr,
        learned_as: Option<usize>,
    },
}

/// One direction of a resolved policy, shared.
#[derive(Debug, Clone)]
pub struct DirectionRef {
    policy: Arc<EndpointPolicy>,
    direction: Direction,
}

impl DirectionRef {
    pub fn new(policy: Arc<EndpointPolicy>, direction: Direction) -> Self {
        DirectionRef { policy, direction }
    }
}

impl Deref for DirectionRef {
    type Target = crate::resolve::DirectionPolicy;

    fn deref(&self) -> &Self::Target {
        self.policy.direction(self.direction)
    }
}

impl Snapshot {
    /// The party an endpoint is in flows.
    pub fn endpoint_party(&self, i: EndpointId) -> Option<Party> {
        let ep = self.endpoints.get(i)?.as_ref()?;
        if ep.spec.entity.is_some() {
            return Some(Party::Entity {
                endpoint: i,
                id: ep.identity,
            });
        }
        if ep.spec.host_network {
            let addr = ep.spec.ip?;
            return Some(match ep.node {
                Some(n) if self.nodes[n].cilium => Party::Node { node: n, addr },
                _ => Party::World {
                    addr,
                    learned_as: None,
                },
            });
        }
        Some(Party::Pod(i))
    }

    /// The party a node is in flows.
    pub fn node_party(&self, node: usize) -> Option<Party> {
        if self.node_gone.get(node).copied().unwrap_or(true) {
            return None;
        }
        let n = self.nodes.get(node)?;
        Some(if n.cilium {
            Party::Node { node, addr: n.ip }
        } else {
            Party::World {
                addr: n.ip,
                learned_as: None,
            }
        })
    }

    /// The party behind an address: an endpoint, a node, or the world.
    pub fn address_party(&self, ip: IpAddr) -> Party {
        if let Some(i) = self.endpoint_by_ip(ip)
            && let Some(p) = self.endpoint_party(i)
        {
            return p;
        }
        if let Some(i) = self
            .nodes
            .iter()
            .enumerate()
            .position(|(i, n)| n.ip == ip && !self.node_gone[i])
            && let Some(p) = self.node_party(i)
        {
            return p;
        }
        Party::World {
            addr: ip,
            learned_as: None,
        }
    }

    pub fn node_of(&self, p: Party) -> Option<usize> {
        match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => {
                self.endpoints.get(i)?.as_ref()?.node
            }
            Party::Node { node, .. } => Some(node),
            Party::World { .. } => None,
        }
    }

    /// The identity of `p` as seen on `observer`'s node; `learned`: the address was learned
    /// from a DNS answer (so toFQDNs selectors see its name).
    pub fn identity_of(&self, p: Party, observer: Option<usize>, learned: bool) -> IdentityId {
        match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => {
                self.endpoint_identity(i).unwrap_or(identity::WORLD)
            }
            Party::Node { node, .. } => {
                if observer == Some(node) {
                    identity::HOST
                } else {
                    self.node_identities
                        .get(node)
                        .copied()
                        .flatten()
                        .unwrap_or(identity::REMOTE_NODE)
                }
            }
            Party::World { addr, learned_as } => {
                let name = learned_as
                    .filter(|_| learned)
                    .and_then(|i| self.dns_names.get(i))
                    .map(String::as_str);
                self.cidr_identity(addr, name)
            }
        }
    }

    fn cidr_identity(&self, addr: IpAddr, name: Option<&str>) -> IdentityId {
        let ids = self.identities();
        ids.find_cidr(addr, name)
            // An address learned under several names: the first name it was learned as.
            .or_else(|| {
                ids.iter()
                    .find(|i| {
                        i.addr == Some(addr)
                            && i.kind == IdentityKind::Cidr
                            && i.fqdn_names.first().map(String::as_str) == name
                    })
                    .map(|i| i.id)
            })
            // Not (or no longer) learned under that name: the address's own identity.
            .or_else(|| ids.find_cidr(addr, None))
            .unwrap_or(identity::WORLD)
    }

    /// The resolved policy of a party's endpoint, if Cilium manages it.
    pub fn policy(&self, p: Party, direction: Direction) -> Option<DirectionRef> {
        let policy = match p {
            Party::Pod(i) | Party::Entity { endpoint: i, .. } => self.endpoint_policy(i)?,
            Party::Node { node, .. } if self.options.host_firewall => self.host_policy(node)?,
            _ => return None,
        };
        Some(DirectionRef { policy, direction })
    }

    // Internal plumbing of `decide`; the arguments are the flow's fields.
    #[allow(clippy::too_many_arguments)]
    fn side(
        &self,
        subject: Party,
        peer: Party,
        direction: Direction,
        protocol: Protocol,
        port: u16,
        req: &L7Request,
        learned: bool,
    ) -> SideDecision {
        let observer = self.node_of(subject);
        let peer_id = self.identity_of(peer, observer, learned);
        match self.policy(subject, direction) {
            Some(policy) => verdict::decide_side(&policy, peer_id, protocol, port, req),
            None => SideDecision::unmanaged(direction, L7Outcome::NotManaged),
        }
    }

    /// Both sides of one connection or datagram.
    pub fn decide(
        &self,
        from: Party,
        to: Party,
        protocol: Protocol,
        port: u16,
        req: &L7Request,
        learned: bool,
    ) -> FlowDecision {
        let is_dns = matches!(req, L7Request::Dns { .. });
        if let (Party::Node { node: a, .. }, Party::Node { node: b, .. }) = (from, to)
            && a == b
        {
            // A node (or a hostNetwork pod on it) to one of its own addresses: the packet
            // goes over `lo`. Cilium enforces host policies in the programs attached to
            // cilium_host/cilium_net (host ↔ local pods) and the native devices (host ↔
            // everything else); loopback traffic passes none of them, so the host
            // firewall never sees it. Neither side is enforced.
            let side = |d| SideDecision::unmanaged(d, L7Outcome::HostLoopback);
            return verdict::combine(
                side(Direction::Egress),
                Some(side(Direction::Ingress)),
                is_dns,
            );
        }
        let egress = self.side(from, to, Direction::Egress, protocol, port, req, learned);
        let ingress = self.side(to, from, Direction::Ingress, protocol, port, req, learned);
        verdict::combine(egress, Some(ingress), is_dns)
    }

    /// The cluster's DNS server: the endpoint labelled `k8s-app=kube-dns`, else one named
    /// `kube-dns`.
    pub fn kube_dns(&self) -> Option<Party> {
        let eps = || {
            self.endpoints
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().map(|e| (i, e)))
        };
        let i = eps()
            .find(|(_, e)| {
                e.spec
                    .labels
                    .iter()
                    .any(|(k, v)| k == "k8s-app" && v == "kube-dns")
            })
            .or_else(|| eps().find(|(_, e)| e.spec.name == "kube-dns"))
            .map(|(i, _)| i)?;
        self.endpoint_party(i)
    }

    /// A DNS query from `from` to kube-dns over UDP/53.
    pub fn dns_query(&self, from: Party, qname: &str) -> Option<FlowDecision> {
        let dns = self.kube_dns()?;
        Some(self.decide(
            from,
            dns,
            Protocol::Udp,
            53,
            &L7Request::Dns {
                qname: qname.to_string(),
            },
            false,
        ))
    }
}
