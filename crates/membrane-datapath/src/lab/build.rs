//! Building a lab, step by step ([`Lab::build`]): namespaces and veths, addresses and
//! routes, the policy, the processes, then waiting until every process is ready. Each step
//! fails with a [`LabError`]; [`Lab::up`] tears down whatever was built.

use super::plan::{Servers, gateways, redis_server};
use super::{AgentLab, Helper, Lab, LabError, LabOptions};
use crate::exec::ip_batch;
use crate::layout::{
    APISERVER_PORT, POD_GATEWAY, PROXY_MARK, PROXY_ROUTE_TABLE, REDIS_PORT, WORLD_GATEWAY,
};
use crate::nft;
use crate::source::source_text;
use crate::topology::NsRef;
use crate::wire::{self, Request};
use membrane_cluster::world::World;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the lab's processes get to become ready, all together.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The servers started besides the agents that must answer before the lab is ready.
#[derive(Default)]
struct Started {
    /// Gateway forwarders: namespace, address, port.
    gateways: Vec<(NsRef, Ipv4Addr, u16)>,
    /// `redis-server`s: namespace, address.
    redis: Vec<(NsRef, Ipv4Addr)>,
}

impl Lab {
    pub(super) fn build(&mut self, world: &World, opts: &LabOptions) -> Result<(), LabError> {
        // 1. Namespaces and veth pairs, created straight into their namespaces.
        self.create_namespaces()?;
        // 2. Addresses and routes: routed /32s, addressless veths, gateways on `lo`.
        self.address_nodes_and_world()?;
        self.address_pods()?;
        // 3. The policy, before any traffic: the lab's rulesets, or the cluster's objects
        //    served to the nodes' agents (which enforce before the lab reports ready).
        match &opts.agents {
            None => {
                if let Some(src) = &opts.proxies {
                    self.route_to_proxies(src)?;
                }
                self.load_rulesets(world)?;
            }
            Some(agents) => {
                let cluster = (agents.cluster)(&agents.source, world).map_err(LabError::Cluster)?;
                let path = self.cluster_objects();
                std::fs::write(&path, &cluster.objects).map_err(LabError::io(&path))?;
                self.start_apiserver(&opts.helper)?;
                self.start_node_agents(agents, &cluster.agent_args)?;
            }
        }
        // 4. Processes: NFLOG readers, proxies, gateways, redis, kube-dns, agents.
        self.start_nflog_readers()?;
        let mut servers = Servers::plan(world, &self.topo);
        let mut started = Started::default();
        if self.proxies && !self.agents {
            self.start_proxies(&opts.helper)?;
        }
        if self.proxies {
            // Gateways (with proxies): their listener ports go to the gateway's forwarder.
            started.gateways = self.start_gateways(world, &opts.helper, &mut servers)?;
        }
        started.redis = self.start_redis(&mut servers)?;
        self.start_kube_dns(&servers)?;
        self.start_agents(&opts.helper, &servers)?;
        // 5. Ready: every agent answers, every capture has its header, kube-dns answers.
        self.wait_ready(&servers, &started)
    }

    /// `netns add` for every namespace; a veth pair between each node and the world and
    /// between each pod and its node.
    fn create_namespaces(&self) -> Result<(), LabError> {
        let t = &self.topo;
        let mut root: Vec<String> = t
            .namespaces()
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
        Ok(ip_batch(None, &root)?)
    }

    /// The nodes' addresses and routes (to their pods, default to the world) and the
    /// world's (to every node and pod).
    fn address_nodes_and_world(&self) -> Result<(), LabError> {
        let t = &self.topo;
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
        Ok(ip_batch(Some(&self.netns(NsRef::World)), &world_cmds)?)
    }

