//! L7 matchers.
#[path = "stub_dns.rs"]
pub mod dns_pattern;
#[path = "stub_regex.rs"]
pub mod go_regex;
