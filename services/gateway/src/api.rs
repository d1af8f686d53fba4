//! The REST handlers. Latest values come from the moka caches the feeds
//! fill; history and alerts from PostgreSQL; rules from the KV bucket. Bad
//! input is a 400 that names the parameter; a database that cannot answer is
//! a 503; nothing a caller sends leads to a 500.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Row as _;
use sqlx::postgres::types::PgInterval;
use sysmonstm_schemas::streams;

use crate::domain::{Info, Summary};
use crate::error::ApiError;
use crate::params;
use crate::state::{Counters, Shared};

type Q = Result<Query<HashMap<String, String>>, QueryRejection>;
type ApiResult = Result<Response, ApiError>;

fn query(shared: &Shared, q: Q) -> Result<HashMap<String, String>, ApiError> {
    Counters::inc(&shared.counters.http_requests);
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad("query", format!("malformed query string: {e}")))
}

/// Counts and logs a 400 on its way out.
pub(crate) fn counted<T>(shared: &Shared, r: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &r {
        if e.status == StatusCode::BAD_REQUEST {
            Counters::inc(&shared.counters.http_bad_requests);
            if shared.logs.bad_requests.allow("bad request") {
                tracing::info!(parameter = ?e.parameter, error = %e.error, "bad request");
            }
        } else if e.status == StatusCode::SERVICE_UNAVAILABLE {
            Counters::inc(&shared.counters.http_db_errors);
        }
    }
    r
}

#[derive(Serialize)]
struct MachineRow<'a> {
    machine_id: &'a str,
    hostname: Option<&'a str>,
    online: bool,
    last_seen_ms: Option<i64>,
    latest: Option<&'a Summary>,
}

pub async fn machines(State(s): State<Arc<Shared>>, q: Q) -> ApiResult {
    counted(
        &s,
        async {
            let q = query(&s, q)?;
            params::only(&q, &["limit", "after"])?;
            let (limit, after) = params::page(&q)?;
            let now = Utc::now().timestamp_millis();
            let mut ids: Vec<Arc<String>> = s.latest.iter().map(|(k, _)| k).collect();
            // At the edge the list is the window's: MACHINES keeps facts
            // for ever, METRICS a day, and a machine gone for a month is
            // not shown.
            if !s.config.edge {
                ids.extend(s.info.iter().map(|(k, _)| k));
            }
            ids.sort();
            ids.dedup();
            // A page: the machines after `after`, at most `limit`, and where
            // the next page starts if more are left.
            if let Some(a) = &after {
                let start = ids.partition_point(|id| id.as_str() <= a.as_str());
                ids.drain(..start);
            }
            let mut next_after = None;
            if let Some(n) = limit.filter(|n| ids.len() > *n) {
                ids.truncate(n);
                next_after = ids.last().map(|id| id.as_str().to_owned());
            }
            let latest: Vec<_> = ids.iter().map(|id| s.latest.get(id.as_str())).collect();
            let infos: Vec<_> = ids.iter().map(|id| s.info.get(id.as_str())).collect();
            let rows: Vec<MachineRow<'_>> = ids
                .iter()
                .zip(latest.iter().zip(infos.iter()))
                .map(|(id, (l, i))| MachineRow {
                    machine_id: id.as_str(),
                    hostname: i.as_ref().map(|i| i.0.hostname.as_str()),
                    online: l.as_ref().is_some_and(|l| s.online(l, now)),
                    last_seen_ms: l.as_ref().map(|l| l.detail.summary.timestamp_ms),
                    latest: l.as_ref().map(|l| &l.detail.summary),
                })
                .collect();
            Ok(Json(json!({ "machines": rows, "next_after": next_after })).into_response())
        }
        .await,
    )
}

#[derive(Serialize)]
struct MachineDetail<'a> {
    machine_id: &'a str,
    online: bool,
    last_seen_ms: Option<i64>,
    info: Option<&'a Info>,
}

