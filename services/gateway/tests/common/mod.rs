//! Shared test setup: a real nats-server with the streams the persister
//! would create, a real PostgreSQL database, real snapshots from the agent's
//! collector (`sysmonstm_testkit::RealSnapshots`), and a gateway wired to them.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use prost::Message as _;
use sysmonstm_gateway::{Gateway, GatewayConfig, Shared};
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use sysmonstm_testkit::{NatsServer, RealSnapshots, TestDb};
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Env {
    pub nats: NatsServer,
    /// METRICS' partitions on this hub (the gateway's `metrics_partitions`).
    pub parts: streams::Partitions,
    pub js: jetstream::Context,
    pub db: Option<TestDb>,
    pub shutdown: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// METRICS limits that fit the test server's store.
pub fn limits() -> streams::MetricsLimits {
    streams::MetricsLimits {
        max_bytes: 512 * 1024 * 1024,
        ..Default::default()
    }
}

/// A nats-server with METRICS and MACHINES as the persister creates them.
pub async fn env(with_db: bool) -> Env {
    sysmonstm_kit::telemetry::init_for_tests();
    let nats = NatsServer::start_hub();
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to test nats");
    let js = jetstream::new(client);
    js.get_or_create_stream(streams::metrics(&limits()))
        .await
        .expect("METRICS");
    finish(nats, js, streams::Partitions::ONE, with_db).await
}

/// A hub whose account maps METRICS subjects into `parts` partitions, with
/// their streams (`METRICS_0` …) and MACHINES as the persister creates them.
pub async fn env_partitioned(parts: streams::Partitions) -> Env {
    sysmonstm_kit::telemetry::init_for_tests();
    let nats = NatsServer::start_partitioned(parts);
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to test nats");
    let js = jetstream::new(client);
    // Test servers have 4 GB of file store: a small METRICS in all.
    sysmonstm_kit::jetstream::ensure_metrics(
        &js,
        parts,
        sysmonstm_kit::jetstream::Replicas::ONE,
        &streams::MetricsLimits {
            max_bytes: 256 * 1024 * 1024,
            ..Default::default()
        },
    )
    .await
    .expect("METRICS partitions");
    finish(nats, js, parts, false).await
}

async fn finish(
    nats: NatsServer,
    js: jetstream::Context,
    parts: streams::Partitions,
    with_db: bool,
) -> Env {
    js.get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let db = if with_db {
        Some(TestDb::new().await)
    } else {
        None
    };
    Env {
        nats,
        parts,
        js,
        db,
        shutdown: CancellationToken::new(),
    }
}

impl Env {
    pub fn config(&self) -> GatewayConfig {
        let mut cfg = GatewayConfig {
            listen: "127.0.0.1:0".into(),
            database_url: self
                .db
                .as_ref()
                .map(|d| d.url().to_owned())
                // A port nothing listens on: the pool is lazy, so only the
                // endpoints that need the database notice.
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:9/none".into()),
            metrics_partitions: self.parts,
            ..GatewayConfig::default()
        };
        cfg.nats.servers = vec![self.nats.url()];
        cfg
    }

    /// A gateway following the streams, without a socket.
    pub async fn gateway(&self) -> (Gateway, Arc<Shared>) {
        self.gateway_with(self.config()).await
    }

    pub async fn gateway_with(&self, cfg: GatewayConfig) -> (Gateway, Arc<Shared>) {
        let gw = Gateway::connect(cfg).await.expect("gateway connects");
        gw.start_feeds(&self.shutdown);
        let shared = gw.shared();
        (gw, shared)
    }
}

/// Real snapshots of this machine under the name `machine`.
pub struct Agent {
    pub id: MachineId,
    collector: RealSnapshots,
    seq: u64,
}

impl Agent {
    pub async fn new(machine: &str) -> Self {
        let id = MachineId::parse(machine).expect("valid id");
        let collector = RealSnapshots::new(&id).await;
        Self {
            id,
            collector,
            seq: 0,
        }
    }

    pub fn sample(&mut self) -> v1::Snapshot {
        self.seq += 1;
        self.collector.sample(self.seq)
    }

    /// Samples and publishes one snapshot; returns it.
    pub async fn publish(&mut self, js: &jetstream::Context) -> v1::Snapshot {
        let snap = self.sample();
        publish_snapshot(js, &snap).await;
        snap
    }

    pub async fn publish_info(&self, js: &jetstream::Context) -> v1::MachineInfo {
        let info = self.collector.info();
        js.send_publish(
            subjects::info(&self.id),
            Publish::build().payload(info.encode_to_vec().into()),
        )
        .await
        .expect("sent")
        .await
        .expect("acked");
        info
    }
}

pub async fn publish_snapshot(js: &jetstream::Context, snap: &v1::Snapshot) {
    let id = MachineId::parse(&snap.machine_id).expect("valid id");
    js.send_publish(
        subjects::metrics(&id),
        Publish::build()
            .message_id(headers::msg_id(&id, snap.seq))
            .payload(snap.encode_to_vec().into()),
    )
    .await
    .expect("sent")
    .await
    .expect("acked");
}

/// Waits until the gateway holds snapshot `seq` of `machine`.
pub async fn wait_latest(shared: &Shared, machine: &str, seq: u64) {
    sysmonstm_testkit::eventually(
        WAIT,
        &format!("gateway holds {machine} seq {seq}"),
        || async {
            shared
                .latest
                .get(machine)
                .filter(|l| l.detail.summary.seq >= seq)
                .map(|_| ())
        },
    )
    .await;
}
