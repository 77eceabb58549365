//! What can go wrong talking to a cluster, each as one line a person can act on.

use crate::catalog::Kind;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Kubeconfig(String),
    #[error("cannot reach the cluster at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error("the cluster at {server} did not answer within {} (listing {resource}); raise --request-timeout or check the connection", seconds(*timeout))]
    Timeout {
        server: String,
        resource: String,
        timeout: Duration,
    },
    #[error(
        "the cluster at {server} rejected the credentials of context `{context}` (401 Unauthorized): log in again or refresh the token in the kubeconfig"
    )]
    Unauthorized { server: String, context: String },
    #[error("the cluster refused to list {resource}{} (403 Forbidden): the credentials lack the RBAC rule {{apiGroups: [\"{group}\"], resources: [\"{plural}\"], verbs: [\"list\"]}}; apply deploy/rbac.yaml (ClusterRole membrane-reader) and bind it to this user", scope(.namespace.as_deref()))]
    Forbidden {
        resource: String,
        group: String,
        plural: String,
        namespace: Option<String>,
    },
    #[error("the cluster answered {code} listing {resource}: {message}")]
    Server {
        resource: String,
        code: u16,
        message: String,
    },
    #[error(
        "the cluster's answer listing {resource} was cut off ({reason}): retry; a proxy or load balancer between here and {server} may be dropping long answers"
    )]
    Truncated {
        server: String,
        resource: String,
        reason: String,
    },
    #[error("the cluster's answer listing {resource} is not a Kubernetes list: {message}")]
    Protocol { resource: String, message: String },
}

/// `30s`, or `500ms` below a second.
fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn scope(namespace: Option<&str>) -> String {
    namespace.map_or_else(String::new, |n| format!(" in namespace {n}"))
}

/// What one request was for, so its failure can name it.
pub(crate) struct Target<'a> {
    pub server: &'a str,
    pub context: &'a str,
    pub kind: Option<&'a Kind>,
    pub path: &'a str,
    pub namespace: Option<&'a str>,
    pub timeout: Duration,
}

impl Target<'_> {
    fn resource(&self) -> String {
        self.kind
            .map_or_else(|| self.path.to_string(), Kind::resource)
    }

    /// One clear error from kube-rs's layered one.
    pub(crate) fn classify(&self, err: kube::Error) -> ClusterError {
        match err {
            kube::Error::Api(status) => match status.code {
                401 => ClusterError::Unauthorized {
                    server: self.server.to_string(),
                    context: self.context.to_string(),
                },
                403 => ClusterError::Forbidden {
                    resource: self.resource(),
                    group: self.kind.map_or("", |k| k.group).to_string(),
                    plural: self
                        .kind
                        .map_or_else(|| self.path.to_string(), |k| k.plural.to_string()),
                    namespace: self.namespace.map(str::to_string),
                },
                code => ClusterError::Server {
                    resource: self.resource(),
                    code,
                    message: if status.message.is_empty() {
                        status.reason.clone()
                    } else {
                        status.message.clone()
                    },
                },
            },
            kube::Error::SerdeError(e) => ClusterError::Protocol {
                resource: self.resource(),
                message: e.to_string(),
            },
            other => {
                let chain = chain(&other);
                let reason = chain.last().cloned().unwrap_or_default();
                if chain.iter().any(|m| is_cut_off(m)) {
                    ClusterError::Truncated {
                        server: self.server.to_string(),
                        resource: self.resource(),
                        reason,
                    }
                } else if chain.iter().any(|m| is_timeout(m)) {
                    ClusterError::Timeout {
                        server: self.server.to_string(),
                        resource: self.resource(),
                        timeout: self.timeout,
                    }
                } else {
                    ClusterError::Unreachable {
                        server: self.server.to_string(),
                        reason,
                    }
                }
            }
        }
    }
}

/// The messages of an error and its sources, outermost first.
fn chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push(e.to_string());
        cur = e.source();
    }
    out
}

/// hyper's words for an answer that ended before its promised length.
fn is_cut_off(message: &str) -> bool {
    message.contains("before message length reached")
        || message.contains("connection closed before message completed")
        || message.contains("incomplete message")
}

fn is_timeout(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("timed out") || m.contains("timeout") || m.contains("deadline has elapsed")
}
