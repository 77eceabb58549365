//! The compiled nftables text against the engine, offline (no root needed).
//!
//! For random packets between every kind of party of conformance worlds, the verdict of the
//! rendered ruleset (run by `nftsim`, hook by hook, node by node) must be the engine's:
//! which side drops, why (default deny or deny rule), and which proxy L7 entries go to.
//! Update transactions between two worlds must turn one table into the other, in place.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_datapath::nft::compile::{Action, compile_node};
use membrane_datapath::nft::sim::{Packet, Table};
use membrane_datapath::topology::{NsRef, Topology};
use membrane_policy::model::{Direction, Protocol};
use membrane_policy::verdict::{L7Request, Outcome, SideDecision};
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

fn conformance_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance")
}

fn semantics_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/semantics")
}

fn load(name: &str) -> World {
    let path = if name.starts_with("semantics/") {
        semantics_dir().join(name.trim_start_matches("semantics/"))
    } else {
        conformance_dir().join(name)
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let scenario = parse_scenario(&text).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    World::from_scenario(scenario, 0)
}

fn yaml_files(dir: PathBuf, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("scenario dir")
        .filter_map(|e| e.ok())
        .map(|e| format!("{prefix}{}", e.file_name().to_string_lossy()))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    v.sort();
    v
}

fn all_conformance() -> Vec<String> {
    yaml_files(conformance_dir(), "")
}

/// A small deterministic PRNG (xorshift): reproducible failures without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Compiled {
    topo: Topology,
    tables: Vec<Table>,
    ports: Vec<u16>,
}

fn compile_world(world: &World) -> Compiled {
    let topo = Topology::plan(world);
    let inputs = topo.node_inputs(world);
    // Port boundaries come from the engine's own keys (not from the compiled runs, which
    // would hide a flattening mistake's boundaries from the sampler).
    let mut ports: BTreeSet<u16> = [0, 1, 53, 80, 443, 8080, 65535].into_iter().collect();
    for a in topo.all_addrs() {
        let Some(party) = world.party(&a.to_string()) else {
            continue;
        };
        for d in [Direction::Egress, Direction::Ingress] {
            let Some(policy) = world.policy(party, d) else {
                continue;
            };
            for k in policy.map.keys() {
                let (lo, hi) = k.port_range();
                for p in [lo, hi] {
                    ports.insert(p);
                    ports.insert(p.saturating_sub(1));
                    ports.insert(p.saturating_add(1));
                }
            }
        }
    }
    let mut tables = Vec::new();
    for input in &inputs {
        let text = compile_node(input).render();
        let table = Table::load(&text).unwrap_or_else(|e| {
            panic!("{}: node {}: {e}\n{text}", world.scenario.name, input.node)
        });
        tables.push(table);
    }
    Compiled {
        topo,
        tables,
        ports: ports.into_iter().collect(),
    }
}

