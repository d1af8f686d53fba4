//! sysmonstm-persister: the only writer of the database.
//!
//! It pulls snapshots from the durable consumer `persister` on METRICS in
//! batches, writes each batch with one statement, and acknowledges the
//! messages only after the rows are committed. METRICS split into
//! partitions (`metrics_partitions`) has a consumer `persister` on each
//! stream and writers of its own for each, so a partition that is slow
//! holds back only itself. A message that can never be
//! stored (garbage, wrong subject, absurd timestamp) is terminated, counted and
//! logged; the rest of its batch is stored. A database error acknowledges
//! nothing: the batch is written again, with back-off, until it goes in —
//! unless PostgreSQL refuses its values, when it is written in halves down to
//! the snapshot refused, which is terminated and counted like a rejection.
//!
//! Beside it run: MachineInfo into `machines`, alert events into `alerts`,
//! the notifier's failures into `notification_failures`, storage maintenance (partitions, retention) and the `/metrics` endpoint.

pub mod alerts;
pub mod config;
pub mod copy;
pub mod counters;
pub mod decode;
pub mod machines;
pub mod maintenance;
pub mod notifications;
mod rows;
pub mod store;
mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt as _;
use sysmonstm_kit::telemetry;
use sysmonstm_schemas::streams;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use config::{PersisterConfig, Storage};
use copy::Batch;
pub use counters::Counters;
use decode::{Limits, Rejection};
pub use store::{Mode, migrate, migrate_with};

pub struct Persister {
    config: PersisterConfig,
    counters: Arc<Counters>,
    metrics_addr: Arc<OnceLock<SocketAddr>>,
}

impl Persister {
    pub fn new(config: PersisterConfig) -> Self {
        Self {
            config,
            counters: Arc::default(),
            metrics_addr: Arc::default(),
        }
    }

    /// Live counters, readable while [`run`](Self::run) goes on.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Where `/metrics` listens, once [`run`](Self::run) has bound it.
    pub fn metrics_addr(&self) -> Arc<OnceLock<SocketAddr>> {
        Arc::clone(&self.metrics_addr)
    }

