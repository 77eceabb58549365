//! `membrane matrix`: who can talk to whom, for each port and protocol in play.
//!
//! Formats: a terminal table (one grid per port, fitted to the width, colour on a TTY),
//! JSON (every cell with both sides' explanations), CSV and Markdown (one row per cell),
//! Graphviz DOT (allowed edges) and a self-contained HTML report (see `html.rs`).

use crate::check::load_paths;
use crate::printer::render_diagnostic;
use anstyle::{AnsiColor, Style};
use membrane_cluster::decision_json::{FileNames, compact_side_json, side_text};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::{
    Cell, CellKind, CellVerdict, Matrix, MatrixOptions, MatrixParty, PartyKind, build,
};
use membrane_policy::model::Protocol;
use membrane_policy::verdict::{FlowDecision, Outcome, SideDecision};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum MatrixOutput {
    /// One grid per port, sized to the terminal.
    Table,
    /// Endpoints, ports and every cell with both sides' reasons and deciding policies.
    Json,
    /// One row per source, destination and port.
    Csv,
    /// One row per source, destination and port, as a Markdown table.
    Md,
    /// Graphviz: allowed edges only (`dot -Tsvg`).
    Dot,
    /// One self-contained HTML file: matrix, policies, findings.
    Html,
}

#[derive(clap::Args)]
pub struct MatrixArgs {
    /// Files or directories of manifests (workloads, services, gateways, policies), or one
    /// scenario file.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub output: MatrixOutput,
    /// Only these ports (`80`, `53/UDP`); repeatable. Default: every port in play.
    #[arg(long = "port", value_name = "PORT[/PROTO]")]
    pub ports: Vec<String>,
}

/// Cells above which a progress bar is worth showing (on a TTY).
const PROGRESS_THRESHOLD: usize = 20_000;

fn parse_port(text: &str) -> Result<(Protocol, u16), String> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "TCP"));
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("--port {text}: expected PORT or PORT/PROTOCOL"))?;
    let proto = match Protocol::parse(proto.trim()) {
        Some(p @ (Protocol::Tcp | Protocol::Udp | Protocol::Sctp)) => p,
        _ => return Err(format!("--port {text}: the protocol is TCP, UDP or SCTP")),
    };
    Ok((proto, port))
}

