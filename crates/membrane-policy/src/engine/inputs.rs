//! What the engine is told about the cluster: endpoints, nodes and Services, as a loader
//! (scenario files, manifests, a live cluster) reads them.

use crate::model::Protocol;
use std::net::IpAddr;

/// A named container port (`ports[].name`), for named-port rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedPort {
    /// Empty for an unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// A pod (or a reserved-identity endpoint such as a Gateway's proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub name: String,
    pub namespace: String,
    /// The node it runs on.
    pub node: String,
    pub ip: Option<IpAddr>,
    pub service_account: String,
    pub labels: Vec<(String, String)>,
    pub ports: Vec<NamedPort>,
    /// A hostNetwork pod has its node's identity and no policy of its own.
    pub host_network: bool,
    /// A reserved identity instead of labels (`ingress`, `kube-apiserver`, ...).
    pub entity: Option<String>,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub ip: IpAddr,
    /// Whether Cilium (membrane) runs on it; a node without is outside the cluster's policy.
    pub cilium: bool,
    pub labels: Vec<(String, String)>,
}

impl NodeSpec {
    pub fn addrs(&self) -> Vec<IpAddr> {
        vec![self.ip]
    }
}

/// A Service, for `toServices` peers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub labels: Vec<(String, String)>,
    /// The pod selector; empty for a Service without one.
    pub selector: Vec<(String, String)>,
    /// A selector-less Service's endpoint addresses (its EndpointSlices).
    pub addresses: Vec<IpAddr>,
}
