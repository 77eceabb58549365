//! The request head: parsed, checked as Envoy's HTTP/1 codec and connection manager check it
//! (with Cilium's defaults), and turned into exactly what policy sees and what is forwarded.
//!
//! One view for both is the point: the path policy matches is the normalized path the
//! backend receives, the authority it matches is the `Host` it receives, a header it matches
//! twice is matched as the joined value the backend reads, and nothing the policy did not
//! see (a hop-by-hop nomination, a second framing) reaches the backend.
//!
//! Envoy's answers, which Cilium users see: HTTP/1.0 `426`; no `Host` on HTTP/1.1 `400`;
//! a transfer coding other than `chunked` `501`; both `Content-Length` and
//! `Transfer-Encoding`, conflicting lengths, a malformed head `400`; a head over the limit
//! `431`; a fragment, a control or non-ASCII byte in the target, an escaped NUL, an unknown
//! method, `Connection: host` `400`; escaped slashes in the path a `307` to the normalized
//! path; `OPTIONS *` `404`; `Upgrade` and `CONNECT` (no upgrade is configured) and an
//! `https://` target on plain HTTP `403`.

use super::path::{self, InvalidPath};

/// The most headers a request may carry (Envoy's default `max_headers_count`).
pub const MAX_HEADERS: usize = 100;

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length: n` (n > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A header as received: its name as spelled (for forwarding) and its value bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn is(&self, lower: &str) -> bool {
        self.name.eq_ignore_ascii_case(lower)
    }
}

/// A request head that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// `:path`: the normalized path and the query, what policy matches and what is sent.
    pub path: String,
    /// `:authority`: the absolute-form target's, else `Host` (duplicates joined with `,`).
    pub authority: String,
    /// End-to-end headers in arrival order, without `Host`, framing and hop-by-hop headers.
    pub headers: Vec<Header>,
    pub body: BodyFraming,
    /// The client asked to close after this exchange (`Connection: close`).
    pub close: bool,
    /// `Expect: 100-continue` (answered by the proxy, as Envoy does, not forwarded).
    pub expect_continue: bool,
    /// Bytes of the head, the blank line included.
    pub head_len: usize,
}

impl RequestHead {
    /// Every value of a header (case-insensitive name), joined with `,` as Envoy's header
    /// matchers read repeated headers.
    pub fn joined(&self, lower: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for h in self.headers.iter().filter(|h| h.is(lower)) {
            let v = String::from_utf8_lossy(&h.value);
            match &mut out {
                Some(s) => {
                    s.push(',');
                    s.push_str(&v);
                }
                None => out = Some(v.into_owned()),
            }
        }
        out
    }

    /// Whether the exchange is a `HEAD` (its response has no body whatever it says).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Why a head is answered by the proxy itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// `400`: a malformed head, target or framing.
    BadRequest(&'static str),
    /// `426`: HTTP/1.0.
    UpgradeRequired,
    /// `431`: the head is over the limit or has too many headers.
    HeadersTooLarge,
    /// `501`: a transfer coding other than `chunked`.
    NotImplemented,
    /// `403`: protocol upgrades and `CONNECT` (Envoy has no upgrade configured for them).
    UpgradeDenied(&'static str),
    /// `307` to the normalized path (escaped slashes).
    Redirect { location: String },
    /// `404`: a target that is not a path (`OPTIONS *`), which no route matches.
    NotFound,
}

impl Rejection {
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::UpgradeRequired => 426,
            Rejection::HeadersTooLarge => 431,
            Rejection::NotImplemented => 501,
            Rejection::UpgradeDenied(_) => 403,
            Rejection::Redirect { .. } => 307,
            Rejection::NotFound => 404,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadRequest(why) | Rejection::UpgradeDenied(why) => why,
            Rejection::UpgradeRequired => "HTTP/1.0 is not accepted",
            Rejection::HeadersTooLarge => "request head too large",
            Rejection::NotImplemented => "transfer coding other than chunked",
            Rejection::Redirect { .. } => "escaped slashes in the path",
            Rejection::NotFound => "no route for a target that is not a path",
        }
    }
}

/// The outcome of reading a buffer that starts with a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    Request(RequestHead),
    Rejected(Rejection),
}

/// Parses and checks the request head at the start of `buf`; `max_head` bounds its size.
pub fn parse_request_head(buf: &[u8], max_head: usize) -> Parsed {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut storage);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > max_head => {
            return Parsed::Rejected(Rejection::HeadersTooLarge);
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Parsed::Rejected(Rejection::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Rejected(Rejection::HeadersTooLarge);
        }
        Err(_) => return Parsed::Rejected(Rejection::BadRequest("malformed request head")),
    };
    match check(&req, head_len) {
        Ok(head) => Parsed::Request(head),
        Err(r) => Parsed::Rejected(r),
    }
}

fn bad(why: &'static str) -> Rejection {
    Rejection::BadRequest(why)
}

/// The request target, split.
struct Target {
    authority: Option<String>,
    path: Vec<u8>,
    query: Option<String>,
}

fn split_target(method: &str, target: &str) -> Result<Target, Rejection> {
    // Envoy rejects a fragment rather than guessing what the client meant by it.
    if target.contains('#') {
        return Err(bad("fragment in the request target"));
    }
    // Envoy's URL check: visible ASCII only.
    if target.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(bad("invalid character in the request target"));
    }
    let (path_part, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    if path_part.starts_with('/') {
        return Ok(Target {
            authority: None,
            path: path_part.as_bytes().to_vec(),
            query,
        });
    }
    if target == "*" {
        return Err(if method == "OPTIONS" {
            Rejection::NotFound
        } else {
            bad("`*` target on a method other than OPTIONS")
        });
    }
    // Absolute form: `http://authority/path?query`; the authority replaces `Host`.
    let lower = path_part.to_ascii_lowercase();
    let rest = if lower.starts_with("http://") {
        &path_part[7..]
    } else if lower.starts_with("https://") {
        // Envoy: an https URL on a plaintext connection.
        return Err(Rejection::UpgradeDenied(
            "https URL on a plaintext connection",
        ));
    } else {
        return Err(bad("request target is neither a path nor an absolute URL"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None if query.is_some() => return Err(Rejection::NotFound),
        None => (rest, "/"),
    };
    // Userinfo is not part of the authority.
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad("absolute URL without a host"));
    }
    Ok(Target {
        authority: Some(authority.to_string()),
        path: path.as_bytes().to_vec(),
        query,
    })
}