pub async fn machine(State(s): State<Arc<Shared>>, Path(id): Path<String>, q: Q) -> ApiResult {
    counted(
        &s,
        async {
            params::only(&query(&s, q)?, &[])?;
            let id = params::machine(&id)?;
            let latest = s.latest.get(id.as_str());
            let info = s.info.get(id.as_str());
            if latest.is_none() && info.is_none() {
                return Err(ApiError::not_found(format!("no machine {id}")));
            }
            let now = Utc::now().timestamp_millis();
            Ok(Json(MachineDetail {
                machine_id: id.as_str(),
                online: latest.as_ref().is_some_and(|l| s.online(l, now)),
                last_seen_ms: latest.as_ref().map(|l| l.detail.summary.timestamp_ms),
                info: info.as_ref().map(|i| &i.0),
            })
            .into_response())
        }
        .await,
    )
}

pub async fn metrics_latest(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    q: Q,
) -> ApiResult {
    counted(
        &s,
        async {
            params::only(&query(&s, q)?, &[])?;
            let id = params::machine(&id)?;
            match s.latest.get(id.as_str()) {
                Some(l) => {
                    Counters::inc(&s.counters.latest_hits);
                    Ok(Json(&l.detail).into_response())
                }
                None => {
                    Counters::inc(&s.counters.latest_misses);
                    Err(ApiError::not_found(format!("no snapshot of machine {id}")))
                }
            }
        }
        .await,
    )
}

pub async fn history(State(s): State<Arc<Shared>>, Path(id): Path<String>, q: Q) -> ApiResult {
    counted(
        &s,
        async {
            let q = query(&s, q)?;
            let id = params::machine(&id)?;
            let hq = params::history(&q, Utc::now(), s.config.history_max_points)?;
            let key = (
                id.as_str().to_owned(),
                hq.metric.clone(),
                hq.from.timestamp_millis(),
                hq.to.timestamp_millis(),
                hq.step_s,
            );
            if let Some(hit) = s.history.get(&key).await {
                Counters::inc(&s.counters.history_hits);
                return Ok(Json(hit.as_ref()).into_response());
            }
            Counters::inc(&s.counters.history_misses);
            let answer = Arc::new(if s.config.edge {
                crate::edge::history(&s, &id, &hq).await?
            } else {
                query_history(&s, id.as_str(), &hq).await?
            });
            s.history.insert(key, Arc::clone(&answer)).await;
            Ok(Json(answer.as_ref()).into_response())
        }
        .await,
    )
}

async fn query_history(
    s: &Shared,
    machine: &str,
    hq: &params::HistoryQuery,
) -> Result<Value, ApiError> {
    let step = PgInterval {
        months: 0,
        days: 0,
        microseconds: hq.step_s.saturating_mul(1_000_000),
    };
    let rows = sqlx::query("SELECT * FROM sysmon_history($1,$2,$3,$4,$5)")
        .bind(machine)
        .bind(&hq.metric)
        .bind(hq.from)
        .bind(hq.to)
        .bind(step)
        .fetch_all(pool(s)?)
        .await
        .map_err(|e| db_error(e, "metric"))?;
    let mut ts = Vec::with_capacity(rows.len());
    let (mut avg, mut min, mut max) = (Vec::new(), Vec::new(), Vec::new());
    let mut resolution = None;
    for r in &rows {
        let t: DateTime<Utc> = r.try_get("ts").map_err(|e| db_error(e, "metric"))?;
        ts.push(t.timestamp_millis());
        avg.push(r.try_get::<Option<f64>, _>("avg").ok().flatten());
        min.push(r.try_get::<Option<f64>, _>("min").ok().flatten());
        max.push(r.try_get::<Option<f64>, _>("max").ok().flatten());
        if resolution.is_none() {
            resolution = r.try_get::<Option<String>, _>("resolution").ok().flatten();
        }
    }
    Ok(json!({
        "machine_id": machine,
        "metric": hq.metric,
        "from_ms": hq.from.timestamp_millis(),
        "to_ms": hq.to.timestamp_millis(),
        "step_s": hq.step_s,
        "resolution": resolution,
        "points": ts.len(),
        "ts": ts, "avg": avg, "min": min, "max": max,
    }))
}

