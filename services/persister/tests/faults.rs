//! The persister under faults, on real servers: its process killed in the
//! middle of a stream, and its database going away.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sysmonstm_persister::Counters;
use sysmonstm_testkit::{NatsServer, PgCluster, TestDb, eventually};

/// A persister process that is killed when the test ends, even by a panic,
/// so a failed test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// The real binary, configured through the environment as an operator would.
fn spawn_process(nats_url: &str, db_url: &str) -> Proc {
    Proc(
        Command::new(env!("CARGO_BIN_EXE_sysmonstm-persister"))
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", db_url)
            .env("SYSMON_PERSISTER_ACK_WAIT_S", "2")
            .env("SYSMON_PERSISTER_BATCH_SIZE", "500")
            .env("SYSMON_PERSISTER_LINGER_MS", "20")
            .env("SYSMON_PERSISTER_STREAM_MAX_MIB", "1024")
            .env("SYSMON_PERSISTER_METRICS_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sysmonstm-persister"),
    )
}

/// Publishes `per_machine` snapshots of each of `machines` machines, round by
/// round, keeping up to a round of acks in flight (as fast as JetStream
/// takes them, so the stream is long enough to kill something in it).
fn produce(
    js: &async_nats::jetstream::Context,
    machines: u64,
    per_machine: u64,
) -> tokio::task::JoinHandle<()> {
    let js = js.clone();
    tokio::spawn(async move {
        use async_nats::jetstream::message::PublishMessage;
        use prost::Message as _;
        for seq in 1..=per_machine {
            let mut acks = Vec::with_capacity(machines as usize);
            for m in 0..machines {
                let snap = snapshot(&format!("m{m:03}"), seq);
                let id = format!("m{m:03}:{seq}");
                let ack = js
                    .send_publish(
                        format!("sysmon.metrics.m{m:03}"),
                        PublishMessage::build()
                            .message_id(id)
                            .payload(snap.encode_to_vec().into()),
                    )
                    .await
                    .expect("publish sent");
                acks.push(ack);
            }
            for a in acks {
                a.await.expect("publish acked");
            }
        }
    })
}

/// Once every message has been handled (redeliveries of what a killed
/// persister held included), the stored (machine, seq) are exactly those
/// published: none missing, none extra. A row count could not tell, since
/// the primary key already rules out duplicates.
async fn assert_stored_exactly(
    pool: &sqlx::PgPool,
    stream: &async_nats::jetstream::stream::Stream,
    machines: u64,
    per_machine: u64,
) {
    wait_consumer_drained(stream).await;
    let stored = stored_set(pool).await;
    let published = published_set(machines, per_machine);
    let missing: Vec<_> = published.difference(&stored).take(5).collect();
    let extra: Vec<_> = stored.difference(&published).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?} (first few)"
    );
}

#[tokio::test]
async fn persister_killed_mid_stream_stores_every_snapshot_exactly_once() {
    // The figures: 100 k snapshots from 100 machines.
    const MACHINES: u64 = 100;
    const PER_MACHINE: u64 = 1000;
    const TOTAL: i64 = (MACHINES * PER_MACHINE) as i64;
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    let stream = ensure_stream(&js).await;

    let producer = produce(&js, MACHINES, PER_MACHINE);
    let mut first = spawn_process(&nats.url(), db.url());
    eventually(WAIT, "the first persister stores some rows", || async {
        (row_count(&pool).await >= 2000).then_some(())
    })
    .await;
    // SIGKILL: no shutdown path runs.
    first.kill().expect("SIGKILL the persister");
    first.wait().expect("reaped");
    let at_kill = row_count(&pool).await;
    assert!(
        at_kill < TOTAL,
        "the kill must land mid-stream ({at_kill} rows)"
    );

    let mut second = spawn_process(&nats.url(), db.url());
    producer.await.expect("producer finished");
    eventually(Duration::from_secs(300), "all 100 k rows", || async {
        (row_count(&pool).await >= TOTAL).then_some(())
    })
    .await;
    // Redeliveries of what the killed process had in hand come in after the
    // ack wait; they must change nothing.
    assert_stored_exactly(&pool, &stream, MACHINES, PER_MACHINE).await;
    let _ = second.kill();
    let _ = second.wait();
}

#[tokio::test]
async fn two_persisters_share_the_consumer_and_one_killed_leaves_totals_exact() {
    const MACHINES: u64 = 50;
    const PER_MACHINE: u64 = 400;
    const TOTAL: i64 = (MACHINES * PER_MACHINE) as i64;
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    let stream = ensure_stream(&js).await;

    let mut a = spawn_process(&nats.url(), db.url());
    let mut b = spawn_process(&nats.url(), db.url());
    let producer = produce(&js, MACHINES, PER_MACHINE);
    eventually(WAIT, "some rows stored", || async {
        (row_count(&pool).await >= 1000).then_some(())
    })
    .await;
    a.kill().expect("SIGKILL one persister");
    a.wait().expect("reaped");
    assert!(row_count(&pool).await < TOTAL, "the kill lands mid-stream");
    producer.await.expect("producer finished");
    eventually(
        Duration::from_secs(180),
        "the other carries on to the end",
        || async { (row_count(&pool).await >= TOTAL).then_some(()) },
    )
    .await;
    assert_stored_exactly(&pool, &stream, MACHINES, PER_MACHINE).await;
    assert!(
        b.try_wait().expect("status").is_none(),
        "the survivor still runs"
    );
    let _ = b.kill();
    let _ = b.wait();
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
    // The outage: a minute, with snapshots still coming.
    for seq in 51..=80 {
        publish(&js, &snapshot("outage", seq)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        !persister.task.is_finished(),
        "still running while the database is away"
    );
    assert!(
        Counters::get(&persister.counters.consumer_lag)
            + Counters::get(&persister.counters.consumer_ack_pending)
            >= 60,
        "the backlog shows as lag"
    );
    assert_eq!(Counters::get(&persister.counters.stored), 20);

    pg.start_again();
    wait_rows(&pool, 80).await;
    assert_eq!(
        stored_set(&pool).await,
        (1..=80).map(|s| ("outage".to_owned(), s)).collect()
    );
    assert_eq!(Counters::get(&persister.counters.stored), 80);
    eventually(WAIT, "the lag recovers", || async {
        (Counters::get(&persister.counters.consumer_lag) == 0
            && Counters::get(&persister.counters.consumer_ack_pending) == 0)
            .then_some(())
    })
    .await;
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
    let stream = ensure_stream(&js).await;
    let persister = spawn(config(&nats.url(), &url));
    publish(&js, &snapshot("late-db", 1)).await;
    // The persister sets up its consumer, then waits for the database.
    eventually(WAIT, "the persister's consumer set up", || async {
        stream
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                sysmonstm_schemas::streams::PERSISTER_CONSUMER,
            )
            .await
            .ok()
            .map(|_| ())
    })
    .await;
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
