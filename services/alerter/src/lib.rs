//! sysmonstm-alerter: evaluates alert rules on every snapshot and publishes
//! firing / resolved events on `sysmon.alerts.<severity>.<machine>.<rule>`.
//!
//! The rule engine ([`engine`]) is pure: it sees domain [`sample::Sample`]s
//! and a time in milliseconds, and returns changes. Everything with NATS is
//! around it: the durable consumer `alerter` on METRICS (on each of its
//! partitions, `metrics_partitions`), the rules bucket
//! watched for changes, the state bucket that survives restarts, the ALERTS
//! stream the events go to.

pub mod clock;
pub mod config;
pub mod counters;
mod effects;
pub mod engine;
pub mod sample;
mod service;

pub use config::AlerterConfig;
pub use counters::Counters;
pub use service::Alerter;
