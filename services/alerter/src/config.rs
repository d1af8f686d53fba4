//! The alerter's configuration: defaults, then a TOML file, then
//! `SYSMON_ALERTER_*` variables, then flags. Every number has a documented
//! range ([`AlerterConfig::validate`]); a value outside it is a
//! configuration error (exit code 2), never a silent clamp.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sysmonstm_kit::config::ConfigError;
use sysmonstm_kit::jetstream::Replicas;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::accept;
use sysmonstm_schemas::streams::Partitions;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlerterConfig {
    /// A rules file (`rules.example.toml`) put into the rules bucket at
    /// start; rules already in the bucket and not in the file stay.
    pub rules_file: Option<PathBuf>,
    /// How often the machine-silent check runs, in milliseconds
    /// (10 ..= 60000; default 1000).
    pub tick_ms: u64,
    /// Seconds before a snapshot handed out but not acknowledged (the
    /// alerter died) is delivered again (1 ..= 3600; default 30).
    pub ack_wait_s: u64,
    /// Snapshots older than this (a spool replayed after an outage) only
    /// mark the machine as alive; they are not evaluated against "now"
    /// (1 ..= 2592000, i.e. 30 days; default 120).
    pub max_snapshot_age_s: u64,
    /// A machine with no snapshot for this long is retired: its firing
    /// alerts resolve ("machine retired …"), its state is dropped, and the
    /// `silent` rule stops reporting it; it comes back with its next
    /// snapshot. 60 ..= 31536000 (a year); default 604800 (7 days).
    pub retire_after_s: u64,
    /// Largest snapshot accepted, in bytes (1024 ..= 8388608; default
    /// 65536, as the persister). Larger ones are counted as `oversized`.
    pub max_payload_bytes: usize,
    /// How far ahead of the alerter's clock a snapshot's timestamp may be,
    /// in seconds (0 ..= 86400; default 3600). Further ahead is counted as
    /// `future` and never moves a machine's clock.
    pub max_future_skew_s: u64,
    /// Alert changes waiting for JetStream's ack of their event before
    /// their state is stored (16 ..= 1000000; default 4096). When full,
    /// evaluation waits: the snapshots stay in JetStream meanwhile.
    pub confirm_queue: usize,
    /// Where `/metrics` (Prometheus text) is served; unset or empty:
    /// nowhere; port 0 picks a free one.
    pub metrics_listen: Option<String>,
    /// METRICS retention if the alerter is the first to create the stream
    /// (the persister's defaults): age in hours and size in MiB.
    pub stream_max_age_hours: u64,
    pub stream_max_mib: i64,
    /// Servers of a JetStream cluster holding each stream and bucket the
    /// alerter creates (ALERTS, METRICS if it is first, the rules and
    /// alert-state buckets): 1 ..= 5, default 1; 3 on a cluster. Applies when
    /// a stream is created.
    pub replicas: Replicas,
    /// How many streams METRICS is split into (1 ..= 16; default 1, the
    /// single stream `METRICS`): the hub account's mapping
    /// (`sysmonstm creds partitions`), as the persister's. The alerter
    /// keeps its durable consumer `alerter` on each `METRICS_<p>`.
    pub metrics_partitions: Partitions,
    pub nats: NatsConfig,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        Self {
            rules_file: None,
            tick_ms: 1000,
            ack_wait_s: 30,
            max_snapshot_age_s: 120,
            retire_after_s: 7 * 24 * 3600,
            max_payload_bytes: accept::DEFAULT_MAX_PAYLOAD_BYTES,
            max_future_skew_s: 3600,
            confirm_queue: 4096,
            metrics_listen: Some("127.0.0.1:9103".to_owned()),
            stream_max_age_hours: 7 * 24,
            stream_max_mib: 10 * 1024,
            replicas: Replicas::ONE,
            metrics_partitions: Partitions::ONE,
            nats: NatsConfig::default(),
        }
    }
}

impl AlerterConfig {
    /// Every number within its documented range; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check<T: PartialOrd + std::fmt::Display>(
            field: &str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<(), ConfigError> {
            sysmonstm_kit::config::in_range(field, v, lo, hi).map_err(ConfigError::Invalid)
        }
        check("tick_ms", self.tick_ms, 10, 60_000)?;
        check("ack_wait_s", self.ack_wait_s, 1, 3600)?;
        check(
            "max_snapshot_age_s",
            self.max_snapshot_age_s,
            1,
            30 * 86_400,
        )?;
        check("retire_after_s", self.retire_after_s, 60, 365 * 86_400)?;
        check("max_payload_bytes", self.max_payload_bytes, 1024, 8 << 20)?;
        check("max_future_skew_s", self.max_future_skew_s, 0, 86_400)?;
        check("confirm_queue", self.confirm_queue, 16, 1_000_000)?;
        check(
            "stream_max_age_hours",
            self.stream_max_age_hours,
            1,
            24 * 3650,
        )?;
        check("stream_max_mib", self.stream_max_mib, 1, 1 << 30)?;
        Ok(())
    }

    pub fn metrics_limits(&self) -> sysmonstm_schemas::streams::MetricsLimits {
        sysmonstm_schemas::streams::MetricsLimits {
            max_age: Duration::from_secs(self.stream_max_age_hours.clamp(1, 24 * 3650) * 3600),
            max_bytes: self.stream_max_mib.clamp(1, 1 << 30) * 1024 * 1024,
        }
    }

    /// What a snapshot must meet to be evaluated (`schemas::accept`).
    pub fn accept_limits(&self) -> accept::Limits {
        accept::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: i64::try_from(self.max_future_skew_s.min(86_400))
                .unwrap_or(86_400)
                .saturating_mul(1000),
        }
    }

    /// The retirement horizon, in milliseconds.
    pub fn retire_after_ms(&self) -> i64 {
        i64::try_from(self.retire_after_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }

    /// The stale limit, in milliseconds.
    pub fn max_snapshot_age_ms(&self) -> i64 {
        i64::try_from(self.max_snapshot_age_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_out_of_range_names_the_field() {
        AlerterConfig::default().validate().expect("defaults");
        for (cfg, field) in [
            (
                AlerterConfig {
                    retire_after_s: 1,
                    ..Default::default()
                },
                "retire_after_s",
            ),
            (
                AlerterConfig {
                    max_snapshot_age_s: u64::MAX,
                    ..Default::default()
                },
                "max_snapshot_age_s",
            ),
            (
                AlerterConfig {
                    confirm_queue: 0,
                    ..Default::default()
                },
                "confirm_queue",
            ),
            (
                AlerterConfig {
                    max_payload_bytes: usize::MAX,
                    ..Default::default()
                },
                "max_payload_bytes",
            ),
        ] {
            let e = cfg.validate().expect_err(field).to_string();
            assert!(e.contains(field), "{e}");
        }
    }
}