    /// Runs until `shutdown`. Returns an error only for what retrying cannot
    /// mend (a configuration the server refuses); an absent hub or database
    /// is waited for.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.config;
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        let max_backoff = Duration::from_millis(cfg.max_backoff_ms.max(100));
        if !cfg.metrics_listen.is_empty() {
            let addr = sysmonstm_kit::http::serve_ops(
                "persister",
                &cfg.metrics_listen,
                Arc::clone(self.counters.registry()),
                shutdown.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.metrics_listen))?;
            let _ = self.metrics_addr.set(addr);
        }
        let client = cfg.nats.connect("sysmonstm-persister", true).await?;
        let js = jetstream::new(client);

        let Some(consumers) = ensure_consumers(&js, cfg, max_backoff, &shutdown).await else {
            return Ok(());
        };
        // `writers` on each partition: every partition is pulled however
        // slow another is, and while one batch of a partition is written the
        // next is already pulled (one writer a partition, alone, fell behind
        // for good at 2 000 snapshots/s a stream on a busy box: `just bench
        // catchup`, docs/benchmarks.md).
        let writer_count = cfg.writers.max(1) * consumers.len().max(1);
        // One connection per writer, and one each for MachineInfo, alerts,
        // notification failures, maintenance and the rollups' settling.
        let connections = u32::try_from(writer_count).unwrap_or(64) + 5;
        let Some((pool, mode)) = store::connect(
            &cfg.database_url,
            cfg.storage,
            connections,
            max_backoff,
            &shutdown,
        )
        .await?
        else {
            return Ok(());
        };
        tracing::info!(
            batch_size = cfg.batch_size,
            writers = writer_count,
            partitions = consumers.len(),
            ?mode,
            "persister ready"
        );
        let side = self.spawn_side(&js, &pool, mode, consumers.clone(), &shutdown);
        let worker = Arc::new(Worker {
            writer: store::Writer::new(pool, mode),
            counters: Arc::clone(&self.counters),
            limits: cfg.limits(),
            max_backoff,
            batch_size: cfg.batch_size.max(1),
            linger: Duration::from_millis(cfg.linger_ms.max(1)),
        });
        let sources: Vec<_> = consumers
            .iter()
            .map(|(_, c)| Arc::new(tokio::sync::Mutex::new(Source::new(c.clone()))))
            .collect();
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..writer_count {
            let p = i % consumers.len();
            writers.spawn(Arc::clone(&worker).run(
                consumers[p].0.clone(),
                Arc::clone(&sources[p]),
                shutdown.clone(),
            ));
        }
        let last_seen = tokio::spawn(flush_last_seen(Arc::clone(&worker), shutdown.clone()));
        while writers.join_next().await.is_some() {}
        let _ = last_seen.await;
        // What the writers stored last.
        if let Err(e) = worker.writer.flush_last_seen().await {
            tracing::warn!(error = %e, "machines.last_seen not updated at shutdown");
        }
        for t in side {
            let _ = t.await;
        }
        tracing::info!(
            stored = Counters::get(&self.counters.stored),
            rejected = self.counters.rejected_total(),
            "persister stopped"
        );
        Ok(())
    }

    /// The tasks beside the main loop: MachineInfo, alerts, notification
    /// failures, maintenance,
    /// the lag gauge, and on the plain path the rollups' settling.
    fn spawn_side(
        &self,
        js: &jetstream::Context,
        pool: &sqlx::PgPool,
        mode: Mode,
        consumers: Vec<(String, PullConsumer)>,
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let cfg = &self.config;
        let max_backoff = Duration::from_millis(cfg.max_backoff_ms.max(100));
        let ack_wait = Duration::from_secs(cfg.ack_wait_s.max(1));
        let mut side = vec![
            tokio::spawn(machines::run(
                js.clone(),
                pool.clone(),
                Arc::clone(&self.counters),
                cfg.limits(),
                cfg.replicas,
                max_backoff,
                shutdown.clone(),
            )),
            tokio::spawn(machines::follow_forget(
                js.client(),
                pool.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(alerts::run(
                js.clone(),
                pool.clone(),
                Arc::clone(&self.counters),
                ack_wait,
                cfg.replicas,
                max_backoff,
                shutdown.clone(),
            )),
            tokio::spawn(notifications::run(
                js.clone(),
                pool.clone(),
                Arc::clone(&self.counters),
                ack_wait,
                cfg.limits(),
                max_backoff,
                shutdown.clone(),
            )),
            tokio::spawn(maintenance::run(
                pool.clone(),
                mode,
                cfg.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(watch_lag(
                consumers.into_iter().map(|(_, c)| c).collect(),
                Arc::clone(&self.counters),
                shutdown.clone(),
            )),
            tokio::spawn(sysmonstm_kit::jetstream::watch_unread_metrics(
                js.clone(),
                cfg.metrics_partitions,
                "stored",
                self.counters.metrics_streams_unread.clone(),
                shutdown.clone(),
            )),
        ];
        if mode == Mode::Plain {
            side.push(tokio::spawn(maintenance::run_settle(
                pool.clone(),
                Duration::from_millis(cfg.rollup_settle_ms.max(100)),
                shutdown.clone(),
            )));
        }
        side
    }
}

/// A partition's pull, shared by its writers: one takes a batch from it while
/// the others write theirs. A continuous pull asks for the next messages
/// before the last are handled; a fetch per batch (ask, wait, write, ask
/// again) fell behind for good at 2 000 snapshots/s a stream on a busy box
/// (`just bench catchup`, docs/benchmarks.md).
struct Source {
    consumer: PullConsumer,
    msgs: Option<jetstream::consumer::pull::Stream>,
}

impl Source {
    fn new(consumer: PullConsumer) -> Self {
        Self {
            consumer,
            msgs: None,
        }
    }

    /// The next batch: its first message as soon as there is one, then
    /// whatever comes within `linger`, up to `max`. The pull asks for `2 ×
    /// max` at a time, so that many more may wait in this client (and come
    /// again after `ack_wait` if the database keeps them waiting that long;
    /// a row stored twice is one row).
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> anyhow::Result<Vec<jetstream::Message>> {
        let msgs = match &mut self.msgs {
            Some(m) => m,
            None => self.msgs.insert(
                self.consumer
                    .stream()
                    .max_messages_per_batch(max.saturating_mul(2))
                    .messages()
                    .await?,
            ),
        };
        let mut out = Vec::with_capacity(max);
        match msgs.next().await {
            Some(Ok(m)) => out.push(m),
            Some(Err(e)) => {
                // Pulled again from scratch (a consumer made anew, a
                // heartbeat missed): what this one held comes again.
                self.msgs = None;
                anyhow::bail!(e);
            }
            None => {
                self.msgs = None;
                anyhow::bail!("the pull ended");
            }
        }
        let deadline = tokio::time::Instant::now() + linger;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, msgs.next()).await {
                Ok(Some(Ok(m))) => out.push(m),
                Err(_) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(error = %e, "pull interrupted; the batch so far is written");
                    self.msgs = None;
                    break;
                }
                Ok(None) => {
                    self.msgs = None;
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// What each writer task shares: it takes a batch, stores it, acknowledges
/// it, and starts over.
struct Worker {
    writer: store::Writer,
    counters: Arc<Counters>,
    limits: Limits,
    max_backoff: Duration,
    batch_size: usize,
    linger: Duration,
}

impl Worker {
    /// Takes batches from `source`, the consumer `persister` on `stream`.
    async fn run(
        self: Arc<Self>,
        stream: String,
        source: Arc<tokio::sync::Mutex<Source>>,
        shutdown: CancellationToken,
    ) {
        let mut fetch_backoff = Duration::from_millis(100);
        // One batch buffer for the task's life: a batch's ~2 MB of rows are
        // not allocated (and faulted in) again for every pull.
        let mut rows = Batch::with_capacity(self.batch_size);
        while !shutdown.is_cancelled() {
            let batch = tokio::select! {
                b = async {
                    source.lock().await.next_batch(self.batch_size, self.linger).await
                } => b,
                _ = shutdown.cancelled() => break,
            };
            let msgs = match batch {
                Ok(m) => {
                    fetch_backoff = Duration::from_millis(100);
                    m
                }
                Err(e) => {
                    tracing::warn!(error = %e, %stream, retry_in = ?fetch_backoff, "cannot pull from METRICS");
                    tokio::select! {
                        _ = tokio::time::sleep(fetch_backoff) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    fetch_backoff = (fetch_backoff * 2).min(self.max_backoff);
                    continue;
                }
            };
            if !msgs.is_empty() {
                rows.clear();
                self.handle_batch(msgs, &mut rows, &shutdown).await;
            }
        }
    }

    /// Sorts a batch into rows and rejects, terminates the rejects, stores the
    /// rows (retrying until it works or shutdown), then acknowledges them.
    async fn handle_batch(
        &self,
        msgs: Vec<jetstream::Message>,
        rows: &mut Batch,
        shutdown: &CancellationToken,
    ) {
        let limits = self.limits;
        let c = &self.counters;
        let started = Instant::now();
        let now = chrono::Utc::now();
        let mut accepted: Vec<jetstream::Message> = Vec::with_capacity(msgs.len());
        // When traces are exported: a `store` span per snapshot, the child of
        // the agent's `publish`, open until its batch is written (dropped at
        // the end of this function). Nothing otherwise.
        let mut spans = Vec::new();
        for msg in msgs {
            Counters::add(&c.received, 1);
            if msg.info().is_ok_and(|i| i.delivered > 1) {
                Counters::add(&c.redelivered, 1);
            }
            let span = telemetry::consumer_span(
                msg.headers.as_ref(),
                || tracing::info_span!("store", otel.kind = "consumer", subject = %msg.subject),
            );
            match rows.push(msg.subject.as_str(), &msg.payload, now, limits) {
                Ok(()) => accepted.push(msg),
                Err(why) => self.reject(&msg, why).instrument(span.clone()).await,
            }
            if !span.is_none() {
                spans.push(span);
            }
        }

        // The batch in one write; only if PostgreSQL refuses its values, its
        // halves, and theirs, down to the snapshot it refuses, which is
        // terminated so the rest flows (a retried whole batch would stall
        // this writer for ever).
        let mut todo = Vec::with_capacity(16);
        todo.push(0..accepted.len());
        let mut done = vec![false; accepted.len()];
        while let Some(range) = todo.pop() {
            let part;
            let batch = if range.len() == rows.len() {
                &*rows
            } else {
                part = rows.part(range.clone());
                &part
            };
            let Some(written) = self
                .write_patiently(batch, &accepted, &done, shutdown)
                .await
            else {
                // Unacknowledged: JetStream redelivers them later.
                return;
            };
            match written {
                Ok(()) => {
                    for m in &accepted[range.clone()] {
                        if let Err(e) = m.ack().await {
                            // The row is committed; a lost ack means a
                            // redelivery that ON CONFLICT turns into nothing.
                            tracing::debug!(error = %e, "ack not sent");
                        }
                    }
                }
                Err(e) if range.len() == 1 => self.refused(&accepted[range.start], &e).await,
                Err(e) => {
                    tracing::warn!(error = %e, snapshots = range.len(),
                        "PostgreSQL refused the values of a batch; writing it in halves to find the snapshot it refuses");
                    let mid = range.start + range.len() / 2;
                    todo.push(mid..range.end);
                    todo.push(range.start..mid);
                    continue;
                }
            }
            done[range].fill(true);
        }
        c.observe_batch(started.elapsed());
    }

    /// Writes `batch` and counts it. While the database cannot take it (down,
    /// unreachable, out of space, a deadlock …) it tries again with back-off,
    /// keeping the batch's messages (`msgs` not yet `done`) ours with progress
    /// acks; `Some(Err)` when PostgreSQL refuses the values themselves
    /// ([`store::refuses_the_data`]), `None` if shut down meanwhile.
    async fn write_patiently(
        &self,
        batch: &Batch,
        msgs: &[jetstream::Message],
        done: &[bool],
        shutdown: &CancellationToken,
    ) -> Option<Result<(), sqlx::Error>> {
        let c = &self.counters;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.writer.write(batch).await {
                Ok(new) => {
                    Counters::add(&c.stored, new);
                    if new == batch.len() as u64 {
                        Counters::add(&c.rows_stored, batch.row_count());
                    }
                    Counters::add(&c.duplicates, batch.len() as u64 - new);
                    Counters::add(&c.batches, 1);
                    return Some(Ok(()));
                }
                Err(e) if store::refuses_the_data(&e) => return Some(Err(e)),
                Err(e) => {
                    c.db_errors.inc();
                    let n = c.db_errors.get();
                    tracing::warn!(error = %e, rows = batch.len(), db_errors_total = n, retry_in = ?backoff,
                        "database write failed; nothing acknowledged, retrying");
                    // Keep the messages ours while we retry, so they are not
                    // handed to another instance in the meantime.
                    for (m, _) in msgs.iter().zip(done).filter(|(_, d)| !**d) {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }

    /// A snapshot that passed every check but that PostgreSQL refuses on its
    /// own: terminated and counted, as a rejection is.
    async fn refused(&self, msg: &jetstream::Message, e: &sqlx::Error) {
        let c = &self.counters;
        Counters::add(&c.rejected_refused, 1);
        tracing::warn!(subject = %msg.subject, bytes = msg.payload.len(), error = %e,
            rejected_total = c.rejected_total(), "PostgreSQL refused this snapshot; terminated");
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "terminating a refused message failed; it will come back");
        }
    }

    async fn reject(&self, msg: &jetstream::Message, why: Rejection) {
        let c = &self.counters;
        c.rejected.with_label_values(&[why.reason()]).inc();
        tracing::warn!(subject = %msg.subject, bytes = msg.payload.len(), reason = %why,
            rejected_total = c.rejected_total(), "snapshot rejected and terminated");
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "terminating a rejected message failed; it will come back");
        }
    }
}

/// Creates MACHINES, every METRICS stream (one per partition) and the
/// durable consumer on each if they are missing, waiting for the hub while
/// it is away. Returns each METRICS stream's name and consumer, partition 0
/// first; `None` only if shut down meanwhile.
async fn ensure_consumers(
    js: &jetstream::Context,
    cfg: &PersisterConfig,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> Option<Vec<(String, PullConsumer)>> {
    let parts = cfg.metrics_partitions;
    let mut backoff = Duration::from_millis(100);
    loop {
        let attempt = async {
            // The agents' MachineInfo lands here; the persister sets up the
            // hub's streams so a fresh hub needs nothing else.
            let machines = js
                .get_or_create_stream(cfg.replicas.stream(streams::machines()))
                .await?;
            cfg.replicas.check(machines.cached_info());
            let metrics = sysmonstm_kit::jetstream::ensure_metrics(
                js,
                parts,
                cfg.replicas,
                &cfg.metrics_limits(),
            )
            .await?;
            let mut consumers = Vec::with_capacity(metrics.len());
            for (p, stream) in metrics.iter().enumerate() {
                let consumer = stream
                    .get_or_create_consumer(
                        streams::PERSISTER_CONSUMER,
                        jetstream::consumer::pull::Config {
                            filter_subject: parts.filter(p),
                            ..streams::persister_consumer(
                                cfg.max_ack_pending,
                                Duration::from_secs(cfg.ack_wait_s.max(1)),
                            )
                        },
                    )
                    .await?;
                consumers.push((parts.name(p), consumer));
            }
            Ok::<_, anyhow::Error>(consumers)
        };
        match attempt.await {
            Ok(c) => return Some(c),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff,
                "cannot set up METRICS and its consumer"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// `machines.last_seen` follows the rows once a second.
async fn flush_last_seen(worker: Arc<Worker>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = worker.writer.flush_last_seen().await {
            tracing::warn!(error = %e, "machines.last_seen not updated; trying again");
        }
    }
}

/// Keeps the consumers' lag (not yet delivered) and pending acks, summed
/// over the METRICS partitions, on the counters, once a second. A round in
/// which one consumer does not answer leaves the last sums standing.
async fn watch_lag(
    mut consumers: Vec<PullConsumer>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) {
    loop {
        let mut sums = Some((0u64, 0u64));
        for consumer in &mut consumers {
            let Ok(info) = consumer.info().await else {
                sums = None;
                break;
            };
            sums = sums.map(|(lag, pending)| {
                (
                    lag.saturating_add(info.num_pending),
                    pending.saturating_add(info.num_ack_pending as u64),
                )
            });
        }
        if let Some((lag, pending)) = sums {
            Counters::set(&counters.consumer_lag, lag);
            Counters::set(&counters.consumer_ack_pending, pending);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Pulls batches of up to 500 from `consumer` and hands each non-empty one
/// to `store` (false: shut down meanwhile), until shutdown (false) or a
/// failed pull (true: bind the consumer again — its stream may have been
/// removed and made anew, taking the consumer with it). `backoff` is the
/// wait after a failure, doubled up to `max_backoff` and reset by a pull
/// that works. ALERTS and NOTIFICATIONS are followed this way.
pub(crate) async fn pull_until_failure<F, Fut>(
    consumer: &PullConsumer,
    stream: &str,
    backoff: &mut Duration,
    max_backoff: Duration,
    shutdown: &CancellationToken,
    mut store: F,
) -> bool
where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    loop {
        let batch = tokio::select! {
            b = fetch(consumer, 500, Duration::from_millis(500)) => b,
            _ = shutdown.cancelled() => return false,
        };
        match batch {
            Ok(m) => {
                *backoff = Duration::from_millis(100);
                if !m.is_empty() && !store(m).await {
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?*backoff, stream,
                    "cannot pull; binding the consumer again");
                tokio::select! {
                    _ = tokio::time::sleep(*backoff) => {}
                    _ = shutdown.cancelled() => return false,
                }
                *backoff = (*backoff * 2).min(max_backoff);
                return true;
            }
        }
    }
}

/// One pull of up to `max` messages, waiting at most `linger` for them.
pub(crate) async fn fetch(
    consumer: &PullConsumer,
    max: usize,
    linger: Duration,
) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = consumer
        .batch()
        .max_messages(max)
        .expires(linger)
        .messages()
        .await?;
    let mut out = Vec::with_capacity(max);
    while let Some(m) = batch.next().await {
        match m {
            Ok(m) => out.push(m),
            Err(e) => {
                if out.is_empty() {
                    return Err(anyhow::anyhow!(e));
                }
                tracing::debug!(error = %e, "pull ended early");
                break;
            }
        }
    }
    Ok(out)
}
