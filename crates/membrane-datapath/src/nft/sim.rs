//! An interpreter for the nftables text [`crate::nft::compile`] emits: it loads the full table and
//! applies update transactions the way `nft -f` does (checking what the kernel checks:
//! references to missing chains or maps, deleting objects still in use, overlapping
//! interval elements), and evaluates packets through the hooks.
//!
//! It only knows the rule shapes the compiler writes, and rejects anything else, so a test
//! that agrees with the engine through this interpreter checks the rendered text, not an
//! intermediate form. The lab checks the real kernel against the same expectations.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// Text the interpreter (like `nft`) rejects, or a packet it cannot evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// Malformed text: `empty ruleset`, `unterminated map`, `bad rule`, `unknown command`, …
    #[error("{0}")]
    Syntax(&'static str),
    #[error("expected a table, got `{0}`")]
    ExpectedTable(String),
    #[error("unexpected line in map {map}: `{line}`")]
    UnexpectedInMap { map: String, line: String },
    #[error("unexpected line `{0}`")]
    UnexpectedLine(String),
    #[error("`{text}`: {source}")]
    BadNumber {
        text: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("cannot read value `{0}`")]
    BadValue(String),
    #[error("empty range `{0}`")]
    EmptyRange(String),
    #[error("element `{0}` has no value")]
    NoValue(String),
    #[error("element `{element}` does not fit type `{ty}`")]
    WrongArity { element: String, ty: String },
    #[error("range in `{0}` needs `flags interval`")]
    NeedsInterval(String),
    #[error("map {0} exists with another type")]
    MapRedeclared(String),
    #[error("chain {0} exists with another hook")]
    ChainRedeclared(String),
    #[error("`{0}`: no such chain")]
    NoTarget(String),
    #[error("no map {0}")]
    NoMap(String),
    #[error("no chain {0}")]
    NoChain(String),
    /// A `flush`/`delete` of an object that does not exist (`chain`, `map`).
    #[error("no such {0}")]
    NoSuch(&'static str),
    #[error("chain is not empty")]
    ChainNotEmpty,
    /// Deleting an object still referenced (`chain`, `map`).
    #[error("{0} is in use (EBUSY)")]
    Busy(&'static str),
    #[error("map {map}: `{element}` overlaps an existing element")]
    Overlap { map: String, element: String },
    #[error("unknown map attribute `{0}`")]
    UnknownAttribute(String),
    #[error("rule `{rule}`: {source}")]
    InRule {
        rule: String,
        #[source]
        source: Box<SimError>,
    },
    #[error("`{line}`: {source}")]
    InCommand {
        line: String,
        #[source]
        source: Box<SimError>,
    },
    #[error("loop")]
    Loop,
    #[error("unknown verdict `{0}`")]
    UnknownVerdict(String),
    #[error("unknown expression `{0}`")]
    UnknownExpression(String),
    #[error("rule shape not known to the interpreter: `{0}`")]
    UnknownRule(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    key: Vec<(u64, u64)>,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Map {
    ty: String,
    interval: bool,
    elements: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Chain {
    hook: Option<String>,
    rules: Vec<String>,
}

/// A loaded table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    maps: BTreeMap<String, Map>,
    chains: BTreeMap<String, Chain>,
}

/// A packet as the hooks see it. `port` is the destination port, or the ICMP type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
    /// Sent by the namespace itself (output hook) rather than forwarded or delivered to it.
    pub local_out: bool,
}

/// What happened to a packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub accepted: bool,
    /// The log prefix of the rule that dropped it, if it was logged.
    pub log: Option<String>,
    /// Proxy chains entered: (the chain that sent it there, the proxy chain).
    pub proxies: Vec<(String, String)>,
}

fn proto_number(s: &str) -> Option<u64> {
    Some(match s {
        "tcp" => 6,
        "udp" => 17,
        "sctp" => 132,
        "icmp" => 1,
        "ipv6-icmp" => 58,
        _ => return None,
    })
}

fn scalar(s: &str) -> Result<u64, SimError> {
    let s = s.trim();
    if let Some(n) = proto_number(s) {
        return Ok(n);
    }
    if let Some(h) = s.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).map_err(|source| SimError::BadNumber {
            text: s.to_string(),
            source,
        });
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(u64::from(u32::from(a)));
    }
    Err(SimError::BadValue(s.to_string()))
}

