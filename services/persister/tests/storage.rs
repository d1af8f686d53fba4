//! The storage paths, on a real PostgreSQL: both get the same names from the
//! same migrations; the full Snapshot, machines and alerts are stored once;
//! rollups equal the aggregates of the raw rows; retention drops old data.
//! The TimescaleDB cases print "skipped: <why>" where the extension is not
//! available, and fail where it must be (`common::storage_paths`).

mod common;

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use common::*;
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_persister::store::{self, Writer};
use sysmonstm_persister::{Mode, PersisterConfig, Storage, alerts, maintenance, migrate_with};
use sysmonstm_schemas::{MachineId, subjects, v1};
use sysmonstm_testkit::{NatsServer, TestDb, eventually, refresh_rollups};

async fn paths() -> Vec<Storage> {
    storage_paths().await
}

async fn db_for(storage: Storage) -> (TestDb, PgPool, Mode) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    migrate_with(&pool, storage).await.expect("migrations run");
    let mode = store::mode(&pool).await.expect("mode");
    let want = if storage == Storage::Plain {
        Mode::Plain
    } else {
        Mode::Timescaledb
    };
    assert_eq!(mode, want);
    (db, pool, mode)
}

fn at(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().expect("ts")
}

#[tokio::test]
async fn full_snapshot_machines_and_alerts_are_stored_once_on_both_paths() {
    for storage in paths().await {
        let nats = NatsServer::start();
        let (db, pool, _) = db_for(storage).await;
        let persister = spawn(config(&nats.url(), db.url()));
        let js = js_for(&nats.url()).await;
        ensure_stream(&js).await;

        for seq in 1..=3 {
            publish(&js, &full_snapshot("full-1", seq)).await;
        }
        // A redelivered-looking copy under a new Msg-Id: the row stays one.
        publish_raw(
            &js,
            "sysmon.metrics.full-1",
            "again",
            full_snapshot("full-1", 2).encode_to_vec(),
        )
        .await;
        let info = v1::MachineInfo {
            machine_id: "full-1".into(),
            hostname: "full-1.example".into(),
            os_name: "Debian".into(),
            core_count: 8,
            memory_total_bytes: 16 << 30,
            boot_time_s: 1_700_000_000,
            timestamp_ms: base_ms(),
            ..Default::default()
        };
        let id = MachineId::parse("full-1").expect("id");
        js.get_or_create_stream(sysmonstm_schemas::streams::machines())
            .await
            .expect("MACHINES");
        js.publish(subjects::info(&id), info.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
        let event = v1::AlertEvent {
            machine_id: "full-1".into(),
            rule: "cpu_high".into(),
            severity: v1::Severity::Critical as i32,
            state: v1::AlertState::Firing as i32,
            metric: "cpu".into(),
            value: 97.5,
            threshold: 90.0,
            since_ms: base_ms(),
            timestamp_ms: base_ms() + 1000,
            message: "cpu 97.5% > 90%".into(),
            ..Default::default()
        };
        js.get_or_create_stream(sysmonstm_schemas::streams::alerts())
            .await
            .expect("ALERTS");
        let subject = subjects::alert(
            v1::Severity::Critical,
            &id,
            &MachineId::parse("cpu_high").expect("rule"),
        );
        let msg_id = format!("full-1:cpu_high:{}:firing", base_ms());
        for _ in 0..2 {
            publish_raw(&js, &subject, &msg_id, event.encode_to_vec()).await;
        }

        wait_rows(&pool, 3).await;
        eventually(WAIT, "machine info and the alert stored", || async {
            let (host, alerts): (Option<String>, i64) = sqlx::query_as(
                "SELECT (SELECT hostname FROM machines WHERE machine_id = 'full-1'),
                        (SELECT count(*) FROM alerts)",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (host.is_some() && alerts == 1).then_some(())
        })
        .await;
        let children: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM metrics_fs), (SELECT count(*) FROM metrics_disk),
                    (SELECT count(*) FROM metrics_net), (SELECT count(*) FROM metrics_temp),
                    (SELECT count(*) FROM metrics_proc)",
        )
        .fetch_one(&pool)
        .await
        .expect("children");
        assert_eq!(children, (3 * 2, 3, 3 * 2, 3, 3 * 3), "{storage:?}");
        let (mem, net_rx, cores): (f32, f64, i32) = sqlx::query_as(
            "SELECT m.mem_used_percent, m.net_rx_bps, k.core_count
             FROM metrics m JOIN machines k USING (machine_id) WHERE m.seq = 3",
        )
        .fetch_one(&pool)
        .await
        .expect("row");
        assert!((mem - 25.0).abs() < 1e-3, "{mem}");
        assert_eq!(net_rx, 1000.0 + 3.0, "lo is not counted");
        assert_eq!(cores, 8);
        // last_seen follows the rows within about a second.
        eventually(WAIT, "last_seen = the newest snapshot", || async {
            let seen: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT last_seen FROM machines WHERE machine_id = 'full-1'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (seen == Some(at(base_ms() + 3000))).then_some(())
        })
        .await;
        let (state, sev, value, stored_id): (String, String, f64, String) =
            sqlx::query_as("SELECT state, severity, value, msg_id FROM alerts")
                .fetch_one(&pool)
                .await
                .expect("alert");
        assert_eq!(
            (state.as_str(), sev.as_str(), value, stored_id.as_str()),
            ("firing", "critical", 97.5, msg_id.as_str())
        );
        // The same event again (a redelivery) inserts nothing.
        let row = alerts::decode(&event.encode_to_vec(), Some(&msg_id)).expect("decodes");
        assert_eq!(alerts::insert(&pool, &[row]).await.expect("insert"), 0);
        persister.stop().await;
    }
}

