//! The malformed-manifest corpus (`tests/malformed/` at the repository root).
//!
//! Every file there is one broken manifest. Its leading comment block states what the engine
//! must report:
//!
//! ```yaml
//! # expect-line: 12
//! # expect-message: rule must have at least one of Ingress, IngressDeny, Egress, EgressDeny
//! # expect-help: did you mean `toPorts`?       (optional)
//! # expect-absent: port must be specified      (optional, repeatable)
//! # options: l7_proxy=false                    (optional agent flags, comma separated)
//! ```
//!
//! A case the engine gets wrong stays in the corpus with a `# known-bug: <what is wrong>`
//! line, written as the *last* line of the file so that deleting it once the engine is fixed
//! shifts no line number. Such files are counted and must not panic, but their expectations
//! are not checked (the test prints a note when one starts to pass).
//!
//! - `expect-message` is a substring of the message of some *error* diagnostic whose span
//!   starts on `expect-line`; `expect-help` a substring of that same diagnostic's help.
//! - `expect-absent` is a substring that no error diagnostic of the file may contain (it
//!   guards against misleading follow-up errors).
//! - No input may panic the engine, known bug or not.
//!
//! The `membrane validate` binary is also run on a few of these files (exit 1, and
//! `file:line:col: error[code]: message` on stdout) and on `tests/valid/ok-policy.yaml`
//! (exit 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_policy::diag::Diagnostic;
use membrane_policy::model::FileId;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::Embedding;
use membrane_policy::{Options, Severity};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIN_CASES: usize = 45;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus_dir() -> PathBuf {
    repo_root().join("tests/malformed")
}

/// The corpus files, sorted by name.
fn corpus_files() -> Vec<PathBuf> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[derive(Debug, Default)]
struct Expectation {
    line: u32,
    message: String,
    help: Option<String>,
    absent: Vec<String>,
    known_bug: Option<String>,
    options: Options,
}

fn set_option(options: &mut Options, setting: &str) -> Result<(), String> {
    let (key, value) = setting
        .split_once('=')
        .ok_or_else(|| format!("option `{setting}` is not `name=true|false`"))?;
    let value: bool = value
        .trim()
        .parse()
        .map_err(|_| format!("option `{setting}`: the value must be true or false"))?;
    let field = match key.trim() {
        "l7_proxy" => &mut options.l7_proxy,
        "icmp_rules" => &mut options.icmp_rules,
        "node_selector_labels" => &mut options.node_selector_labels,
        "host_firewall" => &mut options.host_firewall,
        "allow_localhost" => &mut options.allow_localhost,
        "non_default_deny_policies" => &mut options.non_default_deny_policies,
        "cidr_match_nodes" => &mut options.cidr_match_nodes,
        "default_local_cluster" => &mut options.default_local_cluster,
        other => return Err(format!("unknown option `{other}`")),
    };
    *field = value;
    Ok(())
}

/// Reads the `# key: value` lines of the leading comment block, and a `# known-bug:` line
/// anywhere in the file.
fn parse_expectation(text: &str) -> Result<Expectation, String> {
    let mut e = Expectation {
        known_bug: text
            .lines()
            .find_map(|l| l.strip_prefix("# known-bug:"))
            .map(|b| b.trim().to_string()),
        ..Expectation::default()
    };
    let (mut line, mut message) = (None, None);
    for l in text.lines() {
        let Some(comment) = l.strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = comment.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "expect-line" => {
                line = Some(
                    value
                        .parse::<u32>()
                        .map_err(|_| format!("expect-line `{value}` is not a line number"))?,
                )
            }
            "expect-message" => message = Some(value.to_string()),
            "expect-help" => e.help = Some(value.to_string()),
            "expect-absent" => e.absent.push(value.to_string()),
            "options" => {
                for setting in value.split(',').filter(|s| !s.trim().is_empty()) {
                    set_option(&mut e.options, setting)?;
                }
            }
            k if k.starts_with("expect") => return Err(format!("unknown directive `{k}`")),
            _ => {}
        }
    }
    e.line = line.ok_or("no `# expect-line:` in the leading comments")?;
    e.message = message.ok_or("no `# expect-message:` in the leading comments")?;
    if e.message.is_empty() {
        return Err("`# expect-message:` is empty".into());
    }
    Ok(e)
}

