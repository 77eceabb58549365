//! What a lab runs for a world, decided before anything is built: the servers of each
//! namespace, kube-dns, the gateways, the programs needed.

use super::LabError;
use crate::exec::find_program;
use crate::node::gateway::Route;
use crate::topology::{NsRef, Topology};
use membrane_cluster::world::World;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

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
pub(super) fn redis_server() -> Option<PathBuf> {
    find_program("redis-server").or_else(|| {
        let p = PathBuf::from("/usr/bin/redis-server");
        p.is_file().then_some(p)
    })
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
pub fn check_prerequisites<'w>(
    worlds: impl IntoIterator<Item = &'w World>,
) -> Result<(), LabError> {
    let missing: Vec<(&str, &str)> = required_programs(worlds)
        .into_iter()
        .filter(|(program, _)| find_program(program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let programs: Vec<&'static str> = missing.iter().map(|(p, _)| *p).collect();
    let mut packages: Vec<&'static str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    Err(LabError::MissingPrograms { programs, packages })
}

/// A gateway of the world: its namespace, address, the TCP ports flows reach it on, and
/// its routes (first backends, placed in the lab).
pub type GatewayPlan = (NsRef, Ipv4Addr, BTreeSet<u16>, Vec<Route>);

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
            routes.push(Route {
                exact: r.exact,
                path: r.path.clone(),
                backend: std::net::SocketAddrV4::new(baddr, *port),
            });
        }
        out.push((ns, addr, ports, routes));
    }
    out
}
