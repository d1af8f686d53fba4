//! Failures the notifier recorded on NOTIFICATIONS (it gave up delivering an
//! alert event to a channel) into `notification_failures`, through the
//! durable consumer `persister_notifications`: a batch per pull, one
//! statement, acks after the commit. The key is (event, channel), so a
//! failure recorded again or redelivered adds no row.
//!
//! NOTIFICATIONS is the notifier's: until a notifier has made it, this task
//! waits for it (the persister's credential need not create it, and a hub
//! without a notifier has nothing to store). Each message passes the
//! contract's rule (`schemas::accept`: payload size, machine and channel from
//! the subject and the same in the payload, timestamps not before 2000 nor
//! beyond the skew); one that fails is terminated, counted by reason and
//! logged, and the rest of its batch is stored. One PostgreSQL refuses is
//! terminated and counted too (`refused_by_database`), never retried for ever.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use chrono::{DateTime, TimeZone as _, Utc};
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_schemas::accept::{self, Reject};
use sysmonstm_schemas::{headers, streams, v1};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// The longest error text stored, in characters (the table's CHECK too).
pub const MAX_ERROR_CHARS: usize = 1000;
/// The longest event id or rule accepted, in bytes: an alert event's Msg-Id
/// is a few dozen; a longer one is not the notifier's (and would not fit a
/// primary-key entry).
pub const MAX_ID_BYTES: usize = 512;

/// Why a failure record was refused: the contract's reasons that apply,
/// then this table's own.
pub const FAILURE_REASONS: [&str; 10] = [
    "oversized",
    "decode",
    "subject",
    "machine_id",
    "machine_mismatch",
    "too_old",
    "future",
    "channel_mismatch",
    "field",
    "refused_by_database",
];

/// A record refused for good.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Contract(#[from] Reject),
    #[error("payload names channel {payload:?} but came on the subject of {subject:?}")]
    ChannelMismatch { subject: String, payload: String },
    #[error("{0}")]
    Field(&'static str),
}

impl Refused {
    /// The counter label, one of [`FAILURE_REASONS`].
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Contract(r) => r.reason(),
            Self::ChannelMismatch { .. } => "channel_mismatch",
            Self::Field(_) => "field",
        }
    }
}

/// One failure as `notification_failures` stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRow {
    pub event_id: String,
    pub channel: String,
    pub machine_id: String,
    pub rule: String,
    pub msg_id: String,
    pub attempts: i64,
    pub error: String,
    pub first_attempt: Option<DateTime<Utc>>,
    pub last_attempt: DateTime<Utc>,
}

/// Checks and decodes one record from `subject`; `msg_id` is its
/// `Nats-Msg-Id`, or the one the contract gives when the header is missing.
pub fn decode(
    subject: &str,
    payload: &[u8],
    msg_id: Option<&str>,
    now_ms: i64,
    limits: &accept::Limits,
) -> Result<FailureRow, Refused> {
    accept::payload_size(payload.len(), limits)?;
    let (machine, channel) = accept::notify_failed_subject(subject)?;
    let mut f =
        v1::NotificationFailure::decode(payload).map_err(|e| Reject::Decode(e.to_string()))?;
    accept::same_machine(&machine, &f.machine_id)?;
    if f.channel != channel.as_str() {
        return Err(Refused::ChannelMismatch {
            subject: channel.as_str().to_owned(),
            payload: f.channel.chars().take(80).collect(),
        });
    }
    if f.event_id.is_empty() || f.rule.is_empty() {
        return Err(Refused::Field("event id or rule missing"));
    }
    if f.event_id.len() > MAX_ID_BYTES || f.rule.len() > MAX_ID_BYTES {
        return Err(Refused::Field("event id or rule too long"));
    }
    accept::timestamp(f.timestamp_ms, now_ms, limits)?;
    // 0: a notifier that does not say when it began.
    let first_attempt = match f.first_attempt_ms {
        0 => None,
        ms => {
            accept::timestamp(ms, now_ms, limits)?;
            Some(at(ms)?)
        }
    };
    let mut msg_id = msg_id.map_or_else(
        || headers::notify_failed_msg_id(&f.event_id, &f.channel),
        str::to_owned,
    );
    if msg_id.len() > 2 * MAX_ID_BYTES {
        return Err(Refused::Field("Msg-Id too long"));
    }
    if let Some((cut, _)) = f.error.char_indices().nth(MAX_ERROR_CHARS) {
        f.error.truncate(cut);
    }
    for s in [&mut f.event_id, &mut f.rule, &mut f.error, &mut msg_id] {
        crate::decode::pg_text(s);
    }
    Ok(FailureRow {
        last_attempt: at(f.timestamp_ms)?,
        first_attempt,
        event_id: f.event_id,
        channel: f.channel,
        machine_id: f.machine_id,
        rule: f.rule,
        msg_id,
        attempts: i64::from(f.attempts),
        error: f.error,
    })
}

