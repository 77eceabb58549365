//! `membrane check` and `membrane explain`: expectations and single flows on manifests.

use crate::Output;
use crate::printer::{collect_files, diagnostic_json, render_diagnostic};
use membrane_cluster::decision_json::{SCHEMA, decision_json, decision_lines};
use membrane_cluster::manifests::{Loaded, SourceFile, load};
use membrane_cluster::runner::{Evaluation, describe_flow, evaluate_flow};
use membrane_cluster::scenario::FlowSpec;
use membrane_cluster::world::Party;
use membrane_policy::model::Direction;
use membrane_policy::verdict::{FlowDecision, HttpRequest, Outcome, Verdict};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

/// Reads every file under the paths and loads the cluster. `Err` means unusable input.
pub fn load_paths(paths: &[PathBuf]) -> Result<Loaded, String> {
    let files = collect_files(paths)?;
    if files.is_empty() {
        return Err("no YAML files found".into());
    }
    let mut sources = Vec::new();
    for f in files {
        let text = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map_err(|e| format!("-: {e}"))?;
            s
        } else {
            std::fs::read_to_string(&f).map_err(|e| format!("{}: cannot read: {e}", f.display()))?
        };
        sources.push(SourceFile {
            name: f.display().to_string(),
            text,
        });
    }
    Ok(load(sources))
}

/// Hints for the sides that were not enforced, or enforced by surprise.
fn hints(loaded: &Loaded, flow: &FlowSpec, d: &FlowDecision) -> Vec<String> {
    let world = &loaded.world;
    let mut out = Vec::new();
    let parties = [
        (world.party(&flow.from), Direction::Egress, &d.egress),
        (
            flow.to.as_deref().and_then(|t| world.party(t)),
            Direction::Ingress,
            d.ingress.as_ref().unwrap_or(&d.egress),
        ),
    ];
    for (party, dir, side) in parties {
        if side.direction != dir || side.outcome != Outcome::NotEnforced {
            continue;
        }
        if let Some(p @ (Party::Pod(_) | Party::Entity { .. })) = party {
            out.extend(
                world
                    .hints(p, dir)
                    .into_iter()
                    .map(|h| format!("{dir}: {h}")),
            );
        }
    }
    out
}

fn evaluation_lines(loaded: &Loaded, flow: &FlowSpec, e: &Evaluation) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(l) = &e.lookup {
        lines.extend(
            decision_lines(l, loaded)
                .into_iter()
                .map(|s| format!("dns lookup {s}")),
        );
    }
    if let Some((route, hop)) = &e.gateway {
        lines.extend(
            decision_lines(hop, loaded)
                .into_iter()
                .map(|s| format!("to the gateway, {s}")),
        );
        if !route.is_empty() {
            lines.push(format!("routed by HTTPRoute {route}"));
        }
    }
    if let Some(d) = &e.decision {
        let prefix = if e.gateway.is_some() {
            "gateway to backend, "
        } else {
            ""
        };
        lines.extend(
            decision_lines(d, loaded)
                .into_iter()
                .map(|s| format!("{prefix}{s}")),
        );
        lines.extend(
            hints(loaded, flow, d)
                .into_iter()
                .map(|h| format!("hint: {h}")),
        );
    }
    lines
}