fn component(s: &str) -> Result<(u64, u64), SimError> {
    let s = s.trim();
    if proto_number(s).is_some() {
        let n = scalar(s)?;
        return Ok((n, n));
    }
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (scalar(a)?, scalar(b)?);
            if a > b {
                return Err(SimError::EmptyRange(s.to_string()));
            }
            Ok((a, b))
        }
        None => {
            let n = scalar(s)?;
            Ok((n, n))
        }
    }
}

fn parse_element(text: &str, map: &Map) -> Result<Element, SimError> {
    let (k, v) = text
        .rsplit_once(" : ")
        .ok_or_else(|| SimError::NoValue(text.to_string()))?;
    let key: Vec<(u64, u64)> = k.split(" . ").map(component).collect::<Result<_, _>>()?;
    let arity = map
        .ty
        .split(" : ")
        .next()
        .map_or(0, |t| t.split(" . ").count());
    if key.len() != arity {
        return Err(SimError::WrongArity {
            element: text.to_string(),
            ty: map.ty.clone(),
        });
    }
    if !map.interval && key.iter().any(|(a, b)| a != b) {
        return Err(SimError::NeedsInterval(text.to_string()));
    }
    Ok(Element {
        key,
        value: v.trim().to_string(),
    })
}

fn overlaps(a: &[(u64, u64)], b: &[(u64, u64)]) -> bool {
    a.iter()
        .zip(b)
        .all(|((a0, a1), (b0, b1))| a0 <= b1 && b0 <= a1)
}

