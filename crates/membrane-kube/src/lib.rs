//! Reads a live Kubernetes cluster into the manifests membrane analyses.
//!
//! The cluster is turned into the same kind of text the offline commands read (one YAML file
//! per kind, stable order), so `membrane check --kubeconfig …` and `membrane check DIR` on a
//! `membrane snapshot` of the same cluster are one code path and cannot disagree.
//!
//! - [`catalog`]: the kinds membrane reads, where they live and what a missing one turns off.
//! - [`connect`]: kubeconfig and context to a client, as kubectl resolves them.
//! - [`read`]: discovery, then every kind listed page by page.
//! - [`clean`]: each object checked against its typed schema and reduced to what the analysis
//!   uses (status, managedFields and anything secret-bearing dropped).
//! - [`emit`]: JSON values written as YAML.
//! - [`follow`]: reflectors that keep the cluster's objects current, for commands that follow it.
//! - `fake` (feature `fake`): an in-process apiserver speaking the real wire protocol.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod clean;
pub mod connect;
pub mod emit;
pub mod error;
pub mod follow;
pub mod json;
pub mod read;

#[cfg(feature = "fake")]
pub mod fake;

pub use connect::{ClusterOptions, connect};
pub use error::ClusterError;
pub use read::{ClusterRead, ObjectError, Progress, read_cluster, read_cluster_blocking};
