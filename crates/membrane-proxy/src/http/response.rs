//! The upstream's answer, relayed to the client: interim `1xx` answers passed on, the final
//! head without hop-by-hop headers, the body re-framed by the same rules as requests.

use super::chunked::{self, ChunkedDecoder, Step};
use super::head::lowered;
use super::{ExchangeError, Next, READ_CHUNK, push_decimal};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// The most headers an answer may carry.
const MAX_RESPONSE_HEADERS: usize = 128;
/// The largest answer head accepted.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What became of an exchange.
pub(super) struct Relayed {
    pub next: Next,
    /// The final answer's status, if there was one.
    pub status: Option<u16>,
    /// The upstream connection cannot be used again.
    pub upstream_done: bool,
}

impl Relayed {
    pub fn closed(status: Option<u16>) -> Relayed {
        Relayed {
            next: Next::Close,
            status,
            upstream_done: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes; the client connection closes after it.
    UntilClose,
}

/// A parsed answer head.
struct Head {
    status: u16,
    framing: Framing,
    upstream_close: bool,
    /// The head to send to the client, without its final blank line.
    out: Vec<u8>,
    len: usize,
}

enum Parse {
    Partial,
    Head(Head),
}

fn hop_by_hop(lower: &str) -> bool {
    matches!(
        lower,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
            | "content-length"
    )
}

fn parse_head(buf: &[u8], request_is_head: bool) -> Result<Parse, &'static str> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let len = match resp.parse(buf) {
        // The limit holds however the head arrived: one read can complete a head past it.
        Ok(httparse::Status::Complete(n)) if n > MAX_RESPONSE_HEAD => {
            return Err("answer head too large");
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err("answer head too large");
        }
        Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
        Err(_) => return Err("malformed answer head"),
    };
    let status = resp.code.unwrap_or(0);
    // RFC 9110 §15: a status is three digits from 100; httparse reads `099` as 99, which
    // would go to the client as a two-digit status line (Envoy: a codec error, `502`).
    if !(100..=999).contains(&status) {
        return Err("invalid status in the answer");
    }
    let mut nominated: Vec<String> = Vec::new();
    let mut upstream_close = resp.version == Some(0);
    let mut chunked_coding = false;
    let mut other_coding = false;
    let mut length: Option<u64> = None;
    let mut scratch = String::new();
    let mut token_scratch = String::new();
    for h in resp.headers.iter() {
        match lowered(h.name, &mut scratch) {
            "connection" => {
                for t in String::from_utf8_lossy(h.value).split(',') {
                    match lowered(t.trim(), &mut token_scratch) {
                        "close" => upstream_close = true,
                        "keep-alive" => {
                            if resp.version == Some(0) {
                                upstream_close = false;
                            }
                        }
                        "" => {}
                        other => nominated.push(other.to_string()),
                    }
                }
            }
            "transfer-encoding" => {
                for c in String::from_utf8_lossy(h.value).split(',') {
                    let c = c.trim().to_ascii_lowercase();
                    if c == "chunked" {
                        chunked_coding = true;
                    } else if !c.is_empty() {
                        other_coding = true;
                    }
                }
            }
            "content-length" => {
                for part in h.value.split(|b| *b == b',') {
                    let part = part.trim_ascii();
                    let n = std::str::from_utf8(part)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or("invalid content-length in the answer")?;
                    if length.is_some_and(|m| m != n) {
                        return Err("conflicting content-length in the answer");
                    }
                    length = Some(n);
                }
            }
            _ => {}
        }
    }
    let framing =
        if request_is_head || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if chunked_coding && !other_coding {
            Framing::Chunked
        } else if chunked_coding || other_coding {
            Framing::UntilClose
        } else {
            match length {
                Some(0) => Framing::None,
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(&mut out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let lower = lowered(h.name, &mut scratch);
        // A HEAD answer's content-length describes the body a GET would get: keep it.
        let keep_length = lower == "content-length" && (request_is_head || status == 304);
        if (hop_by_hop(lower) && !keep_length) || nominated.iter().any(|n| n == lower) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None
            if !(100..200).contains(&status)
                && !request_is_head
                && status != 304
                && status != 204 =>
        {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        _ => {}
    }
    Ok(Parse::Head(Head {
        status,
        framing,
        upstream_close,
        out,
        len,
    }))
}

async fn read_more(ur: &mut ReadHalf<'_>, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    ur.read_buf(buf).await
}

/// Reads the upstream's answer (interim ones included) and writes it to the client.
/// `answered` is set once the first byte of the final answer went to the client.
pub(super) async fn relay(
    ur: &mut ReadHalf<'_>,
    ubuf: &mut Vec<u8>,
    cw: &mut WriteHalf<'_>,
    request_is_head: bool,
    continue_sent: bool,
    answered: &AtomicBool,
) -> Result<Relayed, ExchangeError> {
    let mut any_byte = false;
    let head = loop {
        let parsed = if ubuf.is_empty() {
            Parse::Partial
        } else {
            parse_head(ubuf, request_is_head)
                .map_err(|why| ExchangeError::BadUpstream(why, false))?
        };
        match parsed {
            Parse::Head(h) if (100..200).contains(&h.status) => {
                if h.status == 101 {
                    return Err(ExchangeError::BadUpstream(
                        "unrequested protocol switch",
                        false,
                    ));
                }
                // Interim answers (`100 Continue`, `103 Early Hints`) pass through, except a
                // `100` when the proxy already sent its own (Envoy drops the upstream's then:
                // a client must not read two).
                if !(h.status == 100 && continue_sent) {
                    let mut out = h.out;
                    out.extend_from_slice(b"\r\n");
                    cw.write_all(&out).await?;
                }
                ubuf.drain(..h.len);
                continue;
            }
            Parse::Head(h) => break h,
            Parse::Partial => {}
        }
        let n = read_more(ur, ubuf).await?;
        if n == 0 {
            return Err(if any_byte {
                ExchangeError::BadUpstream("upstream closed inside the answer head", false)
            } else {
                ExchangeError::UpstreamClosedEarly
            });
        }
        any_byte = true;
    };
    ubuf.drain(..head.len);
    let mut out = head.out;
    let client_close = head.framing == Framing::UntilClose;
    if client_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    answered.store(true, Ordering::Relaxed);
    let midway = |why| ExchangeError::BadUpstream(why, true);
    match head.framing {
        Framing::None => {
            cw.write_all(&out).await?;
        }
        Framing::Length(total) => {
            let mut left = total;
            let first = usize::try_from(left).map_or(ubuf.len(), |l| l.min(ubuf.len()));
            out.extend_from_slice(&ubuf[..first]);
            ubuf.drain(..first);
            left -= first as u64;
            cw.write_all(&out).await?;
            while left > 0 {
                let n = read_more(ur, ubuf).await?;
                if n == 0 {
                    return Err(midway("upstream closed inside the body"));
                }
                let take = usize::try_from(left).map_or(ubuf.len(), |l| l.min(ubuf.len()));
                cw.write_all(&ubuf[..take]).await?;
                ubuf.drain(..take);
                left -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new();
            loop {
                match decoder.step(ubuf) {
                    Ok(Step::Data { data, consumed }) => {
                        chunked::chunk_header(data.len(), &mut out);
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                        ubuf.drain(..consumed);
                        continue;
                    }
                    Ok(Step::End { consumed }) => {
                        ubuf.drain(..consumed);
                        out.extend_from_slice(chunked::LAST_CHUNK);
                        cw.write_all(&out).await?;
                        break;
                    }
                    Ok(Step::NeedMore { consumed }) => {
                        ubuf.drain(..consumed);
                    }
                    Err(e) => return Err(midway(e.0)),
                }
                if !out.is_empty() {
                    cw.write_all(&out).await?;
                    out.clear();
                }
                if read_more(ur, ubuf).await? == 0 {
                    return Err(midway("upstream closed inside the body"));
                }
            }
        }
        Framing::UntilClose => {
            out.extend_from_slice(ubuf);
            ubuf.clear();
            cw.write_all(&out).await?;
            while read_more(ur, ubuf).await? > 0 {
                cw.write_all(ubuf).await?;
                ubuf.clear();
            }
        }
    }
    Ok(Relayed {
        next: if client_close {
            Next::Close
        } else {
            Next::KeepAlive
        },
        status: Some(head.status),
        upstream_done: head.upstream_close || client_close || !ubuf.is_empty(),
    })
}
