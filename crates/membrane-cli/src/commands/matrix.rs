//! `membrane matrix`: who can talk to whom, for each port and protocol in play.
//!
//! Formats: a terminal table (one grid per port, fitted to the width, colour on a TTY),
//! JSON (every cell with both sides' explanations), CSV and Markdown (one row per cell),
//! Graphviz DOT (allowed edges) and a self-contained HTML report; each is a module of
//! `crate::printers`.

use crate::input::InputArgs;
use crate::printers::{self, TermStyle, csv, dot, html, json, markdown, text};
use membrane_cluster::manifests::Loaded;
use membrane_cluster::matrix::{Matrix, MatrixOptions, build};
use membrane_policy::model::Protocol;
use std::io::{IsTerminal, Write};

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum MatrixOutput {
    /// One grid per port, sized to the terminal.
    Table,
    /// Endpoints, ports and every cell with both sides' reasons and deciding policies.
    Json,
    /// One row per source, destination and port.
    Csv,
    /// One row per source, destination and port, as a Markdown table.
    Md,
    /// Graphviz: allowed edges only (`dot -Tsvg`).
    Dot,
    /// One self-contained HTML file: matrix, policies, findings.
    Html,
}

#[derive(clap::Args)]
#[command(mut_arg("paths", |a| a.help(
    "Files or directories of manifests (workloads, services, gateways, policies), or one \
     scenario file"
)))]
pub struct MatrixArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value = "table")]
    pub output: MatrixOutput,
    /// Only these ports (`80`, `53/UDP`); repeatable. Default: every port in play.
    #[arg(long = "port", value_name = "PORT[/PROTO]")]
    pub ports: Vec<String>,
}

/// Cells above which a progress bar is worth showing (on a TTY).
const PROGRESS_THRESHOLD: usize = 20_000;

fn parse_port(text: &str) -> Result<(Protocol, u16), String> {
    let (port, proto) = text.split_once('/').unwrap_or((text, "TCP"));
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("--port {text}: expected PORT or PORT/PROTOCOL"))?;
    let proto = match Protocol::parse(proto.trim()) {
        Some(p @ (Protocol::Tcp | Protocol::Udp | Protocol::Sctp)) => p,
        _ => return Err(format!("--port {text}: the protocol is TCP, UDP or SCTP")),
    };
    Ok((proto, port))
}

pub fn run(args: MatrixArgs) -> u8 {
    let mut options = MatrixOptions::default();
    for p in &args.ports {
        match parse_port(p) {
            Ok(p) => options.ports.push(p),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    let loaded = match args.input.source().load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if printers::report_yaml_errors(&loaded) {
        return 2;
    }
    let matrix = build_with_progress(&loaded, &options);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = match args.output {
        MatrixOutput::Table => {
            let style = TermStyle::detect();
            text::matrix(&mut out, &loaded, &matrix, &style)
        }
        MatrixOutput::Json => json::matrix(&mut out, &loaded, &matrix),
        MatrixOutput::Csv => csv::matrix(&mut out, &loaded, &matrix),
        MatrixOutput::Md => markdown::matrix(&mut out, &loaded, &matrix),
        MatrixOutput::Dot => dot::matrix(&mut out, &matrix),
        MatrixOutput::Html => out.write_all(html::matrix(&loaded, &matrix).as_bytes()),
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => 0,
        // A closed pipe (`| head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("error: cannot write the output: {e}");
            2
        }
    }
}

/// Builds the matrix, with a progress bar on stderr for large inputs when it is a TTY.
fn build_with_progress(loaded: &Loaded, options: &MatrixOptions) -> Matrix {
    let bar = if std::io::stderr().is_terminal() {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "matrix {bar:40} {pos}/{len} cells ({per_sec}, {eta})",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let mut shown = false;
    let matrix = build(loaded, options, &mut |done, total| {
        let Some(bar) = &bar else { return };
        if total < PROGRESS_THRESHOLD {
            return;
        }
        if !shown {
            bar.set_length(total as u64);
            shown = true;
        }
        bar.set_position(done as u64);
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    matrix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("80"), Ok((Protocol::Tcp, 80)));
        assert_eq!(parse_port("53/udp"), Ok((Protocol::Udp, 53)));
        assert!(parse_port("x").is_err());
        assert!(parse_port("1/ICMP").is_err());
    }
}
