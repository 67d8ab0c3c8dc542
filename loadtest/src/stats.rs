//! What the run measures: HDR histograms of latency by kind of call, per-second series,
//! errors by kind, counters. Latencies are recorded in microseconds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// A latency histogram: 1 µs to 1 hour at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

fn ms(us: u64) -> f64 {
    round3(us as f64 / 1000.0)
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The percentile summary every latency in the report carries (milliseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    /// Defaults when absent: the terminal table reads summaries back and needs no mean.
    #[serde(default)]
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: round3(h.mean() / 1000.0),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The percentile distribution for the plot: (percentile, ms) at points evenly spaced in
/// "nines" (0, 90, 99, 99.9, ...) up to the histogram's resolution.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    // Up to the nines the sample size can resolve, at most 99.999.
    let max_nines = (h.len() as f64).log10().clamp(1.0, 5.0);
    let points = (max_nines * 20.0) as usize;
    let mut out: Vec<(f64, f64)> = (0..=points)
        .map(|i| {
            let nines = i as f64 / 20.0;
            let q = 1.0 - 10f64.powf(-nines);
            (round3(q * 100.0), ms(h.value_at_quantile(q)))
        })
        .collect();
    out.push((100.0, ms(h.max())));
    out
}

/// Everything recorded during the load phase. One per run, behind a mutex.
pub struct Recorder {
    /// API latency by kind of call (pay, read, replay, retry, poll, deposit, wallet).
    pub api: BTreeMap<&'static str, Histogram<u64>>,
    /// How late the generator sent each open-loop request versus its intended start.
    pub lag: Histogram<u64>,
    /// Payment POST latency by second of intended start.
    pub pay_by_second: Vec<Histogram<u64>>,
    /// Payment POST latency by ramp step.
    pub pay_by_step: Vec<Histogram<u64>>,
    pub ok_by_step: Vec<u64>,
    pub sent_by_second: Vec<u64>,
    /// Payments answered as expected, by second of the answer.
    pub ok_by_second: Vec<u64>,
    pub errors_by_second: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    /// Client-observed acceptance (202 received) → final status seen by a poll.
    pub finalize_observed: Histogram<u64>,
    pub calls: u64,
    pub pay_sent: u64,
    pub pay_ok: u64,
    pub reads: u64,
    pub last_pay_answer: Duration,
    /// Windows in which payments failed transiently (a failover, a dead instance).
    pub outages: Outages,
}

/// A window in which payment POSTs failed transiently: from the first failed answer to the
/// first expected answer to a POST sent after it, i.e. how long clients could not pay. A
/// failure within [`Outages::MERGE_WITHIN_S`] of the end of the last window reopens it: one
/// failover often lets a few payments through before the last errors.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outage {
    /// Seconds from the start of the load.
    pub start_s: f64,
    /// None if the run ended inside it.
    pub end_s: Option<f64>,
    /// Failed answers (first attempts and retries) inside it.
    pub failures: u64,
}

impl Outage {
    pub fn duration_ms(&self) -> Option<f64> {
        self.end_s.map(|e| (e - self.start_s) * 1000.0)
    }
}

#[derive(Debug, Default)]
pub struct Outages {
    open: Option<Outage>,
    closed: Vec<Outage>,
}

impl Outages {
    pub const MERGE_WITHIN_S: f64 = 1.0;

