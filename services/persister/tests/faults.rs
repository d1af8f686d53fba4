//! The persister under faults, on real servers: its process killed in the
//! middle of a stream, and its database going away.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sysmonstm_persister::Counters;
use sysmonstm_testkit::{NatsServer, PgCluster, TestDb, eventually};

/// The real binary, configured through the environment as an operator would.
fn spawn_process(nats_url: &str, db_url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sysmonstm-persister"))
        .env("NATS_URL", nats_url)
        .env("DATABASE_URL", db_url)
        .env("SYSMON_PERSISTER_ACK_WAIT_S", "2")
        .env("SYSMON_PERSISTER_BATCH_SIZE", "100")
        .env("SYSMON_PERSISTER_LINGER_MS", "20")
        .env("SYSMON_PERSISTER_STREAM_MAX_MIB", "1024")
        .env("SYSMON_PERSISTER_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sysmonstm-persister")
}

#[tokio::test]
async fn persister_killed_mid_stream_stores_every_snapshot_exactly_once() {
    const MACHINES: u64 = 10;
    const PER_MACHINE: u64 = 300;
    const TOTAL: i64 = (MACHINES * PER_MACHINE) as i64;
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    ensure_stream(&js).await;

    // A steady stream from ten machines, paced so the kill lands inside it.
    let producer = tokio::spawn({
        let js = js.clone();
        async move {
            for seq in 1..=PER_MACHINE {
                for m in 0..MACHINES {
                    publish(&js, &snapshot(&format!("m{m}"), seq)).await;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let mut first = spawn_process(&nats.url(), db.url());
    eventually(WAIT, "the first persister stores some rows", || async {
        (row_count(&pool).await >= 300).then_some(())
    })
    .await;
    first.kill().expect("SIGKILL the persister");
    first.wait().expect("reaped");
    let at_kill = row_count(&pool).await;
    assert!(
        !producer.is_finished() && at_kill < TOTAL,
        "the kill must land mid-stream ({at_kill} rows)"
    );

    let mut second = spawn_process(&nats.url(), db.url());
    producer.await.expect("producer finished");
    wait_rows(&pool, TOTAL).await;
    let (distinct, machines): (i64, i64) = sqlx::query_as(
        "SELECT count(DISTINCT (machine_id, seq)), count(DISTINCT machine_id) FROM metrics",
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    assert_eq!((distinct, machines), (TOTAL, MACHINES as i64));
    // Redeliveries of what the killed process had in hand come in after the
    // ack wait; they must change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(row_count(&pool).await, TOTAL);
    let _ = second.kill();
    let _ = second.wait();
}

#[tokio::test]
async fn database_outage_holds_acks_and_loses_nothing() {
    let nats = NatsServer::start();
    let mut pg = PgCluster::start();
    pg.ready().await;
    let url = pg.url("postgres");
    let js = js_for(&nats.url()).await;
    let stream = ensure_stream(&js).await;
    let persister = spawn(config(&nats.url(), &url));
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");

    for seq in 1..=20 {
        publish(&js, &snapshot("outage", seq)).await;
    }
    wait_rows(&pool, 20).await;

    pg.stop();
    for seq in 21..=50 {
        publish(&js, &snapshot("outage", seq)).await;
    }
    eventually(
        WAIT,
        "the persister notices the database is gone",
        || async { (Counters::get(&persister.counters.db_errors) >= 2).then_some(()) },
    )
    .await;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(sysmonstm_schemas::streams::PERSISTER_CONSUMER)
        .await
        .expect("consumer");
    let held = consumer.get_info().await.expect("consumer info");
    assert!(
        held.num_ack_pending + held.num_pending as usize >= 30,
        "nothing written, so nothing acknowledged: {held:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !persister.task.is_finished(),
        "still running while the database is away"
    );
    assert_eq!(Counters::get(&persister.counters.stored), 20);

    pg.start_again();
    wait_rows(&pool, 50).await;
    assert_eq!(Counters::get(&persister.counters.stored), 50);
    let info = consumer.get_info().await.expect("consumer info");
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "all acknowledged"
    );
    persister.stop().await;
}

#[tokio::test]
async fn persister_waits_for_a_database_that_is_not_up_yet() {
    let nats = NatsServer::start();
    let mut pg = PgCluster::start();
    pg.stop();
    let url = pg.url("postgres");
    let js = js_for(&nats.url()).await;
    ensure_stream(&js).await;
    let persister = spawn(config(&nats.url(), &url));
    publish(&js, &snapshot("late-db", 1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !persister.task.is_finished(),
        "no crash while the database is down"
    );

    pg.start_again();
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    eventually(WAIT, "the migrations ran and the row arrived", || async {
        (row_count(&pool).await == 1).then_some(())
    })
    .await;
    persister.stop().await;
}
