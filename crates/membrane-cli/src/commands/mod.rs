//! One module per command: its clap arguments and its `run`, which returns the exit code.
//! A command computes its report; the modules of `crate::printers` render it.

pub mod agent;
pub mod bench;
pub mod capacity;
pub mod check;
pub mod diff;
pub mod explain;
pub mod lab;
pub mod lab_cluster;
pub mod lint;
pub mod matrix;
pub mod observe;
pub mod replay;
pub mod snapshot;
pub mod test;
pub mod validate;
