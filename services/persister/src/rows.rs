//! Storing a pulled batch of small records (alert events, notification
//! failures) in their table: one statement for the batch, acks after the
//! commit; while the database is away, retried with back-off and progress
//! acks (the messages stay ours); when PostgreSQL refuses the values, one
//! row at a time, so the one it refuses is terminated and counted and the
//! rest stored (retrying the batch would stop every later record).

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// A table the persister fills this way.
pub(crate) trait Table {
    type Row: Sync;
    /// What its rows are, for log lines.
    const WHAT: &'static str;

    /// Inserts the rows; how many were new.
    fn insert(
        pool: &PgPool,
        rows: &[Self::Row],
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;

    /// Counts rows written: `new` of them inserted, `old` there already.
    fn stored(counters: &Counters, new: u64, old: u64);

    /// Counts and logs the message whose row PostgreSQL refused (it is
    /// terminated after).
    fn refused(counters: &Counters, m: &jetstream::Message, e: &sqlx::Error);
}

/// Stores `rows`, each decoded from the message beside it in `msgs`, and
/// acks each stored message; false if shut down meanwhile (then nothing
/// more is acked).
pub(crate) async fn store<T: Table>(
    pool: &PgPool,
    rows: &[T::Row],
    msgs: &[jetstream::Message],
    counters: &Counters,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> bool {
    if rows.is_empty() {
        return true;
    }
    match insert_patiently::<T>(pool, rows, msgs, counters, max_backoff, shutdown).await {
        None => return false,
        Some(Ok(())) => {
            for m in msgs {
                let _ = m.ack().await;
            }
        }
        Some(Err(_)) => {
            for (row, m) in rows.iter().zip(msgs) {
                let one = std::slice::from_ref(row);
                let msg = std::slice::from_ref(m);
                match insert_patiently::<T>(pool, one, msg, counters, max_backoff, shutdown).await {
                    None => return false,
                    Some(Ok(())) => {
                        let _ = m.ack().await;
                    }
                    Some(Err(e)) => {
                        T::refused(counters, m, &e);
                        if let Err(e) = m.ack_with(AckKind::Term).await {
                            tracing::warn!(error = %e,
                                "terminating a refused message failed; it will come back");
                        }
                    }
                }
            }
        }
    }
    true
}

/// Inserts `rows`, retrying with back-off (progress acks keep `msgs` ours)
/// while the database cannot take them; `Some(Err)` when PostgreSQL refuses
/// the values themselves, `None` if shut down meanwhile.
async fn insert_patiently<T: Table>(
    pool: &PgPool,
    rows: &[T::Row],
    msgs: &[jetstream::Message],
    counters: &Counters,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<Result<(), sqlx::Error>> {
    let mut retry = Duration::from_millis(100);
    loop {
        match T::insert(pool, rows).await {
            Ok(new) => {
                T::stored(counters, new, (rows.len() as u64).saturating_sub(new));
                return Some(Ok(()));
            }
            Err(e) if crate::store::refuses_the_data(&e) => return Some(Err(e)),
            Err(e) => {
                Counters::add(&counters.db_errors, 1);
                tracing::warn!(error = %e, retry_in = ?retry, "storing {} failed; retrying", T::WHAT);
                for m in msgs {
                    let _ = m.ack_with(AckKind::Progress).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.cancelled() => return None,
                }
                retry = (retry * 2).min(max_backoff);
            }
        }
    }
}
