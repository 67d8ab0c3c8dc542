//! Payments through the pipeline: from the API to final balances, results that are
//! duplicated, conflicting or poison, dispatchers that run side by side, poison requests on
//! the queue, a gateway slower than the timeout, and a lost request the reconciler re-drives.

use super::DEADLINE;
use crate::common::pipeline::*;
use crate::common::*;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::events::PaymentResult;
use shared::ids::{EventId, PaymentId};
use shared::status::{FailureReason, Outcome};
use shared::topology::{AmqpTopology, KafkaTopics};
use sqlx::PgPool;
use std::time::Duration;
use wallet_service::config::DispatcherConfig;

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn payments_flow_from_api_to_finalized_balances(pool: PgPool) {
    let gw = gateway(0).await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor(&app.prefix, &gw.url("")).await;

    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 100_000, "EUR").await;
    let mut expected_captured = 0;
    let mut ids = Vec::new();
    for i in 0..30 {
        let (merchant, amount) = match i % 5 {
            0 => ("test_decline", 700),
            1 => ("test_unavailable", 300),
            _ => ("shop", 1_000 + i),
        };
        let (status, id) = app.pay_id("alice", &wallet, amount, merchant).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        if merchant == "shop" {
            expected_captured += amount;
        }
        ids.push((id, merchant));
    }
    eventually("all payments final", DEADLINE, || async {
        (pending_count(&pool).await == 0).then_some(())
    })
    .await;

    for (id, merchant) in &ids {
        let p = app.payment("alice", id).await;
        let (status, reason) = match *merchant {
            "test_decline" => ("failed", json!("declined")),
            "test_unavailable" => ("failed", json!("gateway_unavailable")),
            _ => ("succeeded", Value::Null),
        };
        assert_eq!(
            (p["status"].as_str().unwrap(), &p["failure_reason"]),
            (status, &reason),
            "payment {id} via {merchant}"
        );
        assert!(p["finalized_at"].is_string());
    }
    assert_eq!(
        app.balance("alice", &wallet).await,
        (100_000 - expected_captured, 0)
    );
    assert_money_conserved(&pool).await;
    let stats = gateway_stats(&gw).await;
    assert_eq!(
        stats["charges"], 18,
        "gateway charged exactly the succeeded payments: {stats}"
    );
    assert_eq!(stats["declined"], 6);
    let kinds: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM ledger_entries GROUP BY kind ORDER BY kind")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        kinds,
        [
            ("capture".into(), 18),
            ("deposit".into(), 1),
            ("hold".into(), 30),
            ("release".into(), 12)
        ]
    );

    proc.stop().await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn duplicate_conflicting_and_poison_results_change_nothing(pool: PgPool) {
    let app = spawn(
        pool.clone(),
        Opts {
            finalizer: true,
            ..Default::default()
        },
    )
    .await;
    let topics = KafkaTopics::with_prefix(&app.prefix);
    topics.create(&kafka_brokers()).await.unwrap();
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let (_, first) = app.pay_id("alice", &wallet, 400, "m").await;
    let (_, sentinel) = app.pay_id("alice", &wallet, 100, "m").await;
    let pid: PaymentId = first.parse().unwrap();
    let sentinel_id: PaymentId = sentinel.parse().unwrap();

    let producer: FutureProducer = shared::kafka::producer(&kafka_brokers()).unwrap();
    // Everything under one key, so it all lands in one partition, in this order.
    let key = pid.to_string();
    let send = |payload: Vec<u8>| {
        let (producer, topic, key) = (&producer, &topics.results, &key);
        async move { send_result(producer, topic, key, &payload).await }
    };
    let success = PaymentResult::new(
        EventId::new(),
        pid,
        Outcome::Succeeded,
        None,
        Some("ch_1".try_into().unwrap()),
    );
    send(serde_json::to_vec(&success).unwrap()).await;
    send(serde_json::to_vec(&success).unwrap()).await; // redelivered
    let late_failure = PaymentResult::new(
        EventId::new(),
        pid,
        Outcome::Failed,
        Some(FailureReason::Declined),
        None,
    );
    send(serde_json::to_vec(&late_failure).unwrap()).await; // conflicting, after the fact
    send(b"{definitely not json".to_vec()).await; // poison
    let mut v2 = serde_json::to_value(&success).unwrap();
    v2["version"] = json!(2);
    v2["event_id"] = json!(EventId::new());
    send(serde_json::to_vec(&v2).unwrap()).await; // unknown version
    let unknown = PaymentResult::new(
        EventId::new(),
        PaymentId::new(),
        Outcome::Succeeded,
        None,
        None,
    );
    send(serde_json::to_vec(&unknown).unwrap()).await; // no such payment
    let sentinel_result = PaymentResult::new(
        EventId::new(),
        sentinel_id,
        Outcome::Failed,
        Some(FailureReason::Declined),
        None,
    );
    send(serde_json::to_vec(&sentinel_result).unwrap()).await;

    // The sentinel is last in the partition: once it is applied, everything before it was.
    assert_eq!(
        app.final_status("alice", &sentinel_id.to_string(), DEADLINE)
            .await,
        "failed"
    );
    let p = app.payment("alice", &pid.to_string()).await;
    assert_eq!(p["status"], "succeeded");
    assert_eq!(
        app.balance("alice", &wallet).await,
        (600, 0),
        "400 captured once, 100 released once"
    );
    let captures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_entries WHERE kind = 'capture'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(captures, 1);
    assert_money_conserved(&pool).await;

    // The late failure contradicts the success: kept for operators, not counted as a replay.
    let conflicts = wallet_service::review::open_conflicts(&pool, 10)
        .await
        .unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].payment_id, pid.0);
    assert_eq!(conflicts[0].event_id, late_failure.event_id.0);
    assert_eq!(
        (
            conflicts[0].recorded_status.as_str(),
            conflicts[0].recorded_reference.as_deref(),
            conflicts[0].reported_outcome.as_str(),
            conflicts[0].reported_reason.as_deref()
        ),
        ("succeeded", Some("ch_1"), "failed", Some("declined"))
    );
    let report = wallet_service::review::report(&pool, 10).await.unwrap();
    assert!(report.contains(&pid.to_string()), "{report}");

    // The three unprocessable messages are on the dead-letter topic.
    let dlq: shared::kafka::Consumer =
        shared::kafka::consumer(&kafka_brokers(), &format!("{}dlq-reader", app.prefix)).unwrap();
    dlq.subscribe(&[&topics.results_dlq]).unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let m = tokio::time::timeout(DEADLINE, dlq.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        reasons.push(shared::kafka::header_str(&m, "dlq_reason").unwrap());
        assert_eq!(m.key(), Some(key.as_bytes()));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        ["not_json", "unknown_payment", "unsupported_version"]
    );
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn two_dispatchers_publish_every_row_exactly_once(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000_000, "EUR").await;
    let n = 120;
    for _ in 0..n {
        assert_eq!(
            app.pay("alice", &wallet, 10, "m").await.status(),
            StatusCode::ACCEPTED
        );
    }
    let topology = AmqpTopology::with_prefix(&app.prefix);
    let (trigger, shutdown) = shared::shutdown::channel();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let d = wallet_service::outbox::dispatcher::Dispatcher::new(
            pool.clone(),
            &broker_config(&app.prefix),
            dispatcher_config(),
        );
        tasks.push(tokio::spawn(d.run(shutdown.clone())));
    }
    eventually("outbox drained", DEADLINE, || async {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND channel = 'payments'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (left == 0).then_some(())
    })
    .await;
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
    // Every row was confirmed before it was marked, so the queue now holds all of them, once.
    let (_conn, channel) = amqp_channel().await;
    assert_eq!(queue_len(&channel, &topology.queue).await.unwrap(), n);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let m = channel
            .basic_get(
                topology.queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("a message");
        let props = &m.delivery.properties;
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
        let body: Value = serde_json::from_slice(&m.delivery.data).unwrap();
        assert_eq!(
            props.message_id().as_ref().unwrap().as_str(),
            body["event_id"].as_str().unwrap()
        );
        assert_eq!(
            props.correlation_id().as_ref().unwrap().as_str(),
            body["payment"]["id"].as_str().unwrap()
        );
        assert!(
            seen.insert(body["payment"]["id"].as_str().unwrap().to_owned()),
            "published twice"
        );
    }
    delete_topology(&channel, &topology).await;
    app.stop().await;
}

