//! A lab: the scenario's nodes, pods and world as network namespaces on this machine, the
//! compiled rulesets loaded with `nft`, servers and probe agents in every namespace,
//! `dnsmasq` as kube-dns and `tcpdump` reading each node's NFLOG group.
//!
//! Everything of lab `NAME` is named `mb.NAME.<key>` (namespaces) or lives under
//! `<root>/NAME/` (state, agent sockets, NFLOG captures, logs), so labs coexist and tests
//! run in parallel. Nothing touches the root namespace: routes, addresses and nft tables
//! are all inside the lab's namespaces, and no packet can leave them (no uplink).
//!
//! Teardown kills every process inside the lab's namespaces (by pid, from
//! `ip netns pids`), then deletes the namespaces, which removes their veths, routes and
//! nft tables with them. It runs from `Drop`, from `membrane lab down`, and from the
//! reaper process when the lab's owner dies without cleaning up.

mod build;
mod netns;
mod plan;

pub use netns::{is_kept, lab_namespaces, list_labs, name_from, teardown, valid_name};
pub use plan::{GatewayPlan, KubeDns, Servers, check_prerequisites, gateways, required_programs};

use crate::events::Collector;
use crate::exec::CommandError;
use crate::layout::{control_path, netns_name};
use crate::nft::{self, NftError, compile::NodeInput, compile::Ruleset, compile::compile_node};
use crate::source::{SourceError, load_world};
use crate::topology::{NsRef, Topology};
use crate::wire::{self, Request, WireError};
use membrane_cluster::world::World;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// Why a lab could not be built, changed or torn down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("lab name `{0}`: use 1-40 characters among a-z, 0-9 and `-`")]
    BadName(String),
    #[error("lab `{0}` already exists (`membrane lab down --name {0}` removes it)")]
    Exists(String),
    #[error("no lab `{0}` (start one with `membrane lab up`)")]
    NoSuchLab(String),
    #[error(
        "the lab needs programs that are not on PATH: {}\ninstall them with: apt-get install -y {}",
        programs.join(", "),
        packages.join(" ")
    )]
    MissingPrograms {
        programs: Vec<&'static str>,
        packages: Vec<&'static str>,
    },
    /// A file or directory of the lab's state.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reaper: {0}")]
    Reaper(#[source] std::io::Error),
    /// A process that could not be started in a namespace.
    #[error("{netns}: {}: {source}", program.display())]
    Spawn {
        netns: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A process of the lab that could not be killed or waited for.
    #[error("{name}: {source}")]
    Process {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a lab process exited early ({status}); see the logs in {}", dir.display())]
    Exited { status: ExitStatus, dir: PathBuf },
    #[error("{0} did not start")]
    NotReady(String),
    /// The world as cluster objects (agent mode): what cannot be expressed.
    #[error("cluster objects: {0}")]
    Cluster(String),
    #[error("dnsmasq (kube-dns) did not answer")]
    KubeDnsNotReady,
    #[error("lab {name}: namespaces left behind: {}{}", left.join(", "), cause.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    LeftBehind {
        name: String,
        left: Vec<String>,
        cause: Option<CommandError>,
    },
    #[error("the new scenario has other pods or nodes: build a new lab")]
    OtherParties,
    #[error("no ruleset loaded")]
    NoRuleset,
    #[error("no node {0} in this lab")]
    NoSuchNode(usize),
    #[error("no process {0} in this lab")]
    NoProcess(String),
    #[error("no proxies started in this lab")]
    NoProxies,
    /// An error the agent in a namespace answered with.
    #[error("agent in {netns}: {error}")]
    Agent { netns: String, error: String },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl LabError {
    /// [`LabError::Io`] on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
        let path = path.to_path_buf();
        move |source| LabError::Io { path, source }
    }
}

/// How to run the helper processes (`agent`, `reaper`): a program and leading arguments.
#[derive(Debug, Clone)]
pub struct Helper {
    pub program: PathBuf,
    pub args: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LabOptions {
    pub name: String,
    pub root: PathBuf,
    pub helper: Helper,
    /// Start a reaper that tears the lab down when this process dies.
    pub reaper: bool,
    /// Run the L7 proxies (experimental): the scenario file their policy is loaded from.
    /// The rulesets then `tproxy` L7 entries to them (`nft::compile::with_proxies`).
    pub proxies: Option<PathBuf>,
    /// Enforce with real `membrane agent` processes, one per node namespace, fed by an
    /// apiserver (the fake) in the world namespace, instead of rulesets the lab compiles.
    pub agents: Option<AgentLab>,
}

/// How a lab runs its nodes' agents (`membrane lab run --agent`).
#[derive(Debug, Clone)]
pub struct AgentLab {
    /// The `membrane` binary: `membrane agent …` in each node namespace.
    pub program: PathBuf,
    /// The scenario file or manifests directory the world was loaded from.
    pub source: PathBuf,
    /// The objects a cluster holds for the world (a JSON array), which the apiserver
    /// serves, and the agents' arguments that set what the world assumes of Cilium's
    /// configuration (cluster name, host firewall, flags).
    pub cluster: fn(&Path, &World) -> Result<AgentCluster, String>,
}

/// A world as a cluster: what the lab's apiserver serves and how its agents are started.
#[derive(Debug, Clone, Default)]
pub struct AgentCluster {
    /// The objects, a JSON array.
    pub objects: String,
    /// Arguments of every node's `membrane agent` (cluster name, agent options).
    pub agent_args: Vec<String>,
}

/// A running lab (or, after [`Lab::attach`], one that another process started).
pub struct Lab {
    pub name: String,
    pub root: PathBuf,
    pub dir: PathBuf,
    pub topo: Topology,
    /// The rulesets loaded in each node namespace, for in-place updates.
    pub rulesets: Vec<Ruleset>,
    children: Vec<Child>,
    /// The log name of each child (`proxy-n0`, `agent-p3`, …), in `children`'s order.
    child_names: Vec<String>,
    /// How each node's proxies were started (program, arguments), to start them again.
    proxy_commands: Vec<(PathBuf, Vec<String>)>,
    reaper: Option<Child>,
    /// Whether the proxies run (their scenario file is `proxy-scenario.yaml` in `dir`, or
    /// they are the agents').
    proxies: bool,
    /// Whether agents enforce (fed through `cluster.json` in `dir`).
    agents: bool,
    /// Leave the lab running when this value is dropped.
    kept: bool,
    torn_down: bool,
}

impl Lab {
    pub fn netns(&self, ns: NsRef) -> String {
        netns_name(&self.name, &self.topo.key(ns))
    }

    pub fn socket(&self, ns: NsRef) -> PathBuf {
        control_path(&self.dir, &self.topo.key(ns))
    }

    pub fn pcap(&self, node: usize) -> PathBuf {
        self.dir.join(format!("{}.pcap", self.topo.nodes[node].key))
    }

    /// Reads every node's drop log (`from_end`: only what is logged from now on).
    pub fn drop_collector(&self, from_end: bool) -> Collector {
        let files = (0..self.topo.nodes.len())
            .map(|i| (i, self.pcap(i)))
            .collect();
        let mut keys = std::collections::BTreeMap::new();
        if self.agents {
            use crate::layout::{AGENT_HOST_KEY, agent_endpoint_key};
            for p in &self.topo.pods {
                keys.insert((p.node, agent_endpoint_key(p.addr)), p.key.clone());
            }
            for i in 0..self.topo.nodes.len() {
                keys.insert((i, AGENT_HOST_KEY.to_string()), format!("h{i}"));
            }
        }
        Collector::start_with_keys(files, from_end, keys)
    }

    /// Builds the lab for a world. On any error the partial lab is torn down.
    pub fn up(world: &World, opts: &LabOptions) -> Result<Lab, LabError> {
        valid_name(&opts.name)?;
        let dir = opts.root.join(&opts.name);
        if dir.exists() || !lab_namespaces(&opts.name).is_empty() {
            return Err(LabError::Exists(opts.name.clone()));
        }
        std::fs::create_dir_all(&dir).map_err(LabError::io(&dir))?;
        let topo = Topology::plan(world);
        let mut lab = Lab {
            name: opts.name.clone(),
            root: opts.root.clone(),
            dir,
            topo,
            rulesets: vec![],
            children: vec![],
            child_names: vec![],
            proxy_commands: vec![],
            reaper: None,
            proxies: opts.proxies.is_some() || opts.agents.is_some(),
            agents: opts.agents.is_some(),
            kept: false,
            torn_down: false,
        };
        if opts.reaper {
            lab.reaper = Some(lab.spawn_reaper(&opts.helper)?);
        }
        // From here on, Drop tears down whatever was built if a step fails.
        lab.build(world, opts)?;
        Ok(lab)
    }

    fn spawn_reaper(&self, helper: &Helper) -> Result<Child, LabError> {
        let log = self.log_file("reaper")?;
        Command::new(&helper.program)
            .args(&helper.args)
            .args(["reaper", "--root"])
            .arg(&self.root)
            .args(["--lab", &self.name])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: Ctrl-C in the terminal does not reach it.
            .process_group(0)
            .spawn()
            .map_err(LabError::Reaper)
    }

    fn log_file(&self, what: &str) -> Result<std::fs::File, LabError> {
        let p = self.dir.join(format!("{what}.log"));
        // Appended: a process started again (`restart_proxies`) keeps its predecessor's log.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(LabError::io(&p))
    }

    fn spawn_in(
        &mut self,
        ns: &str,
        log: &str,
        program: &Path,
        args: &[String],
    ) -> Result<(), LabError> {
        let out = self.log_file(log)?;
        let err = out
            .try_clone()
            .map_err(LabError::io(&self.dir.join(format!("{log}.log"))))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn {
                netns: ns.to_string(),
                program: program.to_path_buf(),
                source,
            })?;
        self.children.push(child);
        self.child_names.push(log.to_string());
        Ok(())
    }

    /// Fails if a lab process exited (it would be a setup error: a port in use, …).
    fn check_children(&mut self) -> Result<(), LabError> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(LabError::Exited {
                    status,
                    dir: self.dir.clone(),
                });
            }
        }
        Ok(())
    }

    /// Replaces the policy in place: one `nft -f` transaction per node that flushes and
    /// refills only what changed (never deleting the table). The world must have the same
    /// parties as the one the lab was built for. The proxies (if they run) only see a new
    /// policy through [`Lab::apply_source`], which loads the scenario text for them too.
    pub fn apply(&mut self, world: &World) -> Result<(), LabError> {
        let topo = Topology::plan(world);
        let same = topo.pods.iter().map(|p| (p.addr, &p.key)).eq(self
            .topo
            .pods
            .iter()
            .map(|p| (p.addr, &p.key)))
            && topo.nodes.len() == self.topo.nodes.len();
        if !same {
            return Err(LabError::OtherParties);
        }
        let inputs = topo.node_inputs(world);
        for (i, input) in inputs.iter().enumerate() {
            let next = self.compile(input);
            let Some(prev) = self.rulesets.get(i) else {
                return Err(LabError::NoRuleset);
            };
            nft::apply::update(&self.netns(NsRef::Node(i)), prev, &next)?;
            self.rulesets[i] = next;
        }
        Ok(())
    }

    /// Whether `membrane agent` processes enforce in this lab.
    pub fn agents(&self) -> bool {
        self.agents
    }

    /// The objects the lab's apiserver serves (a JSON array; rewriting it changes them).
    pub fn cluster_objects(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }

    pub(super) fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    pub(super) fn apiserver_ready(&self) -> PathBuf {
        self.dir.join("apiserver.ready")
    }

    pub(super) fn agent_ready(&self, node: usize) -> PathBuf {
        self.dir.join(format!(
            "membrane-agent-{}.ready",
            self.topo.nodes[node].key
        ))
    }

    /// Whether the L7 proxies run in this lab.
    pub fn proxies(&self) -> bool {
        self.proxies
    }

    /// Where node `i`'s proxies write their L7 denials (JSON lines).
    pub fn l7_events(&self, i: usize) -> PathBuf {
        self.dir.join(format!("l7-events-{i}.jsonl"))
    }

    /// Kills node `node`'s L7 proxies (one process) and waits for it to exit, as a crash
    /// would: from then on tproxy finds no socket there, and the datapath must fail closed.
    /// Only for a lab this process started.
    pub fn kill_proxies(&mut self, node: usize) -> Result<(), LabError> {
        let name = format!(
            "proxy-{}",
            self.topo
                .nodes
                .get(node)
                .ok_or(LabError::NoSuchNode(node))?
                .key
        );
        // The latest process of that name (proxies may have been started again).
        let i = self
            .child_names
            .iter()
            .rposition(|n| *n == name)
            .ok_or_else(|| LabError::NoProcess(name.clone()))?;
        let child = &mut self.children[i];
        let process = |source| LabError::Process {
            name: name.clone(),
            source,
        };
        child.kill().map_err(process)?;
        child.wait().map_err(process)?;
        let _ = std::fs::remove_file(self.proxy_ready(node));
        Ok(())
    }

    /// Starts node `node`'s proxies again (after [`Lab::kill_proxies`]) without waiting for
    /// them: until they listen, the datapath drops what it would hand them
    /// ([`Lab::proxies_ready`] says when they do).
    pub fn restart_proxies(&mut self, node: usize) -> Result<(), LabError> {
        let (program, args) = self
            .proxy_commands
            .get(node)
            .cloned()
            .ok_or(LabError::NoProxies)?;
        let name = format!("proxy-{}", self.topo.nodes[node].key);
        let ns = self.netns(NsRef::Node(node));
        self.spawn_in(&ns, &name, &program, &args)
    }

    /// Whether node `node`'s proxies listen (they write their ready file once bound).
    pub fn proxies_ready(&self, node: usize) -> bool {
        self.proxy_ready(node).exists()
    }

    /// The requests the HTTP server of the agent in `ns` received (labs with proxies, whose
    /// agents serve HTTP), oldest first.
    pub fn http_log(&self, ns: NsRef) -> Result<Vec<wire::HttpLogEntry>, LabError> {
        let r = wire::call(&self.socket(ns), &Request::HttpLog, Duration::from_secs(10))?;
        match r.error {
            Some(error) => Err(LabError::Agent {
                netns: self.netns(ns),
                error,
            }),
            None => Ok(r.http_log),
        }
    }

    pub(super) fn proxy_ready(&self, node: usize) -> PathBuf {
        self.dir
            .join(format!("proxy-{}.ready", self.topo.nodes[node].key))
    }

    pub(super) fn proxy_scenario(&self) -> PathBuf {
        self.dir.join("proxy-scenario.yaml")
    }

    fn compile(&self, input: &NodeInput) -> Ruleset {
        let rs = compile_node(input);
        if self.proxies {
            nft::compile::with_proxies(rs)
        } else {
            rs
        }
    }

    /// [`Lab::apply`] from a scenario's text, which the proxies (if they run) load too: they
    /// publish the new policy within 50 ms.
    pub fn apply_source(&mut self, text: &str) -> Result<(), LabError> {
        let tmp = self.dir.join("apply.yaml");
        std::fs::write(&tmp, text).map_err(LabError::io(&tmp))?;
        let world = load_world(&tmp)?;
        self.apply(&world)?;
        if self.proxies {
            std::fs::rename(&tmp, self.proxy_scenario()).map_err(LabError::io(&tmp))?;
        }
        Ok(())
    }

    /// Leaves the lab running after this process exits (`membrane lab up`).
    pub fn keep(&mut self) -> Result<(), LabError> {
        std::fs::write(self.dir.join("kept"), b"").map_err(LabError::io(&self.dir))?;
        self.kept = true;
        Ok(())
    }

    /// A lab started by another process, for probing it or following its events.
    pub fn attach(world: &World, root: &Path, name: &str) -> Result<Lab, LabError> {
        valid_name(name)?;
        let dir = root.join(name);
        if !dir.exists() {
            return Err(LabError::NoSuchLab(name.to_string()));
        }
        let topo = Topology::plan(world);
        let agents = dir.join("cluster.json").exists();
        let proxies = agents || dir.join("proxy-scenario.yaml").exists();
        let rulesets = topo
            .node_inputs(world)
            .iter()
            .map(|i| {
                let rs = compile_node(i);
                if proxies {
                    nft::compile::with_proxies(rs)
                } else {
                    rs
                }
            })
            .collect();
        Ok(Lab {
            name: name.to_string(),
            root: root.to_path_buf(),
            dir,
            topo,
            rulesets,
            children: vec![],
            child_names: vec![],
            proxy_commands: vec![],
            reaper: None,
            proxies,
            agents,
            kept: true,
            torn_down: false,
        })
    }

    /// Tears the lab down now.
    pub fn down(mut self) -> Result<(), LabError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for c in &mut self.children {
            let _ = c.kill();
        }
        let r = teardown(&self.root, &self.name);
        for c in &mut self.children {
            let _ = c.wait();
        }
        if let Some(mut reaper) = self.reaper.take() {
            // Closing its stdin wakes it; the lab is gone, so it just exits.
            drop(reaper.stdin.take());
            let _ = reaper.wait();
        }
        r
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.kept {
            // Our children keep running; the reaper sees `kept` and exits.
            if let Some(mut reaper) = self.reaper.take() {
                drop(reaper.stdin.take());
                let _ = reaper.wait();
            }
            return;
        }
        if let Err(e) = self.shutdown() {
            eprintln!("membrane lab: teardown of {}: {e}", self.name);
        }
    }
}
