//! Where the commands' manifests come from: ONE loader for files, directories and `-`
//! (standard input).
//!
//! Every command that reads manifests (`validate`, `check`, `explain`, `lint`, `matrix`)
//! flattens [`InputArgs`] into its arguments and reads through [`InputSource`]; a new
//! source (another variant, its flags in `InputArgs`) is added here once for all of them.
//! The scenario-file commands (`test`, `bench`) read one file at a time with [`read_path`].
//!
//! A live cluster (`--kubeconfig`, `--context` or `--cluster`) is read as the manifests
//! `membrane snapshot` would write, one text per kind, so an analysis of the cluster and of
//! its snapshot are the same computation; files given beside it are added to it.

use membrane_cluster::manifests::{Loaded, SourceFile, load};
use membrane_kube::{ClusterOptions, ClusterRead};
use std::io::Read;
use std::path::{Path, PathBuf};

// The sources of manifests, as given on the command line. Each command sets the help of
// `paths` (`mut_arg`), so that the text of its `--help` says what it reads.
#[derive(clap::Args, Clone, Debug)]
pub struct InputArgs {
    #[arg(required_unless_present_any = ["kubeconfig", "context", "cluster"])]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Where a live cluster is, as kubectl finds it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// Read a live cluster through this kubeconfig (files given too are added to the
    /// cluster's objects: a ConnectivityTest, or policies to try before applying them).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context of the cluster to read (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Read the cluster of the current context of `$KUBECONFIG` or `~/.kube/config`.
    #[arg(long)]
    pub cluster: bool,
    /// Read namespaced objects of this namespace only (cluster-wide ones are always read).
    #[arg(short = 'n', long = "namespace", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Seconds to wait for the cluster's answers.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub request_timeout: u64,
}

impl ClusterArgs {
    /// The cluster to read, if any flag asks for one.
    pub fn options(&self) -> Option<ClusterOptions> {
        (self.kubeconfig.is_some() || self.context.is_some() || self.cluster).then(|| {
            ClusterOptions {
                kubeconfig: self.kubeconfig.clone(),
                context: self.context.clone(),
                namespace: self.namespace.clone(),
                timeout: std::time::Duration::from_secs(self.request_timeout.max(1)),
            }
        })
    }
}

impl InputArgs {
    pub fn source(&self) -> InputSource {
        match self.cluster.options() {
            Some(options) => InputSource::Cluster {
                options,
                paths: self.paths.clone(),
            },
            None => InputSource::Paths(self.paths.clone()),
        }
    }
}

/// Where manifests are read from.
#[derive(Clone, Debug)]
pub enum InputSource {
    /// Files, directories (recursively: `.yaml`, `.yml` and `.json`, sorted) and `-` for
    /// standard input.
    Paths(Vec<PathBuf>),
    /// A live cluster, plus files added to it.
    Cluster {
        options: ClusterOptions,
        paths: Vec<PathBuf>,
    },
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
            InputSource::Cluster { options, paths } => {
                let mut files = cluster_files(&read_cluster(options)?);
                files.extend(read_files(&collect_files(paths)?, wording)?);
                Ok(files)
            }
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
            InputSource::Cluster { .. } => {
                let loaded = load(self.sources(StdinWording::Bare)?);
                if loaded.pods_not_running > 0 {
                    eprintln!(
                        "note: {} pod(s) not running or without an address yet: not endpoints",
                        loaded.pods_not_running
                    );
                }
                Ok(loaded)
            }
        }
    }
}

/// Reads the cluster with a progress line on a terminal; notes and unreadable objects go to
/// standard error, and the rest is analysed. `Err` is one line: the cluster could not be read.
pub fn read_cluster(options: &ClusterOptions) -> Result<ClusterRead, String> {
    let bar = indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} reading the cluster: {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let read = membrane_kube::read_cluster_blocking(options, &mut |p| {
        bar.set_message(format!(
            "{} {} ({} objects in all)",
            p.listed, p.kind, p.total
        ));
        bar.tick();
    });
    bar.finish_and_clear();
    let read = read.map_err(|e| e.to_string())?;
    for note in &read.notes {
        eprintln!("note: {note}");
    }
    for e in &read.object_errors {
        eprintln!("warning: cannot read {e}: skipped, the rest is analysed");
    }
    Ok(read)
}

/// The files given beside a cluster (files, directories, `-`), read once.
pub fn local_files(paths: &[PathBuf]) -> Result<Vec<SourceFile>, String> {
    read_files(&collect_files(paths)?, StdinWording::Bare)
}

/// The cluster's objects as source texts named `cluster:<context>/<file>`.
pub fn cluster_files(read: &ClusterRead) -> Vec<SourceFile> {
    read.files()
        .into_iter()
        .map(|(file, text)| SourceFile {
            name: format!("cluster:{}/{file}", read.context),
            text,
        })
        .collect()
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
