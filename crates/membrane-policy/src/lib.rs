//! membrane's policy engine: Cilium network policy (CNP, CCNP, KNP) parsing, validation,
//! identities, per-endpoint resolution and flow verdicts, with the reasons for each verdict.
//!
//! The crate does no I/O: it takes text and data and returns data and diagnostics, so the
//! CLI, the datapath and the proxies can share it, and tests, fuzzers and benchmarks can
//! drive it directly.
#![forbid(unsafe_code)]

pub mod api;
pub mod capacity;
pub mod decode;
pub mod diag;
pub mod engine;
pub mod identity;
pub mod l7;
pub mod labels;
pub mod model;
pub mod options;
pub mod policy_set;
pub mod resolve;
pub mod translate;
pub mod verdict;
pub mod yaml;

pub use diag::{Diagnostic, Severity};
pub use options::Options;
pub use policy_set::{PolicySet, parse_resources};
