//! Setup (wallets, deposits) and the load phase: open loop, ramp or closed loop, with the
//! poller for sampled payments, the metrics scraper and the progress line.

use crate::api::{Api, CallResult, Reply};
use crate::cli::Args;
use crate::mix::{Mix, PayKind, PayOp, ReadOp};
use crate::schedule::Schedule;
use crate::stats::{histogram, record, Recorder};
use anyhow::{bail, Context as _};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};

pub struct Wallet {
    pub id: String,
    pub token: String,
    pub deposited: i64,
    /// The deposit's id (its ledger entry).
    pub deposit_id: String,
}

/// How a payment ended from the client's point of view.
#[derive(Debug, Clone, PartialEq)]
pub enum PayAnswer {
    /// 202: the payment exists, with this id.
    Accepted { id: String },
    /// 422 insufficient_funds.
    Refused,
    /// Another definitive answer (the `STATUS code`).
    Rejected(String),
    /// No definitive answer after every attempt: the payment may or may not exist.
    Unresolved(String),
}

pub struct PayRecord {
    pub op: PayOp,
    pub outcome: PayAnswer,
    /// The definitive answer was not the one the mix intended (e.g. a refusal accepted).
    pub surprise: Option<String>,
}

#[derive(Default)]
pub struct Replays {
    pub checked: u64,
    pub mismatched: u64,
    pub examples: Vec<String>,
}

/// One scrape of the queues, once a second.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t: Duration,
    pub outbox_backlog: Option<f64>,
    pub in_flight: Option<f64>,
}

struct PollJob {
    id: String,
    wallet: usize,
    accepted: Instant,
    /// When to poll next: every --poll-interval, or every tenth of the time waited so far
    /// if that is longer (10 % resolution without flooding the API with polls when
    /// finalization is slow).
    next: Instant,
}

/// Everything the tasks of a run share.
pub struct Ctx {
    pub args: Args,
    pub api: Api,
    pub mix: Mix,
    pub run_id: String,
    pub wallets: Vec<Wallet>,
    /// `None` in closed loop.
    pub schedule: Option<Schedule>,
    pub t0: Instant,
    pub rec: Mutex<Recorder>,
    pub payments: Mutex<Vec<PayRecord>>,
    pub replays: Mutex<Replays>,
    pub samples: Mutex<Vec<Sample>>,
    recent: Mutex<VecDeque<(String, usize)>>,
    poll_tx: Mutex<Option<mpsc::UnboundedSender<PollJob>>>,
    stop_scraper: AtomicBool,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    pub fn key(&self, n: u64) -> String {
        format!("lt-{}-p{n}", self.run_id)
    }

    /// Inverse of [`Ctx::key`] on a payment's description.
    pub fn key_number(&self, key: &str) -> Option<u64> {
        key.strip_prefix(&format!("lt-{}-p", self.run_id))?
            .parse()
            .ok()
    }

    fn step_at(&self, intended: Duration) -> usize {
        self.schedule.as_ref().map_or(0, |s| s.step_at(intended))
    }

    fn since_start(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.t0)
    }
}

/// Latencies of the setup calls (wallet creation, deposits).
pub type SetupLatency = BTreeMap<&'static str, Histogram<u64>>;

