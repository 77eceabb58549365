//! DNS names and wildcard patterns: Cilium's `matchName` and `matchPattern`
//! (`pkg/fqdn/matchpattern`), used by DNS rules and `toFQDNs`, and TLS `serverNames`.
//!
//! Matching is done on normalized names (trimmed, lower case, fully qualified), so neither
//! case nor a final dot ever decides a verdict.

use regex::{Regex, RegexBuilder};

/// Longest `matchName`/`matchPattern` the CRD accepts.
const MAX_LENGTH: usize = 255;
/// What a `*` in a pattern may stand for, as in Cilium's `allowedDNSCharsREGroup`.
const DNS_CHAR_CLASS: &str = "[-a-zA-Z0-9_]";
/// A validated pattern is at most 255 characters; this only stops an unvalidated one from
/// costing more than a few hundred KiB.
const COMPILED_SIZE_LIMIT: usize = 1 << 20;

fn is_dns_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Lower-cases and trims `name` and makes it fully qualified, like Cilium's
/// `strings.ToLower(dns.Fqdn(strings.TrimSpace(name)))`.
///
/// - Only ASCII letters are lowered: DNS compares names case-insensitively for ASCII only
///   (RFC 4343), and names on the wire are ASCII (IDNs travel as punycode).
/// - A name already ending in an unescaped dot is left as it is (`a.` stays, `a\.` becomes
///   `a\..`), as `dns.IsFqdn` decides.
/// - An empty or blank name stays `""`. `dns.Fqdn("")` would be the root `.`, but an empty
///   field means "not given", and as the root it would match `*` and `.`.
pub fn normalize_name(name: &str) -> String {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return String::new();
    }
    let mut out = trimmed.to_ascii_lowercase();
    if !is_fqdn(&out) {
        out.push('.');
    }
    out
}

/// `dns.IsFqdn`: ends in a dot that an odd number of backslashes does not escape.
fn is_fqdn(name: &str) -> bool {
    let Some(body) = name.strip_suffix('.') else {
        return false;
    };
    let escapes = body.bytes().rev().take_while(|&b| b == b'\\').count();
    escapes % 2 == 0
}

/// Checks a `matchName` as the agent does, with Cilium's error text.
///
/// An empty name is "not given" and passes; whether one of `matchName`/`matchPattern` is
/// required is the caller's business.
///
/// # Errors
/// A name longer than 255 bytes, or with characters outside `0-9 a-z A-Z . - _`.
pub fn validate_match_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(());
    }
    // The CRD enforces the length before the agent sees the name; the wording follows the
    // agent's matchPattern message.
    if name.len() > MAX_LENGTH {
        return Err(format!(
            "Invalid MatchName: \"{name}\". Must be <= {MAX_LENGTH} characters long."
        ));
    }
    // Checked on the raw text, as Cilium does: surrounding blanks are refused, not trimmed.
    if !name.bytes().all(|b| is_dns_char(b) || b == b'.') {
        return Err(format!(
            "Invalid characters in MatchName: \"{name}\". Only 0-9, a-z, A-Z and ., - and _ characters are allowed"
        ));
    }
    Ok(())
}

/// Checks a `matchPattern` as the agent does, with Cilium's error text.
///
/// An empty pattern is "not given" and passes.
///
/// # Errors
/// A pattern longer than 255 bytes, or with characters outside `0-9 a-z A-Z . - _ *`.
pub fn validate_match_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Ok(());
    }
    if pattern.len() > MAX_LENGTH {
        return Err(format!(
            "Invalid MatchPattern: \"{pattern}\". Must be <= {MAX_LENGTH} characters long."
        ));
    }
    if !pattern
        .bytes()
        .all(|b| is_dns_char(b) || b == b'.' || b == b'*')
    {
        return Err(format!(
            "Invalid characters in MatchPattern: \"{pattern}\". Only 0-9, a-z, A-Z and ., -, _ and * characters are allowed"
        ));
    }
    Ok(())
}

