#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::identity::{HOST, WORLD};
use crate::model::Protocol;
use crate::policy_set::{PolicySet, parse_resources};
use crate::resolve::MapKey;
use crate::translate::Secrets;
use crate::verdict::{L7Request, Outcome, Verdict};
use crate::yaml::Embedding;

fn translated(yaml: &str) -> Translated {
    let (resources, diags) = parse_resources(yaml, Embedding::default());
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let resources: Vec<_> = resources.into_iter().map(|r| (0, r)).collect();
    let set = PolicySet::build(&resources, &Options::default(), &Secrets::default());
    let t = set.policies.into_iter().next().expect("one policy");
    assert!(t.valid, "{:?}", t.diagnostics);
    t
}

fn pod(name: &str, ip: &str, app: &str) -> EndpointSpec {
    EndpointSpec {
        name: name.into(),
        namespace: "ns1".into(),
        node: "node1".into(),
        ip: Some(ip.parse().unwrap()),
        service_account: "default".into(),
        labels: vec![("app".into(), app.into())],
        ports: vec![],
        host_network: false,
        entity: None,
    }
}

fn engine() -> Engine {
    let mut e = Engine::new(Options::default());
    e.upsert_namespace(
        "ns1",
        vec![("kubernetes.io/metadata.name".into(), "ns1".into())],
    );
    e.upsert_node(NodeSpec {
        name: "node1".into(),
        ip: "192.168.1.10".parse().unwrap(),
        cilium: true,
        labels: vec![],
    });
    e
}

const SERVER_FROM_CLIENT: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n";

fn verdict(s: &Snapshot, from: EndpointId, to: EndpointId, port: u16) -> Verdict {
    let (a, b) = (
        s.endpoint_party(from).unwrap(),
        s.endpoint_party(to).unwrap(),
    );
    s.decide(a, b, Protocol::Tcp, port, &L7Request::None, false)
        .verdict
}

#[test]
fn identities_use_ciliums_ranges() {
    let mut e = engine();
    let (a, _) = e.add_endpoint(pod("a", "10.0.1.1", "a"));
    let (b, _) = e.add_endpoint(pod("b", "10.0.1.2", "b"));
    let (a2, _) = e.add_endpoint(pod("a2", "10.0.1.3", "a"));
    let s = e.state();
    let (ia, ib) = (
        s.endpoint_identity(a).unwrap(),
        s.endpoint_identity(b).unwrap(),
    );
    assert!(
        ia >= 256 && ib >= 256 && ia != ib,
        "cluster-local identities from 256"
    );
    assert_eq!(
        s.endpoint_identity(a2),
        Some(ia),
        "one identity per label set"
    );
    e.dns_answer("api.example.com", &["198.51.100.7".parse().unwrap()]);
    let learned = e
        .state()
        .identities()
        .find_cidr("198.51.100.7".parse().unwrap(), Some("api.example.com"))
        .unwrap();
    assert!(learned >= 1 << 24, "local CIDR/FQDN identities from 2^24");
    assert_eq!(crate::identity::reserved_name(HOST), Some("host"));
}

#[test]
fn every_change_has_a_revision_and_names_the_changed_policies() {
    let mut e = engine();
    let (client, _) = e.add_endpoint(pod("client", "10.0.1.1", "client"));
    let (server, _) = e.add_endpoint(pod("server", "10.0.1.2", "server"));
    e.resolve_all();
    let r0 = e.state().revision();
    assert_eq!(verdict(e.state(), client, server, 80), Verdict::Allow);

    let added = e.upsert_policy(translated(SERVER_FROM_CLIENT));
    assert_eq!(added.revision, r0 + 1);
    let [change] = added.subjects.as_slice() else {
        panic!("one policy changes: {added:?}");
    };
    assert_eq!(*change.endpoints, vec![server]);
    assert!(change.enforcement_changed, "ingress becomes enforced");
    let client_id = e.state().endpoint_identity(client).unwrap();
    let keys: Vec<MapKey> = change.ingress.added().iter().map(|(k, _)| *k).collect();
    assert!(
        keys.contains(&MapKey {
            peer: client_id,
            protocol: 6,
            port: 80,
            prefix_len: 16
        }),
        "{keys:?}"
    );
    assert_eq!(verdict(e.state(), client, server, 80), Verdict::Allow);
    assert_eq!(verdict(e.state(), client, server, 81), Verdict::Deny);

    let removed = e.remove_policy(&PolicyKey {
        kind: "CNP",
        namespace: Some("ns1".into()),
        name: "server".into(),
    });
    assert_eq!(removed.revision, r0 + 2);
    assert_eq!(removed.subjects.len(), 1);
    assert_eq!(verdict(e.state(), client, server, 81), Verdict::Allow);
}

