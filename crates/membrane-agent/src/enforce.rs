//! Applying rulesets: every change is one `nft -f` transaction that changes the table in
//! place (maps and chains flushed and refilled, vanished ones deleted), never a table
//! delete, so established connections and untouched entries are never disturbed. The table
//! outlives the agent: a killed agent leaves the last policy in force, and a new one starts
//! from the table it finds in the kernel.

use membrane_datapath::layout::TABLE;
use membrane_datapath::nft::compile::{ChainDef, MapDef, Ruleset};
use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("`nft` is not installed or not on PATH ({0}): install Debian's `nftables` package")]
    NoNft(String),
    #[error(
        "nft cannot read the kernel's tables ({0}): the agent needs CAP_NET_ADMIN (run it as root or with NET_ADMIN) and a kernel with nf_tables"
    )]
    NoPermission(String),
    #[error(
        "nft refused the update (nothing was changed, the previous policy stays in force): {0}"
    )]
    Refused(String),
    #[error(
        "cannot read the existing membrane table ({0}): refusing to start rather than stack rules on top of it"
    )]
    Unreadable(String),
    #[error("cannot run nft: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Apply in the kernel.
    Apply,
    /// Print the transactions instead of applying them.
    DryRun,
}

/// The names of what the kernel's table holds (what a starting agent inherits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelTable {
    pub chains: Vec<String>,
    pub maps: Vec<String>,
}

pub struct Enforcer {
    mode: Mode,
    /// What is loaded, as this agent applied it.
    prev: Option<Ruleset>,
    /// What the kernel had when the agent started (before its first transaction).
    inherited: Option<KernelTable>,
    pub transactions: u64,
}

fn nft(args: &[&str], stdin: Option<&str>) -> std::io::Result<std::process::Output> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let written = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => pipe.write_all(text.as_bytes()),
        _ => Ok(()),
    };
    // Reaped either way; a failed write surfaces after.
    let out = child.wait_with_output()?;
    written.map(|()| out)
}

/// Reads the names of the chains and maps of the kernel's membrane table, if it exists.
pub fn read_kernel_table() -> Result<Option<KernelTable>, EnforceError> {
    let tables = nft(&["list", "tables"], None).map_err(|e| EnforceError::NoNft(e.to_string()))?;
    if !tables.status.success() {
        return Err(EnforceError::NoPermission(
            String::from_utf8_lossy(&tables.stderr).trim().to_string(),
        ));
    }
    let listed = String::from_utf8_lossy(&tables.stdout).into_owned();
    if !listed
        .lines()
        .any(|l| l.trim() == format!("table inet {TABLE}"))
    {
        return Ok(None);
    }
    // What is there must be read exactly: taking a table for empty would append rules
    // after its old allows instead of replacing them.
    let out = nft(&["-j", "list", "table", "inet", TABLE], None)?;
    if !out.status.success() {
        return Err(EnforceError::Unreadable(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| EnforceError::Unreadable(format!("nft -j: {e}")))?;
    let mut table = KernelTable::default();
    for item in v["nftables"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(name) = item["chain"]["name"].as_str() {
            table.chains.push(name.to_string());
        }
        if let Some(name) = item["map"]["name"].as_str() {
            table.maps.push(name.to_string());
        }
    }
    Ok(Some(table))
}

/// A `prev` for [`Ruleset::update_from`] standing for what the kernel holds: every object of
/// the next ruleset that the kernel has is taken to differ (so it is flushed and refilled in
/// place), and every object the kernel has beyond it is deleted.
fn inherited_prev(kernel: &KernelTable, next: &Ruleset) -> Ruleset {
    let stale = || vec!["# inherited".to_string()];
    let maps = kernel
        .maps
        .iter()
        .map(|name| match next.maps.iter().find(|m| &m.name == name) {
            Some(m) => MapDef {
                elements: vec![("inherited".into(), "inherited".into())],
                ..m.clone()
            },
            None => MapDef {
                name: name.clone(),
                ty: String::new(),
                interval: false,
                elements: vec![("inherited".into(), "inherited".into())],
            },
        })
        .collect();
    let chains = kernel
        .chains
        .iter()
        .map(|name| match next.chains.iter().find(|c| &c.name == name) {
            Some(c) => ChainDef {
                rules: stale(),
                ..c.clone()
            },
            None => ChainDef {
                name: name.clone(),
                hook: None,
                rules: stale(),
                comment: Vec::new(),
            },
        })
        .collect();
    Ruleset {
        node: next.node.clone(),
        maps,
        chains,
    }
}

impl Enforcer {
    /// Checks that nft works and reads what the kernel holds. In dry-run mode a missing or
    /// unusable nft only means starting from an empty table.
    pub fn start(mode: Mode) -> Result<Enforcer, EnforceError> {
        let inherited = match (read_kernel_table(), mode) {
            (Ok(t), _) => t,
            (Err(_), Mode::DryRun) => None,
            (Err(e), Mode::Apply) => return Err(e),
        };
        Ok(Enforcer {
            mode,
            prev: None,
            inherited,
            transactions: 0,
        })
    }

    /// Whether the agent found a table left by an earlier one.
    pub fn inherited(&self) -> Option<&KernelTable> {
        self.inherited.as_ref()
    }

    /// The transaction that takes the table to `next` (None: nothing changes).
    pub fn script(&self, next: &Ruleset) -> Option<String> {
        match (&self.prev, &self.inherited) {
            (Some(prev), _) if prev == next => None,
            (Some(prev), _) => Some(next.update_from(prev)),
            (None, Some(kernel)) => Some(next.update_from(&inherited_prev(kernel, next))),
            (None, None) => Some(next.render()),
        }
    }

    /// Applies `next` (or prints it in dry-run mode). On refusal nothing changed: the
    /// previous policy stays in force and the next call tries again from it.
    pub fn apply(&mut self, next: &Ruleset) -> Result<Option<String>, EnforceError> {
        let Some(script) = self.script(next) else {
            return Ok(None);
        };
        if self.mode == Mode::Apply {
            let out = nft(&["-f", "-"], Some(&script))?;
            if !out.status.success() {
                return Err(EnforceError::Refused(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ));
            }
        }
        self.prev = Some(next.clone());
        self.inherited = None;
        self.transactions += 1;
        Ok(Some(script))
    }
}
