//! The seeded fault schedule: the same seed always yields the same faults at the same times.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillWallet,
    KillProcessor,
    KillGateway,
    KillKafka,
    RestartRabbitMq,
    CrashPostgres,
    /// The gateway answers slower than the processor's timeout for a while.
    SlowGateway,
    /// Duplicated and reordered results, including a `failed` after a `succeeded`.
    DuplicateResults,
    /// Unparseable messages on both brokers.
    Poison,
    /// Well-formed JSON results the database would refuse (U+0000 in the gateway reference,
    /// an over-long reference) for payments still in flight: dead-lettered, never applied.
    PoisonResults,
    /// The whole gateway hung (SIGSTOP) for longer than the reconciler deadline: charges and
    /// voids time out alike, so no outcome is known until it comes back (SIGCONT).
    GatewayOutage,
    /// HA topology: the PostgreSQL primary's node dies (keeper, postmaster and backends,
    /// SIGKILL); pg_auto_failover promotes the synchronous standby.
    KillPgPrimary,
    /// HA topology: one RabbitMQ node of three dies (SIGKILL); the quorum queue goes on.
    KillRabbitNode,
    /// HA topology: one wallet-service instance of two dies; HAProxy sends to the other.
    KillWalletInstance,
    /// HA topology: one processor-service instance of two dies; the other consumes.
    KillProcessorInstance,
}

impl Fault {
    pub const ALL: [Fault; 11] = [
        Fault::KillWallet,
        Fault::KillProcessor,
        Fault::KillGateway,
        Fault::KillKafka,
        Fault::RestartRabbitMq,
        Fault::CrashPostgres,
        Fault::SlowGateway,
        Fault::DuplicateResults,
        Fault::Poison,
        Fault::PoisonResults,
        Fault::GatewayOutage,
    ];

    /// The faults of the highly available topology (`--profile ha`).
    pub const HA: [Fault; 4] = [
        Fault::KillPgPrimary,
        Fault::KillRabbitNode,
        Fault::KillWalletInstance,
        Fault::KillProcessorInstance,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fault::KillWallet => "kill -9 wallet-service",
            Fault::KillProcessor => "kill -9 processor-service",
            Fault::KillGateway => "kill -9 mock-gateway",
            Fault::KillKafka => "kill -9 Kafka broker",
            Fault::RestartRabbitMq => "restart RabbitMQ",
            Fault::CrashPostgres => "PostgreSQL stop -m immediate",
            Fault::SlowGateway => "gateway slower than timeout",
            Fault::DuplicateResults => "duplicate/conflicting results",
            Fault::Poison => "poison messages",
            Fault::PoisonResults => "poison results (NUL, over-long reference)",
            Fault::GatewayOutage => "gateway outage (hung, SIGSTOP)",
            Fault::KillPgPrimary => "kill -9 the PostgreSQL primary's node",
            Fault::KillRabbitNode => "kill -9 a RabbitMQ node",
            Fault::KillWalletInstance => "kill -9 a wallet-service instance",
            Fault::KillProcessorInstance => "kill -9 a processor-service instance",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// `rounds` of every fault kind in `kinds`, shuffled by `seed`, spread over `[start, end)`
/// seconds with at least `gap` seconds between two faults (each fault is undone before the
/// next).
pub fn build(
    kinds: &[Fault],
    seed: u64,
    rounds: usize,
    start: f64,
    end: f64,
    gap: f64,
) -> Vec<(f64, Fault)> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut faults: Vec<Fault> = (0..rounds).flat_map(|_| kinds.iter().copied()).collect();
    rng.shuffle(&mut faults);
    let n = faults.len().max(1) as f64;
    let slot = ((end - start) / n).max(gap);
    faults
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            (
                start + i as f64 * slot + rng.f64() * (slot - gap).max(0.0),
                f,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_schedule_and_every_kind_present() {
        let a = build(&Fault::ALL, 7, 2, 10.0, 100.0, 3.0);
        assert_eq!(a, build(&Fault::ALL, 7, 2, 10.0, 100.0, 3.0));
        assert_ne!(a, build(&Fault::ALL, 8, 2, 10.0, 100.0, 3.0));
        assert_eq!(a.len(), 2 * Fault::ALL.len());
        assert_eq!(Fault::ALL.len(), 11);
        for kind in Fault::ALL {
            assert_eq!(a.iter().filter(|(_, f)| *f == kind).count(), 2);
        }
    }

    #[test]
    fn faults_are_ordered_and_spaced() {
        let s = build(&Fault::HA, 1, 3, 5.0, 200.0, 4.0);
        assert_eq!(s.len(), 3 * Fault::HA.len());
        for w in s.windows(2) {
            assert!(w[1].0 - w[0].0 >= 0.0, "{s:?}");
        }
        assert!(s.iter().all(|(t, _)| *t >= 5.0));
    }

    #[test]
    fn every_kind_has_its_own_label_and_the_short_schedule_has_each_once() {
        let every = Fault::ALL.iter().chain(&Fault::HA);
        let labels: std::collections::BTreeSet<_> = every.map(|f| f.label()).collect();
        assert_eq!(labels.len(), Fault::ALL.len() + Fault::HA.len());
        // The short profile: one round between 10 s and 65 s, 6 s apart.
        let s = build(&Fault::ALL, 42, 1, 10.0, 65.0, 6.0);
        assert_eq!(s.len(), Fault::ALL.len());
        for kind in [Fault::PoisonResults, Fault::GatewayOutage] {
            assert_eq!(s.iter().filter(|(_, f)| *f == kind).count(), 1, "{kind}");
        }
        for w in s.windows(2) {
            assert!(w[1].0 - w[0].0 >= 6.0 - 1e-9, "{s:?}");
        }
    }
}
