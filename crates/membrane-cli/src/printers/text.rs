//! Text for people: every command's default output.

use super::{
    Counts, LEGEND, TermStyle, abbreviate, evaluation_lines, pad_right, party_kind_text,
    party_ports_text, plural, relevant, render_at, render_diagnostic, symbol, totals_line, wrap,
};
use crate::commands::bench::BenchReport;
use crate::commands::check::CheckReport;
use crate::commands::explain::ExplainReport;
use crate::commands::test::TestFileReport;
use crate::commands::validate::ValidateReport;
use anstyle::Style;
use membrane_cluster::decision_json::{FileNames, decision_lines};
use membrane_cluster::lint::{self, Finding};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::{Matrix, PartyKind};
use membrane_cluster::runner::{FlowResult, describe_flow};
use membrane_policy::Severity;
use membrane_policy::diag::Diagnostic;
use std::collections::HashMap;
use std::io::Write;

// ---------------------------------------------------------------------------------------
// test (and lab's summary)

/// One scenario file: its status, its error diagnostics, its failures (every flow with
/// `verbose`).
pub fn test_file(out: &mut impl Write, r: &TestFileReport, verbose: bool) {
    let (p, f, s) = (r.passed, r.failed, r.skipped);
    let name = r.name;
    let status = if f == 0 { "ok" } else { "FAILED" };
    let _ = writeln!(
        out,
        "{name}: {status}: {p} passed, {} failed, {s} skipped",
        f - s
    );
    for d in r.world.diagnostics.iter().filter(|d| d.is_error()) {
        let _ = write!(out, "{}", render_diagnostic(name, r.text, d));
    }
    for fr in &r.result.results {
        if !fr.passed {
            print_failure(out, fr, r.files);
        } else if verbose {
            let _ = writeln!(
                out,
                "  ok   line {}: {} => {}",
                fr.flow.span.line,
                describe_flow(&fr.flow),
                fr.flow.expect
            );
            if let Some(d) = &fr.decision {
                for s in decision_lines(d, r.files) {
                    let _ = writeln!(out, "       {s}");
                }
            }
        }
    }
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

/// The last line of `test` and `lab run` / `lab probe`.
pub fn test_summary(out: &mut impl Write, passed: usize, failed: usize, skipped: usize) {
    let _ = writeln!(out, "{passed} passed, {failed} failed, {skipped} skipped");
}

// ---------------------------------------------------------------------------------------
// validate

pub fn validate(out: &mut impl Write, r: &ValidateReport) {
    for (f, d) in &r.diagnostics {
        let _ = write!(
            out,
            "{}",
            render_diagnostic(r.names.file_name(*f), &r.texts[*f as usize], d)
        );
    }
    let (policies, invalid, errors, warnings) = (r.policies, r.invalid, r.errors, r.warnings);
    let _ = writeln!(
        out,
        "{policies} {} checked: {} valid, {invalid} invalid; {errors} error{}, {warnings} warning{}",
        if policies == 1 { "policy" } else { "policies" },
        policies - invalid,
        if errors == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    );
}

// ---------------------------------------------------------------------------------------
// check and explain

pub fn check(out: &mut impl Write, r: &CheckReport) {
    let loaded = r.loaded;
    let (held, total) = (r.held, r.total);
    let policies = loaded.world.policy_set.policies.len();
    let _ = writeln!(
        out,
        "{} files, {} workloads, {policies} policies ({} not enforced), {total} expectations",
        loaded.files.len(),
        loaded.workloads.len(),
        r.invalid.len()
    );
    for p in &r.invalid {
        let why = p.diagnostics.iter().find(|d| d.is_error());
        let (line, msg) = why.map_or((0, String::new()), |d| {
            (d.span.map_or(0, |s| s.line), d.message.clone())
        });
        let _ = writeln!(
            out,
            "  not enforced: {} ({}:{line}): {msg}",
            p.origin,
            loaded.file_name(p.origin.file)
        );
    }
    let mut current_test = String::new();
    for (e, res) in &r.results {
        if e.test != current_test {
            current_test = e.test.clone();
            let _ = writeln!(out, "\n{} ({})", e.test, loaded.file_name(e.file));
        }
        let ok = CheckReport::holds(e, res);
        let mark = if ok { "holds        " } else { "DOES NOT HOLD" };
        let claim = e
            .flow
            .note
            .clone()
            .unwrap_or_else(|| describe_flow(&e.flow));
        let _ = writeln!(out, "  {mark} {claim}  [line {}]", e.flow.span.line);
        let indent = "                ";
        match res {
            Err(err) => {
                let _ = writeln!(out, "{indent}{}: {err}", describe_flow(&e.flow));
            }
            Ok(ev) => {
                let _ = writeln!(
                    out,
                    "{indent}{}: expected {}, got {}",
                    describe_flow(&e.flow),
                    e.flow.expect,
                    ev.verdict
                );
                if !ok {
                    for l in evaluation_lines(loaded, &e.flow, ev) {
                        let _ = writeln!(out, "{indent}{l}");
                    }
                }
            }
        }
    }
    let findings = lint::lint(loaded);
    let count = |sev| findings.iter().filter(|f| f.severity == sev).count();
    let _ = writeln!(
        out,
        "\nlint: {} error(s), {} warning(s), {} info (`membrane lint` shows them)",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info),
    );
    let mut by_rule: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for f in findings.iter().filter(|f| f.severity >= Severity::Warning) {
        *by_rule.entry(f.rule).or_default() += 1;
    }
    for (rule, n) in by_rule {
        let summary = lint::rule(rule).map_or("", |r| r.summary);
        let _ = writeln!(out, "  {rule} x{n}: {summary}");
    }
    let _ = writeln!(out, "{held} of {total} expectations hold");
}

