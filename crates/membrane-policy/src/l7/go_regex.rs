//! Go RE2 regexes, as Cilium uses them for HTTP `path`, `method` and `host`.
//!
//! The agent validates these fields with Go's `regexp` and Envoy matches them with RE2 as a
//! *full* match (`SafeRegex`). The `regex` crate reads the same text differently in places:
//! its `\d \w \s \b` are Unicode and its `\s` has `\v`; `[a&&b]`, `[a~~b]` and a nested `[`
//! are set operations; `\<` and `\>` are word assertions, where Go reads any escaped ASCII
//! punctuation as itself; `\Q…\E` does not exist; repeat counts have no 1000 limit; `\p{…}`
//! names are looked up differently. So a pattern is never handed to the `regex` crate as it
//! is: it is parsed the way Go's `regexp/syntax` parses it under `syntax.Perl` flags, refused
//! with Go's error codes and wording, and rewritten into `regex` syntax that means the same,
//! anchored as `\A(?:…)\z`.
//!
//! Only whether the whole text matches is kept: captures, names and greediness cannot change
//! that, so groups are written non-capturing.
//!
//! Where this parser is deliberately not Go:
//! - `\p{…}` accepts what any recent Go accepts: Go ≤ 1.24 wants the exact table name
//!   (`Greek`, `Old_Italic`, `Lu`), Go ≥ 1.25 canonicalizes the name (`greek`, `Letter`) but
//!   then no longer finds scripts of several words. Both spellings are taken here. The
//!   tables themselves are the `regex` crate's, which may be a newer Unicode version.
//! - Go refuses a parse tree higher than 1000 or larger than ~3.3M instructions. Both are
//!   estimated on the same tree shape, without Go's alternation factoring.
//! - The translation must also stay within the `regex` crate's nest limit (its compiler
//!   recurses per level and would otherwise overflow a small thread stack) and within a
//!   compiled size limit (large Unicode classes repeated many times, such as `\pL{100}`, go
//!   past it). Going past either is reported as Go's "expression nests too deeply" or
//!   "expression too large", although Go itself would accept the pattern.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};

use regex::{Regex, RegexBuilder};

/// Largest count Go allows in `x{n,m}`, and largest product of nested counts.
const MAX_REPEAT: u64 = 1000;
/// Go's `maxSize`: 128 MiB of 40-byte instructions.
const MAX_SIZE: u64 = (128 << 20) / 40;
/// Go's `maxHeight`.
const MAX_HEIGHT: u32 = 1000;
/// Bounds the memory one policy regex may take once compiled; a path regex needs a few KiB,
/// so only pathological counted repeats of large Unicode classes come near it.
const COMPILED_SIZE_LIMIT: usize = 4 << 20;
/// The `regex` crate's default. Its compiler recurses per nesting level, and in a debug build
/// on a 2 MiB thread stack a few hundred levels already overflow, so this is not raised.
const NEST_LIMIT: u32 = 250;

/// A class that matches no character at all. Go can express one (a lone surrogate, `\P{Any}`),
/// the `regex` crate needs it spelled out.
const NEVER: &str = r"[^\x00-\x{10FFFF}]";
const ANY_CHAR: &str = r"[\x00-\x{10FFFF}]";
const MAX_RUNE: u32 = 0x10_FFFF;

/// A Go RE2 regex, compiled for whole-string matching.
#[derive(Debug, Clone)]
pub struct GoRegex {
    source: String,
    regex: Regex,
    /// How a full match is decided without the regex engine, for the common simple shapes.
    shortcut: Shortcut,
}

/// Most Cilium HTTP rules are a literal (`GET`, `/healthz`) or a literal prefix followed by
/// `.*` (`/public/.*`): decided by comparing strings, with the regex as the definition
/// (`shortcut_agrees_with_the_regex` checks they agree).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shortcut {
    None,
    /// The whole text equals this.
    Literal(String),
    /// The text starts with this, and the rest has no newline (`.` does not match it in RE2
    /// without the `s` flag).
    PrefixThenAny(String),
}

impl Shortcut {
    fn of(pattern: &str) -> Shortcut {
        // Characters that mean themselves in Go's syntax everywhere outside a class.
        let plain = |c: char| c.is_ascii_alphanumeric() || "/-_,:;@=&%~!'\"<> #`".contains(c);
        if pattern.chars().all(plain) {
            return Shortcut::Literal(pattern.to_owned());
        }
        match pattern.strip_suffix(".*") {
            Some(prefix) if prefix.chars().all(plain) => Shortcut::PrefixThenAny(prefix.to_owned()),
            _ => Shortcut::None,
        }
    }
}

impl GoRegex {
    /// Parses `pattern` as Go's `regexp.Compile` would, translates it to the `regex` crate and
    /// compiles it anchored as `\A(?:…)\z`.
    ///
    /// # Errors
    /// Whatever Go would refuse, worded as Go words it
    /// (``error parsing regexp: missing argument to repetition operator: `*` ``), plus
    /// translations too deep or too large for the `regex` crate (see the module docs).
    pub fn new(pattern: &str) -> Result<GoRegex, GoRegexError> {
        let body = Parser::new(pattern)
            .parse()
            .map_err(|e| e.into_error(pattern))?;
        let anchored = format!(r"\A(?:{body})\z");
        let regex = RegexBuilder::new(&anchored)
            .size_limit(COMPILED_SIZE_LIMIT)
            .nest_limit(NEST_LIMIT)
            .build()
            .map_err(|e| compile_error(&e).into_error(pattern))?;
        Ok(GoRegex {
            source: pattern.to_owned(),
            regex,
            shortcut: Shortcut::of(pattern),
        })
    }

    /// The original Go pattern.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `text` matches, as Envoy's RE2 `FullMatch` decides it.
    pub fn is_full_match(&self, text: &str) -> bool {
        match &self.shortcut {
            Shortcut::Literal(l) => text == l,
            Shortcut::PrefixThenAny(p) => text
                .strip_prefix(p.as_str())
                .is_some_and(|rest| !rest.contains('\n')),
            Shortcut::None => self.regex.is_match(text),
        }
    }

    /// The regex engine's answer, whatever the shortcut (for tests).
    #[cfg(test)]
    fn regex_full_match(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

impl PartialEq for GoRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for GoRegex {}

impl Hash for GoRegex {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.hash(state);
    }
}

/// Why a pattern is not a valid Go regex, in Go's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GoRegexError {
    message: String,
}

impl GoRegexError {
    /// The full message, e.g. ``error parsing regexp: invalid repeat count: `{1001}` ``.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Go's `syntax.ErrorCode`s that `syntax.Perl` parsing can produce for valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Internal,
    InvalidCharRange,
    InvalidEscape,
    InvalidNamedCapture,
    InvalidPerlOp,
    InvalidRepeatOp,
    InvalidRepeatSize,
    MissingBracket,
    MissingParen,
    MissingRepeatArgument,
    TrailingBackslash,
    UnexpectedParen,
    NestingDepth,
    Large,
}

impl Code {
    fn as_str(self) -> &'static str {
        match self {
            Code::Internal => "regexp/syntax: internal error",
            Code::InvalidCharRange => "invalid character class range",
            Code::InvalidEscape => "invalid escape sequence",
            Code::InvalidNamedCapture => "invalid named capture",
            Code::InvalidPerlOp => "invalid or unsupported Perl syntax",
            Code::InvalidRepeatOp => "invalid nested repetition operator",
            Code::InvalidRepeatSize => "invalid repeat count",
            Code::MissingBracket => "missing closing ]",
            Code::MissingParen => "missing closing )",
            Code::MissingRepeatArgument => "missing argument to repetition operator",
            Code::TrailingBackslash => "trailing backslash at end of expression",
            Code::UnexpectedParen => "unexpected )",
            Code::NestingDepth => "expression nests too deeply",
            Code::Large => "expression too large",
        }
    }
}

/// A parse error before it is worded. `expr: None` stands for the whole pattern, which Go
/// reports for the errors that concern the expression as a whole.
struct SyntaxError {
    code: Code,
    expr: Option<String>,
}

impl SyntaxError {
    fn at(code: Code, expr: &str) -> SyntaxError {
        SyntaxError {
            code,
            expr: Some(expr.to_owned()),
        }
    }

    fn whole(code: Code) -> SyntaxError {
        SyntaxError { code, expr: None }
    }

    fn into_error(self, pattern: &str) -> GoRegexError {
        let expr = self.expr.as_deref().unwrap_or(pattern);
        GoRegexError {
            message: format!("error parsing regexp: {}: `{expr}`", self.code.as_str()),
        }
    }
}

fn compile_error(err: &regex::Error) -> SyntaxError {
    match err {
        regex::Error::CompiledTooBig(_) => SyntaxError::whole(Code::Large),
        // The translation is well-formed by construction, so the only syntax error it can hit
        // is the nest limit; anything else would be a bug here and is reported as Go reports
        // its own bugs rather than blamed on the pattern.
        regex::Error::Syntax(msg) if msg.contains("nest") => SyntaxError::whole(Code::NestingDepth),
        _ => SyntaxError::whole(Code::Internal),
    }
}

/// The Go parser flags that change what later syntax means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    fold_case: bool,
    /// `(?m)`: Go's `OneLine` cleared.
    multi_line: bool,
    /// `(?s)`
    dot_nl: bool,
    /// `(?U)`
    non_greedy: bool,
}

/// How a piece of translated text combines with its neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A repetition operator may follow directly (`a`, `[…]`, `(?:…)`).
    Atom,
    /// Safe to concatenate but must be grouped before a repetition (`ab`, `a*`, `^`).
    Seq,
    /// A top-level alternation: must be grouped before anything is appended.
    Alt,
}

/// One entry of Go's parse stack. Besides the translated text it keeps what Go's limits
/// are computed from, so that the same patterns are refused.
#[derive(Debug)]
struct Node {
    op: Op,
    text: String,
    shape: Shape,
    /// Go's `calcSize`.
    size: u64,
    /// Go's `calcHeight`.
    height: u32,
    /// The smallest `n` for which Go's `repeatIsValid(node, n)` holds.
    need: u64,
}