/// The methods Envoy's codec accepts (`allow_custom_methods` is off under Cilium).
fn is_known_method(m: &str) -> bool {
    matches!(
        m,
        "GET"
            | "HEAD"
            | "POST"
            | "PUT"
            | "DELETE"
            | "CONNECT"
            | "OPTIONS"
            | "TRACE"
            | "PATCH"
            | "PURGE"
            | "ACL"
            | "BASELINE-CONTROL"
            | "BIND"
            | "CHECKIN"
            | "CHECKOUT"
            | "COPY"
            | "LABEL"
            | "LINK"
            | "LOCK"
            | "MERGE"
            | "MKACTIVITY"
            | "MKCALENDAR"
            | "MKCOL"
            | "MKREDIRECTREF"
            | "MKWORKSPACE"
            | "MOVE"
            | "M-SEARCH"
            | "NOTIFY"
            | "ORDERPATCH"
            | "PROPFIND"
            | "PROPPATCH"
            | "REBIND"
            | "REPORT"
            | "SEARCH"
            | "SOURCE"
            | "SUBSCRIBE"
            | "UNBIND"
            | "UNCHECKOUT"
            | "UNLINK"
            | "UNLOCK"
            | "UNSUBSCRIBE"
            | "UPDATE"
            | "UPDATEREDIRECTREF"
            | "VERSION-CONTROL"
    )
}

/// A valid `:authority`: host (name, IPv4 or `[IPv6]`) and optional port, as Envoy's
/// `authorityIsValid` accepts (RFC 3986 reg-name characters; no userinfo, no spaces).
fn authority_is_valid(a: &str) -> bool {
    !a.is_empty()
        && a.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                        | b':'
                        | b'['
                        | b']'
                )
        })
}

/// Hop-by-hop headers: they describe one connection and are never forwarded.
fn is_hop_by_hop(lower: &str) -> bool {
    matches!(
        lower,
        "connection" | "keep-alive" | "proxy-connection" | "te" | "upgrade" | "trailer"
    )
}

/// Headers a `Connection` nomination may not remove: what policy decided on and the framing.
fn is_protected(lower: &str) -> bool {
    matches!(lower, "host" | "content-length" | "transfer-encoding")
}

