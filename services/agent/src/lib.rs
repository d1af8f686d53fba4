//! sysmonstm-agent: samples this machine every interval and publishes each
//! sample as a protobuf `Snapshot` on `sysmon.metrics.<machine>`.
//!
//! Sampling and publishing are separate tasks joined by a bounded queue, so a
//! slow or absent hub never delays a sample. Every snapshot carries a `seq`
//! that keeps growing across restarts and is published with
//! `Nats-Msg-Id = <machine>:<seq>`, which makes any retry harmless.

pub mod collect;
pub mod config;
pub mod info;
pub mod procfs;
pub mod publish;
pub mod rates;
pub mod seq;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use prost::Message as _;
use sysmonstm_schemas::{headers, subjects};
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;

/// How the run ended, in numbers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RunReport {
    pub sampled: u64,
    pub published: u64,
    pub duplicates: u64,
    pub dropped: u64,
    pub pending_at_exit: usize,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Runs the agent until `shutdown` is cancelled or `config.count` snapshots
/// were taken and published (or could not be within a grace period).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<RunReport> {
    config.validate()?;
    let machine = config.machine_id()?;
    let state_dir = config.state_dir()?;
    let mut seq = seq::SeqStore::open(&state_dir).with_context(|| {
        format!(
            "failed to open the sequence store in {}",
            state_dir.display()
        )
    })?;
    let interval = Duration::from_millis(config.interval_ms);
    let ack_timeout = Duration::from_millis(config.publish_timeout_ms.max(1));

    let mut collector = collect::Collector::new(machine.clone(), config.collect_options())
        .context("cannot read this machine's metrics")?;
    let client = config
        .nats
        .connect(&format!("sysmonstm-agent {machine}"), true)
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    let js_info = js.clone();
    let subject = subjects::metrics(&machine);
    tracing::info!(%machine, %subject, interval_ms = config.interval_ms,
        state_dir = %state_dir.display(), next_seq = seq.last() + 1, "agent started");

    let queue = publish::Queue::new(config.max_pending);
    let stop_publisher = CancellationToken::new();
    let publisher = tokio::spawn(publish::run_publisher(
        js,
        Arc::clone(&queue),
        ack_timeout,
        stop_publisher.clone(),
    ));

    let info_task = tokio::spawn(info::run(
        js_info,
        machine.clone(),
        ack_timeout,
        stop_publisher.clone(),
    ));

    collector.warm_up().await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = RunReport::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let n = seq
            .advance()
            .context("failed to record the next sequence number")?;
        let snap = collector.sample(n);
        queue.push(publish::Outgoing {
            subject: subject.clone(),
            msg_id: headers::msg_id(&machine, n),
            payload: snap.encode_to_vec().into(),
        });
        if report.sampled == 0 {
            report.first_seq = n;
        }
        report.last_seq = n;
        report.sampled += 1;
        if config.count.is_some_and(|c| report.sampled >= c) {
            break;
        }
    }

    // Give what is queued a moment to be acknowledged before leaving.
    let grace = tokio::time::Instant::now() + ack_timeout * 3;
    while !queue.is_empty() && tokio::time::Instant::now() < grace && !shutdown.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_publisher.cancel();
    let _ = publisher.await;
    let _ = info_task.await;
    let _ = client.flush().await;

    report.published = queue.stats.published.load(Ordering::Relaxed);
    report.duplicates = queue.stats.duplicates.load(Ordering::Relaxed);
    report.dropped = queue.stats.dropped.load(Ordering::Relaxed);
    report.pending_at_exit = queue.len();
    tracing::info!(?report, "agent stopped");
    Ok(report)
}

/// One snapshot of this machine, taken now (for `--once --json`).
pub async fn sample_once(config: &AgentConfig) -> anyhow::Result<sysmonstm_schemas::v1::Snapshot> {
    let machine = config.machine_id()?;
    let mut collector = collect::Collector::new(machine, config.collect_options())
        .context("cannot read this machine's metrics")?;
    collector.warm_up().await;
    Ok(collector.sample(0))
}
