//! AlertEvents from the ALERTS stream into `alerts`, through the durable
//! consumer `persister_alerts`: a batch per pull, one statement, acks after
//! the commit. `msg_id` is unique, so a redelivered event changes nothing. An
//! event whose values PostgreSQL refuses is terminated and counted, not
//! retried for ever.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::{DateTime, TimeZone as _, Utc};
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_kit::jetstream::Replicas;
use sysmonstm_schemas::{headers, streams, v1};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// One event as `alerts` stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub machine_id: String,
    pub rule: String,
    pub severity: &'static str,
    pub state: &'static str,
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    pub since: DateTime<Utc>,
    pub ts: DateTime<Utc>,
    pub message: String,
    pub msg_id: String,
}

/// Decodes an event; `msg_id` is the message's `Nats-Msg-Id`, or the one the
/// contract defines when the header is missing.
pub fn decode(payload: &[u8], msg_id: Option<&str>) -> Result<AlertRow, String> {
    let mut e = v1::AlertEvent::decode(payload).map_err(|e| format!("not an AlertEvent: {e}"))?;
    let severity = match e.severity() {
        v1::Severity::Info => "info",
        v1::Severity::Warning => "warning",
        v1::Severity::Critical => "critical",
        v1::Severity::Unspecified => return Err("severity unspecified".into()),
    };
    let state = match e.state() {
        v1::AlertState::Firing => "firing",
        v1::AlertState::Resolved => "resolved",
        v1::AlertState::Acknowledged => "acknowledged",
        v1::AlertState::Unspecified => return Err("state unspecified".into()),
    };
    if e.machine_id.is_empty() || e.rule.is_empty() {
        return Err("machine or rule missing".into());
    }
    // Before 2000 is a clock that was never set (and partly outside what
    // PostgreSQL's timestamptz holds), as for snapshots.
    let at = |ms: i64| {
        Utc.timestamp_millis_opt(ms)
            .single()
            .filter(|_| ms >= sysmonstm_schemas::accept::EARLIEST_MS)
            .ok_or_else(|| format!("bad time {ms}"))
    };
    let mut msg_id = msg_id.map(str::to_owned).unwrap_or_else(|| {
        headers::alert_msg_id(&e.machine_id, &e.rule, e.since_ms, e.state(), e.repeat)
    });
    for s in [
        &mut e.machine_id,
        &mut e.rule,
        &mut e.metric,
        &mut e.message,
        &mut msg_id,
    ] {
        crate::decode::pg_text(s);
    }
    Ok(AlertRow {
        since: at(e.since_ms)?,
        ts: at(e.timestamp_ms)?,
        machine_id: e.machine_id,
        rule: e.rule,
        severity,
        state,
        metric: e.metric,
        value: e.value,
        threshold: e.threshold,
        message: e.message,
        msg_id,
    })
}

/// Inserts the events; returns how many were new.
pub async fn insert(pool: &PgPool, rows: &[AlertRow]) -> Result<u64, sqlx::Error> {
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    let r = sqlx::query(
        "INSERT INTO alerts (machine_id, rule, severity, state, metric, value, threshold, since,
             ts, message, msg_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
             $6::float8[], $7::float8[], $8::timestamptz[], $9::timestamptz[], $10::text[],
             $11::text[])
         ON CONFLICT (msg_id) DO NOTHING",
    )
    .bind(col!(machine_id))
    .bind(col!(rule))
    .bind(col!(severity))
    .bind(col!(state))
    .bind(col!(metric))
    .bind(col!(value))
    .bind(col!(threshold))
    .bind(col!(since))
    .bind(col!(ts))
    .bind(col!(message))
    .bind(col!(msg_id))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Pulls ALERTS until shutdown. A pull that fails binds the consumer again:
