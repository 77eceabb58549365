//! `membrane lint`: one fixture per rule (`tests/lint/MEM0xx-name/`), a clean fixture, every
//! mistake of the seed document (docs/semantics.md §6) on `examples/seed-demo`, exit codes, and
//! snapshots of the three output formats on the seed demo.
//!
//! Fixture expectations are trailing comments on the line a finding must point at:
//! `# expect: MEM005` (a finding of that rule on this line) and `# expect-not: MEM005` (none);
//! a directory's own rule must not fire on any other line (see `tests/lint/README.md`).
//!
//! Snapshots: `INSTA_UPDATE=always cargo test -p membrane --test lint` writes them,
//! `INSTA_UPDATE=no cargo test -p membrane --test lint` checks them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::lint::{Finding, RULES, lint};
use membrane_cluster::manifests::{Loaded, SourceFile, load};
use membrane_policy::Severity;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// YAML files under a directory of the repository, sorted, named relative to the root (as
/// the CLI names them when run from the root).
fn yaml_files(rel_dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(rel_dir)];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(repo_root().join(&dir)).unwrap() {
            let name = dir.join(e.unwrap().file_name());
            let full = repo_root().join(&name);
            if full.is_dir() {
                stack.push(name);
            } else if matches!(
                full.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(name.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

/// Loads and lints a directory in-process.
fn lint_dir(rel_dir: &str) -> (Loaded, Vec<Finding>) {
    let files = yaml_files(rel_dir)
        .into_iter()
        .map(|name| SourceFile {
            text: std::fs::read_to_string(repo_root().join(&name)).unwrap(),
            name,
        })
        .collect();
    let loaded = load(files);
    let findings = lint(&loaded);
    (loaded, findings)
}

fn describe(loaded: &Loaded, findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            let (line, col) = f.span.map_or((0, 0), |s| (s.line, s.col));
            format!(
                "  {}:{line}:{col}: {}[{}]: {}",
                loaded.file_name(f.file),
                f.severity,
                f.rule,
                f.message
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether a finding of `rule` points at `file:line`.
fn has(loaded: &Loaded, findings: &[Finding], rule: &str, file: &str, line: u32) -> bool {
    findings.iter().any(|f| {
        f.rule == rule && loaded.file_name(f.file) == file && f.span.is_some_and(|s| s.line == line)
    })
}

/// `(file, line, rule, expected)` for every `# expect:` / `# expect-not:` comment.
fn expectations(files: &[String]) -> Vec<(String, u32, String, bool)> {
    let mut out = Vec::new();
    for name in files {
        let text = std::fs::read_to_string(repo_root().join(name)).unwrap();
        for (i, line) in text.lines().enumerate() {
            for (marker, expected) in [("# expect: ", true), ("# expect-not: ", false)] {
                if let Some((_, ids)) = line.split_once(marker) {
                    for id in ids.split([',', ' ']).filter(|s| !s.is_empty()) {
                        out.push((name.clone(), i as u32 + 1, id.to_string(), expected));
                    }
                }
            }
        }
    }
    out
}

fn check_fixture(dir_name: &str) {
    let rel = format!("tests/lint/{dir_name}");
    let rule = dir_name.split('-').next().unwrap();
    assert!(
        RULES.iter().any(|r| r.id == rule),
        "{dir_name}: no rule {rule}"
    );
    let files = yaml_files(&rel);
    assert!(!files.is_empty(), "{rel}: no fixture files");
    let (loaded, findings) = lint_dir(&rel);
    let all = describe(&loaded, &findings);
    let exp = expectations(&files);
    assert!(
        exp.iter().any(|(_, _, id, yes)| *yes && id == rule),
        "{rel}: the fixture expects nothing of {rule}"
    );
    for (file, line, id, expected) in &exp {
        let found = has(&loaded, &findings, id, file, *line);
        if *expected {
            assert!(found, "{file}:{line}: expected {id}; findings:\n{all}");
        } else {
            assert!(!found, "{file}:{line}: unexpected {id}; findings:\n{all}");
        }
    }
    // The fixture's own rule fires only where expected.
    for f in findings.iter().filter(|f| f.rule == rule) {
        let file = loaded.file_name(f.file);
        let line = f.span.map_or(0, |s| s.line);
        assert!(
            exp.iter()
                .any(|(ef, el, id, yes)| *yes && id == rule && ef == file && *el == line),
            "{file}:{line}: {rule} fired where the fixture does not expect it: {}\nfindings:\n{all}",
            f.message
        );
    }
    // Every finding is complete: a rule of the table, a position, a message and help.
    for f in &findings {
        let r = RULES.iter().find(|r| r.id == f.rule).unwrap();
        if f.rule != "MEM023" {
            assert_eq!(f.severity, r.severity, "{}: severity", f.rule);
        }
        assert!(
            f.span.is_some_and(|s| s.line > 0),
            "{}: no position",
            f.rule
        );
        assert!(!f.message.is_empty() && f.help.as_deref().is_some_and(|h| !h.is_empty()));
    }
}

macro_rules! fixtures {
    ($($test:ident => $dir:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_fixture($dir);
            }
        )*

        #[test]
        fn every_rule_has_a_fixture() {
            let dirs: BTreeSet<&str> = [$($dir),*].into_iter().collect();
            for r in RULES {
                let dir = format!("{}-{}", r.id, r.name);
                assert!(dirs.contains(dir.as_str()), "no fixture test for {dir}");
                assert!(repo_root().join("tests/lint").join(&dir).is_dir(), "tests/lint/{dir} is missing");
            }
        }
    };
}

fixtures! {
    mem001_policy_rejected => "MEM001-policy-rejected",
    mem002_empty_rule_list => "MEM002-empty-rule-list",
    mem003_namespace_missing => "MEM003-namespace-missing",
    mem004_default_deny_denies_nothing => "MEM004-default-deny-denies-nothing",
    mem005_http_regex_anchored => "MEM005-http-regex-anchored",
    mem006_egress_deny_without_dns => "MEM006-egress-deny-without-dns",
    mem007_fqdn_without_dns_rule => "MEM007-fqdn-without-dns-rule",
    mem008_dns_udp_only => "MEM008-dns-udp-only",
    mem009_port_not_container_port => "MEM009-port-not-container-port",
    mem010_cidr_selects_cluster => "MEM010-cidr-selects-cluster",
    mem011_notin_namespace_admits_reserved => "MEM011-notin-namespace-admits-reserved",
    mem012_namespace_key_in_endpoint_selector => "MEM012-namespace-key-in-endpoint-selector",
    mem013_named_port_unresolved => "MEM013-named-port-unresolved",
    mem014_selector_matches_nothing => "MEM014-selector-matches-nothing",
    mem015_shadowed_rule => "MEM015-shadowed-rule",
    mem016_too_many_ports => "MEM016-too-many-ports",
    mem017_kube_dns_peer_without_namespace => "MEM017-kube-dns-peer-without-namespace",
    mem018_dns_double_star => "MEM018-dns-double-star",
    mem019_duplicate_object => "MEM019-duplicate-object",
    mem020_implicit_default_deny => "MEM020-implicit-default-deny",
    mem021_gateway_entity => "MEM021-gateway-entity",
    mem022_l7_second_proxy_pass => "MEM022-l7-second-proxy-pass",
    mem023_manifest_warning => "MEM023-manifest-warning",
}

#[test]
fn clean_fixture_has_no_findings() {
    let (loaded, findings) = lint_dir("tests/lint/clean");
    assert!(
        findings.is_empty(),
        "tests/lint/clean:\n{}",
        describe(&loaded, &findings)
    );
}

#[test]
fn rule_table_is_documented() {
    let src =
        std::fs::read_to_string(repo_root().join("crates/membrane-cluster/src/lint.rs")).unwrap();
    let mut ids = BTreeSet::new();
    for r in RULES {
        assert!(ids.insert(r.id), "duplicate rule id {}", r.id);
        let row = format!("//! | {} | {} | {} |", r.id, r.name, r.severity);
        assert!(src.contains(&row), "the table in lint.rs lacks `{row}`");
    }
    let numbers: Vec<u32> = RULES.iter().map(|r| r.id[3..].parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "rule ids are consecutive and in order"
    );
}

/// docs/semantics.md §6: every point about the seed document's policies is reported, by rule and
/// position, on `examples/seed-demo` (the policies exactly as the blog writes them).
#[test]
fn seed_demo_flags_every_mistake_of_section_6() {
    let (loaded, findings) = lint_dir("examples/seed-demo");
    let all = describe(&loaded, &findings);
    let p = |name: &str| format!("examples/seed-demo/policies/{name}.yaml");
    let expect = |rule: &str, file: &str, line: u32, why: &str| {
        assert!(
            has(&loaded, &findings, rule, file, line),
            "§6 {why}: expected {rule} at {file}:{line}; findings:\n{all}"
        );
    };
    let message = |rule: &str, file: &str, line: u32| -> String {
        findings
            .iter()
            .find(|f| {
                f.rule == rule
                    && loaded.file_name(f.file) == file
                    && f.span.is_some_and(|s| s.line == line)
            })
            .map(|f| f.message.clone())
            .unwrap_or_default()
    };
    let copies = ["backend", "database", "frontend", "monitor"];

    // 1. No namespace: every `default-deny` copy, and the allow policies without one, land
    //    in `default`, where they select nothing.
    for c in copies {
        expect("MEM003", &p(c), 5, "1 (default-deny has no namespace)");
        expect("MEM004", &p(c), 5, "1 (a default deny that denies nothing)");
        assert!(
            message("MEM004", &p(c), 5).contains("namespace `default`"),
            "§6 1: MEM004 says where the policy lands"
        );
    }
    for c in ["database", "frontend", "monitor"] {
        expect("MEM003", &p(c), 14, "1 (allow policy without namespace)");
        expect(
            "MEM014",
            &p(c),
            17,
            "1 (its endpointSelector selects nothing in `default`)",
        );
        // The four copies are one object: only the last applied survives.
        expect("MEM019", &p(c), 5, "1 (the same default-deny four times)");
    }

    // 2. `ingress: []` and `egress: []`: rejected by the agent (Cilium's message), and the
    //    empty lists themselves.
    for c in copies {
        expect("MEM001", &p(c), 7, "2 (the agent rejects the policy)");
        assert!(
            message("MEM001", &p(c), 7).contains(
                "rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny"
            ),
            "§6 2: MEM001 carries Cilium's message"
        );
        expect("MEM002", &p(c), 8, "2 (`ingress: []` / `egress: []`)");
    }

    // 3. The intended egress default deny would break DNS: nothing allows kube-dns.
    for c in copies {
        expect("MEM006", &p(c), 9, "3 (egress default deny without DNS)");
    }

    // 4. `fromEntities: [ingress]` is right for the Gateway (info), and names it.
    let backend = p("backend");
    expect("MEM021", &backend, 23, "4 (fromEntities: [ingress])");
    let gateway = message("MEM021", &backend, 23);
    assert!(
        gateway.contains("Gateway `gateway/cilium-gateway`"),
        "§6 4: {gateway}"
    );

    // 5. The allow policy alone puts the backend into ingress default deny.
    expect("MEM020", &backend, 21, "5 (implicit ingress default deny)");
    assert!(message("MEM020", &backend, 21).contains("`backend/backend`"));

    // 6. Port 3000 is the container port and the Service's targetPort: no port finding, and
    //    the gateway note says so.
    assert!(
        !findings
            .iter()
            .any(|f| f.rule == "MEM009" && loaded.file_name(f.file) == backend),
        "§6 6: port 3000 is right; findings:\n{all}"
    );
    assert!(
        gateway.contains("targetPort (3000), which this rule allows"),
        "§6 6: {gateway}"
    );

    // 7. `/api` is anchored: it looks like a prefix (the HTTPRoute forwards `/api/...`, other
    //    rules list paths under it); exact paths such as `/api/register` are fine.
    expect(
        "MEM005",
        &backend,
        32,
        "7 (path `/api` only matches `/api`)",
    );
    for line in [34, 36, 38, 40, 42, 44, 46] {
        assert!(
            !has(&loaded, &findings, "MEM005", &backend, line),
            "§6 7: line {line} is an exact path on purpose"
        );
    }

    // 8. L7 rules at the backend: a second proxy pass, 403 rather than drops.
    expect("MEM022", &backend, 30, "8 (second proxy pass)");

    // Nothing says `fromEntities: [ingress]` is wrong.
    assert!(
        !findings.iter().any(|f| f.severity >= Severity::Warning
            && loaded.file_name(f.file) == backend
            && f.span.is_some_and(|s| (21..=46).contains(&s.line))
            && f.rule != "MEM005"),
        "§6 4-6: allow-gateway-to-backend has no other warning; findings:\n{all}"
    );
}

/// Runs `membrane ARGS` from the repository root. Returns the exit code, stdout, stderr.
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

#[test]
fn exit_codes() {
    let (code, out, _) = membrane(&["lint", "examples/seed-demo"]);
    assert_eq!(code, Some(1), "warnings and errors: exit 1\n{out}");
    let (code, out, _) = membrane(&["lint", "tests/lint/clean"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("no findings in 1 file\n"), "{out}");
    // Info findings alone do not fail.
    let (code, out, _) = membrane(&["lint", "tests/lint/MEM021-gateway-entity"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("info[MEM021]"), "{out}");
    // A warning alone fails.
    let (code, _, _) = membrane(&["lint", "tests/lint/MEM018-dns-double-star"]);
    assert_eq!(code, Some(1));
    // Unusable input.
    let (code, _, err) = membrane(&["lint", "tests/lint/does-not-exist"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no such file or directory"), "{err}");
    let (code, _, err) = membrane(&["lint", "crates/membrane-cli/src"]);
    assert_eq!(code, Some(2), "a directory without YAML: {err}");
    let broken = std::env::temp_dir().join(format!("membrane-lint-{}.yaml", std::process::id()));
    std::fs::write(&broken, "kind: CiliumNetworkPolicy\nspec: [unclosed\n").unwrap();
    let (code, _, err) = membrane(&["lint", broken.to_str().unwrap()]);
    let _ = std::fs::remove_file(&broken);
    assert_eq!(code, Some(2), "invalid YAML: {err}");
    assert!(err.contains("invalid YAML"), "{err}");
    // Every format exits the same way.
    for format in ["json", "sarif"] {
        let (code, _, _) = membrane(&["lint", "examples/seed-demo", "--output", format]);
        assert_eq!(code, Some(1), "--output {format}");
        let (code, _, _) = membrane(&["lint", "tests/lint/clean", "--output", format]);
        assert_eq!(code, Some(0), "--output {format}");
    }
}

#[test]
fn json_and_sarif_are_well_formed() {
    let (_, out, _) = membrane(&["lint", "examples/seed-demo", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(
        v["summary"]["findings"].as_u64(),
        Some(findings.len() as u64)
    );
    for f in findings {
        for key in [
            "rule", "name", "severity", "file", "line", "column", "message", "help",
        ] {
            assert!(!f[key].is_null(), "{key} in {f}");
        }
    }

    let (_, out, _) = membrane(&["lint", "examples/seed-demo", "--output", "sarif"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "2.1.0");
    let run = &v["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), RULES.len());
    for (r, expected) in rules.iter().zip(RULES) {
        assert_eq!(r["id"], expected.id);
        assert!(r["shortDescription"]["text"].is_string());
        assert!(r["help"]["text"].is_string());
    }
    let results = run["results"].as_array().unwrap();
    assert_eq!(results.len(), findings.len());
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], id);
        assert!(matches!(
            r["level"].as_str(),
            Some("error" | "warning" | "note")
        ));
        assert!(r["message"]["text"].is_string());
        let loc = &r["locations"][0]["physicalLocation"];
        let uri = loc["artifactLocation"]["uri"].as_str().unwrap();
        assert!(
            uri.starts_with("examples/seed-demo/"),
            "relative uri: {uri}"
        );
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(loc["region"]["startColumn"].as_u64().unwrap() >= 1);
    }
}

fn seed(format: &str) -> String {
    let (code, out, err) = membrane(&["lint", "examples/seed-demo", "--output", format]);
    assert_eq!(code, Some(1), "lint --output {format}: {err}");
    assert!(err.is_empty(), "{err}");
    out
}

#[test]
fn seed_text() {
    insta::assert_snapshot!("seed_text", seed("text"));
}

#[test]
fn seed_json() {
    insta::assert_snapshot!("seed_json", seed("json"));
}

#[test]
fn seed_sarif() {
    insta::assert_snapshot!("seed_sarif", seed("sarif"));
}
