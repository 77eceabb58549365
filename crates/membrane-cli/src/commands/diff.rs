//! `membrane diff OLD NEW`: the connectivity that changes between two policy sets.
//!
//! Both sides are loaded as `check` loads them; the parties and the ports in play are the
//! matrix's (`membrane_cluster::matrix::parties_and_ports`), plus the external names DNS
//! answers name. Only the rows and columns of parties a changed policy selects (on either
//! side) can change: a policy only writes the maps of the endpoints it selects. So the
//! cells of the other parties are never evaluated, and the ones that are, are evaluated once
//! per class (parties with the same identity and ports on both sides), as the matrix does.
//! When anything but the policies differs (workloads, namespaces, Services, nodes, DNS
//! answers), every cell is evaluated.
//!
//! Exit codes: 0 when nothing changes (nothing is printed), 1 when something does (a CI
//! gate), 2 on unusable input.

use crate::input::{ClusterArgs, InputSource};
use crate::printers::{self, cell_policies, cell_reason, diff as diff_printer};
use membrane_cluster::manifests::{Loaded, SourceFile, load};
use membrane_cluster::matrix::{
    CellVerdict, Class, MatrixParty, PartyKind, classes, classify, l7_rules, parties_and_ports,
};
use membrane_cluster::world::{Party, World};
use membrane_policy::engine::PolicyKey;
use membrane_policy::model::{Protocol, Subject};
use membrane_policy::translate::Translated;
use membrane_policy::verdict::{L7Parser, L7Request, Verdict};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum DiffOutput {
    /// For people: one block per change, both sides' reasons.
    Text,
    /// `{"changes": [{from, to, port, protocol, old, new, policies, ...}]}`.
    Json,
    /// A Markdown table, for a pull-request comment.
    Md,
}

#[derive(clap::Args)]
#[command(mut_arg("kubeconfig", |a| a.help(
    "Read OLD from a live cluster through this kubeconfig; every path given is NEW (a \
     directory of policies only is applied over the cluster's objects)"
)))]
pub struct DiffArgs {
    /// OLD and NEW: two files or directories of manifests (or scenario files). With
    /// --kubeconfig, --context or --cluster, OLD is the cluster and every path is NEW.
    #[arg(required = true, value_name = "OLD NEW")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub output: DiffOutput,
}

/// A cell as the diff compares it: the verdict and, when a proxy checks requests, the L7
/// rules it checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellState {
    pub verdict: CellVerdict,
    pub l7: Vec<String>,
    /// The policies that decided it (`CNP ns/name`).
    pub policies: Vec<String>,
    /// The deciding side's explanation.
    pub reason: String,
}

/// What kind of change a cell went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    NewlyAllowed,
    NewlyDenied,
    /// Allowed on both sides, but what the proxy checks changed (or whether one checks).
    L7Changed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::NewlyAllowed => "newly-allowed",
            ChangeKind::NewlyDenied => "newly-denied",
            ChangeKind::L7Changed => "l7-changed",
        }
    }
}

/// One changed cell: a source, a destination (with the parties of the same classes, whose
/// cells are the same), a port.
#[derive(Debug, Clone)]
pub struct Change {
    pub from: String,
    pub to: String,
    /// Other parties with the same cell (same identity and ports on both sides).
    pub from_also: Vec<String>,
    pub to_also: Vec<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: ChangeKind,
    pub old: CellState,
    pub new: CellState,
}

/// The diff and how it was computed.
pub struct DiffReport {
    pub changes: Vec<Change>,
    /// Policies added, removed or changed (`CNP ns/name`).
    pub policies_changed: Vec<String>,
    /// Parties in one input only: not compared.
    pub only_old: Vec<String>,
    pub only_new: Vec<String>,
    /// Cells evaluated (per class pair and port, on both sides).
    pub evaluated: usize,
    /// Whether every cell had to be evaluated (something else than policies changed).
    pub full: bool,
}

