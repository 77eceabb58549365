//! The finished policy map, stored per peer: a peer's entries are one shared chunk, so an
//! identity that appears in hundreds of endpoints' policies with the same entries is one
//! allocation, and a change is reported per peer without copying the entries.

use super::key::{MapKey, PortKey};
use crate::identity::IdentityId;
use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

/// What a key decides in the datapath: drop, or pass (through a proxy when `redirect`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MapEntry {
    pub deny: bool,
    pub redirect: bool,
}

/// One peer's entries (peer 0: every peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerEntries {
    pub(super) entries: HashMap<PortKey, MapEntry>,
}

impl PeerEntries {
    pub fn iter(&self) -> impl Iterator<Item = (PortKey, MapEntry)> + '_ {
        self.entries.iter().map(|(k, v)| (*k, *v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A resolved direction's map, per peer.
#[derive(Debug, Clone, Default)]
pub struct PolicyMap {
    pub(super) peers: HashMap<IdentityId, Arc<PeerEntries>>,
}

impl PolicyMap {
    pub fn get(&self, key: &MapKey) -> Option<MapEntry> {
        self.peers
            .get(&key.peer)?
            .entries
            .get(&key.port_key())
            .copied()
    }

    pub fn contains_key(&self, key: &MapKey) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (MapKey, MapEntry)> + '_ {
        self.peers.iter().flat_map(|(peer, chunk)| {
            chunk
                .entries
                .iter()
                .map(move |(pk, v)| (MapKey::with_peer(*peer, *pk), *v))
        })
    }

    pub fn keys(&self) -> impl Iterator<Item = MapKey> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn len(&self) -> usize {
        self.peers.values().map(|c| c.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.values().all(|c| c.entries.is_empty())
    }

    /// One peer's entries.
    pub fn peer(&self, peer: IdentityId) -> Option<&Arc<PeerEntries>> {
        self.peers.get(&peer)
    }

    pub(super) fn set_peer(&mut self, peer: IdentityId, chunk: Option<Arc<PeerEntries>>) {
        match chunk {
            Some(c) if !c.entries.is_empty() => {
                self.peers.insert(peer, c);
            }
            _ => {
                self.peers.remove(&peer);
            }
        }
    }
}

/// One peer's entries replaced: what was there and what is there now.
#[derive(Debug, Clone, Default)]
pub struct PeerDelta {
    pub peer: IdentityId,
    pub before: Option<Arc<PeerEntries>>,
    pub after: Option<Arc<PeerEntries>>,
}

impl PartialEq for PeerDelta {
    fn eq(&self, other: &Self) -> bool {
        self.peer == other.peer && self.before == other.before && self.after == other.after
    }
}

impl Eq for PeerDelta {}

/// How a resolved map changed, peer by peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapDelta {
    pub peers: Vec<PeerDelta>,
}

impl MapDelta {
    /// The peers whose chunks differ between two maps.
    pub fn between(before: &PolicyMap, after: &PolicyMap) -> MapDelta {
        let mut peers: Vec<IdentityId> = before
            .peers
            .keys()
            .chain(after.peers.keys())
            .copied()
            .collect();
        peers.sort_unstable();
        peers.dedup();
        let mut delta = MapDelta::default();
        for p in peers {
            let (b, a) = (before.peers.get(&p), after.peers.get(&p));
            let same = match (b, a) {
                (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
                (None, None) => true,
                _ => false,
            };
            if !same {
                delta.peers.push(PeerDelta {
                    peer: p,
                    before: b.cloned(),
                    after: a.cloned(),
                });
            }
        }
        delta
    }

    pub fn push(
        &mut self,
        peer: IdentityId,
        before: Option<Arc<PeerEntries>>,
        after: Option<Arc<PeerEntries>>,
    ) {
        let same = match (&before, &after) {
            (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x == y,
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.peers.push(PeerDelta {
                peer,
                before,
                after,
            });
        }
    }

    /// Keys added or whose entry changed.
    pub fn added(&self) -> Vec<(MapKey, MapEntry)> {
        let mut out = Vec::new();
        for d in &self.peers {
            for (pk, v) in d.after.iter().flat_map(|c| c.entries.iter()) {
                let was = d.before.as_ref().and_then(|b| b.entries.get(pk));
                if was != Some(v) {
                    out.push((MapKey::with_peer(d.peer, *pk), *v));
                }
            }
        }
        out.sort_unstable_by_key(|(k, _)| *k);
        out
    }

    /// Keys removed.
    pub fn removed(&self) -> Vec<MapKey> {
        let mut out = Vec::new();
        for d in &self.peers {
            for pk in d.before.iter().flat_map(|c| c.entries.keys()) {
                if !d.after.as_ref().is_some_and(|a| a.entries.contains_key(pk)) {
                    out.push(MapKey::with_peer(d.peer, *pk));
                }
            }
        }
        out.sort_unstable();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Folds a later delta in: per peer, the earliest `before` and the latest `after`.
    pub fn fold(&mut self, later: MapDelta) {
        for d in later.peers {
            match self.peers.iter_mut().find(|x| x.peer == d.peer) {
                Some(x) => x.after = d.after,
                None => self.peers.push(d),
            }
        }
        self.peers.retain(|d| match (&d.before, &d.after) {
            (Some(x), Some(y)) => !(Arc::ptr_eq(x, y) || x == y),
            (None, None) => false,
            _ => true,
        });
    }
}
