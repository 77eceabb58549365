//! A strict DNS wire-format reader and writer for the proxy's hot path (RFC 1035, RFC 6891).
//!
//! The proxy decides on the question's name, so the name it checks must be the one the
//! server will read. This reader is therefore stricter than a server: anything it cannot
//! read unambiguously is refused rather than guessed at.
//!
//! - Compression pointers must point strictly before the start of the name fragment that
//!   contains them (so no loop is possible), never into the 12-byte header, and at most
//!   [`MAX_POINTER_HOPS`] of them are followed per name.
//! - Labels are at most 63 octets, names at most 255 octets in wire form; the label types
//!   `01` and `10` (extended and reserved, RFC 6891 §5) are refused.
//! - A query has exactly one question and no answer or authority records (a second
//!   question is a second name the server might answer; BIND refuses such queries with
//!   FORMERR and so does this proxy); additional records must all be well formed, at most
//!   one OPT record (owned by the root) is allowed, and no byte may follow the last record.
//! - No allocation: names are read into a fixed 255-byte buffer.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The fixed header.
pub const HEADER_LEN: usize = 12;
/// Longest name in wire form, length octets and the final root label included.
pub const MAX_NAME_LEN: usize = 255;
/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;
/// Compression pointers followed in one name. Each must point further back than the last,
/// which already bounds the walk; this keeps the work per name small as well.
pub const MAX_POINTER_HOPS: usize = 32;
/// Largest UDP message a client without EDNS accepts (RFC 1035 §4.2.1).
pub const CLASSIC_UDP_LIMIT: usize = 512;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;

/// The 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub id: u16,
    pub flags: u16,
    pub qdcount: u16,
    pub ancount: u16,
    pub nscount: u16,
    pub arcount: u16,
}

impl Header {
    /// The header of `msg`, if it has 12 bytes.
    pub fn parse(msg: &[u8]) -> Option<Header> {
        let h = msg.get(..HEADER_LEN)?;
        let at = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Header {
            id: at(0),
            flags: at(2),
            qdcount: at(4),
            ancount: at(6),
            nscount: at(8),
            arcount: at(10),
        })
    }

    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }

    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }
}

/// Why a message could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Ends in the middle of something.
    Truncated,
    /// A compression pointer that does not point strictly backwards, into the header, or
    /// one too many.
    BadPointer,
    /// A label type other than a length or a pointer.
    BadLabel,
    /// A name over 255 octets.
    NameTooLong,
    /// A query without exactly one question.
    QuestionCount,
    /// Answer or authority records in a query.
    UnexpectedRecords,
    /// More than one OPT record, or one not owned by the root.
    BadOpt,
    /// Bytes after the last record.
    TrailingBytes,
}

/// A name in uncompressed wire form (length-prefixed labels and the root label).
#[derive(Clone, Copy)]
pub struct Name {
    buf: [u8; MAX_NAME_LEN],
    len: u8,
}

impl Name {
    fn empty() -> Name {
        Name {
            buf: [0; MAX_NAME_LEN],
            len: 0,
        }
    }

