//! What the notifier did, in numbers, for `/metrics`
//! (`sysmonstm_notifier_…`). Labels come from small fixed sets, never from
//! data (not the channel's name: configuration, but unbounded all the same).

use std::sync::Arc;

use sysmonstm_kit::metrics::{IntCounter, IntCounterVec, IntGauge, Registry};

/// Why an event was refused.
pub const REJECT_REASONS: [&str; 3] = ["subject", "decode", "machine_mismatch"];
/// What became of an event.
pub const OUTCOMES: [&str; 5] = ["delivered", "failed", "silenced", "unrouted", "after_ack"];

#[derive(Debug)]
pub struct Counters {
    registry: Arc<Registry>,
    pub received: IntCounter,
    pub rejected: IntCounterVec,
    /// Events acknowledged, by what became of them.
    pub events: IntCounterVec,
    /// Messages (one per channel and group) accepted by their channel.
    pub messages_sent: IntCounter,
    /// Tries that failed and were tried again.
    pub retries: IntCounter,
    /// (channel, event) pairs given up on (after the bounded tries, or a
    /// permanent refusal), each recorded on NOTIFICATIONS.
    pub gave_up: IntCounter,
    /// Failure records that could not be published (logged instead).
    pub record_errors: IntCounter,
    /// (channel, event) pairs found already delivered (a redelivery).
    pub already_sent: IntCounter,
    /// Writes to the delivered bucket that failed (the event is not acked).
    pub dedupe_errors: IntCounter,
    /// Silences ignored because `max_silences` were held, or invalid.
    pub silences_refused: IntCounter,
    pub silences: IntGauge,
    pub in_flight: IntGauge,
}

impl Default for Counters {
    fn default() -> Self {
        let r = Registry::new("notifier");
        let c = |name: &str, help: &str| r.counter(name, help);
        Self {
            received: c("events_received_total", "Alert events taken from ALERTS."),
            rejected: r.counter_vec(
                "events_rejected_total",
                "Alert events refused (terminated), by reason.",
                "reason",
                &REJECT_REASONS,
            ),
            events: r.counter_vec(
                "events_total",
                "Alert events acknowledged, by outcome.",
                "outcome",
                &OUTCOMES,
            ),
            messages_sent: c(
                "messages_sent_total",
                "Messages accepted by a channel (one per channel and group of events).",
            ),
            retries: c(
                "retries_total",
                "Sends that failed for now and were tried again.",
            ),
            gave_up: c(
                "gave_up_total",
                "(channel, event) pairs given up on and recorded on NOTIFICATIONS.",
            ),
            record_errors: c(
                "record_errors_total",
                "Failure records that could not be published.",
            ),
            already_sent: c(
                "already_sent_total",
                "(channel, event) pairs found delivered before (a redelivery), not sent again.",
            ),
            dedupe_errors: c(
                "dedupe_errors_total",
                "Reads or writes of the delivered bucket that failed.",
            ),
            silences_refused: c(
                "silences_refused_total",
                "Silences ignored: invalid, or more than max_silences.",
            ),
            silences: r.gauge("silences", "Silences held now (active or not yet started)."),
            in_flight: r.gauge("in_flight", "Events taken and not yet acknowledged."),
            registry: Arc::new(r),
        }
    }
}

impl Counters {
    pub fn outcome(&self, o: &str, n: u64) {
        if OUTCOMES.contains(&o) {
            self.events.with_label_values(&[o]).inc_by(n);
        }
    }

    pub fn events_with(&self, o: &str) -> u64 {
        if OUTCOMES.contains(&o) {
            self.events.with_label_values(&[o]).get()
        } else {
            0
        }
    }

    pub fn reject(&self, reason: &str) {
        if REJECT_REASONS.contains(&reason) {
            self.rejected.with_label_values(&[reason]).inc();
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn render(&self) -> String {
        self.registry.render()
    }
}
