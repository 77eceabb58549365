//! Tests that need root and nftables: they say SKIPPED where people see it when they
//! cannot run, and fail under CI, which must run them.

use std::io::Write;
use std::process::Command;

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether `test` can run (root and nft); otherwise SKIPPED on the terminal, or a panic
/// under CI. `what` names what needs them (`the agent`, `the lab`).
pub fn root_or_skip(test: &str, what: &str) -> bool {
    if is_root() && Command::new("nft").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run the {what} tests as root with nftables installed");
    }
    let _ = writeln!(
        std::io::stderr(),
        "{test}: SKIPPED: {what} needs root and nftables"
    );
    false
}
