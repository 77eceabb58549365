//! DNS in the lab (root): a real query through kube-dns and the node's DNS proxy, then
//! connections to the learned address and to an address never learned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_datapath::lab;
use membrane_datapath::probe::{DnsPurpose, Step, run_file};
use membrane_policy::verdict::Verdict;
use std::path::PathBuf;
use support::{options, root_or_skip};

#[test]
fn dns_answers_allowed_names_refuses_others_and_learned_addresses_open() {
    if !root_or_skip("dns_answers_allowed_names_refuses_others_and_learned_addresses_open") {
        return;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/dns-learned.yaml");
    let mut opts = options("dns");
    opts.proxies = Some(path.clone());
    let r = run_file(&path, &opts, 4);
    assert!(
        r.error.is_none() && r.failed() == 0 && r.skipped() == 0 && r.passed() == 4,
        "{}",
        r.text(true)
    );
    let lab: Vec<Option<Verdict>> = r.outcomes.iter().map(|o| o.lab).collect();
    assert_eq!(
        lab,
        [
            Some(Verdict::DnsOk),
            Some(Verdict::DnsRefused),
            Some(Verdict::Allow),
            Some(Verdict::Deny)
        ]
    );
    // The allowed connection really looked the name up first, then connected.
    assert!(matches!(
        r.plans[2].steps.as_slice(),
        [
            Step::Dns {
                purpose: DnsPurpose::Lookup,
                ..
            },
            Step::Send { .. }
        ]
    ));
    // The unlearned address: no answer, the SYN's drop logged at the client's egress.
    let drop = r.outcomes[3].drop.as_ref().expect("a logged drop");
    assert_eq!(drop.direction.as_str(), "egress");
    assert!(lab::lab_namespaces(&opts.name).is_empty());
}

/// Allowed DNS queries are flow events too (verdict FORWARDED, the name, the rule that
/// allowed it), next to the REFUSED one.
#[test]
fn allowed_dns_queries_are_flow_events_with_their_rule() {
    if !root_or_skip("allowed_dns_queries_are_flow_events_with_their_rule") {
        return;
    }
    use membrane_datapath::lab::Lab;
    use membrane_datapath::probe::probe_lab;
    use membrane_datapath::source::load_world;
    use serde_json::Value;

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/dns-learned.yaml");
    let world = load_world(&path).unwrap();
    let mut opts = options("dnsev");
    opts.proxies = Some(path.clone());
    let lab = Lab::up(&world, &opts).unwrap();
    let collector = lab.drop_collector(false);
    let (_, outcomes) = probe_lab(&world, &lab, &collector, 4);
    assert!(outcomes.iter().all(|o| o.passed), "{outcomes:?}");
    let is_forwarded =
        |e: &Value| e["verdict"] == "FORWARDED" && e["l7"]["dns"]["query"] == "api.example.com.";
    let events = support::l7_events(&lab, |es| es.iter().any(is_forwarded));
    let all = serde_json::to_string_pretty(&events).unwrap();
    let ev = events
        .iter()
        .find(|e| is_forwarded(e))
        .unwrap_or_else(|| panic!("no FORWARDED event for the allowed query: {all}"));
    assert_eq!(ev["IP"]["source"], "10.244.1.10", "{all}");
    assert_eq!(ev["l4"]["destination_port"], 53, "{all}");
    assert!(
        ev["policies"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains("client-dns-and-api")))),
        "{all}"
    );
    // The refused name is not reported as forwarded.
    assert!(
        !events
            .iter()
            .any(|e| e["verdict"] == "FORWARDED" && e["l7"]["dns"]["query"] == "other.example.com."),
        "{all}"
    );
    drop(collector);
    lab.down().unwrap();
}
