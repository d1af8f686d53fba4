//! `just bench ingest`: BENCH_SNAPSHOTS (default 1 000 000) realistic
//! snapshots of BENCH_MACHINES (default 1 000) machines are put into METRICS
//! first, on a hub configured as shipped (`nats/hub.conf`: `sync_interval:
//! always`, so every publish waits for an fsync, as in production); the
//! database is migrated and its WAL made recyclable (as a restarting
//! persister finds it); then the persister is timed from its start to the
//! commit of the last one (plain path: to the last merge of its rollups),
//! with BENCH_WRITERS (default 2) writers. In the same run, on the same
//! snapshots: the floor under any writer of them — the persister's own COPY
//! payloads, batch for batch, each in its transaction, on as many connections
//! at once as it has writers, into a table with `metrics`' columns and no
//! index, trigger or partition — measured once before the persister and once
//! after it (so neither side has the warmer server), and the ratio to the
//! faster of the two; and the persister's two write paths batch for batch
//! (binary COPY straight into `metrics`, and COPY into a staging table +
//! INSERT … ON CONFLICT, taken when a batch holds a redelivery).
//!
//! Needs SYSMON_TEST_DATABASE_URL (an admin URL) and nats-server
//! (scripts/bench-persister.sh sets both up). BENCH_STORAGE: auto | plain |
//! timescaledb.

// The same allocator as the persister's binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt as _;
use prost::Message as _;
use sqlx::{Connection as _, Executor as _, PgConnection};
use sysmonstm_persister::copy::Batch;
use sysmonstm_persister::decode::Limits;
use sysmonstm_persister::{Counters, Persister, PersisterConfig, Storage, maintenance, store};
use sysmonstm_schemas::v1;
use sysmonstm_testkit::{NatsServer, TestDb};
use tokio_util::sync::CancellationToken;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What an agent sends: 8 cores, 2 filesystems, 1 disk, lo + eth0, one
/// temperature, top 3 by CPU and by memory.
fn snapshot(machine: usize, seq: u64, base_ms: i64) -> v1::Snapshot {
    let f = (seq as f32 * 0.37 + machine as f32).sin().abs();
    v1::Snapshot {
        machine_id: format!("m{machine:04}"),
        seq,
        timestamp_ms: base_ms + seq as i64 * 1000,
        interval_ms: 1000,
        cpu: Some(v1::Cpu {
            usage_percent: 100.0 * f,
            per_core_percent: (0..8).map(|c| (f * 100.0 + c as f32) % 100.0).collect(),
            user_percent: Some(60.0 * f),
            system_percent: Some(30.0 * f),
            iowait_percent: Some(f),
        }),
        memory: Some(v1::Memory {
            total_bytes: 32 << 30,
            used_bytes: (8 << 30) + seq * 4096,
            available_bytes: (24 << 30) - seq * 4096,
            swap_total_bytes: 4 << 30,
            swap_used_bytes: seq * 1024,
            swap_free_bytes: (4 << 30) - seq * 1024,
        }),
        load: Some(v1::Load {
            one: 4.0 * f as f64,
            five: 3.0,
            fifteen: 2.5,
        }),
        uptime_s: 100_000 + seq,
        process_count: 300 + (seq % 17) as u32,
        filesystems: ["/", "/var"]
            .iter()
            .map(|m| v1::Filesystem {
                mount: (*m).into(),
                fs_type: "ext4".into(),
                total_bytes: 500 << 30,
                used_bytes: (200 << 30) + seq,
                free_bytes: (300 << 30) - seq,
            })
            .collect(),
        disks: vec![v1::Disk {
            name: "nvme0n1".into(),
            read_bytes_per_s: Some(1e6 * f),
            write_bytes_per_s: Some(2e6 * f),
        }],
        interfaces: ["lo", "eth0"]
            .iter()
            .map(|n| v1::NetInterface {
                name: (*n).into(),
                rx_bytes_per_s: Some(1e5 * f),
                tx_bytes_per_s: Some(5e4 * f),
                rx_errors_per_s: Some(0.0),
                tx_errors_per_s: Some(0.0),
            })
            .collect(),
        top_cpu: (0..3)
            .map(|i| v1::Process {
                pid: 1000 + i,
                name: format!("worker-{i}"),
                cpu_percent: 30.0 * f,
                rss_bytes: 200 << 20,
            })
            .collect(),
        top_memory: (0..3)
            .map(|i| v1::Process {
                pid: 2000 + i,
                name: format!("cache-{i}"),
                cpu_percent: 2.0,
                rss_bytes: (1 << 30) + u64::from(i),
            })
            .collect(),
        temperatures: vec![v1::Temperature {
            label: "Package id 0".into(),
            celsius: 40.0 + 20.0 * f,
        }],
        agent: None,
    }
}

