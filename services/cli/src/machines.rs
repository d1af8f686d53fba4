//! `sysmonstm machines`: each machine's facts (MACHINES) and its latest
//! snapshot (METRICS, every partition of it: `--metrics-partitions`), both
//! read last-per-subject, so the cost does not grow with history.
//!
//! `sysmonstm machines forget <id>` removes a machine everywhere it is kept:
//! it asks the running services (`sysmon.admin.forget.<id>`: the alerter
//! drops it from memory, resolves its firing alerts and deletes its states;
//! the persister deletes its `machines` row; the gateway drops it from its
//! caches and from every dashboard) and gathers their answers, then
//! purges its subject from METRICS (its partition's stream) and MACHINES
//! and its keys from the alert state bucket, so that no service brings it
//! back at its next start. Its history (rows in `metrics`, events in ALERTS)
//! stays. A machine whose agent still runs comes back with its next
//! snapshot.

use std::collections::BTreeMap;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use clap::Subcommand;
use futures::StreamExt as _;
use prost::Message as _;
use serde::Serialize;
use sysmonstm_kit::jetstream::{ensure_kv, last_per_subject, last_snapshots};
use sysmonstm_schemas::streams::Partitions;
use sysmonstm_schemas::{MachineId, accept, streams, subjects, v1};

use crate::{InvalidInput, print};

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// Remove a machine everywhere it is kept: the alerter's memory and
    /// alert states, its snapshots in METRICS, its facts in MACHINES, its
    /// `machines` row. History (metrics rows, alert events) stays.
    Forget {
        machine: String,
        /// How long to wait for the running services to answer, in
        /// milliseconds (0 ..= 60000).
        #[arg(long, default_value_t = 2000)]
        wait_ms: u64,
    },
}

/// The services that answer a forget request (each answers `<name>: …`).
const ANSWERING: [&str; 3] = ["alerter", "gateway", "persister"];

impl MachinesCommand {
    /// Checks the arguments before anything connects (exit code 2).
    pub fn check(&self) -> anyhow::Result<()> {
        match self {
            MachinesCommand::Forget { machine, wait_ms } => {
                MachineId::parse(machine)
                    .map_err(|e| InvalidInput(format!("machine {machine:?}: {e}")))?;
                if *wait_ms > 60_000 {
                    return Err(InvalidInput(format!(
                        "--wait-ms {wait_ms} is outside 0 ..= 60000"
                    ))
                    .into());
                }
                Ok(())
            }
        }
    }
}

pub async fn run_command(
    js: &jetstream::Context,
    cmd: MachinesCommand,
    parts: Partitions,
) -> anyhow::Result<()> {
    match cmd {
        MachinesCommand::Forget { machine, wait_ms } => {
            let m = MachineId::parse(&machine)
                .map_err(|e| InvalidInput(format!("machine {machine:?}: {e}")))?;
            forget(js, &m, Duration::from_millis(wait_ms.min(60_000)), parts).await
        }
    }
}

async fn forget(
    js: &jetstream::Context,
    m: &MachineId,
    wait: Duration,
    parts: Partitions,
) -> anyhow::Result<()> {
    // The running services first, so that what they still hold in flight
    // is dropped before the streams are purged.
    let client = js.client();
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(subjects::forget(m), inbox, bytes::Bytes::new())
        .await
        .context("cannot ask the services to forget")?;
    client.flush().await?;
    let mut answers: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while !ANSWERING
        .iter()
        .all(|s| answers.iter().any(|a| a.starts_with(&format!("{s}:"))))
    {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(r)) => answers.push(String::from_utf8_lossy(&r.payload).into_owned()),
            _ => break,
        }
    }
    for s in ANSWERING {
        match answers.iter().find(|a| a.starts_with(&format!("{s}:"))) {
            Some(a) => println!("{a}"),
            None => println!("{s}: no answer (not running?); what it keeps is removed below"),
        }
    }
    let purge = |stream: String, filter: String| async move {
        match js.get_stream(&stream).await {
            Ok(s) => s
                .purge()
                .filter(filter)
                .await
                .map(|r| r.purged)
                .with_context(|| format!("cannot purge {m} from {stream}")),
            Err(_) => Ok(0),
        }
    };
    // Its snapshots are in its partition's stream, under the subject the
    // hub's account mapped them to (`METRICS` and `sysmon.metrics.<m>`
    // when not split).
    let metrics = parts.stream_of(m.as_str());
    let snapshots = purge(metrics.clone(), parts.subject_of(m)).await?;
    println!("{metrics}: {snapshots} snapshots of {m} purged");
    let facts = purge(streams::MACHINES.to_owned(), subjects::info(m)).await?;
    println!("MACHINES: {facts} facts of {m} purged");
    let kv = ensure_kv(js, streams::alert_state_bucket()).await?;
    let states = kv
        .stream
        .purge()
        .filter(streams::alert_state_subject(&format!("{m}.*")))
        .await
        .map(|r| r.purged)
        .with_context(|| format!("cannot purge {m} from the alert state bucket"))?;
    println!("alert state: {states} entries of {m} purged");
    println!("forgot {m}; it comes back with its next snapshot if its agent still runs");
    Ok(())
}

