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

use crate::agent::control_path;
use crate::compile::{Ruleset, compile_node};
use crate::topology::{NsRef, Topology};
use crate::wire::{self, Request};
use membrane_cluster::world::World;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Default directory for lab state (tmpfs, root only).
pub const STATE_ROOT: &str = "/run/membrane-lab";
/// Gateway address of the pods (on each node's `lo`), as in Calico and Cilium.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Next hop of the nodes towards the world namespace (on the world's `lo`).
pub const WORLD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 2, 1);

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
    /// The rulesets then `tproxy` L7 entries to them (`compile::with_proxies`).
    pub proxies: Option<PathBuf>,
}

/// Checks a lab name: it becomes part of namespace names and a directory.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "lab name `{name}`: use 1-40 characters among a-z, 0-9 and `-`"
        ))
    }
}

/// A lab name derived from a scenario name.
pub fn name_from(text: &str) -> String {
    let s: String = text
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    let s: String = s.chars().take(40).collect();
    if s.is_empty() {
        "lab".into()
    } else {
        s.trim_end_matches('-').to_string()
    }
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command, input: Option<&str>) -> Result<String, String> {
    let what = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("{what}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let err: String = err.lines().take(8).collect::<Vec<_>>().join("\n");
        return Err(format!("{what} failed: {err}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), String> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let mut text = lines.join("\n");
    text.push('\n');
    run(&mut cmd, Some(&text)).map(|_| ())
}

/// The lab's namespaces that exist now.
pub fn lab_namespaces(name: &str) -> Vec<String> {
    let prefix = format!("mb.{name}.");
    let Ok(out) = run(Command::new("ip").args(["netns", "list"]), None) else {
        return vec![];
    };
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Labs with state under `root` or namespaces on the machine.
pub fn list_labs(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(root) {
        for e in dir.flatten() {
            out.insert(e.file_name().to_string_lossy().to_string());
        }
    }
    if let Ok(list) = run(Command::new("ip").args(["netns", "list"]), None) {
        for l in list.lines() {
            let n = l.split_whitespace().next().unwrap_or("");
            if let Some(rest) = n.strip_prefix("mb.")
                && let Some((lab, _)) = rest.rsplit_once('.')
            {
                out.insert(lab.to_string());
            }
        }
    }
    out
}

fn netns_pids(ns: &str) -> Vec<u32> {
    run(Command::new("ip").args(["netns", "pids", ns]), None)
        .map(|o| {
            o.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the lab was handed over (`membrane lab up`): then its reaper leaves it alone.
pub fn is_kept(root: &Path, name: &str) -> bool {
    root.join(name).join("kept").exists()
}

/// Tears a lab down: ends every process in its namespaces, deletes the namespaces and its
/// state directory. Safe to run twice, and on a half-built lab.
pub fn teardown(root: &Path, name: &str) -> Result<(), String> {
    valid_name(name)?;
    let dir = root.join(name);
    // Agents exit by themselves once their control socket is gone; the kill below does not
    // wait for that.
    let _ = std::fs::remove_dir_all(&dir);
    let namespaces = lab_namespaces(name);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids: Vec<u32> = namespaces.iter().flat_map(|n| netns_pids(n)).collect();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        let mut cmd = Command::new("kill");
        cmd.arg("-KILL").args(pids.iter().map(u32::to_string));
        let _ = run(&mut cmd, None);
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines: Vec<String> = namespaces
        .iter()
        .map(|n| format!("netns del {n}"))
        .collect();
    let r = ip_batch(None, &lines);
    let left = lab_namespaces(name);
    if !left.is_empty() {
        return Err(format!(
            "lab {name}: namespaces left behind: {}{}",
            left.join(", "),
            r.err().map(|e| format!(" ({e})")).unwrap_or_default()
        ));
    }
    Ok(())
}

/// kube-dns: its namespace, its address and the (name, address) records it answers.
pub type KubeDns = (NsRef, Ipv4Addr, Vec<(String, Ipv4Addr)>);

/// What to serve in each namespace: TCP and UDP ports.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    pub tcp: BTreeMap<NsRef, BTreeSet<u16>>,
    pub udp: BTreeMap<NsRef, BTreeSet<u16>>,
    /// kube-dns, answered by dnsmasq: its namespace, address and (name, address) records.
    pub dns: Option<KubeDns>,
}

impl Servers {
    /// Every port a flow uses and every container port, where its destination lives.
    pub fn plan(world: &World, topo: &Topology) -> Servers {
        let mut s = Servers::default();
        let add = |s: &mut Servers, ns: NsRef, proto: &str, port: u16| match proto {
            "TCP" => {
                s.tcp.entry(ns).or_default().insert(port);
            }
            "UDP" => {
                s.udp.entry(ns).or_default().insert(port);
            }
            _ => {}
        };
        for f in &world.scenario.flows {
            let Some(to) = f.to.as_deref().and_then(|t| world.party(t)) else {
                continue;
            };
            let (Some((ns, _)), Some(port)) = (topo.place(to), f.port) else {
                continue;
            };
            add(&mut s, ns, f.protocol.as_deref().unwrap_or("TCP"), port);
        }
        for (i, ep) in world.scenario.endpoints.iter().enumerate() {
            let ns = if ep.host_network {
                world
                    .party(&ep.name)
                    .and_then(|p| topo.place(p))
                    .map(|(ns, _)| ns)
            } else {
                topo.pods
                    .iter()
                    .position(|p| p.endpoint == i)
                    .map(NsRef::Pod)
            };
            let Some(ns) = ns else { continue };
            for p in &ep.ports {
                add(&mut s, ns, p.protocol.as_str(), p.port);
            }
        }
        if let Some((ns, addr)) = world.kube_dns().and_then(|p| topo.place(p)) {
            // dnsmasq owns port 53 there.
            if let Some(t) = s.tcp.get_mut(&ns) {
                t.remove(&53);
            }
            if let Some(u) = s.udp.get_mut(&ns) {
                u.remove(&53);
            }
            let mut records = Vec::new();
            for e in &world.scenario.external {
                for ip in &e.ips {
                    if let IpAddr::V4(a) = ip {
                        records.push((e.name.trim_end_matches('.').to_string(), *a));
                    }
                }
            }
            // Names only queried (`dns:` flows) still get an answer: the query is what is
            // tested, not the address.
            for f in &world.scenario.flows {
                if let Some(q) = &f.dns {
                    let q = q.trim_end_matches('.').to_string();
                    if !records.iter().any(|(n, _)| *n == q) {
                        records.push((q, Ipv4Addr::new(203, 0, 113, 10)));
                    }
                }
            }
            s.dns = Some((ns, addr, records));
        }
        s
    }
}

/// `redis-server`, if installed.
fn redis_server() -> Option<PathBuf> {
    find_program("redis-server").or_else(|| {
        let p = PathBuf::from("/usr/bin/redis-server");
        p.is_file().then_some(p)
    })
}

/// Where `program` is on `PATH`, as `Command` would find it.
pub fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The programs a lab for these worlds runs, each with the Debian/Ubuntu package that has
/// it: `ip` and `nft` build and police it, `tcpdump` reads the drops, `kill` tears it down,
/// `dnsmasq` is kube-dns when a world has one. `redis-server` is optional (the agent
/// answers Redis' `PING` without it) and `conntrack` is only used by the benchmark.
pub fn required_programs<'w>(
    worlds: impl IntoIterator<Item = &'w World>,
) -> Vec<(&'static str, &'static str)> {
    let mut out = vec![
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("tcpdump", "tcpdump"),
        ("kill", "procps"),
    ];
    if worlds.into_iter().any(|w| w.kube_dns().is_some()) {
        out.push(("dnsmasq", "dnsmasq-base"));
    }
    out
}

/// Fails, naming the missing programs and the `apt-get` line that installs them, unless
/// every program a lab for these worlds runs is on `PATH`: checked once up front, instead of
/// every file failing on its own `exec` error.
pub fn check_prerequisites<'w>(worlds: impl IntoIterator<Item = &'w World>) -> Result<(), String> {
    let missing: Vec<(&str, &str)> = required_programs(worlds)
        .into_iter()
        .filter(|(program, _)| find_program(program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    Err(format!(
        "the lab needs programs that are not on PATH: {}\ninstall them with: apt-get install -y {}",
        programs.join(", "),
        packages.join(" ")
    ))
}

/// A gateway of the world: its namespace, address, the TCP ports flows reach it on, and
/// its routes (first backends, placed in the lab).
pub type GatewayPlan = (NsRef, Ipv4Addr, BTreeSet<u16>, Vec<crate::gateway::Route>);

/// The world's gateways (endpoints that routes name) as the lab runs them.
pub fn gateways(world: &World, topo: &Topology) -> Vec<GatewayPlan> {
    let mut names: Vec<&str> = world
        .scenario
        .routes
        .iter()
        .map(|r| r.gateway.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let Some((ns, addr)) = world.party(name).and_then(|p| topo.place(p)) else {
            continue;
        };
        let ports: BTreeSet<u16> = world
            .scenario
            .flows
            .iter()
            .filter(|f| f.to.as_deref() == Some(name))
            .filter(|f| f.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|f| f.port)
            .collect();
        let mut routes = Vec::new();
        for r in world.scenario.routes.iter().filter(|r| r.gateway == name) {
            let Some((backend, port)) = r.backends.first() else {
                continue;
            };
            let Some((_, baddr)) = world.party(backend).and_then(|p| topo.place(p)) else {
                continue;
            };
            routes.push(crate::gateway::Route {
                exact: r.exact,
                path: r.path.clone(),
                backend: std::net::SocketAddrV4::new(baddr, *port),
            });
        }
        out.push((ns, addr, ports, routes));
    }
    out
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
    /// Whether the proxies run (their scenario file is `proxy-scenario.yaml` in `dir`).
    proxies: bool,
    /// Leave the lab running when this value is dropped.
    kept: bool,
    torn_down: bool,
}

impl Lab {
    pub fn netns(&self, ns: NsRef) -> String {
        format!("mb.{}.{}", self.name, self.topo.key(ns))
    }

    pub fn socket(&self, ns: NsRef) -> PathBuf {
        control_path(&self.dir, &self.topo.key(ns))
    }

    pub fn pcap(&self, node: usize) -> PathBuf {
        self.dir.join(format!("{}.pcap", self.topo.nodes[node].key))
    }

    /// Reads every node's drop log (`from_end`: only what is logged from now on).
    pub fn drop_collector(&self, from_end: bool) -> crate::events::Collector {
        let files = (0..self.topo.nodes.len())
            .map(|i| (i, self.pcap(i)))
            .collect();
        crate::events::Collector::start(files, from_end)
    }

    /// Builds the lab for a world. On any error the partial lab is torn down.
    pub fn up(world: &World, opts: &LabOptions) -> Result<Lab, String> {
        valid_name(&opts.name)?;
        let dir = opts.root.join(&opts.name);
        if dir.exists() || !lab_namespaces(&opts.name).is_empty() {
            return Err(format!(
                "lab `{}` already exists (`membrane lab down --name {}` removes it)",
                opts.name, opts.name
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
            proxies: opts.proxies.is_some(),
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

    fn spawn_reaper(&self, helper: &Helper) -> Result<Child, String> {
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
            .map_err(|e| format!("reaper: {e}"))
    }

    fn log_file(&self, what: &str) -> Result<std::fs::File, String> {
        let p = self.dir.join(format!("{what}.log"));
        // Appended: a process started again (`restart_proxies`) keeps its predecessor's log.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))
    }

    fn spawn_in(
        &mut self,
        ns: &str,
        log: &str,
        program: &Path,
        args: &[String],
    ) -> Result<(), String> {
        let out = self.log_file(log)?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("{ns}: {}: {e}", program.display()))?;
        self.children.push(child);
        self.child_names.push(log.to_string());
        Ok(())
    }

    fn build(&mut self, world: &World, opts: &LabOptions) -> Result<(), String> {
        let t = self.topo.clone();
        let nss: Vec<NsRef> = t.namespaces();
        // 1. Namespaces and veth pairs, created straight into their namespaces.
        let mut root: Vec<String> = nss
            .iter()
            .map(|n| format!("netns add {}", self.netns(*n)))
            .collect();
        for (i, _) in t.nodes.iter().enumerate() {
            root.push(format!(
                "link add up0 netns {} type veth peer name n{i} netns {}",
                self.netns(NsRef::Node(i)),
                self.netns(NsRef::World)
            ));
        }
        for (i, p) in t.pods.iter().enumerate() {
            root.push(format!(
                "link add lxc{} netns {} type veth peer name eth0 netns {}",
                p.endpoint,
                self.netns(NsRef::Node(p.node)),
                self.netns(NsRef::Pod(i))
            ));
        }
        ip_batch(None, &root)?;
        // 2. Addresses and routes: routed /32s, addressless veths, gateways on `lo`.
        let mut world_cmds = vec![
            "link set lo up".to_string(),
            format!("addr add {WORLD_GATEWAY}/32 dev lo"),
        ];
        for a in &t.world_addrs {
            world_cmds.push(format!("addr add {a}/32 dev lo"));
        }
        for (i, node) in t.nodes.iter().enumerate() {
            world_cmds.push(format!("link set n{i} up"));
            let mut cmds = vec![
                "link set lo up".to_string(),
                format!("addr add {POD_GATEWAY}/32 dev lo"),
                "link set up0 up".to_string(),
            ];
            for a in &node.addrs {
                cmds.push(format!("addr add {a}/32 dev lo"));
            }
            // The node's own address as source of what it sends (hostNetwork pods), so that
            // peers see the node, not the pods' gateway address.
            let src = node
                .addrs
                .first()
                .map(|a| format!(" src {a}"))
                .unwrap_or_default();
            cmds.push(format!(
                "route add default via {WORLD_GATEWAY} dev up0 onlink{src}"
            ));
            for a in &node.addrs {
                world_cmds.push(format!(
                    "route add {a}/32 via {POD_GATEWAY} dev n{i} onlink"
                ));
            }
            for p in t.pods.iter().filter(|p| p.node == i) {
                cmds.push(format!("link set lxc{} up", p.endpoint));
                cmds.push(format!(
                    "route add {}/32 dev lxc{} scope link{src}",
                    p.addr, p.endpoint
                ));
                world_cmds.push(format!(
                    "route add {}/32 via {POD_GATEWAY} dev n{i} onlink",
                    p.addr
                ));
            }
            ip_batch(Some(&self.netns(NsRef::Node(i))), &cmds)?;
        }
        ip_batch(Some(&self.netns(NsRef::World)), &world_cmds)?;
        for (i, p) in t.pods.iter().enumerate() {
            let cmds = vec![
                "link set lo up".to_string(),
                format!("addr add {}/32 dev eth0", p.addr),
                "link set eth0 up".to_string(),
                format!("route add {POD_GATEWAY} dev eth0 scope link"),
                format!("route add default via {POD_GATEWAY} dev eth0"),
            ];
            ip_batch(Some(&self.netns(NsRef::Pod(i))), &cmds)?;
        }
        // 3. The policy, before any traffic.
        if let Some(src) = &opts.proxies {
            // A scenario file, or a manifests directory as one stream.
            let text = crate::probe::source_text(src)?;
            std::fs::write(self.proxy_scenario(), text)
                .map_err(|e| format!("{}: {e}", src.display()))?;
            for i in 0..t.nodes.len() {
                ip_batch(
                    Some(&self.netns(NsRef::Node(i))),
                    &[
                        format!(
                            "rule add fwmark {m:#x}/{m:#x} lookup 100",
                            m = crate::proxy::PROXY_MARK
                        ),
                        "route add local 0.0.0.0/0 dev lo table 100".into(),
                    ],
                )?;
            }
        }
        let inputs = t.node_inputs(world);
        for (i, input) in inputs.iter().enumerate() {
            let rs = self.compile(input);
            let ns = self.netns(NsRef::Node(i));
            run(
                Command::new("ip").args(["netns", "exec", &ns, "nft", "-f", "-"]),
                Some(&rs.render()),
            )
            .map_err(|e| format!("loading the ruleset of node {}: {e}", input.node))?;
            self.rulesets.push(rs);
        }
        // 4. Processes: NFLOG readers, kube-dns, agents.
        for i in 0..t.nodes.len() {
            let ns = self.netns(NsRef::Node(i));
            let pcap = self.pcap(i);
            let args: Vec<String> = ["-i", "nflog:1", "-U", "-n", "-s", "512", "-Z", "root", "-w"]
                .iter()
                .map(|s| s.to_string())
                .chain([pcap.display().to_string()])
                .collect();
            self.spawn_in(
                &ns,
                &format!("tcpdump-{}", t.nodes[i].key),
                Path::new("tcpdump"),
                &args,
            )?;
        }
        if self.proxies {
            for i in 0..t.nodes.len() {
                let mut args = opts.helper.args.clone();
                args.push("proxy".into());
                args.push("--scenario".into());
                args.push(self.proxy_scenario().display().to_string());
                if let Some(n) = t.nodes[i].scenario_node {
                    args.extend(["--node".into(), n.to_string()]);
                }
                args.push("--events".into());
                args.push(self.l7_events(i).display().to_string());
                args.push("--ready".into());
                args.push(self.proxy_ready(i).display().to_string());
                let ns = self.netns(NsRef::Node(i));
                let log = format!("proxy-{}", t.nodes[i].key);
                self.spawn_in(&ns, &log, &opts.helper.program, &args)?;
                self.proxy_commands
                    .push((opts.helper.program.clone(), args));
            }
        }
        let mut servers = Servers::plan(world, &t);
        // Gateways (with proxies): their listener ports go to the gateway's forwarder.
        let mut ready_tcp: Vec<(NsRef, Ipv4Addr, u16)> = Vec::new();
        if self.proxies {
            for (ns, addr, ports, routes) in gateways(world, &t) {
                let listen: Vec<u16> = ports
                    .iter()
                    .copied()
                    .filter(|p| servers.tcp.get_mut(&ns).is_some_and(|s| s.remove(p)))
                    .collect();
                if listen.is_empty() {
                    continue;
                }
                let mut args = opts.helper.args.clone();
                args.extend([
                    "gateway".into(),
                    "--src".into(),
                    addr.to_string(),
                    "--listen".into(),
                    listen
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
                for r in &routes {
                    args.extend(["--route".into(), r.arg()]);
                }
                let nsn = self.netns(ns);
                let key = self.topo.key(ns);
                self.spawn_in(&nsn, &format!("gateway-{key}"), &opts.helper.program, &args)?;
                ready_tcp.extend(listen.iter().map(|p| (ns, addr, *p)));
            }
        }
        // Redis' port: a real redis-server where one is installed (else the agent's RESP
        // answer).
        let mut redis: Vec<(NsRef, Ipv4Addr)> = Vec::new();
        if let Some(program) = redis_server() {
            for (k, pod) in t.pods.iter().enumerate() {
                let ns = NsRef::Pod(k);
                if !servers
                    .tcp
                    .get_mut(&ns)
                    .is_some_and(|s| s.remove(&crate::agent::REDIS_PORT))
                {
                    continue;
                }
                let args: Vec<String> = [
                    "--port",
                    "6379",
                    "--bind",
                    "0.0.0.0",
                    "--protected-mode",
                    "no",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain(["--dir".into(), self.dir.display().to_string()])
                .collect();
                let nsn = self.netns(ns);
                let key = self.topo.key(ns);
                self.spawn_in(&nsn, &format!("redis-{key}"), &program, &args)?;
                redis.push((ns, pod.addr));
            }
        }
        if let Some((ns, addr, records)) = &servers.dns {
            let mut args: Vec<String> = vec![
                "--no-daemon".into(),
                "--conf-file=/dev/null".into(),
                "--no-resolv".into(),
                "--no-hosts".into(),
                "--bind-interfaces".into(),
                format!("--listen-address={addr}"),
                "--port=53".into(),
                "--pid-file=".into(),
            ];
            for (name, ip) in records {
                args.push(format!("--address=/{name}/{ip}"));
            }
            let nsn = self.netns(*ns);
            self.spawn_in(&nsn, "dnsmasq", Path::new("dnsmasq"), &args)?;
        }
        for ns in &nss {
            let mut args: Vec<String> = opts.helper.args.clone();
            args.push("agent".into());
            args.push("--control".into());
            args.push(self.socket(*ns).display().to_string());
            let join = |s: Option<&BTreeSet<u16>>| {
                s.map(|p| p.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
                    .unwrap_or_default()
            };
            args.extend(["--tcp".into(), join(servers.tcp.get(ns))]);
            args.extend(["--udp".into(), join(servers.udp.get(ns))]);
            if matches!(ns, NsRef::Node(_) | NsRef::World) {
                args.push("--router".into());
            }
            if self.proxies {
                args.push("--http".into());
            }
            // IPv6 is not part of the lab: no link-local chatter through the datapath.
            args.extend(["--sysctl".into(), "net.ipv6.conf.all.disable_ipv6=1".into()]);
            let nsn = self.netns(*ns);
            let key = self.topo.key(*ns);
            self.spawn_in(&nsn, &format!("agent-{key}"), &opts.helper.program, &args)?;
        }
        // 5. Ready: every agent answers, every capture has its header, kube-dns answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        for ns in &nss {
            loop {
                if wire::call(&self.socket(*ns), &Request::Ping, Duration::from_secs(2)).is_ok() {
                    break;
                }
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err(format!("agent in {} did not start", self.netns(*ns)));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The proxies listen before any traffic: until then the datapath drops what it
        // would redirect to them, so probing earlier would report spurious drops.
        let proxy_nodes = if self.proxies { t.nodes.len() } else { 0 };
        for i in 0..proxy_nodes {
            while !self.proxy_ready(i).exists() {
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err(format!(
                        "the proxies of node {} did not start",
                        t.nodes[i].name
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for i in 0..t.nodes.len() {
            while std::fs::metadata(self.pcap(i)).map_or(0, |m| m.len()) < 24 {
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err(format!("tcpdump in node {} did not start", t.nodes[i].name));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for (ns, addr, port) in &ready_tcp {
            loop {
                let req = Request::Tcp {
                    src: *addr,
                    sport: 0,
                    dst: *addr,
                    port: *port,
                    timeout_ms: 200,
                };
                let r = wire::call(&self.socket(*ns), &req, Duration::from_secs(2));
                if r.is_ok_and(|r| r.delivered && !r.refused) {
                    break;
                }
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err(format!("the gateway in {} did not start", self.netns(*ns)));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for (ns, addr) in &redis {
            loop {
                let req = Request::Redis {
                    src: *addr,
                    sport: 0,
                    dst: *addr,
                    port: crate::agent::REDIS_PORT,
                    timeout_ms: 200,
                };
                let r = wire::call(&self.socket(*ns), &req, Duration::from_secs(3));
                if r.is_ok_and(|r| r.body.as_deref().is_some_and(|b| b.starts_with("+PONG"))) {
                    break;
                }
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err(format!("redis-server in {} did not start", self.netns(*ns)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some((ns, addr, _)) = &servers.dns {
            loop {
                let r = wire::call(
                    &self.socket(*ns),
                    &Request::Dns {
                        src: *addr,
                        sport: 0,
                        server: *addr,
                        name: "ready.membrane.".into(),
                        timeout_ms: 200,
                    },
                    Duration::from_secs(2),
                );
                if r.is_ok_and(|r| r.delivered) {
                    break;
                }
                self.check_children()?;
                if Instant::now() > deadline {
                    return Err("dnsmasq (kube-dns) did not answer".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Fails if a lab process exited (it would be a setup error: a port in use, …).
    fn check_children(&mut self) -> Result<(), String> {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "a lab process exited early ({status}); see the logs in {}",
                    self.dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Replaces the policy in place: one `nft -f` transaction per node that flushes and
    /// refills only what changed (never deleting the table). The world must have the same
    /// parties as the one the lab was built for. The proxies (if they run) only see a new
    /// policy through [`Lab::apply_source`], which loads the scenario text for them too.
    pub fn apply(&mut self, world: &World) -> Result<(), String> {
        let topo = Topology::plan(world);
        let same = topo.pods.iter().map(|p| (p.addr, &p.key)).eq(self
            .topo
            .pods
            .iter()
            .map(|p| (p.addr, &p.key)))
            && topo.nodes.len() == self.topo.nodes.len();
        if !same {
            return Err("the new scenario has other pods or nodes: build a new lab".into());
        }
        let inputs = topo.node_inputs(world);
        for (i, input) in inputs.iter().enumerate() {
            let next = self.compile(input);
            let Some(prev) = self.rulesets.get(i) else {
                return Err("no ruleset loaded".into());
            };
            let tx = next.update_from(prev);
            let ns = self.netns(NsRef::Node(i));
            run(
                Command::new("ip").args(["netns", "exec", &ns, "nft", "-f", "-"]),
                Some(&tx),
            )
            .map_err(|e| format!("updating node {}: {e}", input.node))?;
            self.rulesets[i] = next;
        }
        Ok(())
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
    pub fn kill_proxies(&mut self, node: usize) -> Result<(), String> {
        let name = format!(
            "proxy-{}",
            self.topo.nodes.get(node).ok_or("no such node")?.key
        );
        // The latest process of that name (proxies may have been started again).
        let i = self
            .child_names
            .iter()
            .rposition(|n| *n == name)
            .ok_or_else(|| format!("no process {name} in this lab"))?;
        let child = &mut self.children[i];
        child.kill().map_err(|e| format!("{name}: {e}"))?;
        child.wait().map_err(|e| format!("{name}: {e}"))?;
        let _ = std::fs::remove_file(self.proxy_ready(node));
        Ok(())
    }

    /// Starts node `node`'s proxies again (after [`Lab::kill_proxies`]) without waiting for
    /// them: until they listen, the datapath drops what it would hand them
    /// ([`Lab::proxies_ready`] says when they do).
    pub fn restart_proxies(&mut self, node: usize) -> Result<(), String> {
        let (program, args) = self
            .proxy_commands
            .get(node)
            .cloned()
            .ok_or("no proxies started in this lab")?;
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
    pub fn http_log(&self, ns: NsRef) -> Result<Vec<wire::HttpLogEntry>, String> {
        let r = wire::call(&self.socket(ns), &Request::HttpLog, Duration::from_secs(10))?;
        match r.error {
            Some(e) => Err(e),
            None => Ok(r.http_log),
        }
    }

    fn proxy_ready(&self, node: usize) -> PathBuf {
        self.dir
            .join(format!("proxy-{}.ready", self.topo.nodes[node].key))
    }

    fn proxy_scenario(&self) -> PathBuf {
        self.dir.join("proxy-scenario.yaml")
    }

    fn compile(&self, input: &crate::compile::NodeInput) -> Ruleset {
        let rs = compile_node(input);
        if self.proxies {
            crate::compile::with_proxies(rs)
        } else {
            rs
        }
    }

    /// [`Lab::apply`] from a scenario's text, which the proxies (if they run) load too: they
    /// publish the new policy within 50 ms.
    pub fn apply_source(&mut self, text: &str) -> Result<(), String> {
        let tmp = self.dir.join("apply.yaml");
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let world = crate::probe::load_world(&tmp)?;
        self.apply(&world)?;
        if self.proxies {
            std::fs::rename(&tmp, self.proxy_scenario()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Leaves the lab running after this process exits (`membrane lab up`).
    pub fn keep(&mut self) -> Result<(), String> {
        std::fs::write(self.dir.join("kept"), b"")
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        self.kept = true;
        Ok(())
    }

    /// A lab started by another process, for probing it or following its events.
    pub fn attach(world: &World, root: &Path, name: &str) -> Result<Lab, String> {
        valid_name(name)?;
        let dir = root.join(name);
        if !dir.exists() {
            return Err(format!(
                "no lab `{name}` (start one with `membrane lab up`)"
            ));
        }
        let topo = Topology::plan(world);
        let proxies = dir.join("proxy-scenario.yaml").exists();
        let rulesets = topo
            .node_inputs(world)
            .iter()
            .map(|i| {
                let rs = compile_node(i);
                if proxies {
                    crate::compile::with_proxies(rs)
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
            kept: true,
            torn_down: false,
        })
    }

    /// Tears the lab down now.
    pub fn down(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
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
