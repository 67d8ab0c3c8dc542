//! After the load: wait (with a deadline) until every accepted payment is final, then
//! check the money invariants through the API and the gateway.

use crate::api::CallResult;
use crate::mix::PayKind;
use crate::run::{lock, Ctx, PayAnswer, Wallet};
use crate::stats::{histogram, record};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Balance {
    pub available: i64,
    pub held: i64,
}

/// A payment as the server lists it.
#[derive(Debug, Clone)]
pub struct ServerPayment {
    pub id: String,
    pub wallet_id: String,
    pub amount: i64,
    pub status: String,
    pub failure_reason: Option<String>,
    pub description: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
}

impl ServerPayment {
    fn from_json(v: &Value) -> Option<Self> {
        let time = |k: &str| {
            v[k].as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Self {
            id: v["id"].as_str()?.to_owned(),
            wallet_id: v["wallet_id"].as_str()?.to_owned(),
            amount: v["amount"].as_i64()?,
            status: v["status"].as_str()?.to_owned(),
            failure_reason: v["failure_reason"].as_str().map(str::to_owned),
            description: v["description"].as_str().map(str::to_owned),
            created_at: time("created_at"),
            finalized_at: time("finalized_at"),
        })
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Payments the generator saw accepted (202).
    pub accepted: u64,
    /// Payments whose answer was lost but the server has (found by their key).
    pub adopted: u64,
    pub succeeded: u64,
    pub declined: u64,
    pub failed_other: u64,
    pub pending: u64,
    /// Refused as intended (422 insufficient_funds).
    pub refused: u64,
    /// Definitive answers other than the intended one.
    pub rejected: u64,
    /// No definitive answer after every attempt.
    pub unresolved: u64,
}

pub struct Verdict {
    pub checks: Vec<Check>,
    /// Whether every accepted payment was final before the deadline.
    pub drained: bool,
    /// From the end of the load phase until every payment was final (or the deadline).
    pub drain_time: Duration,
    /// Server-side `finalized_at - created_at`.
    pub finalize: Histogram<u64>,
    pub finalize_by_outcome: BTreeMap<String, Histogram<u64>>,
    /// Server-side finalization latency by second of `created_at` since the load started.
    pub finalize_by_second: Vec<Histogram<u64>>,
    pub counts: Counts,
    pub gateway_charges_delta: i64,
}

fn progress(ctx: &Ctx, line: &str) {
    if ctx.args.quiet {
        return;
    }
    let mut err = std::io::stderr().lock();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K[loadtest] {line}");
    } else {
        let _ = writeln!(err, "[loadtest] {line}");
    }
    let _ = err.flush();
}

async fn balances(ctx: &Ctx) -> Vec<Option<Balance>> {
    stream::iter(&ctx.wallets)
        .map(|w| async move {
            let r = ctx
                .api
                .get_patiently(&format!("/v1/wallets/{}/balance", w.id), &w.token)
                .await
                .ok()?;
            if r.status != StatusCode::OK {
                return None;
            }
            Some(Balance {
                available: r.body["available"].as_i64()?,
                held: r.body["held"].as_i64()?,
            })
        })
        .buffered(ctx.args.setup_concurrency as usize)
        .collect()
        .await
}

