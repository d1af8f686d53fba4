//! What a consumer accepts from a subject: one rule, applied by every service.
//!
//! Anyone who can publish can put anything on a subject: a token that is not
//! a machine id, a payload that claims another machine, a clock years ahead,
//! a megabyte of garbage, an interval of one millisecond. Each consumer
//! decodes in its own way (the persister reads protobuf bytes in place, the
//! others use prost), then asks this module whether the message may touch its
//! state. A message that fails is a [`Reject`]: the consumer counts it by
//! [`Reject::reason`], logs it and drops (or terminates) it, and it never
//! moves a clock or creates a machine.
//!
//! Subjects are parsed here too, so a machine id is taken from a subject in
//! one way only.

use crate::MachineId;

/// 2000-01-01T00:00:00Z in Unix milliseconds: nothing older is real data.
pub const EARLIEST_MS: i64 = 946_684_800_000;

/// How far ahead of the consumer's clock a timestamp may be by default
/// (agents' clocks drift; a year-8000 clock is not drift).
pub const DEFAULT_MAX_FUTURE_SKEW_MS: i64 = 3_600_000;

/// Largest snapshot payload accepted by default. A real snapshot with top-N
/// processes and a few dozen devices is a few KiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Smallest sampling interval a snapshot may state (the agent's own floor).
pub const MIN_INTERVAL_MS: u32 = 10;
/// Largest sampling interval a snapshot may state.
pub const MAX_INTERVAL_MS: u32 = 3_600_000;

/// The limits a consumer applies; [`Limits::default`] is the contract's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_future_skew_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_future_skew_ms: DEFAULT_MAX_FUTURE_SKEW_MS,
        }
    }
}

/// Why a message was refused. Every variant is for good: retrying the same
/// bytes gives the same answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("payload of {0} bytes is over the limit")]
    Oversized(usize),
    #[error("payload does not decode: {0}")]
    Decode(String),
    #[error("subject {0:?} is not one this consumer reads")]
    Subject(String),
    #[error("subject token {0:?} is not a valid machine id")]
    MachineId(String),
    #[error("payload says machine {payload:?} but came on the subject of {subject:?}")]
    MachineMismatch { subject: String, payload: String },
    #[error("timestamp {0} ms is before 2000")]
    TooOld(i64),
    #[error(
        "timestamp {ts_ms} ms is {ahead_ms} ms ahead of this clock (more than the allowed skew)"
    )]
    TooFarAhead { ts_ms: i64, ahead_ms: i64 },
    #[error("interval of {0} ms is outside {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS} ms")]
    Interval(u32),
}

impl Reject {
    /// A short, fixed label for counters (`reason="…"`): the set is closed.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Oversized(_) => "oversized",
            Self::Decode(_) => "decode",
            Self::Subject(_) => "subject",
            Self::MachineId(_) => "machine_id",
            Self::MachineMismatch { .. } => "machine_mismatch",
            Self::TooOld(_) => "too_old",
            Self::TooFarAhead { .. } => "future",
            Self::Interval(_) => "interval",
        }
    }

    /// Every label [`Reject::reason`] can return, for pre-registering counters.
    pub const REASONS: [&'static str; 8] = [
        "oversized",
        "decode",
        "subject",
        "machine_id",
        "machine_mismatch",
        "too_old",
        "future",
        "interval",
    ];
}

/// Refuses a payload larger than the limit, before any decoding.
pub fn payload_size(len: usize, limits: &Limits) -> Result<(), Reject> {
    if len > limits.max_payload_bytes {
        return Err(Reject::Oversized(len));
    }
    Ok(())
}

/// The machine of `sysmon.metrics.<machine>`, or of the subject the hub's
/// account mapped it to when METRICS is split into partitions
/// (`sysmon.metrics.<p>.<machine>`, [`crate::streams::Partitions`]),
/// validated.
pub fn metrics_subject(subject: &str) -> Result<MachineId, Reject> {
    let token = crate::subjects::machine_of_metrics(subject)
        .ok_or_else(|| Reject::Subject(truncated(subject)))?;
    MachineId::parse(token).map_err(|_| Reject::MachineId(truncated(token)))
}

/// The machine of `sysmon.info.<machine>`, validated.
pub fn info_subject(subject: &str) -> Result<MachineId, Reject> {
    machine_token(subject, "sysmon.info.")
}

/// The machine of `sysmon.admin.forget.<machine>`, validated.
pub fn forget_subject(subject: &str) -> Result<MachineId, Reject> {
    machine_token(subject, "sysmon.admin.forget.")
}

