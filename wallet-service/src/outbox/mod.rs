//! The transactional outbox: events are written in the same transaction as the change that
//! caused them, then relayed by the [`dispatcher`] (payment requests, to RabbitMQ) and the
//! [`relay`] (events for other systems, to Kafka).

pub mod dispatcher;
pub mod relay;

use serde::Serialize;
use shared::events::{PaymentRequested, RefundRequested};
use shared::notifications::{Fact, Notification, Stream};
use shared::shutdown::Shutdown;
use sqlx::postgres::PgListener;
use sqlx::PgConnection;
use std::time::Duration;
use uuid::Uuid;

/// What a relay waits on between batches: a `NOTIFY` on its relay's channel (sent with every
/// outbox row for that relay, carrying the row's id, see [`Channel::notify_channel`]), the
/// poll interval (the fallback while the listener is down or a notification was missed), or
/// shutdown.
///
/// Each relay listens only for its own rows, notifications that piled up while it was busy
/// wake it once, and a notification for a row the relay has already published wakes it not
/// at all: a row committed just before a batch's `SELECT` is claimed by that batch while its
/// notification is still on the way, and waking for it finds nothing. A wake-up with
/// nothing to claim costs a transaction; at 100 payments/s such wake-ups were half of all
/// relay passes.
pub struct Wakeup {
    pool: sqlx::PgPool,
    channel: &'static str,
    interval: Duration,
    listener: Option<PgListener>,
    published: Recent,
}

impl Wakeup {
    pub fn new(pool: sqlx::PgPool, channel: &'static str, interval: Duration) -> Self {
        Self {
            pool,
            channel,
            interval,
            listener: None,
            published: Recent::default(),
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
        loop {
            tokio::select! {
                n = listener.recv() => {
                    let Ok(n) = n else {
                        self.listener = None;
                        return true;
                    };
                    // The next batch claims every row these announced.
                    let mut new = !self.published.contains(n.payload());
                    while let Some(n) = listener.next_buffered() {
                        new |= !self.published.contains(n.payload());
                    }
                    if new {
                        return true;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return true,
                _ = shutdown.wait() => return false,
            }
        }
    }

    /// Remembers the rows a batch published, so that their notifications wake nobody.
    pub fn published(&mut self, ids: &[Uuid]) {
        self.published.extend(ids);
    }

    /// Drops the listener after a database error; the next [`Wakeup::wait`] reconnects.
    pub fn reset(&mut self) {
        self.listener = None;
        self.published = Recent::default();
    }
}

/// The ids of the last [`Recent::KEPT`] rows published: a notification arrives within
/// milliseconds of its row's commit, long before that many more rows were published.
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<Uuid>,
    set: std::collections::HashSet<Uuid>,
}

impl Recent {
    const KEPT: usize = 4096;

    fn extend(&mut self, ids: &[Uuid]) {
        for id in ids {
            if self.set.insert(*id) {
                self.order.push_back(*id);
            }
        }
        while self.order.len() > Self::KEPT {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Whether a notification's payload names a row published already. Anything else (an
    /// empty payload, from an older writer or by hand) counts as new.
    fn contains(&self, payload: &str) -> bool {
        Uuid::parse_str(payload).is_ok_and(|id| self.set.contains(&id))
    }
}

/// What one relay batch did: how many rows it claimed and which of them it published.
#[derive(Default)]
pub struct Batch {
    pub claimed: usize,
    pub published: Vec<Uuid>,
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

    /// The `LISTEN`/`NOTIFY` channel that wakes the relay of this channel's rows: the
    /// dispatcher for payment requests, the event relay for events and alerts.
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

/// Writes the row and notifies its relay with the row's id; both take effect at commit.
async fn write<E: Serialize>(conn: &mut PgConnection, row: Row<'_, E>) -> Result<(), sqlx::Error> {
    let payload = serde_json::to_value(row.event).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    sqlx::query!(
        "WITH ins AS (
            INSERT INTO outbox (id, aggregate_id, event_type, payload, traceparent, channel)
            VALUES ($1, $2, $3, $4, $5, $6)
         )
         SELECT pg_notify($7, $1::text)",
        row.id,
        row.aggregate_id,
        row.kind,
        payload,
        row.traceparent,
        row.channel.as_str(),
        row.channel.notify_channel(),
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

/// Per channel: unpublished rows and the age in seconds of the oldest one.
pub async fn backlog(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.channel, count(o.id), COALESCE(EXTRACT(EPOCH FROM now() - min(o.created_at))::float8, 0)
         FROM unnest(ARRAY['payments', 'events', 'alerts']) AS c(channel)
         LEFT JOIN outbox o ON o.channel = c.channel AND o.published_at IS NULL
         GROUP BY c.channel",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::Recent;
    use uuid::Uuid;

    #[test]
    fn a_published_row_is_recognised_and_anything_else_is_new() {
        let mut recent = Recent::default();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        recent.extend(&[a]);
        assert!(recent.contains(&a.to_string()));
        assert!(!recent.contains(&b.to_string()));
        assert!(!recent.contains(""), "an empty payload must wake the relay");
        assert!(!recent.contains("not-a-uuid"));
    }

    #[test]
    fn only_the_last_ids_are_kept() {
        let mut recent = Recent::default();
        let ids: Vec<Uuid> = (0..Recent::KEPT + 10).map(|_| Uuid::new_v4()).collect();
        recent.extend(&ids);
        recent.extend(&ids[ids.len() - 5..]); // seen again: not counted twice
        assert_eq!(recent.order.len(), Recent::KEPT);
        assert_eq!(recent.set.len(), Recent::KEPT);
        assert!(
            !recent.contains(&ids[9].to_string()),
            "the oldest were forgotten"
        );
        assert!(recent.contains(&ids[10].to_string()));
        assert!(recent.contains(&ids[ids.len() - 1].to_string()));
    }
}
