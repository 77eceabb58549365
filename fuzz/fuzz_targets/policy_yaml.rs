//! Policy manifests: YAML → resources → rules, as `membrane validate` reads a policy file.
//!
//! Besides "no panic", checks that every diagnostic's span lies inside the text on character
//! boundaries: `Diagnostic` is a `miette::Diagnostic` whose label is `offset..offset+len`,
//! and miette's renderers slice the source with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_policy::diag::Diagnostic;
use membrane_policy::model::FileId;
use membrane_policy::options::Options;
use membrane_policy::policy_set::{PolicySet, parse_resources};
use membrane_policy::translate::Secrets;
use membrane_policy::yaml::Embedding;

fn check_span(text: &str, d: &Diagnostic) {
    let Some(s) = d.span else { return };
    let (start, end) = (s.offset as usize, s.offset as usize + s.len as usize);
    assert!(
        s.line >= 1 && s.col >= 1 && end <= text.len(),
        "span {s:?} outside the text ({} bytes): {d:?}",
        text.len()
    );
    assert!(
        text.is_char_boundary(start) && text.is_char_boundary(end),
        "span {s:?} not on character boundaries: {d:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (resources, diagnostics) = parse_resources(text, Embedding::default());
    for d in &diagnostics {
        check_span(text, d);
    }
    let resources: Vec<(FileId, _)> = resources.into_iter().map(|r| (0, r)).collect();
    let set = PolicySet::build(&resources, &Options::default(), &Secrets::new());
    let _ = set.rules();
    for (_, d) in set.diagnostics() {
        check_span(text, d);
    }
});
