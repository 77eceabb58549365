//! Property tests of the policy engine against its specification
//! (docs/semantics.md §3.8 and §9).
//!
//! The engine resolves each endpoint's policy into a MapState (keys of peer identity,
//! protocol and port prefix, plus the intersection keys it adds for denies and L7 overlaps)
//! and decides a flow with ONE lookup in the datapath's precedence order. That is fast and
//! subtle: a missing intersection key silently lets an allow shadow a deny or an L7 rule.
//! These properties generate small random clusters and random valid CNP/CCNP manifests
//! (`properties/strategy.rs`, rendered by `properties/model.rs` and loaded through
//! `parse_scenario` + `World`) and check, for every subject endpoint × direction × peer
//! identity class × probe (`properties/harness.rs`):
//!
//! a. the one-lookup verdict equals a brute-force reading of §3.8 over the sanitized rules
//!    (`properties/reference.rs`, which knows nothing about MapState);
//! b. verdicts do not depend on the order of documents, rules or entries;
//! c. nor on how rules are laid out (`spec`, `specs`, one policy per rule, one rule per
//!    entry);
//! d. adding a deny makes every flow it covers `deny-rule`, and leaves every other flow alone
//!    unless the new rule changes the direction's posture (enforcement / default deny).
//!
//! Peers: identities that every peer selector of the rules treats alike decide alike, so
//! one representative per class is checked (a random one per case). Probes: fixed ports and
//! requests around every value the generators write, the edges of every range in the
//! rules, and random ones; b-d check a random subset per case to stay fast.
//!
//! Failures print the flow and the whole generated scenario (the conformance-suite format,
//! without `flows:`). Run deeper with `PROPTEST_CASES=5000`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "properties/harness.rs"]
mod harness;
#[path = "properties/model.rs"]
mod model;
#[path = "properties/reference.rs"]
mod reference;
#[path = "properties/strategy.rs"]
mod strategy;

use harness::{Built, FlowKey, Knobs, Probe, build, build_text, fixed_probes};
use membrane_policy::model::Direction;
use membrane_policy::options::EnforcementMode;
use membrane_policy::verdict::Outcome;
use model::{Cluster, Entry, Form, Peer, Policy, Rule, SECTIONS, Section};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::BTreeMap;
use strategy::{EntryKind, cluster, entry, knobs, policies, random_probes};

/// 256 cases per property (`PROPTEST_CASES=5000` for a deeper run), no regression files
/// (failures are pinned as `#[test]`s below instead), and a bounded shrink so that a failure
/// is reported in reasonable time.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    }
}

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// `run` with proptest's deterministic generator: the same cases on every run.
fn run_deterministic<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{RngAlgorithm, TestRng};
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(config(), rng);
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

/// For the metamorphic properties (b, c, d): a random subset of the fixed probes, to keep the
/// run short; every probe still gets its turn over the 256 cases.
fn probe_subset() -> impl Strategy<Value = Vec<usize>> {
    prop::sample::subsequence((0..fixed_probes().len()).collect::<Vec<_>>(), 12..=18)
}

fn all_probes(extra: Vec<Probe>) -> Vec<Probe> {
    let mut p = fixed_probes();
    p.extend(extra);
    p
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::NotEnforced => "not-enforced",
        Outcome::Allowed => "allowed",
        Outcome::DefaultDeny => "default-deny",
        Outcome::DenyRule => "deny-rule",
        Outcome::Http403 => "http-403",
        Outcome::TlsDenied => "tls-denied",
        Outcome::DnsRefused => "dns-refused",
    }
}

/// Compares two verdict maps of the same cluster and reports the first difference.
fn same_verdicts(
    a: &BTreeMap<FlowKey, Outcome>,
    b: &BTreeMap<FlowKey, Outcome>,
    built_a: &Built,
    built_b: &Built,
    probes: &[Probe],
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (key, va) in a {
        let vb = b.get(key).copied();
        if vb != Some(*va) {
            return Err(TestCaseError::fail(format!(
                "{what}: {}\n  first layout: {}\n  second layout: {}\n--- first scenario ---\n{}\n--- second scenario ---\n{}",
                built_a.describe(*key, probes),
                outcome_name(*va),
                vb.map_or("missing", outcome_name),
                built_a.text,
                built_b.text,
            )));
        }
    }
    Ok(())
}

// =======================================================================================
// a. one lookup == brute force
// =======================================================================================

#[derive(Default)]
struct Stats {
    seen: BTreeMap<&'static str, usize>,
}

