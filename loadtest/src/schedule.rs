//! The open-loop arrival schedule: a staircase of rates, each held for a duration.
//!
//! Arrivals are evenly spaced within a step. The number of arrivals up to time `t` is
//! `A(t) = ∫ rate`; arrival `n` (0-based) is intended at the `t` where `A(t) = n`, so the
//! first one is at 0 and a step change carries the fractional phase over instead of
//! restarting it. The schedule is a pure function of `n`: what the generator does at run
//! time (late, early, blocked) never changes when a request was *meant* to start.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Arrivals per second (may be 0: a pause).
    pub rate: f64,
    pub duration: Duration,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    steps: Vec<Step>,
    /// Start of each step, seconds.
    starts: Vec<f64>,
    /// `A(start)` of each step, plus `A(end)` last.
    cumulative: Vec<f64>,
}

/// Guards the float arithmetic: 200/s for 30 s is 6000 arrivals, not 6001.
const EPS: f64 = 1e-9;

impl Schedule {
    pub fn new(steps: Vec<Step>) -> Self {
        let mut starts = Vec::with_capacity(steps.len());
        let mut cumulative = Vec::with_capacity(steps.len() + 1);
        let (mut t, mut a) = (0.0, 0.0);
        for s in &steps {
            starts.push(t);
            cumulative.push(a);
            let d = s.duration.as_secs_f64();
            t += d;
            a += s.rate * d;
        }
        cumulative.push(a);
        Self {
            steps,
            starts,
            cumulative,
        }
    }

    pub fn constant(rate: f64, duration: Duration) -> Self {
        Self::new(vec![Step { rate, duration }])
    }

