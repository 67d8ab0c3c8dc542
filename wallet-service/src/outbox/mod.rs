//! The transactional outbox: events are written in the same transaction as the change that
//! caused them, then relayed by the [`dispatcher`] (payment requests, to RabbitMQ) and the
//! [`relay`] (events for other systems, to Kafka).

pub mod dispatcher;
pub mod doorbell;
pub mod relay;

pub use doorbell::{Chime, Chimes, Doorbell};

use serde::Serialize;
use shared::events::{PaymentRequested, RefundRequested};
use shared::notifications::{Fact, Notification, Stream};
use shared::shutdown::Shutdown;
use sqlx::postgres::PgListener;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// What a relay waits on between batches: the [`Doorbell`] (rung in this process after a
/// commit that wrote rows for it), a `NOTIFY` on its channel (the doorbell of other
/// processes, see [`Channel::notify_channel`]), the poll interval (the fallback while the
/// listener is down or a ring was missed), or shutdown.
///
/// Rings that piled up while the relay was busy wake it once, and rings from before a batch
/// looked for rows wake it not at all ([`Wakeup::before_batch`]): that batch claimed their
/// rows, and waking for them would find nothing. A wake-up with nothing to claim costs a
/// transaction; at 100 payments/s such wake-ups were once half of all relay passes.
///
/// With a linger, a wake-up by a ring waits that long before returning, so that the rows
/// announced meanwhile go in the same batch: one transaction and one round of broker
/// acknowledgements for many rows instead of one each.
pub struct Wakeup {
    pool: sqlx::PgPool,
    channel: &'static str,
    interval: Duration,
    linger: Duration,
    listener: Option<PgListener>,
    chime: Option<Chime>,
}

impl Wakeup {
    pub fn new(pool: sqlx::PgPool, channel: &'static str, interval: Duration) -> Self {
        Self {
            pool,
            channel,
            interval,
            linger: Duration::ZERO,
            listener: None,
            chime: None,
        }
    }

    /// Lets announced rows gather for `linger` before each batch (see the type's doc).
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Wakes on this process's doorbell too.
    pub fn with_chime(mut self, chime: Option<Chime>) -> Self {
        self.chime = chime;
        self
    }

    /// Call just before a batch looks for rows: forgets the rings it answers.
    pub fn before_batch(&mut self) {
        if let Some(chime) = self.chime.as_mut() {
            chime.clear();
        }
        if let Some(listener) = self.listener.as_mut() {
            while listener.next_buffered().is_some() {}
        }
    }

    /// Returns when there may be new rows (true) or on shutdown (false). Without a listener
    /// it connects one and returns at once, since rows may have arrived unannounced.
    pub async fn wait(&mut self, shutdown: &mut Shutdown) -> bool {
        let Some(listener) = self.listener.as_mut() else {
            self.listener = listen(&self.pool, self.channel).await;
            return !shutdown.is_triggered();
        };
        let deadline = tokio::time::Instant::now() + self.interval;
        let chime = &mut self.chime;
        let rung = async {
            match chime.as_mut() {
                Some(chime) => chime.rung().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            n = listener.recv() => {
                if n.is_err() {
                    self.listener = None;
                    return true;
                }
            }
            _ = rung => {}
            _ = tokio::time::sleep_until(deadline) => return true,
            _ = shutdown.wait() => return false,
        }
        linger(self.linger, shutdown).await
    }

    /// Drops the listener after a database error; the next [`Wakeup::wait`] reconnects.
    pub fn reset(&mut self) {
        self.listener = None;
    }
}

/// Waits out a linger; false on shutdown.
async fn linger(linger: Duration, shutdown: &mut Shutdown) -> bool {
    if linger.is_zero() {
        return true;
    }
    shutdown.sleep(linger).await
}

/// What one relay batch did: how many rows it claimed (a full batch means more may wait),
/// and how many of them the broker refused (they stay unpublished).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub claimed: usize,
    pub refused: usize,
}

/// What a relay does after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The batch was full and all went out: more may be waiting, claim again now.
    Again,
    /// Everything waiting went out: wait for a ring or the poll.
    Wait,
    /// The broker refused rows (a full queue, no binding): they are still first in line,
    /// so claiming again now would offer them again at once, for as long as the broker
    /// refuses. Pause first, longer after each refusing batch.
    BackOff,
}

impl Batch {
    pub fn next(&self, batch_size: i64) -> Next {
        if self.refused > 0 {
            Next::BackOff
        } else if self.claimed as i64 >= batch_size {
            Next::Again
        } else {
            Next::Wait
        }
    }
}

async fn listen(pool: &sqlx::PgPool, channel: &str) -> Option<PgListener> {
    let mut l = PgListener::connect_with(pool).await.ok()?;
    l.listen(channel).await.ok()?;
    Some(l)
}

