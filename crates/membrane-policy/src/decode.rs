//! Typed decoding from the positioned YAML tree, collecting every diagnostic instead of
//! stopping at the first one.

use crate::diag::{Diagnostic, did_you_mean};
use crate::yaml::{Node, ScalarKind, Span, Value};

/// A string together with where it was written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

#[derive(Debug, Default)]
pub struct Decoder {
    pub diagnostics: Vec<Diagnostic>,
}

impl Decoder {
    pub fn error(&mut self, message: impl Into<String>, span: Span) {
        self.diagnostics
            .push(Diagnostic::error("schema", message, Some(span)));
    }

    pub fn error_help(&mut self, message: impl Into<String>, span: Span, help: impl Into<String>) {
        self.diagnostics
            .push(Diagnostic::error("schema", message, Some(span)).with_help(help));
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// A mapping's fields; `None` (with an error) when the node is something else.
    pub fn fields<'n>(&mut self, node: &'n Node, what: &str) -> Option<Fields<'n>> {
        match &node.value {
            Value::Map(entries) => Some(Fields {
                entries,
                used: Used::new(entries.len()),
                span: node.span,
            }),
            _ => {
                self.error(
                    format!("{what} must be a mapping, found {}", node.type_name()),
                    node.span,
                );
                None
            }
        }
    }

    pub fn string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        match &node.value {
            Value::Scalar {
                text,
                kind: ScalarKind::Quoted,
            } => Some(Spanned::new(text.to_string(), node.span)),
            Value::Scalar {
                text,
                kind: ScalarKind::Plain,
            } => {
                let found = node.type_name();
                if found == "string" {
                    Some(Spanned::new(text.to_string(), node.span))
                } else {
                    self.error_help(
                        format!("{what} must be a string, found {found} `{text}`"),
                        node.span,
                        format!("quote the value: \"{text}\""),
                    );
                    None
                }
            }
            _ => {
                self.error(
                    format!("{what} must be a string, found {}", node.type_name()),
                    node.span,
                );
                None
            }
        }
    }

    /// A string or a number written as a YAML scalar; Kubernetes' int-or-string fields.
    pub fn int_or_string(&mut self, node: &Node, what: &str) -> Option<Spanned<String>> {
        match &node.value {
            Value::Scalar { text, kind } => {
                if *kind == ScalarKind::Plain && matches!(node.type_name(), "boolean" | "number") {
                    self.error(
                        format!(
                            "{what} must be a number or a string, found {} `{text}`",
                            node.type_name()
                        ),
                        node.span,
                    );
                    return None;
                }
                Some(Spanned::new(text.to_string(), node.span))
            }
            _ => {
                self.error(
                    format!(
                        "{what} must be a number or a string, found {}",
                        node.type_name()
                    ),
                    node.span,
                );
                None
            }
        }
    }

    pub fn int(&mut self, node: &Node, what: &str) -> Option<Spanned<i64>> {
        if let Value::Scalar {
            text,
            kind: ScalarKind::Plain,
        } = &node.value
            && let Ok(n) = text.parse::<i64>()
        {
            return Some(Spanned::new(n, node.span));
        }
        let shown = node
            .scalar_text()
            .map(|t| format!(" `{t}`"))
            .unwrap_or_default();
        self.error(
            format!(
                "{what} must be an integer, found {}{shown}",
                node.type_name()
            ),
            node.span,
        );
        None
    }

    pub fn bool(&mut self, node: &Node, what: &str) -> Option<bool> {
        if let Value::Scalar {
            text,
            kind: ScalarKind::Plain,
        } = &node.value
            && let Some(b) = crate::yaml::parse_bool(text)
        {
            return Some(b);
        }
        let shown = node
            .scalar_text()
            .map(|t| format!(" `{t}`"))
            .unwrap_or_default();
        self.error(
            format!(
                "{what} must be true or false, found {}{shown}",
                node.type_name()
            ),
            node.span,
        );
        None
    }

    /// A list; `null` counts as absent (Go's nil), `[]` as present and empty.
    pub fn list<T>(
        &mut self,
        node: &Node,
        what: &str,
        mut item: impl FnMut(&mut Self, &Node) -> Option<T>,
    ) -> Option<Vec<T>> {
        match &node.value {
            Value::Null => None,
            Value::Seq(items) => Some(items.iter().filter_map(|n| item(self, n)).collect()),
            _ => {
                self.error(
                    format!("{what} must be a list, found {}", node.type_name()),
                    node.span,
                );
                None
            }
        }
    }

    pub fn string_list(&mut self, node: &Node, what: &str) -> Option<Vec<Spanned<String>>> {
        self.list(node, what, |d, n| d.string(n, what))
    }

    /// A `map[string]string` such as labels or matchLabels.
    pub fn string_map(
        &mut self,
        node: &Node,
        what: &str,
    ) -> Vec<(Spanned<String>, Spanned<String>)> {
        match &node.value {
            Value::Null => Vec::new(),
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| {
                    let key = Spanned::new(k.scalar_text().unwrap_or("").to_string(), k.span);
                    // Kubernetes label values are strings; YAML 1.2 reads `true` or `8080`
                    // as other types, which kubectl would reject: quote them.
                    let value = match &v.value {
                        Value::Null => Spanned::new(String::new(), v.span),
                        Value::Scalar { text, kind } if is_string(kind, v) => {
                            Spanned::new(text.to_string(), v.span)
                        }
                        _ => self.string(v, &format!("the value of `{}` in {what}", key.value))?,
                    };
                    Some((key, value))
                })
                .collect(),
            _ => {
                self.error(
                    format!("{what} must be a mapping, found {}", node.type_name()),
                    node.span,
                );
                Vec::new()
            }
        }
    }
}

