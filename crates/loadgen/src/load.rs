//! Publishing a fleet's snapshots through a real hub at a steady rate, as
//! the agents would: JetStream publishes with the Msg-Id `<machine>:<seq>`,
//! acks awaited (a bounded number in flight), a failed or timed-out publish
//! sent again with the same Msg-Id (the hub drops the copy if the first one
//! was stored after all).
//!
//! A snapshot's seq is its publish time in microseconds since the Unix epoch
//! (one more than the machine's last where the clock has not moved on): it
//! rises per machine as the contract wants, no two runs share one, and a
//! receiver computes publish→receipt latency from the seq alone.
//! `Report::seqs` holds every seq sent, per machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use prost::Message as _;
use serde::Serialize;
use sysmonstm_schemas::headers;

use crate::fleet::Sim;

#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Snapshots per machine per second.
    pub rate_hz: f64,
    pub duration: Duration,
    /// Publishes awaiting their ack at most.
    pub in_flight: usize,
    pub ack_timeout: Duration,
}

/// Called for each snapshot as it is handed to the connection.
pub trait Observer: Send + Sync {
    fn published(&self, _machine: usize, _seq: u64, _at: Instant) {}
}

impl Observer for () {}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub machines: usize,
    pub rate_hz: f64,
    pub seconds: f64,
    pub offered: u64,
    pub acked: u64,
    /// Acks the hub marked as duplicates (a resend of something it had).
    pub duplicates: u64,
    pub resent: u64,
    /// Offered per second of the run.
    pub offered_per_s: Vec<u64>,
    /// Acked per second of the run.
    pub acked_per_s: Vec<u64>,
    /// Snapshots sent per machine (index as in the fleet).
    pub sent: Vec<u64>,
    /// The seqs sent, per machine.
    #[serde(skip)]
    pub seqs: Vec<Vec<u64>>,
}

struct Pending {
    subject: String,
    msg_id: String,
    payload: Bytes,
    tries: u32,
}

async fn send(
    js: &jetstream::Context,
    p: &Pending,
) -> Result<jetstream::context::PublishAckFuture, async_nats::jetstream::context::PublishError> {
    js.send_publish(
        p.subject.clone(),
        PublishMessage::build()
            .message_id(p.msg_id.as_str())
            .payload(p.payload.clone()),
    )
    .await
}

type Attempt = std::pin::Pin<Box<dyn std::future::Future<Output = (Pending, Option<bool>)> + Send>>;

/// Awaits `fut`'s ack (or, with none, sends `p` again after a backoff and
/// awaits that): `Some(duplicate)` once acked, `None` on an error or timeout.
fn attempt(
    js: jetstream::Context,
    p: Pending,
    fut: Option<jetstream::context::PublishAckFuture>,
    timeout: Duration,
) -> Attempt {
    Box::pin(async move {
        let fut = match fut {
            Some(f) => f,
            None => {
                tokio::time::sleep(Duration::from_millis(50u64 << p.tries.min(5))).await;
                match send(&js, &p).await {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(error = %e, msg_id = %p.msg_id, "resend failed; trying again");
                        return (p, None);
                    }
                }
            }
        };
        let r = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(ack)) => Some(ack.duplicate),
            _ => None,
        };
        (p, r)
    })
}

