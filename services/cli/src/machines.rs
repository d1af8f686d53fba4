//! `sysmonstm machines`: each machine's facts (MACHINES) and its latest
//! snapshot (METRICS), both read last-per-subject, so the cost does not grow
//! with history.

use std::collections::BTreeMap;

use async_nats::jetstream;
use prost::Message as _;
use serde::Serialize;
use sysmonstm_kit::jetstream::last_per_subject;
use sysmonstm_schemas::{streams, subjects, v1};

use crate::print;

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

pub async fn run(js: &jetstream::Context, json: bool) -> anyhow::Result<()> {
    let mut infos: BTreeMap<String, v1::MachineInfo> = BTreeMap::new();
    for (_, p) in last_per_subject(js, streams::MACHINES, subjects::INFO_ALL).await? {
        if let Ok(i) = v1::MachineInfo::decode(p.as_ref()) {
            infos.insert(i.machine_id.clone(), i);
        }
    }
    let mut snaps: BTreeMap<String, v1::Snapshot> = BTreeMap::new();
    for (subject, p) in last_per_subject(js, streams::METRICS, subjects::METRICS_ALL).await? {
        if let (Some(m), Ok(s)) = (
            subjects::machine_of_metrics(&subject),
            v1::Snapshot::decode(p.as_ref()),
        ) {
            snaps.insert(m.to_owned(), s);
        }
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
