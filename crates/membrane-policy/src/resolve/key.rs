//! Policy-map keys: (peer identity, protocol, port prefix), their geometry and the order
//! in which the datapath's lookup meets them.

use crate::identity::IdentityId;

/// A policy-map key. `peer == 0` and `protocol == 0` mean any; `prefix_len` is how many
/// leading bits of `port` are fixed (0: every port, 16: exactly `port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapKey {
    pub peer: IdentityId,
    pub protocol: u8,
    pub port: u16,
    pub prefix_len: u8,
}

impl MapKey {
    pub(super) fn covers(&self, other: &MapKey) -> bool {
        (self.peer == 0 || self.peer == other.peer)
            && (self.protocol == 0 || self.protocol == other.protocol)
            && self.prefix_len <= other.prefix_len
            && mask(other.port, self.prefix_len) == self.port
    }

    pub(super) fn overlaps(&self, other: &MapKey) -> bool {
        let peer = self.peer == 0 || other.peer == 0 || self.peer == other.peer;
        let proto = self.protocol == 0 || other.protocol == 0 || self.protocol == other.protocol;
        let short = self.prefix_len.min(other.prefix_len);
        peer && proto && mask(self.port, short) == mask(other.port, short)
    }

    pub(super) fn intersection(&self, other: &MapKey) -> MapKey {
        let (port, prefix_len) = if self.prefix_len >= other.prefix_len {
            (self.port, self.prefix_len)
        } else {
            (other.port, other.prefix_len)
        };
        MapKey {
            peer: self.peer.max(other.peer),
            protocol: self.protocol.max(other.protocol),
            port,
            prefix_len,
        }
    }

    /// The port range the key covers.
    pub fn port_range(&self) -> (u16, u16) {
        if self.prefix_len == 0 {
            return (0, 65535);
        }
        let span = if self.prefix_len >= 16 {
            0
        } else {
            (1u32 << (16 - self.prefix_len)) - 1
        };
        (self.port, (u32::from(self.port) + span) as u16)
    }
}

/// The order in which the datapath's lookup meets keys (see `DirectionPolicy::lookup`).
pub(super) fn lookup_rank(k: &MapKey) -> (u8, std::cmp::Reverse<u8>) {
    let level = match (k.peer != 0, k.protocol != 0, k.prefix_len > 0) {
        (true, true, true) => 0,
        (false, true, true) => 1,
        (true, true, false) => 2,
        (false, true, false) => 3,
        (true, false, _) => 4,
        (false, false, _) => 5,
    };
    (level, std::cmp::Reverse(k.prefix_len))
}

pub(super) fn mask(port: u16, prefix_len: u8) -> u16 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 16 {
        port
    } else {
        port & !(((1u32 << (16 - prefix_len)) - 1) as u16)
    }
}

/// Splits an inclusive port range into prefixes, as Cilium's policy map stores ranges.
pub fn range_to_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    if lo == 0 && hi == 65535 {
        return vec![(0, 0)];
    }
    let mut out = Vec::new();
    let (mut cur, hi) = (u32::from(lo), u32::from(hi));
    while cur <= hi {
        let mut size = if cur == 0 {
            1 << 16
        } else {
            cur & cur.wrapping_neg()
        };
        while cur + size - 1 > hi {
            size >>= 1;
        }
        out.push((cur as u16, 16 - size.trailing_zeros() as u8));
        cur += size;
    }
    out
}

/// A key without its peer: (protocol, port, prefix length).
pub type PortKey = (u8, u16, u8);

impl MapKey {
    pub fn port_key(&self) -> PortKey {
        (self.protocol, self.port, self.prefix_len)
    }

    pub fn with_peer(peer: IdentityId, (protocol, port, prefix_len): PortKey) -> MapKey {
        MapKey {
            peer,
            protocol,
            port,
            prefix_len,
        }
    }
}
