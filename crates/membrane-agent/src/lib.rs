//! `membrane agent`: one node's enforcement, driven by the cluster.
//!
//! ```text
//!  source (cluster watches | manifests directory)  ──object events──►  LiveCluster (engine)
//!      ──► node view (this node's pods, the ipcache as this node sees it)
//!      ──► nft ruleset ──delta against the last applied──► one `nft -f` transaction
//! ```
//!
//! - [`source`]: object events (apply / delete), from kube-rs watchers or a directory.
//! - [`node_view`]: the engine's state as this node's datapath input.
//! - [`enforce`]: deltas applied in single nftables transactions; the table outlives the agent.
//! - [`l7`]: the HTTP, DNS and TLS proxies L7 rules send traffic to (tproxy); what the DNS
//!   proxy learns feeds the engine (toFQDNs).
//! - [`events`]: drops and L7 verdicts as Hubble flow events on a unix socket
//!   (`membrane observe`).
//! - [`metrics`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`run`]: the loop.
#![forbid(unsafe_code)]

pub mod enforce;
pub mod events;
pub mod l7;
pub mod metrics;
pub mod node_view;
pub mod run;
pub mod source;
