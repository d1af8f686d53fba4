//! The history half of `just bench gateway`: 30 days of one machine at 1 Hz
//! (2.6 M rows) in a database migrated by `sysmonstm_persister::migrate`,
//! then p50/p99 of `/api/machines/{id}/history` for 1 h, 24 h, 7 d and 30 d,
//! each request a different range so the answer cache does not hide the
//! database (the cached figure is printed apart).
//!
//! The rows are generated in SQL (`generate_series`) into the persister's
//! `metrics` table, because writing 2.6 M snapshots through JetStream would
//! take most of the benchmark's time; the rollups are then built by the
//! schema's own means (TimescaleDB refresh, or the plain path's trigger).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::PgPool;

pub const MACHINE: &str = "bench-hist";
const DAYS: i64 = 30;

/// Fills the database at `url` with 30 days up to now, or only what is
/// missing since an earlier run.
pub async fn prepare(url: &str) -> anyhow::Result<String> {
    let pool = PgPool::connect(url).await.context("bench database")?;
    sysmonstm_persister::migrate(&pool)
        .await
        .context("persister migrations")?;
    let mode: String = sqlx::query_scalar("SELECT mode FROM sysmon_storage")
        .fetch_one(&pool)
        .await?;
    let have: i64 = sqlx::query_scalar("SELECT count(*) FROM metrics WHERE machine_id = $1")
        .bind(MACHINE)
        .fetch_one(&pool)
        .await?;
    // A database kept from an earlier run is topped up to now, so every
    // range ending now is full.
    let newest: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT max(ts) FROM metrics WHERE machine_id = $1")
            .bind(MACHINE)
            .fetch_one(&pool)
            .await?;
    let fresh = newest.is_some_and(|t| {
        chrono::Utc::now().signed_duration_since(t) < chrono::Duration::minutes(5)
    });
    if have >= DAYS * 86_400 - 3_600 && fresh {
        return Ok(mode);
    }
    // Only what is newer than the newest row; with no row, no lower bound
    // (NULL: `greatest` ignores it). Binding `DateTime::MIN_UTC` instead
    // failed on a first run: PostgreSQL holds no timestamp that early.
    let after = newest.and_then(|t| t.checked_add_signed(chrono::Duration::seconds(1)));
    let t0 = Instant::now();
    eprintln!(
        "bench: writing {DAYS} days of {MACHINE} at 1 Hz ({mode} storage), {} …",
        after.map_or_else(|| "from scratch".to_owned(), |t| format!("from {t}"))
    );
    if mode == "plain" {
        sqlx::query(
            "SELECT sysmon_ensure_partitions(current_date - $1::int - 1, current_date + 1)",
        )
        .bind(DAYS as i32)
        .execute(&pool)
        .await?;
    }
    // One day per statement keeps each transaction (and the plain path's
    // rollup trigger) to a reasonable size.
    let mut written = 0;
    for d in (0..DAYS).rev() {
        written += sqlx::query(
            "INSERT INTO metrics (machine_id, ts, seq, interval_ms, cpu_percent, mem_total_bytes, mem_used_bytes, \
               mem_available_bytes, mem_used_percent, swap_total_bytes, swap_used_bytes, swap_used_percent, \
               load1, load5, load15, uptime_s, process_count, net_rx_bps, net_tx_bps, disk_read_bps, disk_write_bps, received_at) \
             SELECT $1, t, extract(epoch FROM t)::bigint, 1000, \
               (50 + 40 * sin(extract(epoch FROM t) / 600))::real, 16e9::bigint, (8e9 + 4e9 * sin(extract(epoch FROM t) / 3600))::bigint, \
               (8e9 - 4e9 * sin(extract(epoch FROM t) / 3600))::bigint, (50 + 25 * sin(extract(epoch FROM t) / 3600))::real, 0, 0, 0, \
               1.5 + sin(extract(epoch FROM t) / 300), 1.2, 1.0, 1000, 200, 1e5 + 5e4 * sin(extract(epoch FROM t) / 60), 2e4, 3e5, 1e5, t \
             FROM generate_series(greatest($3::timestamptz, date_trunc('second', now()) - make_interval(days => $2 + 1)), \
                                  date_trunc('second', now()) - make_interval(days => $2) - interval '1 second', interval '1 second') t \
             ON CONFLICT DO NOTHING",
        )
        .bind(MACHINE)
        .bind(d as i32)
        .bind(after)
        .execute(&pool)
        .await
        .with_context(|| format!("writing day -{d}"))?
        .rows_affected();
    }
    if mode == "timescaledb" {
        sysmonstm_testkit::refresh_rollups(&pool, &["metrics_1m", "metrics_5m", "metrics_1h"])
            .await
            .context("refreshing the rollups")?;
    } else {
        // The rollups, as the persister settles them.
        sqlx::query("SELECT sysmon_rollup_settle()")
            .execute(&pool)
            .await
            .context("settling the rollups")?;
    }
    eprintln!(
        "bench: {written} rows written and rolled up in {:.0} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(mode)
}

/// p50/p99 (ms) of `n` uncached history requests over `range_s`, and of `n`
/// cached ones (the same range asked again).
pub async fn measure(
    addr: &str,
    metric: &str,
    range_s: i64,
    n: usize,
) -> anyhow::Result<(f64, f64, f64, f64, u64)> {
    let mut cold = Vec::with_capacity(n);
    let mut warm = Vec::with_capacity(n);
    let mut points = 0;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        // A different `to` each time (1 ms apart): a new cache key.
        let to = now - i as i64;
        let path = format!(
            "/api/machines/{MACHINE}/history?metric={metric}&from={}&to={to}",
            to - range_s * 1000
        );
        let (d, body) = get(addr, &path).await?;
        anyhow::ensure!(
            body.contains("\"ts\""),
            "history answer without data: {body}"
        );
        let json = body.split_once("\r\n\r\n").map_or("", |b| b.1);
        points = serde_json::from_str::<serde_json::Value>(json)?["points"]
            .as_u64()
            .unwrap_or(0);
        cold.push(d);
        warm.push(get(addr, &path).await?.0);
    }
    let p = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
    };
    Ok((
        p(&mut cold, 0.5),
        p(&mut cold, 0.99),
        p(&mut warm, 0.5),
        p(&mut warm, 0.99),
        points,
    ))
}

pub async fn get(addr: &str, path: &str) -> anyhow::Result<(Duration, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let d = t0.elapsed();
    anyhow::ensure!(
        out.starts_with("HTTP/1.1 200"),
        "history failed: {}",
        out.lines().next().unwrap_or("")
    );
    Ok((d, out))
}
