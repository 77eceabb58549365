//! The commands' I/O and printers: text for people, JSON for machines.

use crate::Output;
use membrane_cluster::decision_json::{FileNames, SCHEMA, decision_json, decision_lines};
use membrane_cluster::runner::{FlowResult, ScenarioResult, describe_flow, run_scenario};
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_policy::api::Resource;
use membrane_policy::diag::Diagnostic;
use membrane_policy::model::FileId;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::Embedding;
use membrane_policy::{Options, Severity};
use serde_json::json;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Renders a diagnostic as `file:line:col: severity[code]: message`, the source line with a
/// caret, and the help.
pub fn render_diagnostic(file: &str, text: &str, d: &Diagnostic) -> String {
    let mut out = String::new();
    match d.span {
        Some(s) => out.push_str(&format!(
            "{file}:{}:{}: {}[{}]: {}\n",
            s.line, s.col, d.severity, d.code, d.message
        )),
        None => out.push_str(&format!(
            "{file}: {}[{}]: {}\n",
            d.severity, d.code, d.message
        )),
    }
    if let Some(s) = d.span {
        if let Some(line) = text.lines().nth(s.line.saturating_sub(1) as usize) {
            let gutter = s.line.to_string();
            out.push_str(&format!("  {gutter} | {line}\n"));
            let pad: String = line
                .chars()
                .take(s.col.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("  {} | {pad}^\n", " ".repeat(gutter.len())));
        }
    }
    if let Some(h) = &d.help {
        out.push_str(&format!("  help: {h}\n"));
    }
    out
}

pub fn diagnostic_json(file: &str, d: &Diagnostic) -> serde_json::Value {
    json!({
        "file": file,
        "line": d.span.map(|s| s.line),
        "column": d.span.map(|s| s.col),
        "severity": d.severity.to_string(),
        "code": d.code,
        "message": d.message,
        "help": d.help,
    })
}