/// The database pool; the edge has none (its handlers never get here).
fn pool(s: &Shared) -> Result<&sqlx::PgPool, ApiError> {
    s.pool
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("no database at the edge"))
}

/// SQLSTATE 22023 (invalid_parameter_value) is `sysmon_history` refusing a
/// parameter: the caller's fault. Anything else is the database's.
fn db_error(e: sqlx::Error, parameter: &str) -> ApiError {
    if let sqlx::Error::Database(d) = &e
        && d.code().as_deref() == Some("22023")
    {
        return ApiError::bad(parameter, d.message().to_owned());
    }
    tracing::warn!(error = %e, "database query failed");
    ApiError::unavailable(format!("database unavailable: {e}"))
}

pub async fn alerts(State(s): State<Arc<Shared>>, q: Q) -> ApiResult {
    counted(&s, async {
        let q = query(&s, q)?;
        params::only(&q, &["state", "since", "machine"])?;
        let state = q.get("state");
        if let Some(st) = state
            && !params::ALERT_STATES.contains(&st.as_str())
        {
            return Err(ApiError::bad(
                "state",
                format!("unknown state {st:?}; one of {}", params::ALERT_STATES.join(", ")),
            ));
        }
        let since = q.get("since").map(|t| params::time("since", t)).transpose()?;
        let machine = q
            .get("machine")
            .map(|m| params::machine(m).map_err(|_| ApiError::bad("machine", "not a machine id")))
            .transpose()?;
        if s.config.edge {
            let q = crate::edge::AlertsQuery {
                state: state.map(String::as_str),
                since,
                machine: machine.as_ref().map(|m| m.as_str()),
            };
            return Ok(Json(crate::edge::alerts(&s, &q).await?).into_response());
        }
        let rows = sqlx::query(
            "SELECT id, machine_id, rule, severity, state, metric, value, threshold, since, ts, message \
             FROM alerts WHERE ($1::text IS NULL OR state = $1) AND ($2::timestamptz IS NULL OR ts >= $2) \
             AND ($3::text IS NULL OR machine_id = $3) ORDER BY ts DESC, id DESC LIMIT $4",
        )
        .bind(state)
        .bind(since)
        .bind(machine.as_ref().map(|m| m.as_str()))
        // A configured value PostgreSQL would refuse (negative) or that
        // would make one answer unbounded is brought into range.
        .bind(s.config.alerts_limit.clamp(1, 100_000))
        .fetch_all(pool(&s)?)
        .await
        .map_err(|e| db_error(e, "state"))?;
        let alerts: Vec<Value> = rows.iter().map(|r| alert_row(r, &s.silences)).collect();
        Ok(Json(json!({ "alerts": alerts })).into_response())
    }
    .await)
}

/// A stored event, marked muted when a silence still in the bucket covered
/// it at the event's time (as `sysmonstm alerts watch` marks it).
fn alert_row(r: &sqlx::postgres::PgRow, silences: &crate::silences::Silences) -> Value {
    let ms = |c: &str| {
        r.try_get::<Option<DateTime<Utc>>, _>(c)
            .ok()
            .flatten()
            .map(|t| t.timestamp_millis())
    };
    let text = |c: &str| r.try_get::<Option<String>, _>(c).ok().flatten();
    let num = |c: &str| r.try_get::<Option<f64>, _>(c).ok().flatten();
    let silence = match (text("machine_id"), text("rule"), ms("ts")) {
        (Some(m), Some(rule), Some(ts)) => silences.muting(&m, &rule, ts),
        _ => None,
    };
    let mut row = json!({
        "muted": silence.is_some(),
        "id": r.try_get::<i64, _>("id").ok(),
        "machine_id": text("machine_id"),
        "rule": text("rule"),
        "severity": text("severity"),
        "state": text("state"),
        "metric": text("metric"),
        "value": num("value"),
        "threshold": num("threshold"),
        "since_ms": ms("since"),
        "timestamp_ms": ms("ts"),
        "message": text("message"),
    });
    if let (Some(silence), Some(o)) = (silence, row.as_object_mut()) {
        o.insert("silence".into(), json!(silence));
    }
    row
}

