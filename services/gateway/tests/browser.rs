//! The dashboard in a real browser: Playwright (npm `playwright-core`)
//! drives Debian's chromium against the real `sysmonstm-gateway` binary
//! while three real `sysmonstm-agent` processes publish to a real hub, over
//! a real database holding an hour of the first machine's history (rows
//! written here in the persister's schema, its own migration) and a stored
//! alert. The driver (`web/test/browser.mjs`) checks what a person would:
//! the cards update with plausible numbers, the toolbar counts them, caps
//! them (`?limit=`, "Show more"), filters (kept in the URL over a reload)
//! and sorts the alerting machine first, the machine's facts match this
//! machine, the live charts start from the stored minutes and label whole
//! seconds, the history chart has the stored points, an alert published
//! here as a real AlertEvent on ALERTS appears, shows "muted until HH:MM"
//! once a silence of it is in the silences bucket, and then resolves, the
//! events table fits its panel, and the rules editor adds, changes and
//! removes rules in the bucket. Screenshots go to `target/screenshots/`.

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
/// The persister's schema, applied the way the persister applies it (one
/// migration, run as is), without linking the persister.
const BASELINE: &str = include_str!("../../persister/migrations/0001_baseline.sql");
/// A stored event of a machine whose long name must wrap inside the panel.
const STORED_ALERT_MACHINE: &str = "build-server-with-a-rather-long-name-01";

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
    let env = common::env(true).await;
    // Built first: the seeded history ends now, and the driver expects its
    // last minutes when it opens the machine page.
    let agent = agent_binary();
    let db = env.db.as_ref().expect("database").url().to_owned();
    seed_history(&db, MACHINES[0]).await;
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
            .args(["--database-url", &db])
            .env("SYSMON_GATEWAY_API_TOKEN", TOKEN)
            .stderr(std::fs::File::create(tmp.path().join("gateway.log")).expect("log"))
            .spawn()
            .expect("gateway starts"),
    );
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
        .env("STORED_ALERT", format!("{STORED_ALERT_MACHINE}:disk_full"))
        .env("HISTORY_MACHINE", MACHINES[0])
        .env("MEM_TOTAL_BYTES", mem_total_bytes().to_string())
        .env("OS_NAME", os_name())
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
    let (mut published, mut silenced, mut resolved) = (false, false, false);
    // The firing and its resolution share `since`: one alert.
    let since = chrono::Utc::now().timestamp_millis() - 30_000;
    while let Some(line) = tokio::time::timeout_at(deadline.into(), rx.recv())
        .await
        .expect("driver finishes in time")
    {
        if line == "waiting-for-alert" && !published {
            publish_alert(&env, &alert_machine, &rule, since, v1::AlertState::Firing).await;
            writeln!(stdin, "published").expect("tell the driver");
            published = true;
        }
        if line == "waiting-for-silence" && published && !silenced {
            put_silence(&env, &alert_machine, &rule).await;
            writeln!(stdin, "silenced").expect("tell the driver");
            silenced = true;
        }
        if line == "waiting-for-resolve" && published && !resolved {
            publish_alert(&env, &alert_machine, &rule, since, v1::AlertState::Resolved).await;
            writeln!(stdin, "resolved").expect("tell the driver");
            resolved = true;
        }
    }
    let status = driver.wait().expect("driver exits");
    let logs = std::fs::read_to_string(tmp.path().join("gateway.log")).unwrap_or_default();
    assert!(
        status.success(),
        "browser test failed (screenshots in {shots:?}); gateway log:\n{logs}"
    );
    assert!(published, "the driver never asked for the alert");
    assert!(silenced, "the driver never asked for a silence");
    assert!(resolved, "the driver never asked for the alert to resolve");
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
        "overview-filter.png",
        "overview-muted.png",
        "machine.png",
        "rules.png",
    ] {
        let meta = std::fs::metadata(shots.join(f)).expect("screenshot saved");
        assert!(meta.len() > 10_000, "{f} is almost empty");
    }
}