pub fn run(args: DiffArgs) -> u8 {
    let (old_source, new_source) = match args.cluster.options() {
        Some(options) => (
            InputSource::Cluster {
                options,
                paths: vec![],
            },
            InputSource::Paths(args.paths.clone()),
        ),
        None => {
            if args.paths.len() != 2 {
                eprintln!(
                    "error: diff takes two inputs, OLD and NEW (or a cluster as OLD with \
                     --kubeconfig, --context or --cluster)"
                );
                return 2;
            }
            (
                InputSource::Paths(vec![args.paths[0].clone()]),
                InputSource::Paths(vec![args.paths[1].clone()]),
            )
        }
    };
    let (old, new) = match load_sides(&old_source, &new_source) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    for loaded in [&old, &new] {
        if printers::report_yaml_errors(loaded) {
            return 2;
        }
    }
    let report = diff(&old, &new);
    for p in &report.only_old {
        eprintln!("note: {p} is only in OLD: not compared");
    }
    for p in &report.only_new {
        eprintln!("note: {p} is only in NEW: not compared");
    }
    if report.changes.is_empty() {
        return 0;
    }
    let rendered = match args.output {
        DiffOutput::Text => diff_printer::text(&report),
        DiffOutput::Json => printers::pretty_line(&diff_printer::json(&report)),
        DiffOutput::Md => diff_printer::markdown(&report),
    };
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(rendered.as_bytes());
    1
}

/// Loads OLD and NEW. A NEW without workloads (policy files only) is read over OLD's
/// sources: its objects replace OLD's of the same kind, namespace and name, as
/// `kubectl apply` would.
fn load_sides(old: &InputSource, new: &InputSource) -> Result<(Loaded, Loaded), String> {
    let old_files: Vec<SourceFile> = old.sources(crate::input::StdinWording::Bare)?;
    if old_files.is_empty() {
        return Err("OLD: no YAML files found".into());
    }
    let new_files: Vec<SourceFile> = new.sources(crate::input::StdinWording::Bare)?;
    if new_files.is_empty() {
        return Err("NEW: no YAML files found".into());
    }
    let new_loaded = load(new_files.clone());
    let old_loaded = load(old_files.clone());
    if new_loaded.workloads.is_empty()
        && !old_loaded.workloads.is_empty()
        && !is_scenario(&new_loaded)
    {
        let mut files = old_files;
        files.extend(new_files);
        return Ok((old_loaded, load(files)));
    }
    Ok((old_loaded, new_loaded))
}

fn is_scenario(l: &Loaded) -> bool {
    l.world.scenario.name != "manifests"
}

/// A Debug text without positions (`line`, `col`, `offset`, `len`, `file` numbers): equal
/// for the same content wherever it is written.
fn without_positions(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for key in ["line: ", "col: ", "offset: ", "len: ", "file: "] {
            if let Some(after) = rest.strip_prefix(key) {
                out.push_str(key);
                rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
                continue 'outer;
            }
        }
        let mut chars = rest.chars();
        if let Some(c) = chars.next() {
            out.push(c);
        }
        rest = chars.as_str();
    }
    out
}

fn fingerprint(t: &Translated) -> String {
    without_positions(&format!("{}{:?}{:?}", t.valid, t.rules, t.rejected))
}

/// What, besides policies, decides connectivity: equal on both sides means only the
/// policies' subjects can change.
fn context(l: &Loaded) -> String {
    let s = &l.world.scenario;
    without_positions(&format!(
        "{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}{:?}",
        s.requires,
        s.cluster_name,
        s.namespaces,
        s.nodes,
        s.endpoints,
        s.external,
        s.secrets,
        s.routes,
        s.agent,
        s.services,
    )) + &format!("{:?}", s.cluster_identities)
}

/// One party of the diff: its party on both sides.
struct DiffParty {
    name: String,
    old: Party,
    new: Party,
    kind: PartyKind,
    /// Any port is relevant (world, external names, parties that declare no port).
    any_port: bool,
    ports: BTreeSet<(Protocol, u16)>,
    source: bool,
    destination: bool,
    /// An external name (DNS answers): looked up before connecting.
    external: bool,
}

/// Policies by key on one side.
fn policies_by_key(w: &World) -> BTreeMap<PolicyKey, &Translated> {
    w.policy_set
        .policies
        .iter()
        .map(|t| (PolicyKey::of(&t.origin), t))
        .collect()
}

