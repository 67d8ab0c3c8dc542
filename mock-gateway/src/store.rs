//! Charges by idempotency key, the keys being processed, and the optional append-only
//! file that lets the gateway remember its charges (and their refunds, `refunds.rs`) across
//! restarts. What is kept, and for how long, is `retention.rs`'s business.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The statuses are the wire contract's, shared with the processor.
pub use shared::gateway::ChargeStatus;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub idempotency_key: String,
    pub status: ChargeStatus,
    pub amount: i64,
    pub currency: String,
    pub merchant_id: String,
    pub reference: Option<String>,
    pub decline_code: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What a charge request finds for its key.
pub enum Claim {
    /// The key was charged before.
    Existing(Charge),
    /// Another request with this key is being processed.
    InProgress,
    /// The key is now reserved for this request until the guard is dropped.
    Claimed(InFlight),
}

#[derive(Default)]
pub(crate) struct Keys {
    pub(crate) charges: HashMap<String, Charge>,
    pub(crate) in_flight: HashSet<String>,
    pub(crate) refunds: crate::refunds::Refunds,
    /// Charges by status, kept as they are added so `/v1/stats` does not scan them all.
    counts: ChargeCounts,
    /// Charge keys by the time of their charge and of each of their refunds, oldest first:
    /// what retention walks, so forgetting costs what is forgotten, not what is kept.
    pub(crate) activity: VecDeque<(DateTime<Utc>, String)>,
    /// Charges forgotten by retention since start.
    pub(crate) forgotten: u64,
}

/// Numbers of succeeded, declined and voided keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChargeCounts {
    pub succeeded: u64,
    pub declined: u64,
    pub voided: u64,
}

impl Keys {
    /// Adds a charge unless its key already has one (the first line of a key wins, as the
    /// first request did), keeping the counts in step.
    fn insert_charge(&mut self, charge: Charge) {
        let std::collections::hash_map::Entry::Vacant(slot) =
            self.charges.entry(charge.idempotency_key.clone())
        else {
            return;
        };
        let count = match charge.status {
            ChargeStatus::Succeeded => &mut self.counts.succeeded,
            ChargeStatus::Declined => &mut self.counts.declined,
            ChargeStatus::Voided => &mut self.counts.voided,
        };
        *count += 1;
        self.activity
            .push_back((charge.created_at, charge.idempotency_key.clone()));
        slot.insert(charge);
    }

    /// Adds a recorded refund; its charge counts as active again from the refund's time.
    pub(crate) fn insert_refund(&mut self, refund: crate::refunds::Refund) {
        self.activity
            .push_back((refund.created_at, refund.charge_key.clone()));
        self.refunds.insert(refund);
    }
}

/// One line of the data file: a charge, or a refund of one (told apart by the refund's
/// `charge_key`, which a charge line never has).
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Refund(crate::refunds::Refund),
    Charge(Charge),
}

pub struct Store {
    // One lock over both sets, so "not charged and not in flight" is checked and the key
    // reserved in one step: two requests with the same key can never both charge.
    pub(crate) keys: Mutex<Keys>,
    /// Locked before `keys` whenever both are (recording, compacting), never after.
    pub(crate) file: Option<Mutex<DataFile>>,
}

/// The open data file and how many records it holds, live or forgotten.
pub(crate) struct DataFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) lines: u64,
}

impl Store {
    pub fn in_memory() -> Self {
        Self {
            keys: Mutex::default(),
            file: None,
        }
    }

    /// Opens (or creates) the data file and loads its charges.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("opening data file {}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .with_context(|| format!("reading data file {}", path.display()))?;

