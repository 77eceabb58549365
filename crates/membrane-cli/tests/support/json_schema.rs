//! A small JSON Schema (2020-12) validator for the subset `docs/schema/decision-v1.json`
//! uses: `type`, `properties`, `required`, `additionalProperties`, `items`, `enum`, `const`,
//! `anyOf`, `minimum`, `maximum`, `minLength` and local `$ref`s (`#/$defs/NAME`). It refuses
//! any other keyword, so the schema cannot rely on one this validator would silently skip.
//!
//! (The `jsonschema` crate would do, but it brings a regex engine, URL and IDNA handling and
//! more for the few keywords the decision schema needs.)

use serde_json::Value;

/// Keywords the validator knows; the annotation-only ones are accepted and not checked.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "anyOf",
    "minimum",
    "maximum",
    "minLength",
];

pub struct Schema {
    pub root: Value,
}

impl Schema {
    pub fn load(path: &std::path::Path) -> Schema {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let root = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        Schema { root }
    }

    /// The schema at `#/$defs/NAME`.
    pub fn def(&self, name: &str) -> &Value {
        self.root["$defs"]
            .get(name)
            .unwrap_or_else(|| panic!("no $defs/{name} in the schema"))
    }

    fn resolve(&self, reference: &str) -> Result<&Value, String> {
        let name = reference
            .strip_prefix("#/$defs/")
            .ok_or_else(|| format!("unsupported $ref {reference}"))?;
        self.root["$defs"]
            .get(name)
            .ok_or_else(|| format!("dangling $ref {reference}"))
    }

    /// Problems with the schema itself: unknown keywords, dangling references, properties
    /// without a description (directly or through their `$ref`), objects that list a
    /// required property they do not define.
    pub fn lint(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.lint_at(&self.root, "#", &mut out);
        out
    }

    fn lint_at(&self, s: &Value, at: &str, out: &mut Vec<String>) {
        let Some(obj) = s.as_object() else {
            if !s.is_boolean() {
                out.push(format!("{at}: a schema must be an object or a boolean"));
            }
            return;
        };
        for k in obj.keys() {
            if !KEYWORDS.contains(&k.as_str()) {
                out.push(format!("{at}: unsupported keyword {k}"));
            }
        }
        if let Some(Err(e)) = obj
            .get("$ref")
            .and_then(Value::as_str)
            .map(|r| self.resolve(r))
        {
            out.push(format!("{at}: {e}"));
        }
        if let Some(defs) = obj.get("$defs").and_then(Value::as_object) {
            for (k, v) in defs {
                self.lint_at(v, &format!("{at}/$defs/{k}"), out);
            }
        }
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let here = format!("{at}/properties/{k}");
                if !self.described(v) {
                    out.push(format!("{here}: no description"));
                }
                self.lint_at(v, &here, out);
            }
            for r in obj
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !r.as_str().is_some_and(|r| props.contains_key(r)) {
                    out.push(format!("{at}: required {r} is not a property"));
                }
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = obj.get(key).filter(|v| v.is_object()) {
                self.lint_at(v, &format!("{at}/{key}"), out);
            }
        }
        if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
            for (i, v) in any.iter().enumerate() {
                self.lint_at(v, &format!("{at}/anyOf/{i}"), out);
            }
        }
    }

    fn described(&self, s: &Value) -> bool {
        if s.get("description").is_some_and(Value::is_string) {
            return true;
        }
        s.get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| self.resolve(r).ok())
            .is_some_and(|t| self.described(t))
    }

    /// Validates `instance` against the root (`def` None) or `#/$defs/def`; every error with
    /// the instance's JSON pointer.
    pub fn validate(&self, def: Option<&str>, instance: &Value) -> Vec<String> {
        let s = match def {
            Some(d) => self.def(d),
            None => &self.root,
        };
        let mut errs = Vec::new();
        self.check(s, instance, "", &mut errs);
        errs
    }

    fn check(&self, s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
        if let Some(b) = s.as_bool() {
            if !b {
                errs.push(format!("{at}: not allowed here"));
            }
            return;
        }
        let Some(obj) = s.as_object() else {
            errs.push(format!("{at}: bad schema"));
            return;
        };
        if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
            match self.resolve(r) {
                Ok(t) => self.check(t, v, at, errs),
                Err(e) => errs.push(format!("{at}: {e}")),
            }
        }
        if let Some(t) = obj.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !types.iter().any(|t| type_matches(t, v)) {
                errs.push(format!("{at}: {v} is not of type {types:?}"));
            }
        }
        if let Some(e) = obj
            .get("enum")
            .and_then(Value::as_array)
            .filter(|e| !e.contains(v))
        {
            errs.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
        if let Some(c) = obj.get("const").filter(|c| *c != v) {
            errs.push(format!("{at}: {v} is not {c}"));
        }
        if let Some(n) = v.as_f64() {
            if let Some(min) = obj
                .get("minimum")
                .and_then(Value::as_f64)
                .filter(|m| n < *m)
            {
                errs.push(format!("{at}: {n} < minimum {min}"));
            }
            if let Some(max) = obj
                .get("maximum")
                .and_then(Value::as_f64)
                .filter(|m| n > *m)
            {
                errs.push(format!("{at}: {n} > maximum {max}"));
            }
        }
        if let (Some(s), Some(min)) = (v.as_str(), obj.get("minLength").and_then(Value::as_u64))
            && (s.chars().count() as u64) < min
        {
            errs.push(format!("{at}: shorter than {min}"));
        }
        if let Some(any) = obj.get("anyOf").and_then(Value::as_array) {
            let mut all = Vec::new();
            let ok = any.iter().any(|sub| {
                let mut e = Vec::new();
                self.check(sub, v, at, &mut e);
                all.extend(e.iter().cloned());
                e.is_empty()
            });
            if !ok {
                errs.push(format!("{at}: matches none of anyOf: {}", all.join("; ")));
            }
        }
        if let Some(o) = v.as_object() {
            let props = obj.get("properties").and_then(Value::as_object);
            for (k, sub) in props.into_iter().flatten() {
                if let Some(x) = o.get(k) {
                    self.check(sub, x, &format!("{at}/{k}"), errs);
                }
            }
            for r in obj
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !o.contains_key(r) {
                    errs.push(format!("{at}: missing required {r}"));
                }
            }
            if let Some(extra) = obj.get("additionalProperties") {
                for (k, x) in o {
                    if props.is_some_and(|p| p.contains_key(k)) {
                        continue;
                    }
                    match extra {
                        Value::Bool(false) => errs.push(format!("{at}: unexpected property {k}")),
                        Value::Bool(true) => {}
                        sub => self.check(sub, x, &format!("{at}/{k}"), errs),
                    }
                }
            }
        }
        if let (Some(a), Some(items)) = (v.as_array(), obj.get("items")) {
            for (i, x) in a.iter().enumerate() {
                self.check(items, x, &format!("{at}/{i}"), errs);
            }
        }
    }

    /// The values of the `enum` at `#/$defs/def` (the first `enum` found through `anyOf`).
    pub fn enum_values(&self, def: &str) -> Vec<Value> {
        fn find(s: &Value) -> Option<Vec<Value>> {
            if let Some(e) = s.get("enum").and_then(Value::as_array) {
                return Some(e.clone());
            }
            s.get("anyOf")?.as_array()?.iter().find_map(find)
        }
        find(self.def(def)).unwrap_or_else(|| panic!("$defs/{def} has no enum"))
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}
