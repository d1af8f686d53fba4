//! PostgreSQL: connecting (patiently), migrating, and writing a batch of
//! snapshots in one transaction: the wide rows and every child table with one
//! `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` each, and the
//! machines' last_seen.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::Storage;
use crate::decode::Decoded;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs the migrations; a new database gets TimescaleDB when it is available.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrate_with(pool, Storage::Auto).await
}

/// Runs the migrations; a new database gets the storage path `storage`
/// (passed to the migration as the session setting `sysmon.storage`).
pub async fn migrate_with(
    pool: &PgPool,
    storage: Storage,
) -> Result<(), sqlx::migrate::MigrateError> {
    // The setting travels in the startup packet of a connection of its own,
    // so no pooled connection keeps it.
    let opts = (*pool.connect_options())
        .clone()
        .options([("sysmon.storage", storage.as_str())]);
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let r = MIGRATOR.run(&one).await;
    one.close().await;
    r
}

/// The storage path of a migrated database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Timescaledb,
    Plain,
}

pub async fn mode(pool: &PgPool) -> Result<Mode, sqlx::Error> {
    let m: String = sqlx::query_scalar("SELECT mode FROM sysmon_storage")
        .fetch_one(pool)
        .await?;
    Ok(if m == "timescaledb" {
        Mode::Timescaledb
    } else {
        Mode::Plain
    })
}

