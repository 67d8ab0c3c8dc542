//! What one bad message or one bad dependency must not do to the rest of the system: a
//! result the database refuses, a gateway that answers a status nobody knows, a gateway
//! outage with many payments pending. Real PostgreSQL, RabbitMQ and Kafka broker.

use crate::common::pipeline::*;
use crate::common::*;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use reqwest::StatusCode;
use shared::events::PaymentResult;
use shared::ids::{EventId, PaymentId};
use shared::status::Outcome;
use shared::topology::KafkaTopics;
use sqlx::PgPool;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wallet_service::config::DbConfig;

const DEADLINE: Duration = Duration::from_secs(60);

/// A result, as the processor would publish it, onto one partition of the results topic.
async fn send_to(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
) {
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .expect("delivered");
}

fn success(id: PaymentId, reference: &str) -> Vec<u8> {
    let r = PaymentResult::new(
        EventId::new(),
        id,
        Outcome::Succeeded,
        None,
        Some(reference.try_into().unwrap()),
    );
    serde_json::to_vec(&r).unwrap()
}

/// Messages on `topic` across its partitions (high watermarks).
fn messages_on(consumer: &shared::kafka::Consumer, topic: &str, partitions: i32) -> i64 {
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_result_the_database_refuses_is_dead_lettered_alone_and_its_batch_applies(pool: PgPool) {
    // The API alone first: payments to finalize, and no consumer yet, so that each partition
    // holds good results with two bad ones in the middle when the consumer starts, and they
    // are read in one batch.
    let app = spawn(pool.clone(), Opts::default()).await;
    let topics = KafkaTopics::with_prefix(&app.prefix);
    topics.create(&kafka_brokers()).await.unwrap();
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 100_000, "EUR").await;
    let per_partition = 6;
    let mut ids = Vec::new();
    for _ in 0..topics.partitions * per_partition {
        let (_, id) = app.pay_id("alice", &wallet, 100, "shop").await;
        ids.push(id.parse::<PaymentId>().unwrap());
    }
    // A refusal no retry can fix, as a value the schema does not allow would be.
    sqlx::query(
        "ALTER TABLE payments ADD CONSTRAINT test_refuses_this_reference
         CHECK (gateway_reference IS DISTINCT FROM 'ch_refused')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let producer = shared::kafka::producer(&kafka_brokers()).unwrap();
    let (mut good, mut nul, mut refused) = (Vec::new(), Vec::new(), Vec::new());
    for (p, chunk) in ids.chunks(per_partition as usize).enumerate() {
        let p = p as i32;
        for (i, id) in chunk.iter().enumerate() {
            let key = id.to_string();
            let payload = match i {
                // Valid JSON the database cannot store (U+0000 in text): poison at decode.
                2 => {
                    nul.push(*id);
                    success(*id, "ch_ok").replace_nul_reference()
                }
                // Decodes fine; the database refuses it (CHECK violation, SQLSTATE 23514).
                3 => {
                    refused.push(*id);
                    success(*id, "ch_refused")
                }
                _ => {
                    good.push(*id);
                    success(*id, &format!("ch_{i}"))
                }
            };
            send_to(&producer, &topics.results, p, &key, &payload).await;
        }
    }
    let prefix = app.prefix.clone();
    app.stop().await;

    let app = spawn(
        pool.clone(),
        Opts {
            finalizer: true,
            prefix,
            ..Default::default()
        },
    )
    .await;
    for id in &good {
        assert_eq!(
            app.final_status("alice", &id.to_string(), DEADLINE).await,
            "succeeded",
            "a good result behind a bad one is applied"
        );
    }
    for id in nul.iter().chain(&refused) {
        assert_eq!(
            app.payment("alice", &id.to_string()).await["status"],
            "pending"
        );
    }
    let held = 100 * (nul.len() + refused.len()) as i64;
    assert_eq!(app.balance("alice", &wallet).await.1, held);
    assert_money_conserved(&pool).await;

    // Every bad message is on the dead-letter topic, once, with its reason. The offsets were
    // committed after the dead letters were produced, so the topic is complete now.
    let dlq =
        shared::kafka::consumer(&kafka_brokers(), &format!("{}dlq-reader", app.prefix)).unwrap();
    let expected = (nul.len() + refused.len()) as i64;
    assert_eq!(messages_on(&dlq, &topics.results_dlq, 1), expected);
    dlq.subscribe(&[&topics.results_dlq]).unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < expected as usize {
        let m = tokio::time::timeout(DEADLINE, dlq.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        let key: PaymentId = std::str::from_utf8(m.key().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let reason = shared::kafka::header_str(&m, "dlq_reason").unwrap();
        let want = if nul.contains(&key) {
            "invalid"
        } else {
            assert!(refused.contains(&key), "{key} was not a bad message");
            let detail = shared::kafka::header_str(&m, "dlq_detail").unwrap();
            assert!(detail.contains("23514"), "{detail}");
            "refused_by_database"
        };
        assert_eq!(reason, want);
        assert!(seen.insert(key), "{key} dead-lettered twice");
    }
    app.stop().await;
}

trait NulReference {
    fn replace_nul_reference(self) -> Vec<u8>;
}

impl NulReference for Vec<u8> {
    /// The same result with U+0000 in its `gateway_reference` (still valid JSON).
    fn replace_nul_reference(self) -> Vec<u8> {
        let mut v: serde_json::Value = serde_json::from_slice(&self).unwrap();
        v["gateway_reference"] = "ch_\u{0}x".into();
        serde_json::to_vec(&v).unwrap()
    }
}

/// A gateway on loopback that answers every call with 200 and `status` for the charge, and
/// counts charges and voids.
struct StubGateway {
    url: String,
    charges: Arc<AtomicU64>,
    voids: Arc<AtomicU64>,
}

async fn stub_gateway(status: &'static str) -> StubGateway {
    let charges = Arc::new(AtomicU64::new(0));
    let voids = Arc::new(AtomicU64::new(0));
    let counters = (charges.clone(), voids.clone());
    let app = axum::Router::new().fallback(move |req: Request| {
        let (charges, voids) = counters.clone();
        async move {
            if req.uri().path().ends_with("/void") {
                voids.fetch_add(1, Ordering::SeqCst);
            } else if req.uri().path() == "/v1/charges" {
                charges.fetch_add(1, Ordering::SeqCst);
            }
            axum::Json(serde_json::json!({ "id": "ch_stub", "status": status }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    StubGateway {
        url,
        charges,
        voids,
    }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_gateway_status_nobody_knows_keeps_the_funds_held(pool: PgPool) {
    // A real gateway may answer `pending` and capture later: releasing the hold then would
    // create money. The payment must stay pending through retries and the void.
    let gw = stub_gateway("pending").await;
    let app = spawn(pool.clone(), Opts::pipeline()).await;
    let proc = processor_with(&app.prefix, &gw.url, 1_000, 2).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    let (_, id) = app.pay_id("alice", &wallet, 100, "shop").await;
    // Two charge attempts, then the void; both answered "pending".
    eventually(
        "the processor tried the charge and the void",
        DEADLINE,
        || async {
            (gw.charges.load(Ordering::SeqCst) >= 2 && gw.voids.load(Ordering::SeqCst) >= 1)
                .then_some(())
        },
    )
    .await;
    proc.stop().await;
    assert_eq!(app.payment("alice", &id).await["status"], "pending");
    assert_eq!(
        app.balance("alice", &wallet).await,
        (900, 100),
        "still held"
    );
    let topics = KafkaTopics::with_prefix(&app.prefix);
    let reader =
        shared::kafka::consumer(&kafka_brokers(), &format!("{}reader", app.prefix)).unwrap();
    assert_eq!(
        messages_on(&reader, &topics.results, topics.partitions),
        0,
        "no result may be published for an undecided charge"
    );
    assert_money_conserved(&pool).await;
    app.stop().await;
}

/// A switch in front of a real (mock) gateway: while `down`, every call answers 503, void
/// included, as during a real outage.
struct Outage {
    url: String,
    down: Arc<AtomicBool>,
}

async fn outage_in_front_of(target: String) -> Outage {
    let down = Arc::new(AtomicBool::new(true));
    let state = (down.clone(), reqwest::Client::new(), target);
    let app = axum::Router::new().fallback(
        |State((down, http, target)): State<(Arc<AtomicBool>, reqwest::Client, String)>,
         req: Request| async move {
            if down.load(Ordering::SeqCst) {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let mut forward = http.request(parts.method, format!("{target}{}", parts.uri));
            for name in ["idempotency-key", "content-type"] {
                if let Some(v) = parts.headers.get(name) {
                    forward = forward.header(name, v);
                }
            }
            let r = forward.body(body).send().await.unwrap();
            let status = r.status();
            let bytes = r.bytes().await.unwrap();
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(bytes))
                .unwrap()
        },
    );
    let app = app.with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Outage { url, down }
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_gateway_outage_ends_with_each_payment_charged_at_most_once_and_bounded_messages(
    pool: PgPool,
) {
    // Time scaled down: a 0.5 s deadline and an outage of at least 15 deadlines (a 10-minute
    // outage with the default 60 s is 10). Re-sending on every deadline would send each
    // payment 15 times or more; the budget allows 1 + 3.
    const PAYMENTS: usize = 1_000;
    const REDRIVES: i32 = 3;
    let gw = gateway(0).await;
    let outage = outage_in_front_of(gw.url("")).await;
    let app = spawn(
        pool.clone(),
        Opts {
            reconcile_after_secs: 0.5,
            redrive_budget: (2.0, REDRIVES),
            ..Opts::pipeline()
        },
    )
    .await;
    let proc = processor_with(&app.prefix, &outage.url, 200, 2).await;
    let wallet = app.create_wallet("alice", "EUR").await;
    app.deposit(&wallet, 10_000_000, "EUR").await;
    for _ in 0..PAYMENTS {
        app.pay_id("alice", &wallet, 100, "shop").await;
    }
    // Stay down until every payment has spent its budget and been flagged: at least
    // 0.5 + 1 + 2 + 2 s, 15 deadlines, after its acceptance.
    eventually(
        "every payment flagged during the outage",
        Duration::from_secs(120),
        || async {
            let flagged: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM payments WHERE attention_since IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (flagged == PAYMENTS as i64).then_some(())
        },
    )
    .await;
    outage.down.store(false, Ordering::SeqCst);

    // The budget ran out during the outage, so every payment was flagged; the requests
    // already queued still go through once the gateway is back, and each charge the gateway
    // makes ends as one succeeded payment (none charged twice: the gateway keeps one charge
    // per key). A request whose attempts all met the outage but whose void (the processor's
    // last word) met the gateway again closes its key uncharged: that payment fails, as
    // certainly not charged, and nothing else may fail.
    let (succeeded, failed) = eventually(
        "every payment final after the outage",
        Duration::from_secs(240),
        || async {
            let (succeeded, failed, pending): (i64, i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'),
                        count(*) FILTER (WHERE status = 'failed'),
                        count(*) FILTER (WHERE status = 'pending')
                 FROM payments",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (pending == 0).then_some((succeeded, failed))
        },
    )
    .await;
    assert_eq!(succeeded + failed, PAYMENTS as i64);
    let failed_otherwise: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM payments
         WHERE status = 'failed' AND failure_reason IS DISTINCT FROM 'gateway_unavailable'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(failed_otherwise, 0, "only a voided key may fail a payment");
    assert!(
        gateway_stats(&gw).await["voided"].as_i64().unwrap() >= failed,
        "each failed payment's key was voided at the gateway"
    );
    proc.stop().await;
    assert_eq!(
        gateway_stats(&gw).await["charges"].as_i64().unwrap(),
        succeeded,
        "no charge after the processor stopped"
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE channel = 'payments'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let bound = (PAYMENTS as i64) * (1 + i64::from(REDRIVES));
    assert!(
        sent <= bound,
        "{sent} payment requests sent for {PAYMENTS} payments (bound {bound})"
    );
    let over_budget: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE redrive_count > $1")
            .bind(REDRIVES)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(over_budget, 0);
    // The outage outlasted the budget: payments were flagged, each after its last re-drive,
    // and a late success still finalized them (nothing is left for an operator).
    let (flagged, flagged_early): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE redrive_count <> $1)
         FROM payments WHERE attention_since IS NOT NULL",
    )
    .bind(REDRIVES)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(flagged > 0, "the outage outlasted every re-drive budget");
    assert_eq!(flagged_early, 0, "only a spent budget flags a payment");
    assert!(wallet_service::review::needing_attention(&pool, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        app.balance("alice", &wallet).await.1,
        0,
        "nothing left held"
    );
    assert_money_conserved(&pool).await;
    eprintln!(
        "outage: {PAYMENTS} payments, {sent} requests sent, {succeeded} succeeded, {failed} voided uncharged, {flagged} flagged during the outage"
    );
    app.stop().await;
}

/// A `DATABASE_URL` naming a host that is down before the real one (a dead node of a
/// primary/standby pair): the pool finds the host that answers as the primary, the watcher
/// keeps it there, and requests are served.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn a_database_url_with_a_dead_host_first_connects_to_the_primary(pool: PgPool) {
    let real = pool.connect_options();
    let db = real.get_database().expect("the test database has a name");
    // Port 1 on loopback: connection refused, as from a node whose machine is gone.
    let url = format!(
        "postgres://{}@127.0.0.1:1,{}:{}/{db}?target_session_attrs=read-write",
        real.get_username(),
        real.get_host(),
        real.get_port()
    );
    let cfg = DbConfig {
        database_url: url,
        db_max_connections: 4,
        db_acquire_timeout: Duration::from_secs(3),
        db_statement_timeout: Duration::from_secs(5),
    };
    let service_pool = wallet_service::app::connect_db(&cfg).await.unwrap();
    let options = service_pool.connect_options();
    assert_eq!(
        (options.get_host(), options.get_port()),
        (real.get_host(), real.get_port()),
        "the pool must point at the host that answers"
    );
    let (db_name, read_only): (String, bool) = sqlx::query_as(
        "select current_database(), pg_is_in_recovery() or current_setting('transaction_read_only')::bool",
    )
    .fetch_one(&service_pool)
    .await
    .unwrap();
    assert_eq!((db_name.as_str(), read_only), (db, false));
    // Writes go through: the whole API on this pool.
    let app = spawn_on(service_pool.clone(), serve_config(&Opts::default())).await;
    let owner = "multi-host-owner";
    let wallet = app.create_wallet(owner, "EUR").await;
    app.deposit(&wallet, 1_000, "EUR").await;
    assert_eq!(app.balance(owner, &wallet).await.0, 1_000);
    app.stop().await;
    service_pool.close().await;
}

/// An upgrade applied to a database in use, by two instances starting at once. The
/// service's pool allows a statement `DB_STATEMENT_TIMEOUT_MS` (here 5 ms) and a lock wait
/// three fifths of that, but an index built concurrently waits for every write in flight on
/// its table, however long: under the service's timeouts that build was cancelled (seen on
/// a two-million-entry ledger under load) and left an invalid index. It also waits for every
/// older snapshot, such as that of a second instance blocked in sqlx's `pg_advisory_lock`,
/// which waits for the first: a deadlock PostgreSQL ends by killing one of them. Here the
/// database is put back as it was before the ledger's indexes by time, a ledger write is held
/// open, and two pools with the service's settings apply the migrations: the build waits for
/// the write, both succeed, every index is valid, and the pools keep the service's timeout.
#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn an_upgrade_by_two_instances_waits_for_the_writes_in_flight(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE INDEX ledger_wallet_idx ON ledger_entries (wallet_id, seq DESC);
         CREATE INDEX ledger_wallet_kind_idx ON ledger_entries (wallet_id, kind, seq DESC);
         DROP INDEX ledger_wallet_time_idx;
         DROP INDEX ledger_wallet_kind_time_idx;
         ALTER TABLE ledger_entries ALTER COLUMN created_at SET DEFAULT now();
         DELETE FROM _sqlx_migrations WHERE version >= 20261209000001;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let wallet = insert_wallet(&pool, 100, 0).await;
    let mut writer = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO ledger_entries (id, wallet_id, kind, amount, available_after, held_after)
         VALUES (gen_random_uuid(), $1, 'deposit', 100, 100, 0)",
    )
    .bind(wallet)
    .execute(&mut *writer)
    .await
    .unwrap();

    let cfg = DbConfig {
        database_url: String::new(),
        db_max_connections: 2,
        db_acquire_timeout: Duration::from_secs(3),
        db_statement_timeout: Duration::from_millis(5),
    };
    let instances: Vec<_> = (0..2)
        .map(|_| {
            let service_pool =
                wallet_service::app::pool_with(&cfg, (*pool.connect_options()).clone());
            tokio::spawn(async move {
                let applied = wallet_service::migrate(&service_pool).await;
                (applied, service_pool)
            })
        })
        .collect();
    eventually(
        "an index build waiting for the write, or the migrations ending",
        Duration::from_secs(30),
        || async {
            let waiting: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_create_index
                                WHERE datname = current_database() AND phase LIKE 'waiting for%')",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (waiting || instances.iter().all(|i| i.is_finished())).then_some(())
        },
    )
    .await;
    writer.commit().await.unwrap();
    let mut pools = Vec::new();
    for instance in instances {
        let (applied, service_pool) = instance.await.unwrap();
        applied.expect("the migrations apply once the write has committed");
        pools.push(service_pool);
    }

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, wallet_service::MIGRATOR.iter().count());
    let invalid: Vec<String> =
        sqlx::query_scalar("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(invalid.is_empty(), "invalid indexes: {invalid:?}");
    for service_pool in pools {
        for _ in 0..2 {
            let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
                .fetch_one(&service_pool)
                .await
                .unwrap();
            assert_eq!(timeout, "5ms");
        }
        service_pool.close().await;
    }
}

/// An `AMQP_URL` listing a node that is down before the real one: the connection goes to the
/// node that accepts it.
#[tokio::test]
async fn an_amqp_url_with_a_dead_node_first_connects_to_the_live_one() {
    let nodes = shared::amqp::AmqpNodes::parse(&format!(
        "amqp://guest:guest@127.0.0.1:1/%2f,{}",
        amqp_url()
    ));
    assert_eq!(nodes.len(), 2);
    let conn = nodes.connect().await.expect("the live node accepts");
    assert!(conn.status().connected());
    // The next connection starts with the node that worked.
    let again = nodes.connect().await.expect("still there");
    assert!(again.status().connected());
    let _ = conn.close(0, "done".into()).await;
    let _ = again.close(0, "done".into()).await;
}

/// A topic keeps the `retention.ms` it was created with: a later start with another
/// `KAFKA_RETENTION_MS` must say which topics differ, not silently run on the old value.
#[tokio::test]
async fn topics_created_with_another_retention_are_reported() {
    let brokers = kafka_brokers();
    let prefix = unique_prefix();
    let hour = KafkaTopics {
        retention_ms: 3_600_000,
        ..KafkaTopics::with_prefix(&prefix)
    };
    hour.create(&brokers).await.unwrap();
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        shared::topology::kafka_config(&brokers).create().unwrap();
    assert_eq!(hour.retention_drift(&admin).await.unwrap(), vec![]);

    // The same topics, started again with twenty minutes: creating them changes nothing,
    // and all four are reported with the hour they keep.
    let twenty_minutes = KafkaTopics {
        retention_ms: 1_200_000,
        ..hour.clone()
    };
    twenty_minutes.create(&brokers).await.unwrap();
    let drift = twenty_minutes.retention_drift(&admin).await.unwrap();
    let topics: BTreeSet<_> = drift.iter().map(|d| d.topic.as_str()).collect();
    let expected: BTreeSet<_> = [&hour.results, &hour.results_dlq, &hour.events, &hour.alerts]
        .into_iter()
        .map(String::as_str)
        .collect();
    assert_eq!(topics, expected);
    assert!(
        drift
            .iter()
            .all(|d| d.on_broker.as_deref() == Some("3600000")),
        "{drift:?}"
    );
}

/// Rows each scan of `plan` (EXPLAIN ANALYZE, JSON) read from `table`.
fn rows_read_from(plan: &serde_json::Value, table: &str) -> u64 {
    let own = if plan["Relation Name"] == table {
        plan["Actual Rows"].as_u64().unwrap_or(0)
    } else {
        0
    };
    own + plan["Plans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|child| rows_read_from(child, table))
        .sum::<u64>()
}

#[sqlx::test(migrator = "wallet_service::MIGRATOR")]
async fn the_event_relay_reads_one_batch_however_long_the_backlog(pool: PgPool) {
    // A Kafka outage's backlog: 20,000 events and 2,500 alerts waiting, interleaved in seq
    // order, beside 5,000 payment requests waiting for RabbitMQ.
    sqlx::query(
        "INSERT INTO outbox (id, aggregate_id, event_type, payload, channel)
         SELECT gen_random_uuid(), gen_random_uuid(), 'payment.finalized', '{}'::jsonb,
                CASE WHEN g % 11 = 0 THEN 'alerts' WHEN g % 5 = 0 THEN 'payments' ELSE 'events' END
         FROM generate_series(1, 27500) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE outbox").execute(&pool).await.unwrap();

    let batch = 200;
    let plan = wallet_service::outbox::relay::explain_claim(&pool, batch)
        .await
        .unwrap();
    let root = &plan[0]["Plan"];
    assert_eq!(root["Actual Rows"].as_u64(), Some(batch as u64), "{plan:#}");
    let read = rows_read_from(root, "outbox");
    assert!(
        read <= 2 * batch as u64,
        "a batch of {batch} read {read} waiting rows: {plan:#}"
    );

    // The backlog gauge counts up to its cap (here 10,000: the 20,000 events stop there),
    // and the oldest row's age is that of the first in line.
    sqlx::query("UPDATE outbox SET created_at = now() - interval '90 seconds' WHERE seq = (SELECT min(seq) FROM outbox WHERE channel = 'events')")
        .execute(&pool)
        .await
        .unwrap();
    let backlog = wallet_service::outbox::backlog(&pool, 10_000)
        .await
        .unwrap();
    let mut counts: Vec<(&str, i64)> = backlog.iter().map(|(c, n, _)| (c.as_str(), *n)).collect();
    counts.sort();
    assert_eq!(
        counts,
        [("alerts", 2_500), ("events", 10_000), ("payments", 5_000)]
    );
    let age = |channel: &str| backlog.iter().find(|b| b.0 == channel).unwrap().2;
    assert!((90.0..150.0).contains(&age("events")), "{backlog:?}");
    assert!(age("alerts") < 60.0, "{backlog:?}");
}