/// The persister's schema (plain path: the test does not depend on where
/// TimescaleDB is installed) with an hour of `machine`'s snapshots, one a
/// second up to now: CPU 10–40 %, memory 41–43 %, load 0.5; and a resolved
/// alert of yesterday.
async fn seed_history(url: &str, machine: &str) {
    use sqlx::ConnectOptions as _;
    let opts: sqlx::postgres::PgConnectOptions = url.parse().expect("database URL");
    let mut conn = opts
        .options([("sysmon.storage", "plain")])
        .connect()
        .await
        .expect("connect to the test database");
    sqlx::raw_sql(BASELINE)
        .execute(&mut conn)
        .await
        .expect("the persister's migration");
    sqlx::query(
        "SELECT sysmon_ensure_partitions((now() AT TIME ZONE 'UTC')::date - 2, \
                                         (now() AT TIME ZONE 'UTC')::date + 1)",
    )
    .execute(&mut conn)
    .await
    .expect("partitions");
    let rows = sqlx::query(
        "INSERT INTO metrics (machine_id, ts, seq, interval_ms, cpu_percent, mem_total_bytes, \
             mem_used_bytes, mem_used_percent, swap_used_percent, load1, load5, load15, \
             process_count, net_rx_bps, net_tx_bps, disk_read_bps, disk_write_bps) \
         SELECT $1, date_trunc('second', now()) - n * interval '1 second', 3601 - n, 1000, \
                25 + 15 * sin(n / 120.0), 8589934592, 3600000000, 42 + sin(n / 60.0), 0, \
                0.5, 0.4, 0.3, 200, 2048, 1024, 0, 4096 \
         FROM generate_series(1, 3600) AS n",
    )
    .bind(machine)
    .execute(&mut conn)
    .await
    .expect("history rows")
    .rows_affected();
    assert_eq!(rows, 3600);
    // What the persister does every few seconds: the 1 min / 5 min / 1 h
    // rollups the longer ranges read.
    sqlx::query("SELECT sysmon_rollup_settle()")
        .execute(&mut conn)
        .await
        .expect("rollups settled");
    sqlx::query(
        "INSERT INTO alerts (machine_id, rule, severity, state, metric, value, threshold, since, \
             ts, message, msg_id) \
         VALUES ($1, 'disk_full', 'warning', 'resolved', 'disk', 71.5, 85, \
                 now() - interval '26 hours', now() - interval '25 hours', 'disk below 80 %', \
                 'seeded:disk_full')",
    )
    .bind(STORED_ALERT_MACHINE)
    .execute(&mut conn)
    .await
    .expect("stored alert");
}

/// This machine's memory as the agent reports it (MemTotal).
fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo");
    kib * 1024
}

/// The distribution's name (`NAME` in /etc/os-release), empty if unknown.
fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// A silence of `rule` on `machine` for two hours, as `sysmonstm silence
/// add` stores it.
async fn put_silence(env: &common::Env, machine: &MachineId, rule: &MachineId) {
    let kv = sysmonstm_kit::jetstream::ensure_kv(&env.js, streams::silences_bucket())
        .await
        .expect("silences bucket");
    let now = chrono::Utc::now().timestamp_millis();
    let s = sysmonstm_schemas::silence::Silence {
        id: "browser-silence".into(),
        machines: machine.to_string(),
        rule: Some(rule.to_string()),
        comment: "browser test".into(),
        by: "browser.rs".into(),
        starts_ms: now,
        ends_ms: now + 2 * 3600 * 1000,
    };
    kv.put(&s.id, serde_json::to_vec(&s).expect("JSON").into())
        .await
        .expect("silence stored");
}

/// A real AlertEvent, as the alerter publishes it (subject, Msg-Id).
async fn publish_alert(
    env: &common::Env,
    machine: &MachineId,
    rule: &MachineId,
    since: i64,
    state: v1::AlertState,
) {
    env.js
        .get_or_create_stream(streams::alerts())
        .await
        .expect("ALERTS");
    let now = chrono::Utc::now().timestamp_millis();
    let (label, value, message) = match state {
        v1::AlertState::Firing => ("firing", 97.5, "CPU above 90 % for 30 s"),
        _ => ("resolved", 42.0, "CPU back below 85 %"),
    };
    let ev = v1::AlertEvent {
        machine_id: machine.to_string(),
        rule: rule.to_string(),
        severity: v1::Severity::Critical as i32,
        state: state as i32,
        metric: "cpu".into(),
        value,
        threshold: 90.0,
        since_ms: since,
        timestamp_ms: now,
        message: message.into(),
        repeat: 0,
        trigger_seq: 0,
    };
    env.js
        .send_publish(
            subjects::alert(v1::Severity::Critical, machine, rule),
            PublishMessage::build()
                .message_id(format!("{machine}:{rule}:{since}:{label}"))
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
