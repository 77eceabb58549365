//! Sanitized rules: what the agent enforces after validation, namespace injection and
//! the translation of Kubernetes NetworkPolicy, each piece carrying where it came from.

use crate::api::{PolicyKind, RuleSection};
use crate::l7::dns_pattern::DnsMatcher;
use crate::l7::go_regex::GoRegex;
use crate::labels::Selector;
use crate::yaml::Span;
use ipnet::IpNet;
use std::fmt;
use std::sync::Arc;

/// Which file a span points into; the caller keeps the table of file names.
pub type FileId = u32;

/// The policy resource a rule came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyOrigin {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
    pub file: FileId,
    pub span: Span,
}

impl fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind.short(), ns, self.name),
            None => write!(f, "{} {}", self.kind.short(), self.name),
        }
    }
}

/// One rule (`spec` or `specs[i]`) of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleOrigin {
    pub policy: Arc<PolicyOrigin>,
    /// `None` for `spec`, `Some(i)` for `specs[i]` (KNP rules have `None`).
    pub spec_index: Option<usize>,
    pub span: Span,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.spec_index {
            Some(i) => write!(f, "{} specs[{i}]", self.policy),
            None => write!(f, "{}", self.policy),
        }
    }
}

/// One entry of a rule section (`ingress[2]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryOrigin {
    pub rule: Arc<RuleOrigin>,
    pub section: RuleSection,
    pub index: usize,
    pub span: Span,
}

impl fmt::Display for EntryOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}[{}]",
            self.rule,
            self.section.field_name(),
            self.index
        )
    }
}

/// Why a policy-map entry exists: a policy's rule, or something the agent adds itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An entry (`ingress[2]`, ...) of a policy rule.
    Rule(Arc<EntryOrigin>),
    /// Every rule selecting the endpoint in this direction says `enableDefaultDeny: false`,
    /// so everything not denied is allowed; one such origin per opting-out rule.
    DefaultAllow {
        rule: Arc<RuleOrigin>,
        direction: Direction,
    },
    /// The agent's `allow-localhost` option: ingress from the local host. Cilium labels the
    /// entry `reserved:io.cilium.policy.derived-from=allow-localhost-ingress`.
    AllowLocalhost,
}

impl Origin {
    /// The policy behind the entry, when a policy is behind it.
    pub fn policy(&self) -> Option<&Arc<PolicyOrigin>> {
        match self {
            Origin::Rule(e) => Some(&e.rule.policy),
            Origin::DefaultAllow { rule, .. } => Some(&rule.policy),
            Origin::AllowLocalhost => None,
        }
    }

    pub fn rule(&self) -> Option<&Arc<RuleOrigin>> {
        match self {
            Origin::Rule(e) => Some(&e.rule),
            Origin::DefaultAllow { rule, .. } => Some(rule),
            Origin::AllowLocalhost => None,
        }
    }

    /// The rule entry, for origins that are one.
    pub fn entry(&self) -> Option<&Arc<EntryOrigin>> {
        match self {
            Origin::Rule(e) => Some(e),
            _ => None,
        }
    }

