//! Applying rulesets: `nft -f -` in a node's network namespace (through `ip netns exec`), or
//! in the caller's own namespace (the proxies updating `ip2id`).

use crate::exec::{CommandError, run};
use crate::nft::compile::Ruleset;
use std::process::Command;

/// A ruleset or transaction that `nft` refused (or could not be run).
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("loading the ruleset of node {node}: {source}")]
    Load {
        node: String,
        #[source]
        source: CommandError,
    },
    #[error("updating node {node}: {source}")]
    Update {
        node: String,
        #[source]
        source: CommandError,
    },
    #[error(transparent)]
    Script(#[from] CommandError),
}

fn nft_in(netns: &str, script: &str) -> Result<(), CommandError> {
    run(
        Command::new("ip").args(["netns", "exec", netns, "nft", "-f", "-"]),
        Some(script),
    )
    .map(|_| ())
}

/// Loads a full ruleset into namespace `netns` (node `rs.node`).
pub fn load(netns: &str, rs: &Ruleset) -> Result<(), NftError> {
    nft_in(netns, &rs.render()).map_err(|source| NftError::Load {
        node: rs.node.clone(),
        source,
    })
}

/// Replaces `prev`, loaded in `netns`, by `next` in one transaction that flushes and
/// refills only what changed ([`Ruleset::update_from`]).
pub fn update(netns: &str, prev: &Ruleset, next: &Ruleset) -> Result<(), NftError> {
    nft_in(netns, &next.update_from(prev)).map_err(|source| NftError::Update {
        node: next.node.clone(),
        source,
    })
}

/// Runs an `nft -f` script in this process's namespace.
pub fn script(text: &str) -> Result<(), NftError> {
    run(Command::new("nft").args(["-f", "-"]), Some(text))?;
    Ok(())
}
