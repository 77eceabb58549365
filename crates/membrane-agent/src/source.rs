//! Where object events come from: a cluster's watches or a manifests directory.
//!
//! Both produce the same events, so the engine and the datapath cannot tell them apart.

use membrane_kube::catalog::{KINDS, Kind};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One change to the cluster's objects.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Created or changed (the whole object, with apiVersion and kind).
    Apply(Value),
    Delete {
        kind: String,
        namespace: Option<String>,
        name: String,
    },
    /// A kind's first list is complete (cluster sources): until every kind has sent this,
    /// the state is partial and must not be enforced.
    Synced(String),
    /// A watch failed (it is retried with backoff).
    WatchError(String),
    /// The agent's DNS proxy learned or forgot names (toFQDNs): not an object, but a change
    /// of what the policy selects, enforced like one.
    DnsLearned,
}

/// (kind, namespace, name) of an object.
pub type Key = (String, Option<String>, String);

pub fn key_of(object: &Value) -> Key {
    (
        object["kind"].as_str().unwrap_or_default().to_string(),
        object["metadata"]["namespace"].as_str().map(str::to_string),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// The objects of a manifests directory (as `membrane snapshot` writes it: pods with their
/// addresses), diffed against the previous read so that only changes become events.
pub struct DirSource {
    dir: PathBuf,
    known: BTreeMap<Key, Value>,
    /// Files and modification times of the last read: unchanged means nothing to read.
    stamp: Vec<(PathBuf, std::time::SystemTime, u64)>,
    /// The listing seen by the previous poll: a directory is read only once two polls in a
    /// row see the same files, sizes and times (a writer is not half-way through).
    candidate: Vec<(PathBuf, std::time::SystemTime, u64)>,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        // `..data`-style entries (a ConfigMap mount's own bookkeeping) and symlinked
        // directories (loops) are not followed.
        if e.file_name().to_string_lossy().starts_with("..") {
            continue;
        }
        let p = e.path();
        if e.file_type()?.is_dir() {
            yaml_files(&p, out)?;
        } else if matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> DirSource {
        DirSource {
            dir: dir.into(),
            known: BTreeMap::new(),
            stamp: Vec::new(),
            candidate: Vec::new(),
        }
    }

    /// The events since the last call (all objects on the first). A file that does not parse
    /// keeps its objects as they were (the error is returned beside the other events).
    pub fn poll(&mut self) -> std::io::Result<(Vec<Event>, Vec<String>)> {
        let mut files = Vec::new();
        // A directory that cannot be listed now (being replaced, unmounted) changes nothing.
        if let Err(e) = yaml_files(&self.dir, &mut files) {
            return Ok((Vec::new(), vec![format!("{}: {e}", self.dir.display())]));
        }
        files.sort();
        let mut stamp = Vec::new();
        for f in &files {
            // A file that vanished between listing and reading: look again next time.
            let Ok(m) = std::fs::metadata(f) else {
                return Ok((Vec::new(), Vec::new()));
            };
            stamp.push((f.clone(), m.modified()?, m.len()));
        }
        if stamp == self.stamp {
            return Ok((Vec::new(), Vec::new()));
        }
        if stamp != self.candidate {
            self.candidate = stamp;
            return Ok((Vec::new(), Vec::new()));
        }
        let mut objects: BTreeMap<Key, Value> = BTreeMap::new();
        let mut errors = Vec::new();
        let mut failed_files = false;
        for f in &files {
            let text = match std::fs::read_to_string(f) {
                Ok(t) => t,
                Err(e) => {
                    failed_files = true;
                    errors.push(format!("{}: {e}", f.display()));
                    continue;
                }
            };
            match membrane_kube::json::yaml_to_json(&text) {
                Ok(docs) => {
                    for d in docs.into_iter().filter(|d| d["kind"].is_string()) {
                        objects.insert(key_of(&d), d);
                    }
                }
                Err(e) => {
                    failed_files = true;
                    errors.push(format!("{}:{e}", f.display()));
                }
            }
        }
        if failed_files {
            // Half a directory is not the cluster: keep enforcing the last good state.
            return Ok((Vec::new(), errors));
        }
        self.stamp = stamp;
        let mut events = Vec::new();
        for (key, old) in &self.known {
            if !objects.contains_key(key) {
                let _ = old;
                events.push(Event::Delete {
                    kind: key.0.clone(),
                    namespace: key.1.clone(),
                    name: key.2.clone(),
                });
            }
        }
        for (key, object) in &objects {
            if self.known.get(key) != Some(object) {
                events.push(Event::Apply(object.clone()));
            }
        }
        self.known = objects;
        Ok((events, errors))
    }
}

/// Kinds the agent follows in a cluster: those the analysis reads.
pub fn followed_kinds() -> &'static [Kind] {
    KINDS
}

/// A cluster's watches (kube-rs watchers, one per kind the cluster serves) as events on a
/// channel. After a relist (a new watch after `410 Gone`, or the first list), objects the
/// list no longer has are deleted.
pub struct ClusterSource {
    /// Kinds whose first list must complete before the state is whole.
    pub kinds: usize,
    /// Keeps the watchers running; dropped with the source.
    _runtime: tokio::runtime::Runtime,
}

impl ClusterSource {
    /// Starts the watches; their events go to `tx`.
    pub fn start(
        options: &membrane_kube::ClusterOptions,
        tx: std::sync::mpsc::Sender<Event>,
        secrets_namespace: Option<&str>,
    ) -> Result<ClusterSource, String> {
        use kube::api::{Api, DynamicObject};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let options = options.clone();
        let served = runtime.block_on(async {
            let conn = membrane_kube::connect(&options)
                .await
                .map_err(|e| e.to_string())?;
            // A first read gives one clear error (401, 403, unreachable) before watching.
            membrane_kube::read_cluster(&conn, options.namespace.as_deref(), &mut |_| {})
                .await
                .map(|read| (conn, read))
                .map_err(|e| e.to_string())
        })?;
        let (conn, read) = served;
        let kinds = read.kinds.len();
        for k in read.kinds {
            let kind = k.kind;
            let ar = membrane_kube::follow::api_resource(kind, &k.api_version);
            let api: Api<DynamicObject> = match options.namespace.as_deref() {
                Some(ns) if kind.namespaced => Api::namespaced_with(conn.client.clone(), ns, &ar),
                _ => Api::all_with(conn.client.clone(), &ar),
            };
            runtime.spawn(follow(api, ar, tx.clone()));
        }
        // Policy secrets (headerMatches values, TLS certificates), from the one namespace
        // they are kept in, as Cilium's agent reads them.
        let mut kinds = kinds;
        if let Some(ns) = secrets_namespace {
            let ar = membrane_kube::follow::api_resource(&SECRETS, "v1");
            let api: Api<DynamicObject> = Api::namespaced_with(conn.client.clone(), ns, &ar);
            runtime.spawn(follow(api, ar, tx.clone()));
            kinds += 1;
        }
        Ok(ClusterSource {
            kinds,
            _runtime: runtime,
        })
    }
}

/// Secrets, watched in the policy secrets namespace only.
pub const SECRETS: Kind = Kind {
    kind: "Secret",
    group: "",
    versions: &["v1"],
    plural: "secrets",
    namespaced: true,
    file: "",
    missing: "policy secrets (headerMatches values, TLS certificates)",
};

/// Follows one kind: its objects become events on `tx` (a relist's vanished objects as
/// deletions; `Synced` after the first list).
async fn follow(
    api: kube::api::Api<kube::api::DynamicObject>,
    ar: kube::api::ApiResource,
    tx: std::sync::mpsc::Sender<Event>,
) {
    use futures_util::StreamExt;
    use kube::api::DynamicObject;
    use kube::runtime::{WatchStreamExt, watcher};
    let stream = watcher(api, watcher::Config::default().page_size(500)).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listed: Option<std::collections::BTreeSet<Key>> = None;
    let mut known: std::collections::BTreeSet<Key> = std::collections::BTreeSet::new();
    let with_type = |o: DynamicObject| -> Value {
        let mut v = serde_json::to_value(&o).unwrap_or_default();
        v["apiVersion"] = Value::String(ar.api_version.clone());
        v["kind"] = Value::String(ar.kind.clone());
        v
    };
    let mut synced = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                let _ = tx.send(Event::WatchError(format!("watching {}: {e}", ar.plural)));
                continue;
            }
        };
        let out: Vec<Event> = match event {
            watcher::Event::Init => {
                listed = Some(std::collections::BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let v = with_type(o);
                let key = key_of(&v);
                if let Some(l) = listed.as_mut() {
                    l.insert(key.clone());
                }
                known.insert(key);
                vec![Event::Apply(v)]
            }
            watcher::Event::Delete(o) => {
                let key = key_of(&with_type(o));
                known.remove(&key);
                vec![Event::Delete {
                    kind: key.0,
                    namespace: key.1,
                    name: key.2,
                }]
            }
            watcher::Event::InitDone => {
                let listed = listed.take().unwrap_or_default();
                let gone: Vec<Key> = known.difference(&listed).cloned().collect();
                known = listed;
                let mut out: Vec<Event> = gone
                    .into_iter()
                    .map(|(kind, namespace, name)| Event::Delete {
                        kind,
                        namespace,
                        name,
                    })
                    .collect();
                if !synced {
                    synced = true;
                    out.push(Event::Synced(ar.kind.clone()));
                }
                out
            }
        };
        for e in out {
            if tx.send(e).is_err() {
                return;
            }
        }
    }
}
