//! YAML manifests as the JSON objects the API server would hold (for `--from DIR` sources and
//! the fake's fixtures).

use membrane_policy::yaml::{Embedding, Node, ScalarKind, Value as YamlValue, parse_documents};
use serde_json::{Value, json};

/// YAML text as JSON values, one per document (YAML 1.2 core schema for plain scalars).
pub fn yaml_to_json(text: &str) -> Result<Vec<Value>, String> {
    let docs = parse_documents(text, Embedding::default())
        .map_err(|e| format!("{}:{}: {}", e.span.line, e.span.col, e.message))?;
    Ok(docs
        .iter()
        .filter(|d| !d.is_null())
        .map(node_to_json)
        .collect())
}

fn node_to_json(node: &Node) -> Value {
    match &node.value {
        YamlValue::Null => Value::Null,
        YamlValue::Scalar { text, kind } => {
            if *kind == ScalarKind::Quoted {
                return Value::String(text.to_string());
            }
            match node.type_name() {
                "boolean" => Value::Bool(membrane_policy::yaml::parse_bool(text).unwrap_or(false)),
                "integer" => text
                    .parse::<i64>()
                    .map_or_else(|_| json!(text.as_str()), |n| json!(n)),
                "number" => text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map_or_else(|| json!(text.as_str()), Value::Number),
                _ => Value::String(text.to_string()),
            }
        }
        YamlValue::Seq(items) => Value::Array(items.iter().map(node_to_json).collect()),
        YamlValue::Map(pairs) => Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.scalar_text().unwrap_or("").to_string(), node_to_json(v)))
                .collect(),
        ),
    }
}

/// Every object of the `.yaml`/`.yml` files under `dir` (recursively, in path order), as JSON.
pub fn read_manifests(dir: &std::path::Path) -> Result<Vec<Value>, String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        docs.extend(yaml_to_json(&text).map_err(|e| format!("{}:{e}", f.display()))?);
    }
    Ok(docs)
}
