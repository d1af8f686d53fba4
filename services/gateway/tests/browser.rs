//! The dashboard in a real browser: Playwright (npm `playwright-core`)
//! drives Debian's chromium against the real `sysmonstm-gateway` binary
//! while three real `sysmonstm-agent` processes publish to a real hub. The
//! driver (`web/test/browser.mjs`) checks that the cards update, that a
//! chart draws and that a firing alert, published here as a real
//! AlertEvent on ALERTS, appears, and that the rules editor adds, changes
//! and removes rules in the bucket. Screenshots go to `target/screenshots/`.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use prost::Message as _;
use sysmonstm_schemas::{MachineId, streams, subjects, v1};

const MACHINES: [&str; 3] = ["browser-a", "browser-b", "browser-c"];
const TOKEN: &str = "browser-test-token-0123456789";

/// Kills a child on drop so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The agent binary, built if needed (this package's tests only get their
/// own binaries from cargo).
fn agent_binary() -> PathBuf {
    let gateway = PathBuf::from(env!("CARGO_BIN_EXE_sysmonstm-gateway"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "-q",
            "-p",
            "sysmonstm-agent",
            "--bin",
            "sysmonstm-agent",
        ])
        .current_dir(workspace())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building sysmonstm-agent failed");
    gateway.with_file_name("sysmonstm-agent")
}

