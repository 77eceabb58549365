//! nftables: the policy as ruleset text and its application.
//!
//! * [`compile`]: the engine's resolved policy → ruleset text and in-place update
//!   transactions ([`compile::Ruleset::update_from`]). Pure.
//! * [`sim`]: an interpreter of that text, to check it against the engine offline. Pure.
//! * [`apply`]: loading and updating rulesets with `nft -f` in a network namespace.

pub mod apply;
pub mod compile;
pub mod sim;

pub use apply::NftError;
