//! What the persister did, in numbers, and their Prometheus text form.
//! Labels come from a small fixed set (the rejection reasons), never from
//! data.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the batch latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    /// Rows written including child rows.
    pub rows_stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub redelivered: AtomicU64,
    pub batches: AtomicU64,
    pub db_errors: AtomicU64,
    pub rejected_decode: AtomicU64,
    pub rejected_subject: AtomicU64,
    pub rejected_timestamp: AtomicU64,
    pub rejected_oversized: AtomicU64,
    /// A stated interval outside the contract's bounds.
    pub rejected_interval: AtomicU64,
    /// A value the database cannot aggregate (`decode::MAX_LOAD`).
    pub rejected_value: AtomicU64,
    /// Snapshots that passed every check but PostgreSQL refused on their own.
    pub rejected_refused: AtomicU64,
    pub rejected_info: AtomicU64,
    pub rejected_alert: AtomicU64,
    pub machines_stored: AtomicU64,
    pub alerts_stored: AtomicU64,
    pub alerts_duplicates: AtomicU64,
    /// Messages of METRICS not yet delivered to the persister consumer.
    pub consumer_lag: AtomicU64,
    /// Acked-pending: delivered, not yet acknowledged.
    pub consumer_ack_pending: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Counters {
    pub fn rejected_total(&self) -> u64 {
        [
            &self.rejected_decode,
            &self.rejected_subject,
            &self.rejected_timestamp,
            &self.rejected_oversized,
            &self.rejected_interval,
            &self.rejected_value,
            &self.rejected_refused,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    /// One batch from pull to commit.
    pub(crate) fn observe_batch(&self, took: Duration) {
        let s = took.as_secs_f64();
        for (b, upper) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if s <= upper {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        Self::add(&self.latency_count, 1);
        Self::add(
            &self.latency_sum_us,
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        );
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let g = Self::get;
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        one(
            "sysmon_persister_received_total",
            "counter",
            "Snapshots pulled from METRICS.",
            g(&self.received),
        );
        one(
            "sysmon_persister_stored_total",
            "counter",
            "Snapshots newly written.",
            g(&self.stored),
        );
        one(
            "sysmon_persister_rows_stored_total",
            "counter",
            "Values written: one per snapshot plus one per filesystem, disk, interface, sensor and top process.",
            g(&self.rows_stored),
        );
        one(
            "sysmon_persister_duplicates_total",
            "counter",
            "Snapshots already stored (redelivered or republished).",
            g(&self.duplicates),
        );
        one(
            "sysmon_persister_redelivered_total",
            "counter",
            "Messages JetStream delivered more than once.",
            g(&self.redelivered),
        );
        one(
            "sysmon_persister_batches_total",
            "counter",
            "Batches committed.",
            g(&self.batches),
        );
        one(
            "sysmon_persister_db_errors_total",
            "counter",
            "Failed database writes (retried).",
            g(&self.db_errors),
        );
        one(
            "sysmon_persister_machines_stored_total",
            "counter",
            "MachineInfo upserts.",
            g(&self.machines_stored),
        );
        one(
            "sysmon_persister_alerts_stored_total",
            "counter",
            "Alert events newly written.",
            g(&self.alerts_stored),
        );
        one(
            "sysmon_persister_alerts_duplicates_total",
            "counter",
            "Alert events already stored.",
            g(&self.alerts_duplicates),
        );
        one(
            "sysmon_persister_consumer_lag",
            "gauge",
            "METRICS messages not yet delivered to the persister consumer.",
            g(&self.consumer_lag),
        );
        one(
            "sysmon_persister_consumer_ack_pending",
            "gauge",
            "Messages delivered and not yet acknowledged.",
            g(&self.consumer_ack_pending),
        );
        let _ = writeln!(
            o,
            "# HELP sysmon_persister_rejected_total Messages refused for good, by reason.\n# TYPE sysmon_persister_rejected_total counter"
        );
        for (reason, c) in [
            ("decode", &self.rejected_decode),
            ("subject", &self.rejected_subject),
            ("timestamp", &self.rejected_timestamp),
            ("oversized", &self.rejected_oversized),
            ("interval", &self.rejected_interval),
            ("value", &self.rejected_value),
            ("refused_by_database", &self.rejected_refused),
            ("machine_info", &self.rejected_info),
            ("alert", &self.rejected_alert),
        ] {
            let _ = writeln!(
                o,
                "sysmon_persister_rejected_total{{reason=\"{reason}\"}} {}",
                g(c)
            );
        }
        let _ = writeln!(
            o,
            "# HELP sysmon_persister_batch_seconds From pull to commit of one batch.\n# TYPE sysmon_persister_batch_seconds histogram"
        );
        for (b, upper) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                o,
                "sysmon_persister_batch_seconds_bucket{{le=\"{upper}\"}} {}",
                g(b)
            );
        }
        let n = g(&self.latency_count);
        let _ = writeln!(
            o,
            "sysmon_persister_batch_seconds_bucket{{le=\"+Inf\"}} {n}"
        );
        let _ = writeln!(
            o,
            "sysmon_persister_batch_seconds_sum {}",
            g(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(o, "sysmon_persister_batch_seconds_count {n}");
        o
    }
}