fn check_against_reference(
    cluster: &Cluster,
    policies: &[Policy],
    knobs: Knobs,
    probes: &[Probe],
    seed: u64,
    stats: &mut Stats,
) -> Result<(), TestCaseError> {
    let built = build(cluster, policies, knobs).map_err(TestCaseError::fail)?;
    let mut probes = probes.to_vec();
    probes.extend(harness::boundary_probes(&built.rules));
    let probes = &probes[..];
    let peers = built.peer_representatives(seed, &[]);
    let all: Vec<usize> = (0..probes.len()).collect();
    let keys = built.flow_keys(&peers, &all);
    let engine = built.engine_outcomes(&keys, probes);
    let reference = built.reference_outcomes(&keys, probes);
    for (key, want) in &reference {
        *stats.seen.entry(outcome_name(*want)).or_default() += 1;
        let got = engine[key];
        if got == *want {
            continue;
        }
        let dec = built.engine_decision(*key, probes);
        let deciding: Vec<String> = dec.deciding.iter().map(|o| o.to_string()).collect();
        return Err(TestCaseError::fail(format!(
            "{}\n  reference (§3.8): {}\n  engine lookup:    {} (key {:?}, deciding {:?})\nknobs: {:?}\n--- scenario ---\n{}",
            built.describe(*key, probes),
            outcome_name(*want),
            outcome_name(got),
            dec.key,
            deciding,
            knobs,
            built.text
        )));
    }
    Ok(())
}

/// Property a. Every verdict class must also show up often enough over the run: a generator
/// that never produces, say, a DNS refusal would make the property vacuous for DNS.
#[test]
fn lookup_agrees_with_brute_force() {
    let stats = std::cell::RefCell::new(Stats::default());
    // A fixed sequence of cases: how often a verdict class occurs varies by an order of
    // magnitude between random seeds (DNS refusals need a DNS rule, a DNS flow and a name it
    // does not match), so the coverage check below must not depend on the seed.
    run_deterministic(
        (
            cluster(),
            policies(),
            knobs(),
            random_probes(),
            any::<u64>(),
        ),
        |(cluster, policies, knobs, extra, seed)| {
            let probes = all_probes(extra);
            check_against_reference(
                &cluster,
                &policies,
                knobs,
                &probes,
                seed,
                &mut stats.borrow_mut(),
            )
        },
    );
    let stats = stats.into_inner();
    eprintln!("verdict classes checked: {:?}", stats.seen);
    for class in [
        "not-enforced",
        "allowed",
        "default-deny",
        "deny-rule",
        "http-403",
        "dns-refused",
    ] {
        let n = stats.seen.get(class).copied().unwrap_or(0);
        assert!(
            n >= 100,
            "verdict class {class} seen only {n} times: the generators do not exercise it ({:?})",
            stats.seen
        );
    }
}

// =======================================================================================
// b. order does not matter
// =======================================================================================

/// A small deterministic shuffler, seeded by proptest (so shrinking keeps the seed).
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn shuffled(policies: &[Policy], seed: u64) -> Vec<Policy> {
    let mut rng = Shuffler(seed | 1);
    let mut out = policies.to_vec();
    rng.shuffle(&mut out);
    for p in &mut out {
        rng.shuffle(&mut p.rules);
        for r in &mut p.rules {
            for entries in r.sections.iter_mut().flatten() {
                rng.shuffle(entries);
                for e in entries.iter_mut() {
                    match &mut e.peer {
                        Peer::Endpoints(l) => rng.shuffle(l),
                        Peer::Entities(l) => rng.shuffle(l),
                        Peer::Cidr(l) => rng.shuffle(l),
                        Peer::CidrSet(l) => rng.shuffle(l),
                        Peer::Fqdns(l) => rng.shuffle(l),
                        Peer::Wildcard => {}
                    }
                    if let Some(ports) = &mut e.ports {
                        rng.shuffle(ports);
                    }
                }
            }
        }
    }
    out
}

/// Property b: shuffling documents, the rules of `specs`, the entries of each section and
/// the peers of each entry never changes a verdict (allow is a union, deny wins whatever
/// its position; §3.4).
#[test]
fn verdicts_do_not_depend_on_order() {
    run(
        (cluster(), policies(), knobs(), any::<u64>(), probe_subset()),
        |(cluster, policies, knobs, seed, subset)| {
            let probes = fixed_probes();
            let a = build(&cluster, &policies, knobs).map_err(TestCaseError::fail)?;
            let b =
                build(&cluster, &shuffled(&policies, seed), knobs).map_err(TestCaseError::fail)?;
            let keys = a.flow_keys(&a.peer_representatives(seed, &[]), &subset);
            same_verdicts(
                &a.engine_outcomes(&keys, &probes),
                &b.engine_outcomes(&keys, &probes),
                &a,
                &b,
                &probes,
                "reordering changed a verdict",
            )
        },
    );
}

// =======================================================================================
// c. layout does not matter
// =======================================================================================

/// Every rule in a policy of its own, written with `spec`.
fn one_policy_per_rule(policies: &[Policy]) -> Vec<Policy> {
    let mut out = Vec::new();
    for p in policies {
        for r in &p.rules {
            out.push(Policy {
                name: format!("r{}", out.len()),
                ns: p.ns,
                rules: vec![r.clone()],
                form: Form::Spec,
            });
        }
    }
    out
}

