//! Every scenario of the conformance suite (`tests/conformance/`) and of the semantics spec's
//! vectors (`tests/semantics/`) as its own test, run through the engine in process: a failure
//! names its file and every flow that differs. (The generated list comes from `build.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::runner::{describe_flow, run_scenario};
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;

fn run_file(path: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let scenario = parse_scenario(&text).unwrap_or_else(|d| panic!("{path}: {d:?}"));
    let world = World::from_scenario(scenario, 0);
    let result = run_scenario(&world);
    assert!(!result.results.is_empty(), "{path}: no flows");
    let failures: Vec<String> = result
        .results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| {
            format!(
                "  line {}: {}: expected {}, got {}{}",
                r.flow.span.line,
                describe_flow(&r.flow),
                r.flow.expect,
                r.actual.map_or("nothing".to_string(), |v| v.to_string()),
                r.problem
                    .as_ref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{path}: {} of {} flows differ:\n{}",
        failures.len(),
        result.results.len(),
        failures.join("\n")
    );
}

include!(concat!(env!("OUT_DIR"), "/scenario_files.rs"));
