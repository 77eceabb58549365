//! `deploy/rbac.yaml` grants exactly what membrane reads: every kind of the catalog can be
//! listed and watched, and nothing else (no Secrets, no write verbs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::api::rbac::v1::ClusterRole;
use membrane_kube::catalog::KINDS;
use membrane_kube::fake::yaml_to_json;
use std::collections::BTreeSet;

fn cluster_role() -> ClusterRole {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/rbac.yaml");
    let docs = yaml_to_json(&std::fs::read_to_string(path).unwrap()).unwrap();
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    serde_json::from_value(role.clone()).unwrap()
}

#[test]
fn the_reader_role_covers_every_kind_membrane_reads_and_nothing_more() {
    let role = cluster_role();
    assert_eq!(role.metadata.name.as_deref(), Some("membrane-reader"));
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "read-only: {rule:?}");
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                granted.insert((group.clone(), resource));
            }
        }
    }
    let needed: BTreeSet<(String, String)> = KINDS
        .iter()
        .map(|k| (k.group.to_string(), k.plural.to_string()))
        .collect();
    assert_eq!(granted, needed);
    assert!(!granted.iter().any(|(_, r)| r == "secrets"));
}
