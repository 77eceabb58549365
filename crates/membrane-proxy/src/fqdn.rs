//! Names learned from DNS answers, for toFQDNs: `name → addresses`, each expiring with the
//! answer's TTL.
//!
//! Cilium's toFQDNs selectors only select addresses that the DNS proxy saw in an answer
//! (§3.7). The DNS proxy records every A/AAAA answer it forwards in an [`FqdnCache`] and
//! publishes it through a `watch` channel ([`FqdnLearner::subscribe`]) *before* the answer
//! reaches the client, so the datapath can give those addresses their FQDN identities.
//! Time comes from a [`Clock`], never from the system directly.

use crate::clock::Clock;
use membrane_policy::l7::dns_pattern::normalize_name;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Learned names and their addresses, each with its expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FqdnCache {
    /// Normalized name (lower case, final dot) → address → expiry.
    names: BTreeMap<String, BTreeMap<IpAddr, Instant>>,
}

impl FqdnCache {
    pub fn new() -> FqdnCache {
        FqdnCache::default()
    }

    /// Records that `name` resolves to `ip` until `now + ttl`. A later expiry extends an
    /// existing entry; an earlier one leaves it. With more than `max_ips` addresses for the
    /// name, the ones expiring first are dropped (Cilium keeps 50 per name by default).
    /// Returns whether anything changed.
    pub fn record(
        &mut self,
        name: &str,
        ip: IpAddr,
        ttl: Duration,
        now: Instant,
        max_ips: usize,
    ) -> bool {
        let name = normalize_name(name);
        if name.is_empty() || max_ips == 0 {
            return false;
        }
        let expires = now.checked_add(ttl).unwrap_or(now);
        let ips = self.names.entry(name).or_default();
        let changed = match ips.get(&ip) {
            Some(old) if *old >= expires => false,
            _ => {
                ips.insert(ip, expires);
                true
            }
        };
        while ips.len() > max_ips {
            let Some(soonest) = ips.iter().min_by_key(|(_, e)| **e).map(|(ip, _)| *ip) else {
                break;
            };
            ips.remove(&soonest);
        }
        changed
    }

    /// Drops every entry expired at `now` (an entry expiring exactly now is gone). Returns
    /// whether anything was dropped.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.len();
        for ips in self.names.values_mut() {
            ips.retain(|_, expires| *expires > now);
        }
        self.names.retain(|_, ips| !ips.is_empty());
        self.len() != before
    }

    /// The addresses of `name` (any case, with or without the final dot), with expiries.
    pub fn get(&self, name: &str) -> Vec<(IpAddr, Instant)> {
        self.names
            .get(&normalize_name(name))
            .map(|ips| ips.iter().map(|(ip, e)| (*ip, *e)).collect())
            .unwrap_or_default()
    }

    /// The addresses of `name`.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        self.get(name).into_iter().map(|(ip, _)| ip).collect()
    }

    /// The names that resolved to `ip`.
    pub fn names_of(&self, ip: IpAddr) -> Vec<&str> {
        self.names
            .iter()
            .filter(|(_, ips)| ips.contains_key(&ip))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Every `(name, address, expiry)`, sorted by name then address.
    pub fn iter(&self) -> impl Iterator<Item = (&str, IpAddr, Instant)> + '_ {
        self.names
            .iter()
            .flat_map(|(n, ips)| ips.iter().map(move |(ip, e)| (n.as_str(), *ip, *e)))
    }

    /// The earliest expiry, to schedule the next [`FqdnCache::expire`].
    pub fn next_expiry(&self) -> Option<Instant> {
        self.names
            .values()
            .flat_map(|ips| ips.values())
            .min()
            .copied()
    }

    /// The number of `(name, address)` entries.
    pub fn len(&self) -> usize {
        self.names.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Owns the published [`FqdnCache`]: the DNS proxy learns into it, the datapath subscribes.
pub struct FqdnLearner {
    tx: watch::Sender<Arc<FqdnCache>>,
    clock: Arc<dyn Clock>,
    /// Counts published changes (raised before each is visible).
    generation: std::sync::atomic::AtomicU64,
    /// The last generation the datapath reports enforced.
    enforced: watch::Sender<u64>,
    /// How long an answer that taught something new is held until the datapath enforces it
    /// (Cilium's `--tofqdns-proxy-response-max-delay`); zero: not held.
    pub hold: Duration,
    /// TTLs below this are raised to it (Cilium's `--tofqdns-min-ttl`).
    pub min_ttl: Duration,
    /// At most this many addresses per name (Cilium's `--tofqdns-endpoint-max-ip-per-hostname`).
    pub max_ips_per_name: usize,
}

impl FqdnLearner {
    pub fn new(clock: Arc<dyn Clock>) -> FqdnLearner {
        FqdnLearner {
            tx: watch::Sender::new(Arc::new(FqdnCache::default())),
            clock,
            generation: std::sync::atomic::AtomicU64::new(0),
            enforced: watch::Sender::new(0),
            hold: Duration::ZERO,
            min_ttl: Duration::ZERO,
            max_ips_per_name: 50,
        }
    }

    /// A receiver that sees every published change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FqdnCache>> {
        self.tx.subscribe()
    }

    /// The current cache.
    pub fn snapshot(&self) -> Arc<FqdnCache> {
        self.tx.borrow().clone()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Records the addresses of an answer (`(name, address, ttl in seconds)`) and publishes
    /// the cache if it changed. Returns whether it did.
    pub fn learn(&self, answers: &[(String, IpAddr, u32)]) -> bool {
        if answers.is_empty() {
            return false;
        }
        let now = self.clock.now();
        let (min_ttl, max_ips) = (self.min_ttl, self.max_ips_per_name);
        self.tx.send_if_modified(|cache| {
            let cache = Arc::make_mut(cache);
            let mut changed = false;
            for (name, ip, ttl) in answers {
                let ttl = Duration::from_secs(u64::from(*ttl)).max(min_ttl);
                changed |= cache.record(name, *ip, ttl, now, max_ips);
            }
            if changed {
                // Inside the send: whoever reads this generation then the cache sees the
                // change.
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            changed
        })
    }

    /// The number of changes learned so far: read it before [`FqdnLearner::snapshot`] and
    /// report it to [`FqdnLearner::enforced`] once that snapshot is enforced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The datapath enforces everything learned up to `generation`.
    pub fn enforced(&self, generation: u64) {
        self.enforced.send_if_modified(|current| {
            let newer = generation > *current;
            if newer {
                *current = generation;
            }
            newer
        });
    }

    /// Waits (at most [`FqdnLearner::hold`]) until `generation` is enforced, so that the
    /// client's first connection to a name it just resolved meets the policy that allows
    /// it, as Cilium's DNS proxy holds answers until its ipcache is updated.
    pub async fn wait_enforced(&self, generation: u64) {
        if self.hold.is_zero() {
            return;
        }
        let mut rx = self.enforced.subscribe();
        let _ = tokio::time::timeout(self.hold, rx.wait_for(|g| *g >= generation)).await;
    }

    /// Drops the entries expired by the clock's now and publishes if anything went.
    pub fn expire(&self) -> bool {
        let now = self.clock.now();
        self.tx.send_if_modified(|cache| {
            if cache.next_expiry().is_none_or(|e| e > now) {
                return false;
            }
            Arc::make_mut(cache).expire(now)
        })
    }

    /// Expires entries every `period` (real time), forever; spawn it next to the proxy.
    pub async fn run_expiry(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.expire();
        }
    }
}
