//! `just bench stack`: the whole stack as users run it, under a simulated
//! fleet, measured end to end.
//!
//! * A hub as shipped (`nats/hub.conf`: `sync_interval: always`, operator
//!   mode with every service on its own credential) dialling an edge
//!   nats-server over a leaf link; the edge streams source the hub's.
//! * The release persister (into PostgreSQL), alerter (one CPU rule that a
//!   share of the fleet breaches and clears every 40 s, and the built-in
//!   silence rule) and gateway with M WebSocket clients on the summary of all.
//! * `sysmonstm-loadgen`'s fleet: N machines at R Hz for D seconds, after a
//!   warm-up, through the hub with the bench-only `loadgen` credential.
//!
//! Printed and written to `target/bench/stack.json` (plus `stack.svg`, rate
//! and lag over time): offered and persisted rates, the largest lag of each
//! consumer and of the edge, publish→WebSocket p50/p99 (a snapshot's seq is
//! its publish time in µs, so a client needs no shared map), publish→alert
//! p50/p99 (a firing event's `trigger_seq` is the publish time of the
//! snapshot that completed its window; received through an ordered consumer
//! on ALERTS, as `sysmonstm alerts watch` does), CPU and RSS of every process,
//! and loss: the (machine, seq) rows in PostgreSQL compared with what was
//! sent, and the hub's and the edge's stream counts with it.
//!
//! Env: BENCH_MACHINES (1000), BENCH_RATE (1), BENCH_SECONDS (60),
//! BENCH_WARMUP_SECONDS (10), BENCH_CLIENTS (20), BENCH_BREACH_PERCENT (10),
//! BENCH_SILENT_PERCENT (2), SYSMON_BIN_DIR (the release binaries),
//! SYSMON_BENCH_DATABASE_URL (an admin URL; a fresh database is made on it),
//! BENCH_HUB_SYNC=default (the hub without `sync_interval: always`, to tell
//! the fsyncs' part from the rest), BENCH_PARTITIONS (1: METRICS split into
//! this many streams, the hub's account mapping and every service set so),
//! BENCH_PERF (seconds: `perf record` the hub, the edge and the services for
//! that long from the start of the measured window, into
//! `target/bench/perf.data`; `scripts/bench-stack.sh` makes the flame graph).
//!
//! BENCH_HUB_PPROF=1 opens the hub's Go profiler (its address is printed).
//!
//! A disk probe beside the stack appends 1 KiB and fsyncs it ten times a
//! second in the temp dir (where the hub's store is): the disk's fsync
//! latency over the run, next to the consumers' lags. A stream's consumers
//! read through the lock its store holds while it fsyncs, so that latency
//! is what sets their share.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use futures::{StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use serde::Serialize;
use sysmonstm_kit::creds::{Authority, Domain, Role};
use sysmonstm_loadgen::{FleetSpec, LoadSpec, Observer, load};
use sysmonstm_schemas::{streams, v1};
use sysmonstm_testkit::{NatsServer, TestDb, free_port};
use tokio_tungstenite::tungstenite::Message;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One service process; killed on drop.
struct Svc {
    name: &'static str,
    child: Child,
    dir: tempfile::TempDir,
}

impl Svc {
    fn start(
        name: &'static str,
        bin: &Path,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sysmonstm-bench-{name}-"))
            .tempdir()?;
        let log = std::fs::File::create(dir.path().join("log"))?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .env("SYSMON_ADDR_FILE", dir.path().join("addr"))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { name, child, dir })
    }

    async fn addr(&mut self) -> anyhow::Result<SocketAddr> {
        let path = self.dir.path().join("addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(a) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                return Ok(a);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited ({status}):\n{}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} reported no address in 60 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime (clock ticks) and VmRSS (KiB) of `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (get(11) + get(12), rss)
}

/// `pid` and its children (PostgreSQL's backends are the postmaster's).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if rest
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(p);
        }
    }
    out
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}

/// Counts what the load generator hands to the connection.
#[derive(Default)]
struct Offered(AtomicU64);
impl Observer for Offered {
    fn published(&self, _machine: usize, _seq: u64, _at: Instant) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, Default, Serialize)]
