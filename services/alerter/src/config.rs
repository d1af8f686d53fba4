//! The alerter's configuration: defaults, then a TOML file, then
//! `SYSMON_ALERTER_*` variables, then flags.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sysmonstm_kit::nats::NatsConfig;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlerterConfig {
    /// A rules file (`rules.example.toml`) put into the rules bucket at
    /// start; rules already in the bucket and not in the file stay.
    pub rules_file: Option<PathBuf>,
    /// How often the machine-silent check runs, in milliseconds.
    pub tick_ms: u64,
    /// Seconds before a snapshot handed out but not acknowledged (the
    /// alerter died) is delivered again.
    pub ack_wait_s: u64,
    /// Snapshots older than this (a spool replayed after an outage) only
    /// mark the machine as alive; they are not evaluated against "now".
    pub max_snapshot_age_s: u64,
    /// Where `/metrics` (Prometheus text) is served; unset or empty:
    /// nowhere; port 0 picks a free one.
    pub metrics_listen: Option<String>,
    /// METRICS retention if the alerter is the first to create the stream
    /// (the persister's defaults): age in hours and size in MiB.
    pub stream_max_age_hours: u64,
    pub stream_max_mib: i64,
    pub nats: NatsConfig,
}

impl Default for AlerterConfig {
    fn default() -> Self {
        Self {
            rules_file: None,
            tick_ms: 1000,
            ack_wait_s: 30,
            max_snapshot_age_s: 120,
            metrics_listen: Some("127.0.0.1:9103".to_owned()),
            stream_max_age_hours: 7 * 24,
            stream_max_mib: 10 * 1024,
            nats: NatsConfig::default(),
        }
    }
}

impl AlerterConfig {
    pub fn metrics_limits(&self) -> sysmonstm_schemas::streams::MetricsLimits {
        sysmonstm_schemas::streams::MetricsLimits {
            max_age: std::time::Duration::from_secs(self.stream_max_age_hours.max(1) * 3600),
            max_bytes: self.stream_max_mib.max(1) * 1024 * 1024,
        }
    }
}
