//! Scenario files: parse, build the world (identities, rules, selector cache) and run every
//! flow, as `membrane test` does with a conformance file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_cluster::runner::run_scenario;
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(scenario) = parse_scenario(text) {
        let world = World::from_scenario(scenario, 0);
        let _ = run_scenario(&world);
    }
});
