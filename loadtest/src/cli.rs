//! Command line: every option, and the parsers for durations (`30s`, `1m30s`, `250ms`) and
//! ramps (`50:10s,100:10s`).

use crate::schedule::Step;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

/// The largest amount the API accepts, in minor units.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// Load generator for the payment backend: offers payments at a fixed rate (open loop,
/// no coordinated omission), a ramp of rates, or from N closed-loop workers; measures API
/// and acceptance-to-finalization latency; then waits for every payment to be final and
/// checks the money invariants through the API. Exits 0 when every check and every stated
/// target held, 1 when one failed, 2 when the run could not be made (bad options, system
/// down, setup refused).
#[derive(Parser, Debug, Clone)]
#[command(name = "loadtest", version, max_term_width = 100)]
pub struct Args {
    /// Open loop: offered payment rate, payments per second, held for --duration. Each
    /// payment is scheduled at its intended start time and its latency is measured from
    /// that time, so a slow system cannot slow the generator down.
    #[arg(
        long,
        default_value_t = 50.0,
        value_parser = parse_rate,
        conflicts_with_all = ["ramp", "closed"],
    )]
    pub rate: f64,

    /// Length of the load phase (open loop and closed loop): e.g. 30s, 2m, 1m30s, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration, conflicts_with = "ramp")]
    pub duration: Duration,

    /// Open loop with a staircase of rates instead of --rate/--duration:
    /// RATE:DURATION steps, comma-separated, e.g. 50:10s,100:10s,200:10s.
    #[arg(long, value_parser = parse_ramp, conflicts_with = "closed")]
    pub ramp: Option<Ramp>,

    /// Find the capacity instead of one run: one open-loop run per offered rate
    /// (comma-separated, ascending, e.g. 50,100,150), each --step-duration long, until a
    /// step does not hold (see docs/LOADTEST.md, "scripts/bench"). Writes each step's
    /// report under REPORT_DIR/step-RATE/ and the ramp to REPORT_DIR/capacity.json, and
    /// prints the ramp as Markdown.
    #[arg(
        long,
        value_name = "RATES",
        value_parser = parse_rates,
        conflicts_with_all = ["rate", "duration", "ramp", "closed", "target_rate", "target_p99_ms"]
    )]
    pub capacity: Option<Rates>,

    /// Length of each --capacity step.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub step_duration: Duration,

    /// Print the summary of a report an earlier run wrote (its JSON) and exit: 0 if that
    /// run passed, 1 if not.
    #[arg(long, value_name = "FILE")]
    pub show: Option<PathBuf>,

    /// With --show: the headline figures as a Markdown table instead of the summary.
    #[arg(long, requires = "show")]
    pub markdown: bool,

    /// Closed loop: N workers, each sending its next payment as soon as the last one
    /// was answered (measures the maximum throughput; latency is then from the actual send).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub closed: Option<u32>,

    /// Number of wallets (each with its own owner) created and funded before the load.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub wallets: u32,

    /// Amount an admin deposits into each wallet before the load, in minor units. Sized so
    /// that ordinary payments never run a wallet dry; refusals ask for more than this.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub deposit: i64,

    /// Currency of every wallet and payment.
    #[arg(long, default_value = "EUR")]
    pub currency: String,

    /// Share of payments to merchant `test_decline` (accepted, then declined by the
    /// gateway, funds released).
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    pub decline_share: f64,

    /// Share of payments asking for more than the wallet ever held: they must be refused
    /// with 422 insufficient_funds.
    #[arg(long, default_value_t = 0.02, value_parser = parse_share)]
    pub refuse_share: f64,

    /// Share of payments the client sends twice with the same Idempotency-Key; the second
    /// answer must replay the first (same status and body, `Idempotent-Replayed: true`).
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    pub retry_share: f64,

    /// Reads (balance or payment, half each) per payment, offered as their own open-loop
    /// stream at RATE x RATIO per second (closed loop: interleaved by each worker).
    #[arg(long, default_value_t = 0.5, value_parser = parse_ratio)]
    pub read_ratio: f64,

    /// Share of accepted payments the client polls (GET /v1/payments/{id} every
    /// --poll-interval) to observe finalization from the outside.
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    pub poll_share: f64,

    /// Share of ordinary payments the admin refunds once they are seen succeeded (they are
    /// polled): half in full, half in two parts. Refunds must be credited exactly once and
    /// agree with the gateway (checked after the run).
    #[arg(long, default_value_t = 0.05, value_parser = parse_share)]
    pub refund_share: f64,

    /// Interval between two polls of a sampled payment.
    #[arg(long, default_value = "25ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Seed of the mix (which wallet, amount, merchant, retry, refusal): the same seed and
    /// options give the same sequence of payments.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Directory for the JSON and SVG reports (created if missing).
    #[arg(long, env = "LOADTEST_REPORT_DIR", default_value = "target/loadtest")]
    pub report_dir: PathBuf,

    /// Target: payment POST p99 latency in milliseconds; a higher p99 fails the run.
    #[arg(long, value_name = "MS")]
    pub target_p99_ms: Option<f64>,

    /// Target: achieved payment rate per second; a lower one fails the run.
    #[arg(long, value_name = "PER_SECOND")]
    pub target_rate: Option<f64>,

    /// Target: largest acceptable share of API calls with an unexpected outcome (0 = none).
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub max_error_rate: Option<f64>,

    /// Per-request timeout; a timed-out payment is retried with its key (see --attempts).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Attempts per payment when the answer is lost or transient (timeout, connection
    /// error, 409, 429, 5xx), all with the same Idempotency-Key.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub attempts: u32,

    /// After the load, how long to wait for every accepted payment to be final.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Most requests outstanding at once (open loop). When reached, new payments wait for
    /// a slot; their latency still counts from their intended start.
    #[arg(
        long,
        default_value_t = 4096,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
    )]
    pub max_in_flight: u32,

    /// Concurrent requests while creating and funding wallets and while checking.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub setup_concurrency: u32,

    /// No live progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,

    /// wallet-service base URL.
    #[arg(long, env = "WALLET_URL", default_value = "http://127.0.0.1:8080")]
    pub wallet_url: String,

    /// mock-gateway base URL (for /v1/stats and charge look-ups).
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8090")]
    pub gateway_url: String,

    /// wallet-service metrics page (its own listener), for `outbox_backlog`.
    #[arg(
        long,
        env = "WALLET_METRICS_URL",
        default_value = "http://127.0.0.1:9180/metrics"
    )]
    pub wallet_metrics_url: String,

    /// processor-service metrics page (its own listener), for `requests_in_flight`.
    #[arg(
        long,
        env = "PROCESSOR_METRICS_URL",
        default_value = "http://127.0.0.1:9181/metrics"
    )]
    pub processor_metrics_url: String,

    /// The local identity provider that mints the tokens (the default stack's sign-in).
    #[arg(long, env = "IDP_URL")]
    pub idp_url: Option<String>,

    /// HS256 secret, when the stack runs the development sign-in instead.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// `iss` of HS256 tokens, when the service checks one.
    #[arg(long, env = "AUTH_ISSUER", hide = true)]
    pub auth_issuer: Option<String>,

    /// `aud` of HS256 tokens, when the service checks one.
    #[arg(long, env = "AUTH_AUDIENCE", hide = true)]
    pub auth_audience: Option<String>,
}

