//! Periodic upkeep of the storage: daily partitions created ahead (plain
//! path) and retention on both paths (plain: drop partitions and old rollup
//! rows; TimescaleDB: drop_chunks, besides its own retention policies); and,
//! on the plain path, the rollups merged from the queue the batches' trigger
//! fills, every few seconds.

use std::time::Duration;

use sqlx::{PgPool, Row as _};
use tokio_util::sync::CancellationToken;

use crate::config::PersisterConfig;
use crate::store::Mode;

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub partitions_created: i32,
    pub partitions_dropped: i32,
    pub chunks_dropped: i64,
    pub rollup_rows_deleted: u64,
}

/// Days of partitions kept ready beyond today.
const DAYS_AHEAD: i32 = 7;

/// One maintenance pass.
pub async fn run_once(
    pool: &PgPool,
    mode: Mode,
    cfg: &PersisterConfig,
) -> Result<Report, sqlx::Error> {
    let mut r = Report::default();
    let raw_days = i32::try_from(cfg.retention_raw_days).unwrap_or(i32::MAX);
    match mode {
        Mode::Plain => {
            r.partitions_created =
                sqlx::query("SELECT sysmon_ensure_partitions(current_date - 1, current_date + $1)")
                    .bind(DAYS_AHEAD)
                    .fetch_one(pool)
                    .await?
                    .try_get(0)?;
            if raw_days > 0 {
                r.partitions_dropped =
                    sqlx::query("SELECT sysmon_drop_partitions(now() - make_interval(days => $1))")
                        .bind(raw_days)
                        .fetch_one(pool)
                        .await?
                        .try_get(0)?;
            }
            // What is queued goes into the rollups before old buckets are
            // dropped, so nothing merged later brings one back.
            settle_rollups(pool).await?;
            // Table names are constants here, never input.
            for (table, days) in [
                ("metrics_1m_acc", cfg.retention_1m_days),
                ("metrics_5m_acc", cfg.retention_5m_days),
                ("metrics_1h_acc", cfg.retention_1h_days),
            ] {
                if days > 0 {
                    r.rollup_rows_deleted += sqlx::query(&format!(
                        "DELETE FROM {table} WHERE bucket < now() - make_interval(days => $1)"
                    ))
                    .bind(i32::try_from(days).unwrap_or(i32::MAX))
                    .execute(pool)
                    .await?
                    .rows_affected();
                }
            }
        }
        Mode::Timescaledb => {
            if raw_days > 0 {
                r.chunks_dropped = sqlx::query(
                    "SELECT count(*) FROM unnest(sysmon_series_tables()) t,
                         LATERAL drop_chunks(t::regclass, older_than => now() - make_interval(days => $1))",
                )
                .bind(raw_days)
                .fetch_one(pool)
                .await?
                .try_get(0)?;
            }
        }
    }
    Ok(r)
}

/// Runs [`run_once`] now and then every `maintenance_interval_s` until
/// shutdown; failures are logged and tried again next time.
pub async fn run(pool: PgPool, mode: Mode, cfg: PersisterConfig, shutdown: CancellationToken) {
    let every = Duration::from_secs(cfg.maintenance_interval_s.max(1));
    loop {
        match run_once(&pool, mode, &cfg).await {
            Ok(r) => tracing::info!(?r, "maintenance done"),
            Err(e) => tracing::warn!(error = %e, "maintenance failed; next run retries"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Plain path: merges the queued 1-minute aggregates into the 5-minute and
/// 1-hour rollups (`sysmon_rollup_settle`); returns how many it merged.
pub async fn settle_rollups(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT sysmon_rollup_settle()")
        .fetch_one(pool)
        .await
}

/// Runs [`settle_rollups`] every `every` until shutdown, and once more then;
/// a failure is logged and the queue waits for the next run.
pub async fn run_settle(pool: PgPool, every: Duration, shutdown: CancellationToken) {
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = shutdown.cancelled() => true,
        };
        match settle_rollups(&pool).await {
            Ok(n) => tracing::debug!(merged = n, "rollups settled"),
            Err(e) => {
                tracing::warn!(error = %e, "settling the rollups failed; next run retries")
            }
        }
        if stop {
            return;
        }
    }
}
