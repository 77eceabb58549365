//! Running the system's programs (`ip`, `nft`, …) and finding them on `PATH`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A program that could not be run, or that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Spawning it, feeding its input or waiting for it failed.
    #[error("{command}: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// It exited with an error: the first lines of its stderr.
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command, input: Option<&str>) -> Result<String, CommandError> {
    let command = format!("{cmd:?}");
    let io = |source| CommandError::Io {
        command: command.clone(),
        source,
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(io)?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(io)?;
    }
    let out = child.wait_with_output().map_err(io)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let stderr: String = err.lines().take(8).collect::<Vec<_>>().join("\n");
        return Err(CommandError::Failed { command, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip [-n NETNS] -batch -` with these lines (nothing to do for none).
pub fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), CommandError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let mut text = lines.join("\n");
    text.push('\n');
    run(&mut cmd, Some(&text)).map(|_| ())
}

/// Where `program` is on `PATH`, as `Command` would find it.
pub fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
