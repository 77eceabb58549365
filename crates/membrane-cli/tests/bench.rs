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
            "--reps",
            "20",
            "--no-pod-memory",
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
    // The incremental operations, each the median of the repetitions asked for.
    assert_eq!(v["incremental"]["repetitions"], 20, "{v}");
    for op in [
        "add_policy_ms",
        "remove_policy_ms",
        "add_pod_ms",
        "remove_pod_ms",
        "new_pod_policy_ms",
        "add_pod_snapshot_held_ms",
    ] {
        assert!(
            v["incremental"][op].as_f64().is_some_and(|x| x > 0.0),
            "{op} missing: {v}"
        );
    }
    assert!(
        v["incremental"]["entries_added_by_policy"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "the CNP added no map entry: {v}"
    );
    assert!(
        v["memory"]["peak_rss_mb"].as_f64().is_some_and(|x| x > 0.0),
        "{v}"
    );
    assert!(v["memory"]["engine_bytes_per_pod"].is_null(), "{v}");
}
