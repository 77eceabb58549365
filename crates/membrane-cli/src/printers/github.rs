//! GitHub Actions workflow commands (`::error file=F,line=L,col=C::message`), which the
//! runner turns into annotations on the pull request: `membrane lint --output github` and
//! `membrane check --output github`.

use crate::commands::check::CheckReport;
use membrane_cluster::lint::Finding;
use membrane_cluster::manifests::Loaded;
use membrane_cluster::runner::describe_flow;
use membrane_policy::Severity;

/// Escapes a command's message (data): `%`, CR and LF.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property value: as data, and `:` and `,`.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// One annotation command.
pub fn command(
    level: &str,
    file: &str,
    line: Option<u32>,
    col: Option<u32>,
    title: Option<&str>,
    message: &str,
) -> String {
    let mut props = vec![format!("file={}", escape_property(file))];
    if let Some(l) = line.filter(|l| *l > 0) {
        props.push(format!("line={l}"));
        if let Some(c) = col.filter(|c| *c > 0) {
            props.push(format!("col={c}"));
        }
    }
    if let Some(t) = title {
        props.push(format!("title={}", escape_property(t)));
    }
    format!("::{level} {}::{}\n", props.join(","), escape_data(message))
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "notice",
    }
}

pub fn lint(loaded: &Loaded, findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| {
            let mut message = f.message.clone();
            if let Some(h) = &f.help {
                message.push_str(&format!("\nhelp: {h}"));
            }
            command(
                level(f.severity),
                loaded.file_name(f.file),
                f.span.map(|s| s.line),
                f.span.map(|s| s.col),
                Some(f.rule),
                &message,
            )
        })
        .collect()
}

/// An error per expectation that does not hold, at its flow's line, with the explanation.
pub fn check(r: &CheckReport) -> String {
    let mut out = String::new();
    for (e, res) in &r.results {
        if CheckReport::holds(e, res) {
            continue;
        }
        let mut lines = vec![];
        match res {
            Err(err) => lines.push(format!("{}: {err}", describe_flow(&e.flow))),
            Ok(ev) => {
                lines.push(format!(
                    "{}: expected {}, got {}",
                    describe_flow(&e.flow),
                    e.flow.expect,
                    ev.verdict
                ));
                lines.extend(super::evaluation_lines(r.loaded, &e.flow, ev));
            }
        }
        let span = e.flow.span;
        out.push_str(&command(
            "error",
            r.loaded.file_name(e.file),
            Some(span.line),
            Some(span.col),
            Some(&format!("{} does not hold", e.test)),
            &lines.join("\n"),
        ));
    }
    for p in &r.invalid {
        let why = p.diagnostics.iter().find(|d| d.is_error());
        out.push_str(&command(
            "error",
            r.loaded.file_name(p.origin.file),
            why.and_then(|d| d.span).map(|s| s.line),
            why.and_then(|d| d.span).map(|s| s.col),
            Some(&format!("{} not enforced", p.origin)),
            &why.map_or_else(|| "invalid policy".to_string(), |d| d.message.clone()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(escape_data("50%\na:b,c"), "50%25%0Aa:b,c");
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");
        assert_eq!(
            command("error", "d,1:x.yaml", Some(3), Some(5), Some("t"), "m\nn"),
            "::error file=d%2C1%3Ax.yaml,line=3,col=5,title=t::m%0An\n"
        );
        assert_eq!(
            command("warning", "f", None, Some(2), None, "x"),
            "::warning file=f::x\n"
        );
    }
}
