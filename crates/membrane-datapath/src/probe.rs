//! Flows as real traffic: each scenario flow becomes probes sent from inside the source's
//! namespace, and the result is compared with the flow's expected verdict and with the
//! offline engine, including which side dropped it and why.
//!
//! "Delivered" means the destination got it: a TCP handshake, a UDP datagram the
//! destination echoed or recorded, an SCTP INIT or ICMP message the destination's agent
//! saw, a DNS answer. "Dropped" means a policy drop was logged to NFLOG for exactly that
//! packet (its 5-tuple, or ICMP identifier): a deny is never inferred from silence alone.
//! A probe with neither is retried with longer timeouts, then reported as a failure.
//!
//! Flows whose verdict depends on L7 (HTTP 403, DNS REFUSED, TLS denied, or allowed through
//! a proxy) are probed through the lab's proxies (HTTP requests, TLS ClientHellos, DNS
//! answer codes) when it runs them ([`plan_with`]), and skipped otherwise. Gateway flows
//! (with proxies) are HTTP requests to the gateway's forwarder (`gateway.rs`), which
//! connects to the route's backend with the `ingress` identity; TCP flows to port 6379 send
//! a Redis `PING` and need `+PONG`.

use crate::events::{Collector, DropEvent};
use crate::lab::{Lab, LabOptions};
use crate::layout::REDIS_PORT;
use crate::source::load_world;
use crate::topology::{NsRef, Topology};
use crate::wire::{self, Reply, Request, WireError};
use membrane_cluster::runner::{Evaluation, describe_flow, evaluate_flow};
use membrane_cluster::scenario::FlowSpec;
use membrane_cluster::world::{Party, World};
use membrane_policy::model::Direction;
use membrane_policy::verdict::{FlowDecision, Verdict};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What a DNS query stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsPurpose {
    /// A `dns:` flow: the answer's code is the verdict (dns-ok, dns-refused).
    Query,
    /// The lookup of an external name before connecting to it.
    Lookup,
    /// A plain UDP/53 flow to kube-dns: dnsmasq owns the port and only answers DNS, so the
    /// probe is a query, and any answer means delivered.
    Reach,
}

/// One thing to send.
#[derive(Debug, Clone)]
pub enum Step {
    /// A DNS query to kube-dns; `expect_addr`: the address the flow then connects to.
    Dns {
        from: NsRef,
        src: Ipv4Addr,
        server_ns: NsRef,
        server: Ipv4Addr,
        name: String,
        expect_addr: Option<Ipv4Addr>,
        purpose: DnsPurpose,
    },
    /// An HTTP request through the lab's proxies (`headers` from the flow).
    Http {
        from: NsRef,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        method: String,
        path: String,
        host: String,
        headers: Vec<(String, String)>,
    },
    /// A Redis `PING` (port 6379): `+PONG` is delivered.
    Redis {
        from: NsRef,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
    },
    /// A TLS ClientHello with `sni` through the lab's proxies.
    Tls {
        from: NsRef,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        sni: String,
    },
    /// A connection (TCP), datagram (UDP), INIT (SCTP) or ICMP message.
    Send {
        proto: u8,
        icmp_type: u8,
        from: NsRef,
        src: Ipv4Addr,
        to: NsRef,
        dst: Ipv4Addr,
        port: u16,
    },
}

/// Where the engine drops a flow: direction, reason, endpoint key.
pub type DropSide = (Direction, String, String);

/// A flow, ready to probe: everything the engine says is computed up front, because the
/// world is not shared between the probing threads.
#[derive(Debug, Clone)]
pub struct FlowPlan {
    pub index: usize,
    pub line: u32,
    pub label: String,
    pub expect: Verdict,
    pub engine: Option<Verdict>,
    pub engine_drop: Option<DropSide>,
    /// The flow's own `drop:` field.
    pub declared_drop: Option<Direction>,
    pub skip: Option<String>,
    pub steps: Vec<Step>,
    /// Sent to a Gateway (its forwarder makes the backend connection).
    pub gateway: bool,
    /// Source and destination share a namespace (a hostNetwork pod and its own node, or
    /// two outside addresses in the world namespace): the probe goes over loopback.
    pub loopback: bool,
}

fn endpoint_key(topo: &Topology, party: Party) -> Option<String> {
    match topo.place(party)?.0 {
        NsRef::Pod(k) => Some(topo.pods[k].key.clone()),
        NsRef::Node(k) => Some(format!("h{k}")),
        NsRef::World => None,
    }
}