/// Whether a scalar decodes as a string (what `Decoder::string` accepts).
fn is_string(kind: &ScalarKind, node: &Node) -> bool {
    *kind == ScalarKind::Quoted || node.type_name() == "string"
}

/// Which fields of a mapping were read: a bit set, on the heap only for large mappings.
enum Used {
    Small(u64),
    Large(Vec<bool>),
}

impl Used {
    fn new(n: usize) -> Used {
        if n <= 64 {
            Used::Small(0)
        } else {
            Used::Large(vec![false; n])
        }
    }

    fn set(&mut self, i: usize) {
        match self {
            Used::Small(bits) => *bits |= 1 << i,
            Used::Large(v) => {
                if let Some(b) = v.get_mut(i) {
                    *b = true;
                }
            }
        }
    }

    fn get(&self, i: usize) -> bool {
        match self {
            Used::Small(bits) => *bits & (1 << i) != 0,
            Used::Large(v) => v.get(i).copied().unwrap_or(false),
        }
    }
}

/// The fields of one mapping; `finish` reports the ones nobody asked for.
pub struct Fields<'n> {
    entries: &'n [(Node, Node)],
    used: Used,
    pub span: Span,
}

impl<'n> Fields<'n> {
    /// The value of a field; `None` when absent or `null`.
    pub fn get(&mut self, name: &str) -> Option<&'n Node> {
        let idx = self
            .entries
            .iter()
            .position(|(k, _)| k.scalar_text() == Some(name))?;
        self.used.set(idx);
        let value = &self.entries[idx].1;
        if value.is_null() { None } else { Some(value) }
    }

    /// Whether the field is written at all, even as `null`.
    pub fn has(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, _)| k.scalar_text() == Some(name))
    }

    pub fn key_span(&self, name: &str) -> Option<Span> {
        self.entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(name))
            .map(|(k, _)| k.span)
    }

    /// Marks fields as consumed without decoding them (accepted and ignored).
    pub fn ignore(&mut self, names: &[&str]) {
        for name in names {
            let _ = self.get(name);
        }
    }

    /// Reports unknown fields, with a suggestion when one is close to a known field.
    pub fn finish(self, dec: &mut Decoder, what: &str, known: &[&str]) {
        for (i, (key, _)) in self.entries.iter().enumerate() {
            if self.used.get(i) {
                continue;
            }
            let name = key.scalar_text().unwrap_or("");
            let message = format!("unknown field `{name}` in {what}");
            let help = match did_you_mean(name, known) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("the fields allowed here are: {}", known.join(", ")),
            };
            dec.error_help(message, key.span, help);
        }
    }
}
