//! A strict, incremental `Transfer-Encoding: chunked` decoder.
//!
//! Bodies are decoded and re-encoded on the way through rather than copied, so the receiver
//! reads exactly the chunks this decoder read: whatever a sender hides in chunk extensions,
//! bare line feeds, oversized sizes or trailers cannot make the two ends disagree about
//! where a message ends (request smuggling). Extensions and trailers are dropped.

/// A chunked body that does not follow RFC 9112 §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidChunk(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line (size, extensions, CRLF).
    Size,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines after the last chunk.
    Trailers,
    Done,
}

/// The longest chunk-size line (size and extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;
/// The most trailer bytes accepted.
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    trailer_bytes: usize,
}

/// What one step of decoding produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Need more input; `consumed` bytes were used (framing only).
    NeedMore { consumed: usize },
    /// Chunk data, to be forwarded; `consumed` bytes were used.
    Data { data: &'a [u8], consumed: usize },
    /// The body ended; `consumed` bytes were used (what follows is the next message).
    End { consumed: usize },
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> ChunkedDecoder {
        ChunkedDecoder {
            state: State::Size,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`; call again with the unconsumed rest (and more bytes).
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, InvalidChunk> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok(Step::End { consumed: pos }),
                State::Size => {
                    let Some(line) = take_line(&input[pos..], MAX_LINE)? else {
                        return Ok(Step::NeedMore { consumed: pos });
                    };
                    pos += line.len() + 2;
                    let size = parse_size(line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    let avail = input.len() - pos;
                    if avail == 0 {
                        return Ok(Step::NeedMore { consumed: pos });
                    }
                    let n = usize::try_from(left).map_or(avail, |l| l.min(avail));
                    let data = &input[pos..pos + n];
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data {
                        data,
                        consumed: pos + n,
                    });
                }
                State::DataEnd => {
                    let rest = &input[pos..];
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|b| *b != b'\r') {
                            return Err(InvalidChunk("chunk data not followed by CRLF"));
                        }
                        return Ok(Step::NeedMore { consumed: pos });
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(InvalidChunk("chunk data not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = State::Size;
                }
                State::Trailers => {
                    let Some(line) = take_line(&input[pos..], MAX_LINE)? else {
                        return Ok(Step::NeedMore { consumed: pos });
                    };
                    pos += line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    self.trailer_bytes += line.len() + 2;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(InvalidChunk("trailers too large"));
                    }
                    // A trailer is a header field: `name: value`, the name a token.
                    let colon = line.iter().position(|b| *b == b':');
                    let name_ok =
                        colon.is_some_and(|c| c > 0 && line[..c].iter().all(|b| is_token(*b)));
                    if !name_ok {
                        return Err(InvalidChunk("malformed trailer"));
                    }
                }
            }
        }
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The line at the start of `input` (without its CRLF), `None` if it is not complete.
/// A bare LF or a CR not followed by LF is an error, not a line end.
fn take_line(input: &[u8], max: usize) -> Result<Option<&[u8]>, InvalidChunk> {
    for (i, &b) in input.iter().enumerate() {
        match b {
            b'\r' => {
                return match input.get(i + 1) {
                    Some(b'\n') => Ok(Some(&input[..i])),
                    Some(_) => Err(InvalidChunk("CR without LF")),
                    None => Ok(None),
                };
            }
            b'\n' => return Err(InvalidChunk("bare LF")),
            0 => return Err(InvalidChunk("NUL in chunk framing")),
            _ if i >= max => return Err(InvalidChunk("chunk line too long")),
            _ => {}
        }
    }
    if input.len() > max {
        return Err(InvalidChunk("chunk line too long"));
    }
    Ok(None)
}

/// `1*HEXDIG [ BWS ; extensions ]`.
fn parse_size(line: &[u8]) -> Result<u64, InvalidChunk> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(InvalidChunk("missing chunk size"));
    }
    if digits > 15 {
        return Err(InvalidChunk("chunk size too large"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size * 16 + u64::from(v);
    }
    let rest = &line[digits..];
    let rest_trimmed = rest
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .map_or(&rest[rest.len()..], |i| &rest[i..]);
    match rest_trimmed.first() {
        None if rest.is_empty() => Ok(size),
        Some(b';') => {
            if rest_trimmed
                .iter()
                .any(|b| b.is_ascii_control() && *b != b'\t')
            {
                return Err(InvalidChunk("control character in chunk extension"));
            }
            Ok(size)
        }
        _ => Err(InvalidChunk("junk after chunk size")),
    }
}

/// The chunk header for `len` bytes of data (`{len:x}\r\n`).
pub fn chunk_header(len: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk and the end of the body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `piece` bytes: the data, and the bytes left over.
    fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize), InvalidChunk> {
        let mut d = ChunkedDecoder::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.step(&buf)? {
                Step::Data { data, consumed } => {
                    out.extend_from_slice(data);
                    buf.drain(..consumed);
                }
                Step::NeedMore { consumed } => {
                    buf.drain(..consumed);
                    if fed >= input.len() {
                        return Err(InvalidChunk("truncated"));
                    }
                    let end = (fed + piece).min(input.len());
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
                Step::End { consumed } => {
                    buf.drain(..consumed);
                    return Ok((out, buf.len() + input.len() - fed));
                }
            }
        }
    }

    #[test]
    fn decodes_whole_and_byte_by_byte() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 1000] {
            let (data, left) = decode(body, piece).unwrap();
            assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
            assert_eq!(left, 4, "piece {piece}");
        }
    }

    #[test]
    fn rejects_smuggling_shapes() {
        for bad in [
            &b"4\nWiki\r\n0\r\n\r\n"[..],
            b"4\r\nWiki\n0\r\n\r\n",
            b"4\r\nWikiX\r\n0\r\n\r\n",
            b"-1\r\n",
            b"0x4\r\nWiki\r\n0\r\n\r\n",
            b" 4\r\nWiki\r\n0\r\n\r\n",
            b"4 x\r\nWiki\r\n0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"4\r\nWiki\r\n0\r\nbad trailer\r\n\r\n",
            b"4\r\nWiki\r\n0\r\n\n",
            b"4\rX\nWiki\r\n0\r\n\r\n",
            b"4;a=\x01\r\nWiki\r\n0\r\n\r\n",
            b"\r\n",
        ] {
            assert!(
                decode(bad, 1000).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn size_with_whitespace_before_extension_is_accepted() {
        let (data, _) = decode(b"4 ;x\r\nWiki\r\n0\r\n\r\n", 3).unwrap();
        assert_eq!(data, b"Wiki");
    }

    #[test]
    fn overlong_lines_are_rejected_without_a_line_end() {
        let mut long = b"4;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        assert!(decode(&long, 100).is_err());
    }
}
