//! The printers: one module per output format, each rendering the reports of the commands
//! that offer it. What several formats share (diagnostics, explanations, the matrix's cell
//! texts, wrapping, colours) is here, once.

pub mod csv;
pub mod diff;
pub mod dot;
pub mod github;
pub mod html;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod sarif;
pub mod text;

use anstyle::{AnsiColor, Style};
use membrane_cluster::decision_json::{FileNames, decision_lines, side_text};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::{CellKind, CellVerdict, Matrix, MatrixParty, PartyKind};
use membrane_cluster::runner::Evaluation;
use membrane_cluster::scenario::FlowSpec;
use membrane_cluster::world::Party;
use membrane_policy::Severity;
use membrane_policy::diag::Diagnostic;
use membrane_policy::model::Direction;
use membrane_policy::verdict::{FlowDecision, Outcome, SideDecision};
use membrane_policy::yaml::Span;
use serde_json::{Value, json};
use std::io::IsTerminal;

/// `--output` of the commands with a text and a JSON form.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

// ---------------------------------------------------------------------------------------
// Diagnostics

/// Renders a diagnostic as `file:line:col: severity[code]: message`, the source line with a
/// caret, and the help.
pub fn render_diagnostic(file: &str, text: &str, d: &Diagnostic) -> String {
    let line = d
        .span
        .and_then(|s| text.lines().nth(s.line.saturating_sub(1) as usize));
    render_at(file, d, line)
}

/// Prints the input's YAML errors (what makes it unusable) to standard error; whether
/// there were any.
pub fn report_yaml_errors(loaded: &membrane_cluster::manifests::Loaded) -> bool {
    let mut any = false;
    for (f, d) in loaded.diagnostics.iter().filter(|(_, d)| d.code == "yaml") {
        let text = loaded
            .files
            .get(*f as usize)
            .map_or("", |s| s.text.as_str());
        eprint!("{}", render_diagnostic(loaded.file_name(*f), text, d));
        any = true;
    }
    any
}

/// As [`render_diagnostic`], with the source line the span points at already found (`None`:
/// no line is shown).
pub fn render_at(file: &str, d: &Diagnostic, line: Option<&str>) -> String {
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
    if let (Some(s), Some(line)) = (d.span, line) {
        out.push_str(&caret(s, line));
    }
    if let Some(h) = &d.help {
        out.push_str(&format!("  help: {h}\n"));
    }
    out
}

/// The source line in a gutter, and a caret under the span's column.
fn caret(s: Span, line: &str) -> String {
    let gutter = s.line.to_string();
    let pad: String = line
        .chars()
        .take(s.col.saturating_sub(1) as usize)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!(
        "  {gutter} | {line}\n  {} | {pad}^\n",
        " ".repeat(gutter.len())
    )
}

