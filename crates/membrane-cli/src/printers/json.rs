//! JSON for machines: every command offers it.

use super::{cell_policies, diagnostic_json, evaluation_lines, kind_str};
use crate::commands::bench::BenchReport;
use crate::commands::check::CheckReport;
use crate::commands::explain::ExplainReport;
use crate::commands::test::TestFileReport;
use crate::commands::validate::ValidateReport;
use membrane_cluster::decision_json::{FileNames, SCHEMA, compact_side_json, decision_json};
use membrane_cluster::lint::{self, Finding};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::{CellVerdict, Matrix, MatrixParty};
use membrane_cluster::runner::{FlowResult, describe_flow};
use membrane_datapath::probe::FileReport;
use serde_json::{Value, json};
use std::io::Write;

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// test (and lab's summary)

fn flow_json(r: &FlowResult, files: &Vec<String>) -> Value {
    json!({
        "line": r.flow.span.line,
        "flow": describe_flow(&r.flow),
        "expected": r.flow.expect.as_str(),
        "actual": r.actual.map(|v| v.as_str()),
        "passed": r.passed,
        "problem": r.problem,
        "dns_lookup": r.lookup.as_ref().map(|d| decision_json(d, files)),
        "decision": r.decision.as_ref().map(|d| decision_json(d, files)),
    })
}

/// One scenario file, an element of the summary's `files`.
pub fn test_file(r: &TestFileReport) -> Value {
    let name = r.name;
    json!({
        "file": name,
        "scenario": r.result.name,
        "passed": r.passed,
        "failed": r.failed - r.skipped,
        "skipped": r.skipped,
        "diagnostics": r.world.diagnostics.iter().map(|d| diagnostic_json(name, d)).collect::<Vec<_>>(),
        "flows": r.result.results.iter().map(|fr| flow_json(fr, r.files)).collect::<Vec<_>>(),
    })
}

pub fn test_summary(
    out: &mut impl Write,
    files: Vec<Value>,
    passed: usize,
    failed: usize,
    skipped: usize,
) {
    let v = json!({"schema": SCHEMA, "files": files, "passed": passed, "failed": failed, "skipped": skipped});
    let _ = writeln!(out, "{}", pretty(&v));
}

pub fn lab_summary(
    out: &mut impl Write,
    reports: &[FileReport],
    passed: usize,
    failed: usize,
    skipped: usize,
) {
    let v = json!({
        "files": reports.iter().map(FileReport::json).collect::<Vec<_>>(),
        "passed": passed, "failed": failed, "skipped": skipped,
    });
    let _ = writeln!(out, "{}", pretty(&v));
}

// ---------------------------------------------------------------------------------------
// validate, check, explain

pub fn validate(r: &ValidateReport) -> String {
    let names = &r.names;
    pretty(&json!({
        "files": names,
        "policies": r.policies,
        "invalid_policies": r.invalid,
        "diagnostics": r.diagnostics.iter().map(|(f, d)| diagnostic_json(names.file_name(*f), d)).collect::<Vec<_>>(),
    }))
}

pub fn check(r: &CheckReport) -> String {
    let loaded = r.loaded;
    pretty(&json!({
        "schema": SCHEMA,
        "files": loaded.files.iter().map(|f| &f.name).collect::<Vec<_>>(),
        "policies": loaded.world.policy_set.policies.len(),
        "invalid_policies": r.invalid.iter().map(|p| p.origin.to_string()).collect::<Vec<_>>(),
        "workloads": loaded.workloads.iter().map(|w| json!({"kind": w.kind, "namespace": w.namespace, "name": w.name, "replicas": w.replicas, "endpoint": w.endpoint})).collect::<Vec<_>>(),
        "expectations": r.results.iter().map(|(e, res)| json!({
            "test": e.test,
            "file": loaded.file_name(e.file),
            "line": e.flow.span.line,
            "claim": e.flow.note,
            "flow": describe_flow(&e.flow),
            "expected": e.flow.expect.as_str(),
            "actual": res.as_ref().ok().map(|x| x.verdict.as_str()),
            "holds": CheckReport::holds(e, res),
            "error": res.as_ref().err(),
            "decision": res.as_ref().ok().and_then(|x| x.decision.as_ref()).map(|d| decision_json(d, loaded)),
            "explanation": res.as_ref().ok().map(|x| evaluation_lines(loaded, &e.flow, x)),
        })).collect::<Vec<_>>(),
        "diagnostics": loaded.diagnostics.iter().map(|(f, d)| diagnostic_json(loaded.file_name(*f), d)).collect::<Vec<_>>(),
        "held": r.held,
        "total": r.total,
    }))
}

pub fn explain(r: &ExplainReport) -> String {
    let (loaded, flow, ev) = (r.loaded, r.flow, r.evaluation);
    pretty(&json!({
        "schema": SCHEMA,
        "flow": describe_flow(flow),
        "verdict": ev.verdict.as_str(),
        "dns_lookup": ev.lookup.as_ref().map(|d| decision_json(d, loaded)),
        "gateway": ev.gateway.as_ref().map(|(r, d)| json!({"route": r, "decision": decision_json(d, loaded)})),
        "decision": ev.decision.as_ref().map(|d| decision_json(d, loaded)),
        "explanation": evaluation_lines(loaded, flow, ev),
    }))
}

// ---------------------------------------------------------------------------------------
// lint

fn rule_name(id: &str) -> &'static str {
    lint::rule(id).map_or("", |r| r.name)
}

