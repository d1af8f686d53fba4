//! The live feeds from JetStream: METRICS, MACHINES and ALERTS. Each starts
//! with the last message of every subject (the latest snapshot / facts /
//! alert of every machine), read by an ordered consumer, and then follows
//! new messages: MACHINES and ALERTS through that consumer, METRICS through
//! a plain subscription (see [`follow_metrics`]). Each message is checked
//! and decoded at the edge (`domain`, by the `schemas::accept` rule), stored
//! in the moka caches and fanned out to the WebSocket clients, its frames
//! encoded once. A refused message is counted by feed and reason and logged;
//! it touches no cache and no client.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use sysmonstm_schemas::accept::Reject;
use sysmonstm_schemas::{streams, subjects};
use tokio_util::sync::CancellationToken;

use crate::domain;
use crate::state::{Counters, Latest, Shared, Update};

/// Most updates put on the fan-out channel as one batch.
const MAX_BATCH: usize = 256;

/// Snapshots asked for at a time by the edge gateway's pull on the edge's
/// METRICS (as the alerter asks the hub's).
const EDGE_PULL_BATCH: usize = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Metrics,
    Machines,
    Alerts,
}

impl Kind {
    /// The `feed` label of the reject counter.
    fn label(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Machines => "machines",
            Self::Alerts => "alerts",
        }
    }
}

/// Starts the three feeds, the forget follower and the silences follower;
/// they run until `shutdown`.
pub fn spawn(shared: &Arc<Shared>, shutdown: &CancellationToken) {
    // Forget requests and silences are the hub's: neither reaches the edge,
    // whose credential may not read them.
    if !shared.config.edge {
        let s = Arc::clone(shared);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = follow_forget(&s) => {}
                _ = stop.cancelled() => {}
            }
        });
        let s = Arc::clone(shared);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::silences::follow(s) => {}
                _ = stop.cancelled() => {}
            }
        });
        tokio::spawn(sysmonstm_kit::jetstream::watch_unread_metrics(
            shared.js.clone(),
            shared.config.metrics_partitions,
            "shown",
            shared.counters.metrics_streams_unread.clone(),
            shutdown.clone(),
        ));
    }
    for kind in [Kind::Metrics, Kind::Machines, Kind::Alerts] {
        let shared = Arc::clone(shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = follow(&shared, kind) => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Follows one stream for ever, setting the consumer up again after any
/// error (hub restart, stream not created yet) with a capped back-off.
async fn follow(shared: &Shared, kind: Kind) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match follow_once(shared, kind, &mut backoff).await {
            Ok(()) => tracing::warn!(?kind, "feed ended; following again"),
            Err(e) => tracing::warn!(?kind, error = %e, retry_in = ?backoff, "feed not available"),
        }
        Counters::inc(&shared.counters.feed_restarts);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn follow_once(shared: &Shared, kind: Kind, backoff: &mut Duration) -> anyhow::Result<()> {
    let js = &shared.js;
    if shared.config.edge {
        return follow_edge(shared, kind, backoff).await;
    }
    // METRICS carries the persister's retention settings, so only the
    // persister creates it (each of its partitions); the parameter-free
    // MACHINES and ALERTS may be created by whoever needs them first
    // (contract).
    let (stream, filter) = match kind {
        Kind::Metrics => {
            let parts = shared.config.metrics_partitions;
            let streams = sysmonstm_kit::jetstream::metrics_streams(js, parts).await?;
            return follow_metrics(shared, &streams, backoff).await;
        }
        Kind::Machines => (
            js.get_or_create_stream(shared.config.replicas.stream(streams::machines()))
                .await?,
            subjects::INFO_ALL,
        ),
        Kind::Alerts => (
            js.get_or_create_stream(shared.config.replicas.stream(streams::alerts()))
                .await?,
            subjects::ALERTS_ALL,
        ),
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    tracing::info!(?kind, "following");
    *backoff = Duration::from_millis(100);
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        apply(shared, kind, msg.subject.as_str(), &msg.payload);
    }
    Ok(())
}

/// At the edge, every feed is an ordered consumer on the edge's stream of
/// the same name: no plain `sysmon.metrics.*` message crosses the leaf link,
/// and the edge's credential may not subscribe to one anyway. The last
/// message of every subject first (every machine seen in the retained
/// window: its latest snapshot, facts and alert events), then each new one
/// as the edge stores it. The streams are made by `sysmonstm edge setup`;
/// until they exist the feed waits (the edge gateway creates nothing). The
/// edge's one METRICS sources every partition of the hub's and keeps their
/// subjects, `sysmon.metrics.<p>.<m>` when the hub's is split: its filter
/// takes both forms.
async fn follow_edge(shared: &Shared, kind: Kind, backoff: &mut Duration) -> anyhow::Result<()> {
    let (name, filter) = match kind {
        Kind::Metrics => (streams::METRICS, subjects::METRICS_LIVE),
        Kind::Machines => (streams::MACHINES, subjects::INFO_ALL),
        Kind::Alerts => (streams::ALERTS, subjects::ALERTS_ALL),
    };
    let stream = shared.js.get_stream(name).await?;
    let mut messages = match kind {
        // Snapshots come at the fleet's rate (thousands a second); an
        // ordered consumer asks for 500 at a time (fixed by async-nats), and
        // on a busy box that falls behind for good once behind at ~4 000/s
        // (`just bench catchup`, docs/benchmarks.md). A plain ephemeral pull
        // of EDGE_PULL_BATCH with no acks keeps up. It has no gap check: a
        // snapshot missed is replaced by the machine's next one a second
        // later, and a broken pull ends this feed, which then starts again
        // from the latest of every machine.
        Kind::Metrics => stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: filter.to_owned(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(60),
                // Its position is worth nothing after a restart: kept in
                // memory, as an ordered consumer's is, not written to disk.
                memory_storage: true,
                ..Default::default()
            })
            .await?
            .stream()
            .max_messages_per_batch(EDGE_PULL_BATCH)
            .messages()
            .await?
            .map(|m| m.map_err(anyhow::Error::from))
            .boxed(),
        // Facts and alert events are few, and each one counts (a missed
        // "resolved" would leave an alert shown): an ordered consumer,
        // which notices a gap and starts again where it was.
        Kind::Machines | Kind::Alerts => stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?
            .messages()
            .await?
            .map(|m| m.map_err(anyhow::Error::from))
            .boxed(),
    };
    tracing::info!(?kind, stream = name, "following the edge's stream");
    *backoff = Duration::from_millis(100);
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        let mut batch: Vec<Update> = decode(shared, kind, msg.subject.as_str(), &msg.payload)
            .into_iter()
            .collect();
        // What the consumer already holds (a burst of machines) goes out as
        // one batch, as on the hub.
        while batch.len() < MAX_BATCH {
            match messages.next().now_or_never() {
                Some(Some(msg)) => {
                    let msg = msg?;
                    batch.extend(decode(shared, kind, msg.subject.as_str(), &msg.payload));
                }
                Some(None) => {
                    send(shared, batch);
                    return Ok(());
                }
                None => break,
            }
        }
        send(shared, batch);
    }
    Ok(())
}