pub fn run_check(paths: &[PathBuf], output: Output) -> u8 {
    let loaded = match load_paths(paths) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if loaded.diagnostics.iter().any(|(_, d)| d.code == "yaml") {
        for (f, d) in loaded.diagnostics.iter().filter(|(_, d)| d.code == "yaml") {
            eprint!(
                "{}",
                render_diagnostic(loaded.file_name(*f), &loaded.files[*f as usize].text, d)
            );
        }
        return 2;
    }
    let mut results = Vec::new();
    for exp in &loaded.expectations {
        let r = evaluate_flow(&loaded.world, &exp.flow);
        results.push((exp, r));
    }
    let holds = |r: &Result<Evaluation, String>, f: &FlowSpec| {
        r.as_ref().is_ok_and(|e| e.verdict == f.expect)
    };
    let held = results.iter().filter(|(e, r)| holds(r, &e.flow)).count();
    let total = results.len();
    let policies = loaded.world.policy_set.policies.len();
    let invalid: Vec<_> = loaded
        .world
        .policy_set
        .policies
        .iter()
        .filter(|p| !p.valid)
        .collect();
    match output {
        Output::Json => {
            let v = json!({
                "schema": SCHEMA,
                "files": loaded.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
                "policies": policies,
                "invalid_policies": invalid.iter().map(|p| p.origin.to_string()).collect::<Vec<_>>(),
                "workloads": loaded.workloads.iter().map(|w| json!({"kind": w.kind, "namespace": w.namespace, "name": w.name, "replicas": w.replicas, "endpoint": w.endpoint})).collect::<Vec<_>>(),
                "expectations": results.iter().map(|(e, r)| json!({
                    "test": e.test,
                    "file": loaded.file_name(e.file),
                    "line": e.flow.span.line,
                    "claim": e.flow.note,
                    "flow": describe_flow(&e.flow),
                    "expected": e.flow.expect.as_str(),
                    "actual": r.as_ref().ok().map(|x| x.verdict.as_str()),
                    "holds": holds(r, &e.flow),
                    "error": r.as_ref().err(),
                    "decision": r.as_ref().ok().and_then(|x| x.decision.as_ref()).map(|d| decision_json(d, &loaded)),
                    "explanation": r.as_ref().ok().map(|x| evaluation_lines(&loaded, &e.flow, x)),
                })).collect::<Vec<_>>(),
                "diagnostics": loaded.diagnostics.iter().map(|(f, d)| diagnostic_json(loaded.file_name(*f), d)).collect::<Vec<_>>(),
                "held": held,
                "total": total,
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Text => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "{} files, {} workloads, {policies} policies ({} not enforced), {total} expectations",
                loaded.files.len(),
                loaded.workloads.len(),
                invalid.len()
            );
            for p in &invalid {
                let why = p.diagnostics.iter().find(|d| d.is_error());
                let (line, msg) = why.map_or((0, String::new()), |d| {
                    (d.span.map_or(0, |s| s.line), d.message.clone())
                });
                let _ = writeln!(
                    out,
                    "  not enforced: {} ({}:{line}): {msg}",
                    p.origin,
                    loaded.file_name(p.origin.file)
                );
            }
            let mut current_test = String::new();
            for (e, r) in &results {
                if e.test != current_test {
                    current_test = e.test.clone();
                    let _ = writeln!(out, "\n{} ({})", e.test, loaded.file_name(e.file));
                }
                let ok = holds(r, &e.flow);
                let mark = if ok { "holds        " } else { "DOES NOT HOLD" };
                let claim = e
                    .flow
                    .note
                    .clone()
                    .unwrap_or_else(|| describe_flow(&e.flow));
                let _ = writeln!(out, "  {mark} {claim}  [line {}]", e.flow.span.line);
                let indent = "                ";
                match r {
                    Err(err) => {
                        let _ = writeln!(out, "{indent}{}: {err}", describe_flow(&e.flow));
                    }
                    Ok(ev) => {
                        let _ = writeln!(
                            out,
                            "{indent}{}: expected {}, got {}",
                            describe_flow(&e.flow),
                            e.flow.expect,
                            ev.verdict
                        );
                        if !ok {
                            for l in evaluation_lines(&loaded, &e.flow, ev) {
                                let _ = writeln!(out, "{indent}{l}");
                            }
                        }
                    }
                }
            }
            let findings = membrane_cluster::lint::lint(&loaded);
            let count = |sev| findings.iter().filter(|f| f.severity == sev).count();
            let _ = writeln!(
                out,
                "\nlint: {} error(s), {} warning(s), {} info (`membrane lint` shows them)",
                count(membrane_policy::Severity::Error),
                count(membrane_policy::Severity::Warning),
                count(membrane_policy::Severity::Info),
            );
            let mut by_rule: std::collections::BTreeMap<&str, usize> =
                std::collections::BTreeMap::new();
            for f in findings
                .iter()
                .filter(|f| f.severity >= membrane_policy::Severity::Warning)
            {
                *by_rule.entry(f.rule).or_default() += 1;
            }
            for (rule, n) in by_rule {
                let summary = membrane_cluster::lint::rule(rule).map_or("", |r| r.summary);
                let _ = writeln!(out, "  {rule} x{n}: {summary}");
            }
            let _ = writeln!(out, "{held} of {total} expectations hold");
        }
    }
    u8::from(held != total)
}

pub struct ExplainArgs {
    pub from: String,
    pub to: String,
    pub port: Option<u16>,
    pub protocol: String,
    pub http_method: Option<String>,
    pub http_path: Option<String>,
    pub dns: Option<String>,
}

pub fn run_explain(paths: &[PathBuf], args: ExplainArgs, output: Output) -> u8 {
    let loaded = match load_paths(paths) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let http = match (&args.http_method, &args.http_path) {
        (None, None) => None,
        (m, p) => Some(HttpRequest {
            method: m.clone().unwrap_or_else(|| "GET".into()),
            path: p.clone().unwrap_or_else(|| "/".into()),
            host: String::new(),
            headers: vec![],
        }),
    };
    let flow = FlowSpec {
        from: args.from.clone(),
        to: if args.dns.is_some() {
            None
        } else {
            Some(args.to.clone())
        },
        port: args.port,
        protocol: Some(args.protocol.to_ascii_uppercase()),
        icmp: None,
        http,
        tls: None,
        dns: args.dns.clone(),
        expect: Verdict::Allow,
        drop: None,
        reason: None,
        inject_headers: vec![],
        note: None,
        span: Default::default(),
    };
    for name in [Some(&flow.from), flow.to.as_ref()].into_iter().flatten() {
        if loaded.world.party(name).is_none() {
            eprintln!(
                "error: unknown endpoint `{name}`; use namespace/name of a workload, a node name, `world`, an external name or an IP address"
            );
            return 2;
        }
    }
    let ev = match evaluate_flow(&loaded.world, &flow) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match output {
        Output::Json => {
            let v = json!({
                "schema": SCHEMA,
                "flow": describe_flow(&flow),
                "verdict": ev.verdict.as_str(),
                "dns_lookup": ev.lookup.as_ref().map(|d| decision_json(d, &loaded)),
                "gateway": ev.gateway.as_ref().map(|(r, d)| json!({"route": r, "decision": decision_json(d, &loaded)})),
                "decision": ev.decision.as_ref().map(|d| decision_json(d, &loaded)),
                "explanation": evaluation_lines(&loaded, &flow, &ev),
            });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Text => {
            println!("{}: {}", describe_flow(&flow), ev.verdict);
            for l in evaluation_lines(&loaded, &flow, &ev) {
                println!("  {l}");
            }
        }
    }
    0
}
