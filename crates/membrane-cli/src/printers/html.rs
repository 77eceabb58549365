//! `membrane matrix --output html`: one self-contained file (inline CSS and JS, no network)
//! with the matrix (rendered by the script from the embedded data), the policies (what each
//! selects, valid or not and why) and the lint findings.

use super::{
    LEGEND, cell_lines, cell_policies, cell_reason, kind_str, party_kind_text, party_ports_text,
    relevant, symbol,
};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::{CellKind, CellVerdict, Matrix, PartyKind, policy_selections};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;

/// One finding for the report's "Lint findings" section.
#[derive(Debug, Clone)]
pub struct LintFinding {
    pub severity: String,
    /// Stable rule id (`MEM001`).
    pub code: String,
    /// The rule's name (`policy-rejected`).
    pub name: String,
    pub file: String,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
    pub help: Option<String>,
}

/// The findings the report lists: `membrane_cluster::lint` (which includes the engine's own
/// diagnostics as MEM001 / MEM023), errors first, then warnings, then info; by file and line
/// within each.
pub fn lint_findings(loaded: &Loaded) -> Vec<LintFinding> {
    let mut out: Vec<LintFinding> = membrane_cluster::lint::lint(loaded)
        .into_iter()
        .map(|f| LintFinding {
            severity: f.severity.to_string(),
            code: f.rule.to_string(),
            name: membrane_cluster::lint::rule(f.rule)
                .map(|r| r.name.to_string())
                .unwrap_or_default(),
            file: loaded.file_name(f.file).to_string(),
            line: f.span.map(|s| s.line),
            column: f.span.map(|s| s.col),
            message: f.message,
            help: f.help,
        })
        .collect();
    let rank = |s: &str| match s {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    };
    out.sort_by_key(|f| rank(&f.severity));
    out
}

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Interns texts so that cells sharing an explanation carry it once.
#[derive(Default)]
struct Texts {
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Texts {
    fn id(&mut self, s: String) -> usize {
        if let Some(i) = self.index.get(&s) {
            return *i;
        }
        self.list.push(s.clone());
        self.index.insert(s, self.list.len() - 1);
        self.list.len() - 1
    }
}

const KINDS: [CellKind; 5] = [
    CellKind::AllowedByRule,
    CellKind::Open,
    CellKind::L7,
    CellKind::DefaultDeny,
    CellKind::DenyRule,
];

fn kind_index(k: CellKind) -> usize {
    KINDS.iter().position(|x| *x == k).unwrap_or(0)
}

/// The data the script renders: parties, ports, the destinations of each port's grid,
/// decisions (texts interned) and cells as `[source, destination, port, kind, declared,
/// decision]`.
fn data(loaded: &Loaded, m: &Matrix) -> Value {
    let mut texts = Texts::default();
    let decisions: Vec<Value> = m
        .decisions
        .iter()
        .map(|d| {
            json!([
                texts.id(cell_reason(d, loaded)),
                texts.id(cell_lines(d, loaded).join("\n")),
                texts.id(cell_policies(d).join(", ")),
            ])
        })
        .collect();
    let cells: Vec<Value> = m
        .cells
        .iter()
        .map(|c| {
            json!([
                c.source,
                c.destination,
                c.port,
                kind_index(c.kind),
                u8::from(c.declared),
                c.decision
            ])
        })
        .collect();
    let parties: Vec<Value> = m
        .parties
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "kind": party_kind_text(p),
                "pods": p.replicas,
                "ports": party_ports_text(p),
                "routes": p.routes,
                "source": p.is_source,
                "destination": p.is_destination,
            })
        })
        .collect();
    let ports: Vec<Value> = m.ports.iter().map(|p| json!(p.label())).collect();
    let columns: Vec<Vec<usize>> = (0..m.ports.len())
        .map(|pi| {
            m.destinations()
                .iter()
                .copied()
                .filter(|&d| relevant(m, d, pi))
                .collect()
        })
        .collect();
    let kinds: Vec<Value> = KINDS
        .iter()
        .map(|k| {
            let text = LEGEND.iter().find(|(x, _)| x == k).map_or("", |(_, t)| *t);
            json!({"id": kind_str(*k), "symbol": symbol(*k), "text": text})
        })
        .collect();
    json!({
        "parties": parties,
        "sources": m.sources(),
        "destinations": m.destinations(),
        "ports": ports,
        "columns": columns,
        "kinds": kinds,
        "texts": texts.list,
        "decisions": decisions,
        "cells": cells,
    })
}