/// Waits until no wallet holds anything: each pending payment holds its amount (>= 1),
/// so `held == 0` everywhere means every accepted payment is final.
async fn drain(ctx: &Ctx, load_end: Instant) -> (bool, Duration, Vec<Option<Balance>>) {
    let deadline = load_end + ctx.args.drain_timeout;
    let mut last_note = Instant::now();
    loop {
        let b = balances(ctx).await;
        let holding = b.iter().filter(|b| b.is_none_or(|b| b.held > 0)).count();
        if holding == 0 {
            return (true, load_end.elapsed(), b);
        }
        if Instant::now() >= deadline {
            return (false, load_end.elapsed(), b);
        }
        if last_note.elapsed() >= Duration::from_secs(2) {
            let held: i64 = b.iter().flatten().map(|b| b.held).sum();
            progress(
                ctx,
                &format!(
                    "waiting for payments to finish: {holding} wallets still hold {held} ({:.0}s of {:.0}s)",
                    load_end.elapsed().as_secs_f64(),
                    ctx.args.drain_timeout.as_secs_f64()
                ),
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every item of a paged list (`{data, next_cursor}`), following the cursor.
async fn list_all(ctx: &Ctx, path: &str, token: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page = format!(
            "{path}{}limit=100",
            if path.contains('?') { '&' } else { '?' }
        );
        if let Some(c) = &cursor {
            page.push_str("&cursor=");
            page.push_str(&percent_encode(c));
        }
        let r = ctx
            .api
            .get_patiently(&page, token)
            .await
            .map_err(|e| anyhow::anyhow!("GET {page}: {}", e.describe()))?;
        anyhow::ensure!(r.status == StatusCode::OK, "GET {page}: {}", r.describe());
        out.extend(r.body["data"].as_array().into_iter().flatten().cloned());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return Ok(out),
        }
    }
}

/// A wallet's payments and ledger entries (newest first), as the API lists them.
/// Read with the owner's token: the service limits requests per principal.
async fn wallet_records(ctx: &Ctx, w: &Wallet) -> anyhow::Result<(Vec<ServerPayment>, Vec<Entry>)> {
    let wallet_id = &w.id;
    let payments = list_all(
        ctx,
        &format!("/v1/payments?wallet_id={wallet_id}"),
        &w.token,
    )
    .await?
    .iter()
    .map(|p| ServerPayment::from_json(p).ok_or_else(|| anyhow::anyhow!("unreadable payment {p}")))
    .collect::<anyhow::Result<Vec<_>>>()?;
    let entries = list_all(
        ctx,
        &format!("/v1/wallets/{wallet_id}/transactions"),
        &w.token,
    )
    .await?
    .iter()
    .map(|e| Entry::from_json(e).ok_or_else(|| anyhow::anyhow!("unreadable ledger entry {e}")))
    .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((payments, entries))
}

/// A ledger entry as the API lists it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub kind: String,
    pub amount: i64,
    pub payment_id: Option<String>,
    pub available_after: i64,
    pub held_after: i64,
}

impl Entry {
    fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v["id"].as_str()?.to_owned(),
            kind: v["kind"].as_str()?.to_owned(),
            amount: v["amount"].as_i64()?,
            payment_id: v["payment_id"].as_str().map(str::to_owned),
            available_after: v["available_after"].as_i64()?,
            held_after: v["held_after"].as_i64()?,
        })
    }
}

/// What one wallet's ledger says, against the payments the generator knows and the balance.
#[derive(Debug, Default, PartialEq)]
pub struct LedgerView {
    /// Sum of deposit entries.
    pub deposits: i64,
    /// Deposit entries other than the run's own deposit.
    pub foreign_deposits: Vec<(String, i64)>,
    /// Disagreements between the ledger and the payments or the balance.
    pub problems: Vec<String>,
}

