//! The boundary where protobuf ends: a message's subject and payload become a
//! [`Decoded`] snapshot (wide row and child rows), or a [`Rejection`] that
//! says why not. Nothing past this module sees prost types.

use chrono::{DateTime, TimeZone, Utc};
use prost::Message as _;
use sysmonstm_schemas::{subjects, v1};

pub use crate::rows::{Decoded, DiskRow, FsRow, NetRow, ProcRow, TempRow};

/// One snapshot's wide row as the database stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRow {
    pub machine_id: String,
    pub ts: DateTime<Utc>,
    pub seq: i64,
    pub interval_ms: i32,
    pub cpu_percent: Option<f32>,
    pub cpu_user_percent: Option<f32>,
    pub cpu_system_percent: Option<f32>,
    pub cpu_iowait_percent: Option<f32>,
    pub cpu_per_core: Option<Vec<f32>>,
    pub mem_total_bytes: Option<i64>,
    pub mem_used_bytes: Option<i64>,
    pub mem_available_bytes: Option<i64>,
    pub mem_used_percent: Option<f32>,
    pub swap_total_bytes: Option<i64>,
    pub swap_used_bytes: Option<i64>,
    pub swap_used_percent: Option<f32>,
    pub load1: Option<f64>,
    pub load5: Option<f64>,
    pub load15: Option<f64>,
    pub uptime_s: i64,
    pub process_count: i32,
    pub net_rx_bps: Option<f64>,
    pub net_tx_bps: Option<f64>,
    pub disk_read_bps: Option<f64>,
    pub disk_write_bps: Option<f64>,
    pub temperature_max_c: Option<f32>,
    pub agent_spool_pending: Option<i64>,
    pub agent_spool_dropped: Option<i64>,
}

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
const EARLIEST_MS: i64 = 946_684_800_000;

pub fn decode(
    subject: &str,
    payload: &[u8],
    now: DateTime<Utc>,
    limits: Limits,
) -> Result<Decoded, Rejection> {
    if payload.len() > limits.max_payload_bytes {
        return Err(Rejection::Oversized(payload.len()));
    }
    let machine = subjects::machine_of_metrics(subject).ok_or(Rejection::Subject)?;
    let snap = v1::Snapshot::decode(payload).map_err(|e| Rejection::Decode(e.to_string()))?;
    // The subject is what the server's permissions vouch for; a payload that
    // claims another machine is refused rather than trusted.
    if snap.machine_id != machine {
        return Err(Rejection::MachineMismatch {
            subject: machine.to_owned(),
            payload: snap.machine_id,
        });
    }
    let latest = now.timestamp_millis() + limits.max_future_skew_ms;
    if snap.timestamp_ms < EARLIEST_MS || snap.timestamp_ms > latest {
        return Err(Rejection::Timestamp(snap.timestamp_ms));
    }
    let ts = Utc
        .timestamp_millis_opt(snap.timestamp_ms)
        .single()
        .ok_or(Rejection::Timestamp(snap.timestamp_ms))?;
    Ok(crate::rows::from_snapshot(snap, ts))
}

/// PostgreSQL has no unsigned integers; byte counts never reach 2^63.
pub(crate) fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn maps_a_snapshot() {
        let s = snap("web01", 1_800_000_000_000);
        let d = decode("sysmon.metrics.web01", &s.encode_to_vec(), now(), LIMITS).expect("ok");
        assert_eq!(d.row.machine_id, "web01");
        assert_eq!(d.row.ts.timestamp_millis(), 1_800_000_000_000);
        assert_eq!(d.row.seq, 7);
        assert_eq!(d.row.cpu_percent, Some(12.5));
        assert_eq!(d.row.mem_used_bytes, Some(2 << 30));
        assert_eq!(d.row.load15, Some(0.125));
        assert_eq!(d.row.process_count, 42);
    }

    #[test]
    fn missing_sections_are_null_not_zero() {
        let s = v1::Snapshot {
            machine_id: "a".into(),
            timestamp_ms: 1_800_000_000_000,
            ..Default::default()
        };
        let d = decode("sysmon.metrics.a", &s.encode_to_vec(), now(), LIMITS).expect("ok");
        assert_eq!(
            (d.row.cpu_percent, d.row.mem_total_bytes, d.row.load1),
            (None, None, None)
        );
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        let good = snap("web01", 1_800_000_000_000).encode_to_vec();
        let d = |subj: &str, p: &[u8]| decode(subj, p, now(), LIMITS);
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
        assert!(decode("sysmon.metrics.web01", &bytes, now(), LIMITS).is_ok());
    }
}
