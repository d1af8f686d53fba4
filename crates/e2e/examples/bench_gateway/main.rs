//! `just bench gateway`: the release gateway as its own process, a real
//! nats-server (hub durability), N simulated machines publishing real-shaped
//! snapshots at 1 Hz through JetStream, and M WebSocket clients on the
//! summary of all. Prints p50/p99 from publish to receipt in a client, the
//! share of updates a client received (the rest coalesced), and the
//! gateway's CPU and RSS. With `SYSMON_BENCH_DATABASE_URL` it also measures
//! the history endpoint over 30 days of one machine.
//!
//! Each snapshot's `seq` is its publish time in microseconds since the Unix
//! epoch (strictly increasing per machine, as the contract wants), so a
//! client computes the latency from the summary alone, with no shared map.
//!
//! Args: <gateway binary>; env BENCH_MACHINES (1000), BENCH_CLIENTS (200),
//! BENCH_SECONDS (20), BENCH_WARMUP_SECONDS (5).

mod history;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_schemas::{MachineId, headers, streams, subjects};
use sysmonstm_testkit::NatsServer;
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// utime+stime in clock ticks, and VmRSS / VmHWM in KiB, of `pid`.
fn proc_usage(pid: u32) -> (u64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (ticks, kib("VmRSS:"), kib("VmHWM:"))
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let gateway_bin = PathBuf::from(
        std::env::args()
            .nth(1)
            .context("usage: bench_gateway <sysmonstm-gateway binary>")?,
    );
    let machines = env_or("BENCH_MACHINES", 1000) as usize;
    let clients = env_or("BENCH_CLIENTS", 200) as usize;
    let seconds = env_or("BENCH_SECONDS", 20);
    let warmup = env_or("BENCH_WARMUP_SECONDS", 5);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    // The hub fsyncs every write before acking (nats/hub.conf); BENCH_HUB=plain
    // measures without that, to show what the disk costs.
    let plain = std::env::var("BENCH_HUB").is_ok_and(|v| v == "plain");
    let nats = if plain {
        NatsServer::start()
    } else {
        NatsServer::start_hub()
    };
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    js.get_or_create_stream(streams::metrics(&streams::MetricsLimits {
        max_bytes: 1024 * 1024 * 1024,
        ..Default::default()
    }))
    .await?;
    js.get_or_create_stream(streams::machines()).await?;

    let port = sysmonstm_testkit::free_port();
    let bench_db = std::env::var("SYSMON_BENCH_DATABASE_URL").ok();
    let db = bench_db
        .clone()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:9/none".into());
    let gateway = Proc(
        Command::new(&gateway_bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--server",
                &nats.url(),
                "--database-url",
                &db,
            ])
            .env("RUST_LOG", "warn")
            // All the bench's clients come from one address; the default
            // cap per address (100) is for browsers, not for this.
            .env("SYSMON_GATEWAY_WS_MAX_CLIENTS", (clients + 10).to_string())
            .env(
                "SYSMON_GATEWAY_WS_MAX_CLIENTS_PER_ADDRESS",
                (clients + 10).to_string(),
            )
            .env(
                "SYSMON_GATEWAY_WS_CONNECTS_PER_S",
                (clients + 10).to_string(),
            )
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {gateway_bin:?}"))?,
    );
    let pid = gateway.0.id();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "gateway did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One real snapshot of this machine, the shape every simulated one takes.
    let template = sysmonstm_testkit::snapshots::template(&MachineId::parse("bench")?).await;
    let template_len = template.encoded_len();
    let ids: Vec<MachineId> = (0..machines)
        .map(|i| MachineId::parse(&format!("sim-{i:04}")))
        .collect::<Result<_, _>>()?;

    // Clients: each records latencies (µs) once `recording` is set.
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
        let (recording, stop) = (Arc::clone(&recording), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_millis(200), ws.next()).await
                else {
                    continue;
                };
                let Message::Text(t) = msg else { continue };
                if !recording.load(Ordering::Relaxed) {
                    continue;
                }
                let now = now_us();
                // Summaries only carry "seq"; scanning beats parsing 1000 JSON
                // objects a second in each of 200 clients on the same cores.
                let mut rest = t.as_str();
                while let Some(i) = rest.find("\"seq\":") {
                    rest = &rest[i + 6..];
                    let end = rest
                        .find(|c: char| !c.is_ascii_digit())
                        .unwrap_or(rest.len());
                    if let Ok(seq) = rest[..end].parse::<u64>() {
                        lat.push(now.saturating_sub(seq));
                    }
                }
            }
            lat
        }));
    }
    eprintln!(
        "bench: {clients} clients connected; publishing {machines} machines at 1 Hz for {warmup}+{seconds} s"
    );

    // Publisher: every 10 ms a slice of the machines, so each publishes once a second.
    let published = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (js, stop, published, failed) = (
            js.clone(),
            Arc::clone(&stop),
            Arc::clone(&published),
            Arc::clone(&failed),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            // `next` counts publishes; at tick k, k * machines / 100 are due,
            // so every machine publishes once a second whatever N is.
            let mut next = 0usize;
            let mut ticks = 0usize;
            let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel(20_000);
            let acks = tokio::spawn({
                let failed = Arc::clone(&failed);
                async move {
                    let mut acks = Vec::with_capacity(1 << 16);
                    while let Some((f, t0)) = ack_rx.recv().await {
                        let f: async_nats::jetstream::context::PublishAckFuture = f;
                        let t0: u64 = t0;
                        if f.await.is_err() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            acks.push(now_us().saturating_sub(t0));
                        }
                    }
                    acks
                }
            });
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                ticks += 1;
                while next < ticks * machines / 100 {
                    let id = &ids[next % ids.len()];
                    next += 1;
                    let mut s = template.clone();
                    s.machine_id = id.to_string();
                    s.seq = now_us();
                    s.timestamp_ms = (s.seq / 1000) as i64;
                    match js
                        .send_publish(
                            subjects::metrics(id),
                            PublishMessage::build()
                                .message_id(headers::msg_id(id, s.seq))
                                .payload(s.encode_to_vec().into()),
                        )
                        .await
                    {
                        Ok(f) => {
                            published.fetch_add(1, Ordering::Relaxed);
                            let _ = ack_tx.send((f, s.seq)).await;
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            drop(ack_tx);
            acks.await.unwrap_or_default()
        })
    };

    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let (t0, _, _) = proc_usage(pid);
    let pub0 = published.load(Ordering::Relaxed);
    let start = Instant::now();
    recording.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    recording.store(false, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let (t1, rss, hwm) = proc_usage(pid);
    let pub1 = published.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut acks = publisher.await.unwrap_or_default();
    acks.sort_unstable();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu = (t1 - t0) as f64 / ticks_per_s / elapsed * 100.0;
    let expected = (pub1 - pub0) as f64 * clients as f64;

    println!("== just bench gateway ==");
    println!(
        "hub: nats-server with {}",
        if plain {
            "default JetStream sync (BENCH_HUB=plain)"
        } else {
            "sync_interval: always, as nats/hub.conf"
        }
    );
    println!(
        "setup: {machines} simulated machines at 1 Hz (real snapshot shape, {} B), {clients} WebSocket clients (summary of all), {cores} cores shared by hub, gateway and clients",
        template_len
    );
    println!(
        "window: {elapsed:.1} s after {warmup} s warm-up; published {} snapshots ({:.0}/s), {} publish failures",
        pub1 - pub0,
        (pub1 - pub0) as f64 / elapsed,
        failed.load(Ordering::Relaxed)
    );
    println!(
        "publish→receipt in a client: p50 {}  p90 {}  p99 {}  max {}  (n = {}; target p99 ≤ 10 ms: {})",
        ms(pct(&all, 0.5)),
        ms(pct(&all, 0.9)),
        ms(pct(&all, 0.99)),
        ms(all.last().copied().unwrap_or(0)),
        all.len(),
        if pct(&all, 0.99) <= 10_000 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "of which publish→JetStream ack (the hub's store): p50 {}  p99 {}",
        ms(pct(&acks, 0.5)),
        ms(pct(&acks, 0.99))
    );
    println!(
        "updates received by clients: {:.1} % of published × clients (the rest coalesced to the latest per machine, or still on its way when the window closed)",
        if expected > 0.0 {
            all.len() as f64 * 100.0 / expected
        } else {
            0.0
        }
    );
    println!(
        "gateway process: CPU {cpu:.0} % of one core (avg over the window), RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    // How many updates each WebSocket message carried (warm-up included):
    // every message is a frame to encode and a write for both ends.
    if let Ok((_, text)) = history::get(&addr, "/metrics").await {
        let value = |name: &str| {
            text.lines()
                .find(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|n| n.ends_with(name))
                })
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let (frames, messages) = (value("ws_frames_total"), value("ws_messages_total"));
        println!(
            "WebSocket messages: {messages:.0} carrying {frames:.0} updates ({:.2} updates per message)",
            frames / messages.max(1.0)
        );
    }

    // Written after the live part: 2.6 M rows keep the disk (and so the
    // hub's fsync) busy for minutes.
    let storage = match &bench_db {
        Some(url) => Some(history::prepare(url).await?),
        None => None,
    };
    match storage {
        None => println!(
            "history: not measured (set SYSMON_BENCH_DATABASE_URL; `just bench gateway` does)"
        ),
        Some(mode) => {
            println!(
                "history of one machine, 30 days at 1 Hz ({mode} storage), metric cpu, 50 requests per range, after the live load stopped:"
            );
            for (label, range_s) in [
                ("1 h", 3600),
                ("24 h", 86_400),
                ("7 d", 7 * 86_400),
                ("30 d", 30 * 86_400),
            ] {
                let (p50, p99, c50, c99, points) =
                    history::measure(&addr, "cpu", range_s, 50).await?;
                println!(
                    "  {label:>4}: {points:>4} points; from the database p50 {p50:.2} ms p99 {p99:.2} ms; cached p50 {c50:.2} ms p99 {c99:.2} ms"
                );
            }
        }
    }
    Ok(())
}
