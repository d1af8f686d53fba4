//! Header names and values with a meaning on the wire.

/// JetStream's de-duplication header. The agent sets it to
/// [`msg_id`]`(machine, seq)` so a publish retried after a time-out or a
/// reconnect is stored once.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// JetStream KV's operation header; [`KV_DELETE`] marks a deleted key.
pub const KV_OPERATION: &str = "KV-Operation";
pub const KV_DELETE: &str = "DEL";

/// W3C Trace Context: the sender's trace and span, so that a message's path
/// through the services is one OpenTelemetry trace. Set only when the sender
/// exports traces (`OTEL_EXPORTER_OTLP_ENDPOINT`); a consumer without it
/// starts a trace of its own.
pub const TRACEPARENT: &str = "traceparent";
/// W3C Trace Context's vendor-specific part, passed on with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// The value of [`MSG_ID`] for one snapshot of one machine.
pub fn msg_id(machine: &crate::MachineId, seq: u64) -> String {
    format!("{machine}:{seq}")
}

/// The value of [`MSG_ID`] for an alert event:
/// `<machine>:<rule>:<since_ms>:<state>` (state `firing`, `resolved` or
/// `acknowledged`). A reminder of a firing alert (`repeat` ≥ 1) appends
/// `:<repeat>`, so that it is not taken for a retry of the first event.
pub fn alert_msg_id(
    machine: &str,
    rule: &str,
    since_ms: i64,
    state: crate::v1::AlertState,
    repeat: u32,
) -> String {
    let state = alert_state_token(state);
    if repeat == 0 {
        format!("{machine}:{rule}:{since_ms}:{state}")
    } else {
        format!("{machine}:{rule}:{since_ms}:{state}:{repeat}")
    }
}

/// The value of [`MSG_ID`] for the notifier's record that it gave up
/// delivering alert event `event_id` (that event's Msg-Id) to `channel`:
/// recorded again after a crash, it is the same message.
pub fn notify_failed_msg_id(event_id: &str, channel: &str) -> String {
    format!("{event_id}:{channel}:failed")
}

/// `firing`, `resolved`, `acknowledged` (as in the `alerts.state` column).
pub fn alert_state_token(state: crate::v1::AlertState) -> &'static str {
    use crate::v1::AlertState;
    match state {
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
        AlertState::Acknowledged => "acknowledged",
        AlertState::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::AlertState;

    #[test]
    fn alert_msg_ids_follow_the_contract() {
        assert_eq!(
            alert_msg_id("web01", "cpu_high", 1700, AlertState::Firing, 0),
            "web01:cpu_high:1700:firing"
        );
        assert_eq!(
            alert_msg_id("web01", "cpu_high", 1700, AlertState::Acknowledged, 0),
            "web01:cpu_high:1700:acknowledged"
        );
        assert_eq!(
            alert_msg_id("web01", "cpu_high", 1700, AlertState::Firing, 2),
            "web01:cpu_high:1700:firing:2"
        );
    }
}
