//! Engine benchmarks (criterion): the conformance suite end to end, and the shape of
//! Cilium's `BenchmarkRegenerateL3IngressPolicyRules`. Figures and how to read them:
//! `benches/README.md`.
//!
//! Run: `cargo bench -p membrane-cluster --bench engine`.
// A benchmark that cannot load its inputs has nothing to measure: failing loudly is right.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use membrane_cluster::runner::run_scenario;
use membrane_cluster::scenario::parse_scenario;
use membrane_cluster::world::World;
use membrane_policy::identity::{self, Identity, IdentityId, IdentityTable};
use membrane_policy::model::{Direction, FileId, Protocol};
use membrane_policy::options::Options;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::resolve::{DirectionPolicy, Repository, Subject};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::{Embedding, parse_documents};
use std::hint::black_box;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// 1. The conformance suite: every file parsed, its world built, every flow decided.
// ---------------------------------------------------------------------------------------

fn conformance_texts() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenario in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
        })
        .collect()
}

/// Everything `membrane test` does after reading the files; returns the number of flows.
fn run_all(texts: &[(String, String)]) -> usize {
    let mut flows = 0;
    for (_, text) in texts {
        let scenario = parse_scenario(text).unwrap();
        let world = World::from_scenario(scenario, 0);
        flows += run_scenario(&world).results.len();
    }
    flows
}

/// The baseline: only the YAML syntax of the same files (no schema, no engine).
fn parse_only(texts: &[(String, String)]) -> usize {
    texts
        .iter()
        .map(|(_, t)| parse_documents(t, Embedding::default()).unwrap().len())
        .sum()
}

