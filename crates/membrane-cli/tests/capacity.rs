//! `membrane capacity`: the real binary on the seed demo (insta snapshot of the text), on
//! every conformance file, and on scenarios whose policy-map entries are counted by hand
//! from Cilium 1.17's map semantics (see docs/capacity.md), one of them over 90 % of a
//! small `--policy-map-max`.
//!
//! Snapshots: `INSTA_UPDATE=always cargo test -p membrane --test capacity` writes them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn membrane(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .current_dir(repo_root())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the membrane binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One JSON object per line, one line per file.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
        .collect()
}

fn entries(report: &Value, endpoint: &str) -> u64 {
    report["entries"][endpoint]
        .as_u64()
        .unwrap_or_else(|| panic!("no endpoint {endpoint} in {report}"))
}

fn endpoint<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name} in {report}"))
}

/// Writes a scenario into a fresh directory under the target dir; returns its path.
fn scenario(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capacity");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

const CLUSTER: &str = "
cluster: {name: default}
namespaces:
  - {name: app, labels: {kubernetes.io/metadata.name: app}}
nodes:
  - {name: node1, ip: 172.18.0.2, podCIDR: 10.244.1.0/24, cilium: true, labels: {kubernetes.io/hostname: node1}}
endpoints:
  - {name: server, namespace: app, node: node1, ip: 10.244.1.10, labels: {app: server}, ports: [{name: web, port: 8080, protocol: TCP}]}
  - {name: client, namespace: app, node: node1, ip: 10.244.1.11, labels: {app: client}}
flows: []
";

/// server ingress, by hand (Cilium keys are per identity, protocol, port prefix):
/// - client × TCP 1000-1999: 7 masked keys (1000/13, 1008/12, 1024/7, 1536/8, 1792/9,
///   1920/10, 1984/12);
/// - client × TCP/8080 (the named port `web`, resolved on the server): 1;
/// - any × TCP/80 with an HTTP rule (a redirect: still one key): 1;
/// - the deny client × TCP/1500: 1 (it deletes no allow: the allows covering it are broader);
/// - the local host (allow-localhost): 1.
///
/// = 11; egress is not enforced: the allow-all key, 1. server: 12. client: ingress not
/// enforced (allow-all + local host) 2, egress 1: 3.
fn port_range_scenario() -> PathBuf {
    let text = format!(
        "name: capacity-port-range\n{CLUSTER}policies: |
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {{name: server, namespace: app}}
  spec:
    endpointSelector: {{matchLabels: {{app: server}}}}
    ingress:
    - fromEndpoints: [{{matchLabels: {{app: client}}}}]
      toPorts:
      - ports: [{{port: '1000', endPort: 1999, protocol: TCP}}, {{port: web, protocol: TCP}}]
    - toPorts:
      - ports: [{{port: '80', protocol: TCP}}]
        rules: {{http: [{{method: GET}}]}}
    ingressDeny:
    - fromEndpoints: [{{matchLabels: {{app: client}}}}]
      toPorts: [{{ports: [{{port: '1500', protocol: TCP}}]}}]
"
    );
    scenario("port-range", &text)
}

#[test]
fn port_ranges_named_ports_l7_and_deny_counted_by_hand() {
    let path = port_range_scenario();
    let (code, stdout, stderr) =
        membrane(&["capacity", path.to_str().unwrap(), "--output", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = &json_lines(&stdout)[0];
    assert_eq!(entries(r, "server"), 12, "{r}");
    assert_eq!(endpoint(r, "server")["ingress"], 11);
    assert_eq!(endpoint(r, "server")["egress"], 1);
    assert_eq!(entries(r, "client"), 3, "{r}");
    assert_eq!(r["max"], 16384);
    assert_eq!(r["identities"]["cluster"]["count"], 2);
    assert_eq!(r["identities"]["cluster"]["limit"], 65280);
}

#[test]
fn over_ninety_percent_of_a_small_map_warns_and_exits_1() {
    let path = port_range_scenario();
    let p = path.to_str().unwrap();
    // 12 of 13: 92.3 %.
    let (code, stdout, _) = membrane(&["capacity", p, "--policy-map-max", "13"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("warning: ") && stdout.contains("server uses 92.3% of its policy map"),
        "{stdout}"
    );
    // 12 of 12: full, Cilium would fail to regenerate the endpoint.
    let (code, stdout, _) = membrane(&["capacity", p, "--policy-map-max", "12"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("error: ") && stdout.contains("fail to regenerate"),
        "{stdout}"
    );
    // 12 of 14: 85.7 %, fine.
    let (code, stdout, _) = membrane(&["capacity", p, "--policy-map-max", "14"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
    // Sorted by fullness: server first.
    let first = stdout.lines().nth(2).unwrap();
    assert!(first.trim_start().starts_with("server"), "{stdout}");
    let (code, stdout, _) = membrane(&["capacity", p, "--policy-map-max", "13", "-o", "json"]);
    assert_eq!(code, Some(1));
    let r = &json_lines(&stdout)[0];
    assert_eq!(endpoint(r, "server")["status"], "warning");
    assert_eq!(endpoint(r, "client")["status"], "ok");
}

/// server ingress: allow any × TCP/80 and TCP/443; deny everything from client. Cilium
/// adds client × TCP/80 and client × TCP/443 denies (the L4-only allows would win the
/// datapath's longest-prefix choice over the L3 deny): 2 + 1 + 2, plus the local host: 6.
/// server egress: toCIDRSet 10.0.0.0/8 except 10.1.0.0/16 selects the 10/8 identity only
/// (10.1.2.0/24 lies in the exception), toCIDR 10.1.2.0/24 on UDP/53 its own: 2.
/// Node-local identities: 10/8, 10.1/16, 10.1.2.0/24: 3.
#[test]
fn deny_l3l4_keys_and_cidr_prefixes_counted_by_hand() {
    let text = format!(
        "name: capacity-deny-cidr\n{CLUSTER}policies: |
  apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {{name: server, namespace: app}}
  spec:
    endpointSelector: {{matchLabels: {{app: server}}}}
    ingress:
    - toPorts:
      - ports: [{{port: '80', protocol: TCP}}, {{port: '443', protocol: TCP}}]
    ingressDeny:
    - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    egress:
    - toCIDRSet: [{{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    - toCIDR: [10.1.2.0/24]
      toPorts: [{{ports: [{{port: '53', protocol: UDP}}]}}]
"
    );
    let path = scenario("deny-cidr", &text);
    let (code, stdout, stderr) =
        membrane(&["capacity", path.to_str().unwrap(), "--output", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = &json_lines(&stdout)[0];
    assert_eq!(endpoint(r, "server")["ingress"], 6, "{r}");
    assert_eq!(endpoint(r, "server")["egress"], 2, "{r}");
    assert_eq!(r["identities"]["local"]["count"], 3, "{r}");
}

#[test]
fn seed_demo_text() {
    let (code, stdout, stderr) = membrane(&["capacity", "examples/seed-demo"]);
    assert_eq!(code, Some(0), "{stderr}");
    insta::assert_snapshot!("seed_text", stdout);
}

#[test]
fn seed_demo_json_names_workloads() {
    let (code, stdout, stderr) = membrane(&["capacity", "examples/seed-demo", "-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let reports = json_lines(&stdout);
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(r["file"], "examples/seed-demo");
    // backend: ingress from the Gateway (the `ingress` entity) on TCP/3000 with HTTP rules
    // (one redirect key) and the local host: 2; egress not enforced: 1.
    assert_eq!(entries(r, "backend/backend"), 3, "{r}");
    assert_eq!(endpoint(r, "backend/backend")["ingress"], 2);
    // Workloads are `namespace/name`; the API server has no Cilium endpoint, so no map.
    for e in r["endpoints"].as_array().unwrap() {
        assert!(e["endpoint"].as_str().unwrap().contains('/'), "{e}");
    }
}

/// Every conformance file: one report each, exit 0 (all are far from the limit); and two
/// counted by hand.
#[test]
fn conformance_files() {
    let dir = repo_root().join("tests/conformance");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            format!(
                "tests/conformance/{}",
                p.file_name().unwrap().to_string_lossy()
            )
        })
        .collect();
    files.sort();
    let mut args = vec!["capacity", "--output", "json"];
    args.extend(files.iter().map(String::as_str));
    let (code, stdout, stderr) = membrane(&args);
    assert_eq!(code, Some(0), "{stderr}");
    let reports = json_lines(&stdout);
    assert_eq!(reports.len(), files.len());
    let find = |name: &str| {
        reports
            .iter()
            .find(|r| r["file"] == format!("tests/conformance/{name}.yaml"))
            .unwrap()
    };
    // all-ingress-deny: ingress enforced with nothing allowed, so only the local host's
    // key; egress not enforced: allow-all. 2.
    assert_eq!(entries(find("all-ingress-deny"), "client"), 2);
    // client-egress-to-cidr-deny, client egress: the 5 pods of cilium-test-1 (toEndpoints,
    // namespaced), world and the four prefix identities (1.0.0.0/8, 1.1.1.1/32,
    // 2606:4700:4700::/96, ::1111/128) from toCIDR 0.0.0.0/0 and ::/0, two of them denied
    // (same keys): 10. Ingress not enforced: 2. Total 12.
    let r = find("client-egress-to-cidr-deny");
    assert_eq!(endpoint(r, "client")["egress"], 10, "{r}");
    assert_eq!(entries(r, "client"), 12);
    assert_eq!(r["identities"]["local"]["count"], 4);
}

#[test]
fn unusable_input_exits_2() {
    let (code, _, stderr) = membrane(&["capacity", "no/such/file.yaml"]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, _, _) = membrane(&["capacity", "examples/seed-demo", "--policy-map-max", "0"]);
    assert_eq!(code, Some(2));
    let bad = scenario("bad-yaml", "a: [\n");
    let (code, stdout, stderr) = membrane(&["capacity", bad.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stderr.contains("error[yaml]"), "{stderr}");
}

/// `toEntities: all` is Cilium's wildcard selector: one key with identity 0, not one per
/// identity. server egress: any × TCP/80: 1. server ingress: `fromEntities: all` (any ×
/// any) and the local host: 2.
#[test]
fn entity_all_is_the_wildcard_identity() {
    let text = format!(
        "name: capacity-entity-all\n{CLUSTER}policies: |
  apiVersion: cilium.io/v2
  kind: CiliumClusterwideNetworkPolicy
  metadata: {{name: server}}
  spec:
    endpointSelector: {{matchLabels: {{app: server}}}}
    ingress:
    - fromEntities: [all]
    egress:
    - toEntities: [all]
      toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]
"
    );
    let path = scenario("entity-all", &text);
    let (code, stdout, stderr) = membrane(&["capacity", path.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let r = &json_lines(&stdout)[0];
    assert_eq!(endpoint(r, "server")["egress"], 1, "{r}");
    assert_eq!(endpoint(r, "server")["ingress"], 2, "{r}");
}
