//! Human-readable explanations of decisions: which side, which policy, which rule, where.

use membrane_policy::model::EntryOrigin;
use membrane_policy::resolve::{Enforcement, is_allow_localhost, is_synthesized_allow_all};
use membrane_policy::verdict::{FlowDecision, Outcome, SideDecision};
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

pub fn origin_text(o: &EntryOrigin, files: &dyn FileNames) -> String {
    if is_allow_localhost(o) {
        return "the agent's allow-localhost (the local host always reaches its pods)".into();
    }
    if is_synthesized_allow_all(o) {
        return format!(
            "the allow-all synthesized because {} sets enableDefaultDeny false ({}:{})",
            o.rule,
            files.file_name(o.rule.policy.file),
            o.rule.span.line
        );
    }
    format!(
        "{} ({}:{}:{})",
        o,
        files.file_name(o.rule.policy.file),
        o.span.line,
        o.span.col
    )
}

pub fn origin_json(o: &EntryOrigin, files: &dyn FileNames) -> Value {
    let p = &o.rule.policy;
    json!({
        "kind": p.kind.as_str(),
        "namespace": p.namespace,
        "name": p.name,
        "spec_index": o.rule.spec_index,
        "section": o.section.field_name(),
        "rule_index": if o.index == usize::MAX { Value::Null } else { json!(o.index) },
        "file": if p.file == u32::MAX { Value::Null } else { json!(files.file_name(p.file)) },
        "line": o.span.line,
        "column": o.span.col,
        "text": origin_text(o, files),
    })
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
                .l7_detail
                .clone()
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
                if let Some(d) = &side.l7_detail {
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
                side.l7_detail.clone().unwrap_or_default(),
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
        "proxy": side.proxy,
        "l7": side.l7_detail,
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
