//! Discovery, then every kind in the catalog listed page by page.

use crate::catalog::{KINDS, Kind};
use crate::clean::{Cleaned, clean, namespace_and_name};
use crate::connect::Connection;
use crate::emit;
use crate::error::{ClusterError, Target};
use kube::api::ListParams;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Objects per list request: the apiserver's own default page size for kubectl.
pub const PAGE_SIZE: u32 = 500;

/// Reported while listing, for a progress indicator.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub kind: &'static str,
    /// Objects of this kind listed so far.
    pub listed: usize,
    /// Objects of every kind listed so far.
    pub total: usize,
}

/// An object the cluster served that membrane could not read; the rest is still analysed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectError {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}: {}", self.kind, self.name, self.reason),
            None => write!(f, "{} {}: {}", self.kind, self.name, self.reason),
        }
    }
}

/// The objects of one kind, cleaned and sorted by namespace and name.
#[derive(Debug, Clone)]
pub struct KindObjects {
    pub kind: &'static Kind,
    pub api_version: String,
    pub objects: Vec<Value>,
}

/// What was read from a cluster.
#[derive(Debug, Clone)]
pub struct ClusterRead {
    pub server: String,
    pub context: String,
    pub namespace: Option<String>,
    /// The kinds the cluster serves, in catalog order.
    pub kinds: Vec<KindObjects>,
    /// Features turned off because the cluster does not serve their kinds.
    pub notes: Vec<String>,
    pub object_errors: Vec<ObjectError>,
    /// Pods listed that are not endpoints (not running, or no address yet).
    pub pods_not_running: usize,
}

impl ClusterRead {
    /// One manifests file per kind: (file name, YAML text), in catalog order.
    pub fn files(&self) -> Vec<(String, String)> {
        self.kinds
            .iter()
            .map(|k| {
                let mut text = format!(
                    "# {} ({}) from context `{}` at {}: {} object(s).\n",
                    k.kind.kind,
                    k.api_version,
                    self.context,
                    self.server,
                    k.objects.len()
                );
                text.push_str(&emit::documents(&k.objects));
                (k.kind.file.to_string(), text)
            })
            .collect()
    }

    /// Cleans listed items of one kind into `objects`, counting what is not kept.
    pub(crate) fn add_items(
        &mut self,
        kind: &'static Kind,
        api_version: &str,
        items: &[Value],
        objects: &mut Vec<Value>,
    ) {
        for item in items {
            match clean(kind, api_version, item) {
                Ok(Cleaned::Keep(v)) => objects.push(v),
                Ok(Cleaned::NotAnEndpoint) => self.pods_not_running += 1,
                Err(reason) => {
                    let (namespace, name) = namespace_and_name(item);
                    self.object_errors.push(ObjectError {
                        kind: kind.kind.to_string(),
                        namespace,
                        name,
                        reason,
                    });
                }
            }
        }
    }

    pub fn count(&self, kind: &str) -> usize {
        self.kinds
            .iter()
            .find(|k| k.kind.kind == kind)
            .map_or(0, |k| k.objects.len())
    }
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    continue_token: Option<String>,
}

#[derive(Deserialize)]
struct RawList {
    #[serde(default)]
    metadata: ListMeta,
    #[serde(default)]
    items: Option<Vec<Value>>,
}

impl Connection {
    fn target<'a>(
        &'a self,
        kind: Option<&'a Kind>,
        path: &'a str,
        namespace: Option<&'a str>,
    ) -> Target<'a> {
        Target {
            server: &self.server,
            context: &self.context,
            kind,
            path,
            namespace,
            timeout: self.timeout,
        }
    }

    /// One request, bounded by the timeout as a whole (slow bodies included).
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        request: http::Request<Vec<u8>>,
        target: Target<'_>,
    ) -> Result<T, ClusterError> {
        match tokio::time::timeout(self.timeout, self.client.request::<T>(request)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(target.classify(e)),
            Err(_) => Err(ClusterError::Timeout {
                server: self.server.clone(),
                resource: target
                    .kind
                    .map_or_else(|| target.path.to_string(), Kind::resource),
                timeout: self.timeout,
            }),
        }
    }
}

