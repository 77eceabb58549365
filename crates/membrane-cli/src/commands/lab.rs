//! `membrane lab`: real enforcement in network namespaces with nftables (root only).
//!
//! `run` builds a lab per scenario file, probes every flow and tears it down; `up`, `probe`,
//! `observe` and `down` do the same steps one at a time on a named lab.

use crate::printers::{Output, json, text};
use membrane_datapath::events::{PcapTail, drop_event, flow_json};
use membrane_datapath::lab::{self, AgentLab, Helper, Lab, LabOptions};
use membrane_datapath::layout::STATE_ROOT;
use membrane_datapath::nft::compile::compile_node;
use membrane_datapath::probe::{FileReport, probe_lab, run_file, summary};
use membrane_datapath::source::load_world;
use membrane_datapath::topology::Topology;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Run scenario files or manifests directories (their `ConnectivityTest` expectations,
    /// as `membrane check`) in labs: up, probe every flow, down. Exit 1 if a flow fails.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print every flow with what the lab saw, and why skipped flows were skipped.
        #[arg(long, short)]
        verbose: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Probes in flight per lab.
        #[arg(long, default_value_t = 8)]
        jobs: usize,
        /// Labs at a time.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        /// Without the L7 proxies (HTTP, DNS, TLS) in the nodes: flows decided at L7 are
        /// skipped, as before the proxies existed.
        #[arg(long, conflicts_with = "agent")]
        no_proxies: bool,
        /// Enforce with a real `membrane agent` in each node namespace, following an
        /// apiserver in the lab that serves the scenario as cluster objects, instead of the
        /// rulesets the lab compiles itself: the same verdicts are expected.
        #[arg(long)]
        agent: bool,
    },
    /// Build a lab from a scenario file or a manifests directory and leave it running.
    Up {
        path: PathBuf,
        /// Lab name (default: from the scenario's name).
        #[arg(long)]
        name: Option<String>,
        /// Without the L7 proxies in the nodes.
        #[arg(long, conflicts_with = "agent")]
        no_proxies: bool,
        /// Enforce with a `membrane agent` per node namespace (see `lab run --agent`).
        #[arg(long)]
        agent: bool,
    },
    /// Probe every flow of a running lab.
    Probe {
        #[arg(long)]
        name: Option<String>,
        #[arg(long, short)]
        verbose: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        #[arg(long, default_value_t = 8)]
        jobs: usize,
    },
    /// Follow a running lab's policy drops as JSON flow events (one per line, Hubble-like).
    Observe {
        #[arg(long)]
        name: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Tear a lab down: its processes, namespaces and nft tables.
    Down {
        #[arg(long)]
        name: Option<String>,
        /// Every lab on this machine.
        #[arg(long)]
        all: bool,
    },
    /// List the labs on this machine.
    List,
    /// Print the nftables ruleset compiled for each node of a scenario (no root needed).
    Compile {
        path: PathBuf,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Internal: the lab's helper processes (agents, reaper, connrate).
    #[command(hide = true)]
    Helper {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    PathBuf::from(STATE_ROOT)
}

/// Who enforces in a lab: its own rulesets (with or without the proxies), or a `membrane
/// agent` per node.
struct Enforcement {
    proxies: bool,
    agents: Option<AgentLab>,
}

impl Enforcement {
    fn new(proxies: bool, agent: bool) -> Result<Enforcement, String> {
        let agents = if agent {
            Some(AgentLab {
                program: std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?,
                source: PathBuf::new(),
                cluster: crate::commands::lab_cluster::world_cluster,
            })
        } else {
            None
        };
        Ok(Enforcement { proxies, agents })
    }

    /// The options' enforcement part for a lab of `path`.
    fn for_source(&self, path: &Path) -> (Option<PathBuf>, Option<AgentLab>) {
        match &self.agents {
            Some(a) => (
                None,
                Some(AgentLab {
                    source: path.to_path_buf(),
                    ..a.clone()
                }),
            ),
            None => (self.proxies.then(|| path.to_path_buf()), None),
        }
    }
}

fn helper() -> Result<Helper, String> {
    let program = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    Ok(Helper {
        program,
        args: vec!["lab".into(), "helper".into()],
    })
}

fn is_root() -> bool {
    // The effective uid of this process, without libc: /proc/self/status `Uid:` line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn need_root() -> Result<(), String> {
    if is_root() {
        Ok(())
    } else {
        Err("the lab needs root (network namespaces, nftables)".into())
    }
}

/// The programs the labs of these files run are installed (checked before root: a missing
/// tool is the first thing to fix either way). Files that cannot be read are left to the
/// run, which reports them.
fn prerequisites(files: &[PathBuf]) -> Result<(), String> {
    let worlds: Vec<membrane_cluster::world::World> =
        files.iter().filter_map(|f| load_world(f).ok()).collect();
    lab::check_prerequisites(&worlds).map_err(|e| e.to_string())
}

/// The lab a command is about: the given name, or the only lab there is.
fn pick(name: Option<String>) -> Result<String, String> {
    if let Some(n) = name {
        return Ok(n);
    }
    let labs: Vec<String> = lab::list_labs(&root()).into_iter().collect();
    match labs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("no lab is running (`membrane lab up FILE`)".into()),
        many => Err(format!(
            "several labs are running, pick one with --name: {}",
            many.join(", ")
        )),
    }
}

pub fn run(cmd: LabCommand) -> u8 {
    let r = match cmd {
        LabCommand::Helper { args } if args.first().is_some_and(|a| a == "apiserver") => {
            return crate::commands::lab_cluster::apiserver_main(&args[1..]);
        }
        LabCommand::Helper { args } => {
            return u8::try_from(membrane_datapath::helper::helper_main(&args)).unwrap_or(1);
        }
        LabCommand::Compile { path, node } => compile(&path, node.as_deref()),
        LabCommand::Run {
            files,
            verbose,
            output,
            jobs,
            parallel,
            no_proxies,
            agent,
        } => prerequisites(&files)
            .and_then(|()| need_root())
            .and_then(|()| {
                let how = Enforcement::new(!no_proxies, agent)?;
                run_files(&files, verbose, output, jobs, parallel, &how)
            }),
        LabCommand::Up {
            path,
            name,
            no_proxies,
            agent,
        } => prerequisites(std::slice::from_ref(&path))
            .and_then(|()| need_root())
            .and_then(|()| up(&path, name, &Enforcement::new(!no_proxies, agent)?)),
        LabCommand::Probe {
            name,
            verbose,
            output,
            jobs,
        } => need_root().and_then(|()| probe(name, verbose, output, jobs)),
        LabCommand::Observe {
            name,
            count,
            seconds,
        } => need_root().and_then(|()| observe(name, count, seconds)),
        LabCommand::Down { name, all } => need_root().and_then(|()| down(name, all)),
        LabCommand::List => {
            for l in lab::list_labs(&root()) {
                println!("{l}");
            }
            Ok(0)
        }
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

fn compile(path: &Path, node: Option<&str>) -> Result<u8, String> {
    let world = load_world(path).map_err(|e| e.to_string())?;
    let topo = Topology::plan(&world);
    for input in topo.node_inputs(&world) {
        if node.is_some_and(|n| n != input.node) {
            continue;
        }
        print!("{}", compile_node(&input).render());
    }
    Ok(0)
}

fn print_reports(reports: &[FileReport], output: Output) -> u8 {
    let (passed, failed, skipped) = summary(reports);
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => json::lab_summary(&mut out, reports, passed, failed, skipped),
        Output::Text => text::test_summary(&mut out, passed, failed, skipped),
    }
    // As `membrane test`: 2 when a file could not be read or parsed, 1 when a flow failed.
    if reports
        .iter()
        .any(|r| r.error.is_some() && r.plans.is_empty())
    {
        2
    } else {
        u8::from(failed > 0)
    }
}

fn run_files(
    files: &[PathBuf],
    verbose: bool,
    output: Output,
    jobs: usize,
    parallel: usize,
    how: &Enforcement,
) -> Result<u8, String> {
    let helper = helper()?;
    let start = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<FileReport>>> =
        files.iter().map(|_| Default::default()).collect();
    let print_lock = std::sync::Mutex::new(());
    std::thread::scope(|s| {
        for _ in 0..parallel.clamp(1, 8) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(path) = files.get(i) else { break };
                    let (proxies, agents) = how.for_source(path);
                    let opts = LabOptions {
                        name: format!("run{}-{i}", std::process::id()),
                        root: root(),
                        helper: helper.clone(),
                        reaper: true,
                        proxies,
                        agents,
                    };
                    let report = run_file(path, &opts, jobs);
                    if output == Output::Text {
                        let _g = print_lock.lock();
                        print!("{}", report.text(verbose));
                        let _ = std::io::stdout().flush();
                    }
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                }
            });
        }
    });
    let reports: Vec<FileReport> = slots
        .into_iter()
        .filter_map(|s| s.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    if output == Output::Text && files.len() > 1 {
        eprintln!(
            "{} files in {:.1} s",
            files.len(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(print_reports(&reports, output))
}

fn up(path: &Path, name: Option<String>, how: &Enforcement) -> Result<u8, String> {
    let world = load_world(path).map_err(|e| e.to_string())?;
    let name = name.unwrap_or_else(|| lab::name_from(&world.scenario.name));
    let opts = LabOptions {
        name: name.clone(),
        root: root(),
        helper: helper()?,
        reaper: true,
        proxies: how.for_source(path).0,
        agents: how.for_source(path).1,
    };
    let start = Instant::now();
    let mut lab = Lab::up(&world, &opts).map_err(|e| e.to_string())?;
    // A scenario file, or a manifests directory as one stream (`load_world` reads both).
    let text = membrane_datapath::source::source_text(path).map_err(|e| e.to_string())?;
    std::fs::write(lab.dir.join("scenario.yaml"), text).map_err(|e| e.to_string())?;
    lab.keep().map_err(|e| e.to_string())?;
    println!(
        "lab {name} is up in {:.1} s: {} nodes, {} pods, {} world addresses; state in {}",
        start.elapsed().as_secs_f64(),
        lab.topo.nodes.len(),
        lab.topo.pods.len(),
        lab.topo.world_addrs.len(),
        lab.dir.display()
    );
    for ns in lab.topo.namespaces() {
        println!("  {:<28} {}", lab.netns(ns), lab.topo.describe(ns));
    }
    println!(
        "next: membrane lab probe --name {name}; membrane lab observe --name {name}; membrane lab down --name {name}"
    );
    Ok(0)
}

fn attach(name: Option<String>) -> Result<(membrane_cluster::world::World, Lab), String> {
    let name = pick(name)?;
    let dir = root().join(&name);
    let world = load_world(&dir.join("scenario.yaml")).map_err(|e| e.to_string())?;
    let lab = Lab::attach(&world, &root(), &name).map_err(|e| e.to_string())?;
    Ok((world, lab))
}

fn probe(name: Option<String>, verbose: bool, output: Output, jobs: usize) -> Result<u8, String> {
    let (world, lab) = attach(name)?;
    let start = Instant::now();
    let collector = lab.drop_collector(true);
    let (plans, outcomes) = probe_lab(&world, &lab, &collector, jobs);
    let report = FileReport {
        file: format!("lab {}", lab.name),
        scenario: world.scenario.name.clone(),
        plans,
        outcomes,
        error: None,
        elapsed: start.elapsed(),
    };
    if output == Output::Text {
        print!("{}", report.text(verbose));
    }
    Ok(print_reports(&[report], output))
}

fn observe(name: Option<String>, count: Option<usize>, seconds: Option<u64>) -> Result<u8, String> {
    let (world, lab) = attach(name)?;
    // `attach` loads the lab's scenario file: file 0 of the origins.
    let files = vec![
        root()
            .join(&lab.name)
            .join("scenario.yaml")
            .display()
            .to_string(),
    ];
    let mut tails: Vec<(usize, PcapTail)> = (0..lab.topo.nodes.len())
        .map(|i| (i, PcapTail::new(lab.pcap(i), true)))
        .collect();
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = 0usize;
    let mut out = std::io::stdout().lock();
    // The proxies' L7 denials, already JSON lines: printed as they are appended.
    let mut l7_read: Vec<usize> = (0..lab.topo.nodes.len())
        .map(|i| std::fs::metadata(lab.l7_events(i)).map_or(0, |m| m.len() as usize))
        .collect();
    loop {
        let mut any = false;
        for (i, done) in l7_read.iter_mut().enumerate() {
            let Ok(text) = std::fs::read_to_string(lab.l7_events(i)) else {
                continue;
            };
            let Some(new) = text.get(*done..) else {
                continue;
            };
            let complete = new.rfind('\n').map_or(0, |p| p + 1);
            for line in new[..complete].lines() {
                any = true;
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(0);
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(0);
                }
            }
            *done += complete;
        }
        for (node, t) in &mut tails {
            for (time, rec) in t.poll() {
                let Some(ev) = drop_event(*node, time, &rec) else {
                    continue;
                };
                any = true;
                let line = serde_json::to_string(&flow_json(&world, &lab.topo, &ev, &files))
                    .unwrap_or_default();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(0); // reader went away
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(0);
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() > d) || !lab.dir.exists() {
            return Ok(0);
        }
        if !any {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn down(name: Option<String>, all: bool) -> Result<u8, String> {
    let names: Vec<String> = if all {
        lab::list_labs(&root()).into_iter().collect()
    } else {
        vec![pick(name)?]
    };
    let mut code = 0;
    for n in names {
        match lab::teardown(&root(), &n) {
            Ok(()) => println!("lab {n} is down"),
            Err(e) => {
                eprintln!("error: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}
