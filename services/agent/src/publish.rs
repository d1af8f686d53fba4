//! Publishing to JetStream, decoupled from sampling.
//!
//! Samples go into a bounded queue; one task publishes them in order and
//! waits for each ack. A publish that is not acked in time is sent again with
//! the same Msg-Id, so a message stored before its ack got lost is not stored
//! twice (JetStream's duplicate window). Sampling never waits for the network.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One encoded snapshot, ready to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

/// What the publisher did, for logs and tests.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
    pub dropped: AtomicU64,
}

/// The queue between the sampler and the publisher. Bounded: when full, the
/// oldest sample is dropped and counted.
pub struct Queue {
    inner: std::sync::Mutex<VecDeque<Outgoing>>,
    cap: usize,
    notify: Notify,
    pub stats: PublishStats,
}

impl Queue {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: std::sync::Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            notify: Notify::new(),
            stats: PublishStats::default(),
        })
    }

    pub fn push(&self, msg: Outgoing) {
        let dropped = {
            let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = if q.len() >= self.cap {
                q.pop_front()
            } else {
                None
            };
            q.push_back(msg);
            dropped
        };
        if let Some(d) = dropped {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(msg_id = %d.msg_id, dropped_total = n, "pending queue full; oldest snapshot dropped");
        }
        self.notify.notify_one();
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn front(&self) -> Option<Outgoing> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned()
    }

    /// Removes the front only if it is still `msg_id` (it may have been
    /// dropped meanwhile for room).
    fn pop_if(&self, msg_id: &str) {
        let mut q = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if q.front().is_some_and(|m| m.msg_id == msg_id) {
            q.pop_front();
        }
    }
}

/// Publishes the queue's messages in order until `shutdown`, then stops
/// (whatever is still queued is reported, not silently lost).
pub async fn run_publisher(
    js: jetstream::Context,
    queue: Arc<Queue>,
    ack_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Some(msg) = queue.front() else {
            tokio::select! {
                _ = queue.notify.notified() => continue,
                _ = shutdown.cancelled() => break,
            }
        };
        let result = tokio::select! {
            r = publish_once(&js, &msg, ack_timeout) => r,
            _ = shutdown.cancelled() => break,
        };
        match result {
            Ok(duplicate) => {
                if duplicate {
                    queue.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                queue.stats.published.fetch_add(1, Ordering::Relaxed);
                queue.pop_if(&msg.msg_id);
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                let n = queue.stats.retries.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::warn!(msg_id = %msg.msg_id, error = %e, retries_total = n,
                    pending = queue.len(), "publish not acknowledged; will send again with the same Msg-Id");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let left = queue.len();
    if left > 0 {
        tracing::warn!(
            pending = left,
            "stopping with snapshots not yet acknowledged"
        );
    }
}

/// One attempt: send and wait for the ack. `Ok(true)` when JetStream says it
/// already had this Msg-Id.
async fn publish_once(
    js: &jetstream::Context,
    msg: &Outgoing,
    ack_timeout: Duration,
) -> Result<bool, String> {
    let publish = PublishMessage::build()
        .message_id(msg.msg_id.as_str())
        .payload(msg.payload.clone());
    let ack_future = js
        .send_publish(msg.subject.clone(), publish)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(ack_timeout, ack_future).await {
        Ok(Ok(ack)) => Ok(ack.duplicate),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no ack within {ack_timeout:?}")),
    }
}
