//! `membrane check`: every expectation of the manifests checked, the ones that do not hold
//! explained.

use crate::input::{self, InputArgs, InputSource};
use crate::printers::{self, github, json, junit, text};
use membrane_cluster::manifests::{Expectation, Loaded, load};
use membrane_cluster::runner::{Evaluation, evaluate_flow};
use membrane_policy::translate::Translated;

/// `--output` of `check`.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum CheckOutput {
    Text,
    Json,
    /// JUnit XML: one testcase per flow, failures with the explanation.
    Junit,
    /// GitHub Actions annotations: an error per expectation that does not hold.
    Github,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: CheckOutput,
    /// Follow the cluster (with --kubeconfig, --context or --cluster): check again after every
    /// change and print the report again whenever an expectation's outcome changes. Runs
    /// until interrupted.
    #[arg(long)]
    pub watch: bool,
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
    if args.watch {
        return watch(&args);
    }
    let loaded = match args.input.source().load() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    check(&loaded, args.output).0
}

/// What an expectation came to, to tell whether a new report says anything new.
type Outcomes = Vec<(String, bool)>;

/// Checks and prints one loaded input: the exit code and each expectation's outcome.
fn check(loaded: &Loaded, output: CheckOutput) -> (u8, Outcomes) {
    match evaluate(loaded) {
        Some(results) => {
            let outcomes = outcomes(&results);
            (print(loaded, results, output), outcomes)
        }
        None => (2, Vec::new()),
    }
}

/// Every expectation's evaluation; None (after printing why) for input that is not YAML.
fn evaluate(loaded: &Loaded) -> Option<Vec<(&Expectation, Result<Evaluation, String>)>> {
    // Input that is not YAML, and ConnectivityTest entries that cannot be read (a DNS
    // answer that is not an address): nothing sensible can be checked.
    let fatal = |code: &str| code == "yaml" || code == membrane_cluster::manifests::TEST_ERROR;
    if loaded.diagnostics.iter().any(|(_, d)| fatal(d.code)) {
        for (f, d) in loaded.diagnostics.iter().filter(|(_, d)| fatal(d.code)) {
            eprint!(
                "{}",
                printers::render_diagnostic(
                    loaded.file_name(*f),
                    &loaded.files[*f as usize].text,
                    d
                )
            );
        }
        return None;
    }
    Some(
        loaded
            .expectations
            .iter()
            .map(|exp| (exp, evaluate_flow(&loaded.world, &exp.flow)))
            .collect(),
    )
}

fn outcomes(results: &[(&Expectation, Result<Evaluation, String>)]) -> Outcomes {
    results
        .iter()
        .map(|(e, r)| {
            let got = r
                .as_ref()
                .map_or_else(|e| e.clone(), |x| x.verdict.to_string());
            (got, CheckReport::holds(e, r))
        })
        .collect()
}

/// Prints the report; the exit code.
fn print<'a>(
    loaded: &'a Loaded,
    results: Vec<(&'a Expectation, Result<Evaluation, String>)>,
    output: CheckOutput,
) -> u8 {
    let held = results
        .iter()
        .filter(|(e, r)| CheckReport::holds(e, r))
        .count();
    let report = CheckReport {
        loaded,
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
    match output {
        CheckOutput::Json => println!("{}", json::check(&report)),
        CheckOutput::Text => text::check(&mut std::io::stdout().lock(), &report),
        CheckOutput::Junit => print!("{}", junit::check(&report)),
        CheckOutput::Github => print!("{}", github::check(&report)),
    }
    u8::from(report.held != report.total)
}

/// `check --watch`: the cluster through reflectors, checked again after each change.
fn watch(args: &CheckArgs) -> u8 {
    let InputSource::Cluster { options, paths } = args.input.source() else {
        eprintln!("error: --watch follows a cluster: give --kubeconfig, --context or --cluster");
        return 2;
    };
    let local = match input::local_files(&paths) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut last: Option<Outcomes> = None;
    let mut changes = 0u64;
    let result = membrane_kube::follow::follow_blocking(&options, |read| {
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: {e} (retrying)");
                return true;
            }
        };
        let mut files = input::cluster_files(&read);
        files.extend(local.iter().cloned());
        let loaded = load(files);
        // Each change is evaluated once; the report is printed only when an outcome moved.
        let Some(results) = evaluate(&loaded) else {
            return true;
        };
        let outcomes = outcomes(&results);
        if last.as_ref() != Some(&outcomes) {
            if last.is_some() {
                changes += 1;
                if args.output == CheckOutput::Text {
                    println!("\n== the cluster changed ({changes}): checked again ==");
                }
            }
            print(&loaded, results, args.output);
            use std::io::Write;
            let _ = std::io::stdout().flush();
            last = Some(outcomes);
        }
        true
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}
