//! `membrane capacity`: per endpoint, the entries Cilium 1.17 would install in its BPF
//! policy map (`cilium_policy_<epid>`, both directions in one map) against the map's size
//! (`bpf-policy-map-max`), and the identities of each cluster against their limits. The
//! counting is `membrane_policy::capacity`; `docs/capacity.md` gives its Cilium sources.
//!
//! Each path (a scenario file, a manifest file or a directory of manifests) is one cluster
//! and one report. Exit 1 when some endpoint's map is at or above 90 %, 2 on unusable
//! input, else 0.

use crate::input::InputSource;
use crate::printers::{self, Output};
use membrane_cluster::manifests::Loaded;
use membrane_policy::capacity::{
    CLUSTER_IDENTITY_LIMIT, CidrPrefixes, DEFAULT_POLICY_MAP_MAX, DirectionContext, Fullness,
    LOCAL_IDENTITY_LIMIT, WARN_PERCENT, direction_keys, fullness,
};
use membrane_policy::engine::EndpointPolicy;
use membrane_policy::identity::{HOST, Identity, IdentityKind};
use membrane_policy::model::{Protocol, Rule};
use membrane_policy::resolve::{Repository, Subject, host_labels};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct CapacityArgs {
    /// Scenario files, manifest files or directories of manifests: each is one cluster and
    /// one report.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Entries of an endpoint's policy map (Cilium's `bpf-policy-map-max`).
    #[arg(long = "policy-map-max", value_name = "N", default_value_t = DEFAULT_POLICY_MAP_MAX,
          value_parser = parse_max)]
    pub policy_map_max: usize,
    /// A table per file, or one JSON object per line and file.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
}

fn parse_max(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "expected a positive number of entries, not {text:?}"
        )),
    }
}

/// One endpoint's map.
#[derive(Debug, Clone)]
pub struct EndpointCapacity {
    pub name: String,
    pub ingress: usize,
    pub egress: usize,
}

impl EndpointCapacity {
    pub fn entries(&self) -> usize {
        self.ingress + self.egress
    }
}

/// One file's (cluster's) report.
#[derive(Debug, Clone)]
pub struct FileCapacity {
    pub file: String,
    pub max: usize,
    /// Fullest first.
    pub endpoints: Vec<EndpointCapacity>,
    pub cluster_identities: usize,
    pub local_identities: usize,
}

impl FileCapacity {
    pub fn worst(&self) -> Fullness {
        self.endpoints
            .iter()
            .map(|e| fullness(e.entries(), self.max))
            .max()
            .unwrap_or(Fullness::Ok)
    }
}

pub fn run(args: CapacityArgs) -> u8 {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut worst = Fullness::Ok;
    let mut unusable = false;
    for path in &args.paths {
        let name = path.display().to_string();
        let loaded = match InputSource::Paths(vec![path.clone()]).load() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: {name}: {e}");
                unusable = true;
                continue;
            }
        };
        if printers::report_yaml_errors(&loaded) {
            unusable = true;
            continue;
        }
        let report = compute(&loaded, name, args.policy_map_max);
        worst = worst.max(report.worst());
        let written = match args.output {
            Output::Text => print_text(&mut out, &report),
            Output::Json => writeln!(out, "{}", to_json(&report)),
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return 0,
            Err(e) => {
                eprintln!("error: cannot write the output: {e}");
                return 2;
            }
        }
    }
    if let Err(e) = out.flush()
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("error: cannot write the output: {e}");
        return 2;
    }
    if unusable {
        2
    } else if worst >= Fullness::Warning {
        1
    } else {
        0
    }
}

/// The keys of both directions of one policy.
fn count(
    policy: &EndpointPolicy,
    repo: &Repository,
    subject: &Subject<'_>,
    prefixes: &CidrPrefixes,
) -> (usize, usize) {
    let rules: Vec<&Rule> = repo.selecting_rules(subject).map(|(_, r)| r).collect();
    let options = &repo.options;
    let cx = |localhost| DirectionContext {
        rules: &rules,
        identities: repo.identities(),
        prefixes,
        own_ports: subject.own_ports,
        localhost,
    };
    let localhost = options.allow_localhost && !subject.is_host;
    (
        direction_keys(&policy.ingress, &cx(localhost)).len(),
        direction_keys(&policy.egress, &cx(false)).len(),
    )
}