/// A compiled `matchName` or `matchPattern`.
#[derive(Debug, Clone)]
pub struct DnsMatcher {
    source: String,
    how: How,
}

#[derive(Debug, Clone)]
enum How {
    /// An empty name or pattern: nothing was asked for, so nothing is allowed.
    Nothing,
    /// A normalized name, compared as a string.
    Exact(String),
    /// `*` and its spellings: every syntactically valid name, the root included.
    All,
    Pattern(Regex),
}

impl DnsMatcher {
    /// Exactly `name`, ignoring case and a final dot. An empty name matches nothing.
    pub fn match_name(name: &str) -> DnsMatcher {
        let normalized = normalize_name(name);
        let how = if normalized.is_empty() {
            How::Nothing
        } else {
            How::Exact(normalized)
        };
        DnsMatcher {
            source: name.to_owned(),
            how,
        }
    }

    /// A wildcard pattern:
    /// - `*` inside a label stands for `[-a-zA-Z0-9_]*`: never a dot, possibly nothing, so
    ///   `part*ial.com` matches `partial.com`;
    /// - a leading `*.` is therefore exactly one label (`*.cilium.io` matches
    ///   `sub.cilium.io`, not `cilium.io` nor `a.b.cilium.io`);
    /// - a leading `**.` (or more stars) is one or more labels, as in Cilium ≥ 1.18;
    ///   v1.17 read it as `*.`;
    /// - `*` alone (also `**`, `*.`, `**.`) is every valid name: labels of
    ///   `[-a-zA-Z0-9_]+`, or the root `.`.
    ///
    /// The pattern is not validated here (see [`validate_match_pattern`]); any other
    /// character stands for itself. An empty pattern matches nothing.
    pub fn match_pattern(pattern: &str) -> DnsMatcher {
        DnsMatcher {
            source: pattern.to_owned(),
            how: compile_pattern(pattern),
        }
    }

    /// Whether `qname` is allowed; it is normalized first, so case and a final dot do not
    /// matter.
    pub fn matches(&self, qname: &str) -> bool {
        let qname = normalize_name(qname);
        match &self.how {
            How::Nothing => false,
            How::Exact(name) => *name == qname,
            How::All => is_valid_name(&qname),
            How::Pattern(re) => re.is_match(&qname),
        }
    }

    /// The name or pattern as written in the policy.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether this allows every name (`matchPattern: "*"`), which is how Cilium spells
    /// "allow all DNS" on a DNS port.
    pub fn is_match_all(&self) -> bool {
        matches!(self.how, How::All)
    }
}

fn compile_pattern(pattern: &str) -> How {
    let lowered = pattern.trim().to_ascii_lowercase();
    if lowered.is_empty() {
        return How::Nothing;
    }
    let stars = lowered.strip_suffix('.').unwrap_or(&lowered);
    if !stars.is_empty() && stars.bytes().all(|b| b == b'*') {
        return How::All;
    }
    let pattern = normalize_name(&lowered);

    let mut regex = String::from(r"\A");
    let leading_stars = pattern.bytes().take_while(|&b| b == b'*').count();
    let rest = match pattern
        .get(leading_stars..)
        .and_then(|r| r.strip_prefix('.'))
    {
        Some(rest) if leading_stars >= 2 => {
            regex.push_str(&format!(r"(?:{DNS_CHAR_CLASS}+\.)+"));
            rest
        }
        _ => pattern.as_str(),
    };
    let mut buf = [0u8; 4];
    for c in rest.chars() {
        if c == '*' {
            regex.push_str(DNS_CHAR_CLASS);
            regex.push('*');
        } else {
            regex.push_str(&regex::escape(c.encode_utf8(&mut buf)));
        }
    }
    regex.push_str(r"\z");
    match RegexBuilder::new(&regex)
        .size_limit(COMPILED_SIZE_LIMIT)
        .build()
    {
        Ok(re) => How::Pattern(re),
        // Only a huge unvalidated pattern gets here; allowing nothing is the safe reading.
        Err(_) => How::Nothing,
    }
}

