//! Following a cluster through reflectors, against the fake: changes arrive, a watch that
//! ends is resumed, and a resumed watch whose resourceVersion was compacted away (410 Gone)
//! relists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_kube::connect::Connection;
use membrane_kube::fake::{FakeApiServer, default_served_kinds};
use membrane_kube::follow::follow;
use serde_json::{Value, json};
use std::time::Duration;

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "a", "labels": {"app": name}},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": ip}})
}

fn connection(server: &FakeApiServer) -> Connection {
    let uri: http::Uri = server.url().parse().unwrap();
    Connection {
        client: kube::Client::try_from(kube::Config::new(uri)).unwrap(),
        server: server.url(),
        context: "fake".into(),
        timeout: Duration::from_secs(10),
    }
}

fn pod_names(f: &membrane_kube::follow::Follower) -> Vec<String> {
    let read = f.snapshot();
    read.kinds
        .iter()
        .find(|k| k.kind.kind == "Pod")
        .map(|k| {
            k.objects
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflectors_follow_changes_resume_ended_watches_and_relist_after_410() {
    let server = FakeApiServer::start(default_served_kinds()).unwrap();
    // Watches end after 300 ms (as a load balancer's idle timeout ends them): the reflectors
    // must resume them from their last resourceVersion.
    server.limit_watches(Some(Duration::from_millis(300)));
    server.apply(pod("one", "10.0.0.1")).unwrap();
    let conn = connection(&server);
    let mut f = follow(&conn, None).await.unwrap();
    assert_eq!(pod_names(&f), ["one"]);

    // A live change.
    server.apply(pod("two", "10.0.0.2")).unwrap();
    assert!(f.changed(Duration::from_millis(100)).await);
    assert_eq!(pod_names(&f), ["one", "two"]);

    // History is compacted while the reflectors are caught up: the next resumed watch asks
    // for a version the fake no longer has, gets 410 Gone, and the reflector lists again.
    server.compact();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pod_names(&f), ["one", "two"]);
    // After the relist, changes arrive as before.
    server.delete("v1", "Pod", "a", "one");
    server.apply(pod("three", "10.0.0.3")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pod_names(&f) != ["three", "two"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?}",
            pod_names(&f)
        );
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            f.changed(Duration::from_millis(50)),
        )
        .await;
    }
    let pod_requests: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/api/v1/pods"))
        .collect();
    let lists = pod_requests
        .iter()
        .filter(|r| !r.contains("watch=true"))
        .count();
    assert!(lists >= 2, "a relist after 410: {pod_requests:?}");
    let resumed = pod_requests
        .iter()
        .filter(|r| r.contains("watch=true"))
        .count();
    assert!(resumed >= 3, "ended watches are resumed: {pod_requests:?}");
}
