//! The resolved policy of one endpoint: Cilium's MapState. Keys are (peer identity,
//! protocol, port prefix); deny keys are added wherever a deny overlaps an allow, and merged
//! keys wherever L7 rules overlap other allows, so that one lookup in the datapath's order
//! gives the answer (§9.12).

use crate::identity::{HOST, Identity, IdentityId, IdentityKind, IdentityTable};
use crate::labels::{LabelSet, Selector};
use crate::model::*;
use crate::options::{EnforcementMode, Options};
// Policy-map keys are small integers hashed millions of times: FxHash, not SipHash.
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

mod key;
mod map;
mod raw;

pub use key::{MapKey, PortKey, range_to_prefixes};
use key::{lookup_rank, mask};
pub use map::{MapDelta, MapEntry, PeerDelta, PeerEntries, PolicyMap};
use raw::RawMap;
pub use raw::{Contribution, PeerRaw};
use std::net::IpAddr;
use std::sync::Arc;

/// A matched key with the rule entries behind it, gathered at lookup time so that building
/// the map stays cheap even when hundreds of rules cover every key.
#[derive(Debug, Clone, Default)]
pub struct MapValue<'a> {
    pub deny: bool,
    pub contributions: Vec<&'a Contribution>,
}

impl<'a> MapValue<'a> {
    /// L7 policies to enforce, unless some plain allow wildcards them.
    pub fn l7(&self) -> L7Decision<'a> {
        let mut d = L7Decision {
            policies: Vec::new(),
            plain_allow: false,
            dns_wildcard: false,
        };
        // The agent's allow-localhost is a plain L3 map entry, not part of any rule's L4
        // filter: it wildcards nothing a rule's own port-specific L7 entry for the host asks.
        let some_l7 = self.contributions.iter().any(|c| !c.deny && c.l7.is_some());
        for c in self.contributions.iter().filter(|c| !c.deny) {
            match &c.l7 {
                Some(p) => d.policies.push(p),
                None if some_l7 && c.origin == Origin::AllowLocalhost => {}
                None => {
                    d.plain_allow = true;
                    d.dns_wildcard |= c.exact_port;
                }
            }
        }
        d
    }

    pub fn deciding(&self) -> impl Iterator<Item = &'a Contribution> + '_ {
        let deny = self.deny;
        self.contributions
            .iter()
            .copied()
            .filter(move |c| c.deny == deny)
    }
}

pub struct L7Decision<'a> {
    pub policies: Vec<&'a Arc<L7Policy>>,
    pub plain_allow: bool,
    pub dns_wildcard: bool,
}

/// Why a direction is (not) enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    NotSelected,
    ModeNever,
    ModeAlways,
    InitIdentity,
    /// Rules with entries for this direction select the endpoint.
    Selected {
        rules: Vec<Arc<RuleOrigin>>,
    },
}

/// What one peer's part of a policy is computed from: equal keys give equal parts (the
/// every-peer keys are compared by their shared, interned chunk).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartKey {
    direction: Direction,
    /// (slot, generation, entry).
    entries: Vec<(usize, u64, usize)>,
    ports: Vec<(String, Protocol, u16)>,
    named_ports_epoch: u64,
    wildcard: usize,
    localhost: bool,
    is_host: bool,
}

/// Peer parts shared between policies, and the distinct every-peer parts they are computed
/// against. Content-keyed, so one cache can serve every snapshot of an engine. It only
/// grows; it is emptied when it holds more than `PartCache::LIMIT` parts.
#[derive(Debug, Default)]
pub struct PartCache {
    inner: std::sync::Mutex<PartCacheInner>,
}

#[derive(Debug, Default)]
struct PartCacheInner {
    parts: HashMap<PartKey, PeerPart>,
    wildcards: Vec<Arc<PeerRaw>>,
}

impl PartCache {
    const LIMIT: usize = 200_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, PartCacheInner> {
        // A panic while holding the lock leaves a consistent map (inserts are atomic).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: &PartKey) -> Option<PeerPart> {
        self.lock().parts.get(key).cloned()
    }

    fn insert(&self, key: PartKey, part: PeerPart) {
        let mut inner = self.lock();
        if inner.parts.len() >= Self::LIMIT {
            inner.parts.clear();
        }
        inner.parts.insert(key, part);
    }

    /// The shared chunk equal to `chunk` (registering it if it is new).
    fn intern_wildcard(&self, chunk: Option<Arc<PeerRaw>>) -> Option<Arc<PeerRaw>> {
        let chunk = chunk?;
        let mut inner = self.lock();
        if let Some(w) = inner.wildcards.iter().find(|w| ***w == *chunk) {
            return Some(w.clone());
        }
        if inner.wildcards.len() >= 4096 {
            // Parts are keyed by these chunks' addresses: forget both together.
            inner.wildcards.clear();
            inner.parts.clear();
        }
        inner.wildcards.push(chunk.clone());
        Some(chunk)
    }
}

/// One peer's part of a resolved direction (see [`Repository::peer_part`]).
#[derive(Debug, Clone, Default)]
pub struct PeerPart {
    pub raw: Option<Arc<PeerRaw>>,
    pub entries: Option<Arc<PeerEntries>>,
}

