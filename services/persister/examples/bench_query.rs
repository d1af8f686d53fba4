//! `just bench query`: loads 10.4 M raw rows — 100 machines, 30 days at
//! BENCH_STEP_S (default 25) s — into `metrics` (rollups kept as in
//! production: the trigger on the plain path, refreshed continuous
//! aggregates on TimescaleDB, each refresh timed), then times the
//! dashboard's question: the 30-day history of one machine at 5-minute
//! steps, via `sysmon_history`.
//! Prints p50/p99 over BENCH_QUERIES (default 200) runs, machines varied.
//!
//! Needs SYSMON_TEST_DATABASE_URL (an admin URL). BENCH_STORAGE: auto |
//! plain | timescaledb.

use std::time::Instant;

use sqlx::PgPool;
use sysmonstm_persister::{Storage, migrate_with, store};
use sysmonstm_testkit::TestDb;

const MACHINES: i64 = 100;
const DAYS: i64 = 30;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// ts, avg, min, max, resolution: one row of `sysmon_history`.
type Point = (
    chrono::DateTime<chrono::Utc>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    String,
);

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn time_queries(
    pool: &PgPool,
    sql: &str,
    n: usize,
) -> anyhow::Result<(f64, f64, i64, String)> {
    let mut ms = Vec::with_capacity(n);
    let mut rows = 0;
    let mut res = String::new();
    for i in 0..n {
        let machine = format!("m{:03}", i as i64 % MACHINES);
        let t = Instant::now();
        let r: Vec<Point> = sqlx::query_as(sql).bind(&machine).fetch_all(pool).await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        rows = r.len() as i64;
        res = r.first().map(|x| x.4.clone()).unwrap_or_default();
    }
    ms.sort_by(f64::total_cmp);
    Ok((pct(&ms, 0.5), pct(&ms, 0.99), rows, res))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let step_s: i64 = env("BENCH_STEP_S", 25);
    let queries: usize = env("BENCH_QUERIES", 200);
    let storage: Storage = match std::env::var("BENCH_STORAGE").as_deref() {
        Ok("plain") => Storage::Plain,
        Ok("timescaledb") => Storage::Timescaledb,
        _ => Storage::Auto,
    };
    let admin = std::env::var("SYSMON_TEST_DATABASE_URL")?;
    let db = TestDb::on(&admin).await;
    let pool = db.pool().await;
    migrate_with(&pool, storage).await?;
    let mode = store::mode(&pool).await?;
    sqlx::query("SELECT sysmon_ensure_partitions(current_date - $1::int - 1, current_date + 1)")
        .bind(DAYS as i32)
        .execute(&pool)
        .await?;

    // One statement per day: the plain path's rollup trigger sees a day at a time.
    let t = Instant::now();
    let mut loaded = 0u64;
    for d in (0..DAYS).rev() {
        let r = sqlx::query(
            "INSERT INTO metrics (machine_id, ts, seq, interval_ms, cpu_percent, mem_used_percent,
                 swap_used_percent, load1, load5, load15, process_count, net_rx_bps, net_tx_bps,
                 disk_read_bps, disk_write_bps)
             SELECT 'm' || lpad(m::text, 3, '0'), ts, extract(epoch FROM ts)::int8, $2 * 1000,
                 (50 + 40 * sin(extract(epoch FROM ts) / 3600 + m))::real, 60::real, 0::real,
                 1.5, 1.2, 1.0, 300, 1e5, 5e4, 1e6, 2e6
             FROM generate_series(0, $3 - 1) m,
                  generate_series(date_bin('1 minute', now(), '2000-01-01') - make_interval(days => $1 + 1),
                                  date_bin('1 minute', now(), '2000-01-01') - make_interval(days => $1)
                                      - make_interval(secs => $2),
                                  make_interval(secs => $2)) ts",
        )
        .bind(d as i32)
        .bind(step_s as i32)
        .bind(MACHINES as i32)
        .execute(&pool)
        .await?;
        loaded += r.rows_affected();
    }
    if mode == store::Mode::Timescaledb {
        for v in ["metrics_1m", "metrics_5m", "metrics_1h"] {
            let t = Instant::now();
            sysmonstm_testkit::refresh_rollups(&pool, &[v]).await?;
            println!("refreshed {v} in {:.1} s", t.elapsed().as_secs_f64());
        }
    } else {
        let t = Instant::now();
        let n = sysmonstm_persister::maintenance::settle_rollups(&pool).await?;
        println!(
            "settled {n} queued 1-minute aggregates into metrics_1m, metrics_5m and metrics_1h in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    sqlx::query("ANALYZE").execute(&pool).await?;
    println!(
        "loaded {loaded} raw rows ({MACHINES} machines, {DAYS} days at {step_s} s, {mode:?}) with rollups in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    for (what, sql) in [
        (
            "30 days at 5-minute steps",
            "SELECT * FROM sysmon_history($1, 'cpu', now() - interval '30 days', now(), interval '5 minutes')",
        ),
        (
            "30 days, source by range",
            "SELECT * FROM sysmon_history($1, 'cpu', now() - interval '30 days', now())",
        ),
        (
            "last hour, raw",
            "SELECT * FROM sysmon_history($1, 'cpu', now() - interval '1 hour', now())",
        ),
    ] {
        let (p50, p99, rows, res) = time_queries(&pool, sql, queries).await?;
        println!(
            "{what}: p50 {p50:.1} ms, p99 {p99:.1} ms over {queries} queries ({rows} points from {res})"
        );
    }
    Ok(())
}
