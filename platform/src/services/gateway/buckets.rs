//! Token buckets, one per key (a user, a peer address), in a bounded map.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::time::Instant;

use crate::config::RateLimit;

/// Tokens are counted in billionths, so that a refill after any interval,
/// however short, is exact (no rounding that starves a busy caller).
const NANO: u128 = 1_000_000_000;

struct Bucket {
    tokens_nano: u128,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).min(Duration::from_secs(u32::MAX.into()));
        let full = u128::from(limit.burst) * NANO;
        self.tokens_nano = (self.tokens_nano + elapsed.as_nanos() * u128::from(limit.per_second)).min(full);
        self.last = now;
    }

    fn is_full(&self, limit: RateLimit) -> bool {
        self.tokens_nano >= u128::from(limit.burst) * NANO
    }
}

/// One token bucket per key, at most `max` of them: when a new key finds
/// the map full, the buckets that have refilled completely (as good as new)
/// are dropped, and if none has, the least recently used one.
pub(super) struct Buckets<K> {
    limit: RateLimit,
    max: usize,
    buckets: BTreeMap<K, Bucket>,
}

impl<K: Ord + Copy> Buckets<K> {
    pub(super) fn new(limit: RateLimit, max: usize) -> Buckets<K> {
        assert!(max > 0, "room for at least one bucket");
        Buckets { limit, max, buckets: BTreeMap::new() }
    }

    /// Takes one token from `key`'s bucket; false when it has none (the call is refused).
    pub(super) fn take(&mut self, key: K, now: Instant) -> bool {
        let limit = self.limit;
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max {
            self.buckets.retain(|_, b| {
                b.refill(limit, now);
                !b.is_full(limit)
            });
            if self.buckets.len() >= self.max {
                let oldest = self.buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k);
                self.buckets.remove(&oldest.expect("the map is full, so not empty"));
            }
        }
        let full = u128::from(limit.burst) * NANO;
        let b = self.buckets.entry(key).or_insert(Bucket { tokens_nano: full, last: now });
        b.refill(limit, now);
        if b.tokens_nano < NANO {
            return false;
        }
        b.tokens_nano -= NANO;
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit { per_second: 10, burst: 3 };

    #[tokio::test]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let mut b = Buckets::new(LIMIT, 10);
        let t0 = Instant::now();
        assert_eq!((0..5).map(|_| b.take(1u64, t0)).collect::<Vec<_>>(), [true, true, true, false, false]);
        assert!(b.take(2u64, t0), "another key has its own bucket");
        // 10 per second: one token every 100 ms, counted exactly however the interval is cut.
        let mut now = t0;
        for _ in 0..99 {
            now += Duration::from_millis(1);
            assert!(!b.take(1, now));
        }
        now += Duration::from_millis(1);
        assert!(b.take(1, now), "refilled after 100 ms in 1 ms steps");
        assert!(!b.take(1, now));
    }

    #[tokio::test]
    async fn the_map_stays_bounded_and_keeps_busy_buckets() {
        let mut b = Buckets::new(LIMIT, 4);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(b.take(0u64, t0));
        }
        assert!(!b.take(0, t0), "key 0 spent its burst");
        for key in 1..100u64 {
            assert!(b.take(key, t0 + Duration::from_millis(key)));
            assert!(b.len() <= 4);
        }
        // Key 0 was the least recently used and went, so it starts afresh:
        // bounded memory trades away the memory of a long-idle key.
        assert!(b.take(0, t0 + Duration::from_millis(100)));
        // A full bucket is dropped before a busy one.
        let mut b = Buckets::new(LIMIT, 2);
        assert!(b.take(7u64, t0));
        let later = t0 + Duration::from_secs(1);
        for _ in 0..3 {
            assert!(b.take(8u64, later));
        }
        assert!(b.take(9, later), "room made for a new key");
        assert!(!b.take(8, later), "8 kept its empty bucket (7, refilled, went)");
        assert!(b.len() <= 2);
    }
}
