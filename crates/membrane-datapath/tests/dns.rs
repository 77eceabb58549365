//! DNS in the lab (root): a real query through kube-dns and the node's DNS proxy, then
//! connections to the learned address and to an address never learned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_datapath::lab;
use membrane_datapath::probe::{DnsPurpose, Step, run_file};
use membrane_policy::verdict::Verdict;
use std::path::PathBuf;
use support::{options, root_or_skip};

#[test]
fn dns_answers_allowed_names_refuses_others_and_learned_addresses_open() {
    if !root_or_skip("dns_answers_allowed_names_refuses_others_and_learned_addresses_open") {
        return;
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/dns-learned.yaml");
    let mut opts = options("dns");
    opts.proxies = Some(path.clone());
    let r = run_file(&path, &opts, 4);
    assert!(
        r.error.is_none() && r.failed() == 0 && r.skipped() == 0 && r.passed() == 4,
        "{}",
        r.text(true)
    );
    let lab: Vec<Option<Verdict>> = r.outcomes.iter().map(|o| o.lab).collect();
    assert_eq!(
        lab,
        [
            Some(Verdict::DnsOk),
            Some(Verdict::DnsRefused),
            Some(Verdict::Allow),
            Some(Verdict::Deny)
        ]
    );
    // The allowed connection really looked the name up first, then connected.
    assert!(matches!(
        r.plans[2].steps.as_slice(),
        [
            Step::Dns {
                purpose: DnsPurpose::Lookup,
                ..
            },
            Step::Send { .. }
        ]
    ));
    // The unlearned address: no answer, the SYN's drop logged at the client's egress.
    let drop = r.outcomes[3].drop.as_ref().expect("a logged drop");
    assert_eq!(drop.direction.as_str(), "egress");
    assert!(lab::lab_namespaces(&opts.name).is_empty());
}
