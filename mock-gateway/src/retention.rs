//! Retention: the gateway forgets a charge, with its refunds, once nothing has happened to
//! it for `GATEWAY_RETENTION_SECS`, and rewrites its data file without the forgotten records
//! once they make up half of it. Memory and file then stay proportional to the charges of
//! one retention period instead of every charge ever made.
//!
//! A forgotten key can be charged again, as with a real gateway whose idempotency window has
//! passed: the retention must outlast every retry of a payment (the processor's attempts,
//! the wallet's re-drives, a long outage of the processor). A refund of a forgotten charge
//! is refused as `charge_not_refundable`.

use crate::store::{lock, write_line, DataFile, Keys, Store};
use chrono::{DateTime, Utc};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Lines allowed beyond twice the live records before the file is rewritten, so that a
/// small file is not rewritten on every pass.
const COMPACT_SLACK: u64 = 64;

/// What one retention pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub forgotten_charges: usize,
    pub forgotten_refunds: usize,
    pub kept_charges: usize,
    pub kept_refunds: usize,
    /// The data file's records before and after, when it was rewritten.
    pub compacted: Option<(u64, u64)>,
}

impl Keys {
    /// Forgets every charge whose last activity (the charge or its latest refund) is before
    /// `cutoff`, unless one of its refunds is in flight. Walks only the expired entries of
    /// the activity queue.
    fn forget_before(&mut self, cutoff: DateTime<Utc>) -> Pass {
        let mut pass = Pass::default();
        let mut busy = Vec::new();
        while self.activity.front().is_some_and(|(at, _)| *at < cutoff) {
            let (_, key) = self.activity.pop_front().expect("checked above");
            let Some(charge) = self.charges.get(&key) else {
                continue; // forgotten through an earlier entry
            };
            let last = self
                .refunds
                .latest(&key)
                .map_or(charge.created_at, |r| r.max(charge.created_at));
            if last >= cutoff {
                continue; // a later entry of the queue stands for the refund
            }
            if self.refunds.in_flight_on(&key) {
                busy.push(key);
                continue;
            }
            self.charges.remove(&key);
            pass.forgotten_charges += 1;
            pass.forgotten_refunds += self.refunds.forget_charge(&key);
        }
        let now = Utc::now();
        self.activity.extend(busy.into_iter().map(|key| (now, key)));
        self.forgotten += pass.forgotten_charges as u64;
        pass.kept_charges = self.charges.len();
        pass.kept_refunds = self.refunds.len();
        pass
    }
}

impl Store {
    /// One retention pass: forgets what had no activity since `cutoff`, then rewrites the
    /// data file if forgotten records make up more than half of it. Blocking.
    ///
    /// The file is locked first, as when recording, so nothing is recorded while the live
    /// records are written out and the file replaced; lookups wait only for the writing.
    pub fn forget_before(&self, cutoff: DateTime<Utc>) -> io::Result<Pass> {
        let mut file = self.file.as_ref().map(lock);
        let mut rewritten = None;
        let mut pass = {
            let mut keys = lock(&self.keys);
            let pass = keys.forget_before(cutoff);
            let live = (pass.kept_charges + pass.kept_refunds) as u64;
            if let Some(file) = file
                .as_deref()
                .filter(|f| f.lines > 2 * live + COMPACT_SLACK)
            {
                rewritten = Some((file.write_next(&keys)?, live));
            }
            pass
        };
        if let (Some(file), Some((next, live))) = (file.as_deref_mut(), rewritten) {
            let before = file.lines;
            file.replace(next, live)?;
            pass.compacted = Some((before, live));
        }
        Ok(pass)
    }
}

impl DataFile {
    /// Writes every live record to a new file beside the data file, through a small buffer:
    /// to the page cache, a few milliseconds per 10,000 records. (A copy of the records in
    /// memory instead was a buffer the size of the file, which the allocator kept, in a
    /// different arena each time, and the gateway's memory grew with every compaction.)
    fn write_next(&self, keys: &Keys) -> io::Result<File> {
        let path = compaction_path(&self.path);
        // Opened for appending, so that once renamed it takes the next records as it is.
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(0)?;
        let mut out = BufWriter::with_capacity(64 * 1024, &file);
        for charge in keys.charges.values() {
            write_line(&mut out, charge)?;
        }
        for refund in keys.refunds.all() {
            write_line(&mut out, refund)?;
        }
        out.flush()?;
        drop(out);
        Ok(file)
    }

    /// Makes `next` (`lines` records) the data file atomically: fsync'd, then renamed over
    /// it. A crash before the rename leaves the old file whole.
    fn replace(&mut self, next: File, lines: u64) -> io::Result<()> {
        next.sync_all()?;
        std::fs::rename(compaction_path(&self.path), &self.path)?;
        // The new file is the data file from here on, whatever happens next: the old one
        // is unlinked, and a record appended to it would be lost at the next start.
        self.file = next;
        self.lines = lines;
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

fn compaction_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".compacting");
    PathBuf::from(name)
}

/// Removes what a compaction cut short by a crash left beside the data file (the data file
/// itself is whole: it is only ever replaced by a rename).
pub(crate) fn remove_unfinished_compaction(path: &Path) {
    let next = compaction_path(path);
    if std::fs::remove_file(&next).is_ok() {
        tracing::warn!(path = %next.display(), "removed an unfinished compaction of the data file");
    }
}

pub fn describe_metrics() {
    metrics::describe_gauge!(
        "gateway_retained_records",
        "Charges and refunds the gateway remembers, by record (charge or refund)."
    );
    metrics::describe_counter!(
        "gateway_forgotten_records_total",
        "Charges and refunds forgotten after the retention period, by record."
    );
}

/// Runs a retention pass every `every`, forgetting what had no activity for `retention`.
pub fn spawn(store: Arc<Store>, retention: Duration, every: Duration) -> JoinHandle<()> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let cutoff = Utc::now()
                .checked_sub_signed(retention)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            let store = Arc::clone(&store);
            match tokio::task::spawn_blocking(move || store.forget_before(cutoff)).await {
                Ok(Ok(pass)) => report(&pass),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "retention pass failed; the data file is unchanged and the next pass tries again")
                }
                Err(e) => tracing::error!(error = %e, "retention pass panicked"),
            }
        }
    })
}

fn report(pass: &Pass) {
    metrics::gauge!("gateway_retained_records", "record" => "charge").set(pass.kept_charges as f64);
    metrics::gauge!("gateway_retained_records", "record" => "refund").set(pass.kept_refunds as f64);
    metrics::counter!("gateway_forgotten_records_total", "record" => "charge")
        .increment(pass.forgotten_charges as u64);
    metrics::counter!("gateway_forgotten_records_total", "record" => "refund")
        .increment(pass.forgotten_refunds as u64);
    if pass.forgotten_charges > 0 {
        tracing::info!(
            charges = pass.forgotten_charges,
            refunds = pass.forgotten_refunds,
            kept_charges = pass.kept_charges,
            kept_refunds = pass.kept_refunds,
            "forgot charges with no activity for the retention period; their keys can be charged again",
        );
    }
    if let Some((before, after)) = pass.compacted {
        tracing::info!(
            before,
            after,
            "rewrote the data file without the forgotten records"
        );
    }
}
