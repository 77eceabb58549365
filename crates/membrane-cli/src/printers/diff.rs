//! `membrane diff`: text, JSON and Markdown (a pull-request comment).

use crate::commands::diff::{CellState, Change, DiffReport};
use serde_json::{Value, json};

fn state_text(s: &CellState) -> String {
    if s.l7.is_empty() {
        s.verdict.as_str().to_string()
    } else {
        format!("{} ({})", s.verdict.as_str(), s.l7.join("; "))
    }
}

fn party(name: &str, also: &[String]) -> String {
    if also.is_empty() {
        name.to_string()
    } else {
        format!("{name} (+{} with the same cell)", also.len())
    }
}

fn policies(s: &CellState) -> String {
    if s.policies.is_empty() {
        "no policy".into()
    } else {
        s.policies.join(", ")
    }
}

pub fn text(r: &DiffReport) -> String {
    let mut out = String::new();
    for c in &r.changes {
        out.push_str(&format!(
            "{:<13} {} → {} {}/{}\n",
            c.kind.as_str(),
            party(&c.from, &c.from_also),
            party(&c.to, &c.to_also),
            c.port,
            c.protocol
        ));
        for (side, s) in [("old", &c.old), ("new", &c.new)] {
            out.push_str(&format!(
                "    {side}: {} [{}]\n      {}\n",
                state_text(s),
                policies(s),
                s.reason
            ));
        }
    }
    out.push_str(&format!(
        "{} changed: {} newly allowed, {} newly denied, {} L7 changed (policies changed: {})\n",
        super::plural(r.changes.len(), "cell"),
        count(r, crate::commands::diff::ChangeKind::NewlyAllowed),
        count(r, crate::commands::diff::ChangeKind::NewlyDenied),
        count(r, crate::commands::diff::ChangeKind::L7Changed),
        if r.policies_changed.is_empty() {
            "none".to_string()
        } else {
            r.policies_changed.join(", ")
        }
    ));
    out
}

fn count(r: &DiffReport, k: crate::commands::diff::ChangeKind) -> usize {
    r.changes.iter().filter(|c| c.kind == k).count()
}

fn state_json(s: &CellState) -> Value {
    json!({
        "verdict": s.verdict.as_str(),
        "l7": s.l7,
        "reason": s.reason,
    })
}

fn change_json(c: &Change) -> Value {
    json!({
        "from": c.from,
        "to": c.to,
        "port": c.port,
        "protocol": c.protocol.as_str(),
        "change": c.kind.as_str(),
        "old": c.old.verdict.as_str(),
        "new": c.new.verdict.as_str(),
        "policies": {"old": c.old.policies, "new": c.new.policies},
        "old_detail": state_json(&c.old),
        "new_detail": state_json(&c.new),
        "from_also": c.from_also,
        "to_also": c.to_also,
    })
}

pub fn json(r: &DiffReport) -> Value {
    json!({
        "changes": r.changes.iter().map(change_json).collect::<Vec<_>>(),
        "policies_changed": r.policies_changed,
        "cells_evaluated": r.evaluated,
        "every_cell_evaluated": r.full,
    })
}

/// `|` and newlines would break a table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub fn markdown(r: &DiffReport) -> String {
    let mut out = format!(
        "### membrane diff: {} changed\n\n| change | from | to | port | old | new | policies (old → new) |\n|---|---|---|---|---|---|---|\n",
        super::plural(r.changes.len(), "connection")
    );
    for c in &r.changes {
        out.push_str(&format!(
            "| {} | `{}` | `{}` | {}/{} | {} | {} | {} → {} |\n",
            c.kind.as_str(),
            md_cell(&party(&c.from, &c.from_also)),
            md_cell(&party(&c.to, &c.to_also)),
            c.port,
            c.protocol,
            md_cell(&state_text(&c.old)),
            md_cell(&state_text(&c.new)),
            md_cell(&policies(&c.old)),
            md_cell(&policies(&c.new)),
        ));
    }
    out
}
