//! The policy snapshot the proxies decide with, and their typed denials.
//!
//! [`ProxyPolicy`] is an owned copy of what the proxies need from the engine: the ipcache
//! (address → identity) and the resolved policy of each local endpoint, per direction. It is
//! `Send + Sync` and cheap to share (`Arc`), so a control plane publishes a new one through a
//! `tokio::sync::watch` channel and every request borrows the latest.

use membrane_policy::engine::DirectionRef;
use membrane_policy::identity::{self, IdentityId};
use membrane_policy::model::{Direction, HttpRule, MismatchAction, Origin, PolicyOrigin, Protocol};
use membrane_policy::resolve::DirectionPolicy;
use membrane_policy::verdict::{
    self, HttpRequest, L7Outcome, L7Request, Outcome, SideDecision, Verdict,
};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The resolved policies of one local endpoint. `None`: that direction is not enforced by
/// this snapshot (the endpoint is not managed, or nothing selects it).
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicies {
    pub egress: Option<DirectionRef>,
    pub ingress: Option<DirectionRef>,
}

/// What the proxies know about the cluster at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProxyPolicy {
    ipcache: HashMap<IpAddr, IdentityId>,
    /// Disjoint address ranges (first, last, identity), sorted: the identities of policy
    /// CIDR prefixes, for addresses the ipcache does not name exactly.
    ranges: Vec<(IpAddr, IpAddr, IdentityId)>,
    endpoints: HashMap<IpAddr, EndpointPolicies>,
    /// Some HTTP rule of some endpoint has `headerMatches`: only then is a request's header
    /// rewrite looked for (a second lookup and rule match per request otherwise wasted).
    header_rewrites: bool,
}

/// Whether any HTTP rule of `policy` has `headerMatches`.
fn has_header_matches(policy: &DirectionPolicy) -> bool {
    policy.map.keys().any(|key| {
        policy.contributions(&key).iter().any(|c| {
            c.l7.as_ref().is_some_and(|l7| {
                l7.http
                    .as_ref()
                    .is_some_and(|rules| rules.iter().any(|r| !r.header_matches.is_empty()))
            })
        })
    })
}

fn endpoint_rewrites_headers(e: &EndpointPolicies) -> bool {
    [e.egress.as_deref(), e.ingress.as_deref()]
        .into_iter()
        .flatten()
        .any(has_header_matches)
}

/// A header rewrite that a `headerMatches` mismatch action asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderAction {
    /// `mismatch: ADD`: append a value.
    Add { name: String, value: String },
    /// `mismatch: REPLACE`: set the header to this single value.
    Set { name: String, value: String },
    /// `mismatch: DELETE`: remove the header.
    Remove { name: String },
}

/// A decision for one request, query or connection, with both sides.
#[derive(Debug, Clone)]
pub struct ProxyDecision {
    /// `Allow`/`DnsOk` pass; `Deny` is an L3/L4 drop; the others are L7 denials.
    pub verdict: Verdict,
    /// The source's egress; `None` when the source is not a local endpoint.
    pub egress: Option<SideDecision>,
    /// The destination's ingress; `None` when it is not a local endpoint or egress already
    /// stopped the flow.
    pub ingress: Option<SideDecision>,
    /// Header rewrites for an allowed HTTP request, egress side first.
    pub header_actions: Vec<HeaderAction>,
}

impl ProxyDecision {
    pub fn is_allowed(&self) -> bool {
        matches!(self.verdict, Verdict::Allow | Verdict::DnsOk)
    }

    /// The side that stopped the flow.
    pub fn blocking_side(&self) -> Option<&SideDecision> {
        [self.egress.as_ref(), self.ingress.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| !s.outcome.passes())
    }

    /// The typed denial for this decision, if it is one.
    pub fn denial(&self, src: SocketAddr, dst: SocketAddr, request: String) -> Option<Denial> {
        if self.is_allowed() {
            return None;
        }
        let side = self.blocking_side();
        let kind = match self.verdict {
            Verdict::Http403 => DenialKind::Http403,
            Verdict::DnsRefused => DenialKind::DnsRefused,
            Verdict::TlsDenied => DenialKind::TlsDenied,
            _ => DenialKind::Dropped,
        };
        Some(Denial {
            kind,
            src,
            dst,
            direction: side.map_or(Direction::Egress, |s| s.direction),
            reason: side.map_or("denied", |s| s.outcome.reason()),
            rules: side.map(|s| s.deciding.clone()).unwrap_or_default(),
            detail: side.and_then(SideDecision::l7_detail).unwrap_or_default(),
            request,
            decision: self.clone(),
        })
    }
}

