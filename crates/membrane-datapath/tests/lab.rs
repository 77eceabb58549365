//! The lab, for real (root): scenarios built as namespaces with the compiled nftables
//! rulesets, every L3/L4 flow probed and compared with its expectation and the engine, and
//! nothing left behind afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_datapath::lab::{self, Lab};
use membrane_datapath::probe::{FileReport, run_file, summary};
use membrane_datapath::source::load_world;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{conformance, is_l7_reason, options, root_or_skip};

fn check(report: &FileReport) {
    assert!(
        report.failed() == 0 && report.error.is_none(),
        "{}",
        report.text(false)
    );
    for (p, o) in report.plans.iter().zip(&report.outcomes) {
        if let Some(why) = &o.skipped {
            assert!(
                is_l7_reason(why),
                "{}: line {} skipped: {why}",
                report.file,
                p.line
            );
        }
    }
}

fn leftovers(name: &str) -> (Vec<String>, usize) {
    let ns = lab::lab_namespaces(name);
    let procs = Command::new("pgrep")
        .args(["-f", &format!("membrane-lab/{name}/")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    (ns, procs)
}

/// A handful of scenarios covering each kind of party and rule: ICMP, deny rules over
/// ranges, host firewall (hostNetwork pods in the node namespace), the world and CIDR
/// rules, named ports, DNS through kube-dns, SCTP-aware policies.
#[test]
fn lab_passes_every_l3_l4_flow_of_a_handful_of_scenarios() {
    if !root_or_skip("lab_passes_every_l3_l4_flow_of_a_handful_of_scenarios") {
        return;
    }
    let files = [
        "client-ingress-from-other-client-icmp-deny.yaml",
        "client-egress-to-echo-deny-port-range.yaml",
        "host-firewall-ingress.yaml",
        "echo-ingress-from-outside.yaml",
        "client-egress-to-cidr-deny.yaml",
        "k8s-ingress-named-port.yaml",
        "dns-only.yaml",
        "k8s-sctp-is-not-tcp.yaml",
    ];
    for (i, f) in files.iter().enumerate() {
        let opts = options(&format!("few{i}"));
        let report = run_file(&conformance(f), &opts, 8);
        check(&report);
        assert!(report.passed() > 0, "{f}: nothing ran");
        let (ns, procs) = leftovers(&opts.name);
        assert!(
            ns.is_empty() && procs == 0,
            "{f}: left {ns:?} and {procs} processes"
        );
    }
}

/// Every flow of every conformance file, several labs at a time, with the L7 proxies: none
/// is skipped (the suite is IPv4).
#[test]
fn lab_passes_every_flow_of_the_conformance_suite() {
    if !root_or_skip("lab_passes_every_flow_of_the_conformance_suite") {
        return;
    }
    let dir = conformance("");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(f) = files.get(i) else { break };
                    let mut opts = options(&format!("all{i}"));
                    opts.proxies = Some(f.clone());
                    let r = run_file(f, &opts, 8);
                    reports.lock().unwrap().push(r);
                }
            });
        }
    });
    let reports = reports.into_inner().unwrap();
    let (passed, failed, skipped) = summary(&reports);
    eprintln!(
        "conformance suite in the lab: {passed} passed, {failed} failed, {skipped} skipped, {} files in {:.1} s",
        reports.len(),
        start.elapsed().as_secs_f64()
    );
    for r in &reports {
        check(r);
    }
    assert_eq!(reports.len(), files.len());
    assert_eq!(skipped, 0, "flows skipped with the proxies running");
    assert!(passed >= 922, "only {passed} flows ran");
}

/// The reaper tears a lab down once its owner is gone, unless the lab was handed over.
#[test]
fn reaper_tears_down_an_abandoned_lab() {
    if !root_or_skip("reaper_tears_down_an_abandoned_lab") {
        return;
    }
    let mut opts = options("reap");
    opts.reaper = false;
    let world = load_world(&conformance("client-ingress.yaml")).unwrap();
    let mut lab = Lab::up(&world, &opts).unwrap();
    lab.keep().unwrap();
    drop(lab); // kept: still running
    assert!(!lab::lab_namespaces(&opts.name).is_empty());
    let mut reaper = Command::new(&opts.helper.program)
        .args(["reaper", "--root"])
        .arg(&opts.root)
        .args(["--lab", &opts.name])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Handed over: closing the reaper's input leaves the lab alone.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(opts.root.join(&opts.name).join("kept")).unwrap();
    // Now abandoned: the owner "dies" (its end of the pipe closes).
    drop(reaper.stdin.take());
    let status = reaper.wait().unwrap();
    assert!(status.success());
    let (ns, procs) = leftovers(&opts.name);
    assert!(
        ns.is_empty() && procs == 0,
        "left {ns:?} and {procs} processes"
    );
    assert!(!opts.root.join(&opts.name).exists());
}

