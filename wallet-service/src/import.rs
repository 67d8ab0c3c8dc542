//! `wallet-service import FILE`: creates wallets and deposits from a JSON Lines file.
//!
//! One record per line, each with a caller-chosen id, which is what makes a re-run change
//! nothing (ids already present with the same contents are skipped; the same id with other
//! contents is an error):
//!
//! ```text
//! {"type": "wallet", "id": "<uuid>", "owner_id": "alice", "currency": "EUR"}
//! {"type": "deposit", "id": "<uuid>", "wallet_id": "<uuid>", "amount": 10000, "currency": "EUR", "reference": "opening balance"}
//! ```
//!
//! The whole file is parsed and validated before anything is written, and every bad line is
//! reported by number. Records are then written in batches, each batch one transaction, so a
//! record is imported whole or not at all; deposits go through the same code as the API
//! (balance, ledger entry, `wallet.deposited` event).

use crate::store::wallets::{self, DepositOutcome};
use serde::Deserialize;
use shared::ids::WalletId;
use shared::money::{Amount, Currency};
use sqlx::{PgConnection, PgPool};
use std::io::{IsTerminal, Write};
use std::time::Instant;
use uuid::Uuid;

/// Records per transaction.
const BATCH: usize = 500;
/// Only one import at a time (a second one waits), so two runs of one file cannot race.
const IMPORT_LOCK: i64 = 0x696d_706f_7274; // "import"
/// How many bad lines to list before giving up.
const MAX_REPORTED: usize = 20;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    Wallet {
        id: WalletId,
        owner_id: String,
        currency: Currency,
    },
    Deposit {
        id: Uuid,
        wallet_id: WalletId,
        amount: Amount,
        currency: Currency,
        #[serde(default)]
        reference: Option<String>,
    },
}

/// A record that cannot be imported, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{} bad line(s), nothing imported:\n  {}",
        .0.len(),
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Invalid(Vec<BadLine>),
    #[error(
        "{bad}; nothing of that line's batch was written ({done} earlier records are in; \
         re-running the fixed file skips them)"
    )]
    Refused { bad: BadLine, done: usize },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub wallets_created: usize,
    pub wallets_present: usize,
    pub deposits_credited: usize,
    pub deposits_present: usize,
}

impl Summary {
    fn records(&self) -> usize {
        self.wallets_created + self.wallets_present + self.deposits_credited + self.deposits_present
    }
}

/// Parses and validates every line; blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<(usize, Record)>, Vec<BadLine>> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line).map_err(|e| e.to_string()) {
            Ok(r) => match check(&r) {
                Ok(()) => records.push((line_no, r)),
                Err(reason) => bad.push(BadLine {
                    line: line_no,
                    reason,
                }),
            },
            Err(reason) => bad.push(BadLine {
                line: line_no,
                reason,
            }),
        }
        if bad.len() >= MAX_REPORTED {
            break;
        }
    }
    if bad.is_empty() {
        Ok(records)
    } else {
        Err(bad)
    }
}

/// What serde cannot say: the same limits as the API.
fn check(r: &Record) -> Result<(), String> {
    match r {
        Record::Wallet { owner_id, .. } if owner_id.is_empty() || owner_id.len() > 255 => {
            Err("`owner_id` must be 1 to 255 characters".into())
        }
        Record::Deposit {
            reference: Some(r), ..
        } if r.len() > 255 => Err("`reference` must be at most 255 characters".into()),
        _ => Ok(()),
    }
}

/// Imports the file at `path`, reporting progress on stderr.
pub async fn run(pool: &PgPool, path: &str) -> Result<Summary, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_owned(),
        source,
    })?;
    let records = parse(&text).map_err(ImportError::Invalid)?;
    let mut progress = Progress::new(records.len());
    let mut summary = Summary::default();
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(IMPORT_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = import_batches(&mut conn, &records, &mut summary, &mut progress).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(IMPORT_LOCK)
        .execute(&mut *conn)
        .await;
    progress.finish();
    result.map(|()| summary)
}

async fn import_batches(
    conn: &mut PgConnection,
    records: &[(usize, Record)],
    summary: &mut Summary,
    progress: &mut Progress,
) -> Result<(), ImportError> {
    use sqlx::Connection;
    for batch in records.chunks(BATCH) {
        // Counted as written; a refused batch rolls back and its counts go with the error.
        let done = summary.records();
        let mut tx = conn.begin().await?;
        for (line, record) in batch {
            if let Err(reason) = apply(&mut tx, record, summary).await? {
                return Err(ImportError::Refused {
                    bad: BadLine {
                        line: *line,
                        reason,
                    },
                    done,
                });
            }
        }
        tx.commit().await?;
        progress.advance(batch.len());
    }
    Ok(())
}

