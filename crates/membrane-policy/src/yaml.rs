//! A YAML tree that keeps the position of every node.
//!
//! serde would lose positions and stop at the first error; users need every mistake in a
//! manifest reported with its line and column, so the engine decodes from this tree itself.

pub use compact_str::CompactString;
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError};
use std::collections::HashMap;

mod fast;

/// Where a node starts in its file (1-based line and column) and how long it is (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    pub line: u32,
    pub col: u32,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalarKind {
    /// Unquoted: YAML 1.2 core schema types (null, bool, int) apply.
    Plain,
    /// Quoted or block scalars are always strings.
    Quoted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// Short scalars (most names, labels, addresses) are stored inline, without a heap
    /// allocation each.
    Scalar {
        text: CompactString,
        kind: ScalarKind,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub value: Value,
    pub span: Span,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Scalar {
                text,
                kind: ScalarKind::Plain,
            } => {
                // Numbers start with a digit, a sign, a dot, or are inf/nan: skip the parses
                // for the usual names.
                let maybe_number = text.as_bytes().first().is_some_and(|c| {
                    c.is_ascii_digit()
                        || matches!(c, b'+' | b'-' | b'.' | b'i' | b'I' | b'n' | b'N')
                });
                if parse_bool(text).is_some() {
                    "boolean"
                } else if !maybe_number {
                    "string"
                } else if text.parse::<i64>().is_ok() {
                    "integer"
                } else if text.parse::<f64>().is_ok() {
                    "number"
                } else {
                    "string"
                }
            }
            Value::Scalar { .. } => "string",
            Value::Seq(_) => "list",
            Value::Map(_) => "mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The scalar's text, whatever its YAML type (used for keys and labels).
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(_, v)| v)
    }
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn is_plain_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub message: String,
    pub span: Span,
}

/// Shifts positions of a YAML text that is embedded in another file (a block scalar), so that
/// diagnostics point into the outer file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Embedding {
    pub line_offset: u32,
    pub col_offset: u32,
    pub byte_offset: u32,
}

/// Aliases may copy subtrees; this bounds the total so that "billion laughs" inputs fail
/// cleanly instead of exhausting memory.
const MAX_NODES: usize = 2_000_000;
/// Deeply nested input would otherwise overflow the stack of recursive consumers.
const MAX_DEPTH: usize = 256;

struct Builder<'t> {
    text: &'t str,
    /// Byte offset of each character, only when the text is not pure ASCII.
    char_to_byte: Option<Vec<u32>>,
    embedding: Embedding,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

enum Frame {
    Seq {
        items: Vec<Node>,
        span: Span,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        span: Span,
        anchor: usize,
    },
}

impl Builder<'_> {
    fn span(&self, s: saphyr_parser::Span) -> Span {
        let start = self.byte_of(s.start.index());
        let end = self.byte_of(s.end.index()).max(start);
        Span {
            line: s.start.line() as u32 + self.embedding.line_offset,
            col: s.start.col() as u32 + 1 + self.embedding.col_offset,
            // A block scalar loses its indentation on every line: add it back per line
            // (exact when every line of the block carries that indentation).
            offset: start
                + self.embedding.byte_offset
                + self.embedding.col_offset * (s.start.line() as u32).saturating_sub(1),
            len: end - start,
        }
    }

    fn byte_of(&self, char_index: usize) -> u32 {
        match &self.char_to_byte {
            None => char_index.min(self.text.len()) as u32,
            Some(table) => table
                .get(char_index)
                .copied()
                .unwrap_or(self.text.len() as u32),
        }
    }

    fn scan_error(&self, err: &ScanError) -> YamlError {
        let m = err.marker();
        let span = self.span(saphyr_parser::Span::empty(*m));
        YamlError {
            message: err.info().to_string(),
            span,
        }
    }

    fn count(&mut self, n: usize, span: Span) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                message: format!(
                    "document too large: more than {MAX_NODES} nodes after expanding aliases"
                ),
                span,
            });
        }
        Ok(())
    }
}