pub fn lint(loaded: &Loaded, findings: &[Finding]) -> Value {
    let c = super::Counts::of(findings.iter().map(|f| f.severity));
    json!({
        "findings": findings.iter().map(|f| json!({
            "rule": f.rule,
            "name": rule_name(f.rule),
            "severity": f.severity.to_string(),
            "file": loaded.file_name(f.file),
            "line": f.span.map(|s| s.line),
            "column": f.span.map(|s| s.col),
            "message": f.message,
            "help": f.help,
        })).collect::<Vec<_>>(),
        "summary": {
            "files": loaded.files.len(),
            "findings": findings.len(),
            "errors": c.errors,
            "warnings": c.warnings,
            "info": c.info,
        },
    })
}

// ---------------------------------------------------------------------------------------
// matrix

pub fn party_json(i: usize, p: &MatrixParty, loaded: &Loaded) -> Value {
    let identity = loaded.world.identities().get(p.identity).map(|i| i.name());
    json!({
        "index": i + 1,
        "name": p.name,
        "kind": p.kind.as_str(),
        "workload_kind": p.workload_kind,
        "namespace": p.namespace,
        "pods": p.replicas,
        "identity": p.identity,
        "identity_labels": identity,
        "labels": p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "ports": p.ports.iter().map(|d| json!({"port": d.port, "protocol": d.protocol.as_str(), "name": d.name})).collect::<Vec<_>>(),
        "source": p.is_source,
        "destination": p.is_destination,
        "routes": p.routes,
    })
}

pub fn matrix(out: &mut dyn Write, loaded: &Loaded, m: &Matrix) -> std::io::Result<()> {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let indent = |s: String| s.replace('\n', "\n  ");
    let files: Vec<&str> = loaded.files.iter().map(|f| f.name.as_str()).collect();
    writeln!(out, "{{")?;
    writeln!(out, "  \"files\": {},", indent(pretty(&json!(files))))?;
    let endpoints: Vec<Value> = m
        .parties
        .iter()
        .enumerate()
        .map(|(i, p)| party_json(i, p, loaded))
        .collect();
    writeln!(
        out,
        "  \"endpoints\": {},",
        indent(pretty(&json!(endpoints)))
    )?;
    let ports: Vec<Value> = m
        .ports
        .iter()
        .map(|p| {
            json!({
                "port": p.port,
                "protocol": p.protocol.as_str(),
                "declared_by": p.declared_by.iter().map(|&i| &m.parties[i].name).collect::<Vec<_>>(),
                "named_by": p.named_by,
            })
        })
        .collect();
    writeln!(out, "  \"ports\": {},", indent(pretty(&json!(ports))))?;
    let summary = json!({
        "cells": m.cells.len(),
        "allow": m.count(CellVerdict::Allow),
        "l7": m.count(CellVerdict::L7),
        "deny": m.count(CellVerdict::Deny),
        "evaluated": m.evaluated,
        "kube_dns_included": m.kube_dns_included,
    });
    writeln!(out, "  \"summary\": {},", indent(pretty(&summary)))?;
    // Cells: one per line. A decision shared by several cells is serialized once.
    let mut sides: Vec<Option<String>> = vec![None; m.decisions.len()];
    writeln!(out, "  \"cells\": [")?;
    for (n, c) in m.cells.iter().enumerate() {
        let body = sides[c.decision].get_or_insert_with(|| {
            let d = &m.decisions[c.decision];
            let v = json!({
                "egress": compact_side_json(&d.egress, loaded),
                "ingress": d.ingress.as_ref().map(|i| compact_side_json(i, loaded)),
                "policies": cell_policies(d),
            });
            let s = serde_json::to_string(&v).unwrap_or_default();
            // Without the braces, to splice after the cell's own fields.
            s[1..s.len().saturating_sub(1)].to_string()
        });
        let port = &m.ports[c.port];
        // The cell's own fields first, in reading order.
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let head = format!(
            "{{\"source\":{},\"destination\":{},\"port\":{},\"protocol\":\"{}\",\"verdict\":\"{}\",\"kind\":\"{}\",\"declared\":{}",
            q(&m.parties[c.source].name),
            q(&m.parties[c.destination].name),
            port.port,
            port.protocol,
            c.verdict.as_str(),
            kind_str(c.kind),
            c.declared,
        );
        let comma = if n + 1 < m.cells.len() { "," } else { "" };
        writeln!(out, "    {head},{body}}}{comma}")?;
    }
    writeln!(out, "  ]")?;
    writeln!(out, "}}")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench

/// One compact object (keys: files, flows, iterations, phases_ms.*, incremental.*,
/// memory.*).
pub fn bench(r: &BenchReport) -> Value {
    let inc = r.incremental.as_ref().map(|i| {
        json!({
            "repetitions": r.reps,
            "resolve_untouched_ms": i.resolve_untouched_ms,
            "add_policy_ms": i.add_policy_ms,
            "remove_policy_ms": i.remove_policy_ms,
            "add_pod_ms": i.add_pod_ms,
            "new_pod_policy_ms": i.new_pod_policy_ms,
            "add_pod_snapshot_held_ms": i.add_pod_snapshot_held_ms,
            "remove_pod_ms": i.remove_pod_ms,
            "entries_added_by_policy": i.policy_entries,
            "subjects_changed_by_pod": i.pod_subjects,
        })
    });
    json!({
        "files": r.files,
        "flows": r.flows,
        "iterations": r.iterations,
        "phases_ms": {
            "yaml_parse": r.yaml_ms,
            "scenario_decode": r.decode_ms,
            "repository": r.repository_ms,
            "resolve_and_flows": r.flows_ms,
            "whole_engine": r.whole_ms,
        },
        "whole_vs_yaml": r.whole_ms / r.yaml_ms.max(1e-9),
        "incremental": inc,
        "memory": {
            "peak_rss_mb": r.peak_rss_mb,
            "engine_bytes_per_pod": r.bytes_per_pod,
        },
    })
}