/// Splits `{ a, b }` element lists at top-level commas.
fn split_elements(body: &str) -> Vec<String> {
    body.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

impl Table {
    /// Loads a full table as rendered by [`crate::nft::compile::Ruleset::render`].
    pub fn load(text: &str) -> Result<Table, SimError> {
        let mut t = Table::default();
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let head = lines.next().ok_or(SimError::Syntax("empty ruleset"))?;
        if !head.starts_with("table inet ") {
            return Err(SimError::ExpectedTable(head.to_string()));
        }
        let mut pending_elements: Vec<(String, String)> = Vec::new();
        let mut pending_rules: Vec<(String, String)> = Vec::new();
        while let Some(line) = lines.next() {
            if line == "}" {
                break;
            }
            if let Some(name) = line.strip_prefix("map ").and_then(|l| l.strip_suffix(" {")) {
                let mut map = Map {
                    ty: String::new(),
                    interval: false,
                    elements: vec![],
                };
                loop {
                    let l = lines.next().ok_or(SimError::Syntax("unterminated map"))?;
                    if l == "}" {
                        break;
                    }
                    if let Some(ty) = l.strip_prefix("type ") {
                        map.ty = ty.to_string();
                    } else if l == "flags interval" {
                        map.interval = true;
                    } else if l == "elements = {" {
                        loop {
                            let e = lines
                                .next()
                                .ok_or(SimError::Syntax("unterminated elements"))?;
                            if e == "}" {
                                break;
                            }
                            pending_elements
                                .push((name.to_string(), e.trim_end_matches(',').to_string()));
                        }
                    } else {
                        return Err(SimError::UnexpectedInMap {
                            map: name.to_string(),
                            line: l.to_string(),
                        });
                    }
                }
                t.add_map(name, map)?;
            } else if let Some(name) = line
                .strip_prefix("chain ")
                .and_then(|l| l.strip_suffix(" {"))
            {
                let mut chain = Chain {
                    hook: None,
                    rules: vec![],
                };
                loop {
                    let l = lines.next().ok_or(SimError::Syntax("unterminated chain"))?;
                    if l == "}" {
                        break;
                    }
                    if l.starts_with("type filter hook") {
                        chain.hook = Some(l.to_string());
                    } else {
                        pending_rules.push((name.to_string(), l.to_string()));
                    }
                }
                t.add_chain(name, chain.hook)?;
            } else {
                return Err(SimError::UnexpectedLine(line.to_string()));
            }
        }
        // As in nft, a table block declares everything before checking references.
        for (m, e) in pending_elements {
            t.add_elements(&m, &[e])?;
        }
        for (c, r) in pending_rules {
            t.add_rule(&c, &r)?;
        }
        Ok(t)
    }

    fn add_map(&mut self, name: &str, map: Map) -> Result<(), SimError> {
        match self.maps.get(name) {
            Some(m) if m.ty != map.ty || m.interval != map.interval => {
                Err(SimError::MapRedeclared(name.to_string()))
            }
            Some(_) => Ok(()),
            None => {
                self.maps.insert(name.to_string(), map);
                Ok(())
            }
        }
    }

    fn add_chain(&mut self, name: &str, hook: Option<String>) -> Result<(), SimError> {
        if let Some(c) = self.chains.get(name) {
            if c.hook != hook {
                return Err(SimError::ChainRedeclared(name.to_string()));
            }
            return Ok(());
        }
        self.chains.insert(
            name.to_string(),
            Chain {
                hook,
                rules: vec![],
            },
        );
        Ok(())
    }

    fn check_verdict(&self, v: &str) -> Result<(), SimError> {
        let target = v.strip_prefix("jump ").or_else(|| v.strip_prefix("goto "));
        if let Some(c) = target
            && !self.chains.contains_key(c)
        {
            return Err(SimError::NoTarget(v.to_string()));
        }
        Ok(())
    }

    fn add_elements(&mut self, name: &str, elements: &[String]) -> Result<(), SimError> {
        let verdict_map = self
            .maps
            .get(name)
            .ok_or_else(|| SimError::NoMap(name.to_string()))?
            .ty
            .ends_with(": verdict");
        for text in elements {
            let map = self
                .maps
                .get(name)
                .ok_or_else(|| SimError::NoMap(name.to_string()))?;
            let e = parse_element(text, map)?;
            if verdict_map {
                self.check_verdict(&e.value)?;
            }
            let map = self
                .maps
                .get_mut(name)
                .ok_or_else(|| SimError::NoMap(name.to_string()))?;
            if let Some(old) = map.elements.iter().find(|o| overlaps(&o.key, &e.key)) {
                // The kernel accepts re-adding an identical element, nothing else.
                if old.key != e.key || old.value != e.value {
                    return Err(SimError::Overlap {
                        map: name.to_string(),
                        element: text.clone(),
                    });
                }
                continue;
            }
            map.elements.push(e);
        }
        Ok(())
    }

    fn add_rule(&mut self, chain: &str, rule: &str) -> Result<(), SimError> {
        for word in rule.split_whitespace() {
            if let Some(m) = word.strip_prefix('@')
                && !self.maps.contains_key(m)
            {
                return Err(SimError::InRule {
                    rule: rule.to_string(),
                    source: Box::new(SimError::NoMap(m.to_string())),
                });
            }
        }
        for v in ["jump ", "goto "] {
            if let Some(i) = rule.find(v) {
                let target = rule[i + v.len()..].split_whitespace().next().unwrap_or("");
                if !self.chains.contains_key(target) {
                    return Err(SimError::InRule {
                        rule: rule.to_string(),
                        source: Box::new(SimError::NoChain(target.to_string())),
                    });
                }
            }
        }
        // Evaluate once against a dummy packet to reject shapes the interpreter does not know.
        parse_rule(rule)?;
        self.chains
            .get_mut(chain)
            .ok_or_else(|| SimError::NoChain(chain.to_string()))?
            .rules
            .push(rule.to_string());
        Ok(())
    }

    fn chain_in_use(&self, name: &str) -> bool {
        let by_rule = self.chains.values().any(|c| {
            c.rules.iter().any(|r| {
                let w: Vec<&str> = r.split_whitespace().collect();
                w.windows(2)
                    .any(|p| matches!(p[0], "jump" | "goto") && p[1] == name)
            })
        });
        let by_element = self.maps.values().any(|m| {
            m.elements.iter().any(|e| {
                e.value
                    .strip_prefix("jump ")
                    .or_else(|| e.value.strip_prefix("goto "))
                    == Some(name)
            })
        });
        by_rule || by_element
    }

    fn map_in_use(&self, name: &str) -> bool {
        let at = format!("@{name}");
        self.chains.values().any(|c| {
            c.rules
                .iter()
                .any(|r| r.split_whitespace().any(|w| w == at))
        })
    }

    /// Applies an `nft -f` transaction of the commands [`crate::nft::compile::Ruleset::update_from`]
    /// writes. Like the kernel, a failing command leaves the table unchanged.
    pub fn apply(&mut self, transaction: &str) -> Result<(), SimError> {
        let mut next = self.clone();
        for line in transaction
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            next.command(line).map_err(|e| SimError::InCommand {
                line: line.to_string(),
                source: Box::new(e),
            })?;
        }
        *self = next;
        Ok(())
    }

    fn command(&mut self, line: &str) -> Result<(), SimError> {
        let rest = |p: &str| line.strip_prefix(p).map(str::trim);
        if let Some(name) = rest("flush chain inet membrane ") {
            self.chains
                .get_mut(name)
                .ok_or(SimError::NoSuch("chain"))?
                .rules
                .clear();
        } else if let Some(name) = rest("flush map inet membrane ") {
            self.maps
                .get_mut(name)
                .ok_or(SimError::NoSuch("map"))?
                .elements
                .clear();
        } else if let Some(name) = rest("delete chain inet membrane ") {
            let c = self.chains.get(name).ok_or(SimError::NoSuch("chain"))?;
            if !c.rules.is_empty() {
                return Err(SimError::ChainNotEmpty);
            }
            if self.chain_in_use(name) {
                return Err(SimError::Busy("chain"));
            }
            self.chains.remove(name);
        } else if let Some(name) = rest("delete map inet membrane ") {
            if self.map_in_use(name) {
                return Err(SimError::Busy("map"));
            }
            self.maps.remove(name).ok_or(SimError::NoSuch("map"))?;
        } else if let Some(spec) = rest("add map inet membrane ") {
            let (name, body) = spec.split_once(" { ").ok_or(SimError::Syntax("bad map"))?;
            let body = body.trim_end_matches('}').trim();
            let mut map = Map {
                ty: String::new(),
                interval: false,
                elements: vec![],
            };
            for part in body.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(ty) = part.strip_prefix("type ") {
                    map.ty = ty.to_string();
                } else if part == "flags interval" {
                    map.interval = true;
                } else {
                    return Err(SimError::UnknownAttribute(part.to_string()));
                }
            }
            self.add_map(name, map)?;
        } else if let Some(spec) = rest("add chain inet membrane ") {
            match spec.split_once(" { ") {
                Some((name, hook)) => {
                    let hook = hook.trim_end_matches('}').trim().to_string();
                    self.add_chain(name, Some(hook))?;
                }
                None => self.add_chain(spec, None)?,
            }
        } else if let Some(spec) = rest("add element inet membrane ") {
            let (name, body) = spec
                .split_once(" { ")
                .ok_or(SimError::Syntax("bad element list"))?;
            let body = body.trim_end_matches('}');
            self.add_elements(name, &split_elements(body))?;
        } else if let Some(spec) = rest("add rule inet membrane ") {
            let (chain, rule) = spec.split_once(' ').ok_or(SimError::Syntax("bad rule"))?;
            self.add_rule(chain, rule)?;
        } else {
            return Err(SimError::Syntax("unknown command"));
        }
        Ok(())
    }

    fn lookup(&self, map: &str, key: &[u64]) -> Option<&str> {
        let m = self.maps.get(map)?;
        m.elements
            .iter()
            .find(|e| e.key.iter().zip(key).all(|((a, b), k)| a <= k && k <= b))
            .map(|e| e.value.as_str())
    }

    /// Runs a packet through the hook it meets (output for `local_out`, else prerouting).
    pub fn eval(&self, p: &Packet) -> Result<Outcome, SimError> {
        let base = if p.local_out { "out" } else { "pre" };
        let mut st = State {
            mark: 0,
            ctmark: 0,
            out: Outcome::default(),
        };
        let mut stack: Vec<(String, usize)> = vec![(base.to_string(), 0)];
        let mut steps = 0;
        while let Some((chain, idx)) = stack.pop() {
            steps += 1;
            if steps > 10_000 {
                return Err(SimError::Loop);
            }
            let c = self
                .chains
                .get(&chain)
                .ok_or_else(|| SimError::NoChain(chain.to_string()))?;
            let Some(rule) = c.rules.get(idx) else {
                // End of a chain: return to the caller, or the base chain's policy (accept).
                if stack.is_empty() {
                    st.out.accepted = true;
                    return Ok(st.out);
                }
                continue;
            };
            let v = self.eval_rule(rule, p, &mut st)?;
            match v {
                None => stack.push((chain, idx + 1)),
                Some(v) if v == "accept" => {
                    st.out.accepted = true;
                    return Ok(st.out);
                }
                Some(v) if v == "drop" => {
                    st.out.accepted = false;
                    return Ok(st.out);
                }
                Some(v) if v == "return" => {
                    if stack.is_empty() {
                        st.out.accepted = true;
                        return Ok(st.out);
                    }
                }
                Some(v) => {
                    if let Some(t) = v.strip_prefix("jump ") {
                        stack.push((chain, idx + 1));
                        stack.push((t.to_string(), 0));
                    } else if let Some(t) = v.strip_prefix("goto ") {
                        if t.starts_with("to_") && t.ends_with("_proxy") {
                            st.out.proxies.push((chain.clone(), t.to_string()));
                        }
                        stack.push((t.to_string(), 0));
                    } else {
                        return Err(SimError::UnknownVerdict(v.to_string()));
                    }
                }
            }
        }
        st.out.accepted = true;
        Ok(st.out)
    }

    fn eval_rule(
        &self,
        rule: &str,
        p: &Packet,
        st: &mut State,
    ) -> Result<Option<String>, SimError> {
        match parse_rule(rule)? {
            Rule::Verdict(v) => Ok(Some(v)),
            Rule::NoMatch => Ok(None),
            Rule::Log { prefix, then } => {
                st.out.log = Some(prefix);
                Ok(Some(then))
            }
            Rule::SetFromMap {
                ct,
                from_dst,
                map,
                default,
            } => {
                let addr = if from_dst { p.dst } else { p.src };
                let found = self
                    .lookup(map, &[u64::from(u32::from(addr))])
                    .map(scalar)
                    .transpose()?;
                // `… set 2 … set map`: the default survives a miss; without one, a miss
                // leaves what an earlier rule set.
                let current = if ct { st.ctmark } else { st.mark };
                let v = found.map_or(default.unwrap_or(current), |v| v as u32);
                if ct {
                    st.ctmark = v;
                } else {
                    st.mark = v;
                }
                Ok(None)
            }
            Rule::Vmap {
                guard_ports,
                terms,
                map,
            } => {
                if guard_ports && !matches!(p.proto, 6 | 17 | 132) {
                    return Ok(None);
                }
                let mut key = Vec::new();
                for t in &terms {
                    let v: u64 = match t.as_str() {
                        "meta mark" => u64::from(st.mark),
                        "ct mark" => u64::from(st.ctmark),
                        "meta l4proto" => u64::from(p.proto),
                        "th dport" => u64::from(p.port),
                        "icmp type" if p.proto == 1 => u64::from(p.port),
                        "icmpv6 type" if p.proto == 58 => u64::from(p.port),
                        // The expression implies its protocol: other packets do not match.
                        "icmp type" | "icmpv6 type" => return Ok(None),
                        "ip saddr" => u64::from(u32::from(p.src)),
                        "ip daddr" => u64::from(u32::from(p.dst)),
                        other => return Err(SimError::UnknownExpression(other.to_string())),
                    };
                    key.push(v);
                }
                Ok(self.lookup(&map, &key).map(str::to_string))
            }
        }
    }

    /// Names of the maps and the number of elements in each (for tests).
    pub fn map_sizes(&self) -> HashMap<String, usize> {
        self.maps
            .iter()
            .map(|(k, m)| (k.clone(), m.elements.len()))
            .collect()
    }
}

