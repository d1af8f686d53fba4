//! Parsing and checking of query parameters, each failure naming its
//! parameter; and the history step chosen from a range.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone as _, Utc};
use sysmonstm_schemas::MachineId;

use crate::error::ApiError;

/// The metric names `sysmon_history` knows (contract).
pub const HISTORY_METRICS: &[&str] = &[
    "cpu",
    "memory",
    "swap",
    "load1",
    "load5",
    "load15",
    "net_rx",
    "net_tx",
    "disk_read",
    "disk_write",
    "processes",
];

/// Alert states (contract).
pub const ALERT_STATES: &[&str] = &["firing", "resolved", "acknowledged"];

/// Longest history range answered.
pub const MAX_RANGE_DAYS: i64 = 400;

/// Steps a history answer may be bucketed by, in seconds, finest first.
const STEPS_S: &[i64] = &[
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
];

pub fn machine(id: &str) -> Result<MachineId, ApiError> {
    MachineId::parse(id).map_err(|e| ApiError::bad("id", format!("not a machine id: {e}")))
}

/// A time given as RFC 3339 (`2026-11-23T10:00:00Z`) or as Unix milliseconds.
pub fn time(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    raw.parse::<i64>()
        .ok()
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
        .ok_or_else(|| {
            ApiError::bad(
                name,
                format!("{raw:?} is neither an RFC 3339 time nor Unix milliseconds"),
            )
        })
}

/// Refuses parameters the endpoint does not know, so a typo (`mertic=`) is
/// an answer, not a silently different query.
pub fn only(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad(
            k,
            format!("unknown parameter; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A validated history query.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryQuery {
    pub metric: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub step_s: i64,
}

pub fn history(
    q: &HashMap<String, String>,
    now: DateTime<Utc>,
    max_points: u32,
) -> Result<HistoryQuery, ApiError> {
    only(q, &["metric", "from", "to"])?;
    let metric = q.get("metric").ok_or_else(|| {
        ApiError::bad(
            "metric",
            format!("required; one of {}", HISTORY_METRICS.join(", ")),
        )
    })?;
    if !HISTORY_METRICS.contains(&metric.as_str()) {
        return Err(ApiError::bad(
            "metric",
            format!(
                "unknown metric {metric:?}; one of {}",
                HISTORY_METRICS.join(", ")
            ),
        ));
    }
    let to = q
        .get("to")
        .map(|t| time("to", t))
        .transpose()?
        .unwrap_or(now);
    let from = q
        .get("from")
        .map(|t| time("from", t))
        .transpose()?
        .unwrap_or(to - chrono::Duration::hours(1));
    if from >= to {
        return Err(ApiError::bad("from", "must be before `to`"));
    }
    if to - from > chrono::Duration::days(MAX_RANGE_DAYS) {
        return Err(ApiError::bad(
            "from",
            format!("range is longer than {MAX_RANGE_DAYS} days"),
        ));
    }
    let step_s = step_for((to - from).num_seconds(), max_points);
    Ok(HistoryQuery {
        metric: metric.clone(),
        from,
        to,
        step_s,
    })
}

/// The finest step that keeps `range_s` within `max_points` buckets.
pub fn step_for(range_s: i64, max_points: u32) -> i64 {
    let per = i64::from(max_points.max(1));
    let need = (range_s + per - 1) / per;
    STEPS_S
        .iter()
        .copied()
        .find(|s| *s >= need)
        .unwrap_or(need.max(86400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_keep_answers_under_the_point_budget() {
        for (range, expect) in [
            (600, 1),
            (3600, 5),
            (86_400, 120),
            (7 * 86_400, 900),
            (30 * 86_400, 3600),
        ] {
            let s = step_for(range, 1000);
            assert_eq!(s, expect, "range {range}s");
            assert!(range / s <= 1000);
        }
    }

    #[test]
    fn times_parse_in_both_forms() {
        let a = time("from", "2026-11-23T10:00:00Z").expect("rfc3339");
        let b = time("from", &a.timestamp_millis().to_string()).expect("ms");
        assert_eq!(a, b);
        let e = time("from", "yesterday").expect_err("refused");
        assert_eq!(e.parameter.as_deref(), Some("from"));
    }
}
