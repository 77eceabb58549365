//! The fake's HTTP side: routing, lists, watches and faults.

use super::store::{Event, Fault, ServedKind, Store, reason_of, status};
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

type Body = BoxBody<Bytes, Infallible>;

struct Shared {
    store: Mutex<Store>,
    /// The store's resourceVersion after each write, for watches to wake on.
    changed: watch::Sender<u64>,
    bookmark_interval: Mutex<Duration>,
    /// Watches end after this long even when the client asked for longer (as an apiserver
    /// restart or a load balancer's idle timeout ends them), so clients must resume.
    watch_limit: Mutex<Option<Duration>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A poisoned lock only means a test thread panicked; the data is still usable.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake apiserver on a loopback port. Dropping it stops it.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeApiServer {
    /// Serves `kinds` on `127.0.0.1` from a thread of its own (usable from sync tests and
    /// while the code under test runs in another process).
    pub fn start(kinds: Vec<ServedKind>) -> std::io::Result<FakeApiServer> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?, kinds)
    }

    /// As [`start`](Self::start), on a given address (port 0: any).
    pub fn start_on(bind: SocketAddr, kinds: Vec<ServedKind>) -> std::io::Result<FakeApiServer> {
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let objects = vec![Default::default(); kinds.len()];
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                kinds,
                objects,
                ..Store::default()
            }),
            changed,
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            watch_limit: Mutex::new(None),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let serve = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    tokio::select! {
                        _ = accept_loop(listener, serve) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(FakeApiServer {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: context `fake`, bearer `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\nusers:\n- name: fake\n  user:\n    token: {token}\n",
            self.url()
        )
    }

    /// Creates or replaces an object (it needs apiVersion, kind and metadata.name).
    pub fn apply(&self, object: Value) -> Result<u64, String> {
        let rv = self.shared.lock().apply(object)?;
        self.shared.changed.send_replace(rv);
        Ok(rv)
    }

    pub fn apply_all(&self, objects: impl IntoIterator<Item = Value>) -> Result<u64, String> {
        let mut rv = 0;
        for o in objects {
            rv = self.apply(o)?;
        }
        Ok(rv)
    }

    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let deleted = self
            .shared
            .lock()
            .delete(api_version, kind, namespace, name);
        let rv = self.shared.lock().rv;
        self.shared.changed.send_replace(rv);
        deleted
    }

    /// Forgets history: watches and continue tokens from before now get `410 Gone`.
    pub fn compact(&self) {
        let mut store = self.shared.lock();
        store.compacted = store.rv + 1;
        store.log.clear();
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Requests whose path contains `path` fail as `fault` says.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.shared.lock().faults.push((path.to_string(), fault));
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Every request must carry `Authorization: Bearer <token>` (else 401).
    pub fn require_token(&self, token: Option<&str>) {
        self.shared.lock().token = token.map(str::to_string);
    }

    pub fn set_bookmark_interval(&self, every: Duration) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = every;
    }

    /// Ends every watch after `limit` (None: when the client's timeoutSeconds says).
    pub fn limit_watches(&self, limit: Option<Duration>) {
        *self
            .shared
            .watch_limit
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = limit;
    }

    /// The path and query of every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn failure(code: u16, message: &str) -> Response<Body> {
    json_response(code, &status(code, reason_of(code), message))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// What a path names.
enum Route {
    Version,
    CoreVersions,
    Groups,
    Resources {
        group: String,
        version: String,
    },
    Collection {
        kind: usize,
        namespace: Option<String>,
    },
    Unknown,
}

fn route(store: &Store, path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let find = |group: &str, version: &str, plural: &str| {
        store
            .kinds
            .iter()
            .position(|k| k.group == group && k.version == version && k.plural == plural)
    };
    let collection = |group: &str, version: &str, rest: &[&str]| match rest {
        [plural] => find(group, version, plural).map(|kind| Route::Collection {
            kind,
            namespace: None,
        }),
        ["namespaces", ns, plural] => find(group, version, plural)
            .filter(|k| store.kinds[*k].namespaced)
            .map(|kind| Route::Collection {
                kind,
                namespace: Some((*ns).to_string()),
            }),
        _ => None,
    };
    match parts.as_slice() {
        ["version"] => Route::Version,
        ["api"] => Route::CoreVersions,
        ["apis"] => Route::Groups,
        ["api", version] => Route::Resources {
            group: String::new(),
            version: (*version).to_string(),
        },
        ["apis", group, version] => Route::Resources {
            group: (*group).to_string(),
            version: (*version).to_string(),
        },
        ["api", version, rest @ ..] => collection("", version, rest).unwrap_or(Route::Unknown),
        ["apis", group, version, rest @ ..] => {
            collection(group, version, rest).unwrap_or(Route::Unknown)
        }
        _ => Route::Unknown,
    }
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let (fault, token) = {
        let mut store = shared.lock();
        store.requests.push(if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        });
        (store.fault_for(&path), store.token.clone())
    };
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return failure(401, "Unauthorized");
        }
    }
    let mut truncate = false;
    match fault {
        Some(Fault::Status(code)) => {
            return failure(code, &format!("injected failure for {path}"));
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        Some(Fault::Truncate) => truncate = true,
        None => {}
    }
    let response = {
        let store = shared.lock();
        match route(&store, &path) {
            Route::Version => json_response(
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-membrane-fake",
                    "platform": "linux/amd64"}),
            ),
            Route::CoreVersions => json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
            ),
            Route::Groups => json_response(200, &groups(&store.kinds)),
            Route::Resources { group, version } => {
                let resources: Vec<Value> = store
                    .kinds
                    .iter()
                    .filter(|k| k.group == group && k.version == version)
                    .map(|k| {
                        json!({"name": k.plural, "singularName": k.kind.to_ascii_lowercase(),
                            "namespaced": k.namespaced, "kind": k.kind,
                            "verbs": ["get", "list", "watch"]})
                    })
                    .collect();
                if resources.is_empty() {
                    failure(404, "the server could not find the requested resource")
                } else {
                    let gv = if group.is_empty() {
                        version
                    } else {
                        format!("{group}/{version}")
                    };
                    json_response(
                        200,
                        &json!({"kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": gv, "resources": resources}),
                    )
                }
            }
            Route::Collection { kind, namespace } => {
                let is_watch =
                    matches!(query_param(&query, "watch").as_deref(), Some("true" | "1"));
                if is_watch {
                    drop(store);
                    return watch_stream(shared.clone(), kind, namespace, &query);
                }
                list(&store, kind, namespace.as_deref(), &query)
            }
            Route::Unknown => failure(404, "the server could not find the requested resource"),
        }
    };
    if truncate {
        return truncated(response).await;
    }
    response
}

fn groups(kinds: &[ServedKind]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for k in kinds.iter().filter(|k| !k.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == k.group) {
            Some((_, versions)) => {
                if !versions.contains(&k.version) {
                    versions.push(k.version.clone());
                }
            }
            None => groups.push((k.group.clone(), vec![k.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            let preferred = vs.first().cloned().unwrap_or(Value::Null);
            json!({"name": name, "versions": vs, "preferredVersion": preferred})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// A list page: items without apiVersion/kind, `continue` while more remain.
fn list(store: &Store, kind: usize, namespace: Option<&str>, query: &str) -> Response<Body> {
    let served = &store.kinds[kind];
    let limit: usize = query_param(query, "limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let offset = match query_param(query, "continue").filter(|c| !c.is_empty()) {
        None => 0,
        Some(token) => match token
            .split_once(':')
            .and_then(|(rv, off)| Some((rv.parse::<u64>().ok()?, off.parse::<usize>().ok()?)))
        {
            Some((rv, _)) if rv < store.compacted => {
                return failure(
                    410,
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                );
            }
            Some((_, off)) => off,
            None => return failure(400, "invalid continue token"),
        },
    };
    let matching: Vec<&Value> = store.objects[kind]
        .iter()
        .filter(|((ns, _), _)| namespace.is_none_or(|want| ns == want))
        .map(|(_, v)| v)
        .collect();
    let end = if limit == 0 {
        matching.len()
    } else {
        (offset + limit).min(matching.len())
    };
    let items: Vec<Value> = matching
        .get(offset.min(end)..end)
        .unwrap_or(&[])
        .iter()
        .map(|v| {
            let mut item = (*v).clone();
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            item
        })
        .collect();
    let mut metadata = json!({"resourceVersion": store.rv.to_string()});
    if end < matching.len() {
        metadata["continue"] = Value::String(format!("{}:{end}", store.rv));
        metadata["remainingItemCount"] = json!(matching.len() - end);
    }
    json_response(
        200,
        &json!({"kind": format!("{}List", served.kind), "apiVersion": served.api_version(),
            "metadata": metadata, "items": items}),
    )
}

/// The answer cut in half: the headers promise the whole length, the connection closes early.
async fn truncated(response: Response<Body>) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let half = bytes.slice(..bytes.len() / 2);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(half))).await;
        // Dropping the sender ends the body short of its Content-Length.
    });
    let mut r = Response::from_parts(parts, stream_body(rx));
    r.headers_mut().insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(bytes.len()),
    );
    r
}

fn stream_body(rx: mpsc::Receiver<Result<Frame<Bytes>, Infallible>>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    StreamBody::new(stream).boxed()
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A watch: the events after the given resourceVersion, then live ones, with BOOKMARKs when
/// asked for; a compacted resourceVersion gets one `410 Gone` ERROR event, as the real
/// server sends it.
fn watch_stream(
    shared: Arc<Shared>,
    kind: usize,
    namespace: Option<String>,
    query: &str,
) -> Response<Body> {
    let from = query_param(query, "resourceVersion").unwrap_or_default();
    let bookmarks = query_param(query, "allowWatchBookmarks").as_deref() == Some("true");
    let asked = query_param(query, "timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    let limit = *shared.watch_limit.lock().unwrap_or_else(|e| e.into_inner());
    let timeout = match (asked, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let mut changed = shared.changed.subscribe();
    tokio::spawn(async move {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let interval = *shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let in_scope = |e: &Event| {
            e.kind == kind
                && namespace
                    .as_ref()
                    .is_none_or(|ns| e.namespace.as_deref() == Some(ns.as_str()))
        };
        // The starting point, and what to send first (or the one ERROR event).
        let start: Result<(u64, Vec<Bytes>), Bytes> = {
            let store = shared.lock();
            match from.parse::<u64>() {
                Ok(rv) if rv > 0 && rv < store.compacted => {
                    let message = format!("too old resource version: {rv} ({})", store.compacted);
                    Err(event_line("ERROR", &status(410, "Expired", &message)))
                }
                Ok(rv) if rv > 0 => Ok((rv, Vec::new())),
                // No version (or "0"): the current objects first, as synthetic ADDED events.
                _ => Ok((
                    store.rv,
                    store.objects[kind]
                        .iter()
                        .filter(|((ns, _), _)| namespace.as_ref().is_none_or(|want| ns == want))
                        .map(|(_, o)| event_line("ADDED", o))
                        .collect(),
                )),
            }
        };
        let (mut last, initial) = match start {
            Ok(s) => s,
            Err(gone) => {
                let _ = tx.send(Ok(Frame::data(gone))).await;
                return;
            }
        };
        for line in initial {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        loop {
            let pending: Vec<(u64, Bytes)> = {
                let store = shared.lock();
                store
                    .log
                    .iter()
                    .filter(|e| e.rv > last && in_scope(e))
                    .map(|e| (e.rv, event_line(e.event_type, &e.object)))
                    .collect()
            };
            for (rv, line) in pending {
                if tx.send(Ok(Frame::data(line))).await.is_err() {
                    return;
                }
                last = rv;
            }
            let sleep_until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = ticker.tick(), if bookmarks => {
                    let (rv, api_version, kind_name) = {
                        let store = shared.lock();
                        let k = &store.kinds[kind];
                        // Only after every event up to it was sent: flush first.
                        let unsent = store.log.iter().any(|e| e.rv > last && in_scope(e));
                        if unsent { continue; }
                        (store.rv, k.api_version(), k.kind.clone())
                    };
                    let bookmark = json!({"kind": kind_name, "apiVersion": api_version,
                        "metadata": {"resourceVersion": rv.to_string()}});
                    if tx.send(Ok(Frame::data(event_line("BOOKMARK", &bookmark)))).await.is_err() {
                        return;
                    }
                    last = last.max(rv);
                }
                _ = sleep_until_deadline => return,
            }
        }
    });
    let mut r = Response::new(stream_body(rx));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
