//! The report of a run, as a type: written as JSON, read back by `--show` and by
//! `--capacity`, and rendered as the terminal table, Markdown and SVG.

mod build;
mod svg;
mod table;

pub use build::{build, Finished};
pub use svg::svg;

use crate::check::{Check, Counts};
use crate::stats::{distribution, Summary};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Everything one run measured and concluded. The JSON field names are documented in
/// docs/LOADTEST.md ("Output"); scripts read them, so renaming one is a breaking change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub run_id: String,
    pub started_at: String,
    pub seed: u64,
    pub machine: Machine,
    pub config: Config,
    /// Mean offered payment rate (open loop); none in closed loop.
    pub offered_rate: Option<f64>,
    /// Payments answered as expected per second of the load window.
    pub achieved_rate: f64,
    pub sent_rate: f64,
    pub load_seconds: f64,
    pub drain_seconds: f64,
    pub drained: bool,
    pub payments: Payments,
    pub reads: u64,
    pub replays_checked: u64,
    pub replays_mismatched: u64,
    pub api_latency_ms: ApiLatency,
    pub finalize_latency_ms: FinalizeLatency,
    pub generator_lag_ms: Summary,
    /// Unexpected outcomes by kind.
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub calls_total: u64,
    pub error_rate: f64,
    /// Windows in which clients could not pay: from the first transiently failed payment
    /// POST to the first expected answer to one sent after it (a failover's cost to clients).
    #[serde(default)]
    pub outages: Vec<crate::stats::Outage>,
    pub queues: Queues,
    pub gateway: GatewayDelta,
    /// Figures of each ramp step (one step outside a ramp).
    pub steps: Vec<StepFigures>,
    pub checks: Vec<Check>,
    pub invariants_ok: bool,
    pub targets: Vec<Target>,
    pub targets_ok: bool,
    pub verdict: Verdict,
    pub timeline: Vec<Second>,
    pub report_json: PathBuf,
    pub report_svg: PathBuf,
}

impl Report {
    /// Reads a report written by an earlier run.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a loadtest report: {e}", path.display()))
    }

    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    /// The run's target of this kind, if it had one.
    pub fn target(&self, kind: TargetKind) -> Option<&Target> {
        self.targets.iter().find(|t| t.kind == kind)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
}

/// The machine the run was made on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub hostname: String,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            os: std::env::consts::OS.to_owned(),
        }
    }
}

/// The first `model name` (x86) or `Model`/`Hardware` (ARM) of a /proc/cpuinfo.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu model"] {
        for line in cpuinfo.lines() {
            if let Some((k, v)) = line.split_once(':') {
                if k.trim() == key && !v.trim().is_empty() {
                    return Some(v.trim().to_owned());
                }
            }
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Open,
    Ramp,
    Closed,
}

/// The options the run was made with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub mode: Mode,
    pub mode_text: String,
    /// Open loop only.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub ramp: Option<Vec<RampStep>>,
    pub closed_workers: Option<u32>,
    pub wallets: u32,
    pub deposit: i64,
    pub currency: String,
    pub decline_share: f64,
    pub refuse_share: f64,
    pub retry_share: f64,
    pub read_ratio: f64,
    pub poll_share: f64,
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    pub attempts: u32,
    pub drain_timeout_s: f64,
    pub max_in_flight: u32,
    pub wallet_url: String,
    pub gateway_url: String,
    pub wallet_metrics_url: String,
    pub processor_metrics_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RampStep {
    pub rate: f64,
    pub duration_s: f64,
}

/// What became of the payments: the generator's count and the server's final states.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payments {
    pub sent: u64,
    /// Answered as expected.
    pub ok: u64,
    #[serde(flatten)]
    pub counts: Counts,
}

/// Payment POST latency at the top level, every kind of call in `by_kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiLatency {
    #[serde(flatten)]
    pub pay: Summary,
    pub kind: String,
    pub by_kind: BTreeMap<String, Summary>,
}

/// Server-side acceptance → finalization at the top level, by outcome, and as a client
/// polling a sample saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FinalizeLatency {
    #[serde(flatten)]
    pub all: Summary,
    pub source: String,
    pub by_outcome: BTreeMap<String, Summary>,
    pub observed: Observed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Observed {
    #[serde(flatten)]
    pub summary: Summary,
    pub source: String,
}

/// The queue gauges scraped once a second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queues {
    pub outbox_backlog: Gauge,
    pub processor_in_flight: Gauge,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gauge {
    pub max: Option<f64>,
    pub mean: Option<f64>,
    pub last: Option<f64>,
    pub samples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayDelta {
    /// The gateway's own `/v1/stats` document before the load.
    pub before: Value,
    pub charges_delta: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepFigures {
    pub rate: f64,
    pub duration_s: f64,
    pub ok: u64,
    pub achieved_rate: f64,
    pub pay_latency_ms: Summary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    PayP99Ms,
    AchievedRate,
    ErrorRate,
}

/// A stated target and how the run did against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    pub name: String,
    pub target: f64,
    pub actual: f64,
    pub ok: bool,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Second {
    pub t: u64,
    /// Payments the schedule intended in this second (open loop only).
    pub offered: Option<f64>,
    pub sent: u64,
    /// Payments answered as expected in this second.
    pub ok: u64,
    pub errors: u64,
    /// Payment POST latency of the payments intended in this second.
    pub pay_p50_ms: Option<f64>,
    pub pay_p99_ms: Option<f64>,
    /// Server-side finalization latency of the payments created in this second.
    pub finalize_p50_ms: Option<f64>,
    pub finalize_p99_ms: Option<f64>,
    pub outbox_backlog: Option<f64>,
    pub processor_in_flight: Option<f64>,
}

/// Percentile distributions for the plot, by name.
pub struct Distributions(pub Vec<(&'static str, Vec<(f64, f64)>)>);

impl Distributions {
    pub fn of(list: Vec<(&'static str, &hdrhistogram::Histogram<u64>)>) -> Self {
        Self(
            list.into_iter()
                .filter(|(_, h)| !h.is_empty())
                .map(|(n, h)| (n, distribution(h)))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_models() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm =
            "processor\t: 0\nBogoMIPS\t: 50.00\n\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4\n";
        assert_eq!(cpu_model(arm).as_deref(), Some("Raspberry Pi 4"));
        assert_eq!(cpu_model(""), None);
    }
}
