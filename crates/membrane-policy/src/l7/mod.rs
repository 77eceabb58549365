//! L7 matchers: Go RE2 regexes for HTTP, DNS names and patterns, TLS server names.
pub mod dns_pattern;
pub mod go_regex;
