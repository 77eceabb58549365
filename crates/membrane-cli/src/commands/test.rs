//! `membrane test`: run scenario files, every flow's verdict against its expectation.

use crate::input::read_path;
use crate::printers::{self, json, junit, text};
use membrane_cluster::runner::{ScenarioResult, run_scenario};
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use std::path::PathBuf;

/// `--output` of `test`.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum TestOutput {
    Text,
    Json,
    /// JUnit XML: a testsuite per file, a testcase per flow, failures with the explanation.
    Junit,
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// Scenario files (YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub output: TestOutput,
    /// Print every flow, not only failures.
    #[arg(long, short)]
    pub verbose: bool,
}

/// One scenario file's run, as the printers render it.
pub struct TestFileReport<'a> {
    pub name: &'a str,
    pub text: &'a str,
    pub world: &'a World,
    pub result: &'a ScenarioResult,
    /// The file names the decisions refer to: this file only.
    pub files: &'a Vec<String>,
    pub passed: usize,
    /// Failed flows, skipped ones included.
    pub failed: usize,
    pub skipped: usize,
}

pub fn run(args: TestArgs) -> u8 {
    let TestArgs {
        files: paths,
        output,
        verbose,
    } = args;
    let (mut passed, mut failed, mut skipped) = (0usize, 0usize, 0usize);
    let mut had_error = false;
    let mut json_files = Vec::new();
    let mut junit_suites = Vec::new();
    let mut out = std::io::stdout().lock();
    for path in &paths {
        let name = path.display().to_string();
        let text = match read_path(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                had_error = true;
                continue;
            }
        };
        let scenario = match parse_scenario(&text) {
            Ok(s) => s,
            Err(diags) => {
                for d in &diags {
                    eprint!("{}", printers::render_diagnostic(&name, &text, d));
                }
                had_error = true;
                continue;
            }
        };
        let files = vec![name.clone()];
        let world = World::from_scenario(scenario, 0);
        let result: ScenarioResult = run_scenario(&world);
        let (p, f) = (result.passed(), result.failed());
        let s = result.results.iter().filter(|r| r.skipped()).count();
        passed += p;
        failed += f - s;
        skipped += s;
        let report = TestFileReport {
            name: &name,
            text: &text,
            world: &world,
            result: &result,
            files: &files,
            passed: p,
            failed: f,
            skipped: s,
        };
        match output {
            TestOutput::Json => json_files.push(json::test_file(&report)),
            TestOutput::Text => text::test_file(&mut out, &report, verbose),
            TestOutput::Junit => junit_suites.push(junit::test_suite(&report)),
        }
        // The process ends after the last file: leave its world (tens of thousands of
        // allocations on a big cluster) to the operating system instead of freeing it.
        if path == paths.last().unwrap_or(path) {
            std::mem::forget(world);
            std::mem::forget(result);
        }
    }
    match output {
        TestOutput::Json => json::test_summary(&mut out, json_files, passed, failed, skipped),
        TestOutput::Text => text::test_summary(&mut out, passed, failed, skipped),
        TestOutput::Junit => {
            use std::io::Write;
            let _ = out.write_all(junit::render(&junit_suites).as_bytes());
        }
    }
    if had_error { 2 } else { u8::from(failed > 0) }
}
