//! `membrane bench`: the engine's phases timed in one process (cold), then the incremental
//! operations an agent performs (one policy, one pod), so every figure has a baseline from
//! the same run on the same machine.

use crate::input::read_path;
use crate::printers::{json, text};
use membrane_cluster::runner::run_scenario;
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::{World, endpoint_spec};
use membrane_policy::engine::{Engine, PolicyKey};
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::Embedding;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Scenario files to evaluate repeatedly.
    pub files: Vec<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub iterations: u32,
    /// Repetitions of each incremental operation (the median is reported).
    #[arg(long, default_value_t = 25)]
    pub reps: u32,
    /// Skip measuring the engine's memory per pod (it adds 400,000 pods).
    #[arg(long)]
    pub no_pod_memory: bool,
    /// Print the figures as one JSON object (keys: files, flows, iterations, phases_ms.*,
    /// incremental.*).
    #[arg(long)]
    pub json: bool,
}

/// The figures, as the printers render them (milliseconds are means per run).
pub struct BenchReport {
    pub files: usize,
    pub flows: usize,
    pub iterations: u32,
    pub reps: u32,
    pub yaml_ms: f64,
    pub decode_ms: f64,
    pub repository_ms: f64,
    pub flows_ms: f64,
    pub whole_ms: f64,
    pub incremental: Option<Incremental>,
    pub peak_rss_mb: Option<f64>,
    pub bytes_per_pod: Option<f64>,
}

pub fn run(args: BenchArgs) -> u8 {
    let BenchArgs {
        files: paths,
        iterations,
        reps,
        no_pod_memory,
        json,
    } = args;
    let pod_memory = !no_pod_memory;
    let mut texts = Vec::new();
    for p in &paths {
        match read_path(p) {
            Ok(t) => texts.push(t),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        }
    }
    let iterations = iterations.max(1);
    // Phases timed separately, in the same process and loop, so the figures can be read as
    // ratios on a noisy machine: YAML parsing alone is the baseline.
    let (mut yaml, mut parse, mut build, mut flows_t) = (0f64, 0f64, 0f64, 0f64);
    let mut flows = 0usize;
    let mut total = std::time::Duration::ZERO;
    let mut last_worlds: Vec<World> = Vec::new();
    for round_index in 0..iterations {
        let round = Instant::now();
        for t in &texts {
            let t0 = Instant::now();
            let _ = membrane_policy::yaml::parse_documents(t, Embedding::default());
            yaml += t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            let Ok(s) = parse_scenario(t) else { continue };
            parse += t1.elapsed().as_secs_f64();
            let t2 = Instant::now();
            let world = World::from_scenario(s, 0);
            build += t2.elapsed().as_secs_f64();
            let t3 = Instant::now();
            flows += run_scenario(&world).results.len();
            flows_t += t3.elapsed().as_secs_f64();
            if round_index + 1 == iterations {
                last_worlds.push(world);
            }
        }
        total += round.elapsed();
    }
    let n = f64::from(iterations);
    let ms = |x: f64| x / n * 1000.0;
    let whole = total.as_secs_f64() / n * 1000.0 - ms(yaml);

    // Incremental: on the last file's engine with every endpoint's policy computed (what a
    // node agent holds), the median of `reps` repetitions of each operation.
    let reps = reps.max(1);
    let incremental = last_worlds
        .last_mut()
        .map(|w| Incremental::measure(&mut w.engine, &w.scenario.endpoints, reps));
    let peak_rss_mb = proc_status_kb("VmHWM:").map(|kb| kb as f64 / 1024.0);
    let per_pod = last_worlds
        .last_mut()
        .filter(|_| pod_memory)
        .and_then(|w| bytes_per_pod(&mut w.engine, &w.scenario.endpoints));
    let report = BenchReport {
        files: texts.len(),
        flows: flows / iterations as usize,
        iterations,
        reps,
        yaml_ms: ms(yaml),
        decode_ms: ms(parse),
        repository_ms: ms(build),
        flows_ms: ms(flows_t),
        whole_ms: whole,
        incremental,
        peak_rss_mb,
        bytes_per_pod: per_pod,
    };
    if json {
        println!("{}", json::bench(&report));
    } else {
        text::bench(&report);
    }
    0
}

