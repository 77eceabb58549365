//! Shared by the lab tests: root detection and lab options.
#![allow(dead_code)]

use membrane_datapath::lab::{Helper, Lab, LabOptions};
use membrane_datapath::layout::STATE_ROOT;
use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The lab needs root. Without it the test is skipped with a message, except in CI (`CI`
/// set), which runs as root: there a missing root is a failure, not a silent skip.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: CI must run the lab tests as root");
    }
    // Straight to the stderr handle: the test harness captures `eprintln!`, and a skip
    // nobody sees looks like a pass.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: SKIPPED: the lab needs root (network namespaces, nftables)"
    );
    false
}

/// Options for a lab named after the test and this process, so runs never collide.
pub fn options(tag: &str) -> LabOptions {
    LabOptions {
        name: format!("t{}-{tag}", std::process::id()),
        root: PathBuf::from(STATE_ROOT),
        helper: Helper {
            program: PathBuf::from(env!("CARGO_BIN_EXE_membrane-lab-helper")),
            args: vec![],
        },
        reaper: true,
        proxies: None,
        agents: None,
    }
}

pub fn conformance(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/conformance")
        .join(name)
}

/// Every skip must be for an L7 reason: the lab runs every L3/L4 flow.
pub fn is_l7_reason(why: &str) -> bool {
    why.contains("proxy") || why.contains("L7") || why.contains("Gateway")
}

/// The L7 events the proxies of every node wrote, once `want` of them are there.
pub fn l7_events(lab: &Lab, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events: Vec<Value> = (0..lab.topo.nodes.len())
            .filter_map(|i| std::fs::read_to_string(lab.l7_events(i)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<Value>>()
            })
            .collect();
        if want(&events) || Instant::now() > deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
