//! Publishing to JetStream from the spool, decoupled from sampling.
//!
//! The sampler appends every snapshot to the [`Spool`]; this task sends what
//! the spool holds, in seq order, and acknowledges it there once JetStream
//! has. A publish that is not acked in time is sent again with the same
//! Msg-Id, so a message stored before its ack got lost is not stored twice
//! (JetStream's duplicate window). While the hub answers, up to `window`
//! publishes are in flight at once, so a backlog (a replay after an outage)
//! drains fast; after a failure one message probes until the hub is back.
//! Sampling never waits for the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use sysmonstm_kit::telemetry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::spool::{Record, Spool};

/// What the publisher did, for logs and tests.
#[derive(Debug, Default)]
pub struct PublishStats {
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
    pub retries: AtomicU64,
}

/// The spool shared by the sampler (appends) and the publisher (reads, acks).
pub struct Shared {
    pub spool: Mutex<Spool>,
    pub notify: Notify,
    pub stats: PublishStats,
}

impl Shared {
    pub fn new(spool: Spool) -> Arc<Self> {
        Arc::new(Self {
            spool: Mutex::new(spool),
            notify: Notify::new(),
            stats: PublishStats::default(),
        })
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Spool> {
        self.spool.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishes the spool's records in order until `shutdown`.
pub async fn run_publisher(
    js: jetstream::Context,
    shared: Arc<Shared>,
    ack_timeout: Duration,
    window: usize,
    shutdown: CancellationToken,
) {
    let window = window.max(1);
    let mut backoff = Duration::from_millis(50);
    let mut healthy = true;
    loop {
        let batch = {
            let mut spool = shared.lock();
            let acked = spool.acked();
            spool.peek(acked, if healthy { window } else { 1 })
        };
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = shared.notify.notified() => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        let result = tokio::select! {
            r = publish_batch(&js, &shared, &batch, ack_timeout) => r,
            _ = shutdown.cancelled() => break,
        };
        match result {
            Ok(()) => {
                healthy = true;
                backoff = Duration::from_millis(50);
            }
            Err((rec, e)) => {
                healthy = false;
                let n = shared.stats.retries.fetch_add(1, Ordering::Relaxed) + 1;
                let pending = shared.lock().stats().pending;
                tracing::warn!(msg_id = %rec.msg_id, error = %e, retries_total = n, pending,
                    "publish not acknowledged; will send again with the same Msg-Id");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    let spool = shared.lock();
    let pending = spool.stats().pending;
    if pending > 0 {
        tracing::info!(
            pending,
            "stopping with snapshots not yet acknowledged; they stay in the spool for the next start"
        );
    }
}

/// Sends every record of `batch`, then waits for their acks in order and
/// acknowledges each in the spool. Stops at the first failure, returning the
/// record it failed on.
async fn publish_batch(
    js: &jetstream::Context,
    shared: &Shared,
    batch: &[Record],
    ack_timeout: Duration,
) -> Result<(), (Record, String)> {
    let deadline = tokio::time::Instant::now() + ack_timeout;
    let mut acks = Vec::with_capacity(batch.len());
    // One `publish` span per snapshot when traces are exported (none, and
    // no header, otherwise); its context goes with the message.
    let mut spans = Vec::new();
    for rec in batch {
        let mut publish = PublishMessage::build()
            .message_id(rec.msg_id.as_str())
            .payload(rec.payload.clone());
        let span = telemetry::producer_span(|| {
            tracing::info_span!("publish", otel.kind = "producer", seq = rec.seq,
                subject = %rec.subject)
        });
        telemetry::inject(&span, |k, v| {
            publish = std::mem::take(&mut publish).header(k, v)
        });
        if !span.is_none() {
            spans.push(span);
        }
        let sent = tokio::time::timeout_at(deadline, js.send_publish(rec.subject.clone(), publish));
        match sent.await {
            Ok(Ok(ack)) => acks.push(ack),
            Ok(Err(e)) => return Err((rec.clone(), e.to_string())),
            Err(_) => {
                return Err((
                    rec.clone(),
                    format!("could not send within {ack_timeout:?}"),
                ));
            }
        }
    }
    for (rec, ack) in batch.iter().zip(acks) {
        match tokio::time::timeout_at(deadline, ack).await {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                shared.stats.published.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = shared.lock().ack(rec.seq) {
                    tracing::error!(error = %e, seq = rec.seq, "cannot record an ack in the spool");
                }
            }
            Ok(Err(e)) => return Err((rec.clone(), e.to_string())),
            Err(_) => return Err((rec.clone(), format!("no ack within {ack_timeout:?}"))),
        }
    }
    Ok(())
}
