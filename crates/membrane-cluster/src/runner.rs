//! Runs a scenario's flows through the engine and compares with the expectations.

use crate::scenario::{FlowSpec, GatewayRoute, Scenario};
use crate::world::{Party, World, l7_request};
use membrane_policy::model::{Direction, Protocol};
use membrane_policy::verdict::{FlowDecision, L7Request, Outcome, Verdict};

#[derive(Debug, Clone)]
pub struct FlowResult {
    pub index: usize,
    pub flow: FlowSpec,
    pub actual: Option<Verdict>,
    /// The DNS lookup a flow to an external name made first.
    // Boxed: a result is kept for every flow, and most flows have neither a lookup nor a
    // gateway hop.
    pub lookup: Option<Box<FlowDecision>>,
    /// Through a gateway: the route and the client → gateway hop.
    pub gateway: Option<Box<(String, FlowDecision)>>,
    pub decision: Option<Box<FlowDecision>>,
    pub passed: bool,
    /// Why the flow could not be evaluated, or what differed besides the verdict.
    pub problem: Option<String>,
}

impl FlowResult {
    pub fn skipped(&self) -> bool {
        self.actual.is_none() && self.problem.is_some() && !self.passed
    }
}

#[derive(Debug)]
pub struct ScenarioResult {
    pub name: String,
    pub results: Vec<FlowResult>,
}

impl ScenarioResult {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }
}

pub fn describe_flow(f: &FlowSpec) -> String {
    let mut s = format!("{} → ", f.from);
    match (&f.dns, &f.to) {
        (Some(q), _) => s.push_str(&format!("kube-dns DNS {q}")),
        (None, Some(to)) => {
            s.push_str(to);
            match (f.protocol.as_deref(), f.port, f.icmp) {
                (Some("ICMP"), _, Some((v6, t))) => {
                    s.push_str(&format!(" ICMP{} type {t}", if v6 { "v6" } else { "" }))
                }
                (p, Some(port), _) => s.push_str(&format!(":{port}/{}", p.unwrap_or("TCP"))),
                (p, None, _) => s.push_str(&format!(" {}", p.unwrap_or("TCP"))),
            }
            if let Some(h) = &f.http {
                s.push_str(&format!(" {} {}", h.method, h.path));
            }
            if let Some(t) = &f.tls {
                s.push_str(&format!(" TLS sni={}", t.sni));
                if t.intercept {
                    s.push_str(&format!(" {}", t.path.as_deref().unwrap_or("/")));
                }
            }
        }
        (None, None) => {}
    }
    s
}

pub fn run_scenario(world: &World) -> ScenarioResult {
    let results = world
        .scenario
        .flows
        .iter()
        .enumerate()
        .map(|(i, f)| run_flow(world, i, f))
        .collect();
    ScenarioResult {
        name: world.scenario.name.clone(),
        results,
    }
}

/// A flow's outcome with every step that led to it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// The DNS lookup of an external name, made first.
    pub lookup: Option<FlowDecision>,
    /// Through a Gateway: the route taken and the client → gateway hop.
    pub gateway: Option<(String, FlowDecision)>,
    /// The (last) connection.
    pub decision: Option<FlowDecision>,
}

pub fn evaluate(
    world: &World,
    flow: &FlowSpec,
) -> Result<(Verdict, Option<FlowDecision>, Option<FlowDecision>), String> {
    let e = evaluate_flow(world, flow)?;
    Ok((e.verdict, e.lookup, e.decision))
}

/// The route of a gateway that serves `path` (longest match; PathPrefix matches whole
/// path segments, as the Gateway API says).
pub fn route_for<'w>(world: &'w World, gateway: &str, path: &str) -> Option<&'w GatewayRoute> {
    let path = path.split('?').next().unwrap_or(path);
    world
        .scenario
        .routes
        .iter()
        .filter(|r| r.gateway == gateway)
        .filter(|r| {
            if r.exact {
                path == r.path
            } else {
                let prefix = r.path.trim_end_matches('/');
                prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
            }
        })
        .max_by_key(|r| (r.exact, r.path.len()))
}

