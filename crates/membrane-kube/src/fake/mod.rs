//! An in-process Kubernetes apiserver that speaks the real wire protocol, for tests and the
//! lab: discovery documents, `…List` answers whose items carry no apiVersion/kind (as the real
//! server sends them), `limit`/`continue` pagination, `watch=true` chunked event streams with
//! BOOKMARKs, `410 Gone` for a compacted resourceVersion, and `metav1.Status` errors.
//!
//! Objects are held as JSON; every write gets the next resourceVersion and is logged, so a
//! watch from any version after the compaction point replays exactly what happened since.
//! Faults (a status code, a delay, a truncated answer) can be injected per path.

mod fixtures;
mod server;
mod store;

pub use fixtures::{cluster_objects, synthetic, yaml_to_json};
pub use server::FakeApiServer;
pub use store::{Fault, ServedKind, default_served_kinds};
