//! Every manifest command against a live cluster: the in-process apiserver fake serves the
//! seed demo as a cluster would (Deployments with the hashed Pods their ReplicaSets created,
//! Services with EndpointSlices, CoreDNS), and `membrane … --kubeconfig` must answer as the
//! offline manifests do. Also `membrane snapshot`, and the one-line errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_kube::fake::{
    FakeApiServer, Fault, cluster_objects, default_served_kinds, yaml_to_json,
};
use membrane_kube::json::read_manifests;
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
        .env_remove("KUBECONFIG")
        .output()
        .expect("run membrane")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The seed demo's manifests (its ConnectivityTest aside) applied to a fake cluster, with a
/// kubeconfig for it.
struct Cluster {
    server: FakeApiServer,
    kubeconfig: tempfile::NamedTempFile,
}

impl Cluster {
    fn kc(&self) -> String {
        self.kubeconfig.path().display().to_string()
    }
}

fn seed_demo_cluster(dir: &str) -> Cluster {
    // Its ConnectivityTest is not a cluster object: `cluster_objects` leaves it out.
    let docs = read_manifests(&repo_root().join(dir)).unwrap();
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.require_token(Some("seed-token"));
    server.apply_all(cluster_objects(docs)).unwrap();
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kubeconfig.path(), server.kubeconfig("seed-token")).unwrap();
    Cluster { server, kubeconfig }
}

/// The report's expectation sections, without the positions of the files they came from.
fn expectations_section(report: &str) -> String {
    let start = report.find("\nseed-claims").unwrap_or(0);
    let end = report.find("\nlint:").unwrap_or(report.len());
    let mut out = String::new();
    for line in report[start..end].lines() {
        // `(file:line)` points into different files offline and in a cluster.
        out.push_str(&without_positions(line));
        out.push('\n');
    }
    out
}

#[test]
fn seed_demo_through_the_cluster_gives_the_offline_report() {
    let c = seed_demo_cluster("examples/seed-demo");
    let live = membrane(&[
        "check",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo/tests.yaml",
    ]);
    let offline = membrane(&["check", "examples/seed-demo"]);
    assert_eq!(
        live.status.code(),
        Some(1),
        "{}{}",
        stdout(&live),
        stderr(&live)
    );
    assert_eq!(offline.status.code(), Some(1));
    let (live_out, offline_out) = (stdout(&live), stdout(&offline));
    assert!(
        live_out.contains("11 of 22 expectations hold"),
        "{live_out}"
    );
    assert_eq!(
        expectations_section(&live_out),
        expectations_section(&offline_out)
    );
    // The same one invalid policy (the blog's four `default-deny` copies are one object in a
    // cluster, as offline: the last applied wins).
    assert!(
        live_out.contains("5 policies (1 not enforced)"),
        "{live_out}"
    );
    assert!(
        live_out.contains("(cluster:fake/11-ciliumnetworkpolicies.yaml:"),
        "{live_out}"
    );

    // JSON: every expectation's verdict and deciding policies are the same.
    let live = membrane(&[
        "check",
        "--output",
        "json",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo/tests.yaml",
    ]);
    let offline = membrane(&["check", "--output", "json", "examples/seed-demo"]);
    let (l, o): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&live.stdout).unwrap(),
        serde_json::from_slice(&offline.stdout).unwrap(),
    );
    assert_eq!(l["held"], o["held"]);
    let verdicts = |v: &serde_json::Value| -> Vec<(String, String, String, String)> {
        v["expectations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut decision = e["decision"].clone();
                strip_positions(&mut decision);
                (
                    e["flow"].to_string(),
                    e["actual"].to_string(),
                    e["holds"].to_string(),
                    decision.to_string(),
                )
            })
            .collect()
    };
    assert_eq!(verdicts(&l), verdicts(&o));
    assert!(
        verdicts(&l)
            .iter()
            .all(|(_, actual, _, _)| actual != "null")
    );
    assert_eq!(verdicts(&l).len(), 22);
}

