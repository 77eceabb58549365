//! `membrane replay` on hand-written Hubble exports of the seed demo (`tests/replay/`),
//! recorded in a cluster that enforced the blog's policies and replayed against the fixed
//! policies (`examples/seed-demo-fixed`) with the backend's DNS narrowed to the cluster's
//! Services (`tests/replay/backend-dns.yaml`).
//!
//! Expected verdicts, checked by hand against the policies:
//!
//! | flow (json line / jsonpb line)                   | recorded  | now         | changed |
//! |--------------------------------------------------|-----------|-------------|---------|
//! | gateway → frontend:80 (1/2)                      | FORWARDED | allow       | no      |
//! | frontend → gateway reply (2/3)                   | FORWARDED | reply       | -       |
//! | gateway → backend GET /api/users (3/4)           | FORWARDED | allow       | no      |
//! | gateway → backend GET /api/admin (4/5)           | FORWARDED | http-403    | yes     |
//! | HTTP response (5/7)                              | FORWARDED | reply       | -       |
//! | backend → redis:6379 (6/8)                       | FORWARDED | allow       | no      |
//! | frontend → redis:6379 (7/9)                      | FORWARDED | deny        | yes     |
//! | (json line 8: truncated JSON; jsonpb line 6)     |           | bad line    |         |
//! | debug → frontend:80 (9/10)                       | FORWARDED | deny        | yes     |
//! | monitor → backend:3000 (10/11)                   | DROPPED   | deny        | no      |
//! | backend DNS api.github.com (11/12)               | FORWARDED | dns-refused | yes     |
//! | backend DNS redis.database.svc.cluster.local     | FORWARDED | allow       | no      |
//! | DNS answer api.example.com (13/14)               | FORWARDED | reply       | -       |
//! | world → frontend:80 (14/15)                      | FORWARDED | deny        | yes     |
//! | (json line 15: not JSON)                         |           | bad line    |         |
//! | frontend → api.example.com:443 (16/16)           | FORWARDED | deny        | yes     |
//! | remote-node → monitor:8000 (17/17)               | FORWARDED | deny        | yes     |
//! | host (kubelet) → backend:3000 (18/18)            | FORWARDED | allow       | no      |
//! | debug → redis ICMP echo (19/19)                  | DROPPED   | deny        | no      |
//! | frontend → backend:3000 (20/20)                  | AUDIT     | deny        | no      |
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// Only the validator is used here.
#[allow(dead_code)]
#[path = "support/json_schema.rs"]
mod json_schema;

use serde_json::Value;
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

const POLICIES: [&str; 2] = ["examples/seed-demo-fixed", "tests/replay/backend-dns.yaml"];

fn replay_json(flows: &str) -> (Option<i32>, Value) {
    let mut args = vec!["replay", "--output", "json", flows];
    args.extend(POLICIES);
    let o = membrane(&args);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(&o)));
    (o.status.code(), v)
}

