//! The reader against the in-process apiserver fake, over real HTTP: discovery, paged lists
//! whose items carry no apiVersion/kind, watches with BOOKMARKs and `410 Gone`, `metav1.Status`
//! errors, missing CRDs, objects that do not decode, faults.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::runtime::watcher;
use membrane_kube::fake::{FakeApiServer, Fault, ServedKind, default_served_kinds};
use membrane_kube::{ClusterError, ClusterOptions, ClusterRead};
use serde_json::{Value, json};
use std::time::Duration;

fn pod(ns: &str, name: &str, ip: &str, phase: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": phase, "podIP": ip}})
}

fn kubeconfig(server: &FakeApiServer, token: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), server.kubeconfig(token)).unwrap();
    file
}

fn options(file: &tempfile::NamedTempFile) -> ClusterOptions {
    ClusterOptions {
        kubeconfig: Some(file.path().to_path_buf()),
        timeout: Duration::from_secs(5),
        ..ClusterOptions::default()
    }
}

fn read(server: &FakeApiServer) -> Result<ClusterRead, ClusterError> {
    let kc = kubeconfig(server, "t");
    membrane_kube::read_cluster_blocking(&options(&kc), &mut |_| {})
}

#[test]
fn lists_page_by_page_until_no_continue_token() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    for i in 0..1_234 {
        server
            .apply(pod(
                "shop",
                &format!("web-{i:04}"),
                &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                "Running",
            ))
            .unwrap();
    }
    let mut pages = Vec::new();
    let kc = kubeconfig(&server, "t");
    let read = membrane_kube::read_cluster_blocking(&options(&kc), &mut |p| {
        if p.kind == "Pod" {
            pages.push(p.listed);
        }
    })
    .unwrap();
    assert_eq!(read.count("Pod"), 1_234);
    assert_eq!(pages, vec![500, 1_000, 1_234]);
    let pod_requests: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/api/v1/pods"))
        .collect();
    assert_eq!(pod_requests.len(), 3, "{pod_requests:?}");
    assert!(pod_requests[0].contains("limit=500") && !pod_requests[0].contains("continue"));
    assert!(pod_requests[1].contains("continue="), "{pod_requests:?}");
    // The fake's list items have no apiVersion/kind; the reader restores them.
    let first = &read
        .kinds
        .iter()
        .find(|k| k.kind.kind == "Pod")
        .unwrap()
        .objects[0];
    assert_eq!(first["apiVersion"], "v1");
    assert_eq!(first["kind"], "Pod");
    assert_eq!(first["metadata"]["name"], "web-0000");
    // Secrets are served by the fake and never asked for.
    assert!(!server.requests().iter().any(|r| r.contains("secrets")));
}

#[test]
fn only_running_pods_with_an_address_are_kept() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.apply(pod("a", "up", "10.0.0.1", "Running")).unwrap();
    server.apply(pod("a", "pending", "", "Pending")).unwrap();
    server
        .apply(pod("a", "done", "10.0.0.3", "Succeeded"))
        .unwrap();
    let read = read(&server).unwrap();
    assert_eq!(read.count("Pod"), 1);
    assert_eq!(read.pods_not_running, 2);
}

#[test]
fn a_namespace_narrows_namespaced_kinds_only() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.apply(pod("a", "x", "10.0.0.1", "Running")).unwrap();
    server.apply(pod("b", "y", "10.0.0.2", "Running")).unwrap();
    server
        .apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}))
        .unwrap();
    let kc = kubeconfig(&server, "t");
    let mut opts = options(&kc);
    opts.namespace = Some("b".into());
    let read = membrane_kube::read_cluster_blocking(&opts, &mut |_| {}).unwrap();
    assert_eq!(read.count("Pod"), 1);
    assert_eq!(read.count("Node"), 1);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.starts_with("/api/v1/namespaces/b/pods"))
    );
}

