//! Where the commands' manifests come from: ONE loader for files, directories and `-`
//! (standard input).
//!
//! Every command that reads manifests (`validate`, `check`, `explain`, `lint`, `matrix`)
//! flattens [`InputArgs`] into its arguments and reads through [`InputSource`]; a new
//! source (another variant, its flags in `InputArgs`) is added here once for all of them.
//! The scenario-file commands (`test`, `bench`) read one file at a time with [`read_path`].

use membrane_cluster::manifests::{Loaded, SourceFile, load};
use std::io::Read;
use std::path::{Path, PathBuf};

// The sources of manifests, as given on the command line. Each command sets the help of
// `paths` (`mut_arg`), so that the text of its `--help` says what it reads.
#[derive(clap::Args, Clone, Debug)]
pub struct InputArgs {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

impl InputArgs {
    pub fn source(&self) -> InputSource {
        InputSource::Paths(self.paths.clone())
    }
}

/// Where manifests are read from.
#[derive(Clone, Debug)]
pub enum InputSource {
    /// Files, directories (recursively: `.yaml`, `.yml` and `.json`, sorted) and `-` for
    /// standard input.
    Paths(Vec<PathBuf>),
}

/// How a failed read of standard input is worded. The two wordings predate this module and
/// are kept so that no message changes: `validate`, `test` and `bench` say what failed
/// (`-: cannot read standard input: ...`), the loader of `check`, `explain`, `lint` and
/// `matrix` does not (`-: ...`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StdinWording {
    Explained,
    Bare,
}

impl InputSource {
    /// Every source text (name and contents), in order. `Err` is the message of the first
    /// path that cannot be found or read.
    pub fn sources(&self, wording: StdinWording) -> Result<Vec<SourceFile>, String> {
        match self {
            InputSource::Paths(paths) => read_files(&collect_files(paths)?, wording),
        }
    }

    /// Reads every source and loads the cluster. `Err` means unusable input (nothing found,
    /// or a path that cannot be read).
    pub fn load(&self) -> Result<Loaded, String> {
        match self {
            InputSource::Paths(paths) => {
                let files = collect_files(paths)?;
                if files.is_empty() {
                    return Err("no YAML files found".into());
                }
                Ok(load(read_files(&files, StdinWording::Bare)?))
            }
        }
    }
}

fn read_files(files: &[PathBuf], wording: StdinWording) -> Result<Vec<SourceFile>, String> {
    files
        .iter()
        .map(|f| {
            Ok(SourceFile {
                name: f.display().to_string(),
                text: read(f, wording)?,
            })
        })
        .collect()
}

/// One file's text, or standard input's for `-`.
pub fn read_path(path: &Path) -> Result<String, String> {
    read(path, StdinWording::Explained)
}

fn read(path: &Path, wording: StdinWording) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| match wording {
                StdinWording::Explained => format!("-: cannot read standard input: {e}"),
                StdinWording::Bare => format!("-: {e}"),
            })?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Files under the given paths (directories recursively, YAML and JSON only), sorted.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" || p.is_file() {
            out.push(p.clone());
        } else if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(dir) = stack.pop() {
                let entries = std::fs::read_dir(&dir)
                    .map_err(|e| format!("{}: cannot read directory: {e}", dir.display()))?;
                for e in entries.flatten() {
                    let path = e.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if matches!(
                        path.extension().and_then(|x| x.to_str()),
                        Some("yaml" | "yml" | "json")
                    ) {
                        found.push(path);
                    }
                }
            }
            found.sort();
            out.extend(found);
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}
