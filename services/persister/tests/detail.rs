//! The per-device detail, stored as JSON text in the snapshot's row, read
//! back through the views `metrics_fs`, `metrics_disk`, `metrics_net`,
//! `metrics_temp` and `metrics_proc` exactly as sent (values, order, absent
//! values as NULL); the two write paths (COPY straight in, and the staging
//! table a redelivery takes). On a real PostgreSQL, both storage paths where
//! TimescaleDB is available (and required where it must be:
//! `common::storage_paths`).

mod common;

use common::*;
use sqlx::PgPool;
use sysmonstm_persister::store::{self, Writer};
use sysmonstm_persister::{Mode, Storage, migrate_with};
use sysmonstm_schemas::v1;
use sysmonstm_testkit::TestDb;

async fn paths() -> Vec<Storage> {
    storage_paths().await
}

async fn db_for(storage: Storage) -> (TestDb, PgPool, Mode) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    migrate_with(&pool, storage).await.expect("migrations run");
    let mode = store::mode(&pool).await.expect("mode");
    (db, pool, mode)
}

/// Detail with a value missing here and there, in an order that is not
/// alphabetical, so the views must keep the agent's order.
fn detailed(machine: &str, seq: u64) -> v1::Snapshot {
    let mut s = snapshot(machine, seq);
    s.filesystems = vec![
        v1::Filesystem {
            mount: "/var".into(),
            fs_type: "xfs".into(),
            total_bytes: 200,
            used_bytes: 50,
            free_bytes: 150,
        },
        v1::Filesystem {
            mount: "/".into(),
            fs_type: "ext4".into(),
            total_bytes: 0,
            used_bytes: 0,
            free_bytes: 0,
        },
    ];
    s.disks = vec![v1::Disk {
        name: "nvme0n1".into(),
        read_bytes_per_s: None,
        write_bytes_per_s: Some(2.5 + seq as f32),
    }];
    s.interfaces = vec![
        v1::NetInterface {
            name: "eth0".into(),
            rx_bytes_per_s: Some(100.0),
            tx_bytes_per_s: Some(50.0),
            rx_errors_per_s: Some(0.5),
            tx_errors_per_s: None,
        },
        v1::NetInterface {
            name: "lo".into(),
            rx_bytes_per_s: Some(7.0),
            tx_bytes_per_s: Some(7.0),
            ..Default::default()
        },
    ];
    s.temperatures = vec![v1::Temperature {
        label: "Package id 0".into(),
        celsius: 61.5,
    }];
    s.top_cpu = vec![
        v1::Process {
            pid: 30,
            name: "rustc".into(),
            cpu_percent: 180.0,
            rss_bytes: 900 << 20,
        },
        v1::Process {
            pid: 31,
            name: "cc1".into(),
            cpu_percent: 20.0,
            rss_bytes: 40 << 20,
        },
    ];
    s.top_memory = vec![v1::Process {
        pid: 30,
        name: "rustc".into(),
        cpu_percent: 180.0,
        rss_bytes: 900 << 20,
    }];
    s
}

/// Every view's rows of one snapshot, as text, in the views' order.
async fn views(pool: &PgPool, machine: &str) -> Vec<String> {
    let q = |sql: &'static str| {
        let pool = pool.clone();
        let machine = machine.to_owned();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .bind(machine)
                .fetch_all(&pool)
                .await
                .expect(sql)
        }
    };
    let mut out = Vec::new();
    out.extend(
        q(
            "SELECT concat_ws('|', mount, fs_type, total_bytes, used_bytes, free_bytes,
                             coalesce(used_percent::text, 'null'))
           FROM metrics_fs WHERE machine_id = $1",
        )
        .await,
    );
    out.extend(
        q(
            "SELECT concat_ws('|', name, coalesce(read_bps::text, 'null'), write_bps)
           FROM metrics_disk WHERE machine_id = $1",
        )
        .await,
    );
    out.extend(
        q(
            "SELECT concat_ws('|', name, rx_bps, tx_bps, coalesce(rx_errors_ps::text, 'null'),
                             coalesce(tx_errors_ps::text, 'null'))
           FROM metrics_net WHERE machine_id = $1",
        )
        .await,
    );
    out.extend(
        q("SELECT concat_ws('|', label, celsius) FROM metrics_temp WHERE machine_id = $1").await,
    );
    out.extend(
        q(
            "SELECT concat_ws('|', kind, rank, pid, name, cpu_percent, rss_bytes)
           FROM metrics_proc WHERE machine_id = $1",
        )
        .await,
    );
    out
}

const EXPECTED: [&str; 9] = [
    "/var|xfs|200|50|150|25",
    "/|ext4|0|0|0|null",
    "nvme0n1|null|3.5",
    "eth0|100|50|0.5|null",
    "lo|7|7|null|null",
    "Package id 0|61.5",
    "cpu|1|30|rustc|180|943718400",
    "cpu|2|31|cc1|20|41943040",
    "memory|1|30|rustc|180|943718400",
];