/// A snapshot with every child list filled.
fn full_snapshot(machine: &str, seq: u64) -> v1::Snapshot {
    let mut s = snapshot(machine, seq);
    s.memory = Some(v1::Memory {
        total_bytes: 400,
        used_bytes: 100,
        ..Default::default()
    });
    s.filesystems = ["/", "/home"]
        .iter()
        .map(|m| v1::Filesystem {
            mount: (*m).into(),
            fs_type: "ext4".into(),
            total_bytes: 100,
            used_bytes: 40,
            free_bytes: 60,
        })
        .collect();
    s.disks = vec![v1::Disk {
        name: "sda".into(),
        read_bytes_per_s: Some(10.0),
        write_bytes_per_s: Some(20.0),
    }];
    s.interfaces = ["lo", "eth0"]
        .iter()
        .map(|n| v1::NetInterface {
            name: (*n).into(),
            rx_bytes_per_s: Some(if *n == "lo" { 5e5 } else { 1000.0 + seq as f32 }),
            tx_bytes_per_s: Some(1.0),
            ..Default::default()
        })
        .collect();
    s.temperatures = vec![v1::Temperature {
        label: "cpu".into(),
        celsius: 50.0,
    }];
    s.top_cpu = (0..2)
        .map(|i| v1::Process {
            pid: 100 + i,
            name: format!("p{i}"),
            cpu_percent: 5.0,
            rss_bytes: 1 << 20,
        })
        .collect();
    s.top_memory = vec![v1::Process {
        pid: 7,
        name: "big".into(),
        cpu_percent: 1.0,
        rss_bytes: 1 << 30,
    }];
    s
}

/// (machine, bucket ms, cpu avg, cpu min, cpu max, memory avg, samples)
type Agg = (String, i64, f64, f64, f64, f64, i64);

async fn aggregates(pool: &PgPool, sql: &str) -> Vec<Agg> {
    sqlx::query_as(sql).fetch_all(pool).await.expect(sql)
}