/// Whether a policy (valid or not: its rules or what it would enforce) selects a party.
fn selects(w: &World, t: &Translated, p: Party) -> Result<bool, ()> {
    let labels = match p {
        Party::Pod(_) | Party::Entity { .. } => {
            let id = w.identity_of(p, None, false);
            w.identities().get(id).map(|i| &i.labels)
        }
        _ => None,
    };
    for r in t.rules.iter().chain(&t.rejected) {
        match &r.subject {
            Subject::Endpoints(sel) => {
                if labels.is_some_and(|l| sel.matches(l)) {
                    return Ok(true);
                }
            }
            // Host policies: the node's endpoints and what they reach; not followed.
            Subject::Nodes(_) => return Err(()),
        }
    }
    Ok(false)
}

fn party_of(mp: &MatrixParty) -> (bool, BTreeSet<(Protocol, u16)>) {
    (
        mp.kind == PartyKind::World || mp.ports_unknown(),
        mp.ports.iter().map(|d| (d.protocol, d.port)).collect(),
    )
}

/// The diff of two loaded inputs.
pub fn diff(old: &Loaded, new: &Loaded) -> DiffReport {
    let (op, oports, _) = parties_and_ports(old);
    let (np, nports, _) = parties_and_ports(new);
    let oclasses = classes(&old.world, &op);
    let nclasses = classes(&new.world, &np);
    let old_by_name: HashMap<&str, usize> = op
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect();
    let new_names: BTreeSet<&str> = np.iter().map(|p| p.name.as_str()).collect();
    let mut parties = Vec::new();
    // Per party, its class on each side (None: an external name, a class of its own).
    let mut keys: Vec<(Option<&Class>, Option<&Class>, usize)> = Vec::new();
    let mut only_new = Vec::new();
    for (i, p) in np.iter().enumerate() {
        let (any_port, ports) = party_of(p);
        let Some(&oi) = old_by_name.get(p.name.as_str()) else {
            // A party of NEW's matrix only (kube-dns once a policy names port 53) that OLD
            // has too: a class of its own.
            match old.world.party(&p.name) {
                Some(o) => {
                    keys.push((None, None, parties.len()));
                    parties.push(DiffParty {
                        name: p.name.clone(),
                        old: o,
                        new: p.party,
                        kind: p.kind,
                        any_port,
                        ports,
                        source: p.is_source,
                        destination: p.is_destination,
                        external: false,
                    });
                }
                None => only_new.push(p.name.clone()),
            }
            continue;
        };
        keys.push((Some(&oclasses[oi]), Some(&nclasses[i]), parties.len()));
        parties.push(DiffParty {
            name: p.name.clone(),
            old: op[oi].party,
            new: p.party,
            kind: p.kind,
            any_port,
            ports,
            source: p.is_source && op[oi].is_source,
            destination: p.is_destination && op[oi].is_destination,
            external: false,
        });
    }
    let mut only_old = Vec::new();
    for p in op.iter().filter(|p| !new_names.contains(p.name.as_str())) {
        match new.world.party(&p.name) {
            Some(n) => {
                let (any_port, ports) = party_of(p);
                keys.push((None, None, parties.len()));
                parties.push(DiffParty {
                    name: p.name.clone(),
                    old: p.party,
                    new: n,
                    kind: p.kind,
                    any_port,
                    ports,
                    source: p.is_source,
                    destination: p.is_destination,
                    external: false,
                });
            }
            None => only_old.push(p.name.clone()),
        }
    }
    // External names both sides know (DNS answers): destinations on any port.
    let mut externals: Vec<&str> = new
        .world
        .scenario
        .external
        .iter()
        .map(|e| e.name.as_str())
        .filter(|n| old.world.scenario.external.iter().any(|e| e.name == *n))
        .collect();
    externals.sort();
    externals.dedup();
    for name in externals {
        if name == "world" || new_names.contains(name) {
            continue;
        }
        let (Some(o), Some(n)) = (old.world.party(name), new.world.party(name)) else {
            continue;
        };
        keys.push((None, None, parties.len()));
        parties.push(DiffParty {
            name: name.to_string(),
            old: o,
            new: n,
            kind: PartyKind::World,
            any_port: true,
            ports: BTreeSet::new(),
            source: false,
            destination: true,
            external: true,
        });
    }
    // Groups: parties with the same classes on both sides.
    let mut group_of: HashMap<(Option<&Class>, Option<&Class>, usize), usize> = HashMap::new();
    let mut group = vec![0usize; parties.len()];
    let mut members: Vec<Vec<usize>> = Vec::new();
    for &(oc, nc, i) in &keys {
        let key = match (oc, nc) {
            (Some(_), Some(_)) => (oc, nc, usize::MAX),
            _ => (None, None, i),
        };
        let g = *group_of.entry(key).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[g].push(i);
        group[i] = g;
    }
    let ports: Vec<(Protocol, u16)> = oports
        .iter()
        .chain(&nports)
        .map(|p| (p.protocol, p.port))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // Which groups' rows and columns may change.
    let old_policies = policies_by_key(&old.world);
    let new_policies = policies_by_key(&new.world);
    let mut changed: Vec<(String, Option<&Translated>, Option<&Translated>)> = Vec::new();
    for key in old_policies
        .keys()
        .chain(new_policies.keys())
        .collect::<BTreeSet<_>>()
    {
        let (o, n) = (
            old_policies.get(key).copied(),
            new_policies.get(key).copied(),
        );
        let same = match (o, n) {
            (Some(o), Some(n)) => fingerprint(o) == fingerprint(n),
            _ => false,
        };
        if !same {
            let name = o.or(n).map(|t| t.origin.to_string()).unwrap_or_default();
            changed.push((name, o, n));
        }
    }
    let mut full = context(old) != context(new);
    let mut affected = vec![full; members.len()];
    if !full {
        'groups: for (g, m) in members.iter().enumerate() {
            let Some(&i) = m.first() else { continue };
            let p = &parties[i];
            for (_, o, n) in &changed {
                let hit_old = o.map(|t| selects(&old.world, t, p.old));
                let hit_new = n.map(|t| selects(&new.world, t, p.new));
                match (hit_old, hit_new) {
                    (Some(Err(())), _) | (_, Some(Err(()))) => {
                        full = true;
                        affected.iter_mut().for_each(|a| *a = true);
                        break 'groups;
                    }
                    (Some(Ok(true)), _) | (_, Some(Ok(true))) => {
                        affected[g] = true;
                        continue 'groups;
                    }
                    _ => {}
                }
            }
        }
    }
    let mut changes = Vec::new();
    let mut evaluated = 0;
    for (gs, ms) in members.iter().enumerate() {
        let s = &parties[ms[0]];
        if !s.source {
            continue;
        }
        for (gd, md) in members.iter().enumerate() {
            if !(affected[gs] || affected[gd]) {
                continue;
            }
            let d = &parties[md[0]];
            if !d.destination || (s.kind == PartyKind::World && d.kind == PartyKind::World) {
                continue;
            }
            for &(protocol, port) in &ports {
                if !(d.any_port || d.ports.contains(&(protocol, port))) {
                    continue;
                }
                evaluated += 2;
                let external = d.external.then_some(d.name.as_str());
                let o = cell(old, s.old, d.old, external, protocol, port);
                let n = cell(new, s.new, d.new, external, protocol, port);
                let kind = match (o.verdict, n.verdict) {
                    (CellVerdict::Deny, CellVerdict::Deny) => continue,
                    (CellVerdict::Deny, _) => ChangeKind::NewlyAllowed,
                    (_, CellVerdict::Deny) => ChangeKind::NewlyDenied,
                    _ if o.verdict == n.verdict && o.l7 == n.l7 => continue,
                    _ => ChangeKind::L7Changed,
                };
                let names = |m: &[usize]| -> Vec<String> {
                    m.iter().skip(1).map(|&i| parties[i].name.clone()).collect()
                };
                changes.push(Change {
                    from: s.name.clone(),
                    to: d.name.clone(),
                    from_also: names(ms),
                    to_also: names(md),
                    port,
                    protocol,
                    kind,
                    old: o,
                    new: n,
                });
            }
        }
    }
    changes.sort_by(|a, b| {
        (&a.from, &a.to, a.port, a.protocol.as_str()).cmp(&(
            &b.from,
            &b.to,
            b.port,
            b.protocol.as_str(),
        ))
    });
    DiffReport {
        changes,
        policies_changed: changed.into_iter().map(|(n, ..)| n).collect(),
        only_old,
        only_new,
        evaluated,
        full,
    }
}

