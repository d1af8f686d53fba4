//! `just bench agent`: the release agent's footprint, next to Debian's
//! prometheus-node-exporter measured in the same run.
//!
//! Starts a local nats-server (with METRICS, fsync always, as the hub), the
//! release `sysmonstm-agent` at 1 s with default settings (top-5 processes),
//! and `prometheus-node-exporter` scraped once a second. For `BENCH_SECONDS`
//! (default 180) it samples both processes' RSS from `/proc/<pid>/status`
//! and their CPU time from `/proc/<pid>/stat`, and measures what each sends
//! per sample: the snapshot on NATS (payload, and the whole message with
//! subject and headers) and the exporter's scrape body. The first
//! `BENCH_WARMUP_SECONDS` (default 20) are left out of the steady figures.
//!
//! Usage: bench_agent <path to release sysmonstm-agent> [node-exporter path]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use sysmonstm_schemas::streams;
use sysmonstm_testkit::{NatsServer, free_port};

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// Resident set size and its peak, in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_s() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

fn median(v: &mut [u64]) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// One plain HTTP/1.0 GET; the body's length.
fn scrape(port: u16) -> Option<usize> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(buf.len() - head_end - 4)
}

struct Tracked {
    name: &'static str,
    child: Child,
    rss: Vec<u64>,
    peak_kib: u64,
    ticks_at_warm: Option<(u64, Instant)>,
    ticks_end: Option<(u64, Instant)>,
    binary: PathBuf,
}

impl Tracked {
    fn new(name: &'static str, child: Child, binary: PathBuf) -> Self {
        Self {
            name,
            child,
            rss: Vec::new(),
            peak_kib: 0,
            ticks_at_warm: None,
            ticks_end: None,
            binary,
        }
    }

    fn sample(&mut self, warm: bool) {
        let pid = self.child.id();
        if let Some((rss, hwm)) = rss_kib(pid) {
            self.peak_kib = self.peak_kib.max(hwm);
            if warm {
                self.rss.push(rss);
            }
        }
        if let Some(t) = cpu_ticks(pid) {
            if warm && self.ticks_at_warm.is_none() {
                self.ticks_at_warm = Some((t, Instant::now()));
            }
            self.ticks_end = Some((t, Instant::now()));
        }
    }

    fn cpu_percent(&self, hz: u64) -> f64 {
        match (self.ticks_at_warm, self.ticks_end) {
            (Some((t0, i0)), Some((t1, i1))) if i1 > i0 => {
                (t1 - t0) as f64 / hz as f64 / (i1 - i0).as_secs_f64() * 100.0
            }
            _ => f64::NAN,
        }
    }
}

fn binary_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let agent_bin =
        PathBuf::from(args.next().ok_or_else(|| {
            anyhow::anyhow!("usage: bench_agent <sysmonstm-agent> [node-exporter]")
        })?);
    let exporter_bin = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "/usr/bin/prometheus-node-exporter".into()),
    );
    let total = env_secs("BENCH_SECONDS", 180);
    let warmup = env_secs("BENCH_WARMUP_SECONDS", 20).min(total / 2);
    let hz = clock_ticks_per_s();

    let hub = NatsServer::start_hub();
    let client = async_nats::connect(hub.url()).await?;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(streams::metrics(&streams::MetricsLimits {
        max_bytes: 1 << 30,
        ..Default::default()
    }))
    .await?;
    js.create_stream(streams::machines()).await?;

    // What the agent puts on the wire.
    let sizes: Arc<Mutex<(Vec<u64>, Vec<u64>)>> = Arc::default();
    let mut sub = client.subscribe("sysmon.metrics.bench").await?;
    let sink = Arc::clone(&sizes);
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let mut s = sink.lock().expect("lock");
            s.0.push(m.payload.len() as u64);
            s.1.push(m.length as u64);
        }
    });

    let state = tempfile::tempdir()?;
    let agent = Command::new(&agent_bin)
        .args(["--machine", "bench", "--interval-ms", "1000", "--state-dir"])
        .arg(state.path())
        .env_remove("SYSMON_AGENT_CONFIG")
        .env("NATS_URL", hub.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut tracked = vec![Tracked::new("sysmonstm-agent", agent, agent_bin.clone())];

    let exporter_port = free_port();
    let have_exporter = exporter_bin.exists();
    if have_exporter {
        let ne = Command::new(&exporter_bin)
            .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        tracked.push(Tracked::new("node_exporter", ne, exporter_bin.clone()));
    } else {
        eprintln!(
            "{} not found: the reference is left out",
            exporter_bin.display()
        );
    }

    eprintln!(
        "measuring for {}s ({}s warm-up) …",
        total.as_secs(),
        warmup.as_secs()
    );
    let start = Instant::now();
    let mut scrape_sizes = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < total {
        tick.tick().await;
        let warm = start.elapsed() >= warmup;
        if have_exporter {
            let port = exporter_port;
            if let Ok(Some(n)) = tokio::task::spawn_blocking(move || scrape(port)).await {
                if warm {
                    scrape_sizes.push(n as u64);
                }
            }
        }
        for t in &mut tracked {
            t.sample(warm);
        }
    }

    let (mut payloads, mut messages) = sizes.lock().expect("lock").clone();
    let snapshots = payloads.len();
    println!();
    println!(
        "agent footprint: {}s at 1 s sampling, steady state after {}s warm-up, on this machine ({} cores)",
        total.as_secs(),
        warmup.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| process | steady RSS (median) | peak RSS | CPU % of one core | bytes per sample | binary size |"
    );
    println!("|---|---|---|---|---|---|");
    for t in &mut tracked {
        let per_sample = if t.name == "sysmonstm-agent" {
            format!(
                "{} B payload ({} B with subject + headers), median of {snapshots}",
                median(&mut payloads),
                median(&mut messages)
            )
        } else {
            format!(
                "{} B per scrape (text), median of {}",
                median(&mut scrape_sizes),
                scrape_sizes.len()
            )
        };
        println!(
            "| {} | {:.1} MiB | {:.1} MiB | {:.3} % | {} | {:.2} MiB |",
            t.name,
            median(&mut t.rss) as f64 / 1024.0,
            t.peak_kib as f64 / 1024.0,
            t.cpu_percent(hz),
            per_sample,
            binary_size(&t.binary) as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "targets (agent): RSS ≤ 5 MB, CPU ≤ 0.2 % of a core, ≤ 600 bytes per snapshot, binary ≤ 8 MB"
    );
    for t in &mut tracked {
        let _ = t.child.kill();
        let _ = t.child.wait();
    }
    Ok(())
}