/// (line, verdict or "reply", changed) of every flow entry.
fn verdicts(v: &Value) -> Vec<(u64, String, bool)> {
    v["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let verdict = match f["verdict"].as_str() {
                Some(s) => s.to_string(),
                None => f["skipped"].as_str().unwrap().to_string(),
            };
            (
                f["line"].as_u64().unwrap(),
                verdict,
                f["changed"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn expected(lines: [u64; 18]) -> Vec<(u64, String, bool)> {
    let want = [
        ("allow", false),
        ("reply", false),
        ("allow", false),
        ("http-403", true),
        ("reply", false),
        ("allow", false),
        ("deny", true),
        ("deny", true),
        ("deny", false),
        ("dns-refused", true),
        ("allow", false),
        ("reply", false),
        ("deny", true),
        ("deny", true),
        ("deny", true),
        ("allow", false),
        ("deny", false),
        ("deny", false),
    ];
    lines
        .iter()
        .zip(want)
        .map(|(l, (v, c))| (*l, v.to_string(), c))
        .collect()
}

#[test]
fn replay_json_export_verdicts() {
    let (code, v) = replay_json("tests/replay/flows.json");
    assert_eq!(code, Some(1), "verdicts change: exit 1");
    assert_eq!(
        verdicts(&v),
        expected([
            1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20
        ])
    );
    let s = &v["summary"];
    assert_eq!(s["flows"], 18);
    assert_eq!(s["decided"], 15);
    assert_eq!(s["replies"], 3);
    assert_eq!(s["changed"], 7);
    assert_eq!(s["newly_dropped"], 5);
    assert_eq!(s["newly_l7_denied"], 2);
    assert_eq!(s["bad_lines"], 2);
    let problems: Vec<u64> = s["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(problems, vec![8, 15]);
}

#[test]
fn replay_jsonpb_export_gives_the_same_verdicts() {
    let (code, v) = replay_json("tests/replay/flows.jsonpb");
    assert_eq!(code, Some(1));
    // One node_status line first and a truncated line at 6: every flow one or two lines on.
    assert_eq!(
        verdicts(&v),
        expected([
            2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20
        ])
    );
    assert_eq!(v["summary"]["not_flows"], 1);
    assert_eq!(v["summary"]["problems"][0]["line"], 6);
}

#[test]
fn replay_deciding_follows_the_decision_schema() {
    let schema = json_schema::Schema::load(&repo_root().join("docs/schema/decision-v1.json"));
    let (_, v) = replay_json("tests/replay/flows.json");
    let mut checked = 0;
    for f in v["flows"].as_array().unwrap() {
        if f["deciding"].is_null() {
            continue;
        }
        let errors = schema.validate(None, &f["deciding"]);
        assert!(errors.is_empty(), "line {}: {errors:?}", f["line"]);
        checked += 1;
    }
    assert_eq!(checked, 15);
    // The L7 denial names the HTTP rules' policy; the DNS refusal the DNS rule's.
    let by_line = |n: u64| {
        v["flows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["line"] == n)
            .unwrap()
            .clone()
    };
    let admin = by_line(4);
    assert_eq!(admin["deciding"]["ingress"]["outcome"], "Http403");
    assert_eq!(admin["recorded"], "FORWARDED");
    let dns = by_line(11);
    assert_eq!(dns["deciding"]["egress"]["outcome"], "DnsRefused");
    assert_eq!(
        dns["deciding"]["egress"]["policies"][0],
        "CNP backend/default-deny"
    );
}

#[test]
fn replay_rule_hits_and_unused_rules() {
    let (_, v) = replay_json("tests/replay/flows.json");
    let hits = |rule: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .unwrap_or_else(|| panic!("no rule {rule}"))["hits"]
            .as_u64()
            .unwrap()
    };
    // Gateway → backend: GET /api/users allowed and GET /api/admin refused, both by the
    // entry's HTTP rules.
    assert_eq!(hits("CNP backend/allow-gateway-to-backend ingress[0]"), 2);
    assert_eq!(hits("CNP backend/backend-to-redis egress[0]"), 1);
    assert_eq!(hits("CNP database/backend-to-database ingress[0]"), 1);
    assert_eq!(hits("CNP frontend/frontend-only-gateway ingress[0]"), 1);
    // Both DNS queries, the refused one included.
    assert_eq!(hits("CNP backend/default-deny egress[0]"), 2);
    let unused: Vec<&str> = v["unused_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert!(unused.contains(&"CNP monitor/monitor-only-gateway ingress[0]"));
    assert!(!unused.contains(&"CNP backend/backend-to-redis egress[0]"));
    let policy = |p: &str| {
        v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["policy"] == p)
            .unwrap()["hits"]
            .as_u64()
            .unwrap()
    };
    // Its default deny decided frontend → redis, frontend → api.example.com, debug →
    // frontend, world → frontend and frontend → backend (audit).
    assert_eq!(policy("CNP frontend/default-deny"), 5);
}

#[test]
fn replay_text_report() {
    let mut args = vec!["replay", "tests/replay/flows.json"];
    args.extend(POLICIES);
    let o = membrane(&args);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("18 flows read: 15 decided, 3 replies skipped"),
        "{out}"
    );
    assert!(out.contains("line 8: not JSON"), "{out}");
    assert!(out.contains("line 4: ingress → backend/backend-7b9c8d6f4-p9qrs:3000/TCP GET /api/admin: FORWARDED → http-403"), "{out}");
    insta::assert_snapshot!("replay_seed_demo_text", out);
}

#[test]
fn replay_without_changes_exits_0() {
    let mut args = vec!["replay", "tests/replay/unchanged.json"];
    args.extend(POLICIES);
    let o = membrane(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).contains("0 verdicts changed"));
}

#[test]
fn replay_unusable_input_exits_2() {
    let mut args = vec!["replay", "tests/replay/garbage.json"];
    args.extend(POLICIES);
    let o = membrane(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no Hubble flow in 2 line(s)"));
    let mut args = vec!["replay", "tests/replay/no-such-file.json"];
    args.extend(POLICIES);
    let o = membrane(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read"));
}

#[test]
fn replay_reads_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(["replay", "--output", "json", "-"])
        .args(POLICIES)
        .current_dir(repo_root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let text = std::fs::read(repo_root().join("tests/replay/flows.json")).unwrap();
    child.stdin.take().unwrap().write_all(&text).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["changed"], 7);
}