    /// The wire form, root label included.
    pub fn wire(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The labels, without the root label.
    pub fn labels(&self) -> impl Iterator<Item = &[u8]> {
        let mut rest = self.wire();
        std::iter::from_fn(move || {
            let (&n, tail) = rest.split_first()?;
            if n == 0 {
                return None;
            }
            let (label, tail) = tail.split_at_checked(usize::from(n))?;
            rest = tail;
            Some(label)
        })
    }

    fn push_label(&mut self, label: &[u8]) -> Result<(), WireError> {
        let at = usize::from(self.len);
        // The label, its length octet, and room for the root label that ends the name.
        if at + 1 + label.len() + 1 > MAX_NAME_LEN {
            return Err(WireError::NameTooLong);
        }
        self.buf[at] = label.len() as u8;
        self.buf[at + 1..at + 1 + label.len()].copy_from_slice(label);
        self.len = (at + 1 + label.len()) as u8;
        Ok(())
    }

    fn finish(&mut self) {
        // `push_label` always left room for this byte.
        let at = usize::from(self.len);
        self.buf[at] = 0;
        self.len += 1;
    }

    /// The name as text the way Cilium's DNS library writes it: labels joined by dots, a
    /// final dot, bytes outside `[!-~]` as `\DDD` and `.` `\` as `\.` `\\`; `lowercase`
    /// folds ASCII letters (DNS names compare case-insensitively, RFC 4343).
    pub fn to_text(&self, lowercase: bool) -> String {
        let mut out = String::with_capacity(usize::from(self.len) + 1);
        let mut any = false;
        for label in self.labels() {
            any = true;
            for &b in label {
                let b = if lowercase { b.to_ascii_lowercase() } else { b };
                match b {
                    b'.' | b'\\' => {
                        out.push('\\');
                        out.push(char::from(b));
                    }
                    b'!'..=b'~' => out.push(char::from(b)),
                    _ => {
                        let _ = write!(out, "\\{b:03}");
                    }
                }
            }
            out.push('.');
        }
        if !any {
            out.push('.');
        }
        out
    }

    /// The same name, ignoring ASCII case.
    pub fn eq_ignore_case(&self, other: &Name) -> bool {
        // Length octets are at most 63, below every letter, so folding them changes nothing.
        self.wire().eq_ignore_ascii_case(other.wire())
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_text(false))
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.wire() == other.wire()
    }
}
impl Eq for Name {}

fn u16_at(msg: &[u8], pos: usize) -> Result<u16, WireError> {
    match msg.get(pos..pos + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(WireError::Truncated),
    }
}

/// Reads the name at `pos`; returns it and the position after it in the message (after
/// the first pointer, if it is compressed).
pub fn read_name(msg: &[u8], pos: usize) -> Result<(Name, usize), WireError> {
    let mut name = Name::empty();
    let mut p = pos;
    // Start of the fragment being read: a pointer inside it must point before it.
    let mut fragment_start = pos;
    let mut end = None;
    let mut hops = 0;
    loop {
        let &len = msg.get(p).ok_or(WireError::Truncated)?;
        match len & 0xc0 {
            0x00 => {
                let n = usize::from(len);
                if n == 0 {
                    name.finish();
                    return Ok((name, end.unwrap_or(p + 1)));
                }
                let label = msg.get(p + 1..p + 1 + n).ok_or(WireError::Truncated)?;
                name.push_label(label)?;
                p += 1 + n;
            }
            0xc0 => {
                let target = usize::from(u16_at(msg, p)? & 0x3fff);
                hops += 1;
                if target < HEADER_LEN || target >= fragment_start || hops > MAX_POINTER_HOPS {
                    return Err(WireError::BadPointer);
                }
                end.get_or_insert(p + 2);
                fragment_start = target;
                p = target;
            }
            _ => return Err(WireError::BadLabel),
        }
    }
}

/// One question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

/// An OPT pseudo-record's fields (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// The requester's UDP payload size.
    pub udp_size: u16,
    pub version: u8,
}

impl Edns {
    /// The largest UDP answer this requester takes: at least 512 (RFC 6891 §6.2.5).
    pub fn udp_limit(edns: Option<Edns>) -> usize {
        edns.map_or(CLASSIC_UDP_LIMIT, |e| {
            usize::from(e.udp_size).max(CLASSIC_UDP_LIMIT)
        })
    }
}

/// A query as the proxy reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub header: Header,
    pub question: Question,
    /// Where the question section ends (it starts at [`HEADER_LEN`]).
    pub question_end: usize,
    pub edns: Option<Edns>,
}

/// Why a message is not a query the proxy may forward, and what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// No complete header: nobody to answer.
    NoHeader,
    /// A response (QR=1): never answered, so two proxies cannot bounce it forever.
    NotAQuery,
    /// An opcode other than QUERY: NOTIMP.
    NotImplemented(Header),
    /// Unreadable: FORMERR; `question_end` is set if the question could be read.
    Malformed {
        header: Header,
        question_end: Option<usize>,
        error: WireError,
    },
}

