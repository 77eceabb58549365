//! The lab's layout: names, addresses, ports and marks that several layers agree on. Only
//! constants and pure naming functions live here; every other module may use them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

// --- nftables -----------------------------------------------------------------------------

/// The table every lab node namespace gets.
pub const TABLE: &str = "membrane";
/// NFLOG group drops are logged to. Every log rule says `queue-threshold 1`: otherwise the
/// kernel batches NFLOG messages (100 packets or 1 s), and a probe waiting for the record of
/// its dropped packet would wait up to a second.
pub const NFLOG_GROUP: u16 = 1;
/// Every log prefix starts with this, then `<direction> <reason> <endpoint key> <name>`.
pub const LOG_TAG: &str = "mbr";

// --- L7 proxies (one set per node namespace) ----------------------------------------------

/// Ports the proxies listen on in each node namespace.
pub const HTTP_PORT: u16 = 15001;
pub const DNS_PORT: u16 = 15053;
pub const TLS_PORT: u16 = 15443;
/// The mark of packets for a local proxy socket (`ip rule fwmark … lookup 100`).
pub const PROXY_MARK: u32 = 0x4000_0000;
/// The routing table that delivers [`PROXY_MARK`]ed packets locally.
pub const PROXY_ROUTE_TABLE: u32 = 100;

// --- Servers ------------------------------------------------------------------------------

/// Redis' port: probes to it send `PING` and expect `+PONG`.
pub const REDIS_PORT: u16 = 6379;

// --- Addresses ----------------------------------------------------------------------------

/// Gateway address of the pods (on each node's `lo`), as in Calico and Cilium.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Next hop of the nodes towards the world namespace (on the world's `lo`).
pub const WORLD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);
/// The port of the apiserver a lab in agent mode serves on [`WORLD_GATEWAY`].
pub const APISERVER_PORT: u16 = 6443;

// --- Names and paths ----------------------------------------------------------------------

/// Default directory for lab state (tmpfs, root only).
pub const STATE_ROOT: &str = "/run/membrane-lab";
/// Prefix of every lab namespace: `mb.<lab>.<key>`.
pub const NETNS_PREFIX: &str = "mb.";

/// The prefix of lab `lab`'s namespaces (`mb.<lab>.`).
pub fn netns_prefix(lab: &str) -> String {
    format!("{NETNS_PREFIX}{lab}.")
}

/// The namespace of the party with key `key` (`n0`, `p3`, `world`) in lab `lab`.
pub fn netns_name(lab: &str, key: &str) -> String {
    format!("{}{key}", netns_prefix(lab))
}

/// Where an agent's control socket is.
pub fn control_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.sock"))
}

/// The key (chain names, log prefixes) of a pod the node agent enforces: from its address,
/// so it is the same across agent restarts and any reader of the drops can map it back.
pub fn agent_endpoint_key(addr: Ipv4Addr) -> String {
    format!("e{:08x}", u32::from(addr))
}

/// The key of the node itself (host firewall) in the node agent's ruleset.
pub const AGENT_HOST_KEY: &str = "host";