/// Where an outbox row is relayed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `payment.requested` and `refund.requested` to RabbitMQ, for the processor.
    Payments,
    /// `payment.finalized` / `wallet.deposited` to Kafka `payment.events`.
    Events,
    /// `payment.alert` to Kafka `payment.alerts`.
    Alerts,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payments => "payments",
            Self::Events => "events",
            Self::Alerts => "alerts",
        }
    }

    /// The `LISTEN`/`NOTIFY` channel on which other processes ring the relay of this
    /// channel's rows (see [`Doorbell`]): the dispatcher for payment requests, the event
    /// relay for events and alerts.
    pub fn notify_channel(self) -> &'static str {
        match self {
            Self::Payments => "outbox_payments",
            Self::Events | Self::Alerts => "outbox_events",
        }
    }
}

/// One row to write: `aggregate_id` is the payment id for payment requests (their
/// correlation id) and the wallet id for Kafka events (their message key).
struct Row<'a, E> {
    channel: Channel,
    id: Uuid,
    aggregate_id: Uuid,
    kind: &'a str,
    event: &'a E,
    traceparent: Option<&'a str>,
}

/// Writes the row. Its relay learns of it when the writer rings the [`Doorbell`] after
/// committing, or when it polls.
async fn write<E: Serialize>(conn: &mut PgConnection, row: Row<'_, E>) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(row.event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query!(
        "INSERT INTO outbox (id, aggregate_id, event_type, payload, traceparent, channel)
         VALUES ($1, $2, $3, $4, $5, $6)",
        row.id,
        row.aggregate_id,
        row.kind,
        payload,
        row.traceparent,
        row.channel.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A request for the processor (the dispatcher's channel), correlated by its payment.
fn request<'a, E>(
    event_id: Uuid,
    payment_id: Uuid,
    kind: &'a str,
    event: &'a E,
    traceparent: &'a str,
) -> Row<'a, E> {
    Row {
        channel: Channel::Payments,
        id: event_id,
        aggregate_id: payment_id,
        kind,
        event,
        traceparent: Some(traceparent),
    }
}

pub async fn enqueue(
    conn: &mut PgConnection,
    event: &PaymentRequested,
    traceparent: &str,
) -> Result<(), sqlx::Error> {
    let (id, payment) = (event.event_id.0, event.payment.id.0);
    write(conn, request(id, payment, &event.kind, event, traceparent)).await
}

/// Writes a `refund.requested`: it travels like the payment's own request, and its
/// correlation id is the payment's.
pub async fn enqueue_refund(
    conn: &mut PgConnection,
    event: &RefundRequested,
    traceparent: &str,
) -> Result<(), sqlx::Error> {
    let (id, payment) = (event.event_id.0, event.refund.payment_id.0);
    write(conn, request(id, payment, &event.kind, event, traceparent)).await
}

/// Writes a notification for other systems (`payment.finalized`, `wallet.deposited`,
/// `payment.alert`) for the Kafka relay, keyed by its wallet.
pub async fn enqueue_notification<F: Fact>(
    conn: &mut PgConnection,
    notification: &Notification<F>,
    traceparent: Option<&str>,
) -> Result<(), sqlx::Error> {
    let channel = match F::STREAM {
        Stream::Events => Channel::Events,
        Stream::Alerts => Channel::Alerts,
    };
    write(
        conn,
        Row {
            channel,
            id: notification.event_id.0,
            aggregate_id: notification.wallet_id.0,
            kind: &notification.kind,
            event: notification,
            traceparent,
        },
    )
    .await
}

/// How far the backlog gauge counts: past it, the age of the oldest row says how far behind
/// a channel is, and counting on would cost the gauge as much as the outage's backlog.
pub const BACKLOG_COUNTED_UP_TO: i64 = 100_000;

/// Per channel: unpublished rows, counted up to `count_up_to`, and the age in seconds of the
/// oldest one. Both read `outbox_unpublished_idx (channel, seq)`: the oldest is the first
/// entry, and the count stops at its cap, so a broker outage's backlog of millions costs
/// this gauge (every 5 s) no more than its cap; `min(created_at)` and an uncapped count read
/// every waiting row each time.
pub async fn backlog(
    pool: &sqlx::PgPool,
    count_up_to: i64,
) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.channel,
                (SELECT count(*) FROM (SELECT 1 FROM outbox o
                                       WHERE o.channel = c.channel AND o.published_at IS NULL
                                       LIMIT $1) w),
                COALESCE(EXTRACT(EPOCH FROM now() - (
                    SELECT o.created_at FROM outbox o
                    WHERE o.channel = c.channel AND o.published_at IS NULL
                    ORDER BY o.seq LIMIT 1))::float8, 0)
         FROM unnest(ARRAY['payments', 'events', 'alerts']) AS c(channel)",
    )
    .bind(count_up_to)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_with_refusals_backs_off_even_when_full() {
        let batch = |claimed, refused| Batch { claimed, refused };
        assert_eq!(batch(100, 0).next(100), Next::Again);
        assert_eq!(batch(99, 0).next(100), Next::Wait);
        assert_eq!(batch(0, 0).next(100), Next::Wait);
        // A full batch the broker refused would otherwise be claimed and offered again at once.
        assert_eq!(batch(100, 100).next(100), Next::BackOff);
        assert_eq!(batch(100, 1).next(100), Next::BackOff);
        assert_eq!(batch(3, 1).next(100), Next::BackOff);
    }
}
