//! The generated inputs: a small cluster and CNP/CCNP policies as a syntax tree, rendered to
//! the scenario / manifest YAML that the engine parses. Keeping a tree (rather than text)
//! lets the properties rewrite the same policies in several equivalent layouts.

use std::fmt::Write as _;

// ---------------------------------------------------------------------------------------
// A tiny YAML emitter (block style, quoting whatever is not a plain identifier).
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Y {
    Str(String),
    Int(i64),
    Bool(bool),
    List(Vec<Y>),
    Map(Vec<(String, Y)>),
    /// A literal block scalar (`key: |`).
    Block(String),
}

pub fn s(text: &str) -> Y {
    Y::Str(text.to_string())
}

pub fn map(entries: Vec<(&str, Y)>) -> Y {
    Y::Map(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn scalar_text(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        && text.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && !matches!(
            text.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        text.to_string()
    } else {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn inline(y: &Y) -> Option<String> {
    match y {
        Y::Str(t) => Some(scalar_text(t)),
        Y::Int(i) => Some(i.to_string()),
        Y::Bool(b) => Some(b.to_string()),
        Y::List(l) if l.is_empty() => Some("[]".into()),
        Y::Map(m) if m.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn pad(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

fn write_after_key(y: &Y, indent: usize, out: &mut String) {
    if let Some(t) = inline(y) {
        let _ = writeln!(out, " {t}");
        return;
    }
    match y {
        Y::Map(m) => {
            out.push('\n');
            write_map(m, indent + 2, false, out);
        }
        Y::List(l) => {
            out.push('\n');
            write_list(l, indent + 2, out);
        }
        Y::Block(text) => {
            out.push_str(" |\n");
            for line in text.lines() {
                if !line.is_empty() {
                    pad(out, indent + 2);
                    out.push_str(line);
                }
                out.push('\n');
            }
        }
        _ => {}
    }
}

/// `first_inline`: the first entry follows a `- ` already written.
fn write_map(m: &[(String, Y)], indent: usize, first_inline: bool, out: &mut String) {
    for (i, (k, v)) in m.iter().enumerate() {
        if !(i == 0 && first_inline) {
            pad(out, indent);
        }
        out.push_str(&scalar_text(k));
        out.push(':');
        write_after_key(v, indent, out);
    }
}

fn write_list(l: &[Y], indent: usize, out: &mut String) {
    for item in l {
        pad(out, indent);
        out.push('-');
        if let Some(t) = inline(item) {
            let _ = writeln!(out, " {t}");
            continue;
        }
        match item {
            Y::Map(m) => {
                out.push(' ');
                write_map(m, indent + 2, true, out);
            }
            Y::List(inner) => {
                out.push('\n');
                write_list(inner, indent + 2, out);
            }
            _ => {}
        }
    }
}

pub fn to_yaml(y: &Y) -> String {
    let mut out = String::new();
    match y {
        Y::Map(m) => write_map(m, 0, false, &mut out),
        Y::List(l) => write_list(l, 0, &mut out),
        other => out.push_str(&inline(other).unwrap_or_default()),
    }
    out
}

// ---------------------------------------------------------------------------------------
// The cluster.
// ---------------------------------------------------------------------------------------

pub const NAMESPACES: [&str; 2] = ["ns1", "ns2"];
pub const NODE_IPS: [&str; 2] = ["172.18.0.2", "172.18.0.3"];

#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: usize,
    pub node: usize,
    pub labels: Vec<(&'static str, &'static str)>,
    /// (name, port, protocol) container ports: named ports resolve against these.
    pub ports: Vec<(&'static str, u16, &'static str)>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    /// `team` label of ns1 and ns2 (namespace labels become identity labels).
    pub ns_team: [Option<&'static str>; 2],
    pub node_roles: [&'static str; 2],
    pub pods: Vec<Pod>,
    /// Endpoints with a reserved identity (`init`, `ingress`, ...).
    pub entities: Vec<&'static str>,
    /// Enables the host firewall, so that nodes are subjects too (nodeSelector rules).
    pub host_firewall: bool,
}

/// External names (world addresses) of every generated cluster. Each address yields a plain
/// CIDR identity and one learned under the name (what toFQDNs selects).
pub const EXTERNAL: [(&str, &str); 2] = [
    ("api.example.com", "198.51.100.7"),
    ("www.example.org", "203.0.113.5"),
];

impl Cluster {
    pub fn scenario_yaml(&self, policies: &str) -> String {
        let mut namespaces = Vec::new();
        for (i, ns) in NAMESPACES.iter().enumerate() {
            let mut labels = vec![("kubernetes.io/metadata.name", s(ns))];
            if let Some(t) = self.ns_team[i] {
                labels.push(("team", s(t)));
            }
            namespaces.push(map(vec![("name", s(ns)), ("labels", map(labels))]));
        }
        namespaces.push(map(vec![("name", s("kube-system"))]));
        let nodes = (0..2)
            .map(|i| {
                map(vec![
                    ("name", s(&format!("node{}", i + 1))),
                    ("ip", s(NODE_IPS[i])),
                    ("labels", map(vec![("role", s(self.node_roles[i]))])),
                ])
            })
            .collect();
        let mut endpoints = Vec::new();
        for (i, p) in self.pods.iter().enumerate() {
            let ports: Vec<Y> = p
                .ports
                .iter()
                .map(|(n, port, proto)| {
                    map(vec![
                        ("name", s(n)),
                        ("port", Y::Int(i64::from(*port))),
                        ("protocol", s(proto)),
                    ])
                })
                .collect();
            endpoints.push(map(vec![
                ("name", s(&format!("pod{i}"))),
                ("namespace", s(NAMESPACES[p.ns])),
                ("node", s(&format!("node{}", p.node + 1))),
                ("ip", s(&format!("10.0.{}.{}", p.node + 1, 10 + i))),
                (
                    "labels",
                    Y::Map(
                        p.labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), s(v)))
                            .collect(),
                    ),
                ),
                ("ports", Y::List(ports)),
            ]));
        }
        endpoints.push(map(vec![
            ("name", s("kube-dns")),
            ("namespace", s("kube-system")),
            ("node", s("node1")),
            ("ip", s("10.0.1.53")),
            ("labels", map(vec![("k8s-app", s("kube-dns"))])),
            (
                "ports",
                Y::List(vec![map(vec![
                    ("name", s("dns")),
                    ("port", Y::Int(53)),
                    ("protocol", s("UDP")),
                ])]),
            ),
        ]));
        for (i, e) in self.entities.iter().enumerate() {
            endpoints.push(map(vec![
                ("name", s(&format!("entity-{e}"))),
                ("node", s("node2")),
                ("ip", s(&format!("10.0.2.{}", 200 + i))),
                ("entity", s(e)),
            ]));
        }
        let external = EXTERNAL
            .iter()
            .map(|(n, ip)| map(vec![("name", s(n)), ("ips", Y::List(vec![s(ip)]))]))
            .collect();
        let mut top = vec![("name", s("generated"))];
        if self.host_firewall {
            top.push(("requires", Y::List(vec![s("host-firewall")])));
        }
        top.extend([
            ("cluster", map(vec![("name", s("default"))])),
            ("namespaces", Y::List(namespaces)),
            ("nodes", Y::List(nodes)),
            ("endpoints", Y::List(endpoints)),
            ("external", Y::List(external)),
            ("policies", Y::Block(policies.to_string())),
        ]);
        to_yaml(&map(top))
    }
}

// ---------------------------------------------------------------------------------------
// Policies.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sel {
    pub labels: Vec<(&'static str, &'static str)>,
    /// (key, operator, values)
    pub exprs: Vec<(&'static str, &'static str, Vec<&'static str>)>,
}

impl Sel {
    fn to_y(&self) -> Y {
        let mut m = Vec::new();
        if !self.labels.is_empty() {
            m.push((
                "matchLabels",
                Y::Map(
                    self.labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), s(v)))
                        .collect(),
                ),
            ));
        }
        if !self.exprs.is_empty() {
            m.push((
                "matchExpressions",
                Y::List(
                    self.exprs
                        .iter()
                        .map(|(k, op, vals)| {
                            let mut e = vec![("key", s(k)), ("operator", s(op))];
                            if !vals.is_empty() {
                                e.push(("values", Y::List(vals.iter().map(|v| s(v)).collect())));
                            }
                            map(e)
                        })
                        .collect(),
                ),
            ));
        }
        map(m)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fqdn {
    Name(&'static str),
    Pattern(&'static str),
}

impl Fqdn {
    fn to_y(&self) -> Y {
        match self {
            Fqdn::Name(n) => map(vec![("matchName", s(n))]),
            Fqdn::Pattern(p) => map(vec![("matchPattern", s(p))]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No L3 field: every peer (with ports), or nothing at all (`ingress: [{}]`).
    Wildcard,
    Endpoints(Vec<Sel>),
    Entities(Vec<&'static str>),
    Cidr(Vec<&'static str>),
    /// (cidr, except)
    CidrSet(Vec<(&'static str, Vec<&'static str>)>),
    /// Egress only.
    Fqdns(Vec<Fqdn>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub port: &'static str,
    pub end_port: Option<u16>,
    pub protocol: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L7 {
    None,
    /// (method, path) regexes.
    Http(Vec<(Option<&'static str>, Option<&'static str>)>),
    Dns(Vec<Fqdn>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    pub ports: Vec<Port>,
    pub l7: L7,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icmp {
    pub family: Option<&'static str>,
    pub ty: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub peer: Peer,
    pub ports: Option<Vec<PortRule>>,
    pub icmps: Option<Vec<Vec<Icmp>>>,
}

impl Entry {
    fn to_y(&self, section: Section) -> Y {
        let dir = if section.is_ingress() { "from" } else { "to" };
        let mut m: Vec<(String, Y)> = Vec::new();
        match &self.peer {
            Peer::Wildcard => {}
            Peer::Endpoints(l) => m.push((
                format!("{dir}Endpoints"),
                Y::List(l.iter().map(Sel::to_y).collect()),
            )),
            Peer::Entities(l) => m.push((
                format!("{dir}Entities"),
                Y::List(l.iter().map(|e| s(e)).collect()),
            )),
            Peer::Cidr(l) => m.push((
                format!("{dir}CIDR"),
                Y::List(l.iter().map(|e| s(e)).collect()),
            )),
            Peer::CidrSet(l) => m.push((
                format!("{dir}CIDRSet"),
                Y::List(
                    l.iter()
                        .map(|(c, ex)| {
                            let mut e = vec![("cidr", s(c))];
                            if !ex.is_empty() {
                                e.push(("except", Y::List(ex.iter().map(|x| s(x)).collect())));
                            }
                            map(e)
                        })
                        .collect(),
                ),
            )),
            Peer::Fqdns(l) => m.push((
                "toFQDNs".into(),
                Y::List(l.iter().map(Fqdn::to_y).collect()),
            )),
        }
        if let Some(rules) = &self.ports {
            let list = rules
                .iter()
                .map(|r| {
                    let ports = r
                        .ports
                        .iter()
                        .map(|p| {
                            let mut e = vec![("port", s(p.port))];
                            if let Some(end) = p.end_port {
                                e.push(("endPort", Y::Int(i64::from(end))));
                            }
                            if let Some(proto) = p.protocol {
                                e.push(("protocol", s(proto)));
                            }
                            map(e)
                        })
                        .collect();
                    let mut e = vec![("ports", Y::List(ports))];
                    match &r.l7 {
                        L7::None => {}
                        L7::Http(rules) => e.push((
                            "rules",
                            map(vec![(
                                "http",
                                Y::List(
                                    rules
                                        .iter()
                                        .map(|(method, path)| {
                                            let mut h = Vec::new();
                                            if let Some(x) = method {
                                                h.push(("method", s(x)));
                                            }
                                            if let Some(x) = path {
                                                h.push(("path", s(x)));
                                            }
                                            map(h)
                                        })
                                        .collect(),
                                ),
                            )]),
                        )),
                        L7::Dns(rules) => e.push((
                            "rules",
                            map(vec![(
                                "dns",
                                Y::List(rules.iter().map(Fqdn::to_y).collect()),
                            )]),
                        )),
                    }
                    map(e)
                })
                .collect();
            m.push(("toPorts".into(), Y::List(list)));
        }
        if let Some(icmps) = &self.icmps {
            let list = icmps
                .iter()
                .map(|fields| {
                    map(vec![(
                        "fields",
                        Y::List(
                            fields
                                .iter()
                                .map(|f| {
                                    let mut e = vec![("type", s(f.ty))];
                                    if let Some(fam) = f.family {
                                        e.push(("family", s(fam)));
                                    }
                                    map(e)
                                })
                                .collect(),
                        ),
                    )])
                })
                .collect();
            m.push(("icmps".into(), Y::List(list)));
        }
        Y::Map(m)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Ingress,
    IngressDeny,
    Egress,
    EgressDeny,
}

pub const SECTIONS: [Section; 4] = [
    Section::Ingress,
    Section::IngressDeny,
    Section::Egress,
    Section::EgressDeny,
];

impl Section {
    pub fn is_ingress(self) -> bool {
        matches!(self, Section::Ingress | Section::IngressDeny)
    }
    pub fn is_deny(self) -> bool {
        matches!(self, Section::IngressDeny | Section::EgressDeny)
    }
    pub fn key(self) -> &'static str {
        match self {
            Section::Ingress => "ingress",
            Section::IngressDeny => "ingressDeny",
            Section::Egress => "egress",
            Section::EgressDeny => "egressDeny",
        }
    }
    pub fn index(self) -> usize {
        match self {
            Section::Ingress => 0,
            Section::IngressDeny => 1,
            Section::Egress => 2,
            Section::EgressDeny => 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Endpoints(Sel),
    /// CCNP only (host firewall).
    Nodes(Sel),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub subject: Subject,
    /// Indexed by `Section::index`; `Some(vec![])` is written as `ingress: []`.
    pub sections: [Option<Vec<Entry>>; 4],
    /// `enableDefaultDeny` (ingress, egress).
    pub default_deny: [Option<bool>; 2],
}

impl Rule {
    fn to_y(&self) -> Y {
        let mut m = Vec::new();
        match &self.subject {
            Subject::Endpoints(sel) => m.push(("endpointSelector", sel.to_y())),
            Subject::Nodes(sel) => m.push(("nodeSelector", sel.to_y())),
        }
        for section in SECTIONS {
            if let Some(entries) = &self.sections[section.index()] {
                m.push((
                    section.key(),
                    Y::List(entries.iter().map(|e| e.to_y(section)).collect()),
                ));
            }
        }
        let mut dd = Vec::new();
        if let Some(b) = self.default_deny[0] {
            dd.push(("ingress", Y::Bool(b)));
        }
        if let Some(b) = self.default_deny[1] {
            dd.push(("egress", Y::Bool(b)));
        }
        if !dd.is_empty() {
            m.push(("enableDefaultDeny", map(dd)));
        }
        map(m)
    }

    pub fn has_entries(&self) -> bool {
        self.sections
            .iter()
            .any(|s| s.as_ref().is_some_and(|v| !v.is_empty()))
    }
}

/// How a policy writes its rules: `spec`, `specs`, or `spec` for the first rule and `specs`
/// for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Spec,
    Specs,
    Mixed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// `None` for a CCNP, `Some(namespace index)` for a CNP.
    pub ns: Option<usize>,
    pub rules: Vec<Rule>,
    pub form: Form,
}

impl Policy {
    pub fn to_yaml(&self) -> String {
        let kind = if self.ns.is_some() {
            "CiliumNetworkPolicy"
        } else {
            "CiliumClusterwideNetworkPolicy"
        };
        let mut meta = vec![("name", s(&self.name))];
        if let Some(ns) = self.ns {
            meta.push(("namespace", s(NAMESPACES[ns])));
        }
        let mut m = vec![
            ("apiVersion", s("cilium.io/v2")),
            ("kind", s(kind)),
            ("metadata", map(meta)),
        ];
        let rules: Vec<Y> = self.rules.iter().map(Rule::to_y).collect();
        let form = if rules.len() > 1 && self.form == Form::Spec {
            Form::Mixed
        } else {
            self.form
        };
        match form {
            Form::Spec | Form::Mixed if !rules.is_empty() => {
                let mut it = rules.into_iter();
                if let Some(first) = it.next() {
                    m.push(("spec", first));
                }
                let rest: Vec<Y> = it.collect();
                if !rest.is_empty() {
                    m.push(("specs", Y::List(rest)));
                }
            }
            _ => m.push(("specs", Y::List(rules))),
        }
        to_yaml(&map(m))
    }
}

pub fn policies_yaml(policies: &[Policy]) -> String {
    policies
        .iter()
        .map(Policy::to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}
