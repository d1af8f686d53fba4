//! Thin entry point: flags and config in, telemetry and shutdown set up, then
//! the library's `run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sysmonstm_agent::AgentConfig;
use sysmonstm_kit::config::{self, EXIT_CONFIG};

/// Samples this machine and publishes snapshots to NATS JetStream.
///
/// Configuration comes from defaults, then the TOML file given with
/// --config, then SYSMON_AGENT_* variables (nested with __, e.g.
/// SYSMON_AGENT_NATS__SERVERS), then these flags.
#[derive(Debug, Parser)]
#[command(name = "sysmonstm-agent", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "SYSMON_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Machine id (lowercase [a-z0-9_-]); default: derived from the hostname.
    #[arg(long)]
    machine: Option<String>,
    /// Sampling interval in milliseconds (default 1000).
    #[arg(long)]
    interval_ms: Option<u64>,
    /// Directory for the agent's state (sequence number).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Stop after this many snapshots.
    #[arg(long)]
    count: Option<u64>,
    /// Take one snapshot and exit (with --json: print it, publish nothing).
    #[arg(long)]
    once: bool,
    /// With --once: print the snapshot as JSON on stdout.
    #[arg(long, requires = "once")]
    json: bool,
    /// NATS server URL(s), comma separated; repeatable.
    #[arg(long = "server", short = 's', env = "NATS_URL", value_delimiter = ',')]
    servers: Vec<String>,
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long, env = "NATS_CREDS")]
    creds: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(long, env = "NATS_NKEY")]
    nkey: Option<PathBuf>,
    /// User name for user/password authentication.
    #[arg(long, env = "NATS_USER")]
    user: Option<String>,
    /// Password for user/password authentication.
    #[arg(long, env = "NATS_PASSWORD")]
    password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "NATS_TOKEN")]
    token: Option<String>,
    /// CA certificate to verify the server (enables TLS).
    #[arg(long, env = "NATS_CA")]
    tlsca: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[arg(long, env = "NATS_CERT")]
    tlscert: Option<PathBuf>,
    /// Client key for mutual TLS.
    #[arg(long, env = "NATS_KEY")]
    tlskey: Option<PathBuf>,
    /// Inbox prefix for replies, e.g. _INBOX_<machine>.
    #[arg(long)]
    inbox_prefix: Option<String>,
}

impl Args {
    fn apply(self, mut c: AgentConfig) -> AgentConfig {
        fn set<T>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        if self.machine.is_some() {
            c.machine = self.machine;
        }
        set(&mut c.interval_ms, self.interval_ms);
        if self.state_dir.is_some() {
            c.state_dir = self.state_dir;
        }
        if self.count.is_some() {
            c.count = self.count;
        }
        if self.once {
            c.count = Some(1);
        }
        if !self.servers.is_empty() {
            c.nats.servers = self.servers;
        }
        let n = &mut c.nats;
        for (slot, v) in [
            (&mut n.creds_file, self.creds),
            (&mut n.nkey_file, self.nkey),
            (&mut n.tls_ca, self.tlsca),
            (&mut n.tls_cert, self.tlscert),
            (&mut n.tls_key, self.tlskey),
        ] {
            if v.is_some() {
                *slot = v;
            }
        }
        for (slot, v) in [
            (&mut n.user, self.user),
            (&mut n.password, self.password),
            (&mut n.token, self.token),
            (&mut n.inbox_prefix, self.inbox_prefix),
        ] {
            if v.is_some() {
                *slot = v;
            }
        }
        c
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (once_json, config_path) = (args.json, args.config.clone());
    let config = match config::load::<AgentConfig>(config_path.as_deref(), "SYSMON_AGENT_") {
        Ok(c) => args.apply(c),
        Err(e) => return config_error(e),
    };
    if let Err(e) = config.validate() {
        return config_error(e);
    }
    let _telemetry = sysmonstm_kit::telemetry::init("sysmonstm-agent");

    if once_json {
        return match sysmonstm_agent::sample_once(&config).await {
            Ok(snap) => match serde_json::to_string_pretty(&snap) {
                Ok(s) => {
                    println!("{s}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e.into()),
            },
            Err(e) => fail(e),
        };
    }
    let shutdown = sysmonstm_kit::shutdown::on_signal();
    match sysmonstm_agent::run(config, shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn config_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("sysmonstm-agent: {e}");
    ExitCode::from(EXIT_CONFIG as u8)
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("sysmonstm-agent: {e:#}");
    ExitCode::FAILURE
}
