//! What the alerter did, in numbers, for `/metrics` (`sysmonstm_alerter_…`,
//! through `kit::metrics`). Labels come from small fixed sets, never from
//! data.

use std::sync::Arc;

pub use sysmonstm_kit::metrics::Value;
use sysmonstm_kit::metrics::{IntCounter, IntCounterVec, IntGauge, Registry};
use sysmonstm_schemas::accept::Reject;

#[derive(Debug)]
pub struct Counters {
    registry: Arc<Registry>,
    pub snapshots_received: IntCounter,
    pub snapshots_evaluated: IntCounter,
    pub snapshots_stale: IntCounter,
    pub snapshots_already_seen: IntCounter,
    /// Snapshots refused by `schemas::accept`, by [`Reject::reason`].
    pub rejected: IntCounterVec,
    pub events_firing: IntCounter,
    pub events_reminder: IntCounter,
    pub events_resolved: IntCounter,
    pub acks_applied: IntCounter,
    pub publish_retries: IntCounter,
    pub state_write_errors: IntCounter,
    pub rules_applied: IntCounter,
    pub rules_invalid: IntCounter,
    pub machines_retired: IntCounter,
    pub machines_forgotten: IntCounter,
    /// Machines the engine follows now.
    pub machines: IntGauge,
    /// Streams receiving snapshots that this alerter does not read.
    pub metrics_streams_unread: IntGauge,
    /// Times evaluation waited for room in the full confirm queue.
    pub confirm_queue_full: IntCounter,
}

impl Default for Counters {
    fn default() -> Self {
        let r = Registry::new("alerter");
        let c = |name: &str, help: &str| r.counter(name, help);
        let events = r.counter_vec(
            "events_total",
            "Alert events published, by kind.",
            "kind",
            &["firing", "reminder", "resolved"],
        );
        let rules = r.counter_vec(
            "rules_total",
            "Rule changes from the rules bucket, by outcome.",
            "outcome",
            &["applied", "invalid"],
        );
        Self {
            snapshots_received: c(
                "snapshots_received_total",
                "Snapshots received, from the live subscription and from the consumer.",
            ),
            snapshots_evaluated: c(
                "snapshots_evaluated_total",
                "Snapshots evaluated against the rules.",
            ),
            snapshots_already_seen: c(
                "snapshots_already_seen_total",
                "Snapshots that came second (live subscription and consumer both deliver each), or older than one evaluated.",
            ),
            snapshots_stale: c(
                "snapshots_stale_total",
                "Snapshots too old to evaluate (only mark the machine alive).",
            ),
            rejected: r.counter_vec(
                "snapshots_rejected_total",
                "Snapshots refused (schemas::accept: size, decoding, subject, machine, timestamp, interval), by reason; counted once, as the consumer delivers them.",
                "reason",
                &Reject::REASONS,
            ),
            events_firing: events.with_label_values(&["firing"]),
            events_reminder: events.with_label_values(&["reminder"]),
            events_resolved: events.with_label_values(&["resolved"]),
            acks_applied: c(
                "acks_applied_total",
                "Acknowledgements that stopped reminders.",
            ),
            publish_retries: c(
                "publish_retries_total",
                "Alert events published again after a failed ack.",
            ),
            state_write_errors: c(
                "state_write_errors_total",
                "Failed writes to the alert-state bucket.",
            ),
            rules_applied: rules.with_label_values(&["applied"]),
            rules_invalid: rules.with_label_values(&["invalid"]),
            machines_retired: c(
                "machines_retired_total",
                "Machines retired after no snapshot for retire_after_s (their firing alerts resolved).",
            ),
            machines_forgotten: c(
                "machines_forgotten_total",
                "Machines dropped at once by `sysmonstm machines forget`.",
            ),
            confirm_queue_full: c(
                "confirm_queue_full_total",
                "Times evaluation waited for room in the full confirm queue.",
            ),
            machines: r.gauge(
                "machines",
                "Machines the alerter follows now (for the silent rule).",
            ),
            metrics_streams_unread: r.gauge(
                "metrics_streams_unread",
                "Streams on the hub receiving snapshots that this alerter's metrics_partitions does not read (its count is not the hub's).",
            ),
            registry: Arc::new(r),
        }
    }
}

impl Counters {
    pub fn get(c: &impl Value) -> u64 {
        c.value()
    }

    pub fn add(c: &IntCounter, n: u64) {
        c.inc_by(n);
    }

    pub fn set(g: &IntGauge, n: u64) {
        g.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a refused snapshot under its reason.
    pub fn reject(&self, r: &Reject) {
        self.rejected.with_label_values(&[r.reason()]).inc();
    }

    /// Snapshots refused for `reason` (one of [`Reject::REASONS`]).
    pub fn rejected(&self, reason: &str) -> u64 {
        if Reject::REASONS.contains(&reason) {
            self.rejected.with_label_values(&[reason]).get()
        } else {
            0
        }
    }

    /// The registry behind `/metrics`.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        self.registry.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_exported_by_label() {
        let counters = Counters::default();
        Counters::add(&counters.events_firing, 3);
        counters.reject(&Reject::Decode(String::new()));
        Counters::set(&counters.machines, 7);
        let body = counters.render();
        assert!(
            body.contains("sysmonstm_alerter_events_total{kind=\"firing\"} 3\n"),
            "{body}"
        );
        assert!(
            body.contains("sysmonstm_alerter_snapshots_rejected_total{reason=\"decode\"} 1\n"),
            "{body}"
        );
        assert!(
            body.contains("sysmonstm_alerter_snapshots_rejected_total{reason=\"future\"} 0\n"),
            "{body}"
        );
        assert!(body.contains("sysmonstm_alerter_machines 7\n"), "{body}");
        assert_eq!(counters.rejected("decode"), 1);
        assert_eq!(counters.rejected("no such reason"), 0);
    }
}
