//! HTTP `path`/`method`/`host` regexes (Go RE2 syntax), compiled and full-matched.
//!
//! Input: the pattern, optionally followed by a NUL byte and a subject text that is matched
//! besides a few fixed ones, so the fuzzer can steer matching too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use membrane_policy::l7::go_regex::GoRegex;

const SUBJECTS: &[&str] = &[
    "",
    "/",
    "GET",
    "/public/index.html",
    "api.example.com",
    "a\nb",
    "\u{e9}t\u{e9} \u{1F600}",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, subject) = match text.split_once('\0') {
        Some((p, s)) => (p, Some(s)),
        None => (text, None),
    };
    let Ok(re) = GoRegex::new(pattern) else {
        return;
    };
    assert_eq!(re.as_str(), pattern);
    for s in SUBJECTS.iter().copied().chain(subject) {
        let _ = re.is_full_match(s);
    }
    // The pattern matched against itself exercises literal-heavy inputs.
    let _ = re.is_full_match(pattern);
});