/// All rules of a namespace (or all cluster-wide rules) in one policy's `specs` list.
fn one_policy_per_namespace(policies: &[Policy]) -> Vec<Policy> {
    let mut groups: BTreeMap<Option<usize>, Vec<Rule>> = BTreeMap::new();
    for p in policies {
        groups
            .entry(p.ns)
            .or_default()
            .extend(p.rules.iter().cloned());
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, (ns, rules))| Policy {
            name: format!("g{i}"),
            ns,
            rules,
            form: Form::Specs,
        })
        .collect()
}

/// Every entry in a rule of its own (same subject, same `enableDefaultDeny`), written as
/// `spec` + `specs` of one policy per original policy. A rule's direction is enforced by
/// any non-empty list, so the pieces enforce exactly what the whole did.
fn one_rule_per_entry(policies: &[Policy]) -> Vec<Policy> {
    policies
        .iter()
        .map(|p| {
            let mut rules = Vec::new();
            for r in &p.rules {
                for section in SECTIONS {
                    for e in r.sections[section.index()].iter().flatten() {
                        let mut piece = Rule {
                            subject: r.subject.clone(),
                            sections: [None, None, None, None],
                            default_deny: r.default_deny,
                        };
                        piece.sections[section.index()] = Some(vec![e.clone()]);
                        rules.push(piece);
                    }
                }
            }
            Policy {
                name: p.name.clone(),
                ns: p.ns,
                rules,
                form: Form::Mixed,
            }
        })
        .collect()
}

/// Property c.
#[test]
fn verdicts_do_not_depend_on_layout() {
    run(
        (cluster(), policies(), knobs(), any::<u64>(), probe_subset()),
        |(cluster, policies, knobs, seed, subset)| {
            let probes = fixed_probes();
            let base = build(&cluster, &policies, knobs).map_err(TestCaseError::fail)?;
            let keys = base.flow_keys(&base.peer_representatives(seed, &[]), &subset);
            let base_v = base.engine_outcomes(&keys, &probes);
            for (what, layout) in [
                ("one policy per rule (spec)", one_policy_per_rule(&policies)),
                (
                    "one specs list per namespace",
                    one_policy_per_namespace(&policies),
                ),
                (
                    "one rule per entry (spec + specs)",
                    one_rule_per_entry(&policies),
                ),
            ] {
                let other = build(&cluster, &layout, knobs).map_err(TestCaseError::fail)?;
                same_verdicts(
                    &base_v,
                    &other.engine_outcomes(&keys, &probes),
                    &base,
                    &other,
                    &probes,
                    &format!("rewriting as {what} changed a verdict"),
                )?;
            }
            Ok(())
        },
    );
}

// =======================================================================================
// d. deny wins
// =======================================================================================

const DENY_POLICY: &str = "extra-deny";

/// How the added deny entry is made.
#[derive(Debug, Clone)]
struct DenySpec {
    /// Copy an existing allow entry (`Some`) rather than use `random`: same peers and ports
    /// (the "same key" case), without its ports (a broader L3 deny), or without its peers (a
    /// broader L4 deny). The copy keeps the allow's rule subject and namespace.
    copy: Option<(Index, u8)>,
    random: Policy,
}

fn deny_rule() -> impl Strategy<Value = Rule> {
    let deny_entries = |egress: bool| {
        prop::option::weighted(
            0.7,
            prop::collection::vec(
                entry(EntryKind {
                    egress,
                    deny: true,
                    l7: false,
                }),
                1..=2,
            ),
        )
    };
    let dd = || prop_oneof![5 => Just(None), 2 => Just(Some(true)), 3 => Just(Some(false))];
    (
        strategy::rule(true).prop_map(|r| r.subject),
        deny_entries(false),
        deny_entries(true),
        dd(),
        dd(),
    )
        .prop_map(|(subject, ingress_deny, egress_deny, ddi, dde)| {
            let mut r = Rule {
                subject,
                sections: [None, ingress_deny, None, egress_deny],
                default_deny: [ddi, dde],
            };
            if !r.has_entries() {
                r.sections[1] = Some(vec![Entry {
                    peer: Peer::Wildcard,
                    ports: None,
                    icmps: None,
                }]);
            }
            r
        })
}

fn deny_spec() -> impl Strategy<Value = DenySpec> {
    (
        prop::option::weighted(0.6, (any::<Index>(), 0u8..3)),
        prop::bool::weighted(0.35),
        0..2usize,
        deny_rule(),
    )
        .prop_map(|(copy, ccnp, ns, mut rule)| {
            if !ccnp {
                // Node selectors are for cluster-wide policies only.
                if let model::Subject::Nodes(_) = rule.subject {
                    rule.subject = model::Subject::Endpoints(model::Sel {
                        labels: vec![],
                        exprs: vec![],
                    });
                }
            }
            DenySpec {
                copy,
                random: Policy {
                    name: DENY_POLICY.into(),
                    ns: if ccnp { None } else { Some(ns) },
                    rules: vec![rule],
                    form: Form::Spec,
                },
            }
        })
}