struct Second {
    t_s: u64,
    offered: u64,
    persisted: u64,
    persister_lag: u64,
    alerter_lag: u64,
    edge_lag: u64,
    /// Of the lags: delivered but not yet acknowledged.
    persister_ack_pending: u64,
    alerter_ack_pending: u64,
    /// Messages redelivered so far (ack wait expired), all partitions.
    persister_redelivered: u64,
    alerter_redelivered: u64,
    /// The disk probe's fsyncs in that second: median and slowest, ms.
    fsync_p50_ms: f64,
    fsync_max_ms: f64,
}

/// Appends 1 KiB and fsyncs it every 100 ms in `dir` until `stop`, each
/// latency (ms) into `out`. The file is cut back at 8 MiB.
fn disk_probe(dir: &Path, stop: Arc<AtomicBool>, out: Arc<Mutex<Vec<f64>>>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let path = dir.join(format!(
        "sysmonstm-bench-fsync-probe-{}",
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("disk probe {}", path.display()))?;
    f.set_len(0)?;
    let buf = [0x5au8; 1024];
    let mut written = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        f.write_all(&buf)?;
        f.sync_all()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        out.lock()
            .map_err(|_| anyhow::anyhow!("probe lock"))?
            .push(ms);
        written += buf.len();
        if written >= 8 << 20 {
            f.set_len(0)?;
            f.sync_all()?;
            written = 0;
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
    }
    drop(f);
    std::fs::remove_file(&path).ok();
    Ok(())
}

/// Median and largest of `v` (0 when empty).
fn median_max(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}

#[derive(Debug, Serialize)]
struct ProcFigures {
    name: String,
    cpu_percent_of_a_core: f64,
    rss_mib_max: f64,
}

#[derive(Debug, Serialize)]
struct Figures {
    machine: String,
    /// `sync_interval: always` (as shipped) or the default.
    hub_sync: &'static str,
    metrics_partitions: usize,
    machines: usize,
    rate_hz: f64,
    seconds: u64,
    clients: usize,
    offered: u64,
    offered_per_s: f64,
    persisted_per_s: f64,
    max_lag: BTreeMap<String, u64>,
    ws_p50_ms: Option<f64>,
    ws_p99_ms: Option<f64>,
    ws_updates: usize,
    alert_p50_ms: Option<f64>,
    alert_p99_ms: Option<f64>,
    alerts: usize,
    processes: Vec<ProcFigures>,
    rows_stored: u64,
    missing_rows: u64,
    unexpected_rows: u64,
    hub_stream: u64,
    edge_stream: u64,
    loss: u64,
    series: Vec<Second>,
}

/// Where one durable consumer stands.
#[derive(Clone, Copy, Default)]
struct Lag {
    /// Not yet acknowledged: pending delivery plus delivered and unacked.
    lag: u64,
    /// The ack floor's stream sequence.
    floor: u64,
    ack_pending: u64,
    redelivered: u64,
}

async fn consumer_lag(js: &jetstream::Context, stream: &str, consumer: &str) -> Option<Lag> {
    let mut c: jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream(consumer, stream).await.ok()?;
    let info = c.info().await.ok()?;
    Some(Lag {
        lag: info.num_pending + info.num_ack_pending as u64,
        floor: info.ack_floor.stream_sequence,
        ack_pending: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
    })
}

/// [`consumer_lag`] summed over every METRICS partition (each partition's
/// stream sequences count from 1, so the floors' sum is what was
/// acknowledged in all).
async fn metrics_lag(
    js: &jetstream::Context,
    parts: streams::Partitions,
    consumer: &str,
) -> Option<Lag> {
    let mut sum = Lag::default();
    for name in parts.names() {
        let l = consumer_lag(js, &name, consumer).await?;
        sum.lag += l.lag;
        sum.floor += l.floor;
        sum.ack_pending += l.ack_pending;
        sum.redelivered += l.redelivered;
    }
    Some(sum)
}

/// Messages in every METRICS partition of the hub.
async fn hub_metrics(js: &jetstream::Context, parts: streams::Partitions) -> Option<u64> {
    let mut n = 0;
    for name in parts.names() {
        n += stream_messages(js, &name).await?.0;
    }
    Some(n)
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> Option<(u64, u64)> {
    let mut s = js.get_stream(name).await.ok()?;
    let info = s.info().await.ok()?;
    Some((info.state.messages, info.state.last_sequence))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Interrupted, the run is dropped: every process it started is killed
    // (their handles kill on drop) and the temp dirs go.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run() => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run() -> anyhow::Result<()> {
    let machines: usize = env_or("BENCH_MACHINES", 1000);
    let rate: f64 = env_or("BENCH_RATE", 1.0);
    let seconds: u64 = env_or("BENCH_SECONDS", 60);
    let warmup: u64 = env_or("BENCH_WARMUP_SECONDS", 10);
    let clients: usize = env_or("BENCH_CLIENTS", 20);
    let breach: u32 = env_or("BENCH_BREACH_PERCENT", 10);
    let silent: u32 = env_or("BENCH_SILENT_PERCENT", 2);
    let perf_secs: u64 = env_or("BENCH_PERF", 0);
    let parts =
        streams::Partitions::new(env_or("BENCH_PARTITIONS", 1)).context("BENCH_PARTITIONS")?;
    let bin_dir = PathBuf::from(std::env::var("SYSMON_BIN_DIR").context("SYSMON_BIN_DIR")?);
    let admin_url =
        std::env::var("SYSMON_BENCH_DATABASE_URL").context("SYSMON_BENCH_DATABASE_URL")?;
    let postmaster: Option<u32> = std::env::var("BENCH_PG_PID")
        .ok()
        .and_then(|p| p.parse().ok());

    // Credentials: every service its own, as `just up` makes them.
    let work = tempfile::tempdir()?;
    let mut hub_auth = Authority::init(&work.path().join("creds"))?;
    let mut edge_auth = Authority::init_for(&work.path().join("creds-edge"), Domain::Edge)?;
    let cred = |p: PathBuf| p.to_string_lossy().into_owned();
    let persister_creds = cred(hub_auth.issue(Role::Persister)?);
    let alerter_creds = cred(hub_auth.issue(Role::Alerter)?);
    let gateway_creds = cred(hub_auth.issue(Role::Gateway)?);
    let reader_creds = hub_auth.issue(Role::CliReadOnly)?;
    let loadgen_creds = hub_auth.issue(Role::Loadgen)?;
    hub_auth.set_partitions(parts)?;
    let leaf = edge_auth.issue(Role::Leaf)?;
    let edge_admin = edge_auth.issue(Role::EdgeAdmin)?;

    let leaf_port = free_port();
    let edge = NatsServer::start_with(
        &format!("domain: {}\n  max_file_store: 64GB", streams::EDGE_DOMAIN),
        &format!(
            "{}\nleafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n",
            edge_auth.include_line()
        ),
    );
    let mut hub_extra = format!(
        "{}\n{}",
        hub_auth.include_line(),
        hub_auth.leaf_remote_conf(&format!("nats-leaf://127.0.0.1:{leaf_port}"), &leaf)?
    );
    // BENCH_HUB_PPROF=1: the hub's Go profiler (goroutines, and where they
    // block, sampled every 10 µs of blocking) on a port of its own.
    if std::env::var("BENCH_HUB_PPROF").is_ok_and(|v| v == "1") {
        let port = free_port();
        hub_extra.push_str(&format!("\nprof_port: {port}\nprof_block_rate: 10000\n"));
        println!("hub profiler: http://127.0.0.1:{port}/debug/pprof/");
    }
    // BENCH_HUB_SYNC=default: the hub without `sync_interval: always`, to
    // tell the fsyncs' part from the rest.
    let sync_always = std::env::var("BENCH_HUB_SYNC").map_or(true, |v| v != "default");
    let hub = if sync_always {
        NatsServer::start_shipped_hub_with(&hub_extra)
    } else {
        NatsServer::start_with(
            &format!("domain: {}\n  max_file_store: 64GB", streams::HUB_DOMAIN),
            &hub_extra,
        )
    };
    let db = TestDb::on(&admin_url).await;
    let pool = db.pool().await;

    let nats_env = |creds: &str| {
        vec![
            ("NATS_URL", hub.url()),
            ("NATS_CREDS", creds.to_owned()),
            ("DATABASE_URL", db.url().to_owned()),
            ("SYSMON_PERSISTER_METRICS_PARTITIONS", parts.to_string()),
            ("SYSMON_ALERTER_METRICS_PARTITIONS", parts.to_string()),
            ("SYSMON_GATEWAY_METRICS_PARTITIONS", parts.to_string()),
        ]
    };
    let mut env = nats_env(&persister_creds);
    env.push(("SYSMON_PERSISTER_METRICS_LISTEN", "127.0.0.1:0".into()));
    let mut persister = Svc::start("persister", &bin_dir.join("sysmonstm-persister"), &[], &env)?;
    persister.addr().await?;
    let rules = work.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"cpu_high\"\nmetric = \"cpu\"\nthreshold = 90\nclear = 50\nfor = \"2s\"\n\
         severity = \"critical\"\nmachines = [\"lg-*\"]\n\n\
         [[rule]]\nname = \"machine_silent\"\nmetric = \"silent\"\nop = \">=\"\nthreshold = 5\n\
         severity = \"warning\"\nmachines = [\"lg-*\"]\n",
    )?;
    let mut env = nats_env(&alerter_creds);
    env.push(("SYSMON_ALERTER_METRICS_LISTEN", "127.0.0.1:0".into()));
    let mut alerter = Svc::start(
        "alerter",
        &bin_dir.join("sysmonstm-alerter"),
        &["--rules", &rules.to_string_lossy()],
        &env,
    )?;
    alerter.addr().await?;
    let mut gateway = Svc::start(
        "gateway",
        &bin_dir.join("sysmonstm-gateway"),
        &["--listen", "127.0.0.1:0"],
        &nats_env(&gateway_creds),
    )?;
    let gw = gateway.addr().await?;

    let connect = |url: String, creds: PathBuf| async move {
        async_nats::ConnectOptions::with_credentials_file(creds)
            .await?
            .connect(url)
            .await
            .map_err(anyhow::Error::from)
    };
    // The edge streams, sourcing the hub's over the leaf link.
    let admin = jetstream::new(connect(edge.url(), edge_admin).await?);
    let reader = jetstream::new(connect(hub.url(), reader_creds.clone()).await?);
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub_metrics(&reader, parts).await.is_none()
        || stream_messages(&reader, streams::ALERTS).await.is_none()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the hub's streams did not appear"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The edge's window holds the whole run (its default 2 GiB is ~10 min of
    // 6 000 machines): a snapshot dropped by the window's byte limit would
    // count as lost.
    let edge_limits = streams::EdgeLimits {
        max_bytes: 48 << 30,
        ..streams::EdgeLimits::default()
    };
    sysmonstm_kit::jetstream::ensure_edge_streams(&admin, &edge_limits, parts).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    // WebSocket clients on the summary of all.
    let ws_lat: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut ws_tasks = Vec::new();
    for _ in 0..clients {
        let (stop, measuring, lat) = (stop.clone(), measuring.clone(), ws_lat.clone());
        let url = format!("ws://{gw}/ws");
        ws_tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(msg)) =
                    tokio::time::timeout(Duration::from_millis(500), ws.next()).await
                else {
                    continue;
                };
                let now = load::now_us();
                if let Message::Text(t) = msg? {
                    if !measuring.load(Ordering::Relaxed) {
                        continue;
                    }
                    // Summaries carry "seq" (publish time, µs).
                    let mut rest = t.as_str();
                    while let Some(i) = rest.find("\"seq\":") {
                        rest = &rest[i + 6..];
                        let end = rest
                            .find(|c: char| !c.is_ascii_digit())
                            .unwrap_or(rest.len());
                        if let Ok(seq) = rest[..end].parse::<u64>() {
                            if seq > 1_000_000_000_000_000 {
                                mine.push(now.saturating_sub(seq));
                            }
                        }
                    }
                }
            }
            lat.lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .extend(mine);
            anyhow::Ok(())
        }));
    }
    // Alerts as `alerts watch` sees them.
    let alert_lat: Arc<Mutex<Vec<u64>>> = Arc::default();
    let alerts_task = {
        let (stop, measuring, lat) = (stop.clone(), measuring.clone(), alert_lat.clone());
        let watcher = jetstream::new(connect(hub.url(), reader_creds).await?);
        tokio::spawn(async move {
            let consumer = watcher
                .get_stream(streams::ALERTS)
                .await?
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy: jetstream::consumer::DeliverPolicy::New,
                    ..Default::default()
                })
                .await?;
            let mut msgs = consumer.messages().await?;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(500), msgs.next()).await
                else {
                    continue;
                };
                let now = load::now_us();
                let m = m?;
                let Ok(ev) = v1::AlertEvent::decode(m.payload.clone()) else {
                    continue;
                };
                if measuring.load(Ordering::Relaxed)
                    && ev.state == v1::AlertState::Firing as i32
                    && ev.repeat == 0
                    && ev.trigger_seq > 1_000_000_000_000_000
                {
                    lat.lock()
                        .map_err(|_| anyhow::anyhow!("lock"))?
                        .push(now.saturating_sub(ev.trigger_seq));
                }
            }
            anyhow::Ok(())
        })
    };

    // The load.
    let fleet = FleetSpec {
        machines,
        prefix: "lg".into(),
        breach_percent: breach,
        silent_percent: silent,
    }
    .build()?;
    let lg = jetstream::new(connect(hub.url(), loadgen_creds).await?);
    load::publish_info(&lg, &fleet).await?;
    let offered = Arc::new(Offered::default());
    let spec = LoadSpec {
        rate_hz: rate,
        duration: Duration::from_secs(warmup + seconds),
        in_flight: 16_384,
        ack_timeout: Duration::from_secs(10),
    };
    println!(
        "{machines} machines at {rate} Hz for {seconds} s (+{warmup} s warm-up), {clients} WebSocket clients, \
         hub {} with METRICS in {parts} stream(s); {}, {} cores; load average before: {}",
        if sync_always {
            "as shipped (sync_interval: always)"
        } else {
            "with default fsync"
        },
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let load_task = {
        let (fleet, spec, offered) = (fleet.clone(), spec.clone(), offered.clone());
        tokio::spawn(async move { load::run(lg, &fleet, &spec, offered).await })
    };

    // Once a second: rates, lags, CPU and RSS.
    let mut procs: Vec<(String, Vec<u32>)> = vec![
        ("nats hub".into(), hub.pid().into_iter().collect()),
        ("nats edge".into(), edge.pid().into_iter().collect()),
        ("persister".into(), vec![persister.pid()]),
        ("alerter".into(), vec![alerter.pid()]),
        ("gateway".into(), vec![gateway.pid()]),
        (
            "loadgen + clients (this process)".into(),
            vec![std::process::id()],
        ),
    ];
    let mut series = Vec::new();
    let mut max_lag: BTreeMap<String, u64> = BTreeMap::new();
    let mut cpu0: Vec<u64> = Vec::new();
    let mut rss_max: Vec<u64> = vec![0; procs.len() + 1];
    let mut measured_from: Option<(Instant, u64)> = None;
    let started = Instant::now();
    let mut last_floor = 0;
    let mut last_offered = 0;
    let mut perf: Option<Child> = None;
    let probe_stop = Arc::new(AtomicBool::new(false));
    let probe_out = Arc::new(Mutex::new(Vec::new()));
    let probe = {
        let (stop, out) = (probe_stop.clone(), probe_out.clone());
        let dir = std::env::temp_dir();
        std::thread::spawn(move || disk_probe(&dir, stop, out))
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while !load_task.is_finished() {
        tick.tick().await;
        let t = started.elapsed().as_secs();
        if t == warmup && measured_from.is_none() {
            measuring.store(true, Ordering::Relaxed);
            if let Some(pm) = postmaster {
                procs.push(("postgresql".into(), with_children(pm)));
            }
            cpu0 = procs
                .iter()
                .map(|(_, pids)| pids.iter().map(|p| usage(*p).0).sum())
                .collect();
            measured_from = Some((Instant::now(), offered.0.load(Ordering::Relaxed)));
            if perf_secs > 0 {
                // The stack's processes only (not PostgreSQL, not this one),
                // sampled with DWARF call stacks.
                let pids: Vec<String> = procs
                    .iter()
                    .filter(|(name, _)| !name.starts_with("loadgen") && name != "postgresql")
                    .flat_map(|(_, pids)| pids.iter().map(u32::to_string))
                    .collect();
                std::fs::create_dir_all("target/bench")?;
                perf = Some(
                    Command::new("perf")
                        .args(["record", "-q", "-F", "199", "--call-graph", "dwarf,16384"])
                        .args(["-o", "target/bench/perf.data", "-p", &pids.join(",")])
                        .args(["--", "sleep", &perf_secs.to_string()])
                        .stdout(Stdio::null())
                        .spawn()
                        .context("perf record (BENCH_PERF)")?,
                );
                println!("perf: recording {} for {perf_secs} s", pids.join(","));
            }
        }
        let p = metrics_lag(&reader, parts, streams::PERSISTER_CONSUMER)
            .await
            .unwrap_or(Lag {
                floor: last_floor,
                ..Lag::default()
            });
        let a = metrics_lag(&reader, parts, streams::ALERTER_CONSUMER)
            .await
            .unwrap_or_default();
        let hub_last = hub_metrics(&reader, parts).await.unwrap_or(0);
        let edge_n = stream_messages(&admin, streams::METRICS)
            .await
            .map_or(0, |s| s.0);
        let (fsync_p50_ms, fsync_max_ms) = {
            let mut v = probe_out
                .lock()
                .map(|mut v| std::mem::take(&mut *v))
                .unwrap_or_default();
            median_max(&mut v)
        };
        let now_offered = offered.0.load(Ordering::Relaxed);
        let s = Second {
            t_s: t,
            offered: now_offered - last_offered,
            persisted: p.floor.saturating_sub(last_floor),
            persister_lag: p.lag,
            alerter_lag: a.lag,
            edge_lag: hub_last.saturating_sub(edge_n),
            persister_ack_pending: p.ack_pending,
            alerter_ack_pending: a.ack_pending,
            persister_redelivered: p.redelivered,
            alerter_redelivered: a.redelivered,
            fsync_p50_ms,
            fsync_max_ms,
        };
        last_floor = p.floor;
        last_offered = now_offered;
        if measured_from.is_some() {
            for (k, v) in [
                ("persister", s.persister_lag),
                ("alerter", s.alerter_lag),
                ("edge", s.edge_lag),
            ] {
                let e = max_lag.entry(k.into()).or_default();
                *e = (*e).max(v);
            }
            for (i, (_, pids)) in procs.iter().enumerate() {
                let rss: u64 = pids.iter().map(|p| usage(*p).1).sum();
                rss_max[i] = rss_max[i].max(rss);
            }
        }
        if t % 10 == 0 {
            println!(
                "t={t:>4}s offered {:>6}/s persisted {:>6}/s lag: persister {} ({} unacked, {} redelivered) \
                 alerter {} ({} unacked, {} redelivered) edge {}; disk fsync p50 {:.2} ms max {:.1} ms",
                s.offered,
                s.persisted,
                s.persister_lag,
                s.persister_ack_pending,
                s.persister_redelivered,
                s.alerter_lag,
                s.alerter_ack_pending,
                s.alerter_redelivered,
                s.edge_lag,
                s.fsync_p50_ms,
                s.fsync_max_ms
            );
        }
        series.push(s);
    }
    // Stopped (and its file removed) whether or not the load succeeded.
    probe_stop.store(true, Ordering::Relaxed);
    match probe.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => println!("disk probe: {e:#}"),
        Err(_) => println!("disk probe: its thread panicked"),
    }
    let report = load_task.await??;
    if let Some(mut p) = perf {
        p.wait()?;
    }
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let (m_start, m_offered) = measured_from.context("the run ended before the warm-up did")?;
    let window = m_start.elapsed().as_secs_f64();
    let cpu: Vec<f64> = procs
        .iter()
        .zip(&cpu0)
        .map(|((_, pids), c0)| {
            let c1: u64 = pids.iter().map(|p| usage(*p).0).sum();
            (c1.saturating_sub(*c0)) as f64 / ticks_per_s / window * 100.0
        })
        .collect();
    let offered_window = report.offered.saturating_sub(m_offered);

    // Drain: the persister and the edge catch up with what was published.
    let drain = Instant::now();
    loop {
        let lag = metrics_lag(&reader, parts, streams::PERSISTER_CONSUMER)
            .await
            .map_or(u64::MAX, |l| l.lag);
        let hub_n = hub_metrics(&reader, parts).await.unwrap_or(0);
        let edge_n = stream_messages(&admin, streams::METRICS)
            .await
            .map_or(0, |s| s.0);
        if lag == 0 && edge_n >= hub_n {
            break;
        }
        if drain.elapsed() > Duration::from_secs(600) {
            println!("not drained after 600 s: persister lag {lag}, edge {edge_n} of {hub_n}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Persisted during the measured window (the persister's ack floor moves
    // once a batch is committed).
    let persisted_window_rate = series
        .iter()
        .filter(|s| s.t_s > warmup)
        .map(|s| s.persisted)
        .sum::<u64>() as f64
        / window;
    stop.store(true, Ordering::Relaxed);
    for t in ws_tasks {
        if let Err(e) = t.await? {
            println!("a WebSocket client ended with: {e:#}");
        }
    }
    if let Err(e) = alerts_task.await? {
        println!("the alert watcher ended with: {e:#}");
    }

    // Loss: the rows, machine by machine, against the seqs sent.
    let ids: Vec<String> = fleet.iter().map(|s| s.id.to_string()).collect();
    let index: BTreeMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, s)| (s.as_str(), i))
        .collect();
    let mut rows = sqlx::query_as::<_, (String, i64)>(
        "SELECT machine_id, seq FROM metrics WHERE machine_id LIKE 'lg-%' ORDER BY machine_id, seq",
    )
    .fetch(&pool);
    let (mut stored, mut unexpected) = (0u64, 0u64);
    let mut found: Vec<usize> = vec![0; ids.len()];
    while let Some((m, seq)) = rows.try_next().await? {
        stored += 1;
        let Some(&i) = index.get(m.as_str()) else {
            unexpected += 1;
            continue;
        };
        // Rows come in seq order, as the sent seqs are kept.
        let sent = &report.seqs[i];
        let seq = u64::try_from(seq).unwrap_or(0);
        while found[i] < sent.len() && sent[found[i]] < seq {
            found[i] += 1;
        }
        if found[i] < sent.len() && sent[found[i]] == seq {
            found[i] += 1;
        } else {
            unexpected += 1;
        }
    }
    drop(rows);
    let missing = report.offered.saturating_sub(stored - unexpected);
    let hub_n = hub_metrics(&reader, parts).await.unwrap_or(0);
    let edge_n = stream_messages(&admin, streams::METRICS)
        .await
        .map_or(0, |s| s.0);
    let loss =
        missing + report.offered.saturating_sub(hub_n) + report.offered.saturating_sub(edge_n);

    let mut ws = ws_lat.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    ws.sort_unstable();
    let mut al = alert_lat
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    al.sort_unstable();
    let figures = Figures {
        machine: format!(
            "{}, {} cores, {} GiB",
            cpu_model(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_gib()
        ),
        hub_sync: if sync_always { "always" } else { "default" },
        metrics_partitions: parts.get(),
        machines,
        rate_hz: rate,
        seconds,
        clients,
        offered: report.offered,
        offered_per_s: offered_window as f64 / window,
        persisted_per_s: persisted_window_rate,
        max_lag,
        ws_p50_ms: percentile(&ws, 0.5),
        ws_p99_ms: percentile(&ws, 0.99),
        ws_updates: ws.len(),
        alert_p50_ms: percentile(&al, 0.5),
        alert_p99_ms: percentile(&al, 0.99),
        alerts: al.len(),
        processes: procs
            .iter()
            .enumerate()
            .map(|(i, (name, _))| ProcFigures {
                name: name.clone(),
                cpu_percent_of_a_core: cpu.get(i).copied().unwrap_or(0.0),
                rss_mib_max: rss_max[i] as f64 / 1024.0,
            })
            .collect(),
        rows_stored: stored,
        missing_rows: missing,
        unexpected_rows: unexpected,
        hub_stream: hub_n,
        edge_stream: edge_n,
        loss,
        series,
    };
    print_figures(&figures);
    let out = Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("stack.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    std::fs::write(out.join("stack.svg"), svg(&figures))?;
    println!("written: target/bench/stack.json, target/bench/stack.svg");
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    if figures.loss > 0 {
        bail!("{} snapshots lost", figures.loss);
    }
    Ok(())
}

fn mem_gib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| (kib + (1 << 19)) >> 20)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.2} ms"))
}