/// Creates one wallet per owner and funds it with one admin deposit.
pub async fn setup(
    args: &Args,
    api: &Api,
    run_id: &str,
    admin: &str,
    tokens: &shared::auth::TokenSource,
) -> anyhow::Result<(Vec<Wallet>, SetupLatency)> {
    let ttl = args.duration.as_secs()
        + args
            .ramp
            .as_ref()
            .map_or(0, |r| r.0.iter().map(|s| s.duration.as_secs()).sum())
        + args.drain_timeout.as_secs()
        + 3600;
    // The longest lifetime the services accept by default.
    let ttl = ttl.min(shared::auth::DEFAULT_MAX_LIFETIME_SECS);
    let lat = Mutex::new(SetupLatency::new());
    let results: Vec<anyhow::Result<Wallet>> = stream::iter(0..args.wallets)
        .map(|i| {
            let lat = &lat;
            async move {
                let owner = format!("lt-{run_id}-{i}");
                let token = tokens.token(&owner, false, ttl).await?;
                let (key, body) = (
                    format!("lt-{run_id}-w{i}"),
                    json!({"currency": args.currency}),
                );
                let (w, d) = with_retries(args.attempts, || {
                    api.post("/v1/wallets", &token, &key, &body)
                })
                .await;
                record(lock(lat).entry("wallet").or_insert_with(histogram), d);
                let w = expect(w, StatusCode::CREATED, "POST /v1/wallets")?;
                let id = w.body["id"]
                    .as_str()
                    .context("wallet without an id")?
                    .to_owned();
                let (path, key, body) = (
                    format!("/v1/wallets/{id}/deposits"),
                    format!("lt-{run_id}-d{i}"),
                    json!({"amount": args.deposit, "currency": args.currency,
                           "reference": format!("loadtest {run_id}")}),
                );
                let (r, d) =
                    with_retries(args.attempts, || api.post(&path, admin, &key, &body)).await;
                record(lock(lat).entry("deposit").or_insert_with(histogram), d);
                let r = expect(r, StatusCode::CREATED, "POST /v1/wallets/{id}/deposits")?;
                let deposit_id = r.body["id"].as_str().unwrap_or_default().to_owned();
                let deposited = r.body["amount"]
                    .as_i64()
                    .context("deposit without amount")?;
                Ok(Wallet {
                    id,
                    token,
                    deposited,
                    deposit_id,
                })
            }
        })
        .buffered(args.setup_concurrency as usize)
        .collect()
        .await;
    let wallets = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok((wallets, lat.into_inner().unwrap_or_else(|e| e.into_inner())))
}