    /// A payment POST sent at `sent` was answered at `at`: as expected, or transiently failed.
    pub fn answer(&mut self, sent: Duration, at: Duration, ok: bool) {
        let (sent, at) = (sent.as_secs_f64(), at.as_secs_f64());
        match (&mut self.open, ok) {
            (None, false) => {
                // A failure soon after the last window's end reopens it.
                let continues = self
                    .closed
                    .last()
                    .and_then(|o| o.end_s)
                    .is_some_and(|end| at - end < Self::MERGE_WITHIN_S);
                let mut o = continues
                    .then(|| self.closed.pop())
                    .flatten()
                    .unwrap_or(Outage {
                        start_s: at,
                        end_s: None,
                        failures: 0,
                    });
                o.end_s = None;
                o.failures += 1;
                self.open = Some(o);
            }
            (Some(o), false) => o.failures += 1,
            // Only a request sent after the first failure shows the system is back: one sent
            // before may have been served by a part that failed after it.
            (Some(o), true) if sent >= o.start_s => {
                o.end_s = Some(at);
                self.closed.extend(self.open.take());
            }
            _ => {}
        }
    }

    /// Every window, the one still open last.
    pub fn all(&self) -> Vec<Outage> {
        self.closed.iter().chain(&self.open).copied().collect()
    }
}

impl Recorder {
    pub fn new(steps: usize) -> Self {
        Self {
            api: BTreeMap::new(),
            lag: histogram(),
            pay_by_second: Vec::new(),
            pay_by_step: (0..steps).map(|_| histogram()).collect(),
            ok_by_step: vec![0; steps],
            sent_by_second: Vec::new(),
            ok_by_second: Vec::new(),
            errors_by_second: Vec::new(),
            errors: BTreeMap::new(),
            finalize_observed: histogram(),
            calls: 0,
            pay_sent: 0,
            pay_ok: 0,
            reads: 0,
            last_pay_answer: Duration::ZERO,
            outages: Outages::default(),
        }
    }

    /// One API call of this kind and its latency.
    pub fn latency(&mut self, kind: &'static str, d: Duration) {
        self.calls += 1;
        self.also(kind, d);
    }

    /// Another measure of a call already counted (e.g. its service time).
    pub fn also(&mut self, kind: &'static str, d: Duration) {
        record(self.api.entry(kind).or_insert_with(histogram), d);
    }

    pub fn error(&mut self, key: String, at: Duration) {
        *self.errors.entry(key).or_insert(0) += 1;
        bump(&mut self.errors_by_second, at);
    }

    pub fn sent(&mut self, at: Duration) {
        self.pay_sent += 1;
        bump(&mut self.sent_by_second, at);
    }

    /// A payment's first answer: latency from its intended start (`intended` from the
    /// run's start), answered at `at`, as expected or not, in ramp step `step`.
    pub fn pay(
        &mut self,
        latency: Duration,
        intended: Duration,
        at: Duration,
        ok: bool,
        step: usize,
    ) {
        self.latency("pay", latency);
        let s = intended.as_secs() as usize;
        if self.pay_by_second.len() <= s {
            self.pay_by_second.resize_with(s + 1, histogram);
        }
        record(&mut self.pay_by_second[s], latency);
        if let Some(h) = self.pay_by_step.get_mut(step) {
            record(h, latency);
        }
        if ok {
            self.late_ok(at, step);
        } else {
            self.last_pay_answer = self.last_pay_answer.max(at);
        }
    }

