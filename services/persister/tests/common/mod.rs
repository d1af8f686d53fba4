//! Helpers shared by the persister's integration tests: a persister running
//! in-process against real servers, and snapshots to publish.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_persister::{Counters, Persister, PersisterConfig};
use sysmonstm_schemas::{MachineId, headers, subjects, v1};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(60);

/// The storage paths to test on the shared test server: plain always, and
/// TimescaleDB where it is available. Where it must be — the vendored build
/// is beside the repository (`../shared/vendor/timescaledb`, as in CI) or
/// `SYSMON_TIMESCALEDB=1` says it was installed — a server without it fails
/// the test instead of quietly testing half.
pub async fn storage_paths() -> Vec<sysmonstm_persister::Storage> {
    use sysmonstm_persister::Storage;
    let admin = std::env::var(sysmonstm_testkit::TEST_DATABASE_URL).expect("test database");
    let pool = PgPool::connect(&admin).await.expect("admin connect");
    let (avail, preload): (bool, String) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
                current_setting('shared_preload_libraries')",
    )
    .fetch_one(&pool)
    .await
    .expect("query");
    pool.close().await;
    let missing = if !avail {
        Some("the extension is not installed on this server")
    } else if !preload.contains("timescaledb") {
        Some("timescaledb is not in shared_preload_libraries")
    } else {
        None
    };
    match missing {
        None => vec![Storage::Plain, Storage::Timescaledb],
        Some(why) if timescaledb_required() => panic!(
            "TimescaleDB path: {why}, but it is required here (the vendored build is beside the \
             repository or SYSMON_TIMESCALEDB=1); `just test` installs and preloads it"
        ),
        Some(why) => {
            eprintln!("skipped: TimescaleDB path: {why}");
            vec![Storage::Plain]
        }
    }
}

/// True where TimescaleDB must be tested (see [`storage_paths`]).
pub fn timescaledb_required() -> bool {
    let vendored = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vendor/timescaledb")
        .exists();
    vendored || std::env::var("SYSMON_TIMESCALEDB").is_ok_and(|v| v == "1")
}

pub fn config(nats_url: &str, db_url: &str) -> PersisterConfig {
    PersisterConfig {
        database_url: db_url.to_owned(),
        batch_size: 200,
        linger_ms: 50,
        ack_wait_s: 2,
        max_backoff_ms: 500,
        stream_max_mib: 1024,
        metrics_listen: "127.0.0.1:0".to_owned(),
        nats: NatsConfig {
            servers: vec![nats_url.to_owned()],
            ..Default::default()
        },
        ..Default::default()
    }
}

pub struct Running {
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("persister stops on shutdown");
        r.expect("task not panicked")
            .expect("run ended without error");
    }
}

pub fn spawn(cfg: PersisterConfig) -> Running {
    sysmonstm_kit::telemetry::init_for_tests();
    let p = Persister::new(cfg);
    let counters = p.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(p.run(shutdown.clone()));
    Running {
        counters,
        shutdown,
        task,
    }
}

/// Where test snapshots start: a day ago (whole minute), the same for the
/// whole test process, so retention (30 days) keeps them.
pub fn base_ms() -> i64 {
    static BASE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let now = chrono::Utc::now().timestamp_millis() - 86_400_000;
        now - now % 60_000
    })
}

/// A realistic snapshot of `machine` with distinct values per `seq`.
pub fn snapshot(machine: &str, seq: u64) -> v1::Snapshot {
    let ts = base_ms() + seq as i64 * 1000;
    v1::Snapshot {
        machine_id: machine.to_owned(),
        seq,
        timestamp_ms: ts,
        interval_ms: 1000,
        cpu: Some(v1::Cpu {
            usage_percent: (seq % 100) as f32 + 0.5,
            per_core_percent: vec![1.0, 2.0],
            ..Default::default()
        }),
        memory: Some(v1::Memory {
            total_bytes: 16 << 30,
            used_bytes: (1 << 30) + seq,
            available_bytes: (15 << 30) - seq,
            swap_total_bytes: 1 << 30,
            swap_used_bytes: seq,
            swap_free_bytes: (1 << 30) - seq,
        }),
        load: Some(v1::Load {
            one: seq as f64 / 100.0,
            five: 0.5,
            fifteen: 0.25,
        }),
        uptime_s: 1000 + seq,
        process_count: 100 + (seq % 7) as u32,
        ..Default::default()
    }
}

