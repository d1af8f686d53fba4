//! A wrong credential is bad input like any other: the hub refuses the agent,
//! the agent keeps sampling into its spool, and once it is started with the
//! right credential everything it took arrives, each snapshot once.

use std::collections::BTreeSet;
use std::time::Duration;

use prost::Message as _;
use sysmonstm_agent::AgentConfig;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::{streams, v1};
use sysmonstm_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

const AUTH: &str = r#"authorization {
  users = [
    { user: admin, password: admin-secret }
    { user: agent, password: right-secret }
  ]
}"#;

fn config(url: String, state: &std::path::Path, password: &str) -> AgentConfig {
    AgentConfig {
        machine: Some("locked".into()),
        interval_ms: 100,
        state_dir: Some(state.to_owned()),
        publish_timeout_ms: 300,
        nats: NatsConfig {
            servers: vec![url],
            connect_timeout_s: 1,
            user: Some("agent".into()),
            password: Some(password.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn a_wrong_password_keeps_sampling_and_loses_nothing() {
    sysmonstm_kit::telemetry::init_for_tests();
    let hub = NatsServer::start_with("sync_interval: always", AUTH);
    let url = hub.url();
    let admin = async_nats::ConnectOptions::new()
        .user_and_password("admin".into(), "admin-secret".into())
        .connect(&url)
        .await
        .expect("admin connects");
    let js = async_nats::jetstream::new(admin);
    let limits = streams::MetricsLimits {
        max_bytes: 1 << 30,
        ..Default::default()
    };
    js.create_stream(streams::metrics(&limits))
        .await
        .expect("METRICS");

    // Refused by the hub: the agent neither exits nor stops sampling.
    let state = tempfile::tempdir().expect("tempdir");
    let shutdown = CancellationToken::new();
    let refused = tokio::spawn(sysmonstm_agent::run(
        config(url.clone(), state.path(), "wrong-secret"),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!refused.is_finished(), "the agent keeps running");
    shutdown.cancel();
    let first = refused
        .await
        .expect("no panic")
        .expect("a refused credential is not fatal");
    assert!(first.sampled >= 10, "{first:?}");
    assert_eq!(first.published, 0, "the hub took nothing: {first:?}");
    assert_eq!(
        first.pending_at_exit, first.sampled,
        "all spooled: {first:?}"
    );
    let stored = js
        .get_stream(streams::METRICS)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .state
        .messages;
    assert_eq!(stored, 0);

    // The operator fixes the credential: the spool replays, then 5 more.
    let second = sysmonstm_agent::run(
        AgentConfig {
            count: Some(5),
            publish_timeout_ms: 2000,
            ..config(url, state.path(), "right-secret")
        },
        CancellationToken::new(),
    )
    .await
    .expect("agent ran");
    assert_eq!(second.pending_at_exit, 0, "{second:?}");
    let total = first.sampled + 5;
    let mut stream = js.get_stream(streams::METRICS).await.expect("stream");
    eventually(Duration::from_secs(10), "every snapshot stored", || {
        let mut stream = stream.clone();
        async move { (stream.info().await.ok()?.state.messages == total).then_some(()) }
    })
    .await;
    let info = stream.info().await.expect("info").clone();
    let mut seqs = BTreeSet::new();
    for s in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(s).await.expect("message");
        seqs.insert(v1::Snapshot::decode(m.payload).expect("snapshot").seq);
    }
    assert_eq!(seqs, (1..=total).collect::<BTreeSet<u64>>());
}
