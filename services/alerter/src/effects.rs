//! What the engine decided, carried out: events confirmed stored before the
//! pair's state is written, state writes pipelined, snapshots acknowledged
//! cumulatively. Kept apart from the evaluating task so that nothing here
//! (an fsync on the hub, a retry) holds the next evaluation back.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture};
use sysmonstm_schemas::rules::state_key;
use sysmonstm_schemas::{headers, streams};
use tokio::sync::mpsc;

use crate::counters::Counters;
use crate::engine::Change;
use sysmonstm_kit::jetstream as js_kit;

/// One change on its way: the ack of its event (if sent), then its state.
pub(crate) struct InFlight {
    pub(crate) change: Change,
    pub(crate) ack: Option<PublishAckFuture>,
}

/// Most snapshots evaluated before one cumulative ack, and the longest wait.
pub(crate) const ACK_EVERY: usize = 256;
pub(crate) const ACK_FLUSH: Duration = Duration::from_millis(100);

/// Snapshots asked for in one pull from a METRICS partition (async-nats asks
/// again when half are left). Its default, 200, could not catch up on a hub
/// that fsyncs every message once the box was busy: behind by 50 000 at
/// 2 500/s it fell further behind, where 2 000 a pull caught up in 5 s
/// (`just bench catchup`, docs/benchmarks.md). At most this many (~1 MB) wait
/// in the client per partition.
pub(crate) const PULL_BATCH: usize = 2000;

/// Acknowledges `msg` and, the consumer's policy being AckPolicy::All,
/// every snapshot before it. A lost ack only means a redelivery after
/// `ack_wait`, which re-evaluates: events are deduplicated by Msg-Id.
pub(crate) async fn ack_up_to(msg: Option<jetstream::Message>) {
    if let Some(m) = msg
        && let Err(e) = m.ack().await
    {
        tracing::debug!(error = %e, "cumulative ack not sent; those snapshots come again");
    }
}

/// In order: the event is stored (published again until it is), then the
/// pair's state is written. State writes are published without waiting (in
/// order on one connection, so the last write of a key wins) and their acks
/// are checked by [`state_acks`]; waiting for each fsynced write in turn
/// would hold back the events behind it.
pub(crate) async fn confirm_loop(
    js: jetstream::Context,
    mut rx: mpsc::Receiver<InFlight>,
    capacity: usize,
    counters: Arc<Counters>,
) {
    // Bounded like the queue in front: when the hub is slow to ack state
    // writes, this loop waits, and so does evaluation behind it.
    let (acks_tx, acks_rx) = mpsc::channel(capacity.max(1));
    let checker = tokio::spawn(state_acks(acks_rx, Arc::clone(&counters)));
    while let Some(InFlight { change, ack }) = rx.recv().await {
        if let Some(ev) = &change.event {
            // An event that can have no subject is dropped, not retried
            // forever in front of every later one. Ids are validated on the
            // way in, so this is a bug's last line of defence.
            if let Err(e) = ev.address() {
                Counters::add(&counters.publish_retries, 1);
                tracing::error!(error = %e, "alert event dropped");
                continue;
            }
            let mut ack = ack;
            let mut backoff = Duration::from_millis(50);
            loop {
                let ok = match ack.take() {
                    Some(f) => f.await.map_err(|e| e.to_string()),
                    None => Err("not sent".to_owned()),
                };
                match ok {
                    Ok(_) => break,
                    Err(why) => {
                        Counters::add(&counters.publish_retries, 1);
                        tracing::warn!(why, machine = %ev.machine, rule = %ev.rule, "alert event not stored; publishing again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        ack = js_kit::send_alert(&js, ev).await.ok();
                    }
                }
            }
        }
        let key = state_key(&change.machine, &change.rule);
        let subject = streams::alert_state_subject(&key);
        let sent = match &change.record {
            Some(rec) => {
                js.publish(subject, serde_json::to_vec(rec).unwrap_or_default().into())
                    .await
            }
            None => {
                let mut h = async_nats::HeaderMap::new();
                h.insert(headers::KV_OPERATION, headers::KV_DELETE);
                js.publish_with_headers(subject, h, bytes::Bytes::new())
                    .await
            }
        };
        match sent {
            Ok(f) => {
                let _ = acks_tx.send((key, f)).await;
            }
            Err(e) => state_write_failed(&counters, &key, &e.to_string()),
        }
    }
    drop(acks_tx);
    let _ = checker.await;
}

async fn state_acks(mut rx: mpsc::Receiver<(String, PublishAckFuture)>, counters: Arc<Counters>) {
    while let Some((key, f)) = rx.recv().await {
        if let Err(e) = f.await {
            state_write_failed(&counters, &key, &e.to_string());
        }
    }
}

fn state_write_failed(counters: &Counters, key: &str, why: &str) {
    Counters::add(&counters.state_write_errors, 1);
    tracing::warn!(
        key,
        error = why,
        "cannot store alert state; a restart may re-evaluate this pair"
    );
}
