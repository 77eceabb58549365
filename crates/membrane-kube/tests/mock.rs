//! Error paths through kube-rs's own mock service (tower-test): the client talks to a handler
//! in the test instead of a server, which answers 401, 403, 500, a list cut off mid-JSON, or
//! nothing in time. Each becomes one clear `ClusterError`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::{Request, Response, StatusCode};
use kube::client::Body;
use membrane_kube::connect::Connection;
use membrane_kube::{ClusterError, read_cluster};
use serde_json::json;
use std::time::Duration;
use tower_test::mock;

/// How the handler answers one path.
#[derive(Clone)]
enum Answer {
    Json(u16, serde_json::Value),
    Raw(&'static str),
    Slow(Duration),
}

fn status(code: u16, reason: &str) -> Answer {
    Answer::Json(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{reason} (from the mock)"), "reason": reason, "code": code}),
    )
}

/// A client whose requests go to `answer` (core kinds only: `/apis` lists no groups).
fn mocked(answer: impl Fn(&str) -> Option<Answer> + Send + 'static) -> Connection {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let path = request.uri().path().to_string();
            let reply = answer(&path).unwrap_or_else(|| match path.as_str() {
                "/apis" => Answer::Json(200, json!({"kind": "APIGroupList", "groups": []})),
                "/api/v1" => Answer::Json(
                    200,
                    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace", "verbs": ["list"]},
                        {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node", "verbs": ["list"]},
                        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["list"]},
                        {"name": "services", "singularName": "service", "namespaced": true, "kind": "Service", "verbs": ["list"]}]}),
                ),
                _ => Answer::Json(200, json!({"kind": "List", "metadata": {}, "items": []})),
            });
            tokio::spawn(async move {
                let response = match reply {
                    Answer::Json(code, v) => {
                        let mut r = Response::new(Body::from(v.to_string().into_bytes()));
                        *r.status_mut() = StatusCode::from_u16(code).unwrap();
                        r
                    }
                    Answer::Raw(text) => Response::new(Body::from(text.as_bytes().to_vec())),
                    Answer::Slow(d) => {
                        tokio::time::sleep(d).await;
                        Response::new(Body::from(b"{}".to_vec()))
                    }
                };
                send.send_response(response);
            });
        }
    });
    Connection {
        client: kube::Client::new(service, "default"),
        server: "https://mock:6443".into(),
        context: "mock".into(),
        timeout: Duration::from_millis(500),
    }
}

async fn read(conn: &Connection) -> Result<membrane_kube::ClusterRead, ClusterError> {
    read_cluster(conn, None, &mut |_| {}).await
}

#[tokio::test]
async fn a_healthy_mock_cluster_reads() {
    let conn = mocked(|_| None);
    let r = read(&conn).await.unwrap();
    assert_eq!(r.kinds.len(), 4);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("Cilium is not installed"))
    );
}

#[tokio::test]
async fn unauthorized() {
    let conn = mocked(|p| (p == "/apis").then(|| status(401, "Unauthorized")));
    let e = read(&conn).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "the cluster at https://mock:6443 rejected the credentials of context `mock` (401 Unauthorized): log in again or refresh the token in the kubeconfig"
    );
}

#[tokio::test]
async fn forbidden_names_the_resource_and_the_rule() {
    let conn = mocked(|p| (p == "/api/v1/nodes").then(|| status(403, "Forbidden")));
    let e = read(&conn).await.unwrap_err().to_string();
    assert!(e.starts_with("the cluster refused to list nodes (403 Forbidden): the credentials lack the RBAC rule {apiGroups: [\"\"], resources: [\"nodes\"], verbs: [\"list\"]}"), "{e}");
}

#[tokio::test]
async fn internal_errors_carry_the_servers_message() {
    let conn = mocked(|p| (p == "/api/v1/pods").then(|| status(500, "InternalError")));
    let e = read(&conn).await.unwrap_err().to_string();
    assert_eq!(
        e,
        "the cluster answered 500 listing pods: InternalError (from the mock)"
    );
}

#[tokio::test]
async fn a_list_cut_off_mid_json_is_not_taken_for_a_list() {
    let conn = mocked(|p| {
        (p == "/api/v1/namespaces").then_some(Answer::Raw(
            r#"{"kind":"NamespaceList","metadata":{},"items":[{"metadata":{"na"#,
        ))
    });
    let e = read(&conn).await.unwrap_err();
    assert!(matches!(e, ClusterError::Protocol { .. }), "{e}");
    assert!(
        e.to_string().starts_with(
            "the cluster's answer listing namespaces is not a Kubernetes list: EOF while parsing"
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let conn =
        mocked(|p| (p == "/api/v1/services").then_some(Answer::Slow(Duration::from_secs(5))));
    let e = read(&conn).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "the cluster at https://mock:6443 did not answer within 500ms (listing services); raise --request-timeout or check the connection"
    );
}
