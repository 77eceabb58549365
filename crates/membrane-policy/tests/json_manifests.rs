//! JSON (what an API server serves) goes through the same front end as YAML: a JSON manifest
//! and its YAML twin decode to the same resources, and mistakes in JSON are reported with
//! their line and column.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_policy::parse_resources;
use membrane_policy::yaml::{Embedding, parse_documents, parse_documents_fast};

const YAML: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-frontend
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      app: backend
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: frontend
    toPorts:
    - ports:
      - port: \"8080\"
        protocol: TCP
      rules:
        http:
        - method: GET
          path: /api/.*
";

const JSON: &str = r#"{
  "apiVersion": "cilium.io/v2",
  "kind": "CiliumNetworkPolicy",
  "metadata": {"name": "allow-frontend", "namespace": "shop"},
  "spec": {
    "endpointSelector": {"matchLabels": {"app": "backend"}},
    "ingress": [
      {
        "fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
        "toPorts": [
          {
            "ports": [{"port": "8080", "protocol": "TCP"}],
            "rules": {"http": [{"method": "GET", "path": "/api/.*"}]}
          }
        ]
      }
    ]
  }
}
"#;

/// The Debug form without positions (the twins are laid out differently).
fn without_spans(s: &str) -> String {
    let re = regex::Regex::new(r"Span \{ line: \d+, col: \d+, offset: \d+, len: \d+ \}").unwrap();
    re.replace_all(s, "Span").into_owned()
}

#[test]
fn json_and_its_yaml_twin_decode_to_the_same_resources() {
    let (yaml_res, yaml_diags) = parse_resources(YAML, Embedding::default());
    let (json_res, json_diags) = parse_resources(JSON, Embedding::default());
    assert!(yaml_diags.is_empty(), "{yaml_diags:?}");
    assert!(json_diags.is_empty(), "{json_diags:?}");
    assert_eq!(yaml_res.len(), 1);
    assert_eq!(
        without_spans(&format!("{json_res:?}")),
        without_spans(&format!("{yaml_res:?}"))
    );
}

#[test]
fn json_takes_the_fast_path_with_positions() {
    let docs = parse_documents_fast(JSON, Embedding::default()).expect("JSON is in the subset");
    let spec = docs[0].get("spec").unwrap();
    let sel = spec.get("endpointSelector").unwrap();
    assert_eq!((sel.span.line, sel.span.col), (6, 25));
    let path = spec.get("ingress").unwrap().as_seq().unwrap()[0]
        .get("toPorts")
        .unwrap()
        .as_seq()
        .unwrap()[0]
        .get("rules")
        .unwrap()
        .get("http")
        .unwrap()
        .as_seq()
        .unwrap()[0]
        .get("path")
        .unwrap();
    assert_eq!((path.span.line, path.span.col), (13, 58));
    assert_eq!(path.scalar_text(), Some("/api/.*"));
}

#[test]
fn schema_errors_in_json_name_line_and_column() {
    let bad = JSON.replace(r#""fromEndpoints""#, r#""fromEndpoint""#);
    let (_, diags) = parse_resources(&bad, Embedding::default());
    let d = diags
        .iter()
        .find(|d| d.message.contains("unknown field `fromEndpoint`"))
        .unwrap_or_else(|| panic!("{diags:?}"));
    let span = d.span.unwrap();
    assert_eq!((span.line, span.col), (9, 9));
}

#[test]
fn syntax_errors_in_json_name_line_and_column() {
    // a missing comma between two members
    let bad = JSON.replace(
        r#""name": "allow-frontend", "namespace""#,
        r#""name": "allow-frontend" "namespace""#,
    );
    let err = parse_documents(&bad, Embedding::default()).unwrap_err();
    assert_eq!(err.span.line, 4, "{err:?}");
    assert!(err.span.col > 1, "{err:?}");
    let (_, diags) = parse_resources(&bad, Embedding::default());
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].code, "yaml");
    assert_eq!(diags[0].span.unwrap().line, 4);
}