fn bench_conformance(c: &mut Criterion) {
    let texts = conformance_texts();
    for (name, text) in &texts {
        if let Err(d) = parse_scenario(text) {
            panic!("{name}: {d:?}");
        }
    }
    let flows = run_all(&texts);
    eprintln!(
        "conformance: {} files, {flows} flows per iteration",
        texts.len()
    );

    let mut g = c.benchmark_group("conformance");
    g.bench_function("conformance_all_files", |b| {
        b.iter(|| run_all(black_box(&texts)))
    });
    g.bench_function("parse_only_baseline", |b| {
        b.iter(|| parse_only(black_box(&texts)))
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// 2./3. Cilium's BenchmarkRegenerateL3IngressPolicyRules (pkg/policy, distillery tests):
// 1000 identical rules selecting `foo` and allowing ingress from `bar`, 3000 identities
// labelled `foo<i>` plus cluster / service account / namespace `monitoring` /
// `app=analytics-erneh`; the policy of one `foo` endpoint is resolved for ingress.
// ---------------------------------------------------------------------------------------

const RULES: usize = 1000;
const IDENTITIES: usize = 3000;
const NAMESPACE: &str = "monitoring";

/// The rules as a user would write them: one CCNP per rule (a CCNP, so that the selectors
/// are Cilium's `k8s:foo` / `bar` exactly, with no namespace injected).
fn l3_ingress_rules_yaml(rules: usize) -> String {
    let mut y = String::new();
    for i in 0..rules {
        y.push_str(&format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\n\
             metadata: {{name: l3-ingress-{i}}}\n\
             spec:\n  endpointSelector: {{matchLabels: {{k8s:foo: \"\"}}}}\n  \
             ingress:\n  - fromEndpoints: [{{matchLabels: {{bar: \"\"}}}}]\n"
        ));
    }
    y
}

fn pod_labels<'a>(extra: &'a [(&'a str, &'a str)]) -> membrane_policy::labels::LabelSet {
    identity::pod_identity_labels(
        extra
            .iter()
            .copied()
            .chain([("app", "analytics-erneh")].iter().copied()),
        NAMESPACE,
        std::iter::empty(),
        "default",
        "default",
    )
}

struct L3Ingress {
    rules: Vec<membrane_policy::model::Rule>,
    table: IdentityTable,
    subject: Identity,
    /// A `bar` peer (when there is one) and a peer no rule selects.
    bar_peer: Option<IdentityId>,
    other_peer: IdentityId,
}

/// `bar_every`: every n-th identity also carries `bar` (0: none, as in Cilium's benchmark,
/// where the `bar` selector selects no identity at all).
fn l3_ingress(bar_every: usize) -> L3Ingress {
    let (resources, diags) = parse_resources(&l3_ingress_rules_yaml(RULES), Embedding::default());
    assert!(diags.is_empty(), "{diags:?}");
    let resources: Vec<(FileId, _)> = resources.into_iter().map(|r| (0, r)).collect();
    let set = PolicySet::build(&resources, &Options::default(), &Secrets::new());
    let rules = set.rules();
    assert_eq!(rules.len(), RULES);

    let mut table = IdentityTable::default();
    let mut bar_peer = None;
    let mut other_peer = 0;
    for i in 0..IDENTITIES {
        let key = format!("foo{i}");
        let is_bar = bar_every != 0 && i % bar_every == 0;
        let extra: Vec<(&str, &str)> = if is_bar {
            vec![(key.as_str(), ""), ("bar", "")]
        } else {
            vec![(key.as_str(), "")]
        };
        let id = table.pod(pod_labels(&extra));
        if is_bar {
            bar_peer.get_or_insert(id);
        } else {
            other_peer = id;
        }
    }
    // Cilium's `fooIdentity`: the endpoint the policy is computed for.
    let foo_id = table.pod(pod_labels(&[("foo", "")]));
    let subject = table.get(foo_id).unwrap().clone();
    assert_eq!(table.len(), IDENTITIES + 1 + 10);
    L3Ingress {
        rules,
        table,
        subject,
        bar_peer,
        other_peer,
    }
}

const NODE: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(172, 18, 0, 2))];

fn resolve(repo: &Repository, subject: &Identity) -> DirectionPolicy {
    let s = Subject {
        identity: subject,
        is_host: false,
        local_node_addrs: &NODE,
        own_ports: &[],
    };
    repo.resolve(&s, Direction::Ingress)
}

fn bench_l3_ingress(c: &mut Criterion) {
    let tcp = Protocol::Tcp.number();
    let mut g = c.benchmark_group("resolve_1000_rules_3000_identities");
    for (label, bar_every) in [("cilium_shape_bar_selects_0", 0), ("bar_selects_300", 10)] {
        let w = l3_ingress(bar_every);
        let repo = Repository::new(w.rules.clone(), Options::default(), w.table.clone(), &[]);
        let policy = resolve(&repo, &w.subject);
        assert!(policy.enforced);
        eprintln!(
            "{label}: {} rules, {} identities, {} map entries after resolve",
            repo.rules().count(),
            repo.identities().len(),
            policy.map.len()
        );
        if let Some(bar) = w.bar_peer {
            assert!(policy.lookup(bar, tcp, 80).is_some_and(|r| !r.value.deny));
        }
        assert!(policy.lookup(w.other_peer, tcp, 80).is_none());

        g.bench_function(BenchmarkId::new("resolve", label), |b| {
            b.iter(|| resolve(black_box(&repo), black_box(&w.subject)))
        });
        // Building the Repository computes every peer selector's selection (Cilium's
        // selector cache); the clones of the inputs are included, they are small next to it.
        g.bench_function(
            BenchmarkId::new("build_repository_and_resolve", label),
            |b| {
                b.iter(|| {
                    let repo =
                        Repository::new(w.rules.clone(), Options::default(), w.table.clone(), &[]);
                    resolve(&repo, black_box(&w.subject))
                })
            },
        );
        if let Some(bar) = w.bar_peer {
            g.bench_function(BenchmarkId::new("lookup_hit", label), |b| {
                b.iter(|| {
                    black_box(&policy)
                        .lookup(black_box(bar), tcp, black_box(80))
                        .is_some()
                })
            });
        }
        g.bench_function(BenchmarkId::new("lookup_miss", label), |b| {
            b.iter(|| {
                black_box(&policy)
                    .lookup(black_box(w.other_peer), tcp, black_box(80))
                    .is_some()
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_conformance, bench_l3_ingress
}
criterion_main!(benches);
