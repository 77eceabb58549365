//! JSON values written as block YAML, the form people read manifests in.
//!
//! Strings are plain only when YAML 1.1 and 1.2 readers alike cannot take them for anything
//! else; everything else is double-quoted with JSON's escapes, which YAML's double-quoted
//! style shares.

use serde_json::Value;
use std::fmt::Write;

/// Several documents, each after a `---` line.
pub fn documents(values: &[Value]) -> String {
    let mut out = String::new();
    for v in values {
        out.push_str("---\n");
        block(&mut out, v, 0);
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Writes `v` as the content of a block at column `col`, ending with a newline.
fn block(out: &mut String, v: &Value, col: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (i, (k, child)) in m.iter().enumerate() {
                if i > 0 {
                    indent(out, col);
                }
                key(out, k);
                entry_value(out, child, col + 2);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                if i > 0 {
                    indent(out, col);
                }
                out.push_str("- ");
                match child {
                    Value::Object(m) if !m.is_empty() => block(out, child, col + 2),
                    Value::Array(a) if !a.is_empty() => block(out, child, col + 2),
                    scalar => {
                        inline(out, scalar);
                        out.push('\n');
                    }
                }
            }
        }
        scalar => {
            inline(out, scalar);
            out.push('\n');
        }
    }
}

/// After `key:`: a scalar on the same line, a collection on the next lines.
fn entry_value(out: &mut String, v: &Value, col: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            indent(out, col);
            block(out, v, col);
        }
        Value::Array(a) if !a.is_empty() => {
            // Sequences under a key sit at the key's column, as kubectl writes them.
            out.push('\n');
            indent(out, col - 2);
            block(out, v, col - 2);
        }
        scalar => {
            out.push(' ');
            inline(out, scalar);
            out.push('\n');
        }
    }
}

fn key(out: &mut String, k: &str) {
    string(out, k);
    out.push(':');
}

fn inline(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => string(out, s),
        Value::Array(_) => out.push_str("[]"),
        Value::Object(_) => out.push_str("{}"),
    }
}

fn string(out: &mut String, s: &str) {
    if is_plain_safe(s) {
        out.push_str(s);
    } else {
        // JSON's escapes are YAML double-quoted escapes; serializing a str cannot fail. What
        // JSON leaves raw but YAML readers fold or refuse (DEL, C1 controls, NEL, the Unicode
        // line and paragraph separators) is escaped too.
        let quoted = serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
        for c in quoted.chars() {
            if matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}') {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            } else {
                out.push(c);
            }
        }
    }
}

/// Words a YAML reader (1.1 or 1.2) would read as something other than a string.
const SPECIAL: &[&str] = &[
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "nan", "inf", "infinity",
];

fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if SPECIAL.iter().any(|w| s.eq_ignore_ascii_case(w)) {
        return false;
    }
    // `.inf`-like and number-like words start with a digit, `.`, `+` or `-`: excluded above.
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_block_yaml_as_kubectl_does() {
        let v = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"app": "x", "on": "yes"}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}],
                     "empty": [], "none": {}}});
        assert_eq!(
            documents(&[v]),
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    app: x\n    \"on\": \"yes\"\n  name: a\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\n  empty: []\n  none: {}\n"
        );
    }

    #[test]
    fn quotes_what_a_reader_would_misread() {
        for (s, plain) in [
            ("frontend", true),
            ("10.0.0.1", false),
            ("0x50", false),
            ("1e3", false),
            ("No", false),
            ("", false),
            ("a: b", false),
            ("k8s:app", false),
            ("-x", false),
            ("/api/v1", true),
            ("a#b", false),
            ("line\nbreak", false),
            ("inf", false),
            ("NaN", false),
            ("Infinity", false),
        ] {
            assert_eq!(is_plain_safe(s), plain, "{s}");
        }
        let mut out = String::new();
        string(&mut out, "tab\there \"q\" \u{1}");
        assert_eq!(out, r#""tab\there \"q\" \u0001""#);
        let mut out = String::new();
        string(&mut out, "a\u{2028}b\u{85}c\u{7f}");
        assert_eq!(out, r#""a\u2028b\u0085c\u007f""#);
    }

    #[test]
    fn nested_sequences_and_scalars_in_sequences() {
        let v = json!({"a": [[1, 2], "x", {"b": null}]});
        assert_eq!(documents(&[v]), "---\na:\n- - 1\n  - 2\n- x\n- b: null\n");
    }
}