    /// The stable name of the kind of origin (the `kind` of the decision schema).
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Rule(_) => "rule",
            Origin::DefaultAllow { .. } => "default-allow",
            Origin::AllowLocalhost => "allow-localhost",
        }
    }

    /// Where the origin is written: its span (and the policy's file), if it is written.
    pub fn span(&self) -> Option<(FileId, Span)> {
        match self {
            Origin::Rule(e) => Some((e.rule.policy.file, e.span)),
            Origin::DefaultAllow { rule, .. } => Some((rule.policy.file, rule.span)),
            Origin::AllowLocalhost => None,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Rule(e) => write!(f, "{e}"),
            Origin::DefaultAllow { rule, direction } => {
                write!(f, "{rule} (enableDefaultDeny.{direction}: false)")
            }
            Origin::AllowLocalhost => f.write_str("agent option allow-localhost"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Endpoints(Selector),
    Nodes(Selector),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sanitized rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub origin: Arc<RuleOrigin>,
    pub subject: Subject,
    /// Whether each direction's lists were non-empty (allow or deny): that is what enables
    /// enforcement, even when the entries allow nothing.
    pub has_ingress: bool,
    pub has_egress: bool,
    pub default_deny_ingress: Option<bool>,
    pub default_deny_egress: Option<bool>,
    pub entries: Vec<Entry>,
    /// `fromRequires` / `toRequires`: extra conditions on every allowed peer.
    pub requires_ingress: Vec<Selector>,
    pub requires_egress: Vec<Selector>,
}

impl Rule {
    pub fn has(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.has_ingress,
            Direction::Egress => self.has_egress,
        }
    }

    pub fn default_deny(&self, d: Direction) -> Option<bool> {
        match d {
            Direction::Ingress => self.default_deny_ingress,
            Direction::Egress => self.default_deny_egress,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub origin: Arc<EntryOrigin>,
    pub direction: Direction,
    pub deny: bool,
    pub peers: Peers,
    /// `None`: every port and protocol (an L3-only rule); otherwise the port rules.
    pub ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<IcmpSpec>>,
    /// The peers are `fromEndpoints`/`toEndpoints` selectors: only those are narrowed by
    /// `fromRequires`/`toRequires`.
    pub endpoint_peers: bool,
}

impl Entry {
    /// `ingress: [{}]` and friends: enforcement without any allowed traffic.
    pub fn allows_nothing(&self) -> bool {
        matches!(self.peers, Peers::Wildcard) && self.ports.is_none() && self.icmps.is_none()
    }
}

#[derive(Debug, Clone)]
pub enum Peers {
    /// No L3 field was written: every peer.
    Wildcard,
    /// The union of these; an empty list selects nothing.
    Selectors(Vec<PeerSelector>),
}

#[derive(Debug, Clone)]
pub enum PeerSelector {
    Labels(Selector),
    Cidr {
        net: IpNet,
        except: Vec<IpNet>,
    },
    Fqdn(DnsMatcher),
    /// A Service; the cluster model expands it into its backends' selector.
    Service {
        namespace: String,
        name: Option<String>,
        selector: Option<Selector>,
    },
}

impl fmt::Display for PeerSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSelector::Labels(s) => write!(f, "{s}"),
            PeerSelector::Cidr { net, except } if except.is_empty() => write!(f, "cidr {net}"),
            PeerSelector::Cidr { net, except } => {
                let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                write!(f, "cidr {net} except {}", ex.join(","))
            }
            PeerSelector::Fqdn(m) => write!(f, "fqdn {}", m.source()),
            PeerSelector::Service {
                namespace,
                name: Some(n),
                ..
            } => write!(f, "service {namespace}/{n}"),
            PeerSelector::Service { namespace, .. } => write!(f, "services in {namespace}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Any => 0,
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmpv6 => 58,
            Protocol::Sctp => 132,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Any => "ANY",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().as_str() {
            "" | "ANY" => Some(Protocol::Any),
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            "ICMP" => Some(Protocol::Icmp),
            "ICMPV6" => Some(Protocol::Icmpv6),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortValue {
    /// Inclusive; `0..=65535` for port 0 ("every port").
    Range(u16, u16),
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortSpec {
    /// Never `Any` after sanitizing: ANY expands to TCP, UDP and SCTP.
    pub protocol: Protocol,
    pub port: PortValue,
}

#[derive(Debug, Clone)]
pub struct PortRule {
    pub ports: Vec<PortSpec>,
    pub l7: Option<Arc<L7Policy>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpSpec {
    pub v6: bool,
    pub icmp_type: u8,
}

/// The L7 part of one `toPorts` entry.
#[derive(Debug, Clone)]
pub struct L7Policy {
    pub origin: Arc<EntryOrigin>,
    pub span: Span,
    pub http: Option<Vec<HttpRule>>,
    pub dns: Option<Vec<DnsMatcher>>,
    /// Kafka or a generic `l7proto`: parsed but not enforced by membrane's proxies.
    pub other_parser: Option<String>,
    pub server_names: Vec<String>,
    pub terminating_tls: bool,
}

impl L7Policy {
    pub fn parser(&self) -> &str {
        if self.http.is_some() {
            "http"
        } else if self.dns.is_some() {
            "dns"
        } else if let Some(p) = &self.other_parser {
            p
        } else {
            "tls"
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpRule {
    pub method: Option<GoRegex>,
    pub path: Option<GoRegex>,
    pub host: Option<GoRegex>,
    /// `(name, Some(value))` requires that value; `(name, None)` requires presence.
    pub headers: Vec<(String, Option<String>)>,
    pub header_matches: Vec<HeaderMatch>,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchAction {
    Fail,
    Log,
    Add,
    Delete,
    Replace,
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub name: String,
    /// `None` when the value comes from a secret that is not available.
    pub value: Option<String>,
    pub mismatch: MismatchAction,
}