/// Parses and validates one file as `membrane validate` does, catching panics.
fn run_engine(text: &str, options: &Options) -> Result<Vec<Diagnostic>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        let (resources, mut diags) = parse_resources(text, Embedding::default());
        let resources: Vec<(FileId, _)> = resources.into_iter().map(|r| (0, r)).collect();
        let set = PolicySet::build(&resources, options, &Secrets::new());
        diags.extend(set.diagnostics().map(|(_, d)| d.clone()));
        diags
    }))
    .map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "(non-string panic payload)".into());
        format!("the engine panicked: {msg}")
    })
}

fn matches(d: &Diagnostic, e: &Expectation) -> bool {
    d.severity == Severity::Error
        && d.span.is_some_and(|s| s.line == e.line)
        && d.message.contains(&e.message)
        && e.help
            .as_ref()
            .is_none_or(|h| d.help.as_ref().is_some_and(|dh| dh.contains(h)))
}

fn describe(diags: &[Diagnostic]) -> String {
    if diags.is_empty() {
        return "      (no diagnostics)\n".into();
    }
    diags
        .iter()
        .map(|d| {
            let at = d
                .span
                .map_or("-:-".to_string(), |s| format!("{}:{}", s.line, s.col));
            let help = d
                .help
                .as_ref()
                .map(|h| format!("\n          help: {h}"))
                .unwrap_or_default();
            format!(
                "      {at} {}[{}]: {}{help}\n",
                d.severity, d.code, d.message
            )
        })
        .collect()
}

/// What is wrong with the diagnostics of a file, if anything: a position outside the file,
/// the expected error missing, or an `expect-absent` error present.
fn problem(text: &str, e: &Expectation, diags: &[Diagnostic]) -> Option<String> {
    // Every position must be inside the file (the line after the last one is the end).
    let last_line = text.lines().count() as u32 + 1;
    if let Some((d, s)) = diags
        .iter()
        .filter_map(|d| d.span.map(|s| (d, s)))
        .find(|(_, s)| s.line == 0 || s.col == 0 || s.line > last_line)
    {
        return Some(format!(
            "diagnostic `{}` has position {}:{}, outside the file ({} lines); got:\n{}",
            d.message,
            s.line,
            s.col,
            last_line - 1,
            describe(diags)
        ));
    }
    if !diags.iter().any(|d| matches(d, e)) {
        let help = e
            .help
            .as_ref()
            .map(|h| format!(" with help containing `{h}`"))
            .unwrap_or_default();
        return Some(format!(
            "expected an error on line {} containing `{}`{help}; got:\n{}",
            e.line,
            e.message,
            describe(diags)
        ));
    }
    for a in &e.absent {
        if let Some(d) = diags
            .iter()
            .find(|d| d.severity == Severity::Error && d.message.contains(a.as_str()))
        {
            return Some(format!(
                "expected no error containing `{a}`, got `{}`; all diagnostics:\n{}",
                d.message,
                describe(diags)
            ));
        }
    }
    None
}

/// Checks one corpus file; `Ok(None)` when it passes, `Ok(Some(bug))` when it is skipped as
/// a known bug (only panics are checked then), `Err` with the reason when it fails.
fn check_file(path: &Path) -> Result<Option<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let e = parse_expectation(&text)?;
    let diags = run_engine(&text, &e.options)?;
    let problem = problem(&text, &e, &diags);
    if let Some(bug) = e.known_bug {
        if problem.is_none() {
            eprintln!(
                "note: {} now passes: remove its `# known-bug:` marker",
                file_name(path)
            );
        }
        return Ok(Some(bug));
    }
    problem.map_or(Ok(None), Err)
}

