//! `just bench catchup`: can a consumer that is behind catch up on a stream
//! that fsyncs every message (`sync_interval: always`, as the hub ships)?
//!
//! One stream on a hub as shipped takes BENCH_RATE (2000) messages/s of
//! ~600 B from BENCH_MACHINES (1000) subjects, each with its Msg-Id and
//! acks awaited (a window of them in flight). After BENCH_BACKLOG_SECONDS
//! (20) several consumers start from the stream's first message, so each
//! begins that many seconds behind, and every second their lag (messages
//! stored and not yet received) is printed for BENCH_SECONDS (60). They
//! differ in one thing at a time:
//!
//! * `pull-all`: durable pull asking for 200 at a time (async-nats'
//!   default), cumulative acks every 256 (the alerter's until now);
//! * `pull-all-2000`: the same asking for 2 000 at a time (the alerter's now);
//! * `pull-explicit`: durable pull, a fetch of up to 1 000 waiting at most
//!   100 ms, each message acked once the batch is handled, then the next
//!   fetch (the persister's writer until now);
//! * `pull-explicit-x2`: two such loops on the consumer;
//! * `pull-explicit-stream`: a continuous pull asking for 2 000 at a time,
//!   cut into batches of up to 1 000 within 100 ms, each acked (the
//!   persister's now);
//! * `pull-none`: durable pull, 200 at a time, no acks;
//! * `pull-none-2000`: durable pull asking for 2 000 at a time, no acks (how
//!   the edge gateway follows the edge's METRICS now);
//! * `pull-ordered`: async-nats' ordered pull consumer, 500 at a time (fixed
//!   by the library), no acks (how the edge gateway followed the edge's
//!   METRICS until now; still its MACHINES and ALERTS);
//! * `push-none`: ordered push, no acks, flow control (how a stream sources
//!   another, as the edge's do).
//!
//! The consumers that are chosen by BENCH_CONSUMERS (comma-separated; all by
//! default) run side by side on the same stream. BENCH_BUSY (2) threads spin
//! for the whole run, so the box is as busy as under `just bench stack` at
//! 6 000 machines, where the difference showed; 0 for a quiet box.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use sysmonstm_testkit::NatsServer;

