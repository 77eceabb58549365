//! `membrane snapshot`: a live cluster written as a manifests directory (one file per kind,
//! stable order, status and managedFields dropped) that `membrane check DIR` analyses offline
//! with the same verdicts. Secrets are never read.

use crate::input::{ClusterArgs, read_cluster};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The directory to write (created if missing; files of an earlier snapshot are replaced).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
}

pub fn run(args: SnapshotArgs) -> u8 {
    let mut cluster = args.cluster;
    // The command is about a cluster: the current context unless told otherwise.
    cluster.cluster = true;
    let Some(options) = cluster.options() else {
        return 2;
    };
    let read = match read_cluster(&options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    match write(&args.output, &read) {
        Ok(objects) => {
            eprintln!(
                "wrote {objects} objects of {} kinds from context `{}` to {}",
                read.kinds.len(),
                read.context,
                args.output.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {}: {e}", args.output.display());
            2
        }
    }
}

/// Each file is written beside its place and renamed over it, so a reader (an agent
/// following the directory) never sees a half-written or missing file; a kind the cluster no
/// longer serves is removed after the others are in place.
fn write(dir: &std::path::Path, read: &membrane_kube::ClusterRead) -> std::io::Result<usize> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let files = read.files();
    for (file, text) in &files {
        let tmp = dir.join(format!(".{file}.tmp"));
        // Only the user may read a snapshot: it describes the cluster.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(file))?;
    }
    for kind in membrane_kube::catalog::KINDS {
        let stale = dir.join(kind.file);
        if !files.iter().any(|(f, _)| f == kind.file) && stale.exists() {
            std::fs::remove_file(stale)?;
        }
    }
    Ok(read.kinds.iter().map(|k| k.objects.len()).sum())
}
