//! `membrane check` and `membrane explain` on the seed demo: exit codes, and snapshots of
//! every output format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn membrane(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .output()
        .expect("run membrane")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn seed_demo_claims_do_not_all_hold() {
    let o = membrane(&["check", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("11 of 22 expectations hold"), "{out}");
    // Why: the default-deny copies are rejected, and the namespace-less policies land in default.
    assert!(
        out.contains("rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny")
    );
    assert!(out.contains("CNP default/frontend-only-gateway matches these labels but applies to namespace `default` only"));
    insta::assert_snapshot!("check_seed_demo_text", out);
}

#[test]
fn seed_demo_check_json() {
    let o = membrane(&["check", "--output", "json", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["held"], 11);
    assert_eq!(v["total"], 22);
    insta::assert_snapshot!("check_seed_demo_json", stdout(&o));
}

#[test]
fn fixed_seed_demo_claims_all_hold() {
    let o = membrane(&["check", "examples/seed-demo-fixed"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("22 of 22 expectations hold"), "{out}");
    insta::assert_snapshot!("check_seed_demo_fixed_text", out);
}

#[test]
fn unusable_input_exits_2() {
    let o = membrane(&["check", "no/such/path"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn explain_gateway_to_backend_text_and_json() {
    let args = [
        "explain",
        "examples/seed-demo",
        "--from",
        "world",
        "--to",
        "gateway/cilium-gateway",
        "--port",
        "80",
        "--http-method",
        "GET",
        "--http-path",
        "/api/users/42",
    ];
    let o = membrane(&args);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("http-403"), "{out}");
    assert!(
        out.contains("routed by HTTPRoute backend/backend /api*"),
        "{out}"
    );
    insta::assert_snapshot!("explain_gateway_backend_text", out);
    let mut json_args = args.to_vec();
    json_args.extend(["--output", "json"]);
    let o = membrane(&json_args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verdict"], "http-403");
    insta::assert_snapshot!("explain_gateway_backend_json", stdout(&o));
}

#[test]
fn explain_names_the_default_deny_policy() {
    let o = membrane(&[
        "explain",
        "examples/seed-demo-fixed",
        "--from",
        "tools/debug",
        "--to",
        "database/redis",
        "--port",
        "6379",
    ]);
    let out = stdout(&o);
    assert!(out.contains(": deny"), "{out}");
    assert!(
        out.contains("default deny because CNP database/default-deny"),
        "{out}"
    );
    insta::assert_snapshot!("explain_default_deny_text", out);
}

#[test]
fn explain_dns_query() {
    let o = membrane(&[
        "explain",
        "examples/seed-demo-fixed",
        "--from",
        "frontend/frontend",
        "--dns",
        "example.com",
    ]);
    let out = stdout(&o);
    assert!(out.contains("dns-ok"), "{out}");
    assert!(out.contains("dns proxy"), "{out}");
}

#[test]
fn to_services_selects_the_backends() {
    let o = membrane(&["check", "tests/manifests/to-services.yaml"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("2 of 2 expectations hold"), "{out}");
}