#[derive(Debug)]
enum Op {
    /// Kept as runes rather than text so that neighbouring literals merge as in Go, which
    /// decides what a following `*` applies to and how large the tree is.
    Literal {
        runes: Vec<u32>,
        fold_case: bool,
    },
    /// Classes, `.`, assertions and the empty match.
    Leaf,
    Capture,
    Repetition,
    Concat,
    Alternate,
    LeftParen {
        saved: Flags,
        capture: bool,
    },
    VerticalBar,
}

impl Node {
    fn leaf(text: impl Into<String>, shape: Shape) -> Node {
        Node {
            op: Op::Leaf,
            text: text.into(),
            shape,
            size: 1,
            height: 1,
            need: 0,
        }
    }

    fn pseudo(op: Op) -> Node {
        Node {
            op,
            text: String::new(),
            shape: Shape::Atom,
            size: 1,
            height: 1,
            need: 0,
        }
    }

    fn literal(rune: u32, fold_case: bool) -> Node {
        Node {
            op: Op::Literal {
                runes: vec![rune],
                fold_case,
            },
            text: String::new(),
            shape: Shape::Atom,
            size: 1,
            height: 1,
            need: 0,
        }
    }

    fn is_pseudo(&self) -> bool {
        matches!(self.op, Op::LeftParen { .. } | Op::VerticalBar)
    }

    fn rendered(&self) -> (Cow<'_, str>, Shape) {
        match &self.op {
            Op::Literal { runes, fold_case } => {
                let mut body = String::new();
                for &r in runes {
                    push_rune(&mut body, r);
                }
                if *fold_case {
                    (Cow::Owned(format!("(?i:{body})")), Shape::Atom)
                } else if runes.len() == 1 {
                    (Cow::Owned(body), Shape::Atom)
                } else {
                    (Cow::Owned(body), Shape::Seq)
                }
            }
            _ => (Cow::Borrowed(&self.text), self.shape),
        }
    }
}

/// The repetition operators, with Go's `-1` for "no upper bound".
#[derive(Debug, Clone, Copy)]
enum Rep {
    Star,
    Plus,
    Quest,
    Counted { min: i64, max: i64 },
}

