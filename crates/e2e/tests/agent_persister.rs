//! The walking skeleton end to end, on a real nats-server and a real
//! PostgreSQL: the real agent (in-process) → JetStream → the persister →
//! `metrics`. The persister's helpers are its own tests'
//! (`services/persister/tests/common`).

#[path = "../../../services/persister/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use common::*;
use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_persister::Counters;
use sysmonstm_schemas::v1;
use sysmonstm_testkit::{NatsServer, TestDb, eventually};

/// seq, ts (ms), cpu % (absent when /proc/stat did not move between two
/// samples, as under load), memory used, swap total, load1, uptime, processes.
type StoredRow = (i64, i64, Option<f32>, i64, i64, f64, i64, i32);

#[tokio::test]
async fn agent_snapshots_arrive_as_rows_with_the_published_values() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let persister = spawn(config(&nats.url(), db.url()));

    // Record exactly what goes over the wire, to compare with the rows.
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut wire = client
        .subscribe("sysmon.metrics.e2e-box")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    // The persister sets up METRICS and MACHINES before the agent starts.
    let js = js_for(&nats.url()).await;
    eventually(WAIT, "the persister created MACHINES", || async {
        js.get_stream(sysmonstm_schemas::streams::MACHINES)
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    const N: u64 = 25;
    let state = tempfile::tempdir().expect("tempdir");
    let agent_cfg = sysmonstm_agent::AgentConfig {
        machine: Some("e2e-box".into()),
        interval_ms: 40,
        state_dir: Some(state.path().to_owned()),
        count: Some(N),
        nats: sysmonstm_kit::nats::NatsConfig {
            servers: vec![nats.url()],
            ..Default::default()
        },
        ..Default::default()
    };
    let report = sysmonstm_agent::run(agent_cfg, Default::default())
        .await
        .expect("agent runs");
    assert_eq!(
        (report.sampled, report.published, report.pending_at_exit),
        (N, N, 0)
    );

    let mut published: BTreeMap<u64, v1::Snapshot> = BTreeMap::new();
    while published.len() < N as usize {
        let msg = tokio::time::timeout(WAIT, wire.next())
            .await
            .expect("published snapshot seen")
            .expect("subscription open");
        let snap = v1::Snapshot::decode(msg.payload).expect("agent publishes valid snapshots");
        published.insert(snap.seq, snap);
    }

    wait_rows(&pool, N as i64).await;
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT seq, (extract(epoch FROM ts) * 1000)::int8, cpu_percent, mem_used_bytes,
                swap_total_bytes, load1, uptime_s, process_count
         FROM metrics WHERE machine_id = 'e2e-box' ORDER BY seq",
    )
    .fetch_all(&pool)
    .await
    .expect("query");
    assert_eq!(rows.len(), N as usize);
    for (row, (seq, snap)) in rows.iter().zip(&published) {
        let mem = snap.memory.as_ref().expect("memory");
        let load = snap.load.as_ref().expect("load");
        assert_eq!(
            *row,
            (
                *seq as i64,
                snap.timestamp_ms,
                snap.cpu.as_ref().map(|c| c.usage_percent),
                mem.used_bytes as i64,
                mem.swap_total_bytes as i64,
                load.one,
                snap.uptime_s as i64,
                snap.process_count as i32
            )
        );
        assert!(
            mem.total_bytes > 0 && snap.uptime_s > 0,
            "real values, not defaults"
        );
    }
    assert_eq!(Counters::get(&persister.counters.stored), N);

    // The agent's facts are in MACHINES, the latest for its subject.
    let info = js
        .get_stream(sysmonstm_schemas::streams::MACHINES)
        .await
        .expect("MACHINES")
        .get_last_raw_message_by_subject("sysmon.info.e2e-box")
        .await
        .expect("machine info published");
    let info = v1::MachineInfo::decode(info.payload).expect("valid MachineInfo");
    assert_eq!(info.machine_id, "e2e-box");
    assert!(info.core_count >= 1 && info.memory_total_bytes > 0 && !info.agent_version.is_empty());
    persister.stop().await;
}