/// A machine is "silent" after this many intervals without a snapshot (the
/// example rule `machine_silent` uses the same).
const SILENT_AFTER_INTERVALS: i64 = 3;

#[derive(Serialize)]
struct Row {
    machine: String,
    hostname: String,
    os: String,
    cores: u32,
    last_seen: Option<String>,
    age_s: Option<f64>,
    status: &'static str,
    cpu: Option<f32>,
    memory: Option<f64>,
    load1: Option<f64>,
}

pub async fn run(js: &jetstream::Context, json: bool, parts: Partitions) -> anyhow::Result<()> {
    let mut infos: BTreeMap<String, v1::MachineInfo> = BTreeMap::new();
    // Only what `schemas::accept` takes from a subject: a valid machine id
    // whose payload is its own (anyone can publish a made-up token).
    let mut skipped = 0usize;
    for (subject, p) in last_per_subject(js, streams::MACHINES, subjects::INFO_ALL).await? {
        match (
            accept::info_subject(&subject),
            v1::MachineInfo::decode(p.as_ref()),
        ) {
            (Ok(m), Ok(i)) if accept::same_machine(&m, &i.machine_id).is_ok() => {
                infos.insert(i.machine_id.clone(), i);
            }
            _ => skipped += 1,
        }
    }
    let mut snaps: BTreeMap<String, v1::Snapshot> = BTreeMap::new();
    // The last snapshot of each machine from every partition of METRICS.
    for (subject, p) in last_snapshots(js, parts).await? {
        match (
            accept::metrics_subject(&subject),
            v1::Snapshot::decode(p.as_ref()),
        ) {
            (Ok(m), Ok(s)) if accept::same_machine(&m, &s.machine_id).is_ok() => {
                snaps.insert(s.machine_id.clone(), s);
            }
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        eprintln!(
            "sysmonstm: {skipped} subjects left out: not a valid machine id, or a payload of another machine"
        );
    }
    let now = chrono::Utc::now().timestamp_millis();
    let names: std::collections::BTreeSet<&String> = infos.keys().chain(snaps.keys()).collect();
    let rows: Vec<Row> = names
        .into_iter()
        .map(|m| {
            let info = infos.get(m);
            let snap = snaps.get(m);
            // The payload's timestamp may be anything: saturating, and a
            // clock ahead of ours counts as just seen.
            let age_ms = snap.map(|s| now.saturating_sub(s.timestamp_ms).max(0));
            let interval = snap.map_or(1000, |s| i64::from(s.interval_ms.max(1)));
            let status = match age_ms {
                None => "never seen",
                Some(a) if a > SILENT_AFTER_INTERVALS.saturating_mul(interval) => "silent",
                Some(_) => "online",
            };
            Row {
                machine: m.clone(),
                hostname: info.map(|i| i.hostname.clone()).unwrap_or_default(),
                os: info
                    .map(|i| format!("{} {}", i.os_name, i.os_version))
                    .unwrap_or_default(),
                cores: info.map_or(0, |i| i.core_count),
                last_seen: snap.map(|s| print::rfc3339(s.timestamp_ms)),
                age_s: age_ms.map(|a| a as f64 / 1000.0),
                status,
                cpu: snap.and_then(|s| s.cpu.as_ref()).map(|c| c.usage_percent),
                memory: snap
                    .and_then(|s| s.memory.as_ref())
                    .filter(|m| m.total_bytes > 0)
                    .map(|m| m.used_bytes as f64 * 100.0 / m.total_bytes as f64),
                load1: snap.and_then(|s| s.load.as_ref()).map(|l| l.one),
            }
        })
        .collect();
    if json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("no machines have reported yet");
        return Ok(());
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.machine.clone(),
                r.hostname.clone(),
                r.status.to_owned(),
                opt(r.age_s.map(|a| format!("{a:.0}s ago"))),
                opt(r.cpu.map(|c| format!("{c:.1}%"))),
                opt(r.memory.map(|m| format!("{m:.1}%"))),
                opt(r.load1.map(|l| format!("{l:.2}"))),
                r.os.clone(),
            ]
        })
        .collect();
    print::table(
        &[
            "MACHINE",
            "HOST",
            "STATUS",
            "LAST SEEN",
            "CPU",
            "MEM",
            "LOAD1",
            "OS",
        ],
        &table,
    );
    Ok(())
}