/// What kind of denial a proxy applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenialKind {
    /// An HTTP request no rule allows: `403 Access denied`.
    Http403,
    /// A DNS name no rule allows: REFUSED (or NXDOMAIN).
    DnsRefused,
    /// A TLS server name no `serverNames` allows: the connection is closed.
    TlsDenied,
    /// L3/L4 does not allow the flow (default deny or a deny rule): dropped without answer.
    Dropped,
}

impl DenialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DenialKind::Http403 => "http-403",
            DenialKind::DnsRefused => "dns-refused",
            DenialKind::TlsDenied => "tls-denied",
            DenialKind::Dropped => "deny",
        }
    }
}

impl fmt::Display for DenialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed denial: what was denied, on which side, and the rules that decided it.
#[derive(Debug, Clone)]
pub struct Denial {
    pub kind: DenialKind,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub direction: Direction,
    /// `default-deny`, `deny-rule` or `l7-mismatch`.
    pub reason: &'static str,
    /// The policy entries that decided (for an L7 denial: the L7 rules that were checked).
    pub rules: Vec<Origin>,
    /// The engine's explanation.
    pub detail: String,
    /// The request as the proxy saw it (`GET /path`, the query name, the SNI).
    pub request: String,
    /// The whole decision, both sides with their L7 outcomes (flow events render it in the
    /// decision schema).
    pub decision: ProxyDecision,
}

