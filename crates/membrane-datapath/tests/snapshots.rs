//! The compiled text of a few conformance scenarios, reviewed as snapshots: deny rules over
//! port ranges, L7 entries (proxy stubs), ICMP types, and one in-place update transaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_datapath::nft::compile::{Ruleset, compile_node};
use membrane_datapath::topology::Topology;
use std::path::PathBuf;

fn rulesets(name: &str) -> Vec<Ruleset> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/conformance")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("scenario");
    let world = World::from_scenario(parse_scenario(&text).expect("parses"), 0);
    Topology::plan(&world)
        .node_inputs(&world)
        .iter()
        .map(compile_node)
        .collect()
}

fn node1(name: &str) -> String {
    rulesets(name)[0].render()
}

#[test]
fn deny_rules_over_port_ranges() {
    insta::assert_snapshot!(node1("client-egress-to-echo-deny-port-range.yaml"));
}

#[test]
fn l7_entries_go_to_the_proxy_stubs() {
    insta::assert_snapshot!(node1("echo-ingress-l7.yaml"));
}

#[test]
fn icmp_types_and_deny() {
    insta::assert_snapshot!(node1("client-ingress-from-other-client-icmp-deny.yaml"));
}

#[test]
fn update_transaction_in_place() {
    let before = &rulesets("client-egress.yaml")[0];
    let after = &rulesets("client-egress-to-echo-deny-port-range.yaml")[0];
    insta::assert_snapshot!(after.update_from(before));
}