fn check(req: &httparse::Request<'_, '_>, head_len: usize) -> Result<RequestHead, Rejection> {
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    if req.version != Some(1) {
        return Err(Rejection::UpgradeRequired);
    }
    if !is_known_method(method) {
        return Err(bad("unknown method"));
    }
    let mut hosts: Vec<&[u8]> = Vec::new();
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut nominated: Vec<String> = Vec::new();
    let mut close = false;
    let mut upgrade_token = false;
    // Some `Upgrade` token other than `h2c`, in any of the headers (Envoy reads them joined).
    let mut upgrade_other = false;
    let mut expect_continue = false;
    // One scratch buffer for every lower-cased name: no allocation per header.
    let mut scratch = String::new();
    let mut token_scratch = String::new();
    for h in req.headers.iter() {
        match lowered(h.name, &mut scratch) {
            "host" => hosts.push(h.value),
            "content-length" => lengths.push(h.value),
            "transfer-encoding" => codings.push(h.value),
            "upgrade" => {
                upgrade_other |= h
                    .value
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                    .any(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"h2c"));
            }
            "connection" => {
                for token in String::from_utf8_lossy(h.value).split(',') {
                    match lowered(token.trim(), &mut token_scratch) {
                        "close" => close = true,
                        "upgrade" => upgrade_token = true,
                        "keep-alive" | "http2-settings" | "connection" | "" => {}
                        other => nominated.push(other.to_string()),
                    }
                }
            }
            "expect" if h.value.eq_ignore_ascii_case(b"100-continue") => expect_continue = true,
            _ => {}
        }
    }
    // Envoy's `sanitizeConnectionHeader`: a long list, or a nomination of what the proxy
    // itself vouches for, is an attack, not a request.
    if nominated.len() >= 10 {
        return Err(bad("too many Connection tokens"));
    }
    if nominated.iter().any(|t| {
        t.starts_with(':')
            || matches!(
                t.as_str(),
                "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto"
            )
    }) {
        return Err(bad("Connection nominates a header the proxy sets"));
    }
    let body = framing(&lengths, &codings)?;
    if method == "CONNECT" {
        return Err(Rejection::UpgradeDenied("CONNECT is not allowed"));
    }
    let t = split_target(method, target)?;
    // `Connection: host` removes the Host header (Envoy then has none: 400).
    let host_removed = nominated.iter().any(|t| t == "host");
    let authority = match t.authority {
        Some(a) => a,
        None => {
            if hosts.is_empty() || host_removed {
                return Err(bad("HTTP/1.1 request without Host"));
            }
            let mut joined = String::new();
            for (i, v) in hosts.iter().enumerate() {
                if i > 0 {
                    joined.push(',');
                }
                joined.push_str(String::from_utf8_lossy(v).trim());
            }
            joined
        }
    };
    if !authority_is_valid(&authority) {
        return Err(bad("invalid Host"));
    }
    let normalized = path::normalize_path(&t.path).map_err(|InvalidPath| bad("invalid path"))?;
    let mut full = normalized.path;
    if let Some(q) = &t.query {
        full.push('?');
        full.push_str(q);
    }
    if normalized.redirect {
        return Err(Rejection::Redirect { location: full });
    }
    // An upgrade needs both `Upgrade` and a `Connection: upgrade` token; none is configured,
    // so it is refused (h2c excepted: Envoy drops that offer and serves HTTP/1.1). `Upgrade`
    // alone is a stray header and is dropped.
    if upgrade_token && upgrade_other {
        return Err(Rejection::UpgradeDenied(
            "protocol upgrades are not allowed",
        ));
    }
    let headers = req
        .headers
        .iter()
        .filter(|h| {
            let lower = lowered(h.name, &mut scratch);
            !(is_hop_by_hop(lower)
                || is_protected(lower)
                || lower == "http2-settings"
                || (lower == "expect" && expect_continue)
                || nominated.iter().any(|n| n == lower))
        })
        .map(|h| Header {
            name: h.name.to_string(),
            value: h.value.to_vec(),
        })
        .collect();
    Ok(RequestHead {
        method: method.to_string(),
        path: full,
        authority,
        headers,
        body,
        close,
        expect_continue,
        head_len,
    })
}

/// `name` in lower case, written into `scratch` (reused across headers).
pub(crate) fn lowered<'s>(name: &str, scratch: &'s mut String) -> &'s str {
    scratch.clear();
    scratch.push_str(name);
    scratch.make_ascii_lowercase();
    scratch.as_str()
}

/// The body's framing from every `Content-Length` and `Transfer-Encoding` value.
fn framing(lengths: &[&[u8]], codings: &[&[u8]]) -> Result<BodyFraming, Rejection> {
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        // Exactly one coding, `chunked`: anything else is a coding Envoy does not implement.
        let all: Vec<String> = codings
            .iter()
            .flat_map(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        return match all.as_slice() {
            [one] if one == "chunked" => Ok(BodyFraming::Chunked),
            _ => Err(Rejection::NotImplemented),
        };
    }
    // Envoy (`disallow_multiple_content_length`): one Content-Length, digits only.
    let length = match lengths {
        [] => None,
        [one] => {
            let v = one.trim_ascii();
            if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
                return Err(bad("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(bad("invalid Content-Length"))?;
            Some(n)
        }
        _ => return Err(bad("more than one Content-Length")),
    };
    Ok(match length {
        None | Some(0) => BodyFraming::None,
        Some(n) => BodyFraming::Length(n),
    })
}

#[cfg(test)]
mod tests;
