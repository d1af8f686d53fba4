//! The engine's output: alert events in domain terms and the changes the
//! service carries out. [`crate::wire`] turns an [`Alert`] into protobuf.

use sysmonstm_schemas::rules::{AlertStateRecord, Metric, Severity};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Firing,
    Resolved,
    Acknowledged,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub machine: String,
    pub rule: String,
    pub severity: Severity,
    pub kind: EventKind,
    pub metric: Metric,
    pub value: f64,
    pub threshold: f64,
    pub since_ms: i64,
    pub ts_ms: i64,
    pub message: String,
    /// 0 for the first firing event, n for the n-th reminder.
    pub repeat: u32,
    /// The snapshot (`seq`) whose evaluation produced the event; 0 for the
    /// timer, rule changes and acknowledgements.
    pub trigger_seq: u64,
}

impl Alert {
    /// The event an operator's acknowledgement publishes for `rec`.
    pub fn acknowledged(rec: &AlertStateRecord, now_ms: i64, by: &str) -> Self {
        Self {
            machine: rec.machine.clone(),
            rule: rec.rule.clone(),
            severity: rec.severity,
            kind: EventKind::Acknowledged,
            metric: rec.metric,
            value: rec.value,
            threshold: rec.threshold,
            since_ms: rec.since_ms,
            ts_ms: now_ms,
            message: format!("acknowledged by {by}"),
            repeat: 0,
            trigger_seq: 0,
        }
    }
}

/// One thing to carry out: publish `event` (if any), then store `record`
/// under the pair's key, or delete the key when `record` is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub machine: String,
    pub rule: String,
    pub event: Option<Alert>,
    pub record: Option<AlertStateRecord>,
}