#[derive(Debug, Clone)]
pub struct DirectionPolicy {
    pub direction: Direction,
    pub enforced: bool,
    pub enforcement: Enforcement,
    pub default_deny: bool,
    /// The datapath-shaped map: what the nftables compiler and the lookup read.
    pub map: PolicyMap,
    /// The entries as the rules produced them, for explanations and L7 rules.
    raw: RawMap,
}

#[derive(Debug, Clone)]
pub struct LookupResult<'a> {
    pub key: MapKey,
    pub value: MapValue<'a>,
}

impl DirectionPolicy {
    /// Replaces one peer's part; returns the change.
    pub fn set_peer_part(&mut self, peer: IdentityId, part: PeerPart) -> MapDelta {
        let before = self.map.peer(peer).cloned();
        self.raw.set_peer(peer, part.raw);
        let mut delta = MapDelta::default();
        delta.push(peer, before, part.entries.clone());
        self.map.set_peer(peer, part.entries);
        delta
    }

    /// The keys the rules wrote, before the lookup-order intersections `map` adds, with
    /// their contributions: what Cilium's MapState is built from (`crate::capacity`).
    pub fn raw_keys(&self) -> impl Iterator<Item = (MapKey, &[Contribution])> + '_ {
        self.raw.peers.iter().flat_map(|(peer, chunk)| {
            chunk
                .keys
                .iter()
                .map(move |(pk, cs)| (MapKey::with_peer(*peer, *pk), cs.as_slice()))
        })
    }

    /// Whether some rule wrote keys for this peer.
    pub fn raw_has_peer(&self, peer: IdentityId) -> bool {
        self.raw.peer(peer).is_some()
    }

    /// The every-peer raw keys (shared between policies with the same ones).
    pub fn wildcard_part(&self) -> Option<&Arc<PeerRaw>> {
        self.raw.peer(0)
    }

    fn result(&self, key: MapKey) -> LookupResult<'_> {
        let contributions: Vec<&Contribution> = self
            .raw
            .covering(&key)
            .flat_map(|(_, c)| c.iter())
            .collect();
        let deny = contributions.iter().any(|c| c.deny);
        LookupResult {
            key,
            value: MapValue {
                deny,
                contributions,
            },
        }
    }

    /// The rule entries behind one key.
    pub fn contributions(&self, key: &MapKey) -> Vec<&Contribution> {
        self.raw.covering(key).flat_map(|(_, c)| c.iter()).collect()
    }

    /// The owners of the policy-map entry at `key` as Cilium records them (its
    /// `derivedFromRules`): for a deny, the rules of the deny entry the lookup meets first;
    /// for an allow, the rules that wrote this key, plus, when the key is an L7 redirect,
    /// the L3 rules of the same peer that Cilium merges into that port's L4 filter
    /// (`wildcardL3L4Rule`). A key no rule wrote (an intersection) belongs to the same-peer
    /// rules that Cilium's L4 filter would have listed for it.
    pub fn owners(&self, key: &MapKey, deny: bool) -> Vec<Origin> {
        let mut covering: Vec<(MapKey, &Vec<Contribution>)> = self.raw.covering(key).collect();
        covering.sort_by_key(|(k, _)| lookup_rank(k));
        let mut out: Vec<Origin> = Vec::new();
        let push = |c: &Contribution, out: &mut Vec<Origin>| {
            if !out.contains(&c.origin) {
                out.push(c.origin.clone());
            }
        };
        if deny {
            if let Some((_, cs)) = covering.iter().find(|(_, cs)| cs.iter().any(|c| c.deny)) {
                for c in cs.iter().filter(|c| c.deny) {
                    push(c, &mut out);
                }
            }
            return out;
        }
        let own = self.raw.get(key);
        let redirect = own.is_some_and(|cs| cs.iter().any(|c| !c.deny && c.l7.is_some()));
        match own {
            Some(cs) if cs.iter().any(|c| !c.deny) => {
                for c in cs.iter().filter(|c| !c.deny) {
                    push(c, &mut out);
                }
                if redirect {
                    for (k, cs) in &covering {
                        if k != key && k.peer == key.peer {
                            for c in cs.iter().filter(|c| !c.deny && c.l7.is_none()) {
                                push(c, &mut out);
                            }
                        }
                    }
                }
            }
            _ => {
                for (k, cs) in &covering {
                    if k.peer == key.peer {
                        for c in cs.iter().filter(|c| !c.deny) {
                            push(c, &mut out);
                        }
                    }
                }
                if out.is_empty() {
                    // Only wildcard-peer keys cover it: the first one the lookup meets.
                    if let Some((_, cs)) =
                        covering.iter().find(|(_, cs)| cs.iter().any(|c| !c.deny))
                    {
                        for c in cs.iter().filter(|c| !c.deny) {
                            push(c, &mut out);
                        }
                    }
                }
            }
        }
        out
    }

    /// The datapath's lookup: first match in precedence order, longest port prefix first.
    pub fn lookup(&self, peer: IdentityId, protocol: u8, port: u16) -> Option<LookupResult<'_>> {
        let with_port: [(IdentityId, u8); 4] = [
            (peer, protocol),
            (0, protocol),
            (peer, protocol),
            (0, protocol),
        ];
        for (level, (p, proto)) in with_port.iter().enumerate() {
            if level < 2 {
                for plen in (1..=16u8).rev() {
                    let key = MapKey {
                        peer: *p,
                        protocol: *proto,
                        port: mask(port, plen),
                        prefix_len: plen,
                    };
                    if self.map.contains_key(&key) {
                        return Some(self.result(key));
                    }
                }
            } else {
                let key = MapKey {
                    peer: *p,
                    protocol: *proto,
                    port: 0,
                    prefix_len: 0,
                };
                if self.map.contains_key(&key) {
                    return Some(self.result(key));
                }
            }
        }
        for p in [peer, 0] {
            let key = MapKey {
                peer: p,
                protocol: 0,
                port: 0,
                prefix_len: 0,
            };
            if self.map.contains_key(&key) {
                return Some(self.result(key));
            }
        }
        None
    }
}

