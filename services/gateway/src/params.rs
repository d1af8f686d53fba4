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

/// The most machines one `/api/machines` page holds.
pub const MAX_PAGE: u32 = 10_000;

/// `/api/machines`' page: `limit` (1 to [`MAX_PAGE`]; absent: every
/// machine) and `after` (a machine id: only those sorting after it).
pub fn page(q: &HashMap<String, String>) -> Result<(Option<usize>, Option<MachineId>), ApiError> {
    let limit = match q.get("limit") {
        None => None,
        Some(raw) => Some(
            raw.parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::bad(
                        "limit",
                        format!("{} is not a page size (1 to {MAX_PAGE})", shown(raw)),
                    )
                })?,
        ),
    };
    let after = match q.get("after") {
        None => None,
        Some(raw) => Some(MachineId::parse(raw).map_err(|e| {
            ApiError::bad("after", format!("{} is not a machine id: {e}", shown(raw)))
        })?),
    };
    Ok((limit, after))
}

/// Earliest time a parameter may name: 2000-01-01T00:00:00Z, where the
/// data's own range begins (`schemas::accept::EARLIEST_MS`).
pub const EARLIEST_MS: i64 = sysmonstm_schemas::accept::EARLIEST_MS;
/// Latest time a parameter may name: 2100-01-01T00:00:00Z. Both ends are
/// far inside what chrono and PostgreSQL hold, so any arithmetic on a time
/// that passed [`time`] (an hour back, a range of days) stays in range.
pub const LATEST_MS: i64 = 4_102_444_800_000;

/// Longest parameter value read; anything longer is no time or name.
const MAX_VALUE_LEN: usize = 64;

/// A parameter value as it may appear in an error (and so a log line):
/// bounded, whatever was sent.
fn shown(raw: &str) -> String {
    if raw.len() <= MAX_VALUE_LEN {
        return format!("{raw:?}");
    }
    let mut end = MAX_VALUE_LEN;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &raw[..end])
}

/// A time given as RFC 3339 (`2026-11-23T10:00:00Z`) or as Unix
/// milliseconds, between [`EARLIEST_MS`] and [`LATEST_MS`] inclusive.
pub fn time(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    let parsed = if raw.len() > MAX_VALUE_LEN {
        None
    } else if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        Some(t.with_timezone(&Utc))
    } else {
        raw.parse::<i64>()
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
    };
    let t = parsed.ok_or_else(|| {
        ApiError::bad(
            name,
            format!(
                "{} is neither an RFC 3339 time nor Unix milliseconds",
                shown(raw)
            ),
        )
    })?;
    if !(EARLIEST_MS..=LATEST_MS).contains(&t.timestamp_millis()) {
        return Err(ApiError::bad(
            name,
            format!(
                "{} is out of range: a time must lie between 2000-01-01T00:00:00Z and \
                 2100-01-01T00:00:00Z",
                shown(raw)
            ),
        ));
    }
    Ok(t)
}