#[test]
fn every_malformed_manifest_gets_its_diagnostic() {
    let files = corpus_files();
    assert!(
        files.len() >= MIN_CASES,
        "the corpus has {} files, expected at least {MIN_CASES}",
        files.len()
    );
    let mut failures = Vec::new();
    let mut known_bugs = Vec::new();
    for path in &files {
        match check_file(path) {
            Ok(None) => {}
            Ok(Some(bug)) => known_bugs.push(format!("{}: {bug}", file_name(path))),
            Err(why) => failures.push(format!("{}: {why}", file_name(path))),
        }
    }
    // Straight to the stderr handle (the harness captures `eprintln!`): skips are seen.
    use std::io::Write as _;
    for b in &known_bugs {
        let _ = writeln!(std::io::stderr(), "SKIPPED (known bug) {b}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "{} files: {} passed, {} failed, {} skipped as known bugs",
        files.len(),
        files.len() - failures.len() - known_bugs.len(),
        failures.len(),
        known_bugs.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} malformed manifests failed:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn corpus_expectations_are_well_formed() {
    let mut lines_seen = std::collections::BTreeMap::new();
    for path in corpus_files() {
        let name = file_name(&path);
        // `NN-short-name.yaml`: a number, a dash, lower-case words.
        let (num, rest) = name
            .split_once('-')
            .unwrap_or_else(|| panic!("{name}: not named NN-short-name.yaml"));
        assert!(
            num.chars().all(|c| c.is_ascii_digit()) && !rest.is_empty(),
            "{name}: not named NN-short-name.yaml"
        );
        assert!(
            lines_seen.insert(num.to_string(), name.clone()).is_none(),
            "{name}: number {num} is used twice"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let e = parse_expectation(&text).unwrap_or_else(|why| panic!("{name}: {why}"));
        let n = text.lines().count() as u32;
        assert!(
            e.line >= 1 && e.line <= n + 1,
            "{name}: expect-line {} is outside the file ({n} lines)",
            e.line
        );
    }
}

fn run_validate(args: &[&Path]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .arg("validate")
        .args(args)
        .output()
        .expect("run membrane validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn corpus_file(suffix: &str) -> PathBuf {
    corpus_files()
        .into_iter()
        .find(|p| file_name(p).ends_with(suffix))
        .unwrap_or_else(|| panic!("no corpus file ends with {suffix}"))
}

#[test]
fn validate_command_reports_file_line_col() {
    // A YAML syntax error, schema errors (with help) and agent-side validation errors.
    for suffix in [
        "-yaml-tab-indentation.yaml",
        "-unknown-field-toport.yaml",
        "-port-unquoted-integer.yaml",
        "-l7-on-udp.yaml",
        "-combine-fromendpoints-fromcidr.yaml",
        "-knp-port-zero.yaml",
        "-list-with-bad-item.yaml",
    ] {
        let path = corpus_file(suffix);
        let text = std::fs::read_to_string(&path).unwrap();
        let e = parse_expectation(&text).unwrap();
        assert!(
            e.known_bug.is_none(),
            "{suffix} is a known bug: pick another"
        );
        let diags = run_engine(&text, &Options::default()).unwrap();
        let d = diags
            .iter()
            .find(|d| matches(d, &e))
            .unwrap_or_else(|| panic!("{suffix}: no matching diagnostic in-process"));
        let col = d.span.map(|s| s.col).unwrap_or_default();
        let (code, stdout, stderr) = run_validate(&[&path]);
        assert_eq!(
            code, 1,
            "{suffix}: exit code\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let location = format!("{}:{}:{col}: error[{}]: ", path.display(), e.line, d.code);
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&location))
            .unwrap_or_else(|| {
                panic!("{suffix}: no line starting with `{location}` in:\n{stdout}")
            });
        assert!(
            line.contains(&e.message),
            "{suffix}: `{line}` lacks `{}`",
            e.message
        );
        // The source line is quoted under the message, with a caret.
        let source = text.lines().nth(e.line as usize - 1).unwrap_or_default();
        assert!(
            stdout.contains(&format!("{} | {source}", e.line)),
            "{suffix}: the source line is not quoted:\n{stdout}"
        );
        assert!(stdout.contains('^'), "{suffix}: no caret:\n{stdout}");
        if let Some(h) = &e.help {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.trim_start().starts_with("help:") && l.contains(h)),
                "{suffix}: no `help: ...{h}...` line:\n{stdout}"
            );
        }
    }
}

#[test]
fn validate_command_on_the_whole_corpus_fails_without_crashing() {
    let dir = corpus_dir();
    let (code, stdout, stderr) = run_validate(&[&dir]);
    assert_eq!(code, 1, "exit code\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains(": error["), "no errors printed:\n{stdout}");
}

#[test]
fn validate_command_accepts_a_valid_policy() {
    let path = repo_root().join("tests/valid/ok-policy.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let diags = run_engine(&text, &Options::default()).unwrap();
    assert!(
        !diags.iter().any(Diagnostic::is_error),
        "in-process errors:\n{}",
        describe(&diags)
    );
    let (code, stdout, stderr) = run_validate(&[&path]);
    assert_eq!(code, 0, "exit code\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("0 invalid"),
        "unexpected summary:\n{stdout}"
    );
}