/// The deny policy to add to `policies`.
fn make_deny(policies: &[Policy], spec: &DenySpec) -> Policy {
    let Some((index, transform)) = spec.copy else {
        return spec.random.clone();
    };
    let mut allows = Vec::new();
    for p in policies {
        for r in &p.rules {
            for section in [Section::Ingress, Section::Egress] {
                for e in r.sections[section.index()].iter().flatten() {
                    // toFQDNs cannot be written in a deny section.
                    if !matches!(e.peer, Peer::Fqdns(_)) {
                        allows.push((p.ns, r, section, e));
                    }
                }
            }
        }
    }
    if allows.is_empty() {
        return spec.random.clone();
    }
    let (ns, rule, section, allow) = allows[index.index(allows.len())];
    let mut e = allow.clone();
    for pr in e.ports.iter_mut().flatten() {
        pr.l7 = model::L7::None;
    }
    let has_l4 = e.ports.is_some() || e.icmps.is_some();
    match transform {
        1 if e.peer != Peer::Wildcard => {
            e.ports = None;
            e.icmps = None;
        }
        2 if has_l4 => e.peer = Peer::Wildcard,
        _ => {}
    }
    let mut r = Rule {
        subject: rule.subject.clone(),
        sections: [None, None, None, None],
        default_deny: spec.random.rules[0].default_deny,
    };
    let deny_section = if section == Section::Ingress {
        Section::IngressDeny
    } else {
        Section::EgressDeny
    };
    r.sections[deny_section.index()] = Some(vec![e]);
    Policy {
        name: DENY_POLICY.into(),
        ns,
        rules: vec![r],
        form: Form::Spec,
    }
}

/// The deny rule with every deny entry replaced by one that covers nothing
/// (`ingressDeny: [{}]`): the same subject, directions and `enableDefaultDeny`, hence the
/// same posture, without the denials.
fn neutered(deny: &Policy) -> Policy {
    let mut p = deny.clone();
    for r in &mut p.rules {
        for section in [Section::IngressDeny, Section::EgressDeny] {
            if let Some(entries) = &mut r.sections[section.index()]
                && !entries.is_empty()
            {
                *entries = vec![Entry {
                    peer: Peer::Wildcard,
                    ports: None,
                    icmps: None,
                }];
            }
        }
    }
    p
}

fn is_pass(o: Outcome) -> bool {
    matches!(o, Outcome::NotEnforced | Outcome::Allowed)
}