/// Refuses parameters the endpoint does not know, so a typo (`mertic=`) is
/// an answer, not a silently different query.
pub fn only(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match q.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            let mut e = ApiError::bad(
                "query",
                format!("unknown parameter; known: {}", known.join(", ")),
            );
            // Named as sent (a typo is easiest to see so), within bounds.
            e.parameter = Some(if k.len() <= MAX_VALUE_LEN {
                k.clone()
            } else {
                shown(k)
            });
            Err(e)
        }
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
                "unknown metric {}; one of {}",
                shown(metric),
                HISTORY_METRICS.join(", ")
            ),
        ));
    }
    let to = match q.get("to") {
        Some(t) => time("to", t)?,
        // A server clock outside the range still gives a query in range.
        None => Utc
            .timestamp_millis_opt(now.timestamp_millis().clamp(EARLIEST_MS, LATEST_MS))
            .single()
            .unwrap_or(now),
    };
    let from = match q.get("from") {
        Some(t) => time("from", t)?,
        None => to
            .checked_sub_signed(chrono::Duration::hours(1))
            .ok_or_else(|| ApiError::bad("to", "too early to look an hour back from"))?,
    };
    if from >= to {
        return Err(ApiError::bad("from", "must be before `to`"));
    }
    let range_s = to.signed_duration_since(from).num_seconds();
    if range_s > MAX_RANGE_DAYS * 86_400 {
        return Err(ApiError::bad(
            "from",
            format!("range is longer than {MAX_RANGE_DAYS} days"),
        ));
    }
    let step_s = step_for(range_s, max_points);
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
    let need = range_s.max(0).saturating_add(per - 1) / per;
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

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000)
            .single()
            .expect("now")
    }

    /// The request that stopped the gateway: `to` in the first hour after
    /// the earliest instant chrono holds (`to - 1h` overflowed), and the
    /// other ends of every range.
    #[test]
    fn times_at_and_past_the_ends_of_their_range_are_a_400_naming_them() {
        for (name, raw) in [
            ("to", "-8334601213037969"),
            ("to", &i64::MIN.to_string()[..]),
            ("to", &i64::MAX.to_string()[..]),
            ("from", "-262143-01-01T00:00:00Z"),
            ("from", "+262142-12-31T23:59:59Z"),
            ("to", "1999-12-31T23:59:59.999Z"),
            ("to", "2100-01-01T00:00:00.001Z"),
            ("to", "946684799999"),
            ("to", "4102444800001"),
        ] {
            let e = history(&q(&[("metric", "cpu"), (name, raw)]), now(), 1000).expect_err(raw);
            assert_eq!(e.parameter.as_deref(), Some(name), "{raw}: {}", e.error);
        }
        let at_start = history(
            &q(&[("metric", "cpu"), ("to", "946684800000")]),
            now(),
            1000,
        )
        .expect("2000-01-01 is in range");
        assert_eq!(at_start.to.timestamp_millis(), EARLIEST_MS);
        history(
            &q(&[("metric", "cpu"), ("to", "2100-01-01T00:00:00Z")]),
            now(),
            1000,
        )
        .expect("2100-01-01 is in range");
        let long = "9".repeat(10_000);
        let e = time("since", &long).expect_err("long");
        assert!(
            e.error.len() < 300,
            "the error is bounded: {}",
            e.error.len()
        );
    }

    use proptest::prelude::*;

    /// Values a caller may send: numbers at and past every edge, RFC 3339
    /// in and out of chrono's range, and arbitrary text.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            (EARLIEST_MS - 10_000_000..LATEST_MS + 10_000_000).prop_map(|v| v.to_string()),
            (-300_000i32..300_000, 1u32..13, 1u32..29, 0u32..24).prop_map(|(y, m, d, h)| {
                if y < 0 {
                    format!("-{:06}-{m:02}-{d:02}T{h:02}:00:00Z", -i64::from(y))
                } else {
                    format!("{y:04}-{m:02}-{d:02}T{h:02}:00:00+05:30")
                }
            }),
            ".{0,80}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// No input panics; whatever is accepted is within the documented
        /// ranges and the step keeps the answer within the point budget.
        #[test]
        fn history_parameters_never_panic_and_accepted_ones_are_in_range(
            metric in prop_oneof![Just("cpu".to_owned()), ".{0,12}"],
            from in proptest::option::of(value()),
            to in proptest::option::of(value()),
            extra in proptest::option::of(("[a-z]{1,8}", ".{0,8}")),
            now_ms in prop_oneof![any::<i64>(), EARLIEST_MS..LATEST_MS],
            max_points in any::<u32>(),
        ) {
            let mut params = q(&[("metric", &metric)]);
            if let Some(f) = from { params.insert("from".into(), f); }
            if let Some(t) = to { params.insert("to".into(), t); }
            if let Some((k, v)) = extra { params.insert(k, v); }
            let now = Utc.timestamp_millis_opt(now_ms).single().unwrap_or(DateTime::<Utc>::MIN_UTC);
            match history(&params, now, max_points) {
                Ok(h) => {
                    let (f, t) = (h.from.timestamp_millis(), h.to.timestamp_millis());
                    prop_assert!((EARLIEST_MS..=LATEST_MS).contains(&t));
                    prop_assert!(params.contains_key("from") && f >= EARLIEST_MS
                        || !params.contains_key("from") && t - f == 3_600_000);
                    prop_assert!(f < t);
                    prop_assert!(t - f <= MAX_RANGE_DAYS * 86_400_000);
                    prop_assert!(h.step_s >= 1);
                    prop_assert!((t - f) / 1000 / h.step_s <= i64::from(max_points.max(1)));
                }
                Err(e) => {
                    prop_assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
                    prop_assert!(e.parameter.is_some());
                    prop_assert!(e.error.len() < 400);
                }
            }
        }

        #[test]
        fn a_time_is_in_range_or_a_400(raw in value()) {
            match time("since", &raw) {
                Ok(t) => prop_assert!((EARLIEST_MS..=LATEST_MS).contains(&t.timestamp_millis())),
                Err(e) => prop_assert_eq!(e.parameter.as_deref(), Some("since")),
            }
        }

        #[test]
        fn steps_never_overflow(range_s in any::<i64>(), max_points in any::<u32>()) {
            let s = step_for(range_s, max_points);
            prop_assert!(s >= 1);
        }
    }
}