/// Go's `regexp/syntax` parser, writing `regex` crate syntax as it goes.
struct Parser<'a> {
    src: &'a str,
    flags: Flags,
    stack: Vec<Node>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Parser<'a> {
        Parser {
            src,
            flags: Flags::default(),
            stack: Vec::new(),
        }
    }

    fn byte(&self, i: usize) -> Option<u8> {
        self.src.as_bytes().get(i).copied()
    }

    /// Slicing that cannot panic: offsets all come from this parser, and a mistake should
    /// cost an error message its precision, not the process.
    fn slice(&self, from: usize, to: usize) -> &'a str {
        self.src.get(from..to).unwrap_or("")
    }

    fn parse(mut self) -> Result<String, SyntaxError> {
        let len = self.src.len();
        let mut pos = 0;
        // Where the previous loop iteration's repetition operator started, if it was one:
        // Go refuses stacked operators such as `a**`.
        let mut last_repeat: Option<usize> = None;
        while pos < len {
            let mut repeat = None;
            match self.byte(pos) {
                Some(b'(') => {
                    if self.byte(pos + 1) == Some(b'?') {
                        pos = self.parse_perl_flags(pos)?;
                    } else {
                        self.push(Node::pseudo(Op::LeftParen {
                            saved: self.flags,
                            capture: true,
                        }))?;
                        pos += 1;
                    }
                }
                Some(b'|') => {
                    self.parse_vertical_bar()?;
                    pos += 1;
                }
                Some(b')') => {
                    self.parse_right_paren()?;
                    pos += 1;
                }
                Some(b'^') => {
                    let text = if self.flags.multi_line { "(?m:^)" } else { "^" };
                    self.push(Node::leaf(text, Shape::Seq))?;
                    pos += 1;
                }
                Some(b'$') => {
                    let text = if self.flags.multi_line { "(?m:$)" } else { "$" };
                    self.push(Node::leaf(text, Shape::Seq))?;
                    pos += 1;
                }
                Some(b'.') => {
                    let text = if self.flags.dot_nl { "(?s:.)" } else { "." };
                    self.push(Node::leaf(text, Shape::Atom))?;
                    pos += 1;
                }
                Some(b'[') => pos = self.parse_class(pos)?,
                Some(op @ (b'*' | b'+' | b'?')) => {
                    let rep = match op {
                        b'*' => Rep::Star,
                        b'+' => Rep::Plus,
                        _ => Rep::Quest,
                    };
                    repeat = Some(pos);
                    pos = self.repeat(rep, pos, pos + 1, last_repeat)?;
                }
                Some(b'{') => match parse_repeat(self.src, pos) {
                    None => {
                        // Not of the form {n}, {n,} or {n,m}: Go reads a literal brace.
                        self.literal(u32::from('{'))?;
                        pos += 1;
                    }
                    Some((min, max, after)) => {
                        if min < 0
                            || min > MAX_REPEAT as i64
                            || max > MAX_REPEAT as i64
                            || (max >= 0 && min > max)
                        {
                            return Err(SyntaxError::at(
                                Code::InvalidRepeatSize,
                                self.slice(pos, after),
                            ));
                        }
                        repeat = Some(pos);
                        pos = self.repeat(Rep::Counted { min, max }, pos, after, last_repeat)?;
                    }
                },
                Some(b'\\') => pos = self.parse_backslash(pos)?,
                _ => {
                    let (r, next) = next_rune(self.src, pos);
                    self.literal(r)?;
                    pos = next;
                }
            }
            last_repeat = repeat;
        }

        self.concat()?;
        if self.swap_vertical_bar() {
            self.stack.pop();
        }
        self.alternate()?;
        if self.stack.len() != 1 {
            return Err(SyntaxError::whole(Code::MissingParen));
        }
        match self.stack.pop() {
            Some(root) => Ok(root.rendered().0.into_owned()),
            None => Err(SyntaxError::whole(Code::Internal)),
        }
    }

    fn check_limits(&self, node: &Node) -> Result<(), SyntaxError> {
        if node.size > MAX_SIZE {
            return Err(SyntaxError::whole(Code::Large));
        }
        if node.height > MAX_HEIGHT {
            return Err(SyntaxError::whole(Code::NestingDepth));
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), SyntaxError> {
        self.maybe_concat();
        self.check_limits(&node)?;
        self.stack.push(node);
        Ok(())
    }

    fn literal(&mut self, rune: u32) -> Result<(), SyntaxError> {
        self.push(Node::literal(rune, self.flags.fold_case))
    }

    /// Go's `maybeConcat`: merges the top two literals, leaving the newest rune on its own
    /// until something else is pushed, so that `ab*` repeats only `b`.
    fn maybe_concat(&mut self) {
        let n = self.stack.len();
        if n < 2 {
            return;
        }
        let same_fold = match (&self.stack[n - 2].op, &self.stack[n - 1].op) {
            (Op::Literal { fold_case: a, .. }, Op::Literal { fold_case: b, .. }) => a == b,
            _ => false,
        };
        if !same_fold {
            return;
        }
        let Some(top) = self.stack.pop() else {
            return;
        };
        let (Op::Literal { runes: add, .. }, Some(below)) = (top.op, self.stack.last_mut()) else {
            return;
        };
        if let Op::Literal { runes, .. } = &mut below.op {
            runes.extend(add);
            below.size = runes.len() as u64;
        }
    }

    /// Start of the pieces above the topmost `(` or `|`.
    fn pieces_start(&self) -> usize {
        self.stack
            .iter()
            .rposition(Node::is_pseudo)
            .map_or(0, |i| i + 1)
    }

    fn concat(&mut self) -> Result<(), SyntaxError> {
        self.maybe_concat();
        let subs = self.stack.split_off(self.pieces_start());
        let node = if subs.is_empty() {
            Node::leaf("", Shape::Seq)
        } else {
            collapse(subs, false)
        };
        self.push(node)
    }

    fn alternate(&mut self) -> Result<(), SyntaxError> {
        let subs = self.stack.split_off(self.pieces_start());
        let node = if subs.is_empty() {
            Node::leaf(NEVER, Shape::Atom)
        } else {
            collapse(subs, true)
        };
        self.push(node)
    }

    /// Go keeps finished alternatives below a single `|` marker; this moves the one just
    /// finished below it.
    fn swap_vertical_bar(&mut self) -> bool {
        let n = self.stack.len();
        if n >= 2 && matches!(self.stack[n - 2].op, Op::VerticalBar) {
            self.stack.swap(n - 2, n - 1);
            return true;
        }
        false
    }

    fn parse_vertical_bar(&mut self) -> Result<(), SyntaxError> {
        self.concat()?;
        if !self.swap_vertical_bar() {
            self.push(Node::pseudo(Op::VerticalBar))?;
        }
        Ok(())
    }

    fn parse_right_paren(&mut self) -> Result<(), SyntaxError> {
        self.concat()?;
        if self.swap_vertical_bar() {
            self.stack.pop();
        }
        self.alternate()?;
        if self.stack.len() < 2 {
            return Err(SyntaxError::whole(Code::UnexpectedParen));
        }
        let (Some(mut inner), Some(paren)) = (self.stack.pop(), self.stack.pop()) else {
            return Err(SyntaxError::whole(Code::UnexpectedParen));
        };
        let Op::LeftParen { saved, capture } = paren.op else {
            return Err(SyntaxError::whole(Code::UnexpectedParen));
        };
        // Flags set inside a group end with it.
        self.flags = saved;
        if !capture {
            return self.push(inner);
        }
        // Move rather than copy the text: groups nest, and copying at every level would
        // make deep patterns quadratic.
        let (text, shape) = match inner.op {
            Op::Literal { .. } => {
                let (text, shape) = inner.rendered();
                (text.into_owned(), shape)
            }
            _ => (std::mem::take(&mut inner.text), inner.shape),
        };
        let node = Node {
            text,
            shape,
            size: inner.size.saturating_add(2),
            height: inner.height.saturating_add(1),
            need: inner.need,
            op: Op::Capture,
        };
        self.push(node)
    }

    /// Go's `repeat`: `before` is where the operator starts, `after` where it ends (before
    /// an optional `?`). Returns where parsing continues.
    fn repeat(
        &mut self,
        rep: Rep,
        before: usize,
        after: usize,
        last_repeat: Option<usize>,
    ) -> Result<usize, SyntaxError> {
        let mut after = after;
        let mut non_greedy = self.flags.non_greedy;
        if self.byte(after) == Some(b'?') {
            after += 1;
            non_greedy = !non_greedy;
        }
        if let Some(last) = last_repeat {
            return Err(SyntaxError::at(
                Code::InvalidRepeatOp,
                self.slice(last, after),
            ));
        }
        if self.stack.last().is_none_or(Node::is_pseudo) {
            return Err(SyntaxError::at(
                Code::MissingRepeatArgument,
                self.slice(before, after),
            ));
        }
        let Some(sub) = self.stack.pop() else {
            return Err(SyntaxError::whole(Code::Internal));
        };

        let (sub_text, sub_shape) = sub.rendered();
        let mut text = if sub_shape == Shape::Atom {
            sub_text.into_owned()
        } else {
            format!("(?:{sub_text})")
        };
        let (size, need) = match rep {
            Rep::Star => {
                text.push('*');
                (sub.size.saturating_add(2), sub.need)
            }
            Rep::Plus => {
                text.push('+');
                (sub.size.saturating_add(1), sub.need)
            }
            Rep::Quest => {
                text.push('?');
                (sub.size.saturating_add(1), sub.need)
            }
            Rep::Counted { min, max } => {
                let (umin, umax) = (min.max(0) as u64, max.max(0) as u64);
                let _ = match max {
                    -1 => write!(text, "{{{umin},}}"),
                    _ if min == max => write!(text, "{{{umin}}}"),
                    _ => write!(text, "{{{umin},{umax}}}"),
                };
                let size = if max == -1 {
                    if min == 0 {
                        sub.size.saturating_add(2)
                    } else {
                        umin.saturating_mul(sub.size).saturating_add(1)
                    }
                } else {
                    umax.saturating_mul(sub.size)
                        .saturating_add(umax.saturating_sub(umin))
                };
                (size, repeat_need(min, max, sub.need))
            }
        };
        if non_greedy {
            text.push('?');
        }
        let node = Node {
            op: Op::Repetition,
            text,
            shape: Shape::Seq,
            size: size.max(1),
            height: sub.height.saturating_add(1),
            need,
        };
        self.check_limits(&node)?;
        // Go only walks the tree for counts of 2 or more, so `(a{1000}){1}` passes.
        let checks_budget = match rep {
            Rep::Counted { min, max } => min >= 2 || max >= 2,
            _ => false,
        };
        if checks_budget && node.need > MAX_REPEAT {
            return Err(SyntaxError::at(
                Code::InvalidRepeatSize,
                self.slice(before, after),
            ));
        }
        // Go replaces the top of the stack in place, without merging literals.
        self.stack.push(node);
        Ok(after)
    }

    /// `(?flags)`, `(?flags:`, `(?P<name>` and `(?<name>`; `pos` is at the `(`.
    fn parse_perl_flags(&mut self, pos: usize) -> Result<usize, SyntaxError> {
        let rest = self.slice(pos, self.src.len());
        let t = rest.as_bytes();
        let starts_with_p = t.len() > 4 && t[2] == b'P' && t[3] == b'<';
        let starts_with_name = t.len() > 3 && t[2] == b'<';
        if starts_with_p || starts_with_name {
            let name_start = if starts_with_name { 3 } else { 4 };
            let Some(end) = rest.find('>') else {
                return Err(SyntaxError::at(Code::InvalidNamedCapture, rest));
            };
            let capture = rest.get(..=end).unwrap_or(rest);
            let name = rest.get(name_start..end).unwrap_or("");
            let valid =
                !name.is_empty() && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
            if !valid {
                return Err(SyntaxError::at(Code::InvalidNamedCapture, capture));
            }
            // Names cannot change whether a text matches; Go even accepts duplicates.
            self.push(Node::pseudo(Op::LeftParen {
                saved: self.flags,
                capture: true,
            }))?;
            return Ok(pos + end + 1);
        }

        let mut flags = self.flags;
        let mut negate = false;
        let mut saw_flag = false;
        let mut i = pos + 2;
        while let Some(c) = self.src.get(i..).and_then(|s| s.chars().next()) {
            i += c.len_utf8();
            match c {
                'i' => flags.fold_case = !negate,
                'm' => flags.multi_line = !negate,
                's' => flags.dot_nl = !negate,
                'U' => flags.non_greedy = !negate,
                '-' if !negate => {
                    negate = true;
                    saw_flag = false;
                    continue;
                }
                // A `-` must be followed by at least one flag.
                ':' | ')' if !negate || saw_flag => {
                    if c == ':' {
                        self.push(Node::pseudo(Op::LeftParen {
                            saved: self.flags,
                            capture: false,
                        }))?;
                    }
                    self.flags = flags;
                    return Ok(i);
                }
                _ => break,
            }
            saw_flag = true;
        }
        Err(SyntaxError::at(Code::InvalidPerlOp, self.slice(pos, i)))
    }

    /// A backslash outside a class, tried in Go's order; `pos` is at the backslash.
    fn parse_backslash(&mut self, pos: usize) -> Result<usize, SyntaxError> {
        let leaf = match self.byte(pos + 1) {
            Some(b'A') => Some(r"\A"),
            // Go's word boundary is ASCII-only.
            Some(b'b') => Some(r"(?-u:\b)"),
            Some(b'B') => Some(r"(?-u:\B)"),
            Some(b'z') => Some(r"\z"),
            _ => None,
        };
        if let Some(text) = leaf {
            self.push(Node::leaf(text, Shape::Seq))?;
            return Ok(pos + 2);
        }
        match self.byte(pos + 1) {
            Some(b'C') => {
                return Err(SyntaxError::at(
                    Code::InvalidEscape,
                    self.slice(pos, pos + 2),
                ));
            }
            Some(b'Q') => {
                // Everything up to `\E`, or to the end, is literal.
                let rest = self.slice(pos + 2, self.src.len());
                let (lit, next) = match rest.find(r"\E") {
                    Some(i) => (rest.get(..i).unwrap_or(""), pos + 2 + i + 2),
                    None => (rest, self.src.len()),
                };
                for c in lit.chars() {
                    self.literal(u32::from(c))?;
                }
                return Ok(next);
            }
            Some(b'p' | b'P') => {
                if let Some((items, next)) = self.parse_unicode_class(pos)? {
                    self.push_class(&items, false)?;
                    return Ok(next);
                }
            }
            _ => {}
        }
        if let Some((items, next)) = self.parse_perl_class_escape(pos) {
            self.push_class(&items, false)?;
            return Ok(next);
        }
        let (r, next) = self.parse_escape(pos)?;
        self.literal(r)?;
        Ok(next)
    }

    fn push_class(&mut self, items: &[Item], negated: bool) -> Result<(), SyntaxError> {
        let text = render_class(items, negated, self.flags.fold_case);
        self.push(Node::leaf(text, Shape::Atom))
    }

    /// Go's `parseEscape` for a single-rune escape; `pos` is at the backslash.
    fn parse_escape(&self, pos: usize) -> Result<(u32, usize), SyntaxError> {
        let start = pos + 1;
        if start >= self.src.len() {
            return Err(SyntaxError::at(Code::TrailingBackslash, ""));
        }
        let invalid = |end: usize| SyntaxError::at(Code::InvalidEscape, self.slice(pos, end));
        let (c, mut t) = next_rune(self.src, start);
        let is_octal = |b: Option<u8>| matches!(b, Some(b'0'..=b'7'));
        match char::from_u32(c).unwrap_or('\u{FFFD}') {
            // A lone non-zero digit would be a backreference, which RE2 does not have.
            '1'..='7' if !is_octal(self.byte(t)) => Err(invalid(t)),
            d @ '0'..='7' => {
                let mut r = u32::from(d) - u32::from('0');
                for _ in 1..3 {
                    match self.byte(t) {
                        Some(b @ b'0'..=b'7') => {
                            r = r * 8 + u32::from(b - b'0');
                            t += 1;
                        }
                        _ => break,
                    }
                }
                Ok((r, t))
            }
            'x' => {
                if t >= self.src.len() {
                    return Err(invalid(t));
                }
                let (c, next) = next_rune(self.src, t);
                t = next;
                if c == u32::from('{') {
                    let mut digits = 0;
                    let mut r: u32 = 0;
                    loop {
                        if t >= self.src.len() {
                            return Err(invalid(t));
                        }
                        let (c, next) = next_rune(self.src, t);
                        t = next;
                        if c == u32::from('}') {
                            break;
                        }
                        let Some(v) = unhex(c) else {
                            return Err(invalid(t));
                        };
                        r = r * 16 + v;
                        if r > MAX_RUNE {
                            return Err(invalid(t));
                        }
                        digits += 1;
                    }
                    if digits == 0 {
                        return Err(invalid(t));
                    }
                    return Ok((r, t));
                }
                let x = unhex(c);
                let (c, next) = next_rune(self.src, t);
                t = next;
                match (x, unhex(c)) {
                    (Some(x), Some(y)) => Ok((x * 16 + y, t)),
                    _ => Err(invalid(t)),
                }
            }
            'a' => Ok((0x07, t)),
            'f' => Ok((0x0C, t)),
            'n' => Ok((0x0A, t)),
            'r' => Ok((0x0D, t)),
            't' => Ok((0x09, t)),
            'v' => Ok((0x0B, t)),
            // Escaped ASCII punctuation is itself, `\<` and `\_` included.
            p if p.is_ascii() && !p.is_ascii_alphanumeric() => Ok((c, t)),
            _ => Err(invalid(t)),
        }
    }

    /// `\d \D \s \S \w \W` at `pos`.
    fn parse_perl_class_escape(&self, pos: usize) -> Option<(Vec<Item>, usize)> {
        if self.byte(pos) != Some(b'\\') {
            return None;
        }
        let (ranges, negated): (&[(u32, u32)], bool) = match self.byte(pos + 1)? {
            b'd' => (PERL_DIGIT, false),
            b'D' => (PERL_DIGIT, true),
            b's' => (PERL_SPACE, false),
            b'S' => (PERL_SPACE, true),
            b'w' => (PERL_WORD, false),
            b'W' => (PERL_WORD, true),
            _ => return None,
        };
        Some((group_items(ranges, negated), pos + 2))
    }

    /// `\pL`, `\p{Name}`, `\P{…}`, `\p{^…}` at `pos`. `Ok(None)` when there is no `\p`.
    fn parse_unicode_class(&self, pos: usize) -> Result<Option<(Vec<Item>, usize)>, SyntaxError> {
        let mut positive = match (self.byte(pos), self.byte(pos + 1)) {
            (Some(b'\\'), Some(b'p')) => true,
            (Some(b'\\'), Some(b'P')) => false,
            _ => return Ok(None),
        };
        let (c, after_first) = next_rune(self.src, pos + 2);
        let (seq, name, next) = if c == u32::from('{') {
            let rest = self.slice(pos, self.src.len());
            let Some(end) = rest.find('}') else {
                return Err(SyntaxError::at(Code::InvalidCharRange, rest));
            };
            (
                rest.get(..=end).unwrap_or(rest),
                rest.get(3..end).unwrap_or(""),
                pos + end + 1,
            )
        } else {
            (
                self.slice(pos, after_first),
                self.slice(pos + 2, after_first),
                after_first,
            )
        };
        let name = match name.strip_prefix('^') {
            Some(stripped) => {
                positive = !positive;
                stripped
            }
            None => name,
        };
        let Some((set, table_positive)) = unicode_table(name) else {
            return Err(SyntaxError::at(Code::InvalidCharRange, seq));
        };
        Ok(Some((set.items(positive == table_positive), next)))
    }

    /// A bracketed class; `pos` is at the `[`.
    fn parse_class(&mut self, pos: usize) -> Result<usize, SyntaxError> {
        let whole_class = self.slice(pos, self.src.len());
        let mut t = pos + 1;
        let mut negated = false;
        if self.byte(t) == Some(b'^') {
            negated = true;
            t += 1;
        }
        let mut items = Vec::new();
        // `]` right after `[` or `[^` is a literal.
        let mut first = true;
        while self.byte(t) != Some(b']') || first {
            first = false;
            let named = if self.src.len().saturating_sub(t) > 2 && self.slice(t, t + 2) == "[:" {
                self.parse_named_class(t)?
            } else {
                None
            };
            if let Some((group, next)) = named {
                items.extend(group);
                t = next;
                continue;
            }
            if let Some((group, next)) = self.parse_unicode_class(t)? {
                items.extend(group);
                t = next;
                continue;
            }
            if let Some((group, next)) = self.parse_perl_class_escape(t) {
                items.extend(group);
                t = next;
                continue;
            }
            let range_start = t;
            let (lo, next) = self.parse_class_char(t, whole_class)?;
            t = next;
            let mut hi = lo;
            // `[a-]` is `a` and `-`.
            if self.src.len().saturating_sub(t) >= 2
                && self.byte(t) == Some(b'-')
                && self.byte(t + 1) != Some(b']')
            {
                let (h, next) = self.parse_class_char(t + 1, whole_class)?;
                t = next;
                hi = h;
                if hi < lo {
                    return Err(SyntaxError::at(
                        Code::InvalidCharRange,
                        self.slice(range_start, t),
                    ));
                }
            }
            items.push(Item::Range(lo, hi));
        }
        self.push_class(&items, negated)?;
        Ok(t + 1)
    }

    fn parse_class_char(&self, pos: usize, whole_class: &str) -> Result<(u32, usize), SyntaxError> {
        match self.byte(pos) {
            None => Err(SyntaxError::at(Code::MissingBracket, whole_class)),
            Some(b'\\') => self.parse_escape(pos),
            Some(_) => Ok(next_rune(self.src, pos)),
        }
    }

    /// `[:alpha:]` and `[:^alpha:]` at `pos`. Like Go, the name runs to the next `:]`
    /// wherever that is, so `[[:a]b:]]` is an unknown class rather than three items.
    fn parse_named_class(&self, pos: usize) -> Result<Option<(Vec<Item>, usize)>, SyntaxError> {
        let rest = self.slice(pos, self.src.len());
        let Some(i) = rest.get(2..).and_then(|r| r.find(":]")) else {
            return Ok(None);
        };
        let end = i + 4;
        let name = rest.get(..end).unwrap_or(rest);
        let inner = name.get(2..name.len().saturating_sub(2)).unwrap_or("");
        let (inner, negated) = match inner.strip_prefix('^') {
            Some(n) => (n, true),
            None => (inner, false),
        };
        let Some(&(_, ranges)) = POSIX_GROUPS.iter().find(|(n, _)| *n == inner) else {
            return Err(SyntaxError::at(Code::InvalidCharRange, name));
        };
        Ok(Some((group_items(ranges, negated), pos + end)))
    }
}