pub fn run(args: MatrixArgs) -> u8 {
    let mut options = MatrixOptions::default();
    for p in &args.ports {
        match parse_port(p) {
            Ok(p) => options.ports.push(p),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    let loaded = match load_paths(&args.paths) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let yaml_errors: Vec<_> = loaded
        .diagnostics
        .iter()
        .filter(|(_, d)| d.code == "yaml")
        .collect();
    if !yaml_errors.is_empty() {
        for (f, d) in yaml_errors {
            eprint!(
                "{}",
                render_diagnostic(loaded.file_name(*f), &loaded.files[*f as usize].text, d)
            );
        }
        return 2;
    }
    let matrix = build_with_progress(&loaded, &options);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match args.output {
        MatrixOutput::Table => {
            let style = TermStyle::detect();
            write_table(&mut out, &loaded, &matrix, &style)
        }
        MatrixOutput::Json => write_json(&mut out, &loaded, &matrix),
        MatrixOutput::Csv => write_csv(&mut out, &loaded, &matrix),
        MatrixOutput::Md => write_markdown(&mut out, &loaded, &matrix),
        MatrixOutput::Dot => write_dot(&mut out, &matrix),
        MatrixOutput::Html => out.write_all(crate::html::render(&loaded, &matrix).as_bytes()),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        // A closed pipe (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            2
        }
    }
}

/// Builds the matrix, with a progress bar on stderr for large inputs when it is a TTY.
fn build_with_progress(loaded: &Loaded, options: &MatrixOptions) -> Matrix {
    let bar = if std::io::stderr().is_terminal() {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "matrix {bar:40} {pos}/{len} cells ({per_sec}, {eta})",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let mut shown = false;
    let matrix = build(loaded, options, &mut |done, total| {
        let Some(bar) = &bar else { return };
        if total < PROGRESS_THRESHOLD {
            return;
        }
        if !shown {
            bar.set_length(total as u64);
            shown = true;
        }
        bar.set_position(done as u64);
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    matrix
}

// ---------------------------------------------------------------------------------------
// Shared helpers

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

fn totals_line(loaded: &Loaded, m: &Matrix) -> String {
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

// ---------------------------------------------------------------------------------------
// Table

/// Colour and width of the terminal table.
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

    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    fn kind_style(k: CellKind) -> Style {
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

fn pad_right(text: &str, width: usize) -> String {
    let n = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(n)))
}

fn write_table(
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
        let text =
            format!("{invalid} invalid policies are not enforced (`membrane validate` says why)");
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
// JSON

pub fn party_json(i: usize, p: &MatrixParty, loaded: &Loaded) -> Value {
    let identity = loaded.world.identities().get(p.identity).map(|i| i.name());
    json!({
        "index": i + 1,
        "name": p.name,
        "kind": p.kind.as_str(),
        "workload_kind": p.workload_kind,
        "namespace": p.namespace,
        "pods": p.replicas,
        "identity": p.identity,
        "identity_labels": identity,
        "labels": p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "ports": p.ports.iter().map(|d| json!({"port": d.port, "protocol": d.protocol.as_str(), "name": d.name})).collect::<Vec<_>>(),
        "source": p.is_source,
        "destination": p.is_destination,
        "routes": p.routes,
    })
}

fn write_json(out: &mut dyn Write, loaded: &Loaded, m: &Matrix) -> std::io::Result<()> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let indent = |s: String| s.replace('\n', "\n  ");
    let files: Vec<&str> = loaded.files.iter().map(|f| f.name.as_str()).collect();
    writeln!(out, "{{")?;
    writeln!(out, "  \"files\": {},", indent(pretty(&json!(files))))?;
    let endpoints: Vec<Value> = m
        .parties
        .iter()
        .enumerate()
        .map(|(i, p)| party_json(i, p, loaded))
        .collect();
    writeln!(
        out,
        "  \"endpoints\": {},",
        indent(pretty(&json!(endpoints)))
    )?;
    let ports: Vec<Value> = m
        .ports
        .iter()
        .map(|p| {
            json!({
                "port": p.port,
                "protocol": p.protocol.as_str(),
                "declared_by": p.declared_by.iter().map(|&i| &m.parties[i].name).collect::<Vec<_>>(),
                "named_by": p.named_by,
            })
        })
        .collect();
    writeln!(out, "  \"ports\": {},", indent(pretty(&json!(ports))))?;
    let summary = json!({
        "cells": m.cells.len(),
        "allow": m.count(CellVerdict::Allow),
        "l7": m.count(CellVerdict::L7),
        "deny": m.count(CellVerdict::Deny),
        "evaluated": m.evaluated,
        "kube_dns_included": m.kube_dns_included,
    });
    writeln!(out, "  \"summary\": {},", indent(pretty(&summary)))?;
    // Cells: one per line. A decision shared by several cells is serialized once.
    let mut sides: Vec<Option<String>> = vec![None; m.decisions.len()];
    writeln!(out, "  \"cells\": [")?;
    for (n, c) in m.cells.iter().enumerate() {
        let body = sides[c.decision].get_or_insert_with(|| {
            let d = &m.decisions[c.decision];
            let v = json!({
                "egress": compact_side_json(&d.egress, loaded),
                "ingress": d.ingress.as_ref().map(|i| compact_side_json(i, loaded)),
                "policies": cell_policies(d),
            });
            let s = serde_json::to_string(&v).unwrap_or_default();
            // Without the braces, to splice after the cell's own fields.
            s[1..s.len().saturating_sub(1)].to_string()
        });
        let port = &m.ports[c.port];
        // The cell's own fields first, in reading order.
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let head = format!(
            "{{\"source\":{},\"destination\":{},\"port\":{},\"protocol\":\"{}\",\"verdict\":\"{}\",\"kind\":\"{}\",\"declared\":{}",
            q(&m.parties[c.source].name),
            q(&m.parties[c.destination].name),
            port.port,
            port.protocol,
            c.verdict.as_str(),
            kind_str(c.kind),
            c.declared,
        );
        let comma = if n + 1 < m.cells.len() { "," } else { "" };
        writeln!(out, "    {head},{body}}}{comma}")?;
    }
    writeln!(out, "  ]")?;
    writeln!(out, "}}")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// CSV and Markdown

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn side_body(side: Option<&SideDecision>, files: &dyn FileNames) -> String {
    let Some(side) = side else {
        return String::new();
    };
    let text = side_text(side, files);
    let prefix = format!("{}: ", side.direction);
    text.strip_prefix(&prefix).unwrap_or(&text).to_string()
}

/// Per decision, computed once: egress text, ingress text, policies.
fn decision_texts(loaded: &Loaded, m: &Matrix) -> Vec<[String; 4]> {
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

fn write_csv(out: &mut dyn Write, loaded: &Loaded, m: &Matrix) -> std::io::Result<()> {
    writeln!(
        out,
        "source,destination,port,protocol,verdict,kind,declared,egress,ingress,policies"
    )?;
    let texts = decision_texts(loaded, m);
    for c in &m.cells {
        let port = &m.ports[c.port];
        let [egress, ingress, policies, _] = &texts[c.decision];
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{}",
            csv_field(&m.parties[c.source].name),
            csv_field(&m.parties[c.destination].name),
            port.port,
            port.protocol,
            c.verdict.as_str(),
            kind_str(c.kind),
            c.declared,
            csv_field(egress),
            csv_field(ingress),
            csv_field(policies),
        )?;
    }
    Ok(())
}

fn md_field(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\n', " ")
}

fn write_markdown(out: &mut dyn Write, loaded: &Loaded, m: &Matrix) -> std::io::Result<()> {
    writeln!(out, "# Connectivity matrix")?;
    writeln!(out)?;
    writeln!(out, "{}", md_field(&totals_line(loaded, m)))?;
    writeln!(out)?;
    writeln!(
        out,
        "`declared`: the destination declares the port (world accepts any). Verdict `l7`: allowed at L3/L4, a proxy checks each request."
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "| source | destination | port | verdict | declared | reason | policies |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let texts = decision_texts(loaded, m);
    for c in &m.cells {
        let [_, _, policies, reason] = &texts[c.decision];
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            md_field(&m.parties[c.source].name),
            md_field(&m.parties[c.destination].name),
            m.ports[c.port].label(),
            c.verdict.as_str(),
            if c.declared { "yes" } else { "no" },
            md_field(reason),
            md_field(policies),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// DOT

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn write_dot(out: &mut dyn Write, m: &Matrix) -> std::io::Result<()> {
    writeln!(
        out,
        "// membrane matrix: allowed connections; denied ones are omitted."
    )?;
    writeln!(
        out,
        "// Edges only to ports the destination declares (or to destinations declaring none)."
    )?;
    writeln!(out, "digraph membrane {{")?;
    writeln!(out, "  rankdir=LR;")?;
    writeln!(
        out,
        "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", fontname=\"Helvetica\", fontsize=11];"
    )?;
    writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=9];")?;
    for p in &m.parties {
        let (shape, fill) = match p.kind {
            PartyKind::World => ("ellipse", "#e8e8e8"),
            PartyKind::Gateway => ("hexagon", "#fdf3d8"),
            PartyKind::KubeDns => ("box", "#f1f1f1"),
            _ => ("box", "#eef3fb"),
        };
        let label = match (&p.workload_kind, p.kind) {
            (Some(k), _) => format!("{}\\n{k} ×{}", p.name, p.replicas),
            (None, PartyKind::World) => "world".to_string(),
            (None, k) => format!("{}\\n{}", p.name, k.as_str()),
        };
        writeln!(
            out,
            "  {} [label=\"{}\", shape={shape}, fillcolor=\"{fill}\"];",
            dot_id(&p.name),
            label.replace('"', "\\\"")
        )?;
    }
    for &s in m.sources() {
        for &d in m.destinations() {
            let cells: Vec<&Cell> = (0..m.ports.len())
                .filter_map(|pi| m.cell(s, d, pi))
                .filter(|c| c.verdict != CellVerdict::Deny && relevant(m, d, c.port))
                .collect();
            if cells.is_empty() {
                continue;
            }
            let labels: Vec<String> = cells
                .iter()
                .map(|c| {
                    let l = m.ports[c.port].label();
                    if c.verdict == CellVerdict::L7 {
                        format!("{l} (L7)")
                    } else {
                        l
                    }
                })
                .collect();
            let all_open = cells.iter().all(|c| c.kind == CellKind::Open);
            let any_l7 = cells.iter().any(|c| c.verdict == CellVerdict::L7);
            let style = match (any_l7, all_open) {
                (true, _) => ", style=dashed, color=\"#1f78b4\"",
                (false, true) => ", color=\"#999999\", fontcolor=\"#777777\"",
                (false, false) => ", color=\"#2e7d32\"",
            };
            writeln!(
                out,
                "  {} -> {} [label=\"{}\"{style}];",
                dot_id(&m.parties[s].name),
                dot_id(&m.parties[d].name),
                labels.join("\\n")
            )?;
        }
    }
    writeln!(out, "}}")?;
    Ok(())
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

    #[test]
    fn ports() {
        assert_eq!(parse_port("80"), Ok((Protocol::Tcp, 80)));
        assert_eq!(parse_port("53/udp"), Ok((Protocol::Udp, 53)));
        assert!(parse_port("x").is_err());
        assert!(parse_port("1/ICMP").is_err());
    }

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
