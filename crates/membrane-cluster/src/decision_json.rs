//! Decisions as JSON and text: the one rendering of the engine's typed decisions
//! ([`FlowDecision`], [`SideDecision`], [`Origin`], [`L7Outcome`], [`Enforcement`]) that every
//! output carrying a decision uses: `membrane check`, `explain`, `test` and `matrix`, the
//! lab's flow events and the proxies' events.
//!
//! The JSON follows the decision schema, `docs/schema/decision-v1.json` (its version is
//! [`SCHEMA`]); `docs/decision-schema.md` says what the fields mean and how the version
//! changes. Adding a field keeps the version; renaming or removing one makes a new one.

use crate::manifests::Loaded;
use membrane_policy::model::{Origin, PolicyOrigin};
use membrane_policy::resolve::Enforcement;
use membrane_policy::verdict::{FlowDecision, L7Outcome, Outcome, SideDecision, Verdict};
use serde_json::{Value, json};
use std::sync::Arc;

/// The version of the decision schema this module writes (`$id` of
/// `docs/schema/decision-v1.json`): outputs carry it as `"schema"`.
pub const SCHEMA: &str = "membrane.decision/v1";

/// Names the file a policy came from.
pub trait FileNames {
    fn file_name(&self, id: u32) -> &str;
}

impl FileNames for Vec<String> {
    fn file_name(&self, id: u32) -> &str {
        self.get(id as usize).map_or("<input>", String::as_str)
    }
}

impl FileNames for Loaded {
    fn file_name(&self, id: u32) -> &str {
        Loaded::file_name(self, id)
    }
}

/// Every `outcome` a side can have, in the schema's spelling.
pub const OUTCOMES: [Outcome; 7] = [
    Outcome::NotEnforced,
    Outcome::Allowed,
    Outcome::DefaultDeny,
    Outcome::DenyRule,
    Outcome::Http403,
    Outcome::TlsDenied,
    Outcome::DnsRefused,
];

/// Every verdict a decision can have.
pub const VERDICTS: [Verdict; 6] = [
    Verdict::Allow,
    Verdict::Deny,
    Verdict::Http403,
    Verdict::TlsDenied,
    Verdict::DnsOk,
    Verdict::DnsRefused,
];

/// A side's `outcome` (`NotEnforced`, `DefaultDeny`, …).
pub fn outcome_str(o: Outcome) -> &'static str {
    match o {
        Outcome::NotEnforced => "NotEnforced",
        Outcome::Allowed => "Allowed",
        Outcome::DefaultDeny => "DefaultDeny",
        Outcome::DenyRule => "DenyRule",
        Outcome::Http403 => "Http403",
        Outcome::TlsDenied => "TlsDenied",
        Outcome::DnsRefused => "DnsRefused",
    }
}

/// An enforcement's `kind`.
pub fn enforcement_kind(e: &Enforcement) -> &'static str {
    match e {
        Enforcement::NotSelected => "not-selected",
        Enforcement::ModeNever => "mode-never",
        Enforcement::ModeAlways => "mode-always",
        Enforcement::InitIdentity => "init-identity",
        Enforcement::Selected { .. } => "selected",
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

/// A policy-map entry's origin (`$defs/origin`).
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

/// An L7 outcome (`$defs/l7`): its rule is an origin with the L7 rule's index and place.
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

/// Why a side is enforced or not (`$defs/enforcement`).
pub fn enforcement_json(e: &Enforcement) -> Value {
    let policies: Vec<String> = match e {
        Enforcement::Selected { rules } => rules.iter().map(|r| r.to_string()).collect(),
        _ => vec![],
    };
    json!({"kind": enforcement_kind(e), "rules": policies})
}

pub fn enforcement_text(e: &Enforcement) -> String {
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

/// The policies behind one side's decision: the deciding entries' policies, or, for a
/// default deny, the policies that made the side enforced (`policies` of a side).
pub fn side_policies(side: &SideDecision) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |p: &Arc<PolicyOrigin>| {
        let s = p.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    };
    match side.outcome {
        Outcome::NotEnforced => {}
        Outcome::DefaultDeny => {
            if let Enforcement::Selected { rules } = &side.enforcement {
                for r in rules {
                    push(&r.policy);
                }
            }
        }
        _ => {
            for p in side.deciding.iter().filter_map(|o| o.policy()) {
                push(p);
            }
        }
    }
    out
}

/// One side of a decision (`$defs/side`).
pub fn side_json(side: &SideDecision, files: &dyn FileNames) -> Value {
    json!({
        "direction": side.direction.as_str(),
        "outcome": outcome_str(side.outcome),
        "enforced": !matches!(side.outcome, Outcome::NotEnforced),
        "reason": side.outcome.reason(),
        "key": side.key.map(|k| json!({"peer": k.peer, "protocol": k.protocol, "port": k.port, "prefix_len": k.prefix_len})),
        "deciding": side.deciding.iter().map(|o| origin_json(o, files)).collect::<Vec<_>>(),
        "policies": side_policies(side),
        "enforcement": enforcement_json(&side.enforcement),
        "proxy": side.proxy.as_ref().map(|p| p.as_str()),
        "l7": side.l7.as_ref().map(|l| l7_json(l, files)),
        "explanation": side_text(side, files),
    })
}

/// The compact side of `membrane matrix --output json` cells (`$defs/compactSide`): a
/// subset of [`side_json`]'s fields, with the same meaning.
pub fn compact_side_json(side: &SideDecision, files: &dyn FileNames) -> Value {
    json!({
        "outcome": outcome_str(side.outcome),
        "reason": side.outcome.reason(),
        "enforced": side.outcome != Outcome::NotEnforced,
        "proxy": side.proxy.as_ref().map(|p| p.as_str()),
        "policies": side_policies(side),
        "deciding": side.deciding.iter().map(|o| origin_json(o, files)).collect::<Vec<_>>(),
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

/// A decision (`$defs/decision`, the schema's root): the verdict and both sides.
pub fn decision_json(d: &FlowDecision, files: &dyn FileNames) -> Value {
    sides_json(d.verdict, Some(&d.egress), d.ingress.as_ref(), files)
}

/// A decision from its parts, for deciders that may have no egress side (a proxy whose
/// source is not a local endpoint): `egress` is then `null`.
pub fn sides_json(
    verdict: Verdict,
    egress: Option<&SideDecision>,
    ingress: Option<&SideDecision>,
    files: &dyn FileNames,
) -> Value {
    json!({
        "verdict": verdict.as_str(),
        "egress": egress.map(|e| side_json(e, files)),
        "ingress": ingress.map(|i| side_json(i, files)),
    })
}

/// A decision carried by an event (lab flow events, proxy events): the decision with the
/// schema's version, since an event line stands alone.
pub fn event_decision_json(
    verdict: Verdict,
    egress: Option<&SideDecision>,
    ingress: Option<&SideDecision>,
    files: &dyn FileNames,
) -> Value {
    let mut v = sides_json(verdict, egress, ingress, files);
    v["schema"] = json!(SCHEMA);
    v
}
