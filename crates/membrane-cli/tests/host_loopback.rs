//! The engine on traffic a host sends to itself (no root): under a host firewall that denies
//! everything but remote nodes, a node and its hostNetwork pods still reach the node's own
//! address over loopback (Cilium's host policies are enforced on cilium_host/cilium_net and
//! the native devices, which `lo` traffic never crosses), while a pod → its node and the host
//! → an external address stay denied. The lab (`membrane-datapath` tests/lab.rs) probes the
//! same file and must agree.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_host_reaches_itself_under_a_host_firewall() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .current_dir(&root)
        .args([
            "test",
            "-v",
            "crates/membrane-datapath/tests/scenarios/hostnetwork-local.yaml",
        ])
        .env("NO_COLOR", "1")
        .output()
        .expect("run membrane");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("8 passed, 0 failed, 0 skipped"), "{out}");
    assert!(
        out.contains("not enforced: the host to itself over loopback"),
        "{out}"
    );
}
