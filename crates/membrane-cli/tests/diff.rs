//! `membrane diff OLD NEW`: exit codes, the changes of the seed demo's fix worked out by hand,
//! a conformance scenario with one HTTP rule changed, and the 5k-endpoint workload with one
//! policy changed (only the parties it selects are evaluated).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
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

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// A copy of a repository file with one replacement, in a fresh temporary directory.
fn edited(rel: &str, from: &str, to: &str) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    assert!(text.contains(from), "{rel} has no `{from}`");
    let dir = std::env::temp_dir().join(format!(
        "membrane-diff-{}-{}",
        std::process::id(),
        Path::new(rel).file_stem().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(Path::new(rel).file_name().unwrap());
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    (dir, path)
}

type Key = (String, String, String, String);

fn changes(v: &Value) -> BTreeSet<Key> {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["from"].as_str().unwrap().to_string(),
                c["to"].as_str().unwrap().to_string(),
                format!("{}/{}", c["port"], c["protocol"].as_str().unwrap()),
                c["change"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn identical_inputs_print_nothing_and_exit_0() {
    let o = membrane(&["diff", "examples/seed-demo", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "examples/seed-demo-fixed",
        "examples/seed-demo-fixed",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
}

#[test]
fn unusable_input_exits_2() {
    let o = membrane(&["diff", "examples/seed-demo", "no/such/dir"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no/such/dir"));
    let o = membrane(&["diff", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(2));
}

/// The seed demo's policies as the blog writes them land in namespace `default` (no
/// `metadata.namespace`) or are rejected (`ingress: []`), except the backend's HTTP policy:
/// nothing but backend:3000 (gateway only, with HTTP rules) is enforced. The fixed version
/// puts frontend, backend, database and monitor into default deny both ways, allowing only
/// DNS (any name) to kube-dns, plus: gateway → frontend:80, gateway → monitor:8000,
/// backend → redis:6379 (both sides). So, worked out from that:
/// - each of the four enforced sources loses every destination it reached before, except
///   backend → redis and the destinations that were already closed (backend:3000);
/// - its DNS to kube-dns goes from open to checked by the DNS proxy (l7, `*`);
/// - unmanaged sources (tools/debug, the gateway, world) lose frontend:80 and monitor:8000
///   (except the gateway) and redis:6379.
#[test]
fn seed_demo_fix_changes_exactly_what_the_policies_say() {
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "examples/seed-demo",
        "examples/seed-demo-fixed",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let v = json(&o);
    let got = changes(&v);

    let enforced = [
        "backend/backend",
        "database/redis",
        "frontend/frontend",
        "monitor/monitor",
    ];
    let all_ports = [
        "53/TCP", "53/UDP", "80/TCP", "3000/TCP", "6379/TCP", "8000/TCP",
    ];
    // Destinations and the ports they listen on (tools/debug declares none: any port).
    let mut destinations: Vec<(&str, Vec<&str>)> = vec![
        ("backend/backend", vec!["3000/TCP"]),
        ("database/redis", vec!["6379/TCP"]),
        ("frontend/frontend", vec!["80/TCP"]),
        ("gateway/cilium-gateway", vec!["80/TCP"]),
        ("monitor/monitor", vec!["8000/TCP"]),
    ];
    destinations.push(("tools/debug", all_ports.to_vec()));
    destinations.push(("world", all_ports.to_vec()));
    let mut want: BTreeSet<Key> = BTreeSet::new();
    let mut add = |from: &str, to: &str, port: &str, kind: &str| {
        want.insert((from.into(), to.into(), port.into(), kind.into()));
    };
    for from in enforced {
        for (to, ports) in &destinations {
            for port in ports {
                let already_closed = *to == "backend/backend";
                let still_allowed = from == "backend/backend" && *to == "database/redis";
                if !already_closed && !still_allowed {
                    add(from, to, port, "newly-denied");
                }
            }
        }
        add(from, "kube-system/kube-dns", "53/UDP", "l7-changed");
        add(from, "kube-system/kube-dns", "53/TCP", "l7-changed");
    }
    for from in ["tools/debug", "gateway/cilium-gateway", "world"] {
        if from != "gateway/cilium-gateway" {
            add(from, "frontend/frontend", "80/TCP", "newly-denied");
            add(from, "monitor/monitor", "8000/TCP", "newly-denied");
        }
        add(from, "database/redis", "6379/TCP", "newly-denied");
    }
    assert_eq!(want.len(), 78);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );

    // Each side names its policies, and the DNS change says what the proxy now checks.
    let c = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == "world" && c["to"] == "database/redis")
        .unwrap();
    assert_eq!(c["old"], "allow");
    assert_eq!(c["new"], "deny");
    assert_eq!(c["policies"]["old"], serde_json::json!([]));
    assert!(
        c["policies"]["new"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("CNP database/default-deny"))
    );
    let dns = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["from"] == "backend/backend" && c["to"] == "kube-system/kube-dns")
        .unwrap();
    assert_eq!(dns["old"], "allow");
    assert_eq!(dns["new"], "l7");
    assert_eq!(dns["new_detail"]["l7"], serde_json::json!(["egress dns *"]));
}

#[test]
fn seed_demo_fix_markdown_and_text() {
    let o = membrane(&[
        "diff",
        "--output",
        "md",
        "examples/seed-demo",
        "examples/seed-demo-fixed",
    ]);
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("diff_seed_demo_md", stdout(&o));
    let o = membrane(&["diff", "examples/seed-demo", "examples/seed-demo-fixed"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains("78 cells changed: 0 newly allowed, 70 newly denied, 8 L7 changed"));
    assert!(out.contains("newly-denied  world → database/redis 6379/TCP"));
    // The reverse diff opens what the fix closed.
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "examples/seed-demo-fixed",
        "examples/seed-demo",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    let kinds: BTreeSet<&str> = v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["l7-changed", "newly-allowed"]));
}

/// The conformance case echo-ingress-l7 with one HTTP path changed: only client2 (the one
/// `other: client`) → the two echo pods on 8080 change, and only in what the proxy checks.
#[test]
fn conformance_http_path_change() {
    let (dir, new) = edited(
        "tests/conformance/echo-ingress-l7.yaml",
        "path: \"/public$\"",
        "path: \"/public/.*$\"",
    );
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "tests/conformance/echo-ingress-l7.yaml",
        new.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let v = json(&o);
    let want: BTreeSet<Key> = ["echo-other-node", "echo-same-node"]
        .iter()
        .map(|to| {
            (
                "client2".to_string(),
                to.to_string(),
                "8080/TCP".to_string(),
                "l7-changed".to_string(),
            )
        })
        .collect();
    assert_eq!(changes(&v), want);
    let c = &v["changes"][0];
    let old: Vec<&str> = c["old_detail"]["l7"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    let new: Vec<&str> = c["new_detail"]["l7"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        old.contains(&"ingress http method=GET path=/public$"),
        "{old:?}"
    );
    assert!(
        new.contains(&"ingress http method=GET path=/public/.*$"),
        "{new:?}"
    );
    assert_eq!(
        c["policies"]["new"],
        serde_json::json!(["CNP cilium-test-1/echo-ingress-l7-http"])
    );
}

/// scale-5k (5,000 endpoints, 50 policies) with one port of one CNP changed: the 200 pods it
/// selects lose 9090 from the cluster, one change per class pair with every pod listed;
/// only the rows and columns of that deployment's class are evaluated.
#[test]
fn scale_5k_one_policy_changed() {
    let (dir, new) = edited(
        "bench/workloads/scale-5k.yaml",
        "port: '9090'",
        "port: '9091'",
    );
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "bench/workloads/scale-5k.yaml",
        new.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(1));
    let v = json(&o);
    assert_eq!(v["every_cell_evaluated"], false);
    assert_eq!(
        v["policies_changed"],
        serde_json::json!(["CNP ns-00/cnp-l4-000-d000-frontend"])
    );
    let cs = v["changes"].as_array().unwrap();
    assert!(!cs.is_empty());
    for c in cs {
        assert_eq!(c["to"], "d000-frontend-0000");
        assert_eq!(c["to_also"].as_array().unwrap().len(), 199);
        assert_eq!(c["port"], 9090);
        assert_eq!(c["change"], "newly-denied");
    }
    // Every cell of the matrix would be 25 classes × 26 destinations × the ports in play on
    // both sides; a fraction of that is evaluated.
    assert!(
        v["cells_evaluated"].as_u64().unwrap() < 1000,
        "{}",
        v["cells_evaluated"]
    );
}

/// NEW as a directory of policies only: read over OLD's sources (same kind, namespace and
/// name replaced), so the seed demo against the fixed policies alone changes exactly what the
/// whole fixed demo does (OLD's namespace-less copies stay, selecting nothing in `default`).
#[test]
fn policies_only_new_is_applied_over_old() {
    let whole = membrane(&[
        "diff",
        "--output",
        "json",
        "examples/seed-demo",
        "examples/seed-demo-fixed",
    ]);
    let policies = membrane(&[
        "diff",
        "--output",
        "json",
        "examples/seed-demo",
        "examples/seed-demo-fixed/policies",
    ]);
    assert_eq!(policies.status.code(), Some(1));
    assert_eq!(changes(&json(&policies)), changes(&json(&whole)));
}

#[test]
fn invalid_yaml_exits_2_with_its_place() {
    let (dir, bad) = edited(
        "tests/conformance/echo-ingress-l7.yaml",
        "name: echo-ingress-l7",
        "name: [echo-ingress-l7",
    );
    let o = membrane(&[
        "diff",
        "tests/conformance/echo-ingress-l7.yaml",
        bad.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout(&o), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("echo-ingress-l7.yaml:"), "{err}");
}

/// OLD from a live cluster (the in-process apiserver fake serving the seed demo), NEW the fixed
/// policies: every change the offline diff finds is found (the cluster also runs CoreDNS
/// as a workload, so it has more parties).
#[test]
fn cluster_as_old() {
    use membrane_kube::fake::{FakeApiServer, cluster_objects, default_served_kinds};
    let docs =
        membrane_kube::json::read_manifests(&repo_root().join("examples/seed-demo")).unwrap();
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.require_token(Some("diff-token"));
    server.apply_all(cluster_objects(docs)).unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), server.kubeconfig("diff-token")).unwrap();
    let live = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args([
            "diff",
            "--output",
            "json",
            "--kubeconfig",
            kubeconfig.path().to_str().unwrap(),
            "examples/seed-demo-fixed/policies",
        ])
        .current_dir(repo_root())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(
        live.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let offline = membrane(&[
        "diff",
        "--output",
        "json",
        "examples/seed-demo",
        "examples/seed-demo-fixed",
    ]);
    let live = changes(&json(&live));
    let missing: Vec<_> = changes(&json(&offline))
        .into_iter()
        .filter(|c| c.1 != "kube-system/kube-dns" && !live.contains(c))
        .collect();
    assert!(missing.is_empty(), "{missing:?}\nlive: {live:?}");
}

/// A toFQDNs change on manifests with ConnectivityTest DNS answers: the external names are
/// destinations, looked up through the DNS proxy first, so moving `matchName` from one name
/// to the other moves exactly the 443 connections.
#[test]
fn fqdn_change() {
    let (dir, new) = edited(
        "tests/manifests/fqdn-dns-answers.yaml",
        "toFQDNs: [{matchName: api.example.com}]",
        "toFQDNs: [{matchName: other.example.com}]",
    );
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "tests/manifests/fqdn-dns-answers.yaml",
        new.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(1));
    let want: BTreeSet<Key> = [
        ("api.example.com", "newly-denied"),
        ("other.example.com", "newly-allowed"),
    ]
    .iter()
    .map(|(to, kind)| {
        (
            "shop/client".to_string(),
            to.to_string(),
            "443/TCP".to_string(),
            kind.to_string(),
        )
    })
    .collect();
    assert_eq!(changes(&json(&o)), want);
}

/// An HTTP rule added to a toFQDNs egress: the name's learned address goes through the
/// proxy now, an L7 change (seen only if the L7 lookup uses the identity learned under the
/// name, as the flow's own decision does).
#[test]
fn fqdn_l7_rule_change() {
    let (dir, new) = edited(
        "tests/manifests/fqdn-dns-answers.yaml",
        "    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]",
        "    toPorts: [{ports: [{port: \"443\", protocol: TCP}], rules: {http: [{method: GET, path: /v1/.*}]}}]",
    );
    let o = membrane(&[
        "diff",
        "--output",
        "json",
        "tests/manifests/fqdn-dns-answers.yaml",
        new.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = json(&o);
    let want: BTreeSet<Key> = [(
        "shop/client".to_string(),
        "api.example.com".to_string(),
        "443/TCP".to_string(),
        "l7-changed".to_string(),
    )]
    .into_iter()
    .collect();
    assert_eq!(changes(&v), want, "{v:#}");
    let rules = v["changes"][0]["new_detail"]["l7"].to_string();
    assert!(rules.contains("path=/v1/.*"), "{v:#}");
}