/// A request RabbitMQ returns (here: its queue unbound, so nothing routes it) stays in the
/// outbox, and the dispatcher offers it again only after a pause that grows, not at once
/// and over and over; once the queue is bound again it goes out.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn requests_the_broker_returns_are_offered_again_after_a_growing_pause(pool: PgPool) {
    let app = spawn(pool.clone(), Opts::default()).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let topology = AmqpTopology::with_prefix(&app.prefix);
    let (trigger, shutdown) = shared::shutdown::channel();
    // One row is a full batch: the case in which the dispatcher claims again without waiting.
    let config = DispatcherConfig {
        outbox_batch_size: 1,
        ..dispatcher_config()
    };
    let d = wallet_service::outbox::dispatcher::Dispatcher::new(
        pool.clone(),
        &broker_config(&app.prefix),
        config,
    );
    let connected = d.connected.clone();
    let task = tokio::spawn(d.run(shutdown));
    eventually("dispatcher connected", DEADLINE, || async {
        connected
            .load(std::sync::atomic::Ordering::Relaxed)
            .then_some(())
    })
    .await;
    let (_conn, channel) = amqp_channel().await;
    channel
        .queue_unbind(
            topology.queue.as_str().into(),
            topology.exchange.as_str().into(),
            topology.routing_key.as_str().into(),
            Default::default(),
        )
        .await
        .unwrap();

    assert_eq!(
        app.pay("alice", &wallet, 10, "m").await.status(),
        StatusCode::ACCEPTED
    );
    let attempts = || async {
        sqlx::query_as::<_, (i32, bool)>(
            "SELECT attempts, published_at IS NOT NULL FROM outbox WHERE channel = 'payments'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    eventually("returned once", DEADLINE, || async {
        (attempts().await.0 >= 1).then_some(())
    })
    .await;
    let first_return = std::time::Instant::now();
    eventually("returned four times", DEADLINE, || async {
        (attempts().await.0 >= 4).then_some(())
    })
    .await;
    // The pauses after the first three returns are at least 100, 200 and 400 ms (each a
    // random wait in [ceiling/2, ceiling], from 200 ms doubling). Offered again at once,
    // the row is returned four times within a few milliseconds.
    let took = first_return.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "returned 4 times in {took:?}"
    );
    let (_, published) = attempts().await;
    assert!(
        !published,
        "a returned request must not be marked published"
    );

    // Declaring the topology again binds the queue again, as a restarted service would.
    topology.declare(&channel).await.unwrap();
    eventually("published once bound again", DEADLINE, || async {
        attempts().await.1.then_some(())
    })
    .await;
    assert_eq!(queue_len(&channel, &topology.queue).await.unwrap(), 1);
    trigger.fire();
    task.await.unwrap();
    delete_topology(&channel, &topology).await;
    app.stop().await;
}

