//! CSV: `membrane matrix --output csv`, one row per source, destination and port.

use super::{decision_texts, kind_str};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::Matrix;
use std::io::Write;

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn matrix(out: &mut dyn Write, loaded: &Loaded, m: &Matrix) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