/// Reads one record's fixed part at `pos` (after its name): type, class, TTL, and the
/// bounds of its data; returns the position after it.
fn skip_record_body(msg: &[u8], pos: usize) -> Result<(u16, u16, u32, usize, usize), WireError> {
    let fixed = msg.get(pos..pos + 10).ok_or(WireError::Truncated)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let class = u16::from_be_bytes([fixed[2], fixed[3]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let start = pos + 10;
    let end = start + rdlen;
    if end > msg.len() {
        return Err(WireError::Truncated);
    }
    Ok((rtype, class, ttl, start, end))
}

/// Reads a query.
pub fn parse_query(msg: &[u8]) -> Result<Query, QueryError> {
    let header = Header::parse(msg).ok_or(QueryError::NoHeader)?;
    if header.is_response() {
        return Err(QueryError::NotAQuery);
    }
    if header.opcode() != 0 {
        return Err(QueryError::NotImplemented(header));
    }
    let malformed = |question_end, error| QueryError::Malformed {
        header,
        question_end,
        error,
    };
    if header.qdcount != 1 {
        return Err(malformed(None, WireError::QuestionCount));
    }
    let (name, p) = read_name(msg, HEADER_LEN).map_err(|e| malformed(None, e))?;
    let (qtype, qclass) = match (u16_at(msg, p), u16_at(msg, p + 2)) {
        (Ok(t), Ok(c)) => (t, c),
        _ => return Err(malformed(None, WireError::Truncated)),
    };
    let question_end = p + 4;
    let bad = |e| malformed(Some(question_end), e);
    if header.ancount != 0 || header.nscount != 0 {
        return Err(bad(WireError::UnexpectedRecords));
    }
    let mut edns = None;
    let mut p = question_end;
    for _ in 0..header.arcount {
        let (owner, after_name) = read_name(msg, p).map_err(bad)?;
        let (rtype, class, ttl, _, end) = skip_record_body(msg, after_name).map_err(bad)?;
        if rtype == TYPE_OPT {
            if edns.is_some() || owner.wire() != [0] {
                return Err(bad(WireError::BadOpt));
            }
            edns = Some(Edns {
                udp_size: class,
                version: (ttl >> 16) as u8,
            });
        }
        p = end;
    }
    if p != msg.len() {
        return Err(bad(WireError::TrailingBytes));
    }
    Ok(Query {
        header,
        question: Question {
            name,
            qtype,
            qclass,
        },
        question_end,
        edns,
    })
}

/// A response header for `request`'s header with `rcode`: same ID, opcode and RD/CD bits,
/// QR and RA set.
fn response_flags(request: &Header, rcode: u8) -> u16 {
    FLAG_QR | (request.flags & (0x7800 | FLAG_RD | FLAG_CD)) | FLAG_RA | u16::from(rcode & 0xf)
}

fn put_header(out: &mut Vec<u8>, h: &Header) {
    for v in [h.id, h.flags, h.qdcount, h.ancount, h.nscount, h.arcount] {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// The payload size this proxy advertises in the OPT record of its own answers.
pub const OWN_EDNS_UDP_SIZE: u16 = 1232;

/// An answer made by the proxy itself to `request` (whose first `question_end` bytes hold
/// its header and its question, if it could be read): no records, `rcode`, and an OPT
/// record when the request had one (RFC 6891 §7).
pub fn reply(
    request: &[u8],
    header: &Header,
    question_end: Option<usize>,
    edns: bool,
    rcode: u8,
) -> Vec<u8> {
    let question = question_end
        .and_then(|end| request.get(HEADER_LEN..end))
        .unwrap_or_default();
    reply_to(header, question, edns, rcode)
}

/// An answer to the query with `header` and the question section `question` (empty: none).
pub fn reply_to(header: &Header, question: &[u8], edns: bool, rcode: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + question.len() + 11);
    put_header(
        &mut out,
        &Header {
            id: header.id,
            flags: response_flags(header, rcode),
            qdcount: u16::from(!question.is_empty()),
            ancount: 0,
            nscount: 0,
            arcount: u16::from(edns),
        },
    );
    out.extend_from_slice(question);
    if edns {
        put_opt(&mut out);
    }
    out
}

/// Where the (single) question of `msg` ends.
pub fn question_end(msg: &[u8]) -> Option<usize> {
    let h = Header::parse(msg)?;
    if h.qdcount != 1 {
        return None;
    }
    let (_, p) = read_name(msg, HEADER_LEN).ok()?;
    (p + 4 <= msg.len()).then_some(p + 4)
}

fn put_opt(out: &mut Vec<u8>) {
    out.push(0); // root
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OWN_EDNS_UDP_SIZE.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // extended rcode, version, flags, rdlen
}

/// Whether `answer` answers the query whose header ID on the wire was `id` and whose
/// question section is `question` (bytes `12..question_end` of the query): a response,
/// opcode QUERY, that ID, one question equal to ours ignoring case. Anything else is a
/// stray or spoofed datagram to be ignored.
pub fn answers_query(answer: &[u8], id: u16, question: &[u8]) -> bool {
    let Some(h) = Header::parse(answer) else {
        return false;
    };
    // The question is the first name in the message, so it cannot be compressed.
    h.id == id
        && h.is_response()
        && h.opcode() == 0
        && h.qdcount == 1
        && answer
            .get(HEADER_LEN..HEADER_LEN + question.len())
            .is_some_and(|q| q.eq_ignore_ascii_case(question))
}

/// Makes `answer` fit in `limit` bytes for a UDP client: unchanged if it fits, else its
/// header and question with TC set (RFC 1035 §4.2.1, RFC 2181 §9), so the client retries
/// over TCP; with an OPT record of the proxy's when the client sent one (`edns`, RFC 6891
/// §7). `question_end` is where the question ends in the answer.
pub fn truncate_for_udp(answer: &mut Vec<u8>, question_end: usize, limit: usize, edns: bool) {
    if answer.len() <= limit || question_end > answer.len() || question_end < HEADER_LEN {
        return;
    }
    answer.truncate(question_end);
    answer[2] |= (FLAG_TC >> 8) as u8;
    // No answer or authority record is left; the additional section is our OPT, if any.
    answer[6..HEADER_LEN].fill(0);
    if edns {
        answer[11] = 1;
        put_opt(answer);
    }
}

/// `(name, address, ttl)` for every A/AAAA record (class IN) in the answer section of a
/// NOERROR response, under its owner name and, when that differs, under the question's
/// name (the end of a CNAME chain belongs to the name that was asked for). Names are
/// lowercase text with a final dot. `Err` if the message cannot be read to its end.
pub fn addresses(answer: &[u8]) -> Result<Vec<(String, IpAddr, u32)>, WireError> {
    let h = Header::parse(answer).ok_or(WireError::Truncated)?;
    if h.qdcount != 1 {
        return Err(WireError::QuestionCount);
    }
    let (qname, p) = read_name(answer, HEADER_LEN)?;
    let mut p = p + 4;
    if p > answer.len() {
        return Err(WireError::Truncated);
    }
    let mut out = Vec::new();
    let useful = h.is_response() && h.rcode() == RCODE_NOERROR;
    let qtext = qname.to_text(true);
    let total = u32::from(h.ancount) + u32::from(h.nscount) + u32::from(h.arcount);
    for i in 0..total {
        let (owner, after) = read_name(answer, p)?;
        let (rtype, class, ttl, start, end) = skip_record_body(answer, after)?;
        p = end;
        if !useful || i >= u32::from(h.ancount) || class != CLASS_IN {
            continue;
        }
        let data = &answer[start..end];
        let ip = match (rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => continue,
        };
        let otext = if owner.eq_ignore_case(&qname) {
            qtext.clone()
        } else {
            out.push((qtext.clone(), ip, ttl));
            owner.to_text(true)
        };
        out.push((otext, ip, ttl));
    }
    if p != answer.len() {
        return Err(WireError::TrailingBytes);
    }
    Ok(out)
}

/// Writes a query for `name` (uncompressed wire form) — for tests and the fuzz target.
pub fn write_query(id: u16, flags: u16, question: &Question, edns: Option<Edns>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + question.name.wire().len() + 4 + 11);
    put_header(
        &mut out,
        &Header {
            id,
            flags,
            qdcount: 1,
            ancount: 0,
            nscount: 0,
            arcount: u16::from(edns.is_some()),
        },
    );
    out.extend_from_slice(question.name.wire());
    out.extend_from_slice(&question.qtype.to_be_bytes());
    out.extend_from_slice(&question.qclass.to_be_bytes());
    if let Some(e) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&e.udp_size.to_be_bytes());
        out.extend_from_slice(&[0, e.version, 0, 0, 0, 0]);
    }
    out
}

#[cfg(test)]
mod tests;
