//! Thin entry point: flags and config in, telemetry and shutdown set up, then
//! the library's `Alerter::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sysmonstm_alerter::{Alerter, AlerterConfig};
use sysmonstm_kit::config::{self, ConfigError, EXIT_CONFIG};
use sysmonstm_schemas::rules::file::RulesFileError;

// Decoding every snapshot twice (live and from its consumer) allocates a
// little each time; the same allocator as the persister's and the gateway's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Evaluates alert rules on every snapshot and publishes alert events.
///
/// Configuration: defaults, then the TOML file given with --config, then
/// SYSMON_ALERTER_* variables (nested with __), then these flags.
#[derive(Debug, Parser)]
#[command(name = "sysmonstm-alerter", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SYSMON_ALERTER_CONFIG")]
    config: Option<PathBuf>,
    /// Rules file (see rules.example.toml), loaded into the rules bucket.
    #[arg(long, short = 'r')]
    rules: Option<PathBuf>,
    /// NATS server URL(s), comma separated.
    #[arg(long = "server", short = 's', env = "NATS_URL", value_delimiter = ',')]
    servers: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<PathBuf>,
    /// Where to serve /metrics, e.g. 127.0.0.1:9103.
    #[arg(long)]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match config::load::<AlerterConfig>(args.config.as_deref(), "SYSMON_ALERTER_") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sysmonstm-alerter: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if args.rules.is_some() {
        cfg.rules_file = args.rules;
    }
    if !args.servers.is_empty() {
        cfg.nats.servers = args.servers;
    }
    if args.creds.is_some() {
        cfg.nats.creds_file = args.creds;
    }
    if args.metrics_listen.is_some() {
        cfg.metrics_listen = args.metrics_listen;
    }
    let _telemetry = sysmonstm_kit::telemetry::init("sysmonstm-alerter");
    let shutdown = sysmonstm_kit::shutdown::on_signal();
    match Alerter::new(cfg).run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<RulesFileError>().is_some()
                || e.downcast_ref::<ConfigError>().is_some() =>
        {
            eprintln!("sysmonstm-alerter: {e:#}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("sysmonstm-alerter: {e:#}");
            ExitCode::FAILURE
        }
    }
}
