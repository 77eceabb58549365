//! Following a cluster: one kube-rs reflector per kind the cluster serves (a paged list, then
//! a watch that resumes from its resourceVersion, relists after `410 Gone` and backs off on
//! errors), and a snapshot of every store on demand, in the same shape as a one-time read.

use crate::catalog::{KINDS, Kind};
use crate::clean::namespace_and_name;
use crate::connect::Connection;
use crate::error::ClusterError;
use crate::read::{ClusterRead, KindObjects, PAGE_SIZE, discover};
use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::time::Duration;
use tokio::sync::watch;

/// The cluster as the reflectors see it now.
pub struct Follower {
    server: String,
    context: String,
    namespace: Option<String>,
    stores: Vec<(&'static Kind, String, Store<DynamicObject>)>,
    notes: Vec<String>,
    changed: watch::Receiver<u64>,
    /// The last watch error, for the caller to report (cleared by [`Follower::take_error`]).
    errors: watch::Receiver<Option<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The kube-rs description of a catalog kind served as `api_version`.
pub fn api_resource(kind: &Kind, api_version: &str) -> ApiResource {
    let version = api_version.rsplit('/').next().unwrap_or(api_version);
    ApiResource {
        group: kind.group.to_string(),
        version: version.to_string(),
        api_version: api_version.to_string(),
        kind: kind.kind.to_string(),
        plural: kind.plural.to_string(),
    }
}

/// Starts a reflector per served kind and waits until each has listed once.
pub async fn follow(conn: &Connection, namespace: Option<&str>) -> Result<Follower, ClusterError> {
    let served = discover(conn).await?;
    let (changed_tx, changed) = watch::channel(0u64);
    let (errors_tx, errors) = watch::channel(None);
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    let mut notes = Vec::new();
    for kind in KINDS {
        let Some(api_version) = served.get(kind.kind) else {
            if !kind.missing.is_empty() && !notes.iter().any(|n| n == kind.missing) {
                notes.push(kind.missing.to_string());
            }
            continue;
        };
        let ar = api_resource(kind, api_version);
        let api: Api<DynamicObject> = match namespace {
            Some(ns) if kind.namespaced => Api::namespaced_with(conn.client.clone(), ns, &ar),
            _ => Api::all_with(conn.client.clone(), &ar),
        };
        let writer = reflector::store::Writer::new(ar.clone());
        let store = writer.as_reader();
        let config = watcher::Config::default().page_size(PAGE_SIZE);
        let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
        let (changed_tx, errors_tx) = (changed_tx.clone(), errors_tx.clone());
        let resource = kind.resource();
        tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(_) => {
                        changed_tx.send_modify(|n| *n += 1);
                    }
                    Err(e) => {
                        errors_tx.send_replace(Some(format!("watching {resource}: {e}")));
                    }
                }
            }
        }));
        stores.push((kind, api_version.clone(), store));
    }
    for (kind, _, store) in &stores {
        if tokio::time::timeout(conn.timeout, store.wait_until_ready())
            .await
            .map_or(true, |r| r.is_err())
        {
            return Err(ClusterError::Timeout {
                server: conn.server.clone(),
                resource: kind.resource(),
                timeout: conn.timeout,
            });
        }
    }
    Ok(Follower {
        server: conn.server.clone(),
        context: conn.context.clone(),
        namespace: namespace.map(str::to_string),
        stores,
        notes,
        changed,
        errors,
        tasks,
    })
}

impl Follower {
    /// Every store now, cleaned and sorted as a one-time read would be.
    pub fn snapshot(&self) -> ClusterRead {
        let mut read = ClusterRead {
            server: self.server.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
            kinds: Vec::new(),
            notes: self.notes.clone(),
            object_errors: Vec::new(),
            pods_not_running: 0,
        };
        for (kind, api_version, store) in &self.stores {
            let items: Vec<serde_json::Value> = store
                .state()
                .iter()
                .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
                .collect();
            let mut objects = Vec::new();
            read.add_items(kind, api_version, &items, &mut objects);
            objects.sort_by_cached_key(namespace_and_name);
            read.kinds.push(KindObjects {
                kind,
                api_version: api_version.clone(),
                objects,
            });
        }
        read
    }

    /// Waits for the next change, then for `quiet` without one (a rollout is many events).
    /// `false` when the reflectors have stopped.
    pub async fn changed(&mut self, quiet: Duration) -> bool {
        if self.changed.changed().await.is_err() {
            return false;
        }
        loop {
            match tokio::time::timeout(quiet, self.changed.changed()).await {
                Err(_) => return true,
                Ok(Err(_)) => return false,
                Ok(Ok(())) => {}
            }
        }
    }

    /// The last watch error since the previous call, if any.
    pub fn take_error(&mut self) -> Option<String> {
        if self.errors.has_changed().unwrap_or(false) {
            return self.errors.borrow_and_update().clone();
        }
        None
    }
}

/// Reads the cluster, then calls `on_change` with every new state after the reflectors see a
/// change (quiet for 300 ms), until it returns false. Runs on a runtime of its own.
pub fn follow_blocking(
    options: &crate::ClusterOptions,
    mut on_change: impl FnMut(Result<ClusterRead, String>) -> bool,
) -> Result<(), ClusterError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Kubeconfig(format!("cannot start the client: {e}")))?;
    runtime.block_on(async {
        let conn = crate::connect(options).await?;
        let mut follower = follow(&conn, options.namespace.as_deref()).await?;
        if !on_change(Ok(follower.snapshot())) {
            return Ok(());
        }
        while follower.changed(Duration::from_millis(300)).await {
            if let Some(e) = follower.take_error()
                && !on_change(Err(e))
            {
                return Ok(());
            }
            if !on_change(Ok(follower.snapshot())) {
                return Ok(());
            }
        }
        Ok(())
    })
}
