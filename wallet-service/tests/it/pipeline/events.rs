//! The downstream events (`payment.events`, `payment.alerts`): one event per fact, through
//! relays that crash and run side by side, and duplicate results.

use super::DEADLINE;
use crate::common::pipeline::*;
use crate::common::*;
use rdkafka::producer::FutureProducer;
use reqwest::StatusCode;
use serde_json::Value;
use shared::events::PaymentResult;
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome};
use shared::topology::KafkaTopics;
use sqlx::PgPool;

/// Payments of 600.00 EUR reach the test alert threshold (`ALERT_THRESHOLDS` = EUR=50000).
const LARGE: i64 = 60_000;

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn every_fact_yields_one_event_through_relay_crashes_and_duplicate_results(pool: PgPool) {
    let gw = gateway(0).await;
    // The API and the result consumer in one instance; the relays in others, which crash.
    let api = spawn(
        pool.clone(),
        Opts {
            finalizer: true,
            ..Default::default()
        },
    )
    .await;
    let prefix = api.prefix.clone();
    let relay = || {
        spawn(
            pool.clone(),
            Opts {
                dispatcher: true,
                prefix: prefix.clone(),
                ..Default::default()
            },
        )
    };
    let proc = processor(&prefix, &gw.url("")).await;
    let topics = KafkaTopics::with_prefix(&prefix);

    let owners = ["alice", "bob", "carol"];
    let mut wallets = Vec::new();
    for owner in owners {
        let w = api.create_wallet(owner, "EUR").await;
        api.deposit(&w, 1_000_000, "EUR").await;
        api.deposit(&w, 500_000, "EUR").await;
        wallets.push((owner, w));
    }
    let mut accepted = Vec::new();
    // Three rounds of traffic; the relay crashes (abruptly, batches in flight) after each.
    let r = relay().await;
    traffic(&api, &wallets, &mut accepted, 0).await;
    r.crash();
    // Two relays at once for a round: they must not publish an event twice.
    let (r1, r2) = (relay().await, relay().await);
    traffic(&api, &wallets, &mut accepted, 1).await;
    r1.crash();
    r2.crash();
    let r = relay().await;
    traffic(&api, &wallets, &mut accepted, 2).await;
    r.crash();
    let last = relay().await;

    // Duplicate and conflicting results for payments already final change nothing.
    let (owner, first) = &accepted[2];
    api.final_status(owner, first, DEADLINE).await;
    let pid: PaymentId = first.parse().unwrap();
    let producer: FutureProducer = shared::kafka::producer(&kafka_brokers()).unwrap();
    let mut injected = Vec::new();
    for outcome in [Outcome::Succeeded, Outcome::Failed, Outcome::Succeeded] {
        let reason = (outcome == Outcome::Failed).then_some(FailureReason::Declined);
        let r = PaymentResult::new(EventId::new(), pid, outcome, reason, None);
        injected.push(r.event_id.0);
        send_result(
            &producer,
            &topics.results,
            first,
            &serde_json::to_vec(&r).unwrap(),
        )
        .await;
    }
    for (owner, id) in &accepted {
        api.final_status(owner, id, DEADLINE).await;
    }
    eventually("duplicate results consumed", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM processed_events WHERE event_id = ANY($1) AND NOT applied",
        )
        .bind(&injected)
        .fetch_one(&pool)
        .await
        .unwrap();
        (n == 3).then_some(())
    })
    .await;

    // A crash after Kafka acknowledged but before the row was marked: the same events again.
    sqlx::query(
        "UPDATE outbox SET published_at = NULL WHERE id IN (
            SELECT id FROM outbox WHERE channel <> 'payments' ORDER BY seq LIMIT 4)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('outbox_events', '')")
        .execute(&pool)
        .await
        .unwrap();
    eventually("every event relayed", DEADLINE, || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE channel <> 'payments' AND published_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;

    let messages = read_topics(&[&topics.events, &topics.alerts]).await;
    // Copies of one event are identical and keyed by their wallet.
    let mut by_event: std::collections::HashMap<String, Value> = Default::default();
    for (key, event, _) in &messages {
        assert_eq!(key, event["wallet_id"].as_str().unwrap(), "key = wallet id");
        assert_eq!(event["version"], 1);
        let id = event["event_id"].as_str().unwrap().to_owned();
        if let Some(before) = by_event.insert(id, event.clone()) {
            assert_eq!(&before, event, "a redelivered event changed");
        }
    }
    assert!(
        messages.len() >= by_event.len() + 4,
        "the four unmarked events were sent again ({} messages, {} events)",
        messages.len(),
        by_event.len()
    );
    let facts = |ty: &str, field: &str| {
        let mut per_fact: std::collections::HashMap<String, usize> = Default::default();
        for e in by_event.values().filter(|e| e["type"] == ty) {
            *per_fact
                .entry(e[field]["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        per_fact
    };
    let finalized = facts("payment.finalized", "payment");
    let deposited = facts("wallet.deposited", "deposit");
    let alerts = facts("payment.alert", "payment");
    assert!(
        finalized
            .values()
            .chain(deposited.values())
            .chain(alerts.values())
            .all(|&n| n == 1),
        "one event id per fact"
    );

    let final_payments: Vec<(uuid::Uuid, String, i64)> =
        sqlx::query_as("SELECT id, status, amount FROM payments WHERE status <> 'pending'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(final_payments.len(), accepted.len());
    assert_eq!(
        finalized.len(),
        final_payments.len(),
        "one payment.finalized per final payment"
    );
    for (id, status, _) in &final_payments {
        let e = by_event
            .values()
            .find(|e| e["type"] == "payment.finalized" && e["payment"]["id"] == id.to_string())
            .unwrap_or_else(|| panic!("no payment.finalized for {id}"));
        assert_eq!(&e["payment"]["status"], status);
    }
    let large: std::collections::HashSet<String> = final_payments
        .iter()
        .filter(|(_, _, amount)| *amount >= LARGE)
        .map(|(id, _, _)| id.to_string())
        .collect();
    assert_eq!(large.len(), 9);
    assert_eq!(
        alerts
            .keys()
            .cloned()
            .collect::<std::collections::HashSet<_>>(),
        large
    );
    let deposit_ids: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT id FROM ledger_entries WHERE kind = 'deposit'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(deposit_ids.len(), 6);
    for (id,) in deposit_ids {
        assert!(
            deposited.contains_key(&id.to_string()),
            "no wallet.deposited for {id}"
        );
    }
    assert_eq!(deposited.len(), 6);
    assert_money_conserved(&pool).await;

    last.stop().await;
    proc.stop().await;
    api.stop().await;
}

/// Events announced while the relay lingers go out in one batch: one transaction (so one
/// `published_at`) for all of them, instead of one batch per deposit.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn events_announced_within_the_linger_share_one_batch(pool: PgPool) {
    let api = spawn(pool.clone(), Opts::default()).await;
    let wallet = api.create_wallet("alice", "EUR").await;
    let config = wallet_service::config::DispatcherConfig {
        events_linger: std::time::Duration::from_secs(2),
        ..dispatcher_config()
    };
    let producer = shared::kafka::producer(&kafka_brokers()).unwrap();
    let relay = wallet_service::outbox::relay::EventRelay::new(
        pool.clone(),
        producer,
        &broker_config(&api.prefix),
        config,
    );
    let (trigger, shutdown) = shared::shutdown::channel();
    let task = tokio::spawn(relay.run(shutdown));
    // Deposits made before the relay listens would be found by its first pass instead.
    eventually("the relay listening", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%outbox_events%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (n > 0).then_some(())
    })
    .await;

    for _ in 0..8 {
        api.deposit(&wallet, 1_000, "EUR").await;
    }
    let batches: i64 = eventually("every deposit relayed", DEADLINE, || async {
        let (left, batches): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE published_at IS NULL),
                    count(DISTINCT published_at)
             FROM outbox WHERE channel = 'events'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(batches)
    })
    .await;
    // Eight deposits take far less than the two-second linger; a slow machine may split
    // them once.
    assert!(batches <= 2, "8 events in {batches} batches");
    let deposited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE channel = 'events' AND event_type = 'wallet.deposited'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(deposited, 8);
    trigger.fire();
    task.await.unwrap();
    api.stop().await;
}

/// An event Kafka refuses for good (here larger than the producer's `message.max.bytes`,
/// 1,000,000 bytes by default) is parked with Kafka's reason instead of being offered again
/// forever, and the events behind it, of the same wallet too, go on. Requeued by an
/// operator while the cause stands, it is refused and parked again, holding up nothing.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn an_event_kafka_refuses_for_good_is_parked_and_the_events_behind_it_go_on(pool: PgPool) {
    let api = spawn(pool.clone(), Opts::default()).await;
    let wallet = api.create_wallet("alice", "EUR").await;
    let wallet_id: uuid::Uuid = wallet.parse().unwrap();
    api.deposit(&wallet, 1_000, "EUR").await;
    let poison = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_id, event_type, channel, payload)
         VALUES ($1, $2, 'wallet.deposited', 'events',
                 jsonb_build_object('padding', repeat('x', 1100000)))",
    )
    .bind(poison)
    .bind(wallet_id)
    .execute(&pool)
    .await
    .unwrap();
    api.deposit(&wallet, 2_000, "EUR").await;

    let producer = shared::kafka::producer(&kafka_brokers()).unwrap();
    let relay = wallet_service::outbox::relay::EventRelay::new(
        pool.clone(),
        producer,
        &broker_config(&api.prefix),
        dispatcher_config(),
    );
    let (trigger, shutdown) = shared::shutdown::channel();
    let task = tokio::spawn(relay.run(shutdown));
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM outbox WHERE channel = 'events' AND published_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let parked = || async {
        sqlx::query_as::<
            _,
            (
                uuid::Uuid,
                uuid::Uuid,
                String,
                chrono::DateTime<chrono::Utc>,
            ),
        >("SELECT id, aggregate_id, reason, parked_at FROM outbox_parked")
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    eventually("nothing left waiting", DEADLINE, || async {
        (waiting().await == 0).then_some(())
    })
    .await;
    let first = parked().await;
    assert_eq!(first.len(), 1, "{first:?}");
    let (id, of_wallet, reason, first_parked_at) = first[0].clone();
    assert_eq!((id, of_wallet), (poison, wallet_id));
    assert!(reason.contains("MessageSizeTooLarge"), "{reason}");
    let published: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE channel = 'events' AND published_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(published, 2, "both deposits' events marked published");

    // On Kafka: both deposits, in the order they were made; not the parked event.
    let topics = KafkaTopics::with_prefix(&api.prefix);
    let amounts: Vec<i64> = read_topics(&[&topics.events])
        .await
        .into_iter()
        .map(|(key, event, _)| {
            assert_eq!(key, wallet);
            assert_ne!(event["event_id"], poison.to_string());
            event["deposit"]["amount"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(amounts, [1_000, 2_000]);

    let report = wallet_service::review::report(&pool, 10).await.unwrap();
    assert!(
        report.contains(&format!("--requeue-event {poison}")),
        "{report}"
    );
    assert!(wallet_service::review::requeue_event(&pool, poison)
        .await
        .unwrap());
    let again = eventually("parked again", DEADLINE, || async {
        let rows = parked().await;
        rows.first()
            .is_some_and(|r| r.3 > first_parked_at)
            .then_some(rows)
    })
    .await;
    assert_eq!(again.len(), 1);
    assert_eq!(waiting().await, 0);
    // An id that is not parked is refused.
    assert!(
        !wallet_service::review::requeue_event(&pool, uuid::Uuid::new_v4())
            .await
            .unwrap()
    );

    trigger.fire();
    task.await.unwrap();
    api.stop().await;
}

/// Fifteen payments across the wallets: a third large, a fifth declined.
async fn traffic(
    api: &TestApp,
    wallets: &[(&str, String)],
    accepted: &mut Vec<(String, String)>,
    round: i64,
) {
    for i in 0..15 {
        let (owner, wallet) = &wallets[(i % 3) as usize];
        let (amount, merchant) = match i % 5 {
            0 => (LARGE, "shop"),
            1 => (700, "test_decline"),
            _ => (1_000 + round * 100 + i, "shop"),
        };
        let (status, id) = api.pay_id(owner, wallet, amount, merchant).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        accepted.push((owner.to_string(), id));
    }
}