/// Every compiled ruleset of the conformance and semantics worlds loads into the kernel,
/// and chained in-place updates between them all apply.
#[test]
fn kernel_accepts_every_ruleset_and_update() {
    if !root_or_skip("kernel_accepts_every_ruleset_and_update") {
        return;
    }
    use membrane_datapath::nft::compile::compile_node;
    use membrane_datapath::topology::Topology;
    let ns = format!("mb.t{}-nft.x", std::process::id());
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let _guard = Del(ns.clone());
    let nft = |text: &str| {
        membrane_datapath::exec::run(
            Command::new("ip").args(["netns", "exec", &ns, "nft", "-f", "-"]),
            Some(text),
        )
    };
    let mut paths: Vec<PathBuf> = Vec::new();
    for dir in ["../../tests/conformance", "../../tests/semantics"] {
        let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        paths.extend(
            v.into_iter()
                .filter(|p| p.extension().is_some_and(|x| x == "yaml")),
        );
    }
    let mut prev = None;
    let mut updates = 0;
    for p in &paths {
        let world = load_world(p).unwrap();
        let topo = Topology::plan(&world);
        for input in topo.node_inputs(&world).iter().take(1) {
            let rs = compile_node(input);
            match &prev {
                None => {
                    nft(&rs.render()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                }
                Some(old) => {
                    nft(&rs.update_from(old))
                        .unwrap_or_else(|e| panic!("update to {}: {e}", p.display()));
                    updates += 1;
                }
            }
            prev = Some(rs);
        }
    }
    assert!(updates > 100);
}

/// With proxies (experimental, `LabOptions::proxies`): the tproxy rulesets load in the
/// kernel, the HTTP/DNS/TLS proxies start in every node namespace, a new policy is applied
/// to both, and teardown leaves nothing behind. (Probing through them is not wired yet.)
#[test]
fn lab_with_proxies_loads_starts_and_tears_down() {
    if !root_or_skip("lab_with_proxies_loads_starts_and_tears_down") {
        return;
    }
    let file = conformance("echo-ingress-l7.yaml");
    let mut opts = options("proxies");
    opts.proxies = Some(file.clone());
    let world = load_world(&file).unwrap();
    let mut lab = Lab::up(&world, &opts).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in lab.topo.nodes.clone() {
        let log = lab.dir.join(format!("proxy-{}.log", node.key));
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("serving")
        {
            assert!(
                Instant::now() < deadline,
                "proxy of {} did not start",
                node.key
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Probe the scenario: its http-403 flows must show up as L7 flow events naming the policy.
    let collector = lab.drop_collector(false);
    let (_, outcomes) = membrane_datapath::probe::probe_lab(&world, &lab, &collector, 4);
    assert!(!outcomes.is_empty());
    drop(collector);
    let events: String = (0..lab.topo.nodes.len())
        .map(|i| std::fs::read_to_string(lab.l7_events(i)).unwrap_or_default())
        .collect();
    let http_403 = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["l7"]["http"]["code"] == 403)
        .unwrap_or_else(|| panic!("no HTTP 403 flow event in:\n{events}"));
    assert_eq!(http_403["Type"], "L7");
    assert!(
        http_403["policies"]
            .to_string()
            .contains("echo-ingress-l7-http"),
        "{http_403}"
    );
    lab.apply_source(&std::fs::read_to_string(&file).unwrap())
        .unwrap();
    lab.down().unwrap();
    let (ns, procs) = leftovers(&opts.name);
    assert!(
        ns.is_empty() && procs == 0,
        "left {ns:?} and {procs} processes"
    );
}

/// Flows that stay inside one namespace (a hostNetwork pod and its own node, an outside
/// node's hostNetwork pod and an external address) are probed over loopback instead of
/// skipped, with and without proxies; under a host firewall the host still reaches itself,
/// as in Cilium (and the engine says so), while the controls that cross the datapath are
/// policed.
#[test]
fn flows_inside_one_namespace_are_probed_over_loopback() {
    if !root_or_skip("flows_inside_one_namespace_are_probed_over_loopback") {
        return;
    }
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/hostnetwork-local.yaml");
    for proxies in [false, true] {
        let mut opts = options(if proxies { "lo-px" } else { "lo" });
        opts.proxies = proxies.then(|| path.clone());
        let r = run_file(&path, &opts, 4);
        assert!(
            r.error.is_none() && (r.passed(), r.failed(), r.skipped()) == (8, 0, 0),
            "{}",
            r.text(true)
        );
        let loopback: Vec<u32> = r
            .plans
            .iter()
            .filter(|p| p.loopback)
            .map(|p| p.line)
            .collect();
        assert_eq!(loopback.len(), 5, "{loopback:?}");
        for (p, o) in r.plans.iter().zip(&r.outcomes) {
            // Every flow really ran and agrees with the engine.
            assert_eq!(o.lab, p.engine, "line {}: {o:?}", p.line);
            if p.loopback {
                assert!(o.drop.is_none(), "line {}: {o:?}", p.line);
            }
        }
        assert!(lab::lab_namespaces(&opts.name).is_empty());
    }
}
