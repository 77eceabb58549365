//! Linux enforcement: nftables compilation (pure) and application, the network-namespace
//! lab, probes and flow events.
//!
//! * [`compile`]: the engine's resolved policy → nftables ruleset text (pure).
//! * [`nftsim`]: an interpreter of that text, to check it against the engine offline.
//! * [`topology`]: where each party of a scenario lives in the lab (pure).
//! * [`lab`]: namespaces, veths, `nft`, servers and agents; teardown.
//! * [`agent`]: the processes inside the lab (servers, probes) and the reaper.
//! * [`probe`]: flows as real traffic, compared with the expectation and the engine.
//! * [`proxy`]: the L7 proxies of a lab node (`membrane lab helper proxy`).
//! * [`gateway`]: a Gateway's HTTP forwarder in a lab (`membrane lab helper gateway`).
//! * [`events`]: drops from NFLOG as Hubble-like flow events.
#![forbid(unsafe_code)]

pub mod agent;
pub mod compile;
pub mod events;
pub mod gateway;
pub mod lab;
pub mod nftsim;
pub mod probe;
pub mod proxy;
pub mod topology;
pub mod wire;