/// Property d. With P the generated policies, D the added deny policy and D0 = D without
/// its denials (same posture), for every flow:
/// - if D selects the subject and one of its deny entries covers the flow (computed by the
///   reference's matching, not by the engine): the verdict under P+D is `deny-rule`, whatever
///   allows P has for that flow, however specific;
/// - otherwise, if the direction's posture (enforced, default deny) is the same under P and
///   P+D: the verdict is the one under P;
/// - otherwise D switched the posture on (a newly enforced direction, or a direction whose
///   rules had all opted out of default deny): the verdict is the one under P+D0, and it can
///   only be stricter than under P: a drop stays the same drop.
#[test]
fn deny_beats_allow() {
    let stats = std::cell::RefCell::new(DenyStats::default());
    run(
        (
            cluster(),
            policies(),
            knobs(),
            deny_spec(),
            any::<u64>(),
            probe_subset(),
        ),
        |(cluster, policies, knobs, spec, seed, subset)| {
            let probes = fixed_probes();
            let deny = make_deny(&policies, &spec);
            let mut with_deny = policies.clone();
            with_deny.push(deny.clone());
            let mut with_neutered = policies.clone();
            with_neutered.push(neutered(&deny));

            let before = build(&cluster, &policies, knobs).map_err(TestCaseError::fail)?;
            let after = build(&cluster, &with_deny, knobs).map_err(TestCaseError::fail)?;
            let posture_only =
                build(&cluster, &with_neutered, knobs).map_err(TestCaseError::fail)?;
            // `after` has every selector of the other two: its peer classes refine theirs.
            let keys = after.flow_keys(&after.peer_representatives(seed, &[]), &subset);
            let v_before = before.engine_outcomes(&keys, &probes);
            let v_after = after.engine_outcomes(&keys, &probes);
            let v_posture = posture_only.engine_outcomes(&keys, &probes);

            let deny_rules: Vec<membrane_policy::model::Rule> = after
                .rules
                .iter()
                .filter(|r| r.origin.policy.name == DENY_POLICY)
                .cloned()
                .collect();
            prop_assert!(!deny_rules.is_empty(), "the deny policy was not translated");
            let deny_ref = reference::Reference {
                rules: &deny_rules,
                ..after.reference()
            };

            // Per (subject, direction): the postures before and after, and which rules of
            // the deny policy select the subject.
            struct SideInfo<'r> {
                posture_before: (bool, bool),
                posture_after: (bool, bool),
                enforced: bool,
                deny_selecting: Vec<&'r membrane_policy::model::Rule>,
            }
            let mut sides = BTreeMap::new();
            for (si, subject) in after.subjects.iter().enumerate() {
                for d in harness::DIRECTIONS {
                    let pb = before.resolve(&before.subjects[si], d);
                    let pa = after.resolve(subject, d);
                    let rs = after.ref_subject(subject);
                    sides.insert(
                        (si, d),
                        SideInfo {
                            posture_before: (pb.enforced, pb.default_deny),
                            posture_after: (pa.enforced, pa.default_deny),
                            enforced: after.reference().direction_state(&rs, d).enforced,
                            deny_selecting: deny_ref.selecting(&rs),
                        },
                    );
                }
            }

            for (key, got) in &v_after {
                let (si, d, peer_id, pi) = *key;
                let side = &sides[&(si, d)];
                let rs = after.ref_subject(&after.subjects[si]);
                let peer = after.world.identities().get(peer_id).unwrap();
                let p = &probes[pi];
                let covered = side.enforced
                    && deny_ref.deny_covers(&side.deny_selecting, &rs, d, peer, p.protocol, p.port);
                let old = v_before[key];
                let (posture_b, posture_a) = (side.posture_before, side.posture_after);
                let (want, why) = if covered {
                    let mut st = stats.borrow_mut();
                    st.covered += 1;
                    if is_pass(old) {
                        st.covered_was_pass += 1;
                    }
                    (Outcome::DenyRule, "the added deny covers this flow")
                } else if posture_b == posture_a {
                    (
                        old,
                        "the deny does not cover this flow and the posture is unchanged",
                    )
                } else {
                    let w = v_posture[key];
                    if !is_pass(old) {
                        prop_assert_eq!(
                            w,
                            old,
                            "a newly enforced posture relaxed a drop: {}",
                            after.describe(*key, &probes)
                        );
                    }
                    (
                        w,
                        "the deny changed the posture but does not cover this flow",
                    )
                };
                if *got != want {
                    return Err(TestCaseError::fail(format!(
                        "{}\n  {why}\n  before the deny: {} (posture {:?})\n  expected: {}\n  engine:   {} (posture {:?})\n--- scenario with the deny ---\n{}",
                        after.describe(*key, &probes),
                        outcome_name(old),
                        posture_b,
                        outcome_name(want),
                        outcome_name(*got),
                        posture_a,
                        after.text
                    )));
                }
            }
            Ok(())
        },
    );
    let stats = stats.into_inner();
    eprintln!(
        "flows covered by the added deny: {}, of which allowed before: {}",
        stats.covered, stats.covered_was_pass
    );
    // The property must bite: many covered flows were allowed before the deny was added.
    assert!(
        stats.covered_was_pass >= 200,
        "too few allowed flows were covered by the added deny: {}",
        stats.covered_was_pass
    );
}

#[derive(Default)]
struct DenyStats {
    covered: usize,
    covered_was_pass: usize,
}

// =======================================================================================
// Fixed checks of the harness itself
// =======================================================================================

