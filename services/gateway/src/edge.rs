//! The gateway as the public edge (`edge = true`): what it answers from the
//! edge nats-server's streams instead of PostgreSQL, and the one rule that
//! keeps it read-only.
//!
//! * **No write route.** [`read_only`] refuses every method but GET and HEAD
//!   on every path (405) before routing, whatever routes exist; the edge's
//!   router has no rule routes besides.
//! * **History** from the edge's METRICS, which keeps a window (24 h by
//!   default), read per request with bounded work: a range whose snapshots
//!   fit in `edge_max_read` is read whole by an ordered consumer from its
//!   start time and aggregated exactly per step (`"resolution": "raw"`); a
//!   longer one is answered from one snapshot per step, each a single
//!   message get, spread evenly by stream sequence over the range
//!   (`"sampled"`), so a request costs at most `history_max_points` + 2
//!   gets. Values are bucketed by the snapshot's own
//!   time, and every snapshot passes the accept rule first.
//! * **Alerts** from the edge's ALERTS: at most `edge_max_read` of its newest
//!   events are read, filtered like `/api/alerts` on the hub, newest first.
//!
//! Either way a machine off the allow-list is dropped as it is decoded, and
//! a listed one is renamed (`names`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessage;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt as _;
use serde_json::{Value, json};
use sysmonstm_schemas::{MachineId, streams, subjects};

use crate::domain;
use crate::error::ApiError;
use crate::guard::{Refusal, refuse};
use crate::params::HistoryQuery;
use crate::state::Shared;

/// Longest wait for the next message of a read (the edge server answers
/// in milliseconds; longer means it is gone).
const READ_WAIT: Duration = Duration::from_secs(5);

/// The edge stores a snapshot a little after it was taken (the hub's fsync,
/// the link); reads start and stop this far outside the range.
const SLACK_MS: i64 = 60_000;

/// Message gets in flight at once for a sampled history.
const GETS_IN_FLIGHT: usize = 8;

/// Middleware (edge): only GET and HEAD, on every path.
pub async fn read_only(
    State(s): State<std::sync::Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    refuse(
        &s,
        Refusal::Method,
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not served here: this gateway is a read-only edge",
            req.method()
        ),
    )
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "edge stream read failed: {what}");
    ApiError::unavailable(format!("{what} unavailable: {e}"))
}

fn nanos(ms: i64) -> Result<time::OffsetDateTime, ApiError> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| ApiError::bad("from", e.to_string()))
}

/// avg / min / max per step, by the snapshot's own time.
struct Buckets {
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
    /// step index → (sum, count, min, max)
    at: BTreeMap<i64, (f64, u32, f64, f64)>,
}

impl Buckets {
    fn add(&mut self, ts_ms: i64, v: Option<f64>) {
        let Some(v) = v.filter(|v| v.is_finite()) else {
            return;
        };
        if ts_ms < self.from_ms || ts_ms >= self.to_ms {
            return;
        }
        let i = (ts_ms - self.from_ms) / self.step_ms;
        let e = self.at.entry(i).or_insert((0.0, 0, v, v));
        e.0 += v;
        e.1 = e.1.saturating_add(1);
        e.2 = e.2.min(v);
        e.3 = e.3.max(v);
    }
}

/// History of machine `public` from the edge's METRICS (see the module
/// doc): the same answer shape as the hub's.
pub async fn history(s: &Shared, public: &MachineId, hq: &HistoryQuery) -> Result<Value, ApiError> {
    let Some(real) = s.names.real(public.as_str()) else {
        return Err(ApiError::not_found(format!("no machine {public}")));
    };
    let real = MachineId::parse(&real).map_err(|_| ApiError::not_found("no such machine"))?;
    // The edge's METRICS keeps the subjects of the hub's partitions.
    let subject = s.config.metrics_partitions.subject_of(&real);
    let from_ms = hq.from.timestamp_millis();
    // `to` is inclusive at the hub; one past it here.
    let to_ms = hq.to.timestamp_millis().saturating_add(1);
    let step_ms = hq.step_s.saturating_mul(1000).max(1);
    let mut b = Buckets {
        from_ms,
        to_ms,
        step_ms,
        at: BTreeMap::new(),
    };
    let interval_ms = s
        .latest
        .get(public.as_str())
        .map_or(1000, |l| i64::from(l.detail.summary.interval_ms))
        .max(10);
    let expected = to_ms.saturating_sub(from_ms) / interval_ms;
    // A machine whose latest snapshot states a longer interval than it
    // really had may hold more than estimated: a read that runs out of its
    // budget before the range's end is answered by sampling instead.
    let complete = expected <= i64::from(s.config.edge_max_read)
        && read_range(s, &subject, &hq.metric, &mut b).await?;
    let resolution = if complete {
        "raw"
    } else {
        b.at.clear();
        sample_range(s, &subject, &hq.metric, &mut b).await?;
        "sampled"
    };
    let (mut ts, mut avg, mut min, mut max) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (sum, n, lo, hi)) in &b.at {
        ts.push(from_ms.saturating_add(i.saturating_mul(step_ms)));
        avg.push(sum / f64::from((*n).max(1)));
        min.push(*lo);
        max.push(*hi);
    }
    Ok(json!({
        "machine_id": public.as_str(),
        "metric": hq.metric,
        "from_ms": from_ms,
        "to_ms": hq.to.timestamp_millis(),
        "step_s": hq.step_s,
        "resolution": resolution,
        "points": ts.len(),
        "ts": ts, "avg": avg, "min": min, "max": max,
    }))
}

