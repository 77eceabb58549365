//! `membrane check`: every expectation of the manifests checked, the ones that do not hold
//! explained.

use crate::input::InputArgs;
use crate::printers::{self, Output, json, text};
use membrane_cluster::manifests::{Expectation, Loaded};
use membrane_cluster::runner::{Evaluation, evaluate_flow};
use membrane_policy::translate::Translated;

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// The expectations checked, as the printers render them.
pub struct CheckReport<'a> {
    pub loaded: &'a Loaded,
    pub results: Vec<(&'a Expectation, Result<Evaluation, String>)>,
    pub invalid: Vec<&'a Translated>,
    pub held: usize,
    pub total: usize,
}

impl CheckReport<'_> {
    /// Whether an expectation holds: its flow evaluates to the expected verdict.
    pub fn holds(e: &Expectation, r: &Result<Evaluation, String>) -> bool {
        r.as_ref().is_ok_and(|x| x.verdict == e.flow.expect)
    }
}

pub fn run(args: CheckArgs) -> u8 {
    let loaded = match args.input.source().load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if loaded.diagnostics.iter().any(|(_, d)| d.code == "yaml") {
        for (f, d) in loaded.diagnostics.iter().filter(|(_, d)| d.code == "yaml") {
            eprint!(
                "{}",
                printers::render_diagnostic(
                    loaded.file_name(*f),
                    &loaded.files[*f as usize].text,
                    d
                )
            );
        }
        return 2;
    }
    let results: Vec<_> = loaded
        .expectations
        .iter()
        .map(|exp| (exp, evaluate_flow(&loaded.world, &exp.flow)))
        .collect();
    let held = results
        .iter()
        .filter(|(e, r)| CheckReport::holds(e, r))
        .count();
    let report = CheckReport {
        loaded: &loaded,
        total: results.len(),
        held,
        results,
        invalid: loaded
            .world
            .policy_set
            .policies
            .iter()
            .filter(|p| !p.valid)
            .collect(),
    };
    match args.output {
        Output::Json => println!("{}", json::check(&report)),
        Output::Text => text::check(&mut std::io::stdout().lock(), &report),
    }
    u8::from(report.held != report.total)
}
