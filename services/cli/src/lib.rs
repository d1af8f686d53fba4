//! The `sysmonstm` command line: follow and replay alerts, acknowledge them,
//! manage rules while everything runs, and see every machine at a glance.
//! It connects like the nats CLI (`--server`, `--creds`, `NATS_URL`,
//! `NATS_CREDS`) through the kit's `NatsConfig`.

mod alerts;
mod creds;
mod edge;
mod machines;
mod notify;
mod print;
mod rules;
mod silence;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sysmonstm_kit::nats::NatsConfig;

/// Input the command refuses (an invalid rule): exit code 2, nothing
/// changed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

#[derive(Debug, Parser)]
#[command(
    name = "sysmonstm",
    version,
    about = "Watch alerts, manage rules and silences, list machines"
)]
pub struct Cli {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "server",
        short = 's',
        env = "NATS_URL",
        value_delimiter = ',',
        global = true
    )]
    servers: Vec<String>,
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    creds: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long, env = "NATS_NKEY", global = true)]
    nkey: Option<PathBuf>,
    /// User name for user/password authentication.
    #[arg(long, env = "NATS_USER", global = true)]
    user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "NATS_PASSWORD", global = true)]
    password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN", global = true)]
    token: Option<String>,
    /// CA certificate to verify the server (enables TLS).
    #[arg(long, env = "NATS_CA", global = true)]
    tlsca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, env = "NATS_CERT", global = true)]
    tlscert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, env = "NATS_KEY", global = true)]
    tlskey: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Alert events: watch live or replayed, list current, acknowledge.
    Alerts {
        #[command(subcommand)]
        command: alerts::AlertsCommand,
    },
    /// Alert rules in the rules bucket.
    Rules {
        #[command(subcommand)]
        command: rules::RulesCommand,
    },
    /// Every machine: last seen, online or silent, headline values; or
    /// `forget <id>` to remove one everywhere it is kept.
    Machines {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// How many partitions the hub's METRICS is split into (the hub's
        /// `metrics_partitions`, `sysmonstm creds partitions N`): snapshots
        /// are read from, and purged in, `METRICS_<p>`.
        #[arg(long, env = "SYSMON_METRICS_PARTITIONS", default_value_t = 1, global = true,
              value_parser = clap::value_parser!(u64).range(1..=u64::from(sysmonstm_schemas::streams::Partitions::MAX)))]
        metrics_partitions: u64,
        #[command(subcommand)]
        command: Option<machines::MachinesCommand>,
    },
    /// The edge server: `edge setup` creates its streams (connect to the
    /// edge, with the edge-admin credential).
    Edge {
        #[command(subcommand)]
        command: edge::EdgeCommand,
    },
    /// Silences: no notifications for machines (and rules) for a while.
    Silence {
        #[command(subcommand)]
        command: silence::SilenceCommand,
    },
    /// The notifier's channels: `notify test <channel>` sends a test message.
    Notify {
        #[command(subcommand)]
        command: notify::NotifyCommand,
    },
    /// NATS credentials: the authority, and one per agent and service.
    Creds {
        #[command(subcommand)]
        command: creds::CredsCommand,
    },
}

/// `--metrics-partitions` as the contract's count (exit code 2 when out of
/// range; clap has checked it already).
fn partitions(n: u64) -> anyhow::Result<sysmonstm_schemas::streams::Partitions> {
    Ok(sysmonstm_schemas::streams::Partitions::new(n)
        .map_err(|e| InvalidInput(format!("--metrics-partitions: {e}")))?)
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Alerts { command } => command.check()?,
        Command::Machines {
            command: Some(command),
            ..
        } => command.check()?,
        _ => {}
    }
    // Minting needs no connection: the authority is a directory of keys.
    let cli = match cli.command {
        Command::Creds { command } => return creds::run(command),
        command => Cli { command, ..cli },
    };
    let mut nats = NatsConfig::default();
    if !cli.servers.is_empty() {
        nats.servers = cli.servers;
    }
    nats.creds_file = cli.creds;
    nats.nkey_file = cli.nkey;
    nats.user = cli.user;
    nats.password = cli.password;
    nats.token = cli.token;
    nats.tls_ca = cli.tlsca;
    nats.tls_cert = cli.tlscert;
    nats.tls_key = cli.tlskey;
    let client = nats
        .connect("sysmonstm-cli", false)
        .await
        .context("cannot connect to NATS")?;
    let js = async_nats::jetstream::new(client);
    match cli.command {
        Command::Alerts { command } => alerts::run(&js, command).await,
        Command::Rules { command } => rules::run(&js, command).await,
        Command::Machines {
            command: Some(command),
            metrics_partitions,
            ..
        } => machines::run_command(&js, command, partitions(metrics_partitions)?).await,
        Command::Machines {
            json,
            metrics_partitions,
            ..
        } => machines::run(&js, json, partitions(metrics_partitions)?).await,
        Command::Edge { command } => edge::run(&js, command).await,
        Command::Silence { command } => silence::run(&js, command).await,
        Command::Notify { command } => notify::run(&js, command).await,
        Command::Creds { .. } => Ok(()),
    }
}