/// The machine and the channel of `sysmon.notify.failed.<machine>.<channel>`,
/// both validated (a channel name has a machine id's characters).
pub fn notify_failed_subject(subject: &str) -> Result<(MachineId, MachineId), Reject> {
    let (machine, channel) = subject
        .strip_prefix("sysmon.notify.failed.")
        .and_then(|rest| rest.split_once('.'))
        .filter(|(m, c)| !m.is_empty() && !c.is_empty() && !c.contains('.'))
        .ok_or_else(|| Reject::Subject(truncated(subject)))?;
    let id = |t: &str| MachineId::parse(t).map_err(|_| Reject::MachineId(truncated(t)));
    Ok((id(machine)?, id(channel)?))
}

fn machine_token(subject: &str, prefix: &str) -> Result<MachineId, Reject> {
    let token = subject
        .strip_prefix(prefix)
        .filter(|rest| !rest.is_empty() && !rest.contains('.'))
        .ok_or_else(|| Reject::Subject(truncated(subject)))?;
    MachineId::parse(token).map_err(|_| Reject::MachineId(truncated(token)))
}

/// The payload's machine must be the subject's: the subject is what the
/// server's permissions vouch for.
pub fn same_machine(subject: &MachineId, payload: &str) -> Result<(), Reject> {
    if subject.as_str() != payload {
        return Err(Reject::MachineMismatch {
            subject: subject.as_str().to_owned(),
            payload: truncated(payload),
        });
    }
    Ok(())
}

/// A timestamp from a payload, against the consumer's clock `now_ms`: not
/// before 2000 and not beyond the allowed skew ahead. Checked arithmetic, so
/// any `i64` is a value, not a panic.
pub fn timestamp(ts_ms: i64, now_ms: i64, limits: &Limits) -> Result<(), Reject> {
    if ts_ms < EARLIEST_MS {
        return Err(Reject::TooOld(ts_ms));
    }
    let ahead_ms = ts_ms.saturating_sub(now_ms);
    if ahead_ms > limits.max_future_skew_ms {
        return Err(Reject::TooFarAhead { ts_ms, ahead_ms });
    }
    Ok(())
}

/// A stated sampling interval; 0 means "not stated" (an older agent) and is
/// accepted as such.
pub fn interval(interval_ms: u32) -> Result<(), Reject> {
    if interval_ms != 0 && !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(Reject::Interval(interval_ms));
    }
    Ok(())
}

/// The fields every snapshot consumer checks, in the order that a cheap
/// failure comes first.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotFields<'a> {
    pub machine_id: &'a str,
    pub timestamp_ms: i64,
    pub interval_ms: u32,
}

/// The whole rule for a decoded snapshot that came on `subject`: returns the
/// validated machine id.
pub fn snapshot(
    subject: &str,
    fields: SnapshotFields<'_>,
    now_ms: i64,
    limits: &Limits,
) -> Result<MachineId, Reject> {
    let machine = metrics_subject(subject)?;
    same_machine(&machine, fields.machine_id)?;
    timestamp(fields.timestamp_ms, now_ms, limits)?;
    interval(fields.interval_ms)?;
    Ok(machine)
}

