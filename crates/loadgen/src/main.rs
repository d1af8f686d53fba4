//! `sysmonstm-loadgen`: N simulated machines at R Hz for D seconds through a
//! real hub, as agents publish (JetStream, Msg-Id per snapshot, acks
//! awaited). Prints a JSON report: offered, acked, per second, and what each
//! machine sent, so that a store can be checked against it.
//!
//! With credentials on, it needs a credential that may publish every
//! machine's subjects (`sysmonstm creds service loadgen`, bench hubs only).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_loadgen::{FleetSpec, LoadSpec, load};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Hub URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    url: String,
    /// A `.creds` file allowed to publish `sysmon.metrics.*` and `sysmon.info.*`.
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<std::path::PathBuf>,
    /// Simulated machines (1 ..= 1 000 000).
    #[arg(short = 'n', long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    machines: u32,
    /// Snapshots per machine per second (0 < R ≤ 1000).
    #[arg(short = 'r', long, default_value_t = 1.0)]
    rate: f64,
    /// Seconds to run (1 ..= 86 400).
    #[arg(short = 'd', long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Percent of machines whose CPU crosses 90 % for 20 s in every 40 s.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    breach_percent: u32,
    /// Percent of machines silent for the run's second quarter.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    silent_percent: u32,
    /// Machine ids are `<prefix>-<n>`.
    #[arg(long, default_value = "lg")]
    prefix: String,
    /// Publishes awaiting their ack at most (1 ..= 1 000 000).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    in_flight: u32,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _telemetry = sysmonstm_kit::telemetry::init("sysmonstm-loadgen");
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sysmonstm-loadgen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1000.0,
        "--rate must be in (0, 1000]"
    );
    let fleet = FleetSpec {
        machines: args.machines as usize,
        prefix: args.prefix.clone(),
        breach_percent: args.breach_percent,
        silent_percent: args.silent_percent,
    }
    .build()?;
    let nats = NatsConfig {
        servers: vec![args.url.clone()],
        creds_file: args.creds.clone(),
        ..NatsConfig::default()
    };
    let client = nats.connect("sysmonstm-loadgen", false).await?;
    let js = async_nats::jetstream::new(client);
    load::publish_info(&js, &fleet).await?;
    let spec = LoadSpec {
        rate_hz: args.rate,
        duration: Duration::from_secs(args.duration),
        in_flight: args.in_flight as usize,
        ack_timeout: Duration::from_secs(10),
    };
    let report = load::run(js, &fleet, &spec, Arc::new(())).await?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "offered {} acked {} ({:.0}/s over {:.1} s), {} resent, {} duplicates",
        report.offered,
        report.acked,
        report.acked as f64 / report.seconds.max(1e-9),
        report.seconds,
        report.resent,
        report.duplicates
    );
    Ok(())
}
