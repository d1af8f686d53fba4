//! Thin entry point: flags and config in, telemetry and shutdown set up, then
//! the library's `Persister::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sysmonstm_kit::config::{self, EXIT_CONFIG};
use sysmonstm_persister::{Persister, PersisterConfig};

// Decoding and encoding a batch allocates a little for every snapshot;
// with mimalloc the persister's CPU per snapshot was ~8 % lower than with
// glibc's allocator (`just bench ingest`, one run each: 0.90 and 0.83 % of a
// core per 1 000 snapshots/s).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Writes snapshots from JetStream into PostgreSQL/TimescaleDB.
///
/// Configuration: defaults, then the TOML file given with --config, then
/// SYSMON_PERSISTER_* variables (nested with __), then these flags.
#[derive(Debug, Parser)]
#[command(name = "sysmonstm-persister", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SYSMON_PERSISTER_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// NATS server URL(s), comma separated.
    #[arg(long = "server", short = 's', env = "NATS_URL", value_delimiter = ',')]
    servers: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<PathBuf>,
    /// Most snapshots written in one statement.
    #[arg(long)]
    batch_size: Option<usize>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match config::load::<PersisterConfig>(args.config.as_deref(), "SYSMON_PERSISTER_")
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sysmonstm-persister: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if let Some(u) = args.database_url {
        cfg.database_url = u;
    }
    if !args.servers.is_empty() {
        cfg.nats.servers = args.servers;
    }
    if args.creds.is_some() {
        cfg.nats.creds_file = args.creds;
    }
    if let Some(b) = args.batch_size {
        cfg.batch_size = b;
    }
    if let Err(e) = cfg.validate() {
        eprintln!("sysmonstm-persister: configuration: {e}");
        return ExitCode::from(EXIT_CONFIG as u8);
    }
    let _telemetry = sysmonstm_kit::telemetry::init("sysmonstm-persister");
    let shutdown = sysmonstm_kit::shutdown::on_signal();
    match Persister::new(cfg).run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sysmonstm-persister: {e:#}");
            ExitCode::FAILURE
        }
    }
}
