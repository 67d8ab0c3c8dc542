//! Waking the relays after a commit that wrote outbox rows.
//!
//! Rows are not announced with `pg_notify` inside the transaction that writes them.
//! PostgreSQL takes one database-wide lock when a transaction that notified commits and keeps
//! it until the commit is flushed to disk, so every accept and every finalization committed
//! one at a time, each waiting for its own flush. At 300 payments/s, waiting on that lock
//! was the wait most often sampled in `pg_stat_activity`. Instead, the writer rings after
//! its commit:
//!
//! - in memory, when the relay of the row's channel runs in this process;
//! - otherwise with a `NOTIFY` of its own, sent outside the writing transaction on a
//!   transaction that does not wait for a flush (a notification has nothing to keep), one at
//!   a time: rings during a send cost one more send, not one each.
//!
//! A writer with no doorbell (the `import` command) leaves its rows to the relays' polling.

use super::Channel;
use shared::shutdown::Shutdown;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

/// Rings the relays of the channels a committed transaction wrote to. Cheap to clone.
#[derive(Clone, Default)]
pub struct Doorbell {
    payments: Bell,
    events: Bell,
}

#[derive(Clone, Default)]
enum Bell {
    /// Nobody is rung: the relay finds the rows when it polls.
    #[default]
    Silent,
    /// The relay runs in this process.
    Local(mpsc::Sender<()>),
    /// The relay runs elsewhere: a task sends `NOTIFY` for every burst of rings.
    Remote(Arc<Notify>),
}

/// What a relay in this process hears of the doorbell.
pub struct Chime(mpsc::Receiver<()>);

/// The chimes of the two relays: the dispatcher's and the event relay's.
pub struct Chimes {
    pub payments: Chime,
    pub events: Chime,
}

impl Doorbell {
    /// A doorbell for relays running in this process.
    pub fn local() -> (Self, Chimes) {
        // One pending ring is enough: the relay's next batch claims every committed row.
        let (payments, payments_rx) = mpsc::channel(1);
        let (events, events_rx) = mpsc::channel(1);
        let bell = Self {
            payments: Bell::Local(payments),
            events: Bell::Local(events),
        };
        (
            bell,
            Chimes {
                payments: Chime(payments_rx),
                events: Chime(events_rx),
            },
        )
    }

    /// A doorbell for relays in other processes (`wallet-service dispatch`, or other
    /// instances of `serve`, when this one has `RUN_DISPATCHER=false`): rings become
    /// `NOTIFY`s sent by two tasks on `pool`.
    pub fn remote(tasks: &mut JoinSet<()>, pool: &PgPool, shutdown: &Shutdown) -> Self {
        let mut bell = |channel: Channel| {
            let rung = Arc::new(Notify::new());
            tasks.spawn(announce(
                pool.clone(),
                channel.notify_channel(),
                rung.clone(),
                shutdown.clone(),
            ));
            Bell::Remote(rung)
        };
        Self {
            payments: bell(Channel::Payments),
            events: bell(Channel::Events),
        }
    }

    /// Says that rows of `channel` were committed. Call it after the commit: rung before,
    /// the relay could look before the rows are visible and then sleep until it polls.
    pub fn ring(&self, channel: Channel) {
        let bell = match channel {
            Channel::Payments => &self.payments,
            Channel::Events | Channel::Alerts => &self.events,
        };
        match bell {
            Bell::Silent => {}
            // Full means a ring is already pending, which is all this one would say.
            Bell::Local(tx) => {
                let _ = tx.try_send(());
            }
            Bell::Remote(rung) => rung.notify_one(),
        }
    }
}

impl Chime {
    /// Waits for a ring; never returns once every doorbell is gone.
    pub async fn rung(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Forgets a pending ring. A relay calls it just before a batch looks for rows: a ring
    /// that came before is for rows the batch will claim, and would only wake it again to
    /// find nothing.
    pub fn clear(&mut self) {
        while self.0.try_recv().is_ok() {}
    }
}

/// Sends a `NOTIFY` on `channel` for every burst of rings, until shutdown.
async fn announce(pool: PgPool, channel: &'static str, rung: Arc<Notify>, mut shutdown: Shutdown) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = rung.notified() => {}
            _ = shutdown.wait() => return,
        }
        // `set_config(.., true)` lasts for this statement's own transaction, whose commit
        // then does not wait for the disk: the notification is delivered either way.
        let sent =
            sqlx::query("SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')")
                .bind(channel)
                .execute(&pool)
                .await;
        match sent {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(channel, "relays are told of new outbox rows again");
            }
            Ok(_) => {}
            // Once per outage: the relays still find the rows when they poll.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    channel,
                    error = %e,
                    "cannot tell the relays of new outbox rows; they will find them when they poll",
                );
            }
            Err(_) => {}
        }
    }
}
