//! Verdicts: one side (the source's egress or the destination's ingress) decided by a
//! lookup in its resolved policy, then both sides combined in the order the datapath and the
//! proxies apply them (§9.18). Every verdict carries the entries that decided it.

use crate::identity::IdentityId;
use crate::l7::dns_pattern::server_name_matches;
use crate::model::{Direction, EntryOrigin, HttpRule, L7Policy, MismatchAction, Protocol};
use crate::resolve::{DirectionPolicy, Enforcement, MapKey};
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

#[derive(Debug, Clone)]
pub struct SideDecision {
    pub direction: Direction,
    pub outcome: Outcome,
    pub enforcement: Enforcement,
    /// The policy-map key that matched, if any.
    pub key: Option<MapKey>,
    /// The entries that decided (deny entries for a deny, allow entries otherwise).
    pub deciding: Vec<Arc<EntryOrigin>>,
    /// Which proxy saw the flow ("http", "dns", "tls", ...).
    pub proxy: Option<String>,
    /// For L7 verdicts: the rules that matched or were checked.
    pub l7_detail: Option<String>,
    /// Headers the proxy adds or rewrites (headerMatches actions).
    pub injected_headers: Vec<(String, String)>,
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
        l7_detail: None,
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
    d.deciding = hit.value.deciding().map(|c| c.origin.clone()).collect();
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
        d.proxy = Some("dns".into());
        if let L7Request::Dns { qname } = request {
            let matched = dns_policies
                .iter()
                .find(|p| p.dns.iter().flatten().any(|m| m.matches(qname)));
            match matched {
                Some(p) => {
                    d.deciding = vec![p.origin.clone()];
                    d.l7_detail = Some(format!("DNS name `{qname}` allowed"));
                }
                None if l7.dns_wildcard => {
                    d.l7_detail = Some("an L4 rule on this exact port allows every name".into())
                }
                None => {
                    d.outcome = Outcome::DnsRefused;
                    d.deciding = dns_policies.iter().map(|p| p.origin.clone()).collect();
                    d.l7_detail = Some(format!("no DNS rule matches `{qname}`"));
                }
            }
        }
        return d;
    }
    if other.is_empty() {
        return d;
    }
    d.proxy = Some(other[0].parser().to_string());
    if l7.plain_allow {
        d.l7_detail = Some(
            "an allow without L7 rules for this peer and port lets every request through".into(),
        );
        return d;
    }
    match request {
        L7Request::None | L7Request::Dns { .. } => {}
        L7Request::Http(req) => {
            let mut matched = None;
            for p in &other {
                if !p.server_names.is_empty() {
                    continue; // a plaintext request has no SNI to match
                }
                if let Some(inj) = http_policy_accepts(p, req) {
                    matched = Some((p, inj));
                    break;
                }
            }
            match matched {
                Some((p, inj)) => {
                    d.deciding = vec![p.origin.clone()];
                    d.injected_headers = inj;
                    d.l7_detail = Some(format!("{} {} matched an HTTP rule", req.method, req.path));
                }
                None => {
                    d.outcome = Outcome::Http403;
                    d.deciding = other.iter().map(|p| p.origin.clone()).collect();
                    d.l7_detail = Some(format!("no HTTP rule matches {} {}", req.method, req.path));
                }
            }
        }
        L7Request::Tls { sni, http } => {
            let sni_ok: Vec<&&Arc<L7Policy>> = other
                .iter()
                .filter(|p| {
                    p.server_names.is_empty()
                        || p.server_names.iter().any(|n| server_name_matches(n, sni))
                })
                .collect();
            if sni_ok.is_empty() {
                d.outcome = Outcome::TlsDenied;
                d.deciding = other.iter().map(|p| p.origin.clone()).collect();
                d.l7_detail = Some(format!("SNI `{sni}` matches no serverNames"));
                return d;
            }
            let with_http: Vec<&&&Arc<L7Policy>> =
                sni_ok.iter().filter(|p| p.http.is_some()).collect();
            if with_http.len() < sni_ok.len() {
                // Some matching rule has no HTTP rules: the TLS handshake and everything after pass.
                if let Some(p) = sni_ok.iter().find(|p| p.http.is_none()) {
                    d.deciding = vec![p.origin.clone()];
                }
                d.l7_detail = Some(format!("SNI `{sni}` allowed"));
                return d;
            }
            let Some(req) = http else {
                return d;
            };
            for p in &with_http {
                if !p.terminating_tls {
                    continue;
                }
                if let Some(inj) = http_policy_accepts(p, req) {
                    d.deciding = vec![p.origin.clone()];
                    d.injected_headers = inj;
                    d.l7_detail = Some(format!(
                        "{} {} matched an HTTP rule inside TLS",
                        req.method, req.path
                    ));
                    return d;
                }
            }
            d.outcome = Outcome::Http403;
            d.deciding = with_http.iter().map(|p| p.origin.clone()).collect();
            d.l7_detail = Some(format!("no HTTP rule matches {} {}", req.method, req.path));
        }
    }
    d
}

/// `Some(headers to inject)` when some HTTP rule of the policy accepts the request.
fn http_policy_accepts(p: &L7Policy, req: &HttpRequest) -> Option<Vec<(String, String)>> {
    let rules = p.http.as_ref()?;
    rules.iter().find_map(|r| http_rule_accepts(r, req))
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
    let from_outcome = |o: Outcome| match o {
        Outcome::NotEnforced | Outcome::Allowed => None,
        Outcome::DefaultDeny | Outcome::DenyRule => Some(Verdict::Deny),
        Outcome::Http403 => Some(Verdict::Http403),
        Outcome::TlsDenied => Some(Verdict::TlsDenied),
        Outcome::DnsRefused => Some(Verdict::DnsRefused),
    };
    let verdict = from_outcome(egress.outcome)
        .or_else(|| ingress.as_ref().and_then(|i| from_outcome(i.outcome)))
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
