//! Per-principal rate limiting: a token bucket for each principal, refilled continuously.
//!
//! One misbehaving client cannot starve the others; it gets 429 with `Retry-After` saying
//! when its next request will be accepted. Buckets live in memory, so each instance limits
//! on its own (the limit is per instance, which is what protects that instance).
//!
//! Memory has a hard bound, whatever the number of principals: at most `max_principals`
//! buckets (default [`MAX_PRINCIPALS`]), spread over [`SHARDS`] independently locked shards
//! that each hold at most their share. A bucket is keyed by a 64-bit keyed hash of the
//! principal (SipHash with a random key per process, so nobody can aim for a collision), so
//! it costs the same few dozen bytes however long `sub` is. When a new principal arrives at
//! a full shard, the buckets that have refilled go first (they carry no state); if that is
//! not enough, the fullest buckets go until the shard is 7/8 full. Forgetting a bucket gives
//! its principal back at most the tokens it had spent, and a principal over its limit (an
//! empty bucket) is the last one forgotten: a flood of new principals does not lift it.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Principals tracked at once by default: 4 MB of hash tables when full (under 10 MB of
/// resident memory measured, see `tests/rate_limit_memory.rs`).
pub const MAX_PRINCIPALS: usize = 100_000;
/// Independently locked parts of the map.
pub const SHARDS: usize = 32;

type Shard = HashMap<u64, Bucket>;

pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    /// Keyed hash of a principal: its bucket's key, and the choice of shard.
    keys: RandomState,
    shard_cap: usize,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// `rate_per_sec` requests per second on average, `burst` at once.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self::with_max_principals(rate_per_sec, burst, MAX_PRINCIPALS)
    }

    /// Tracks at most `max_principals` (rounded down to a multiple of [`SHARDS`], at least
    /// one per shard).
    pub fn with_max_principals(rate_per_sec: u32, burst: u32, max_principals: usize) -> Self {
        let shard_cap = (max_principals / SHARDS).max(1);
        Self {
            rate_per_sec: f64::from(rate_per_sec.max(1)),
            burst: f64::from(burst.max(1)),
            keys: RandomState::new(),
            shard_cap,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
        }
    }

    /// The most principals ever tracked at once.
    pub fn capacity(&self) -> usize {
        self.shard_cap * SHARDS
    }

    /// Principals tracked now.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.lock(i).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        self.shards[shard].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one token for `principal`, or says how long until one is available.
    pub fn check(&self, principal: &str, now: Instant) -> Result<(), Duration> {
        let key = self.keys.hash_one(principal);
        let mut shard = self.lock((key >> 32) as usize % SHARDS);
        if shard.len() >= self.shard_cap && !shard.contains_key(&key) {
            self.make_room(&mut shard, now);
        }
        let bucket = shard.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        bucket.tokens = self.level(bucket, now);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.rate_per_sec,
            ))
        }
    }

    /// Tokens in `bucket` at `now`.
    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        (bucket.tokens + elapsed * self.rate_per_sec).min(self.burst)
    }

    /// Brings a full shard below its cap: refilled buckets first, then the fullest ones down
    /// to 7/8 of the cap, so the next evictions are some inserts away.
    fn make_room(&self, shard: &mut Shard, now: Instant) {
        shard.retain(|_, b| self.level(b, now) < self.burst);
        let keep = self.shard_cap - (self.shard_cap / 8).max(1);
        let Some(excess) = shard.len().checked_sub(keep).filter(|&n| n > 0) else {
            return;
        };
        let mut fullest: Vec<(f64, u64)> = shard
            .iter()
            .map(|(&k, b)| (self.level(b, now), k))
            .collect();
        fullest.select_nth_unstable_by(excess - 1, |a, b| b.0.total_cmp(&a.0));
        for (_, k) in &fullest[..excess] {
            shard.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("alice", t0).is_ok());
        }
        let wait = limiter.check("alice", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another principal has its own bucket.
        assert!(limiter.check("bob", t0).is_ok());
        // After the advertised wait, one request is accepted again, and only one.
        let later = t0 + wait;
        assert!(limiter.check("alice", later).is_ok());
        assert!(limiter.check("alice", later).is_err());
        // A long pause refills to the burst, not beyond.
        let much_later = later + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check("alice", much_later).is_ok());
        }
        assert!(limiter.check("alice", much_later).is_err());
    }

    /// 200,000 distinct principals against the default cap of 100,000: the map never holds
    /// more than the cap, and a principal over its limit before the flood is still limited
    /// after it (eviction forgets the fullest buckets first, never the empty one).
    #[test]
    fn memory_is_bounded_under_many_principals_and_limits_survive_the_flood() {
        let limiter = RateLimiter::new(1, 3);
        assert_eq!(limiter.capacity(), MAX_PRINCIPALS / SHARDS * SHARDS);
        assert!(limiter.capacity() <= MAX_PRINCIPALS);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("mallory", t0).is_ok());
        }
        assert!(limiter.check("mallory", t0).is_err());

        let mut most = 0;
        for i in 0..200_000u32 {
            // The flood lasts 0.2 s: mallory refills a fifth of a token meanwhile.
            let now = t0 + Duration::from_micros(u64::from(i));
            assert!(limiter.check(&format!("principal-{i}"), now).is_ok());
            if i % 1000 == 0 {
                most = most.max(limiter.len());
            }
        }
        let tracked = limiter.len();
        assert!(
            most.max(tracked) <= limiter.capacity(),
            "{most} / {tracked} > {}",
            limiter.capacity()
        );
        // The cap was reached: this is the bound at work, not a flood too small to reach it.
        assert!(tracked > limiter.capacity() / 2, "{tracked}");

        let after = t0 + Duration::from_millis(200);
        let wait = limiter
            .check("mallory", after)
            .expect_err("still limited after the flood");
        assert!(wait > Duration::from_millis(500), "{wait:?}");
        // A recent principal of the flood still has its bucket (2 tokens left, not 3).
        let recent = "principal-199999";
        assert!(limiter.check(recent, after).is_ok());
        assert!(limiter.check(recent, after).is_ok());
        assert!(limiter.check(recent, after).is_err());
    }

    /// Every principal over its limit at once (more than fit): the bound still holds, and
    /// those that had to be forgotten start again from a full bucket.
    #[test]
    fn the_cap_holds_when_every_principal_is_limited() {
        let limiter = RateLimiter::with_max_principals(1, 1, 64);
        let t0 = Instant::now();
        for i in 0..1000 {
            let p = format!("p{i}");
            assert!(limiter.check(&p, t0).is_ok());
            assert!(limiter.check(&p, t0).is_err());
            assert!(limiter.len() <= limiter.capacity());
        }
    }
}
