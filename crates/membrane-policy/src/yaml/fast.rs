//! A fast path for the YAML that manifests and scenario files are made of.
//!
//! It reads the common subset (block mappings and sequences, flow collections, plain and
//! quoted one-line scalars, literal block scalars, comments, `---`) straight from the bytes
//! into the same tree, with the same spans, as the event-based builder; JSON is a part of that
//! subset. On anything else (anchors, tags, multi-line plain scalars, tabs, non-ASCII text,
//! and every error) it gives up and the caller parses with saphyr, which reports errors.

use super::{
    CompactString, Embedding, MAX_DEPTH, MAX_NODES, Node, ScalarKind, Span, Value, is_plain_null,
    node_size,
};
use std::collections::HashMap;

/// `None`: the text is outside the subset; parse it with the full parser.
pub(super) fn parse(text: &str, embedding: Embedding) -> Option<Vec<Node>> {
    let b = text.as_bytes();
    let ascii = text.is_ascii();
    // A NUL ends saphyr's input ("found unprintable character" where a token would start, a
    // truncated text elsewhere): leave it to saphyr, with tabs and carriage returns.
    if b.iter().any(|&c| c == b'\t' || c == b'\r' || c == 0) {
        return None;
    }
    // Characters that YAML treats as line breaks or marks: leave them to the full parser.
    if !ascii && text.contains(['\u{feff}', '\u{85}', '\u{2028}', '\u{2029}']) {
        return None;
    }
    // Positions at the end of a text without a final newline depend on the scanner's
    // forced line break; leave those (rare in embedded blocks) to the full parser.
    if embedding.col_offset != 0 && !b.is_empty() && b.last() != Some(&b'\n') {
        return None;
    }
    let mut p = P {
        b,
        pos: 0,
        line: 1,
        line_start: 0,
        emb: embedding,
        nodes: 0,
        depth: 0,
        ascii,
        anchors: HashMap::new(),
        map_stack: Vec::new(),
        seq_stack: Vec::new(),
        t: text,
        limit: b.len(),
        worker: false,
        parallel: b.len() >= PARALLEL_MIN_BYTES
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
    };
    p.documents()
}

struct P<'t> {
    b: &'t [u8],
    pos: usize,
    /// 1-based line of `pos`.
    line: u32,
    line_start: usize,
    emb: Embedding,
    nodes: usize,
    depth: usize,
    /// Columns count characters; with only ASCII they are byte distances.
    ascii: bool,
    /// The last node defined under each anchor name in the current document.
    anchors: HashMap<&'t [u8], Node>,
    /// The entries and items of the collections being read, innermost last: each collection
    /// moves its own into a vector of the exact size when it ends.
    map_stack: Vec<(Node, Node)>,
    seq_stack: Vec<Node>,
    t: &'t str,
    /// Reading stops here (the start of the part another thread reads).
    limit: usize,
    /// This reads the second half of a long sequence (and splits nothing itself).
    worker: bool,
    /// Whether a second core may help.
    parallel: bool,
}

/// A position: byte offset and 1-based line, 0-based column.
#[derive(Clone, Copy)]
struct Mark {
    pos: usize,
    line: u32,
    col: usize,
}

fn is_flow_ind(c: u8) -> bool {
    matches!(c, b',' | b'[' | b']' | b'{' | b'}')
}

/// How far (in characters) saphyr looks for the `:` of a simple key in block context.
const MAX_SIMPLE_KEY: usize = 1024;

/// A block sequence this long (in bytes) is read by two threads.
const PARALLEL_MIN_BYTES: usize = 4 * 1024 * 1024;

/// Bytes that end or may end a plain scalar inside a flow collection.
const FLOW_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let special = b"\n,[]{}:# ";
    let mut i = 0;
    while i < special.len() {
        t[special[i] as usize] = true;
        i += 1;
    }
    t
};

/// Whether a plain scalar may start with `first` (followed by `next`).
fn plain_start(first: u8, next: Option<u8>, flow: bool) -> bool {
    let indicator = matches!(
        first,
        b'-' | b'?'
            | b':'
            | b','
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'#'
            | b'&'
            | b'*'
            | b'!'
            | b'|'
            | b'>'
            | b'\''
            | b'"'
            | b'%'
            | b'@'
            | b'`'
    );
    if !indicator {
        return true;
    }
    let next_safe = match next {
        None | Some(b' ' | b'\n') => false,
        Some(c) => !(flow && is_flow_ind(c)),
    };
    if flow {
        first == b'-' && next_safe
    } else {
        matches!(first, b'-' | b':') && next_safe
    }
}

