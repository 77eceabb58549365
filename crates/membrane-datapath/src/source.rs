//! Scenario sources: a scenario file, a file of manifests or a manifests directory, read
//! into a [`World`] (what the lab builds, the proxies load and the probes check).

use membrane_cluster::manifests::{self, SourceFile};
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use std::path::{Path, PathBuf};

/// Why a scenario source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no YAML files", .0.display())]
    NoYaml(PathBuf),
    /// The parser's diagnostics, each `file[:line:col]: message`.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

fn read(path: &Path) -> Result<String, SourceError> {
    std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The YAML files of a directory (recursively, sorted), or the path itself.
pub fn source_files(path: &Path) -> Result<Vec<PathBuf>, SourceError> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut stack = vec![path.to_path_buf()];
    let mut found = Vec::new();
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| SourceError::Read {
            path: dir.clone(),
            source,
        })?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                found.push(p);
            }
        }
    }
    found.sort();
    if found.is_empty() {
        return Err(SourceError::NoYaml(path.to_path_buf()));
    }
    Ok(found)
}

/// One text for a scenario file or a manifests directory (its files as one multi-document
/// stream), which [`load_world`] reads back: what the lab's proxies load.
pub fn source_text(path: &Path) -> Result<String, SourceError> {
    if !path.is_dir() {
        return read(path);
    }
    let mut out = String::new();
    for f in source_files(path)? {
        let text = read(&f)?;
        let body = text.trim_start();
        let body = body.strip_prefix("---").unwrap_or(body);
        out.push_str("---\n");
        out.push_str(body);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

fn load_manifests(sources: Vec<SourceFile>) -> Result<World, SourceError> {
    let loaded = manifests::load(sources);
    let errors: Vec<String> = loaded
        .diagnostics
        .iter()
        .filter(|(_, d)| d.code == "yaml")
        .map(|(f, d)| format!("{}: {}", loaded.file_name(*f), d.message))
        .collect();
    if !errors.is_empty() {
        return Err(SourceError::Invalid(errors));
    }
    Ok(loaded.world)
}

/// Reads a scenario file, a manifests directory (`membrane check`'s input: its
/// `ConnectivityTest` expectations are the flows) or a file of manifests into a world.
pub fn load_world(path: &Path) -> Result<World, SourceError> {
    if path.is_dir() {
        let mut sources = Vec::new();
        for f in source_files(path)? {
            let text = read(&f)?;
            sources.push(SourceFile {
                name: f.display().to_string(),
                text,
            });
        }
        return load_manifests(sources);
    }
    let text = read(path)?;
    let scenario = match parse_scenario(&text) {
        Ok(s) => s,
        Err(diags) => {
            if text
                .lines()
                .any(|l| l.starts_with("apiVersion:") || l.starts_with("kind:"))
            {
                // Manifests (e.g. a directory's files as one stream, see `source_text`).
                return load_manifests(vec![SourceFile {
                    name: path.display().to_string(),
                    text,
                }]);
            }
            let msgs: Vec<String> = diags
                .iter()
                .map(|d| match d.span {
                    Some(s) => format!("{}:{}:{}: {}", path.display(), s.line, s.col, d.message),
                    None => format!("{}: {}", path.display(), d.message),
                })
                .collect();
            return Err(SourceError::Invalid(msgs));
        }
    };
    Ok(World::from_scenario(scenario, 0))
}