#[tokio::test]
async fn the_detail_reads_back_through_the_views_as_sent() {
    for storage in paths().await {
        let (_db, pool, mode) = db_for(storage).await;
        let writer = Writer::new(pool.clone(), mode);
        let n = writer
            .write(&batch(&[detailed("d1", 1)]))
            .await
            .expect("write");
        assert_eq!(n, 1);
        assert_eq!(views(&pool, "d1").await, EXPECTED, "{storage:?}");
        // A snapshot without any detail stores NULL detail and no view rows.
        writer
            .write(&batch(&[snapshot("bare", 1)]))
            .await
            .expect("write bare");
        assert!(views(&pool, "bare").await.is_empty(), "{storage:?}");
    }
}

/// Names a JSON writer must escape, and floats whose exact value must
/// survive the text form: what the views give back is what was sent, bit for
/// bit (NUL, which PostgreSQL text cannot hold, becomes U+FFFD).
#[tokio::test]
async fn odd_names_and_floats_read_back_exactly() {
    let names = [
        "quote\"d",
        "back\\slash",
        "new\nline\ttab\rcr",
        "ctl\u{1}\u{1f}",
        "überwachung ✓ 監視",
        "nul\0byte",
        "",
    ];
    let floats = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        1e-45,
        1e-7,
        0.1,
        -0.0,
        16_777_217.0,
        f32::MAX,
        -123.456,
    ];
    for storage in paths().await {
        let (_db, pool, mode) = db_for(storage).await;
        let mut s = snapshot("odd", 1);
        s.disks = names
            .iter()
            .zip(floats.iter().cycle())
            .map(|(n, f)| v1::Disk {
                name: (*n).into(),
                read_bytes_per_s: Some(*f),
                write_bytes_per_s: None,
            })
            .collect();
        s.temperatures = floats
            .iter()
            .map(|f| v1::Temperature {
                label: format!("t{f}"),
                celsius: *f,
            })
            .collect();
        s.top_memory = vec![v1::Process {
            pid: u32::MAX,
            name: "big".into(),
            cpu_percent: 1e30,
            rss_bytes: u64::MAX,
        }];
        let writer = Writer::new(pool.clone(), mode);
        assert_eq!(writer.write(&batch(&[s])).await.expect("write"), 1);

        let disks: Vec<(String, Option<f32>, Option<f32>)> = sqlx::query_as(
            "SELECT name, read_bps, write_bps FROM metrics_disk WHERE machine_id = 'odd'",
        )
        .fetch_all(&pool)
        .await
        .expect("disks");
        let want: Vec<String> = names.iter().map(|n| n.replace('\0', "\u{fffd}")).collect();
        assert_eq!(
            disks.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
            want,
            "{storage:?}"
        );
        assert!(disks.iter().all(|d| d.2.is_none()), "{storage:?}");
        let temps: Vec<f32> =
            sqlx::query_scalar("SELECT celsius FROM metrics_temp WHERE machine_id = 'odd'")
                .fetch_all(&pool)
                .await
                .expect("temps");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        // -0.0 has no sign in JSON's numbers (jsonb keeps a numeric): 0.0.
        let sent: Vec<f32> = floats
            .iter()
            .map(|f| if *f == 0.0 { 0.0 } else { *f })
            .collect();
        assert_eq!(temps.len(), sent.len(), "{storage:?}");
        for (got, want) in temps.iter().zip(&sent) {
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{storage:?}: {got} != {want} ({:?})",
                bits(&[*got, *want])
            );
        }
        let proc: (i32, f32, i64) = sqlx::query_as(
            "SELECT pid, cpu_percent, rss_bytes FROM metrics_proc WHERE machine_id = 'odd'",
        )
        .fetch_one(&pool)
        .await
        .expect("proc");
        // Clamped to the column types, as before.
        assert_eq!(proc, (i32::MAX, 1e30, i64::MAX), "{storage:?}");
    }
}

#[tokio::test]
async fn a_batch_with_redeliveries_stores_only_the_new_snapshots() {
    for storage in paths().await {
        let (_db, pool, mode) = db_for(storage).await;
        let writer = Writer::new(pool.clone(), mode);
        let first = batch(&(1..=50).map(|q| detailed("r", q)).collect::<Vec<_>>());
        assert_eq!(writer.write(&first).await.expect("first"), 50);
        // Half of it again, with 50 new ones and one repeated inside the batch.
        let mut second: Vec<v1::Snapshot> = (26..=100).map(|q| detailed("r", q)).collect();
        second.push(detailed("r", 100));
        assert_eq!(
            writer.write(&batch(&second)).await.expect("second"),
            50,
            "{storage:?}"
        );
        assert_eq!(writer.write(&first).await.expect("again"), 0, "{storage:?}");
        let (rows, distinct, procs): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT seq),
                    (SELECT count(*) FROM metrics_proc) FROM metrics",
        )
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!((rows, distinct, procs), (100, 100, 300), "{storage:?}");
    }
}
