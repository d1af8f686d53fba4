//! Thin entry point: flags and config in, telemetry and shutdown set up, then
//! the library's `Notifier::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sysmonstm_kit::config::{self, ConfigError, EXIT_CONFIG};
use sysmonstm_notifier::{Notifier, NotifierConfig};

/// Delivers alert events to webhooks, Slack, Discord, ntfy and email.
///
/// Configuration: defaults, then the TOML file given with --config
/// (channels and routes), then SYSMON_NOTIFIER_* variables (nested with
/// __), then these flags.
#[derive(Debug, Parser)]
#[command(name = "sysmonstm-notifier", version)]
struct Args {
    /// TOML configuration file (see config/notifier.toml).
    #[arg(long, short = 'c', env = "SYSMON_NOTIFIER_CONFIG")]
    config: Option<PathBuf>,
    /// NATS server URL(s), comma separated.
    #[arg(long = "server", short = 's', env = "NATS_URL", value_delimiter = ',')]
    servers: Vec<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<PathBuf>,
    /// Where to serve /health and /metrics, e.g. 127.0.0.1:9104.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Check the configuration and exit (0: valid, 2: not).
    #[arg(long)]
    check: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut cfg = match config::load::<NotifierConfig>(args.config.as_deref(), "SYSMON_NOTIFIER_") {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sysmonstm-notifier: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if !args.servers.is_empty() {
        cfg.nats.servers = args.servers;
    }
    if args.creds.is_some() {
        cfg.nats.creds_file = args.creds;
    }
    if args.metrics_listen.is_some() {
        cfg.metrics_listen = args.metrics_listen;
    }
    if args.check {
        return match cfg.validate() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sysmonstm-notifier: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
        };
    }
    let _telemetry = sysmonstm_kit::telemetry::init("sysmonstm-notifier");
    let shutdown = sysmonstm_kit::shutdown::on_signal();
    match Notifier::new(cfg).run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("sysmonstm-notifier: {e:#}");
            ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(e) => {
            eprintln!("sysmonstm-notifier: {e:#}");
            ExitCode::FAILURE
        }
    }
}
