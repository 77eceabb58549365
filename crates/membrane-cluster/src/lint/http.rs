//! MEM005: HTTP rules, whose `path` and `method` are regexes matched against the whole string
//! (not prefixes or globs, as they often look).

use super::context::Cx;
use super::policy_view::PolicyView;
use super::{HTTP_ANCHORED, Out};
use membrane_policy::api::{self, RuleSection};

/// The HTTP rules of every `toPorts` of the policy.
fn http_rules<'p>(p: &'p PolicyView<'_>) -> Vec<&'p api::HttpRule> {
    let mut out = Vec::new();
    for (_, r) in p.cilium_rules() {
        for s in [RuleSection::Ingress, RuleSection::Egress] {
            for pr in r.section(s).into_iter().flatten() {
                for port_rule in pr.to_ports.iter().flatten() {
                    if let Some(http) = port_rule.rules.as_ref().and_then(|l| l.http.as_ref()) {
                        out.extend(http.iter());
                    }
                }
            }
        }
    }
    out
}

/// No regex metacharacter: the path matches exactly itself.
fn is_literal(s: &str) -> bool {
    !s.chars().any(|c| ".*+?()[]{}|^$\\".contains(c))
}

/// What is wrong with an HTTP path regex, if anything: (message, help).
fn path_problem(
    path: &str,
    siblings: &[&str],
    route_prefixes: &[&str],
) -> Option<(String, String)> {
    let p = path.strip_prefix('^').unwrap_or(path);
    let first = p.chars().next()?;
    if first.is_ascii_alphanumeric() {
        return Some((
            format!(
                "path `{path}` never matches: it is matched against the whole request path, which starts with `/`"
            ),
            format!("write `/{p}`"),
        ));
    }
    if let Some(base) = p.strip_suffix("/*")
        && !base.ends_with('.')
    {
        return Some((
            format!(
                "path `{path}` is a regex, not a glob: `/*` means \"zero or more slashes\", so it matches `{base}` and `{base}/` but not `{base}/x`"
            ),
            format!(
                "write `{base}/.*` for everything under `{base}/`, or `{base}(/.*)?` to include `{base}` itself"
            ),
        ));
    }
    let bytes: Vec<char> = p.chars().collect();
    for (i, c) in bytes.iter().enumerate() {
        if *c != '?' || i == 0 {
            continue;
        }
        let prev = bytes[i - 1];
        if prev == '\\' || ")*+?}]".contains(prev) {
            continue;
        }
        let rest: String = bytes[i + 1..].iter().collect();
        let param_len = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .count();
        if param_len > 0 && rest[param_len..].starts_with('=') {
            return Some((
                format!(
                    "path `{path}`: `?` is a regex quantifier that makes `{prev}` optional, so this never matches a query string"
                ),
                "escape it as `\\?` (and end with `.*` if other parameters may follow)".to_string(),
            ));
        }
    }
    if !is_literal(p) {
        return None;
    }
    if p == "/" {
        return Some((
            "path `/` matches only the root path `/`, not every path".to_string(),
            "omit `path` to allow every path, or write `/.*`".to_string(),
        ));
    }
    let trimmed = p.trim_end_matches('/');
    let mut why = Vec::new();
    if route_prefixes
        .iter()
        .any(|r| r.trim_end_matches('/') == trimmed)
    {
        why.push("the HTTPRoute in front forwards everything under it (PathPrefix)");
    }
    let under = format!("{trimmed}/");
    if siblings.iter().any(|s| *s != p && s.starts_with(&under)) {
        why.push("other rules list paths under it");
    }
    if p.len() > 1 && p.ends_with('/') {
        why.push("it ends with `/`, like a directory");
    }
    if why.is_empty() {
        return None;
    }
    Some((
        format!(
            "path `{p}` is a regex matched against the whole path (query string included): it allows exactly `{p}`, not `{trimmed}/x` nor `{p}?page=2`, yet it looks like a prefix ({})",
            why.join(", ")
        ),
        format!(
            "to allow everything under it write `{trimmed}(/.*)?` (add `(\\?.*)?` for query strings); keep it literal only for exactly `{p}`"
        ),
    ))
}