#[test]
fn a_missing_crd_turns_its_feature_off_with_a_note() {
    let kinds: Vec<ServedKind> = default_served_kinds()
        .into_iter()
        .filter(|k| k.group != "cilium.io" && k.group != "gateway.networking.k8s.io")
        .collect();
    let server = FakeApiServer::start(kinds).unwrap();
    let read = read(&server).unwrap();
    assert!(read.kinds.iter().all(|k| k.kind.group != "cilium.io"));
    assert!(
        read.notes
            .iter()
            .any(|n| n.contains("Cilium is not installed")),
        "{:?}",
        read.notes
    );
    assert!(
        read.notes
            .iter()
            .any(|n| n.contains("Gateway API is not installed"))
    );
}

#[test]
fn cilium_cidr_groups_are_read_from_v2alpha1() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server
        .apply(
            json!({"apiVersion": "cilium.io/v2alpha1", "kind": "CiliumCIDRGroup",
            "metadata": {"name": "partners"}, "spec": {"externalCIDRs": ["203.0.113.0/24"]}}),
        )
        .unwrap();
    let read = read(&server).unwrap();
    let groups = read
        .kinds
        .iter()
        .find(|k| k.kind.kind == "CiliumCIDRGroup")
        .unwrap();
    assert_eq!(groups.api_version, "cilium.io/v2alpha1");
    assert_eq!(
        groups.objects[0]["spec"]["externalCIDRs"][0],
        "203.0.113.0/24"
    );
}

#[test]
fn an_object_that_does_not_decode_is_named_and_the_rest_is_read() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server
        .apply(pod("a", "good", "10.0.0.1", "Running"))
        .unwrap();
    let mut bad = pod("a", "bad", "10.0.0.2", "Running");
    bad["spec"]["containers"] = json!("not a list");
    server.apply(bad).unwrap();
    let read = read(&server).unwrap();
    assert_eq!(read.count("Pod"), 1);
    assert_eq!(read.object_errors.len(), 1);
    let e = &read.object_errors[0];
    assert_eq!(
        (e.kind.as_str(), e.namespace.as_deref(), e.name.as_str()),
        ("Pod", Some("a"), "bad")
    );
    assert!(e.to_string().starts_with("Pod a/bad: invalid type"), "{e}");
}