/// Why a flow's verdict depends on an L7 proxy, if it does.
pub fn l7_dependence(flow: &FlowSpec, e: &Evaluation) -> Option<String> {
    if matches!(
        flow.expect,
        Verdict::Http403 | Verdict::TlsDenied | Verdict::DnsRefused
    ) {
        return Some(format!(
            "expects {}: decided by an L7 proxy (the proxies are the next step)",
            flow.expect
        ));
    }
    if e.gateway.is_some() {
        return Some("goes through a Gateway's proxy".into());
    }
    if matches!(e.verdict, Verdict::Allow | Verdict::DnsOk) {
        for (what, d) in [
            ("DNS lookup", e.lookup.as_ref()),
            ("connection", e.decision.as_ref()),
        ] {
            let Some(d) = d else { continue };
            for s in [Some(&d.egress), d.ingress.as_ref()].into_iter().flatten() {
                if let (true, Some(p)) = (s.outcome.passes(), &s.proxy) {
                    return Some(format!(
                        "{what} allowed through the {p} proxy at {}: the proxies are the next step",
                        s.direction
                    ));
                }
            }
        }
    }
    None
}

fn blocking(topo: &Topology, d: &FlowDecision, from: Party, to: Party) -> Option<DropSide> {
    let side = d.blocking_side()?;
    let party = if side.direction == Direction::Egress {
        from
    } else {
        to
    };
    Some((
        side.direction,
        side.outcome.reason().to_string(),
        endpoint_key(topo, party).unwrap_or_default(),
    ))
}

/// Why a flow cannot be probed in the lab (its plan's `skip`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The engine could not evaluate the flow.
    #[error("{0}")]
    Engine(String),
    /// The flow is decided at L7 and the lab runs no proxies: why.
    #[error("{0}")]
    NeedsProxies(String),
    #[error("{0} is not in the lab (IPv6 or a duplicate address)")]
    NotInLab(String),
    #[error("unknown source")]
    UnknownSource,
    #[error("unknown destination")]
    UnknownDestination,
    #[error("no kube-dns endpoint")]
    NoKubeDns,
    #[error("a flow needs `to` or `dns`")]
    NoDestination,
    #[error("a TCP/UDP/SCTP flow needs a port")]
    NoPort,
    #[error("ICMPv6: the lab is IPv4 only")]
    Icmpv6,
    #[error("protocol {0} cannot be probed")]
    Protocol(String),
    #[error("a pod to itself: the lab has no other replica of it to send it to")]
    PodToItself,
}

/// A probe request its agent did not carry out.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no agent in namespace {0:?}")]
    NoAgent(NsRef),
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The agent's own error (a socket it could not open, …).
    #[error("{0}")]
    Agent(String),
    #[error("agent call ended without a reply")]
    Ended,
}

fn proto_of(f: &FlowSpec) -> Result<(u8, u8), PlanError> {
    match f.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Ok((6, 0)),
        "UDP" => Ok((17, 0)),
        "SCTP" => Ok((132, 0)),
        "ICMP" => match f.icmp {
            Some((true, _)) => Err(PlanError::Icmpv6),
            Some((false, t)) => Ok((1, t)),
            None => Ok((1, 8)),
        },
        p => Err(PlanError::Protocol(p.to_string())),
    }
}

/// Plans every flow of a world, for a lab without proxies.
pub fn plan(world: &World, topo: &Topology) -> Vec<FlowPlan> {
    plan_with(world, topo, false)
}

/// Plans every flow of a world; with `proxies`, flows decided at L7 are probed too.
pub fn plan_with(world: &World, topo: &Topology, proxies: bool) -> Vec<FlowPlan> {
    world
        .scenario
        .flows
        .iter()
        .enumerate()
        .map(|(index, f)| {
            let mut p = FlowPlan {
                index,
                line: f.span.line,
                label: describe_flow(f),
                expect: f.expect,
                engine: None,
                engine_drop: None,
                declared_drop: f.drop,
                skip: None,
                steps: vec![],
                gateway: false,
                loopback: false,
            };
            if let Err(e) = plan_flow(world, topo, f, &mut p, proxies) {
                p.skip = Some(e.to_string());
            }
            p
        })
        .collect()
}

fn place(topo: &Topology, party: Party, what: &str) -> Result<(NsRef, Ipv4Addr), PlanError> {
    topo.place(party)
        .ok_or_else(|| PlanError::NotInLab(what.to_string()))
}

