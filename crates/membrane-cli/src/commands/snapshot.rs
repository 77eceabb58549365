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

fn write(dir: &std::path::Path, read: &membrane_kube::ClusterRead) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    // A kind the cluster no longer serves must not survive from an earlier snapshot.
    for kind in membrane_kube::catalog::KINDS {
        let stale = dir.join(kind.file);
        if stale.exists() {
            std::fs::remove_file(stale)?;
        }
    }
    for (file, text) in read.files() {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(read.kinds.iter().map(|k| k.objects.len()).sum())
}
