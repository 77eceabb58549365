//! SARIF 2.1.0 for code scanning: `membrane lint --output sarif`.

use membrane_cluster::lint::{Finding, RULES};
use membrane_cluster::manifests::Loaded;
use membrane_policy::Severity;
use serde_json::{Value, json};

fn sarif_level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

pub fn lint(loaded: &Loaded, findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.summary},
                "help": {"text": r.help},
                "defaultConfiguration": {"level": sarif_level(r.severity)},
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let uri = loaded.file_name(f.file).replace('\\', "/");
            let mut physical = json!({"artifactLocation": {"uri": uri}});
            if let Some(s) = f.span.filter(|s| s.line > 0) {
                physical["region"] = json!({"startLine": s.line, "startColumn": s.col.max(1)});
            }
            let mut result = json!({
                "ruleId": f.rule,
                "level": sarif_level(f.severity),
                "message": {"text": f.message},
                "locations": [{"physicalLocation": physical}],
            });
            if let Some(i) = RULES.iter().position(|r| r.id == f.rule) {
                result["ruleIndex"] = json!(i);
            }
            if let Some(h) = &f.help {
                result["properties"] = json!({"help": h});
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "membrane",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
