//! Verdicts: one side (the source's egress or the destination's ingress) decided by a
//! lookup in its resolved policy, then both sides combined in the order the datapath and the
//! proxies apply them (§9.18). Every verdict carries the entries that decided it.

use crate::identity::IdentityId;
use crate::l7::dns_pattern::server_name_matches;
use crate::model::{Direction, EntryOrigin, HttpRule, L7Policy, MismatchAction, Origin, Protocol};
use crate::resolve::{DirectionPolicy, Enforcement, MapKey};
use crate::yaml::Span;
use std::fmt;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    pub headers: Vec<(String, String)>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the flow carries above L4, as far as policy can see it.
#[derive(Debug, Clone, Default)]
pub enum L7Request {
    #[default]
    None,
    Http(HttpRequest),
    /// TLS: only the SNI is visible, unless the proxy terminates TLS (`intercepted`).
    Tls {
        sni: String,
        http: Option<HttpRequest>,
    },
    Dns {
        qname: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
    Http403,
    TlsDenied,
    DnsOk,
    DnsRefused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Http403 => "http-403",
            Verdict::TlsDenied => "tls-denied",
            Verdict::DnsOk => "dns-ok",
            Verdict::DnsRefused => "dns-refused",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "allow" => Verdict::Allow,
            "deny" => Verdict::Deny,
            "http-403" => Verdict::Http403,
            "tls-denied" => Verdict::TlsDenied,
            "dns-ok" => Verdict::DnsOk,
            "dns-refused" => Verdict::DnsRefused,
            _ => return None,
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one side decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No policy enforces this direction for the endpoint.
    NotEnforced,
    Allowed,
    /// Enforced and no entry matched.
    DefaultDeny,
    /// An explicit deny entry matched.
    DenyRule,
    Http403,
    TlsDenied,
    DnsRefused,
}

impl Outcome {
    pub fn passes(self) -> bool {
        matches!(self, Outcome::NotEnforced | Outcome::Allowed)
    }

    /// The verdict a side with this outcome gives the flow, if it stops it.
    pub fn denial(self) -> Option<Verdict> {
        match self {
            Outcome::NotEnforced | Outcome::Allowed => None,
            Outcome::DefaultDeny | Outcome::DenyRule => Some(Verdict::Deny),
            Outcome::Http403 => Some(Verdict::Http403),
            Outcome::TlsDenied => Some(Verdict::TlsDenied),
            Outcome::DnsRefused => Some(Verdict::DnsRefused),
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Outcome::NotEnforced => "not enforced",
            Outcome::Allowed => "allowed",
            Outcome::DefaultDeny => "default-deny",
            Outcome::DenyRule => "deny-rule",
            Outcome::Http403 => "l7-mismatch",
            Outcome::TlsDenied => "l7-mismatch",
            Outcome::DnsRefused => "l7-mismatch",
        }
    }
}

/// The proxy a flow is redirected to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum L7Parser {
    Http,
    Dns,
    Tls,
    /// Kafka or a generic `l7proto`: parsed, not enforced by membrane's proxies.
    Other(String),
}

impl L7Parser {
    pub fn of(policy: &L7Policy) -> L7Parser {
        match policy.parser() {
            "http" => L7Parser::Http,
            "dns" => L7Parser::Dns,
            "tls" => L7Parser::Tls,
            other => L7Parser::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            L7Parser::Http => "http",
            L7Parser::Dns => "dns",
            L7Parser::Tls => "tls",
            L7Parser::Other(p) => p,
        }
    }
}