    /// Each pod's address on its `eth0`, default route via the pods' gateway.
    fn address_pods(&self) -> Result<(), LabError> {
        for (i, p) in self.topo.pods.iter().enumerate() {
            let cmds = vec![
                "link set lo up".to_string(),
                format!("addr add {}/32 dev eth0", p.addr),
                "link set eth0 up".to_string(),
                format!("route add {POD_GATEWAY} dev eth0 scope link"),
                format!("route add default via {POD_GATEWAY} dev eth0"),
            ];
            ip_batch(Some(&self.netns(NsRef::Pod(i))), &cmds)?;
        }
        Ok(())
    }

    /// Writes the proxies' scenario and routes packets marked for them to the local stack.
    fn route_to_proxies(&self, src: &Path) -> Result<(), LabError> {
        // A scenario file, or a manifests directory as one stream.
        let text = source_text(src)?;
        std::fs::write(self.proxy_scenario(), text).map_err(LabError::io(src))?;
        for i in 0..self.topo.nodes.len() {
            ip_batch(
                Some(&self.netns(NsRef::Node(i))),
                &[
                    format!(
                        "rule add fwmark {m:#x}/{m:#x} lookup {PROXY_ROUTE_TABLE}",
                        m = PROXY_MARK
                    ),
                    format!("route add local 0.0.0.0/0 dev lo table {PROXY_ROUTE_TABLE}"),
                ],
            )?;
        }
        Ok(())
    }

    /// Compiles and loads every node's ruleset.
    fn load_rulesets(&mut self, world: &World) -> Result<(), LabError> {
        for (i, input) in self.topo.node_inputs(world).iter().enumerate() {
            let rs = self.compile(input);
            nft::apply::load(&self.netns(NsRef::Node(i)), &rs)?;
            self.rulesets.push(rs);
        }
        Ok(())
    }

    /// `tcpdump` on each node's NFLOG group, writing the node's pcap file.
    fn start_nflog_readers(&mut self) -> Result<(), LabError> {
        for i in 0..self.topo.nodes.len() {
            let ns = self.netns(NsRef::Node(i));
            let pcap = self.pcap(i);
            let args: Vec<String> = ["-i", "nflog:1", "-U", "-n", "-s", "512", "-Z", "root", "-w"]
                .iter()
                .map(|s| s.to_string())
                .chain([pcap.display().to_string()])
                .collect();
            let log = format!("tcpdump-{}", self.topo.nodes[i].key);
            self.spawn_in(&ns, &log, Path::new("tcpdump"), &args)?;
        }
        Ok(())
    }

    /// The apiserver (the fake, `lab helper apiserver`) in the world namespace, on the
    /// world's gateway address every node routes to; it serves `cluster.json` and follows
    /// its changes. Waits until it listens (its kubeconfig is then written).
    fn start_apiserver(&mut self, helper: &Helper) -> Result<(), LabError> {
        let mut args = helper.args.clone();
        args.extend([
            "apiserver".into(),
            "--objects".into(),
            self.cluster_objects().display().to_string(),
            "--listen".into(),
            format!("{WORLD_GATEWAY}:{APISERVER_PORT}"),
            "--kubeconfig".into(),
            self.kubeconfig().display().to_string(),
            "--ready".into(),
            self.apiserver_ready().display().to_string(),
        ]);
        let ns = self.netns(NsRef::World);
        self.spawn_in(&ns, "apiserver", &helper.program, &args)?;
        let deadline = Instant::now() + READY_WITHIN;
        self.wait_for(
            deadline,
            Duration::from_millis(10),
            "the apiserver".into(),
            |lab| lab.apiserver_ready().exists(),
        )
    }

    /// `membrane agent --node NAME` in each Cilium node's namespace, following the
    /// apiserver; each writes its ready file once its first state is enforced and its
    /// proxies listen.
    fn start_node_agents(&mut self, agents: &AgentLab, extra: &[String]) -> Result<(), LabError> {
        for i in 0..self.topo.nodes.len() {
            let node = &self.topo.nodes[i];
            if !node.cilium || node.scenario_node.is_none() {
                continue;
            }
            let mut args: Vec<String> = vec![
                "agent".into(),
                "--node".into(),
                node.name.clone(),
                "--kubeconfig".into(),
                self.kubeconfig().display().to_string(),
                "--log-format".into(),
                "json".into(),
                "--ready-file".into(),
                self.agent_ready(i).display().to_string(),
                // The lab probes a name right after resolving it, on a loaded machine: hold
                // answers until what they taught is enforced (the bound, not the usual wait).
                "--tofqdns-proxy-response-max-delay-ms".into(),
                "2000".into(),
            ];
            args.extend_from_slice(extra);
            let ns = self.netns(NsRef::Node(i));
            let log = format!("membrane-agent-{}", node.key);
            self.spawn_in(&ns, &log, &agents.program, &args)?;
        }
        Ok(())
    }