/// A time `accept::timestamp` passed (2000 .. now + skew), as chrono's.
fn at(ms: i64) -> Result<DateTime<Utc>, Refused> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or(Refused::Contract(Reject::TooOld(ms)))
}

/// Inserts the failures; returns how many were new.
pub async fn insert(pool: &PgPool, rows: &[FailureRow]) -> Result<u64, sqlx::Error> {
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    let r = sqlx::query(
        "INSERT INTO notification_failures (event_id, channel, machine_id, rule, msg_id,
             attempts, error, first_attempt_at, last_attempt_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
             $6::int8[], $7::text[], $8::timestamptz[], $9::timestamptz[])
         ON CONFLICT (event_id, channel) DO NOTHING",
    )
    .bind(col!(event_id))
    .bind(col!(channel))
    .bind(col!(machine_id))
    .bind(col!(rule))
    .bind(col!(msg_id))
    .bind(col!(attempts))
    .bind(col!(error))
    .bind(col!(first_attempt))
    .bind(col!(last_attempt))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Waits for NOTIFICATIONS, binds the consumer, and stores failures until
/// shutdown. A pull that fails binds again: the stream is the notifier's and
/// may have been removed and made anew, taking the consumer with it.
pub async fn run(
    js: jetstream::Context,
    pool: PgPool,
    counters: Arc<Counters>,
    ack_wait: Duration,
    limits: accept::Limits,
    max_backoff: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(consumer) = bind(&js, ack_wait, max_backoff, &shutdown).await else {
            return;
        };
        let (pool, counters, shutdown) = (&pool, &counters, &shutdown);
        let keep = |m| store(pool, counters, m, &limits, max_backoff, shutdown);
        let again = crate::pull_until_failure(
            &consumer,
            streams::NOTIFICATIONS,
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

/// Checks a pulled batch, stores what passes and acks it, terminates the
/// rest; false if shut down meanwhile (then nothing more is acked).
async fn store(
    pool: &PgPool,
    counters: &Counters,
    msgs: Vec<jetstream::Message>,
    limits: &accept::Limits,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let now_ms = Utc::now().timestamp_millis();
    let mut rows = Vec::with_capacity(msgs.len());
    let mut accepted = Vec::with_capacity(msgs.len());
    for m in msgs {
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
            .map(|v| v.as_str().to_owned());
        match decode(&m.subject, &m.payload, id.as_deref(), now_ms, limits) {
            Ok(r) => {
                rows.push(r);
                accepted.push(m);
            }
            Err(why) => reject(counters, &m, why.reason(), why.to_string()).await,
        }
    }
    crate::rows::store::<Failures>(pool, &rows, &accepted, counters, max_backoff, shutdown).await
}

/// `notification_failures`, for [`crate::rows::store`].
struct Failures;

impl crate::rows::Table for Failures {
    type Row = FailureRow;
    const WHAT: &'static str = "notification failures";

    fn insert(
        pool: &PgPool,
        rows: &[FailureRow],
    ) -> impl std::future::Future<Output = Result<u64, sqlx::Error>> + Send {
        insert(pool, rows)
    }

    fn stored(counters: &Counters, new: u64, old: u64) {
        Counters::add(&counters.notification_failures_stored, new);
        Counters::add(&counters.notification_failures_duplicates, old);
    }

    fn refused(counters: &Counters, m: &jetstream::Message, e: &sqlx::Error) {
        count_refused(counters, m, "refused_by_database", &e.to_string());
    }
}

/// The consumer on NOTIFICATIONS, once the stream exists. An absent stream
/// is the usual start (no notifier yet) and is waited for quietly; other
/// errors (the hub away) are retried with back-off. `None` if shut down.
async fn bind(
    js: &jetstream::Context,
    ack_wait: Duration,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<PullConsumer> {
    let mut backoff = Duration::from_millis(100);
    let mut said_waiting = false;
    loop {
        match js.get_stream(streams::NOTIFICATIONS).await {
            Ok(stream) => {
                let c = stream
                    .get_or_create_consumer(
                        streams::PERSISTER_NOTIFICATIONS_CONSUMER,
                        streams::persister_notifications_consumer(ack_wait),
                    )
                    .await;
                match c {
                    Ok(c) => {
                        tracing::info!("storing notification failures from NOTIFICATIONS");
                        return Some(c);
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff,
                        "cannot set up the consumer on NOTIFICATIONS"),
                }
            }
            Err(e) if not_found(&e) => {
                if !said_waiting {
                    said_waiting = true;
                    tracing::info!(error = %e,
                        "NOTIFICATIONS is not there yet (the notifier makes it); waiting for it");
                }
            }
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff,
                "cannot look up NOTIFICATIONS"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

fn not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

async fn reject(counters: &Counters, m: &jetstream::Message, reason: &'static str, why: String) {
    count_refused(counters, m, reason, &why);
    if let Err(e) = m.ack_with(AckKind::Term).await {
        tracing::warn!(error = %e, "terminating a refused message failed; it will come back");
    }
}

fn count_refused(counters: &Counters, m: &jetstream::Message, reason: &'static str, why: &str) {
    counters
        .rejected_notification
        .with_label_values(&[reason])
        .inc();
    tracing::warn!(subject = %m.subject, bytes = m.payload.len(), reason, error = %why,
        "notification failure record refused and terminated");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;
    const SUBJECT: &str = "sysmon.notify.failed.web01.hook";

    fn failure() -> v1::NotificationFailure {
        v1::NotificationFailure {
            event_id: "web01:cpu_high:1799999990000:firing".into(),
            machine_id: "web01".into(),
            rule: "cpu_high".into(),
            channel: "hook".into(),
            attempts: 4,
            error: "HTTP 500".into(),
            timestamp_ms: NOW - 1000,
            first_attempt_ms: NOW - 5000,
        }
    }

    fn check(subject: &str, f: &v1::NotificationFailure) -> Result<FailureRow, Refused> {
        decode(
            subject,
            &f.encode_to_vec(),
            None,
            NOW,
            &accept::Limits::default(),
        )
    }

    #[test]
    fn a_failure_becomes_its_row() {
        let row = check(SUBJECT, &failure()).expect("valid");
        assert_eq!(
            row.msg_id,
            "web01:cpu_high:1799999990000:firing:hook:failed"
        );
        assert_eq!((row.attempts, row.error.as_str()), (4, "HTTP 500"));
        assert_eq!(
            row.first_attempt.map(|t| t.timestamp_millis()),
            Some(NOW - 5000)
        );
        assert_eq!(row.last_attempt.timestamp_millis(), NOW - 1000);
        let none = v1::NotificationFailure {
            first_attempt_ms: 0,
            ..failure()
        };
        assert_eq!(check(SUBJECT, &none).expect("valid").first_attempt, None);
    }

    #[test]
    fn each_kind_of_garbage_has_its_reason() {
        let cases: Vec<(&str, v1::NotificationFailure, &str)> = vec![
            ("sysmon.notify.failed.web01", failure(), "subject"),
            ("sysmon.notify.failed.WEB.hook", failure(), "machine_id"),
            (
                "sysmon.notify.failed.other.hook",
                failure(),
                "machine_mismatch",
            ),
            (
                "sysmon.notify.failed.web01.mail",
                failure(),
                "channel_mismatch",
            ),
            (
                SUBJECT,
                v1::NotificationFailure {
                    event_id: String::new(),
                    ..failure()
                },
                "field",
            ),
            (
                SUBJECT,
                v1::NotificationFailure {
                    rule: "r".repeat(MAX_ID_BYTES + 1),
                    ..failure()
                },
                "field",
            ),
            (
                SUBJECT,
                v1::NotificationFailure {
                    timestamp_ms: 5,
                    ..failure()
                },
                "too_old",
            ),
            (
                SUBJECT,
                v1::NotificationFailure {
                    first_attempt_ms: i64::MAX,
                    ..failure()
                },
                "future",
            ),
        ];
        for (subject, f, reason) in cases {
            let e = check(subject, &f).expect_err(reason);
            assert_eq!(e.reason(), reason, "{subject}: {e}");
            assert!(FAILURE_REASONS.contains(&e.reason()));
        }
        let e = decode(
            SUBJECT,
            b"\xff\xff\xff",
            None,
            NOW,
            &accept::Limits::default(),
        )
        .expect_err("garbage");
        assert_eq!(e.reason(), "decode");
        let big = vec![0u8; accept::DEFAULT_MAX_PAYLOAD_BYTES + 1];
        let e = decode(SUBJECT, &big, None, NOW, &accept::Limits::default()).expect_err("big");
        assert_eq!(e.reason(), "oversized");
    }

    #[test]
    fn long_error_text_is_cut_and_nul_replaced() {
        let f = v1::NotificationFailure {
            error: "é\0".repeat(MAX_ERROR_CHARS),
            ..failure()
        };
        let row = check(SUBJECT, &f).expect("valid");
        assert_eq!(row.error.chars().count(), MAX_ERROR_CHARS);
        assert!(!row.error.contains('\0'));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Any bytes on any subject: a row or a reason from the fixed set,
        /// never a panic.
        #[test]
        fn any_bytes_are_a_row_or_a_known_reason(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            subject in "sysmon\\.notify\\.failed\\.[a-z0-9.]{0,12}",
        ) {
            if let Err(e) = decode(&subject, &payload, None, NOW, &accept::Limits::default()) {
                prop_assert!(FAILURE_REASONS.contains(&e.reason()), "{e}");
            }
        }

        /// Any field values in a well-formed record: a row whose text
        /// PostgreSQL can hold and whose times lie in 2000 ..= now + skew,
        /// or a known reason.
        #[test]
        fn any_record_is_a_storable_row_or_a_known_reason(
            event_id in "[ -~\\x00é]{0,40}",
            error in "[ -~\\x00é]{0,1200}",
            id in proptest::option::of("[ -~\\x00]{0,40}"),
            attempts in any::<u32>(),
            ts in any::<i64>(),
            first in prop_oneof![Just(0i64), any::<i64>(), (NOW - 10_000)..NOW],
        ) {
            let f = v1::NotificationFailure {
                event_id, error, attempts, timestamp_ms: ts, first_attempt_ms: first,
                ..failure()
            };
            let l = accept::Limits::default();
            match decode(SUBJECT, &f.encode_to_vec(), id.as_deref(), NOW, &l) {
                Ok(r) => {
                    for s in [&r.event_id, &r.error, &r.msg_id] {
                        prop_assert!(!s.contains('\0'));
                    }
                    prop_assert!(r.error.chars().count() <= MAX_ERROR_CHARS);
                    prop_assert_eq!(r.attempts, i64::from(attempts));
                    let ms = r.last_attempt.timestamp_millis();
                    prop_assert!((accept::EARLIEST_MS..=NOW + l.max_future_skew_ms).contains(&ms));
                }
                Err(e) => prop_assert!(FAILURE_REASONS.contains(&e.reason()), "{e}"),
            }
        }
    }
}