#[tokio::test]
async fn rollups_equal_the_aggregates_of_the_raw_rows_on_both_paths() {
    for storage in paths().await {
        let (_db, pool, mode) = db_for(storage).await;
        let writer = Writer::new(pool.clone(), mode);
        // Three machines, 3 hours at 10 s, written in batches of 500,
        // the second half twice (a redelivery must add nothing).
        let snaps: Vec<v1::Snapshot> = (0..3)
            .flat_map(|m| {
                (1..=1080).map(move |seq| {
                    let mut s = snapshot(&format!("r{m}"), seq * 10);
                    s.cpu.as_mut().expect("cpu").usage_percent = ((seq * 7 + m) % 100) as f32;
                    s
                })
            })
            .collect();
        // Plain: the rollups are settled now and then
        // between batches, and twice at once at the end: each queued
        // aggregate must be merged exactly once.
        let settle = || async {
            if mode == Mode::Plain {
                maintenance::settle_rollups(&pool).await.expect("settle")
            } else {
                0
            }
        };
        for (i, chunk) in snaps.chunks(500).enumerate() {
            writer.write(&batch(chunk)).await.expect("write");
            if i % 3 == 1 {
                settle().await;
            }
        }
        let again = writer
            .write(&batch(&snaps[snaps.len() / 2..]))
            .await
            .expect("rewrite");
        assert_eq!(again, 0);
        let (a, b) = tokio::join!(settle(), settle());
        if mode == Mode::Plain {
            assert!(a + b > 0, "something was queued");
            assert_eq!(settle().await, 0, "the queue is empty once settled");
        }
        if mode == Mode::Timescaledb {
            refresh_rollups(&pool, &["metrics_1m", "metrics_5m", "metrics_1h"])
                .await
                .expect("refresh");
        }
        for (view, width) in [
            ("metrics_1m", "1 minute"),
            ("metrics_5m", "5 minutes"),
            ("metrics_1h", "1 hour"),
        ] {
            let rolled = aggregates(
                &pool,
                &format!(
                    "SELECT machine_id, (extract(epoch FROM bucket) * 1000)::int8, cpu_avg, cpu_min,
                            cpu_max, memory_avg, samples FROM {view} ORDER BY 1, 2"
                ),
            )
            .await;
            let raw = aggregates(
                &pool,
                &format!(
                    "SELECT machine_id,
                            (extract(epoch FROM date_bin('{width}', ts, '2000-01-01 00:00:00+00')) * 1000)::int8 b,
                            avg(cpu_percent)::float8, min(cpu_percent)::float8, max(cpu_percent)::float8,
                            avg(mem_used_percent)::float8, count(*)
                     FROM metrics GROUP BY 1, 2 ORDER BY 1, 2"
                ),
            )
            .await;
            assert!(raw.len() > 3, "{view}: {} buckets", raw.len());
            assert_eq!(rolled.len(), raw.len(), "{storage:?} {view}");
            for (r, w) in rolled.iter().zip(&raw) {
                assert_eq!(
                    (&r.0, r.1, r.3, r.4, r.6),
                    (&w.0, w.1, w.3, w.4, w.6),
                    "{storage:?} {view}"
                );
                assert!(
                    (r.2 - w.2).abs() < 1e-9 && (r.5 - w.5).abs() < 1e-6,
                    "{storage:?} {view}: {r:?} vs {w:?}"
                );
            }
        }
        // sysmon_history: the source follows the range, or the step.
        let from = at(base_ms());
        let res = |sql: String| {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, i64)>(&sql)
                    .fetch_one(&pool)
                    .await
                    .expect("history")
            }
        };
        let q = |to_h: i64, step: &str| {
            format!(
                "SELECT min(resolution), count(*) FROM sysmon_history('r1', 'cpu', '{}', '{}'::timestamptz + interval '{to_h} hours' {step})",
                from.to_rfc3339(),
                from.to_rfc3339()
            )
        };
        assert_eq!(res(q(1, "")).await, ("raw".to_owned(), 359));
        assert_eq!(res(q(3, "")).await.0, "1m");
        assert_eq!(res(q(72, "")).await.0, "1m");
        // Over 3 days up to 35: five-minute buckets, 36 or 37 in the 3 h of data.
        let (resolution, bins) = res(q(73, "")).await;
        assert_eq!(resolution, "5m");
        assert!((36..=37).contains(&bins), "{bins} five-minute buckets");
        assert_eq!(res(q(240, "")).await.0, "5m");
        assert_eq!(res(q(35 * 24, "")).await.0, "5m");
        assert_eq!(res(q(35 * 24 + 1, "")).await.0, "1h");
        // With a step: the coarsest source not coarser than the step.
        let (resolution, bins) = res(q(3, ", interval '5 minutes'")).await;
        assert_eq!(resolution, "5m");
        assert!((36..=37).contains(&bins), "{bins} five-minute bins in 3 h");
        let (resolution, bins) = res(q(3, ", interval '10 minutes'")).await;
        assert_eq!(resolution, "5m");
        assert!((18..=19).contains(&bins), "{bins} ten-minute bins in 3 h");
        // A step of the source's own width: its rows as they are, which are
        // the raw aggregates of each 5-minute bin.
        let off: i64 = sqlx::query_scalar(&format!(
            "WITH h AS (SELECT * FROM sysmon_history('r1', 'cpu', '{0}', '{0}'::timestamptz + interval '4 hours',
                                                     interval '300 seconds')),
                  r AS (SELECT date_bin('5 minutes', ts, '2000-01-01 00:00:00+00') b, avg(cpu_percent)::float8 a,
                               min(cpu_percent)::float8 lo, max(cpu_percent)::float8 hi
                        FROM metrics WHERE machine_id = 'r1' GROUP BY 1)
             SELECT count(*) FROM h FULL JOIN (SELECT * FROM r WHERE b >= '{0}') r ON r.b = h.ts
             WHERE h.ts IS NULL OR r.b IS NULL OR abs(h.avg - r.a) > 1e-9 OR h.min <> r.lo OR h.max <> r.hi
                OR h.resolution <> '5m'",
            from.to_rfc3339()
        ))
        .fetch_one(&pool)
        .await
        .expect("5-minute step");
        assert_eq!(
            off, 0,
            "{storage:?}: 5-minute bins that differ from the raw rows"
        );
        assert_eq!(res(q(3, ", interval '4 minutes'")).await.0, "1m");
        assert_eq!(res(q(3, ", interval '30 seconds'")).await.0, "raw");
        assert_eq!(res(q(3, ", interval '1 hour'")).await.0, "1h");
        // A step over 5-minute buckets weighs each by its samples: the same
        // average as straight from the raw rows.
        let (from_5m, from_raw): (f64, f64) = sqlx::query_as(&format!(
            "WITH h AS (SELECT ts, avg FROM sysmon_history('r1', 'cpu', '{0}', '{0}'::timestamptz + interval '3 hours',
                                                          interval '15 minutes') ORDER BY ts LIMIT 1 OFFSET 2)
             SELECT h.avg, (SELECT avg(cpu_percent)::float8 FROM metrics m WHERE m.machine_id = 'r1'
                              AND m.ts >= h.ts AND m.ts < h.ts + interval '15 minutes') FROM h",
            from.to_rfc3339()
        ))
        .fetch_one(&pool)
        .await
        .expect("15-minute bin");
        assert!((from_5m - from_raw).abs() < 1e-9, "{from_5m} vs {from_raw}");
        let err = sqlx::query(
            "SELECT * FROM sysmon_history('r1', 'nope', now() - interval '1 hour', now())",
        )
        .execute(&pool)
        .await
        .expect_err("unknown metric");
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("22023")
        );
    }
}