    /// The same staircase with every rate multiplied (the read stream is `rate × ratio`).
    pub fn scaled(&self, factor: f64) -> Self {
        Self::new(
            self.steps
                .iter()
                .map(|s| Step {
                    rate: s.rate * factor,
                    duration: s.duration,
                })
                .collect(),
        )
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|s| s.duration).sum()
    }

    /// How many arrivals the whole schedule holds.
    pub fn total(&self) -> u64 {
        let a = *self.cumulative.last().unwrap_or(&0.0);
        (a - EPS).ceil().max(0.0) as u64
    }

    /// Mean offered rate over the whole schedule.
    pub fn mean_rate(&self) -> f64 {
        let d = self.duration().as_secs_f64();
        if d > 0.0 {
            self.cumulative.last().unwrap_or(&0.0) / d
        } else {
            0.0
        }
    }

    /// Intended start of arrival `n`, from the start of the run; `None` past the end.
    pub fn arrival(&self, n: u64) -> Option<Duration> {
        let n = n as f64;
        // The step where A(start) <= n < A(end); zero-rate steps hold no arrival.
        let i = self.cumulative.partition_point(|&a| a <= n + EPS);
        if i == 0 || i > self.steps.len() {
            return None;
        }
        let i = i - 1;
        let step = &self.steps[i];
        let t = self.starts[i] + ((n - self.cumulative[i]) / step.rate).max(0.0);
        Some(Duration::from_secs_f64(t))
    }

    /// The step that is running at `t` (the last one past the end).
    pub fn step_at(&self, t: Duration) -> usize {
        let t = t.as_secs_f64();
        self.starts
            .partition_point(|&s| s <= t)
            .saturating_sub(1)
            .min(self.steps.len().saturating_sub(1))
    }

    /// Arrivals intended in `[from, to)`, fractional (for the offered-rate timeline).
    pub fn expected_between(&self, from: Duration, to: Duration) -> f64 {
        self.cumulative_at(to.as_secs_f64()) - self.cumulative_at(from.as_secs_f64())
    }

    fn cumulative_at(&self, t: f64) -> f64 {
        let mut a = 0.0;
        for (i, s) in self.steps.iter().enumerate() {
            let d = s.duration.as_secs_f64();
            let within = (t - self.starts[i]).clamp(0.0, d);
            a += s.rate * within;
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn close(a: Duration, b: f64) -> bool {
        (a.as_secs_f64() - b).abs() < 1e-6
    }

    #[test]
    fn constant_rate_is_evenly_spaced() {
        let s = Schedule::constant(200.0, secs(30.0));
        assert_eq!(s.total(), 6000);
        assert_eq!(s.arrival(0), Some(Duration::ZERO));
        assert!(close(s.arrival(1).unwrap(), 0.005));
        assert!(close(s.arrival(200).unwrap(), 1.0));
        assert!(close(s.arrival(5999).unwrap(), 29.995));
        assert_eq!(s.arrival(6000), None);
        assert_eq!(s.mean_rate(), 200.0);
        // Arrivals are monotonic and fall inside the schedule.
        let times: Vec<_> = (0..s.total()).map(|n| s.arrival(n).unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert!(*times.last().unwrap() < s.duration());
    }

    #[test]
    fn fractional_totals_round_up() {
        // 3/s for 1.5 s: arrivals at 0, 1/3, 2/3, 1, 4/3 (4.5 expected → 5 whole ones).
        let s = Schedule::constant(3.0, secs(1.5));
        assert_eq!(s.total(), 5);
        assert!(close(s.arrival(4).unwrap(), 4.0 / 3.0));
        assert_eq!(s.arrival(5), None);
        assert_eq!(Schedule::constant(0.5, secs(1.0)).total(), 1);
    }

    #[test]
    fn ramp_steps_follow_each_other() {
        let s = Schedule::new(vec![
            Step {
                rate: 10.0,
                duration: secs(2.0),
            },
            Step {
                rate: 0.0,
                duration: secs(1.0),
            },
            Step {
                rate: 100.0,
                duration: secs(1.0),
            },
        ]);
        assert_eq!(s.total(), 120);
        assert_eq!(s.duration(), secs(4.0));
        assert!(close(s.arrival(19).unwrap(), 1.9));
        // The pause holds nothing: arrival 20 is the first of the third step.
        assert!(close(s.arrival(20).unwrap(), 3.0));
        assert!(close(s.arrival(21).unwrap(), 3.01));
        assert!(close(s.arrival(119).unwrap(), 3.99));
        assert_eq!(s.arrival(120), None);
        assert_eq!(s.step_at(secs(0.0)), 0);
        assert_eq!(s.step_at(secs(2.5)), 1);
        assert_eq!(s.step_at(secs(3.5)), 2);
        assert_eq!(s.step_at(secs(9.0)), 2);
        assert!((s.expected_between(secs(1.0), secs(3.5)) - 60.0).abs() < 1e-9);
        assert!((s.mean_rate() - 30.0).abs() < 1e-9);
        // Per-second counts of intended arrivals match the staircase.
        let mut per_sec = [0u32; 4];
        for n in 0..s.total() {
            per_sec[s.arrival(n).unwrap().as_secs() as usize] += 1;
        }
        assert_eq!(per_sec, [10, 10, 0, 100]);
    }

    #[test]
    fn phase_carries_across_steps() {
        // 1.5/s for 1 s (arrivals at 0, 2/3), then 10/s: A = 1.5 at t = 1, so the next
        // arrival (n = 2) comes 0.05 s into the second step, not at its very start.
        let s = Schedule::new(vec![
            Step {
                rate: 1.5,
                duration: secs(1.0),
            },
            Step {
                rate: 10.0,
                duration: secs(1.0),
            },
        ]);
        assert!(close(s.arrival(1).unwrap(), 2.0 / 3.0));
        assert!(close(s.arrival(2).unwrap(), 1.05));
        assert_eq!(s.total(), 12);
    }

    #[test]
    fn scaled_schedule() {
        let s = Schedule::constant(100.0, secs(10.0)).scaled(0.5);
        assert_eq!(s.total(), 500);
        assert!(close(s.arrival(1).unwrap(), 0.02));
        assert_eq!(Schedule::constant(100.0, secs(10.0)).scaled(0.0).total(), 0);
    }
}
