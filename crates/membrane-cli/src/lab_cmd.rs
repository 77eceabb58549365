//! `membrane lab`.

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Run scenario files in a lab: up, probe every flow, down.
    Run {
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

pub fn run(_cmd: LabCommand) -> u8 {
    eprintln!("error: the lab is not implemented yet");
    2
}
