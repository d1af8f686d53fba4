//! Helpers for the alerter's tests against a real nats-server: an alerter
//! running in-process, real snapshots of this host (`RealSnapshots`, the
//! agent's collector), and the events ALERTS really stored.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_alerter::engine::{Alert, EventKind};
use sysmonstm_alerter::{Alerter, AlerterConfig, Counters};
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::rules::Rule;
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use sysmonstm_testkit::RealSnapshots;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn config(nats_url: &str) -> AlerterConfig {
    AlerterConfig {
        tick_ms: 100,
        ack_wait_s: 2,
        metrics_listen: None,
        stream_max_mib: 1024,
        nats: NatsConfig {
            servers: vec![nats_url.to_owned()],
            ..Default::default()
        },
        ..Default::default()
    }
}

pub struct Running {
    pub counters: Arc<Counters>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("alerter stops on shutdown")
            .expect("not panicked")
            .expect("run ended without error");
    }
}

pub fn spawn(cfg: AlerterConfig) -> Running {
    sysmonstm_kit::telemetry::init_for_tests();
    let a = Alerter::new(cfg);
    let counters = a.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(a.run(shutdown.clone()));
    Running {
        counters,
        shutdown,
        task,
    }
}

/// Waits until the alerter's durable consumer exists: snapshots published
/// from then on are evaluated (a new consumer starts at the newest).
pub async fn ready(js: &jetstream::Context) {
    sysmonstm_testkit::eventually(WAIT, "the alerter's consumer on METRICS", || {
        let js = js.clone();
        async move {
            let s = js.get_stream(streams::METRICS).await.ok()?;
            s.consumer_info(streams::ALERTER_CONSUMER)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
}

pub async fn js_for(url: &str) -> jetstream::Context {
    jetstream::new(
        async_nats::connect(url)
            .await
            .expect("connect to test nats"),
    )
}

pub async fn setup(js: &jetstream::Context) -> (kv::Store, kv::Store) {
    js.get_or_create_stream(streams::metrics(&config("").metrics_limits()))
        .await
        .expect("METRICS");
    js_kit::ensure_alerts(js).await.expect("ALERTS");
    let rules = js_kit::ensure_kv(js, streams::rules_bucket())
        .await
        .expect("rules bucket");
    let state = js_kit::ensure_kv(js, streams::alert_state_bucket())
        .await
        .expect("state bucket");
    (rules, state)
}

pub fn rule(json: &str) -> Rule {
    let r: Rule = serde_json::from_str(json).expect("rule json");
    r.validate().expect("valid rule");
    r
}

pub async fn put_rule(rules: &kv::Store, r: &Rule) {
    rules
        .put(&r.name, r.to_json().into())
        .await
        .expect("put rule");
}

/// A machine whose snapshots come from this host's real collector, with the
/// CPU share set to what the test holds it at.
pub struct Machine {
    pub id: MachineId,
    collector: RealSnapshots,
    seq: u64,
    pub interval_ms: u32,
}

impl Machine {
    pub async fn new(id: &str) -> Self {
        let id = MachineId::parse(id).expect("machine id");
        let collector = RealSnapshots::new(&id).await;
        Self {
            id,
            collector,
            seq: 0,
            interval_ms: 1000,
        }
    }

    pub fn snapshot(&mut self, cpu: f32) -> v1::Snapshot {
        self.seq += 1;
        let mut s = self.collector.sample(self.seq);
        s.interval_ms = self.interval_ms;
        // Two samples closer than a clock tick have no CPU delta; the share
        // is the test's to set anyway.
        s.cpu.get_or_insert_with(Default::default).usage_percent = cpu;
        s
    }

    pub async fn publish(&mut self, js: &jetstream::Context, cpu: f32) {
        let s = self.snapshot(cpu);
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, headers::msg_id(&self.id, s.seq).as_str());
        js.publish_with_headers(subjects::metrics(&self.id), h, s.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

/// Publishes a snapshot as the agent does (Msg-Id `<machine>:<seq>`) and
/// waits until METRICS stored it.
pub async fn publish_snapshot(js: &jetstream::Context, s: &v1::Snapshot) {
    let id = MachineId::parse(&s.machine_id).expect("id");
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, headers::msg_id(&id, s.seq).as_str());
    js.publish_with_headers(subjects::metrics(&id), h, s.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

/// Every event ALERTS holds on `filter`, oldest first.
pub async fn stored_events(js: &jetstream::Context, filter: &str) -> Vec<Alert> {
    let stream = js.get_stream(streams::ALERTS).await.expect("ALERTS");
    let n = stream.get_info().await.expect("info").state.messages;
    if n == 0 {
        return Vec::new();
    }
    let mut msgs = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer")
        .messages()
        .await
        .expect("messages");
    let mut out = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(500), msgs.next()).await
    {
        out.push(Alert::decode(&m.payload).expect("a well-formed event"));
    }
    out
}

pub fn kinds(events: &[Alert]) -> Vec<(EventKind, u32)> {
    events.iter().map(|e| (e.kind, e.repeat)).collect()
}
