//! `membrane bench --json`: the phase figures as one JSON object, for scripts that compare runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn bench_json_reports_every_phase() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .current_dir(&root)
        .args([
            "bench",
            "--json",
            "--iterations",
            "2",
            "tests/conformance/client-ingress.yaml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["files"], 1);
    assert_eq!(v["iterations"], 2);
    assert!(v["flows"].as_u64().is_some_and(|n| n > 0), "{v}");
    for phase in [
        "yaml_parse",
        "scenario_decode",
        "repository",
        "resolve_and_flows",
        "whole_engine",
    ] {
        assert!(
            v["phases_ms"][phase].as_f64().is_some_and(|x| x >= 0.0),
            "{phase} missing: {v}"
        );
    }
}