#[tokio::test]
async fn retention_drops_old_data_on_both_paths() {
    for storage in paths().await {
        let (_db, pool, mode) = db_for(storage).await;
        let writer = Writer::new(pool.clone(), mode);
        let now_ms = Utc::now().timestamp_millis();
        let day = 86_400_000;
        let mut snaps = Vec::new();
        for (i, age_days) in [40_i64, 35, 1, 0].into_iter().enumerate() {
            let mut s = full_snapshot("old-new", i as u64 + 1);
            s.timestamp_ms = now_ms - age_days * day - 60_000;
            snaps.push(s);
        }
        writer.write(&batch(&snaps)).await.expect("write");
        // 5-minute rollups kept 30 days here (365 by default), to see them go.
        let cfg = PersisterConfig {
            retention_5m_days: 30,
            ..PersisterConfig::default()
        };
        let report = maintenance::run_once(&pool, mode, &cfg)
            .await
            .expect("maintenance");
        match mode {
            Mode::Plain => assert!(report.partitions_dropped >= 2, "{report:?}"),
            Mode::Timescaledb => assert!(report.chunks_dropped >= 2, "{report:?}"),
        }
        let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM metrics ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("rows");
        assert_eq!(left, vec![3, 4], "{storage:?}");
        let fs_old: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM metrics_fs WHERE ts < now() - interval '30 days'",
        )
        .fetch_one(&pool)
        .await
        .expect("fs");
        assert_eq!(fs_old, 0, "the detail goes with its day");
        if mode == Mode::Timescaledb {
            let policies: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'",
            )
            .fetch_one(&pool)
            .await
            .expect("jobs");
            assert!(policies >= 3, "retention policies registered: {policies}");
            let on_5m: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM timescaledb_information.jobs
                 WHERE proc_name = 'policy_retention' AND hypertable_name = 'metrics_5m'",
            )
            .fetch_one(&pool)
            .await
            .expect("5m policy");
            assert_eq!(on_5m, 1, "metrics_5m has a retention policy");
        } else {
            let buckets: Vec<i64> = sqlx::query_scalar(
                "SELECT (extract(epoch FROM now() - bucket) / 86400)::int8 FROM metrics_5m ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .expect("5m rows");
            assert_eq!(
                buckets,
                vec![0, 1],
                "5-minute rollups older than 30 days dropped"
            );
        }
        // Partitions ahead exist on the plain path, so inserts never wait on DDL.
        if mode == Mode::Plain {
            let ahead: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'metrics_p%' AND relname >= 'metrics_p' || to_char(current_date + 7, 'YYYYMMDD')",
            )
            .fetch_one(&pool)
            .await
            .expect("ahead");
            assert!(ahead >= 1);
        }
    }
}

