//! Helpers for the CLI's process tests: the `sysmonstm` binary run against
//! a real nats-server, its live output read line by line, real snapshots of
//! this host (`RealSnapshots`, the agent's collector). The tests with the
//! real alerter beside the CLI (`crates/e2e/tests/cli_alerter.rs`) share them.

#![allow(dead_code, unused_imports)]

use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::{Alert, EventKind};
use sysmonstm_schemas::rules::{Metric, Rule, Severity};
use sysmonstm_schemas::{MachineId, headers, streams, subjects};
use sysmonstm_testkit::{NatsServer, RealSnapshots, eventually};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

pub const WAIT: Duration = Duration::from_secs(30);

/// The `sysmonstm` binary: cargo's build of it for this package's tests; the
/// workspace's (`sysmonstm_testkit::workspace_bin`) for the e2e tests, which
/// include these helpers.
pub fn bin() -> std::path::PathBuf {
    option_env!("CARGO_BIN_EXE_sysmonstm").map_or_else(
        || sysmonstm_testkit::workspace_bin("sysmonstm"),
        std::path::PathBuf::from,
    )
}

pub fn cli(url: &str) -> Command {
    let mut c = Command::new(bin());
    c.env("NATS_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("NATS_CREDS")
        .env_remove("NATS_NKEY")
        .env_remove("NATS_USER")
        .env_remove("NATS_TOKEN")
        .env_remove("SYSMON_METRICS_PARTITIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

pub async fn run(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = cli(url).args(args).output().await.expect("run sysmonstm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub struct Watcher {
    pub _child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

impl Watcher {
    pub async fn start(js: &jetstream::Context, url: &str, args: &[&str]) -> Self {
        let stream = js_kit::ensure_alerts(js).await.expect("ALERTS");
        let before = consumers(&stream).await;
        let mut child = cli(url).args(args).spawn().expect("spawn watch");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // Live from the moment its consumer exists.
        eventually(WAIT, "the watch's consumer on ALERTS", || {
            let stream = stream.clone();
            async move { (consumers(&stream).await > before).then_some(()) }
        })
        .await;
        Self {
            _child: child,
            lines,
        }
    }

    pub async fn next_json(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("watch still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    pub async fn nothing_more_within(&mut self, d: Duration) {
        if let Ok(l) = tokio::time::timeout(d, self.lines.next_line()).await {
            panic!("unexpected output: {l:?}");
        }
    }
}

pub async fn consumers(stream: &jetstream::stream::Stream) -> usize {
    let mut s = stream.clone();
    s.info().await.map(|i| i.state.consumer_count).unwrap_or(0)
}

pub fn event(machine: &str, rule: &str, kind: EventKind, since_ms: i64) -> Alert {
    Alert {
        machine: machine.into(),
        rule: rule.into(),
        severity: Severity::Critical,
        kind,
        metric: Metric::Cpu,
        value: 97.0,
        threshold: 90.0,
        since_ms,
        ts_ms: since_ms + 1,
        message: "cpu 97 > 90".into(),
        repeat: 0,
        trigger_seq: 0,
    }
}

/// METRICS limits that fit the test server's store.
pub fn metrics_limits() -> streams::MetricsLimits {
    streams::MetricsLimits {
        max_bytes: 1024 * 1024 * 1024,
        ..Default::default()
    }
}

/// Real snapshots of this host with the CPU share the test holds.
pub struct Machine {
    pub id: MachineId,
    pub collector: RealSnapshots,
    pub seq: u64,
}

impl Machine {
    pub async fn new(id: &str) -> Self {
        let id = MachineId::parse(id).expect("id");
        let collector = RealSnapshots::new(&id).await;
        Self {
            id,
            collector,
            seq: 0,
        }
    }

    pub async fn publish(&mut self, js: &jetstream::Context, cpu: f32) {
        self.seq += 1;
        let mut s = self.collector.sample(self.seq);
        // Two samples closer than a clock tick have no CPU delta; the share
        // is the test's to set anyway.
        s.cpu.get_or_insert_with(Default::default).usage_percent = cpu;
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, headers::msg_id(&self.id, s.seq).as_str());
        js.publish_with_headers(subjects::metrics(&self.id), h, s.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
}

pub async fn rule_in_kv(js: &jetstream::Context, name: &str) -> Option<Rule> {
    let kv = js_kit::ensure_kv(js, streams::rules_bucket()).await.ok()?;
    let v = kv.get(name).await.ok()??;
    Rule::from_json(&v).ok()
}
