//! The seed demo in the lab (root): `examples/seed-demo*` manifests directories (as
//! `membrane check` reads them) built as namespaces, with the Gateway's forwarder, the L7
//! proxies, a real Redis (or the agent's RESP answer) and every `ConnectivityTest` claim sent
//! as real traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_datapath::lab;
use membrane_datapath::probe::{FileReport, run_file};
use membrane_policy::verdict::Verdict;
use std::path::PathBuf;
use support::{options, root_or_skip};

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn run(name: &str, tag: &str) -> FileReport {
    let path = example(name);
    let mut opts = options(tag);
    opts.proxies = Some(path.clone());
    let report = run_file(&path, &opts, 8);
    assert!(report.error.is_none(), "{}", report.text(true));
    assert!(
        lab::lab_namespaces(&opts.name).is_empty(),
        "{name}: namespaces left behind"
    );
    report
}

/// The lab's verdict for the flow whose label contains all of `parts`.
fn flow<'r>(
    r: &'r FileReport,
    parts: &[&str],
) -> (
    &'r membrane_datapath::probe::FlowPlan,
    &'r membrane_datapath::probe::ProbeOutcome,
) {
    let i = r
        .plans
        .iter()
        .position(|p| parts.iter().all(|x| p.label.contains(x)))
        .unwrap_or_else(|| panic!("no flow {parts:?}"));
    (&r.plans[i], &r.outcomes[i])
}

fn redis_and_gateway_checks(r: &FileReport) {
    let (_, o) = flow(r, &["world → gateway/cilium-gateway", "GET /api/users/42"]);
    assert_eq!(o.lab, Some(Verdict::Http403), "{o:?}");
    let (_, o) = flow(r, &["world → gateway/cilium-gateway", "GET /app"]);
    assert_eq!(o.lab, Some(Verdict::Allow), "{o:?}");
    let (_, o) = flow(r, &["backend/backend → database/redis:6379"]);
    assert_eq!(o.lab, Some(Verdict::Allow), "{o:?}");
    assert!(o.notes.iter().any(|n| n.contains("+PONG")), "{o:?}");
}

#[test]
fn seed_demo_fixed_holds_every_claim_in_the_lab() {
    if !root_or_skip("seed_demo_fixed_holds_every_claim_in_the_lab") {
        return;
    }
    let r = run("seed-demo-fixed", "seedfix");
    assert_eq!(
        (r.passed(), r.failed(), r.skipped()),
        (22, 0, 0),
        "{}",
        r.text(true)
    );
    redis_and_gateway_checks(&r);
    // frontend → redis: the SYN is dropped (and logged) at the frontend's egress, no answer.
    let (_, o) = flow(&r, &["frontend/frontend → database/redis:6379"]);
    assert_eq!(o.lab, Some(Verdict::Deny), "{o:?}");
    assert!(o.drop.is_some(), "{o:?}");
}

#[test]
fn seed_demo_lab_agrees_with_the_engine_on_every_claim() {
    if !root_or_skip("seed_demo_lab_agrees_with_the_engine_on_every_claim") {
        return;
    }
    let r = run("seed-demo", "seed");
    assert_eq!(r.plans.len(), 22);
    assert_eq!(r.skipped(), 0, "{}", r.text(true));
    for (p, o) in r.plans.iter().zip(&r.outcomes) {
        assert!(o.lab.is_some(), "line {}: {}: {o:?}", p.line, p.label);
        assert_eq!(o.lab, p.engine, "line {}: {}: {o:?}", p.line, p.label);
    }
    let hold = r
        .plans
        .iter()
        .zip(&r.outcomes)
        .filter(|(p, o)| o.lab == Some(p.expect))
        .count();
    assert_eq!(hold, 11, "{}", r.text(true));
    redis_and_gateway_checks(&r);
}
