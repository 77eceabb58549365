//! CI report formats: `--output junit` (test, check) and `--output github` (lint, check), and
//! ConnectivityTest `dns:` answers deciding toFQDNs flows in `check`.
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

fn temp_file(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("membrane-ci-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Counts of a tag in a document.
fn count(xml: &str, needle: &str) -> usize {
    xml.matches(needle).count()
}

#[test]
fn check_junit_one_testcase_per_flow() {
    let o = membrane(&["check", "--output", "junit", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(1));
    let xml = stdout(&o);
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites"));
    // 22 expectations, 11 of which do not hold (as `check` says in text).
    assert!(
        xml.contains("<testsuites name=\"membrane\" tests=\"22\" failures=\"11\" skipped=\"0\">")
    );
    assert_eq!(count(&xml, "<testcase "), 22);
    assert_eq!(count(&xml, "<failure "), 11);
    // A failure carries the explanation, escaped: `→` stays, `<`/`&`/quotes do not.
    assert!(xml.contains("<failure message=\"expected deny, got allow\">"));
    assert!(
        xml.contains("ingress: not enforced: no policy selects this endpoint"),
        "{xml}"
    );
    let unescaped = xml
        .lines()
        .filter(|l| !l.trim_start().starts_with('<') && l.replace("</failure>", "").contains('<'))
        .count();
    assert_eq!(unescaped, 0, "{xml}");
    insta::assert_snapshot!("check_seed_demo_junit", xml);
    let o = membrane(&["check", "--output", "junit", "examples/seed-demo-fixed"]);
    assert_eq!(o.status.code(), Some(0));
    let xml = stdout(&o);
    assert!(xml.contains("tests=\"22\" failures=\"0\""));
    assert_eq!(count(&xml, "<failure "), 0);
}

#[test]
fn test_junit_one_suite_per_file() {
    let o = membrane(&[
        "test",
        "--output",
        "junit",
        "tests/conformance/echo-ingress-l7.yaml",
        "tests/conformance/all-ingress-deny.yaml",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let xml = stdout(&o);
    assert_eq!(count(&xml, "<testsuite "), 2);
    assert!(xml.contains("<testsuite name=\"tests/conformance/echo-ingress-l7.yaml\""));
    assert!(xml.contains("failures=\"0\""));
    // `→` in the names, `'` in header values escaped.
    assert!(xml.contains("classname=\"tests/conformance/echo-ingress-l7.yaml\""));
    assert!(!xml.contains("<failure"));

    // A failing flow: its expectation flipped.
    let text = std::fs::read_to_string(repo_root().join("tests/conformance/echo-ingress-l7.yaml"))
        .unwrap()
        .replacen("expect: allow", "expect: deny", 1);
    let (dir, path) = temp_file("flipped", &text);
    let o = membrane(&["test", "--output", "junit", path.to_str().unwrap()]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(1));
    let xml = stdout(&o);
    assert_eq!(count(&xml, "<failure "), 1);
    assert!(xml.contains("<failure message=\"expected deny, got allow\">"));
    // The explanation names the deciding rule, as the text output does.
    assert!(
        xml.contains("CNP cilium-test-1/echo-ingress-l7-http"),
        "{xml}"
    );
}

#[test]
fn lint_github_annotations() {
    let o = membrane(&["lint", "--output", "github", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    insta::assert_snapshot!("lint_seed_github", out);
    for line in out.lines() {
        assert!(
            line.starts_with("::error file=")
                || line.starts_with("::warning file=")
                || line.starts_with("::notice file="),
            "{line}"
        );
        // One command per line: newlines in messages are escaped.
        let (props, message) = line.split_once("::").unwrap().1.split_once("::").unwrap();
        assert!(
            props.contains(",line=") && props.contains(",col="),
            "{line}"
        );
        assert!(!message.contains('\n'));
    }
    assert!(out.contains("title=MEM"));
    assert!(out.contains("%0Ahelp: "));
}

#[test]
fn check_github_annotations_point_at_flows() {
    let o = membrane(&["check", "--output", "github", "examples/seed-demo"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let errors: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("does not hold::"))
        .collect();
    assert_eq!(errors.len(), 11, "{out}");
    assert!(
        errors
            .iter()
            .all(|l| l.starts_with("::error file=examples/seed-demo/tests.yaml,line="))
    );
    // Property values escape `:` and `,`; the message keeps them and escapes newlines.
    assert!(out.contains("title=seed-claims does not hold::"));
    assert!(out.contains("%0A"));
    let o = membrane(&["check", "--output", "github", "examples/seed-demo-fixed"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "");
}

const FQDN: &str = "tests/manifests/fqdn-dns-answers.yaml";

#[test]
fn connectivity_test_dns_answers_decide_fqdn_flows() {
    let o = membrane(&["check", FQDN]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("5 of 5 expectations hold"), "{out}");
    let o = membrane(&[
        "explain",
        FQDN,
        "--from",
        "shop/client",
        "--to",
        "api.example.com",
        "--port",
        "443",
    ]);
    let out = stdout(&o);
    assert!(out.contains("CNP shop/client-to-api"), "{out}");

    // Without the answers the name is unknown, as before.
    let text = std::fs::read_to_string(repo_root().join(FQDN)).unwrap();
    let start = text.find("  dns:\n").unwrap();
    let end = text.find("  flows:").unwrap();
    let without = format!("{}{}", &text[..start], &text[end..]);
    let (dir, path) = temp_file("no-dns", &without);
    let o = membrane(&["check", path.to_str().unwrap()]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("unknown destination `api.example.com`"));
}

#[test]
fn connectivity_test_bad_dns_answers_name_file_line_column() {
    let text = std::fs::read_to_string(repo_root().join(FQDN))
        .unwrap()
        .replace("[192.0.2.10]", "[192.0.2.999]")
        .replace("ttl: 60", "ttl: soon");
    let (dir, path) = temp_file("bad-dns", &text);
    let p = path.to_str().unwrap().to_string();
    let o = membrane(&["check", &p]);
    let lint = membrane(&["lint", &p]);
    std::fs::remove_dir_all(dir).ok();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "{p}:30:23: error[connectivity-test]: `192.0.2.999` is not an IP address (the answer for `api.example.com`)"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{p}:31:71: error[connectivity-test]: `ttl` is a number of seconds"
        )),
        "{err}"
    );
    assert_eq!(lint.status.code(), Some(1));
    assert!(stdout(&lint).contains(":30:23: error[MEM001]"));
}