/// Go's `parseRepeat`: `{n}`, `{n,}` or `{n,m}` at `pos`, as (min, max, end) with max `-1`
/// for "unbounded" and min `-1` for a number too large to read. `None` when the text is not
/// of that form, which Go then reads as a literal `{`.
fn parse_repeat(src: &str, pos: usize) -> Option<(i64, i64, usize)> {
    let b = src.as_bytes();
    if b.get(pos) != Some(&b'{') {
        return None;
    }
    let (mut min, mut t) = parse_int(b, pos + 1)?;
    let max;
    match b.get(t)? {
        b',' => {
            t += 1;
            if *b.get(t)? == b'}' {
                max = -1;
            } else {
                let (m, next) = parse_int(b, t)?;
                t = next;
                max = m;
                if m < 0 {
                    min = -1;
                }
            }
        }
        _ => max = min,
    }
    if b.get(t) != Some(&b'}') {
        return None;
    }
    Some((min, max, t + 1))
}

/// Go's `parseInt`: decimal without leading zeros; `-1` once the value passes 10^8.
fn parse_int(b: &[u8], pos: usize) -> Option<(i64, usize)> {
    if !b.get(pos)?.is_ascii_digit() {
        return None;
    }
    if b[pos] == b'0' && b.get(pos + 1).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let mut t = pos;
    let mut n: i64 = 0;
    while let Some(d) = b.get(t).filter(|d| d.is_ascii_digit()) {
        if n >= 0 {
            n = if n >= 100_000_000 {
                -1
            } else {
                n * 10 + i64::from(d - b'0')
            };
        }
        t += 1;
    }
    Some((n, t))
}

/// Go's `repeatIsValid` as a number: the smallest budget a counted repetition needs.
fn repeat_need(min: i64, max: i64, sub_need: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    let m = if max < 0 { min } else { max }.max(0) as u64;
    if m == 0 {
        sub_need
    } else {
        m.max(m.saturating_mul(sub_need))
    }
}

/// Go's `collapse`: one node for a concatenation or alternation of `subs`.
fn collapse(subs: Vec<Node>, alternate: bool) -> Node {
    if subs.len() == 1 {
        if let Some(only) = subs.into_iter().next() {
            return only;
        }
        return Node::leaf("", Shape::Seq);
    }
    let mut text = String::new();
    let mut size: u64 = 0;
    let mut height: u32 = 1;
    let mut need: u64 = 0;
    for (i, sub) in subs.iter().enumerate() {
        let (t, shape) = sub.rendered();
        if alternate {
            if i > 0 {
                text.push('|');
            }
            text.push_str(&t);
        } else if shape == Shape::Alt {
            let _ = write!(text, "(?:{t})");
        } else {
            text.push_str(&t);
        }
        size = size.saturating_add(sub.size);
        // Go flattens a concatenation of concatenations (and alternations likewise).
        let flattened = matches!(
            (&sub.op, alternate),
            (Op::Concat, false) | (Op::Alternate, true)
        );
        let h = if flattened {
            sub.height
        } else {
            sub.height.saturating_add(1)
        };
        height = height.max(h);
        need = need.max(sub.need);
    }
    if alternate {
        size = size.saturating_add(subs.len() as u64 - 1);
    }
    Node {
        op: if alternate { Op::Alternate } else { Op::Concat },
        text,
        shape: if alternate { Shape::Alt } else { Shape::Seq },
        size: size.max(1),
        height,
        need,
    }
}

/// Go's `nextRune`, which yields U+FFFD without consuming anything at the end of the text.
fn next_rune(src: &str, pos: usize) -> (u32, usize) {
    match src.get(pos..).and_then(|s| s.chars().next()) {
        Some(c) => (u32::from(c), pos + c.len_utf8()),
        None => (0xFFFD, pos),
    }
}

fn unhex(c: u32) -> Option<u32> {
    char::from_u32(c)?.to_digit(16)
}

/// One member of a bracketed class in the translation.
#[derive(Debug, Clone)]
enum Item {
    Range(u32, u32),
    /// A complete class expression that may stand inside `[…]` (`\p{…}`, `[^0-9]`).
    Nested(String),
}

const PERL_DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
/// Go's `\s` has no `\v`, unlike the `regex` crate's and unlike `[[:space:]]`.
const PERL_SPACE: &[(u32, u32)] = &[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)];
const PERL_WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];

const POSIX_GROUPS: &[(&str, &[(u32, u32)])] = &[
    ("alnum", &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)]),
    ("alpha", &[(0x41, 0x5A), (0x61, 0x7A)]),
    ("ascii", &[(0x00, 0x7F)]),
    ("blank", &[(0x09, 0x09), (0x20, 0x20)]),
    ("cntrl", &[(0x00, 0x1F), (0x7F, 0x7F)]),
    ("digit", &[(0x30, 0x39)]),
    ("graph", &[(0x21, 0x7E)]),
    ("lower", &[(0x61, 0x7A)]),
    ("print", &[(0x20, 0x7E)]),
    (
        "punct",
        &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    ),
    ("space", &[(0x09, 0x0D), (0x20, 0x20)]),
    ("upper", &[(0x41, 0x5A)]),
    (
        "word",
        &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    ),
    ("xdigit", &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)]),
];