/// The latest event of every (machine, rule) seen on ALERTS: what is firing
/// now, without the database.
pub async fn alerts_live(State(s): State<Arc<Shared>>, q: Q) -> ApiResult {
    counted(
        &s,
        async {
            params::only(&query(&s, q)?, &[])?;
            let mut events: Vec<_> = s.alerts.iter().map(|(_, a)| a).collect();
            events.sort_by_key(|a| std::cmp::Reverse(a.0.timestamp_ms));
            let events: Vec<_> = events.iter().map(|a| &a.0).collect();
            Ok(Json(json!({ "alerts": events })).into_response())
        }
        .await,
    )
}

pub async fn rules(State(s): State<Arc<Shared>>, q: Q) -> ApiResult {
    counted(&s, async {
        params::only(&query(&s, q)?, &[])?;
        let kv = match s.js.get_key_value(streams::RULES_BUCKET).await {
            Ok(kv) => kv,
            // No bucket yet: no rules.
            Err(e) if e.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket => {
                return Ok(Json(Vec::<Value>::new()).into_response());
            }
            Err(e) => return Err(ApiError::unavailable(format!("rules unavailable: {e}"))),
        };
        let keys: Vec<String> = match kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(|e| ApiError::unavailable(format!("rules unavailable: {e}")))?,
            Err(e) => return Err(ApiError::unavailable(format!("rules unavailable: {e}"))),
        };
        let mut out = Vec::with_capacity(keys.len());
        let mut sorted = keys;
        sorted.sort();
        let values = futures::stream::iter(sorted)
            .then(|k| {
                let kv = kv.clone();
                async move { (kv.get(&k).await, k) }
            })
            .collect::<Vec<_>>()
            .await;
        for (v, k) in values {
            match v {
                Ok(Some(bytes)) => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        Counters::inc(&s.counters.rules_bad_values);
                        tracing::warn!(rule = %k, error = %e, "rule value is not JSON; skipped");
                    }
                },
                Ok(None) => {}
                Err(e) => return Err(ApiError::unavailable(format!("rules unavailable: {e}"))),
            }
        }
        Ok(Json(out).into_response())
    }
    .await)
}

pub async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when NATS is connected and PostgreSQL answers (the edge has no
/// PostgreSQL: `"postgres": null`, and NATS alone decides).
pub async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let nats = s.nats.connection_state() == async_nats::connection::State::Connected;
    let pg = match &s.pool {
        Some(pool) => Some(
            tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
        ),
        None => None,
    };
    let status = if nats && pg != Some(false) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "nats": nats, "postgres": pg }))).into_response()
}

/// What the dashboard needs to know of this gateway: whether it may offer
/// writes (the rules editor) at all. The edge is read-only.
pub async fn mode(State(s): State<Arc<Shared>>, q: Q) -> ApiResult {
    counted(
        &s,
        async {
            params::only(&query(&s, q)?, &[])?;
            let edge = s.config.edge;
            Ok(Json(json!({ "edge": edge, "read_only": edge })).into_response())
        }
        .await,
    )
}

pub async fn prometheus(State(s): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus(),
    )
        .into_response()
}

/// Unknown API paths get a JSON 404, not the dashboard.
pub async fn api_not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