fn print_figures(f: &Figures) {
    println!(
        "--- stack: {} machines at {} Hz, {} s measured, {} WebSocket clients",
        f.machines, f.rate_hz, f.seconds, f.clients
    );
    println!("machine:            {}", f.machine);
    println!(
        "offered:            {:.0} snapshots/s ({} in all)",
        f.offered_per_s, f.offered
    );
    println!("persisted:          {:.0} snapshots/s", f.persisted_per_s);
    for (k, v) in &f.max_lag {
        println!("max lag {k:<10}  {v} messages");
    }
    println!(
        "publish→WebSocket:  p50 {} p99 {} ({} updates)",
        ms(f.ws_p50_ms),
        ms(f.ws_p99_ms),
        f.ws_updates
    );
    println!(
        "publish→alert:      p50 {} p99 {} ({} firing events)",
        ms(f.alert_p50_ms),
        ms(f.alert_p99_ms),
        f.alerts
    );
    for p in &f.processes {
        println!(
            "{:<34} CPU {:>6.1} % of a core, RSS max {:>7.1} MiB",
            p.name, p.cpu_percent_of_a_core, p.rss_mib_max
        );
    }
    println!(
        "loss:               {} (rows {} of {} sent, {} missing, {} unexpected; hub stream {}, edge stream {})",
        f.loss,
        f.rows_stored,
        f.offered,
        f.missing_rows,
        f.unexpected_rows,
        f.hub_stream,
        f.edge_stream
    );
}

