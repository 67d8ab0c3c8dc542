//! Settings, from flags or `GATEWAY_*` environment variables, and the part of them that
//! can be changed at runtime.

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// A simulated card gateway for the processor-service and tests.
#[derive(Debug, Clone, Parser)]
#[command(name = "mock-gateway", version, about)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "GATEWAY_BIND", default_value = "127.0.0.1:8090")]
    pub bind: SocketAddr,
    /// Address of `GET /metrics` (Prometheus), a listener of its own kept off the API's port.
    #[arg(long, env = "GATEWAY_METRICS_BIND", default_value = "127.0.0.1:9190")]
    pub metrics_bind: SocketAddr,
    /// Mean simulated latency per charge or refund in milliseconds (exponential, capped at
    /// 10x the mean).
    #[arg(long, env = "GATEWAY_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of charges declined, 0..=1.
    #[arg(long, env = "GATEWAY_DECLINE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub decline_rate: f64,
    /// Share of charge and refund requests answered 503 without doing anything, 0..=1.
    #[arg(long, env = "GATEWAY_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,
    /// Seed of the random latencies and outcomes, so a run can be replayed (random if unset).
    #[arg(long, env = "GATEWAY_SEED")]
    pub seed: Option<u64>,
    /// JSON-lines file of charges and refunds: loaded at start, appended and fsync'd before
    /// each answer, so an idempotency key stays honoured across restarts (in memory only if
    /// unset).
    #[arg(long, env = "GATEWAY_DATA_FILE")]
    pub data_file: Option<PathBuf>,
    /// Seconds a charge and its refunds are remembered after the last of them: then the key
    /// can be charged again. Keep it longer than any payment can be retried.
    #[arg(
        long,
        env = "GATEWAY_RETENTION_SECS",
        default_value_t = 604_800,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub retention_secs: u64,
    /// Seconds between two retention passes.
    #[arg(
        long,
        env = "GATEWAY_RETENTION_INTERVAL_SECS",
        default_value_t = 60,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub retention_interval_secs: u64,
}

impl Config {
    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            latency_ms: self.latency_ms,
            decline_rate: self.decline_rate,
            error_rate: self.error_rate,
        }
    }
}

/// The simulated behaviour, adjustable at runtime so fault-injection tests can, for
/// example, slow the gateway past the processor's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Behaviour {
    pub latency_ms: u64,
    pub decline_rate: f64,
    pub error_rate: f64,
}

/// `PUT /v1/admin/behaviour` body: absent fields keep their value. Unknown fields are
/// refused so a misspelt setting fails loudly instead of silently changing nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BehaviourPatch {
    pub latency_ms: Option<u64>,
    pub decline_rate: Option<f64>,
    pub error_rate: Option<f64>,
}

impl Behaviour {
    pub fn apply(self, patch: BehaviourPatch) -> Result<Self, String> {
        Ok(Self {
            latency_ms: patch.latency_ms.unwrap_or(self.latency_ms),
            decline_rate: patch
                .decline_rate
                .map(check_rate)
                .transpose()?
                .unwrap_or(self.decline_rate),
            error_rate: patch
                .error_rate
                .map(check_rate)
                .transpose()?
                .unwrap_or(self.error_rate),
        })
    }
}

fn check_rate(rate: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("rate {rate} is not between 0 and 1"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    check_rate(
        s.parse()
            .map_err(|e| format!("{s:?} is not a number: {e}"))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("mock-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn rates_must_be_between_0_and_1() {
        let ok = parse(&["--decline-rate", "0.25", "--error-rate", "1"]).unwrap();
        assert_eq!((ok.decline_rate, ok.error_rate), (0.25, 1.0));
        for bad in [
            ["--decline-rate", "1.5"],
            ["--error-rate", "-0.1"],
            ["--error-rate", "NaN"],
            ["--decline-rate", "lots"],
        ] {
            let err = parse(&[&format!("{}={}", bad[0], bad[1])]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn patch_keeps_absent_fields_and_checks_rates() {
        let base = Behaviour {
            latency_ms: 5,
            decline_rate: 0.1,
            error_rate: 0.2,
        };
        let patched = base
            .apply(BehaviourPatch {
                latency_ms: Some(50),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            patched,
            Behaviour {
                latency_ms: 50,
                ..base
            }
        );
        assert!(base
            .apply(BehaviourPatch {
                error_rate: Some(2.0),
                ..Default::default()
            })
            .is_err());
    }
}
