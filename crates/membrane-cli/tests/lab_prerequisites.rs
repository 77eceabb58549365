//! `membrane lab run` checks the programs the lab runs once, before anything else: a
//! missing `nft` is one clear error (exit 2) naming it and its package, not every file
//! failing with `exec of nft failed`. Needs no root: the check comes first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A directory for PATH holding links to the given programs only (those installed here).
fn path_with(dir: &Path, programs: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let system = std::env::var_os("PATH").unwrap_or_default();
    for p in programs {
        let found = std::env::split_paths(&system)
            .chain(["/usr/sbin".into(), "/usr/bin".into(), "/bin".into()])
            .map(|d| d.join(p))
            .find(|f| f.is_file());
        if let Some(f) = found {
            let _ = std::os::unix::fs::symlink(f, dir.join(p));
        } else {
            // Not installed on this machine: a stand-in is enough, only its presence counts.
            std::fs::write(dir.join(p), "#!/bin/sh\nexit 1\n").unwrap();
        }
    }
}

fn lab_run(path_dir: &Path, files: &[&str]) -> (Option<i32>, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(["lab", "run"])
        .args(files)
        .current_dir(repo_root())
        .env("PATH", path_dir)
        .env("NO_COLOR", "1")
        .output()
        .expect("run membrane");
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    (o.status.code(), err)
}

#[test]
fn a_missing_nft_is_named_once_with_its_package() {
    let dir = std::env::temp_dir().join(format!("membrane-prereq-{}-nft", std::process::id()));
    path_with(&dir, &["ip", "tcpdump", "kill", "dnsmasq"]);
    let (code, err) = lab_run(
        &dir,
        &[
            "tests/conformance/client-ingress.yaml",
            "tests/conformance/echo-ingress.yaml",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("not on PATH: nft\n"),
        "names nft (and nothing else): {err}"
    );
    assert!(err.contains("apt-get install -y nftables"), "{err}");
    assert_eq!(
        err.matches("nft").count(),
        2,
        "one error, not one per file: {err}"
    );
    assert!(!err.contains("exec"), "{err}");
}

#[test]
fn dnsmasq_is_needed_only_when_the_scenario_has_kube_dns() {
    let dir = std::env::temp_dir().join(format!("membrane-prereq-{}-dns", std::process::id()));
    // Neither nft nor dnsmasq.
    path_with(&dir, &["ip", "tcpdump", "kill"]);
    // The conformance files have kube-dns: dnsmasq is named with its package.
    let (code, err) = lab_run(&dir, &["tests/conformance/client-ingress.yaml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not on PATH: nft, dnsmasq\n"), "{err}");
    assert!(
        err.contains("apt-get install -y nftables dnsmasq-base"),
        "{err}"
    );
    // A scenario without kube-dns only needs nft.
    let (code, err) = lab_run(
        &dir,
        &["crates/membrane-datapath/tests/scenarios/http-head.yaml"],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not on PATH: nft\n"), "{err}");
    assert!(!err.contains("dnsmasq"), "{err}");
}
