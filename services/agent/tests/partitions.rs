//! METRICS split into partitions (`schemas::streams::Partitions`): the hub's
//! account maps each machine's subject to a partition, and our computation
//! of that partition must be the server's, for every service reads a
//! machine's snapshots from the stream it computes. Checked against a real
//! nats-server, with a mapping in the global account and, as shipped, in
//! the account JWT `sysmonstm creds partitions` writes, with the real agent.

use std::path::Path;
use std::process::{Command, Stdio};

use async_nats::jetstream;
use sysmonstm_kit::creds::{Authority, Role};
use sysmonstm_schemas::streams::{MetricsLimits, Partitions};
use sysmonstm_schemas::{MachineId, subjects};
use sysmonstm_testkit::NatsServer;

/// Test servers have 4 GB of file store.
fn small() -> MetricsLimits {
    MetricsLimits {
        max_bytes: 256 * 1024 * 1024,
        ..MetricsLimits::default()
    }
}

#[tokio::test]
async fn the_server_maps_every_machine_to_the_partition_we_compute() {
    for n in [4, 7] {
        let parts = Partitions::new(n).expect("valid");
        let nats = NatsServer::start_partitioned(parts);
        let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connects"));
        let streams = sysmonstm_kit::jetstream::ensure_metrics(
            &js,
            parts,
            sysmonstm_kit::jetstream::Replicas::ONE,
            &small(),
        )
        .await
        .expect("partition streams");
        assert_eq!(streams.len(), parts.get());
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..300 {
            let m = MachineId::parse(&format!("host-{i}")).expect("valid");
            let ack = js
                .publish(subjects::metrics(&m), "x".into())
                .await
                .expect("published")
                .await
                .expect("stored");
            assert_eq!(ack.stream, parts.stream_of(m.as_str()), "machine {m}");
            seen.insert(ack.stream);
            let stored = streams[parts.of(m.as_str())]
                .get_last_raw_message_by_subject(&parts.subject_of(&m))
                .await
                .expect("stored under the subject we compute");
            assert_eq!(
                subjects::machine_of_metrics(&stored.subject),
                Some(m.as_str())
            );
        }
        assert_eq!(seen.len(), parts.get(), "every partition is used");
    }
}

#[tokio::test]
async fn an_agent_publishes_into_its_partition_with_its_own_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut authority = Authority::init(&dir.path().join("creds")).expect("authority");
    let parts = Partitions::new(4).expect("4");
    authority.set_partitions(parts).expect("partitions");
    // Kept across opens.
    assert_eq!(
        Authority::open(&dir.path().join("creds"))
            .expect("opens")
            .partitions(),
        parts
    );
    let agent = authority.issue(Role::Agent("m1".into())).expect("agent");
    let persister = authority.issue(Role::Persister).expect("persister");
    let nats = NatsServer::start_with("sync_interval: always", &authority.include_line());
    let admin = async_nats::ConnectOptions::with_credentials_file(persister)
        .await
        .expect("reads")
        .connect(nats.url())
        .await
        .expect("persister connects");
    let js = jetstream::new(admin);
    let streams = sysmonstm_kit::jetstream::ensure_metrics(
        &js,
        parts,
        sysmonstm_kit::jetstream::Replicas::ONE,
        &small(),
    )
    .await
    .expect("partition streams");
    js.get_or_create_stream(sysmonstm_schemas::streams::machines())
        .await
        .expect("MACHINES");

    // m1 maps to partition 3 (as the server did by hand); m2 is another
    // machine the agent's credential may not speak for.
    let run = |machine: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-agent"))
            .env_remove("SYSMON_AGENT_CONFIG")
            .args(["--machine", machine, "--count", "2", "--interval-ms", "100"])
            .arg("--state-dir")
            .arg(dir.path().join(format!("state-{machine}")))
            .arg("--server")
            .arg(nats.url())
            .arg("--creds")
            .arg(dir.path().join("creds/users/agent-m1.creds"))
            .env("SYSMON_AGENT_PUBLISH_TIMEOUT_MS", "300")
            .stdout(Stdio::null())
            .output()
            .expect("run the agent");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(Path::new(&agent).exists());
    run("m1");
    let p = parts.of("m1");
    assert_eq!(p, 3);
    let mut s = streams[p].clone();
    let info = s.info().await.expect("info");
    assert_eq!(
        info.state.messages, 2,
        "both snapshots of m1 stored in METRICS_3"
    );
    let m1 = MachineId::parse("m1").expect("valid");
    s.get_last_raw_message_by_subject(&parts.subject_of(&m1))
        .await
        .expect("under sysmon.metrics.3.m1");

    let stderr = run("m2");
    let mut total = 0;
    for mut s in streams {
        total += s.info().await.expect("info").state.messages;
    }
    assert_eq!(total, 2, "nothing of m2 stored; the agent said: {stderr}");
    assert!(
        stderr.to_lowercase().contains("permission"),
        "the agent names the refusal: {stderr}"
    );
}