fn group_items(ranges: &[(u32, u32)], negated: bool) -> Vec<Item> {
    if negated {
        vec![Item::Nested(render_class(
            &ranges
                .iter()
                .map(|&(lo, hi)| Item::Range(lo, hi))
                .collect::<Vec<_>>(),
            true,
            false,
        ))]
    } else {
        ranges.iter().map(|&(lo, hi)| Item::Range(lo, hi)).collect()
    }
}

/// Writes a class. Case folding is left to the `regex` crate's `i` flag, which folds each
/// member before negating it, as Go does. Surrogates cannot occur in a `&str`, and the
/// `regex` crate cannot spell them, so ranges are clipped around them.
fn render_class(items: &[Item], negated: bool, fold_case: bool) -> String {
    let mut body = String::new();
    for item in items {
        match item {
            Item::Range(lo, hi) => {
                let (lo, hi) = (*lo, (*hi).min(MAX_RUNE));
                if lo < 0xD800 {
                    push_range(&mut body, lo, hi.min(0xD7FF));
                }
                if hi > 0xDFFF {
                    push_range(&mut body, lo.max(0xE000), hi);
                }
            }
            Item::Nested(text) => body.push_str(text),
        }
    }
    let class = match (body.is_empty(), negated) {
        (true, false) => NEVER.to_owned(),
        (true, true) => ANY_CHAR.to_owned(),
        (false, false) => format!("[{body}]"),
        (false, true) => format!("[^{body}]"),
    };
    if fold_case {
        format!("(?i:{class})")
    } else {
        class
    }
}

fn push_range(out: &mut String, lo: u32, hi: u32) {
    if lo > hi {
        return;
    }
    push_rune(out, lo);
    if hi > lo {
        out.push('-');
        push_rune(out, hi);
    }
}

/// Writes one rune so that it means itself both inside and outside a class.
fn push_rune(out: &mut String, r: u32) {
    let Some(c) = char::from_u32(r) else {
        // A surrogate: Go accepts `\x{D800}` but no UTF-8 text can contain it.
        out.push_str(NEVER);
        return;
    };
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else if r"\.+*?()|[]{}^$#&-~".contains(c) {
        out.push('\\');
        out.push(c);
    } else if c == ' ' || c.is_ascii_graphic() {
        out.push(c);
    } else {
        let _ = write!(out, "\\x{{{r:X}}}");
    }
}

