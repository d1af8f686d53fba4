//! The agent against a real hub that goes away: sampling goes on into the
//! spool, and once the hub is back every snapshot is in METRICS exactly once,
//! even when the agent itself was killed and restarted meanwhile.

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
        interval_ms: 100,
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

/// How many messages METRICS holds now (0 while the hub is away).
async fn stored_count(js: &async_nats::jetstream::Context) -> Option<u64> {
    Some(
        js.get_stream(streams::METRICS)
            .await
            .ok()?
            .cached_info()
            .state
            .messages,
    )
}

/// Asserts METRICS holds every seq from 1 to its last exactly once, and
/// returns the last.
async fn assert_every_seq_once(js: &async_nats::jetstream::Context) -> u64 {
    let (seqs, messages) = stored_seqs(js).await;
    let first = *seqs.first().expect("some");
    let last = *seqs.last().expect("some");
    assert_eq!(first, 1);
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains(s)).collect();
    assert!(missing.is_empty(), "no gap; missing {missing:?}");
    assert_eq!(messages, seqs.len() as u64, "no duplicate");
    last
}

/// The hub is SIGKILLed for 30 s under an agent sampling every 100 ms, then
/// started again on the same store.
#[tokio::test]
async fn hub_down_30s_leaves_no_gap_and_no_duplicate() {
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
        (stored_count(&js).await? >= 5).then_some(())
    })
    .await;

    hub.kill();
    tokio::time::sleep(Duration::from_secs(30)).await;
    hub.restart();

    let client = async_nats::connect(hub.url()).await.expect("reconnect");
    let js = async_nats::jetstream::new(client);
    // ~300 samples were taken while the hub was down; they drain, and live
    // sampling goes on meanwhile.
    eventually(
        Duration::from_secs(60),
        "the backlog is published",
        || async { (stored_count(&js).await? >= 330).then_some(()) },
    )
    .await;
    shutdown.cancel();
    let report = agent.await.expect("no panic").expect("agent ran");

    let last = assert_every_seq_once(&js).await;
    assert!(report.sampled >= last, "{report:?}");
    assert_eq!(report.dropped, 0, "{report:?}");
    // The snapshots taken during the outage said so.
    let stream = js.get_stream(streams::METRICS).await.expect("stream");
    let during = stream.get_raw_message(100).await.expect("a message");
    let snap = v1::Snapshot::decode(during.payload).expect("snapshot");
    assert!(
        snap.agent
            .is_some_and(|a| a.spool_pending > 1 && a.spool_dropped == 0),
        "{:?}",
        snap.agent
    );
}

/// The agent binary, SIGKILLed while the hub is away and started again: the
/// new process replays what the old one spooled, then goes on.
#[tokio::test]
async fn agent_killed_while_hub_is_down_loses_nothing() {
    sysmonstm_kit::telemetry::init_for_tests();
    let mut hub = NatsServer::start_hub();
    let js = with_metrics(&hub).await;
    let state = tempfile::tempdir().expect("tempdir");
    let url = hub.url();
    let spawn_agent = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sysmonstm-agent"))
            .args(["--machine", "killed", "--interval-ms", "100", "--state-dir"])
            .arg(state.path())
            .env_remove("SYSMON_AGENT_CONFIG")
            .env("NATS_URL", &url)
            .env("SYSMON_AGENT_PUBLISH_TIMEOUT_MS", "500")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the agent")
    };
    let mut agent = spawn_agent();
    eventually(Duration::from_secs(20), "some snapshots stored", || async {
        (stored_count(&js).await? >= 5).then_some(())
    })
    .await;

    hub.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    agent.kill().expect("SIGKILL the agent");
    agent.wait().expect("reaped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut agent = spawn_agent();
    tokio::time::sleep(Duration::from_secs(4)).await;
    hub.restart();

    let client = async_nats::connect(hub.url()).await.expect("reconnect");
    let js = async_nats::jetstream::new(client);
    // ~80 samples were taken while the hub was down, by two processes.
    eventually(
        Duration::from_secs(60),
        "the backlog of both processes is published",
        || async { (stored_count(&js).await? >= 110).then_some(()) },
    )
    .await;
    // SIGTERM: a clean stop.
    let _ = std::process::Command::new("kill")
        .arg(agent.id().to_string())
        .status();
    let status = agent.wait().expect("agent exits");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(assert_every_seq_once(&js).await >= 110);
}

/// A spool too small for the outage: the oldest snapshots are dropped and
/// counted, the agent keeps running, and the rest arrive in order.
#[tokio::test]
async fn a_full_spool_drops_the_oldest_and_says_how_many() {
    sysmonstm_kit::telemetry::init_for_tests();
    let state = tempfile::tempdir().expect("tempdir");
    // The hub exists (with METRICS) but is down: every publish fails.
    let mut hub = NatsServer::start_hub();
    drop(with_metrics(&hub).await);
    hub.kill();
    let url = hub.url();
    let cfg = AgentConfig {
        interval_ms: 10,
        count: Some(1100),
        spool_max_mb: 1,
        // Top-50 lists make each snapshot ~1.2 KB: 1100 of them overflow 1 MiB.
        top_n: 50,
        process_every: 1000,
        publish_timeout_ms: 100,
        ..agent_config(url, state.path(), "tiny")
    };
    let first = sysmonstm_agent::run(cfg.clone(), CancellationToken::new())
        .await
        .expect("the agent runs with no hub");
    assert_eq!(first.sampled, 1100);
    assert_eq!(first.published, 0);
    assert!(
        first.dropped > 0,
        "1100 snapshots do not fit 1 MiB: {first:?}"
    );
    assert_eq!(first.dropped + first.pending_at_exit, 1100, "{first:?}");

    // Now a hub on that port: the next start replays what was kept, then
    // takes 20 more.
    hub.restart();
    let client = async_nats::connect(hub.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let second = sysmonstm_agent::run(
        AgentConfig {
            count: Some(20),
            publish_timeout_ms: 2000,
            ..cfg
        },
        CancellationToken::new(),
    )
    .await
    .expect("agent ran");
    assert_eq!(second.first_seq, 1101);
    assert_eq!(second.pending_at_exit, 0, "{second:?}");
    let (seqs, messages) = stored_seqs(&js).await;
    let kept = first.pending_at_exit;
    let expected: BTreeSet<u64> = (1100 - kept + 1..=1120).collect();
    assert_eq!(seqs, expected, "the newest {kept} and the 20 new, in order");
    assert_eq!(messages, kept + 20);
    // The loss is on the wire: the first snapshot after it reports it.
    let mut stream = js.get_stream(streams::METRICS).await.expect("stream");
    let info = stream.info().await.expect("info").clone();
    let msg = stream
        .get_raw_message(info.state.first_sequence + kept)
        .await
        .expect("first new snapshot");
    let snap = v1::Snapshot::decode(msg.payload).expect("snapshot");
    assert_eq!(snap.seq, 1101);
    assert_eq!(
        snap.agent.map_or(0, |a| a.spool_dropped),
        0,
        "the drop counter is per process run"
    );
    let old = stream
        .get_raw_message(info.state.first_sequence + kept - 1)
        .await
        .expect("last spooled snapshot");
    let snap = v1::Snapshot::decode(old.payload).expect("snapshot");
    assert_eq!(snap.seq, 1100);
    assert!(
        snap.agent.is_some_and(|a| a.spool_dropped > 0),
        "snapshots taken after a drop carry the count"
    );
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
