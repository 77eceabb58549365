//! Runs the `membrane` binary on the semantics scenarios (`tests/semantics/*.yaml`: the test
//! vectors §7.2–§7.7 and the findings §9 of the semantics spec) and on the conformance suite.
//!
//! Only the top-level files of `tests/semantics/` are run: `needs-options/` holds cases that need
//! agent options a scenario cannot set yet, and `known-bugs/` holds flows on which membrane
//! disagrees with the spec (they fail on purpose until the engine is fixed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `*.yaml` files directly inside `dir` (relative to the repository root), sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("cannot read {dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            p.strip_prefix(&root)
                .map(Path::to_path_buf)
                .unwrap_or(p.clone())
        })
        .collect();
    files.sort();
    files
}

/// Runs `membrane test FILES...` from the repository root; returns the exit code and stdout.
fn run_membrane_test(files: &[PathBuf]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .current_dir(repo_root())
        .arg("test")
        .args(files)
        .output()
        .expect("run the membrane binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = if stderr.is_empty() {
        stdout
    } else {
        format!("{stdout}\n--- stderr ---\n{stderr}")
    };
    (out.status.code(), text)
}

fn last_line(output: &str) -> &str {
    output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with("--- stderr"))
        .unwrap_or("")
}

/// Parses `N passed, N failed, N skipped`.
fn summary(line: &str) -> Option<(usize, usize, usize)> {
    let mut nums = line.split(", ").map(|part| {
        let (n, _) = part.split_once(' ')?;
        n.parse::<usize>().ok()
    });
    let (p, f, s) = (nums.next()??, nums.next()??, nums.next()??);
    Some((p, f, s))
}

/// The number of flows written in a scenario file: the list items of its top-level `flows:`.
fn count_flows(text: &str) -> usize {
    let mut in_flows = false;
    let mut n = 0;
    for line in text.lines() {
        if !line.starts_with(' ') && !line.starts_with('#') && !line.trim().is_empty() {
            in_flows = line.trim_end() == "flows:";
            continue;
        }
        if in_flows && line.starts_with("  - ") {
            n += 1;
        }
    }
    n
}

#[test]
fn semantics_scenarios_pass() {
    let files = yaml_files("tests/semantics");
    assert!(
        files.len() >= 50,
        "expected the semantics scenarios in tests/semantics, found {}",
        files.len()
    );
    let written: usize = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(repo_root().join(f))
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
            let n = count_flows(&text);
            assert!(n > 0, "{}: no flows found", f.display());
            n
        })
        .sum();
    let (code, output) = run_membrane_test(&files);
    assert_eq!(code, Some(0), "membrane test failed:\n{output}");
    let line = last_line(&output);
    let (passed, failed, skipped) =
        summary(line).unwrap_or_else(|| panic!("no summary line in:\n{output}"));
    assert!(
        line.ends_with("0 failed, 0 skipped") && failed == 0 && skipped == 0,
        "unexpected summary `{line}`:\n{output}"
    );
    assert_eq!(
        passed, written,
        "the files hold {written} flows but {passed} passed:\n{output}"
    );
}

#[test]
fn conformance_suite_passes() {
    let files = yaml_files("tests/conformance");
    let (code, output) = run_membrane_test(&files);
    assert_eq!(code, Some(0), "membrane test failed:\n{output}");
    assert_eq!(
        last_line(&output),
        "922 passed, 0 failed, 0 skipped",
        "{output}"
    );
}

#[test]
fn flow_counter_counts_list_items() {
    let text = "name: x\nflows:\n  - {from: a, expect: allow}\n  - {from: b,\n     expect: deny}\nnotes: |\n  - not a flow\n";
    assert_eq!(count_flows(text), 2);
    assert_eq!(
        summary("444 passed, 0 failed, 0 skipped"),
        Some((444, 0, 0))
    );
}