impl fmt::Display for L7Parser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An L7 rule that matched: the `toPorts` entry, and which of its rules (`rules.http[i]`,
/// `rules.dns[i]`, or the `serverNames` list).
#[derive(Debug, Clone)]
pub struct L7RuleRef {
    pub entry: Arc<EntryOrigin>,
    /// The L7 part of the `toPorts` entry.
    pub l7: Arc<L7Policy>,
    /// Index in `rules.http` / `rules.dns`; `None` for a serverNames match.
    pub index: Option<usize>,
    pub span: Span,
}

impl L7RuleRef {
    /// The HTTP rule that matched, for an HTTP match.
    pub fn http_rule(&self) -> Option<&HttpRule> {
        self.l7.http.as_ref()?.get(self.index?)
    }
}

impl PartialEq for L7RuleRef {
    fn eq(&self, other: &Self) -> bool {
        self.entry == other.entry && self.index == other.index && self.span == other.span
    }
}

impl Eq for L7RuleRef {}

/// What the L7 layer decided, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7Outcome {
    /// Not a Cilium-managed endpoint: no policy applies on this side.
    NotManaged,
    /// A node to its own address over loopback: host policies never see it.
    HostLoopback,
    HttpMatched {
        rule: L7RuleRef,
        method: String,
        path: String,
        /// Inside a TLS connection the proxy terminates.
        in_tls: bool,
    },
    HttpNoMatch {
        method: String,
        path: String,
    },
    /// A plain allow for the same peer and port lets every request through.
    HttpWildcarded,
    DnsMatched {
        rule: L7RuleRef,
        qname: String,
    },
    /// An L4 rule on exactly port 53 allows every name.
    DnsWildcarded,
    DnsNoMatch {
        qname: String,
    },
    SniMatched {
        rule: L7RuleRef,
        sni: String,
    },
    SniNoMatch {
        sni: String,
    },
}

