//! `membrane matrix`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct MatrixArgs {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(_args: MatrixArgs) -> u8 {
    eprintln!("error: matrix is not implemented yet");
    2
}