/// Writes one record; `Ok(Err(reason))` when the database state refuses it.
async fn apply(
    conn: &mut PgConnection,
    record: &Record,
    summary: &mut Summary,
) -> Result<Result<(), String>, sqlx::Error> {
    match record {
        Record::Wallet {
            id,
            owner_id,
            currency,
        } => {
            let (w, created) = wallets::create_with_id(conn, *id, owner_id, *currency).await?;
            if created {
                summary.wallets_created += 1;
            } else if w.owner_id != *owner_id || w.currency != *currency {
                return Ok(Err(format!(
                    "wallet {id} already exists with owner {:?} and currency {}",
                    w.owner_id, w.currency
                )));
            } else {
                summary.wallets_present += 1;
            }
        }
        Record::Deposit {
            id,
            wallet_id,
            amount,
            currency,
            reference,
        } => {
            if let Some(existing) = wallets::find_deposit(conn, *id).await? {
                return Ok(
                    if existing.wallet_id == wallet_id.0
                        && existing.amount == amount.minor_units()
                        && existing.reference == *reference
                    {
                        summary.deposits_present += 1;
                        Ok(())
                    } else {
                        Err(format!(
                            "deposit {id} already exists with other contents (wallet {}, amount {})",
                            existing.wallet_id, existing.amount
                        ))
                    },
                );
            }
            let outcome = wallets::deposit(
                conn,
                *id,
                *wallet_id,
                *amount,
                *currency,
                reference.as_deref(),
            )
            .await?;
            match outcome {
                DepositOutcome::Done(_) => summary.deposits_credited += 1,
                DepositOutcome::WalletNotFound => {
                    return Ok(Err(format!("wallet {wallet_id} does not exist")))
                }
                DepositOutcome::CurrencyMismatch { wallet } => {
                    return Ok(Err(format!(
                        "wallet {wallet_id} holds {wallet}, the deposit is in {currency}"
                    )))
                }
                DepositOutcome::BalanceLimit => {
                    return Ok(Err(format!(
                        "the deposit would take wallet {wallet_id} past the largest balance"
                    )))
                }
            }
        }
    }
    Ok(Ok(()))
}

/// A progress bar on a terminal, a line per tenth otherwise (logs, CI).
struct Progress {
    total: usize,
    done: usize,
    started: Instant,
    tty: bool,
    last_tenth: usize,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_tenth: 0,
        }
    }

    fn advance(&mut self, n: usize) {
        self.done += n;
        let pct = self.done * 100 / self.total.max(1);
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let filled = pct / 5;
            let _ = write!(
                err,
                "\r[import] [{}{}] {pct:>3}% {}/{} records, {rate:.0}/s ",
                "#".repeat(filled),
                "-".repeat(20 - filled),
                self.done,
                self.total
            );
            let _ = err.flush();
        } else if pct / 10 > self.last_tenth {
            self.last_tenth = pct / 10;
            let _ = writeln!(
                err,
                "[import] {pct}% ({}/{} records, {rate:.0}/s)",
                self.done, self.total
            );
        }
    }

    fn finish(&self) {
        if self.tty && self.done > 0 {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_record_kinds_and_names_every_bad_line() {
        let w = Uuid::now_v7();
        let good = format!(
            "{{\"type\":\"wallet\",\"id\":\"{w}\",\"owner_id\":\"alice\",\"currency\":\"EUR\"}}\n\n\
             {{\"type\":\"deposit\",\"id\":\"{}\",\"wallet_id\":\"{w}\",\"amount\":100,\"currency\":\"EUR\"}}\n",
            Uuid::now_v7()
        );
        let records = parse(&good).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].0, 3, "line numbers count blank lines");

        let bad = format!(
            "{good}{{\"type\":\"deposit\",\"id\":\"{}\",\"wallet_id\":\"{w}\",\"amount\":0,\"currency\":\"EUR\"}}\n\
             not json\n\
             {{\"type\":\"wallet\",\"id\":\"{w}\",\"owner_id\":\"\",\"currency\":\"EUR\"}}\n\
             {{\"type\":\"refund\",\"id\":\"{w}\"}}\n\
             {{\"type\":\"wallet\",\"id\":\"{w}\",\"owner_id\":\"a\",\"currency\":\"EUR\",\"extra\":1}}\n",
            Uuid::now_v7()
        );
        let lines: Vec<usize> = parse(&bad).unwrap_err().iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 8]);
    }
}
