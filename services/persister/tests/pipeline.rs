//! The persister's pipeline on a real nats-server and a real PostgreSQL:
//! JetStream → persister → `metrics`. With the real agent in front:
//! `crates/e2e/tests/agent_persister.rs`.

mod common;

use common::*;
use prost::Message as _;
use sysmonstm_persister::Counters;
use sysmonstm_schemas::v1;
use sysmonstm_testkit::{NatsServer, TestDb, eventually};

#[tokio::test]
async fn the_same_snapshot_twice_is_one_row() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    ensure_stream(&js).await;

    let snap = snapshot("twice", 1);
    assert!(!publish(&js, &snap).await, "first publish is new");
    assert!(
        publish(&js, &snap).await,
        "same Msg-Id: JetStream reports a duplicate"
    );
    // A copy that slips past the duplicate window (another Msg-Id) must
    // still change nothing in the table.
    let machine = sysmonstm_schemas::MachineId::parse("twice").expect("valid");
    publish_raw(
        &js,
        &sysmonstm_schemas::subjects::metrics(&machine),
        "another-id",
        snap.encode_to_vec(),
    )
    .await;

    let persister = spawn(config(&nats.url(), db.url()));
    // Two writers may take one copy each; the second waits on the first's
    // primary key, then finds it stored.
    eventually(WAIT, "both copies handled", || async {
        let c = &persister.counters;
        (Counters::get(&c.stored) + Counters::get(&c.duplicates) >= 2).then_some(())
    })
    .await;
    wait_rows(&pool, 1).await;
    assert_eq!(Counters::get(&persister.counters.stored), 1);
    assert_eq!(Counters::get(&persister.counters.duplicates), 1);
    persister.stop().await;
}

#[tokio::test]
async fn garbage_is_terminated_and_counted_while_valid_snapshots_are_stored() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    let stream = ensure_stream(&js).await;
    let persister = spawn(config(&nats.url(), db.url()));

    let valid = snapshot("x", 1).encode_to_vec();
    let truncated = valid[..valid.len() / 2].to_vec();
    publish(&js, &snapshot("x", 1)).await;
    publish_raw(
        &js,
        "sysmon.metrics.x",
        "g1",
        b"\xff\xfe not protobuf at all".to_vec(),
    )
    .await;
    publish(&js, &snapshot("x", 2)).await;
    publish_raw(&js, "sysmon.metrics.x", "g2", truncated).await;
    publish(&js, &snapshot("x", 3)).await;

    wait_rows(&pool, 3).await;
    eventually(WAIT, "both bad payloads rejected", || async {
        (persister.counters.rejected("decode") == 2).then_some(())
    })
    .await;

    // Still running, still storing.
    publish(&js, &snapshot("x", 4)).await;
    wait_rows(&pool, 4).await;
    assert!(!persister.task.is_finished());

    // Terminated, not left to be redelivered forever.
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(sysmonstm_schemas::streams::PERSISTER_CONSUMER)
        .await
        .expect("consumer");
    eventually(WAIT, "nothing pending or unacknowledged", || async {
        let info = consumer.get_info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
    assert_eq!(persister.counters.rejected_total(), 2);
    persister.stop().await;
}

/// MachineInfo that could wedge the `machines` table: a NUL (PostgreSQL text
/// cannot hold it; the upsert would be retried for ever) is replaced; facts
/// from the far future (they would never be replaced by newer ones) are
/// refused and counted. Facts after them are still stored.
#[tokio::test]
async fn machine_info_with_a_nul_or_from_the_future_does_not_wedge_machines() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    js.get_or_create_stream(sysmonstm_schemas::streams::machines())
        .await
        .expect("MACHINES");
    let persister = spawn(config(&nats.url(), db.url()));
    let id = sysmonstm_schemas::MachineId::parse("w").expect("id");
    let send = |hostname: &str, timestamp_ms: i64| {
        let info = v1::MachineInfo {
            machine_id: "w".into(),
            hostname: hostname.into(),
            timestamp_ms,
            ..Default::default()
        };
        let js = js.clone();
        let subject = sysmonstm_schemas::subjects::info(&id);
        async move {
            js.publish(subject, info.encode_to_vec().into())
                .await
                .expect("publish")
                .await
                .expect("ack");
        }
    };
    // None also while the persister has not made the table yet.
    let hostname = || async {
        sqlx::query_scalar::<_, String>("SELECT hostname FROM machines WHERE machine_id = 'w'")
            .fetch_optional(&pool)
            .await
            .ok()
            .flatten()
    };

    send("a\0b", base_ms()).await;
    eventually(WAIT, "the info stored, NUL replaced", || async {
        (hostname().await.as_deref() == Some("a\u{fffd}b")).then_some(())
    })
    .await;
    let ten_years_ms = 10 * 365 * 86_400_000;
    send(
        "future",
        chrono::Utc::now().timestamp_millis() + ten_years_ms,
    )
    .await;
    eventually(WAIT, "the info from the future refused", || async {
        (Counters::get(&persister.counters.rejected_info) == 1).then_some(())
    })
    .await;
    send("w.example", base_ms() + 1000).await;
    eventually(WAIT, "newer facts stored", || async {
        (hostname().await.as_deref() == Some("w.example")).then_some(())
    })
    .await;
    assert_eq!(Counters::get(&persister.counters.db_errors), 0);
    persister.stop().await;
}

