//! Graphviz DOT: `membrane matrix --output dot`, allowed edges only.

use super::relevant;
use membrane_cluster::matrix::{Cell, CellKind, CellVerdict, Matrix, PartyKind};
use std::io::Write;

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn matrix(out: &mut dyn Write, m: &Matrix) -> std::io::Result<()> {
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
