//! Alert events in domain terms, and their wire form.
//!
//! The alerter produces an [`Alert`] for every firing, reminder and resolved
//! event; the CLI produces one for an operator's acknowledgement and reads
//! them back to print. Both turn them into `sysmonstm.v1.AlertEvent` here,
//! and both address them here: the subject
//! ([`subjects::alert`](crate::subjects::alert)) and the `Nats-Msg-Id`
//! ([`headers::alert_msg_id`](crate::headers::alert_msg_id)) that makes a
//! retry of the same event a duplicate.

use prost::Message as _;

use crate::rules::{AlertStateRecord, Metric, Severity};
use crate::{MachineId, headers, subjects, v1};

/// What happened to an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Firing,
    Resolved,
    Acknowledged,
}

impl EventKind {
    pub fn to_proto(self) -> v1::AlertState {
        match self {
            EventKind::Firing => v1::AlertState::Firing,
            EventKind::Resolved => v1::AlertState::Resolved,
            EventKind::Acknowledged => v1::AlertState::Acknowledged,
        }
    }

    /// `firing`, `resolved`, `acknowledged` (as in Msg-Ids and the
    /// `alerts.state` column).
    pub fn name(self) -> &'static str {
        headers::alert_state_token(self.to_proto())
    }
}

/// One alert event.
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

/// An event whose machine or rule is not a subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert for machine {machine:?} rule {rule:?} has no valid subject: {why}")]
pub struct AddressError {
    pub machine: String,
    pub rule: String,
    pub why: String,
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

    pub fn to_proto(&self) -> v1::AlertEvent {
        v1::AlertEvent {
            machine_id: self.machine.clone(),
            rule: self.rule.clone(),
            severity: self.severity.to_proto() as i32,
            state: self.kind.to_proto() as i32,
            metric: self.metric.name().to_owned(),
            value: self.value,
            threshold: self.threshold,
            since_ms: self.since_ms,
            timestamp_ms: self.ts_ms,
            message: self.message.clone(),
            repeat: self.repeat,
            trigger_seq: self.trigger_seq,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_proto().encode_to_vec()
    }

    /// An event decoded from ALERTS, in domain terms; `None` for what is
    /// not a well-formed sysmonstm alert event.
    pub fn from_proto(ev: &v1::AlertEvent) -> Option<Self> {
        let kind = match v1::AlertState::try_from(ev.state).ok()? {
            v1::AlertState::Firing => EventKind::Firing,
            v1::AlertState::Resolved => EventKind::Resolved,
            v1::AlertState::Acknowledged => EventKind::Acknowledged,
            v1::AlertState::Unspecified => return None,
        };
        let severity = Severity::from_proto(v1::Severity::try_from(ev.severity).ok()?)?;
        let metric = Metric::ALL.into_iter().find(|m| m.name() == ev.metric)?;
        Some(Self {
            machine: ev.machine_id.clone(),
            rule: ev.rule.clone(),
            severity,
            kind,
            metric,
            value: ev.value,
            threshold: ev.threshold,
            since_ms: ev.since_ms,
            ts_ms: ev.timestamp_ms,
            message: ev.message.clone(),
            repeat: ev.repeat,
            trigger_seq: ev.trigger_seq,
        })
    }

    /// [`Alert::from_proto`] of a payload.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        Self::from_proto(&v1::AlertEvent::decode(payload).ok()?)
    }

    /// The subject and the Msg-Id of the event.
    pub fn address(&self) -> Result<(String, String), AddressError> {
        let bad = |why: String| AddressError {
            machine: self.machine.clone(),
            rule: self.rule.clone(),
            why,
        };
        let m = MachineId::parse(&self.machine).map_err(|e| bad(e.to_string()))?;
        let r = MachineId::parse(&self.rule).map_err(|e| bad(e.to_string()))?;
        let subject = subjects::alert(self.severity.to_proto(), &m, &r);
        let id = headers::alert_msg_id(
            &self.machine,
            &self.rule,
            self.since_ms,
            self.kind.to_proto(),
            self.repeat,
        );
        Ok((subject, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing() -> Alert {
        Alert {
            machine: "web01".into(),
            rule: "cpu_high".into(),
            severity: Severity::Critical,
            kind: EventKind::Firing,
            metric: Metric::Load1PerCore,
            value: 97.5,
            threshold: 90.0,
            since_ms: 1_700_000_000_000,
            ts_ms: 1_700_000_030_000,
            message: "cpu 97.5 > 90".into(),
            repeat: 2,
            trigger_seq: 42,
        }
    }

    #[test]
    fn an_event_round_trips_through_protobuf() {
        let a = firing();
        assert_eq!(Alert::decode(&a.encode()), Some(a.clone()));
        for kind in [EventKind::Resolved, EventKind::Acknowledged] {
            let b = Alert { kind, ..a.clone() };
            assert_eq!(Alert::decode(&b.encode()), Some(b));
        }
    }

    #[test]
    fn what_is_not_a_sysmonstm_event_decodes_to_none() {
        assert_eq!(Alert::decode(b"\xff\xff\xff"), None);
        let mut p = firing().to_proto();
        p.metric = "cpux".into();
        assert_eq!(Alert::from_proto(&p), None);
        let mut p = firing().to_proto();
        p.state = 0;
        assert_eq!(Alert::from_proto(&p), None);
        let mut p = firing().to_proto();
        p.severity = 99;
        assert_eq!(Alert::from_proto(&p), None);
    }

    #[test]
    fn an_event_is_addressed_by_the_contract() {
        let (subject, id) = firing().address().expect("valid");
        assert_eq!(subject, "sysmon.alerts.critical.web01.cpu_high");
        assert_eq!(id, "web01:cpu_high:1700000000000:firing:2");
        let bad = Alert {
            machine: "Web 01".into(),
            ..firing()
        };
        assert!(bad.address().is_err());
    }
}
