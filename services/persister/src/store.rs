//! PostgreSQL: connecting (patiently), migrating, and writing a batch of
//! snapshots in one transaction: one binary COPY of their rows (detail
//! included, as JSON text); the machines' last_seen follows once a second. A batch holding a
//! snapshot already stored (a redelivery) goes through a staging table and
//! `INSERT … ON CONFLICT DO NOTHING` instead, so it changes nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use crate::config::Storage;
use crate::copy::Batch;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a database was not migrated.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Made by the migrations before the first release (0001_metrics …
    /// 0010), which were folded into one baseline: it cannot be upgraded.
    #[error(
        "database {0:?} was created by a pre-release schema (migrations 1..10, folded into one \
         baseline before the first release) and cannot be upgraded; nothing was changed. \
         Drop it (`DROP DATABASE {0}`) or point DATABASE_URL at a new database, and the \
         persister creates the schema there"
    )]
    PreRelease(String),
    /// Holds the persister's tables but no record of migrations: not made
    /// by the persister, so not touched by it.
    #[error(
        "database {0:?} holds sysmonstm tables (sysmon_storage) but no _sqlx_migrations table: \
         it was not created by this persister's migrations, and nothing was changed. Point \
         DATABASE_URL at a new database, or drop this one"
    )]
    Unrecorded(String),
    /// Made by an earlier version of the baseline (before the first
    /// release the baseline is edited in place, e.g. when a table is added):
    /// sqlx sees its checksum differ. It cannot be upgraded either.
    #[error(
        "database {0:?} was created by an earlier pre-release version of the baseline migration \
         (its checksum differs from this persister's) and cannot be upgraded; nothing was \
         changed. Drop it (`DROP DATABASE {0}`) or point DATABASE_URL at a new database, and the \
         persister creates the schema there"
    )]
    EarlierBaseline(String),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl SchemaError {
    /// Retrying cannot help: the database must be replaced first.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::PreRelease(_) | Self::Unrecorded(_) | Self::EarlierBaseline(_)
        )
    }
}

/// Runs the migrations; a new database gets TimescaleDB when it is available.
pub async fn migrate(pool: &PgPool) -> Result<(), SchemaError> {
    migrate_with(pool, Storage::Auto).await
}

/// Runs the migrations; a new database gets the storage path `storage`
/// (passed to the migration as the session setting `sysmon.storage`). A
/// database made by the pre-release migrations is refused before anything
/// runs ([`SchemaError::PreRelease`]).
pub async fn migrate_with(pool: &PgPool, storage: Storage) -> Result<(), SchemaError> {
    // The setting travels in the startup packet of a connection of its own,
    // so no pooled connection keeps it.
    let opts = (*pool.connect_options())
        .clone()
        .options([("sysmon.storage", storage.as_str())]);
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    let r = match check_origin(&one).await {
        // sqlx compares the recorded checksums before it runs anything.
        Ok(()) => match MIGRATOR.run(&one).await {
            Err(sqlx::migrate::MigrateError::VersionMismatch(1)) => {
                let db: Result<String, _> = sqlx::query_scalar("SELECT current_database()::text")
                    .fetch_one(&one)
                    .await;
                db.map_err(SchemaError::from)
                    .and_then(|db| Err(SchemaError::EarlierBaseline(db)))
            }
            r => r.map_err(SchemaError::from),
        },
        Err(e) => Err(e),
    };
    one.close().await;
    r
}