/// What the engine needs to know about the endpoint a policy is resolved for.
#[derive(Debug, Clone)]
pub struct Subject<'a> {
    pub identity: &'a Identity,
    /// The host endpoint of a node (host firewall), rather than a pod.
    pub is_host: bool,
    /// Addresses of the subject's own node: the local host for CIDR selection.
    pub local_node_addrs: &'a [IpAddr],
    /// The subject's container ports, for ingress named ports.
    pub own_ports: &'a [(String, Protocol, u16)],
}

/// Every rule, and the selections of their peer selectors over the identity table (Cilium's
/// selector cache). Rules live in slots so that one policy can be added or removed without
/// renumbering the others; each distinct peer selector is evaluated once and kept current
/// as identities come and go.
#[derive(Debug, Clone)]
pub struct Repository {
    rules: Vec<Option<Arc<Rule>>>,
    free_slots: Vec<usize>,
    pub options: Options,
    identities: IdentityTable,
    /// Named ports across the cluster, for egress rules: name → (protocol, port) → how many
    /// endpoints declare it.
    cluster_ports: HashMap<String, HashMap<(Protocol, u16), u32>>,
    /// Per rule slot, per entry: the identities its peers select (`None`: every peer).
    selections: Vec<Vec<Option<Arc<[IdentityId]>>>>,
    /// Per rule slot, per entry: the cached selectors behind the selection.
    entry_selectors: Vec<Vec<Vec<usize>>>,
    selectors: SelectorCache,
    /// Per rule slot: a number that changes whenever the slot gets a new rule, so that
    /// cached parts never mistake a new rule for the one that had the slot before.
    generations: Vec<u64>,
    next_generation: u64,
    /// Changes whenever a named port resolves differently for egress rules.
    named_ports_epoch: u64,
    /// How many rules have `fromRequires`/`toRequires` (none: nothing to narrow).
    rules_with_requires: usize,
}

#[derive(Debug, Clone, Default)]
struct SelectorCache {
    by_key: HashMap<String, usize>,
    entries: Vec<CachedSelector>,
    free: Vec<usize>,
}

#[derive(Debug, Clone)]
struct CachedSelector {
    selector: PeerSelector,
    key: String,
    /// Sorted.
    selected: Vec<IdentityId>,
    /// The (rule slot, entry) pairs that use it.
    users: Vec<(usize, usize)>,
}

/// A rule slot and an entry index inside it.
pub type EntryRef = (usize, usize);

impl Repository {
    pub fn new(
        rules: Vec<Rule>,
        options: Options,
        identities: IdentityTable,
        cluster_ports: &[(String, Protocol, u16)],
    ) -> Self {
        let mut repo = Repository {
            rules: Vec::with_capacity(rules.len()),
            free_slots: Vec::new(),
            options,
            identities,
            cluster_ports: HashMap::default(),
            selections: Vec::with_capacity(rules.len()),
            entry_selectors: Vec::with_capacity(rules.len()),
            selectors: SelectorCache::default(),
            generations: Vec::with_capacity(rules.len()),
            next_generation: 0,
            named_ports_epoch: 0,
            rules_with_requires: 0,
        };
        for (name, proto, port) in cluster_ports {
            repo.add_named_port(name, *proto, *port);
        }
        for rule in rules {
            repo.add_rule(rule);
        }
        repo
    }