impl Denial {
    /// The policy resources behind the denial (deduplicated, in order).
    pub fn policies(&self) -> Vec<&PolicyOrigin> {
        let mut out: Vec<&PolicyOrigin> = Vec::new();
        for p in self.rules.iter().filter_map(Origin::policy) {
            let p = p.as_ref();
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Logs the denial as a structured `tracing` event (target `membrane_proxy::denied`).
    pub fn log(&self) {
        let policies: Vec<String> = self.policies().iter().map(|p| p.to_string()).collect();
        let rules: Vec<String> = self.rules.iter().map(|r| r.to_string()).collect();
        tracing::info!(
            target: "membrane_proxy::denied",
            kind = %self.kind,
            src = %self.src,
            dst = %self.dst,
            direction = %self.direction,
            reason = self.reason,
            policy = %policies.join(", "),
            rule = %rules.join(", "),
            request = %self.request,
            detail = %self.detail,
            "denied"
        );
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} → {} ({}): {} by {}",
            self.kind, self.src, self.dst, self.request, self.reason, self.direction
        )?;
        if !self.rules.is_empty() {
            let rules: Vec<String> = self.rules.iter().map(|r| r.to_string()).collect();
            write!(f, " [{}]", rules.join("; "))?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// Called for every denial, after it is logged (flow events, metrics, tests).
pub type DenialHook = Arc<dyn Fn(&Denial) + Send + Sync>;

/// Logs a denial and hands it to the hook.
pub(crate) fn report(denial: &Denial, hook: Option<&DenialHook>) {
    denial.log();
    if let Some(h) = hook {
        h(denial);
    }
}

impl ProxyPolicy {
    pub fn new() -> ProxyPolicy {
        ProxyPolicy::default()
    }

    /// A snapshot from plain maps: the ipcache and each local endpoint's resolved policies.
    pub fn from_maps(
        ipcache: HashMap<IpAddr, IdentityId>,
        egress: HashMap<IpAddr, DirectionRef>,
        ingress: HashMap<IpAddr, DirectionRef>,
    ) -> ProxyPolicy {
        let mut endpoints: HashMap<IpAddr, EndpointPolicies> = HashMap::new();
        for (ip, p) in egress {
            endpoints.entry(ip).or_default().egress = Some(p);
        }
        for (ip, p) in ingress {
            endpoints.entry(ip).or_default().ingress = Some(p);
        }
        let header_rewrites = endpoints.values().any(endpoint_rewrites_headers);
        ProxyPolicy {
            ipcache,
            ranges: Vec::new(),
            endpoints,
            header_rewrites,
        }
    }

    /// Maps `ip` to `identity` in the ipcache.
    pub fn set_identity(&mut self, ip: IpAddr, identity: IdentityId) {
        self.ipcache.insert(ip, identity);
    }

    /// Sets the resolved policies of the local endpoint at `ip`.
    pub fn set_endpoint(&mut self, ip: IpAddr, policies: EndpointPolicies) {
        self.header_rewrites |= endpoint_rewrites_headers(&policies);
        self.endpoints.insert(ip, policies);
    }

    /// Sets the prefix ranges (disjoint; sorted here): the identity of an address in one
    /// of them that the ipcache does not name.
    pub fn set_ranges(&mut self, mut ranges: Vec<(IpAddr, IpAddr, IdentityId)>) {
        ranges.sort();
        self.ranges = ranges;
    }

    pub fn ipcache(&self) -> &HashMap<IpAddr, IdentityId> {
        &self.ipcache
    }

    pub fn endpoints(&self) -> &HashMap<IpAddr, EndpointPolicies> {
        &self.endpoints
    }

    /// The identity of an address: the ipcache's, `world` when unknown.
    pub fn identity_of(&self, ip: IpAddr) -> IdentityId {
        let ip = canonical(ip);
        if let Some(id) = self.ipcache.get(&ip) {
            return *id;
        }
        // The last range starting at or before `ip`, if it reaches it.
        let i = self.ranges.partition_point(|(first, _, _)| *first <= ip);
        match i.checked_sub(1).and_then(|i| self.ranges.get(i)) {
            Some((_, last, id)) if ip <= *last => *id,
            _ => identity::WORLD,
        }
    }

    fn endpoint(&self, ip: IpAddr) -> Option<&EndpointPolicies> {
        self.endpoints.get(&canonical(ip))
    }

    /// Decides one flow: the source's egress first, then (if it passes) the destination's
    /// ingress, each with one lookup; `dst.port()` is the destination port.
    pub fn decide(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        protocol: Protocol,
        request: &L7Request,
    ) -> ProxyDecision {
        let src_id = self.identity_of(src.ip());
        let dst_id = self.identity_of(dst.ip());
        let port = dst.port();
        let mut actions = Vec::new();
        let egress = self
            .endpoint(src.ip())
            .and_then(|e| e.egress.as_deref())
            .map(|p| {
                let d = verdict::decide_side(p, dst_id, protocol, port, request);
                if self.header_rewrites {
                    actions.extend(header_actions(&d, request));
                }
                d
            });
        let ingress = if egress.as_ref().is_none_or(|e| e.outcome.passes()) {
            self.endpoint(dst.ip())
                .and_then(|e| e.ingress.as_deref())
                .map(|p| {
                    let d = verdict::decide_side(p, src_id, protocol, port, request);
                    if self.header_rewrites {
                        actions.extend(header_actions(&d, request));
                    }
                    d
                })
        } else {
            None
        };
        let is_dns = matches!(request, L7Request::Dns { .. });
        let verdict = first_denial(egress.as_ref())
            .or_else(|| first_denial(ingress.as_ref()))
            .unwrap_or(if is_dns {
                Verdict::DnsOk
            } else {
                Verdict::Allow
            });
        if !matches!(verdict, Verdict::Allow | Verdict::DnsOk) {
            actions.clear();
        }
        ProxyDecision {
            verdict,
            egress,
            ingress,
            header_actions: actions,
        }
    }

    /// An HTTP request on a TCP connection from `src` to the original destination `dst`.
    pub fn decide_http(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        request: &HttpRequest,
    ) -> ProxyDecision {
        self.decide(src, dst, Protocol::Tcp, &L7Request::Http(request.clone()))
    }

    /// A DNS query for `qname` (UDP or TCP) from `src` to the server `dst`.
    pub fn decide_dns(
        &self,
        src: SocketAddr,
        dst: SocketAddr,
        protocol: Protocol,
        qname: &str,
    ) -> ProxyDecision {
        let request = L7Request::Dns {
            qname: qname.to_string(),
        };
        self.decide(src, dst, protocol, &request)
    }

    /// A TLS connection whose ClientHello names `sni` (empty: no SNI).
    pub fn decide_tls(&self, src: SocketAddr, dst: SocketAddr, sni: &str) -> ProxyDecision {
        let request = L7Request::Tls {
            sni: sni.to_string(),
            http: None,
        };
        self.decide(src, dst, Protocol::Tcp, &request)
    }
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) are their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn first_denial(side: Option<&SideDecision>) -> Option<Verdict> {
    side?.outcome.denial()
}

/// The header rewrites of the HTTP rule that allowed `request` on this side (the rule the
/// engine's decision names); none when L7 was wildcarded or nothing matched.
fn header_actions(side: &SideDecision, request: &L7Request) -> Vec<HeaderAction> {
    let (L7Request::Http(req), Outcome::Allowed) = (request, side.outcome) else {
        return vec![];
    };
    match &side.l7 {
        Some(L7Outcome::HttpMatched { rule, .. }) => rule
            .http_rule()
            .map(|r| rule_actions(r, req))
            .unwrap_or_default(),
        _ => vec![],
    }
}

fn rule_actions(rule: &HttpRule, req: &HttpRequest) -> Vec<HeaderAction> {
    let mut out = Vec::new();
    for m in &rule.header_matches {
        let have: Vec<&str> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&m.name))
            .map(|(_, v)| v.as_str())
            .collect();
        let matched = match &m.value {
            Some(want) => have.first().is_some_and(|v| v == want),
            None => false,
        };
        if matched {
            continue;
        }
        match (m.mismatch, &m.value) {
            (MismatchAction::Add, Some(v)) => out.push(HeaderAction::Add {
                name: m.name.clone(),
                value: v.clone(),
            }),
            (MismatchAction::Replace, Some(v)) => out.push(HeaderAction::Set {
                name: m.name.clone(),
                value: v.clone(),
            }),
            (MismatchAction::Delete, _) if !have.is_empty() => out.push(HeaderAction::Remove {
                name: m.name.clone(),
            }),
            _ => {}
        }
    }
    out
}

/// A request the HTTP proxy forwarded (Hubble shows allowed L7 flows as well as denied ones).
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// `METHOD /path` as forwarded (normalized).
    pub request: String,
    /// `:authority` as forwarded (`Host`, or the absolute-form target's).
    pub host: String,
    /// The answer's status; `None` if the exchange failed before one.
    pub status: Option<u16>,
    /// The policy entries that allowed it, on either side.
    pub rules: Vec<Origin>,
    /// The whole decision, both sides with their L7 outcomes.
    pub decision: ProxyDecision,
}