/// What the engine says for one side, in the terms the datapath can show.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Side {
    Pass,
    Proxy(&'static str),
    Drop(&'static str),
}

fn side(d: &SideDecision) -> Side {
    match d.outcome {
        Outcome::DefaultDeny => Side::Drop("default-deny"),
        Outcome::DenyRule => Side::Drop("deny-rule"),
        _ => match d.proxy.as_ref().map(|p| p.as_str()) {
            Some("dns") => Side::Proxy("to_dns_proxy"),
            Some("tls") => Side::Proxy("to_tls_proxy"),
            Some(_) => Side::Proxy("to_http_proxy"),
            None => Side::Pass,
        },
    }
}

fn endpoint_key(topo: &Topology, ns: NsRef) -> String {
    match ns {
        NsRef::Pod(k) => topo.pods[k].key.clone(),
        NsRef::Node(k) => format!("h{k}"),
        NsRef::World => String::new(),
    }
}

fn node_of(topo: &Topology, ns: NsRef) -> Option<usize> {
    match ns {
        NsRef::Pod(k) => Some(topo.pods[k].node),
        NsRef::Node(k) => Some(k),
        NsRef::World => None,
    }
}

/// Runs one packet through the nodes it crosses; returns (drop log prefix, proxies).
fn datapath(
    c: &Compiled,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    port: u16,
) -> (Option<String>, Vec<(String, String)>) {
    let s = c.topo.locate(src).expect("src placed");
    let d = c.topo.locate(dst).expect("dst placed");
    let (sn, dn) = (node_of(&c.topo, s), node_of(&c.topo, d));
    let mut passes: Vec<(usize, bool)> = Vec::new();
    if let Some(n) = sn {
        passes.push((n, matches!(s, NsRef::Node(_))));
    }
    if let Some(n) = dn
        && sn != Some(n)
    {
        passes.push((n, false));
    }
    let mut proxies = Vec::new();
    for (n, local_out) in passes {
        let p = Packet {
            src,
            dst,
            proto,
            port,
            local_out,
        };
        let out = c.tables[n].eval(&p).expect("eval");
        proxies.extend(out.proxies);
        if !out.accepted {
            return (out.log, proxies);
        }
    }
    (None, proxies)
}

fn check_world(name: &str, packets: usize, seed: u64) -> usize {
    let world = load(name);
    let c = compile_world(&world);
    let addrs: Vec<Ipv4Addr> = c.topo.all_addrs().into_iter().collect();
    let mut rng = Rng(seed);
    let mut checked = 0;
    for _ in 0..packets {
        let src = addrs[rng.below(addrs.len())];
        let dst = addrs[rng.below(addrs.len())];
        let (s, d) = (
            c.topo.locate(src).expect("src"),
            c.topo.locate(dst).expect("dst"),
        );
        // Traffic inside one namespace never crosses the datapath.
        if s == d {
            continue;
        }
        let (proto, protocol) = match rng.below(4) {
            0 => (6, Protocol::Tcp),
            1 => (17, Protocol::Udp),
            2 => (132, Protocol::Sctp),
            _ => (1, Protocol::Icmp),
        };
        let port = if proto == 1 {
            [0u16, 3, 8, 11, 13, 128][rng.below(6)]
        } else if rng.below(8) == 0 {
            rng.below(65536) as u16
        } else {
            c.ports[rng.below(c.ports.len())]
        };
        let from = world.party(&src.to_string()).expect("party");
        let to = world.party(&dst.to_string()).expect("party");
        let decision = world.decide(from, to, protocol, port, &L7Request::None, false);
        let eg = side(&decision.egress);
        let ing = decision.ingress.as_ref().map_or(Side::Pass, side);
        let mut want_drop = None;
        let mut want_proxies: Vec<(String, String)> = Vec::new();
        match eg {
            Side::Drop(r) => want_drop = Some(("egress", r, endpoint_key(&c.topo, s))),
            Side::Proxy(p) => {
                want_proxies.push((format!("{}_egr", endpoint_key(&c.topo, s)), p.into()))
            }
            Side::Pass => {}
        }
        if want_drop.is_none() {
            match ing {
                Side::Drop(r) => want_drop = Some(("ingress", r, endpoint_key(&c.topo, d))),
                Side::Proxy(p) => {
                    want_proxies.push((format!("{}_ing", endpoint_key(&c.topo, d)), p.into()))
                }
                Side::Pass => {}
            }
        }
        let (log, proxies) = datapath(&c, src, dst, proto, port);
        let got_drop = log.as_ref().map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[1].to_string(), w[2].to_string(), w[3].to_string())
        });
        let want = want_drop.map(|(a, b, k)| (a.to_string(), b.to_string(), k));
        assert_eq!(
            got_drop,
            want,
            "{name}: {src} → {dst} proto {proto} port {port}: datapath drop vs engine\n\
             engine egress {:?} ingress {:?}",
            decision.egress.outcome,
            decision.ingress.as_ref().map(|i| i.outcome)
        );
        if got_drop.is_none() {
            assert_eq!(
                proxies, want_proxies,
                "{name}: {src} → {dst} proto {proto} port {port}: proxies"
            );
        }
        checked += 1;
    }
    checked
}

/// The semantics vectors: overlapping ranges, deny precedence by longest prefix, port 0,
/// named-port conflicts: the cases where the lookup's order matters most.
#[test]
fn datapath_equals_engine_lookup_on_every_semantics_world() {
    let mut total = 0;
    for (i, name) in yaml_files(semantics_dir(), "semantics/").iter().enumerate() {
        total += check_world(name, 3000, 0xD1B5_4A32_D192_ED03 ^ (i as u64 + 1));
    }
    assert!(total > 50_000, "only {total} packets checked");
}

