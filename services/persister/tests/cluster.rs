//! Scale-out, shown: a three-node JetStream cluster with R3 streams, two
//! persister processes pulling from the one durable consumer, and load
//! published as agents publish it (one Msg-Id per machine and seq, retried
//! with the same Msg-Id until acked). Under that load the node leading
//! METRICS is killed, then one persister; every published (machine, seq) ends
//! up in PostgreSQL exactly once.
//!
//! The load runs until the test stops it, after both kills and after
//! publishing and storing are seen going on past each, so the kills always
//! land mid-stream.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use sysmonstm_testkit::{NatsCluster, TestDb, eventually};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);
/// A few hundred machines ...
const MACHINES: usize = 300;
/// ... each publishing five snapshots a second.
const ROUND: Duration = Duration::from_millis(200);

/// A persister process, killed when the test ends (even by a panic).
struct Persister {
    child: Child,
    addr_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Persister {
    /// The real binary, configured as an operator would on a cluster: every
    /// node's URL, and streams created with three replicas.
    fn spawn(urls: &str, db_url: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr_file = dir.path().join("addr");
        let child = Command::new(env!("CARGO_BIN_EXE_sysmonstm-persister"))
            .env("NATS_URL", urls)
            .env("DATABASE_URL", db_url)
            .env("SYSMON_PERSISTER_REPLICAS", "3")
            .env("SYSMON_PERSISTER_ACK_WAIT_S", "2")
            .env("SYSMON_PERSISTER_BATCH_SIZE", "500")
            .env("SYSMON_PERSISTER_LINGER_MS", "20")
            .env("SYSMON_PERSISTER_MAX_BACKOFF_MS", "500")
            .env("SYSMON_PERSISTER_STREAM_MAX_MIB", "1024")
            .env("SYSMON_PERSISTER_METRICS_LISTEN", "127.0.0.1:0")
            .env("SYSMON_ADDR_FILE", &addr_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sysmonstm-persister");
        Self {
            child,
            addr_file,
            _dir: dir,
        }
    }

    /// Snapshots this process stored (new rows), from its `/metrics`.
    async fn stored(&self) -> Option<u64> {
        let addr: SocketAddr = std::fs::read_to_string(&self.addr_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let text = http_get(addr, "/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix("sysmonstm_persister_snapshots_stored_total "))?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    }

    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the persister");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: the body, if the answer is 200.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    status.contains(" 200 ").then(|| body.to_owned())
}

/// Snapshot `seq` of `machine`, dated within the last hours (one second
/// apart per seq, so (machine, ts) is as unique as (machine, seq)).
fn snapshot(machine: &MachineId, seq: u64, base_ms: i64) -> v1::Snapshot {
    v1::Snapshot {
        machine_id: machine.to_string(),
        seq,
        timestamp_ms: base_ms + seq as i64 * 1000,
        interval_ms: 1000,
        cpu: Some(v1::Cpu {
            usage_percent: (seq % 100) as f32,
            per_core_percent: vec![1.0, 2.0],
            ..Default::default()
        }),
        memory: Some(v1::Memory {
            total_bytes: 16 << 30,
            used_bytes: (1 << 30) + seq,
            available_bytes: (15 << 30) - seq,
            ..Default::default()
        }),
        load: Some(v1::Load {
            one: 0.5,
            five: 0.5,
            fifteen: 0.25,
        }),
        uptime_s: 1000 + seq,
        process_count: 100,
        ..Default::default()
    }
}

/// Publishes one snapshot of every machine per round until `stop`, as agents
/// do: each with its Msg-Id, an unacknowledged one sent again with the same
/// Msg-Id until JetStream acks it (a node dies, a leader is elected, the
/// client reconnects). Reports the rounds fully acked on `rounds`, and
/// returns every (machine, seq) published.
async fn publish_load(
    js: jetstream::Context,
    stop: Arc<AtomicBool>,
    rounds: watch::Sender<u64>,
) -> BTreeSet<(String, i64)> {
    let machines: Vec<MachineId> = (0..MACHINES)
        .map(|m| MachineId::parse(&format!("node-{m:03}")).expect("valid machine id"))
        .collect();
    let base_ms = {
        let now = chrono::Utc::now().timestamp_millis() - 6 * 3_600_000;
        now - now % 60_000
    };
    let mut published = BTreeSet::new();
    let mut tick = tokio::time::interval(ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let mut todo: Vec<&MachineId> = machines.iter().collect();
        while !todo.is_empty() {
            let mut sent: Vec<(&MachineId, Option<PublishAckFuture>)> = Vec::new();
            for m in todo.drain(..) {
                let payload = snapshot(m, seq, base_ms).encode_to_vec();
                let ack = js
                    .send_publish(
                        subjects::metrics(m),
                        PublishMessage::build()
                            .message_id(headers::msg_id(m, seq))
                            .payload(payload.into()),
                    )
                    .await
                    .ok();
                sent.push((m, ack));
            }
            for (m, ack) in sent {
                let acked = match ack {
                    Some(a) => a.await.is_ok(),
                    None => false,
                };
                if acked {
                    published.insert((m.to_string(), seq as i64));
                } else {
                    todo.push(m);
                }
            }
            if !todo.is_empty() {
                // What an agent does too: back off a little, then the same
                // messages again.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        rounds.send_replace(seq);
    }
    published
}

async fn row_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM metrics")
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

async fn stored_set(pool: &PgPool) -> BTreeSet<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>("SELECT machine_id, seq FROM metrics")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .collect()
}

/// Waits until at least `n` more rounds than now are published and acked.
async fn rounds_go_on(rounds: &mut watch::Receiver<u64>, n: u64) {
    let from = *rounds.borrow_and_update();
    tokio::time::timeout(WAIT, rounds.wait_for(|r| *r >= from + n))
        .await
        .unwrap_or_else(|_| panic!("publishing stalled at round {from}"))
        .expect("the publisher runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_cluster_loses_nothing_when_a_node_and_a_persister_die_under_load() {
    let mut cluster = NatsCluster::start(3);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let urls = cluster.urls();
    let mut a = Persister::spawn(&urls, db.url());
    let b = Persister::spawn(&urls, db.url());

    let nats = NatsConfig {
        servers: vec![urls.clone()],
        ..Default::default()
    };
    let client = nats.connect("load", false).await.expect("connect");
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));

    // The persisters set the streams up, on three servers each.
    let stream = eventually(
        WAIT,
        "METRICS, three replicas, with its consumer",
        || async {
            let mut s = js.get_stream(streams::METRICS).await.ok()?;
            let info = s.info().await.ok()?.clone();
            s.get_consumer::<jetstream::consumer::pull::Config>(streams::PERSISTER_CONSUMER)
                .await
                .ok()?;
            (info.config.num_replicas == 3).then_some(s)
        },
    )
    .await;
    let machines = eventually(WAIT, "MACHINES", || async {
        js.get_stream(streams::MACHINES).await.ok()
    })
    .await;
    assert_eq!(machines.cached_info().config.num_replicas, 3);

    let stop = Arc::new(AtomicBool::new(false));
    let (rounds_tx, mut rounds) = watch::channel(0);
    let load = tokio::spawn(publish_load(js.clone(), Arc::clone(&stop), rounds_tx));

    // Both instances take their share of the one durable consumer.
    eventually(WAIT, "both persisters store snapshots", || async {
        let (sa, sb) = (a.stored().await?, b.stored().await?);
        (sa > 0 && sb > 0).then_some(())
    })
    .await;

    // The node leading METRICS dies: a new leader is elected among the two
    // left, publishing and pulling go on there.
    let leader = eventually(WAIT, "a METRICS leader", || async {
        let mut s = js.get_stream(streams::METRICS).await.ok()?;
        s.info().await.ok()?.cluster.clone()?.leader
    })
    .await;
    let dead = cluster.index_of(&leader).expect("a node of the cluster");
    cluster.node_mut(dead).kill();
    rounds_go_on(&mut rounds, 3).await;
    let rows = row_count(&pool).await;
    eventually(WAIT, "rows stored after the node died", || async {
        (row_count(&pool).await > rows).then_some(())
    })
    .await;

    // One persister dies (SIGKILL: what it held unacked comes back after
    // the ack wait, to the other).
    a.kill();
    let by_b = b.stored().await.expect("the survivor's counters");
    rounds_go_on(&mut rounds, 3).await;
    eventually(WAIT, "the survivor stores on", || async {
        (b.stored().await? > by_b).then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let published = load.await.expect("the publisher ends");
    assert!(published.len() >= 6 * MACHINES);

    // Everything handed out is handled (redeliveries of what the killed
    // persister held included), then the sets compare.
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(streams::PERSISTER_CONSUMER)
        .await
        .expect("the persister's consumer");
    eventually(WAIT, "every published snapshot stored", || async {
        let info = consumer.clone().info().await.ok()?.clone();
        let drained = info.num_pending == 0 && info.num_ack_pending == 0;
        (drained && stored_set(&pool).await.len() >= published.len()).then_some(())
    })
    .await;
    let stored = stored_set(&pool).await;
    let missing: Vec<_> = published.difference(&stored).take(5).collect();
    let extra: Vec<_> = stored.difference(&published).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?} (first few of each)"
    );
    assert_eq!(
        row_count(&pool).await,
        published.len() as i64,
        "one row per (machine, seq), no duplicate"
    );
    assert!(
        cluster.node(dead).pid().is_none(),
        "all along on two of three nodes"
    );
    let mut b = b;
    assert!(
        b.child.try_wait().expect("status").is_none(),
        "the surviving persister still runs"
    );
}
