//! `membrane lab helper …` (and `membrane-lab-helper` in tests): the processes a lab starts,
//! dispatched by their first argument. The top of the crate: it reaches down to the node's
//! programs ([`crate::node`]) and to the lab's teardown (the reaper).
//!
//! * `agent`, `connrate`: [`crate::node::agent`].
//! * `proxy`: [`crate::node::proxy`]; `gateway`: [`crate::node::gateway`].
//! * `reaper`: started by the lab in its own process group, it waits for its standard input
//!   to close, which happens when the lab process exits for any reason (Ctrl-C, a panic, a
//!   kill), and then tears the lab down unless it was handed over (`membrane lab up`).
//!   This is how Ctrl-C cleans up without a signal handler (unsafe is forbidden here).

use crate::lab::{self, LabError};
use crate::node::{self, NodeError};
use std::path::PathBuf;
use std::time::Duration;

/// Why a helper process failed (printed as `membrane lab helper: …`).
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("usage: helper agent|reaper|connrate|proxy|gateway …")]
    Usage,
    #[error("reaper needs {0}")]
    ReaperArg(&'static str),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// Runs a helper subcommand; returns the exit status.
pub fn helper_main(args: &[String]) -> i32 {
    let rest = args.get(1..).unwrap_or_default();
    let r: Result<(), HelperError> = match args.first().map(String::as_str) {
        Some("agent") => node::agent::agent_main(rest).map_err(Into::into),
        Some("reaper") => reaper(rest),
        Some("connrate") => node::agent::connrate_main(rest).map_err(Into::into),
        Some("proxy") => node::proxy::proxy_main(rest).map_err(Into::into),
        Some("gateway") => node::gateway::gateway_main(rest).map_err(Into::into),
        _ => Err(HelperError::Usage),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("membrane lab helper: {e}");
            1
        }
    }
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn reaper(args: &[String]) -> Result<(), HelperError> {
    let root = PathBuf::from(opt(args, "--root").ok_or(HelperError::ReaperArg("--root"))?);
    let name = opt(args, "--lab")
        .ok_or(HelperError::ReaperArg("--lab"))?
        .to_string();
    // Blocks until every writer is gone: the lab process ended, however it ended.
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    if lab::is_kept(&root, &name) {
        return Ok(());
    }
    // Torn down by its owner already (the normal end): nothing to do.
    if !root.join(&name).exists() && lab::lab_namespaces(&name).is_empty() {
        return Ok(());
    }
    lab::teardown(&root, &name)?;
    // A command the dead lab process had started (`ip -batch`, `nft -f`) may still be
    // creating namespaces: look again once it had time to finish.
    std::thread::sleep(Duration::from_secs(1));
    Ok(lab::teardown(&root, &name)?)
}