/// A cell on one side. A destination that is an external name is looked up first, through
/// kube-dns (and the DNS proxy if a DNS rule applies), as flows to names are: a lookup that
/// is not answered denies the connection, and an answer the proxy saw makes the address's
/// identity the one learned under the name (what toFQDNs selects).
fn cell(
    l: &Loaded,
    from: Party,
    to: Party,
    external: Option<&str>,
    protocol: Protocol,
    port: u16,
) -> CellState {
    let w = &l.world;
    let mut learned = false;
    if let Some(name) = external
        && let Some(lookup) = w.dns_query(from, name)
    {
        if lookup.verdict != Verdict::DnsOk {
            return CellState {
                verdict: CellVerdict::Deny,
                l7: vec![],
                policies: cell_policies(&lookup),
                reason: format!(
                    "the DNS lookup of {name} fails: {}",
                    cell_reason(&lookup, l)
                ),
            };
        }
        learned = lookup.egress.proxy == Some(L7Parser::Dns);
    }
    let d = w.decide(from, to, protocol, port, &L7Request::None, learned);
    let (verdict, _) = classify(w, from, to, protocol, port, &d, learned);
    let l7 = if verdict == CellVerdict::L7 {
        l7_rules(w, from, to, protocol, port, learned)
    } else {
        vec![]
    };
    CellState {
        verdict,
        l7,
        policies: cell_policies(&d),
        reason: cell_reason(&d, l),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_ignored() {
        assert_eq!(
            without_positions("Span { line: 12, col: 3, offset: 400, len: 9 } port: 80"),
            "Span { line: , col: , offset: , len:  } port: 80"
        );
    }

    fn loaded(text: &str) -> Loaded {
        load(vec![SourceFile {
            name: "x.yaml".into(),
            text: text.into(),
        }])
    }

    const BASE: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: app}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: app}