/// A Unicode table Go can name in `\p{…}`, as the `regex` crate can express it.
#[derive(Debug, Clone, Copy)]
enum UnicodeSet {
    Any,
    Ascii,
    /// A general category the `regex` crate knows under the same abbreviation.
    Category(&'static str),
    /// Go's `C` is Cc, Cf, Co and Cs only: unassigned code points (Cn) are not in it, while
    /// they are in the `regex` crate's `\p{C}`.
    Other,
    /// `Cs`: no `&str` contains a surrogate, and the `regex` crate has no such table.
    Surrogate,
    Script(&'static str),
}

impl UnicodeSet {
    fn items(self, positive: bool) -> Vec<Item> {
        let p = if positive { 'p' } else { 'P' };
        match (self, positive) {
            (UnicodeSet::Any, true) | (UnicodeSet::Surrogate, false) => {
                vec![Item::Range(0, MAX_RUNE)]
            }
            (UnicodeSet::Any, false) | (UnicodeSet::Surrogate, true) => Vec::new(),
            (UnicodeSet::Ascii, true) => vec![Item::Range(0, 0x7F)],
            (UnicodeSet::Ascii, false) => vec![Item::Range(0x80, MAX_RUNE)],
            (UnicodeSet::Category(gc), _) => vec![Item::Nested(format!(r"\{p}{{gc={gc}}}"))],
            (UnicodeSet::Script(sc), _) => vec![Item::Nested(format!(r"\{p}{{sc={sc}}}"))],
            (UnicodeSet::Other, _) => {
                let neg = if positive { "" } else { "^" };
                vec![Item::Nested(format!(
                    r"[{neg}\p{{gc=Cc}}\p{{gc=Cf}}\p{{gc=Co}}]"
                ))]
            }
        }
    }
}

/// Go's `unicode.Categories` keys.
const CATEGORIES: &[&str] = &[
    "C", "Cc", "Cf", "Cn", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn",
    "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc", "Sk", "Sm",
    "So", "Z", "Zl", "Zp", "Zs",
];

/// Go's `unicode.CategoryAliases`.
const CATEGORY_ALIASES: &[(&str, &str)] = &[
    ("Cased_Letter", "LC"),
    ("Close_Punctuation", "Pe"),
    ("Combining_Mark", "M"),
    ("Connector_Punctuation", "Pc"),
    ("Control", "Cc"),
    ("Currency_Symbol", "Sc"),
    ("Dash_Punctuation", "Pd"),
    ("Decimal_Number", "Nd"),
    ("Enclosing_Mark", "Me"),
    ("Final_Punctuation", "Pf"),
    ("Format", "Cf"),
    ("Initial_Punctuation", "Pi"),
    ("Letter", "L"),
    ("Letter_Number", "Nl"),
    ("Line_Separator", "Zl"),
    ("Lowercase_Letter", "Ll"),
    ("Mark", "M"),
    ("Math_Symbol", "Sm"),
    ("Modifier_Letter", "Lm"),
    ("Modifier_Symbol", "Sk"),
    ("Nonspacing_Mark", "Mn"),
    ("Number", "N"),
    ("Open_Punctuation", "Ps"),
    ("Other", "C"),
    ("Other_Letter", "Lo"),
    ("Other_Number", "No"),
    ("Other_Punctuation", "Po"),
    ("Other_Symbol", "So"),
    ("Paragraph_Separator", "Zp"),
    ("Private_Use", "Co"),
    ("Punctuation", "P"),
    ("Separator", "Z"),
    ("Space_Separator", "Zs"),
    ("Spacing_Mark", "Mc"),
    ("Surrogate", "Cs"),
    ("Symbol", "S"),
    ("Titlecase_Letter", "Lt"),
    ("Unassigned", "Cn"),
    ("Uppercase_Letter", "Lu"),
    ("cntrl", "Cc"),
    ("digit", "Nd"),
    ("punct", "P"),
];

/// Go's `unicode.Scripts` keys (Unicode 15.0).
const SCRIPTS: &[&str] = &[
    "Adlam",
    "Ahom",
    "Anatolian_Hieroglyphs",
    "Arabic",
    "Armenian",
    "Avestan",
    "Balinese",
    "Bamum",
    "Bassa_Vah",
    "Batak",
    "Bengali",
    "Bhaiksuki",
    "Bopomofo",
    "Brahmi",
    "Braille",
    "Buginese",
    "Buhid",
    "Canadian_Aboriginal",
    "Carian",
    "Caucasian_Albanian",
    "Chakma",
    "Cham",
    "Cherokee",
    "Chorasmian",
    "Common",
    "Coptic",
    "Cuneiform",
    "Cypriot",
    "Cypro_Minoan",
    "Cyrillic",
    "Deseret",
    "Devanagari",
    "Dives_Akuru",
    "Dogra",
    "Duployan",
    "Egyptian_Hieroglyphs",
    "Elbasan",
    "Elymaic",
    "Ethiopic",
    "Georgian",
    "Glagolitic",
    "Gothic",
    "Grantha",
    "Greek",
    "Gujarati",
    "Gunjala_Gondi",
    "Gurmukhi",
    "Han",
    "Hangul",
    "Hanifi_Rohingya",
    "Hanunoo",
    "Hatran",
    "Hebrew",
    "Hiragana",
    "Imperial_Aramaic",
    "Inherited",
    "Inscriptional_Pahlavi",
    "Inscriptional_Parthian",
    "Javanese",
    "Kaithi",
    "Kannada",
    "Katakana",
    "Kawi",
    "Kayah_Li",
    "Kharoshthi",
    "Khitan_Small_Script",
    "Khmer",
    "Khojki",
    "Khudawadi",
    "Lao",
    "Latin",
    "Lepcha",
    "Limbu",
    "Linear_A",
    "Linear_B",
    "Lisu",
    "Lycian",
    "Lydian",
    "Mahajani",
    "Makasar",
    "Malayalam",
    "Mandaic",
    "Manichaean",
    "Marchen",
    "Masaram_Gondi",
    "Medefaidrin",
    "Meetei_Mayek",
    "Mende_Kikakui",
    "Meroitic_Cursive",
    "Meroitic_Hieroglyphs",
    "Miao",
    "Modi",
    "Mongolian",
    "Mro",
    "Multani",
    "Myanmar",
    "Nabataean",
    "Nag_Mundari",
    "Nandinagari",
    "New_Tai_Lue",
    "Newa",
    "Nko",
    "Nushu",
    "Nyiakeng_Puachue_Hmong",
    "Ogham",
    "Ol_Chiki",
    "Old_Hungarian",
    "Old_Italic",
    "Old_North_Arabian",
    "Old_Permic",
    "Old_Persian",
    "Old_Sogdian",
    "Old_South_Arabian",
    "Old_Turkic",
    "Old_Uyghur",
    "Oriya",
    "Osage",
    "Osmanya",
    "Pahawh_Hmong",
    "Palmyrene",
    "Pau_Cin_Hau",
    "Phags_Pa",
    "Phoenician",
    "Psalter_Pahlavi",
    "Rejang",
    "Runic",
    "Samaritan",
    "Saurashtra",
    "Sharada",
    "Shavian",
    "Siddham",
    "SignWriting",
    "Sinhala",
    "Sogdian",
    "Sora_Sompeng",
    "Soyombo",
    "Sundanese",
    "Syloti_Nagri",
    "Syriac",
    "Tagalog",
    "Tagbanwa",
    "Tai_Le",
    "Tai_Tham",
    "Tai_Viet",
    "Takri",
    "Tamil",
    "Tangsa",
    "Tangut",
    "Telugu",
    "Thaana",
    "Thai",
    "Tibetan",
    "Tifinagh",
    "Tirhuta",
    "Toto",
    "Ugaritic",
    "Vai",
    "Vithkuqi",
    "Wancho",
    "Warang_Citi",
    "Yezidi",
    "Yi",
    "Zanabazar_Square",
];

/// Go's `canonicalName` (Go ≥ 1.25): separators dropped, first letter upper case, the rest
/// lower case.
fn canonical_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars().filter(|c| !matches!(c, '_' | '-' | ' ')) {
        if out.is_empty() {
            out.push(c.to_ascii_uppercase());
        } else {
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Go's `unicodeTable`: the set a `\p{name}` denotes and whether it is meant positively
/// (`Assigned` is "not Cn").
fn unicode_table(name: &str) -> Option<(UnicodeSet, bool)> {
    let category = |gc: &'static str| match gc {
        "C" => UnicodeSet::Other,
        "Cs" => UnicodeSet::Surrogate,
        _ => UnicodeSet::Category(gc),
    };
    // Go ≤ 1.24 looked names up exactly; they are all found by the canonical lookup below
    // except scripts of several words, which Go ≥ 1.25 no longer finds.
    if let Some(sc) = SCRIPTS.iter().find(|sc| **sc == name) {
        return Some((UnicodeSet::Script(sc), true));
    }
    let canonical = canonical_name(name);
    match canonical.as_str() {
        "Any" => return Some((UnicodeSet::Any, true)),
        "Assigned" => return Some((UnicodeSet::Category("Cn"), false)),
        "Ascii" => return Some((UnicodeSet::Ascii, true)),
        "Lc" => return Some((UnicodeSet::Category("LC"), true)),
        _ => {}
    }
    if let Some(gc) = CATEGORIES.iter().find(|gc| **gc == canonical) {
        return Some((category(gc), true));
    }
    if let Some(sc) = SCRIPTS.iter().find(|sc| canonical_name(sc) == canonical) {
        return Some((UnicodeSet::Script(sc), true));
    }
    CATEGORY_ALIASES
        .iter()
        .find(|(alias, _)| canonical_name(alias) == canonical)
        .map(|&(_, gc)| (category(gc), true))
}

#[cfg(test)]
mod shortcut_tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn simple_shapes_take_the_shortcut() {
        for (p, want) in [
            ("GET", Shortcut::Literal("GET".into())),
            ("/healthz", Shortcut::Literal("/healthz".into())),
            ("/public/.*", Shortcut::PrefixThenAny("/public/".into())),
            (".*", Shortcut::PrefixThenAny(String::new())),
            ("GET|POST", Shortcut::None),
            ("/a.b", Shortcut::None),
            ("/a.*/b", Shortcut::None),
            ("\\Q.*\\E", Shortcut::None),
            ("(?s).*", Shortcut::None),
            ("/x+.*", Shortcut::None),
            ("[.]*", Shortcut::None),
        ] {
            assert_eq!(Shortcut::of(p), want, "{p}");
        }
    }

    proptest! {
        /// The shortcut is an optimization, never a second meaning: for patterns built from
        /// plain characters and regex syntax, on texts with newlines and near-misses, it
        /// answers what the regex answers.
        #[test]
        fn shortcut_agrees_with_the_regex(
            pattern in "[a-c/.*|\\\\-]{0,6}",
            text in "[a-c/.\n-]{0,8}",
        ) {
            if let Ok(r) = GoRegex::new(&pattern) {
                prop_assert_eq!(r.is_full_match(&text), r.regex_full_match(&text), "{:?} {:?}", pattern, text);
                let prefixed = format!("{}{}", pattern.trim_end_matches(".*"), text);
                prop_assert_eq!(r.is_full_match(&prefixed), r.regex_full_match(&prefixed));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn re(pattern: &str) -> GoRegex {
        match GoRegex::new(pattern) {
            Ok(r) => r,
            Err(e) => panic!("{pattern:?} should compile: {e}"),
        }
    }

    fn err(pattern: &str) -> String {
        match GoRegex::new(pattern) {
            Ok(r) => panic!("{pattern:?} should be refused, got {:?}", r.regex.as_str()),
            Err(e) => e.message().to_owned(),
        }
    }

    fn full(pattern: &str, text: &str) -> bool {
        re(pattern).is_full_match(text)
    }

    // §7.5 item 69: a path is matched as a whole string.
    #[test]
    fn path_is_a_full_match() {
        assert!(full("/api", "/api"));
        assert!(!full("/api", "/api/users/1"));
        assert!(!full("/api", "/v1/api"));
        // :path includes the query string.
        assert!(!full("/api", "/api?x=1"));
        assert!(full(r"/api(\?.*)?", "/api?x=1"));
        assert!(full("/api.*", "/api?x=1"));
    }

    // §7.5 item 70.
    #[test]
    fn path_prefix_needs_explicit_wildcard() {
        assert!(full("/api/.*", "/api/users/1"));
        assert!(!full("/api/.*", "/api"));
        assert!(full("/api/.*", "/api/"));
    }

    // §7.5 item 71: methods are case-sensitive regexes.
    #[test]
    fn method_is_a_case_sensitive_regex() {
        assert!(full("GET", "GET"));
        assert!(!full("GET", "get"));
        assert!(full("GET|POST", "POST"));
        assert!(full("GET|POST", "GET"));
        assert!(!full("GET|POST", "PUT"));
        assert!(!full("GET|POST", "GETPOST"));
        assert!(full("GET|HEAD", "HEAD"));
    }

    #[test]
    fn dollar_anchor_is_redundant_but_valid() {
        assert!(full("/$", "/"));
        assert!(!full("/$", "/x"));
        assert!(full("/public$", "/public"));
        assert!(!full("/public$", "/public/x"));
        // `$` does not match before a final newline in Go (no `(?m)`).
        assert!(!full("/public$", "/public\n"));
        assert!(full("^/public", "/public"));
    }

    // §7.1 item 13: `*` alone is not a regex.
    #[test]
    fn lone_star_is_refused() {
        assert_eq!(
            err("*"),
            "error parsing regexp: missing argument to repetition operator: `*`"
        );
        assert_eq!(
            err("+abc"),
            "error parsing regexp: missing argument to repetition operator: `+`"
        );
        assert_eq!(
            err("a|*"),
            "error parsing regexp: missing argument to repetition operator: `*`"
        );
        assert_eq!(
            err("(*)"),
            "error parsing regexp: missing argument to repetition operator: `*`"
        );
        assert_eq!(
            err("(?i)*"),
            "error parsing regexp: missing argument to repetition operator: `*`"
        );
        assert_eq!(
            err("??"),
            "error parsing regexp: missing argument to repetition operator: `??`"
        );
    }

    // Anchoring by a find() span would get this wrong: leftmost-first finds `a`.
    #[test]
    fn alternation_is_anchored_as_a_whole() {
        assert!(full("a|ab", "ab"));
        assert!(full("a|ab", "a"));
        assert!(!full("a|ab", "abc"));
        assert!(full("(a|ab)(c|bcd)", "abcd"));
        assert!(!full("a|b", "ab"));
    }

    #[test]
    fn perl_classes_are_ascii() {
        assert!(full(r"\d+", "0123456789"));
        assert!(!full(r"\d", "٣")); // ARABIC-INDIC DIGIT THREE
        assert!(!full(r"\d", "３")); // FULLWIDTH DIGIT THREE
        assert!(full(r"\D", "٣"));
        assert!(!full(r"\w", "é"));
        assert!(full(r"\W", "é"));
        assert!(full(r"\w+", "az_AZ09"));
        assert!(full(r"\s", " "));
        assert!(full(r"\s", "\t"));
        assert!(!full(r"\s", "\u{0B}")); // Go's \s has no \v
        assert!(!full(r"\s", "\u{A0}"));
        assert!(full(r"\S", "\u{0B}"));
        assert!(full(r"[[:space:]]", "\u{0B}")); // but [:space:] has it
        assert!(full(r"[\d]", "7"));
        assert!(!full(r"[\d]", "٣"));
        assert!(full(r"[^\d]", "٣"));
        assert!(full(r"[\D]", "x"));
        assert!(!full(r"[\D]", "5"));
    }

    #[test]
    fn word_boundary_is_ascii() {
        assert!(full(r"a\b", "a"));
        assert!(full(r".*\bfoo\b.*", "x foo y"));
        // é is not a word character for Go, so there is a boundary between it and `a`.
        assert!(full(r"é\ba", "éa"));
        assert!(!full(r"a\Bé", "aé"));
        assert!(full(r"é\Bé", "éé"));
    }

    #[test]
    fn quoted_literals() {
        assert!(full(r"\Q/a.b*\E", "/a.b*"));
        assert!(!full(r"\Q/a.b*\E", "/aXb"));
        assert!(full(r"x\Q.*", "x.*")); // \Q without \E runs to the end
        assert!(full(r"\Q\E", ""));
        assert!(full(r"\Qab\E*", "abbb")); // the repeat applies to the last rune
        assert!(full(r"a\Q\E*", "aaa"));
        assert!(full(r"\Q[a&&b]\E", "[a&&b]"));
    }

    #[test]
    fn repeat_counts_over_1000_are_refused() {
        assert!(full("a{1000}", &"a".repeat(1000)));
        assert!(!full("a{1000}", &"a".repeat(999)));
        assert_eq!(
            err("a{1001}"),
            "error parsing regexp: invalid repeat count: `{1001}`"
        );
        assert_eq!(
            err("a{2,1001}"),
            "error parsing regexp: invalid repeat count: `{2,1001}`"
        );
        assert_eq!(
            err("a{1001,}"),
            "error parsing regexp: invalid repeat count: `{1001,}`"
        );
        assert_eq!(
            err("a{3,2}"),
            "error parsing regexp: invalid repeat count: `{3,2}`"
        );
        assert_eq!(
            err("a{99999999999}"),
            "error parsing regexp: invalid repeat count: `{99999999999}`"
        );
        // Nested counts multiply.
        assert_eq!(
            err("(a{100}){11}"),
            "error parsing regexp: invalid repeat count: `{11}`"
        );
        assert_eq!(
            err("((a{10}){10}){11}?"),
            "error parsing regexp: invalid repeat count: `{11}?`"
        );
        assert!(GoRegex::new("(a{100}){10}").is_ok());
        assert!(GoRegex::new("(a{1000}){1}").is_ok());
        assert!(GoRegex::new("(a{1000})*").is_ok());
        assert!(GoRegex::new("(a{1000}){0}").is_ok());
    }

    #[test]
    fn braces_that_are_not_counts_are_literal() {
        assert!(full("a{", "a{"));
        assert!(full("a{,5}", "a{,5}"));
        assert!(full("a{01}", "a{01}")); // no leading zeros
        assert!(full("a{1", "a{1"));
        assert!(full("a{1,2", "a{1,2"));
        assert!(full("{}", "{}"));
        assert!(full("x}", "x}"));
        assert!(full("a{2}", "aa"));
        assert!(full("a{2,}", "aaaa"));
        assert!(full("a{0}", ""));
        assert!(full("a{0}b", "b"));
    }

    #[test]
    fn stacked_repetitions_are_refused() {
        assert_eq!(
            err("a**"),
            "error parsing regexp: invalid nested repetition operator: `**`"
        );
        assert_eq!(
            err("a+*"),
            "error parsing regexp: invalid nested repetition operator: `+*`"
        );
        assert_eq!(
            err("a*??"),
            "error parsing regexp: invalid nested repetition operator: `*??`"
        );
        assert_eq!(
            err("a{2}{3}"),
            "error parsing regexp: invalid nested repetition operator: `{2}{3}`"
        );
        // Lazy operators are one operator.
        assert!(full("a*?", "aaa"));
        assert!(full("a+?b", "aab"));
        assert!(full("a{1,2}?", "aa"));
        // Anything in between resets Go's check; the repeat then repeats the repeat.
        assert!(full(r"a*(?i)*", "aaa"));
        assert!(full(r"a*\Q\E*", "aa"));
        assert!(full("(a*)*", "aaa"));
    }

    #[test]
    fn escapes() {
        assert!(full(r"\.", "."));
        assert!(!full(r"\.", "x"));
        assert!(full(r"\x41", "A"));
        assert!(full(r"\x{1F600}", "😀"));
        assert!(full(r"\101", "A"));
        assert!(full(r"\0", "\0"));
        assert!(full(r"\08", "\u{0}8"));
        assert!(full(r"\12", "\n"));
        assert!(full(r"\a\f\t\n\r\v", "\u{7}\u{C}\t\n\r\u{B}"));
        assert!(full(r"\_", "_"));
        // Go reads escaped ASCII punctuation as itself: `\<` is `<`, not a word start.
        assert!(full(r"\<a\>", "<a>"));
        assert!(!full(r"\<a\>", "a"));
        assert!(full(r"\/\-\~\&\#", "/-~&#"));
        assert_eq!(
            err(r"\8"),
            "error parsing regexp: invalid escape sequence: `\\8`"
        );
        assert_eq!(
            err(r"\1"),
            "error parsing regexp: invalid escape sequence: `\\1`"
        );
        assert_eq!(
            err(r"\Z"),
            "error parsing regexp: invalid escape sequence: `\\Z`"
        );
        assert_eq!(
            err(r"a\C"),
            "error parsing regexp: invalid escape sequence: `\\C`"
        );
        assert_eq!(
            err(r"\q"),
            "error parsing regexp: invalid escape sequence: `\\q`"
        );
        assert_eq!(
            err(r"\é"),
            "error parsing regexp: invalid escape sequence: `\\é`"
        );
        assert_eq!(
            err(r"\x"),
            "error parsing regexp: invalid escape sequence: `\\x`"
        );
        assert_eq!(
            err(r"\xZ1"),
            "error parsing regexp: invalid escape sequence: `\\xZ1`"
        );
        assert_eq!(
            err(r"\x{}"),
            "error parsing regexp: invalid escape sequence: `\\x{}`"
        );
        assert_eq!(
            err(r"\x{110000}"),
            "error parsing regexp: invalid escape sequence: `\\x{110000`"
        );
        assert_eq!(
            err(r"\x{41"),
            "error parsing regexp: invalid escape sequence: `\\x{41`"
        );
        assert_eq!(
            err("a\\"),
            "error parsing regexp: trailing backslash at end of expression: ``"
        );
        // \z exists in both, \A too; Go has no \Z.
        assert!(full(r"\Aab\z", "ab"));
    }

    #[test]
    fn surrogates_match_nothing() {
        assert!(!full(r"\x{D800}", "\u{FFFD}"));
        assert!(full(r"a|\x{D800}", "a"));
        assert!(full(r"[\x{D000}-\x{E000}]", "\u{D7FF}"));
        assert!(full(r"[\x{D000}-\x{E000}]", "\u{E000}"));
        assert!(full(r"[^\x{D800}-\x{DFFF}]", "x"));
    }

    #[test]
    fn character_classes() {
        assert!(full("[]a]", "]"));
        assert!(full("[^]a]", "b"));
        assert!(!full("[^]a]", "]"));
        assert!(full("[a-]", "-"));
        assert!(full("[-a]", "-"));
        assert!(full(r"[\w-]", "-"));
        assert!(full(r"[\d-z]", "-"));
        // Go has no set operations or nested classes.
        assert!(full("[a&&b]", "&"));
        assert_eq!(
            err("[a--b]"),
            "error parsing regexp: invalid character class range: `a--`"
        );
        assert!(full("[--/]", "."));
        assert!(full("[a~~b]", "~"));
        assert!(full("[[a]", "["));
        assert!(full("[[a]]", "a]"));
        assert!(full("[[:alpha:]]", "Q"));
        assert!(!full("[[:alpha:]]", "é"));
        assert!(full("[[:^digit:]x]", "x"));
        assert!(!full("[[:^digit:]x]", "5"));
        assert!(full("[[:^digit:]x]", "é"));
        assert!(full("[^a]", "\n"));
        assert!(!full(".", "\n"));
        assert!(full("(?s).", "\n"));
        assert_eq!(
            err("[[:foo:]]"),
            "error parsing regexp: invalid character class range: `[:foo:]`"
        );
        assert_eq!(
            err("[[:a]b:]]"),
            "error parsing regexp: invalid character class range: `[:a]b:]`"
        );
        assert_eq!(err("[a"), "error parsing regexp: missing closing ]: `[a`");
        assert_eq!(err("x[]"), "error parsing regexp: missing closing ]: `[]`");
        assert_eq!(err("[^"), "error parsing regexp: missing closing ]: `[^`");
        assert_eq!(
            err("[z-a]"),
            "error parsing regexp: invalid character class range: `z-a`"
        );
        assert_eq!(
            err(r"[a-\d]"),
            "error parsing regexp: invalid escape sequence: `\\d`"
        );
        assert_eq!(
            err(r"[\b]"),
            "error parsing regexp: invalid escape sequence: `\\b`"
        );
    }

    #[test]
    fn unicode_classes() {
        assert!(full(r"\pL+", "héllo"));
        assert!(full(r"\p{Greek}", "λ"));
        assert!(!full(r"\p{Greek}", "l"));
        assert!(full(r"\P{Greek}", "l"));
        assert!(full(r"\p{^Greek}", "l"));
        assert!(!full(r"\P{^Greek}", "l"));
        assert!(full(r"[\p{Lu}]", "É"));
        assert!(full(r"\p{Any}", "\n"));
        assert!(!full(r"\P{Any}", "a"));
        assert!(full(r"\p{Letter}", "a")); // Go ≥ 1.25
        assert!(full(r"\p{greek}", "λ")); // Go ≥ 1.25
        assert!(full(r"\p{Old_Italic}", "\u{10300}")); // Go ≤ 1.24
        assert!(full(r"\p{Cc}", "\u{1}"));
        assert!(!full(r"\pC", "\u{378}")); // unassigned is not Go's C
        assert!(full(r"\p{Cn}", "\u{378}"));
        assert!(!full(r"\p{Assigned}", "\u{378}"));
        assert!(full(r"\p{Assigned}", "a"));
        assert!(!full(r"\p{Cs}", "\u{FFFD}"));
        assert!(full(r"\P{Cs}", "a"));
        assert!(full(r"\p{ASCII}", "~"));
        assert_eq!(
            err(r"\p{Foo}"),
            "error parsing regexp: invalid character class range: `\\p{Foo}`"
        );
        assert_eq!(
            err(r"\pq"),
            "error parsing regexp: invalid character class range: `\\pq`"
        );
        assert_eq!(
            err(r"\p"),
            "error parsing regexp: invalid character class range: `\\p`"
        );
        assert_eq!(
            err(r"\p{L"),
            "error parsing regexp: invalid character class range: `\\p{L`"
        );
        assert_eq!(
            err(r"\p{Script=Greek}"),
            "error parsing regexp: invalid character class range: `\\p{Script=Greek}`"
        );
    }

    #[test]
    fn every_unicode_table_name_compiles() {
        let names = CATEGORIES
            .iter()
            .chain(SCRIPTS)
            .chain(CATEGORY_ALIASES.iter().map(|(a, _)| a))
            .chain(&["Any", "Assigned", "ASCII", "LC"]);
        for name in names {
            for form in [r"\p{N}", r"\P{N}", r"[\p{N}x]", r"(?i)[^\P{N}]"] {
                let pattern = form.replace('N', name);
                assert!(GoRegex::new(&pattern).is_ok(), "{pattern}");
            }
        }
    }

    #[test]
    fn flags() {
        assert!(full("(?i)get", "GET"));
        assert!(full("(?i:g)ET", "gET"));
        assert!(!full("(?i:g)ET", "get"));
        assert!(full("a(?i)b|c", "C")); // flags carry across `|` up to the group's end
        assert!(!full("(a(?i)b)c", "aBC"));
        assert!(full("(a(?i)b)c", "aBc"));
        assert!(full("(?i)k", "\u{212A}")); // KELVIN SIGN folds to k, as in Go
        assert!(full(r"(?i)\w", "\u{17F}")); // so does ſ for \w
        assert!(!full(r"(?i)\W", "\u{17F}"));
        assert!(full(r"(?i)[^\P{Lu}]", "a"));
        assert!(full("(?i-i)a", "a"));
        assert!(!full("(?i-i)a", "A"));
        assert!(full("(?ii)a", "A"));
        assert!(full("(?)a", "a"));
        assert!(full("(?m)^b$", "b"));
        assert!(full("(?m)a$\n^b", "a\nb"));
        assert!(!full("a$\n^b", "a\nb"));
        assert!(full("(?s:.)", "\n"));
        assert!(full("(?U)a+", "aaa"));
        assert!(full("(?U)a+?", "aaa"));
        assert_eq!(
            err("(?x)a"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?x`"
        );
        assert_eq!(
            err("(?i-)a"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?i-)`"
        );
        assert_eq!(
            err("(?-:a)"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?-:`"
        );
        assert_eq!(
            err("(?i--m)a"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?i--`"
        );
        assert_eq!(
            err("(?=a)"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"
        );
        assert_eq!(
            err("(?!a)"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?!`"
        );
        assert_eq!(
            err("(?#c)"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?#`"
        );
        assert_eq!(
            err("(?"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?`"
        );
        assert_eq!(
            err("(?P=n)"),
            "error parsing regexp: invalid or unsupported Perl syntax: `(?P`"
        );
    }

    #[test]
    fn groups() {
        assert!(full("(?P<name>a)b", "ab"));
        assert!(full("(?<name>a)b", "ab"));
        assert!(full("(?<1n>a)", "a")); // Go allows a leading digit, Rust does not
        assert!(full("(?P<x>a)(?P<x>b)", "ab")); // Go allows duplicates
        assert!(full("()", ""));
        assert!(full("(|a)", ""));
        assert!(full("a|", ""));
        assert!(full("|", ""));
        assert!(full("(?:)*", ""));
        assert!(full("(a|b)+c", "abbac"));
        assert!(full("^*a", "a"));
        assert!(full(r"\b+a", "a"));
        assert_eq!(
            err("(?P<n>"),
            "error parsing regexp: missing closing ): `(?P<n>`"
        );
        assert_eq!(
            err("(?P<n!>a)"),
            "error parsing regexp: invalid named capture: `(?P<n!>`"
        );
        assert_eq!(
            err("(?<>a)"),
            "error parsing regexp: invalid named capture: `(?<>`"
        );
        assert_eq!(
            err("(?P<name"),
            "error parsing regexp: invalid named capture: `(?P<name`"
        );
        assert_eq!(
            err("(?<=a)b"),
            "error parsing regexp: invalid named capture: `(?<=a)b`"
        );
        assert_eq!(err("(a"), "error parsing regexp: missing closing ): `(a`");
        assert_eq!(err("a)"), "error parsing regexp: unexpected ): `a)`");
        assert_eq!(err("(a))b"), "error parsing regexp: unexpected ): `(a))b`");
    }

    #[test]
    fn host_with_port() {
        let host = re(r"api\.example\.com(:[0-9]+)?");
        assert!(host.is_full_match("api.example.com"));
        assert!(host.is_full_match("api.example.com:8080"));
        assert!(!host.is_full_match("apiXexample.com"));
        assert!(!host.is_full_match("evil.api.example.com"));
    }

    #[test]
    fn limits() {
        // Go's own height limit.
        let deep = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
        assert_eq!(
            err(&deep),
            format!("error parsing regexp: expression nests too deeply: `{deep}`")
        );
        let fine = format!("{}a{}", "(".repeat(900), ")".repeat(900));
        assert!(full(&fine, "a"));
        // The regex crate's nest limit, reached long before Go's.
        let stars = format!("{}a{}", "(?:".repeat(150), ")*".repeat(150));
        assert_eq!(
            err(&stars),
            format!("error parsing regexp: expression nests too deeply: `{stars}`")
        );
        // Non-capturing groups make no tree nodes, so they nest freely.
        let flat = format!("{}a{}", "(?:".repeat(5000), ")".repeat(5000));
        assert!(full(&flat, "a"));
        let large = r"((((((((((\pL{1000}){1}){1}){1}){1}){1}){1}){1}){1}){1}){1}";
        assert!(err(large).contains("expression too large"));
        assert!(GoRegex::new(".{1000}").is_ok());
        assert!(GoRegex::new(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63}){0,10}").is_ok());
    }

    // Hashing and equality only read the source text, never the regex's inner caches.
    #[allow(clippy::mutable_key_type)]
    #[test]
    fn equality_is_by_source() {
        use std::collections::HashSet;
        let a = re("a|b");
        let b = re("a|b");
        let c = re("b|a");
        assert_eq!(a, b);
        assert_ne!(a, c);
        let set: HashSet<GoRegex> = [a, b, c].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(re("x.*").as_str(), "x.*");
    }

    /// Patterns built from Go syntax fragments must either fail with a Go error or compile;
    /// an internal error would mean the translation produced bad `regex` syntax.
    #[test]
    fn fragments_never_produce_internal_errors() {
        let fragments = [
            "a",
            "é",
            "(",
            ")",
            "|",
            "*",
            "+",
            "?",
            "{2}",
            "{1,3}",
            "{",
            "}",
            "[",
            "]",
            "^",
            "$",
            ".",
            r"\",
            r"\d",
            r"\W",
            r"\b",
            r"\pL",
            r"\p{Greek}",
            r"\Q",
            r"\E",
            "(?i)",
            "(?s:",
            "(?P<n>",
            "[^",
            "[:alpha:]",
            "-",
            "&&",
            "~",
            "#",
            " ",
            "\n",
            r"\x{41}",
            "(?U)",
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..5_000 {
            let mut pattern = String::new();
            for _ in 0..(seed % 9) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                pattern.push_str(fragments[(seed % fragments.len() as u64) as usize]);
            }
            seed = seed.wrapping_add(1);
            if let Err(e) = GoRegex::new(&pattern) {
                assert!(
                    !e.message().contains("internal error"),
                    "{pattern:?}: {}",
                    e.message()
                );
            }
        }
    }

    // An empty HTTP field is never compiled (it matches anything, semantics §5.1), but an
    // empty regex itself only fully matches the empty text.
    #[test]
    fn empty_pattern_matches_only_the_empty_text() {
        assert!(full("", ""));
        assert!(!full("", "a"));
        assert!(!full("", "/"));
    }

    // RE2 and Go match runes, not bytes.
    #[test]
    fn dot_matches_one_character() {
        assert!(full(".", "é"));
        assert!(full(".", "😀"));
        assert!(!full("..", "é"));
        assert!(full("/.{3}", "/日本語"));
        assert!(!full("/.{3}", "/日本"));
        assert!(full("[^a]", "é"));
    }

    #[test]
    fn anchors_inside_the_pattern() {
        // Without (?m), ^ and $ only match at the ends of the text.
        assert!(!full("a^b", "ab"));
        assert!(!full("a$b", "ab"));
        assert!(full("^GET$", "GET"));
        assert!(!full("^GET$", "GETX"));
        assert!(full("(^a|b)c", "ac"));
        assert!(full("(^a|b)c", "bc"));
    }

    // A common mistake in host rules: an unescaped dot matches any character.
    #[test]
    fn unescaped_dot_in_host_matches_anything() {
        assert!(full("api.example.com", "api.example.com"));
        assert!(full("api.example.com", "apiXexample.com"));
        assert!(!full(r"api\.example\.com", "apiXexample.com"));
        assert!(!full("api.example.com", "api.example.com:443"));
    }

    #[test]
    fn escapes_inside_classes() {
        assert!(full(r"[\.]", "."));
        assert!(!full(r"[\.]", "x"));
        assert!(full(r"[\-]", "-"));
        assert!(full(r"[\]]", "]"));
        assert!(full(r"[\[]", "["));
        assert!(full(r"[\\]", "\\"));
        assert!(full(r"[\^a]", "^"));
        assert!(full(r"[a\-z]", "-"));
        assert!(!full(r"[a\-z]", "b"));
        assert!(full(r"[\x41-\x43]", "B"));
        assert!(full(r"[\n]", "\n"));
    }

    #[test]
    fn case_folding_applies_to_classes_and_ranges() {
        assert!(full("(?i)[a-z]+", "AbC"));
        assert!(!full("[a-z]+", "AbC"));
        assert!(full("(?i)[^a-z]", "1"));
        assert!(!full("(?i)[^a-z]", "Q"));
        assert!(full("(?i)/API/v[0-9]", "/api/V1"));
    }

    #[test]
    fn more_posix_classes() {
        assert!(full("[[:word:]]+", "a_1"));
        assert!(!full("[[:word:]]", "-"));
        assert!(full("[[:upper:]][[:lower:]]", "Ab"));
        assert!(full("[[:xdigit:]]+", "09afAF"));
        assert!(!full("[[:xdigit:]]", "g"));
        assert!(full("[[:punct:]]", "!"));
        assert!(full("[[:blank:]]", "\t"));
        assert!(!full("[[:blank:]]", "\n"));
        // Outside brackets it is an ordinary class of `[:alph]` characters.
        assert!(full("[:alpha:]", "a"));
        assert!(full("[:alpha:]", ":"));
        assert!(!full("[:alpha:]", "b"));
    }

    // semantics §6 item 7: the seed policy's exact paths.
    #[test]
    fn seed_paths_are_exact() {
        let api = re("/api");
        for (text, ok) in [
            ("/api", true),
            ("/api/users/1", false),
            ("/api?page=2", false),
            ("/API", false),
        ] {
            assert_eq!(api.is_full_match(text), ok, "{text}");
        }
        let register = re("/api/register");
        assert!(register.is_full_match("/api/register"));
        assert!(!register.is_full_match("/api/register/"));
        let suggested = re("/api(/.*)?");
        assert!(suggested.is_full_match("/api"));
        assert!(suggested.is_full_match("/api/users/1"));
        assert!(!suggested.is_full_match("/apix"));
        let get = re("GET");
        assert!(!get.is_full_match("HEAD"));
        assert!(!get.is_full_match("get"));
    }
}