/// A parsed `--capacity`: offered rates, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates(pub Vec<f64>);

/// A parsed `--ramp`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ramp(pub Vec<Step>);

impl Args {
    /// Where tokens come from: the identity provider, else the secret.
    pub fn tokens(&self) -> Result<shared::auth::TokenSource, shared::auth::TokenRequestError> {
        shared::auth::TokenSource::new(
            self.idp_url.clone(),
            self.jwt_secret.clone(),
            self.auth_issuer.clone(),
            self.auth_audience.clone(),
        )
    }

    /// Cross-option checks clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.decline_share + self.refuse_share > 1.0 {
            return Err("--decline-share + --refuse-share must not exceed 1".into());
        }
        if !(1..=MAX_AMOUNT - 1_000_000).contains(&self.deposit) {
            return Err(format!(
                "--deposit must be 1..={} (refusals ask for a little more)",
                MAX_AMOUNT - 1_000_000
            ));
        }
        if self.deposit < crate::mix::Mix::MAX_ORDINARY_AMOUNT && self.refuse_share < 1.0 {
            return Err(format!(
                "--deposit must be at least {} so ordinary payments fit",
                crate::mix::Mix::MAX_ORDINARY_AMOUNT
            ));
        }
        let c = &self.currency;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err("--currency must be three upper-case letters".into());
        }
        if let Some(Ramp(steps)) = &self.ramp {
            if steps.iter().all(|s| s.rate == 0.0) {
                return Err("--ramp needs at least one step with a positive rate".into());
            }
        }
        Ok(())
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(r.is_finite() && r > 0.0 && r <= 1_000_000.0) {
        return Err("rate must be > 0 and at most 1000000 per second".into());
    }
    Ok(r)
}

fn parse_share(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err("must be a share from 0 to 1".into());
    }
    Ok(r)
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if !(0.0..=100.0).contains(&r) {
        return Err("must be from 0 to 100".into());
    }
    Ok(r)
}

