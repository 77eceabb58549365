//! HTTP through the lab's L7 proxies (root): a denied `HEAD` (a 403 without a body) is read
//! as http-403, and allowed requests are flow events (verdict FORWARDED) with the rule that
//! allowed them, next to the denials.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use membrane_datapath::lab;
use membrane_datapath::probe::run_file;
use membrane_policy::verdict::Verdict;
use std::path::PathBuf;
use support::{options, root_or_skip};

fn scenario() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios/http-head.yaml")
}

#[test]
fn a_denied_head_is_http_403_without_a_body() {
    if !root_or_skip("a_denied_head_is_http_403_without_a_body") {
        return;
    }
    let path = scenario();
    let mut opts = options("head");
    opts.proxies = Some(path.clone());
    let r = run_file(&path, &opts, 4);
    assert!(
        r.error.is_none() && r.failed() == 0 && r.skipped() == 0 && r.passed() == 3,
        "{}",
        r.text(true)
    );
    let lab: Vec<Option<Verdict>> = r.outcomes.iter().map(|o| o.lab).collect();
    assert_eq!(
        lab,
        [
            Some(Verdict::Allow),
            Some(Verdict::Http403),
            Some(Verdict::Http403)
        ]
    );
    assert!(lab::lab_namespaces(&opts.name).is_empty());
}