    /// Each node's L7 proxies (one helper process per node).
    fn start_proxies(&mut self, helper: &Helper) -> Result<(), LabError> {
        for i in 0..self.topo.nodes.len() {
            let mut args = helper.args.clone();
            args.push("proxy".into());
            args.push("--scenario".into());
            args.push(self.proxy_scenario().display().to_string());
            if let Some(n) = self.topo.nodes[i].scenario_node {
                args.extend(["--node".into(), n.to_string()]);
            }
            args.push("--events".into());
            args.push(self.l7_events(i).display().to_string());
            args.push("--ready".into());
            args.push(self.proxy_ready(i).display().to_string());
            let ns = self.netns(NsRef::Node(i));
            let log = format!("proxy-{}", self.topo.nodes[i].key);
            self.spawn_in(&ns, &log, &helper.program, &args)?;
            self.proxy_commands.push((helper.program.clone(), args));
        }
        Ok(())
    }

    /// The gateways' forwarders, on the ports flows reach them on (taken from `servers`).
    fn start_gateways(
        &mut self,
        world: &World,
        helper: &Helper,
        servers: &mut Servers,
    ) -> Result<Vec<(NsRef, Ipv4Addr, u16)>, LabError> {
        let mut ready_tcp = Vec::new();
        for (ns, addr, ports, routes) in gateways(world, &self.topo) {
            let listen: Vec<u16> = ports
                .iter()
                .copied()
                .filter(|p| servers.tcp.get_mut(&ns).is_some_and(|s| s.remove(p)))
                .collect();
            if listen.is_empty() {
                continue;
            }
            let mut args = helper.args.clone();
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
            self.spawn_in(&nsn, &format!("gateway-{key}"), &helper.program, &args)?;
            ready_tcp.extend(listen.iter().map(|p| (ns, addr, *p)));
        }
        Ok(ready_tcp)
    }

    /// Redis' port: a real redis-server where one is installed (else the agent's RESP
    /// answer), taken from `servers`.
    fn start_redis(&mut self, servers: &mut Servers) -> Result<Vec<(NsRef, Ipv4Addr)>, LabError> {
        let mut redis = Vec::new();
        let Some(program) = redis_server() else {
            return Ok(redis);
        };
        for k in 0..self.topo.pods.len() {
            let ns = NsRef::Pod(k);
            if !servers
                .tcp
                .get_mut(&ns)
                .is_some_and(|s| s.remove(&REDIS_PORT))
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
            redis.push((ns, self.topo.pods[k].addr));
        }
        Ok(redis)
    }

    /// kube-dns as `dnsmasq`, answering the world's names.
    fn start_kube_dns(&mut self, servers: &Servers) -> Result<(), LabError> {
        let Some((ns, addr, records)) = &servers.dns else {
            return Ok(());
        };
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
        self.spawn_in(&nsn, "dnsmasq", Path::new("dnsmasq"), &args)
    }

    /// An agent in every namespace, serving the ports left in `servers`.
    fn start_agents(&mut self, helper: &Helper, servers: &Servers) -> Result<(), LabError> {
        for ns in &self.topo.namespaces() {
            let mut args: Vec<String> = helper.args.clone();
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
            self.spawn_in(&nsn, &format!("agent-{key}"), &helper.program, &args)?;
        }
        Ok(())
    }