#[test]
fn a_new_pod_identity_adds_only_its_own_entries() {
    let mut e = engine();
    let all_in_ns = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: server, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n";
    e.upsert_policy(translated(all_in_ns));
    let (server, _) = e.add_endpoint(pod("server", "10.0.1.2", "server"));
    e.resolve_all();
    let (newcomer, changes) = e.add_endpoint(pod("new", "10.0.1.3", "brand-new"));
    let id = e.state().endpoint_identity(newcomer).unwrap();
    let [change] = changes.subjects.as_slice() else {
        panic!("the server's policy gains the new peer: {changes:?}");
    };
    assert_eq!(*change.endpoints, vec![server]);
    let added = change.ingress.added();
    assert!(!added.is_empty());
    assert!(added.iter().all(|(k, _)| k.peer == id), "{added:?}");
    assert!(change.ingress.removed().is_empty());
    assert_eq!(verdict(e.state(), newcomer, server, 80), Verdict::Allow);

    // The last pod of the label set goes: its identity and its entries go with it.
    let gone = e.remove_endpoint(newcomer);
    let [change] = gone.subjects.as_slice() else {
        panic!("{gone:?}");
    };
    assert!(change.ingress.removed().iter().all(|k| k.peer == id));
    assert!(e.state().identities().get(id).is_none());
}

#[test]
fn snapshots_are_immutable_and_shareable() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let mut e = engine();
    let (client, _) = e.add_endpoint(pod("client", "10.0.1.1", "client"));
    let (server, _) = e.add_endpoint(pod("server", "10.0.1.2", "server"));
    let before = e.snapshot();
    send_sync(&before);
    e.upsert_policy(translated(SERVER_FROM_CLIENT));
    let after = e.snapshot();
    assert_eq!(verdict(&before, client, server, 81), Verdict::Allow);
    assert_eq!(verdict(&after, client, server, 81), Verdict::Deny);
    assert!(after.revision() > before.revision());
    let reader = std::thread::spawn(move || verdict(&after, client, server, 80));
    assert_eq!(reader.join().unwrap(), Verdict::Allow);
}

#[test]
fn to_services_resolve_inside_the_engine() {
    let mut e = engine();
    let to_db = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toServices: [{k8sService: {serviceName: db, namespace: ns1}}]\n";
    let (client, _) = e.add_endpoint(pod("client", "10.0.1.1", "client"));
    let (db, _) = e.add_endpoint(pod("db", "10.0.1.5", "db"));
    e.upsert_policy(translated(to_db));
    e.resolve_all();
    assert_eq!(
        verdict(e.state(), client, db, 5432),
        Verdict::Deny,
        "no such Service yet"
    );
    let changes = e.upsert_service(ServiceSpec {
        namespace: "ns1".into(),
        name: "db".into(),
        labels: vec![],
        selector: vec![("app".into(), "db".into())],
        addresses: vec![],
    });
    assert!(!changes.subjects.is_empty());
    assert_eq!(verdict(e.state(), client, db, 5432), Verdict::Allow);
    e.remove_service("ns1", "db");
    assert_eq!(verdict(e.state(), client, db, 5432), Verdict::Deny);
}

#[test]
fn dns_answers_feed_to_fqdns() {
    let mut e = engine();
    let to_api = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: client, namespace: ns1}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n  - toFQDNs: [{matchName: api.example.com}]\n";
    let (client, _) = e.add_endpoint(pod("client", "10.0.1.1", "client"));
    e.upsert_policy(translated(to_api));
    e.resolve_all();
    let addr: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let changes = e.dns_answer("api.example.com", &[addr]);
    assert_eq!(changes.subjects.len(), 1, "{changes:?}");
    let s = e.state();
    let from = s.endpoint_party(client).unwrap();
    let to = Party::World {
        addr,
        learned_as: Some(0),
    };
    let d = |learned| {
        s.decide(from, to, Protocol::Tcp, 443, &L7Request::None, learned)
            .egress
            .outcome
    };
    assert_eq!(d(true), Outcome::Allowed, "the learned address is selected");
    assert_eq!(d(false), Outcome::DefaultDeny, "the bare address is not");
    assert_ne!(
        s.identity_of(to, None, false),
        WORLD,
        "the address has a CIDR identity"
    );
}