/// Snapshots: the latest of every machine from the streams (every
/// partition of METRICS, read side by side), then live ones from a plain
/// subscription to `sysmon.metrics.>`, which sees a snapshot as published
/// (`sysmon.metrics.<m>`) and as the hub's account maps it to its partition
/// (`sysmon.metrics.<p>.<m>`). A consumer delivers a
/// message only once the hub has stored it — with `sync_interval: always`,
/// after an fsync that takes milliseconds, or far longer on a busy disk —
/// while a subscriber gets it as the hub receives it. The live view needs no
/// more: what it misses while disconnected is replaced by the next snapshot
/// a second later, and what is stored is the persister's business. The
/// subscription is made before the streams are read, so nothing falls in
/// between; [`apply`] keeps the newer of two snapshots of a machine.
async fn follow_metrics(
    shared: &Shared,
    streams: &[jetstream::stream::Stream],
    backoff: &mut Duration,
) -> anyhow::Result<()> {
    let mut live = shared.js.client().subscribe(subjects::METRICS_LIVE).await?;
    let parts = shared.config.metrics_partitions;
    futures::future::try_join_all(
        streams
            .iter()
            .enumerate()
            .map(|(p, stream)| latest_of(shared, stream, parts.filter(p))),
    )
    .await?;
    tracing::info!(kind = ?Kind::Metrics, "following");
    *backoff = Duration::from_millis(100);
    // Snapshots of many machines arrive in bursts: what is already there
    // goes to the clients as one batch, which wakes each client's pump once
    // instead of once per snapshot. Nothing waits to fill a batch.
    while let Some(msg) = live.next().await {
        let mut batch = Vec::new();
        let mut spans = Vec::new();
        fan_out_span(&mut spans, &msg);
        batch.extend(decode(
            shared,
            Kind::Metrics,
            msg.subject.as_str(),
            &msg.payload,
        ));
        while batch.len() < MAX_BATCH {
            match live.next().now_or_never() {
                Some(Some(msg)) => {
                    fan_out_span(&mut spans, &msg);
                    batch.extend(decode(
                        shared,
                        Kind::Metrics,
                        msg.subject.as_str(),
                        &msg.payload,
                    ));
                }
                Some(None) => {
                    send(shared, batch);
                    return Ok(());
                }
                None => break,
            }
        }
        send(shared, batch);
    }
    Ok(())
}

