//! Markdown: `membrane matrix --output md`, one table row per source, destination and port.

use super::{decision_texts, totals_line};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::Matrix;
use std::io::Write;

fn md_field(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace('\n', " ")
}

pub fn matrix(out: &mut dyn Write, loaded: &Loaded, m: &Matrix) -> std::io::Result<()> {
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