/// The brute force is only worth something if it reads the spec right: a few §7 vectors
/// evaluated by the reference alone.
#[test]
fn reference_reproduces_spec_vectors() {
    use membrane_policy::model::Protocol;
    let text = |policies: &str| {
        let cluster = Cluster {
            ns_team: [Some("red"), None],
            node_roles: ["worker", "control"],
            pods: vec![
                model::Pod {
                    ns: 0,
                    node: 0,
                    labels: vec![("app", "a")],
                    ports: vec![],
                },
                model::Pod {
                    ns: 0,
                    node: 1,
                    labels: vec![("app", "b")],
                    ports: vec![("http", 8080, "TCP")],
                },
            ],
            entities: vec![],
            host_firewall: false,
        };
        cluster.scenario_yaml(policies)
    };
    let verdict = |built: &Built, subject: &str, d: Direction, peer: &str, p: Probe| {
        let si = built
            .subjects
            .iter()
            .position(|s| s.name == subject)
            .unwrap();
        let peer = built
            .world
            .identities()
            .iter()
            .find(|i| i.name() == peer || i.labels.to_string().contains(peer))
            .unwrap();
        let s = &built.subjects[si];
        built.reference().decide(
            &built.ref_subject(s),
            d,
            peer.id,
            p.protocol,
            p.port,
            &p.request,
        )
    };
    // §7.4 vector 61 (deny.rst column 2): allows HTTP 80, L4 80, L4 81 and L3 from the
    // client, plus a deny of 80/TCP: 81 passes, 80 is denied, ping passes.
    let b = build_text(
        text(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
  - toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {app: a}}]
  ingressDeny:
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#,
        ),
        Knobs::default(),
    )
    .unwrap();
    let none = || membrane_policy::verdict::L7Request::None;
    let ingress = Direction::Ingress;
    let ab = |p| verdict(&b, "pod1", ingress, "app=a", p);
    assert_eq!(
        ab(harness::probe(Protocol::Tcp, 81, none())),
        Outcome::Allowed
    );
    assert_eq!(
        ab(harness::probe(Protocol::Tcp, 80, none())),
        Outcome::DenyRule
    );
    assert_eq!(
        ab(harness::probe(Protocol::Icmp, 8, none())),
        Outcome::Allowed
    );
    // §7.5 vector 65: a plain allow on the port wildcards HTTP rules for that peer.
    let b = build_text(
        text(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: b}}
  ingress:
  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /}]}}]
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "http", protocol: TCP}]}]
"#,
        ),
        Knobs::default(),
    )
    .unwrap();
    let post = || harness::http("POST", "/x");
    assert_eq!(
        verdict(
            &b,
            "pod1",
            ingress,
            "app=a",
            harness::probe(Protocol::Tcp, 80, post())
        ),
        Outcome::Allowed
    );
    assert_eq!(
        verdict(
            &b,
            "pod1",
            ingress,
            "world",
            harness::probe(Protocol::Tcp, 80, post())
        ),
        Outcome::Http403
    );
    // The named port `http` resolves to pod1's own 8080 (§9.5).
    assert_eq!(
        verdict(
            &b,
            "pod1",
            ingress,
            "app=a",
            harness::probe(Protocol::Tcp, 8080, none())
        ),
        Outcome::Allowed
    );
    assert_eq!(
        verdict(
            &b,
            "pod1",
            ingress,
            "world",
            harness::probe(Protocol::Tcp, 8080, none())
        ),
        Outcome::DefaultDeny
    );
    // §9.14: DNS is only wildcarded by a plain allow on that exact port.
    let b = build_text(
        text(
            r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: a}}
  egress:
  - toPorts: [{ports: [{port: "53", protocol: UDP}], rules: {dns: [{matchName: example.com}]}}]
  - toPorts: [{ports: [{port: "50", endPort: 60, protocol: UDP}]}]
  enableDefaultDeny: {egress: false}
"#,
        ),
        Knobs::default(),
    )
    .unwrap();
    let q = |name: &str| harness::probe(Protocol::Udp, 53, harness::dns(name));
    let egress = Direction::Egress;
    assert_eq!(
        verdict(&b, "pod0", egress, "kube-dns", q("example.com")),
        Outcome::Allowed
    );
    assert_eq!(
        verdict(&b, "pod0", egress, "kube-dns", q("other.org")),
        Outcome::DnsRefused
    );
    // §3.1: an init endpoint is in default deny whatever `enableDefaultDeny` says (the
    // reading pinned against the engine in `forced_enforcement_ignores_opt_out`).
    let b = build_text(
        init_cluster().scenario_yaml(
            r#"apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: opt-out}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [world]
  enableDefaultDeny: {ingress: false}
"#,
        ),
        Knobs::default(),
    )
    .unwrap();
    let tcp80 = || harness::probe(Protocol::Tcp, 80, none());
    assert_eq!(
        verdict(&b, "entity-init", ingress, "app=a", tcp80()),
        Outcome::DefaultDeny
    );
    assert_eq!(
        verdict(&b, "entity-init", ingress, "world", tcp80()),
        Outcome::Allowed
    );
    // ... while an ordinary pod selected by the same rule gets the synthesized allow-all.
    assert_eq!(
        verdict(&b, "pod1", ingress, "app=a", tcp80()),
        Outcome::Allowed
    );
}

// =======================================================================================
// Engine bugs found by the properties, pinned
// =======================================================================================

fn init_cluster() -> Cluster {
    Cluster {
        ns_team: [None, None],
        node_roles: ["worker", "worker"],
        pods: vec![
            model::Pod {
                ns: 0,
                node: 0,
                labels: vec![("app", "a")],
                ports: vec![],
            },
            model::Pod {
                ns: 0,
                node: 0,
                labels: vec![("tier", "x")],
                ports: vec![],
            },
        ],
        entities: vec!["init"],
        host_firewall: false,
    }
}