#[tokio::test]
async fn metrics_endpoint_counts_received_stored_duplicates_and_rejections() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let p = sysmonstm_persister::Persister::new(config(&nats.url(), db.url()));
    let addr = p.metrics_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(p.run(shutdown.clone()));
    let js = js_for(&nats.url()).await;
    ensure_stream(&js).await;
    for seq in 1..=5 {
        publish(&js, &snapshot("scrape", seq)).await;
    }
    publish_raw(
        &js,
        "sysmon.metrics.scrape",
        "dup",
        snapshot("scrape", 1).encode_to_vec(),
    )
    .await;
    let mut future = snapshot("scrape", 6);
    future.timestamp_ms = Utc::now().timestamp_millis() + 10 * 86_400_000;
    publish(&js, &future).await;
    publish_raw(&js, "sysmon.metrics.scrape", "big", vec![0u8; 200_000]).await;
    let body = eventually(WAIT, "/metrics shows every message", || {
        let addr = addr.get().copied();
        async move {
            let body = scrape(addr?).await?;
            let v = |name: &str| value(&body, name);
            (v("sysmonstm_persister_snapshots_received_total")? == 8
                && v("sysmonstm_persister_snapshots_stored_total")?
                    + v("sysmonstm_persister_snapshots_duplicate_total")?
                    == 6)
                .then_some(body)
        }
    })
    .await;
    for line in [
        "sysmonstm_persister_snapshots_stored_total 5",
        "sysmonstm_persister_snapshots_duplicate_total 1",
        "sysmonstm_persister_snapshots_rejected_total{reason=\"future\"} 1",
        "sysmonstm_persister_snapshots_rejected_total{reason=\"oversized\"} 1",
        "sysmonstm_persister_batch_seconds_count",
        "sysmonstm_persister_consumer_pending_messages",
        "sysmonstm_persister_messages_redelivered_total 0",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// The value of an unlabelled sample in a Prometheus text body.
fn value(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}
