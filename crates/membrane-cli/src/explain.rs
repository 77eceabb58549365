//! Human-readable explanations of decisions: which side, which policy, which rule, where.

use membrane_policy::model::Origin;
use membrane_policy::resolve::Enforcement;
use membrane_policy::verdict::{FlowDecision, L7Outcome, Outcome, SideDecision};
use serde_json::{Value, json};

/// Names the file a policy came from.
pub trait FileNames {
    fn file_name(&self, id: u32) -> &str;
}

impl FileNames for Vec<String> {
    fn file_name(&self, id: u32) -> &str {
        self.get(id as usize).map_or("<input>", String::as_str)
    }
}

pub fn origin_text(o: &Origin, files: &dyn FileNames) -> String {
    match o {
        Origin::AllowLocalhost => {
            "the agent's allow-localhost (the local host always reaches its pods)".into()
        }
        Origin::DefaultAllow { rule, .. } => format!(
            "the allow-all synthesized because {} sets enableDefaultDeny false ({}:{})",
            rule,
            files.file_name(rule.policy.file),
            rule.span.line
        ),
        Origin::Rule(e) => format!(
            "{} ({}:{}:{})",
            e,
            files.file_name(e.rule.policy.file),
            e.span.line,
            e.span.col
        ),
    }
}

/// A policy-map entry's origin in the decision schema (`docs/schema/decision-v1.json`).
pub fn origin_json(o: &Origin, files: &dyn FileNames) -> Value {
    let policy = o.policy();
    let (file, span) = match o.span() {
        Some((file, span)) => (json!(files.file_name(file)), Some(span)),
        None => (Value::Null, None),
    };
    json!({
        "origin": o.kind(),
        "kind": policy.map(|p| p.kind.as_str()),
        "namespace": policy.and_then(|p| p.namespace.clone()),
        "name": policy.map(|p| p.name.clone()),
        "spec_index": o.rule().and_then(|r| r.spec_index),
        "section": match o {
            Origin::Rule(e) => json!(e.section.field_name()),
            Origin::DefaultAllow { direction, .. } => json!(direction.as_str()),
            Origin::AllowLocalhost => json!("ingress"),
        },
        "rule_index": o.entry().map(|e| e.index),
        "file": file,
        "line": span.map(|s| s.line),
        "column": span.map(|s| s.col),
        "text": origin_text(o, files),
    })
}

/// An L7 outcome in the decision schema.
pub fn l7_json(l7: &L7Outcome, files: &dyn FileNames) -> Value {
    let rule = l7.rule().map(|r| {
        let mut v = origin_json(&Origin::Rule(r.entry.clone()), files);
        if let Some(obj) = v.as_object_mut() {
            obj.insert("l7_index".into(), json!(r.index));
            obj.insert("line".into(), json!(r.span.line));
            obj.insert("column".into(), json!(r.span.col));
        }
        v
    });
    json!({
        "kind": l7.kind(),
        "rule": rule,
        "text": l7.to_string(),
    })
}

fn enforcement_json(e: &Enforcement) -> Value {
    let kind = match e {
        Enforcement::NotSelected => "not-selected",
        Enforcement::ModeNever => "mode-never",
        Enforcement::ModeAlways => "mode-always",
        Enforcement::InitIdentity => "init-identity",
        Enforcement::Selected { .. } => "selected",
    };
    let policies: Vec<String> = match e {
        Enforcement::Selected { rules } => rules.iter().map(|r| r.to_string()).collect(),
        _ => vec![],
    };
    json!({"kind": kind, "rules": policies})
}

fn enforcement_text(e: &Enforcement) -> String {
    match e {
        Enforcement::NotSelected => "no policy selects this endpoint for this direction".into(),
        Enforcement::ModeNever => "policy enforcement is off (enable-policy=never)".into(),
        Enforcement::ModeAlways => "policy enforcement is always on (enable-policy=always)".into(),
        Enforcement::InitIdentity => {
            "the endpoint has the init identity, which is always enforced".into()
        }
        Enforcement::Selected { rules } => {
            let names: Vec<String> = rules.iter().map(|r| r.to_string()).collect();
            format!(
                "default deny because {} select{} this endpoint",
                names.join(", "),
                if names.len() == 1 { "s" } else { "" }
            )
        }
    }
}

pub fn side_text(side: &SideDecision, files: &dyn FileNames) -> String {
    let dir = side.direction.as_str();
    let deciding: Vec<String> = side
        .deciding
        .iter()
        .map(|o| origin_text(o, files))
        .collect();
    let body = match side.outcome {
        Outcome::NotEnforced => {
            let why = side
                .l7_detail()
                .unwrap_or_else(|| enforcement_text(&side.enforcement));
            format!("not enforced: {why}")
        }
        Outcome::DefaultDeny => format!(
            "dropped: no rule allows it, {}",
            enforcement_text(&side.enforcement)
        ),
        Outcome::DenyRule => format!("dropped by deny rule {}", deciding.join("; ")),
        Outcome::Allowed => {
            let mut s = format!("allowed by {}", deciding.join("; "));
            if let Some(p) = &side.proxy {
                s.push_str(&format!(" [{p} proxy"));
                if let Some(d) = side.l7_detail() {
                    s.push_str(&format!(": {d}"));
                }
                s.push(']');
            }
            s
        }
        Outcome::Http403 | Outcome::TlsDenied | Outcome::DnsRefused => {
            let what = match side.outcome {
                Outcome::Http403 => "HTTP 403 Access denied",
                Outcome::TlsDenied => "TLS handshake aborted",
                _ => "DNS REFUSED",
            };
            format!(
                "{what}: {} (L7 rules of {})",
                side.l7_detail().unwrap_or_default(),
                deciding.join("; ")
            )
        }
    };
    format!("{dir}: {body}")
}

pub fn side_json(side: &SideDecision, files: &dyn FileNames) -> Value {
    json!({
        "direction": side.direction.as_str(),
        "outcome": format!("{:?}", side.outcome),
        "enforced": !matches!(side.outcome, Outcome::NotEnforced),
        "reason": side.outcome.reason(),
        "key": side.key.map(|k| json!({"peer": k.peer, "protocol": k.protocol, "port": k.port, "prefix_len": k.prefix_len})),
        "deciding": side.deciding.iter().map(|o| origin_json(o, files)).collect::<Vec<_>>(),
        "enforcement": enforcement_json(&side.enforcement),
        "proxy": side.proxy.as_ref().map(|p| p.as_str()),
        "l7": side.l7.as_ref().map(|l| l7_json(l, files)),
        "explanation": side_text(side, files),
    })
}

pub fn decision_lines(d: &FlowDecision, files: &dyn FileNames) -> Vec<String> {
    let mut out = vec![side_text(&d.egress, files)];
    if let Some(i) = &d.ingress {
        out.push(side_text(i, files));
    }
    out
}

pub fn decision_json(d: &FlowDecision, files: &dyn FileNames) -> Value {
    json!({
        "verdict": d.verdict.as_str(),
        "egress": side_json(&d.egress, files),
        "ingress": d.ingress.as_ref().map(|i| side_json(i, files)),
    })
}
