//! Thin entry point: flags and config in, telemetry and shutdown set up, then
//! the library's `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sysmonstm_gateway::GatewayConfig;
use sysmonstm_kit::config::{self, EXIT_CONFIG};

// The fan-out allocates for every update and client (frames, batches, the
// per-client pending maps); at 10 000 machines and 20 clients glibc's
// malloc and free were a quarter of the gateway's CPU samples (`BENCH_PERF=30
// just bench stack N=10000 P=8`), as for the persister before.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Serves the REST API, the live WebSocket and the dashboard.
///
/// Configuration: defaults, then the TOML file given with --config, then
/// SYSMON_GATEWAY_* variables (nested with __), then these flags.
#[derive(Debug, Parser)]
#[command(name = "sysmonstm-gateway", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SYSMON_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080.
    #[arg(long, short = 'l')]
    listen: Option<String>,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// NATS server URL(s), comma separated.
    #[arg(long = "server", short = 's', env = "NATS_URL", value_delimiter = ',')]
    servers: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<PathBuf>,
    /// File holding the bearer token rule writes need (else
    /// SYSMON_GATEWAY_API_TOKEN; with neither, writes are refused).
    #[arg(long)]
    api_token_file: Option<PathBuf>,
    /// Serve as the public, read-only edge: from the edge nats-server's
    /// streams, no PostgreSQL, no write route (also `edge = true`,
    /// SYSMON_GATEWAY_EDGE=true).
    #[arg(long)]
    edge: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match config::load::<GatewayConfig>(args.config.as_deref(), "SYSMON_GATEWAY_") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sysmonstm-gateway: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(u) = args.database_url {
        cfg.database_url = u;
    }
    if !args.servers.is_empty() {
        cfg.nats.servers = args.servers;
    }
    if args.creds.is_some() {
        cfg.nats.creds_file = args.creds;
    }
    if args.api_token_file.is_some() {
        cfg.api_token_file = args.api_token_file;
    }
    if args.edge {
        cfg.edge = true;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("sysmonstm-gateway: configuration: {e}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    let _telemetry = sysmonstm_kit::telemetry::init("sysmonstm-gateway");
    let shutdown = sysmonstm_kit::shutdown::on_signal();
    match sysmonstm_gateway::run(cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sysmonstm-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}