/// Publishes through JetStream as the agent does (Msg-Id `<machine>:<seq>`)
/// and returns whether JetStream called it a duplicate.
/// `snaps` checked and encoded as one write, as the persister does with a
/// batch it pulled.
#[allow(dead_code)]
pub fn batch(snaps: &[v1::Snapshot]) -> sysmonstm_persister::copy::Batch {
    let limits = sysmonstm_persister::decode::Limits {
        max_payload_bytes: 1 << 20,
        max_future_skew_ms: 3_600_000,
    };
    let now = chrono::Utc::now();
    let mut b = sysmonstm_persister::copy::Batch::with_capacity(snaps.len());
    for s in snaps {
        b.push(
            &format!("sysmon.metrics.{}", s.machine_id),
            &s.encode_to_vec(),
            now,
            limits,
        )
        .expect("valid snapshot");
    }
    b
}

pub async fn publish(js: &jetstream::Context, snap: &v1::Snapshot) -> bool {
    let machine = MachineId::parse(&snap.machine_id).expect("valid machine id");
    publish_raw(
        js,
        &subjects::metrics(&machine),
        &headers::msg_id(&machine, snap.seq),
        snap.encode_to_vec(),
    )
    .await
}

pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Vec<u8>,
) -> bool {
    let ack = js
        .send_publish(
            subject.to_owned(),
            PublishMessage::build()
                .message_id(msg_id)
                .payload(payload.into()),
        )
        .await
        .expect("publish sent")
        .await
        .expect("publish acked");
    ack.duplicate
}

/// Creates METRICS as the persister would, so tests can publish before a
/// persister runs.
pub async fn ensure_stream(js: &jetstream::Context) -> jetstream::stream::Stream {
    let limits = config("nats://unused", "postgres://unused").metrics_limits();
    js.get_or_create_stream(sysmonstm_schemas::streams::metrics(&limits))
        .await
        .expect("METRICS created")
}

/// The (machine, seq) of every stored snapshot: what to compare with what
/// was published (a row count cannot see a wrong or missing row that another
/// row makes up for, and the primary key already rules out duplicates).
pub async fn stored_set(pool: &PgPool) -> std::collections::BTreeSet<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>("SELECT machine_id, seq FROM metrics")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// `per_machine` snapshots (seq 1…) of machines `m000`, `m001`, … as
/// [`stored_set`] lists them.
pub fn published_set(machines: u64, per_machine: u64) -> std::collections::BTreeSet<(String, i64)> {
    (0..machines)
        .flat_map(|m| (1..=per_machine).map(move |s| (format!("m{m:03}"), s as i64)))
        .collect()
}

/// Waits until the persister's consumer has nothing undelivered and nothing
/// unacknowledged: every message, redeliveries included, has been handled
/// (stored, found stored, or terminated).
pub async fn wait_consumer_drained(stream: &jetstream::stream::Stream) {
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(sysmonstm_schemas::streams::PERSISTER_CONSUMER)
        .await
        .expect("the persister's consumer");
    sysmonstm_testkit::eventually(WAIT, "nothing pending or unacknowledged", || async {
        let info = consumer.clone().info().await.ok()?.clone();
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

pub async fn row_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM metrics")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

pub async fn wait_rows(pool: &PgPool, n: i64) {
    sysmonstm_testkit::eventually(WAIT, &format!("{n} rows in metrics"), || async {
        (row_count(pool).await >= n).then_some(())
    })
    .await;
    // Nothing beyond: exactly n.
    assert_eq!(row_count(pool).await, n);
}

pub async fn js_for(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url)
        .await
        .expect("connect to test nats");
    jetstream::new(client)
}