/// What endpoints sharing a count have in common: policy, identity, container ports.
type SharedKey = (usize, u32, Vec<(String, Protocol, u16)>);

/// Every Cilium endpoint of a loaded cluster (and every host endpoint under the host
/// firewall), with its map's entries.
pub fn compute(loaded: &Loaded, file: String, max: usize) -> FileCapacity {
    let snap = loaded.world.engine.state();
    let repo = snap.repository();
    let ids = snap.identities();
    let prefixes = CidrPrefixes::new(repo.rules(), ids);
    // Manifests: a workload's endpoint is named `namespace/workload`.
    let workload_names: HashMap<&str, String> = loaded
        .workloads
        .iter()
        .map(|w| (w.endpoint.as_str(), format!("{}/{}", w.namespace, w.name)))
        .collect();
    let mut endpoints = Vec::new();
    // Endpoints sharing a policy, identity and ports share the count.
    let mut seen: HashMap<SharedKey, (usize, usize)> = HashMap::new();
    for id in snap.endpoint_ids() {
        let (Some(policy), Some(spec), Some(identity)) = (
            snap.endpoint_policy(id),
            snap.endpoint(id),
            snap.endpoint_identity(id).and_then(|i| ids.get(i)),
        ) else {
            continue;
        };
        // No Cilium endpoint, so no policy map: what Cilium does not manage, and the API
        // server (outside the cluster, or on a node's host network).
        if matches!(spec.entity.as_deref(), Some("unmanaged" | "kube-apiserver")) {
            continue;
        }
        let ports: Vec<(String, Protocol, u16)> = spec
            .ports
            .iter()
            .map(|p| (p.name.clone(), p.protocol, p.port))
            .collect();
        let key = (Arc::as_ptr(&policy) as usize, identity.id, ports);
        let (ingress, egress) = match seen.get(&key) {
            Some(c) => *c,
            None => {
                let subject = Subject {
                    identity,
                    is_host: false,
                    local_node_addrs: &[],
                    own_ports: &key.2,
                };
                let c = count(&policy, repo, &subject, &prefixes);
                seen.insert(key, c);
                c
            }
        };
        let name = workload_names
            .get(spec.name.as_str())
            .cloned()
            .unwrap_or_else(|| spec.name.clone());
        endpoints.push(EndpointCapacity {
            name,
            ingress,
            egress,
        });
    }
    if repo.options.host_firewall {
        for (i, node) in snap.nodes().iter().enumerate() {
            let Some(policy) = snap.host_policy(i) else {
                continue;
            };
            let identity = Identity {
                id: HOST,
                labels: host_labels(&node.labels),
                kind: IdentityKind::Reserved,
                addr: Some(node.ip),
                fqdn_names: Vec::new(),
            };
            let addrs = node.addrs();
            let subject = Subject {
                identity: &identity,
                is_host: true,
                local_node_addrs: &addrs,
                own_ports: &[],
            };
            let (ingress, egress) = count(&policy, repo, &subject, &prefixes);
            endpoints.push(EndpointCapacity {
                name: format!("host/{}", node.name),
                ingress,
                egress,
            });
        }
    }
    endpoints.sort_by(|a, b| b.entries().cmp(&a.entries()).then(a.name.cmp(&b.name)));
    FileCapacity {
        file,
        max,
        endpoints,
        cluster_identities: ids.iter().filter(|i| i.kind == IdentityKind::Pod).count(),
        local_identities: prefixes.local_identities(),
    }
}

fn percent(entries: usize, max: usize) -> f64 {
    entries as f64 * 100.0 / max as f64
}

fn status(f: Fullness) -> &'static str {
    match f {
        Fullness::Ok => "ok",
        Fullness::Warning => "warning",
        Fullness::Full => "full",
    }
}

