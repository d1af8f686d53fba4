//! The alerter's durable state of one (machine, rule) pair, as stored in
//! the KV bucket [`ALERT_STATE_BUCKET`](crate::streams::ALERT_STATE_BUCKET).

use serde::{Deserialize, Serialize};

use super::{Metric, Severity};

/// The phase of one (machine, rule) pair that is not simply "fine".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The condition holds but not yet for the rule's `for`.
    Pending,
    /// The alert fired and has not resolved.
    Firing,
}

/// The alerter's durable state of one (machine, rule) pair; absent means
/// the condition does not hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertStateRecord {
    pub machine: String,
    pub rule: String,
    pub phase: Phase,
    pub severity: Severity,
    pub metric: Metric,
    /// When the condition started to hold, Unix ms. Part of every event's
    /// Msg-Id, so it must never change while the alert lasts.
    pub since_ms: i64,
    /// The value at the last evaluation, and the threshold then.
    pub value: f64,
    pub threshold: f64,
    /// When the last firing event (first or reminder) went out, Unix ms.
    pub notified_ms: i64,
    /// Reminders published so far.
    pub repeats: u32,
    /// Acknowledged by an operator: no more reminders until resolved.
    pub acked: bool,
    /// When this machine's last snapshot arrived (alerter's clock), so that
    /// a restarted alerter still counts the silence of a dead machine.
    pub last_seen_ms: i64,
    /// That machine's sampling interval, which the silent check counts in.
    #[serde(default)]
    pub interval_ms: u32,
    #[serde(default)]
    pub message: String,
}

/// The KV key of a (machine, rule) state: `<machine>.<rule>`.
pub fn state_key(machine: &str, rule: &str) -> String {
    format!("{machine}.{rule}")
}