/// Rate, lag and the disk probe's fsync latency over time, three panels,
/// no library.
fn svg(f: &Figures) -> String {
    let (w, h, pad) = (900.0, 240.0, 50.0);
    let n = f.series.len().max(2) as f64;
    let x = |i: usize| pad + (w - 2.0 * pad) * i as f64 / (n - 1.0);
    let panel = |top: f64, title: &str, lines: &[(&str, &str, Vec<u64>)]| {
        let max = lines
            .iter()
            .flat_map(|l| l.2.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let y = |v: u64| top + h - pad / 2.0 - (h - pad) * v as f64 / max;
        let mut s = format!(
            "<text x=\"{pad}\" y=\"{}\" font-size=\"14\">{title} (max {max:.0})</text>\
             <line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
            top + 16.0,
            y(0),
            w - pad,
            y(0)
        );
        for (k, (name, color, vals)) in lines.iter().enumerate() {
            let pts: Vec<String> = vals
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
                .collect();
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
                 <text x=\"{}\" y=\"{}\" font-size=\"12\" fill=\"{color}\">{name}</text>",
                pts.join(" "),
                w - pad - 200.0 + 100.0 * (k % 2) as f64,
                top + 16.0 + 14.0 * (k / 2) as f64
            ));
        }
        s
    };
    let col = |g: fn(&Second) -> u64| f.series.iter().map(g).collect::<Vec<u64>>();
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>{}{}{}\
         <text x=\"{pad}\" y=\"{}\" font-size=\"12\">seconds since start ({} machines at {} Hz)</text></svg>",
        3.0 * h + 30.0,
        panel(
            0.0,
            "snapshots per second",
            &[
                ("offered", "#1f77b4", col(|s| s.offered)),
                ("persisted", "#2ca02c", col(|s| s.persisted))
            ]
        ),
        panel(
            h,
            "consumer lag (messages)",
            &[
                ("persister", "#d62728", col(|s| s.persister_lag)),
                ("alerter", "#9467bd", col(|s| s.alerter_lag)),
                ("edge", "#ff7f0e", col(|s| s.edge_lag)),
            ]
        ),
        panel(
            2.0 * h,
            "disk fsync, µs (probe, each second)",
            &[
                ("median", "#17becf", col(|s| (s.fsync_p50_ms * 1e3) as u64)),
                ("slowest", "#7f7f7f", col(|s| (s.fsync_max_ms * 1e3) as u64)),
            ]
        ),
        3.0 * h + 20.0,
        f.machines,
        f.rate_hz
    )
}
