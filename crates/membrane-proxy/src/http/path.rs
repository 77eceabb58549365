//! Request path normalization, as Cilium configures Envoy (`http-normalize-path`, on by
//! default): policy is matched against the normalized path, and the normalized path is what
//! the backend receives, so no spelling of a path can match one rule and reach another.
//!
//! Envoy's order (`ConnectionManagerUtility::maybeNormalizePath`):
//! 1. escaped slashes (`%2F`, `%5C`, any case) are unescaped; if there were any, the client
//!    gets a redirect to the normalized path (`UNESCAPE_AND_REDIRECT`) instead of an answer;
//! 2. RFC 3986 normalization as Chromium's URL library does it (`normalize_path`): `\` is
//!    `/`, `%2E` is a dot, dot segments are resolved (never above the root), escapes of
//!    unreserved characters are decoded, bytes that may not appear in a path are escaped;
//! 3. runs of slashes are merged into one (`merge_slashes`).
//!
//! The query is left as it is; the fragment never reaches this module (the head parser
//! strips it).

/// What normalization made of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The normalized path (always starts with `/`).
    pub path: String,
    /// The path had escaped slashes: the client is redirected to `path` (Envoy's
    /// `UNESCAPE_AND_REDIRECT`).
    pub redirect: bool,
}

/// The path could not be normalized (Envoy answers `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPath;

/// Normalizes the path part of a request target (no query, no fragment).
pub fn normalize_path(raw: &[u8]) -> Result<Normalized, InvalidPath> {
    if already_normal(raw) {
        let path = String::from_utf8(raw.to_vec()).map_err(|_| InvalidPath)?;
        return Ok(Normalized {
            path,
            redirect: false,
        });
    }
    normalize_fully(raw)
}

/// The three steps, whatever the path.
fn normalize_fully(raw: &[u8]) -> Result<Normalized, InvalidPath> {
    let (unescaped, redirect) = unescape_slashes(raw);
    let canonical = canonicalize(&unescaped)?;
    let path = merge_slashes(&canonical);
    Ok(Normalized { path, redirect })
}

/// Whether every step would leave `raw` as it is (most paths): it starts with `/`, has no
/// escape, backslash, doubled slash or segment starting with a dot, and only bytes the
/// canonicalizer copies unchanged. The slow path stays the definition
/// (`fast_path_agrees_with_full_normalization` checks the two agree).
fn already_normal(raw: &[u8]) -> bool {
    raw.first() == Some(&b'/')
        && raw
            .windows(2)
            .all(|w| w[0] != b'/' || (w[1] != b'/' && w[1] != b'.'))
        && raw
            .iter()
            .all(|&b| b != b'%' && b != b'\\' && matches!(class(b), Class::Pass | Class::Unescape))
}

/// Step 1: `%2F`/`%2f` → `/`, `%5C`/`%5c` → `\`; whether any was found.
fn unescape_slashes(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(raw.len());
    let mut found = false;
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let pair = (
                raw[i + 1].to_ascii_uppercase(),
                raw[i + 2].to_ascii_uppercase(),
            );
            let slash = match pair {
                (b'2', b'F') => Some(b'/'),
                (b'5', b'C') => Some(b'\\'),
                _ => None,
            };
            if let Some(c) = slash {
                out.push(c);
                found = true;
                i += 3;
                continue;
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    (out, found)
}

/// How Chromium's path canonicalizer treats one byte (`kPathCharLookup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Copied as it is.
    Pass,
    /// Copied as it is, and decoded when it arrives escaped (unreserved characters).
    Unescape,
    /// Percent-encoded.
    Escape,
    /// Percent-encoded, and the path is invalid.
    Invalid,
}

