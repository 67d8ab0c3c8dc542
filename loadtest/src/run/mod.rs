//! Setup (wallets, deposits) and the load phase: open loop, ramp or closed loop, with the
//! poller for sampled payments, the metrics scraper and the progress line.

mod calls;
mod refunds;
mod setup;
mod watch;

pub use refunds::RefundRecord;

pub use setup::{setup, SetupLatency};
use watch::{poller, progress, scraper};

use crate::api::Api;
use crate::cli::Args;
use crate::mix::{Mix, PayOp};
use crate::schedule::Schedule;
use crate::stats::{record, Recorder};
use std::collections::VecDeque;
use std::io::IsTerminal;
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
    /// The payment's number and amount, for its refund (`PayOp::refund`).
    n: u64,
    amount: i64,
    refund: bool,
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
    /// The admin's token: refunds are an operator's act.
    admin: String,
    pub refunds: Mutex<Vec<RefundRecord>>,
    refund_tasks: Mutex<tokio::task::JoinSet<()>>,
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

impl Ctx {
    pub fn new(
        args: Args,
        api: Api,
        mix: Mix,
        run_id: String,
        wallets: Vec<Wallet>,
        schedule: Option<Schedule>,
        admin: String,
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
            admin,
            refunds: Mutex::new(Vec::new()),
            refund_tasks: Mutex::new(tokio::task::JoinSet::new()),
            recent: Mutex::new(VecDeque::new()),
            poll_tx: Mutex::new(None),
            stop_scraper: AtomicBool::new(false),
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
