//! The kinds membrane reads from a cluster.
//!
//! Core kinds always exist; the others come from API groups that discovery may not find (no
//! Cilium, no Gateway API, an older Cilium without CiliumCIDRGroup): such a kind is skipped
//! with a note saying what the analysis lacks without it.

/// One kind membrane reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub kind: &'static str,
    /// `""` for the core group.
    pub group: &'static str,
    /// Versions membrane understands, preferred first.
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub namespaced: bool,
    /// The snapshot's file for this kind (the number orders the directory as it loads).
    pub file: &'static str,
    /// What the analysis loses when the cluster does not serve the kind.
    pub missing: &'static str,
}

impl Kind {
    /// `plural.group` as RBAC and kubectl name it (`pods`, `ciliumnetworkpolicies.cilium.io`).
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }
}

const CILIUM_MISSING: &str = "Cilium is not installed";

/// Every kind, in the order the snapshot directory lists them.
pub const KINDS: &[Kind] = &[
    Kind {
        kind: "Namespace",
        group: "",
        versions: &["v1"],
        plural: "namespaces",
        namespaced: false,
        file: "00-namespaces.yaml",
        missing: "",
    },
    Kind {
        kind: "Node",
        group: "",
        versions: &["v1"],
        plural: "nodes",
        namespaced: false,
        file: "01-nodes.yaml",
        missing: "",
    },
    Kind {
        kind: "Pod",
        group: "",
        versions: &["v1"],
        plural: "pods",
        namespaced: true,
        file: "02-pods.yaml",
        missing: "",
    },
    Kind {
        kind: "Service",
        group: "",
        versions: &["v1"],
        plural: "services",
        namespaced: true,
        file: "03-services.yaml",
        missing: "",
    },
    Kind {
        kind: "EndpointSlice",
        group: "discovery.k8s.io",
        versions: &["v1"],
        plural: "endpointslices",
        namespaced: true,
        file: "04-endpointslices.yaml",
        missing: "Services without a selector have no backends",
    },
    Kind {
        kind: "Gateway",
        group: "gateway.networking.k8s.io",
        versions: &["v1", "v1beta1"],
        plural: "gateways",
        namespaced: true,
        file: "05-gateways.yaml",
        missing: "the Gateway API is not installed: no gateways",
    },
    Kind {
        kind: "HTTPRoute",
        group: "gateway.networking.k8s.io",
        versions: &["v1", "v1beta1"],
        plural: "httproutes",
        namespaced: true,
        file: "06-httproutes.yaml",
        missing: "the Gateway API is not installed: no HTTP routes",
    },
    Kind {
        kind: "CiliumIdentity",
        group: "cilium.io",
        versions: &["v2"],
        plural: "ciliumidentities",
        namespaced: false,
        file: "07-ciliumidentities.yaml",
        missing: "Cilium is not installed: identity numbers are membrane's own",
    },
    Kind {
        kind: "CiliumEndpoint",
        group: "cilium.io",
        versions: &["v2"],
        plural: "ciliumendpoints",
        namespaced: true,
        file: "08-ciliumendpoints.yaml",
        missing: CILIUM_MISSING,
    },
    Kind {
        kind: "CiliumCIDRGroup",
        group: "cilium.io",
        versions: &["v2alpha1", "v2"],
        plural: "ciliumcidrgroups",
        namespaced: false,
        file: "09-ciliumcidrgroups.yaml",
        missing: "CiliumCIDRGroup is not served: policies' fromCIDRSet/toCIDRSet cidrGroupRef select nothing",
    },
    Kind {
        kind: "NetworkPolicy",
        group: "networking.k8s.io",
        versions: &["v1"],
        plural: "networkpolicies",
        namespaced: true,
        file: "10-networkpolicies.yaml",
        missing: "",
    },
    Kind {
        kind: "CiliumNetworkPolicy",
        group: "cilium.io",
        versions: &["v2"],
        plural: "ciliumnetworkpolicies",
        namespaced: true,
        file: "11-ciliumnetworkpolicies.yaml",
        missing: "Cilium is not installed: no CiliumNetworkPolicies",
    },
    Kind {
        kind: "CiliumClusterwideNetworkPolicy",
        group: "cilium.io",
        versions: &["v2"],
        plural: "ciliumclusterwidenetworkpolicies",
        namespaced: false,
        file: "12-ciliumclusterwidenetworkpolicies.yaml",
        missing: "Cilium is not installed: no CiliumClusterwideNetworkPolicies",
    },
    Kind {
        kind: "CiliumNode",
        group: "cilium.io",
        versions: &["v2"],
        plural: "ciliumnodes",
        namespaced: false,
        file: "13-ciliumnodes.yaml",
        missing: "Cilium is not installed: no per-node Gateway/Ingress proxy addresses (the `ingress` identity)",
    },
];

pub fn by_kind(kind: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.kind == kind)
}

pub fn by_plural(group: &str, plural: &str) -> Option<&'static Kind> {
    KINDS
        .iter()
        .find(|k| k.group == group && k.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_named_as_rbac_names_them() {
        assert_eq!(by_kind("Pod").map(Kind::resource).as_deref(), Some("pods"));
        assert_eq!(
            by_kind("CiliumCIDRGroup").map(|k| k.api_version(k.versions[0])),
            Some("cilium.io/v2alpha1".to_string())
        );
    }

    #[test]
    fn files_sort_in_catalog_order() {
        let files: Vec<_> = KINDS.iter().map(|k| k.file).collect();
        let mut sorted = files.clone();
        sorted.sort_unstable();
        assert_eq!(files, sorted);
    }
}
