//! The agent against a real hub that goes away: sampling goes on, and once
//! the hub is back every snapshot is in METRICS exactly once.

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message as _;
use sysmonstm_agent::AgentConfig;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::{streams, v1};
use sysmonstm_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

fn agent_config(url: String, state: &std::path::Path, machine: &str) -> AgentConfig {
    AgentConfig {
        machine: Some(machine.into()),
        interval_ms: 50,
        state_dir: Some(state.to_owned()),
        publish_timeout_ms: 500,
        nats: NatsConfig {
            servers: vec![url],
            connect_timeout_s: 1,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A JetStream context on `hub`, with METRICS created as the persister would.
async fn with_metrics(hub: &NatsServer) -> async_nats::jetstream::Context {
    let client = async_nats::connect(hub.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let limits = streams::MetricsLimits {
        max_bytes: 1 << 30,
        ..Default::default()
    };
    js.create_stream(streams::metrics(&limits))
        .await
        .expect("METRICS");
    js
}

/// Every seq stored in METRICS, and how many messages it holds.
async fn stored_seqs(js: &async_nats::jetstream::Context) -> (BTreeSet<u64>, u64) {
    let mut stream = js.get_stream(streams::METRICS).await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let mut seqs = BTreeSet::new();
    for s in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = stream.get_raw_message(s).await {
            let snap = v1::Snapshot::decode(m.payload).expect("valid snapshot");
            seqs.insert(snap.seq);
        }
    }
    (seqs, info.state.messages)
}

#[tokio::test]
async fn hub_down_and_back_leaves_no_gap_and_no_duplicate() {
    sysmonstm_kit::telemetry::init_for_tests();
    let mut hub = NatsServer::start_hub();
    let js = with_metrics(&hub).await;

    let state = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(sysmonstm_agent::run(
        agent_config(hub.url(), state.path(), "flaky"),
        shutdown.clone(),
    ));
    eventually(Duration::from_secs(20), "some snapshots stored", || async {
        let n = js
            .get_stream(streams::METRICS)
            .await
            .ok()?
            .cached_info()
            .state
            .messages;
        (n >= 5).then_some(())
    })
    .await;

    hub.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    hub.restart();

    let client = async_nats::connect(hub.url()).await.expect("reconnect");
    let js = async_nats::jetstream::new(client);
    // Sampling went on while the hub was down: ~40 samples in those 2 s.
    eventually(
        Duration::from_secs(30),
        "the backlog is published",
        || async {
            let (seqs, _) = stored_seqs(&js).await;
            (seqs.len() >= 60).then_some(())
        },
    )
    .await;
    shutdown.cancel();
    let report = agent.await.expect("no panic").expect("agent ran");

    let (seqs, messages) = stored_seqs(&js).await;
    let first = *seqs.first().expect("some");
    let last = *seqs.last().expect("some");
    assert_eq!(first, 1);
    assert_eq!(seqs.len() as u64, last - first + 1, "no gap: {seqs:?}");
    assert_eq!(messages, seqs.len() as u64, "no duplicate");
    assert!(report.sampled >= last && report.dropped == 0, "{report:?}");
}

#[tokio::test]
async fn seq_keeps_growing_across_restarts() {
    sysmonstm_kit::telemetry::init_for_tests();
    let hub = NatsServer::start();
    let js = with_metrics(&hub).await;
    let state = tempfile::tempdir().expect("tempdir");
    for round in 0..2u64 {
        let cfg = AgentConfig {
            count: Some(5),
            ..agent_config(hub.url(), state.path(), "restarts")
        };
        let r = sysmonstm_agent::run(cfg, CancellationToken::new())
            .await
            .expect("agent ran");
        assert_eq!(
            (r.first_seq, r.last_seq, r.published),
            (round * 5 + 1, round * 5 + 5, 5)
        );
        assert_eq!(
            r.duplicates, 0,
            "a restarted agent's snapshots are not taken for duplicates"
        );
    }
    let (seqs, messages) = stored_seqs(&js).await;
    assert_eq!(seqs, (1..=10).collect::<BTreeSet<u64>>());
    assert_eq!(messages, 10);
}
