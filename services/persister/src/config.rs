//! The persister's configuration: defaults, then a TOML file, then
//! `SYSMON_PERSISTER_*` variables, then flags.

use serde::{Deserialize, Serialize};
use sysmonstm_kit::jetstream::Replicas;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::streams::Partitions;

/// Which storage path a new database gets (decided once, by the first
/// migration; an existing database keeps its path).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// TimescaleDB when the extension is available (and preloaded), else plain.
    #[default]
    Auto,
    /// Native daily partitions and rollup tables, even if TimescaleDB is there.
    Plain,
    /// TimescaleDB or fail: the migration refuses to fall back.
    Timescaledb,
}

impl Storage {
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Auto => "auto",
            Storage::Plain => "plain",
            Storage::Timescaledb => "timescaledb",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PersisterConfig {
    /// PostgreSQL URL, e.g. `postgres://sysmon@127.0.0.1:5432/sysmon`.
    pub database_url: String,
    /// Storage path of a new database.
    pub storage: Storage,
    /// Raw rows (and child rows) older than this many days are dropped.
    pub retention_raw_days: u32,
    /// 1-minute rollups older than this many days are dropped (plain path;
    /// TimescaleDB: its own retention policy, 90 days).
    pub retention_1m_days: u32,
    /// 5-minute rollups older than this many days are dropped (plain path;
    /// TimescaleDB: its own retention policy, 365 days); 0 keeps them.
    pub retention_5m_days: u32,
    /// 1-hour rollups older than this many days are dropped; 0 keeps them.
    pub retention_1h_days: u32,
    /// Seconds between maintenance runs (partitions ahead, retention).
    pub maintenance_interval_s: u64,
    /// Plain path: milliseconds between merges of the queued 1-minute
    /// aggregates into the 1-minute, 5-minute and 1-hour rollups (how far
    /// they may lag the rows).
    pub rollup_settle_ms: u64,
    /// `/metrics` listens here (`127.0.0.1:9102`); port 0 picks a free one;
    /// empty disables it.
    pub metrics_listen: String,
    /// Most snapshots written in one statement.
    pub batch_size: usize,
    /// How long a batch waits to fill once its first snapshot is in, in
    /// milliseconds.
    pub linger_ms: u64,
    /// Batches in flight at once on each METRICS partition, each pulled,
    /// written and acknowledged by a task of its own on a connection of its
    /// own: while one waits for the database, the next is pulled and
    /// decoded.
    pub writers: usize,
    /// Most unacknowledged messages the consumer hands out.
    pub max_ack_pending: i64,
    /// Seconds before a message handed out but not acknowledged (its
    /// persister died) is delivered again. Applies when the consumer is
    /// created.
    pub ack_wait_s: u64,
    /// Upper bound of the back-off between retries of a failed write.
    pub max_backoff_ms: u64,
    /// Snapshots stamped further ahead of this clock are rejected.
    pub max_future_skew_s: i64,
    /// Largest payload accepted, in bytes.
    pub max_payload_bytes: usize,
    /// METRICS retention: age in hours and size in MiB.
    pub stream_max_age_hours: u64,
    pub stream_max_mib: i64,
    /// Servers of a JetStream cluster holding each stream the persister
    /// creates (METRICS, MACHINES, ALERTS; its consumers follow): 1 to 5,
    /// 3 on a cluster. Applies when a stream is created.
    pub replicas: Replicas,
    /// How many streams METRICS is split into (1 ..= 16; default 1, the
    /// single stream `METRICS`). The same number as the hub account's
    /// mapping (`sysmonstm creds partitions`) and every other reader of
    /// METRICS; the persister creates each `METRICS_<p>` with its share of
    /// `stream_max_mib`, and its consumer `persister` on each.
    pub metrics_partitions: Partitions,
    pub nats: NatsConfig,
}

impl Default for PersisterConfig {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/sysmon".to_owned(),
            storage: Storage::Auto,
            retention_raw_days: 30,
            retention_1m_days: 90,
            retention_5m_days: 365,
            retention_1h_days: 0,
            maintenance_interval_s: 3600,
            rollup_settle_ms: 5000,
            metrics_listen: "127.0.0.1:9102".to_owned(),
            batch_size: 1000,
            linger_ms: 100,
            writers: 2,
            max_ack_pending: 20_000,
            ack_wait_s: 30,
            max_backoff_ms: 5_000,
            max_future_skew_s: 3600,
            max_payload_bytes: 64 * 1024,
            stream_max_age_hours: 7 * 24,
            stream_max_mib: 10 * 1024,
            replicas: Replicas::ONE,
            metrics_partitions: Partitions::ONE,
            nats: NatsConfig::default(),
        }
    }
}