async fn delete_topology(channel: &lapin::Channel, t: &AmqpTopology) {
    for q in [&t.queue, &t.dead_letter_queue] {
        let _ = channel
            .queue_delete(q.as_str().into(), Default::default())
            .await;
    }
    for e in [&t.exchange, &t.dead_letter_exchange] {
        let _ = channel
            .exchange_delete(e.as_str().into(), Default::default())
            .await;
    }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn poison_requests_are_dead_lettered_without_blocking_the_queue(pool: PgPool) {
    let gw = gateway(0).await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor(&app.prefix, &gw.url("")).await;
    let topology = AmqpTopology::with_prefix(&app.prefix);
    let (_conn, channel) = amqp_channel().await;
    topology.declare(&channel).await.unwrap();
    for body in [
        &b"not json"[..],
        br#"{"type":"payment.requested","version":9}"#,
        br#"{"type":"payment.requested","version":1}"#,
    ] {
        channel
            .basic_publish(
                topology.exchange.as_str().into(),
                topology.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A good payment behind the poison still goes through.
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let (_, id) = app.pay_id("alice", &wallet, 250, "shop").await;
    assert_eq!(app.final_status("alice", &id, DEADLINE).await, "succeeded");
    let dead = eventually("3 dead letters", DEADLINE, || async {
        let n = queue_len(&channel, &topology.dead_letter_queue)
            .await
            .unwrap();
        (n >= 3).then_some(n)
    })
    .await;
    assert_eq!(dead, 3);
    assert_eq!(app.balance("alice", &wallet).await, (750, 0));
    proc.stop().await;
    app.stop().await;
    delete_topology(&channel, &topology).await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_gateway_slower_than_the_timeout_never_gets_funds_released(pool: PgPool) {
    // Every call times out while the gateway is still working on it: the outcome is unknown,
    // the processor cannot void a key in flight, and the payment must stay pending until the
    // charge is known, then succeed. Releasing on timeout here would create money.
    let gw = gateway(1_500).await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor_with(&app.prefix, &gw.url(""), 200, 2).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let (_, id) = app.pay_id("alice", &wallet, 400, "shop").await;
    let final_status = app.final_status("alice", &id, DEADLINE).await;
    assert_eq!(
        final_status, "succeeded",
        "a charge that happened must never end failed"
    );
    assert_eq!(app.balance("alice", &wallet).await, (600, 0));
    let stats = gateway_stats(&gw).await;
    assert_eq!(stats["charges"], 1);
    assert_eq!(stats["voided"], 0);
    assert_money_conserved(&pool).await;
    proc.stop().await;
    app.stop().await;
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn the_reconciler_redrives_a_lost_request_and_it_is_charged_once(pool: PgPool) {
    let gw = gateway(0).await;
    let app = spawn(
        pool.clone(),
        Opts {
            reconcile_after_secs: 1.0,
            ..Opts::pipeline()
        },
    )
    .await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let (_, id) = app.pay_id("alice", &wallet, 300, "shop").await;
    // The request is published but nobody consumes it yet: lose it, as a purged queue would.
    let topology = AmqpTopology::with_prefix(&app.prefix);
    let (_conn, channel) = amqp_channel().await;
    // Declared here too (idempotent), so the passive look-ups below never hit a missing
    // queue, which would close the channel.
    topology.declare(&channel).await.unwrap();
    eventually("request published", DEADLINE, || async {
        let n = queue_len(&channel, &topology.queue).await.ok()?;
        (n >= 1).then_some(())
    })
    .await;
    channel
        .queue_purge(topology.queue.as_str().into(), Default::default())
        .await
        .unwrap();

    // Past the deadline the reconciler sends it again; now a processor is there.
    let proc = processor(&app.prefix, &gw.url("")).await;
    assert_eq!(app.final_status("alice", &id, DEADLINE).await, "succeeded");
    let redrives: i32 =
        sqlx::query_scalar("SELECT redrive_count FROM payments WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(redrives >= 1);
    assert_eq!(
        gateway_stats(&gw).await["charges"],
        1,
        "re-drives never charge twice"
    );
    assert_eq!(app.balance("alice", &wallet).await, (700, 0));
    assert_money_conserved(&pool).await;
    proc.stop().await;
    app.stop().await;
    delete_topology(&channel, &topology).await;
}

/// Rows are announced after their commit: in memory to relays in the same process, with a
/// `NOTIFY` to relays in another. With polling set to two minutes, a payment request and a
/// deposit's event are still relayed at once either way.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn relays_are_rung_after_commit_in_this_process_and_in_another(pool: PgPool) {
    let slow_poll = |opts: Opts| {
        let mut cfg = serve_config(&opts);
        cfg.dispatcher.outbox_poll_interval = std::time::Duration::from_secs(120);
        cfg
    };
    let together = spawn_with(
        pool.clone(),
        slow_poll(Opts {
            dispatcher: true,
            ..Default::default()
        }),
    )
    .await;
    rung_relays_publish(&pool, &together, &together, "alice").await;
    together.stop().await;

    let api = spawn_with(pool.clone(), slow_poll(Opts::default())).await;
    let relays = spawn_with(
        pool.clone(),
        slow_poll(Opts {
            dispatcher: true,
            prefix: api.prefix.clone(),
            ..Default::default()
        }),
    )
    .await;
    rung_relays_publish(&pool, &api, &relays, "bob").await;
    relays.stop().await;
    api.stop().await;
    let relayed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM outbox WHERE published_at IS NOT NULL
         GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        relayed,
        vec![
            ("payment.requested".to_owned(), 4),
            ("wallet.deposited".to_owned(), 4)
        ]
    );
}

/// Twice a deposit and a payment through `api`, each pair relayed before the next: the
/// first pair may be found by the relays' first pass, the second only by their doorbell.
async fn rung_relays_publish(pool: &PgPool, api: &TestApp, relays: &TestApp, owner: &str) {
    let wallet = api.create_wallet(owner, "EUR").await;
    for round in 0..2 {
        api.deposit(&wallet, 1_000, "EUR").await;
        assert_eq!(
            api.pay(owner, &wallet, 100, "m").await.status(),
            StatusCode::ACCEPTED
        );
        // Well inside the two-minute poll.
        eventually(
            &format!("round {round} relayed by {}", relays.url),
            DEADLINE / 2,
            || async {
                let left: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                        .fetch_one(pool)
                        .await
                        .unwrap();
                (left == 0).then_some(())
            },
        )
        .await;
    }
}