/// Found by `lookup_agrees_with_brute_force` (shrunk to: `enable-policy=always`, one CNP
/// `endpointSelector: {}` with `ingress: [{}]` and `enableDefaultDeny: {ingress: false}`,
/// any peer → any pod: engine `allowed`, reference `default-deny`).
///
/// Cilium forces default deny in both directions when policy enforcement is `always` or the
/// endpoint still has the `reserved:init` identity, *before* looking at
/// `enableDefaultDeny` (pkg/policy/repository.go, `computePolicyEnforcementAndRules`:
/// `if policyMode == option.AlwaysEnforce || lbls.Has(labels.IDNameInit) { return true,
/// true, true, true, matchingRules }`); the allow-all for "only default-allow rules" is only
/// synthesized on the other path. semantics §3.1 agrees ("always: ... drops everything
/// until it is allowed"; init is "always enforced"). The engine used to synthesize the
/// allow-all whenever every selecting rule opted out, whatever the enforcement reason; this
/// pins the fix.
#[test]

fn forced_enforcement_ignores_opt_out() {
    use membrane_cluster::world::Party;
    use membrane_policy::model::Protocol;
    use membrane_policy::verdict::{L7Request, Verdict};
    // 1. An init endpoint, selected by a cluster-wide policy that only allows world and
    //    opts out of default deny. pod0 -> entity-init 80/TCP must be dropped at ingress.
    let policy = r#"apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: opt-out}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [world]
  enableDefaultDeny: {ingress: false}
"#;
    let built = build_text(init_cluster().scenario_yaml(policy), Knobs::default()).unwrap();
    let from = built.world.party("pod0").unwrap();
    let to = built.world.party("entity-init").unwrap();
    assert!(matches!(to, Party::Entity { .. }));
    let d = built
        .world
        .decide(from, to, Protocol::Tcp, 80, &L7Request::None, false);
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "init endpoint: expected default deny, engine said {:?} (ingress {:?})",
        d.verdict,
        d.ingress.as_ref().map(|i| i.outcome)
    );

    // 2. enable-policy=always: a CNP that selects pod0 with `ingress: [{}]` and opts out.
    let policy = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: opt-out, namespace: ns1}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
  - {}
  enableDefaultDeny: {ingress: false}
"#;
    let knobs = Knobs {
        enforcement: EnforcementMode::Always,
        allow_localhost: true,
    };
    let built = build_text(init_cluster().scenario_yaml(policy), knobs).unwrap();
    let pod0 = built
        .subjects
        .iter()
        .position(|s| s.name == "pod0")
        .unwrap();
    let peer = built
        .world
        .identity_of(built.world.party("pod1").unwrap(), None, false);
    let probes = vec![harness::probe(Protocol::Tcp, 80, L7Request::None)];
    let key = (pod0, Direction::Ingress, peer, 0);
    assert_eq!(
        built.engine_outcomes(&[key], &probes)[&key],
        Outcome::DefaultDeny,
        "enable-policy=always: pod1 -> pod0 80/TCP"
    );
}

// =======================================================================================
// i. the incremental engine ends where a cold build starts
// =======================================================================================

type Maps = (
    std::collections::HashMap<membrane_policy::resolve::MapKey, membrane_policy::resolve::MapEntry>,
    bool,
);

fn maps_of(p: &membrane_policy::engine::EndpointPolicy) -> [Maps; 2] {
    [
        (p.ingress.map.iter().collect(), p.ingress.enforced),
        (p.egress.map.iter().collect(), p.egress.enforced),
    ]
}

/// Applies a change set to maps followed since they were computed.
fn apply_changes(
    mirror: &mut BTreeMap<usize, [Maps; 2]>,
    changes: &membrane_policy::engine::ChangeSet,
) {
    for s in &changes.subjects_removed {
        mirror.remove(s);
    }
    for c in &changes.subjects {
        let Some(m) = mirror.get_mut(&c.subject) else {
            continue;
        };
        for (i, d) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            let delta = c.delta(d);
            for k in &delta.removed() {
                m[i].0.remove(k);
            }
            for (k, v) in &delta.added() {
                m[i].0.insert(*k, *v);
            }
        }
    }
}