#[test]
fn datapath_equals_engine_lookup_on_every_conformance_world() {
    let mut total = 0;
    for (i, name) in all_conformance().iter().enumerate() {
        total += check_world(name, 1500, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    }
    assert!(total > 50_000, "only {total} packets checked");
}

/// Worlds whose policies use every level of the lookup: deny rules over ranges, L7 rules,
/// ICMP types, named ports, CIDR and entity peers.
#[test]
fn datapath_equals_engine_lookup_many_packets_on_rich_worlds() {
    for name in [
        "client-egress-to-echo-deny-port-range.yaml",
        "echo-ingress-l7.yaml",
        "client-ingress-from-other-client-icmp-deny.yaml",
        "k8s-ingress-named-port.yaml",
        "client-egress-to-cidr-deny.yaml",
        "host-firewall-ingress.yaml",
        "to-fqdns.yaml",
    ] {
        check_world(name, 20_000, 42);
    }
}

#[test]
fn flattening_keeps_the_longest_prefix() {
    use membrane_datapath::nft::compile::{Run, flatten_prefixes};
    // 8000-8003 deny inside 8000-8015 allow inside 0/0 is not a prefix (handled elsewhere).
    let runs = flatten_prefixes(
        &[
            (8000, 12, Action::Allow),
            (8000, 14, Action::Deny),
            (8002, 16, Action::HttpProxy),
        ],
        u16::MAX,
    );
    assert_eq!(
        runs,
        vec![
            Run {
                lo: 8000,
                hi: 8001,
                action: Action::Deny
            },
            Run {
                lo: 8002,
                hi: 8002,
                action: Action::HttpProxy
            },
            Run {
                lo: 8003,
                hi: 8003,
                action: Action::Deny
            },
            Run {
                lo: 8004,
                hi: 8015,
                action: Action::Allow
            },
        ]
    );
}

fn canonical(t: &Table) -> String {
    // Element order is not meaningful; compare sorted renderings of map sizes and behaviour.
    let mut sizes: Vec<(String, usize)> = t.map_sizes().into_iter().collect();
    sizes.sort();
    format!("{sizes:?}")
}

/// Every update between two worlds with the same pods turns one table into the other, in
/// one transaction the interpreter accepts (as the kernel would), and packets then behave as
/// with the freshly loaded table.
#[test]
fn updates_turn_one_table_into_the_other_in_place() {
    let names = [
        "client-egress.yaml",
        "client-egress-to-echo-deny-port-range.yaml",
        "echo-ingress-l7.yaml",
        "no-policies.yaml",
        "host-firewall-egress.yaml",
        "client-ingress-icmp.yaml",
        "to-fqdns.yaml",
        "all-entities-deny.yaml",
    ];
    let worlds: Vec<World> = names.iter().map(|n| load(n)).collect();
    let compiled: Vec<Vec<_>> = worlds
        .iter()
        .map(|w| {
            let topo = Topology::plan(w);
            topo.node_inputs(w).iter().map(compile_node).collect()
        })
        .collect();
    let mut rng = Rng(7);
    for (a, ra) in compiled.iter().enumerate() {
        for (b, rb) in compiled.iter().enumerate() {
            assert_eq!(ra.len(), rb.len(), "same nodes");
            for (na, nb) in ra.iter().zip(rb) {
                let mut t = Table::load(&na.render()).expect("load a");
                let tx = nb.update_from(na);
                assert!(!tx.contains("delete table"), "never delete the table");
                t.apply(&tx)
                    .unwrap_or_else(|e| panic!("{} → {}: {e}\n{tx}", names[a], names[b]));
                let fresh = Table::load(&nb.render()).expect("load b");
                assert_eq!(
                    canonical(&t),
                    canonical(&fresh),
                    "{} → {}",
                    names[a],
                    names[b]
                );
                let topo = Topology::plan(&worlds[b]);
                let addrs: Vec<Ipv4Addr> = topo.all_addrs().into_iter().collect();
                for _ in 0..300 {
                    let p = Packet {
                        src: addrs[rng.below(addrs.len())],
                        dst: addrs[rng.below(addrs.len())],
                        proto: [6u8, 17, 1][rng.below(3)],
                        port: [53u16, 80, 8080, 8, 443, 9090][rng.below(6)],
                        local_out: rng.below(2) == 0,
                    };
                    assert_eq!(
                        t.eval(&p),
                        fresh.eval(&p),
                        "{} → {}: {p:?}",
                        names[a],
                        names[b]
                    );
                }
                // Updating to the same ruleset is a no-op.
                assert_eq!(nb.update_from(nb).lines().count(), 1);
            }
        }
    }
}

#[test]
fn host_network_pods_share_their_node_and_the_world_holds_the_rest() {
    let world = load("client-ingress.yaml");
    let topo = Topology::plan(&world);
    let node1 = topo
        .nodes
        .iter()
        .find(|n| n.name == "node1")
        .expect("node1");
    assert_eq!(node1.addrs, vec![Ipv4Addr::new(172, 18, 0, 2)]);
    assert!(
        topo.world_addrs.contains(&Ipv4Addr::new(172, 18, 0, 4)),
        "node without Cilium"
    );
    assert!(topo.world_addrs.contains(&Ipv4Addr::new(1, 1, 1, 1)));
    let host = world.party("host-netns-node1").expect("party");
    assert!(
        matches!(topo.place(host), Some((NsRef::Node(_), a)) if IpAddr::V4(a) == IpAddr::from([172, 18, 0, 2]))
    );
    // The ipcache differs per node: a node is host on itself and remote-node elsewhere.
    let inputs = topo.node_inputs(&world);
    let n1 = Ipv4Addr::new(172, 18, 0, 2);
    assert_eq!(inputs[0].ip2id[&n1], 1);
    assert_eq!(inputs[1].ip2id[&n1], 6);
}
