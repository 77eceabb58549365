//! Every output that carries a decision follows the decision schema,
//! `docs/schema/decision-v1.json`: `membrane check`, `explain`, `test` and `matrix` JSON on
//! the examples and every scenario file, and the lab's flow events and the proxies' events
//! (rendered directly from scenario flows, no network namespaces needed). The schema lists
//! every value the engine's enums can produce.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/json_schema.rs"]
mod json_schema;

use json_schema::Schema;
use membrane_cluster::decision_json::{
    FileNames, OUTCOMES, SCHEMA, VERDICTS, enforcement_kind, outcome_str,
};
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_datapath::events::{DropEvent, flow_json};
use membrane_datapath::node::proxy::{denial_json, dns_forwarded_json, forwarded_json};
use membrane_datapath::topology::Topology;
use membrane_policy::api::{PolicyKind, RuleSection};
use membrane_policy::model::{Direction, Origin};
use membrane_policy::resolve::Enforcement;
use membrane_policy::verdict::{HttpRequest, L7Outcome, L7Parser, Outcome, Verdict};
use membrane_proxy::policy::{DnsForwarded, Forwarded};
use membrane_proxy::world::proxy_policy_from_world;
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn schema() -> Schema {
    Schema::load(&repo_root().join("docs/schema/decision-v1.json"))
}