/// What is wrong with an HTTP method regex, if anything: (message, help).
fn method_problem(method: &str) -> Option<(String, String)> {
    let m = method
        .strip_prefix('^')
        .unwrap_or(method)
        .trim_end_matches('$');
    if m.contains(',') || m.contains(' ') {
        return Some((
            format!(
                "method `{method}` never matches: it is one regex matched against the whole method"
            ),
            format!("write `{}`", m.replace([',', ' '], "|").replace("||", "|")),
        ));
    }
    let plain = m
        .chars()
        .all(|c| c.is_ascii_alphabetic() || "|()".contains(c));
    if plain && m.chars().any(|c| c.is_ascii_lowercase()) {
        return Some((
            format!(
                "method `{method}` never matches: methods are upper case and matched case-sensitively (`get /` gets 403)"
            ),
            format!("write `{}`", m.to_ascii_uppercase()),
        ));
    }
    None
}

/// MEM005: HTTP path and method regexes that do not match what they look like.
pub(super) fn http_regexes(cx: &Cx<'_>, p: &PolicyView<'_>, out: &mut Out) {
    let rules = http_rules(p);
    if rules.is_empty() {
        return;
    }
    let siblings: Vec<&str> = rules
        .iter()
        .filter_map(|h| h.path.as_ref().map(|s| s.value.as_str()))
        .collect();
    let prefixes: Vec<&str> = cx
        .world
        .scenario
        .routes
        .iter()
        .filter(|r| !r.exact && r.path != "/")
        .map(|r| r.path.as_str())
        .collect();
    for h in rules {
        if let Some(path) = &h.path
            && let Some((message, help)) = path_problem(&path.value, &siblings, &prefixes)
        {
            out.push(HTTP_ANCHORED, p.file, Some(path.span), message, Some(help));
        }
        if let Some(method) = &h.method
            && let Some((message, help)) = method_problem(&method.value)
        {
            out.push(
                HTTP_ANCHORED,
                p.file,
                Some(method.span),
                message,
                Some(help),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str, siblings: &[&str], routes: &[&str]) -> Option<String> {
        path_problem(p, siblings, routes).map(|(m, _)| m)
    }

    #[test]
    fn paths_that_look_like_prefixes() {
        assert!(
            path("/api", &[], &["/api"]).is_some(),
            "behind a PathPrefix route"
        );
        assert!(
            path("/api", &["/api", "/api/users"], &[]).is_some(),
            "siblings under it"
        );
        assert!(path("/api/", &[], &[]).is_some(), "a trailing slash");
        assert!(path("/", &[], &[]).is_some(), "the root only");
        assert!(path("/api/register", &["/api", "/api/register"], &["/api"]).is_none());
        assert!(path("/health", &[], &[]).is_none(), "a plain exact path");
        for ok in [
            "/api(/.*)?",
            "/api/.*",
            "/api.*",
            ".*",
            "^/api$",
            "/api(\\?.*)?",
        ] {
            assert!(path(ok, &[], &["/api"]).is_none(), "{ok}");
        }
    }

    #[test]
    fn paths_that_never_match() {
        assert!(path("api/v1", &[], &[]).is_some(), "no leading slash");
        assert!(path("/static/*", &[], &[]).is_some(), "a glob");
        assert!(path("/search?q=.*", &[], &[]).is_some(), "an unescaped `?`");
        assert!(path("/search\\?q=.*", &[], &[]).is_none(), "an escaped `?`");
        assert!(path("/a(/b)?", &[], &[]).is_none(), "`?` after a group");
    }

    #[test]
    fn methods() {
        assert!(method_problem("get").is_some());
        assert!(method_problem("GET|post").is_some());
        assert!(method_problem("GET,POST").is_some());
        assert!(method_problem("GET|HEAD").is_none());
        assert!(
            method_problem("[A-Z]+").is_none(),
            "a class is not a method name"
        );
    }
}
