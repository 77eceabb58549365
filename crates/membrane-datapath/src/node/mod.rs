//! What runs for one node (and inside each lab namespace), as helper processes:
//!
//! * [`agent`]: servers and probes inside one namespace, driven over [`crate::wire`].
//! * [`proxy`]: the node's L7 proxies (`membrane lab helper proxy`).
//! * [`gateway`]: a Gateway's HTTP forwarder (`membrane lab helper gateway`).
//!
//! They know the lab only through [`crate::layout`] (ports, marks, names) and the scenario
//! source they are given; starting them is the lab's business ([`crate::lab`]).

pub mod agent;
pub mod gateway;
pub mod proxy;

use crate::source::SourceError;

/// Why a node process could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A required argument is missing.
    #[error("{program} needs {what}")]
    Missing {
        program: &'static str,
        what: &'static str,
    },
    /// An argument that does not parse.
    #[error("bad {what} `{value}`")]
    Bad { what: &'static str, value: String },
    /// An argument that does not parse, with the parser's reason.
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    /// A socket, file or runtime that could not be set up.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl NodeError {
    /// [`NodeError::Io`] with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }

    /// [`NodeError::Invalid`] from a parser's error.
    pub fn invalid<E: std::fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> NodeError {
        let what = what.into();
        move |e| NodeError::Invalid {
            what,
            reason: e.to_string(),
        }
    }
}
