//! L7 enforcement: HTTP and DNS proxies driven by the engine's resolved policies.
#![forbid(unsafe_code)]