/// Drops where a rule was written (`file`, `line`, `column`, `span`, and ` (file:line:col)`
/// in texts), since a cluster's files differ, and the peer identity numbers membrane
/// allocated (the cluster has CoreDNS pods the manifests lack, so the order differs).
fn strip_positions(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for k in ["file", "line", "column", "span", "peer"] {
                m.remove(k);
            }
            m.values_mut().for_each(strip_positions);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_positions),
        serde_json::Value::String(text) => *text = without_positions(text),
        _ => {}
    }
}

fn without_positions(line: &str) -> String {
    let mut l = line.to_string();
    while let Some(i) = l.find(" (examples/").or_else(|| l.find(" (cluster:")) {
        let j = l[i..].find(')').map_or(l.len(), |j| i + j + 1);
        l.replace_range(i..j, "");
    }
    l
}

#[test]
fn the_fixed_demo_holds_through_the_cluster_too() {
    let c = seed_demo_cluster("examples/seed-demo-fixed");
    let o = membrane(&[
        "check",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo-fixed/tests.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("22 of 22 expectations hold"));
}

#[test]
fn proposed_policies_are_added_to_the_cluster() {
    // "What if I apply the fixed policies?": the cluster's broken ones stay, the fixed ones
    // are added; the answer equals the offline analysis of both sets of files.
    let c = seed_demo_cluster("examples/seed-demo");
    let live = membrane(&[
        "check",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo/tests.yaml",
        "examples/seed-demo-fixed/policies",
    ]);
    let offline = membrane(&[
        "check",
        "examples/seed-demo",
        "examples/seed-demo-fixed/policies",
    ]);
    assert_eq!(live.status.code(), offline.status.code());
    assert_eq!(
        expectations_section(&stdout(&live)),
        expectations_section(&stdout(&offline))
    );
    let held = |s: &str| s.lines().last().unwrap_or("").to_string();
    assert_eq!(held(&stdout(&live)), held(&stdout(&offline)));
    assert_ne!(held(&stdout(&live)), "11 of 22 expectations hold");
}

#[test]
fn a_snapshot_reproduces_the_cluster_offline() {
    let c = seed_demo_cluster("examples/seed-demo");
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let o = membrane(&[
        "snapshot",
        "--kubeconfig",
        &c.kc(),
        "-o",
        snap.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut names: Vec<String> = std::fs::read_dir(&snap)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names.first().map(String::as_str),
        Some("00-namespaces.yaml")
    );
    assert!(names.contains(&"02-pods.yaml".to_string()));
    let pods = std::fs::read_to_string(snap.join("02-pods.yaml")).unwrap();
    assert!(pods.contains("pod-template-hash"), "{pods}");
    assert!(!pods.contains("managedFields") && !pods.contains("resourceVersion"));
    assert!(!c.server.requests().iter().any(|r| r.contains("secrets")));

    let live = membrane(&[
        "check",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo/tests.yaml",
    ]);
    let offline = membrane(&[
        "check",
        snap.to_str().unwrap(),
        "examples/seed-demo/tests.yaml",
    ]);
    assert_eq!(live.status.code(), offline.status.code());
    let prefix = format!("{}/", snap.display());
    assert_eq!(
        stdout(&offline).replace(&prefix, "cluster:fake/"),
        stdout(&live),
        "the snapshot's report is the cluster's, file names aside"
    );
    // Stable: a second snapshot of the same cluster is byte-identical.
    let again = dir.path().join("again");
    membrane(&[
        "snapshot",
        "--kubeconfig",
        &c.kc(),
        "-o",
        again.to_str().unwrap(),
    ]);
    for n in &names {
        assert_eq!(
            std::fs::read(snap.join(n)).unwrap(),
            std::fs::read(again.join(n)).unwrap(),
            "{n}"
        );
    }
}

#[test]
fn explain_matrix_lint_and_validate_read_the_cluster() {
    let c = seed_demo_cluster("examples/seed-demo");
    let kc = c.kc();
    // A workload is named as in the manifests, though the cluster only has its hashed pods.
    let o = membrane(&[
        "explain",
        "--kubeconfig",
        &kc,
        "--from",
        "backend/backend",
        "--to",
        "database/redis",
        "--port",
        "6379",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let offline = membrane(&[
        "explain",
        "examples/seed-demo",
        "--from",
        "backend/backend",
        "--to",
        "database/redis",
        "--port",
        "6379",
    ]);
    assert_eq!(
        stdout(&o).lines().next(),
        stdout(&offline).lines().next(),
        "{}",
        stdout(&o)
    );

    let o = membrane(&["matrix", "--kubeconfig", &kc, "--output", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("\"frontend/frontend\""),
        "rows are workloads: {text}"
    );
    assert!(!text.contains("\"frontend/frontend-"), "not pods: {text}");

    let o = membrane(&["lint", "--kubeconfig", &kc]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("MEM004"), "{}", stdout(&o));

    let o = membrane(&["validate", "--kubeconfig", &kc]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("cluster:fake/11-ciliumnetworkpolicies.yaml:"),
        "{}",
        stdout(&o)
    );

    // -n narrows namespaced objects to one namespace.
    let o = membrane(&[
        "matrix",
        "--kubeconfig",
        &kc,
        "-n",
        "database",
        "--output",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"database/redis\""));
    assert!(!stdout(&o).contains("\"frontend/frontend\""));
}

#[test]
fn cluster_errors_are_one_line_and_exit_2() {
    let c = seed_demo_cluster("examples/seed-demo");
    c.server.fault(
        "/apis/cilium.io/v2/ciliumnetworkpolicies",
        Fault::Status(403),
    );
    let o = membrane(&[
        "check",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo/tests.yaml",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(
            "error: the cluster refused to list ciliumnetworkpolicies.cilium.io (403 Forbidden)"
        ),
        "{err}"
    );
    assert!(err.contains("deploy/rbac.yaml"), "{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        kc.path(),
        format!("apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\n"),
    )
    .unwrap();
    let o = membrane(&["lint", "--kubeconfig", kc.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach the cluster at http://127.0.0.1:"),
        "{err}"
    );
}

#[test]
fn a_cluster_without_cilium_is_read_with_a_note() {
    let server = FakeApiServer::start(
        default_served_kinds()
            .into_iter()
            .filter(|k| k.group != "cilium.io")
            .collect(),
    )
    .unwrap();
    let docs = yaml_to_json(
        &std::fs::read_to_string(repo_root().join("examples/seed-demo/02-workloads.yaml")).unwrap(),
    )
    .unwrap();
    // Without Cilium there are no CiliumIdentities or CiliumEndpoints either.
    let objects: Vec<_> = cluster_objects(docs)
        .into_iter()
        .filter(|o| {
            !o["apiVersion"]
                .as_str()
                .unwrap_or("")
                .starts_with("cilium.io/")
        })
        .collect();
    server.apply_all(objects).unwrap();
    let kc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(kc.path(), server.kubeconfig("t")).unwrap();
    let o = membrane(&["matrix", "--kubeconfig", kc.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("note: Cilium is not installed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_unreadable_object_is_named_and_the_rest_analysed() {
    let c = seed_demo_cluster("examples/seed-demo");
    c.server
        .apply(serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "broken", "namespace": "tools"},
            "spec": {"ports": "eighty"}}))
        .unwrap();
    let o = membrane(&[
        "check",
        "--kubeconfig",
        &c.kc(),
        "examples/seed-demo/tests.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("warning: cannot read Service tools/broken: invalid type"),
        "{err}"
    );
    assert!(stdout(&o).contains("11 of 22 expectations hold"));
}

#[test]
fn the_clusters_own_identity_numbers_are_used_and_checked() {
    let c = seed_demo_cluster("examples/seed-demo");
    let args = |source: &[&str]| {
        let mut a = vec!["explain"];
        a.extend_from_slice(source);
        a.extend([
            "--from",
            "backend/backend",
            "--to",
            "database/redis",
            "--port",
            "6379",
        ]);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let kc = c.kc();
    let run = |a: Vec<String>| membrane(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let live = stdout(&run(args(&["--kubeconfig", &kc])));
    // The fixture's CiliumIdentities are numbered from 10,000, unlike membrane's own.
    assert!(
        live.contains("identities: backend/backend 10001, database/redis 10003"),
        "{live}"
    );
    let offline = stdout(&run(args(&["examples/seed-demo"])));
    assert!(
        offline.contains("identities: backend/backend 257, database/redis 259"),
        "{offline}"
    );
    let o = membrane(&[
        "check",
        "--output",
        "json",
        "--kubeconfig",
        &kc,
        "examples/seed-demo/tests.yaml",
    ]);
    assert!(!stdout(&o).contains("identity-mismatch"));

    // A CiliumEndpoint that says the backend pod carries redis's identity: membrane derives
    // another one from the pod's labels, and says so.
    let pods = membrane(&["snapshot", "--kubeconfig", &kc, "-o", "/dev/null/x"]);
    assert_eq!(
        pods.status.code(),
        Some(2),
        "an unwritable directory is an error"
    );
    let cep = c
        .server
        .requests()
        .iter()
        .any(|r| r.starts_with("/apis/cilium.io/v2/ciliumendpoints"));
    assert!(cep);
    let snapshot = tempfile::tempdir().unwrap();
    membrane(&[
        "snapshot",
        "--kubeconfig",
        &kc,
        "-o",
        snapshot.path().to_str().unwrap(),
    ]);
    let ceps = std::fs::read_to_string(snapshot.path().join("08-ciliumendpoints.yaml")).unwrap();
    let backend_pod = ceps
        .lines()
        .find_map(|l| l.trim().strip_prefix("name: backend-"))
        .map(|rest| format!("backend-{rest}"))
        .unwrap();
    c.server
        .apply(
            serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumEndpoint",
            "metadata": {"name": backend_pod, "namespace": "backend"},
            "status": {"identity": {"id": 10003}}}),
        )
        .unwrap();
    let o = membrane(&[
        "check",
        "--output",
        "json",
        "--kubeconfig",
        &kc,
        "examples/seed-demo/tests.yaml",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mismatch = v["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "identity-mismatch")
        .unwrap_or_else(|| panic!("{}", stdout(&o)));
    let message = mismatch["message"].as_str().unwrap();
    assert!(
        message.starts_with(&format!("pod backend/{backend_pod} carries identity 10003 in the cluster, but membrane derives identity 10001")),
        "{message}"
    );
}

#[test]
fn check_watch_follows_the_cluster_and_reports_again_when_an_outcome_changes() {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let c = seed_demo_cluster("examples/seed-demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args([
            "check",
            "--watch",
            "--kubeconfig",
            &c.kc(),
            "examples/seed-demo/tests.yaml",
        ])
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |want: &dyn Fn(&str) -> bool| -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if want(&line) => return Some(line),
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => return None,
            }
        }
        None
    };
    let first = wait_for(&|l: &str| l.ends_with("expectations hold"));
    assert_eq!(first.as_deref(), Some("11 of 22 expectations hold"));

    // Apply the corrected policies to the cluster, as `kubectl apply -f` would.
    let policies = read_manifests(&repo_root().join("examples/seed-demo-fixed/policies")).unwrap();
    for mut doc in policies {
        if doc["metadata"]["namespace"].is_null() && doc["kind"] != "CiliumClusterwideNetworkPolicy"
        {
            doc["metadata"]["namespace"] = "default".into();
        }
        c.server.apply(doc).unwrap();
    }
    let changed = wait_for(&|l: &str| l.starts_with("== the cluster changed"));
    let again = wait_for(&|l: &str| l.ends_with("expectations hold"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(changed.is_some(), "no second report");
    let offline = membrane(&[
        "check",
        "examples/seed-demo",
        "examples/seed-demo-fixed/policies",
    ]);
    let expected = stdout_last_line(&offline);
    assert_eq!(again.as_deref(), Some(expected.as_str()));
    assert_ne!(expected, "11 of 22 expectations hold");
    // The reflectors listed, then watched.
    assert!(
        c.server
            .requests()
            .iter()
            .any(|r| r.contains("ciliumnetworkpolicies?") && r.contains("watch=true"))
    );
}

fn stdout_last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or("").to_string()
}

#[test]
fn check_watch_needs_a_cluster() {
    let o = membrane(&["check", "--watch", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--watch follows a cluster"),
        "{}",
        stderr(&o)
    );
}