    /// Adds a rule and computes its selections; returns its slot.
    pub fn add_rule(&mut self, rule: Rule) -> usize {
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                self.rules.push(None);
                self.selections.push(Vec::new());
                self.entry_selectors.push(Vec::new());
                self.generations.push(0);
                self.rules.len() - 1
            }
        };
        self.next_generation += 1;
        self.generations[slot] = self.next_generation;
        if !rule.requires_ingress.is_empty() || !rule.requires_egress.is_empty() {
            self.rules_with_requires += 1;
        }
        let mut sels = Vec::with_capacity(rule.entries.len());
        let mut per_entry = Vec::with_capacity(rule.entries.len());
        for (entry_index, entry) in rule.entries.iter().enumerate() {
            match &entry.peers {
                Peers::Wildcard => {
                    per_entry.push(None);
                    sels.push(Vec::new());
                }
                Peers::Selectors(list) => {
                    let ids: Vec<usize> = list
                        .iter()
                        .map(|s| self.intern_selector(s, (slot, entry_index)))
                        .collect();
                    per_entry.push(Some(self.union_of(&ids)));
                    sels.push(ids);
                }
            }
        }
        self.rules[slot] = Some(Arc::new(rule));
        self.selections[slot] = per_entry;
        self.entry_selectors[slot] = sels;
        slot
    }

    /// Removes the rule in `slot` (and the selectors only it used).
    pub fn remove_rule(&mut self, slot: usize) -> Option<Arc<Rule>> {
        let rule = self.rules.get_mut(slot)?.take()?;
        if !rule.requires_ingress.is_empty() || !rule.requires_egress.is_empty() {
            self.rules_with_requires = self.rules_with_requires.saturating_sub(1);
        }
        for (entry_index, ids) in std::mem::take(&mut self.entry_selectors[slot])
            .into_iter()
            .enumerate()
        {
            for id in ids {
                self.release_selector(id, (slot, entry_index));
            }
        }
        self.selections[slot].clear();
        self.free_slots.push(slot);
        Some(rule)
    }

    fn intern_selector(&mut self, s: &PeerSelector, user: EntryRef) -> usize {
        let key = selector_cache_key(s);
        if let Some(id) = self.selectors.by_key.get(&key) {
            self.selectors.entries[*id].users.push(user);
            return *id;
        }
        let selected: Vec<IdentityId> = self
            .identities
            .iter()
            .filter(|i| peer_selects(s, i, &self.options))
            .map(|i| i.id)
            .collect();
        let cached = CachedSelector {
            selector: s.clone(),
            key: key.clone(),
            selected,
            users: vec![user],
        };
        let id = match self.selectors.free.pop() {
            Some(id) => {
                self.selectors.entries[id] = cached;
                id
            }
            None => {
                self.selectors.entries.push(cached);
                self.selectors.entries.len() - 1
            }
        };
        self.selectors.by_key.insert(key, id);
        id
    }

    fn release_selector(&mut self, id: usize, user: EntryRef) {
        let Some(entry) = self.selectors.entries.get_mut(id) else {
            return;
        };
        if let Some(pos) = entry.users.iter().position(|u| *u == user) {
            entry.users.swap_remove(pos);
        }
        if entry.users.is_empty() {
            let key = std::mem::take(&mut entry.key);
            entry.selected = Vec::new();
            self.selectors.by_key.remove(&key);
            self.selectors.free.push(id);
        }
    }

    fn union_of(&self, selector_ids: &[usize]) -> Arc<[IdentityId]> {
        if let [one] = selector_ids {
            return self.selectors.entries[*one].selected.as_slice().into();
        }
        let mut ids: Vec<IdentityId> = selector_ids
            .iter()
            .flat_map(|s| self.selectors.entries[*s].selected.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into()
    }

    /// Allocates nothing: tells the selector cache that `id` (already in the identity table)
    /// exists. Returns the rule entries whose selection gained it.
    pub fn identity_added(&mut self, id: IdentityId) -> Vec<EntryRef> {
        let Some(identity) = self.identities.get(id).cloned() else {
            return Vec::new();
        };
        let mut gained = Vec::new();
        for cached in &mut self.selectors.entries {
            if cached.users.is_empty() || !peer_selects(&cached.selector, &identity, &self.options)
            {
                continue;
            }
            if let Err(pos) = cached.selected.binary_search(&id) {
                cached.selected.insert(pos, id);
                gained.extend(cached.users.iter().copied());
            }
        }
        self.refresh_selections(&mut gained);
        gained
    }

    /// Removes `id` from every selection and from the identity table. Returns the rule
    /// entries whose selection lost it.
    pub fn identity_removed(&mut self, id: IdentityId) -> Vec<EntryRef> {
        let mut lost = Vec::new();
        for cached in &mut self.selectors.entries {
            if let Ok(pos) = cached.selected.binary_search(&id) {
                cached.selected.remove(pos);
                lost.extend(cached.users.iter().copied());
            }
        }
        self.identities.release(id);
        self.refresh_selections(&mut lost);
        lost
    }

    fn refresh_selections(&mut self, entries: &mut Vec<EntryRef>) {
        entries.sort_unstable();
        entries.dedup();
        for (slot, entry) in entries.iter() {
            let ids = self.entry_selectors[*slot][*entry].clone();
            let union = self.union_of(&ids);
            self.selections[*slot][*entry] = Some(union);
        }
    }

    pub fn identities_mut(&mut self) -> &mut IdentityTable {
        &mut self.identities
    }

    /// Records one endpoint's named container port. Returns whether the port name now
    /// resolves differently for egress rules.
    pub fn add_named_port(&mut self, name: &str, protocol: Protocol, port: u16) -> bool {
        // The common case, another endpoint declaring a known port, changes nothing.
        if let Some(n) = self
            .cluster_ports
            .get_mut(name)
            .and_then(|set| set.get_mut(&(protocol, port)))
        {
            *n += 1;
            return false;
        }
        let before = self.egress_named_port_numbers(name);
        *self
            .cluster_ports
            .entry(name.to_string())
            .or_default()
            .entry((protocol, port))
            .or_default() += 1;
        let changed = before != self.egress_named_port_numbers(name);
        self.named_ports_epoch += u64::from(changed);
        changed
    }

    /// The inverse of `add_named_port`.
    pub fn remove_named_port(&mut self, name: &str, protocol: Protocol, port: u16) -> bool {
        if self
            .cluster_ports
            .get(name)
            .and_then(|set| set.get(&(protocol, port)))
            .is_some_and(|n| *n > 1)
        {
            if let Some(n) = self
                .cluster_ports
                .get_mut(name)
                .and_then(|set| set.get_mut(&(protocol, port)))
            {
                *n -= 1;
            }
            return false;
        }
        let before = self.egress_named_port_numbers(name);
        if let Some(set) = self.cluster_ports.get_mut(name) {
            if let Some(n) = set.get_mut(&(protocol, port)) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    set.remove(&(protocol, port));
                }
            }
            if set.is_empty() {
                self.cluster_ports.remove(name);
            }
        }
        let changed = before != self.egress_named_port_numbers(name);
        self.named_ports_epoch += u64::from(changed);
        changed
    }

    fn egress_named_port_numbers(&self, name: &str) -> Vec<(Protocol, u16)> {
        let mut v: Vec<(Protocol, u16)> = self
            .cluster_ports
            .get(name)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    pub fn rule(&self, slot: usize) -> Option<&Arc<Rule>> {
        self.rules.get(slot).and_then(Option::as_ref)
    }

    /// Every rule, in slot order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().flatten().map(|r| &**r)
    }

    /// Whether a rule's subject selector selects an endpoint.
    pub fn rule_selects(rule: &Rule, subject: &Subject<'_>) -> bool {
        match &rule.subject {
            crate::model::Subject::Endpoints(s) => {
                !subject.is_host && s.matches(&subject.identity.labels)
            }
            crate::model::Subject::Nodes(s) => {
                subject.is_host && s.matches(&subject.identity.labels)
            }
        }
    }

    pub fn identities(&self) -> &IdentityTable {
        &self.identities
    }

    /// Rules whose subject selector selects this endpoint, with their slots.
    pub fn selecting_rules<'r>(
        &'r self,
        subject: &'r Subject<'_>,
    ) -> impl Iterator<Item = (usize, &'r Rule)> + 'r {
        self.rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i, &**r)))
            .filter(move |(_, r)| Self::rule_selects(r, subject))
    }

    pub fn resolve(&self, subject: &Subject<'_>, direction: Direction) -> DirectionPolicy {
        self.resolve_cached(subject, direction, &PartCache::default())
    }

    /// Resolves one direction of a subject's policy, peer by peer: the every-peer keys
    /// first, then each selected peer's part from the rule entries that select it, shared
    /// through `cache` with every policy whose part for some peer comes from the same
    /// entries, ports and every-peer keys.
    pub fn resolve_cached(
        &self,
        subject: &Subject<'_>,
        direction: Direction,
        cache: &PartCache,
    ) -> DirectionPolicy {
        let selecting: Vec<(usize, &Rule)> = self.selecting_rules(subject).collect();
        let with_dir: Vec<&(usize, &Rule)> =
            selecting.iter().filter(|(_, r)| r.has(direction)).collect();
        let enforcement = match self.options.enforcement {
            EnforcementMode::Never => Enforcement::ModeNever,
            EnforcementMode::Always => Enforcement::ModeAlways,
            EnforcementMode::Default if subject.identity.labels.has_reserved("init") => {
                Enforcement::InitIdentity
            }
            EnforcementMode::Default if !with_dir.is_empty() => Enforcement::Selected {
                rules: with_dir.iter().map(|(_, r)| r.origin.clone()).collect(),
            },
            EnforcementMode::Default => Enforcement::NotSelected,
        };
        let enforced = !matches!(
            enforcement,
            Enforcement::NotSelected | Enforcement::ModeNever
        );
        let mut policy = DirectionPolicy {
            direction,
            enforced,
            enforcement,
            default_deny: enforced,
            map: PolicyMap::default(),
            raw: RawMap::default(),
        };
        if !enforced {
            return policy;
        }
        let mut raw = RawMap::default();
        // §3.2: default deny unless every rule with entries here opted out.
        let opted_out: Vec<&Rule> = with_dir
            .iter()
            .map(|(_, r)| *r)
            .filter(|r| r.default_deny(direction) == Some(false))
            .collect();
        // Forced enforcement (mode always, the init identity) ignores the opt-out, as Cilium's
        // computePolicyEnforcementAndRules returns before reading enableDefaultDeny.
        let forced = !matches!(policy.enforcement, Enforcement::Selected { .. });
        if !forced && !with_dir.is_empty() && opted_out.len() == with_dir.len() {
            policy.default_deny = false;
            for r in opted_out {
                let origin = Origin::DefaultAllow {
                    rule: r.origin.clone(),
                    direction,
                };
                raw.add(
                    MapKey {
                        peer: 0,
                        protocol: 0,
                        port: 0,
                        prefix_len: 0,
                    },
                    Contribution {
                        origin,
                        deny: false,
                        l7: None,
                        exact_port: false,
                    },
                );
            }
        }
        let requires: Vec<&Selector> = selecting
            .iter()
            .flat_map(|(_, r)| match direction {
                Direction::Ingress => r.requires_ingress.iter(),
                Direction::Egress => r.requires_egress.iter(),
            })
            .collect();
        // Every-peer keys: entries without an L3 field.
        let slots: Vec<usize> = selecting.iter().map(|(s, _)| *s).collect();
        let mut per_peer: HashMap<IdentityId, Vec<EntryRef>> = HashMap::default();
        for (slot, rule) in &selecting {
            for (i, entry) in rule.entries.iter().enumerate() {
                if entry.direction != direction || entry.allows_nothing() {
                    continue;
                }
                let wildcard = matches!(
                    self.selections.get(*slot).and_then(|r| r.get(i)),
                    Some(None)
                );
                if wildcard {
                    self.add_entry(&mut raw, subject, (*slot, i), &requires, Some(0));
                    continue;
                }
                for p in self.entry_peers(*slot, i, entry, subject, &requires) {
                    per_peer.entry(p).or_default().push((*slot, i));
                }
            }
        }
        let localhost =
            direction == Direction::Ingress && self.options.allow_localhost && !subject.is_host;
        if localhost {
            per_peer.entry(HOST).or_default();
        }
        let wild = cache.intern_wildcard(raw.peer(0).cloned());
        policy.raw.set_peer(0, wild.clone());
        let mut wild_only = RawMap::default();
        wild_only.set_peer(0, wild);
        let wild_entries = wild_only.finish_peer(0);
        policy.map.set_peer(
            0,
            (!wild_entries.is_empty()).then(|| Arc::new(wild_entries)),
        );
        for (peer, entries) in per_peer {
            let part = self.cached_part(&policy, subject, &slots, peer, &entries, cache);
            policy.raw.set_peer(peer, part.raw);
            policy.map.set_peer(peer, part.entries);
        }
        policy
    }

    /// A peer's part, from the cache or computed (see `peer_part`). `entries` must be the
    /// rule entries whose peers select it after `fromRequires`/`toRequires`.
    pub fn cached_part(
        &self,
        policy: &DirectionPolicy,
        subject: &Subject<'_>,
        selecting: &[usize],
        peer: IdentityId,
        entries: &[EntryRef],
        cache: &PartCache,
    ) -> PeerPart {
        let d = policy.direction;
        let key = PartKey {
            direction: d,
            entries: entries
                .iter()
                .map(|(s, e)| (*s, self.generations.get(*s).copied().unwrap_or(0), *e))
                .collect(),
            ports: match d {
                Direction::Ingress => subject.own_ports.to_vec(),
                Direction::Egress => Vec::new(),
            },
            named_ports_epoch: self.named_ports_epoch,
            wildcard: policy
                .wildcard_part()
                .map_or(0, |w| Arc::as_ptr(w) as usize),
            localhost: peer == HOST
                && d == Direction::Ingress
                && self.options.allow_localhost
                && !subject.is_host,
            is_host: subject.is_host,
        };
        if let Some(p) = cache.get(&key) {
            return p;
        }
        let part = self.peer_part(policy, subject, selecting, peer, entries);
        cache.insert(key, part.clone());
        part
    }

    /// The entries among `candidates` (of rules selecting every subject concerned) that
    /// select `peer` in this direction, before `fromRequires`/`toRequires`.
    pub fn entries_for_peer(
        &self,
        direction: Direction,
        peer: IdentityId,
        candidates: &[EntryRef],
    ) -> Vec<EntryRef> {
        candidates
            .iter()
            .filter(|(slot, i)| {
                let Some(entry) = self.rule(*slot).and_then(|r| r.entries.get(*i)) else {
                    return false;
                };
                entry.direction == direction
                    && !entry.allows_nothing()
                    && matches!(
                        self.selections.get(*slot).and_then(|r| r.get(*i)),
                        Some(Some(ids)) if ids.binary_search(&peer).is_ok()
                    )
            })
            .copied()
            .collect()
    }

    /// The entries whose peers `fromRequires`/`toRequires` do not narrow.
    pub fn without_endpoint_peers(&self, entries: &[EntryRef]) -> Vec<EntryRef> {
        entries
            .iter()
            .filter(|(slot, i)| {
                self.rule(*slot)
                    .and_then(|r| r.entries.get(*i))
                    .is_some_and(|e| !e.endpoint_peers)
            })
            .copied()
            .collect()
    }

    /// The rule entries among `candidates` that select `peer` in a subject's policy: of a
    /// rule selecting it, in this direction, after `fromRequires`/`toRequires`.
    pub fn entries_selecting(
        &self,
        subject: &Subject<'_>,
        selecting: &[usize],
        direction: Direction,
        peer: IdentityId,
        candidates: &[EntryRef],
    ) -> Vec<EntryRef> {
        let requires = self.requires_of(selecting, direction);
        let excluded = !requires.is_empty()
            && !self
                .identities
                .get(peer)
                .is_some_and(|i| requires.iter().all(|r| r.matches(&i.labels)));
        candidates
            .iter()
            .filter(|(slot, i)| {
                if selecting.binary_search(slot).is_err() {
                    return false;
                }
                let Some(entry) = self.rule(*slot).and_then(|r| r.entries.get(*i)) else {
                    return false;
                };
                if entry.direction != direction || entry.allows_nothing() {
                    return false;
                }
                if excluded && entry.endpoint_peers {
                    return false;
                }
                match self.selections.get(*slot).and_then(|r| r.get(*i)) {
                    Some(Some(ids)) if ids.binary_search(&peer).is_ok() => true,
                    // The local host selected through its node's address (cidr-match-nodes).
                    Some(Some(_)) if peer == HOST && self.options.cidr_match_nodes => self
                        .entry_peers(*slot, *i, entry, subject, &requires)
                        .contains(&peer),
                    _ => false,
                }
            })
            .copied()
            .collect()
    }

    /// Adds the keys one rule entry contributes to a subject's raw map, for every peer it
    /// selects or only for `only_peer`.
    fn add_entry(
        &self,
        raw: &mut RawMap,
        subject: &Subject<'_>,
        (slot, entry_index): EntryRef,
        requires: &[&Selector],
        only_peer: Option<IdentityId>,
    ) {
        let Some(entry) = self.rule(slot).and_then(|r| r.entries.get(entry_index)) else {
            return;
        };
        if entry.allows_nothing() {
            return;
        }
        let mut peers = self.entry_peers(slot, entry_index, entry, subject, requires);
        if let Some(only) = only_peer {
            peers.retain(|p| *p == only);
        }
        if peers.is_empty() {
            return;
        }
        let ports = self.entry_ports(entry, subject, entry.direction);
        for (port_key, l7, exact_port) in &ports {
            for peer in &peers {
                let key = MapKey {
                    peer: *peer,
                    ..*port_key
                };
                raw.add(
                    key,
                    Contribution {
                        origin: Origin::Rule(entry.origin.clone()),
                        deny: entry.deny,
                        l7: l7.clone(),
                        exact_port: *exact_port,
                    },
                );
            }
        }
    }

    /// The `fromRequires`/`toRequires` of every rule selecting the subject, for a direction.
    fn requires_of<'r>(&'r self, slots: &[usize], direction: Direction) -> Vec<&'r Selector> {
        if self.rules_with_requires == 0 {
            return Vec::new();
        }
        slots
            .iter()
            .filter_map(|s| self.rule(*s))
            .flat_map(|r| match direction {
                Direction::Ingress => r.requires_ingress.iter(),
                Direction::Egress => r.requires_egress.iter(),
            })
            .collect()
    }

    /// One peer identity's part of a resolved policy, computed alone: its raw keys from
    /// `entries` (the rule entries that select it, of rules selecting the subject, in this
    /// direction) and its finished entries against the policy's every-peer keys. A key for
    /// peer X depends only on raw keys for X and for every peer, so this is exactly what a
    /// full resolution would give that peer. `selecting`: the slots of the rules selecting
    /// the subject (for `fromRequires`/`toRequires`).
    pub fn peer_part(
        &self,
        policy: &DirectionPolicy,
        subject: &Subject<'_>,
        selecting: &[usize],
        peer: IdentityId,
        entries: &[EntryRef],
    ) -> PeerPart {
        let requires = self.requires_of(selecting, policy.direction);
        let mut raw = RawMap::default();
        for e in entries {
            self.add_entry(&mut raw, subject, *e, &requires, Some(peer));
        }
        if peer == HOST
            && policy.direction == Direction::Ingress
            && self.options.allow_localhost
            && !subject.is_host
        {
            raw.add(
                MapKey {
                    peer: HOST,
                    protocol: 0,
                    port: 0,
                    prefix_len: 0,
                },
                Contribution {
                    origin: Origin::AllowLocalhost,
                    deny: false,
                    l7: None,
                    exact_port: false,
                },
            );
        }
        let own = raw.peer(peer).cloned();
        let mut with_wild = RawMap::default();
        with_wild.set_peer(peer, own.clone());
        with_wild.set_peer(0, policy.raw.peer(0).cloned());
        let finished = with_wild.finish_peer(peer);
        PeerPart {
            raw: own,
            entries: (!finished.is_empty()).then(|| Arc::new(finished)),
        }
    }

    /// Whether a rule's `fromRequires`/`toRequires` (of any rule selecting the subject) keep
    /// an identity out of `fromEndpoints`/`toEndpoints` peers.
    pub fn requires_exclude(
        &self,
        selecting: &[usize],
        direction: Direction,
        peer: IdentityId,
    ) -> bool {
        let requires = self.requires_of(selecting, direction);
        !requires.is_empty()
            && !self
                .identities
                .get(peer)
                .is_some_and(|i| requires.iter().all(|r| r.matches(&i.labels)))
    }

    fn entry_peers(
        &self,
        rule_index: usize,
        entry_index: usize,
        entry: &Entry,
        subject: &Subject<'_>,
        requires: &[&Selector],
    ) -> Vec<IdentityId> {
        let selected = self
            .selections
            .get(rule_index)
            .and_then(|r| r.get(entry_index))
            .cloned()
            .flatten();
        // fromRequires/toRequires narrow only fromEndpoints/toEndpoints selectors (Cilium's
        // GetSourceEndpointSelectorsWithRequirements), in allow and deny sections alike.
        let narrow = entry.endpoint_peers && !requires.is_empty();
        let mut ids: Vec<IdentityId> = match &selected {
            None => return vec![0],
            Some(ids) => ids.to_vec(),
        };
        // The local host's address is the subject's node: CIDR selection of `host` depends on it.
        if self.options.cidr_match_nodes
            && let Peers::Selectors(list) = &entry.peers
        {
            let host_in_cidr = list.iter().any(|s| match s {
                PeerSelector::Cidr { net, except } => subject
                    .local_node_addrs
                    .iter()
                    .any(|a| net.contains(a) && !except.iter().any(|e| e.contains(a))),
                _ => false,
            });
            if host_in_cidr && !ids.contains(&HOST) {
                ids.push(HOST);
            }
        }
        if narrow {
            ids.retain(|id| {
                self.identities
                    .get(*id)
                    .is_some_and(|i| requires.iter().all(|r| r.matches(&i.labels)))
            });
        }
        ids
    }

    fn entry_ports(
        &self,
        entry: &Entry,
        subject: &Subject<'_>,
        direction: Direction,
    ) -> Vec<(MapKey, Option<Arc<L7Policy>>, bool)> {
        let mut out = Vec::new();
        if entry.ports.is_none() && entry.icmps.is_none() {
            out.push((
                MapKey {
                    peer: 0,
                    protocol: 0,
                    port: 0,
                    prefix_len: 0,
                },
                None,
                false,
            ));
        }
        for icmp in entry.icmps.iter().flatten() {
            let protocol = if icmp.v6 {
                Protocol::Icmpv6
            } else {
                Protocol::Icmp
            };
            out.push((
                MapKey {
                    peer: 0,
                    protocol: protocol.number(),
                    port: u16::from(icmp.icmp_type),
                    prefix_len: 16,
                },
                None,
                true,
            ));
        }
        for rule in entry.ports.iter().flatten() {
            for spec in &rule.ports {
                let resolved: Vec<(u16, u16)> = match &spec.port {
                    PortValue::Range(lo, hi) => vec![(*lo, *hi)],
                    PortValue::Named(name) => self
                        .named_port(name, spec.protocol, subject, direction)
                        .into_iter()
                        .map(|p| (p, p))
                        .collect(),
                };
                for (lo, hi) in resolved {
                    let exact = lo == hi && !(lo == 0 && hi == 65535);
                    for (port, prefix_len) in range_to_prefixes(lo, hi) {
                        out.push((
                            MapKey {
                                peer: 0,
                                protocol: spec.protocol.number(),
                                port,
                                prefix_len,
                            },
                            rule.l7.clone(),
                            exact,
                        ));
                    }
                }
            }
        }
        out
    }

    /// §9.5: ingress names resolve against the endpoint's own ports, egress names across the
    /// cluster, where a name with two different numbers resolves to nothing.
    fn named_port(
        &self,
        name: &str,
        protocol: Protocol,
        subject: &Subject<'_>,
        direction: Direction,
    ) -> Option<u16> {
        match direction {
            Direction::Ingress => subject
                .own_ports
                .iter()
                .find(|(n, p, _)| n == name && *p == protocol)
                .map(|(_, _, port)| *port),
            Direction::Egress => {
                let set = self.cluster_ports.get(name)?;
                let ports: HashSet<u16> = set.keys().map(|(_, p)| *p).collect();
                if ports.len() != 1 {
                    return None;
                }
                set.keys()
                    .find(|(p, _)| *p == protocol)
                    .map(|(_, port)| *port)
            }
        }
    }
}