fn plan_flow(
    world: &World,
    topo: &Topology,
    f: &FlowSpec,
    p: &mut FlowPlan,
    proxies: bool,
) -> Result<(), PlanError> {
    let e = evaluate_flow(world, f).map_err(PlanError::Engine)?;
    p.engine = Some(e.verdict);
    if let Some(why) = l7_dependence(f, &e)
        && !proxies
    {
        return Err(PlanError::NeedsProxies(why));
    }
    let from = world.party(&f.from).ok_or(PlanError::UnknownSource)?;
    let (from_ns, src) = place(topo, from, &f.from)?;
    let dns = world.kube_dns();
    let lookup = |name: &str, expect_addr, purpose| -> Result<Step, PlanError> {
        let server = dns.ok_or(PlanError::NoKubeDns)?;
        let (server_ns, server_addr) = place(topo, server, "kube-dns")?;
        Ok(Step::Dns {
            from: from_ns,
            src,
            server_ns,
            server: server_addr,
            name: name.to_string(),
            expect_addr,
            purpose,
        })
    };
    if let Some(q) = &f.dns {
        p.steps.push(lookup(q, None, DnsPurpose::Query)?);
        if let (Some(d), Some(server)) = (&e.decision, dns) {
            p.engine_drop = blocking(topo, d, from, server);
        }
        return Ok(());
    }
    let to_name = f.to.as_deref().ok_or(PlanError::NoDestination)?;
    let to = world.party(to_name).ok_or(PlanError::UnknownDestination)?;
    let (to_ns, dst) = place(topo, to, to_name)?;
    if let Party::World {
        learned_as: Some(_),
        ..
    } = to
    {
        p.steps
            .push(lookup(to_name, Some(dst), DnsPurpose::Lookup)?);
        if let (Some(l), Some(server)) = (&e.lookup, dns)
            && l.verdict != Verdict::DnsOk
        {
            p.engine_drop = blocking(topo, l, from, server);
        }
    }
    let (proto, icmp_type) = proto_of(f)?;
    let port = if proto == 1 {
        u16::from(icmp_type)
    } else {
        f.port.ok_or(PlanError::NoPort)?
    };
    // A node and its hostNetwork pods share the node's stack, and the world namespace holds
    // every outside address: such flows go over `lo` there, as they do in a cluster. The node's
    // ruleset lets loopback pass (`iif lo`/`oif lo accept`): Cilium's host firewall never sees
    // what a host sends to itself, and the engine agrees (neither side enforced).
    p.loopback = from_ns == to_ns;
    if p.loopback && matches!(from_ns, NsRef::Pod(_)) {
        // A pod to its own address never leaves its namespace either, but the engine reads
        // a workload to itself as traffic between its replicas, which the datapath does
        // police: a lab pod has no replica to send it to.
        return Err(PlanError::PodToItself);
    }
    let to_kube_dns = dns.and_then(|d| topo.place(d)) == Some((to_ns, dst));
    if let Some((_, client_hop)) = &e.gateway {
        // Through a Gateway: the request goes to the gateway's forwarder, which connects to
        // the backend itself. Only a drop of the client's own packets can be matched.
        if client_hop.verdict != Verdict::Allow {
            p.engine_drop = blocking(topo, client_hop, from, to);
        }
        p.gateway = true;
    }
    if let (true, 6, Some(h)) = (proxies, proto, &f.http) {
        let mut headers = h.headers.clone();
        headers.extend(f.inject_headers.iter().cloned());
        p.steps.push(Step::Http {
            from: from_ns,
            src,
            dst,
            port,
            method: h.method.clone(),
            path: h.path.clone(),
            host: if h.host.is_empty() {
                dst.to_string()
            } else {
                h.host.clone()
            },
            headers,
        });
    } else if let (true, 6, Some(t)) = (proxies, proto, &f.tls) {
        p.steps.push(Step::Tls {
            from: from_ns,
            src,
            dst,
            port,
            sni: t.sni.clone(),
        });
    } else if proxies
        && proto == 6
        && e.decision.as_ref().is_some_and(|d| {
            [Some(&d.egress), d.ingress.as_ref()]
                .into_iter()
                .flatten()
                .any(|s| s.proxy.is_some())
        })
    {
        // Through the HTTP proxy without a request of its own: a plain GET.
        p.steps.push(Step::Http {
            from: from_ns,
            src,
            dst,
            port,
            method: "GET".into(),
            path: "/".into(),
            host: dst.to_string(),
            headers: vec![],
        });
    } else if proto == 6 && port == REDIS_PORT && f.http.is_none() {
        p.steps.push(Step::Redis {
            from: from_ns,
            src,
            dst,
            port,
        });
    } else if proto == 17 && port == 53 && to_kube_dns {
        p.steps
            .push(lookup("reach.membrane.", None, DnsPurpose::Reach)?);
    } else {
        p.steps.push(Step::Send {
            proto,
            icmp_type,
            from: from_ns,
            src,
            to: to_ns,
            dst,
            port,
        });
    }
    if p.engine_drop.is_none()
        && !p.gateway
        && let Some(d) = &e.decision
    {
        p.engine_drop = blocking(topo, d, from, to);
    }
    Ok(())
}

/// What one step did.
#[derive(Debug, Clone)]
pub enum StepResult {
    Delivered {
        reply: Reply,
        note: Option<String>,
    },
    Dropped(DropEvent),
    /// Neither delivered nor dropped by policy.
    Lost,
    Error(String),
}

