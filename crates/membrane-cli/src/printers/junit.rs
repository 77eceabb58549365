//! JUnit XML for CI test reports: `membrane test --output junit` and `membrane check
//! --output junit`. One testcase per flow; a failure carries the explanation text.

use crate::commands::check::CheckReport;
use crate::commands::test::TestFileReport;
use membrane_cluster::decision_json::decision_lines;
use membrane_cluster::runner::describe_flow;

/// Escapes text for XML content and attribute values (control characters XML 1.0 forbids
/// are dropped).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

/// One testcase: `failure` is (message, body) when it failed.
pub struct Case {
    pub name: String,
    pub classname: String,
    pub file: String,
    pub line: u32,
    pub failure: Option<(String, String)>,
    /// Not evaluated (membrane cannot evaluate the flow yet): why.
    pub skipped: Option<String>,
}

pub struct Suite {
    pub name: String,
    pub cases: Vec<Case>,
}

pub fn render(suites: &[Suite]) -> String {
    let tests: usize = suites.iter().map(|s| s.cases.len()).sum();
    let failures: usize = suites
        .iter()
        .flat_map(|s| &s.cases)
        .filter(|c| c.failure.is_some() && c.skipped.is_none())
        .count();
    let skipped: usize = suites
        .iter()
        .flat_map(|s| &s.cases)
        .filter(|c| c.skipped.is_some())
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"membrane\" tests=\"{tests}\" failures=\"{failures}\" skipped=\"{skipped}\">\n"
    ));
    for s in suites {
        let f = s
            .cases
            .iter()
            .filter(|c| c.failure.is_some() && c.skipped.is_none())
            .count();
        let k = s.cases.iter().filter(|c| c.skipped.is_some()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" skipped=\"{k}\">\n",
            escape(&s.name),
            s.cases.len()
        ));
        for c in &s.cases {
            out.push_str(&format!(
                "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" line=\"{}\"",
                escape(&c.name),
                escape(&c.classname),
                escape(&c.file),
                c.line
            ));
            match (&c.failure, &c.skipped) {
                (_, Some(why)) => out.push_str(&format!(
                    ">\n      <skipped message=\"{}\"/>\n    </testcase>\n",
                    escape(why)
                )),
                (None, None) => out.push_str("/>\n"),
                (Some((message, body)), None) => {
                    out.push_str(&format!(
                        ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                        escape(message),
                        escape(body)
                    ));
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// `membrane test`: one suite per scenario file.
pub fn test_suite(r: &TestFileReport) -> Suite {
    let cases = r
        .result
        .results
        .iter()
        .map(|fr| {
            let failure = (!fr.passed).then(|| {
                let actual = fr.actual.map_or("(not evaluated)", |v| v.as_str());
                let message = format!("expected {}, got {actual}", fr.flow.expect);
                let mut lines = vec![describe_flow(&fr.flow), message.clone()];
                lines.extend(fr.problem.clone());
                if let Some(l) = &fr.lookup {
                    lines.extend(
                        decision_lines(l, r.files)
                            .into_iter()
                            .map(|s| format!("dns lookup {s}")),
                    );
                }
                if let Some(d) = &fr.decision {
                    lines.extend(decision_lines(d, r.files));
                }
                (message, lines.join("\n"))
            });
            Case {
                name: format!("line {}: {}", fr.flow.span.line, describe_flow(&fr.flow)),
                classname: r.name.to_string(),
                file: r.name.to_string(),
                line: fr.flow.span.line,
                skipped: fr.skipped().then(|| fr.problem.clone().unwrap_or_default()),
                failure,
            }
        })
        .collect();
    Suite {
        name: r.name.to_string(),
        cases,
    }
}

/// `membrane check`: one suite per ConnectivityTest.
pub fn check(r: &CheckReport) -> String {
    let mut suites: Vec<Suite> = Vec::new();
    for (e, res) in &r.results {
        let file = r.loaded.file_name(e.file).to_string();
        let failure = (!CheckReport::holds(e, res)).then(|| match res {
            Err(err) => (err.clone(), format!("{}: {err}", describe_flow(&e.flow))),
            Ok(ev) => {
                let message = format!("expected {}, got {}", e.flow.expect, ev.verdict);
                let mut lines = vec![format!("{}: {message}", describe_flow(&e.flow))];
                lines.extend(super::evaluation_lines(r.loaded, &e.flow, ev));
                (message, lines.join("\n"))
            }
        });
        let case = Case {
            name: e
                .flow
                .note
                .clone()
                .unwrap_or_else(|| describe_flow(&e.flow)),
            classname: e.test.clone(),
            file,
            line: e.flow.span.line,
            failure,
            skipped: None,
        };
        match suites.last_mut() {
            Some(s) if s.name == e.test => s.cases.push(case),
            _ => suites.push(Suite {
                name: e.test.clone(),
                cases: vec![case],
            }),
        }
    }
    render(&suites)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_xml() {
        assert_eq!(
            escape("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;"
        );
    }

    #[test]
    fn renders_failures() {
        let xml = render(&[Suite {
            name: "s".into(),
            cases: vec![
                Case {
                    name: "ok".into(),
                    classname: "s".into(),
                    file: "f.yaml".into(),
                    line: 3,
                    failure: None,
                    skipped: None,
                },
                Case {
                    name: "a → b".into(),
                    classname: "s".into(),
                    file: "f.yaml".into(),
                    line: 4,
                    failure: Some(("expected allow, got deny".into(), "x < y".into())),
                    skipped: None,
                },
                Case {
                    name: "icmp".into(),
                    classname: "s".into(),
                    file: "f.yaml".into(),
                    line: 5,
                    failure: Some(("expected allow, got (not evaluated)".into(), String::new())),
                    skipped: Some("not modelled".into()),
                },
            ],
        }]);
        assert!(xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
        assert!(xml.contains("<skipped message=\"not modelled\"/>"));
        assert!(xml.contains("<testcase name=\"ok\" classname=\"s\" file=\"f.yaml\" line=\"3\"/>"));
        assert!(xml.contains("<failure message=\"expected allow, got deny\">x &lt; y</failure>"));
    }
}