/// CPU seconds used so far by this process, the nats-server and all
/// PostgreSQL processes, from /proc (user + system).
#[derive(Clone, Copy)]
struct Cpu {
    me: f64,
    nats: f64,
    pg: f64,
}

fn cpu_now(nats_pid: Option<u32>) -> Cpu {
    fn secs(stat: &str) -> Option<(String, f64)> {
        let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_owned();
        let f: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some((name, ticks / 100.0)) // USER_HZ is 100 on Linux
    }
    let read = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let of = |pid: &str| read(pid).and_then(|s| secs(&s)).map_or(0.0, |x| x.1);
    let mut cpu = Cpu {
        me: of("self"),
        nats: nats_pid.map_or(0.0, |pid| of(&pid.to_string())),
        pg: 0.0,
    };
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if let Some((name, s)) = pid
            .parse::<u32>()
            .ok()
            .and_then(|_| read(&pid))
            .and_then(|s| secs(&s))
        {
            if name == "postgres" {
                cpu.pg += s;
            }
        }
    }
    cpu
}

/// "CPU per snapshot: …" between two readings (exited backends not counted).
fn cpu_per_snapshot(a: Cpu, b: Cpu, n: u64, me: &str) -> String {
    let us = |x: f64| x / n as f64 * 1e6;
    format!(
        "CPU per snapshot: {me} {:.1} µs, nats-server {:.1} µs, PostgreSQL {:.1} µs = {:.1} µs \
         (on 2 cores: at most {:.0}/s)",
        us(b.me - a.me),
        us(b.nats - a.nats),
        us(b.pg - a.pg),
        us(b.me - a.me + b.nats - a.nats + b.pg - a.pg),
        2.0 * n as f64 / (b.me - a.me + b.nats - a.nats + b.pg - a.pg)
    )
}

/// One measurement of the floor.
struct Floor {
    rows_s: f64,
    cpu: String,
}

