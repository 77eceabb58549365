//! Diagnostics: every problem the engine finds in user input, with where it is and what to do.

use crate::yaml::Span;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding. `code` is stable (tools key on it); `message` follows Cilium's wording where
/// Cilium has one, so users can search for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub help: Option<String>,
    pub span: Option<Span>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>, span: Option<Span>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            help: None,
            span,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>, span: Option<Span>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            code,
            message: message.into(),
            help: None,
            span,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl miette::Diagnostic for Diagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Info => miette::Severity::Advice,
            Severity::Warning => miette::Severity::Warning,
            Severity::Error => miette::Severity::Error,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(miette::LabeledSpan::new(
            Some(self.code.to_string()),
            span.offset as usize,
            span.len.max(1) as usize,
        ))))
    }
}

/// Levenshtein distance, for "did you mean" hints on misspelt field names.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(!a[i - 1].eq_ignore_ascii_case(&b[j - 1]));
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The closest candidate, if it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use miette::Diagnostic as _;

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("toPort", &["toPorts", "toFQDNs"]),
            Some("toPorts")
        );
        assert_eq!(
            did_you_mean("fromendpoints", &["fromEndpoints"]),
            Some("fromEndpoints")
        );
        assert_eq!(did_you_mean("xyzzy", &["toPorts"]), None);
    }

    fn span(line: u32, col: u32, offset: u32, len: u32) -> Span {
        Span {
            line,
            col,
            offset,
            len,
        }
    }

    #[test]
    fn severity_display_and_order() {
        assert_eq!(Severity::Info.to_string(), "info");
        assert_eq!(Severity::Warning.to_string(), "warning");
        assert_eq!(Severity::Error.to_string(), "error");
        // Sorting by severity puts errors last (the most severe is the maximum).
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Error);
        let worst = [Severity::Warning, Severity::Error, Severity::Info]
            .into_iter()
            .max();
        assert_eq!(worst, Some(Severity::Error));
    }

    #[test]
    fn constructors_set_severity_code_and_span() {
        let s = span(3, 7, 40, 5);
        let e = Diagnostic::error("invalid-policy", "bad thing", Some(s));
        assert_eq!(e.severity, Severity::Error);
        assert_eq!(e.code, "invalid-policy");
        assert_eq!(e.message, "bad thing");
        assert_eq!(e.help, None);
        assert_eq!(e.span, Some(s));
        assert!(e.is_error());
        let w = Diagnostic::warning("namespace-missing", String::from("hm"), None);
        assert_eq!(w.severity, Severity::Warning);
        assert!(!w.is_error());
        assert_eq!(w.span, None);
        let info = Diagnostic {
            severity: Severity::Info,
            ..w.clone()
        };
        assert!(!info.is_error());
    }

    #[test]
    fn display_is_the_message_only() {
        let d = Diagnostic::error("yaml", "invalid YAML: x", Some(span(1, 1, 0, 1)))
            .with_help("check the indentation");
        assert_eq!(d.to_string(), "invalid YAML: x");
        assert_eq!(d.help.as_deref(), Some("check the indentation"));
        // A second help replaces the first.
        let d = d.with_help("other");
        assert_eq!(d.help.as_deref(), Some("other"));
    }

    #[test]
    fn miette_view() {
        let d = Diagnostic::warning("cidr-group-missing", "m", Some(span(2, 3, 10, 4)))
            .with_help("add it");
        assert_eq!(d.code().unwrap().to_string(), "cidr-group-missing");
        assert_eq!(d.severity(), Some(miette::Severity::Warning));
        assert_eq!(d.help().unwrap().to_string(), "add it");
        let labels: Vec<miette::LabeledSpan> = d.labels().unwrap().collect();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels[0].offset(), 10);
        assert_eq!(labels[0].len(), 4);
        assert_eq!(labels[0].label(), Some("cidr-group-missing"));

        let e = Diagnostic::error("x", "m", None);
        assert_eq!(e.severity(), Some(miette::Severity::Error));
        assert!(e.help().is_none());
        assert!(e.labels().is_none());
        let i = Diagnostic {
            severity: Severity::Info,
            ..e
        };
        assert_eq!(i.severity(), Some(miette::Severity::Advice));
    }

    // An empty span (e.g. end of input) still underlines one character.
    #[test]
    fn empty_span_is_widened_to_one_character() {
        let d = Diagnostic::error("yaml", "m", Some(span(1, 1, 5, 0)));
        let labels: Vec<miette::LabeledSpan> = d.labels().unwrap().collect();
        assert_eq!(labels[0].offset(), 5);
        assert_eq!(labels[0].len(), 1);
    }

    /// A diagnostic from the engine points at file:line:col of the offending text, and a
    /// miette renderer shows that position.
    #[test]
    fn engine_diagnostics_render_with_line_and_column() {
        let text = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: p
  namespace: ns1
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [wrld]
";
        let (resources, parse_diags) =
            crate::parse_resources(text, crate::yaml::Embedding::default());
        assert!(parse_diags.is_empty(), "{parse_diags:?}");
        let resources: Vec<(crate::model::FileId, crate::api::Resource)> =
            resources.into_iter().map(|r| (7, r)).collect();
        let set = crate::PolicySet::build(
            &resources,
            &crate::Options::default(),
            &crate::translate::Secrets::default(),
        );
        let diags: Vec<(crate::model::FileId, &Diagnostic)> = set.diagnostics().collect();
        assert_eq!(diags.len(), 1, "{diags:?}");
        let (file, d) = diags[0];
        assert_eq!(file, 7);
        assert_eq!(
            d.message,
            "Invalid CiliumNetworkPolicy spec: unsupported entity: wrld"
        );
        assert_eq!(d.help.as_deref(), Some("did you mean `world`?"));
        let s = d.span.unwrap();
        assert_eq!((s.line, s.col), (9, 20));
        assert_eq!(
            &text[s.offset as usize..(s.offset + s.len) as usize],
            "wrld"
        );

        let report = miette::Report::new(d.clone())
            .with_source_code(miette::NamedSource::new("p.yaml", text.to_string()));
        let mut out = String::new();
        miette::NarratableReportHandler::new()
            .render_report(&mut out, report.as_ref())
            .unwrap();
        assert!(out.contains("unsupported entity: wrld"), "{out}");
        assert!(out.contains("p.yaml"), "{out}");
        assert!(
            out.contains("label at line 9, columns 20 to 23: invalid-policy"),
            "{out}"
        );
        assert!(out.contains("did you mean `world`?"), "{out}");
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("sitting", "kitten"), 3);
        assert_eq!(edit_distance("toPorts", "toPorts"), 0);
        // Case does not count: field names are often mis-cased.
        assert_eq!(edit_distance("FromEndpoints", "fromEndpoints"), 0);
        assert_eq!(edit_distance("ingres", "ingress"), 1);
        assert_eq!(edit_distance("egress", "ingress"), 2);
        // Characters, not bytes.
        assert_eq!(edit_distance("é", "e"), 1);
    }

    #[test]
    fn did_you_mean_threshold_and_choice() {
        // Short words: up to two edits.
        assert_eq!(did_you_mean("hots", &["host"]), Some("host"));
        assert_eq!(did_you_mean("xyz", &["all"]), None);
        // Longer words: a third of the candidate's length.
        assert_eq!(
            did_you_mean("endpointselectr", &["endpointSelector"]),
            Some("endpointSelector")
        );
        // The closest candidate wins.
        assert_eq!(
            did_you_mean("ingres", &["egress", "ingress", "ingressDeny"]),
            Some("ingress")
        );
        assert_eq!(did_you_mean("anything", &[]), None);
    }
}