pub fn diagnostic_json(file: &str, d: &Diagnostic) -> Value {
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

/// Pretty JSON and a newline.
pub fn pretty_line(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Findings (lint) by severity.
pub struct Counts {
    pub errors: usize,
    pub warnings: usize,
    pub info: usize,
}

impl Counts {
    pub fn of(severities: impl Iterator<Item = Severity> + Clone) -> Counts {
        let n = |s: Severity| severities.clone().filter(|x| *x == s).count();
        Counts {
            errors: n(Severity::Error),
            warnings: n(Severity::Warning),
            info: n(Severity::Info),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Explanations (`check`, `explain`)

/// Hints for the sides that were not enforced, or enforced by surprise.
fn hints(loaded: &Loaded, flow: &FlowSpec, d: &FlowDecision) -> Vec<String> {
    let world = &loaded.world;
    let mut out = Vec::new();
    let parties = [
        (world.party(&flow.from), Direction::Egress, &d.egress),
        (
            flow.to.as_deref().and_then(|t| world.party(t)),
            Direction::Ingress,
            d.ingress.as_ref().unwrap_or(&d.egress),
        ),
    ];
    for (party, dir, side) in parties {
        if side.direction != dir || side.outcome != Outcome::NotEnforced {
            continue;
        }
        if let Some(p @ (Party::Pod(_) | Party::Entity { .. })) = party {
            out.extend(
                world
                    .hints(p, dir)
                    .into_iter()
                    .map(|h| format!("{dir}: {h}")),
            );
        }
    }
    out
}

/// An evaluation explained: the DNS lookup, the gateway hop, the decision and hints.
pub fn evaluation_lines(loaded: &Loaded, flow: &FlowSpec, e: &Evaluation) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(l) = &e.lookup {
        lines.extend(
            decision_lines(l, loaded)
                .into_iter()
                .map(|s| format!("dns lookup {s}")),
        );
    }
    if let Some((route, hop)) = &e.gateway {
        lines.extend(
            decision_lines(hop, loaded)
                .into_iter()
                .map(|s| format!("to the gateway, {s}")),
        );
        if !route.is_empty() {
            lines.push(format!("routed by HTTPRoute {route}"));
        }
    }
    if let Some(d) = &e.decision {
        let prefix = if e.gateway.is_some() {
            "gateway to backend, "
        } else {
            ""
        };
        lines.extend(
            decision_lines(d, loaded)
                .into_iter()
                .map(|s| format!("{prefix}{s}")),
        );
        lines.extend(
            hints(loaded, flow, d)
                .into_iter()
                .map(|h| format!("hint: {h}")),
        );
    }
    lines
}

// ---------------------------------------------------------------------------------------
// The matrix's cells and parties (`matrix`, every format)

pub use membrane_cluster::decision_json::side_policies;

pub fn cell_policies(d: &FlowDecision) -> Vec<String> {
    let mut out = side_policies(&d.egress);
    for p in d.ingress.iter().flat_map(side_policies) {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Both sides' explanations.
pub fn cell_lines(d: &FlowDecision, files: &dyn FileNames) -> Vec<String> {
    let mut out = vec![side_text(&d.egress, files)];
    if let Some(i) = &d.ingress {
        out.push(side_text(i, files));
    }
    out
}

/// One line: the side that decided (the blocking side of a deny, the enforced sides of an
/// allow).
pub fn cell_reason(d: &FlowDecision, files: &dyn FileNames) -> String {
    if let Some(side) = d.blocking_side() {
        return side_text(side, files);
    }
    let sides: Vec<String> = std::iter::once(&d.egress)
        .chain(d.ingress.iter())
        .filter(|s| s.outcome != Outcome::NotEnforced)
        .map(|s| side_text(s, files))
        .collect();
    if sides.is_empty() {
        "no policy enforces either side".into()
    } else {
        sides.join("; ")
    }
}

pub fn kind_str(k: CellKind) -> &'static str {
    match k {
        CellKind::AllowedByRule => "allowed-by-rule",
        CellKind::Open => "open",
        CellKind::L7 => "l7",
        CellKind::DefaultDeny => "default-deny",
        CellKind::DenyRule => "deny-rule",
    }
}

pub fn symbol(k: CellKind) -> &'static str {
    match k {
        CellKind::AllowedByRule => "✓",
        CellKind::Open => "○",
        CellKind::L7 => "L",
        CellKind::DefaultDeny => "·",
        CellKind::DenyRule => "✗",
    }
}

pub const LEGEND: [(CellKind, &str); 5] = [
    (CellKind::AllowedByRule, "allowed by a rule"),
    (CellKind::Open, "allowed: no policy on either side"),
    (
        CellKind::L7,
        "allowed at L3/L4, a proxy checks each request (l7)",
    ),
    (CellKind::DefaultDeny, "denied: no rule allows it"),
    (CellKind::DenyRule, "denied by a deny rule"),
];

pub fn party_kind_text(p: &MatrixParty) -> String {
    match (&p.workload_kind, p.kind) {
        (Some(k), _) => k.clone(),
        (None, PartyKind::KubeDns) => "kube-dns (synthesized)".into(),
        (None, k) => k.as_str().into(),
    }
}

pub fn party_ports_text(p: &MatrixParty) -> String {
    if p.kind == PartyKind::World {
        return "any".into();
    }
    if p.ports.is_empty() {
        return "none declared".into();
    }
    let v: Vec<String> = p
        .ports
        .iter()
        .map(|d| format!("{}/{}", d.port, d.protocol))
        .collect();
    v.join(", ")
}

/// Whether a destination belongs in a port's grid: it declares the port, declares no port
/// at all (so it may listen anywhere), or is world.
pub fn relevant(m: &Matrix, destination: usize, port: usize) -> bool {
    let p = &m.parties[destination];
    let mp = &m.ports[port];
    p.declares(mp.protocol, mp.port) || p.ports_unknown()
}

pub fn totals_line(loaded: &Loaded, m: &Matrix) -> String {
    format!(
        "{} sources × {} destinations × {} ports = {} cells: {} allow, {} l7, {} deny ({} files, {} policies)",
        m.sources().len(),
        m.destinations().len(),
        m.ports.len(),
        m.cells.len(),
        m.count(CellVerdict::Allow),
        m.count(CellVerdict::L7),
        m.count(CellVerdict::Deny),
        loaded.files.len(),
        loaded.world.policy_set.policies.len(),
    )
}

fn side_body(side: Option<&SideDecision>, files: &dyn FileNames) -> String {
    let Some(side) = side else {
        return String::new();
    };
    let text = side_text(side, files);
    let prefix = format!("{}: ", side.direction);
    text.strip_prefix(&prefix).unwrap_or(&text).to_string()
}

/// Per decision, computed once: egress text, ingress text, policies, reason.
pub fn decision_texts(loaded: &Loaded, m: &Matrix) -> Vec<[String; 4]> {
    m.decisions
        .iter()
        .map(|d| {
            [
                side_body(Some(&d.egress), loaded),
                side_body(d.ingress.as_ref(), loaded),
                cell_policies(d).join("; "),
                cell_reason(d, loaded),
            ]
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Terminal: colours, width, wrapping

/// Colour and width of the terminal.
pub struct TermStyle {
    pub color: bool,
    pub width: usize,
}

impl TermStyle {
    /// Colour only on a TTY and without NO_COLOR; the terminal's width on a TTY, else
    /// COLUMNS, else 100.
    pub fn detect() -> TermStyle {
        let tty = std::io::stdout().is_terminal();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let from_env = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|&c| c >= 20);
        let width = if tty {
            comfy_table::Table::new().width().map(usize::from)
        } else {
            None
        };
        TermStyle {
            color: tty && !no_color,
            width: width.or(from_env).unwrap_or(100).max(40),
        }
    }

    pub fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    pub fn kind_style(k: CellKind) -> Style {
        let c = |c: AnsiColor| Style::new().fg_color(Some(c.into()));
        match k {
            CellKind::AllowedByRule => c(AnsiColor::Green).bold(),
            CellKind::Open => c(AnsiColor::Yellow),
            CellKind::L7 => c(AnsiColor::Cyan).bold(),
            CellKind::DefaultDeny => c(AnsiColor::Red).dimmed(),
            CellKind::DenyRule => c(AnsiColor::Red).bold(),
        }
    }
}

/// Shortens to `max` characters with an ellipsis in the middle (names differ at both ends).
pub fn abbreviate(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max || max < 4 {
        return text.to_string();
    }
    let keep = max - 1;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

/// Word-wraps to `width` columns; continuation lines start with `indent`.
pub fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    // Nothing but the indent on the line yet.
    let mut fresh = true;
    for word in text.split(' ') {
        let w = word.chars().count();
        if !fresh && len + 1 + w > width {
            lines.push(std::mem::take(&mut line));
            line.push_str(indent);
            len = indent.chars().count();
            fresh = true;
        }
        if !fresh {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += w;
        fresh = false;
    }
    lines.push(line);
    lines
}

pub fn pad_right(text: &str, width: usize) -> String {
    let n = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abbreviates_in_the_middle() {
        assert_eq!(abbreviate("short", 10), "short");
        assert_eq!(abbreviate("namespace/very-long-name", 10), "names…name");
        assert_eq!(
            abbreviate("namespace/very-long-name", 10).chars().count(),
            10
        );
    }

    #[test]
    fn wraps_words() {
        assert_eq!(wrap("a bb ccc dd", 6, "  "), ["a bb", "  ccc", "  dd"]);
        assert_eq!(wrap("short", 40, ""), ["short"]);
    }
}