/// Runs the load; returns when every snapshot offered is acked.
pub async fn run(
    js: jetstream::Context,
    fleet: &[Sim],
    spec: &LoadSpec,
    observer: Arc<dyn Observer>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        spec.rate_hz > 0.0 && spec.rate_hz <= 1000.0,
        "rate must be in (0, 1000] Hz"
    );
    anyhow::ensure!(spec.in_flight > 0, "in_flight must be at least 1");
    let n = fleet.len();
    let period = Duration::from_secs_f64(1.0 / spec.rate_hz);
    let interval_ms = (1000.0 / spec.rate_hz).round().max(1.0) as u32;
    let rounds = (spec.duration.as_secs_f64() * spec.rate_hz).ceil() as u64;
    let total = rounds.saturating_mul(n as u64);
    let secs = spec.duration.as_secs().max(1) as usize + 1;
    let offered_per_s: Arc<Vec<AtomicU64>> =
        Arc::new((0..secs).map(|_| AtomicU64::new(0)).collect());
    let acked_per_s: Arc<Vec<AtomicU64>> = Arc::new((0..secs).map(|_| AtomicU64::new(0)).collect());
    let mut seqs: Vec<Vec<u64>> = vec![Vec::new(); n];

    // Acks are collected by their own task; the channel's bound is the
    // number in flight, so a slow hub slows the sender (as it slows agents).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Pending, jetstream::context::PublishAckFuture)>(
        spec.in_flight,
    );
    let start = Instant::now();
    let ack_js = js.clone();
    let ack_timeout = spec.ack_timeout;
    let acked_series = acked_per_s.clone();
    let acks = tokio::spawn(async move {
        let (mut acked, mut dups, mut resent) = (0u64, 0u64, 0u64);
        let mut waiting = FuturesUnordered::new();
        let mut open = true;
        loop {
            tokio::select! {
                got = rx.recv(), if open => match got {
                    Some((p, fut)) => waiting.push(attempt(ack_js.clone(), p, Some(fut), ack_timeout)),
                    None => open = false,
                },
                Some((mut p, r)) = waiting.next() => match r {
                    Some(duplicate) => {
                        acked += 1;
                        dups += u64::from(duplicate);
                        let s = (start.elapsed().as_secs() as usize).min(acked_series.len() - 1);
                        acked_series[s].fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        // Sent again with the same Msg-Id until it is acked.
                        resent += 1;
                        p.tries = p.tries.saturating_add(1);
                        waiting.push(attempt(ack_js.clone(), p, None, ack_timeout));
                    }
                },
                else => break,
            }
        }
        (acked, dups, resent)
    });

    let mut next: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while next < total {
        tick.tick().await;
        let elapsed = start.elapsed();
        // Publication k is machine k % n in round k / n, at
        // (k / n + (k % n) / n) periods into the run.
        let due = ((elapsed.as_secs_f64() / period.as_secs_f64()) * n as f64) as u64;
        let due = due.min(total);
        while next < due {
            let (m, _round) = ((next % n as u64) as usize, next / n as u64);
            next += 1;
            let sim = &fleet[m];
            if !sim.publishes_at(elapsed, spec.duration) {
                continue;
            }
            let now_us = now_us();
            let seq = seqs[m].last().map_or(now_us, |last| now_us.max(last + 1));
            seqs[m].push(seq);
            let now_ms = i64::try_from(seq / 1000).unwrap_or(i64::MAX);
            let payload = Bytes::from(sim.snapshot(seq, now_ms, interval_ms).encode_to_vec());
            let p = Pending {
                subject: sim.subject.clone(),
                msg_id: headers::msg_id(&sim.id, seq),
                payload,
                tries: 0,
            };
            observer.published(m, seq, Instant::now());
            let fut = loop {
                match send(&js, &p).await {
                    Ok(f) => break f,
                    Err(e) => {
                        tracing::warn!(error = %e, "publish failed; trying again");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            };
            let s = (elapsed.as_secs() as usize).min(offered_per_s.len() - 1);
            offered_per_s[s].fetch_add(1, Ordering::Relaxed);
            tx.send((p, fut))
                .await
                .map_err(|_| anyhow::anyhow!("ack task ended"))?;
        }
    }
    drop(tx);
    let seconds = start.elapsed().as_secs_f64();
    let (acked, duplicates, resent) = acks.await?;
    let sent: Vec<u64> = seqs.iter().map(|s| s.len() as u64).collect();
    let offered = sent.iter().sum();
    Ok(Report {
        machines: n,
        rate_hz: spec.rate_hz,
        seconds,
        offered,
        acked,
        duplicates,
        resent,
        offered_per_s: offered_per_s
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
        acked_per_s: acked_per_s
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
        sent,
        seqs,
    })
}

/// Publishes each machine's facts once (the MACHINES stream), awaiting the
/// acks.
pub async fn publish_info(js: &jetstream::Context, fleet: &[Sim]) -> anyhow::Result<()> {
    let mut acks = FuturesUnordered::new();
    for sim in fleet {
        let payload = Bytes::from(sim.info(now_ms()).encode_to_vec());
        acks.push(std::future::IntoFuture::into_future(
            js.publish(sim.info_subject.clone(), payload).await?,
        ));
        if acks.len() >= 1024 {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(())
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
