//! What a message must be to be stored: a Snapshot of the machine its
//! subject names, taken at a believable time, not too large — the contract's
//! one rule, `sysmonstm_schemas::accept`, applied to the bytes `crate::wire`
//! reads in place — with values the database can aggregate; anything else is
//! a [`Rejection`] that says why. It becomes a row in [`crate::copy::Batch`].

use chrono::{DateTime, TimeZone, Utc};
use sysmonstm_schemas::accept::{self, Reject};

use crate::wire;

/// Why a message is refused for good (it is terminated, never retried).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The contract's rule refused it.
    #[error(transparent)]
    Contract(#[from] Reject),
    /// A load average PostgreSQL could not sum into the rollups: two such
    /// values in one minute overflow `float8` and every write or merge of
    /// that minute fails for ever.
    #[error("load average {0} is not a number in 0..={MAX_LOAD}")]
    Load(f64),
}

/// The largest load average believed. Load is the only raw value stored as
/// `float8` (the others come as `f32`, whose sums cannot overflow).
pub const MAX_LOAD: f64 = 1e9;

impl Rejection {
    /// The counter label (`reason="…"`): the contract's reason, or `value`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Contract(r) => r.reason(),
            Self::Load(_) => "value",
        }
    }
}

/// Limits applied to every message.
pub type Limits = accept::Limits;

/// Reads `payload` into `snap` and checks it; returns when it was taken.
pub(crate) fn check(
    subject: &str,
    payload: &[u8],
    snap: &mut wire::Snapshot,
    now: DateTime<Utc>,
    limits: Limits,
) -> Result<DateTime<Utc>, Rejection> {
    accept::payload_size(payload.len(), &limits)?;
    let machine = accept::metrics_subject(subject)?;
    snap.parse(payload)
        .map_err(|e| Reject::Decode(e.to_string()))?;
    accept::same_machine(&machine, snap.machine_id.of(payload))?;
    accept::timestamp(snap.timestamp_ms, now.timestamp_millis(), &limits)?;
    accept::interval(snap.interval_ms)?;
    if let Some(l) = snap.load {
        for v in [l.one, l.five, l.fifteen] {
            if !(0.0..=MAX_LOAD).contains(&v) {
                return Err(Rejection::Load(v));
            }
        }
    }
    Ok(Utc
        .timestamp_millis_opt(snap.timestamp_ms)
        .single()
        .ok_or(Reject::TooOld(snap.timestamp_ms))?)
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
        let reason = |subject: &str, payload: &[u8]| {
            check_one(subject, payload).expect_err("refused").reason()
        };
        let w = "sysmon.metrics.web01";
        assert_eq!(reason(w, &[0xff, 0xff, 0xff]), "decode");
        assert_eq!(reason(w, &good[..good.len() - 3]), "decode");
        assert_eq!(reason(w, &[0u8; 2000]), "oversized");
        assert_eq!(reason("sysmon.other.web01", &good), "subject");
        assert_eq!(reason("sysmon.metrics.db02", &good), "machine_mismatch");
        let old = snap("web01", 900_000_000_000).encode_to_vec();
        assert_eq!(reason(w, &old), "too_old");
        let future = snap("web01", 1_800_000_000_000 + 120_000).encode_to_vec();
        assert_eq!(reason(w, &future), "future");
        let far = snap("web01", i64::MAX).encode_to_vec();
        assert_eq!(reason(w, &far), "future");
        let fast = v1::Snapshot {
            interval_ms: 1,
            ..snap("web01", 1_800_000_000_000)
        };
        assert_eq!(reason(w, &fast.encode_to_vec()), "interval");
        for load in [1e308, f64::INFINITY, f64::NAN, -1.0] {
            let mut s = snap("web01", 1_800_000_000_000);
            s.load = Some(v1::Load {
                one: 0.5,
                five: load,
                fifteen: 0.1,
            });
            assert_eq!(reason(w, &s.encode_to_vec()), "value", "{load}");
        }
    }

    /// The contract's one machine-id rule: a token that is not a machine id
    /// is refused even when the payload names the same token.
    #[test]
    fn subject_tokens_that_are_not_machine_ids_are_refused() {
        let long = "a".repeat(300);
        for machine in ["UPPER-Case", long.as_str(), "a b", "é"] {
            let bytes = snap(machine, 1_800_000_000_000).encode_to_vec();
            let e = check_one(&format!("sysmon.metrics.{machine}"), &bytes).expect_err(machine);
            assert!(
                matches!(e.reason(), "machine_id" | "subject"),
                "{machine}: {e}"
            );
            assert!(e.to_string().len() < 200, "the error is bounded: {e}");
        }
    }

    #[test]
    fn unknown_newer_fields_are_ignored() {
        let mut bytes = snap("web01", 1_800_000_000_000).encode_to_vec();
        // Field 999, varint 5: what a newer agent might add.
        bytes.extend_from_slice(&[0xb8, 0x3e, 0x05]);
        assert!(check_one("sysmon.metrics.web01", &bytes).is_ok());
    }

    /// The persister applies exactly the contract's rule: for any subject,
    /// machine id, time and interval, `check` refuses what
    /// `accept::snapshot` refuses, for the same reason, and takes the rest.
    mod props {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9][a-z0-9_-]{0,10}",
                ".{0,12}",
                "[a-z]{60,70}",
                Just(String::new()),
            ]
        }

        fn ts() -> impl Strategy<Value = i64> {
            let now = 1_800_000_000_000i64;
            prop_oneof![
                any::<i64>(),
                (now - 86_400_000..now + 120_000),
                Just(accept::EARLIEST_MS - 1),
                Just(accept::EARLIEST_MS),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn check_is_the_contracts_rule(
                root in prop_oneof![Just("sysmon.metrics."), Just("sysmon.info."), Just("")],
                subject_token in token(),
                same in any::<bool>(),
                payload_machine in token(),
                timestamp_ms in ts(),
                interval_ms in prop_oneof![any::<u32>(), 0u32..5000],
            ) {
                let subject = format!("{root}{subject_token}");
                let machine = if same { subject_token.clone() } else { payload_machine };
                let s = v1::Snapshot { timestamp_ms, interval_ms, ..snap(&machine, timestamp_ms) };
                let ours = check_one(&subject, &s.encode_to_vec()).err().map(|e| e.reason());
                let fields = accept::SnapshotFields { machine_id: &machine, timestamp_ms, interval_ms };
                let contract = accept::snapshot(&subject, fields, now().timestamp_millis(), &LIMITS)
                    .err()
                    .map(|r| Rejection::from(r).reason());
                prop_assert_eq!(ours, contract);
            }
        }
    }
}
