//! `membrane lint`: findings with stable rule ids (see `membrane_cluster::lint` for the
//! table), as text for people, JSON for scripts, or SARIF 2.1.0 for code scanning.
//!
//! Exit codes: 0 when no finding is a warning or worse, 1 when one is, 2 when the input is
//! unusable (no files, unreadable, invalid YAML).

use crate::input::InputArgs;
use crate::printers::{self, github, json, sarif, text};
use membrane_cluster::lint;
use membrane_policy::Severity;
use std::io::Write;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LintOutput {
    Text,
    Json,
    Sarif,
    /// GitHub Actions annotations (`::warning file=F,line=L,col=C::message`).
    Github,
}

#[derive(clap::Args)]
#[command(mut_arg("paths", |a| a.help(
    "Files or directories of manifests: policies, workloads, Services, Gateways (`-` for \
     stdin)"
)))]
pub struct LintArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: LintOutput,
}

pub fn run(args: LintArgs) -> u8 {
    let loaded = match args.input.source().load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if printers::report_yaml_errors(&loaded) {
        eprintln!("error: invalid YAML, nothing was linted");
        return 2;
    }
    let findings = lint::lint(&loaded);
    let rendered = match args.output {
        LintOutput::Text => text::lint(&loaded, &findings),
        LintOutput::Json => printers::pretty_line(&json::lint(&loaded, &findings)),
        LintOutput::Sarif => printers::pretty_line(&sarif::lint(&loaded, &findings)),
        LintOutput::Github => github::lint(&loaded, &findings),
    };
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    let _ = out.write_all(rendered.as_bytes());
    u8::from(findings.iter().any(|f| f.severity >= Severity::Warning))
}
