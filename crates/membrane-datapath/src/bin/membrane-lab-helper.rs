//! The lab's helper processes (agents in namespaces, the reaper), for the integration tests.
//! The `membrane` binary runs the same code as `membrane lab helper …`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(membrane_datapath::helper::helper_main(&args));
}