/// The agents' sockets, shareable between probing threads.
#[derive(Debug, Clone)]
pub struct Agents {
    sockets: BTreeMap<NsRef, PathBuf>,
}

impl Agents {
    pub fn of(lab: &Lab) -> Agents {
        Agents {
            sockets: lab
                .topo
                .namespaces()
                .into_iter()
                .map(|n| (n, lab.socket(n)))
                .collect(),
        }
    }

    fn call(&self, ns: NsRef, req: &Request) -> Result<Reply, ProbeError> {
        let sock = self.sockets.get(&ns).ok_or(ProbeError::NoAgent(ns))?;
        let r = wire::call(sock, req, Duration::from_secs(15))?;
        match &r.error {
            Some(e) => Err(ProbeError::Agent(e.clone())),
            None => Ok(r),
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Identifiers of probes (UDP nonces, SCTP tags, ICMP ids): distinct within a process in the
/// low 16 bits (ICMP ids are 16 bits), and between processes probing one lab at once.
fn next_id() -> u32 {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let base = std::process::id().wrapping_mul(2_654_435_761) & 0xffff_0000;
    let id = base | (n.wrapping_add(std::process::id()) & 0xffff);
    if id == 0 { 1 } else { id }
}

/// The body of the L7 proxy's `403` (Envoy's, and Cilium's).
const ACCESS_DENIED: &str = membrane_proxy::http::ACCESS_DENIED_BODY;

/// How long to wait for a drop record once a probe came back undelivered.
const DROP_GRACE: Duration = Duration::from_millis(400);

/// The packet a probe sends, as its drop record would show it (`sport` is the ICMP id).
#[derive(Debug, Clone, Copy)]
struct Tuple {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
}

impl Tuple {
    fn matches(&self, e: &DropEvent) -> bool {
        e.src == self.src
            && e.dst == self.dst
            && e.proto == self.proto
            && if self.proto == 1 {
                e.icmp.map(|i| i.1) == Some(self.sport)
            } else {
                e.sport == self.sport && e.dport == self.dport
            }
    }
}

fn await_drop(collector: &Collector, t: Tuple) -> StepResult {
    collector
        .wait_for(|e| t.matches(e), DROP_GRACE)
        .map_or(StepResult::Lost, StepResult::Dropped)
}

/// Source ports for probes, below the kernel's ephemeral range (32768-60999) so that they
/// never meet a port the kernel picked, and spread by process so that two `lab probe`
/// runs against one lab do not reuse each other's tuples.
fn next_port() -> u16 {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    20000 + (n.wrapping_add(std::process::id().wrapping_mul(7919)) % 12700) as u16
}

/// Sends `req` through the source's agent while watching for the packet's drop record:
/// a dropped probe is known as soon as its record arrives (milliseconds), not when its
/// timeout expires, which is what makes denied flows cheap.
fn race(
    agents: &Agents,
    collector: &Collector,
    from: NsRef,
    req: Request,
    t: Tuple,
) -> Result<Result<Reply, ProbeError>, DropEvent> {
    let (tx, rx) = std::sync::mpsc::channel();
    let agents2 = agents.clone();
    std::thread::spawn(move || {
        let _ = tx.send(agents2.call(from, &req));
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(2)) {
            Ok(r) => return Ok(r),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Ok(Err(ProbeError::Ended));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(e) = collector.wait_for(|e| t.matches(e), Duration::from_millis(3)) {
            return Err(e);
        }
    }
}

/// A request/answer probe (DNS, HTTP, Redis, TLS): the answer, the drop record, or the
/// record that arrives within the grace period after a silent timeout.
fn exchange(
    agents: &Agents,
    collector: &Collector,
    from: NsRef,
    req: Request,
    t: Tuple,
) -> StepResult {
    match race(agents, collector, from, req, t) {
        Err(e) => StepResult::Dropped(e),
        Ok(Err(e)) => StepResult::Error(e.to_string()),
        Ok(Ok(r)) if r.delivered => StepResult::Delivered {
            reply: r,
            note: None,
        },
        Ok(Ok(_)) => await_drop(collector, t),
    }
}

fn poll_seen(
    agents: &Agents,
    collector: &Collector,
    ns: NsRef,
    key: (u8, Ipv4Addr, u64),
    t: Tuple,
    wait: Duration,
) -> Option<Result<(), DropEvent>> {
    let deadline = Instant::now() + wait;
    loop {
        let (proto, src, key) = key;
        if agents
            .call(ns, &Request::Seen { proto, src, key })
            .is_ok_and(|r| r.seen)
        {
            return Some(Ok(()));
        }
        if let Some(e) = collector.wait_for(|e| t.matches(e), Duration::from_millis(5)) {
            return Some(Err(e));
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

fn send_once(agents: &Agents, collector: &Collector, step: &Step, timeout: Duration) -> StepResult {
    let ms = timeout.as_millis() as u64;
    let delivered = |reply: Reply, note: Option<String>| StepResult::Delivered { reply, note };
    match step {
        Step::Dns {
            from,
            src,
            server,
            name,
            ..
        } => {
            let t = Tuple {
                src: *src,
                dst: *server,
                proto: 17,
                sport: next_port(),
                dport: 53,
            };
            let req = Request::Dns {
                src: *src,
                sport: t.sport,
                server: *server,
                name: name.clone(),
                timeout_ms: ms,
            };
            exchange(agents, collector, *from, req, t)
        }
        Step::Http {
            from,
            src,
            dst,
            port,
            method,
            path,
            host,
            headers,
        } => {
            let t = Tuple {
                src: *src,
                dst: *dst,
                proto: 6,
                sport: next_port(),
                dport: *port,
            };
            let req = Request::Http {
                src: *src,
                sport: t.sport,
                dst: *dst,
                port: *port,
                method: method.clone(),
                path: path.clone(),
                host: host.clone(),
                headers: headers.clone(),
                timeout_ms: ms,
            };
            exchange(agents, collector, *from, req, t)
        }
        Step::Redis {
            from,
            src,
            dst,
            port,
        } => {
            let t = Tuple {
                src: *src,
                dst: *dst,
                proto: 6,
                sport: next_port(),
                dport: *port,
            };
            let req = Request::Redis {
                src: *src,
                sport: t.sport,
                dst: *dst,
                port: *port,
                timeout_ms: ms,
            };
            exchange(agents, collector, *from, req, t)
        }
        Step::Tls {
            from,
            src,
            dst,
            port,
            sni,
        } => {
            let t = Tuple {
                src: *src,
                dst: *dst,
                proto: 6,
                sport: next_port(),
                dport: *port,
            };
            let req = Request::Tls {
                src: *src,
                sport: t.sport,
                dst: *dst,
                port: *port,
                sni: sni.clone(),
                timeout_ms: ms,
            };
            exchange(agents, collector, *from, req, t)
        }
        Step::Send {
            proto,
            icmp_type,
            from,
            src,
            to,
            dst,
            port,
        } => {
            let (src, dst, port) = (*src, *dst, *port);
            let mut t = Tuple {
                src,
                dst,
                proto: *proto,
                sport: next_port(),
                dport: port,
            };
            match proto {
                6 => {
                    let req = Request::Tcp {
                        src,
                        sport: t.sport,
                        dst,
                        port,
                        timeout_ms: ms,
                    };
                    match race(agents, collector, *from, req, t) {
                        Err(e) => StepResult::Dropped(e),
                        Ok(Err(e)) => StepResult::Error(e.to_string()),
                        Ok(Ok(r)) if r.refused => delivered(
                            r,
                            Some("reset by the destination: nothing listens there".into()),
                        ),
                        Ok(Ok(r)) if r.delivered => delivered(r, None),
                        Ok(Ok(_)) => await_drop(collector, t),
                    }
                }
                17 => {
                    let nonce = (u64::from(next_id()) << 16) | u64::from(port);
                    let req = Request::Udp {
                        src,
                        sport: t.sport,
                        dst,
                        port,
                        timeout_ms: ms,
                        nonce,
                    };
                    match race(agents, collector, *from, req, t) {
                        Err(e) => StepResult::Dropped(e),
                        Ok(Err(e)) => StepResult::Error(e.to_string()),
                        Ok(Ok(r)) if r.delivered => delivered(r, None),
                        Ok(Ok(r)) => match poll_seen(
                            agents,
                            collector,
                            *to,
                            (17, src, nonce),
                            t,
                            Duration::ZERO,
                        ) {
                            Some(Ok(())) => delivered(
                                r,
                                Some("the destination got it, its echo was lost".into()),
                            ),
                            Some(Err(e)) => StepResult::Dropped(e),
                            None => await_drop(collector, t),
                        },
                    }
                }
                132 => {
                    let tag = next_id();
                    match agents.call(
                        *from,
                        &Request::Sctp {
                            src,
                            dst,
                            port,
                            tag,
                        },
                    ) {
                        Err(e) => StepResult::Error(e.to_string()),
                        Ok(r) => {
                            t.sport = r.sport;
                            let key = (132, src, u64::from(tag));
                            match poll_seen(agents, collector, *to, key, t, timeout) {
                                Some(Ok(())) => delivered(r, None),
                                Some(Err(e)) => StepResult::Dropped(e),
                                None => await_drop(collector, t),
                            }
                        }
                    }
                }
                _ => {
                    t.sport = (next_id() & 0xffff) as u16;
                    t.dport = 0;
                    let req = Request::Icmp {
                        src,
                        dst,
                        icmp_type: *icmp_type,
                        id: t.sport,
                        timeout_ms: ms,
                    };
                    match race(agents, collector, *from, req, t) {
                        Err(e) => StepResult::Dropped(e),
                        Ok(Err(e)) => StepResult::Error(e.to_string()),
                        Ok(Ok(r)) if r.delivered => delivered(r, None),
                        Ok(Ok(r)) => {
                            let key = (1, src, (u64::from(*icmp_type) << 16) | u64::from(t.sport));
                            let wait = if *icmp_type == 8 {
                                Duration::ZERO
                            } else {
                                timeout
                            };
                            match poll_seen(agents, collector, *to, key, t, wait) {
                                Some(Ok(())) => {
                                    let note = (*icmp_type == 8).then(|| {
                                        "the destination got the request, the reply was lost".into()
                                    });
                                    delivered(r, note)
                                }
                                Some(Err(e)) => StepResult::Dropped(e),
                                None => await_drop(collector, t),
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Timeouts of successive attempts. A dropped probe is recognised on the first attempt (its
/// drop is logged); only probes that were neither delivered nor dropped are retried, which
/// keeps a loaded machine from turning a slow allow into a failure.
const ATTEMPTS_MS: [u64; 3] = [250, 1000, 3000];

fn send(agents: &Agents, collector: &Collector, step: &Step) -> (StepResult, u32) {
    let mut last = StepResult::Lost;
    for (i, ms) in ATTEMPTS_MS.iter().enumerate() {
        last = send_once(agents, collector, step, Duration::from_millis(*ms));
        if !matches!(last, StepResult::Lost) {
            return (last, i as u32 + 1);
        }
    }
    (last, ATTEMPTS_MS.len() as u32)
}

/// What probing a flow found.
#[derive(Debug, Clone)]
pub struct ProbeOutcome {
    pub index: usize,
    pub lab: Option<Verdict>,
    pub drop: Option<DropEvent>,
    pub passed: bool,
    pub skipped: Option<String>,
    pub problem: Option<String>,
    pub attempts: u32,
    pub notes: Vec<String>,
}

fn describe_drop(topo: &Topology, e: &DropEvent) -> String {
    format!(
        "dropped at {} of {} ({}) on node {}",
        e.direction,
        e.endpoint_name,
        e.reason,
        topo.nodes.get(e.node).map_or("?", |n| n.name.as_str())
    )
}

fn probe_flow(
    agents: &Agents,
    collector: &Collector,
    topo: &Topology,
    p: &FlowPlan,
) -> ProbeOutcome {
    let mut o = ProbeOutcome {
        index: p.index,
        lab: None,
        drop: None,
        passed: false,
        skipped: p.skip.clone(),
        problem: None,
        attempts: 0,
        notes: vec![],
    };
    if o.skipped.is_some() {
        return o;
    }
    if p.loopback {
        o.notes
            .push("over loopback: source and destination share a namespace".into());
    }
    for step in &p.steps {
        let (r, attempts) = send(agents, collector, step);
        o.attempts += attempts;
        match r {
            StepResult::Error(e) => {
                o.problem = Some(format!("probe error: {e}"));
                return o;
            }
            StepResult::Lost => {
                o.problem = Some(format!(
                    "neither delivered nor dropped by policy after {attempts} attempts ({} ms)",
                    ATTEMPTS_MS.iter().sum::<u64>()
                ));
                return o;
            }
            StepResult::Dropped(e) => {
                o.lab = Some(Verdict::Deny);
                o.notes.push(describe_drop(topo, &e));
                o.drop = Some(e);
                break;
            }
            StepResult::Delivered { reply, note } => {
                o.notes.extend(note);
                if let Step::Dns {
                    purpose: DnsPurpose::Reach,
                    ..
                } = step
                {
                    // Any answer: the datagram reached kube-dns.
                    o.lab = Some(Verdict::Allow);
                } else if let Step::Dns {
                    expect_addr,
                    name,
                    purpose,
                    ..
                } = step
                {
                    match reply.rcode {
                        Some(0) => {}
                        Some(5) => {
                            o.lab = Some(Verdict::DnsRefused);
                            break;
                        }
                        other => {
                            o.problem =
                                Some(format!("DNS {name}: unexpected answer code {other:?}"));
                            return o;
                        }
                    }
                    if let Some(a) = expect_addr
                        && !reply.addrs.contains(a)
                    {
                        o.problem = Some(format!("DNS {name} answered {:?}, not {a}", reply.addrs));
                        return o;
                    }
                    if *purpose == DnsPurpose::Lookup {
                        // With proxies, the DNS proxy's helper writes the learned FQDN
                        // identity into ip2id right after the answer: let it land.
                        std::thread::sleep(Duration::from_millis(30));
                    }
                    o.lab = Some(if *purpose == DnsPurpose::Query {
                        Verdict::DnsOk
                    } else {
                        Verdict::Allow
                    });
                } else if let Step::Http { method, .. } = step {
                    match (reply.status, reply.body.as_deref()) {
                        (Some(403), Some(ACCESS_DENIED)) => o.lab = Some(Verdict::Http403),
                        // The answer to a HEAD has no body: the proxy's denial is the same
                        // head, whose content-length still announces `Access denied\r\n`.
                        (Some(403), Some("") | None)
                            if method == "HEAD"
                                && wire::header(&reply.headers, "content-length")
                                    == Some(ACCESS_DENIED.len().to_string().as_str()) =>
                        {
                            o.lab = Some(Verdict::Http403);
                        }
                        (Some(200), _) => o.lab = Some(Verdict::Allow),
                        (None, _) if reply.closed => {
                            o.notes.push(
                                "the proxy closed the connection without an answer (L3/L4 deny)"
                                    .into(),
                            );
                            o.lab = Some(Verdict::Deny);
                        }
                        (status, body) => {
                            o.problem = Some(format!(
                                "HTTP: unexpected answer {status:?} {body:?}{}",
                                if reply.refused { " (refused)" } else { "" }
                            ));
                            return o;
                        }
                    }
                } else if let Step::Redis { .. } = step {
                    match reply.body.as_deref() {
                        Some(b) if b.starts_with("+PONG") => {
                            o.notes.push("redis answered +PONG".into());
                            o.lab = Some(Verdict::Allow);
                        }
                        other => {
                            o.problem = Some(format!(
                                "redis: no +PONG but {other:?}{}",
                                if reply.refused { " (refused)" } else { "" }
                            ));
                            return o;
                        }
                    }
                } else if let Step::Tls { .. } = step {
                    o.lab = Some(if reply.closed {
                        Verdict::TlsDenied
                    } else {
                        Verdict::Allow
                    });
                } else {
                    o.lab = Some(Verdict::Allow);
                }
            }
        }
    }
    let Some(lab) = o.lab else {
        o.problem = Some("no result".into());
        return o;
    };
    let mut problems = Vec::new();
    if lab != p.expect {
        problems.push(format!("expected {}, the lab did {lab}", p.expect));
    }
    if let Some(engine) = p.engine
        && engine != lab
    {
        problems.push(format!("the engine says {engine}, the lab did {lab}"));
    }
    if let Some(ev) = &o.drop {
        if let Some((d, reason, key)) = &p.engine_drop
            && (*d != ev.direction || *reason != ev.reason || *key != ev.endpoint)
        {
            problems.push(format!(
                "the lab dropped at {} {} ({}), the engine at {d} {key} ({reason})",
                ev.direction, ev.endpoint, ev.reason
            ));
        }
        if let Some(d) = p.declared_drop
            && d != ev.direction
        {
            problems.push(format!(
                "the flow says the drop is at {d}, the lab dropped at {}",
                ev.direction
            ));
        }
    }
    o.passed = problems.is_empty();
    if !problems.is_empty() {
        o.problem = Some(problems.join("; "));
    }
    o
}

/// Probes every planned flow, `jobs` at a time.
pub fn run_plans(
    agents: &Agents,
    collector: &Collector,
    topo: &Topology,
    plans: &[FlowPlan],
    jobs: usize,
) -> Vec<ProbeOutcome> {
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<ProbeOutcome>> = vec![None; plans.len()];
    let slots: Vec<std::sync::Mutex<Option<ProbeOutcome>>> =
        plans.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = plans.get(i) else { break };
                    let o = probe_flow(agents, collector, topo, p);
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(o);
                }
            });
        }
    });
    for (i, s) in slots.into_iter().enumerate() {
        results[i] = s.into_inner().unwrap_or_else(|e| e.into_inner());
    }
    results.into_iter().flatten().collect()
}

/// The lab's answer for one scenario file.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub file: String,
    pub scenario: String,
    pub plans: Vec<FlowPlan>,
    pub outcomes: Vec<ProbeOutcome>,
    /// The lab could not be built or the file not read: every flow failed.
    pub error: Option<String>,
    pub elapsed: Duration,
}

impl FileReport {
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed).count()
    }
    pub fn skipped(&self) -> usize {
        self.outcomes.iter().filter(|o| o.skipped.is_some()).count()
    }
    pub fn failed(&self) -> usize {
        let errors = if self.error.is_some() && self.outcomes.is_empty() {
            self.plans.len().max(1)
        } else {
            0
        };
        self.outcomes.len() - self.passed() - self.skipped() + errors
    }

    /// Text as `membrane test` prints it: a line per file, failures, and with `verbose`
    /// every flow with what the lab saw.
    pub fn text(&self, verbose: bool) -> String {
        let mut s = String::new();
        let status = if self.failed() == 0 { "ok" } else { "FAILED" };
        s.push_str(&format!(
            "{}: {status}: {} passed, {} failed, {} skipped ({:.1} s)\n",
            self.file,
            self.passed(),
            self.failed(),
            self.skipped(),
            self.elapsed.as_secs_f64()
        ));
        if let Some(e) = &self.error {
            s.push_str(&format!("  error: {e}\n"));
        }
        for (p, o) in self.plans.iter().zip(&self.outcomes) {
            let lab = o.lab.map_or("(none)", |v| v.as_str());
            if let Some(why) = &o.skipped {
                if verbose {
                    s.push_str(&format!(
                        "  skip line {}: {}\n       {why}\n",
                        p.line, p.label
                    ));
                }
            } else if !o.passed {
                s.push_str(&format!("  FAIL line {}: {}\n", p.line, p.label));
                s.push_str(&format!(
                    "       expected {}, lab {lab}, engine {}\n",
                    p.expect,
                    p.engine.map_or("(none)", |v| v.as_str())
                ));
                if let Some(pr) = &o.problem {
                    s.push_str(&format!("       {pr}\n"));
                }
                for n in &o.notes {
                    s.push_str(&format!("       {n}\n"));
                }
            } else if verbose {
                s.push_str(&format!("  ok   line {}: {} => {lab}\n", p.line, p.label));
                for n in &o.notes {
                    s.push_str(&format!("       {n}\n"));
                }
            }
        }
        s
    }

    pub fn json(&self) -> Value {
        json!({
            "file": self.file,
            "scenario": self.scenario,
            "passed": self.passed(),
            "failed": self.failed(),
            "skipped": self.skipped(),
            "error": self.error,
            "seconds": self.elapsed.as_secs_f64(),
            "flows": self.plans.iter().zip(&self.outcomes).map(|(p, o)| json!({
                "line": p.line,
                "flow": p.label,
                "expected": p.expect.as_str(),
                "engine": p.engine.map(|v| v.as_str()),
                "lab": o.lab.map(|v| v.as_str()),
                "passed": o.passed,
                "skipped": o.skipped,
                "problem": o.problem,
                "drop": o.drop.as_ref().map(|d| json!({
                    "direction": d.direction.as_str(),
                    "reason": d.reason,
                    "endpoint": d.endpoint_name,
                })),
                "attempts": o.attempts,
            })).collect::<Vec<_>>(),
        })
    }
}

/// Probes the flows of a lab that is up.
pub fn probe_lab(
    world: &World,
    lab: &Lab,
    collector: &Collector,
    jobs: usize,
) -> (Vec<FlowPlan>, Vec<ProbeOutcome>) {
    let plans = plan_with(world, &lab.topo, lab.proxies());
    let outcomes = run_plans(&Agents::of(lab), collector, &lab.topo, &plans, jobs);
    (plans, outcomes)
}

/// Builds a lab for one scenario file, probes every flow and tears the lab down.
pub fn run_file(path: &Path, opts: &LabOptions, jobs: usize) -> FileReport {
    let start = Instant::now();
    let mut report = FileReport {
        file: path.display().to_string(),
        scenario: String::new(),
        plans: vec![],
        outcomes: vec![],
        error: None,
        elapsed: Duration::ZERO,
    };
    let world = match load_world(path) {
        Ok(w) => w,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    report.scenario = world.scenario.name.clone();
    // With proxies, they load this file's policy.
    let mut opts = opts.clone();
    if opts.proxies.is_some() {
        opts.proxies = Some(path.to_path_buf());
    }
    if let Some(agents) = &mut opts.agents {
        agents.source = path.to_path_buf();
    }
    let opts = &opts;
    let lab = match Lab::up(&world, opts) {
        Ok(l) => l,
        Err(e) => {
            report.plans = plan(&world, &Topology::plan(&world));
            report.error = Some(format!("lab: {e}"));
            report.elapsed = start.elapsed();
            return report;
        }
    };
    let collector = lab.drop_collector(false);
    let (plans, outcomes) = probe_lab(&world, &lab, &collector, jobs);
    drop(collector);
    report.plans = plans;
    report.outcomes = outcomes;
    if let Err(e) = lab.down() {
        report.error = Some(format!("teardown: {e}"));
    }
    report.elapsed = start.elapsed();
    report
}

/// `N passed, N failed, N skipped`, as `membrane test` ends.
pub fn summary(reports: &[FileReport]) -> (usize, usize, usize) {
    reports.iter().fold((0, 0, 0), |(p, f, s), r| {
        (p + r.passed(), f + r.failed(), s + r.skipped())
    })
}