/// One JSON object: `{"file", "max", "entries": {endpoint: N}, "endpoints": [...],
/// "identities": {...}}`.
pub fn to_json(r: &FileCapacity) -> Value {
    let mut entries = Map::new();
    for e in &r.endpoints {
        entries.insert(e.name.clone(), json!(e.entries()));
    }
    let endpoints: Vec<Value> = r
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "endpoint": e.name,
                "entries": e.entries(),
                "ingress": e.ingress,
                "egress": e.egress,
                "percent": (percent(e.entries(), r.max) * 10.0).round() / 10.0,
                "status": status(fullness(e.entries(), r.max)),
            })
        })
        .collect();
    json!({
        "file": r.file,
        "max": r.max,
        "warn_percent": WARN_PERCENT,
        "entries": entries,
        "endpoints": endpoints,
        "identities": {
            "cluster": {"count": r.cluster_identities, "limit": CLUSTER_IDENTITY_LIMIT,
                        "range": "256..65535"},
            "local": {"count": r.local_identities, "limit": LOCAL_IDENTITY_LIMIT,
                      "range": "2^24 node-local scope (CIDR and FQDN identities)"},
        },
    })
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A table per file, fullest first, then the identities and the warnings.
pub fn print_text(out: &mut impl Write, r: &FileCapacity) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: policy map of {} entries per endpoint (bpf-policy-map-max), ingress and egress",
        r.file,
        thousands(r.max)
    )?;
    let width = r
        .endpoints
        .iter()
        .map(|e| e.name.chars().count())
        .chain([8])
        .max()
        .unwrap_or(8);
    writeln!(
        out,
        "  {}  {:>7}  {:>7}  {:>7}  {:>6}",
        printers::pad_right("ENDPOINT", width),
        "ENTRIES",
        "INGRESS",
        "EGRESS",
        "FULL"
    )?;
    for e in &r.endpoints {
        writeln!(
            out,
            "  {}  {:>7}  {:>7}  {:>7}  {:>5.1}%",
            printers::pad_right(&e.name, width),
            e.entries(),
            e.ingress,
            e.egress,
            percent(e.entries(), r.max)
        )?;
    }
    if r.endpoints.is_empty() {
        writeln!(out, "  (no Cilium endpoints)")?;
    }
    writeln!(
        out,
        "  identities: {} cluster-scoped of {} (256..65535), {} node-local CIDR/FQDN of {} (2^24 scope)",
        thousands(r.cluster_identities),
        thousands(CLUSTER_IDENTITY_LIMIT),
        thousands(r.local_identities),
        thousands(LOCAL_IDENTITY_LIMIT)
    )?;
    for e in &r.endpoints {
        let n = e.entries();
        match fullness(n, r.max) {
            Fullness::Ok => {}
            Fullness::Warning => writeln!(
                out,
                "warning: {}: {} uses {:.1}% of its policy map ({} of {} entries)",
                r.file,
                e.name,
                percent(n, r.max),
                thousands(n),
                thousands(r.max)
            )?,
            Fullness::Full => writeln!(
                out,
                "error: {}: {} needs {} entries, the policy map holds {}: Cilium would fail \
                 to regenerate the endpoint",
                r.file,
                e.name,
                thousands(n),
                thousands(r.max)
            )?,
        }
    }
    for (count, limit, what) in [
        (
            r.cluster_identities,
            CLUSTER_IDENTITY_LIMIT,
            "cluster-scoped",
        ),
        (r.local_identities, LOCAL_IDENTITY_LIMIT, "node-local"),
    ] {
        if fullness(count, limit) != Fullness::Ok {
            writeln!(
                out,
                "warning: {}: {} of {} {what} identities in use",
                r.file,
                thousands(count),
                thousands(limit)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(thousands(16384), "16,384");
        assert_eq!(thousands(65280), "65,280");
        assert_eq!(thousands(999), "999");
        assert!(parse_max("0").is_err());
        assert_eq!(parse_max("100"), Ok(100));
    }
}