/// What `*` accepts: `^([-a-zA-Z0-9_]+[.])+$` or the root. `name` is normalized.
fn is_valid_name(name: &str) -> bool {
    if name == "." {
        return true;
    }
    let Some(body) = name.strip_suffix('.') else {
        return false;
    };
    !body.is_empty()
        && body
            .split('.')
            .all(|label| !label.is_empty() && label.bytes().all(is_dns_char))
}

/// Whether a TLS SNI is allowed by one `serverNames` entry, as Cilium ≥ 1.18 reads it:
/// - `name`: exactly that name;
/// - `*.suffix`: exactly one label before `suffix`;
/// - `**.suffix` (or more stars): one or more labels before `suffix`.
///
/// Case and a final dot do not matter (an SNI never has one). A wildcard never matches the
/// suffix itself, and a `*` anywhere else, or alone, is an ordinary character. An empty
/// pattern or SNI matches nothing.
pub fn server_name_matches(pattern: &str, sni: &str) -> bool {
    let pattern = sni_normalize(pattern);
    let sni = sni_normalize(sni);
    if pattern.is_empty() || sni.is_empty() {
        return false;
    }
    let stars = pattern.bytes().take_while(|&b| b == b'*').count();
    let suffix = match pattern.get(stars..).and_then(|r| r.strip_prefix('.')) {
        Some(suffix) if stars > 0 && !suffix.is_empty() => suffix,
        _ => return pattern == sni,
    };
    let Some(head) = sni
        .strip_suffix(suffix)
        .and_then(|head| head.strip_suffix('.'))
    else {
        return false;
    };
    let mut labels = head.split('.');
    let count = labels.clone().count();
    labels.all(|label| !label.is_empty()) && (stars > 1 || count == 1)
}