#[tokio::test]
async fn a_snapshot_is_stored_only_after_its_machine_is_checked() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    ensure_stream(&js).await;
    let persister = spawn(config(&nats.url(), db.url()));

    // Published on web01's subject but claiming to be db02: refused.
    publish_raw(
        &js,
        "sysmon.metrics.web01",
        "m1",
        snapshot("db02", 1).encode_to_vec(),
    )
    .await;
    publish(&js, &snapshot("web01", 1)).await;
    wait_rows(&pool, 1).await;
    eventually(WAIT, "impersonation rejected", || async {
        (persister.counters.rejected("machine_mismatch") == 1).then_some(())
    })
    .await;
    let who: String = sqlx::query_scalar("SELECT machine_id FROM metrics")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert_eq!(who, "web01");
    persister.stop().await;
}

/// One machine-id rule (`schemas::accept`): a subject token that is not a
/// machine id is refused and counted, for snapshots and for MachineInfo,
/// even when the payload names the same token; nothing of it is stored.
#[tokio::test]
async fn subject_tokens_that_are_not_machine_ids_are_refused_and_counted() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    let stream = ensure_stream(&js).await;
    js.get_or_create_stream(sysmonstm_schemas::streams::machines())
        .await
        .expect("MACHINES");
    let persister = spawn(config(&nats.url(), db.url()));

    let long = "a".repeat(300);
    for (i, bad) in ["UPPER-Case", long.as_str()].into_iter().enumerate() {
        // Raw subjects on purpose: `schemas::subjects` cannot build them.
        let snap = snapshot(bad, 1);
        publish_raw(
            &js,
            &format!("sysmon.metrics.{bad}"),
            &format!("bad{i}"),
            snap.encode_to_vec(),
        )
        .await;
        let info = v1::MachineInfo {
            machine_id: bad.to_owned(),
            hostname: "h".into(),
            timestamp_ms: base_ms(),
            ..Default::default()
        };
        js.publish(format!("sysmon.info.{bad}"), info.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    // A good one after them, to know they have been handled.
    publish(&js, &snapshot("good-1", 1)).await;
    eventually(WAIT, "both bad snapshots refused", || async {
        (persister.counters.rejected("machine_id") == 2).then_some(())
    })
    .await;
    eventually(WAIT, "both bad MachineInfo refused", || async {
        (Counters::get(&persister.counters.rejected_info) == 2).then_some(())
    })
    .await;
    wait_consumer_drained(&stream).await;
    assert_eq!(
        stored_set(&pool).await,
        [("good-1".to_owned(), 1)].into_iter().collect()
    );
    let machines: Vec<String> = sqlx::query_scalar("SELECT machine_id FROM machines")
        .fetch_all(&pool)
        .await
        .expect("machines");
    assert!(
        machines.iter().all(|m| m == "good-1"),
        "only the valid machine: {machines:?}"
    );
    assert!(
        persister
            .counters
            .render()
            .contains("sysmonstm_persister_snapshots_rejected_total{reason=\"machine_id\"} 2\n")
    );
    persister.stop().await;
}

/// `sysmonstm machines forget <id>` asks on `sysmon.admin.forget.<id>`; the
/// persister deletes the `machines` row and answers. History stays.
#[tokio::test]
async fn a_forget_request_deletes_the_machines_row_and_is_answered() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let persister = spawn(config(&nats.url(), db.url()));
    let js = js_for(&nats.url()).await;
    ensure_stream(&js).await;
    publish(&js, &snapshot("gone-1", 1)).await;
    publish(&js, &snapshot("kept-1", 1)).await;
    let machines = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT machine_id FROM machines ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    };
    eventually(WAIT, "both machines have a row", || {
        let pool = pool.clone();
        async move { (machines(pool).await.len() == 2).then_some(()) }
    })
    .await;
    let id = sysmonstm_schemas::MachineId::parse("gone-1").expect("id");
    let answer = eventually(WAIT, "the persister answers", || {
        let client = js.client();
        let subject = sysmonstm_schemas::subjects::forget(&id);
        async move { client.request(subject, "".into()).await.ok() }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    assert_eq!(answer, "persister: removed 1 machines row of gone-1");
    assert_eq!(machines(pool.clone()).await, vec!["kept-1".to_owned()]);
    assert_eq!(row_count(&pool).await, 2, "history stays");
    persister.stop().await;
}