/// Reads every snapshot of `subject` stored from the range's start (less
/// the slack) until one stored after its end, the stream's end, or
/// `edge_max_read` messages; false when the budget ran out first.
async fn read_range(
    s: &Shared,
    subject: &str,
    metric: &str,
    b: &mut Buckets,
) -> Result<bool, ApiError> {
    let stream =
        s.js.get_stream(streams::METRICS)
            .await
            .map_err(|e| unavailable("history", e))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: nanos(b.from_ms.saturating_sub(SLACK_MS))?,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("history", e))?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(true);
    }
    let mut msgs = consumer
        .messages()
        .await
        .map_err(|e| unavailable("history", e))?;
    let stop_ns = i128::from(b.to_ms.saturating_add(SLACK_MS)) * 1_000_000;
    let now_ms = Utc::now().timestamp_millis();
    let mut read = 0u32;
    loop {
        let msg = match tokio::time::timeout(READ_WAIT, msgs.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(unavailable("history", e)),
            Ok(None) => break,
            Err(_) => return Err(unavailable("history", "no answer from the edge's stream")),
        };
        read = read.saturating_add(1);
        if let Ok(d) = domain::snapshot(msg.subject.as_str(), &msg.payload, now_ms, &s.limits) {
            b.add(d.summary.timestamp_ms, d.summary.metric(metric));
        }
        let (pending, stored_ns) = msg.info().map_or((0, i128::MAX), |i| {
            (i.pending, i.published.unix_timestamp_nanos())
        });
        if pending == 0 || stored_ns > stop_ns {
            return Ok(true);
        }
        if read >= s.config.edge_max_read {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One snapshot per step, by message gets (no consumer). The range is
/// located by stored time (the first snapshot of the machine stored from its
/// start, less the slack, to the first stored after its end, plus the
/// slack), and sampled evenly by stream sequence between the two: the edge
/// stores a snapshot later than it was taken, by far after a cut of the
/// link (a burst of catch-up), so positions by time would miss what a burst
/// stored, while sequences follow the messages wherever they were stored.
/// Each sample is bucketed by the snapshot's own time; two positions may
/// find the same snapshot, which counts once.
async fn sample_range(
    s: &Shared,
    subject: &str,
    metric: &str,
    b: &mut Buckets,
) -> Result<(), ApiError> {
    let Some(lo) = next_of(s, subject, At::Time(b.from_ms.saturating_sub(SLACK_MS))).await? else {
        return Ok(());
    };
    let hi = match next_of(s, subject, At::Time(b.to_ms.saturating_add(SLACK_MS))).await? {
        Some(m) => m.sequence,
        None => {
            let stream =
                s.js.get_stream(streams::METRICS)
                    .await
                    .map_err(|e| unavailable("history", e))?;
            stream.cached_info().state.last_sequence.saturating_add(1)
        }
    };
    let first = lo.sequence;
    let span = hi.saturating_sub(first).max(1);
    let n = u64::try_from(b.to_ms.saturating_sub(b.from_ms) / b.step_ms)
        .unwrap_or(0)
        .saturating_add(1)
        .min(u64::from(s.config.history_max_points))
        .max(1);
    let mut positions: Vec<u64> = (1..n)
        .map(|i| {
            first.saturating_add(
                u64::try_from(u128::from(span) * u128::from(i) / u128::from(n)).unwrap_or(u64::MAX),
            )
        })
        .filter(|p| *p < hi)
        .collect();
    positions.dedup();
    let got: Vec<Result<Option<StreamMessage>, ApiError>> = futures::stream::iter(positions)
        .map(|seq| next_of(s, subject, At::Seq(seq)))
        .buffer_unordered(GETS_IN_FLIGHT)
        .collect()
        .await;
    let mut by_seq = BTreeMap::new();
    by_seq.insert(lo.sequence, lo);
    for g in got {
        if let Some(m) = g?
            && m.sequence < hi
        {
            by_seq.insert(m.sequence, m);
        }
    }
    let now_ms = Utc::now().timestamp_millis();
    for m in by_seq.values() {
        if let Ok(d) = domain::snapshot(m.subject.as_str(), &m.payload, now_ms, &s.limits) {
            b.add(d.summary.timestamp_ms, d.summary.metric(metric));
        }
    }
    Ok(())
}

/// Where a message get starts.
enum At {
    /// Stored at or after this time (ms).
    Time(i64),
    /// At or after this stream sequence.
    Seq(u64),
}

/// The first message of `subject` in METRICS from `at` on, by one message
/// get (`$JS.API.STREAM.MSG.GET`, which the edge gateway's credential may
/// ask; the edge's streams have no direct get).
async fn next_of(s: &Shared, subject: &str, at: At) -> Result<Option<StreamMessage>, ApiError> {
    let req = match at {
        At::Time(ms) => {
            let Some(t) = DateTime::<Utc>::from_timestamp_millis(ms) else {
                return Ok(None);
            };
            json!({
                "start_time": t.to_rfc3339_opts(SecondsFormat::Millis, true),
                "next_by_subj": subject,
            })
        }
        At::Seq(seq) => json!({ "seq": seq, "next_by_subj": subject }),
    };
    let answer: Value = tokio::time::timeout(
        READ_WAIT,
        s.js.request(format!("STREAM.MSG.GET.{}", streams::METRICS), &req),
    )
    .await
    .map_err(|_| unavailable("history", "no answer from the edge's stream"))?
    .map_err(|e| unavailable("history", e))?;
    if let Some(err) = answer.get("error") {
        // 10037: no message from there on.
        if err.get("err_code").and_then(Value::as_u64) == Some(10037)
            || err.get("code").and_then(Value::as_u64) == Some(404)
        {
            return Ok(None);
        }
        return Err(unavailable("history", err));
    }
    let raw: RawMessage =
        serde_json::from_value(answer.get("message").cloned().unwrap_or_default())
            .map_err(|e| unavailable("history", e))?;
    StreamMessage::try_from(raw)
        .map(Some)
        .map_err(|e| unavailable("history", e))
}

/// What `/api/alerts` asks for.
pub struct AlertsQuery<'a> {
    pub state: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    /// A public name.
    pub machine: Option<&'a str>,
}

/// Alert events from the edge's ALERTS: the newest `edge_max_read` read,
/// filtered, newest first, at most `alerts_limit`.
pub async fn alerts(s: &Shared, q: &AlertsQuery<'_>) -> Result<Value, ApiError> {
    let mut stream =
        s.js.get_stream(streams::ALERTS)
            .await
            .map_err(|e| unavailable("alerts", e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| unavailable("alerts", e))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(json!({ "alerts": [] }));
    }
    let budget = u64::from(s.config.edge_max_read);
    let start = state
        .first_sequence
        .max(state.last_sequence.saturating_sub(budget.saturating_sub(1)))
        .max(1);
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subjects::ALERTS_ALL.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable("alerts", e))?;
    let mut events = Vec::new();
    if consumer.cached_info().num_pending > 0 {
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| unavailable("alerts", e))?;
        let now_ms = Utc::now().timestamp_millis();
        let mut read = 0u64;
        loop {
            let msg = match tokio::time::timeout(READ_WAIT, msgs.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(unavailable("alerts", e)),
                Ok(None) => break,
                Err(_) => return Err(unavailable("alerts", "no answer from the edge's stream")),
            };
            read = read.saturating_add(1);
            let (seq, pending) = msg
                .info()
                .map_or((0, 0), |i| (i.stream_sequence, i.pending));
            if let Ok(mut a) = domain::alert(msg.subject.as_str(), &msg.payload, now_ms, &s.limits)
                && s.names.alert(&mut a)
                && q.state.is_none_or(|st| st == a.state)
                && q.machine.is_none_or(|m| m == a.machine_id)
                && q.since
                    .is_none_or(|t| a.timestamp_ms >= t.timestamp_millis())
            {
                events.push((seq, a));
            }
            if pending == 0 || read >= budget {
                break;
            }
        }
    }
    events.sort_by_key(|(seq, a)| std::cmp::Reverse((a.timestamp_ms, *seq)));
    events.truncate(usize::try_from(s.config.alerts_limit.clamp(1, 100_000)).unwrap_or(500));
    let rows: Vec<Value> = events
        .into_iter()
        .map(|(seq, a)| {
            json!({
                "id": seq,
                "machine_id": a.machine_id,
                "rule": a.rule,
                "severity": a.severity,
                "state": a.state,
                "metric": a.metric,
                "value": a.value,
                "threshold": a.threshold,
                "since_ms": a.since_ms,
                "timestamp_ms": a.timestamp_ms,
                "message": a.message,
                // No silences at the edge (the hub's bucket is not sourced).
                "muted": false,
            })
        })
        .collect();
    Ok(json!({ "alerts": rows }))
}