    /// Waits until every process answers: agents, proxies, captures, gateways, redis,
    /// kube-dns (in that order), all within [`READY_WITHIN`].
    fn wait_ready(&mut self, servers: &Servers, started: &Started) -> Result<(), LabError> {
        let deadline = Instant::now() + READY_WITHIN;
        let fast = Duration::from_millis(10);
        let slow = Duration::from_millis(20);
        for ns in self.topo.namespaces() {
            self.wait_for(
                deadline,
                fast,
                format!("agent in {}", self.netns(ns)),
                |lab| wire::call(&lab.socket(ns), &Request::Ping, Duration::from_secs(2)).is_ok(),
            )?;
        }
        // The proxies listen before any traffic: until then the datapath drops what it
        // would redirect to them, so probing earlier would report spurious drops.
        // Agents: enforced (and their proxies listening) before any traffic.
        for i in 0..self.topo.nodes.len() {
            let node = &self.topo.nodes[i];
            if !self.agents || !node.cilium || node.scenario_node.is_none() {
                continue;
            }
            let what = format!("membrane agent of node {}", node.name);
            self.wait_for(deadline, fast, what, |lab| lab.agent_ready(i).exists())?;
        }
        let proxy_nodes = if self.proxies && !self.agents {
            self.topo.nodes.len()
        } else {
            0
        };
        for i in 0..proxy_nodes {
            let what = format!("the proxies of node {}", self.topo.nodes[i].name);
            self.wait_for(deadline, fast, what, |lab| lab.proxy_ready(i).exists())?;
        }
        for i in 0..self.topo.nodes.len() {
            let what = format!("tcpdump in node {}", self.topo.nodes[i].name);
            self.wait_for(deadline, fast, what, |lab| {
                std::fs::metadata(lab.pcap(i)).map_or(0, |m| m.len()) >= 24
            })?;
        }
        for &(ns, addr, port) in &started.gateways {
            let what = format!("the gateway in {}", self.netns(ns));
            self.wait_for(deadline, fast, what, |lab| {
                let req = Request::Tcp {
                    src: addr,
                    sport: 0,
                    dst: addr,
                    port,
                    timeout_ms: 200,
                };
                let r = wire::call(&lab.socket(ns), &req, Duration::from_secs(2));
                r.is_ok_and(|r| r.delivered && !r.refused)
            })?;
        }
        for &(ns, addr) in &started.redis {
            let what = format!("redis-server in {}", self.netns(ns));
            self.wait_for(deadline, slow, what, |lab| {
                let req = Request::Redis {
                    src: addr,
                    sport: 0,
                    dst: addr,
                    port: REDIS_PORT,
                    timeout_ms: 200,
                };
                let r = wire::call(&lab.socket(ns), &req, Duration::from_secs(3));
                r.is_ok_and(|r| r.body.as_deref().is_some_and(|b| b.starts_with("+PONG")))
            })?;
        }
        if let Some((ns, addr, _)) = &servers.dns {
            let (ns, addr) = (*ns, *addr);
            let ready = self.wait_for(deadline, slow, String::new(), |lab| {
                let req = Request::Dns {
                    src: addr,
                    sport: 0,
                    server: addr,
                    name: "ready.membrane.".into(),
                    timeout_ms: 200,
                };
                let r = wire::call(&lab.socket(ns), &req, Duration::from_secs(2));
                r.is_ok_and(|r| r.delivered)
            });
            if let Err(LabError::NotReady(_)) = ready {
                return Err(LabError::KubeDnsNotReady);
            }
            ready?;
        }
        Ok(())
    }

    /// Polls `ready` every `pause` until it holds; fails if a lab process exited, or with
    /// "`what` did not start" after `deadline`.
    fn wait_for(
        &mut self,
        deadline: Instant,
        pause: Duration,
        what: String,
        ready: impl Fn(&Lab) -> bool,
    ) -> Result<(), LabError> {
        loop {
            if ready(self) {
                return Ok(());
            }
            self.check_children()?;
            if Instant::now() > deadline {
                return Err(LabError::NotReady(what));
            }
            std::thread::sleep(pause);
        }
    }
}
