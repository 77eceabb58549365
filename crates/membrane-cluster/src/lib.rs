//! The world policies apply to: namespaces, nodes, endpoints and external names, loaded
//! from scenario files; identities derived from them; flows evaluated against the engine.
#![forbid(unsafe_code)]

pub mod decision_json;
pub mod hubble;
pub mod lint;
pub mod live;
pub mod manifests;
pub mod matrix;
pub mod replay;
pub mod runner;
pub mod scenario;
pub mod world;