pub struct Incremental {
    /// Computing the policies the flows did not need (an agent computes every one).
    pub resolve_untouched_ms: f64,
    pub add_policy_ms: f64,
    pub remove_policy_ms: f64,
    pub add_pod_ms: f64,
    /// The new pod's own policy, computed for its node's agent.
    pub new_pod_policy_ms: f64,
    /// Adding a pod while a reader holds the previous snapshot (copy on write).
    pub add_pod_snapshot_held_ms: f64,
    pub remove_pod_ms: f64,
    pub policy_entries: usize,
    pub pod_subjects: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn since_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

impl Incremental {
    fn measure(
        engine: &mut Engine,
        endpoints: &[membrane_cluster::scenario::EndpointSpec],
        reps: u32,
    ) -> Incremental {
        let t = Instant::now();
        engine.resolve_all();
        let resolve_untouched_ms = since_ms(t);
        // The pod the operations are about: the first labelled pod.
        let pod = endpoints
            .iter()
            .find(|e| !e.host_network && e.entity.is_none() && !e.labels.is_empty())
            .cloned();
        let Some(pod) = pod else {
            return Incremental {
                resolve_untouched_ms,
                add_policy_ms: 0.0,
                remove_policy_ms: 0.0,
                add_pod_ms: 0.0,
                new_pod_policy_ms: 0.0,
                add_pod_snapshot_held_ms: 0.0,
                remove_pod_ms: 0.0,
                policy_entries: 0,
                pod_subjects: 0,
            };
        };
        let (key, value) = pod.labels[0].clone();
        let (mut add_p, mut rm_p, mut add_e, mut rm_e) = (vec![], vec![], vec![], vec![]);
        let mut own_e = vec![];
        let mut held_e = vec![];
        let (mut policy_entries, mut pod_subjects) = (0, 0);
        for rep in 0..reps {
            // One CNP selecting one deployment, as Cilium's own figure (+1 CNP) measures:
            // parsed, validated, translated and applied.
            let text = format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: membrane-bench-{rep}, namespace: {ns}}}\nspec:\n  endpointSelector: {{matchLabels: {{'{key}': '{value}'}}}}\n  ingress:\n  - fromEndpoints: [{{}}]\n    toPorts: [{{ports: [{{port: '8443', protocol: TCP}}]}}]\n  egress:\n  - toEndpoints: [{{matchLabels: {{'{key}': '{value}'}}}}]\n    toPorts: [{{ports: [{{port: '8443', protocol: TCP}}]}}]\n",
                ns = pod.namespace
            );
            let t = Instant::now();
            let (resources, _) = parse_resources(&text, Embedding::default());
            let resources: Vec<_> = resources.into_iter().map(|r| (0, r)).collect();
            let set = PolicySet::build(&resources, engine.state().options(), &Secrets::default());
            let Some(translated) = set.policies.into_iter().next() else {
                continue;
            };
            let pkey = PolicyKey::of(&translated.origin);
            let changes = engine.upsert_policy(translated);
            add_p.push(since_ms(t));
            policy_entries = changes.entry_count().0;
            let t = Instant::now();
            engine.remove_policy(&pkey);
            rm_p.push(since_ms(t));

            // One pod with a label set nobody has: a new identity every repetition, whose
            // own policy is computed too (its node's agent enforces it).
            let mut spec = endpoint_spec(&pod);
            spec.name = format!("membrane-bench-{rep}");
            spec.labels.push(("membrane-bench".into(), rep.to_string()));
            spec.ip = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                255,
                (rep >> 8) as u8,
                rep as u8,
            )));
            let t = Instant::now();
            let (id, changes) = engine.add_endpoint(spec);
            add_e.push(since_ms(t));
            let t = Instant::now();
            engine.resolve_endpoint(id);
            own_e.push(since_ms(t));
            pod_subjects = changes.subjects.len();
            let t = Instant::now();
            engine.remove_endpoint(id);
            rm_e.push(since_ms(t));

            // The same pod while a reader (a proxy, the datapath) holds the last snapshot:
            // the first change after it copies what it changes.
            let held = engine.snapshot();
            let mut spec = endpoint_spec(&pod);
            spec.name = format!("membrane-bench-held-{rep}");
            spec.labels
                .push(("membrane-bench-held".into(), rep.to_string()));
            spec.ip = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                10,
                253,
                (rep >> 8) as u8,
                rep as u8,
            )));
            let t = Instant::now();
            let (id, _) = engine.add_endpoint(spec);
            held_e.push(since_ms(t));
            drop(held);
            engine.remove_endpoint(id);
        }
        Incremental {
            resolve_untouched_ms,
            add_policy_ms: median(add_p),
            remove_policy_ms: median(rm_p),
            add_pod_ms: median(add_e),
            new_pod_policy_ms: median(own_e),
            add_pod_snapshot_held_ms: median(held_e),
            remove_pod_ms: median(rm_e),
            policy_entries,
            pod_subjects,
        }
    }
}

/// A line of /proc/self/status in KiB (`VmRSS:`, `VmHWM:`), where there is one.
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What one more pod costs the engine, its labels included: pods sharing an existing pod's
/// labels (so no new identity) are added in batches of 100,000, and the resident memory
/// each batch adds is divided by its size. The first batches mostly reuse memory the
/// allocator kept from parsing, so the last batch's figure is the one reported.
fn bytes_per_pod(
    engine: &mut Engine,
    endpoints: &[membrane_cluster::scenario::EndpointSpec],
) -> Option<f64> {
    const BATCH: u32 = 100_000;
    const BATCHES: u32 = 4;
    let template = endpoints
        .iter()
        .find(|e| !e.host_network && e.entity.is_none())?;
    let mut ids = Vec::new();
    let mut last = None;
    for b in 0..BATCHES {
        let before = proc_status_kb("VmRSS:")?;
        for i in b * BATCH..(b + 1) * BATCH {
            let mut spec = endpoint_spec(template);
            spec.name = format!("{}-m{i}", template.name);
            spec.ip = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                0x0a80_0000u32 + i,
            )));
            ids.push(engine.add_endpoint(spec).0);
        }
        let after = proc_status_kb("VmRSS:")?;
        last = Some(after.saturating_sub(before) as f64 * 1024.0 / f64::from(BATCH));
    }
    for id in ids {
        engine.remove_endpoint(id);
    }
    last
}