spec:
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: c, image: busybox}]
"#;

    const POLICY: &str = r#"
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: app}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET}]}
"#;

    #[test]
    fn identical_inputs_have_no_change() {
        let a = loaded(&format!("{BASE}{POLICY}"));
        let b = loaded(&format!("{BASE}{POLICY}"));
        let r = diff(&a, &b);
        assert!(r.changes.is_empty());
        assert!(r.policies_changed.is_empty());
        assert_eq!(r.evaluated, 0);
    }

    #[test]
    fn l7_method_change() {
        let a = loaded(&format!("{BASE}{POLICY}"));
        let b = loaded(&format!("{BASE}{}", POLICY.replace("GET", "POST")));
        let r = diff(&a, &b);
        let got: Vec<(&str, &str, u16, ChangeKind)> = r
            .changes
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str(), c.port, c.kind))
            .collect();
        assert_eq!(
            got,
            [("app/client", "app/web", 8080, ChangeKind::L7Changed)]
        );
        assert_eq!(r.changes[0].old.l7, ["ingress http method=GET"]);
        assert_eq!(r.changes[0].new.l7, ["ingress http method=POST"]);
        assert_eq!(r.changes[0].new.policies, ["CNP app/web"]);
    }

    #[test]
    fn removing_the_policy_opens_web() {
        let a = loaded(&format!("{BASE}{POLICY}"));
        let b = loaded(BASE);
        let r = diff(&a, &b);
        // world → web:8080 and web → web:8080 were default-denied (web's ingress admitted
        // client only); client → web went from l7 (GET only) to allow.
        let got: Vec<(&str, &str, ChangeKind)> = r
            .changes
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str(), c.kind))
            .collect();
        assert_eq!(
            got,
            [
                ("app/client", "app/web", ChangeKind::L7Changed),
                ("app/web", "app/web", ChangeKind::NewlyAllowed),
                ("world", "app/web", ChangeKind::NewlyAllowed),
            ]
        );
    }
}
