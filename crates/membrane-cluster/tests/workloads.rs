//! The 5,000-pod benchmark workload is also a correctness test: its 2,000 expected verdicts
//! were computed by Cilium 1.17's own policy engine (bench/workloads/README.md).
#![allow(clippy::panic)]

use membrane_cluster::runner::run_scenario;
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;

#[test]
fn scale_5k_matches_ciliums_verdicts() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bench/workloads/scale-5k.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let scenario = parse_scenario(&text).unwrap_or_else(|d| panic!("{d:?}"));
    let world = World::from_scenario(scenario, 0);
    let result = run_scenario(&world);
    assert_eq!(result.results.len(), 2000);
    let failed: Vec<String> = result
        .results
        .iter()
        .filter(|r| !r.passed)
        .take(5)
        .map(|r| format!("flow {}: {:?} ({:?})", r.index, r.actual, r.problem))
        .collect();
    assert!(
        failed.is_empty(),
        "flows that differ from Cilium: {failed:#?}"
    );
}