impl P<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, i: usize) -> Option<u8> {
        self.b.get(self.pos + i).copied()
    }

    fn col(&self) -> usize {
        self.pos - self.line_start
    }

    fn mark(&self) -> Mark {
        Mark {
            pos: self.pos,
            line: self.line,
            col: self.col(),
        }
    }

    fn newline(&mut self) {
        // at b'\n'
        self.pos += 1;
        self.line += 1;
        self.line_start = self.pos;
    }

    fn adj_offset(&self, m: Mark) -> u32 {
        m.pos as u32 + self.emb.byte_offset + self.emb.col_offset * m.line.saturating_sub(1)
    }

    /// The character column of a mark (its byte column in ASCII text).
    fn char_col(&self, m: Mark) -> u32 {
        if self.ascii {
            m.col as u32
        } else {
            let line = &self.b[m.pos - m.col..m.pos];
            line.iter().filter(|&&c| (c & 0xC0) != 0x80).count() as u32
        }
    }

    fn span(&self, start: Mark, end_pos: usize) -> Span {
        Span {
            line: start.line + self.emb.line_offset,
            col: self.char_col(start) + 1 + self.emb.col_offset,
            offset: self.adj_offset(start),
            len: (end_pos - start.pos) as u32,
        }
    }

    /// A collection's span: from its start to an (empty) end mark.
    fn coll_span(&self, start: Mark, end: Mark) -> Span {
        let s = self.span(start, start.pos);
        Span {
            len: self.adj_offset(end).saturating_sub(s.offset),
            ..s
        }
    }

    fn count(&mut self) -> Option<()> {
        self.nodes += 1;
        (self.nodes < MAX_NODES).then_some(())
    }

    fn scalar(&mut self, text: CompactString, quoted: bool, span: Span) -> Option<Node> {
        self.count()?;
        let value = if !quoted && is_plain_null(&text) {
            Value::Null
        } else {
            Value::Scalar {
                text,
                kind: if quoted {
                    ScalarKind::Quoted
                } else {
                    ScalarKind::Plain
                },
            }
        };
        Some(Node { value, span })
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth < MAX_DEPTH - 16).then_some(())
    }

    /// Skips spaces on the current line.
    fn spaces(&mut self) -> bool {
        let start = self.pos;
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        self.pos > start
    }

    /// After a token: spaces, an optional comment, then the end of the line (not consumed).
    fn end_of_line(&mut self) -> Option<()> {
        let had_space = self.spaces();
        match self.peek() {
            None | Some(b'\n') => Some(()),
            Some(b'#') if had_space => {
                self.skip_comment();
                Some(())
            }
            _ => None,
        }
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == b'\n' {
                break;
            }
            self.pos += 1;
        }
    }

    /// Skips blank lines, comments and spaces to the next content (or the end).
    fn next_content(&mut self) -> Option<()> {
        let mut prev_blank = self.pos == 0 || matches!(self.b[self.pos - 1], b' ' | b'\n');
        loop {
            match self.peek() {
                Some(b' ') => {
                    self.pos += 1;
                    prev_blank = true;
                }
                Some(b'\n') => {
                    self.newline();
                    prev_blank = true;
                }
                Some(b'#') => {
                    if !prev_blank {
                        return None;
                    }
                    self.skip_comment();
                }
                _ => return Some(()),
            }
        }
    }

    fn at_doc_marker(&self) -> bool {
        self.col() == 0
            && (self.b[self.pos..].starts_with(b"---") || self.b[self.pos..].starts_with(b"..."))
            && matches!(self.peek_at(3), None | Some(b' ' | b'\n'))
    }

    /// The end of a block: nothing, or a document marker.
    fn at_end(&self) -> bool {
        self.pos >= self.limit || self.peek().is_none() || self.at_doc_marker()
    }

    fn documents(&mut self) -> Option<Vec<Node>> {
        let mut docs = Vec::new();
        let mut has_root = false;
        loop {
            self.next_content()?;
            let Some(c) = self.peek() else { break };
            if self.at_doc_marker() {
                if c == b'.' {
                    return None;
                }
                self.pos += 3;
                self.end_of_line()?;
                has_root = false;
                self.anchors.clear();
                continue;
            }
            if has_root || c == b'%' {
                return None;
            }
            let node = self.block_node(-1)?;
            self.next_content()?;
            if !self.at_end() {
                return None;
            }
            has_root = true;
            if !node.is_null() {
                docs.push(node);
            }
        }
        Some(docs)
    }

    /// A node in block context at the current position; `parent` is the indentation of the
    /// enclosing block collection. Leaves the position after the node's last line content.
    fn block_node(&mut self, parent: isize) -> Option<Node> {
        let start = self.mark();
        if start.col as isize <= parent {
            return None;
        }
        let c = self.peek()?;
        match c {
            b'&' => self.anchored(parent),
            b'*' => self.alias(parent),
            b'-' if matches!(self.peek_at(1), None | Some(b' ' | b'\n')) => {
                self.block_seq(start.col, false)
            }
            b'{' | b'[' => {
                let node = self.flow_node(parent)?;
                self.end_of_line()?;
                Some(node)
            }
            b'|' => self.block_scalar(parent),
            b'\'' | b'"' => {
                let node = self.quoted(false)?;
                if self.peek() == Some(b':') && matches!(self.peek_at(1), None | Some(b' ' | b'\n'))
                {
                    return self.block_map(start, node);
                }
                self.end_of_line()?;
                Some(node)
            }
            _ => {
                let (node, colon) = self.plain_block(parent)?;
                if colon {
                    return self.block_map(start, node);
                }
                Some(node)
            }
        }
    }

    /// A block mapping whose first key has been read (the position is at its `:`).
    fn block_map(&mut self, start: Mark, first_key: Node) -> Option<Node> {
        self.enter()?;
        self.count()?;
        let indent = start.col;
        let base = self.map_stack.len();
        let mut key = first_key;
        let mut key_start = start.pos;
        loop {
            // saphyr drops a simple key whose `:` is more than 1024 characters after its
            // start (then the `:` is an error); bytes count at least as many.
            if self.pos - key_start > MAX_SIMPLE_KEY {
                return None;
            }
            if matches!(key.value, Value::Scalar { .. } | Value::Null) {
                let key_text = key.scalar_text().unwrap_or("");
                if self.map_stack[base..]
                    .iter()
                    .any(|(k, _)| k.scalar_text().unwrap_or("") == key_text)
                {
                    return None;
                }
            } else {
                return None;
            }
            // at ':'
            let colon = self.mark();
            self.pos += 1;
            self.spaces();
            let value = match self.peek() {
                None | Some(b'\n') | Some(b'#') => {
                    if self.peek() == Some(b'#') && self.b[self.pos - 1] != b' ' {
                        return None;
                    }
                    self.next_content()?;
                    let col = self.col();
                    if self.at_end() || col < indent {
                        self.null_at(colon)?
                    } else if col == indent {
                        if self.peek() == Some(b'-')
                            && matches!(self.peek_at(1), None | Some(b' ' | b'\n'))
                        {
                            self.block_seq(indent, true)?
                        } else {
                            self.null_at(colon)?
                        }
                    } else {
                        self.block_node(indent as isize)?
                    }
                }
                Some(b'-') if matches!(self.peek_at(1), None | Some(b' ' | b'\n')) => return None,
                Some(_) => self.inline_value(indent as isize)?,
            };
            self.map_stack.push((key, value));
            self.next_content()?;
            let here = self.mark();
            if self.at_end() || here.col < indent {
                self.depth -= 1;
                return Some(Node {
                    value: Value::Map(self.map_stack.drain(base..).collect()),
                    span: self.coll_span(start, here),
                });
            }
            if here.col > indent {
                return None;
            }
            key_start = self.pos;
            key = self.block_key()?;
        }
    }

    fn null_at(&mut self, colon: Mark) -> Option<Node> {
        self.count()?;
        Some(Node {
            value: Value::Null,
            span: self.span(colon, colon.pos),
        })
    }

    /// A key of a block mapping, leaving the position at its `:`.
    fn block_key(&mut self) -> Option<Node> {
        match self.peek()? {
            b'\'' | b'"' => {
                let node = self.quoted(false)?;
                (self.peek() == Some(b':') && matches!(self.peek_at(1), None | Some(b' ' | b'\n')))
                    .then_some(node)
            }
            _ => {
                let (node, colon) = self.plain_block(isize::MAX)?;
                colon.then_some(node)
            }
        }
    }

    /// `&name` and the node it names (on the same line or the next ones).
    fn anchored(&mut self, parent: isize) -> Option<Node> {
        let anchor = self.mark();
        self.pos += 1;
        let name_start = self.pos;
        while let Some(c) = self.peek() {
            if c == b' ' || c == b'\n' || is_flow_ind(c) {
                break;
            }
            self.pos += 1;
        }
        let name = &self.b[name_start..self.pos];
        if name.is_empty() || !matches!(self.peek(), Some(b' ' | b'\n')) {
            return None;
        }
        // saphyr binds the name when the node starts: inside the node an alias of that name
        // is not an earlier node of the same name but unknown (an error).
        self.anchors.remove(name);
        self.spaces();
        let node_start = self.mark();
        let node = match self.peek() {
            None | Some(b'\n' | b'#') => {
                self.end_of_line()?;
                self.next_content()?;
                // A second anchor (or an alias) for the same node is an error; a block
                // scalar's token starts on its first content line, not at the `|` (the span
                // from the anchor is left to saphyr).
                if self.at_end()
                    || self.col() as isize <= parent
                    || matches!(self.peek(), Some(b'&' | b'*' | b'|'))
                {
                    return None;
                }
                let node_start = self.mark();
                let node = self.block_node(parent)?;
                self.restart(anchor, node_start, node)
            }
            Some(b'&' | b'*' | b'-' | b'?' | b'|') => return None,
            Some(_) => {
                let node = self.inline_value(parent)?;
                self.restart(anchor, node_start, node)
            }
        };
        // Aliases name the anchor that started last: one of the same name inside this node
        // (bound again after the removal above) stays.
        self.anchors.entry(name).or_insert_with(|| node.clone());
        Some(node)
    }

    /// The span of an anchored node starts at its anchor.
    fn restart(&self, anchor: Mark, node_start: Mark, mut node: Node) -> Node {
        let start = self.span(anchor, anchor.pos);
        let len = match node.value {
            Value::Seq(_) | Value::Map(_) => (node.span.offset + node.span.len) - start.offset,
            _ => (node_start.pos - anchor.pos) as u32 + node.span.len,
        };
        node.span = Span { len, ..start };
        node
    }

    /// `*name`: a copy of the node defined under that anchor.
    fn alias(&mut self, parent: isize) -> Option<Node> {
        let start = self.mark();
        self.pos += 1;
        while let Some(c) = self.peek() {
            if c == b' ' || c == b'\n' || is_flow_ind(c) {
                break;
            }
            self.pos += 1;
        }
        let name = &self.b[start.pos + 1..self.pos];
        let node = self.anchors.get(name)?;
        let span = self.span(start, self.pos);
        let copy = Node {
            value: node.value.clone(),
            span,
        };
        self.nodes += node_size(node);
        if self.nodes >= MAX_NODES {
            return None;
        }
        self.end_of_line()?;
        let save = (self.pos, self.line, self.line_start);
        self.next_content()?;
        let deeper = !self.at_end() && self.col() as isize > parent;
        (self.pos, self.line, self.line_start) = save;
        if deeper {
            return None;
        }
        Some(copy)
    }

    /// A value on the same line as its key or `-`.
    fn inline_value(&mut self, parent: isize) -> Option<Node> {
        match self.peek()? {
            b'&' => self.anchored(parent),
            b'*' => self.alias(parent),
            b'{' | b'[' => {
                let node = self.flow_node(parent)?;
                self.end_of_line()?;
                Some(node)
            }
            b'|' => self.block_scalar(parent),
            b'\'' | b'"' => {
                let node = self.quoted(false)?;
                self.end_of_line()?;
                Some(node)
            }
            _ => {
                let (node, colon) = self.plain_block(parent)?;
                if colon {
                    return None;
                }
                Some(node)
            }
        }
    }

    /// A block sequence whose first `-` is at the position, in column `indent`.
    fn block_seq(&mut self, indent: usize, indentless: bool) -> Option<Node> {
        self.enter()?;
        self.count()?;
        let mut start = self.mark();
        let base = self.seq_stack.len();
        let here = match self.plan_split(indent) {
            Some(split) => self.seq_items_parallel(indent, indentless, &mut start, split)?,
            None => self.seq_items(indent, indentless, Some(&mut start), false)?,
        };
        self.depth -= 1;
        Some(Node {
            value: Value::Seq(self.seq_stack.drain(base..).collect()),
            span: self.coll_span(start, here),
        })
    }

    /// Reads the items of a block sequence onto the stack, from a `-` (or, with `check_first`,
    /// from the content after an item); returns the mark where the sequence ends.
    fn seq_items(
        &mut self,
        indent: usize,
        indentless: bool,
        mut start: Option<&mut Mark>,
        check_first: bool,
    ) -> Option<Mark> {
        let mut check = check_first;
        let mut first = true;
        loop {
            if check {
                self.next_content()?;
                let here = self.mark();
                let is_entry = self.peek() == Some(b'-')
                    && matches!(self.peek_at(1), None | Some(b' ' | b'\n'));
                if self.at_end()
                    || here.col < indent
                    || (indentless && here.col == indent && !is_entry)
                {
                    return Some(here);
                }
                if here.col > indent || !is_entry {
                    return None;
                }
            }
            check = true;
            // at '-'
            self.pos += 1;
            if !self.spaces() {
                return None;
            }
            if indentless && first {
                // the scanner starts an indentless sequence after its first `- `
                if let Some(start) = start.as_deref_mut() {
                    *start = self.mark();
                }
            }
            first = false;
            match self.peek() {
                None | Some(b'\n') | Some(b'#') => return None,
                Some(b'-') if matches!(self.peek_at(1), None | Some(b' ' | b'\n')) => return None,
                _ => {}
            }
            let item = match self.peek()? {
                b'{' | b'[' | b'|' => self.inline_value(indent as isize)?,
                _ => self.block_node(indent as isize)?,
            };
            self.seq_stack.push(item);
        }
    }

    /// For a long block sequence (the endpoints of a large cluster), where to start reading
    /// its second half on another thread: an item's `-` near the middle, with its line.
    fn plan_split(&self, indent: usize) -> Option<Mark> {
        if self.worker || !self.parallel || self.b.len() - self.pos < PARALLEL_MIN_BYTES {
            return None;
        }
        // Item boundaries: lines whose content is `- ` at the sequence's column. The sequence
        // ends at the first other content at that column or left of it.
        let mut boundaries: Vec<Mark> = Vec::new();
        let mut line = self.line;
        let mut i = self.pos;
        let end = loop {
            let Some(nl) = self.t.get(i..)?.find('\n') else {
                break self.b.len();
            };
            i += nl + 1;
            line += 1;
            let lead = self.b[i..].iter().take_while(|&&c| c == b' ').count();
            let c = self.b.get(i + lead).copied();
            match c {
                None => break self.b.len(),
                Some(b'\n' | b'#') => continue,
                Some(_) if lead > indent => continue,
                Some(b'-')
                    if lead == indent
                        && matches!(self.b.get(i + lead + 1), None | Some(b' ' | b'\n'))
                        && !(lead == 0 && self.b[i..].starts_with(b"---")) =>
                {
                    boundaries.push(Mark {
                        pos: i + lead,
                        line,
                        col: lead,
                    });
                }
                Some(_) => break i + lead,
            }
        };
        if end - self.pos < PARALLEL_MIN_BYTES || boundaries.len() < 16 {
            return None;
        }
        let middle = self.pos + (end - self.pos) / 2;
        let k = boundaries.partition_point(|m| m.pos < middle);
        boundaries.get(k).copied()
    }

    /// [`Self::seq_items`] with the items from `split` on read by a second thread.
    fn seq_items_parallel(
        &mut self,
        indent: usize,
        indentless: bool,
        start: &mut Mark,
        split: Mark,
    ) -> Option<Mark> {
        let mut worker = P {
            b: self.b,
            pos: split.pos,
            line: split.line,
            line_start: split.pos - split.col,
            emb: self.emb,
            nodes: 0,
            depth: self.depth,
            ascii: self.ascii,
            anchors: HashMap::new(),
            map_stack: Vec::new(),
            seq_stack: Vec::new(),
            t: self.t,
            limit: self.b.len(),
            worker: true,
            parallel: false,
        };
        let (first_half, second) = std::thread::scope(|scope| {
            let spawned = std::thread::Builder::new().spawn_scoped(scope, move || {
                let here = worker.seq_items(indent, indentless, None, false)?;
                Some((here, worker))
            });
            let Ok(handle) = spawned else {
                return (
                    self.seq_items(indent, indentless, Some(&mut *start), false),
                    None,
                );
            };
            let limit = std::mem::replace(&mut self.limit, split.pos);
            let first_half = self.seq_items(indent, indentless, Some(&mut *start), false);
            self.limit = limit;
            (first_half, handle.join().ok().flatten())
        });
        let stopped_at = first_half?;
        if stopped_at.pos != split.pos {
            // The sequence ended before the split (the plan was wrong): what was read holds.
            return Some(stopped_at);
        }
        let Some((_, worker)) = second else {
            // The second half needs the first (an alias) or is outside the subset: read it
            // here.
            return self.seq_items(indent, indentless, None, false);
        };
        self.seq_stack.extend(worker.seq_stack);
        self.nodes += worker.nodes;
        if self.nodes >= MAX_NODES {
            return None;
        }
        self.anchors.extend(worker.anchors);
        (self.pos, self.line, self.line_start) = (worker.pos, worker.line, worker.line_start);
        // Where the worker stopped, the sequence ends (or the text is outside the subset).
        self.seq_items(indent, indentless, None, true)
    }

    /// A plain scalar in block context; `true` when it is followed by `: ` (a key; the
    /// position is then at the `:`), else the line is consumed up to its end.
    fn plain_block(&mut self, parent: isize) -> Option<(Node, bool)> {
        let start = self.mark();
        let first = self.peek()?;
        if !plain_start(first, self.peek_at(1), false) {
            return None;
        }
        let mut end = self.pos;
        let mut colon = false;
        while let Some(c) = self.peek() {
            match c {
                b'\n' => break,
                b':' if matches!(self.peek_at(1), None | Some(b' ' | b'\n')) => {
                    colon = true;
                    break;
                }
                b'#' if self.b[self.pos - 1] == b' ' => break,
                b' ' => {}
                _ => end = self.pos + 1,
            }
            self.pos += 1;
        }
        if colon && end != self.pos {
            // `key :` — spaces before the colon
            return None;
        }
        if !colon && self.peek() == Some(b'#') {
            self.skip_comment();
        }
        let text = CompactString::from(self.t.get(start.pos..end)?);
        let span = self.span(start, end);
        let node = self.scalar(text, false, span)?;
        if !colon {
            // A deeper next line would continue the scalar (or be an error).
            let save = (self.pos, self.line, self.line_start);
            self.next_content()?;
            let deeper = !self.at_end() && self.col() as isize > parent;
            (self.pos, self.line, self.line_start) = save;
            if deeper {
                return None;
            }
        }
        Some((node, colon))
    }

    /// A single- or double-quoted scalar on one line; the position ends after the quote and
    /// any trailing spaces and comment (as the scanner's token does).
    fn quoted(&mut self, flow: bool) -> Option<Node> {
        let start = self.mark();
        let q = self.peek()?;
        self.pos += 1;
        // Without escapes the text is a slice of the input.
        let body = self.pos;
        let mut simple = None;
        while let Some(&c) = self.b.get(self.pos) {
            if c == q {
                if q == b'\'' && self.peek_at(1) == Some(b'\'') {
                    break;
                }
                simple = Some(CompactString::from(self.t.get(body..self.pos)?));
                self.pos += 1;
                break;
            }
            if c == b'\n' || (c == b'\\' && q == b'"') {
                break;
            }
            self.pos += 1;
        }
        let text = match simple {
            Some(text) => text,
            None => {
                self.pos = body;
                self.quoted_escaped(q)?
            }
        };
        self.after_quoted(start, flow, text)
    }

    /// The body of a quoted scalar with escapes, up to and including the closing quote.
    fn quoted_escaped(&mut self, q: u8) -> Option<CompactString> {
        let mut text: Vec<u8> = Vec::new();
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'\n' => return None,
                b'\'' if q == b'\'' => {
                    if self.peek() == Some(b'\'') {
                        text.push(b'\'');
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                b'"' if q == b'"' => break,
                b'\\' if q == b'"' => {
                    let e = self.peek()?;
                    self.pos += 1;
                    let ch = match e {
                        b'0' => '\0',
                        b'a' => '\x07',
                        b'b' => '\x08',
                        b't' => '\t',
                        b'n' => '\n',
                        b'v' => '\x0b',
                        b'f' => '\x0c',
                        b'r' => '\r',
                        b'e' => '\x1b',
                        b' ' => ' ',
                        b'"' => '"',
                        b'/' => '/',
                        b'\\' => '\\',
                        b'x' | b'u' | b'U' => {
                            let n = match e {
                                b'x' => 2,
                                b'u' => 4,
                                _ => 8,
                            };
                            let hex = self.b.get(self.pos..self.pos + n)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
                                return None;
                            }
                            self.pos += n;
                            char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    text.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => text.push(c),
            }
        }
        Some(CompactString::from(String::from_utf8(text).ok()?))
    }

    fn after_quoted(&mut self, start: Mark, flow: bool, text: CompactString) -> Option<Node> {
        // trailing spaces and comment belong to the token
        let had_space = self.spaces();
        match self.peek() {
            Some(b'#') if had_space => self.skip_comment(),
            Some(b'#') => return None,
            None | Some(b'\n' | b':') => {}
            Some(b',' | b']' | b'}') if flow => {}
            _ => return None,
        }
        let span = self.span(start, self.pos);
        if self.peek() == Some(b':') && !flow && self.b[self.pos - 1] == b' ' {
            return None;
        }
        self.scalar(text, true, span)
    }

    /// A literal block scalar (`|` or `|-`); `parent` is the enclosing collection's indent.
    fn block_scalar(&mut self, parent: isize) -> Option<Node> {
        self.pos += 1;
        let strip = match self.peek() {
            Some(b'-') => {
                self.pos += 1;
                true
            }
            Some(b' ' | b'\n') | None => false,
            _ => return None,
        };
        self.end_of_line()?;
        self.peek()?;
        self.newline();
        // the first line sets the indentation
        let indent = self.b[self.pos..]
            .iter()
            .take_while(|&&c| c == b' ')
            .count();
        // Content at column 0 (a document's root) would have to stop at `---`/`...` lines:
        // leave that to saphyr.
        if matches!(self.peek_at(indent), None | Some(b'\n'))
            || indent as isize <= parent
            || indent == 0
        {
            return None;
        }
        // the scanner's token starts at the first content line's text
        let start = Mark {
            pos: self.pos + indent,
            line: self.line,
            col: indent,
        };
        let mut text = String::new();
        let mut pending_breaks = 0usize;
        loop {
            // at the start of a line
            let lead = self.b[self.pos..]
                .iter()
                .take_while(|&&c| c == b' ')
                .count();
            match self.peek_at(lead) {
                None if lead == 0 => break,
                None | Some(b'\n') => {
                    if lead > indent {
                        return None;
                    }
                    // spaces then the end of the text
                    self.peek_at(lead)?;
                    self.pos += lead;
                    self.newline();
                    pending_breaks += 1;
                    continue;
                }
                Some(_) if lead < indent => break,
                Some(_) => {}
            }
            if !text.is_empty() {
                text.push('\n');
            }
            for _ in 0..pending_breaks {
                text.push('\n');
            }
            pending_breaks = 0;
            let content_start = self.pos + indent;
            let mut eol = content_start;
            while eol < self.b.len() && self.b[eol] != b'\n' {
                eol += 1;
            }
            text.push_str(self.t.get(content_start..eol)?);
            self.pos = eol;
            if self.peek().is_none() {
                break;
            }
            self.newline();
        }
        // the scanner's token ends after the indentation of the line that ends the block
        let lead = self.b[self.pos..]
            .iter()
            .take_while(|&&c| c == b' ')
            .count();
        self.pos += lead;
        if !strip && !text.is_empty() {
            text.push('\n');
        }
        let span = self.span(start, self.pos);
        if !self.at_end() && self.col() as isize > parent && self.peek() != Some(b'#') {
            return None;
        }
        self.scalar(CompactString::from(text), true, span)
    }

    /// A flow collection or scalar; `parent` is the enclosing block indentation.
    fn flow_node(&mut self, parent: isize) -> Option<Node> {
        match self.peek()? {
            b'{' => self.flow_map(parent),
            b'[' => self.flow_seq(parent),
            b'\'' | b'"' => self.quoted(true),
            _ => self.plain_flow(),
        }
    }

    /// The scanner's token for a closing bracket takes the spaces and comment after it.
    fn closing_ws(&mut self) -> Option<()> {
        let had_space = self.spaces();
        if self.peek() == Some(b'#') {
            if !had_space {
                return None;
            }
            self.skip_comment();
        }
        Some(())
    }

    /// Whitespace, line breaks and comments inside a flow collection.
    fn flow_ws(&mut self, parent: isize) -> Option<()> {
        let line = self.line;
        self.next_content()?;
        if self.line != line && (self.col() as isize <= parent || self.at_doc_marker()) {
            return None;
        }
        Some(())
    }

    fn flow_map(&mut self, parent: isize) -> Option<Node> {
        self.enter()?;
        self.count()?;
        let start = self.mark();
        self.pos += 1;
        let base = self.map_stack.len();
        self.flow_ws(parent)?;
        if self.peek() != Some(b'}') {
            loop {
                let key = match self.peek()? {
                    b'\'' | b'"' => self.quoted(true)?,
                    b'{' | b'[' | b'?' | b':' => return None,
                    _ => self.plain_flow()?,
                };
                if !matches!(key.value, Value::Scalar { .. } | Value::Null) {
                    return None;
                }
                let key_text = key.scalar_text().unwrap_or("");
                if self.map_stack[base..]
                    .iter()
                    .any(|(k, _)| k.scalar_text().unwrap_or("") == key_text)
                {
                    return None;
                }
                if self.peek() != Some(b':') {
                    return None;
                }
                self.pos += 1;
                self.flow_ws(parent)?;
                if matches!(self.peek(), Some(b',' | b'}')) {
                    return None;
                }
                let value = self.flow_node(parent)?;
                self.map_stack.push((key, value));
                self.flow_ws(parent)?;
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.flow_ws(parent)?;
                        if self.peek() == Some(b'}') {
                            return None;
                        }
                    }
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.pos += 1;
        self.closing_ws()?;
        self.depth -= 1;
        Some(Node {
            value: Value::Map(self.map_stack.drain(base..).collect()),
            span: self.coll_span(start, self.mark()),
        })
    }

    fn flow_seq(&mut self, parent: isize) -> Option<Node> {
        self.enter()?;
        self.count()?;
        let start = self.mark();
        self.pos += 1;
        let base = self.seq_stack.len();
        self.flow_ws(parent)?;
        if self.peek() != Some(b']') {
            loop {
                let item = self.flow_node(parent)?;
                self.seq_stack.push(item);
                self.flow_ws(parent)?;
                match self.peek()? {
                    b',' => {
                        self.pos += 1;
                        self.flow_ws(parent)?;
                        if self.peek() == Some(b']') {
                            return None;
                        }
                    }
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.pos += 1;
        self.closing_ws()?;
        self.depth -= 1;
        Some(Node {
            value: Value::Seq(self.seq_stack.drain(base..).collect()),
            span: self.coll_span(start, self.mark()),
        })
    }

    /// A plain scalar inside a flow collection (one line); the position ends at the
    /// character after it (`:`, `,`, a bracket, a comment, a space or the line end).
    fn plain_flow(&mut self) -> Option<Node> {
        let start = self.mark();
        let first = self.peek()?;
        if !plain_start(first, self.peek_at(1), true) {
            return None;
        }
        let mut end = self.pos;
        let b = self.b;
        let mut i = self.pos;
        while let Some(&c) = b.get(i) {
            if !FLOW_SPECIAL[c as usize] {
                i += 1;
                end = i;
                continue;
            }
            match c {
                b':' => match b.get(i + 1) {
                    None | Some(b' ' | b'\n') => break,
                    Some(&n) if is_flow_ind(n) => return None,
                    _ => end = i + 1,
                },
                b'#' if b[i - 1] == b' ' => break,
                b'#' => end = i + 1,
                // saphyr rejects a word of a flow plain scalar that is `-` then a flow
                // indicator
                b' ' if b.get(i + 1) == Some(&b'-')
                    && b.get(i + 2).is_some_and(|&n| is_flow_ind(n)) =>
                {
                    return None;
                }
                b' ' => {}
                _ => break,
            }
            i += 1;
        }
        self.pos = i;
        let text = CompactString::from(self.t.get(start.pos..end)?);
        let span = self.span(start, end);
        // a space before `:` would make the scanner see the key differently
        if self.peek() == Some(b':') && end != self.pos {
            return None;
        }
        self.scalar(text, false, span)
    }
}