#[test]
fn unauthorized_and_forbidden_name_the_fix() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.require_token(Some("right"));
    let kc = kubeconfig(&server, "wrong");
    let err = membrane_kube::read_cluster_blocking(&options(&kc), &mut |_| {}).unwrap_err();
    assert!(matches!(err, ClusterError::Unauthorized { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("rejected the credentials of context `fake`"),
        "{err}"
    );

    server.require_token(None);
    server.fault("/ciliumnetworkpolicies", Fault::Status(403));
    let err = read(&server).unwrap_err().to_string();
    assert_eq!(
        err,
        "the cluster refused to list ciliumnetworkpolicies.cilium.io (403 Forbidden): the credentials lack the RBAC rule {apiGroups: [\"cilium.io\"], resources: [\"ciliumnetworkpolicies\"], verbs: [\"list\"]}; apply deploy/rbac.yaml (ClusterRole membrane-reader) and bind it to this user"
    );
}

#[test]
fn server_errors_truncated_answers_and_slow_servers_are_one_line() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.fault("/api/v1/services", Fault::Status(500));
    let err = read(&server).unwrap_err().to_string();
    assert!(
        err.starts_with("the cluster answered 500 listing services: "),
        "{err}"
    );
    assert!(!err.contains('\n'));

    server.clear_faults();
    server.fault("/api/v1/nodes", Fault::Truncate);
    let err = read(&server).unwrap_err();
    assert!(matches!(err, ClusterError::Truncated { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.starts_with("the cluster's answer listing nodes was cut off"),
        "{err}"
    );
    assert!(!err.contains('\n'));

    server.clear_faults();
    server.fault("/api/v1/pods", Fault::Delay(Duration::from_secs(3)));
    let kc = kubeconfig(&server, "t");
    let mut opts = options(&kc);
    opts.timeout = Duration::from_millis(500);
    let err = membrane_kube::read_cluster_blocking(&opts, &mut |_| {}).unwrap_err();
    assert!(matches!(err, ClusterError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("did not answer within"), "{err}");
}

#[test]
fn an_unreachable_server_is_one_line() {
    // A port nothing listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        kc.path(),
        format!("apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\ncontexts: [{{name: c, context: {{cluster: c, user: u}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\n"),
    )
    .unwrap();
    let err = membrane_kube::read_cluster_blocking(&options(&kc), &mut |_| {}).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach the cluster at http://127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(!text.contains('\n'));
}

#[test]
fn unknown_contexts_and_missing_kubeconfigs_say_what_to_do() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    let kc = kubeconfig(&server, "t");
    let mut opts = options(&kc);
    opts.context = Some("prod".into());
    let err = membrane_kube::read_cluster_blocking(&opts, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "context `prod` is not in the kubeconfig (it has: fake)"
    );
    opts.kubeconfig = Some("/nonexistent/kubeconfig".into());
    let err = membrane_kube::read_cluster_blocking(&opts, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string().starts_with("/nonexistent/kubeconfig: "),
        "{err}"
    );
}

async fn client(server: &FakeApiServer) -> kube::Client {
    let uri: http::Uri = server.url().parse().unwrap();
    kube::Client::try_from(kube::Config::new(uri)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_history_send_bookmarks_and_expire_with_410() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    server.set_bookmark_interval(Duration::from_millis(50));
    let rv0 = server
        .apply(pod("a", "one", "10.0.0.1", "Running"))
        .unwrap();
    server
        .apply(pod("a", "two", "10.0.0.2", "Running"))
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "a");

    // From rv0: the second pod's ADDED, then a BOOKMARK at the store's version.
    let params = WatchParams {
        bookmarks: true,
        ..WatchParams::default().timeout(5)
    };
    let mut stream = pods.watch(&params, &rv0.to_string()).await.unwrap().boxed();
    let Some(WatchEvent::Added(p)) = stream.try_next().await.unwrap() else {
        panic!("the pod added after rv0 comes first")
    };
    assert_eq!(p.metadata.name.as_deref(), Some("two"));
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Bookmark(b)) => assert_eq!(
            b.metadata.resource_version,
            server.resource_version().to_string()
        ),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // A live change arrives on the open stream.
    server.delete("v1", "Pod", "a", "one");
    loop {
        match stream.try_next().await.unwrap() {
            Some(WatchEvent::Deleted(p)) => {
                assert_eq!(p.metadata.name.as_deref(), Some("one"));
                break;
            }
            Some(WatchEvent::Bookmark(_)) => continue,
            other => panic!("expected the deletion, got {other:?}"),
        }
    }
    drop(stream);

    // After compaction, the old version is gone: one ERROR event with 410 Expired.
    server.compact();
    let mut stream = pods.watch(&params, &rv0.to_string()).await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_watcher_lists_then_follows() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    for i in 0..3 {
        server
            .apply(pod(
                "a",
                &format!("p{i}"),
                &format!("10.0.0.{i}"),
                "Running",
            ))
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client(&server).await, "a");
    let config = watcher::Config::default().page_size(2);
    let mut events = watcher::watcher(pods, config).boxed();
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await {
            Ok(Ok(Some(watcher::Event::InitApply(p)))) => {
                initial.push(p.metadata.name.unwrap_or_default())
            }
            Ok(Ok(Some(watcher::Event::InitDone))) => break,
            Ok(Ok(Some(_))) => {}
            other => panic!("watcher: {other:?}"),
        }
    }
    assert_eq!(initial, ["p0", "p1", "p2"]);
    server.apply(pod("a", "p3", "10.0.0.9", "Running")).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), events.try_next()).await {
        Ok(Ok(Some(watcher::Event::Apply(p)))) => {
            assert_eq!(p.metadata.name.as_deref(), Some("p3"))
        }
        other => panic!("watcher: {other:?}"),
    }
    // The list went page by page (page_size 2): a continue token was followed.
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains("/pods?") && r.contains("continue="))
    );
}
