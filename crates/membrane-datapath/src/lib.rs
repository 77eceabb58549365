//! Linux enforcement: nftables compilation (pure) and application, the network-namespace
//! lab, probes and flow events.
#![forbid(unsafe_code)]