/// ALERTS may have been removed and made anew (by an operator, or by another
/// service after a removal), taking the consumer with it, and pulling a gone
/// consumer would fail for ever.
pub async fn run(
    js: jetstream::Context,
    pool: PgPool,
    counters: Arc<Counters>,
    ack_wait: Duration,
    replicas: Replicas,
    max_backoff: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(consumer) = bind(&js, ack_wait, replicas, max_backoff, &shutdown).await else {
            return;
        };
        let (pool, counters, shutdown) = (&pool, &counters, &shutdown);
        let keep = |m| store(pool, counters, m, max_backoff, shutdown);
        let again = crate::pull_until_failure(
            &consumer,
            streams::ALERTS,
            &mut backoff,
            max_backoff,
            shutdown,
            keep,
        );
        if !again.await {
            return;
        }
    }
}

/// ALERTS (made if missing) and the consumer on it, retried with back-off
/// while the hub refuses; `None` if shut down meanwhile.
async fn bind(
    js: &jetstream::Context,
    ack_wait: Duration,
    replicas: Replicas,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            let stream = js
                .get_or_create_stream(replicas.stream(streams::alerts()))
                .await?;
            replicas.check(stream.cached_info());
            let c = stream
                .get_or_create_consumer(
                    streams::PERSISTER_ALERTS_CONSUMER,
                    streams::persister_alerts_consumer(ack_wait),
                )
                .await?;
            Ok::<_, anyhow::Error>(c)
        };
        match attempt.await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff,
                "cannot set up ALERTS and its consumer"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// Stores a pulled batch and acks it, terminating what is refused; false
/// if shut down meanwhile (then nothing more is acked).
async fn store(
    pool: &PgPool,
    counters: &Counters,
    msgs: Vec<jetstream::Message>,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let mut rows = Vec::new();
    let mut accepted = Vec::new();
    for m in msgs {
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
            .map(|v| v.as_str().to_owned());
        match decode(&m.payload, id.as_deref()) {
            Ok(r) => {
                rows.push(r);
                accepted.push(m);
            }
            Err(why) => {
                Counters::add(&counters.rejected_alert, 1);
                tracing::warn!(subject = %m.subject, reason = %why, "alert event rejected");
                let _ = m.ack_with(AckKind::Term).await;
            }
        }
    }
    crate::rows::store::<Alerts>(pool, &rows, &accepted, counters, max_backoff, shutdown).await
}

/// `alerts`, for [`crate::rows::store`].
struct Alerts;

impl crate::rows::Table for Alerts {
    type Row = AlertRow;
    const WHAT: &'static str = "alert events";

    fn insert(
        pool: &PgPool,
        rows: &[AlertRow],
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send {
        insert(pool, rows)
    }

    fn stored(counters: &Counters, new: u64, old: u64) {
        Counters::add(&counters.alerts_stored, new);
        Counters::add(&counters.alerts_duplicates, old);
    }

    fn refused(counters: &Counters, m: &jetstream::Message, e: &sqlx::Error) {
        Counters::add(&counters.rejected_alert, 1);
        tracing::warn!(subject = %m.subject, error = %e,
            "PostgreSQL refused this alert event; terminated");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str, since_ms: i64) -> Vec<u8> {
        v1::AlertEvent {
            machine_id: "web01".into(),
            rule: "cpu_high".into(),
            severity: v1::Severity::Warning as i32,
            state: v1::AlertState::Firing as i32,
            message: message.into(),
            since_ms,
            timestamp_ms: 1_800_000_000_000,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn text_postgresql_cannot_hold_is_replaced() {
        let row = decode(&event("cpu\0high", 1_800_000_000_000), Some("id\0")).expect("valid");
        assert_eq!(
            (row.message.as_str(), row.msg_id.as_str()),
            ("cpu\u{fffd}high", "id\u{fffd}")
        );
    }

    #[test]
    fn times_before_2000_are_refused() {
        assert!(decode(&event("x", 946_684_799_999), None).is_err());
        // Far before PostgreSQL's earliest timestamp, which chrono still holds.
        assert!(decode(&event("x", -200_000_000_000_000), None).is_err());
        assert!(decode(&event("x", 946_684_800_000), None).is_ok());
    }
}