fn node_size(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(node_size).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| node_size(k) + node_size(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// Parses every document of a multi-document YAML text. Empty documents are skipped.
///
/// The common subset of YAML (and JSON) is read by a fast path straight from the bytes; the
/// rest, and every error, goes through saphyr's event parser. Both give the same tree.
pub fn parse_documents(text: &str, embedding: Embedding) -> Result<Vec<Node>, YamlError> {
    if let Some(docs) = fast::parse(text, embedding) {
        return Ok(docs);
    }
    parse_documents_reference(text, embedding)
}

/// The fast path alone: `None` when the text is outside its subset (tests compare it with
/// [`parse_documents_reference`]).
#[doc(hidden)]
pub fn parse_documents_fast(text: &str, embedding: Embedding) -> Option<Vec<Node>> {
    fast::parse(text, embedding)
}

/// [`parse_documents`] through saphyr's event parser only (the reference the fast path is
/// tested against).
#[doc(hidden)]
pub fn parse_documents_reference(text: &str, embedding: Embedding) -> Result<Vec<Node>, YamlError> {
    let char_to_byte = if text.is_ascii() {
        None
    } else {
        Some(text.char_indices().map(|(b, _)| b as u32).collect())
    };
    let mut b = Builder {
        text,
        char_to_byte,
        embedding,
        anchors: HashMap::new(),
        nodes: 0,
    };
    let mut docs = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;

    for item in Parser::new_from_str(text) {
        let (event, raw_span) = item.map_err(|e| b.scan_error(&e))?;
        let span = b.span(raw_span);
        let completed: Option<(Node, usize)> = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => None,
            Event::DocumentStart(_) => {
                root = None;
                None
            }
            Event::DocumentEnd => {
                if let Some(doc) = root.take()
                    && !doc.is_null()
                {
                    docs.push(doc);
                }
                None
            }
            Event::Alias(id) => {
                let Some(node) = b.anchors.get(&id).cloned() else {
                    return Err(YamlError {
                        message: "unknown alias".into(),
                        span,
                    });
                };
                b.count(node_size(&node), span)?;
                Some((
                    Node {
                        value: node.value,
                        span,
                    },
                    0,
                ))
            }
            Event::Scalar(text, style, anchor, tag) => {
                b.count(1, span)?;
                let quoted = !matches!(style, ScalarStyle::Plain)
                    || tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if !quoted && is_plain_null(&text) {
                    Value::Null
                } else {
                    Value::Scalar {
                        text: CompactString::from(text),
                        kind: if quoted {
                            ScalarKind::Quoted
                        } else {
                            ScalarKind::Plain
                        },
                    }
                };
                Some((Node { value, span }, anchor))
            }
            Event::SequenceStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(YamlError {
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        span,
                    });
                }
                b.count(1, span)?;
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    span,
                    anchor,
                });
                None
            }
            Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(YamlError {
                        message: format!("nesting deeper than {MAX_DEPTH} levels"),
                        span,
                    });
                }
                b.count(1, span)?;
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    pending_key: None,
                    span,
                    anchor,
                });
                None
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    items,
                    span: start,
                    anchor,
                }) => Some((
                    Node {
                        value: Value::Seq(items),
                        span: extend(start, span),
                    },
                    anchor,
                )),
                _ => {
                    return Err(YamlError {
                        message: "unbalanced sequence".into(),
                        span,
                    });
                }
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    entries,
                    span: start,
                    anchor,
                    ..
                }) => Some((
                    Node {
                        value: Value::Map(entries),
                        span: extend(start, span),
                    },
                    anchor,
                )),
                _ => {
                    return Err(YamlError {
                        message: "unbalanced mapping".into(),
                        span,
                    });
                }
            },
        };
        let Some((node, anchor)) = completed else {
            continue;
        };
        if anchor != 0 {
            b.anchors.insert(anchor, node.clone());
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    if !matches!(node.value, Value::Scalar { .. } | Value::Null) {
                        return Err(YamlError {
                            message: "mapping keys must be plain strings".into(),
                            span: node.span,
                        });
                    }
                    let key_text = node.scalar_text().unwrap_or("");
                    if entries
                        .iter()
                        .any(|(k, _)| k.scalar_text().unwrap_or("") == key_text)
                    {
                        return Err(YamlError {
                            message: format!("duplicate key `{key_text}`"),
                            span: node.span,
                        });
                    }
                    *pending_key = Some(node);
                }
                Some(key) => entries.push((key, node)),
            },
        }
    }
    if let Some(doc) = root.take()
        && !doc.is_null()
    {
        docs.push(doc);
    }
    Ok(docs)
}

fn extend(start: Span, end: Span) -> Span {
    let end_byte = end.offset + end.len;
    Span {
        len: end_byte.saturating_sub(start.offset),
        ..start
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let docs = parse_documents("a: 1\nb:\n  c: [x, 'y']\n", Embedding::default()).unwrap();
        let c = docs[0].get("b").unwrap().get("c").unwrap();
        assert_eq!((c.span.line, c.span.col), (3, 6));
        let y = &c.as_seq().unwrap()[1];
        assert_eq!(y.span.col, 10);
        assert!(matches!(
            y.value,
            Value::Scalar {
                kind: ScalarKind::Quoted,
                ..
            }
        ));
    }

    #[test]
    fn multiple_documents_and_empty_ones() {
        let docs = parse_documents("---\na: 1\n---\n---\nb: 2\n", Embedding::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].span.line, 5);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse_documents("a: 1\na: 2\n", Embedding::default()).unwrap_err();
        assert_eq!(err.message, "duplicate key `a`");
        assert_eq!(err.span.line, 2);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse_documents("a: [1, 2\nb: 3\n", Embedding::default()).unwrap_err();
        assert!(err.span.line >= 1);
    }

    #[test]
    fn alias_bombs_fail_cleanly() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        assert!(parse_documents(&text, Embedding::default()).is_err());
    }

    #[test]
    fn embedded_text_is_shifted() {
        let docs = parse_documents(
            "a: 1\nb: 2\n",
            Embedding {
                line_offset: 10,
                col_offset: 2,
                byte_offset: 100,
            },
        )
        .unwrap();
        let b = docs[0].get("b").unwrap();
        assert_eq!((b.span.line, b.span.col), (12, 6));
        assert_eq!(docs[0].get("a").unwrap().span.col, 6);
    }

    #[test]
    fn non_ascii_offsets_are_bytes() {
        let docs = parse_documents("é: x\nb: y\n", Embedding::default()).unwrap();
        assert_eq!(docs[0].get("b").unwrap().span.offset, 9);
    }
}
