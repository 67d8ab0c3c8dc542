//! The rate limiter's memory stays bounded under a flood of distinct principals, measured as
//! the process's resident set (`/proc/self/statm`). A test binary of its own, not a module of
//! `it`, so that this process runs nothing else while it is measured. No infrastructure needed.

use std::time::{Duration, Instant};
use wallet_service::http::rate_limit::{RateLimiter, MAX_PRINCIPALS};

/// Resident set size in bytes (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn flood(limiter: &RateLimiter, from: u32, to: u32, t0: Instant) {
    for i in from..to {
        let now = t0 + Duration::from_micros(u64::from(i));
        assert!(limiter.check(&format!("principal-{i:08}"), now).is_ok());
        if i % 10_000 == 0 {
            assert!(limiter.len() <= limiter.capacity());
        }
    }
}

#[test]
fn rss_stays_bounded_under_a_million_distinct_principals() {
    let Some(before) = rss_bytes() else {
        eprintln!("no /proc/self/statm: RSS not measured");
        return;
    };
    let limiter = RateLimiter::new(1, 3);
    let t0 = Instant::now();
    assert!(limiter.check("mallory", t0).is_ok());
    assert!(limiter.check("mallory", t0).is_ok());
    assert!(limiter.check("mallory", t0).is_ok());
    assert!(limiter.check("mallory", t0).is_err());

    // 200,000 principals: twice the cap, so the map has reached its bound.
    flood(&limiter, 0, 200_000, t0);
    let at_cap = rss_bytes().unwrap();
    assert!(limiter.len() <= limiter.capacity() && limiter.capacity() <= MAX_PRINCIPALS);
    // 100,000 buckets of a u64 key and 24 bytes of state, in hash tables at most half empty:
    // well under 16 MB, whatever the principals' names.
    let grown = at_cap.saturating_sub(before);
    assert!(grown < 16 << 20, "RSS grew {} KiB", grown >> 10);

    // 800,000 more: an unbounded map would add tens of MB here; the bounded one nothing
    // beyond allocator noise.
    flood(&limiter, 200_000, 1_000_000, t0);
    let after = rss_bytes().unwrap();
    let grown_more = after.saturating_sub(at_cap);
    eprintln!(
        "RSS: {} KiB before, {} KiB after 200k principals, {} KiB after 1M; {} tracked (cap {})",
        before >> 10,
        at_cap >> 10,
        after >> 10,
        limiter.len(),
        limiter.capacity()
    );
    assert!(
        grown_more < 2 << 20,
        "RSS grew {} KiB between 200k and 1M principals",
        grown_more >> 10
    );
    assert!(limiter.len() <= limiter.capacity());
    // The principal over its limit before the flood is still limited after it (1 s later
    // it has refilled one token: one request, not the burst).
    let t1 = t0 + Duration::from_secs(1);
    assert!(limiter.check("mallory", t1).is_ok());
    assert!(limiter.check("mallory", t1).is_err());
}