/// Which version of each kind the cluster serves (absent: not served).
pub(crate) async fn discover(
    conn: &Connection,
) -> Result<BTreeMap<&'static str, String>, ClusterError> {
    let mut served = BTreeMap::new();
    let groups: BTreeSet<&str> = KINDS.iter().map(|k| k.group).collect();
    let group_list: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList = conn
        .get(get_request("/apis")?, conn.target(None, "/apis", None))
        .await?;
    for group in groups {
        let versions: Vec<String> = if group.is_empty() {
            vec!["v1".to_string()]
        } else {
            match group_list.groups.iter().find(|g| g.name == group) {
                Some(g) => g.versions.iter().map(|v| v.version.clone()).collect(),
                None => continue,
            }
        };
        let mut resources_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for kind in KINDS.iter().filter(|k| k.group == group) {
            for version in kind.versions {
                if !versions.iter().any(|v| v == version) {
                    continue;
                }
                let api_version = kind.api_version(version);
                if !resources_of.contains_key(&api_version) {
                    let path = if group.is_empty() {
                        format!("/api/{version}")
                    } else {
                        format!("/apis/{api_version}")
                    };
                    let list: k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList =
                        conn.get(get_request(&path)?, conn.target(None, &path, None))
                            .await?;
                    resources_of.insert(
                        api_version.clone(),
                        list.resources.into_iter().map(|r| r.name).collect(),
                    );
                }
                if resources_of
                    .get(&api_version)
                    .is_some_and(|r| r.contains(kind.plural))
                {
                    served.insert(kind.kind, api_version);
                    break;
                }
            }
        }
    }
    Ok(served)
}

fn get_request(path: &str) -> Result<http::Request<Vec<u8>>, ClusterError> {
    http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| ClusterError::Protocol {
            resource: path.to_string(),
            message: e.to_string(),
        })
}

fn list_path(kind: &Kind, api_version: &str, namespace: Option<&str>) -> String {
    let base = if kind.group.is_empty() {
        format!("/api/{api_version}")
    } else {
        format!("/apis/{api_version}")
    };
    match namespace {
        Some(ns) if kind.namespaced => format!("{base}/namespaces/{ns}/{}", kind.plural),
        _ => format!("{base}/{}", kind.plural),
    }
}

/// Reads every kind the cluster serves. `progress` is called after each page.
pub async fn read_cluster(
    conn: &Connection,
    namespace: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<ClusterRead, ClusterError> {
    let served = discover(conn).await?;
    let mut read = ClusterRead {
        server: conn.server.clone(),
        context: conn.context.clone(),
        namespace: namespace.map(str::to_string),
        kinds: Vec::new(),
        notes: Vec::new(),
        object_errors: Vec::new(),
        pods_not_running: 0,
    };
    let mut total = 0;
    for kind in KINDS {
        let Some(api_version) = served.get(kind.kind) else {
            if !kind.missing.is_empty() && !read.notes.iter().any(|n| n == kind.missing) {
                read.notes.push(kind.missing.to_string());
            }
            continue;
        };
        let path = list_path(kind, api_version, namespace);
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        let mut listed = 0;
        loop {
            let mut params = ListParams::default().limit(PAGE_SIZE);
            if let Some(t) = &token {
                params = params.continue_token(t);
            }
            let request = kube::core::Request::new(&path).list(&params).map_err(|e| {
                ClusterError::Protocol {
                    resource: kind.resource(),
                    message: e.to_string(),
                }
            })?;
            let page: RawList = conn
                .get(request, conn.target(Some(kind), &path, namespace))
                .await?;
            let items = page.items.unwrap_or_default();
            listed += items.len();
            total += items.len();
            read.add_items(kind, api_version, &items, &mut objects);
            progress(Progress {
                kind: kind.kind,
                listed,
                total,
            });
            match page.metadata.continue_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        objects.sort_by_cached_key(namespace_and_name);
        read.kinds.push(KindObjects {
            kind,
            api_version: api_version.clone(),
            objects,
        });
    }
    Ok(read)
}

/// Connects and reads on a runtime of its own, for callers without one (the CLI).
pub fn read_cluster_blocking(
    options: &crate::ClusterOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<ClusterRead, ClusterError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Kubeconfig(format!("cannot start the client: {e}")))?;
    runtime.block_on(async {
        let conn = crate::connect(options).await?;
        read_cluster(&conn, options.namespace.as_deref(), progress).await
    })
}