/// `payments`: the run's final payments in this wallet (id → (amount, status)).
pub fn read_ledger(
    entries: &[Entry],
    own_deposit: &str,
    payments: &HashMap<&str, (i64, &str)>,
    balance: Option<Balance>,
) -> LedgerView {
    let mut v = LedgerView::default();
    let mut by_payment: HashMap<&str, Vec<(&str, i64)>> = HashMap::new();
    for e in entries {
        match (e.kind.as_str(), e.payment_id.as_deref()) {
            ("deposit", _) => {
                v.deposits += e.amount;
                if e.id != own_deposit {
                    v.foreign_deposits.push((e.id.clone(), e.amount));
                }
            }
            (kind, Some(p)) => by_payment.entry(p).or_default().push((kind, e.amount)),
            (kind, None) => v
                .problems
                .push(format!("{kind} entry {} without a payment", e.id)),
        }
    }
    for (id, &(amount, status)) in payments {
        let mut got = by_payment.remove(id).unwrap_or_default();
        got.sort();
        let want: Vec<(&str, i64)> = match status {
            "succeeded" => vec![("capture", amount), ("hold", amount)],
            "failed" => vec![("hold", amount), ("release", amount)],
            _ => vec![("hold", amount)],
        };
        if got != want {
            v.problems.push(format!(
                "payment {id} ({status}): entries {got:?}, expected {want:?}"
            ));
        }
    }
    for (id, got) in by_payment {
        v.problems.push(format!(
            "entries {got:?} for payment {id}, not one of the run's"
        ));
    }
    if let (Some(last), Some(b)) = (entries.first(), balance) {
        if (last.available_after, last.held_after) != (b.available, b.held) {
            v.problems.push(format!(
                "latest entry leaves available {} held {}, balance says {} {}",
                last.available_after, last.held_after, b.available, b.held
            ));
        }
    }
    v
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn check(checks: &mut Vec<Check>, name: &'static str, ok: bool, detail: String) {
    checks.push(Check { name, ok, detail });
}

fn examples(v: &[String]) -> String {
    let mut s = v.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if v.len() > 3 {
        s.push_str(&format!("; and {} more", v.len() - 3));
    }
    s
}

pub async fn verify(
    ctx: &Ctx,
    load_end: Instant,
    wall_t0: DateTime<Utc>,
    gateway_before: &Value,
) -> anyhow::Result<Verdict> {
    // What the server holds for our wallets: balances (as the drain last read them),
    // payments, ledgers.
    let (drained, drain_time, final_balances) = drain(ctx, load_end).await;
    progress(ctx, "checking the invariants...");
    let listed: Vec<anyhow::Result<(Vec<ServerPayment>, Vec<Entry>)>> = stream::iter(&ctx.wallets)
        .map(|w| wallet_records(ctx, w))
        .buffered(ctx.args.setup_concurrency as usize)
        .collect()
        .await;
    let mut server: HashMap<String, ServerPayment> = HashMap::new();
    let mut ledgers = Vec::with_capacity(listed.len());
    for l in listed {
        let (payments, entries) = l?;
        for p in payments {
            server.insert(p.id.clone(), p);
        }
        ledgers.push(entries);
    }
    let gateway_after = ctx.api.gateway_stats().await?;

    let records = std::mem::take(&mut *lock(&ctx.payments));
    let mut counts = Counts::default();
    let wallet_index: HashMap<&str, usize> = ctx
        .wallets
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.as_str(), i))
        .collect();
    // The generator's view: accepted ids, and the keys whose answer was lost.
    let mut ours: HashMap<String, (usize, i64, PayKind)> = HashMap::new();
    let mut unresolved: HashMap<u64, (usize, i64, PayKind)> = HashMap::new();
    let mut outcome_problems = Vec::new();
    for r in &records {
        if let Some(s) = &r.surprise {
            outcome_problems.push(format!(
                "{} {}: got {s}",
                r.op.kind.label(),
                ctx.key(r.op.n)
            ));
        }
        match &r.outcome {
            PayAnswer::Accepted { id } => {
                counts.accepted += 1;
                ours.insert(id.clone(), (r.op.wallet, r.op.amount, r.op.kind));
            }
            PayAnswer::Refused => counts.refused += 1,
            PayAnswer::Rejected(_) => counts.rejected += 1,
            PayAnswer::Unresolved(_) => {
                counts.unresolved += 1;
                unresolved.insert(r.op.n, (r.op.wallet, r.op.amount, r.op.kind));
            }
        }
    }
    // Server payments that are not ours: adopted if their key was unresolved, else phantoms.
    let mut phantoms = Vec::new();
    let mut mismatched = Vec::new();
    for p in server.values() {
        if let Some(&(w, amount, _)) = ours.get(&p.id) {
            if wallet_index.get(p.wallet_id.as_str()) != Some(&w) || p.amount != amount {
                mismatched.push(format!(
                    "{}: server has {} in {}",
                    p.id, p.amount, p.wallet_id
                ));
            }
            continue;
        }
        let adopted = p
            .description
            .as_deref()
            .and_then(|d| ctx.key_number(d))
            .and_then(|n| unresolved.remove(&n));
        match adopted {
            Some(op) => {
                counts.adopted += 1;
                ours.insert(p.id.clone(), op);
            }
            None => phantoms.push(format!("{} ({}, {:?})", p.id, p.amount, p.description)),
        }
    }
    let missing: Vec<String> = ours
        .keys()
        .filter(|id| !server.contains_key(*id))
        .cloned()
        .collect();

    // Final states, finalization latency, captured amounts per wallet.
    let mut finalize = histogram();
    let mut by_outcome: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut by_second: Vec<Histogram<u64>> = Vec::new();
    let mut captured = vec![0i64; ctx.wallets.len()];
    let mut decline_problems = Vec::new();
    let mut finals: Vec<(String, i64, String, Option<String>)> = Vec::new();
    for (id, &(w, amount, kind)) in &ours {
        let Some(p) = server.get(id) else { continue };
        match p.status.as_str() {
            "pending" => {
                counts.pending += 1;
                continue;
            }
            "succeeded" => {
                counts.succeeded += 1;
                captured[w] += amount;
            }
            _ if p.failure_reason.as_deref() == Some("declined") => counts.declined += 1,
            _ => counts.failed_other += 1,
        }
        if kind == PayKind::Decline
            && !(p.status == "failed" && p.failure_reason.as_deref() == Some("declined"))
        {
            decline_problems.push(format!("{id}: {} {:?}", p.status, p.failure_reason));
        }
        finals.push((
            id.clone(),
            amount,
            p.status.clone(),
            p.failure_reason.clone(),
        ));
        if let (Some(c), Some(f)) = (p.created_at, p.finalized_at) {
            let d = (f - c).to_std().unwrap_or_default();
            record(&mut finalize, d);
            let outcome = match (p.status.as_str(), p.failure_reason.as_deref()) {
                ("succeeded", _) => "succeeded".to_owned(),
                (_, Some(r)) => format!("failed ({r})"),
                (s, None) => s.to_owned(),
            };
            record(by_outcome.entry(outcome).or_insert_with(histogram), d);
            let s = (c - wall_t0).num_seconds().max(0) as usize;
            if by_second.len() <= s {
                by_second.resize_with(s + 1, histogram);
            }
            record(&mut by_second[s], d);
        }
    }

    let mut checks = Vec::new();
    check(
        &mut checks,
        "every accepted payment is final",
        drained && counts.pending == 0,
        if drained && counts.pending == 0 {
            format!(
                "{} payments final {:.1} s after the load ended",
                ours.len(),
                drain_time.as_secs_f64()
            )
        } else {
            format!(
                "{} of {} still pending after {:.0} s (--drain-timeout)",
                counts.pending,
                ours.len(),
                drain_time.as_secs_f64()
            )
        },
    );
    let set_ok = phantoms.is_empty() && missing.is_empty() && mismatched.is_empty();
    check(
        &mut checks,
        "the server holds exactly the payments the generator made",
        set_ok,
        if set_ok {
            format!(
                "{} payments listed for {} wallets{}",
                server.len(),
                ctx.wallets.len(),
                if counts.adopted > 0 {
                    format!(
                        ", {} of them found by key after a lost answer",
                        counts.adopted
                    )
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "{} unknown to the generator [{}], {} missing [{}], {} with another wallet or amount [{}]",
                phantoms.len(),
                examples(&phantoms),
                missing.len(),
                examples(&missing),
                mismatched.len(),
                examples(&mismatched)
            )
        },
    );
    // The run's final payments by wallet, for the ledger comparison.
    let mut final_by_wallet: Vec<HashMap<&str, (i64, &str)>> =
        vec![HashMap::new(); ctx.wallets.len()];
    for (id, &(w, amount, _)) in &ours {
        if let Some(p) = server.get(id) {
            final_by_wallet[w].insert(id.as_str(), (amount, p.status.as_str()));
        }
    }
    let mut money_problems = Vec::new();
    let mut held_problems = Vec::new();
    let mut ledger_problems = Vec::new();
    let mut foreign = Vec::new();
    let (mut total_dep, mut total_cap) = (0i64, 0i64);
    for (i, w) in ctx.wallets.iter().enumerate() {
        let balance = final_balances.get(i).copied().flatten();
        let ledger = read_ledger(&ledgers[i], &w.deposit_id, &final_by_wallet[i], balance);
        ledger_problems.extend(ledger.problems.iter().map(|p| format!("{}: {p}", w.id)));
        if ledger.deposits != w.deposited || !ledger.foreign_deposits.is_empty() {
            foreign.push(format!(
                "{}: deposits {:?} besides the run's {}",
                w.id, ledger.foreign_deposits, w.deposited
            ));
        }
        total_dep += ledger.deposits;
        total_cap += captured[i];
        match balance {
            None => money_problems.push(format!("{}: balance unreadable", w.id)),
            Some(b) => {
                if ledger.deposits != b.available + b.held + captured[i] {
                    money_problems.push(format!(
                        "{}: deposited {} != available {} + held {} + captured {}",
                        w.id, ledger.deposits, b.available, b.held, captured[i]
                    ));
                }
                if b.held != 0 {
                    held_problems.push(format!("{}: held {}", w.id, b.held));
                }
            }
        }
    }
    check(
        &mut checks,
        "per wallet: deposits = available + held + captured",
        money_problems.is_empty(),
        if money_problems.is_empty() {
            format!(
                "{} wallets: {total_dep} deposited, {total_cap} captured by {} succeeded payments",
                ctx.wallets.len(),
                counts.succeeded
            )
        } else {
            format!(
                "{} wallets off: {}",
                money_problems.len(),
                examples(&money_problems)
            )
        },
    );
    check(
        &mut checks,
        "nothing held once every payment is final",
        held_problems.is_empty(),
        if held_problems.is_empty() {
            "held = 0 in every wallet".into()
        } else {
            format!(
                "{} wallets: {}",
                held_problems.len(),
                examples(&held_problems)
            )
        },
    );
    check(
        &mut checks,
        "the ledger agrees with the payments and balances",
        ledger_problems.is_empty(),
        if ledger_problems.is_empty() {
            format!(
                "{} entries: one hold per payment, one capture or release per final one",
                ledgers.iter().map(Vec::len).sum::<usize>()
            )
        } else {
            format!(
                "{} problems: {}",
                ledger_problems.len(),
                examples(&ledger_problems)
            )
        },
    );
    check(
        &mut checks,
        "no other client moved money in the run's wallets",
        foreign.is_empty(),
        if foreign.is_empty() {
            "each wallet holds only the run's deposit and payments".into()
        } else {
            format!(
                "{} wallets had deposits the run did not make (another test running?): {}",
                foreign.len(),
                examples(&foreign)
            )
        },
    );
    let charges = |v: &Value| v["charges"].as_i64().unwrap_or(-1);
    let delta = charges(&gateway_after) - charges(gateway_before);
    check(
        &mut checks,
        "gateway charges delta = succeeded payments",
        delta == counts.succeeded as i64,
        format!(
            "charges {} -> {} (+{delta}), succeeded payments {}{}",
            charges(gateway_before),
            charges(&gateway_after),
            counts.succeeded,
            if delta > counts.succeeded as i64 {
                " (anything else using the gateway at the same time counts too)"
            } else {
                ""
            }
        ),
    );
    let gateway_problems = gateway_agrees(ctx, &finals).await;
    check(
        &mut checks,
        "the gateway's charge of each final payment agrees",
        gateway_problems.is_empty(),
        if gateway_problems.is_empty() {
            format!("{} charges looked up by payment id", finals.len())
        } else {
            format!(
                "{} disagree: {}",
                gateway_problems.len(),
                examples(&gateway_problems)
            )
        },
    );
    let replays = lock(&ctx.replays);
    check(
        &mut checks,
        "every client retry replayed the first response",
        replays.mismatched == 0,
        if replays.mismatched == 0 {
            format!(
                "{} retries: same status and body, Idempotent-Replayed: true",
                replays.checked
            )
        } else {
            format!(
                "{} of {} differ: {}",
                replays.mismatched,
                replays.checked,
                examples(&replays.examples)
            )
        },
    );
    drop(replays);
    outcome_problems.extend(decline_problems.iter().map(|d| format!("decline {d}")));
    check(
        &mut checks,
        "every payment ended as the mix intended",
        outcome_problems.is_empty(),
        if outcome_problems.is_empty() {
            format!(
                "{} refused for insufficient funds, {} declines released{}",
                counts.refused,
                records
                    .iter()
                    .filter(|r| r.op.kind == PayKind::Decline)
                    .count(),
                if counts.unresolved > 0 {
                    format!("; {} answers lost (see errors)", counts.unresolved)
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "{} did not: {}",
                outcome_problems.len(),
                examples(&outcome_problems)
            )
        },
    );
    if std::io::stderr().is_terminal() && !ctx.args.quiet {
        eprint!("\r\x1b[2K");
    }
    Ok(Verdict {
        checks,
        drained,
        drain_time,
        finalize,
        finalize_by_outcome: by_outcome,
        finalize_by_second: by_second,
        counts,
        gateway_charges_delta: delta,
    })
}

/// Looks every final payment up at the gateway by its idempotency key (the payment id):
/// succeeded ↔ a succeeded charge of the same amount, declined ↔ a declined charge,
/// any other failure ↔ no charge (or a voided key).
async fn gateway_agrees(
    ctx: &Ctx,
    finals: &[(String, i64, String, Option<String>)],
) -> Vec<String> {
    let answers: Vec<(usize, CallResult)> = stream::iter(finals.iter().enumerate())
        .map(|(i, (id, ..))| async move { (i, ctx.api.gateway_charge(id).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut problems = Vec::new();
    for (i, r) in answers {
        let (id, amount, status, reason) = &finals[i];
        let problem = match (&r, status.as_str(), reason.as_deref()) {
            (Err(e), ..) => Some(format!("look-up failed: {}", e.describe())),
            (Ok(c), "succeeded", _) => (c.status != StatusCode::OK
                || c.body["status"] != "succeeded"
                || c.body["amount"].as_i64() != Some(*amount))
            .then(|| format!("succeeded but gateway has {} {}", c.status, c.body)),
            (Ok(c), _, Some("declined")) => (c.status != StatusCode::OK
                || c.body["status"] != "declined")
                .then(|| format!("declined but gateway has {} {}", c.status, c.body)),
            (Ok(c), ..) => (c.status == StatusCode::OK && c.body["status"] != "voided")
                .then(|| format!("failed ({reason:?}) but gateway has {}", c.body)),
        };
        if let Some(p) = problem {
            problems.push(format!("{id}: {p}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_payment_parses() {
        let v = serde_json::json!({
            "id": "p1", "wallet_id": "w1", "amount": 250, "currency": "EUR",
            "merchant_id": "m", "description": "lt-x-p3", "status": "succeeded",
            "failure_reason": null, "created_at": "2026-01-01T00:00:00.100Z",
            "updated_at": "2026-01-01T00:00:00.150Z", "finalized_at": "2026-01-01T00:00:00.150Z"
        });
        let p = ServerPayment::from_json(&v).unwrap();
        assert_eq!(p.amount, 250);
        assert_eq!(
            (p.finalized_at.unwrap() - p.created_at.unwrap()).num_milliseconds(),
            50
        );
        assert!(p.failure_reason.is_none());
        assert!(ServerPayment::from_json(&serde_json::json!({"id": "x"})).is_none());
    }

    fn entry(id: &str, kind: &str, amount: i64, payment: Option<&str>, after: (i64, i64)) -> Entry {
        Entry {
            id: id.into(),
            kind: kind.into(),
            amount,
            payment_id: payment.map(Into::into),
            available_after: after.0,
            held_after: after.1,
        }
    }

    #[test]
    fn ledger_reading() {
        // Newest first, as the API lists them.
        let entries = vec![
            entry("e5", "release", 30, Some("p2"), (970, 0)),
            entry("e4", "capture", 100, Some("p1"), (940, 30)),
            entry("e3", "hold", 30, Some("p2"), (870, 130)),
            entry("e2", "hold", 100, Some("p1"), (900, 100)),
            entry("d1", "deposit", 1000, None, (1000, 0)),
        ];
        let payments: HashMap<&str, (i64, &str)> =
            [("p1", (100, "succeeded")), ("p2", (30, "failed"))].into();
        let balance = Some(Balance {
            available: 970,
            held: 0,
        });
        let v = read_ledger(&entries, "d1", &payments, balance);
        assert_eq!(
            v,
            LedgerView {
                deposits: 1000,
                ..Default::default()
            }
        );

        // A foreign deposit, a payment the run does not know, a missing capture, a
        // balance that does not match the latest entry.
        let mut more = entries.clone();
        more.insert(0, entry("x9", "deposit", 5, None, (975, 0)));
        more.insert(0, entry("x8", "hold", 7, Some("p9"), (968, 7)));
        more.retain(|e| e.id != "e4");
        let v = read_ledger(&more, "d1", &payments, balance);
        assert_eq!(v.deposits, 1005);
        assert_eq!(v.foreign_deposits, vec![("x9".to_owned(), 5)]);
        assert_eq!(v.problems.len(), 3, "{:?}", v.problems);
        assert!(v.problems.iter().any(|p| p.contains("p1 (succeeded)")));
        assert!(v.problems.iter().any(|p| p.contains("p9")));
        assert!(v.problems.iter().any(|p| p.contains("balance says 970 0")));
    }

    #[test]
    fn cursor_encoding() {
        assert_eq!(percent_encode("abc-_9"), "abc-_9");
        assert_eq!(percent_encode("a+b/c="), "a%2Bb%2Fc%3D");
    }

    #[test]
    fn examples_are_short() {
        let v: Vec<String> = (0..5).map(|i| i.to_string()).collect();
        assert_eq!(examples(&v), "0; 1; 2; and 2 more");
        assert_eq!(examples(&v[..1]), "0");
    }
}