struct State {
    mark: u32,
    ctmark: u32,
    out: Outcome,
}

enum Rule {
    Verdict(String),
    /// Rules that never match a new packet from another interface (`iif lo …`, `ct state …`).
    NoMatch,
    Log {
        prefix: String,
        then: String,
    },
    SetFromMap {
        ct: bool,
        from_dst: bool,
        map: &'static str,
        default: Option<u32>,
    },
    Vmap {
        guard_ports: bool,
        terms: Vec<String>,
        map: String,
    },
}

fn parse_rule(rule: &str) -> Result<Rule, SimError> {
    let r = rule.trim();
    match r {
        "accept" | "drop" | "return" => return Ok(Rule::Verdict(r.into())),
        "iif lo accept"
        | "oif lo accept"
        | "ct state established,related accept"
        | "ct state invalid drop" => {
            return Ok(Rule::NoMatch);
        }
        "meta mark set 2 meta mark set ip saddr map @cidr2id" => {
            return Ok(Rule::SetFromMap {
                ct: false,
                from_dst: false,
                map: "cidr2id",
                default: Some(2),
            });
        }
        "meta mark set ip saddr map @ip2id" => {
            return Ok(Rule::SetFromMap {
                ct: false,
                from_dst: false,
                map: "ip2id",
                default: None,
            });
        }
        "ct mark set 2 ct mark set ip daddr map @cidr2id" => {
            return Ok(Rule::SetFromMap {
                ct: true,
                from_dst: true,
                map: "cidr2id",
                default: Some(2),
            });
        }
        "ct mark set ip daddr map @ip2id" => {
            return Ok(Rule::SetFromMap {
                ct: true,
                from_dst: true,
                map: "ip2id",
                default: None,
            });
        }
        _ => {}
    }
    if let Some(v) = r.strip_prefix("jump ").or_else(|| r.strip_prefix("goto "))
        && !v.contains(' ')
    {
        return Ok(Rule::Verdict(r.into()));
    }
    if let Some(rest) = r.strip_prefix("counter log prefix \"") {
        let (prefix, tail) = rest
            .split_once('"')
            .ok_or(SimError::Syntax("unterminated prefix"))?;
        let then = tail
            .trim()
            .strip_prefix("group 1 queue-threshold 1 ")
            .ok_or(SimError::Syntax(
                "log without group 1 and queue-threshold 1",
            ))?
            .trim();
        return Ok(Rule::Log {
            prefix: prefix.to_string(),
            then: then.to_string(),
        });
    }
    if let Some(rest) = r.strip_prefix("counter return comment \"")
        && rest.ends_with('"')
    {
        return Ok(Rule::Verdict("return".into()));
    }
    if let Some((expr, map)) = r.split_once(" vmap @") {
        let (guard_ports, expr) = match expr.strip_prefix("meta l4proto { tcp, udp, sctp } ") {
            Some(e) => (true, e),
            None => (false, expr),
        };
        let terms: Vec<String> = expr.split(" . ").map(|t| t.trim().to_string()).collect();
        return Ok(Rule::Vmap {
            guard_ports,
            terms,
            map: map.trim().to_string(),
        });
    }
    Err(SimError::UnknownRule(r.to_string()))
}