pub(crate) fn read_path(path: &Path) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("-: cannot read standard input: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Files under the given paths (directories recursively, YAML and JSON only), sorted.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" || p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|e| format!("{}: cannot read directory: {e}", dir.display()))?;
                for e in entries.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if matches!(
                        path.extension().and_then(|x| x.to_str()),
                        Some("yaml" | "yml" | "json")
                    ) {
                        found.push(path);
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

pub fn run_validate(paths: &[PathBuf], output: Output) -> u8 {
    let files = match collect_files(paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut names = Vec::new();
    let mut texts = Vec::new();
    let mut resources: Vec<(FileId, Resource)> = Vec::new();
    let mut diags: Vec<(FileId, Diagnostic)> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = match read_path(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        };
        let (res, d) = parse_resources(&text, Embedding::default());
        resources.extend(res.into_iter().map(|r| (i as FileId, r)));
        diags.extend(d.into_iter().map(|d| (i as FileId, d)));
        names.push(f.display().to_string());
        texts.push(text);
    }
    let set = PolicySet::build(&resources, &Options::default(), &Secrets::new());
    diags.extend(set.diagnostics().map(|(f, d)| (f, d.clone())));
    diags.sort_by_key(|(f, d)| (*f, d.span.map(|s| (s.line, s.col))));
    let errors = diags
        .iter()
        .filter(|(_, d)| d.severity == Severity::Error)
        .count();
    let warnings = diags
        .iter()
        .filter(|(_, d)| d.severity == Severity::Warning)
        .count();
    let policies = set.policies.len();
    let invalid = set.policies.iter().filter(|p| !p.valid).count();
    match output {
        Output::Json => {
            let v = json!({
                "files": names,
                "policies": policies,
                "invalid_policies": invalid,
                "diagnostics": diags.iter().map(|(f, d)| diagnostic_json(names.file_name(*f), d)).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            for (f, d) in &diags {
                let _ = write!(
                    out,
                    "{}",
                    render_diagnostic(names.file_name(*f), &texts[*f as usize], d)
                );
            }
            let _ = writeln!(
                out,
                "{policies} {} checked: {} valid, {invalid} invalid; {errors} error{}, {warnings} warning{}",
                if policies == 1 { "policy" } else { "policies" },
                policies - invalid,
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" },
            );
        }
    }
    u8::from(errors > 0)
}

fn print_failure(out: &mut impl Write, r: &FlowResult, files: &Vec<String>) {
    let actual = r.actual.map_or("(not evaluated)", |v| v.as_str());
    let line = r.flow.span.line;
    let _ = writeln!(out, "  FAIL line {line}: {}", describe_flow(&r.flow));
    let _ = writeln!(out, "       expected {}, got {actual}", r.flow.expect);
    if let Some(p) = &r.problem {
        let _ = writeln!(out, "       {p}");
    }
    if let Some(l) = &r.lookup {
        for s in decision_lines(l, files) {
            let _ = writeln!(out, "       dns lookup {s}");
        }
    }
    if let Some(d) = &r.decision {
        for s in decision_lines(d, files) {
            let _ = writeln!(out, "       {s}");
        }
    }
}

fn flow_json(r: &FlowResult, files: &Vec<String>) -> serde_json::Value {
    json!({
        "line": r.flow.span.line,
        "flow": describe_flow(&r.flow),
        "expected": r.flow.expect.as_str(),
        "actual": r.actual.map(|v| v.as_str()),
        "passed": r.passed,
        "problem": r.problem,
        "dns_lookup": r.lookup.as_ref().map(|d| decision_json(d, files)),
        "decision": r.decision.as_ref().map(|d| decision_json(d, files)),
    })
}

pub fn run_tests(paths: &[PathBuf], output: Output, verbose: bool) -> u8 {
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut had_error = false;
    let mut json_files = Vec::new();
    let mut out = std::io::stdout().lock();
    for path in paths {
        let name = path.display().to_string();
        let text = match read_path(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                had_error = true;
                continue;
            }
        };
        let scenario = match parse_scenario(&text) {
            Ok(s) => s,
            Err(diags) => {
                for d in &diags {
                    eprint!("{}", render_diagnostic(&name, &text, d));
                }
                had_error = true;
                continue;
            }
        };
        let files = vec![name.clone()];
        let world = World::from_scenario(scenario, 0);
        let result: ScenarioResult = run_scenario(&world);
        let (p, f) = (result.passed(), result.failed());
        let s = result.results.iter().filter(|r| r.skipped()).count();
        passed += p;
        failed += f - s;
        skipped += s;
        match output {
            Output::Json => json_files.push(json!({
                "file": name,
                "scenario": result.name,
                "passed": p,
                "failed": f - s,
                "skipped": s,
                "diagnostics": world.diagnostics.iter().map(|d| diagnostic_json(&name, d)).collect::<Vec<_>>(),
                "flows": result.results.iter().map(|r| flow_json(r, &files)).collect::<Vec<_>>(),
            })),
            Output::Text => {
                let status = if f == 0 { "ok" } else { "FAILED" };
                let _ = writeln!(out, "{name}: {status}: {p} passed, {} failed, {s} skipped", f - s);
                for d in world.diagnostics.iter().filter(|d| d.is_error()) {
                    let _ = write!(out, "{}", render_diagnostic(&name, &text, d));
                }
                for r in &result.results {
                    if !r.passed {
                        print_failure(&mut out, r, &files);
                    } else if verbose {
                        let _ = writeln!(out, "  ok   line {}: {} => {}", r.flow.span.line, describe_flow(&r.flow), r.flow.expect);
                        if let Some(d) = &r.decision {
                            for s in decision_lines(d, &files) {
                                let _ = writeln!(out, "       {s}");
                            }
                        }
                    }
                }
            }
        }
        // The process ends after the last file: leave its world (tens of thousands of
        // allocations on a big cluster) to the operating system instead of freeing it.
        if path == paths.last().unwrap_or(path) {
            std::mem::forget(world);
            std::mem::forget(result);
        }
    }
    match output {
        Output::Json => {
            let v = json!({"schema": SCHEMA, "files": json_files, "passed": passed, "failed": failed, "skipped": skipped});
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
        }
        Output::Text => {
            let _ = writeln!(out, "{passed} passed, {failed} failed, {skipped} skipped");
        }
    }
    if had_error { 2 } else { u8::from(failed > 0) }
}