fn selector_cache_key(s: &PeerSelector) -> String {
    match s {
        PeerSelector::Labels(sel) => format!("L{sel:?}"),
        other => format!("O{other}"),
    }
}

/// Whether a peer selector selects an identity (the selector cache's question).
pub fn peer_selects(s: &PeerSelector, identity: &Identity, options: &Options) -> bool {
    match s {
        PeerSelector::Labels(sel) => sel.matches(&identity.labels),
        PeerSelector::Cidr { net, except } => {
            let cidr_selectable = match identity.kind {
                IdentityKind::Cidr => true,
                IdentityKind::Node => options.cidr_match_nodes,
                _ => false,
            };
            cidr_selectable
                && identity
                    .addr
                    .is_some_and(|a| net.contains(&a) && !except.iter().any(|e| e.contains(&a)))
        }
        PeerSelector::Fqdn(m) => {
            identity.kind == IdentityKind::Cidr && identity.fqdn_names.iter().any(|n| m.matches(n))
        }
        // Services are expanded by the cluster model before resolution.
        PeerSelector::Service { .. } => false,
    }
}

/// Labels of a host endpoint: `reserved:host` plus the node's labels.
pub fn host_labels(node_labels: &[(String, String)]) -> LabelSet {
    let mut labels = vec![crate::labels::Label::reserved("host")];
    labels.extend(
        node_labels
            .iter()
            .map(|(k, v)| crate::labels::Label::k8s(k, v)),
    );
    LabelSet::new(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_prefixes() {
        assert_eq!(range_to_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(range_to_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(range_to_prefixes(8000, 8003), vec![(8000, 14)]);
        let p = range_to_prefixes(8000, 8080);
        let covered: u32 = p.iter().map(|(_, l)| 1u32 << (16 - l)).sum();
        assert_eq!(covered, 81);
        assert_eq!(
            range_to_prefixes(1, 65535)
                .iter()
                .map(|(_, l)| 1u32 << (16 - l))
                .sum::<u32>(),
            65535
        );
    }

    #[test]
    fn key_geometry() {
        let any = MapKey {
            peer: 0,
            protocol: 0,
            port: 0,
            prefix_len: 0,
        };
        let tcp80 = MapKey {
            peer: 0,
            protocol: 6,
            port: 80,
            prefix_len: 16,
        };
        let id_any = MapKey {
            peer: 300,
            protocol: 0,
            port: 0,
            prefix_len: 0,
        };
        assert!(any.covers(&tcp80));
        assert!(!tcp80.covers(&id_any));
        assert!(tcp80.overlaps(&id_any));
        assert_eq!(
            tcp80.intersection(&id_any),
            MapKey {
                peer: 300,
                protocol: 6,
                port: 80,
                prefix_len: 16
            }
        );
        assert_eq!(
            MapKey {
                peer: 0,
                protocol: 6,
                port: 8000,
                prefix_len: 14
            }
            .port_range(),
            (8000, 8003)
        );
    }
}