/// Calls `f` until it gets a definitive answer or the attempts run out (rate limiting,
/// 429, is waited out as long as Retry-After says, for up to a minute, without using up
/// an attempt); returns the last result and the time of the last call.
async fn with_retries<F, Fut>(attempts: u32, mut f: F) -> (CallResult, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = CallResult>,
{
    let mut attempt = 1;
    let limited_until = Instant::now() + Duration::from_secs(60);
    loop {
        let t = Instant::now();
        let r = f().await;
        let d = t.elapsed();
        match &r {
            Ok(reply) if reply.status == StatusCode::TOO_MANY_REQUESTS => {
                let wait = reply.retry_after.unwrap_or(Duration::from_millis(500));
                if Instant::now() + wait < limited_until {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return (r, d);
            }
            Ok(reply) if !reply.transient() => return (r, d),
            _ if attempt >= attempts => return (r, d),
            _ => {}
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

fn backoff(attempt: u32) -> Duration {
    let base = 100u64 << attempt.min(6);
    Duration::from_millis(base + fastrand::u64(0..=base / 2))
}

fn expect(r: CallResult, status: StatusCode, what: &str) -> anyhow::Result<Reply> {
    match r {
        Ok(reply) if reply.status == status => Ok(reply),
        Ok(reply) => bail!("{what} answered {}: {}", reply.status, reply.body),
        Err(e) => bail!("{what}: {}", e.describe()),
    }
}

/// How a payment's answer compares with what the mix intended.
enum Judged {
    Expected,
    Unexpected(String),
    Transient(String),
}

fn judge(kind: PayKind, r: &CallResult) -> Judged {
    match r {
        Err(e) => Judged::Transient(e.describe()),
        Ok(reply) if reply.transient() => Judged::Transient(reply.describe()),
        Ok(reply) => {
            let expected = match kind {
                PayKind::Refuse => {
                    reply.status == StatusCode::UNPROCESSABLE_ENTITY
                        && reply.code() == Some("insufficient_funds")
                }
                _ => reply.status == StatusCode::ACCEPTED && reply.body["id"].is_string(),
            };
            if expected {
                Judged::Expected
            } else {
                Judged::Unexpected(reply.describe())
            }
        }
    }
}

impl Ctx {
    pub fn new(
        args: Args,
        api: Api,
        mix: Mix,
        run_id: String,
        wallets: Vec<Wallet>,
        schedule: Option<Schedule>,
    ) -> Self {
        let steps = schedule.as_ref().map_or(1, |s| s.steps().len());
        Self {
            args,
            api,
            mix,
            run_id,
            wallets,
            schedule,
            t0: Instant::now(),
            rec: Mutex::new(Recorder::new(steps)),
            payments: Mutex::new(Vec::new()),
            replays: Mutex::new(Replays::default()),
            samples: Mutex::new(Vec::new()),
            recent: Mutex::new(VecDeque::new()),
            poll_tx: Mutex::new(None),
            stop_scraper: AtomicBool::new(false),
        }
    }

    /// One payment: the POST (latency from `intended`), recovery attempts if the answer
    /// was lost, the deliberate client retry, and hand-off to the poller.
    async fn pay(&self, op: PayOp, intended: Instant) {
        let w = &self.wallets[op.wallet];
        let key = self.key(op.n);
        let body = json!({
            "wallet_id": w.id,
            "amount": op.amount,
            "currency": self.args.currency,
            "merchant_id": op.merchant,
            "description": key,
        });
        let label = op.kind.label();
        let sent = Instant::now();
        let mut last = self.api.post("/v1/payments", &w.token, &key, &body).await;
        let now = Instant::now();
        // From the intended start; from the send if that came (slightly) earlier.
        let latency = now - intended.min(sent);
        let at = self.since_start(now);
        let intended_at = self.since_start(intended);
        let mut judged = judge(op.kind, &last);
        {
            let mut rec = lock(&self.rec);
            let ok = matches!(judged, Judged::Expected);
            rec.also("pay_service", now - sent);
            rec.pay(latency, intended_at, at, ok, self.step_at(intended_at));
            match &judged {
                Judged::Expected => {}
                Judged::Unexpected(d) | Judged::Transient(d) => {
                    rec.error(format!("{label} {d}"), at)
                }
            }
        }
        // The answer was lost or transient: ask again under the same key.
        let mut attempt = 1;
        while matches!(judged, Judged::Transient(_)) && attempt < self.args.attempts {
            let hint = last.as_ref().ok().and_then(|r| r.retry_after);
            tokio::time::sleep(hint.unwrap_or_default().max(backoff(attempt))).await;
            attempt += 1;
            let t = Instant::now();
            last = self.api.post("/v1/payments", &w.token, &key, &body).await;
            judged = judge(op.kind, &last);
            let mut rec = lock(&self.rec);
            rec.latency("retry", t.elapsed());
            let at = self.since_start(Instant::now());
            match &judged {
                Judged::Expected => rec.late_ok(at, self.step_at(intended_at)),
                Judged::Unexpected(d) | Judged::Transient(d) => rec.error(format!("retry {d}"), at),
            }
        }
        // What the answer means for the money, whatever the mix intended.
        let (outcome, surprise) = match (judged, &last) {
            (Judged::Transient(d), _) => (PayAnswer::Unresolved(d), None),
            (judged, Ok(r)) => {
                let surprise = match judged {
                    Judged::Unexpected(d) => Some(d),
                    _ => None,
                };
                let outcome = match r.body["id"].as_str() {
                    Some(id) if r.status == StatusCode::ACCEPTED => {
                        PayAnswer::Accepted { id: id.to_owned() }
                    }
                    _ if r.code() == Some("insufficient_funds") => PayAnswer::Refused,
                    _ => PayAnswer::Rejected(r.describe()),
                };
                (outcome, surprise)
            }
            (_, Err(e)) => (PayAnswer::Unresolved(e.describe()), None),
        };
        let accepted_at = Instant::now();
        if op.retry {
            if let Ok(first) = &last {
                if !matches!(outcome, PayAnswer::Unresolved(_)) {
                    self.replay(&key, &w.token, &body, first).await;
                }
            }
        }
        if let PayAnswer::Accepted { id } = &outcome {
            {
                let mut recent = lock(&self.recent);
                if recent.len() >= 1024 {
                    recent.pop_front();
                }
                recent.push_back((id.clone(), op.wallet));
            }
            if op.poll {
                if let Some(tx) = lock(&self.poll_tx).as_ref() {
                    let _ = tx.send(PollJob {
                        id: id.clone(),
                        wallet: op.wallet,
                        accepted: accepted_at,
                        next: accepted_at,
                    });
                }
            }
        }
        lock(&self.payments).push(PayRecord {
            op,
            outcome,
            surprise,
        });
    }

    /// Sends the same request under the same key again: the answer must be the first one.
    async fn replay(&self, key: &str, token: &str, body: &Value, first: &Reply) {
        let t = Instant::now();
        let again = self.api.post("/v1/payments", token, key, body).await;
        let d = t.elapsed();
        let problem = match &again {
            Err(e) => Some(format!("{key}: replay got no answer ({})", e.describe())),
            Ok(r) if r.status != first.status => Some(format!(
                "{key}: replay status {} differs from first {}",
                r.status, first.status
            )),
            Ok(r) if r.body != first.body => Some(format!(
                "{key}: replay body differs: first {} then {}",
                first.body, r.body
            )),
            Ok(r) if !r.replayed => {
                Some(format!("{key}: replay without Idempotent-Replayed: true"))
            }
            Ok(_) => None,
        };
        {
            let mut rec = lock(&self.rec);
            rec.latency("replay", d);
            if problem.is_some() {
                let what = match &again {
                    Err(e) => e.describe(),
                    Ok(_) => "mismatch".into(),
                };
                rec.error(format!("replay {what}"), self.since_start(Instant::now()));
            }
        }
        let mut replays = lock(&self.replays);
        replays.checked += 1;
        if let Some(p) = problem {
            replays.mismatched += 1;
            if replays.examples.len() < 5 {
                replays.examples.push(p);
            }
        }
    }

    /// A balance or payment read, latency from `intended`.
    async fn read(&self, op: ReadOp, intended: Instant) {
        let (payment, wallet) = match op {
            ReadOp::Balance { wallet } => (None, wallet),
            ReadOp::Payment { pick } => {
                let recent = lock(&self.recent);
                if recent.is_empty() {
                    (None, (pick % self.wallets.len() as u64) as usize)
                } else {
                    let (id, w) = &recent[(pick % recent.len() as u64) as usize];
                    (Some(id.clone()), *w)
                }
            }
        };
        let w = &self.wallets[wallet];
        let (label, kind, path) = match &payment {
            Some(id) => ("read-payment", "read_payment", format!("/v1/payments/{id}")),
            None => (
                "read-balance",
                "read_balance",
                format!("/v1/wallets/{}/balance", w.id),
            ),
        };
        let sent = Instant::now();
        let r = self.api.get(&path, &w.token).await;
        let now = Instant::now();
        let d = now - intended.min(sent);
        let mut rec = lock(&self.rec);
        rec.latency("read", d);
        rec.also(kind, d);
        rec.reads += 1;
        let problem = match &r {
            Ok(reply) if reply.status == StatusCode::OK => None,
            Ok(reply) => Some(reply.describe()),
            Err(e) => Some(e.describe()),
        };
        if let Some(p) = problem {
            rec.error(format!("{label} {p}"), self.since_start(now));
        }
    }
}

/// Runs the load phase; returns when every request it started has been answered, with
/// the poller (still watching sampled payments until they are final) to await later.
pub async fn load(ctx: Arc<Ctx>) -> tokio::task::JoinHandle<()> {
    let (poll_tx, poll_rx) = mpsc::unbounded_channel();
    *lock(&ctx.poll_tx) = Some(poll_tx);
    let poller = tokio::spawn(poller(ctx.clone(), poll_rx));
    // The scraper runs through the drain too, until `stop_scraper`.
    tokio::spawn(scraper(ctx.clone()));
    let progress = tokio::spawn(progress(ctx.clone()));

    if let Some(workers) = ctx.args.closed {
        closed_loop(ctx.clone(), workers).await;
    } else {
        let schedule = ctx.schedule.clone().expect("open loop has a schedule");
        let max = ctx.args.max_in_flight;
        let sem = Arc::new(Semaphore::new(max as usize));
        let reads = schedule.scaled(ctx.args.read_ratio);
        let pays = tokio::spawn(open_loop(ctx.clone(), schedule, sem.clone(), true));
        let reads = tokio::spawn(open_loop(ctx.clone(), reads, sem.clone(), false));
        let _ = pays.await;
        let _ = reads.await;
        // Every request holds a permit until it is answered.
        let _all = sem.acquire_many(max).await;
    }
    // No more payments: the poller finishes what it has.
    lock(&ctx.poll_tx).take();
    progress.abort();
    let _ = progress.await;
    if std::io::stderr().is_terminal() && !ctx.args.quiet {
        eprintln!();
    }
    poller
}

pub fn stop_scraper(ctx: &Ctx) {
    ctx.stop_scraper.store(true, Relaxed);
}

async fn open_loop(ctx: Arc<Ctx>, schedule: Schedule, sem: Arc<Semaphore>, pays: bool) {
    for n in 0..schedule.total() {
        let Some(at) = schedule.arrival(n) else { break };
        let intended = ctx.t0 + at;
        // Tokio's timer fires on the next millisecond tick after the deadline; waking a
        // tick early keeps the send close to the intended time instead of always late.
        let wake = intended
            .checked_sub(Duration::from_millis(1))
            .unwrap_or(intended);
        tokio::time::sleep_until(wake.into()).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            return;
        };
        {
            let mut rec = lock(&ctx.rec);
            record(
                &mut rec.lag,
                Instant::now().saturating_duration_since(intended),
            );
            if pays {
                rec.sent(at);
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if pays {
                let op = ctx.mix.pay(n);
                ctx.pay(op, intended).await;
            } else {
                let op = ctx.mix.read(n);
                ctx.read(op, intended).await;
            }
        });
    }
}

async fn closed_loop(ctx: Arc<Ctx>, workers: u32) {
    let end = ctx.t0 + ctx.args.duration;
    let next_pay = Arc::new(AtomicU64::new(0));
    let next_read = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (ctx, next_pay, next_read) = (ctx.clone(), next_pay.clone(), next_read.clone());
            tokio::spawn(async move {
                let mut reads_owed = 0.0;
                while Instant::now() < end {
                    let n = next_pay.fetch_add(1, Relaxed);
                    let start = Instant::now();
                    lock(&ctx.rec).sent(ctx.since_start(start));
                    ctx.pay(ctx.mix.pay(n), start).await;
                    reads_owed += ctx.args.read_ratio;
                    while reads_owed >= 1.0 && Instant::now() < end {
                        reads_owed -= 1.0;
                        let m = next_read.fetch_add(1, Relaxed);
                        ctx.read(ctx.mix.read(m), Instant::now()).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Polls sampled payments until each is final: client-observed acceptance → finalization.
async fn poller(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<PollJob>) {
    let mut pending: Vec<PollJob> = Vec::new();
    let mut open = true;
    let mut give_up: Option<Instant> = None;
    let mut tick = tokio::time::interval(ctx.args.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if pending.is_empty() && open {
            match rx.recv().await {
                Some(job) => pending.push(job),
                None => open = false,
            }
        }
        while open {
            match rx.try_recv() {
                Ok(job) => pending.push(job),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if !open {
            if pending.is_empty() {
                return;
            }
            let deadline = *give_up.get_or_insert_with(|| Instant::now() + ctx.args.drain_timeout);
            if Instant::now() > deadline {
                let mut rec = lock(&ctx.rec);
                let at = ctx.since_start(Instant::now());
                for _ in &pending {
                    rec.error("poll still pending at the deadline".into(), at);
                }
                return;
            }
        }
        tick.tick().await;
        let now = Instant::now();
        let (due, later): (Vec<PollJob>, Vec<PollJob>) = std::mem::take(&mut pending)
            .into_iter()
            .partition(|j| j.next <= now);
        pending = later;
        let results: Vec<(PollJob, CallResult, Instant, Duration)> = stream::iter(due)
            .map(|job| {
                let ctx = &ctx;
                async move {
                    let t = Instant::now();
                    let w = &ctx.wallets[job.wallet];
                    let r = ctx
                        .api
                        .get(&format!("/v1/payments/{}", job.id), &w.token)
                        .await;
                    let answered = Instant::now();
                    (job, r, answered, answered - t)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut rec = lock(&ctx.rec);
        for (mut job, r, answered, d) in results {
            rec.latency("poll", d);
            let problem = match &r {
                Ok(reply) if reply.status == StatusCode::OK => {
                    if reply.body["status"].as_str() != Some("pending") {
                        record(&mut rec.finalize_observed, answered - job.accepted);
                        continue;
                    }
                    None
                }
                Ok(reply) => Some(reply.describe()),
                Err(e) => Some(e.describe()),
            };
            if let Some(p) = problem {
                rec.error(format!("poll {p}"), ctx.since_start(answered));
            }
            let waited = answered - job.accepted;
            job.next = answered + ctx.args.poll_interval.max(waited / 10);
            pending.push(job);
        }
    }
}

/// Once a second: `outbox_backlog` (wallet-service) and `requests_in_flight` (processor).
async fn scraper(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !ctx.stop_scraper.load(Relaxed) {
        tick.tick().await;
        let t = ctx.since_start(Instant::now());
        let (outbox, in_flight) = tokio::join!(
            ctx.api.scrape(&ctx.api.wallet_metrics, "outbox_backlog"),
            ctx.api
                .scrape(&ctx.api.processor_metrics, "requests_in_flight"),
        );
        lock(&ctx.samples).push(Sample {
            t,
            outbox_backlog: outbox,
            in_flight,
        });
    }
}

/// The live line on stderr: every second on a terminal, every 5 s otherwise.
async fn progress(ctx: Arc<Ctx>) {
    if ctx.args.quiet {
        return;
    }
    let tty = std::io::stderr().is_terminal();
    let every = if tty { 1 } else { 5 };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_ok = 0;
    let mut last_t = Instant::now();
    let mut since_print = 0;
    loop {
        tick.tick().await;
        since_print += 1;
        let now = Instant::now();
        let (sent, ok, errors, p99) = {
            let rec = lock(&ctx.rec);
            let p99 = rec
                .api
                .get("pay")
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0);
            (rec.pay_sent, rec.pay_ok, rec.errors_total(), p99)
        };
        let rate = (ok - last_ok) as f64 / (now - last_t).as_secs_f64();
        if since_print < every {
            continue;
        }
        since_print = 0;
        (last_ok, last_t) = (ok, now);
        let backlog = lock(&ctx.samples)
            .last()
            .and_then(|s| s.outbox_backlog)
            .filter(|b| !b.is_nan());
        let line = format!(
            "[loadtest] {:>5.1}s  sent {sent}  ok {ok}  errors {errors}  rate {rate:.1}/s  p99 {}  outbox {}",
            ctx.since_start(now).as_secs_f64(),
            p99.map_or("-".into(), |p| format!("{p:.1} ms")),
            backlog.map_or("-".into(), |b| format!("{b:.0}")),
        );
        let mut err = std::io::stderr().lock();
        if tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }
}