/// The last snapshot of every machine in one METRICS stream (`filter`: the
/// subjects it binds), into the caches.
async fn latest_of(
    shared: &Shared,
    stream: &jetstream::stream::Stream,
    filter: String,
) -> anyhow::Result<()> {
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    if consumer.cached_info().num_pending > 0 {
        let mut latest = consumer.messages().await?;
        while let Some(msg) = latest.next().await {
            let msg = msg?;
            apply(shared, Kind::Metrics, msg.subject.as_str(), &msg.payload);
            if msg.info().map_or(true, |i| i.pending == 0) {
                break;
            }
        }
    }
    Ok(())
}

/// `sysmonstm machines forget <id>` asks every service that keeps state of a
/// machine to drop it (`sysmon.admin.forget.<id>`): here its latest
/// snapshot, facts and alerts leave the caches, every WebSocket client is
/// told to drop its card, and the asker gets an answer.
async fn follow_forget(shared: &Shared) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match shared.nats.subscribe(subjects::FORGET_ALL).await {
            Ok(mut requests) => {
                backoff = Duration::from_millis(100);
                while let Some(msg) = requests.next().await {
                    let answer = match sysmonstm_schemas::accept::forget_subject(&msg.subject) {
                        Ok(m) => {
                            forget(shared, m.as_str());
                            tracing::info!(machine = %m, "machine forgotten on request");
                            format!("gateway: dropped {m} from the live view")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "forget request refused");
                            continue;
                        }
                    };
                    if let Some(reply) = msg.reply {
                        let _ = shared.nats.publish(reply, answer.into()).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot follow forget requests; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Drops `machine` from every cache and tells the WebSocket clients.
pub fn forget(shared: &Shared, machine: &str) {
    shared.latest.invalidate(machine);
    shared.info.invalidate(machine);
    let _writing = shared.alert_writes.lock();
    let prefix = format!("{machine}:");
    let keys: Vec<String> = shared
        .alerts
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.to_string())
        .collect();
    for k in keys {
        shared.alerts.invalidate(&k);
    }
    #[derive(Serialize)]
    struct Gone<'a> {
        machine_id: &'a str,
    }
    let u = Update::Forget {
        machine: machine.to_owned(),
        frame: frame(
            "forget",
            &Gone {
                machine_id: machine,
            },
        ),
    };
    send(shared, vec![u]);
}

/// When traces are exported: a `fan_out` span for a snapshot, the child of
/// the agent's `publish`, open until its batch is on the fan-out channel.
fn fan_out_span(spans: &mut Vec<tracing::Span>, msg: &async_nats::Message) {
    let span = sysmonstm_kit::telemetry::consumer_span(
        msg.headers.as_ref(),
        || tracing::info_span!("fan_out", otel.kind = "consumer", subject = %msg.subject),
    );
    if !span.is_none() {
        spans.push(span);
    }
}

pub(crate) fn frame<T: Serialize>(kind: &str, data: &T) -> Arc<str> {
    #[derive(Serialize)]
    struct Frame<'a, T> {
        #[serde(rename = "type")]
        kind: &'a str,
        data: &'a T,
    }
    // Serialising our own plain structs cannot fail.
    serde_json::to_string(&Frame { kind, data })
        .unwrap_or_default()
        .into()
}

/// Decodes one message into the caches and onto the fan-out channel.
fn apply(shared: &Shared, kind: Kind, subject: &str, payload: &[u8]) {
    // An alert is compared, replaced and sent under `alert_writes`, so a
    // re-marking by the silences can neither overwrite a newer event nor
    // reach the clients after it.
    let _writing = (kind == Kind::Alerts).then(|| shared.alert_writes.lock());
    if let Some(u) = decode(shared, kind, subject, payload) {
        send(shared, vec![u]);
    }
}

/// Puts a batch of updates on the fan-out channel.
pub(crate) fn send(shared: &Shared, batch: Vec<Update>) {
    if !batch.is_empty() {
        // No receiver (no client) is not an error.
        let _ = shared.updates.send(Arc::from(batch));
    }
}