    /// A payment's expected answer, answered at `at`: its first (via [`Recorder::pay`]) or,
    /// called directly, one it got only on a later attempt.
    pub fn late_ok(&mut self, at: Duration, step: usize) {
        self.pay_ok += 1;
        bump(&mut self.ok_by_second, at);
        if let Some(c) = self.ok_by_step.get_mut(step) {
            *c += 1;
        }
        self.last_pay_answer = self.last_pay_answer.max(at);
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn summary(&self, kind: &str) -> Summary {
        self.api.get(kind).map(Summary::of).unwrap_or_default()
    }
}

fn bump(v: &mut Vec<u64>, at: Duration) {
    let s = at.as_secs() as usize;
    if v.len() <= s {
        v.resize(s + 1, 0);
    }
    v[s] += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_ends_with_the_first_success_sent_after_it_began() {
        let s = Duration::from_secs_f64;
        let mut o = Outages::default();
        o.answer(s(0.5), s(1.0), true);
        o.answer(s(1.9), s(2.0), false); // starts at 2.0
        o.answer(s(1.8), s(2.5), true); // sent before: does not end it
        o.answer(s(2.6), s(3.0), false);
        o.answer(s(3.9), s(4.25), true); // ends it
        o.answer(s(4.5), s(5.0), false); // within a second of its end: the same outage
        o.answer(s(5.1), s(5.5), true);
        o.answer(s(7.0), s(7.5), false); // a second one, still open
        let all = o.all();
        assert_eq!(all.len(), 2);
        let first = (all[0].start_s, all[0].end_s, all[0].failures);
        assert_eq!(first, (2.0, Some(5.5), 3));
        assert_eq!(all[0].duration_ms(), Some(3500.0));
        let second = (all[1].start_s, all[1].end_s, all[1].failures);
        assert_eq!(second, (7.5, None, 1));
    }

    #[test]
    fn summary_has_every_percentile_in_ms() {
        let mut h = histogram();
        for ms in 1..=1000u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        let near = |a: f64, b: f64| (a - b).abs() <= b * 0.002 + 0.001;
        assert!(near(s.p50, 500.0), "{s:?}");
        assert!(near(s.p90, 900.0), "{s:?}");
        assert!(near(s.p99, 990.0), "{s:?}");
        assert!(near(s.p999, 999.0), "{s:?}");
        assert!(near(s.max, 1000.0), "{s:?}");
        assert!(near(s.mean, 500.5), "{s:?}");
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.p999 && s.p999 <= s.max);
        let json = serde_json::to_value(s).unwrap();
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["count", "max", "mean", "p50", "p90", "p99", "p999"]);
    }

    #[test]
    fn empty_summary_is_zero_not_missing() {
        let s = Summary::of(&histogram());
        assert_eq!(s, Summary::default());
        assert_eq!(serde_json::to_value(s).unwrap()["p999"], 0.0);
        assert!(distribution(&histogram()).is_empty());
    }

    #[test]
    fn sub_millisecond_and_huge_values() {
        let mut h = histogram();
        record(&mut h, Duration::from_nanos(10)); // rounds up to 1 µs, not lost
        record(&mut h, Duration::from_secs(7200)); // above the bound: saturates
        assert_eq!(h.len(), 2);
        assert_eq!(Summary::of(&h).p50, 0.001);
    }

    #[test]
    fn distribution_is_monotonic_and_ends_at_max() {
        let mut h = histogram();
        for us in 1..=100_000u64 {
            h.record(us).unwrap();
        }
        let d = distribution(&h);
        assert_eq!(d.first().unwrap().0, 0.0);
        // The max is HDR's highest equivalent value: within 0.1 % of 100 ms.
        let last = d.last().unwrap();
        assert_eq!(last.0, 100.0);
        assert!((last.1 - 100.0).abs() < 0.1, "{last:?}");
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        // 10^5 samples resolve five nines.
        assert!(d.iter().any(|p| p.0 == 99.999));
    }

    #[test]
    fn recorder_buckets_by_second_and_step() {
        let mut r = Recorder::new(2);
        let s = Duration::from_secs;
        r.sent(s(0));
        r.pay(Duration::from_millis(5), s(0), s(0), true, 0);
        r.pay(Duration::from_millis(50), s(2), s(3), false, 1);
        r.error("pay 500 internal".into(), s(3));
        assert_eq!(r.pay_by_second.len(), 3);
        assert_eq!(r.pay_by_second[1].len(), 0);
        assert_eq!(r.ok_by_second, [1]);
        assert_eq!(r.ok_by_step, [1, 0]);
        assert_eq!(r.errors_by_second, [0, 0, 0, 1]);
        assert_eq!(r.errors_total(), 1);
        assert_eq!(r.summary("pay").count, 2);
        assert_eq!(r.summary("read").count, 0);
        assert_eq!(r.last_pay_answer, s(3));
    }
}
