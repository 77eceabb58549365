//! The raw map: every rule entry's contribution at the key it wrote, per peer, and the
//! finishing step that turns it into the datapath's map (§9.12).

use super::key::{MapKey, PortKey, mask};
use super::map::{MapEntry, PeerEntries};
use crate::identity::IdentityId;
use crate::model::{L7Policy, Origin};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;

/// One rule entry's contribution to a key.
#[derive(Debug, Clone)]
pub struct Contribution {
    pub origin: Origin,
    pub deny: bool,
    pub l7: Option<Arc<L7Policy>>,
    /// Written as one exact port (not a range, not port 0, not "every port"): only such a
    /// plain allow opens DNS for every name (§9.14).
    pub exact_port: bool,
}

impl PartialEq for Contribution {
    fn eq(&self, other: &Self) -> bool {
        self.origin == other.origin
            && self.deny == other.deny
            && self.exact_port == other.exact_port
            && match (&self.l7, &other.l7) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Contribution {
    pub(super) fn is_special(contributions: &[Contribution]) -> bool {
        contributions.iter().any(|c| c.deny || c.l7.is_some())
    }
}

/// One peer's raw keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerRaw {
    pub(super) keys: HashMap<PortKey, Vec<Contribution>>,
    /// The port prefix lengths in use, sorted.
    pub(super) prefix_lens: Vec<u8>,
}

impl PeerRaw {
    pub(super) fn add(&mut self, key: PortKey, c: Contribution) {
        if !self.prefix_lens.contains(&key.2) {
            self.prefix_lens.push(key.2);
            self.prefix_lens.sort_unstable();
        }
        self.keys.entry(key).or_default().push(c);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct RawMap {
    pub(super) peers: HashMap<IdentityId, Arc<PeerRaw>>,
}

impl RawMap {
    pub(super) fn add(&mut self, key: MapKey, c: Contribution) {
        Arc::make_mut(self.peers.entry(key.peer).or_default()).add(key.port_key(), c);
    }

    pub(super) fn get(&self, key: &MapKey) -> Option<&Vec<Contribution>> {
        self.peers.get(&key.peer)?.keys.get(&key.port_key())
    }

    pub(super) fn peer(&self, peer: IdentityId) -> Option<&Arc<PeerRaw>> {
        self.peers.get(&peer)
    }

    pub(super) fn set_peer(&mut self, peer: IdentityId, chunk: Option<Arc<PeerRaw>>) {
        match chunk {
            Some(c) if !c.is_empty() => {
                self.peers.insert(peer, c);
            }
            _ => {
                self.peers.remove(&peer);
            }
        }
    }

    fn keys_of(&self, peer: IdentityId) -> impl Iterator<Item = MapKey> + '_ {
        self.peers
            .get(&peer)
            .into_iter()
            .flat_map(move |c| c.keys.keys().map(move |pk| MapKey::with_peer(peer, *pk)))
    }

    fn is_special(&self, k: &MapKey) -> bool {
        self.get(k).is_some_and(|c| Contribution::is_special(c))
    }

    /// The keys a first-match lookup needs (all of them, or one peer's): the raw keys plus
    /// the intersection of every deny or L7 key with each key it partially overlaps, to a
    /// fixpoint. A partial overlap always pairs a wildcard-peer key with a peer's key of a
    /// wider port range (two keys of one peer nest or are disjoint), so each key is only
    /// compared with the keys that can be such a partner.
    fn closure(&self, only_peer: Option<IdentityId>) -> HashSet<MapKey> {
        let wild: Vec<MapKey> = self.keys_of(0).collect();
        let (mut all, seeds): (HashSet<MapKey>, Vec<MapKey>) = match only_peer {
            None => {
                let every: Vec<MapKey> = self.peers.keys().flat_map(|p| self.keys_of(*p)).collect();
                (every.iter().copied().collect(), every)
            }
            Some(p) => {
                let own: Vec<MapKey> = self.keys_of(p).collect();
                let seeds = own.iter().chain(wild.iter()).copied().collect();
                (own.into_iter().collect(), seeds)
            }
        };
        let mut work: Vec<MapKey> = seeds.into_iter().filter(|k| self.is_special(k)).collect();
        let mut new = Vec::new();
        while let Some(s) = work.pop() {
            let mut consider = |r: MapKey| {
                if !s.overlaps(&r) || s.covers(&r) || r.covers(&s) {
                    return;
                }
                let i = s.intersection(&r);
                if !all.contains(&i) {
                    new.push(i);
                }
            };
            if s.peer != 0 {
                wild.iter().for_each(|r| consider(*r));
            } else if let Some(p) = only_peer {
                self.keys_of(p).for_each(&mut consider);
            } else if s.protocol != 0 {
                // Peer keys whose port range strictly contains this key's, and L3-only keys.
                for (peer, chunk) in &self.peers {
                    if *peer == 0 {
                        continue;
                    }
                    for plen in chunk.prefix_lens.iter().take_while(|l| **l < s.prefix_len) {
                        let pk = (s.protocol, mask(s.port, *plen), *plen);
                        if chunk.keys.contains_key(&pk) {
                            consider(MapKey::with_peer(*peer, pk));
                        }
                    }
                    if chunk.keys.contains_key(&(0, 0, 0)) {
                        consider(MapKey::with_peer(*peer, (0, 0, 0)));
                    }
                }
            }
            for i in new.drain(..) {
                if all.insert(i) {
                    work.push(i);
                }
            }
        }
        all
    }

    pub(super) fn decide_key(&self, k: &MapKey) -> MapEntry {
        let mut entry = MapEntry::default();
        for (_, contributions) in self.covering(k) {
            for c in contributions {
                entry.deny |= c.deny;
                entry.redirect |= c.l7.is_some();
            }
        }
        if entry.deny {
            entry.redirect = false;
        }
        entry
    }

    /// One peer's finished entries: its raw keys plus the intersections a first-match
    /// lookup needs (deny and L7 keys against every partially overlapping key, to a
    /// fixpoint), each decided from every raw key covering it. Computed from that peer's raw
    /// keys and the every-peer raw keys only: a key for peer X depends on nothing else.
    pub(super) fn finish_peer(&self, peer: IdentityId) -> PeerEntries {
        let mut out = PeerEntries::default();
        for k in self.closure(Some(peer)) {
            out.entries.insert(k.port_key(), self.decide_key(&k));
        }
        out
    }

    /// The raw keys covering `k`, with their contributions.
    pub(super) fn covering<'s>(
        &'s self,
        k: &MapKey,
    ) -> impl Iterator<Item = (MapKey, &'s Vec<Contribution>)> + 's {
        let k = *k;
        let peers: &[IdentityId] = if k.peer == 0 { &[0] } else { &[k.peer, 0] };
        let protos: &[u8] = if k.protocol == 0 {
            &[0]
        } else {
            &[k.protocol, 0]
        };
        let mut found = Vec::new();
        for p in peers {
            let Some(chunk) = self.peers.get(p) else {
                continue;
            };
            for proto in protos {
                for plen in chunk
                    .prefix_lens
                    .iter()
                    .copied()
                    .take_while(|l| *l <= k.prefix_len)
                {
                    let pk = (*proto, mask(k.port, plen), plen);
                    if let Some(c) = chunk.keys.get(&pk) {
                        found.push((MapKey::with_peer(*p, pk), c));
                    }
                }
            }
        }
        found.into_iter()
    }
}
