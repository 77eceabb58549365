//! A lab's names and namespaces on this machine: checking and deriving names, listing labs,
//! tearing them down.

use super::LabError;
use crate::exec::{ip_batch, run};
use crate::layout::{NETNS_PREFIX, netns_prefix};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Checks a lab name: it becomes part of namespace names and a directory.
pub fn valid_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(LabError::BadName(name.to_string()))
    }
}

/// A lab name derived from a scenario name.
pub fn name_from(text: &str) -> String {
    let s: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    let s: String = s.chars().take(40).collect();
    if s.is_empty() {
        "lab".into()
    } else {
        s.trim_end_matches('-').to_string()
    }
}

/// The lab's namespaces that exist now.
pub fn lab_namespaces(name: &str) -> Vec<String> {
    let prefix = netns_prefix(name);
    let Ok(out) = run(Command::new("ip").args(["netns", "list"]), None) else {
        return vec![];
    };
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Labs with state under `root` or namespaces on the machine.
pub fn list_labs(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(root) {
        for e in dir.flatten() {
            out.insert(e.file_name().to_string_lossy().to_string());
        }
    }
    if let Ok(list) = run(Command::new("ip").args(["netns", "list"]), None) {
        for l in list.lines() {
            let n = l.split_whitespace().next().unwrap_or("");
            if let Some(rest) = n.strip_prefix(NETNS_PREFIX)
                && let Some((lab, _)) = rest.rsplit_once('.')
            {
                out.insert(lab.to_string());
            }
        }
    }
    out
}

fn netns_pids(ns: &str) -> Vec<u32> {
    run(Command::new("ip").args(["netns", "pids", ns]), None)
        .map(|o| {
            o.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the lab was handed over (`membrane lab up`): then its reaper leaves it alone.
pub fn is_kept(root: &Path, name: &str) -> bool {
    root.join(name).join("kept").exists()
}

/// Tears a lab down: ends every process in its namespaces, deletes the namespaces and its
/// state directory. Safe to run twice, and on a half-built lab.
pub fn teardown(root: &Path, name: &str) -> Result<(), LabError> {
    valid_name(name)?;
    let dir = root.join(name);
    // Agents exit by themselves once their control socket is gone; the kill below does not
    // wait for that.
    let _ = std::fs::remove_dir_all(&dir);
    let namespaces = lab_namespaces(name);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<u32> = namespaces.iter().flat_map(|n| netns_pids(n)).collect();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        let mut cmd = Command::new("kill");
        cmd.arg("-KILL").args(pids.iter().map(u32::to_string));
        let _ = run(&mut cmd, None);
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines: Vec<String> = namespaces
        .iter()
        .map(|n| format!("netns del {n}"))
        .collect();
    let r = ip_batch(None, &lines);
    let left = lab_namespaces(name);
    if !left.is_empty() {
        return Err(LabError::LeftBehind {
            name: name.to_string(),
            left,
            cause: r.err(),
        });
    }
    Ok(())
}