/// Connects and runs the migrations, retrying with back-off while the
/// database is unreachable; `None` only if shut down meanwhile.
pub async fn connect(
    url: &str,
    storage: Storage,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<(PgPool, Mode)> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            migrate_with(&pool, storage).await?;
            let mode = mode(&pool).await?;
            Ok::<_, anyhow::Error>((pool, mode))
        };
        match attempt.await {
            Ok(p) => return Some(p),
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

/// Writes batches; remembers which daily partitions exist (plain path).
pub struct Writer {
    pub pool: PgPool,
    pub mode: Mode,
    days: Mutex<HashSet<NaiveDate>>,
}

impl Writer {
    pub fn new(pool: PgPool, mode: Mode) -> Self {
        Self {
            pool,
            mode,
            days: Mutex::default(),
        }
    }

    /// Writes `snaps` in one transaction; rows already present (same machine
    /// and timestamp) are left as they are. Returns how many snapshots were
    /// new.
    pub async fn write(&self, snaps: &[Decoded]) -> Result<u64, sqlx::Error> {
        if snaps.is_empty() {
            return Ok(0);
        }
        if self.mode == Mode::Plain {
            self.ensure_partitions(snaps).await?;
        }
        let r = self.write_tx(snaps).await;
        if r.is_err() {
            // A partition dropped by retention meanwhile: check again next time.
            self.days.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        r
    }

    async fn ensure_partitions(&self, snaps: &[Decoded]) -> Result<(), sqlx::Error> {
        let missing: Vec<NaiveDate> = {
            let known = self.days.lock().unwrap_or_else(|e| e.into_inner());
            let mut m: Vec<NaiveDate> = snaps
                .iter()
                .map(|s| s.row.ts.date_naive())
                .filter(|d| !known.contains(d))
                .collect();
            m.sort();
            m.dedup();
            m
        };
        for d in missing {
            sqlx::query("SELECT sysmon_ensure_partitions($1, $1)")
                .bind(d)
                .execute(&self.pool)
                .await?;
            self.days
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(d);
        }
        Ok(())
    }

    async fn write_tx(&self, snaps: &[Decoded]) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let new = insert_metrics(&mut tx, "metrics", snaps).await?;
        crate::children::insert_all(&mut tx, snaps).await?;
        touch_machines(&mut tx, snaps).await?;
        tx.commit().await?;
        Ok(new)
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Postgres>;

/// The wide rows, one statement. Per-core arrays travel as array literals
/// because UNNEST cannot take an array of arrays of different lengths.
async fn insert_metrics(
    tx: &mut Tx<'_>,
    table: &str,
    snaps: &[Decoded],
) -> Result<u64, sqlx::Error> {
    macro_rules! col {
        ($f:ident) => {
            snaps.iter().map(|s| s.row.$f.clone()).collect::<Vec<_>>()
        };
    }
    let per_core: Vec<Option<String>> = snaps
        .iter()
        .map(|s| {
            s.row.cpu_per_core.as_ref().map(|v| {
                let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                format!("{{{}}}", parts.join(","))
            })
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} (machine_id, ts, seq, interval_ms, cpu_percent, cpu_user_percent,
             cpu_system_percent, cpu_iowait_percent, cpu_per_core,
             mem_total_bytes, mem_used_bytes, mem_available_bytes, mem_used_percent,
             swap_total_bytes, swap_used_bytes, swap_used_percent,
             load1, load5, load15, uptime_s, process_count,
             net_rx_bps, net_tx_bps, disk_read_bps, disk_write_bps, temperature_max_c,
             agent_spool_pending, agent_spool_dropped)
         SELECT m, t, sq, iv, c, cu, cs, ci, pc::real[], mt, mu, ma, mp, st, su, sp,
             l1, l5, l15, up, pn, rx, tx, dr, dw, tm, ap, ad
         FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::int4[], $5::float4[],
             $6::float4[], $7::float4[], $8::float4[], $9::text[],
             $10::int8[], $11::int8[], $12::int8[], $13::float4[],
             $14::int8[], $15::int8[], $16::float4[],
             $17::float8[], $18::float8[], $19::float8[], $20::int8[], $21::int4[],
             $22::float8[], $23::float8[], $24::float8[], $25::float8[], $26::float4[],
             $27::int8[], $28::int8[])
             AS u(m, t, sq, iv, c, cu, cs, ci, pc, mt, mu, ma, mp, st, su, sp,
                  l1, l5, l15, up, pn, rx, tx, dr, dw, tm, ap, ad)
         ON CONFLICT (machine_id, ts) DO NOTHING"
    );
    let res = sqlx::query(&sql)
        .bind(col!(machine_id))
        .bind(col!(ts))
        .bind(col!(seq))
        .bind(col!(interval_ms))
        .bind(col!(cpu_percent))
        .bind(col!(cpu_user_percent))
        .bind(col!(cpu_system_percent))
        .bind(col!(cpu_iowait_percent))
        .bind(per_core)
        .bind(col!(mem_total_bytes))
        .bind(col!(mem_used_bytes))
        .bind(col!(mem_available_bytes))
        .bind(col!(mem_used_percent))
        .bind(col!(swap_total_bytes))
        .bind(col!(swap_used_bytes))
        .bind(col!(swap_used_percent))
        .bind(col!(load1))
        .bind(col!(load5))
        .bind(col!(load15))
        .bind(col!(uptime_s))
        .bind(col!(process_count))
        .bind(col!(net_rx_bps))
        .bind(col!(net_tx_bps))
        .bind(col!(disk_read_bps))
        .bind(col!(disk_write_bps))
        .bind(col!(temperature_max_c))
        .bind(col!(agent_spool_pending))
        .bind(col!(agent_spool_dropped))
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected())
}

/// Only the wide rows, into `table` (shaped like `metrics`), in one
/// transaction: what `just bench ingest` compares with COPY into a staging
/// table.
pub async fn insert_wide(
    pool: &PgPool,
    table: &str,
    snaps: &[Decoded],
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = insert_metrics(&mut tx, table, snaps).await?;
    tx.commit().await?;
    Ok(n)
}

/// `machines.last_seen` = the newest snapshot time seen of each machine.
/// Sorted, so two persisters lock the rows in the same order.
async fn touch_machines(tx: &mut Tx<'_>, snaps: &[Decoded]) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = snaps.iter().map(|s| s.row.machine_id.clone()).collect();
    let ts: Vec<_> = snaps.iter().map(|s| s.row.ts).collect();
    sqlx::query(
        "INSERT INTO machines AS m (machine_id, last_seen)
         SELECT id, max(t) FROM UNNEST($1::text[], $2::timestamptz[]) AS u(id, t)
         GROUP BY id ORDER BY id
         ON CONFLICT (machine_id) DO UPDATE SET last_seen = EXCLUDED.last_seen
         WHERE m.last_seen IS NULL OR m.last_seen < EXCLUDED.last_seen",
    )
    .bind(ids)
    .bind(ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