const CSS: &str = r#"
:root { --allow:#2e7d32; --open:#b8860b; --l7:#1565c0; --deny:#c62828; --muted:#6b7280; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1f2328; background: #fff; }
header { padding: 16px 24px; background: #f6f8fa; border-bottom: 1px solid #d0d7de; }
header h1 { margin: 0 0 4px; font-size: 20px; }
nav a { margin-right: 16px; }
main { padding: 8px 24px 40px; }
section { margin-top: 24px; }
h2 { font-size: 17px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
.muted { color: var(--muted); }
table { border-collapse: collapse; }
table.list td, table.list th { border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; text-align: left; max-width: 560px; overflow-wrap: anywhere; }
table.list th { background: #f6f8fa; white-space: nowrap; overflow-wrap: normal; }
.tabs button { margin: 0 4px 4px 0; padding: 4px 10px; border: 1px solid #d0d7de; background: #f6f8fa; border-radius: 6px; cursor: pointer; font: inherit; }
.tabs button.active { background: #0969da; color: #fff; border-color: #0969da; }
.controls { margin: 8px 0; }
.controls input { padding: 4px 8px; width: 260px; font: inherit; }
.matrix-wrap { overflow: auto; max-height: 75vh; border: 1px solid #d0d7de; }
table.matrix th, table.matrix td { border: 1px solid #eaeef2; padding: 2px 4px; text-align: center; white-space: nowrap; }
table.matrix thead th { position: sticky; top: 0; background: #f6f8fa; z-index: 2; vertical-align: bottom; }
table.matrix thead th.dst span { writing-mode: vertical-rl; transform: rotate(180deg); display: inline-block; max-height: 180px; overflow: hidden; text-overflow: ellipsis; }
table.matrix tbody th { position: sticky; left: 0; background: #f6f8fa; text-align: left; z-index: 1; }
td.cell { cursor: pointer; min-width: 24px; font-weight: 600; }
td.cell:hover { outline: 2px solid #0969da; }
td.cell.undeclared { opacity: .45; }
.k-allowed-by-rule { color: var(--allow); background: #e8f5e9; }
.k-open { color: var(--open); background: #fff8e1; }
.k-l7 { color: var(--l7); background: #e3f2fd; }
.k-default-deny { color: var(--deny); background: #fff; }
.k-deny-rule { color: #fff; background: var(--deny); }
.legend span { display: inline-block; margin-right: 14px; }
.legend b { display: inline-block; width: 20px; text-align: center; border-radius: 3px; }
#detail { margin-top: 10px; padding: 10px 12px; border: 1px solid #d0d7de; border-radius: 6px; background: #f6f8fa; white-space: pre-wrap; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; min-height: 2.5em; }
.sev-error { color: var(--deny); font-weight: 600; }
.sev-warning { color: var(--open); font-weight: 600; }
.ok { color: var(--allow); font-weight: 600; }
.bad { color: var(--deny); font-weight: 600; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
"#;

const JS: &str = r#"
(function () {
  'use strict';
  var D = JSON.parse(document.getElementById('membrane-data').textContent);
  var nParties = D.parties.length, nPorts = D.ports.length;
  var byKey = new Map();
  D.cells.forEach(function (c) { byKey.set((c[0] * nParties + c[1]) * nPorts + c[2], c); });
  function cellOf(s, d, p) { return byKey.get((s * nParties + d) * nPorts + p); }
  var root = document.getElementById('matrix');
  var tabs = document.getElementById('matrix-tabs');
  var wrap = document.getElementById('matrix-wrap');
  var detail = document.getElementById('detail');
  var filter = document.getElementById('matrix-filter');
  var current = -1;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function matches(i) {
    var q = filter.value.trim().toLowerCase();
    return !q || D.parties[i].name.toLowerCase().indexOf(q) >= 0;
  }
  function show(c) {
    var dec = D.decisions[c[5]];
    var k = D.kinds[c[3]];
    var lines = [
      D.parties[c[0]].name + ' \u2192 ' + D.parties[c[1]].name + ':' + D.ports[c[2]] + '  ' + k.symbol + ' ' + k.id + ' (' + k.text + ')',
      c[4] ? '' : '(the destination does not declare this port)',
      D.texts[dec[1]],
      D.texts[dec[2]] ? 'policies: ' + D.texts[dec[2]] : 'policies: none'
    ].filter(function (l) { return l !== ''; });
    detail.textContent = lines.join('\n');
  }
  function headerRow(cols, corner) {
    var thead = el('thead'), tr = el('tr');
    tr.appendChild(el('th', 'corner', corner));
    cols.forEach(function (d) {
      var th = el('th', 'dst'); th.title = D.parties[d].name;
      th.appendChild(el('span', null, D.parties[d].name));
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    return thead;
  }
  function renderPort(p) {
    var cols = D.columns[p].filter(matches);
    var table = el('table', 'matrix');
    table.dataset.port = D.ports[p];
    table.appendChild(headerRow(cols, D.ports[p] + '  from \u2572 to'));
    var tbody = el('tbody');
    D.sources.filter(matches).forEach(function (s) {
      var tr = el('tr');
      var th = el('th', null, D.parties[s].name); th.title = D.parties[s].kind;
      tr.appendChild(th);
      cols.forEach(function (d) {
        var c = cellOf(s, d, p);
        if (!c) { tr.appendChild(el('td', 'na', '')); return; }
        var k = D.kinds[c[3]];
        var td = el('td', 'cell k-' + k.id + (c[4] ? '' : ' undeclared'), k.symbol);
        td.title = D.texts[D.decisions[c[5]][0]];
        td.addEventListener('click', function () { show(c); });
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    return table;
  }
  function renderOverview() {
    var cols = D.destinations.filter(matches);
    var table = el('table', 'matrix');
    table.dataset.port = 'all';
    table.appendChild(headerRow(cols, 'allowed ports  from \u2572 to'));
    var tbody = el('tbody');
    D.sources.filter(matches).forEach(function (s) {
      var tr = el('tr');
      tr.appendChild(el('th', null, D.parties[s].name));
      cols.forEach(function (d) {
        var allowed = [], best = null, any = false;
        for (var p = 0; p < nPorts; p++) {
          var c = cellOf(s, d, p);
          if (!c) continue;
          any = true;
          if (D.columns[p].indexOf(d) < 0) continue;
          var k = D.kinds[c[3]];
          if (k.id === 'allowed-by-rule' || k.id === 'open' || k.id === 'l7') {
            allowed.push(D.ports[p] + (k.id === 'l7' ? ' (L7)' : ''));
            if (best === null || k.id === 'allowed-by-rule' || (k.id === 'l7' && best !== 'allowed-by-rule')) best = k.id;
          }
        }
        if (!any) { tr.appendChild(el('td', 'na', '')); return; }
        var td = el('td', 'cell k-' + (best || 'default-deny'), allowed.length ? String(allowed.length) : '\u00b7');
        td.title = allowed.length ? 'allowed: ' + allowed.join(', ') : 'nothing allowed';
        td.addEventListener('click', function () {
          detail.textContent = D.parties[s].name + ' \u2192 ' + D.parties[d].name + '\n' + td.title;
        });
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    return table;
  }
  function render() {
    wrap.textContent = '';
    wrap.appendChild(current < 0 ? renderOverview() : renderPort(current));
    Array.prototype.forEach.call(tabs.children, function (b) {
      b.classList.toggle('active', Number(b.dataset.port) === current);
    });
  }
  function tab(label, p) {
    var b = el('button', null, label);
    b.dataset.port = String(p);
    b.addEventListener('click', function () { current = p; render(); });
    tabs.appendChild(b);
  }
  tab('all ports (overview)', -1);
  D.ports.forEach(function (label, p) { tab(label, p); });
  filter.addEventListener('input', render);
  current = nPorts > 0 ? 0 : -1;
  render();
  root.dataset.rendered = 'true';
})();
"#;

pub fn matrix(loaded: &Loaded, m: &Matrix) -> String {
    let mut h = String::new();
    let world = &loaded.world;
    let invalid = world
        .policy_set
        .policies
        .iter()
        .filter(|p| !p.valid)
        .count();
    let findings = lint_findings(loaded);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>membrane matrix</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
    );
    let _ = writeln!(
        h,
        "<header><h1>membrane: who can talk to whom</h1><div class=\"muted\">{} sources × {} destinations × {} ports: {} allow, {} l7, {} deny · {} files, {} policies ({invalid} not enforced)</div>",
        m.sources().len(),
        m.destinations().len(),
        m.ports.len(),
        m.count(CellVerdict::Allow),
        m.count(CellVerdict::L7),
        m.count(CellVerdict::Deny),
        loaded.files.len(),
        world.policy_set.policies.len(),
    );
    let _ = writeln!(
        h,
        "<nav><a href=\"#matrix\">Matrix</a><a href=\"#endpoints\">Endpoints</a><a href=\"#policies\">Policies</a><a href=\"#lint\">Lint findings</a></nav></header>\n<main>"
    );

    // Matrix: rendered by the script.
    let _ = writeln!(
        h,
        "<section id=\"matrix\" data-rendered=\"false\"><h2>Matrix</h2>"
    );
    let _ = write!(h, "<div class=\"legend\">");
    for (k, text) in LEGEND {
        let _ = write!(
            h,
            "<span><b class=\"k-{}\">{}</b> {}</span>",
            kind_str(k),
            escape(symbol(k)),
            escape(text)
        );
    }
    let _ = writeln!(
        h,
        "<span class=\"muted\">faded: the destination does not declare the port</span></div>"
    );
    let _ = writeln!(
        h,
        "<p class=\"muted\">Rows are sources, columns destinations. A port's grid shows the destinations that declare it, declare no port at all, or are world. Click a cell for both sides' reasons.</p>"
    );
    let _ = writeln!(
        h,
        "<div class=\"tabs\" id=\"matrix-tabs\"></div><div class=\"controls\"><input id=\"matrix-filter\" type=\"search\" placeholder=\"filter endpoints by name\"></div>"
    );
    let _ = writeln!(
        h,
        "<div class=\"matrix-wrap\" id=\"matrix-wrap\"><noscript>The matrix needs JavaScript; `membrane matrix --output table` prints it without.</noscript></div>\n<div id=\"detail\" class=\"muted\">Click a cell to see why.</div></section>"
    );

    // Endpoints.
    let _ = writeln!(
        h,
        "<section id=\"endpoints\"><h2>Endpoints</h2><table class=\"list\"><thead><tr><th>#</th><th>name</th><th>kind</th><th>pods</th><th>ports</th><th>identity</th></tr></thead><tbody>"
    );
    for (i, p) in m.parties.iter().enumerate() {
        let identity = world
            .identities()
            .get(p.identity)
            .map(|i| i.name().replace(',', ", "))
            .unwrap_or_default();
        let mut name = escape(&p.name);
        for r in &p.routes {
            let _ = write!(name, "<br><span class=\"muted\">{}</span>", escape(r));
        }
        let pods = if p.kind == PartyKind::World {
            "-".into()
        } else {
            p.replicas.to_string()
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{name}</td><td>{}</td><td>{pods}</td><td>{}</td><td><code>{}</code></td></tr>",
            i + 1,
            escape(&party_kind_text(p)),
            escape(&party_ports_text(p)),
            escape(&identity),
        );
    }
    let _ = writeln!(h, "</tbody></table></section>");

    // Policies.
    let selections = policy_selections(world, &m.parties);
    let _ = writeln!(
        h,
        "<section id=\"policies\"><h2>Policies</h2><table class=\"list\"><thead><tr><th>kind</th><th>namespace</th><th>name</th><th>location</th><th>status</th><th>directions</th><th>selects</th></tr></thead><tbody>"
    );
    for sel in &selections {
        let t = &world.policy_set.policies[sel.policy];
        let o = &t.origin;
        let status = if t.valid {
            "<span class=\"ok\">valid, enforced</span>".to_string()
        } else {
            let errors: Vec<String> = t
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| {
                    let at = d
                        .span
                        .map(|s| format!("line {}: ", s.line))
                        .unwrap_or_default();
                    escape(&format!("{at}{}", d.message))
                })
                .collect();
            format!(
                "<span class=\"bad\">invalid, not enforced</span><br>{}",
                errors.join("<br>")
            )
        };
        let mut selects: Vec<String> = sel
            .parties
            .iter()
            .map(|&i| escape(&m.parties[i].name))
            .collect();
        selects.extend(sel.nodes.iter().map(|n| format!("node {}", escape(n))));
        let selects = if selects.is_empty() {
            "<span class=\"muted\">nothing</span>".to_string()
        } else {
            let verb = if t.valid { "" } else { "would select: " };
            format!("{verb}{}", selects.join(", "))
        };
        let directions: Vec<&str> = sel.directions.iter().map(|d| d.as_str()).collect();
        let _ = writeln!(
            h,
            "<tr><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td><code>{}:{}</code></td><td>{status}</td><td>{}</td><td>{selects}</td></tr>",
            o.kind.as_str(),
            o.kind.short(),
            escape(o.namespace.as_deref().unwrap_or("")),
            escape(&o.name),
            escape(loaded.file_name(o.file)),
            o.span.line,
            directions.join(", "),
        );
    }
    if selections.is_empty() {
        let _ = writeln!(h, "<tr><td colspan=\"7\">no policies</td></tr>");
    }
    let _ = writeln!(h, "</tbody></table></section>");

    // Lint findings.
    let _ = writeln!(
        h,
        "<section id=\"lint\"><h2>Lint findings ({})</h2><table class=\"list\"><thead><tr><th>severity</th><th>rule</th><th>location</th><th>message</th></tr></thead><tbody>",
        findings.len()
    );
    for f in &findings {
        let at = match (f.line, f.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", f.file),
            (Some(l), None) => format!("{}:{l}", f.file),
            _ => f.file.clone(),
        };
        let help = f
            .help
            .as_ref()
            .map(|x| format!("<br><span class=\"muted\">help: {}</span>", escape(x)))
            .unwrap_or_default();
        let _ = writeln!(
            h,
            "<tr class=\"finding\"><td class=\"sev-{}\">{}</td><td><code>{}</code> {}</td><td><code>{}</code></td><td>{}{help}</td></tr>",
            escape(&f.severity),
            escape(&f.severity),
            escape(&f.code),
            escape(&f.name),
            escape(&at),
            escape(&f.message),
        );
    }
    if findings.is_empty() {
        let _ = writeln!(h, "<tr><td colspan=\"4\">no findings</td></tr>");
    }
    let _ = writeln!(h, "</tbody></table></section>\n</main>");

    // The data, then the script. `</` cannot end the script element early once escaped.
    let json = serde_json::to_string(&data(loaded, m))
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/");
    let _ = writeln!(
        h,
        "<script type=\"application/json\" id=\"membrane-data\">{json}</script>\n<script>{JS}</script>\n</body>\n</html>"
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
