//! The `sysmonstm` binary run as a process against a real nats-server, with
//! events coming from the real alerter (in-process) or published through
//! the alerter's own publishing code.

use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use sysmonstm_agent::collect::{CollectOptions, Collector};
use sysmonstm_alerter::engine::{Alert, EventKind};
use sysmonstm_alerter::{Alerter, AlerterConfig, Counters, wire};
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::rules::{Metric, Rule, Severity};
use sysmonstm_schemas::{MachineId, headers, streams, subjects};
use sysmonstm_testkit::{NatsServer, eventually};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

fn cli(url: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sysmonstm"));
    c.env("NATS_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("NATS_CREDS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn run(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = cli(url).args(args).output().await.expect("run sysmonstm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Watcher {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Watcher {
    async fn start(js: &jetstream::Context, url: &str, args: &[&str]) -> Self {
        let stream = wire::ensure_alerts(js).await.expect("ALERTS");
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

    async fn next_json(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("watch still running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    async fn nothing_more_within(&mut self, d: Duration) {
        if let Ok(l) = tokio::time::timeout(d, self.lines.next_line()).await {
            panic!("unexpected output: {l:?}");
        }
    }
}

async fn consumers(stream: &jetstream::stream::Stream) -> usize {
    let mut s = stream.clone();
    s.info().await.map(|i| i.state.consumer_count).unwrap_or(0)
}

fn event(machine: &str, rule: &str, kind: EventKind, since_ms: i64) -> Alert {
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

#[tokio::test]
async fn watch_json_prints_a_live_event() {
    let nats = NatsServer::start_hub();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut w = Watcher::start(&js, &nats.url(), &["alerts", "watch", "--json"]).await;
    wire::publish(
        &js,
        &event("web01", "cpu_high", EventKind::Firing, 1_700_000_000_000),
    )
    .await
    .expect("publish");
    let v = w.next_json().await;
    assert_eq!(v["subject"], "sysmon.alerts.critical.web01.cpu_high");
    assert_eq!(
        (v["state"].as_str(), v["machine"].as_str()),
        (Some("firing"), Some("web01"))
    );
    assert_eq!(v["value"], 97.0);
    assert_eq!(v["since"], "2023-11-14T22:13:20.000Z");
}

#[tokio::test]
async fn watch_since_prints_the_past_then_live_events_each_once() {
    let nats = NatsServer::start_hub();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    wire::ensure_alerts(&js).await.expect("ALERTS");
    for i in 0..3 {
        wire::publish(
            &js,
            &event(&format!("web0{i}"), "cpu_high", EventKind::Firing, 1000 + i),
        )
        .await
        .expect("publish past");
    }
    // A filter that leaves one out: only web* machines.
    wire::publish(&js, &event("db01", "cpu_high", EventKind::Firing, 5))
        .await
        .expect("publish");
    let mut w = Watcher::start(
        &js,
        &nats.url(),
        &[
            "alerts",
            "watch",
            "--since",
            "1h",
            "--machine",
            "web*",
            "--json",
        ],
    )
    .await;
    for i in 0..2 {
        wire::publish(
            &js,
            &event(
                &format!("web1{i}"),
                "cpu_high",
                EventKind::Resolved,
                2000 + i,
            ),
        )
        .await
        .expect("publish live");
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let v = w.next_json().await;
        seen.push((
            v["machine"].as_str().unwrap_or("").to_owned(),
            v["state"].as_str().unwrap_or("").to_owned(),
        ));
    }
    let want: Vec<(String, String)> = [
        ("web00", "firing"),
        ("web01", "firing"),
        ("web02", "firing"),
        ("web10", "resolved"),
        ("web11", "resolved"),
    ]
    .iter()
    .map(|(m, s)| ((*m).to_owned(), (*s).to_owned()))
    .collect();
    assert_eq!(seen, want);
    w.nothing_more_within(Duration::from_secs(1)).await;
}

fn alerter_config(url: &str) -> AlerterConfig {
    AlerterConfig {
        tick_ms: 100,
        metrics_listen: None,
        stream_max_mib: 1024,
        nats: NatsConfig {
            servers: vec![url.to_owned()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Real snapshots of this host with the CPU share the test holds.
struct Machine {
    id: MachineId,
    collector: Collector,
    seq: u64,
}

impl Machine {
    async fn new(id: &str) -> Self {
        let id = MachineId::parse(id).expect("id");
        let mut collector =
            Collector::new(id.clone(), CollectOptions::default()).expect("collector");
        collector.warm_up().await;
        Self {
            id,
            collector,
            seq: 0,
        }
    }

    async fn publish(&mut self, js: &jetstream::Context, cpu: f32) {
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

struct RunningAlerter {
    counters: std::sync::Arc<Counters>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_alerter(js: &jetstream::Context, url: &str) -> RunningAlerter {
    js.get_or_create_stream(streams::metrics(&alerter_config(url).metrics_limits()))
        .await
        .expect("METRICS");
    let a = Alerter::new(alerter_config(url));
    let counters = a.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(a.run(shutdown.clone()));
    eventually(WAIT, "the alerter's consumer", || {
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
    RunningAlerter {
        counters,
        shutdown,
        task,
    }
}

impl RunningAlerter {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn rule_in_kv(js: &jetstream::Context, name: &str) -> Option<Rule> {
    let kv = wire::ensure_kv(js, streams::rules_bucket()).await.ok()?;
    let v = kv.get(name).await.ok()??;
    Rule::from_json(&v).ok()
}

#[tokio::test]
async fn rules_set_refuses_an_invalid_rule_naming_the_field_and_changes_nothing() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, out, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 clear=95 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`clear`") && err.contains("cpu_high"), "{err}");
    assert_eq!(
        rule_in_kv(&js, "cpu_high").await.and_then(|r| r.clear),
        None,
        "unchanged"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[rule]]\nname = \"x\"\nmetric = = \"cpu\"\n").expect("write");
    let (code, _, err) = run(&url, &["rules", "set", broken.to_str().expect("utf8")]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.toml") && err.contains("line 3"),
        "{err}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules.example.toml");
    let (code, out, err) = run(&url, &["rules", "set", example]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rule machine_silent set"), "{out}");
    let (_, listed, _) = run(&url, &["rules", "list", "--json"]).await;
    assert!(listed.lines().count() >= 9, "{listed}");
    let (code, out, _) = run(&url, &["rules", "rm", "too_hot"]).await;
    assert_eq!((code, out.trim()), (0, "rule too_hot removed"));
    assert!(rule_in_kv(&js, "too_hot").await.is_none());
    let (code, _, err) = run(&url, &["rules", "rm", "too_hot"]).await;
    assert!(code == 1 && err.contains("no rule named"), "{err}");
}

#[tokio::test]
async fn a_rule_changed_with_the_cli_while_snapshots_flow_applies_at_the_next_evaluation() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=99 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut web = Machine::new("web01").await;
    for _ in 0..5 {
        web.publish(&js, 70.0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut w = Watcher::start(&js, &url, &["alerts", "watch", "--all", "--json"]).await;
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=60 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let flow = tokio::spawn({
        let js = js.clone();
        async move {
            for _ in 0..100 {
                web.publish(&js, 70.0).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let v = w.next_json().await;
    assert_eq!(
        (v["state"].as_str(), v["threshold"].as_f64()),
        (Some("firing"), Some(60.0)),
        "{v}"
    );
    assert!(Counters::get(&alerter.counters.rules_applied) >= 2);
    flow.abort();
    alerter.stop().await;
}

#[tokio::test]
async fn ack_stops_the_reminders_and_is_stored_as_an_event() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 repeat="1s" severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut w = Watcher::start(&js, &url, &["alerts", "watch", "--json"]).await;
    let flow = tokio::spawn({
        let js = js.clone();
        let mut web = Machine::new("web01").await;
        async move {
            for _ in 0..300 {
                web.publish(&js, 97.0).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The first firing and one reminder.
    assert_eq!(w.next_json().await["repeat"], 0);
    assert_eq!(w.next_json().await["repeat"], 1);
    let (code, out, err) = run(&url, &["alerts", "ack", "web01", "cpu_high", "--by", "ops"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // A reminder may have crossed the ack; after the ack event none follows.
    loop {
        let v = w.next_json().await;
        if v["state"] == "acknowledged" {
            assert_eq!(v["message"], "acknowledged by ops");
            break;
        }
        assert_eq!(v["state"], "firing");
    }
    let c = alerter.counters.clone();
    eventually(WAIT, "the alerter applies the ack", || {
        let c = c.clone();
        async move { (Counters::get(&c.acks_applied) == 1).then_some(()) }
    })
    .await;
    w.nothing_more_within(Duration::from_secs(3)).await;
    let (_, listed, _) = run(&url, &["alerts", "list", "--firing"]).await;
    assert!(listed.contains("firing (acked)"), "{listed}");
    flow.abort();
    alerter.stop().await;
}

#[tokio::test]
async fn machines_lists_facts_last_seen_and_headline_values() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::metrics(&alerter_config(&url).metrics_limits()))
        .await
        .expect("METRICS");
    js.get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let mut web = Machine::new("web01").await;
    for _ in 0..3 {
        web.publish(&js, 42.5).await;
    }
    let info = sysmonstm_schemas::v1::MachineInfo {
        machine_id: "web01".into(),
        hostname: "web01.example.com".into(),
        core_count: 8,
        ..Default::default()
    };
    js.publish(subjects::info(&web.id), info.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let (code, out, err) = run(&url, &["machines", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["machine"], "web01");
    assert_eq!(rows[0]["hostname"], "web01.example.com");
    assert_eq!(rows[0]["status"], "online");
    assert_eq!(rows[0]["cpu"], 42.5);
    let (_, table, _) = run(&url, &["machines"]).await;
    assert!(
        table.starts_with("MACHINE") && table.contains("online"),
        "{table}"
    );
}
