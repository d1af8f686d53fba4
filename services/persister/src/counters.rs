//! What the persister did, in numbers, for `/metrics` (`sysmonstm_persister_…`,
//! through `kit::metrics`). Labels come from small fixed sets (the rejection
//! reasons), never from data.

use std::sync::Arc;
use std::time::Duration;

pub use sysmonstm_kit::metrics::Value;
use sysmonstm_kit::metrics::{Histogram, IntCounter, IntCounterVec, IntGauge, Registry};
use sysmonstm_schemas::accept::Reject;

/// Why a snapshot was refused: the contract's reasons, then the persister's
/// own (a value the database cannot aggregate, a row PostgreSQL refused).
pub const SNAPSHOT_REASONS: [&str; 10] = [
    Reject::REASONS[0],
    Reject::REASONS[1],
    Reject::REASONS[2],
    Reject::REASONS[3],
    Reject::REASONS[4],
    Reject::REASONS[5],
    Reject::REASONS[6],
    Reject::REASONS[7],
    "value",
    "refused_by_database",
];

#[derive(Debug)]
pub struct Counters {
    registry: Arc<Registry>,
    pub received: IntCounter,
    pub stored: IntCounter,
    /// Values written: one per snapshot plus one per device and top process.
    pub rows_stored: IntCounter,
    pub duplicates: IntCounter,
    pub redelivered: IntCounter,
    pub batches: IntCounter,
    pub db_errors: IntCounter,
    /// Snapshots refused for good, by reason ([`SNAPSHOT_REASONS`]).
    pub rejected: IntCounterVec,
    /// Snapshots that passed every check but PostgreSQL refused on their own.
    pub rejected_refused: IntCounter,
    pub rejected_info: IntCounter,
    pub rejected_alert: IntCounter,
    pub machines_stored: IntCounter,
    pub alerts_stored: IntCounter,
    pub alerts_duplicates: IntCounter,
    /// Notification failure records refused, by reason
    /// ([`FAILURE_REASONS`](crate::notifications::FAILURE_REASONS)).
    pub rejected_notification: IntCounterVec,
    pub notification_failures_stored: IntCounter,
    pub notification_failures_duplicates: IntCounter,
    /// Messages of METRICS not yet delivered to the persister consumer.
    pub consumer_lag: IntGauge,
    /// Delivered, not yet acknowledged.
    pub consumer_ack_pending: IntGauge,
    /// Streams receiving snapshots that this persister does not read.
    pub metrics_streams_unread: IntGauge,
    batch_seconds: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        let r = Registry::new("persister");
        let c = |name: &str, help: &str| r.counter(name, help);
        let rejected = r.counter_vec(
            "snapshots_rejected_total",
            "Snapshots refused for good (terminated), by reason.",
            "reason",
            &SNAPSHOT_REASONS,
        );
        Self {
            received: c("snapshots_received_total", "Snapshots pulled from METRICS."),
            stored: c("snapshots_stored_total", "Snapshots newly written."),
            rows_stored: c(
                "values_stored_total",
                "Values written: one per snapshot plus one per filesystem, disk, interface, sensor and top process.",
            ),
            duplicates: c(
                "snapshots_duplicate_total",
                "Snapshots already stored (redelivered or republished).",
            ),
            redelivered: c(
                "messages_redelivered_total",
                "Messages JetStream delivered more than once.",
            ),
            batches: c("batches_total", "Batches committed."),
            db_errors: c("database_errors_total", "Failed database writes (retried)."),
            rejected_refused: rejected.with_label_values(&["refused_by_database"]),
            rejected,
            rejected_info: c(
                "infos_rejected_total",
                "MachineInfo messages refused (not a machine's own facts, from the future, or refused by PostgreSQL).",
            ),
            rejected_alert: c(
                "alert_events_rejected_total",
                "Alert events refused (undecodable, or refused by PostgreSQL).",
            ),
            machines_stored: c("infos_stored_total", "MachineInfo upserts."),
            alerts_stored: c("alert_events_stored_total", "Alert events newly written."),
            alerts_duplicates: c(
                "alert_events_duplicate_total",
                "Alert events already stored.",
            ),
            rejected_notification: r.counter_vec(
                "notification_failures_rejected_total",
                "Notification failure records (NOTIFICATIONS) refused for good (terminated), by reason.",
                "reason",
                &crate::notifications::FAILURE_REASONS,
            ),
            notification_failures_stored: c(
                "notification_failures_stored_total",
                "Notification failures newly written.",
            ),
            notification_failures_duplicates: c(
                "notification_failures_duplicate_total",
                "Notification failures already stored (recorded again or redelivered).",
            ),
            consumer_lag: r.gauge(
                "consumer_pending_messages",
                "METRICS messages not yet delivered to the persister consumer.",
            ),
            consumer_ack_pending: r.gauge(
                "consumer_ack_pending_messages",
                "Messages delivered and not yet acknowledged.",
            ),
            metrics_streams_unread: r.gauge(
                "metrics_streams_unread",
                "Streams on the hub receiving snapshots that this persister's metrics_partitions does not read (its count is not the hub's).",
            ),
            batch_seconds: r.seconds(
                "batch_seconds",
                "From pull to commit of one batch.",
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0],
            ),
            registry: Arc::new(r),
        }
    }
}

impl Counters {
    /// Every snapshot refused, whatever the reason.
    pub fn rejected_total(&self) -> u64 {
        SNAPSHOT_REASONS
            .iter()
            .map(|r| self.rejected.with_label_values(&[*r]).get())
            .sum()
    }

    /// Snapshots refused for `reason` (one of [`SNAPSHOT_REASONS`]).
    pub fn rejected(&self, reason: &str) -> u64 {
        if SNAPSHOT_REASONS.contains(&reason) {
            self.rejected.with_label_values(&[reason]).get()
        } else {
            0
        }
    }

    pub fn get(c: &impl Value) -> u64 {
        c.value()
    }

    pub(crate) fn add(c: &IntCounter, n: u64) {
        c.inc_by(n);
    }

    pub(crate) fn set(g: &IntGauge, n: u64) {
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One batch from pull to commit.
    pub(crate) fn observe_batch(&self, took: Duration) {
        self.batch_seconds.observe(took.as_secs_f64());
    }

    /// The registry behind `/metrics`.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}
