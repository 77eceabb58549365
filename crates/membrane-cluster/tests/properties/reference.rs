//! A brute-force reference evaluator: semantics §3.8 applied directly to the sanitized rules,
//! one flow at a time. It deliberately shares nothing with the engine's MapState (no keys,
//! no prefixes, no intersections, no precedence order): it walks every rule entry that
//! selects the subject and asks whether the entry covers the flow. What it does share is
//! the selector cache's question (`resolve::peer_selects`, `Selector::matches`) and the L7
//! matchers themselves (`GoRegex`, `DnsMatcher`): those are separate components with their
//! own tests, and the properties here are about how rules combine.

use membrane_policy::identity::{HOST, Identity, IdentityId, IdentityKind, IdentityTable};
use membrane_policy::labels::LabelSet;
use membrane_policy::model::{
    Direction, Entry, HttpRule, L7Policy, Peers, PortValue, Protocol, Rule, Subject,
};
use membrane_policy::options::{EnforcementMode, Options};
use membrane_policy::resolve::peer_selects;
use membrane_policy::verdict::{HttpRequest, L7Request, Outcome};
use std::collections::HashMap;

/// What the reference needs to know about the endpoint whose side is decided.
#[derive(Debug, Clone)]
pub struct RefSubject<'a> {
    pub labels: &'a LabelSet,
    pub is_host: bool,
    /// The endpoint's own container ports (ingress named ports).
    pub own_ports: &'a [(String, Protocol, u16)],
}

pub struct Reference<'a> {
    pub rules: &'a [Rule],
    pub identities: &'a IdentityTable,
    pub options: &'a Options,
    /// Every container port of the cluster (egress named ports).
    pub cluster_ports: &'a [(String, Protocol, u16)],
}

/// Enforcement of one direction of one endpoint (§3.8 steps 1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionState {
    pub enforced: bool,
    pub default_deny: bool,
}

/// The rules selecting one endpoint and the posture of one of its directions.
#[derive(Debug, Clone)]
pub struct RefSide<'a> {
    pub state: DirectionState,
    pub selecting: Vec<&'a Rule>,
}

/// How an entry's L4 part matched a flow: the L7 rules of the matching `toPorts` item, and
/// whether the port was written as one exact port (only such a plain allow opens DNS, §9.14).
#[derive(Debug, Clone, Copy)]
pub struct PortHit<'r> {
    pub l7: Option<&'r L7Policy>,
    pub exact: bool,
}