pub fn explain(r: &ExplainReport) {
    println!("{}: {}", describe_flow(r.flow), r.evaluation.verdict);
    for l in evaluation_lines(r.loaded, r.flow, r.evaluation) {
        println!("  {l}");
    }
    // The security identities both sides carry (a cluster's own numbers when it has Cilium).
    let world = &r.loaded.world;
    let ids: Vec<String> = std::iter::once(&r.flow.from)
        .chain(r.flow.to.as_ref())
        .filter_map(|name| {
            let party = world.party(name)?;
            Some(format!("{name} {}", world.identity_of(party, None, false)))
        })
        .collect();
    if !ids.is_empty() {
        println!("  identities: {}", ids.join(", "));
    }
}

// ---------------------------------------------------------------------------------------
// lint

/// The one line of a file a finding points at (and nothing else, so that the renderer
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

pub fn lint(loaded: &Loaded, findings: &[Finding]) -> String {
    let mut out = String::new();
    let mut index = HashMap::new();
    for f in findings {
        let file = loaded.file_name(f.file);
        // Nothing to point at: `file: severity[id]: ...`.
        let span = f.span.filter(|s| s.line > 0);
        let d = Diagnostic {
            severity: f.severity,
            code: f.rule,
            message: f.message.clone(),
            help: f.help.clone(),
            span,
        };
        let line = span.map(|s| source_line(loaded, &mut index, f.file, s.line));
        out.push_str(&render_at(file, &d, line));
    }
    let c = Counts::of(findings.iter().map(|f| f.severity));
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

// ---------------------------------------------------------------------------------------
// matrix: the terminal table

pub fn matrix(
    out: &mut dyn Write,
    loaded: &Loaded,
    m: &Matrix,
    style: &TermStyle,
) -> std::io::Result<()> {
    let bold = Style::new().bold();
    let dim = Style::new().dimmed();
    let totals = format!("membrane matrix: {}", totals_line(loaded, m));
    for (i, line) in wrap(&totals, style.width, "  ").into_iter().enumerate() {
        match line.strip_prefix("membrane matrix:").filter(|_| i == 0) {
            Some(rest) => writeln!(out, "{}{rest}", style.paint(bold, "membrane matrix:"))?,
            None => writeln!(out, "{line}")?,
        }
    }
    let invalid = loaded
        .world
        .policy_set
        .policies
        .iter()
        .filter(|p| !p.valid)
        .count();
    if invalid > 0 {
        let text = if invalid == 1 {
            "1 invalid policy is not enforced (`membrane validate` says why)".to_string()
        } else {
            format!("{invalid} invalid policies are not enforced (`membrane validate` says why)")
        };
        for line in wrap(&text, style.width, "  ") {
            writeln!(out, "{line}")?;
        }
    }
    if m.ports.is_empty() {
        writeln!(
            out,
            "no ports in play: no workload declares a container port and no policy names one"
        )?;
        return Ok(());
    }
    // The key: numbers used as column headings.
    let digits = m.parties.len().to_string().len();
    let mut key = comfy_table::Table::new();
    key.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Dynamic)
        .set_width(style.width.min(u16::MAX as usize) as u16)
        .set_header(["#", "endpoint", "kind", "pods", "ports"]);
    for (i, p) in m.parties.iter().enumerate() {
        let name = p.name.clone();
        let pods = if p.kind == PartyKind::World {
            "-".to_string()
        } else {
            p.replicas.to_string()
        };
        key.add_row([
            (i + 1).to_string(),
            name,
            party_kind_text(p),
            pods,
            party_ports_text(p),
        ]);
    }
    if let Some(c) = key.column_mut(0) {
        c.set_cell_alignment(comfy_table::CellAlignment::Right);
    }
    writeln!(out)?;
    for line in key.to_string().lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    for (i, p) in m.parties.iter().enumerate() {
        for r in &p.routes {
            let text = format!("{:>digits$} routes {r}", i + 1);
            for line in wrap(&text, style.width - 1, "      ") {
                writeln!(out, " {line}")?;
            }
        }
    }
    writeln!(out)?;
    // The legend: as many items on a line as fit.
    let mut line = String::new();
    let mut line_len = 0;
    for (k, text) in LEGEND {
        let item = format!("{} {text}", symbol(k));
        for (j, part) in wrap(&item, style.width, "  ").into_iter().enumerate() {
            let len = part.chars().count();
            if line_len > 0 && (j > 0 || line_len + 3 + len > style.width) {
                writeln!(out, "{line}")?;
                line.clear();
                line_len = 0;
            }
            if line_len > 0 {
                line.push_str("   ");
                line_len += 3;
            }
            let painted = match (j, part.strip_prefix(symbol(k))) {
                (0, Some(rest)) => {
                    format!("{}{rest}", style.paint(TermStyle::kind_style(k), symbol(k)))
                }
                _ => part.clone(),
            };
            line.push_str(&painted);
            line_len += len;
        }
    }
    writeln!(out, "{line}")?;

    // Row labels: "  3 ns/name", abbreviated to at most a third of the width.
    let longest = m
        .sources()
        .iter()
        .map(|&s| m.parties[s].name.chars().count())
        .max()
        .unwrap_or(0);
    let name_width = longest.min((style.width / 3).max(12));
    let label_width = digits + 1 + name_width;
    let col_width = digits + 1;
    for (pi, port) in m.ports.iter().enumerate() {
        let columns: Vec<usize> = m
            .destinations()
            .iter()
            .copied()
            .filter(|&d| relevant(m, d, pi))
            .collect();
        let skipped = m.destinations().len() - columns.len();
        writeln!(out)?;
        writeln!(out, "{}", style.paint(bold, &port.label()))?;
        let mut why = Vec::new();
        if !port.declared_by.is_empty() {
            let n = port.declared_by.len();
            if n <= 12 {
                let who: Vec<String> = port
                    .declared_by
                    .iter()
                    .map(|&i| (i + 1).to_string())
                    .collect();
                why.push(format!("declared by {}", who.join(" ")));
            } else {
                why.push(format!("declared by {n} endpoints"));
            }
        }
        if !port.named_by.is_empty() {
            let n = port.named_by.len();
            why.push(format!(
                "named by {n} polic{}",
                if n == 1 { "y" } else { "ies" }
            ));
        }
        if skipped > 0 {
            why.push(format!(
                "{skipped} destination{} declaring other ports not shown",
                if skipped == 1 { "" } else { "s" }
            ));
        }
        if !why.is_empty() {
            for line in wrap(&format!("({})", why.join("; ")), style.width, " ") {
                writeln!(out, "{}", style.paint(dim, &line))?;
            }
        }
        let per_chunk = ((style.width.saturating_sub(label_width + 2)) / col_width).max(1);
        for chunk in columns.chunks(per_chunk) {
            let mut header = pad_right("from \\ to", label_width + 1);
            for &d in chunk {
                header.push_str(&format!("{:>col_width$}", d + 1));
            }
            writeln!(out, "{}", style.paint(dim, &header).trim_end())?;
            for &s in m.sources() {
                let name = abbreviate(&m.parties[s].name, name_width);
                let mut row = format!("{:>digits$} {}", s + 1, pad_right(&name, name_width + 1));
                for &d in chunk {
                    let text = match m.cell(s, d, pi) {
                        Some(c) => style.paint(TermStyle::kind_style(c.kind), symbol(c.kind)),
                        None => " ".into(),
                    };
                    row.push_str(&" ".repeat(col_width - 1));
                    row.push_str(&text);
                }
                writeln!(out, "{}", row.trim_end())?;
            }
        }
    }
    writeln!(out)?;
    let footer = "why a cell is what it is: `membrane explain PATH --from SRC --to DST --port N`, or --output json";
    for line in wrap(footer, style.width, "  ") {
        writeln!(out, "{}", style.paint(dim, &line))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench

pub fn bench(r: &BenchReport) {
    let iterations = r.iterations;
    println!(
        "{} files, {} flows per run, mean of {iterations} runs:",
        r.files, r.flows
    );
    println!("  yaml parse only (baseline)     {:9.3} ms", r.yaml_ms);
    println!("  scenario decode                {:9.3} ms", r.decode_ms);
    println!(
        "  policies + identities + repo   {:9.3} ms",
        r.repository_ms
    );
    println!("  resolve + every flow           {:9.3} ms", r.flows_ms);
    println!(
        "  whole engine                   {:9.3} ms  ({:.1}x the yaml baseline)",
        r.whole_ms,
        r.whole_ms / r.yaml_ms.max(1e-9)
    );
    if let Some(mb) = r.peak_rss_mb {
        println!("  peak resident memory           {mb:9.1} MB");
    }
    if let Some(b) = r.bytes_per_pod {
        println!("  engine memory per pod          {b:9.0} bytes (labels included)");
    }
    if let Some(i) = &r.incremental {
        println!("incremental (last file, median of {}):", r.reps);
        println!(
            "  the policies no flow touched   {:9.3} ms",
            i.resolve_untouched_ms
        );
        println!(
            "  add one CNP                    {:9.3} ms  ({} map entries added)",
            i.add_policy_ms, i.policy_entries
        );
        println!(
            "  remove it                      {:9.3} ms",
            i.remove_policy_ms
        );
        println!(
            "  add one pod, new identity      {:9.3} ms  ({} policies changed)",
            i.add_pod_ms, i.pod_subjects
        );
        println!(
            "  its own policy                 {:9.3} ms",
            i.new_pod_policy_ms
        );
        println!(
            "  add one pod, snapshot held     {:9.3} ms",
            i.add_pod_snapshot_held_ms
        );
        println!(
            "  remove it                      {:9.3} ms",
            i.remove_pod_ms
        );
    }
}