/// Keeps what goes into an error message (and so a log line) short: a
/// hostile subject or id may be kilobytes long.
fn truncated(s: &str) -> String {
    const MAX: usize = 80;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn fields(machine: &str, ts: i64, interval: u32) -> SnapshotFields<'_> {
        SnapshotFields {
            machine_id: machine,
            timestamp_ms: ts,
            interval_ms: interval,
        }
    }

    #[test]
    fn a_good_snapshot_passes_and_names_its_machine() {
        let m = snapshot(
            "sysmon.metrics.web-1",
            fields("web-1", NOW, 1000),
            NOW,
            &Limits::default(),
        )
        .expect("accepted");
        assert_eq!(m.as_str(), "web-1");
        // As the hub's account maps it to a METRICS partition.
        let m = snapshot(
            "sysmon.metrics.3.web-1",
            fields("web-1", NOW, 1000),
            NOW,
            &Limits::default(),
        )
        .expect("accepted when mapped");
        assert_eq!(m.as_str(), "web-1");
    }

    #[test]
    fn subjects_must_carry_a_valid_machine_id() {
        let l = Limits::default();
        let long = "a".repeat(300);
        for (subject, reason) in [
            ("sysmon.metrics.UPPER-Case", "machine_id"),
            (&format!("sysmon.metrics.{long}")[..], "machine_id"),
            ("sysmon.metrics.", "subject"),
            ("sysmon.metrics.a.b", "subject"),
            ("sysmon.metrics.3.a.b", "subject"),
            ("sysmon.metrics.1234.x", "subject"),
            ("sysmon.metrics.3.UPPER", "machine_id"),
            ("sysmon.info.a", "subject"),
        ] {
            let e = snapshot(subject, fields("x", NOW, 1000), NOW, &l).expect_err(subject);
            assert_eq!(e.reason(), reason, "{subject}: {e}");
            assert!(e.to_string().len() < 200, "error text is bounded: {e}");
        }
        // As the hub's account maps it to METRICS partition 3.
        assert_eq!(
            metrics_subject("sysmon.metrics.3.web-1")
                .expect("mapped")
                .as_str(),
            "web-1"
        );
        assert_eq!(
            info_subject("sysmon.info.db_2").expect("ok").as_str(),
            "db_2"
        );
        assert_eq!(
            info_subject("sysmon.info.Db").expect_err("upper").reason(),
            "machine_id"
        );
        let m = MachineId::parse("db_2").expect("id");
        assert_eq!(forget_subject(&crate::subjects::forget(&m)).expect("ok"), m);
        let c = MachineId::parse("hook").expect("valid");
        assert_eq!(
            notify_failed_subject(&crate::subjects::notify_failed(&m, &c)).expect("ok"),
            (m.clone(), c)
        );
        for bad in [
            "sysmon.notify.failed.web01",
            "sysmon.notify.failed.web01.",
            "sysmon.notify.failed..hook",
            "sysmon.notify.failed.web01.hook.x",
            "sysmon.metrics.web01",
        ] {
            assert_eq!(
                notify_failed_subject(bad).expect_err(bad).reason(),
                "subject"
            );
        }
        assert_eq!(
            forget_subject("sysmon.admin.forget.a.b")
                .expect_err("two")
                .reason(),
            "subject"
        );
    }

    #[test]
    fn timestamps_at_the_ends_of_their_range_are_values_not_panics() {
        let l = Limits::default();
        for ts in [i64::MIN, -1, 0, EARLIEST_MS - 1] {
            assert_eq!(timestamp(ts, NOW, &l).expect_err("old").reason(), "too_old");
        }
        for ts in [
            i64::MAX,
            NOW + l.max_future_skew_ms + 1,
            200_000_000_000_000,
        ] {
            assert_eq!(
                timestamp(ts, NOW, &l).expect_err("ahead").reason(),
                "future"
            );
        }
        timestamp(EARLIEST_MS, NOW, &l).expect("2000 is accepted");
        timestamp(NOW + l.max_future_skew_ms, NOW, &l).expect("at the skew");
        // A consumer clock at the ends of the range too.
        timestamp(NOW, i64::MAX, &l).expect("far past the clock is fine");
        assert_eq!(
            timestamp(i64::MAX, i64::MIN, &l)
                .expect_err("ahead")
                .reason(),
            "future"
        );
    }

    #[test]
    fn intervals_are_bounded_and_zero_means_unstated() {
        for ok in [0, MIN_INTERVAL_MS, 1000, MAX_INTERVAL_MS] {
            interval(ok).expect("accepted");
        }
        for bad in [1, MIN_INTERVAL_MS - 1, MAX_INTERVAL_MS + 1, u32::MAX] {
            assert_eq!(interval(bad).expect_err("bad").reason(), "interval");
        }
    }

    #[test]
    fn a_payload_for_another_machine_is_refused() {
        let e = snapshot(
            "sysmon.metrics.a",
            fields("b", NOW, 1000),
            NOW,
            &Limits::default(),
        )
        .expect_err("mismatch");
        assert_eq!(e.reason(), "machine_mismatch");
    }

    #[test]
    fn every_reason_is_listed() {
        let all = [
            Reject::Oversized(1),
            Reject::Decode(String::new()),
            Reject::Subject(String::new()),
            Reject::MachineId(String::new()),
            Reject::MachineMismatch {
                subject: String::new(),
                payload: String::new(),
            },
            Reject::TooOld(0),
            Reject::TooFarAhead {
                ts_ms: 0,
                ahead_ms: 0,
            },
            Reject::Interval(0),
        ];
        for r in &all {
            assert!(Reject::REASONS.contains(&r.reason()), "{r:?}");
        }
        assert_eq!(all.len(), Reject::REASONS.len());
        payload_size(65_536, &Limits::default()).expect("at the limit");
        assert_eq!(
            payload_size(65_537, &Limits::default())
                .expect_err("over")
                .reason(),
            "oversized"
        );
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let s = "é".repeat(100);
        let t = truncated(&s);
        assert!(t.len() <= 84 && t.ends_with('…'));
    }
}