fn class(b: u8) -> Class {
    match b {
        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => Class::Unescape,
        // Sub-delimiters, `:` `@` and the characters Chromium leaves alone in paths.
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':'
        | b'@' | b'[' | b']' | b'/' | b'%' | b'\\' => Class::Pass,
        // Spaces, quotes, angle brackets, `#` `?` `^` `{` `|` `}` `` ` `` and everything above
        // ASCII.
        b' '
        | b'"'
        | b'#'
        | b'<'
        | b'>'
        | b'?'
        | b'^'
        | b'`'
        | b'{'
        | b'|'
        | b'}'
        | 0x80..=0xff => Class::Escape,
        // Control characters and DEL.
        _ => Class::Invalid,
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

/// The escape at `i` (`%XX` with two hex digits), decoded.
fn escape_at(s: &[u8], i: usize) -> Option<u8> {
    if s.get(i) != Some(&b'%') {
        return None;
    }
    let hi = hex_value(*s.get(i + 1)?)?;
    let lo = hex_value(*s.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

/// Length of the dot (`.`, `%2e`, `%2E`) at `i`, if there is one.
fn dot_at(s: &[u8], i: usize) -> Option<usize> {
    match s.get(i) {
        Some(b'.') => Some(1),
        Some(b'%') if escape_at(s, i) == Some(b'.') => Some(3),
        _ => None,
    }
}

fn is_slash(b: u8) -> bool {
    b == b'/' || b == b'\\'
}

/// Step 2: Chromium's `CanonicalizePath`, segment by segment.
fn canonicalize(input: &[u8]) -> Result<Vec<u8>, InvalidPath> {
    let mut out: Vec<u8> = Vec::with_capacity(input.len() + 1);
    let mut valid = true;
    // A path always begins with a slash; a relative one gets one.
    let mut i = 0;
    if input.first().is_some_and(|b| is_slash(*b)) {
        i = 1;
    }
    out.push(b'/');
    // At the start of each segment (just after a slash), look for `.` and `..` segments.
    let mut segment_start = true;
    while i < input.len() {
        if segment_start && let Some(n1) = dot_at(input, i) {
            let after1 = i + n1;
            if let Some(next) = segment_end(input, after1) {
                // `.` segment: drop it (and its slash).
                i = next;
                continue;
            }
            if let Some(n2) = dot_at(input, after1)
                && let Some(next) = segment_end(input, after1 + n2)
            {
                // `..` segment: back up over the previous segment, never above `/`.
                back_up_to_previous_slash(&mut out);
                i = next;
                continue;
            }
        }
        let b = input[i];
        if is_slash(b) {
            out.push(b'/');
            segment_start = true;
            i += 1;
            continue;
        }
        segment_start = false;
        if b == b'%' {
            match escape_at(input, i) {
                Some(decoded) if class(decoded) == Class::Unescape => out.push(decoded),
                // An escaped NUL makes the path invalid (Envoy: 400).
                Some(0) => return Err(InvalidPath),
                Some(_) => {
                    // Kept escaped exactly as written (hex case included), as Chromium does.
                    out.extend_from_slice(&input[i..i + 3]);
                }
                None => {
                    // A `%` that starts no escape is escaped itself, so that the backend
                    // cannot read it together with what follows as an escape (`%%32%46`
                    // must not become `%2F`). Chromium copies it and rewrites it as `%25`
                    // only when a decoded character completes such an escape; the result
                    // is the same wherever it matters.
                    push_escaped(&mut out, b'%');
                    i += 1;
                    continue;
                }
            }
            i += 3;
            continue;
        }
        match class(b) {
            Class::Pass | Class::Unescape => out.push(b),
            Class::Escape => push_escaped(&mut out, b),
            Class::Invalid => {
                push_escaped(&mut out, b);
                valid = false;
            }
        }
        i += 1;
    }
    if valid { Ok(out) } else { Err(InvalidPath) }
}

/// Whether a dot segment ends at `at`: the end of the path, a slash, or `;` path parameters
/// (`..;x` is `..` to Tomcat and other servlet containers, so it must be `..` here too;
/// newer Envoy does the same). Where the next segment starts.
fn segment_end(input: &[u8], at: usize) -> Option<usize> {
    match input.get(at) {
        None => Some(at),
        Some(b) if is_slash(*b) => Some(at + 1),
        Some(b';') => {
            let rest = &input[at..];
            Some(
                rest.iter()
                    .position(|b| is_slash(*b))
                    .map_or(input.len(), |p| at + p + 1),
            )
        }
        _ => None,
    }
}

/// Removes the last segment of `out` (which ends with `/`), keeping the root.
fn back_up_to_previous_slash(out: &mut Vec<u8>) {
    // `out` ends with a slash: drop it and everything back to the slash before it.
    if out.len() <= 1 {
        return;
    }
    out.pop();
    while let Some(&b) = out.last() {
        if b == b'/' {
            break;
        }
        out.pop();
    }
    if out.is_empty() {
        out.push(b'/');
    }
}

/// Step 3: `//` → `/`, as Envoy's `mergeSlashes` (leading and trailing slash kept, so a
/// path of only slashes becomes `//`). The canonical path is ASCII.
fn merge_slashes(canonical: &[u8]) -> String {
    let text: String = canonical.iter().map(|b| char::from(*b)).collect();
    if !text.contains("//") {
        return text;
    }
    let inner: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
    let mut out = String::with_capacity(text.len());
    if text.starts_with('/') {
        out.push('/');
    }
    out.push_str(&inner.join("/"));
    if text.ends_with('/') {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The fast path is an optimization, not a second definition: wherever it applies
        /// it gives what the three steps give.
        #[test]
        fn fast_path_agrees_with_full_normalization(
            raw in proptest::collection::vec(
                prop_oneof![
                    Just(b'/'), Just(b'.'), Just(b'%'), Just(b'\\'), Just(b';'), Just(b'a'),
                    Just(b'2'), Just(b'e'), Just(b'F'), Just(b'~'), Just(b' '), Just(b'?'),
                    any::<u8>(),
                ],
                0..24,
            )
        ) {
            if already_normal(&raw) {
                let fast = normalize_path(&raw);
                prop_assert_eq!(fast, normalize_fully(&raw));
            }
        }
    }

    #[test]
    fn fast_path_takes_ordinary_paths_only() {
        assert!(already_normal(b"/api/v1/users/42"));
        assert!(already_normal(b"/index.html"));
        for odd in [
            &b"/a/./b"[..],
            b"/a/../b",
            b"/a//b",
            b"/%2e",
            b"/a\\b",
            b"a/b",
            b"",
            b"/.well-known",
            b"/a b",
            b"/a/..;/b",
        ] {
            assert!(!already_normal(odd), "{}", String::from_utf8_lossy(odd));
        }
    }

    fn norm(s: &str) -> Result<(String, bool), InvalidPath> {
        normalize_path(s.as_bytes()).map(|n| (n.path, n.redirect))
    }

    fn path(s: &str) -> String {
        match norm(s) {
            Ok((p, _)) => p,
            Err(_) => format!("<invalid {s}>"),
        }
    }

    #[test]
    fn dot_segments_resolve_in_every_spelling() {
        for (input, want) in [
            ("/public/../private", "/private"),
            ("/public/./../private", "/private"),
            ("/public/%2e%2e/private", "/private"),
            ("/public/%2E%2E/private", "/private"),
            ("/public/.%2e/private", "/private"),
            ("/public/%2e./private", "/private"),
            ("/public/x/..", "/public/"),
            ("/public/x/.", "/public/x/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/../../..", "/"),
            ("/./a", "/a"),
            ("/a/..b", "/a/..b"),
            ("/a/b..", "/a/b.."),
            ("/a/...", "/a/..."),
            ("/a/.hidden", "/a/.hidden"),
        ] {
            assert_eq!(path(input), want, "{input}");
        }
    }

    #[test]
    fn backslashes_are_slashes() {
        assert_eq!(path("/public\\..\\private"), "/private");
        assert_eq!(path("\\public\\x"), "/public/x");
        // `%5c` is a backslash, hence a slash: `/public//../private`.
        assert_eq!(path("/public/%5c../private"), "/public/private");
    }

    #[test]
    fn escaped_slashes_are_unescaped_and_redirected() {
        assert_eq!(
            norm("/public%2F..%2Fprivate"),
            Ok(("/private".into(), true))
        );
        assert_eq!(norm("/public/..%2fprivate"), Ok(("/private".into(), true)));
        assert_eq!(norm("/a%5Cb"), Ok(("/a/b".into(), true)));
        assert_eq!(norm("/a/b"), Ok(("/a/b".into(), false)));
        // An escaped percent sign is not an escaped slash.
        assert_eq!(norm("/a%252Fb"), Ok(("/a%252Fb".into(), false)));
    }

    #[test]
    fn merged_slashes() {
        assert_eq!(path("//public/x"), "/public/x");
        assert_eq!(path("/public//x///y"), "/public/x/y");
        assert_eq!(path("//.."), "/");
        assert_eq!(path("///"), "//");
        assert_eq!(path("/a//../b"), "/a/b");
        assert_eq!(path("/a/.//b"), "/a/b");
        assert_eq!(path("/public//../private"), "/public/private");
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_kept_upper_case() {
        assert_eq!(path("/%70ublic/x"), "/public/x");
        assert_eq!(path("/%41%7e%2D%5f"), "/A~-_");
        assert_eq!(path("/a%3fb"), "/a%3fb");
        assert_eq!(path("/%3A%40%21%2B%3b"), "/%3A%40%21%2B%3b");
        assert_eq!(path("/%2541"), "/%2541");
        assert_eq!(path("/a%2%46b"), "/a%252Fb");
        assert_eq!(path("/%%32%46"), "/%252F");
        assert_eq!(path("/a/%%32e%%32e/b"), "/a/%252e%252e/b");
        assert_eq!(path("/a%23b"), "/a%23b");
        assert_eq!(path("/a%20b"), "/a%20b");
        assert_eq!(path("/a%zzb"), "/a%25zzb");
        assert_eq!(path("/a%"), "/a%25");
        assert_eq!(path("/a%2"), "/a%252");
    }

    #[test]
    fn bytes_that_cannot_appear_are_escaped_or_invalid() {
        assert_eq!(path("/a b"), "/a%20b");
        assert_eq!(path("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(path("/a\"<>`{}"), "/a%22%3C%3E%60%7B%7D");
        assert_eq!(path("/a^b|c'd"), "/a%5Eb%7Cc'd");
        assert_eq!(norm("/a%00b"), Err(InvalidPath));
        assert_eq!(norm("/xyz/.%00../abc"), Err(InvalidPath));
        assert_eq!(norm("/a\u{1}b"), Err(InvalidPath));
        assert_eq!(norm("/a\u{7f}b"), Err(InvalidPath));
        assert_eq!(norm("/a\tb"), Err(InvalidPath));
    }

    #[test]
    fn relative_and_empty_paths_get_the_root() {
        assert_eq!(path(""), "/");
        assert_eq!(path("a/b"), "/a/b");
        assert_eq!(path("*"), "/*");
    }

    #[test]
    fn normalization_is_idempotent() {
        for input in [
            "/public/../private",
            "/a%zz/%2e%2e/b",
            "//x//..//y",
            "/a%3fb/%70",
            "/\u{e9}/./../x",
        ] {
            let once = path(input);
            assert_eq!(path(&once), once, "{input}");
        }
    }
}

/// Envoy's own test vectors (`path_utility_test.cc`, `conn_manager_utility_test.cc`) and
/// vectors derived from its code for Cilium's configuration.
#[cfg(test)]
mod envoy_vectors {
    use super::*;

    #[test]
    fn canonical_path_vectors() {
        for (input, want) in [
            ("/a/b/../c", "/a/c"),
            ("/a/b/./c", "/a/b/c"),
            ("a/b/../c", "/a/c"),
            ("/a/b/../../../../c", "/c"),
            ("/a/..\\c", "/c"),
            ("/%c0%af", "/%c0%af"),
            ("/A/B/C", "/A/B/C"),
            ("/a/b/%2E%2E/c", "/a/c"),
            ("/a/b/%2e%2e/c", "/a/c"),
            ("/foo/bar/../%23boom", "/foo/%23boom"),
            ("/%70ath", "/path"),
            ("/%41%42%43", "/ABC"),
            ("/%7e", "/~"),
            ("/%2d%2e%5f", "/-._"),
            ("/%2e", "/"),
            ("/%25", "/%25"),
            ("/a%252Fb", "/a%252Fb"),
            ("/a/....//b", "/a/..../b"),
            ("/a;b/../c", "/c"),
            // Envoy 1.31-1.33 keep `..;` (CVE-2026-73551); newer Envoy and membrane do not.
            ("/a/..;/b", "/b"),
            ("/public/..;x=1/private", "/private"),
            ("/a/.;x/b", "/a/b"),
            ("/a/b..;/c", "/a/b..;/c"),
            ("/a'b\"c", "/a'b%22c"),
            ("/a<b>", "/a%3Cb%3E"),
            ("/%80", "/%80"),
            ("/%0a", "/%0a"),
            ("//a//b//", "/a/b/"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/./", "/"),
        ] {
            assert_eq!(
                normalize_path(input.as_bytes()).map(|n| n.path),
                Ok(want.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn escaped_slash_vectors_redirect() {
        for (input, want) in [
            ("/a%2fb", "/a/b"),
            ("/a/..%2fb", "/b"),
            ("/a%2F..%2Fb", "/b"),
            ("/..%2f..%2fetc/passwd", "/etc/passwd"),
            ("/a/..%5cb", "/b"),
            ("/a%5c%2e%2e%5cb", "/b"),
            ("/a/%2f%2e%2e%2fb", "/a/b"),
            ("/private%2f../%2e%5Cpublic", "/public"),
            ("/x/%2E%2e/z%2f%2Fabc%5C../def", "/z/def"),
            ("/xyz%2f..%5c/%2Fabc", "/abc"),
            ("/%2f%2f", "//"),
        ] {
            assert_eq!(
                normalize_path(input.as_bytes()),
                Ok(Normalized {
                    path: want.to_string(),
                    redirect: true
                }),
                "{input}"
            );
        }
    }
}