impl<'a> Reference<'a> {
    /// §3.8 step 1 (and §3.1): node rules select only the host endpoint, endpoint rules only
    /// other endpoints.
    pub fn selecting(&self, subject: &RefSubject<'_>) -> Vec<&'a Rule> {
        self.rules
            .iter()
            .filter(|r| match &r.subject {
                Subject::Endpoints(s) => !subject.is_host && s.matches(subject.labels),
                Subject::Nodes(s) => subject.is_host && s.matches(subject.labels),
            })
            .collect()
    }

    /// §3.8 steps 2-3. Two readings are pinned here where §3.8's one-liners are terse:
    /// - enforcement by `enable-policy=always` or by the `reserved:init` label is default
    ///   deny whatever `enableDefaultDeny` says (§3.1: "drops everything until it is
    ///   allowed"; Cilium's `computePolicyEnforcementAndRules` returns default deny for both
    ///   directions in that case before it looks at `enableDefaultDeny`);
    /// - otherwise the direction is default deny iff some selecting rule with entries for
    ///   it does not opt out (`enableDefaultDeny.<d>` unset or true).
    pub fn direction_state(&self, subject: &RefSubject<'_>, d: Direction) -> DirectionState {
        let selecting = self.selecting(subject);
        let with_dir: Vec<&&Rule> = selecting.iter().filter(|r| r.has(d)).collect();
        let forced = match self.options.enforcement {
            EnforcementMode::Never => {
                return DirectionState {
                    enforced: false,
                    default_deny: false,
                };
            }
            EnforcementMode::Always => true,
            EnforcementMode::Default => subject.labels.has_reserved("init"),
        };
        let enforced = forced || !with_dir.is_empty();
        let default_deny = forced || with_dir.iter().any(|r| r.default_deny(d) != Some(false));
        DirectionState {
            enforced,
            default_deny: enforced && default_deny,
        }
    }

    /// Whether the entry's L3 part selects the peer. No L3 field selects every peer; an
    /// explicit empty list selects nothing.
    pub fn entry_selects_peer(&self, e: &Entry, peer: &Identity) -> bool {
        match &e.peers {
            Peers::Wildcard => true,
            Peers::Selectors(list) => list.iter().any(|s| peer_selects(s, peer, self.options)),
        }
    }

    /// §9.5: ingress names resolve against the endpoint's own ports; egress names across the
    /// cluster, and to nothing when the name has two different numbers somewhere.
    fn named_port(
        &self,
        name: &str,
        protocol: Protocol,
        subject: &RefSubject<'_>,
        d: Direction,
    ) -> Option<u16> {
        match d {
            Direction::Ingress => subject
                .own_ports
                .iter()
                .find(|(n, p, _)| n == name && *p == protocol)
                .map(|(_, _, port)| *port),
            Direction::Egress => {
                let mut numbers: Vec<u16> = self
                    .cluster_ports
                    .iter()
                    .filter(|(n, _, _)| n == name)
                    .map(|(_, _, p)| *p)
                    .collect();
                numbers.sort_unstable();
                numbers.dedup();
                if numbers.len() != 1 {
                    return None;
                }
                self.cluster_ports
                    .iter()
                    .find(|(n, p, _)| n == name && *p == protocol)
                    .map(|(_, _, port)| *port)
            }
        }
    }

    /// Every way the entry's L4 part covers (protocol, port). Empty: not covered.
    /// - no `toPorts` and no `icmps`: every protocol and port, ICMP included (§3.4.2, §9.4);
    /// - `icmps`: that ICMP family with the type in the port position (§9.13);
    /// - `toPorts`: the listed protocol (ANY was expanded to TCP+UDP+SCTP by sanitizing),
    ///   a single port, a range, port 0 = every port of that protocol, or a named port.
    pub fn entry_port_hits<'r>(
        &self,
        e: &'r Entry,
        protocol: Protocol,
        port: u16,
        subject: &RefSubject<'_>,
        d: Direction,
    ) -> Vec<PortHit<'r>> {
        let mut hits = Vec::new();
        if e.ports.is_none() && e.icmps.is_none() {
            hits.push(PortHit {
                l7: None,
                exact: false,
            });
            return hits;
        }
        for icmp in e.icmps.iter().flatten() {
            let family = if icmp.v6 {
                Protocol::Icmpv6
            } else {
                Protocol::Icmp
            };
            if family == protocol && u16::from(icmp.icmp_type) == port {
                hits.push(PortHit {
                    l7: None,
                    exact: true,
                });
            }
        }
        for rule in e.ports.iter().flatten() {
            for spec in &rule.ports {
                if spec.protocol != protocol {
                    continue;
                }
                let (lo, hi) = match &spec.port {
                    PortValue::Range(lo, hi) => (*lo, *hi),
                    PortValue::Named(name) => {
                        match self.named_port(name, spec.protocol, subject, d) {
                            Some(p) => (p, p),
                            None => continue,
                        }
                    }
                };
                if lo <= port && port <= hi {
                    hits.push(PortHit {
                        l7: rule.l7.as_deref(),
                        exact: lo == hi && !(lo == 0 && hi == 65535),
                    });
                }
            }
        }
        hits
    }

    /// `ingress: [{}]` and the like: enforcement without any traffic (§3.3, §9.1).
    fn matches_nothing(e: &Entry) -> bool {
        matches!(e.peers, Peers::Wildcard) && e.ports.is_none() && e.icmps.is_none()
    }

    /// Whether a deny entry of `rules` that selects the subject covers the flow.
    pub fn deny_covers(
        &self,
        rules: &[&Rule],
        subject: &RefSubject<'_>,
        d: Direction,
        peer: &Identity,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        rules.iter().any(|r| {
            r.entries.iter().any(|e| {
                e.deny
                    && e.direction == d
                    && !Self::matches_nothing(e)
                    && self.entry_selects_peer(e, peer)
                    && !self
                        .entry_port_hits(e, protocol, port, subject, d)
                        .is_empty()
            })
        })
    }

    /// One side of a flow, §3.8 steps 1-8. The peer is looked up in the identity table; an
    /// unknown number has no labels (only wildcards select it).
    pub fn decide(
        &self,
        subject: &RefSubject<'_>,
        d: Direction,
        peer: IdentityId,
        protocol: Protocol,
        port: u16,
        request: &L7Request,
    ) -> Outcome {
        let unknown;
        let peer = match self.identities.get(peer) {
            Some(i) => i,
            None => {
                unknown = Identity {
                    id: peer,
                    labels: LabelSet::default(),
                    kind: IdentityKind::Reserved,
                    addr: None,
                    fqdn_names: vec![],
                };
                &unknown
            }
        };
        let side = self.side(subject, d);
        self.decide_in(&side, subject, d, peer, protocol, port, request)
    }

    /// What `decide` computes once per (subject, direction).
    pub fn side(&self, subject: &RefSubject<'_>, d: Direction) -> RefSide<'a> {
        RefSide {
            state: self.direction_state(subject, d),
            selecting: self.selecting(subject),
        }
    }

    /// `decide` with the per-(subject, direction) part computed by `side`.
    #[allow(clippy::too_many_arguments)]
    pub fn decide_in(
        &self,
        side: &RefSide<'_>,
        subject: &RefSubject<'_>,
        d: Direction,
        peer: &Identity,
        protocol: Protocol,
        port: u16,
        request: &L7Request,
    ) -> Outcome {
        let state = side.state;
        if !state.enforced {
            return Outcome::NotEnforced;
        }
        let selecting = &side.selecting;
        // Step 5: deny wins over everything, allow-localhost included (§9.7).
        if self.deny_covers(selecting, subject, d, peer, protocol, port) {
            return Outcome::DenyRule;
        }
        // Step 6: the local host reaches local endpoints (allow-localhost). It is a plain L3
        // entry of the agent's, outside every rule's L4 filter: where a rule selects the host
        // on this port with L7 rules, those still apply (checked against Cilium's engine);
        // elsewhere it allows everything (§3.5).
        let localhost = d == Direction::Ingress
            && self.options.allow_localhost
            && !subject.is_host
            && peer.id == HOST;
        // fromRequires / toRequires: conditions on every allowed peer (never generated, but
        // honoured so that the reference stays a reading of the rules).
        let requires = selecting.iter().flat_map(|r| match d {
            Direction::Ingress => r.requires_ingress.iter(),
            Direction::Egress => r.requires_egress.iter(),
        });
        let requires_ok = requires.clone().all(|s| s.matches(&peer.labels));
        let mut allows: Vec<PortHit<'_>> = Vec::new();
        if requires_ok {
            for r in selecting {
                for e in &r.entries {
                    if e.deny || e.direction != d || Self::matches_nothing(e) {
                        continue;
                    }
                    if !self.entry_selects_peer(e, peer) {
                        continue;
                    }
                    allows.extend(self.entry_port_hits(e, protocol, port, subject, d));
                }
            }
        }
        // Step 3: a direction where every rule opted out of default deny gets an L3/L4
        // allow-all. It is a plain allow for HTTP (§9.15) but never opens DNS (§9.14).
        if !state.default_deny {
            allows.push(PortHit {
                l7: None,
                exact: false,
            });
        }
        if localhost && !allows.iter().any(|h| h.l7.is_some()) {
            return Outcome::Allowed;
        }
        if allows.is_empty() {
            return Outcome::DefaultDeny;
        }
        // Steps 7-8: L7.
        let plain = allows.iter().any(|h| h.l7.is_none());
        let dns: Vec<&L7Policy> = allows
            .iter()
            .filter_map(|h| h.l7)
            .filter(|p| p.dns.is_some())
            .collect();
        let http: Vec<&L7Policy> = allows
            .iter()
            .filter_map(|h| h.l7)
            .filter(|p| p.http.is_some())
            .collect();
        match request {
            L7Request::Dns { qname } if !dns.is_empty() => {
                let by_pattern = dns
                    .iter()
                    .any(|p| p.dns.iter().flatten().any(|m| m.matches(qname)));
                // Only a plain allow written for exactly this port opens every name.
                let by_exact_plain = allows.iter().any(|h| h.l7.is_none() && h.exact);
                if by_pattern || by_exact_plain {
                    Outcome::Allowed
                } else {
                    Outcome::DnsRefused
                }
            }
            L7Request::Http(req) if !http.is_empty() && dns.is_empty() => {
                if plain
                    || http
                        .iter()
                        .any(|p| p.http.iter().flatten().any(|r| http_rule_matches(r, req)))
                {
                    Outcome::Allowed
                } else {
                    Outcome::Http403
                }
            }
            // No proxy for this request type on this port: L3/L4 decided it.
            _ => Outcome::Allowed,
        }
    }
}

/// §5.1 restricted to what the generators write: method and path are RE2 full matches;
/// headers need presence or an exact value.
fn http_rule_matches(r: &HttpRule, req: &HttpRequest) -> bool {
    assert!(
        r.header_matches.is_empty(),
        "the reference does not model headerMatches"
    );
    let full = |re: &Option<membrane_policy::l7::go_regex::GoRegex>, text: &str| {
        re.as_ref().is_none_or(|re| re.is_full_match(text))
    };
    let headers: HashMap<String, &str> = req
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    full(&r.method, &req.method)
        && full(&r.path, &req.path)
        && full(&r.host, &req.host)
        && r.headers.iter().all(|(name, want)| {
            match (headers.get(&name.to_ascii_lowercase()), want) {
                (None, _) => false,
                (Some(v), Some(w)) => v == w,
                (Some(_), None) => true,
            }
        })
}
