//! What a message must be to be stored: a Snapshot of the machine its
//! subject names, taken at a believable time, not too large; anything else
//! is a [`Rejection`] that says why. Its bytes are read by [`crate::wire`]
//! and become a row in [`crate::copy::Batch`].

use chrono::{DateTime, TimeZone, Utc};
use sysmonstm_schemas::subjects;

use crate::wire;

/// Why a message is refused for good (it is terminated, never retried).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("payload of {0} bytes is over the limit")]
    Oversized(usize),
    #[error("payload is not a Snapshot: {0}")]
    Decode(String),
    #[error("subject is not sysmon.metrics.<machine>")]
    Subject,
    #[error("snapshot says machine {payload:?} but came on the subject of {subject:?}")]
    MachineMismatch { subject: String, payload: String },
    #[error("timestamp {0} ms is before 2000 or too far in the future")]
    Timestamp(i64),
}

/// Limits applied to every message.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_payload_bytes: usize,
    pub max_future_skew_ms: i64,
}

/// 2000-01-01T00:00:00Z in Unix milliseconds: nothing older is real data.
pub(crate) const EARLIEST_MS: i64 = 946_684_800_000;

/// Reads `payload` into `snap` and checks it; returns when it was taken.
pub(crate) fn check(
    subject: &str,
    payload: &[u8],
    snap: &mut wire::Snapshot,
    now: DateTime<Utc>,
    limits: Limits,
) -> Result<DateTime<Utc>, Rejection> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::Oversized(payload.len()));
    }
    let machine = subjects::machine_of_metrics(subject).ok_or(Rejection::Subject)?;
    snap.parse(payload)
        .map_err(|e| Rejection::Decode(e.to_string()))?;
    // The subject is what the server's permissions vouch for; a payload that
    // claims another machine is refused rather than trusted.
    let claimed = snap.machine_id.of(payload);
    if claimed != machine {
        return Err(Rejection::MachineMismatch {
            subject: machine.to_owned(),
            payload: claimed.to_owned(),
        });
    }
    let latest = now.timestamp_millis() + limits.max_future_skew_ms;
    if snap.timestamp_ms < EARLIEST_MS || snap.timestamp_ms > latest {
        return Err(Rejection::Timestamp(snap.timestamp_ms));
    }
    Utc.timestamp_millis_opt(snap.timestamp_ms)
        .single()
        .ok_or(Rejection::Timestamp(snap.timestamp_ms))
}

/// PostgreSQL's text cannot hold NUL (the statement would fail, and be
/// retried forever): it becomes U+FFFD.
pub(crate) fn pg_text(s: &mut String) {
    if s.contains('\0') {
        *s = s.replace('\0', "\u{fffd}");
    }
}

/// PostgreSQL has no unsigned integers; byte counts never reach 2^63.
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use sysmonstm_schemas::v1;

    const LIMITS: Limits = Limits {
        max_payload_bytes: 1024,
        max_future_skew_ms: 60_000,
    };

    fn snap(machine: &str, ts: i64) -> v1::Snapshot {
        v1::Snapshot {
            machine_id: machine.into(),
            seq: 7,
            timestamp_ms: ts,
            interval_ms: 1000,
            cpu: Some(v1::Cpu {
                usage_percent: 12.5,
                ..Default::default()
            }),
            memory: Some(v1::Memory {
                total_bytes: 8 << 30,
                used_bytes: 2 << 30,
                available_bytes: 6 << 30,
                ..Default::default()
            }),
            load: Some(v1::Load {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            }),
            uptime_s: 99,
            process_count: 42,
            ..Default::default()
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000)
            .single()
            .expect("valid")
    }

    fn check_one(subject: &str, payload: &[u8]) -> Result<DateTime<Utc>, Rejection> {
        check(
            subject,
            payload,
            &mut wire::Snapshot::default(),
            now(),
            LIMITS,
        )
    }

    #[test]
    fn maps_a_snapshot() {
        let bytes = snap("web01", 1_800_000_000_000).encode_to_vec();
        let mut s = wire::Snapshot::default();
        let ts = check("sysmon.metrics.web01", &bytes, &mut s, now(), LIMITS).expect("ok");
        assert_eq!(ts.timestamp_millis(), 1_800_000_000_000);
        assert_eq!(s.machine_id.of(&bytes), "web01");
        assert_eq!(s.seq, 7);
        assert_eq!(s.cpu.map(|c| c.usage_percent), Some(12.5));
        assert_eq!(s.memory.map(|m| m.used_bytes), Some(2 << 30));
        assert_eq!(s.load.map(|l| l.fifteen), Some(0.125));
        assert_eq!(s.process_count, 42);
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let good = snap("web01", 1_800_000_000_000).encode_to_vec();
        let d = check_one;
        assert!(matches!(
            d("sysmon.metrics.web01", &[0xff, 0xff, 0xff]),
            Err(Rejection::Decode(_))
        ));
        assert!(matches!(
            d("sysmon.metrics.web01", &good[..good.len() - 3]),
            Err(Rejection::Decode(_))
        ));
        assert!(matches!(
            d("sysmon.metrics.web01", &[0u8; 2000]),
            Err(Rejection::Oversized(2000))
        ));
        assert!(matches!(
            d("sysmon.other.web01", &good),
            Err(Rejection::Subject)
        ));
        assert!(matches!(
            d("sysmon.metrics.db02", &good),
            Err(Rejection::MachineMismatch { .. })
        ));
        let old = snap("web01", 900_000_000_000).encode_to_vec();
        assert!(matches!(
            d("sysmon.metrics.web01", &old),
            Err(Rejection::Timestamp(_))
        ));
        let future = snap("web01", 1_800_000_000_000 + 120_000).encode_to_vec();
        assert!(matches!(
            d("sysmon.metrics.web01", &future),
            Err(Rejection::Timestamp(_))
        ));
    }

    #[test]
    fn unknown_newer_fields_are_ignored() {
        let mut bytes = snap("web01", 1_800_000_000_000).encode_to_vec();
        // Field 999, varint 5: what a newer agent might add.
        bytes.extend_from_slice(&[0xb8, 0x3e, 0x05]);
        assert!(check_one("sysmon.metrics.web01", &bytes).is_ok());
    }
}