const STREAM: &str = "CATCHUP";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = env_u64("BENCH_RATE", 2000).max(1);
    let machines = env_u64("BENCH_MACHINES", 1000).max(1);
    let backlog_s = env_u64("BENCH_BACKLOG_SECONDS", 20);
    let seconds = env_u64("BENCH_SECONDS", 60);
    let chosen: Vec<String> = std::env::var("BENCH_CONSUMERS")
        .unwrap_or_else(|_| {
            "pull-all,pull-all-2000,pull-explicit,pull-explicit-x2,pull-explicit-stream,pull-none,pull-none-2000,pull-ordered,push-none"
                .into()
        })
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();

    let busy = env_u64("BENCH_BUSY", 2);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..busy {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut x = 0u64;
            while !stop.load(Ordering::Relaxed) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
    }

    let hub = NatsServer::start_shipped_hub();
    let client = async_nats::connect(hub.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["catchup.>".into()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    println!(
        "one stream, {rate} messages/s from {machines} subjects, hub as shipped, {busy} busy threads; consumers start {backlog_s} s behind: {}",
        chosen.join(", ")
    );

    let last = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn(publish(
        js.clone(),
        rate,
        machines,
        Duration::from_secs(backlog_s + seconds + 1),
        last.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(backlog_s)).await;

    let mut got = Vec::new();
    for name in &chosen {
        let seen = Arc::new(AtomicU64::new(0));
        let client = async_nats::connect(hub.url()).await?;
        let js = jetstream::new(client);
        let s = js.get_stream(STREAM).await?;
        tokio::spawn(run_consumer(name.clone(), s, seen.clone()));
        got.push((name.clone(), seen));
    }

    let mut worst = vec![0u64; got.len()];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut stored_before = last.load(Ordering::Relaxed);
    for t in 1..=seconds {
        tick.tick().await;
        let stored = last.load(Ordering::Relaxed);
        let mut line = format!(
            "t={t:>4}s stored {:>5}/s lag:",
            stored.saturating_sub(stored_before)
        );
        stored_before = stored;
        for (i, (name, seen)) in got.iter().enumerate() {
            let lag = stored.saturating_sub(seen.load(Ordering::Relaxed));
            worst[i] = worst[i].max(lag);
            line.push_str(&format!(" {name} {lag}"));
        }
        println!("{line}");
    }
    let stored = last.load(Ordering::Relaxed);
    println!(
        "after {:.0} s: stored {stored}",
        start.elapsed().as_secs_f64()
    );
    for (i, (name, seen)) in got.iter().enumerate() {
        let lag = stored.saturating_sub(seen.load(Ordering::Relaxed));
        println!(
            "{name:<14} lag at the end {lag:>7}  largest {:>7}  {}",
            worst[i],
            if lag < rate { "caught up" } else { "BEHIND" }
        );
    }
    publisher.abort();
    stop.store(true, Ordering::Relaxed);
    Ok(())
}

/// `rate` messages a second, each with its Msg-Id, at most 1 024 awaiting
/// their acks; `last` is the highest stream sequence acked.
async fn publish(
    js: jetstream::Context,
    rate: u64,
    machines: u64,
    run: Duration,
    last: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let payload = bytes::Bytes::from(vec![b'x'; 600]);
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut n: u64 = 0;
    while started.elapsed() < run {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        while inflight.len() >= 1024 {
            if let Some(r) = inflight.next().await {
                note(&last, r)?;
            }
        }
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", format!("m{n}").as_str());
        let subject = format!("catchup.m{}", n % machines);
        let ack = js.publish_with_headers(subject, h, payload.clone()).await?;
        inflight.push(std::future::IntoFuture::into_future(ack));
        n += 1;
        while let Some(Some(r)) = futures::FutureExt::now_or_never(inflight.next()) {
            note(&last, r)?;
        }
    }
    Ok(())
}

fn note(
    last: &AtomicU64,
    r: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> anyhow::Result<()> {
    let ack = r.context("publish not acked")?;
    last.fetch_max(ack.sequence, Ordering::Relaxed);
    Ok(())
}

async fn run_consumer(name: String, s: stream::Stream, seen: Arc<AtomicU64>) -> anyhow::Result<()> {
    let r = consume(&name, s, seen).await;
    if let Err(e) = &r {
        eprintln!("{name}: {e:#}");
    }
    r
}

/// Notes the stream sequence of `m` as received.
fn mark(seen: &AtomicU64, m: &jetstream::Message) -> anyhow::Result<()> {
    let seq = m.info().map_err(|e| anyhow::anyhow!(e))?.stream_sequence;
    seen.fetch_max(seq, Ordering::Relaxed);
    Ok(())
}

/// Notes every message of `msgs` as received, until it ends or fails.
async fn mark_all<E>(
    mut msgs: impl futures::Stream<Item = Result<jetstream::Message, E>> + Unpin,
    seen: &AtomicU64,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    while let Some(m) = msgs.next().await {
        mark(seen, &m?)?;
    }
    Ok(())
}

async fn consume(name: &str, s: stream::Stream, seen: Arc<AtomicU64>) -> anyhow::Result<()> {
    let pull = |ack_policy| consumer::pull::Config {
        durable_name: Some(name.replace('-', "_")),
        ack_policy,
        max_ack_pending: 50_000,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    match name {
        "pull-all" | "pull-all-2000" => {
            let c = s.create_consumer(pull(consumer::AckPolicy::All)).await?;
            let mut msgs = if name == "pull-all" {
                c.messages().await?
            } else {
                c.stream().max_messages_per_batch(2000).messages().await?
            };
            let mut n = 0;
            while let Some(m) = msgs.next().await {
                let m = m?;
                mark(&seen, &m)?;
                n += 1;
                if n % 256 == 0 {
                    m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                }
            }
        }
        "pull-none" | "pull-none-2000" => {
            let c = s.create_consumer(pull(consumer::AckPolicy::None)).await?;
            let msgs = if name == "pull-none" {
                c.messages().await?
            } else {
                c.stream().max_messages_per_batch(2000).messages().await?
            };
            mark_all(msgs, &seen).await?;
        }
        "pull-explicit" | "pull-explicit-x2" => {
            let c = s
                .create_consumer(pull(consumer::AckPolicy::Explicit))
                .await?;
            let workers = if name == "pull-explicit" { 1 } else { 2 };
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..workers {
                tasks.spawn(fetch_loop(c.clone(), seen.clone()));
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
        }
        "pull-explicit-stream" => {
            let c = s
                .create_consumer(pull(consumer::AckPolicy::Explicit))
                .await?;
            let mut msgs = c.stream().max_messages_per_batch(2000).messages().await?;
            loop {
                let mut got = Vec::with_capacity(1000);
                match msgs.next().await {
                    Some(m) => got.push(m?),
                    None => anyhow::bail!("the pull ended"),
                }
                let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
                while got.len() < 1000 {
                    match tokio::time::timeout_at(deadline, msgs.next()).await {
                        Ok(Some(m)) => got.push(m?),
                        Ok(None) => anyhow::bail!("the pull ended"),
                        Err(_) => break,
                    }
                }
                for m in &got {
                    mark(&seen, m)?;
                    m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
                }
            }
        }
        "pull-ordered" => {
            let c = s
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            mark_all(c.messages().await?, &seen).await?;
        }
        "push-none" => {
            let inbox = s.cached_info().config.name.clone();
            let c = s
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: format!("_catchup.{inbox}.{}", std::process::id()),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            mark_all(c.messages().await?, &seen).await?;
        }
        other => anyhow::bail!("no consumer called {other:?}"),
    }
    Ok(())
}

/// The persister's loop: a pull of up to 1 000 waiting at most 100 ms, each
/// message acknowledged once the batch is handled, and again.
async fn fetch_loop(c: consumer::PullConsumer, seen: Arc<AtomicU64>) -> anyhow::Result<()> {
    loop {
        let mut batch = c
            .batch()
            .max_messages(1000)
            .expires(Duration::from_millis(100))
            .messages()
            .await?;
        let mut got = Vec::with_capacity(1000);
        while let Some(m) = batch.next().await {
            got.push(m.map_err(|e| anyhow::anyhow!(e))?);
        }
        for m in &got {
            mark(&seen, m)?;
            m.ack().await.map_err(|e| anyhow::anyhow!(e))?;
        }
    }
}