impl L7Outcome {
    /// The stable name of the outcome (the `kind` of the decision schema).
    pub fn kind(&self) -> &'static str {
        match self {
            L7Outcome::NotManaged => "not-managed",
            L7Outcome::HostLoopback => "host-loopback",
            L7Outcome::HttpMatched { .. } => "http-matched",
            L7Outcome::HttpNoMatch { .. } => "http-no-match",
            L7Outcome::HttpWildcarded => "http-wildcarded",
            L7Outcome::DnsMatched { .. } => "dns-matched",
            L7Outcome::DnsWildcarded => "dns-wildcarded",
            L7Outcome::DnsNoMatch { .. } => "dns-no-match",
            L7Outcome::SniMatched { .. } => "sni-matched",
            L7Outcome::SniNoMatch { .. } => "sni-no-match",
        }
    }

    /// The rule that matched, if one did.
    pub fn rule(&self) -> Option<&L7RuleRef> {
        match self {
            L7Outcome::HttpMatched { rule, .. }
            | L7Outcome::DnsMatched { rule, .. }
            | L7Outcome::SniMatched { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

impl fmt::Display for L7Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L7Outcome::NotManaged => f.write_str("not a Cilium-managed endpoint"),
            L7Outcome::HostLoopback => {
                f.write_str("the host to itself over loopback: host policies do not apply")
            }
            L7Outcome::HttpMatched {
                method,
                path,
                in_tls: false,
                ..
            } => write!(f, "{method} {path} matched an HTTP rule"),
            L7Outcome::HttpMatched { method, path, .. } => {
                write!(f, "{method} {path} matched an HTTP rule inside TLS")
            }
            L7Outcome::HttpNoMatch { method, path } => {
                write!(f, "no HTTP rule matches {method} {path}")
            }
            L7Outcome::HttpWildcarded => f.write_str(
                "an allow without L7 rules for this peer and port lets every request through",
            ),
            L7Outcome::DnsMatched { qname, .. } => write!(f, "DNS name `{qname}` allowed"),
            L7Outcome::DnsWildcarded => {
                f.write_str("an L4 rule on this exact port allows every name")
            }
            L7Outcome::DnsNoMatch { qname } => write!(f, "no DNS rule matches `{qname}`"),
            L7Outcome::SniMatched { sni, .. } => write!(f, "SNI `{sni}` allowed"),
            L7Outcome::SniNoMatch { sni } => write!(f, "SNI `{sni}` matches no serverNames"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SideDecision {
    pub direction: Direction,
    pub outcome: Outcome,
    pub enforcement: Enforcement,
    /// The policy-map key that matched, if any.
    pub key: Option<MapKey>,
    /// The owners of the matched map entry (deny entries for a deny), as Cilium records them.
    pub deciding: Vec<Origin>,
    /// Which proxy saw the flow.
    pub proxy: Option<L7Parser>,
    /// For flows through a proxy: which L7 rule matched, or why none did.
    pub l7: Option<L7Outcome>,
    /// Headers the proxy adds or rewrites (headerMatches actions).
    pub injected_headers: Vec<(String, String)>,
}

impl SideDecision {
    /// A side no policy applies to.
    pub fn unmanaged(direction: Direction, why: L7Outcome) -> SideDecision {
        SideDecision {
            direction,
            outcome: Outcome::NotEnforced,
            enforcement: Enforcement::NotSelected,
            key: None,
            deciding: vec![],
            proxy: None,
            l7: Some(why),
            injected_headers: vec![],
        }
    }

    /// The L7 outcome as text (explanations).
    pub fn l7_detail(&self) -> Option<String> {
        self.l7.as_ref().map(ToString::to_string)
    }
}

/// Decides one side with one lookup.
pub fn decide_side(
    policy: &DirectionPolicy,
    peer: IdentityId,
    protocol: Protocol,
    port: u16,
    request: &L7Request,
) -> SideDecision {
    let mut d = SideDecision {
        direction: policy.direction,
        outcome: Outcome::NotEnforced,
        enforcement: policy.enforcement.clone(),
        key: None,
        deciding: vec![],
        proxy: None,
        l7: None,
        injected_headers: vec![],
    };
    if !policy.enforced {
        return d;
    }
    let Some(hit) = policy.lookup(peer, protocol.number(), port) else {
        d.outcome = Outcome::DefaultDeny;
        return d;
    };
    d.key = Some(hit.key);
    d.deciding = policy.owners(&hit.key, hit.value.deny);
    if hit.value.deny {
        d.outcome = Outcome::DenyRule;
        return d;
    }
    d.outcome = Outcome::Allowed;
    let l7 = hit.value.l7();
    let dns_policies: Vec<&Arc<L7Policy>> = l7
        .policies
        .iter()
        .copied()
        .filter(|p| p.dns.is_some())
        .collect();
    let other: Vec<&Arc<L7Policy>> = l7
        .policies
        .iter()
        .copied()
        .filter(|p| p.dns.is_none())
        .collect();
    if !dns_policies.is_empty() {
        d.proxy = Some(L7Parser::Dns);
        if let L7Request::Dns { qname } = request {
            let matched = dns_policies.iter().find_map(|p| {
                p.dns
                    .iter()
                    .flatten()
                    .position(|m| m.matches(qname))
                    .map(|i| (p, i))
            });
            d.l7 = Some(match matched {
                Some((p, i)) => L7Outcome::DnsMatched {
                    rule: L7RuleRef {
                        entry: p.origin.clone(),
                        l7: (*p).clone(),
                        index: Some(i),
                        span: p.span,
                    },
                    qname: qname.clone(),
                },
                None if l7.dns_wildcard => L7Outcome::DnsWildcarded,
                None => {
                    d.outcome = Outcome::DnsRefused;
                    L7Outcome::DnsNoMatch {
                        qname: qname.clone(),
                    }
                }
            });
        }
        return d;
    }
    let Some(first) = other.first() else {
        return d;
    };
    d.proxy = Some(L7Parser::of(first));
    if l7.plain_allow {
        d.l7 = Some(L7Outcome::HttpWildcarded);
        return d;
    }
    match request {
        L7Request::None | L7Request::Dns { .. } => {}
        L7Request::Http(req) => {
            // A plaintext request has no SNI to match a serverNames rule.
            let plain = other.iter().filter(|p| p.server_names.is_empty());
            match first_http_match(plain, req, false) {
                Some((outcome, inj)) => {
                    d.injected_headers = inj;
                    d.l7 = Some(outcome);
                }
                None => {
                    d.outcome = Outcome::Http403;
                    d.l7 = Some(L7Outcome::HttpNoMatch {
                        method: req.method.clone(),
                        path: req.path.clone(),
                    });
                }
            }
        }
        L7Request::Tls { sni, http } => {
            let sni_ok: Vec<&Arc<L7Policy>> = other
                .iter()
                .copied()
                .filter(|p| {
                    p.server_names.is_empty()
                        || p.server_names.iter().any(|n| server_name_matches(n, sni))
                })
                .collect();
            if sni_ok.is_empty() {
                d.outcome = Outcome::TlsDenied;
                d.l7 = Some(L7Outcome::SniNoMatch { sni: sni.clone() });
                return d;
            }
            // Some matching rule has no HTTP rules: the TLS handshake and everything after pass.
            if let Some(p) = sni_ok.iter().find(|p| p.http.is_none()) {
                d.l7 = Some(L7Outcome::SniMatched {
                    rule: L7RuleRef {
                        entry: p.origin.clone(),
                        l7: (*p).clone(),
                        index: None,
                        span: p.span,
                    },
                    sni: sni.clone(),
                });
                return d;
            }
            let Some(req) = http else {
                return d;
            };
            let terminating = sni_ok.iter().filter(|p| p.terminating_tls);
            match first_http_match(terminating, req, true) {
                Some((outcome, inj)) => {
                    d.injected_headers = inj;
                    d.l7 = Some(outcome);
                }
                None => {
                    d.outcome = Outcome::Http403;
                    d.l7 = Some(L7Outcome::HttpNoMatch {
                        method: req.method.clone(),
                        path: req.path.clone(),
                    });
                }
            }
        }
    }
    d
}

/// The first HTTP rule (in policy order) that accepts the request, with the headers to inject.
fn first_http_match<'p>(
    policies: impl Iterator<Item = &'p &'p Arc<L7Policy>>,
    req: &HttpRequest,
    in_tls: bool,
) -> Option<(L7Outcome, Vec<(String, String)>)> {
    for p in policies {
        for (i, r) in p.http.iter().flatten().enumerate() {
            if let Some(inj) = http_rule_accepts(r, req) {
                let outcome = L7Outcome::HttpMatched {
                    rule: L7RuleRef {
                        entry: p.origin.clone(),
                        l7: (*p).clone(),
                        index: Some(i),
                        span: r.span,
                    },
                    method: req.method.clone(),
                    path: req.path.clone(),
                    in_tls,
                };
                return Some((outcome, inj));
            }
        }
    }
    None
}

pub fn http_rule_accepts(r: &HttpRule, req: &HttpRequest) -> Option<Vec<(String, String)>> {
    if r.method
        .as_ref()
        .is_some_and(|m| !m.is_full_match(&req.method))
    {
        return None;
    }
    if r.path.as_ref().is_some_and(|m| !m.is_full_match(&req.path)) {
        return None;
    }
    if r.host.as_ref().is_some_and(|m| !m.is_full_match(&req.host)) {
        return None;
    }
    for (name, value) in &r.headers {
        match (req.header(name), value) {
            (None, _) => return None,
            (Some(v), Some(want)) if v != want => return None,
            _ => {}
        }
    }
    let mut inject = Vec::new();
    for m in &r.header_matches {
        let have = req.header(&m.name);
        let ok = match (&m.value, have) {
            (Some(want), Some(v)) => v == want,
            _ => false,
        };
        if ok {
            continue;
        }
        match m.mismatch {
            MismatchAction::Fail => return None,
            MismatchAction::Log => {}
            MismatchAction::Add | MismatchAction::Replace => {
                if let Some(v) = &m.value {
                    inject.push((m.name.clone(), v.clone()));
                } else {
                    return None;
                }
            }
            MismatchAction::Delete => {}
        }
    }
    Some(inject)
}

/// A flow's verdict with both sides.
#[derive(Debug, Clone)]
pub struct FlowDecision {
    pub verdict: Verdict,
    pub egress: SideDecision,
    pub ingress: Option<SideDecision>,
}

impl FlowDecision {
    /// The side that stopped the flow.
    pub fn blocking_side(&self) -> Option<&SideDecision> {
        if !self.egress.outcome.passes() {
            return Some(&self.egress);
        }
        self.ingress.as_ref().filter(|s| !s.outcome.passes())
    }
}

/// §9.18: the source's egress first (its proxy answers before anything reaches the
/// destination), then the destination's ingress.
pub fn combine(egress: SideDecision, ingress: Option<SideDecision>, is_dns: bool) -> FlowDecision {
    let verdict = egress
        .outcome
        .denial()
        .or_else(|| ingress.as_ref().and_then(|i| i.outcome.denial()))
        .unwrap_or(if is_dns {
            Verdict::DnsOk
        } else {
            Verdict::Allow
        });
    FlowDecision {
        verdict,
        egress,
        ingress,
    }
}
