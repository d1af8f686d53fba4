//! PostgreSQL: connecting (patiently), migrating, and writing a batch of rows
//! in one statement.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::decode::MetricRow;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects and runs the migrations, retrying with back-off while the
/// database is unreachable; `None` only if shut down meanwhile.
pub async fn connect(
    url: &str,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<PgPool> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            MIGRATOR.run(&pool).await?;
            Ok::<_, anyhow::Error>(pool)
        };
        match attempt.await {
            Ok(pool) => return Some(pool),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "database not ready");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Inserts `rows` with one `INSERT … SELECT FROM UNNEST(…)`; rows already
/// present (same machine and timestamp) are left as they are. Returns how
/// many rows were new.
pub async fn insert_metrics(pool: &PgPool, rows: &[MetricRow]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    let res = sqlx::query(
        "INSERT INTO metrics (machine_id, ts, seq, interval_ms, cpu_percent,
             mem_total_bytes, mem_used_bytes, mem_available_bytes, swap_total_bytes, swap_used_bytes,
             load1, load5, load15, uptime_s, process_count)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::int4[], $5::float4[],
             $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
             $11::float8[], $12::float8[], $13::float8[], $14::int8[], $15::int4[])
         ON CONFLICT (machine_id, ts) DO NOTHING",
    )
    .bind(col!(machine_id))
    .bind(col!(ts))
    .bind(col!(seq))
    .bind(col!(interval_ms))
    .bind(col!(cpu_percent))
    .bind(col!(mem_total_bytes))
    .bind(col!(mem_used_bytes))
    .bind(col!(mem_available_bytes))
    .bind(col!(swap_total_bytes))
    .bind(col!(swap_used_bytes))
    .bind(col!(load1))
    .bind(col!(load5))
    .bind(col!(load15))
    .bind(col!(uptime_s))
    .bind(col!(process_count))
    .execute(pool)
    .await?;
    Ok(res.rows_affected())
}
