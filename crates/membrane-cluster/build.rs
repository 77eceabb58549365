//! Generates one test per scenario file of the repository's conformance and semantics suites
//! (`tests/scenario_files.rs` includes it), so a failure names its file. Outside the
//! repository (no `tests/` beside the workspace) nothing is generated.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = Path::new(&manifest).join("../../tests");
    let mut out = String::new();
    for suite in ["conformance", "semantics"] {
        let dir = root.join(suite);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        for f in files {
            let stem = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ident: String = stem
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "#[test]\nfn {suite}_{ident}() {{\n    run_file({:?});\n}}\n",
                f.display().to_string()
            );
        }
    }
    let target = Path::new(&std::env::var("OUT_DIR").unwrap_or_default()).join("scenario_files.rs");
    if let Err(e) = std::fs::write(&target, out) {
        println!("cargo:warning=cannot write {}: {e}", target.display());
    }
}
