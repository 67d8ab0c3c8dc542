//! Log lines for failures that can hit every request or message at once (a database or
//! gateway outage): the first goes out, the next ones within a period are counted, and the
//! count goes with the next line that goes out. An outage is then a few lines a minute in
//! the log instead of hundreds a second, and the lines held back say how many there were.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a line written through [`warn_throttled!`](crate::warn_throttled) holds back
/// the ones after it.
pub const PERIOD: Duration = Duration::from_secs(10);

/// `tracing::warn!` at most once per [`PERIOD`] from this call site, with a `held_back`
/// field counting the lines held back since the last one; those go to `debug` instead, so
/// one item can still be followed through an outage at debug level.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::throttle::LogThrottle =
            $crate::throttle::LogThrottle::new($crate::throttle::PERIOD);
        match THROTTLE.admit() {
            Some(held_back) => ::tracing::warn!(held_back, $($arg)+),
            None => ::tracing::debug!($($arg)+),
        }
    }};
}

pub struct LogThrottle {
    period_ms: u64,
    /// Milliseconds since [`epoch`] before which no line goes out (0: the first goes out).
    next_ms: AtomicU64,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// At most one line per `period`; `const`, so each call site can keep one in a `static`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line is due now, `n` being the lines held back since the last one;
    /// `None` when this one is held back (log it at `debug` if it is still worth having).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(epoch().elapsed().as_millis() as u64)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.period_ms).max(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_carrying_the_count_held_back() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.admit_at(0), Some(0), "the first goes out");
        assert_eq!(t.admit_at(1), None);
        assert_eq!(t.admit_at(9_999), None);
        assert_eq!(t.admit_at(10_000), Some(2));
        assert_eq!(t.admit_at(10_001), None);
        assert_eq!(
            t.admit_at(60_000),
            Some(1),
            "a quiet spell lets the next one out"
        );
        assert_eq!(t.admit_at(60_000), None);
    }

    #[test]
    fn concurrent_callers_let_one_line_out_per_period() {
        let t = std::sync::Arc::new(LogThrottle::new(Duration::from_secs(3600)));
        let admitted: u64 = (0..8)
            .map(|_| {
                let t = std::sync::Arc::clone(&t);
                std::thread::spawn(move || (0..1000).filter(|_| t.admit().is_some()).count() as u64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 1);
        assert_eq!(t.held_back.load(Ordering::Relaxed), 7_999);
    }
}