/// Refuses a database this binary's migrations did not make: one made by
/// the pre-release chain (its version 1 is `0001_metrics.sql`, where the
/// baseline's is `0001_baseline.sql`), or one with the persister's tables
/// and no migration record. sqlx would report the first as "migration 1 was
/// previously applied but has been modified" and fail the second half-way
/// into the baseline (which its transaction then undoes).
async fn check_origin(pool: &PgPool) -> Result<(), SchemaError> {
    let (db, recorded, tables): (String, bool, bool) = sqlx::query_as(
        "SELECT current_database()::text, to_regclass('_sqlx_migrations') IS NOT NULL,
                to_regclass('sysmon_storage') IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    if !recorded && tables {
        return Err(SchemaError::Unrecorded(db));
    }
    if !recorded {
        return Ok(());
    }
    let first: Option<String> =
        sqlx::query_scalar("SELECT description FROM _sqlx_migrations WHERE version = 1")
            .fetch_optional(pool)
            .await?;
    match first.as_deref() {
        Some("metrics") => Err(SchemaError::PreRelease(db)),
        _ => Ok(()),
    }
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
/// database is unreachable; `None` only if shut down meanwhile. A database
/// that must be replaced first ([`SchemaError::is_permanent`]) is an error.
pub async fn connect(
    url: &str,
    storage: Storage,
    connections: u32,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<(PgPool, Mode)>, SchemaError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let pool = PgPoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect(url)
                .await?;
            migrate_with(&pool, storage).await?;
            let mode = mode(&pool).await?;
            Ok::<_, SchemaError>((pool, mode))
        };
        match attempt.await {
            Ok(p) => return Ok(Some(p)),
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "database not ready");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return Ok(None),
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Writes batches; remembers which daily partitions exist (plain path).
pub struct Writer {
    pub pool: PgPool,
    pub mode: Mode,
    days: Mutex<HashSet<NaiveDate>>,
    /// The newest snapshot time of each machine written since the last
    /// [`flush_last_seen`](Self::flush_last_seen).
    seen: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Writer {
    pub fn new(pool: PgPool, mode: Mode) -> Self {
        Self {
            pool,
            mode,
            days: Mutex::default(),
            seen: Mutex::default(),
        }
    }

    /// Brings `machines.last_seen` up to the snapshots written so far, in one
    /// statement; the persister calls it once a second. Updating every
    /// machine's row in every batch instead cost as much as a third of the
    /// database's time at 20 k snapshots/s (a batch of 2 000 touches ~1 000
    /// machines), for a figure nobody reads to the millisecond. On an error
    /// the times are kept for the next call.
    pub async fn flush_last_seen(&self) -> Result<(), sqlx::Error> {
        let pending = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        if pending.is_empty() {
            return Ok(());
        }
        let mut rows: Vec<(String, DateTime<Utc>)> = pending.into_iter().collect();
        // Sorted, so two persisters lock the rows in the same order.
        rows.sort();
        let (ids, ts): (Vec<String>, Vec<DateTime<Utc>>) = rows.iter().cloned().unzip();
        let r = sqlx::query(
            "INSERT INTO machines AS m (machine_id, last_seen)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[])
             ON CONFLICT (machine_id) DO UPDATE SET last_seen = EXCLUDED.last_seen
             WHERE m.last_seen IS NULL OR m.last_seen < EXCLUDED.last_seen",
        )
        .bind(ids)
        .bind(ts)
        .execute(&self.pool)
        .await;
        if r.is_err() {
            self.note_seen(rows.iter().map(|(id, ts)| (id.as_str(), *ts)));
        }
        r.map(|_| ())
    }

    fn note_seen<'a>(&self, items: impl Iterator<Item = (&'a str, DateTime<Utc>)>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (id, ts) in items {
            match seen.get_mut(id) {
                Some(t) if *t >= ts => {}
                Some(t) => *t = ts,
                None => {
                    seen.insert(id.to_owned(), ts);
                }
            }
        }
    }

    /// Writes `snaps` in one transaction; rows already present (same machine
    /// and timestamp) are left as they are. Returns how many snapshots were
    /// new.
    pub async fn write(&self, snaps: &Batch) -> Result<u64, sqlx::Error> {
        if snaps.is_empty() {
            return Ok(0);
        }
        if self.mode == Mode::Plain {
            self.ensure_partitions(snaps).await?;
        }
        let r = self.write_tx(snaps).await;
        match r {
            // Redelivered snapshots count too: they may be the newest.
            Ok(_) => self.note_seen(snaps.snapshots()),
            // A partition dropped by retention meanwhile: check again next time.
            Err(_) => self.days.lock().unwrap_or_else(|e| e.into_inner()).clear(),
        }
        r
    }

    async fn ensure_partitions(&self, snaps: &Batch) -> Result<(), sqlx::Error> {
        let missing: Vec<NaiveDate> = {
            let known = self.days.lock().unwrap_or_else(|e| e.into_inner());
            let mut m: Vec<NaiveDate> = snaps
                .snapshots()
                .map(|(_, ts)| ts.date_naive())
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

    async fn write_tx(&self, snaps: &Batch) -> Result<u64, sqlx::Error> {
        match self.copy_direct(snaps).await {
            Err(e) if is_unique_violation(&e) => self.copy_staged(snaps).await,
            r => r,
        }
    }

    /// The usual case: no snapshot of the batch is stored yet, so the rows
    /// go straight into `metrics`. A redelivered one makes the COPY fail on
    /// the primary key, and the batch is written again by
    /// [`copy_staged`](Self::copy_staged).
    pub async fn copy_direct(&self, data: &Batch) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let new = copy_into(&mut tx, "metrics", data).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Idempotent: the batch goes into a temporary table, then into
    /// `metrics` with `ON CONFLICT DO NOTHING`; returns how many were new.
    pub async fn copy_staged(&self, data: &Batch) -> Result<u64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Once per connection; emptied by every commit.
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS sysmon_stage (LIKE metrics INCLUDING DEFAULTS)
             ON COMMIT DELETE ROWS",
        )
        .execute(&mut *tx)
        .await?;
        copy_into(&mut tx, "sysmon_stage", data).await?;
        let new = sqlx::query(&format!(
            "INSERT INTO metrics ({c}) SELECT {c} FROM sysmon_stage ON CONFLICT DO NOTHING",
            c = crate::copy::COLUMNS
        ))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(new)
    }
}

/// Streams the rows of `data` into `table`; returns the rows copied.
async fn copy_into(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &str,
    data: &Batch,
) -> Result<u64, sqlx::Error> {
    let mut sink = tx
        .copy_in_raw(&format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            crate::copy::COLUMNS
        ))
        .await?;
    for part in data.payload() {
        sink.send(part).await?;
    }
    sink.finish().await
}

/// Whether PostgreSQL refused a write because of the values in it, so that
/// the same rows would be refused again however often they are sent: SQLSTATE
/// class 22 (data exception: out of range, bad encoding, a malformed COPY
/// field), 23 (integrity constraint: a CHECK, NOT NULL, no partition for the
/// row), 54 (program limit: a value too large) and P0 (raised by a trigger).
/// Anything else — the server down or unreachable, a connection lost, out of
/// disk or memory, a deadlock, a cancelled statement, a permission — may pass
/// on a retry, and is retried.
pub fn refuses_the_data(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(d) = e else {
        return false;
    };
    d.code().is_some_and(|c| {
        ["22", "23", "54", "P0"]
            .iter()
            .any(|class| c.starts_with(class))
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}