pub fn evaluate_flow(world: &World, flow: &FlowSpec) -> Result<Evaluation, String> {
    let done = |verdict, lookup, decision| {
        Ok(Evaluation {
            verdict,
            lookup,
            gateway: None,
            decision,
        })
    };
    let from = world
        .party(&flow.from)
        .ok_or_else(|| format!("unknown source `{}`", flow.from))?;
    if let Some(q) = &flow.dns {
        let d = world
            .dns_query(from, q)
            .ok_or("no kube-dns endpoint in the scenario (label k8s-app: kube-dns)")?;
        return done(d.verdict, None, Some(d));
    }
    let to_name = flow.to.as_deref().ok_or("a flow needs `to` or `dns`")?;
    let to = world
        .party(to_name)
        .ok_or_else(|| format!("unknown destination `{to_name}`"))?;
    let mut learned = false;
    let mut lookup = None;
    if let Party::World {
        learned_as: Some(_),
        ..
    } = to
    {
        // A name: the client resolves it first, through the DNS proxy if a DNS rule applies.
        let d = world
            .dns_query(from, to_name)
            .ok_or("no kube-dns endpoint to resolve external names")?;
        if d.verdict != Verdict::DnsOk {
            return done(Verdict::Deny, Some(d), None);
        }
        learned = d.egress.proxy == Some(membrane_policy::verdict::L7Parser::Dns);
        lookup = Some(d);
    }
    let protocol_text = flow.protocol.as_deref().unwrap_or("TCP");
    let protocol = Protocol::parse(protocol_text)
        .ok_or_else(|| format!("unknown protocol `{protocol_text}`"))?;
    let (protocol, port) = match protocol {
        Protocol::Icmp | Protocol::Icmpv6 => {
            let (v6, t) = flow.icmp.unwrap_or((protocol == Protocol::Icmpv6, 8));
            (
                if v6 { Protocol::Icmpv6 } else { Protocol::Icmp },
                u16::from(t),
            )
        }
        p => (p, flow.port.ok_or("a TCP/UDP/SCTP flow needs a `port`")?),
    };
    let host = if learned
        || matches!(
            to,
            Party::World {
                learned_as: Some(_),
                ..
            }
        ) {
        to_name
    } else {
        ""
    };
    let req = l7_request(flow.http.as_ref(), flow.tls.as_ref(), host);
    let d = world.decide(from, to, protocol, port, &req, learned);
    let is_gateway = world.scenario.routes.iter().any(|r| r.gateway == to_name);
    if let (true, L7Request::Http(http)) = (is_gateway, &req) {
        // Through the gateway: the client reaches the gateway's proxy, which connects to the
        // backend the route names, with the ingress identity.
        if d.verdict != Verdict::Allow {
            return Ok(Evaluation {
                verdict: d.verdict,
                lookup,
                gateway: Some((String::new(), d.clone())),
                decision: Some(d),
            });
        }
        let route = route_for(world, to_name, &http.path).ok_or_else(|| {
            format!(
                "no HTTPRoute of {to_name} matches {} (the gateway answers 404)",
                http.path
            )
        })?;
        let (backend, backend_port) = route.backends.first().ok_or_else(|| {
            format!(
                "HTTPRoute {} has no backend endpoints (the gateway answers 503)",
                route.route
            )
        })?;
        let backend_party = world
            .party(backend)
            .ok_or_else(|| format!("unknown backend `{backend}`"))?;
        let hop = world.decide(to, backend_party, Protocol::Tcp, *backend_port, &req, false);
        let label = format!(
            "{} {}{} → {backend}:{backend_port}",
            route.route,
            route.path,
            if route.exact { "" } else { "*" }
        );
        return Ok(Evaluation {
            verdict: hop.verdict,
            lookup,
            gateway: Some((label, d)),
            decision: Some(hop),
        });
    }
    done(d.verdict, lookup, Some(d))
}

fn run_flow(world: &World, index: usize, flow: &FlowSpec) -> FlowResult {
    let mut r = FlowResult {
        index,
        flow: flow.clone(),
        actual: None,
        lookup: None,
        gateway: None,
        decision: None,
        passed: false,
        problem: None,
    };
    match evaluate_flow(world, flow) {
        Err(e) => r.problem = Some(e),
        Ok(Evaluation {
            verdict,
            lookup,
            gateway,
            decision,
        }) => {
            r.actual = Some(verdict);
            r.lookup = lookup.map(Box::new);
            r.gateway = gateway.map(Box::new);
            r.decision = decision.map(Box::new);
            r.passed = verdict == flow.expect;
            if r.passed
                && verdict == Verdict::Deny
                && let Some(problem) = check_drop(flow, r.decision.as_deref())
            {
                r.passed = false;
                r.problem = Some(problem);
            }
            if r.passed && !flow.inject_headers.is_empty() {
                let injected: Vec<(String, String)> = r
                    .decision
                    .iter()
                    .flat_map(|d| {
                        d.egress
                            .injected_headers
                            .iter()
                            .chain(d.ingress.iter().flat_map(|i| i.injected_headers.iter()))
                    })
                    .cloned()
                    .collect();
                for (k, v) in &flow.inject_headers {
                    if !injected
                        .iter()
                        .any(|(ik, iv)| ik.eq_ignore_ascii_case(k) && iv == v)
                    {
                        r.passed = false;
                        r.problem = Some(format!("expected the proxy to set header `{k}: {v}`"));
                    }
                }
            }
        }
    }
    r
}

/// Checks the expected drop side and reason, when the flow states them.
fn check_drop(flow: &FlowSpec, decision: Option<&FlowDecision>) -> Option<String> {
    let Some(decision) = decision else {
        // Dropped during the DNS lookup of an external name.
        return None;
    };
    let side = decision.blocking_side()?;
    if let Some(want) = flow.drop
        && want != side.direction
    {
        return Some(format!(
            "dropped at {} but expected at {}",
            side.direction, want
        ));
    }
    match flow.reason.as_deref() {
        None | Some("any") => None,
        Some("default-deny") if side.outcome == Outcome::DefaultDeny => None,
        Some("deny-rule") if side.outcome == Outcome::DenyRule => None,
        Some(want) => Some(format!(
            "dropped because of {} but expected {want}",
            side.outcome.reason()
        )),
    }
}

pub fn direction_word(d: Direction) -> &'static str {
    d.as_str()
}

pub fn scenario_summary(s: &Scenario) -> String {
    format!("{} ({} flows)", s.name, s.flows.len())
}