fn sni_normalize(name: &str) -> String {
    let lowered = name.trim().to_ascii_lowercase();
    match lowered.strip_suffix('.') {
        Some(stripped) => stripped.to_owned(),
        None => lowered,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> DnsMatcher {
        DnsMatcher::match_pattern(p)
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_name("Cilium.IO"), "cilium.io.");
        assert_eq!(normalize_name("cilium.io."), "cilium.io.");
        assert_eq!(normalize_name("  cilium.io \t"), "cilium.io.");
        assert_eq!(normalize_name("."), ".");
        assert_eq!(normalize_name(""), "");
        assert_eq!(normalize_name("   "), "");
        assert_eq!(normalize_name(r"a\."), r"a\..");
        assert_eq!(normalize_name(r"a\\."), r"a\\.");
        assert_eq!(normalize_name("ÄB.com"), "Äb.com.");
    }

    // §7.6 item 77.
    #[test]
    fn match_name_is_exact_and_case_insensitive() {
        let m = DnsMatcher::match_name("cilium.io");
        assert!(m.matches("cilium.io."));
        assert!(m.matches("cilium.io"));
        assert!(m.matches("CILIUM.IO."));
        assert!(!m.matches("www.cilium.io."));
        assert!(!m.matches("io."));
        assert!(!m.matches(""));
        assert!(!m.is_match_all());
        assert_eq!(m.source(), "cilium.io");
        assert!(DnsMatcher::match_name("CILIUM.io.").matches("cilium.IO"));
        // A name is never a pattern.
        assert!(!DnsMatcher::match_name("*.cilium.io").matches("a.cilium.io"));
        assert!(!DnsMatcher::match_name("").matches(""));
        assert!(!DnsMatcher::match_name("").matches("."));
    }

    // §7.6 item 79.
    #[test]
    fn leading_star_is_one_label() {
        let m = pattern("*.cilium.io");
        assert!(m.matches("anysub.cilium.io."));
        assert!(m.matches("AnySub.Cilium.IO"));
        assert!(!m.matches("cilium.io."));
        assert!(!m.matches("anysub.ci.io."));
        assert!(!m.matches("anysub.ciliumandmore.io."));
        assert!(!m.matches("a.b.cilium.io."));
        assert!(!m.matches(""));
        // Cilium's regex lets the label be empty; no DNS query can carry such a name.
        assert!(m.matches(".cilium.io."));
    }

    // §7.6 item 80.
    #[test]
    fn star_inside_labels() {
        let m = pattern("*.ci*.io");
        assert!(m.matches("anysub.cilium.io."));
        assert!(m.matches("anysub.ci.io."));
        assert!(m.matches("anysub.ciliumandmore.io."));
        assert!(!m.matches("cilium.io."));
        assert!(!m.matches("anysub.ci.x.io."));
    }

    // §7.6 item 81.
    #[test]
    fn lone_star_matches_every_valid_name() {
        let m = pattern("*");
        assert!(m.is_match_all());
        for ok in [
            ".",
            "io.",
            "cilium.io.",
            "svc.cluster.local.",
            "service.namesace.svc.cluster.local.",
            "_foobar._tcp.cilium.io.",
        ] {
            assert!(m.matches(ok), "{ok}");
        }
        for bad in [
            "",
            ".io.",
            ".cilium.io.",
            ".svc.cluster.local.",
            "a..b.",
            "a b.",
        ] {
            assert!(!m.matches(bad), "{bad}");
        }
        // Cilium's regex refuses `cilium.io` without its final dot; here every name is
        // normalized before matching, so the final dot never matters.
        assert!(m.matches("cilium.io"));
        for spelling in ["**", "*.", "**.", " * ", "***"] {
            let m = pattern(spelling);
            assert!(m.is_match_all(), "{spelling}");
            assert!(m.matches("."), "{spelling}");
            assert!(m.matches("a.b.c."), "{spelling}");
        }
        assert!(!pattern("*.io").is_match_all());
    }

    // §7.6 item 82 and §9.16.
    #[test]
    fn double_star_prefix_is_one_or_more_labels() {
        let m = pattern("**.cilium.io");
        assert!(m.matches("app.cilium.io"));
        assert!(m.matches("test.app.cilium.io"));
        assert!(m.matches("a.b.c.cilium.io."));
        assert!(!m.matches("cilium.io"));
        assert!(!m.matches(".cilium.io"));
        assert!(!m.matches("app.cilium.io.evil.com"));
        assert!(pattern("***.cilium.io").matches("a.b.cilium.io"));
        // Not a prefix: an ordinary in-label star.
        assert!(pattern("a.**.io").matches("a.b.io"));
        assert!(!pattern("a.**.io").matches("a.b.c.io"));
        assert!(pattern("**x.io").matches("abx.io"));
    }

    // §7.6 item 83.
    #[test]
    fn star_may_match_nothing() {
        let m = pattern("part*ial.com");
        assert!(m.matches("partial.com"));
        assert!(m.matches("part-extra-ial.com"));
        assert!(!m.matches("part.ial.com"));
        assert!(!m.matches("partia.com"));
    }

    // §7.6 item 84.
    #[test]
    fn service_labels() {
        assert!(pattern("*.*.cilium.io").matches("_foobar._tcp.cilium.io."));
        let exact = pattern("_foobar._tcp.cilium.io.");
        assert!(exact.matches("_foobar._tcp.cilium.io."));
        assert!(!exact.matches("_tcp.cilium.io."));
        assert!(!exact.matches("cilium.io."));
    }

    #[test]
    fn root_pattern() {
        let m = pattern(".");
        assert!(m.matches("."));
        assert!(!m.matches(""));
        assert!(!m.matches(".io."));
        assert!(!m.matches(".cilium.io"));
        assert!(!m.is_match_all());
    }

    #[test]
    fn pattern_text_is_not_a_regex() {
        assert!(!pattern("a.com").matches("abcom"));
        assert!(pattern("a+b.com").matches("a+b.com"));
        assert!(!pattern("a+b.com").matches("aab.com"));
        assert!(!pattern("").matches(""));
        assert!(!pattern("").matches("."));
        assert!(!pattern("   ").matches("a."));
        assert_eq!(pattern("*.Cilium.io").source(), "*.Cilium.io");
        assert!(pattern("*.Cilium.IO").matches("x.cilium.io"));
    }

    #[test]
    fn apex_is_never_matched_by_a_wildcard() {
        for p in ["*.x.y", "**.x.y"] {
            assert!(!pattern(p).matches("x.y"), "{p}");
            assert!(!pattern(p).matches("X.Y."), "{p}");
        }
    }

    #[test]
    fn validation_messages() {
        assert_eq!(validate_match_name("cilium.io"), Ok(()));
        assert_eq!(validate_match_name("_srv._tcp.Cilium.io."), Ok(()));
        assert_eq!(validate_match_name(""), Ok(()));
        assert_eq!(
            validate_match_name("*.cilium.io"),
            Err("Invalid characters in MatchName: \"*.cilium.io\". Only 0-9, a-z, A-Z and ., - and _ characters are allowed".to_owned())
        );
        assert!(validate_match_name(" cilium.io").is_err());
        assert!(validate_match_name("ciliüm.io").is_err());
        // §7.1 item 29.
        assert_eq!(
            validate_match_pattern("foo$.com"),
            Err("Invalid characters in MatchPattern: \"foo$.com\". Only 0-9, a-z, A-Z and ., -, _ and * characters are allowed".to_owned())
        );
        assert_eq!(validate_match_pattern("**.cilium.io"), Ok(()));
        assert_eq!(validate_match_pattern("*"), Ok(()));
        assert_eq!(validate_match_pattern("_x-*.Y.z."), Ok(()));
        assert!(validate_match_pattern("a[b].com").is_err());
        assert!(validate_match_pattern("a,b.com").is_err());
        let long = format!("{}.com", "a".repeat(252));
        assert_eq!(long.len(), 256);
        assert_eq!(
            validate_match_pattern(&long),
            Err(format!(
                "Invalid MatchPattern: \"{long}\". Must be <= 255 characters long."
            ))
        );
        assert!(validate_match_name(&long).is_err());
        assert_eq!(validate_match_pattern(&long[1..]), Ok(()));
    }

    #[test]
    fn unvalidated_patterns_do_not_panic() {
        for p in [
            "\u{0}", "**", "*.*.*", "..", "é*.com", r"\", "(", "*.(.com", "**..",
        ] {
            let m = pattern(p);
            let _ = m.matches("a.com");
            let _ = m.matches("");
            let _ = m.matches(p);
        }
        assert!(pattern("(.com").matches("(.com"));
        // Over the compiled size limit: refused as a whole rather than half-matched.
        let huge = "*".repeat(100_000) + "a";
        assert!(!pattern(&huge).matches("a"));
    }

    // Scenarios client-egress-tls-sni*.yaml.
    #[test]
    fn server_names_from_the_conformance_scenarios() {
        // client-egress-tls-sni: allowed.
        assert!(server_name_matches("one.one.one.one", "one.one.one.one"));
        // client-egress-tls-sni-denied: the policy names k8s.io only.
        assert!(!server_name_matches("k8s.io", "one.one.one.one"));
        // client-egress-tls-sni-wildcard.
        assert!(server_name_matches("*.one.one.one", "one.one.one.one"));
        assert!(!server_name_matches("*.one.one.one", "k8s.io"));
        // client-egress-tls-sni-double-wildcard.
        assert!(server_name_matches("**.one", "one.one.one.one"));
        assert!(!server_name_matches("**.one", "k8s.io"));
    }

    #[test]
    fn server_name_wildcards() {
        assert!(server_name_matches("*.example.com", "www.example.com"));
        assert!(!server_name_matches("*.example.com", "a.b.example.com"));
        assert!(!server_name_matches("*.example.com", "example.com"));
        assert!(!server_name_matches("*.example.com", ".example.com"));
        assert!(!server_name_matches("*.example.com", "wwwexample.com"));
        assert!(server_name_matches("**.example.com", "a.b.example.com"));
        assert!(server_name_matches("**.example.com", "a.example.com"));
        assert!(!server_name_matches("**.example.com", "example.com"));
        assert!(!server_name_matches("**.example.com", "a..example.com"));
        assert!(server_name_matches("*.Example.COM", "WWW.example.com"));
        assert!(server_name_matches("Example.com.", "example.COM"));
        assert!(!server_name_matches("example.com", "www.example.com"));
        assert!(!server_name_matches("", ""));
        assert!(!server_name_matches("example.com", ""));
        assert!(!server_name_matches("*", "example.com"));
        assert!(!server_name_matches("*.", "example.com"));
        assert!(!server_name_matches("a*.example.com", "ab.example.com"));
        assert!(server_name_matches("a*.example.com", "a*.example.com"));
    }

    #[test]
    fn pattern_final_dot_does_not_matter() {
        let with = pattern("*.cilium.io.");
        let without = pattern("*.cilium.io");
        for name in ["a.cilium.io", "a.cilium.io.", "cilium.io", "a.b.cilium.io"] {
            assert_eq!(with.matches(name), without.matches(name), "{name}");
        }
        assert!(with.matches("A.Cilium.IO"));
        let name = DnsMatcher::match_name("cilium.io.");
        assert!(name.matches("cilium.io"));
    }

    #[test]
    fn stars_in_other_positions() {
        // A star in the last label.
        let tld = pattern("cilium.*");
        assert!(tld.matches("cilium.io."));
        assert!(tld.matches("cilium.com"));
        // The star may be empty, but its label's dot is still needed.
        assert!(!tld.matches("cilium."));
        assert!(!tld.matches("cilium.a.b."));
        assert!(!tld.matches("www.cilium.io."));
        // Several stars in one label.
        let multi = pattern("a*b*c.com");
        assert!(multi.matches("abc.com"));
        assert!(multi.matches("a-x-b-y-c.com"));
        assert!(!multi.matches("a.b.c.com"));
        assert!(!multi.matches("acb.com"));
        // Exactly two labels.
        let two = pattern("*.*");
        assert!(two.matches("cilium.io."));
        assert!(!two.matches("www.cilium.io."));
        assert!(!two.is_match_all());
        // `**.` combined with an in-label star.
        let deep = pattern("**.ci*.io");
        assert!(deep.matches("a.cilium.io"));
        assert!(deep.matches("a.b.ci.io"));
        assert!(!deep.matches("cilium.io"));
        // Underscores are DNS characters for a star.
        assert!(pattern("*.cilium.io").matches("_srv.cilium.io"));
        assert!(!pattern("*.cilium.io").matches("a+b.cilium.io"));
    }

    // semantics §5.2: names and patterns are trimmed before matching.
    #[test]
    fn query_names_are_trimmed() {
        assert!(DnsMatcher::match_name(" cilium.io ").matches("cilium.io"));
        assert!(DnsMatcher::match_name("cilium.io").matches("  CILIUM.io.\t"));
        assert!(pattern(" *.cilium.io ").matches("a.cilium.io"));
    }

    #[test]
    fn match_name_length_limit() {
        let name = format!("{}.com", "a".repeat(251));
        assert_eq!(name.len(), 255);
        assert_eq!(validate_match_name(&name), Ok(()));
        let long = format!("a{name}");
        assert_eq!(
            validate_match_name(&long),
            Err(format!(
                "Invalid MatchName: \"{long}\". Must be <= 255 characters long."
            ))
        );
        // The length is checked before the characters.
        let long_bad = format!("{}$", "a".repeat(255));
        assert!(
            validate_match_name(&long_bad)
                .unwrap_err()
                .contains("<= 255")
        );
    }

    // semantics §9.14: only `*` (and its spellings) is "allow every name".
    #[test]
    fn match_all_is_only_the_star() {
        assert!(pattern("*").is_match_all());
        assert!(!pattern("*.*").is_match_all());
        assert!(!pattern("**.com").is_match_all());
        assert!(!DnsMatcher::match_name("com").is_match_all());
        assert!(!pattern("").is_match_all());
    }
}
