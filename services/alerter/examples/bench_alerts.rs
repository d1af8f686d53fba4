//! `just bench alerts`: 1 000 machines at 1 Hz against 20 rules, on a real
//! nats-server (fsync on every write, as the hub), with the release
//! `sysmonstm-alerter` binary as its own process.
//!
//! One machine in ten (BENCH_FLAPPING_PERCENT) has a CPU following a square
//! wave (20 s at 95 %, 20 s at 10 %, phases spread), the rest stay at 10 %:
//! about 25 alert events a second, far more than a real fleet; five CPU rules with windows of 2–10 s fire
//! and resolve once per period each, fifteen rules on other metrics are
//! evaluated and never met. For each firing event that is not a reminder, the
//! latency is from the publish of the snapshot that completed its window
//! (the event's `trigger_seq`) to the event's arrival on a plain
//! subscription. The publish→ack time of the snapshots is printed next to it:
//! the part of the path that is the hub storing (and fsyncing) the snapshot. The alerter's CPU comes from /proc/<pid>/stat over
//! the measured window. Figures are printed whether or not they meet the
//! target.
//!
//! Arguments (env): BENCH_MACHINES (1000), BENCH_SECONDS (60),
//! BENCH_WARMUP_SECONDS (15), ALERTER_BIN (path to the release binary).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::Alert;
use sysmonstm_schemas::rules::Rule;
use sysmonstm_schemas::{MachineId, headers, streams, subjects};
use sysmonstm_testkit::NatsServer;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for (i, secs) in [2, 4, 6, 8, 10].iter().enumerate() {
        out.push(format!(
            r#"{{"name":"cpu_w{i}","metric":"cpu","threshold":90,"clear":50,"for":"{secs}s","severity":"critical"}}"#
        ));
    }
    let quiet = [
        ("memory", 99.9),
        ("swap", 99.9),
        ("load1", 1e6),
        ("load5", 1e6),
        ("load15", 1e6),
        ("load1_per_core", 1e4),
        ("load5_per_core", 1e4),
        ("load15_per_core", 1e4),
        ("net_rx", 1e15),
        ("net_tx", 1e15),
        ("disk_read", 1e15),
        ("disk_write", 1e15),
        ("processes", 1e9),
        ("disk", 99.99),
        ("temperature", 500.0),
    ];
    for (i, (metric, t)) in quiet.iter().enumerate() {
        out.push(format!(
            r#"{{"name":"quiet_{i}","metric":"{metric}","threshold":{t},"for":"30s","severity":"warning"}}"#
        ));
    }
    out.iter()
        .map(|j| Rule::from_json(j.as_bytes()).expect("bench rule is valid"))
        .collect()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the command: state is 0, utime is 11, stime is 12.
    get(11) + get(12)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let machines = env_u64("BENCH_MACHINES", 1000) as usize;
    let seconds = env_u64("BENCH_SECONDS", 60);
    let warmup = env_u64("BENCH_WARMUP_SECONDS", 15);
    let flapping_pct = env_u64("BENCH_FLAPPING_PERCENT", 10).min(100) as usize;
    let alerter_bin =
        std::env::var("ALERTER_BIN").unwrap_or_else(|_| "target/release/sysmonstm-alerter".into());

    // BENCH_SYNC=default runs the hub without `sync_interval: always`, to
    // tell the alerter's part from the fsyncs'.
    let sync_always = std::env::var("BENCH_SYNC").map_or(true, |v| v != "default");
    let nats = if sync_always {
        NatsServer::start_hub()
    } else {
        NatsServer::start()
    };
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.get_or_create_stream(streams::metrics(&streams::MetricsLimits {
        max_age: Duration::from_secs(3600),
        max_bytes: 2 << 30,
    }))
    .await?;
    js_kit::ensure_alerts(&js).await?;
    let kv = js_kit::ensure_kv(&js, streams::rules_bucket()).await?;
    let rules = rules();
    for r in &rules {
        kv.put(&r.name, r.to_json().into()).await?;
    }

    let mut alerter = Command::new(&alerter_bin)
        .env("NATS_URL", nats.url())
        .env("RUST_LOG", "warn")
        .env("SYSMON_ALERTER_STREAM_MAX_MIB", "2048")
        .arg("--metrics-listen")
        .arg("127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {alerter_bin}: {e}"))?;
    let pid = alerter.id();
    // Ready once its consumer exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = js.get_stream(streams::METRICS).await?;
        if s.consumer_info(streams::ALERTER_CONSUMER).await.is_ok() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the alerter did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A real snapshot of this host as the template every machine sends.
    let template = sysmonstm_testkit::snapshots::template(&MachineId::parse("template")?).await;
    let ids: Vec<MachineId> = (0..machines)
        .map(|i| MachineId::parse(&format!("bench-{i:04}")))
        .collect::<Result<_, _>>()?;

    // (machine index, seq) → publish instant; the event names its snapshot.
    let published_at: Arc<Mutex<HashMap<(usize, u64), Instant>>> = Arc::default();
    let ack_latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let index: Arc<HashMap<String, usize>> = Arc::new(
        ids.iter()
            .enumerate()
            .map(|(i, m)| (m.to_string(), i))
            .collect(),
    );
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let counts: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();

    let mut sub = client.subscribe(subjects::ALERTS_ALL).await?;
    let receiver = tokio::spawn({
        let (published_at, index, measuring, latencies, counts) = (
            published_at.clone(),
            index.clone(),
            measuring.clone(),
            latencies.clone(),
            counts.clone(),
        );
        async move {
            while let Some(m) = sub.next().await {
                let at = Instant::now();
                let Some(ev) = Alert::decode(&m.payload) else {
                    continue;
                };
                if !measuring.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let kind = sysmonstm_schemas::headers::alert_state_token(ev.kind.to_proto());
                *counts.lock().expect("lock").entry(kind).or_default() += 1;
                if kind == "firing" && ev.repeat == 0 {
                    let Some(&i) = index.get(&ev.machine) else {
                        continue;
                    };
                    if let Some(p) = published_at
                        .lock()
                        .expect("lock")
                        .get(&(i, ev.trigger_seq))
                        .copied()
                    {
                        latencies
                            .lock()
                            .expect("lock")
                            .push(at.duration_since(p).as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    });

    let start = Instant::now();
    let total = Duration::from_secs(warmup + seconds);
    let mut ticks_at_start = None;
    let mut published: u64 = 0;
    let slots = 100u64; // publish slots per second (every 10 ms)
    let per_slot = machines.div_ceil(slots as usize);
    let mut slot_timer = tokio::time::interval(Duration::from_millis(1000 / slots));
    slot_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let ack_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let alerter_consumer = js.get_stream(streams::METRICS).await?;
    let mut slot: u64 = 0;
    let mut behind_max = Duration::ZERO;
    while start.elapsed() < total {
        slot_timer.tick().await;
        let sec = slot / slots;
        if ticks_at_start.is_none() && sec >= warmup {
            ticks_at_start = Some((cpu_ticks(pid), Instant::now()));
            measuring.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let first = (slot % slots) as usize * per_slot;
        for (i, id) in ids.iter().enumerate().skip(first).take(per_slot) {
            let phase = (sec + i as u64) % 40;
            let flaps = i * 100 / machines < flapping_pct;
            let mut s = template.clone();
            s.machine_id = id.to_string();
            s.seq = sec + 1;
            s.timestamp_ms = chrono_now_ms();
            s.cpu.get_or_insert_with(Default::default).usage_percent =
                if flaps && phase < 20 { 95.0 } else { 10.0 };
            let mut h = async_nats::HeaderMap::new();
            h.insert(headers::MSG_ID, headers::msg_id(id, s.seq).as_str());
            let payload = s.encode_to_vec();
            let at = Instant::now();
            published_at.lock().expect("lock").insert((i, s.seq), at);
            let ack = js
                .publish_with_headers(subjects::metrics(id), h, payload.into())
                .await?;
            // Each ack is awaited by a task of its own, so its time is taken
            // when it arrives, not when this loop gets round to it.
            let measured = measuring.load(std::sync::atomic::Ordering::Relaxed);
            let ack_latencies = ack_latencies.clone();
            let ack_errors = ack_errors.clone();
            tokio::spawn(async move {
                match ack.await {
                    Ok(_) if measured => ack_latencies
                        .lock()
                        .expect("lock")
                        .push(at.elapsed().as_secs_f64() * 1000.0),
                    Ok(_) => {}
                    Err(_) => {
                        ack_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            published += 1;
        }
        behind_max = behind_max.max(
            start
                .elapsed()
                .saturating_sub(Duration::from_millis(slot * 1000 / slots)),
        );
        slot += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending_at_end = match alerter_consumer
        .consumer_info(streams::ALERTER_CONSUMER)
        .await
    {
        Ok(i) => (i.num_pending, i.num_ack_pending),
        Err(_) => (0, 0),
    };
    let (t0, i0) = ticks_at_start.unwrap_or((cpu_ticks(pid), Instant::now()));
    let cpu_ticks_used = cpu_ticks(pid) - t0;
    let wall = i0.elapsed().as_secs_f64();
    measuring.store(false, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    receiver.abort();
    let _ = alerter.kill();
    let _ = alerter.wait();

    let hz = 100.0; // USER_HZ on Linux
    let cpu_pct = cpu_ticks_used as f64 / hz / wall * 100.0;
    let mut lat = latencies.lock().expect("lock").clone();
    lat.sort_by(f64::total_cmp);
    let counts = counts.lock().expect("lock").clone();
    println!(
        "bench alerts: {machines} machines at 1 Hz, {} rules, {seconds} s measured after {warmup} s warm-up, \
         hub sync_interval: {}",
        rules.len(),
        if sync_always {
            "always"
        } else {
            "default (2 min)"
        }
    );
    println!(
        "  flapping machines:          {flapping_pct} % (CPU 20 s at 95 %, 20 s at 10 %; the rest stay at 10 %)"
    );
    println!(
        "  ack errors:                 {}",
        ack_errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "  snapshots published:        {published} ({:.0}/s), publisher lag max {:.0} ms",
        published as f64 / start.elapsed().as_secs_f64(),
        behind_max.as_secs_f64() * 1000.0
    );
    println!(
        "  events in window:           firing {} / resolved {} / other {}",
        counts.get("firing").copied().unwrap_or(0),
        counts.get("resolved").copied().unwrap_or(0),
        counts
            .iter()
            .filter(|(k, _)| !matches!(**k, "firing" | "resolved"))
            .map(|(_, v)| v)
            .sum::<u64>()
    );
    println!(
        "  alerter CPU:                {cpu_pct:.1} % of one core ({:.2} s CPU over {wall:.1} s)",
        cpu_ticks_used as f64 / hz
    );
    println!(
        "  publish→event, window met:  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n = {})",
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len()
    );
    let mut acks_ms = ack_latencies.lock().expect("lock").clone();
    acks_ms.sort_by(f64::total_cmp);
    println!(
        "  publish→JetStream ack:      p50 {:.2} ms  p99 {:.2} ms  (the hub storing it; fsync included with `always`)",
        percentile(&acks_ms, 0.50),
        percentile(&acks_ms, 0.99)
    );
    println!(
        "  alerter consumer at end:    {} pending, {} unacked",
        pending_at_end.0, pending_at_end.1
    );
    let p99 = percentile(&lat, 0.99);
    println!(
        "  target p99 <= 5 ms:         {}",
        if p99 <= 5.0 { "met" } else { "MISSED" }
    );
    Ok(())
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
