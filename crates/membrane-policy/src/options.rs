//! Agent options that change policy semantics (Cilium's flags), with Cilium's defaults.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnforcementMode {
    /// `enable-policy=default`: enforce a direction once a rule selects the endpoint.
    Default,
    /// `always`: every endpoint is enforced in both directions.
    Always,
    /// `never`: nothing is enforced.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRejectCode {
    Refused,
    NameError,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub enforcement: EnforcementMode,
    /// `allow-localhost=auto|always`: the local host reaches local endpoints.
    pub allow_localhost: bool,
    pub cluster_name: String,
    /// `EnableNonDefaultDenyPolicies`: honour `enableDefaultDeny: false`.
    pub non_default_deny_policies: bool,
    pub dns_reject: DnsRejectCode,
    /// `policy-cidr-match-mode=nodes`: CIDR selectors also select node addresses.
    pub cidr_match_nodes: bool,
    pub host_firewall: bool,
    pub icmp_rules: bool,
    pub l7_proxy: bool,
    pub node_selector_labels: bool,
    /// `policy-default-local-cluster`: peers without a cluster key get the local cluster.
    pub default_local_cluster: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            enforcement: EnforcementMode::Default,
            allow_localhost: true,
            cluster_name: "default".to_string(),
            non_default_deny_policies: true,
            dns_reject: DnsRejectCode::Refused,
            cidr_match_nodes: false,
            host_firewall: false,
            icmp_rules: true,
            l7_proxy: true,
            node_selector_labels: false,
            default_local_cluster: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are Cilium's agent defaults (and the test-vector setting of semantics §7:
    /// mode `default`, allow-localhost auto, L7 proxy and ICMP rules enabled).
    #[test]
    fn defaults_are_ciliums() {
        let o = Options::default();
        assert_eq!(o.enforcement, EnforcementMode::Default);
        assert!(o.allow_localhost);
        assert_eq!(o.cluster_name, "default");
        assert!(o.non_default_deny_policies);
        assert_eq!(o.dns_reject, DnsRejectCode::Refused);
        assert!(!o.cidr_match_nodes);
        assert!(!o.host_firewall);
        assert!(o.icmp_rules);
        assert!(o.l7_proxy);
        assert!(!o.node_selector_labels);
        assert!(!o.default_local_cluster);
    }

    #[test]
    fn options_compare_by_every_field() {
        let a = Options::default();
        assert_eq!(a, a.clone());
        let b = Options {
            dns_reject: DnsRejectCode::NameError,
            ..Options::default()
        };
        assert_ne!(a, b);
        let c = Options {
            cluster_name: "c2".into(),
            ..Options::default()
        };
        assert_ne!(a, c);
        assert_ne!(EnforcementMode::Always, EnforcementMode::Never);
    }
}