/// `batches` COPYed into a new table `table` with `metrics`' columns and
/// nothing else, by `writers` connections at once, each batch in its own
/// transaction, as the persister's writers do.
async fn copy_floor(
    db_url: &str,
    batches: &std::sync::Arc<Vec<Batch>>,
    writers: usize,
    table: &str,
) -> anyhow::Result<Floor> {
    let mut conn = PgConnection::connect(db_url).await?;
    conn.execute(format!("CREATE TABLE {table} (LIKE metrics INCLUDING DEFAULTS)").as_str())
        .await?;
    let rows: u64 = batches.iter().map(|b| b.len() as u64).sum();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut conns = Vec::with_capacity(writers);
    for _ in 0..writers.max(1) {
        conns.push(PgConnection::connect(db_url).await?);
    }
    let cpu0 = cpu_now(None);
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in conns {
        let (batches, next, table) = (batches.clone(), next.clone(), table.to_owned());
        tasks.spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            while let Some(b) = batches.get(next.fetch_add(1, Relaxed)) {
                let mut tx = c.begin().await?;
                let mut sink = tx
                    .copy_in_raw(&format!(
                        "COPY {table} ({}) FROM STDIN (FORMAT binary)",
                        sysmonstm_persister::copy::COLUMNS
                    ))
                    .await?;
                for part in b.payload() {
                    sink.send(part).await?;
                }
                sink.finish().await?;
                tx.commit().await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let took = t.elapsed().as_secs_f64();
    let cpu1 = cpu_now(None);
    Ok(Floor {
        rows_s: rows as f64 / took,
        cpu: cpu_per_snapshot(cpu0, cpu1, rows, "client"),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = env("BENCH_SNAPSHOTS", 1_000_000);
    let machines: usize = env("BENCH_MACHINES", 1000);
    let batch: usize = env("BENCH_BATCH", 2000);
    let writers: usize = env("BENCH_WRITERS", 2);
    let storage: Storage = match std::env::var("BENCH_STORAGE").as_deref() {
        Ok("plain") => Storage::Plain,
        Ok("timescaledb") => Storage::Timescaledb,
        _ => Storage::Auto,
    };
    let per_machine = n / machines as u64;
    let n = per_machine * machines as u64;
    let admin = std::env::var("SYSMON_TEST_DATABASE_URL")?;
    let db = TestDb::on(&admin).await;
    // The hub as shipped: with nats-server's default (fsync every two
    // minutes) the load and the pulls would be cheaper than in production.
    let nats = NatsServer::start_shipped_hub();
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let cfg = PersisterConfig {
        database_url: db.url().to_owned(),
        storage,
        batch_size: batch,
        writers,
        linger_ms: 50,
        max_ack_pending: (batch * (writers + 1) * 2) as i64,
        metrics_listen: String::new(),
        stream_max_mib: 3 * 1024,
        nats: sysmonstm_kit::nats::NatsConfig {
            servers: vec![nats.url()],
            ..Default::default()
        },
        ..Default::default()
    };
    js.get_or_create_stream(sysmonstm_schemas::streams::metrics(&cfg.metrics_limits()))
        .await?;

    // 1. Fill METRICS.
    let now_ms = chrono::Utc::now().timestamp_millis();
    let base_ms = now_ms - (per_machine as i64 + 60) * 1000;
    let t = Instant::now();
    let mut bytes = 0usize;
    for seq in 1..=per_machine {
        let mut acks = Vec::with_capacity(machines);
        for m in 0..machines {
            let payload = snapshot(m, seq, base_ms).encode_to_vec();
            bytes += payload.len();
            acks.push(
                js.send_publish(
                    format!("sysmon.metrics.m{m:04}"),
                    PublishMessage::build()
                        .message_id(format!("m{m:04}:{seq}"))
                        .payload(payload.into()),
                )
                .await?,
            );
        }
        for a in acks {
            a.await?;
        }
    }
    println!(
        "loaded {n} snapshots of {machines} machines into METRICS ({:.0} B each) in {:.1} s",
        bytes as f64 / n as f64,
        t.elapsed().as_secs_f64()
    );

    // The hub's store is written back to disk before the clock starts, so
    // the load's leftover writeback is not charged to the persister.
    let t_sync = Instant::now();
    std::process::Command::new("sync").status()?;
    println!(
        "hub store synced to disk in {:.1} s",
        t_sync.elapsed().as_secs_f64()
    );

    // The database as a persister finds it when it restarts: migrated, and
    // with write-ahead log segments to recycle. A fresh cluster instead
    // creates (and zero-fills) a new 16 MiB segment for every 16 MiB of WAL
    // until its first checkpoints, which no server that has run for a while
    // does; about 1 GiB of WAL written and checkpointed here gives it those.
    let t_warm = Instant::now();
    let pool = db.pool().await;
    store::migrate_with(&pool, storage).await?;
    let mode = store::mode(&pool).await?;
    let mut admin_conn = PgConnection::connect(&admin).await?;
    admin_conn
        .execute(
            "CREATE TABLE sysmon_bench_warm AS \
             SELECT repeat('w', 1000) AS w FROM generate_series(1, 1000000); \
             DROP TABLE sysmon_bench_warm; CHECKPOINT; CHECKPOINT;",
        )
        .await?;
    println!(
        "database migrated and its WAL warmed in {:.1} s",
        t_warm.elapsed().as_secs_f64()
    );

    // The floor's rows: the persister's own COPY payloads for the same
    // snapshots, in its batches, encoded before the clock starts.
    let limits = Limits {
        max_payload_bytes: 1 << 20,
        max_future_skew_ms: 3_600_000,
    };
    let encode_at = chrono::Utc::now();
    let floor_batches: Vec<Batch> = {
        let order: Vec<(usize, u64)> = (1..=per_machine)
            .flat_map(|seq| (0..machines).map(move |m| (m, seq)))
            .collect();
        order
            .chunks(batch)
            .map(|chunk| {
                let mut b = Batch::with_capacity(chunk.len());
                for &(m, seq) in chunk {
                    let s = snapshot(m, seq, base_ms);
                    b.push(
                        &format!("sysmon.metrics.{}", s.machine_id),
                        &s.encode_to_vec(),
                        encode_at,
                        limits,
                    )
                    .expect("valid");
                }
                b
            })
            .collect()
    };
    let floor_batches = std::sync::Arc::new(floor_batches);
    let floor_before = copy_floor(db.url(), &floor_batches, writers, "floor_before").await?;

    // 2. The persister, from start to the last commit.
    let wal_sql = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, \
                   (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)";
    let (wal0, ckpt0): (i64, i64) = sqlx::query_as(wal_sql).fetch_one(&mut admin_conn).await?;
    let cpu0 = cpu_now(nats.pid());
    let p = Persister::new(cfg.clone());
    let counters = p.counters();
    let shutdown = CancellationToken::new();
    let t = Instant::now();
    let task = tokio::spawn(p.run(shutdown.clone()));
    // Snapshots stored in each whole second, to show stalls.
    let mut per_second = Vec::new();
    let (mut tick, mut at_tick) = (t + Duration::from_secs(1), 0);
    loop {
        let done = Counters::get(&counters.stored) + Counters::get(&counters.duplicates);
        if Instant::now() >= tick {
            per_second.push(done - at_tick);
            (tick, at_tick) = (tick + Duration::from_secs(1), done);
        }
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        anyhow::ensure!(!task.is_finished(), "the persister stopped");
    }
    // Plain path: what is still queued for the rollups
    // is part of the work (the persister merges it every few seconds).
    if mode == store::Mode::Plain {
        maintenance::settle_rollups(&pool).await?;
    }
    let took = t.elapsed().as_secs_f64();
    let mut sorted = per_second.clone();
    sorted.sort_unstable();
    if let (Some(lo), Some(hi)) = (sorted.first(), sorted.last()) {
        println!(
            "snapshots stored per second over {} whole seconds: min {lo}, median {}, max {hi}; {per_second:?}",
            sorted.len(),
            sorted[sorted.len() / 2]
        );
    }
    let cpu1 = cpu_now(nats.pid());
    let (wal1, ckpt1): (i64, i64) = sqlx::query_as(wal_sql).fetch_one(&mut admin_conn).await?;
    shutdown.cancel();
    let _ = task.await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics")
        .fetch_one(&pool)
        .await?;
    let entries = Counters::get(&counters.rows_stored);
    let row_bytes: f64 = sqlx::query_scalar(
        "SELECT avg(pg_column_size(m.*))::float8 FROM (SELECT * FROM metrics LIMIT 10000) m",
    )
    .fetch_one(&pool)
    .await?;
    let disk_bytes: i64 = sqlx::query_scalar(match mode {
        store::Mode::Timescaledb => "SELECT hypertable_size('metrics')",
        store::Mode::Plain => {
            "SELECT sum(pg_total_relation_size(relid))::int8 FROM pg_partition_tree('metrics')"
        }
    })
    .fetch_one(&pool)
    .await?;
    let snaps_s = n as f64 / took;
    let wal_bytes = (wal1 - wal0) as f64;
    println!(
        "write-ahead log: {:.0} B per snapshot, {} checkpoints meanwhile",
        wal_bytes / n as f64,
        ckpt1 - ckpt0
    );
    println!(
        "persister ({mode:?}, batch {batch}, {writers} writers): {n} snapshots = {rows} rows \
         ({entries} values with the per-device detail) in {took:.1} s = {snaps_s:.0} snapshots/s, \
         {:.0} rows/s, {:.0} detail values/s; a row is {row_bytes:.0} B, {:.0} B on disk with its indexes",
        rows as f64 / took,
        entries as f64 / took,
        disk_bytes as f64 / rows as f64
    );

    println!(
        "persister: {}",
        cpu_per_snapshot(cpu0, cpu1, n, "persister")
    );
    // BENCH_PERSISTER_ONLY=1: stop here (for A/B runs of one change).
    if env("BENCH_PERSISTER_ONLY", 0u8) == 1 {
        return Ok(());
    }

    // The hub's side alone: the same snapshots pulled in the same batches by
    // as many tasks, each acknowledged, on a consumer of its own; nothing
    // decoded, nothing written.
    let stream = js.get_stream(sysmonstm_schemas::streams::METRICS).await?;
    let mut drain_cfg = sysmonstm_schemas::streams::persister_consumer(
        cfg.max_ack_pending,
        Duration::from_secs(60),
    );
    drain_cfg.durable_name = Some("bench-drain".into());
    let drain: jetstream::consumer::PullConsumer = stream.create_consumer(drain_cfg).await?;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cpu0 = cpu_now(nats.pid());
    let t = Instant::now();
    let mut pullers = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let (drain, acked) = (drain.clone(), acked.clone());
        pullers.spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            while acked.load(Relaxed) < n {
                let mut msgs = drain
                    .batch()
                    .max_messages(batch)
                    .expires(Duration::from_millis(50))
                    .messages()
                    .await?;
                let mut got = Vec::with_capacity(batch);
                while let Some(m) = msgs.next().await {
                    got.push(m.map_err(|e| anyhow::anyhow!(e))?);
                }
                for m in &got {
                    m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                }
                acked.fetch_add(got.len() as u64, Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = pullers.join_next().await {
        r??;
    }
    let drain_s = n as f64 / t.elapsed().as_secs_f64();
    let cpu1 = cpu_now(nats.pid());
    println!(
        "the hub alone ({writers} pullers, batch {batch}, every message acknowledged, nothing \
         decoded or written): {drain_s:.0} snapshots/s; persister/hub = {:.2}",
        snaps_s / drain_s
    );
    println!(
        "the hub alone: {}",
        cpu_per_snapshot(cpu0, cpu1, n, "pullers")
    );

    // 3. The floor, again after the persister (order favours neither).
    let floor_after = copy_floor(db.url(), &floor_batches, writers, "floor_after").await?;
    drop(floor_batches);
    let floor = floor_before.rows_s.max(floor_after.rows_s);
    println!(
        "the floor: the persister's own COPY batches, {writers} connections at once, one \
         transaction per batch, into a table without index, trigger or partition: before the \
         persister {:.0} rows/s, after it {:.0} rows/s; persister/floor = {:.2}",
        floor_before.rows_s,
        floor_after.rows_s,
        snaps_s / floor
    );
    for (when, f) in [("before", &floor_before), ("after", &floor_after)] {
        println!("the floor {when}: {}", f.cpu);
    }

    // 4. The two ways a batch goes in, batch for batch on the same
    //    snapshots, each into a fresh database: binary COPY straight into
    //    `metrics` (the usual case) and COPY into a staging table +
    //    INSERT … ON CONFLICT DO NOTHING (a batch with a redelivery).
    let cmp_seqs = (200_000 / machines as u64).clamp(1, per_machine);
    let now = chrono::Utc::now();
    let snaps: Vec<(usize, u64)> = (1..=cmp_seqs)
        .flat_map(|seq| (0..machines).map(move |m| (m, seq)))
        .collect();
    let batches: Vec<Batch> = snaps
        .chunks(batch)
        .map(|chunk| {
            let mut b = Batch::with_capacity(chunk.len());
            for &(m, seq) in chunk {
                let s = snapshot(m, seq, base_ms);
                b.push(
                    &format!("sysmon.metrics.{}", s.machine_id),
                    &s.encode_to_vec(),
                    now,
                    limits,
                )
                .expect("valid");
            }
            b
        })
        .collect();
    let mut rates = Vec::new();
    for staged in [false, true] {
        let fresh = TestDb::on(&admin).await;
        let fpool = fresh.pool().await;
        store::migrate_with(&fpool, storage).await?;
        let w = store::Writer::new(fpool.clone(), mode);
        sqlx::query("SELECT sysmon_ensure_partitions(current_date - 2, current_date + 1)")
            .execute(&fpool)
            .await?;
        let t = Instant::now();
        for b in &batches {
            if staged {
                w.copy_staged(b).await?;
            } else {
                w.copy_direct(b).await?;
            }
        }
        rates.push(snaps.len() as f64 / t.elapsed().as_secs_f64());
        fpool.close().await;
    }
    println!(
        "{} snapshots in batches of {batch}, one writer: COPY into metrics {:.0}/s; \
         COPY staging + INSERT ON CONFLICT {:.0}/s; direct/staged = {:.2}",
        snaps.len(),
        rates[0],
        rates[1],
        rates[0] / rates[1]
    );
    println!(
        "target: >= 50000 snapshots/s -> {}",
        if snaps_s >= 50_000.0 { "met" } else { "MISSED" }
    );
    Ok(())
}
