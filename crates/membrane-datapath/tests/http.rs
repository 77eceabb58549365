//! HTTP through the lab's L7 proxies (root): a denied `HEAD` (a 403 without a body) is read
//! as http-403, and allowed requests are flow events (verdict FORWARDED) with the rule that
//! allowed them, next to the denials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_datapath::lab::{self, Lab};
use membrane_datapath::probe::{probe_lab, run_file};
use membrane_datapath::source::load_world;
use membrane_policy::verdict::Verdict;
use serde_json::Value;
use std::path::PathBuf;
use support::{l7_events, options, root_or_skip};

fn scenario() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/http-head.yaml")
}

#[test]
fn a_denied_head_is_http_403_without_a_body() {
    if !root_or_skip("a_denied_head_is_http_403_without_a_body") {
        return;
    }
    let path = scenario();
    let mut opts = options("head");
    opts.proxies = Some(path.clone());
    let r = run_file(&path, &opts, 4);
    assert!(
        r.error.is_none() && r.failed() == 0 && r.skipped() == 0 && r.passed() == 3,
        "{}",
        r.text(true)
    );
    let lab: Vec<Option<Verdict>> = r.outcomes.iter().map(|o| o.lab).collect();
    assert_eq!(
        lab,
        [
            Some(Verdict::Allow),
            Some(Verdict::Http403),
            Some(Verdict::Http403)
        ]
    );
    assert!(lab::lab_namespaces(&opts.name).is_empty());
}

fn is(e: &Value, verdict: &str, method: &str) -> bool {
    e["verdict"] == verdict && e["l7"]["http"]["method"] == method
}

#[test]
fn allowed_requests_are_flow_events_with_the_rule_that_allowed_them() {
    if !root_or_skip("allowed_requests_are_flow_events_with_the_rule_that_allowed_them") {
        return;
    }
    let path = scenario();
    let world = load_world(&path).unwrap();
    let mut opts = options("fwdev");
    opts.proxies = Some(path.clone());
    let lab = Lab::up(&world, &opts).unwrap();
    let collector = lab.drop_collector(false);
    let (_, outcomes) = probe_lab(&world, &lab, &collector, 4);
    assert!(outcomes.iter().all(|o| o.passed), "{outcomes:?}");
    let events = l7_events(&lab, |es| {
        es.iter().any(|e| is(e, "FORWARDED", "GET")) && es.iter().any(|e| is(e, "DROPPED", "HEAD"))
    });
    let all = serde_json::to_string_pretty(&events).unwrap();
    let get = events
        .iter()
        .find(|e| is(e, "FORWARDED", "GET"))
        .unwrap_or_else(|| panic!("no FORWARDED event for the allowed GET: {all}"));
    assert_eq!(get["Type"], "L7", "{all}");
    assert_eq!(get["l7"]["http"]["url"], "/index.html", "{all}");
    assert_eq!(get["l7"]["http"]["code"], 200, "{all}");
    assert!(
        get["l7"]["http"]["host"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{all}"
    );
    assert_eq!(get["IP"]["source"], "10.244.1.10", "{all}");
    assert_eq!(get["IP"]["destination"], "10.244.2.20", "{all}");
    assert_eq!(get["l4"]["destination_port"], 8080, "{all}");
    // The node whose proxy forwarded it (the server's: its ingress has the L7 rule).
    assert_eq!(get["node_name"], "node2", "{all}");
    // The rule that allowed it: the server's ingress rule of `server-get-only`.
    let policies = get["policies"].as_array().expect("policies");
    assert!(
        policies
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("server-get-only"))),
        "{all}"
    );
    let rules = get["rules"].as_array().expect("rules");
    assert!(!rules.is_empty(), "{all}");
    // The decision in the decision schema: the server's ingress matched an HTTP rule, whose
    // origin names the policy and the file it came from (the lab's copy of the scenario).
    let decision = &get["decision"];
    assert_eq!(decision["schema"], "membrane.decision/v1", "{all}");
    assert_eq!(decision["verdict"], "allow", "{all}");
    let l7 = &decision["ingress"]["l7"];
    assert_eq!(l7["kind"], "http-matched", "{all}");
    assert_eq!(l7["rule"]["name"], "server-get-only", "{all}");
    assert!(
        l7["rule"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with(".yaml")),
        "{all}"
    );
    let head = events
        .iter()
        .find(|e| is(e, "DROPPED", "HEAD"))
        .unwrap_or_else(|| panic!("no DROPPED event for HEAD: {all}"));
    assert_eq!(head["decision"]["verdict"], "http-403", "{all}");
    assert_eq!(head["decision"]["ingress"]["outcome"], "Http403", "{all}");
    // Denials are still there, and nothing denied was reported forwarded.
    assert!(events.iter().any(|e| is(e, "DROPPED", "HEAD")), "{all}");
    assert!(
        !events
            .iter()
            .any(|e| e["verdict"] == "FORWARDED" && e["l7"]["http"]["method"] != "GET"),
        "{all}"
    );
    drop(collector);
    lab.down().unwrap();
}
