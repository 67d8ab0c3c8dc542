//! Beside the load: the poller of sampled payments, the metrics scraper and the
//! progress line.

use super::{lock, Ctx, PollJob, Sample};
use crate::api::CallResult;
use crate::stats::record;
use futures_util::stream::{self, StreamExt};
use reqwest::StatusCode;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Polls sampled payments until each is final: client-observed acceptance → finalization.
pub(super) async fn poller(ctx: Arc<Ctx>, mut rx: mpsc::UnboundedReceiver<PollJob>) {
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
                        if job.refund && reply.body["status"] == "succeeded" {
                            ctx.start_refunds(&job.id, job.wallet, job.n, job.amount);
                        }
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
pub(super) async fn scraper(ctx: Arc<Ctx>) {
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
pub(super) async fn progress(ctx: Arc<Ctx>) {
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
