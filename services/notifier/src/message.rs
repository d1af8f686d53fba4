//! What a person reads: one message for a group of events of one machine,
//! as a title and plain text (chat, push, mail) or as JSON (webhook).

use std::fmt::Write as _;

use serde_json::json;
use sha2::Digest as _;
use sysmonstm_schemas::alert::{Alert, EventKind};

/// One alert event as the notifier holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The event's Msg-Id (`<machine>:<rule>:<since_ms>:<state>[:<n>]`).
    pub id: String,
    pub alert: Alert,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn state(a: &Alert) -> String {
    match (a.kind, a.repeat) {
        (EventKind::Firing, 0) => "FIRING".to_owned(),
        (EventKind::Firing, n) => format!("FIRING (reminder {n})"),
        (EventKind::Resolved, _) => "RESOLVED".to_owned(),
        (EventKind::Acknowledged, _) => "ACKNOWLEDGED".to_owned(),
    }
}

fn line(a: &Alert) -> String {
    let mut s = format!(
        "{} {} {} on {}: {} {} (threshold {})",
        a.severity.name().to_uppercase(),
        state(a),
        a.rule,
        a.machine,
        a.metric.name(),
        a.value,
        a.threshold
    );
    if !a.message.is_empty() {
        let _ = write!(s, " — {}", a.message);
    }
    let _ = write!(s, " at {}", rfc3339(a.ts_ms));
    s
}

/// The title of a message: one event named in full, several counted.
pub fn title(events: &[&Event]) -> String {
    match events {
        [] => "[sysmonstm] (no events)".to_owned(),
        [e] => format!(
            "[sysmonstm] {} {} {} on {}",
            e.alert.severity.name().to_uppercase(),
            state(&e.alert),
            e.alert.rule,
            e.alert.machine
        ),
        [first, ..] => {
            let firing = events
                .iter()
                .filter(|e| e.alert.kind == EventKind::Firing)
                .count();
            format!(
                "[sysmonstm] {}: {} alert events ({} firing)",
                first.alert.machine,
                events.len(),
                firing
            )
        }
    }
}

/// The plain text: one line per event.
pub fn text(events: &[&Event]) -> String {
    let mut s = String::new();
    for e in events {
        s.push_str(&line(&e.alert));
        s.push('\n');
    }
    s
}

/// The webhook body.
pub fn json(events: &[&Event]) -> serde_json::Value {
    let evs: Vec<_> = events
        .iter()
        .map(|e| {
            let a = &e.alert;
            json!({
                "id": e.id,
                "machine": a.machine,
                "rule": a.rule,
                "severity": a.severity.name(),
                "state": a.kind.name(),
                "metric": a.metric.name(),
                "value": a.value,
                "threshold": a.threshold,
                "since": rfc3339(a.since_ms),
                "ts": rfc3339(a.ts_ms),
                "repeat": a.repeat,
                "message": a.message,
            })
        })
        .collect();
    json!({
        "delivery": delivery_id(events),
        "title": title(events),
        "text": text(events),
        "events": evs,
    })
}

/// One id per (set of events): the same events sent again (a crash between
/// a channel's answer and the record of it) carry the same id, so a
/// receiver, or a mail client by Message-ID, can drop the second copy.
pub fn delivery_id(events: &[&Event]) -> String {
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    let mut h = sha2::Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    data_encoding::HEXLOWER.encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use sysmonstm_schemas::rules::{Metric, Severity};

    fn ev(rule: &str, kind: EventKind) -> Event {
        Event {
            id: format!("web01:{rule}:1:{}", kind.name()),
            alert: Alert {
                machine: "web01".into(),
                rule: rule.into(),
                severity: Severity::Critical,
                kind,
                metric: Metric::Disk,
                value: 97.5,
                threshold: 90.0,
                since_ms: 1_700_000_000_000,
                ts_ms: 1_700_000_030_000,
                message: "disk / 97.5 % used".into(),
                repeat: 0,
                trigger_seq: 1,
            },
        }
    }

    #[test]
    fn one_event_is_named_several_are_counted() {
        let a = ev("disk_full", EventKind::Firing);
        let b = ev("cpu_high", EventKind::Resolved);
        assert_eq!(
            title(&[&a]),
            "[sysmonstm] CRITICAL FIRING disk_full on web01"
        );
        assert_eq!(
            title(&[&a, &b]),
            "[sysmonstm] web01: 2 alert events (1 firing)"
        );
        let t = text(&[&a, &b]);
        assert!(t.contains("CRITICAL FIRING disk_full on web01: disk 97.5 (threshold 90) — disk / 97.5 % used at 2023-11-14T22:13:50Z"), "{t}");
        assert_eq!(t.lines().count(), 2);
        assert_eq!(delivery_id(&[&a, &b]), delivery_id(&[&b, &a]));
        assert_ne!(delivery_id(&[&a]), delivery_id(&[&a, &b]));
        let j = json(&[&a]);
        assert_eq!(j["events"][0]["id"], "web01:disk_full:1:firing");
        assert_eq!(j["events"][0]["state"], "firing");
    }
}
