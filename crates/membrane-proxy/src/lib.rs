//! L7 enforcement: HTTP, DNS and TLS (SNI) proxies driven by the engine's resolved policies.
//!
//! The lab redirects traffic to these proxies with nftables `tproxy` (see the datapath design):
//! the proxy sees the pod's real source address, reads the original destination with
//! `getsockname()` (TCP) or `IP_RECVORIGDSTADDR` (UDP), decides with the engine, and forwards
//! to the original destination, optionally from the pod's own address (`IP_TRANSPARENT`).
//!
//! - Policy is an owned, `Send + Sync` snapshot ([`ProxyPolicy`]) published through a
//!   `tokio::sync::watch` channel; every request (HTTP), query (DNS) or connection (TLS) is
//!   decided with the snapshot current at that moment, so a new policy applies without
//!   restarting anything.
//! - Both sides are checked in the datapath's order (§9.18): the source's egress, then the
//!   destination's ingress. Denials are typed ([`Denial`]) and logged with the policy and the
//!   rule that decided them.
//! - The DNS proxy learns `name → addresses` from the answers it forwards into an
//!   [`FqdnCache`] (expiring with the TTL, on an injected [`Clock`]) that it publishes through
//!   `watch` for the datapath's toFQDNs identities.
#![forbid(unsafe_code)]

pub mod clock;
pub mod dns;
pub mod flow;
pub mod fqdn;
pub mod http;
pub mod policy;
pub mod tls;
#[cfg(any(test, feature = "cluster"))]
pub mod world;

#[cfg(test)]
mod testutil;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dns::{DnsProxy, DnsProxyConfig, RejectResponse, serve_dns_tcp, serve_dns_udp};
pub use flow::{Flow, transparent_flow, transparent_tcp_listener, transparent_udp_socket};
pub use fqdn::{FqdnCache, FqdnLearner};
pub use http::{HttpProxyConfig, serve_http, serve_http_connection};
pub use policy::{
    Denial, DenialHook, DenialKind, EndpointPolicies, HeaderAction, ProxyDecision, ProxyPolicy,
};
pub use tls::{ClientHelloError, TlsProxyConfig, parse_client_hello_sni, serve_tls};