#[test]
fn nodes_come_and_go() {
    let mut e = engine();
    let (client, _) = e.add_endpoint(pod("client", "10.0.1.1", "client"));
    let node = e.state().node_index("node1").unwrap();
    assert!(e.state().node_party(node).is_some());
    assert!(matches!(
        e.state().address_party("192.168.1.10".parse().unwrap()),
        Party::Node { .. }
    ));
    let r = e.state().revision();
    let changes = e.remove_node("node1");
    assert_eq!(changes.revision, r + 1);
    assert!(e.state().node_index("node1").is_none());
    assert!(e.state().node_party(node).is_none());
    assert!(matches!(
        e.state().address_party("192.168.1.10".parse().unwrap()),
        Party::World { .. }
    ));
    assert_eq!(
        e.state().node_of(e.state().endpoint_party(client).unwrap()),
        None
    );
    e.upsert_node(NodeSpec {
        name: "node1".into(),
        ip: "192.168.1.10".parse().unwrap(),
        cilium: true,
        labels: vec![],
    });
    assert_eq!(e.state().node_index("node1"), Some(node));
    assert_eq!(
        e.state().node_of(e.state().endpoint_party(client).unwrap()),
        Some(node),
        "the pod is placed on its node again"
    );
}

#[test]
fn an_address_belongs_to_its_oldest_endpoint() {
    let mut e = engine();
    let (first, _) = e.add_endpoint(pod("first", "10.0.1.9", "a"));
    let (second, _) = e.add_endpoint(pod("second", "10.0.1.9", "b"));
    let ip = "10.0.1.9".parse().unwrap();
    assert_eq!(e.state().endpoint_by_ip(ip), Some(first));
    e.remove_endpoint(first);
    assert_eq!(
        e.state().endpoint_by_ip(ip),
        Some(second),
        "the next one takes over"
    );
    e.remove_endpoint(second);
    assert_eq!(e.state().endpoint_by_ip(ip), None);
}

#[test]
fn successive_changes_of_one_policy_fold_into_one_delta() {
    let mut e = engine();
    let (server, _) = e.add_endpoint(pod("server", "10.0.1.2", "server"));
    e.upsert_policy(translated(SERVER_FROM_CLIENT));
    e.resolve_all();
    // A pod that appears and goes again: folded together, the two change sets leave the
    // server's map as it was (nothing added, nothing removed).
    let (client, added) = e.add_endpoint(pod("client", "10.0.1.1", "client"));
    assert_eq!(added.subjects.len(), 1);
    let gone = e.remove_endpoint(client);
    let [change] = gone.subjects.as_slice() else {
        panic!("{gone:?}");
    };
    assert_eq!(*change.endpoints, vec![server]);
    let mut both = added.clone();
    both.subjects.extend(gone.subjects.iter().cloned());
    both.normalize();
    assert!(both.subjects.is_empty(), "{both:?}");
}

/// With cidr-match-nodes a pod's policy selects its own host through its node's address: a
/// pod whose Node object arrives after it (independent watches) must end with the policy it
/// gets when the node comes first.
#[test]
fn a_pod_that_comes_before_its_node_gets_the_same_policy_under_cidr_match_nodes() {
    const TO_NODES: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: to-nodes, namespace: ns1}\nspec:\n  podSelector: {matchLabels: {app: client}}\n  egress:\n  - to: [{ipBlock: {cidr: 192.168.1.0/24}}]\n";
    let options = Options {
        cidr_match_nodes: true,
        ..Options::default()
    };
    let node = NodeSpec {
        name: "node1".into(),
        ip: "192.168.1.10".parse().unwrap(),
        cilium: true,
        labels: vec![],
    };
    let host_allowed = |e: &Engine, client: EndpointId| {
        let s = e.state();
        let from = s.endpoint_party(client).unwrap();
        let host = s.node_party(s.node_index("node1").unwrap()).unwrap();
        let d = s.decide(from, host, Protocol::Tcp, 22, &L7Request::None, false);
        // Seen from the pod's own node, the node is `host`.
        let egress = s.policy(from, crate::model::Direction::Egress).unwrap();
        let local = egress.lookup(HOST, 6, 22).is_some();
        (d.verdict, local)
    };
    let mut first = Engine::new(options.clone());
    first.upsert_node(node.clone());
    first.upsert_policy(translated(TO_NODES));
    let (a, _) = first.add_endpoint(pod("client", "10.0.1.1", "client"));
    let mut later = Engine::new(options);
    later.upsert_policy(translated(TO_NODES));
    let (b, _) = later.add_endpoint(pod("client", "10.0.1.1", "client"));
    let _ = later.state().endpoint_policy(b);
    later.upsert_node(node);
    assert_eq!(host_allowed(&first, a), (Verdict::Allow, true));
    assert_eq!(host_allowed(&later, b), host_allowed(&first, a));
}