/// Called for every forwarded request (flow events, metrics, tests).
pub type ForwardHook = Arc<dyn Fn(&Forwarded) + Send + Sync>;

/// A DNS query the DNS proxy forwarded because a rule allows its name.
#[derive(Debug, Clone)]
pub struct DnsForwarded {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The name as policy matched it (lower case, trailing dot).
    pub qname: String,
    /// The policy entries that allowed it, on either side.
    pub rules: Vec<Origin>,
    /// The whole decision, both sides with their L7 outcomes.
    pub decision: ProxyDecision,
}

/// Called for every forwarded DNS query (flow events, metrics, tests).
pub type DnsForwardHook = Arc<dyn Fn(&DnsForwarded) + Send + Sync>;

impl ProxyDecision {
    /// The entries that decided, egress side first.
    pub fn deciding_rules(&self) -> Vec<Origin> {
        self.egress
            .iter()
            .chain(self.ingress.iter())
            .flat_map(|s| s.deciding.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod rewrite_flag_tests {
    use super::*;
    use crate::testutil::{CLIENT, policy, policy_with};

    /// The flag that skips looking for header rewrites is set exactly when some rule has
    /// `headerMatches` (the test scenario's client has one; without its rules, none).
    #[test]
    fn header_rewrite_flag_follows_the_rules() {
        assert!(policy().header_rewrites);
        let p = policy_with("");
        let client = p.endpoint(crate::testutil::ip(CLIENT)).cloned();
        let mut bare = ProxyPolicy::new();
        assert!(!bare.header_rewrites);
        if let Some(c) = client {
            bare.set_endpoint(crate::testutil::ip(CLIENT), c);
        }
        assert!(bare.header_rewrites);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_exact_identity_else_its_prefix_range_else_world() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut p = ProxyPolicy::new();
        p.set_identity(ip("10.0.0.5"), 300);
        p.set_ranges(vec![
            (ip("10.0.1.0"), ip("10.0.255.255"), 16_777_217),
            (ip("10.0.0.0"), ip("10.0.0.255"), 16_777_218),
        ]);
        assert_eq!(p.identity_of(ip("10.0.0.5")), 300);
        assert_eq!(p.identity_of(ip("10.0.0.6")), 16_777_218);
        assert_eq!(p.identity_of(ip("10.0.0.0")), 16_777_218);
        assert_eq!(p.identity_of(ip("10.0.200.1")), 16_777_217);
        assert_eq!(p.identity_of(ip("10.0.255.255")), 16_777_217);
        assert_eq!(p.identity_of(ip("10.1.0.0")), identity::WORLD);
        assert_eq!(p.identity_of(ip("9.255.255.255")), identity::WORLD);
    }
}
