//! sysmonstm-agent: samples this machine every interval and publishes each
//! sample as a protobuf `Snapshot` on `sysmon.metrics.<machine>`.
//!
//! Sampling and publishing are separate tasks joined by a bounded queue, so a
//! slow or absent hub never delays a sample. Every snapshot carries a `seq`
//! that keeps growing across restarts and is published with
//! `Nats-Msg-Id = <machine>:<seq>`, which makes any retry harmless.

pub mod config;
pub mod info;
pub mod publish;
pub mod seq;
pub mod spool;

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
    pub pending_at_exit: u64,
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
    let spool_dir = state_dir.join("spool");
    let spool = spool::Spool::open(&spool_dir, config.spool_options())
        .with_context(|| format!("failed to open the spool in {}", spool_dir.display()))?;
    let mut next_seq = seq.last().max(spool.last_seq()) + 1;
    let interval = Duration::from_millis(config.interval_ms);
    let ack_timeout = Duration::from_millis(config.publish_timeout_ms.max(1));

    let mut collector =
        sysmonstm_collect::Collector::new(machine.clone(), config.collect_options())
            .context("cannot read this machine's metrics")?;
    // Its credentials let an agent subscribe to its own inbox prefix only
    // (`_INBOX_<machine>`), where JetStream's acks come back.
    let mut nats = config.nats.clone();
    // Under systemd the credentials come through `LoadCredential=`, readable
    // by the agent's dynamic user only: `$CREDENTIALS_DIRECTORY/agent.creds`.
    if nats.creds_file.is_none()
        && let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
    {
        let file = std::path::Path::new(&dir).join("agent.creds");
        if file.is_file() {
            nats.creds_file = Some(file);
        }
    }
    if nats.inbox_prefix.is_none() {
        nats.inbox_prefix = Some(subjects::agent_inbox_prefix(&machine));
    }
    let client = nats
        .connect(&format!("sysmonstm-agent {machine}"), true)
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    let js_info = js.clone();
    let subject = subjects::metrics(&machine);
    tracing::info!(%machine, %subject, interval_ms = config.interval_ms,
        state_dir = %state_dir.display(), next_seq, "agent started");

    let shared = publish::Shared::new(spool);
    let stop_publisher = CancellationToken::new();
    let publisher = tokio::spawn(publish::run_publisher(
        js,
        Arc::clone(&shared),
        ack_timeout,
        config.publish_window,
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
    let mut spool_error_logged = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let n = next_seq;
        let mut snap = collector.sample(n);
        let stats = shared.lock().stats();
        if stats.pending > 0 || stats.dropped > 0 {
            snap.agent = Some(sysmonstm_schemas::v1::AgentStatus {
                spool_pending: stats.pending + 1,
                spool_dropped: stats.dropped,
            });
        }
        let record = spool::Record {
            seq: n,
            subject: subject.clone(),
            msg_id: headers::msg_id(&machine, n),
            payload: snap.encode_to_vec().into(),
        };
        let appended = {
            let mut spool = shared.lock();
            let r = spool.append(record);
            let synced = spool.maybe_sync();
            r.and(synced)
        };
        if let Err(e) = appended {
            // A full or broken disk must not stop the agent; the sample is
            // lost, and said so once until the spool works again.
            if !spool_error_logged {
                tracing::error!(error = %e, seq = n, "cannot write the spool; snapshots are lost until it works again");
                spool_error_logged = true;
            }
        } else {
            spool_error_logged = false;
        }
        next_seq += 1;
        shared.notify.notify_one();
        if report.sampled == 0 {
            report.first_seq = n;
        }
        report.last_seq = n;
        report.sampled += 1;
        if config.count.is_some_and(|c| report.sampled >= c) {
            break;
        }
    }

    // Give what is pending a moment to be acknowledged before leaving; what
    // is not stays in the spool for the next start.
    let grace = tokio::time::Instant::now() + ack_timeout * 3;
    while shared.lock().stats().pending > 0
        && tokio::time::Instant::now() < grace
        && !shutdown.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_publisher.cancel();
    let _ = publisher.await;
    let _ = info_task.await;
    // Flushing waits for a connection; with the hub away it would never return.
    let _ = tokio::time::timeout(ack_timeout, client.flush()).await;
    {
        let mut spool = shared.lock();
        if let Err(e) = spool.sync() {
            tracing::error!(error = %e, "cannot sync the spool at exit");
        }
        let stats = spool.stats();
        report.dropped = stats.dropped;
        report.pending_at_exit = stats.pending;
    }
    if let Err(e) = seq.record(next_seq - 1) {
        tracing::error!(error = %e, "cannot record the last sequence number");
    }
    report.published = shared.stats.published.load(Ordering::Relaxed);
    report.duplicates = shared.stats.duplicates.load(Ordering::Relaxed);
    tracing::info!(?report, "agent stopped");
    Ok(report)
}

/// One snapshot of this machine, taken now (for `--once --json`).
pub async fn sample_once(config: &AgentConfig) -> anyhow::Result<sysmonstm_schemas::v1::Snapshot> {
    let machine = config.machine_id()?;
    let mut collector = sysmonstm_collect::Collector::new(machine, config.collect_options())
        .context("cannot read this machine's metrics")?;
    collector.warm_up().await;
    Ok(collector.sample(0))
}