/// Decodes one message into the caches; returns the update for the clients,
/// if any.
fn decode(shared: &Shared, kind: Kind, subject: &str, payload: &[u8]) -> Option<Update> {
    let c = &shared.counters;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let limits = &shared.limits;
    let update = match kind {
        Kind::Metrics => match domain::snapshot(subject, payload, now_ms, limits) {
            Ok(mut detail) => {
                Counters::inc(&c.snapshots);
                if !shared.names.snapshot(&mut detail) {
                    Counters::inc(&c.machines_hidden);
                    return None;
                }
                if shared.config.edge && !shared.config.edge_show_processes {
                    // What runs on a machine is not for the public copy.
                    detail.top_cpu.clear();
                    detail.top_memory.clear();
                }
                let machine = detail.summary.machine_id.clone();
                let stale = shared
                    .latest
                    .get(&machine)
                    .is_some_and(|prev| !supersedes(&detail.summary, &prev.detail.summary));
                if stale {
                    Counters::inc(&c.snapshots_stale);
                    return None;
                }
                let latest = Latest {
                    summary_frame: frame("summary", &detail.summary),
                    detail_frame: frame("snapshot", &detail),
                    received_ms: now_ms,
                    detail,
                };
                let update = Update::Snapshot {
                    machine: machine.clone(),
                    summary_frame: Arc::clone(&latest.summary_frame),
                    detail_frame: Arc::clone(&latest.detail_frame),
                };
                shared.latest.insert(machine, Arc::new(latest));
                update
            }
            Err(e) => {
                rejected(shared, kind, subject, &e);
                return None;
            }
        },
        Kind::Machines => match domain::info(subject, payload, now_ms, limits) {
            Ok(mut info) => {
                Counters::inc(&c.infos);
                if !shared.names.info(&mut info) {
                    Counters::inc(&c.machines_hidden);
                    return None;
                }
                let machine = info.machine_id.clone();
                let f = frame("info", &info);
                shared
                    .info
                    .insert(machine.clone(), Arc::new((info, Arc::clone(&f))));
                Update::Info { machine, frame: f }
            }
            Err(e) => {
                rejected(shared, kind, subject, &e);
                return None;
            }
        },
        Kind::Alerts => match domain::alert(subject, payload, now_ms, limits) {
            Ok(mut alert) => {
                Counters::inc(&c.alerts);
                if !shared.names.alert(&mut alert) {
                    Counters::inc(&c.machines_hidden);
                    return None;
                }
                let key = format!("{}:{}", alert.machine_id, alert.rule);
                shared.silences.mark(&mut alert, now_ms);
                // Last-per-subject replays one event per severity of a rule;
                // keep the newest.
                let newer = shared
                    .alerts
                    .get(&key)
                    .is_some_and(|prev| prev.0.timestamp_ms > alert.timestamp_ms);
                if newer {
                    return None;
                }
                let f = frame("alert", &alert);
                shared
                    .alerts
                    .insert(key.clone(), Arc::new((alert, Arc::clone(&f))));
                Update::Alert { key, frame: f }
            }
            Err(e) => {
                rejected(shared, kind, subject, &e);
                return None;
            }
        },
    };
    Some(update)
}

/// Whether `new` is a later snapshot of its machine than `prev`, the one
/// shown. An agent replaying its spool after an outage sends older snapshots
/// (a lower seq and an older time): they belong to history, not to "latest".
/// The same snapshot may also come twice, from the stream and from the
/// subscription. Anything else is later: a higher seq (the agent's seq only
/// grows, across restarts too) even in the same millisecond or after the
/// agent's clock stepped back, or a later time with a lower seq (an agent
/// that lost its state dir and counts from 1 again). Ordering by time alone
/// dropped the second of two snapshots taken in one millisecond and froze
/// the view of a machine whose clock stepped back until it caught up. The
/// price: right after a clock step back, a duplicate of a snapshot from
/// before the step (an agent's retry) is shown again until the next one, a
/// flicker of one interval rather than a freeze.
fn supersedes(new: &domain::Summary, prev: &domain::Summary) -> bool {
    new.seq > prev.seq || new.timestamp_ms > prev.timestamp_ms
}

/// Counts a refused message by feed and reason, and logs it within the
/// log budget (the subject and error text are bounded).
fn rejected(shared: &Shared, kind: Kind, subject: &str, e: &Reject) {
    let c = &shared.counters;
    Counters::inc(&c.decode_errors);
    c.rejected.inc(kind.label(), e.reason());
    if !shared.logs.feed_rejects.allow("message not taken") {
        return;
    }
    tracing::warn!(
        feed = kind.label(),
        subject = %subject.chars().take(120).collect::<String>(),
        reason = e.reason(),
        error = %e,
        "message not taken"
    );
}