#[tokio::test]
async fn the_dashboard_shows_live_agents_charts_and_a_firing_alert() {
    let env = common::env(false).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = sysmonstm_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _gateway = Proc(
        Command::new(env!("CARGO_BIN_EXE_sysmonstm-gateway"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--server",
                &env.nats.url(),
            ])
            .args(["--database-url", "postgres://postgres@127.0.0.1:9/none"])
            .env("SYSMON_GATEWAY_API_TOKEN", TOKEN)
            .stderr(std::fs::File::create(tmp.path().join("gateway.log")).expect("log"))
            .spawn()
            .expect("gateway starts"),
    );
    let agent = agent_binary();
    let _agents: Vec<Proc> = MACHINES
        .iter()
        .map(|m| {
            Proc(
                Command::new(&agent)
                    .args([
                        "--machine",
                        m,
                        "--interval-ms",
                        "1000",
                        "--server",
                        &env.nats.url(),
                    ])
                    .arg("--state-dir")
                    .arg(tmp.path().join(m))
                    .stderr(
                        std::fs::File::create(tmp.path().join(format!("{m}.log"))).expect("log"),
                    )
                    .spawn()
                    .expect("agent starts"),
            )
        })
        .collect();

    let shots = workspace().join("target/screenshots");
    let alert_machine = MachineId::parse(MACHINES[1]).expect("id");
    let rule = MachineId::parse("cpu_high").expect("rule token");
    let mut driver = Command::new("node")
        .arg("test/browser.mjs")
        .current_dir(workspace().join("web"))
        .env("BASE_URL", &base)
        .env("SCREENSHOTS", &shots)
        .env("MACHINES", MACHINES.join(","))
        .env("ALERT", format!("{alert_machine}:{rule}"))
        .env("API_TOKEN", TOKEN)
        .env(
            "CHROMIUM_BIN",
            std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect(
            "node runs web/test/browser.mjs (npm and chromium come from scripts/install-deps.sh)",
        );
    let stdout = driver.stdout.take().expect("stdout");
    let mut stdin = driver.stdin.take().expect("stdin");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("browser: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut published = false;
    while let Some(line) = tokio::time::timeout_at(deadline.into(), rx.recv())
        .await
        .expect("driver finishes in time")
    {
        if line == "waiting-for-alert" && !published {
            publish_alert(&env, &alert_machine, &rule).await;
            writeln!(stdin, "published").expect("tell the driver");
            published = true;
        }
    }
    let status = driver.wait().expect("driver exits");
    let logs = std::fs::read_to_string(tmp.path().join("gateway.log")).unwrap_or_default();
    assert!(
        status.success(),
        "browser test failed (screenshots in {shots:?}); gateway log:\n{logs}"
    );
    assert!(published, "the driver never asked for the alert");
    // The editor wrote through the API into the bucket the alerter watches.
    let kv = env
        .js
        .get_key_value(streams::RULES_BUCKET)
        .await
        .expect("rules bucket");
    let stored = kv
        .get("disk_full")
        .await
        .expect("read")
        .expect("disk_full stored");
    let stored: serde_json::Value = serde_json::from_slice(&stored).expect("JSON");
    assert_eq!(stored["threshold"], 80.0, "{stored}");
    assert_eq!(stored["clear"], 75.0, "{stored}");
    assert_eq!(stored["machines"][0], "browser-*", "{stored}");
    assert!(kv.get("load_high").await.expect("read").is_none());
    for f in [
        "overview.png",
        "overview-alert.png",
        "machine.png",
        "rules.png",
    ] {
        let meta = std::fs::metadata(shots.join(f)).expect("screenshot saved");
        assert!(meta.len() > 10_000, "{f} is almost empty");
    }
}

/// A real AlertEvent, as the alerter publishes it (subject, Msg-Id).
async fn publish_alert(env: &common::Env, machine: &MachineId, rule: &MachineId) {
    env.js
        .get_or_create_stream(streams::alerts())
        .await
        .expect("ALERTS");
    let now = chrono::Utc::now().timestamp_millis();
    let since = now - 30_000;
    let ev = v1::AlertEvent {
        machine_id: machine.to_string(),
        rule: rule.to_string(),
        severity: v1::Severity::Critical as i32,
        state: v1::AlertState::Firing as i32,
        metric: "cpu".into(),
        value: 97.5,
        threshold: 90.0,
        since_ms: since,
        timestamp_ms: now,
        message: "CPU above 90 % for 30 s".into(),
        repeat: 0,
        trigger_seq: 0,
    };
    env.js
        .send_publish(
            subjects::alert(v1::Severity::Critical, machine, rule),
            PublishMessage::build()
                .message_id(format!("{machine}:{rule}:{since}:firing"))
                .payload(ev.encode_to_vec().into()),
        )
        .await
        .expect("sent")
        .await
        .expect("acked");
}

#[path = "edge_pair/mod.rs"]
mod edge_pair;

/// The edge dashboard: `sysmonstm-gateway --edge` (the real binary, its
/// allow-list from a config file) over a hub and an edge linked by a leaf
/// node, no PostgreSQL anywhere. The driver (`web/test/edge.mjs`) checks
/// that the page shows the listed machine live under its public name, with
/// history from the edge's window, that it knows it is read-only (no rules
/// editor, no write control), and that the hidden machine and the internal
/// names never appear; one screenshot, `edge.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_dashboard_shows_the_machine_read_only() {
    let mut pair = edge_pair::EdgePair::start().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let port = sysmonstm_testkit::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let config = tmp.path().join("edge.toml");
    std::fs::write(&config, "[edge_machines]\n\"db-internal-3\" = \"db\"\n").expect("config");
    let mut seq = 1u64;
    for m in ["secret-box", "db-internal-3"] {
        pair.info(m, &format!("{m}.corp.internal")).await;
    }
    edge_round(&mut pair, seq).await;
    let _gateway = Proc(
        Command::new(env!("CARGO_BIN_EXE_sysmonstm-gateway"))
            .arg("--edge")
            .arg("--config")
            .arg(&config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--server", &pair.edge.url()])
            .arg("--creds")
            .arg(&pair.edge_gateway)
            .stderr(std::fs::File::create(tmp.path().join("edge-gateway.log")).expect("log"))
            .spawn()
            .expect("the edge gateway starts"),
    );
    let shots = workspace().join("target/screenshots");
    let mut driver = Command::new("node")
        .arg("test/edge.mjs")
        .current_dir(workspace().join("web"))
        .env("BASE_URL", &base)
        .env("SCREENSHOTS", &shots)
        .env("MACHINE", "db")
        .env("HIDDEN", "secret-box,db-internal-3,corp.internal")
        .env(
            "CHROMIUM_BIN",
            std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs web/test/edge.mjs (npm and chromium come from scripts/install-deps.sh)");
    let stdout = driver.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("edge browser: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The agents go on publishing every second while the page is checked.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            line = rx.recv() => if line.is_none() { break },
            _ = tick.tick() => {
                seq += 1;
                edge_round(&mut pair, seq).await;
            }
            () = tokio::time::sleep_until(deadline.into()) => panic!("the edge driver did not finish in time"),
        }
    }
    let status = driver.wait().expect("driver exits");
    let logs = std::fs::read_to_string(tmp.path().join("edge-gateway.log")).unwrap_or_default();
    assert!(
        status.success(),
        "edge browser test failed (screenshots in {shots:?}); edge gateway log:\n{logs}"
    );
    let meta = std::fs::metadata(shots.join("edge.png")).expect("screenshot saved");
    assert!(meta.len() > 10_000, "edge.png is almost empty");
}

/// One snapshot of each machine at the hub, now.
async fn edge_round(pair: &mut edge_pair::EdgePair, seq: u64) {
    let now = chrono::Utc::now().timestamp_millis();
    for m in ["secret-box", "db-internal-3"] {
        pair.snapshot(m, seq, now, 20.0 + (seq % 10) as f32).await;
    }
}