/// Property i: an engine told about the cluster piece by piece — policies before endpoints,
/// endpoints in two halves, one policy removed and added back, one endpoint removed and
/// added back — ends with exactly the maps of a cold build; and the change sets it returned,
/// applied to the maps as first computed, reproduce its final maps (so a datapath that
/// applies only deltas stays exact).
#[test]
fn incremental_engine_matches_cold_build() {
    use membrane_cluster::world::{endpoint_spec, load_engine};
    use membrane_policy::engine::{Engine, NodeSpec, ServiceSpec};
    run(
        (cluster(), policies(), knobs(), any::<u64>()),
        |(cluster, policies, knobs, seed)| {
            let built = build(&cluster, &policies, knobs).map_err(TestCaseError::fail)?;
            let world = &built.world;
            let s = &world.scenario;
            let options = built.options.clone();
            let cold = load_engine(s, &world.policy_set, &options);

            let mut e = Engine::new(options);
            for ns in &s.namespaces {
                e.upsert_namespace(&ns.name, ns.labels.clone());
            }
            for n in &s.nodes {
                e.upsert_node(NodeSpec {
                    name: n.name.clone(),
                    ip: n.ip,
                    cilium: n.cilium,
                    labels: n.labels.clone(),
                });
            }
            for svc in &s.services {
                e.upsert_service(ServiceSpec {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    labels: svc.labels.clone(),
                    selector: svc.selector.clone(),
                    addresses: vec![],
                });
            }
            let valid: Vec<_> = world
                .policy_set
                .policies
                .iter()
                .filter(|t| t.valid)
                .collect();
            for t in &valid {
                e.upsert_policy((*t).clone());
            }
            let half = s.endpoints.len() / 2;
            let mut ids = Vec::new();
            for ep in &s.endpoints[..half] {
                ids.push(e.add_endpoint(endpoint_spec(ep)).0);
            }
            e.resolve_all();
            let mut mirror: BTreeMap<usize, [Maps; 2]> = e
                .state()
                .computed_policies()
                .iter()
                .map(|(i, p)| (*i, maps_of(p)))
                .collect();
            let mut follow = |e: &mut Engine, changes: membrane_policy::engine::ChangeSet| {
                apply_changes(&mut mirror, &changes);
                // Endpoints new to the engine: their policies are computed and followed.
                e.resolve_all();
                for (i, p) in e.state().computed_policies() {
                    mirror.entry(i).or_insert_with(|| maps_of(&p));
                }
            };
            for ep in &s.endpoints[half..] {
                let (id, changes) = e.add_endpoint(endpoint_spec(ep));
                ids.push(id);
                follow(&mut e, changes);
            }
            for ext in &s.external {
                let c = e.dns_answer(&ext.name, &ext.ips);
                follow(&mut e, c);
            }
            let cold_state = cold.state();
            for id in cold_state.identities().iter().filter(|i| i.addr.is_some()) {
                if let Some(a) = id.addr
                    && id.fqdn_names.is_empty()
                    && matches!(
                        cold_state.address_party(a),
                        membrane_policy::engine::Party::World { .. }
                    )
                {
                    let c = e.add_world_address(a);
                    follow(&mut e, c);
                }
            }
            if !valid.is_empty() {
                let t = valid[(seed as usize) % valid.len()];
                let key = membrane_policy::engine::PolicyKey::of(&t.origin);
                let c = e.remove_policy(&key);
                follow(&mut e, c);
                let c = e.upsert_policy(t.clone());
                follow(&mut e, c);
            }
            if !s.endpoints.is_empty() {
                let k = (seed as usize / 7) % s.endpoints.len();
                let c = e.remove_endpoint(ids[k]);
                follow(&mut e, c);
                let (id, c) = e.add_endpoint(endpoint_spec(&s.endpoints[k]));
                ids[k] = id;
                follow(&mut e, c);
            }
            // Identity numbers differ between the two (a re-added pod gets a new one): compare
            // peers by their labels.
            let by_labels = |st: &membrane_policy::engine::Snapshot, m: Option<[Maps; 2]>| {
                m.map(|dirs| {
                    dirs.map(|(map, enforced)| {
                        let named: BTreeMap<(String, u8, u16, u8), (bool, bool)> = map
                            .iter()
                            .map(|(k, v)| {
                                let peer = st
                                    .identities()
                                    .get(k.peer)
                                    .map_or_else(|| k.peer.to_string(), |i| i.labels.to_string());
                                (
                                    (peer, k.protocol, k.port, k.prefix_len),
                                    (v.deny, v.redirect),
                                )
                            })
                            .collect();
                        (named, enforced)
                    })
                })
            };
            for (i, id) in ids.iter().enumerate() {
                let got_raw = e.state().endpoint_policy(*id).map(|p| maps_of(&p));
                let want = by_labels(
                    cold_state,
                    cold_state.endpoint_policy(i).map(|p| maps_of(&p)),
                );
                let got_named = by_labels(e.state(), got_raw.clone());
                let got = got_raw;
                prop_assert_eq!(
                    &got_named,
                    &want,
                    "endpoint {} ({}): incremental maps differ from a cold build\n{}",
                    i,
                    s.endpoints[i].name,
                    built.text
                );
                let unshared = e.state().endpoint_policy_unshared(*id).map(|p| maps_of(&p));
                prop_assert_eq!(
                    &got,
                    &unshared,
                    "endpoint {} ({}): shared-part maps differ from an unshared resolution\n{}",
                    i,
                    s.endpoints[i].name,
                    built.text
                );
                if let Some(subject) = e.state().endpoint_subject(*id) {
                    let followed = mirror.get(&subject);
                    prop_assert_eq!(
                        followed,
                        got.as_ref(),
                        "endpoint {} ({}): maps rebuilt from change sets differ\n{}",
                        i,
                        s.endpoints[i].name,
                        built.text
                    );
                }
            }
            Ok(())
        },
    );
}