/// `30s`, `500ms`, `2m`, `1h`, `1m30s`, `1.5s`; a bare number is seconds. Must be positive.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return positive(secs, s);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}`: number without a unit (ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(format!(
                "`{s}` is not a duration like 30s, 500ms, 2m, 1m30s"
            ));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("`{}` is not a number", &rest[..num_len]))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("`{s}`: unknown unit `{u}` (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    positive(total, s)
}

fn positive(secs: f64, s: &str) -> Result<Duration, String> {
    if !(secs.is_finite() && secs > 0.0 && secs <= 366.0 * 86400.0) {
        return Err(format!(
            "`{s}`: a duration must be positive (and under a year)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `RATE:DURATION[,RATE:DURATION...]`, e.g. `50:10s,100:10s`. A rate may be 0 (a pause).
pub fn parse_ramp(s: &str) -> Result<Ramp, String> {
    let mut steps = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let (rate, duration) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}`: a ramp step is RATE:DURATION, e.g. 100:10s"))?;
        let rate: f64 = rate
            .trim()
            .parse()
            .map_err(|_| format!("`{rate}` is not a rate"))?;
        if !(rate.is_finite() && (0.0..=1_000_000.0).contains(&rate)) {
            return Err(format!(
                "`{part}`: rate must be from 0 to 1000000 per second"
            ));
        }
        let duration = parse_duration(duration)?;
        steps.push(Step { rate, duration });
    }
    if steps.len() > 1000 {
        return Err("at most 1000 ramp steps".into());
    }
    Ok(Ramp(steps))
}

/// `RATE[,RATE...]`, strictly ascending positive rates, e.g. `50,100,150`.
pub fn parse_rates(s: &str) -> Result<Rates, String> {
    let mut rates: Vec<f64> = Vec::new();
    for part in s.split(',') {
        let rate = parse_rate(part)?;
        if rates.last().is_some_and(|&last| rate <= last) {
            return Err(format!("`{s}`: the rates must be ascending"));
        }
        rates.push(rate);
    }
    if rates.len() > 100 {
        return Err("at most 100 capacity steps".into());
    }
    Ok(Rates(rates))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("30"), Duration::from_secs(30));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d(" 10s "), Duration::from_secs(10));
        for bad in [
            "", "s", "10x", "0s", "0", "-5s", "1.2.3s", "10 s", "ms10", "nan",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn capacity_rates() {
        assert_eq!(
            parse_rates("50, 100,150").unwrap(),
            Rates(vec![50.0, 100.0, 150.0])
        );
        assert!(parse_rates("100,50").unwrap_err().contains("ascending"));
        assert!(parse_rates("50,50").is_err());
        assert!(parse_rates("0,50").is_err());
        assert!(parse_rates("50,x").is_err());
        assert!(parse_rates("").is_err());
    }

    #[test]
    fn ramps() {
        let Ramp(steps) = parse_ramp("50:10s, 100:1m30s,0:2s,12.5:500ms").unwrap();
        assert_eq!(
            steps,
            vec![
                Step {
                    rate: 50.0,
                    duration: Duration::from_secs(10)
                },
                Step {
                    rate: 100.0,
                    duration: Duration::from_secs(90)
                },
                Step {
                    rate: 0.0,
                    duration: Duration::from_secs(2)
                },
                Step {
                    rate: 12.5,
                    duration: Duration::from_millis(500)
                },
            ]
        );
        for bad in [
            "", "50", "50:", ":10s", "x:10s", "-1:10s", "50:10s,", "50:0s", "inf:1s",
        ] {
            assert!(parse_ramp(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn options_parse_and_conflict() {
        let base = ["loadtest", "--jwt-secret", "x"];
        let parse = |extra: &[&str]| Args::try_parse_from(base.iter().chain(extra));
        let a = parse(&[]).unwrap();
        assert_eq!(a.rate, 50.0);
        assert_eq!(a.duration, Duration::from_secs(30));
        assert_eq!(a.wallets, 100);
        assert!(a.validate().is_ok());
        let a = parse(&["--ramp", "10:1s,20:2s"]).unwrap();
        assert_eq!(a.ramp.unwrap().0.len(), 2);
        assert!(parse(&["--ramp", "10:1s", "--rate", "5"]).is_err());
        assert!(parse(&["--ramp", "10:1s", "--duration", "5s"]).is_err());
        assert!(parse(&["--closed", "4", "--rate", "5"]).is_err());
        assert!(parse(&["--closed", "0"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--decline-share", "1.5"]).is_err());
        let a = parse(&["--decline-share", "0.7", "--refuse-share", "0.4"]).unwrap();
        assert!(a.validate().is_err());
        let a = parse(&["--currency", "eur"]).unwrap();
        assert!(a.validate().is_err());
        let a = parse(&["--ramp", "0:1s"]).unwrap();
        assert!(a.validate().is_err());
    }
}
