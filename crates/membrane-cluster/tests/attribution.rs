//! Attribution: the policies a decision names are exactly the owners of the map entry that
//! decided it, as Cilium 1.17 records them (`derivedFromRules`, what Hubble reports): the
//! entry the lookup matched, not every rule whose broader entry also covers the flow; both
//! policies when two write the same entry; the L3 rules Cilium merges into a port's L4
//! filter when that port has L7 rules (`wildcardL3L4Rule`); the agent's own entries by kind,
//! never as a fake policy. See docs/research/cilium-entry-owners.md.

#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_policy::model::{Direction, Origin, Protocol};
use membrane_policy::verdict::{HttpRequest, L7Outcome, L7Request, Outcome, SideDecision};

/// A cluster with a client, a server and a host-network pod, and the given policies (all
/// selecting `server` in namespace ns1).
fn world(policies: &str) -> World {
    let text = format!(
        r#"name: attribution
source: membrane tests
upstream_tests: []
requires: []
cluster: {{name: default}}
namespaces:
  - {{name: ns1, labels: {{kubernetes.io/metadata.name: ns1}}}}
nodes:
  - {{name: node1, ip: 192.168.1.10, podCIDR: 10.0.1.0/24, cilium: true, labels: {{kubernetes.io/hostname: node1}}}}
endpoints:
  - {{name: client, namespace: ns1, node: node1, ip: 10.0.1.10, labels: {{app: client}}}}
  - {{name: other, namespace: ns1, node: node1, ip: 10.0.1.11, labels: {{app: other}}}}
  - {{name: server, namespace: ns1, node: node1, ip: 10.0.1.20, labels: {{app: server}}}}
policies: |
{}
flows: []
"#,
        policies
            .lines()
            .map(|l| format!("  {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let scenario = match parse_scenario(&text) {
        Ok(s) => s,
        Err(e) => panic!("scenario does not parse: {e:?}\n{text}"),
    };
    let w = World::from_scenario(scenario, 0);
    let errors: Vec<_> = w.diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "invalid policies: {errors:?}");
    w
}

fn ingress(w: &World, from: &str, port: u16, req: L7Request) -> SideDecision {
    let (Some(a), Some(b)) = (w.party(from), w.party("server")) else {
        panic!("unknown party");
    };
    let d = w.decide(a, b, Protocol::Tcp, port, &req, false);
    let side = d.ingress.expect("server's ingress is decided");
    assert_eq!(side.direction, Direction::Ingress);
    side
}

/// The deciding origins as `policy` names (`kind` for the agent's own entries).
fn names(side: &SideDecision) -> Vec<String> {
    let mut v: Vec<String> = side
        .deciding
        .iter()
        .map(|o| match o.policy() {
            Some(p) => p.name.clone(),
            None => o.kind().to_string(),
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn get(path: &str) -> L7Request {
    L7Request::Http(HttpRequest {
        method: "GET".into(),
        path: path.into(),
        host: "server".into(),
        headers: vec![],
    })
}

fn cnp(name: &str, ingress: &str) -> String {
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: ns1}}\nspec:\n  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n{ingress}"
    )
}

const FROM_CLIENT: &str = "  - fromEndpoints: [{matchLabels: {app: client}}]\n";
const FROM_CLIENT_80: &str = "  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n";
const FROM_CLIENT_80_HTTP: &str = "  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET, path: /public}]}}]\n";
const ANY_80_HTTP: &str = "  - toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET, path: /public}]}}]\n";

#[test]
fn two_policies_writing_the_same_entry_are_both_named() {
    let w = world(&format!(
        "{}\n---\n{}",
        cnp("a", FROM_CLIENT_80),
        cnp("b", FROM_CLIENT_80)
    ));
    let side = ingress(&w, "client", 80, L7Request::None);
    assert_eq!(side.outcome, Outcome::Allowed);
    assert_eq!(names(&side), ["a", "b"]);
}

#[test]
fn the_narrower_entry_keeps_only_its_own_rules() {
    // l3: (client, any port); l4: (client, 80/TCP). Cilium keeps both entries; the lookup
    // on port 80 matches the port entry, whose owner is l4 only.
    let w = world(&format!(
        "{}\n---\n{}",
        cnp("l3", FROM_CLIENT),
        cnp("l4", FROM_CLIENT_80)
    ));
    assert_eq!(names(&ingress(&w, "client", 80, L7Request::None)), ["l4"]);
    assert_eq!(names(&ingress(&w, "client", 81, L7Request::None)), ["l3"]);
}

#[test]
fn an_l3_rule_merged_into_a_ports_l7_filter_owns_that_entry_too() {
    // Port 80 has HTTP rules for client; the L3-only rule for the same peer is merged into
    // that L4 filter as a wildcard (every request passes) and owns the entry with it.
    let w = world(&format!(
        "{}\n---\n{}",
        cnp("l3", FROM_CLIENT),
        cnp("http", FROM_CLIENT_80_HTTP)
    ));
    let side = ingress(&w, "client", 80, get("/private"));
    assert_eq!(side.outcome, Outcome::Allowed, "the L3 rule wildcards L7");
    assert_eq!(side.l7, Some(L7Outcome::HttpWildcarded));
    assert_eq!(names(&side), ["http", "l3"]);
}

#[test]
fn an_entry_no_rule_wrote_belongs_to_the_peers_rule() {
    // (client, any) from l3 and (every peer, 80/TCP + HTTP) from http: the lookup for
    // client on 80 meets the entry Cilium makes for client's selector in port 80's filter,
    // owned by l3 alone; the wildcard-peer HTTP entry has its own owner.
    let w = world(&format!(
        "{}\n---\n{}",
        cnp("l3", FROM_CLIENT),
        cnp("http", ANY_80_HTTP)
    ));
    let side = ingress(&w, "client", 80, get("/private"));
    assert_eq!(side.outcome, Outcome::Allowed);
    assert_eq!(names(&side), ["l3"]);
    // Another peer hits the wildcard-peer entry: its HTTP rules apply, owned by http.
    let other = ingress(&w, "other", 80, get("/private"));
    assert_eq!(other.outcome, Outcome::Http403);
    assert_eq!(names(&other), ["http"]);
    let ok = ingress(&w, "other", 80, get("/public"));
    assert_eq!(ok.outcome, Outcome::Allowed);
    match &ok.l7 {
        Some(L7Outcome::HttpMatched { rule, .. }) => {
            assert_eq!(rule.entry.rule.policy.name, "http");
            assert_eq!(rule.index, Some(0));
        }
        other => panic!("expected an HTTP match, got {other:?}"),
    }
}

#[test]
fn a_deny_is_owned_by_the_deny_rule_only() {
    let deny = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n";
    let w = world(&format!("{}\n---\n{deny}", cnp("allow", FROM_CLIENT_80)));
    let side = ingress(&w, "client", 80, L7Request::None);
    assert_eq!(side.outcome, Outcome::DenyRule);
    assert_eq!(names(&side), ["deny"]);
}

#[test]
fn the_agents_own_entries_are_named_by_kind_not_as_a_policy() {
    let w = world(&cnp("only-client", FROM_CLIENT_80));
    let (Some(node), Some(server)) = (w.party("node1"), w.party("server")) else {
        panic!("unknown party");
    };
    let d = w.decide(node, server, Protocol::Tcp, 80, &L7Request::None, false);
    let side = d.ingress.expect("ingress decided");
    assert_eq!(side.outcome, Outcome::Allowed);
    assert_eq!(side.deciding, vec![Origin::AllowLocalhost]);
    assert!(side.deciding[0].policy().is_none());
    assert!(side.deciding[0].span().is_none());

    let opt_out = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: open, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  enableDefaultDeny: {ingress: false}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n";
    let w = world(opt_out);
    let side = ingress(&w, "other", 443, L7Request::None);
    assert_eq!(side.outcome, Outcome::Allowed);
    assert!(
        matches!(side.deciding.as_slice(), [Origin::DefaultAllow { rule, .. }] if rule.policy.name == "open"),
        "{:?}",
        side.deciding
    );
}