impl PersisterConfig {
    /// Every number within its documented range; the error names the field.
    /// Checked before anything connects: a batch of `usize::MAX` would be an
    /// allocation that aborts, an hour of back-off times two an overflow.
    pub fn validate(&self) -> Result<(), String> {
        use sysmonstm_kit::config::in_range as check;
        check("batch_size", self.batch_size, 1, 100_000)?;
        check("linger_ms", self.linger_ms, 1, 60_000)?;
        check("writers", self.writers, 1, 64)?;
        check("max_ack_pending", self.max_ack_pending, 1, 1_000_000)?;
        check("ack_wait_s", self.ack_wait_s, 1, 3600)?;
        check("max_backoff_ms", self.max_backoff_ms, 100, 3_600_000)?;
        check("max_future_skew_s", self.max_future_skew_s, 0, 86_400)?;
        check("max_payload_bytes", self.max_payload_bytes, 1024, 8 << 20)?;
        for (field, days) in [
            ("retention_raw_days", self.retention_raw_days),
            ("retention_1m_days", self.retention_1m_days),
            ("retention_5m_days", self.retention_5m_days),
            ("retention_1h_days", self.retention_1h_days),
        ] {
            check(field, days, 0, 36_500)?;
        }
        check(
            "maintenance_interval_s",
            self.maintenance_interval_s,
            10,
            7 * 86_400,
        )?;
        check("rollup_settle_ms", self.rollup_settle_ms, 100, 3_600_000)?;
        check(
            "stream_max_age_hours",
            self.stream_max_age_hours,
            1,
            24 * 3650,
        )?;
        check("stream_max_mib", self.stream_max_mib, 1, 1 << 30)?;
        Ok(())
    }

    /// The contract's limits (`schemas::accept`) with this persister's
    /// settings.
    pub fn limits(&self) -> sysmonstm_schemas::accept::Limits {
        sysmonstm_schemas::accept::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: self.max_future_skew_s.saturating_mul(1000),
        }
    }

    pub fn metrics_limits(&self) -> sysmonstm_schemas::streams::MetricsLimits {
        sysmonstm_schemas::streams::MetricsLimits {
            max_age: std::time::Duration::from_secs(
                self.stream_max_age_hours.clamp(1, 24 * 3650) * 3600,
            ),
            max_bytes: self.stream_max_mib.clamp(1, 1 << 30) * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_out_of_range_names_the_field() {
        PersisterConfig::default().validate().expect("defaults");
        for (cfg, field) in [
            (
                PersisterConfig {
                    batch_size: usize::MAX,
                    ..Default::default()
                },
                "batch_size",
            ),
            (
                PersisterConfig {
                    writers: 0,
                    ..Default::default()
                },
                "writers",
            ),
            (
                PersisterConfig {
                    max_ack_pending: -1,
                    ..Default::default()
                },
                "max_ack_pending",
            ),
            (
                PersisterConfig {
                    max_backoff_ms: u64::MAX,
                    ..Default::default()
                },
                "max_backoff_ms",
            ),
            (
                PersisterConfig {
                    retention_1m_days: u32::MAX,
                    ..Default::default()
                },
                "retention_1m_days",
            ),
            (
                PersisterConfig {
                    stream_max_age_hours: u64::MAX,
                    ..Default::default()
                },
                "stream_max_age_hours",
            ),
        ] {
            let e = cfg.validate().expect_err(field);
            assert!(e.contains(field), "{e}");
        }
    }
}