        // A line without its newline was cut short by a crash before it was fsync'd, so its
        // charge was never acknowledged: drop it, or the next append would be glued onto it.
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = bytes.len() - complete,
                "dropping torn last line",
            );
            file.set_len(complete as u64)?;
        }

        let mut keys = Keys::default();
        let mut lines = 0;
        for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let record: Record = serde_json::from_slice(line).with_context(|| {
                format!("{}:{}: not a charge or a refund", path.display(), n + 1)
            })?;
            match record {
                Record::Charge(charge) => keys.insert_charge(charge),
                Record::Refund(refund) => keys.insert_refund(refund),
            }
        }
        // A compacted file is in no particular order; retention walks the oldest first.
        keys.activity.make_contiguous().sort_unstable();
        crate::retention::remove_unfinished_compaction(path);
        tracing::info!(
            path = %path.display(),
            charges = keys.charges.len(),
            refunds = keys.refunds.len(),
            "loaded charges and refunds",
        );
        Ok(Self {
            keys: Mutex::new(keys),
            file: Some(Mutex::new(DataFile {
                file,
                path: path.to_owned(),
                lines,
            })),
        })
    }

    pub fn claim(self: &Arc<Self>, key: &str) -> Claim {
        let mut keys = lock(&self.keys);
        if let Some(charge) = keys.charges.get(key) {
            Claim::Existing(charge.clone())
        } else if !keys.in_flight.insert(key.to_owned()) {
            Claim::InProgress
        } else {
            Claim::Claimed(InFlight {
                store: Arc::clone(self),
                key: key.to_owned(),
            })
        }
    }

    /// The charge under `key`; `Err(())` while a request with the key is being processed,
    /// because "no charge yet" would then not be the final word.
    pub fn lookup(&self, key: &str) -> Result<Option<Charge>, ()> {
        let keys = lock(&self.keys);
        match keys.charges.get(key) {
            Some(c) => Ok(Some(c.clone())),
            None if keys.in_flight.contains(key) => Err(()),
            None => Ok(None),
        }
    }

    /// The charges by status and the refund totals, from one snapshot (running totals kept
    /// as records are added, so `/v1/stats` costs the same however many there are).
    pub fn counts(&self) -> (ChargeCounts, crate::refunds::RefundCounts) {
        let keys = lock(&self.keys);
        (keys.counts, keys.refunds.counts())
    }

    /// Charges forgotten by retention since start.
    pub fn forgotten_charges(&self) -> u64 {
        lock(&self.keys).forgotten
    }
}

impl Store {
    /// Appends one record to the data file and fsyncs it (nothing without a file), then
    /// makes it visible with `apply`. Blocking.
    ///
    /// The file stays locked until `apply` has run: a compaction, which rewrites the file
    /// from memory under the same lock, can then never miss a record that is already in
    /// the file but not yet in memory.
    pub(crate) fn record<T>(
        &self,
        record: &impl Serialize,
        apply: impl FnOnce(&mut Keys) -> T,
    ) -> io::Result<T> {
        let _file = match &self.file {
            Some(file) => {
                let mut line = Vec::new();
                write_line(&mut line, record)?;
                let mut file = lock(file);
                let end = file.file.metadata()?.len();
                if let Err(e) = file
                    .file
                    .write_all(&line)
                    .and_then(|()| file.file.sync_data())
                {
                    // Not acknowledged, so not kept: a part of the line would be glued to
                    // the next record, and a whole one would shadow the retry that succeeds.
                    if let Err(cut) = file.file.set_len(end) {
                        tracing::error!(error = %cut, "cannot cut a failed record off the data file");
                    }
                    return Err(e);
                }
                file.lines += 1;
                Some(file)
            }
            None => None,
        };
        Ok(apply(&mut lock(&self.keys)))
    }
}

/// One record as a data-file line: its JSON and a newline.
pub(crate) fn write_line(out: &mut impl Write, record: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// A key reserved by one request; dropping it without [`InFlight::record`] (an unavailable
/// answer) frees the key uncharged.
pub struct InFlight {
    store: Arc<Store>,
    key: String,
}

impl InFlight {
    /// Appends the charge to the data file and fsyncs it, then makes it visible. Blocking:
    /// call it from a blocking thread.
    pub fn record(self, charge: Charge) -> io::Result<Charge> {
        debug_assert_eq!(charge.idempotency_key, self.key);
        self.store
            .record(&charge, |keys| keys.insert_charge(charge.clone()))?;
        Ok(charge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.store.keys).in_flight.remove(&self.key);
    }
}

/// The critical sections cannot panic half-way, so a poisoned lock still holds
/// consistent data.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
