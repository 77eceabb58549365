//! A client for the cluster a kubeconfig names, resolved as kubectl resolves it:
//! `--kubeconfig`, else `$KUBECONFIG`, else `~/.kube/config`; `--context`, else the current one.

use crate::error::ClusterError;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Read namespaced objects of this namespace only (cluster-scoped ones are always read).
    pub namespace: Option<String>,
    /// For connecting and for each answer.
    pub timeout: Duration,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            kubeconfig: None,
            context: None,
            namespace: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A client with what its errors need to name.
#[derive(Clone)]
pub struct Connection {
    pub client: kube::Client,
    pub server: String,
    pub context: String,
    pub timeout: Duration,
}

fn kubeconfig_paths(options: &ClusterOptions) -> Result<Vec<PathBuf>, ClusterError> {
    if let Some(p) = &options.kubeconfig {
        return Ok(vec![p.clone()]);
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return Ok(std::env::split_paths(&list).collect());
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(vec![PathBuf::from(home).join(".kube").join("config")]),
        None => Err(ClusterError::Kubeconfig(
            "no kubeconfig: give --kubeconfig PATH or set $KUBECONFIG".into(),
        )),
    }
}

fn read_kubeconfig(options: &ClusterOptions) -> Result<Kubeconfig, ClusterError> {
    let mut merged: Option<Kubeconfig> = None;
    for path in kubeconfig_paths(options)? {
        if options.kubeconfig.is_none() && !path.exists() {
            continue;
        }
        let config = Kubeconfig::read_from(&path).map_err(|e| {
            ClusterError::Kubeconfig(format!("{}: {}", path.display(), innermost(&e)))
        })?;
        merged = Some(match merged {
            None => config,
            Some(m) => m.merge(config).map_err(|e| {
                ClusterError::Kubeconfig(format!("{}: {}", path.display(), innermost(&e)))
            })?,
        });
    }
    merged.ok_or_else(|| {
        ClusterError::Kubeconfig(
            "no kubeconfig found: give --kubeconfig PATH, set $KUBECONFIG or create ~/.kube/config"
                .into(),
        )
    })
}

fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = err;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if std::ptr::addr_eq(cur, err) {
        err.to_string()
    } else {
        format!("{err}: {cur}")
    }
}

/// Inside a pod without a kubeconfig, the pod's service account (as kubectl does).
fn in_cluster(options: &ClusterOptions) -> Option<Result<Connection, ClusterError>> {
    if options.kubeconfig.is_some()
        || options.context.is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_none()
    {
        return None;
    }
    let mut config = match kube::Config::incluster() {
        Ok(c) => c,
        Err(e) => {
            return Some(Err(ClusterError::Kubeconfig(format!(
                "in-cluster configuration: {}",
                innermost(&e)
            ))));
        }
    };
    config.connect_timeout = Some(options.timeout);
    config.read_timeout = None;
    let server = config.cluster_url.to_string();
    Some(
        kube::Client::try_from(config)
            .map(|client| Connection {
                client,
                server: server.trim_end_matches('/').to_string(),
                context: "in-cluster".into(),
                timeout: options.timeout,
            })
            .map_err(|e| ClusterError::Unreachable {
                server,
                reason: innermost(&e),
            }),
    )
}

/// Builds the client. No request is made yet: an unreachable server is found by the first one.
pub async fn connect(options: &ClusterOptions) -> Result<Connection, ClusterError> {
    let kubeconfig = match read_kubeconfig(options) {
        Ok(k) => k,
        Err(e) => return in_cluster(options).unwrap_or(Err(e)),
    };
    let context = options
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .ok_or_else(|| {
            ClusterError::Kubeconfig(
                "the kubeconfig has no current context: give --context NAME".into(),
            )
        })?;
    if !kubeconfig.contexts.iter().any(|c| c.name == context) {
        let known: Vec<_> = kubeconfig
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        return Err(ClusterError::Kubeconfig(format!(
            "context `{context}` is not in the kubeconfig (it has: {})",
            known.join(", ")
        )));
    }
    let kube_options = KubeConfigOptions {
        context: Some(context.clone()),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube_options)
        .await
        .map_err(|e| ClusterError::Kubeconfig(format!("context `{context}`: {}", innermost(&e))))?;
    config.connect_timeout = Some(options.timeout);
    // Watches are quiet for minutes by design: a read timeout would cut them. Lists and other
    // answers are bounded by `options.timeout` around each request instead (read.rs).
    config.read_timeout = None;
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| ClusterError::Unreachable {
        server: server.clone(),
        reason: innermost(&e),
    })?;
    Ok(Connection {
        client,
        server: server.trim_end_matches('/').to_string(),
        context,
        timeout: options.timeout,
    })
}
