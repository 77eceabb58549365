//! Linux enforcement: nftables compilation (pure) and application, the network-namespace
//! lab, probes and flow events.
//!
//! # Layers
//!
//! Modules are layered; a module uses only modules of lower layers (and its own
//! submodules). `tests::layering` checks every `crate::` path in `src/` against this table.
//!
//! ```text
//!  6  helper                          `membrane lab helper …`: dispatch, the reaper
//!  5  probe                           flows as real traffic, compared with the engine
//!  4  lab                             namespaces, veths, build steps, teardown
//!  3  events          node            NFLOG → flow events | agent, proxies, gateway
//!  2  topology                        where each party lives (pure)
//!  1  nft                             compile (pure), sim (pure), apply (`nft -f`)
//!  0  layout  wire  exec  source      constants and names | agent protocol |
//!                                     running programs | reading scenarios
//! ```
//!
//! * [`layout`]: addresses, ports, marks, table and namespace names shared by every layer.
//! * [`wire`]: the agents' control protocol (requests and replies on a Unix socket).
//! * [`exec`]: running `ip`, `nft` and friends, failing with their stderr.
//! * [`source`]: a scenario file or manifests directory → a world.
//! * [`nft`]: the engine's resolved policy → nftables ruleset text and update transactions
//!   ([`nft::compile`]), an interpreter of that text ([`nft::sim`]), loading it
//!   ([`nft::apply`]).
//! * [`topology`]: where each party of a scenario lives in the lab (pure).
//! * [`events`]: drops from NFLOG as Hubble-like flow events.
//! * [`node`]: the processes of one node or namespace: the agent (servers, probes), the L7
//!   proxies, a Gateway's forwarder.
//! * [`lab`]: namespaces, veths, `nft`, servers and agents; teardown.
//! * [`probe`]: flows as real traffic, compared with the expectation and the engine.
//! * [`helper`]: the helper processes' entry point (`membrane lab helper …`).
//!
//! Each layer fails with its own error type ([`exec::CommandError`], [`wire::WireError`],
//! [`source::SourceError`], [`nft::NftError`], [`node::NodeError`], [`lab::LabError`],
//! [`helper::HelperError`]); higher ones wrap lower ones.
#![forbid(unsafe_code)]

pub mod events;
pub mod exec;
pub mod helper;
pub mod lab;
pub mod layout;
pub mod nft;
pub mod node;
pub mod probe;
pub mod source;
pub mod topology;
pub mod wire;

/// The layer of each top-level module (see the table above).
#[cfg(test)]
const LAYERS: &[(&str, u8)] = &[
    ("layout", 0),
    ("wire", 0),
    ("exec", 0),
    ("source", 0),
    ("nft", 1),
    ("topology", 2),
    ("events", 3),
    ("node", 3),
    ("lab", 4),
    ("probe", 5),
    ("helper", 6),
];

/// Modules that must stay pure: no processes, files or sockets.
#[cfg(test)]
const PURE: &[&str] = &["nft/compile.rs", "nft/sim.rs", "topology.rs", "layout.rs"];

#[cfg(test)]
mod tests {
    use super::{LAYERS, PURE};
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    fn layer(module: &str) -> Option<u8> {
        LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
    }

    /// Every `crate::<module>` a line of code names (not comments: doc links may point
    /// anywhere).
    fn uses(text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let module: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !module.is_empty() {
                    out.push((n + 1, module));
                }
            }
            // `use crate::{a, b}`
            if let Some(i) = code.find("crate::{") {
                let group = &code[i + "crate::{".len()..];
                for m in group.split([',', '}']) {
                    let m: String = m
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !m.is_empty() {
                        out.push((n + 1, m));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn layering() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        assert!(files.len() > 10, "no sources found in {}", src.display());
        let mut problems = Vec::new();
        for f in &files {
            let rel = f.strip_prefix(&src).unwrap_or(f);
            let first = rel
                .components()
                .next()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .unwrap_or_default();
            if first == "lib" || first == "bin" {
                continue;
            }
            let Some(own) = layer(&first) else {
                problems.push(format!(
                    "{}: module `{first}` has no layer in lib.rs",
                    rel.display()
                ));
                continue;
            };
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for (line, used) in uses(&text) {
                if used == first {
                    continue;
                }
                match layer(&used) {
                    Some(l) if l < own => {}
                    Some(l) => problems.push(format!(
                        "{}:{line}: `{first}` (layer {own}) uses `{used}` (layer {l})",
                        rel.display()
                    )),
                    None => problems.push(format!(
                        "{}:{line}: `crate::{used}` is not a layered module",
                        rel.display()
                    )),
                }
            }
            let rel_s = rel.to_string_lossy().replace('\\', "/");
            if PURE.contains(&rel_s.as_str()) {
                for bad in [
                    "std::process",
                    "std::fs",
                    "std::net::Tcp",
                    "UnixStream",
                    "crate::exec",
                    "nft::apply",
                ] {
                    if text
                        .lines()
                        .any(|l| !l.trim_start().starts_with("//") && l.contains(bad))
                    {
                        problems.push(format!("{}: pure module uses `{bad}`", rel.display()));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "layering broken:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_layering_check_sees_violations() {
        let found = uses(
            "use crate::lab::Lab;\n// crate::probe\nlet x = crate::wire::call();\nuse crate::{exec, layout::TABLE};",
        );
        let names: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(names, ["lab", "wire", "exec", "layout"]);
    }
}
