//! `membrane lint`.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct LintArgs {
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(_args: LintArgs) -> u8 {
    eprintln!("error: lint is not implemented yet");
    2
}
