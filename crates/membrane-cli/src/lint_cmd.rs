//! `membrane lint`: findings with stable rule ids (see `membrane_cluster::lint` for the
//! table), as text for people, JSON for scripts, or SARIF 2.1.0 for code scanning.
//!
//! Exit codes: 0 when no finding is a warning or worse, 1 when one is, 2 when the input is
//! unusable (no files, unreadable, invalid YAML).

use crate::check::load_paths;
use crate::printer::render_diagnostic;
use membrane_cluster::lint::{self, Finding, RULES};
use membrane_cluster::manifests::Loaded;
use membrane_policy::Severity;
use membrane_policy::diag::Diagnostic;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LintOutput {
    Text,
    Json,
    Sarif,
}

#[derive(clap::Args)]
pub struct LintArgs {
    /// Files or directories of manifests: policies, workloads, Services, Gateways (`-` for
    /// stdin).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: LintOutput,
}

pub fn run(args: LintArgs) -> u8 {
    let loaded = match load_paths(&args.paths) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let yaml: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|(_, d)| d.code == "yaml")
        .collect();
    if !yaml.is_empty() {
        for (f, d) in yaml {
            let text = loaded
                .files
                .get(*f as usize)
                .map_or("", |s| s.text.as_str());
            eprint!("{}", render_diagnostic(loaded.file_name(*f), text, d));
        }
        eprintln!("error: invalid YAML, nothing was linted");
        return 2;
    }
    let findings = lint::lint(&loaded);
    let rendered = match args.output {
        LintOutput::Text => text(&loaded, &findings),
        LintOutput::Json => pretty(&json_report(&loaded, &findings)),
        LintOutput::Sarif => pretty(&sarif(&loaded, &findings)),
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(rendered.as_bytes());
    u8::from(findings.iter().any(|f| f.severity >= Severity::Warning))
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

struct Counts {
    errors: usize,
    warnings: usize,
    info: usize,
}

fn counts(findings: &[Finding]) -> Counts {
    let n = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    Counts {
        errors: n(Severity::Error),
        warnings: n(Severity::Warning),
        info: n(Severity::Info),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The one line of a file a finding points at (and nothing else, so that `render_diagnostic`
/// does not scan big files once per finding).
fn source_line<'t>(
    loaded: &'t Loaded,
    index: &mut HashMap<u32, Vec<usize>>,
    file: u32,
    line: u32,
) -> &'t str {
    let Some(text) = loaded.files.get(file as usize).map(|s| s.text.as_str()) else {
        return "";
    };
    let starts = index.entry(file).or_insert_with(|| {
        std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect()
    });
    let Some(&start) = starts.get(line.saturating_sub(1) as usize) else {
        return "";
    };
    let end = text[start..].find('\n').map_or(text.len(), |e| start + e);
    &text[start..end]
}

fn text(loaded: &Loaded, findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut index = HashMap::new();
    for f in findings {
        let file = loaded.file_name(f.file);
        let Some(span) = f.span.filter(|s| s.line > 0) else {
            // Nothing to point at: the shared renderer prints `file: severity[id]: ...`.
            let d = Diagnostic {
                severity: f.severity,
                code: f.rule,
                message: f.message.clone(),
                help: f.help.clone(),
                span: None,
            };
            out.push_str(&render_diagnostic(file, "", &d));
            continue;
        };
        // As `render_diagnostic` renders, without scanning the file for each finding.
        out.push_str(&format!(
            "{file}:{}:{}: {}[{}]: {}\n",
            span.line, span.col, f.severity, f.rule, f.message
        ));
        let line = source_line(loaded, &mut index, f.file, span.line);
        let gutter = span.line.to_string();
        out.push_str(&format!("  {gutter} | {line}\n"));
        let pad: String = line
            .chars()
            .take(span.col.saturating_sub(1) as usize)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        out.push_str(&format!("  {} | {pad}^\n", " ".repeat(gutter.len())));
        if let Some(h) = &f.help {
            out.push_str(&format!("  help: {h}\n"));
        }
    }
    let c = counts(findings);
    let files = plural(loaded.files.len(), "file");
    if findings.is_empty() {
        out.push_str(&format!("no findings in {files}\n"));
    } else {
        out.push_str(&format!(
            "{} in {files}: {}, {}, {} info\n",
            plural(findings.len(), "finding"),
            plural(c.errors, "error"),
            plural(c.warnings, "warning"),
            c.info
        ));
    }
    out
}

fn rule_name(id: &str) -> &'static str {
    lint::rule(id).map_or("", |r| r.name)
}

fn json_report(loaded: &Loaded, findings: &[Finding]) -> Value {
    let c = counts(findings);
    json!({
        "findings": findings.iter().map(|f| json!({
            "rule": f.rule,
            "name": rule_name(f.rule),
            "severity": f.severity.to_string(),
            "file": loaded.file_name(f.file),
            "line": f.span.map(|s| s.line),
            "column": f.span.map(|s| s.col),
            "message": f.message,
            "help": f.help,
        })).collect::<Vec<_>>(),
        "summary": {
            "files": loaded.files.len(),
            "findings": findings.len(),
            "errors": c.errors,
            "warnings": c.warnings,
            "info": c.info,
        },
    })
}

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

fn sarif(loaded: &Loaded, findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.summary},
                "help": {"text": r.help},
                "defaultConfiguration": {"level": sarif_level(r.severity)},
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let uri = loaded.file_name(f.file).replace('\\', "/");
            let mut physical = json!({"artifactLocation": {"uri": uri}});
            if let Some(s) = f.span.filter(|s| s.line > 0) {
                physical["region"] = json!({"startLine": s.line, "startColumn": s.col.max(1)});
            }
            let mut result = json!({
                "ruleId": f.rule,
                "level": sarif_level(f.severity),
                "message": {"text": f.message},
                "locations": [{"physicalLocation": physical}],
            });
            if let Some(i) = RULES.iter().position(|r| r.id == f.rule) {
                result["ruleIndex"] = json!(i);
            }
            if let Some(h) = &f.help {
                result["properties"] = json!({"help": h});
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "membrane",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