/// Runs membrane and parses its standard output as JSON.
fn membrane_json(args: &[&str]) -> Value {
    let o = Command::new(env!("CARGO_BIN_EXE_membrane"))
        .args(args)
        .current_dir(repo_root())
        .env("NO_COLOR", "1")
        .output()
        .expect("run membrane");
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "membrane {args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[track_caller]
fn assert_valid(s: &Schema, def: Option<&str>, v: &Value, what: &str) {
    let errs = s.validate(def, v);
    assert!(
        errs.is_empty(),
        "{what} does not follow {}:\n{}",
        def.unwrap_or("the schema"),
        errs.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every object under `v` that has a `verdict` and an `egress`: the decisions.
fn decisions(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(o) => {
            if o.contains_key("egress") && o.contains_key("verdict") {
                out.push(v.clone());
            }
            o.values().for_each(|x| decisions(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| decisions(x, out)),
        _ => {}
    }
}

fn yaml_files(dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| format!("{dir}/{}", p.file_name().unwrap().to_string_lossy()))
        .collect();
    out.sort();
    out
}

#[test]
fn the_schema_is_well_formed_and_versioned() {
    let s = schema();
    let problems = s.lint();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        s.root["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(s.root["$id"].as_str().unwrap().ends_with(":v1"));
    assert_eq!(s.def("schemaVersion")["const"], SCHEMA);
    assert_eq!(s.root["$ref"], "#/$defs/decision");
    // The closed shapes stay closed.
    for def in [
        "decision",
        "side",
        "compactSide",
        "origin",
        "l7",
        "l7Rule",
        "enforcement",
        "mapKey",
    ] {
        assert_eq!(s.def(def)["additionalProperties"], false, "{def}");
    }
    // The matrix's compact side is a subset of the full side, field for field.
    let full = s.def("side")["properties"].as_object().unwrap();
    for (k, v) in s.def("compactSide")["properties"].as_object().unwrap() {
        assert_eq!(
            full.get(k),
            Some(v),
            "compactSide.{k} differs from side.{k}"
        );
    }
    // So is an L7 rule of an origin, plus l7_index.
    let origin = s.def("origin")["properties"].as_object().unwrap();
    let l7rule = s.def("l7Rule")["properties"].as_object().unwrap();
    for k in origin.keys() {
        assert!(l7rule.contains_key(k), "l7Rule lacks {k}");
    }
}

fn enum_strings(s: &Schema, def: &str) -> Vec<String> {
    s.enum_values(def)
        .iter()
        .filter_map(|v| v.as_str().map(String::from))
        .collect()
}

#[track_caller]
fn assert_listed(s: &Schema, def: &str, values: &[&str]) {
    let listed = enum_strings(s, def);
    for v in values {
        assert!(
            listed.iter().any(|l| l == v),
            "{def} lacks {v:?}: {listed:?}"
        );
    }
}

#[test]
fn every_value_the_engine_produces_is_in_the_schema() {
    let s = schema();
    // Exhaustive matches: a new variant breaks this test's build until it is listed here
    // (and then in the schema).
    let outcome_guard = |o: Outcome| match o {
        Outcome::NotEnforced
        | Outcome::Allowed
        | Outcome::DefaultDeny
        | Outcome::DenyRule
        | Outcome::Http403
        | Outcome::TlsDenied
        | Outcome::DnsRefused => (),
    };
    OUTCOMES.iter().for_each(|o| outcome_guard(*o));
    let verdict_guard = |v: Verdict| match v {
        Verdict::Allow
        | Verdict::Deny
        | Verdict::Http403
        | Verdict::TlsDenied
        | Verdict::DnsOk
        | Verdict::DnsRefused => (),
    };
    VERDICTS.iter().for_each(|v| verdict_guard(*v));
    assert_eq!(OUTCOMES.len(), 7);
    assert_eq!(VERDICTS.len(), 6);
    let verdicts: Vec<&str> = VERDICTS.iter().map(|v| v.as_str()).collect();
    assert_listed(&s, "verdict", &verdicts);
    let outcomes: Vec<&str> = OUTCOMES.iter().map(|o| outcome_str(*o)).collect();
    assert_listed(&s, "outcome", &outcomes);
    for o in OUTCOMES {
        assert_eq!(outcome_str(o), format!("{o:?}"));
    }
    let reasons: Vec<&str> = OUTCOMES.iter().map(|o| o.reason()).collect();
    assert_listed(&s, "reason", &reasons);
    assert_listed(
        &s,
        "direction",
        &[Direction::Egress.as_str(), Direction::Ingress.as_str()],
    );

    // Origins: the kinds of every variant.
    let origin_kind = |o: &Origin| match o {
        Origin::Rule(_) => "rule",
        Origin::DefaultAllow { .. } => "default-allow",
        Origin::AllowLocalhost => "allow-localhost",
    };
    assert_eq!(
        Origin::AllowLocalhost.kind(),
        origin_kind(&Origin::AllowLocalhost)
    );
    assert_listed(
        &s,
        "originKind",
        &["rule", "default-allow", "allow-localhost"],
    );
    let kinds = [
        PolicyKind::CiliumNetworkPolicy,
        PolicyKind::CiliumClusterwideNetworkPolicy,
        PolicyKind::NetworkPolicy,
    ];
    let kind_guard = |k: PolicyKind| match k {
        PolicyKind::CiliumNetworkPolicy
        | PolicyKind::CiliumClusterwideNetworkPolicy
        | PolicyKind::NetworkPolicy => (),
    };
    kinds.iter().for_each(|k| kind_guard(*k));
    let origin_props = &s.def("origin")["properties"];
    let policy_kinds: Vec<&Value> = origin_props["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for k in kinds {
        assert!(policy_kinds.contains(&&json!(k.as_str())), "{}", k.as_str());
    }
    let sections = [
        RuleSection::Ingress,
        RuleSection::IngressDeny,
        RuleSection::Egress,
        RuleSection::EgressDeny,
    ];
    let section_guard = |r: RuleSection| match r {
        RuleSection::Ingress
        | RuleSection::IngressDeny
        | RuleSection::Egress
        | RuleSection::EgressDeny => (),
    };
    sections.iter().for_each(|r| section_guard(*r));
    let names: Vec<&str> = sections.iter().map(|r| r.field_name()).collect();
    assert_listed(&s, "section", &names);

    // L7 outcomes: every variant's kind (the ones needing a rule, by their listed name).
    let l7_kind = |l: &L7Outcome| match l {
        L7Outcome::NotManaged => "not-managed",
        L7Outcome::HostLoopback => "host-loopback",
        L7Outcome::HttpMatched { .. } => "http-matched",
        L7Outcome::HttpNoMatch { .. } => "http-no-match",
        L7Outcome::HttpWildcarded => "http-wildcarded",
        L7Outcome::DnsMatched { .. } => "dns-matched",
        L7Outcome::DnsWildcarded => "dns-wildcarded",
        L7Outcome::DnsNoMatch { .. } => "dns-no-match",
        L7Outcome::SniMatched { .. } => "sni-matched",
        L7Outcome::SniNoMatch { .. } => "sni-no-match",
    };
    let built = [
        L7Outcome::NotManaged,
        L7Outcome::HostLoopback,
        L7Outcome::HttpNoMatch {
            method: "GET".into(),
            path: "/".into(),
        },
        L7Outcome::HttpWildcarded,
        L7Outcome::DnsWildcarded,
        L7Outcome::DnsNoMatch { qname: "a.".into() },
        L7Outcome::SniNoMatch { sni: "a".into() },
    ];
    for l in &built {
        assert_eq!(l.kind(), l7_kind(l));
    }
    assert_listed(
        &s,
        "l7Kind",
        &[
            "not-managed",
            "host-loopback",
            "http-matched",
            "http-no-match",
            "http-wildcarded",
            "dns-matched",
            "dns-wildcarded",
            "dns-no-match",
            "sni-matched",
            "sni-no-match",
        ],
    );
    assert_eq!(enum_strings(&s, "l7Kind").len(), 10);

    let enforcements = [
        Enforcement::NotSelected,
        Enforcement::ModeNever,
        Enforcement::ModeAlways,
        Enforcement::InitIdentity,
        Enforcement::Selected { rules: vec![] },
    ];
    let kinds: Vec<&str> = enforcements.iter().map(enforcement_kind).collect();
    assert_listed(&s, "enforcementKind", &kinds);

    let parsers = [
        L7Parser::Http,
        L7Parser::Dns,
        L7Parser::Tls,
        L7Parser::Other("kafka".into()),
    ];
    let parser_guard = |p: &L7Parser| match p {
        L7Parser::Http | L7Parser::Dns | L7Parser::Tls | L7Parser::Other(_) => (),
    };
    parsers.iter().for_each(parser_guard);
    let names: Vec<&str> = parsers.iter().map(L7Parser::as_str).collect();
    assert_listed(&s, "proxy", &names);
    // A generic l7proto is any non-empty name.
    assert_valid(&s, Some("proxy"), &json!("my-proto"), "an l7proto name");
    assert!(!s.validate(Some("proxy"), &json!("")).is_empty());
}

#[test]
fn check_output_follows_the_schema() {
    let s = schema();
    for dir in ["examples/seed-demo", "examples/seed-demo-fixed"] {
        let v = membrane_json(&["check", "--output", "json", dir]);
        assert_eq!(v["schema"], SCHEMA);
        assert_valid(&s, Some("checkOutput"), &v, dir);
        let mut found = Vec::new();
        decisions(&v, &mut found);
        assert!(!found.is_empty(), "{dir}: no decisions");
        for d in &found {
            assert_valid(&s, None, d, dir);
        }
    }
}

#[test]
fn explain_output_follows_the_schema() {
    let s = schema();
    let flows: &[&[&str]] = &[
        &[
            "examples/seed-demo",
            "--from",
            "world",
            "--to",
            "gateway/cilium-gateway",
            "--port",
            "80",
            "--http-method",
            "GET",
            "--http-path",
            "/api/users/42",
        ],
        &[
            "examples/seed-demo-fixed",
            "--from",
            "tools/debug",
            "--to",
            "database/redis",
            "--port",
            "6379",
        ],
        &[
            "examples/seed-demo-fixed",
            "--from",
            "frontend/frontend",
            "--dns",
            "example.com",
        ],
        &[
            "examples/seed-demo",
            "--from",
            "frontend/frontend",
            "--to",
            "backend/backend",
            "--port",
            "3000",
        ],
    ];
    for args in flows {
        let mut all = vec!["explain", "--output", "json"];
        all.extend(args.iter());
        let v = membrane_json(&all);
        assert_eq!(v["schema"], SCHEMA, "{args:?}");
        assert_valid(&s, Some("explainOutput"), &v, &format!("explain {args:?}"));
    }
}

#[test]
fn test_output_follows_the_schema_on_every_scenario() {
    let s = schema();
    let mut files = yaml_files("tests/conformance");
    files.extend(yaml_files("tests/semantics"));
    assert!(files.len() > 100, "{}", files.len());
    let mut args = vec!["test", "--output", "json"];
    args.extend(files.iter().map(String::as_str));
    let v = membrane_json(&args);
    assert_eq!(v["schema"], SCHEMA);
    assert_eq!(v["files"].as_array().map(Vec::len), Some(files.len()));
    assert_valid(&s, Some("testOutput"), &v, "membrane test");
    let mut found = Vec::new();
    decisions(&v, &mut found);
    assert!(found.len() > 1000, "{}", found.len());
    // The scenarios exercise every L7 kind but host-loopback, every origin and outcome.
    let text = v.to_string();
    for kind in enum_strings(&s, "l7Kind") {
        if kind != "host-loopback" {
            assert!(text.contains(&format!("\"kind\":\"{kind}\"")), "{kind}");
        }
    }
    for o in enum_strings(&s, "originKind") {
        assert!(text.contains(&format!("\"origin\":\"{o}\"")), "{o}");
    }
    for o in enum_strings(&s, "outcome") {
        assert!(text.contains(&format!("\"outcome\":\"{o}\"")), "{o}");
    }
}

#[test]
fn matrix_output_follows_the_schema() {
    let s = schema();
    let v = membrane_json(&["matrix", "examples/seed-demo", "--output", "json"]);
    assert_valid(&s, Some("matrixOutput"), &v, "membrane matrix");
}

/// One scenario file's lab flow events and proxy events, rendered from its flows.
fn events_of(path: &Path) -> Vec<(&'static str, Value)> {
    let text = std::fs::read_to_string(path).unwrap();
    let Ok(scenario) = parse_scenario(&text) else {
        return vec![];
    };
    let name = path.display().to_string();
    let files = vec![name.clone()];
    let world = World::from_scenario(scenario, 0);
    let topo = Topology::plan(&world);
    let policy = proxy_policy_from_world(&world, None, None);
    let mut out = Vec::new();
    let place = |party| topo.place(party).map(|(_, a)| a);
    for f in &world.scenario.flows {
        let Some(from) = world.party(&f.from).and_then(place) else {
            continue;
        };
        let src = SocketAddr::new(IpAddr::V4(from), 40000);
        if let Some(q) = &f.dns {
            let Some(dns) = world.kube_dns().and_then(place) else {
                continue;
            };
            let dst = SocketAddr::new(IpAddr::V4(dns), 53);
            let d = policy.decide_dns(src, dst, membrane_policy::model::Protocol::Udp, q);
            out.push(proxy_event(d, src, dst, q.clone(), &files, |d| {
                dns_forwarded_json(
                    &DnsForwarded {
                        src,
                        dst,
                        qname: q.clone(),
                        rules: d.deciding_rules(),
                        decision: d,
                    },
                    "node-0",
                    &files,
                )
            }));
            continue;
        }
        let Some(to) = f.to.as_deref().and_then(|t| world.party(t)).and_then(place) else {
            continue;
        };
        let port = f.port.unwrap_or(80);
        let dst = SocketAddr::new(IpAddr::V4(to), port);
        let proto = match f.protocol.as_deref().unwrap_or("TCP") {
            "UDP" => 17,
            "SCTP" => 132,
            "TCP" => 6,
            _ => continue,
        };
        if !topo.nodes.is_empty() {
            for direction in [Direction::Egress, Direction::Ingress] {
                let ev = DropEvent {
                    node: 0,
                    time_us: 1_700_000_000_000_000,
                    direction,
                    reason: "default-deny".into(),
                    endpoint: "p0".into(),
                    endpoint_name: f.from.clone(),
                    src: from,
                    dst: to,
                    proto,
                    sport: 40000,
                    dport: port,
                    icmp: None,
                    tcp_flags: 0x02,
                    mark: None,
                };
                out.push(("lab", flow_json(&world, &topo, &ev, &files)));
            }
        }
        if let Some(h) = &f.http {
            let req: HttpRequest = h.clone();
            let d = policy.decide_http(src, dst, &req);
            let request = format!("{} {}", req.method, req.path);
            out.push(proxy_event(d, src, dst, request.clone(), &files, |d| {
                forwarded_json(
                    &Forwarded {
                        src,
                        dst,
                        request: request.clone(),
                        host: req.host.clone(),
                        status: Some(200),
                        rules: d.deciding_rules(),
                        decision: d,
                    },
                    "node-0",
                    &files,
                )
            }));
        }
        if let Some(t) = &f.tls {
            let d = policy.decide_tls(src, dst, &t.sni);
            if let Some(den) = d.denial(src, dst, t.sni.clone()) {
                out.push(("proxy", denial_json(&den, "node-0", &files)));
            }
        }
    }
    out
}

fn proxy_event(
    d: membrane_proxy::ProxyDecision,
    src: SocketAddr,
    dst: SocketAddr,
    request: String,
    files: &dyn FileNames,
    forwarded: impl FnOnce(membrane_proxy::ProxyDecision) -> Value,
) -> (&'static str, Value) {
    match d.denial(src, dst, request) {
        Some(den) => ("proxy", denial_json(&den, "node-0", files)),
        None => ("proxy", forwarded(d)),
    }
}

#[test]
fn lab_and_proxy_events_follow_the_schema() {
    let s = schema();
    let mut files = yaml_files("tests/conformance");
    files.extend(yaml_files("tests/semantics"));
    let (mut lab, mut with_decision, mut dropped, mut forwarded) = (0, 0, 0, 0);
    let mut l7_kinds = std::collections::BTreeSet::new();
    for f in &files {
        for (what, ev) in events_of(&repo_root().join(f)) {
            let (def, decision) = if what == "lab" {
                lab += 1;
                ("labFlowEvent", &ev["flow"]["decision"])
            } else {
                match ev["verdict"].as_str() {
                    Some("DROPPED") => dropped += 1,
                    _ => forwarded += 1,
                }
                ("proxyEvent", &ev["decision"])
            };
            assert_valid(&s, Some(def), &ev, &format!("{f}: {what} event {ev}"));
            if decision.is_object() {
                with_decision += 1;
                assert_eq!(decision["schema"], SCHEMA);
                assert_valid(&s, None, decision, f);
                for side in ["egress", "ingress"] {
                    if let Some(k) = decision[side]["l7"]["kind"].as_str() {
                        l7_kinds.insert(k.to_string());
                    }
                }
            }
        }
    }
    assert!(lab > 100, "{lab} lab events");
    assert!(
        with_decision > 100,
        "{with_decision} events with a decision"
    );
    assert!(
        dropped > 10 && forwarded > 10,
        "{dropped} dropped, {forwarded} forwarded"
    );
    for k in [
        "http-matched",
        "http-no-match",
        "dns-matched",
        "dns-no-match",
        "sni-no-match",
    ] {
        assert!(l7_kinds.contains(k), "no event with {k}: {l7_kinds:?}");
    }
}
