//! `sysmonstm creds`: mint and revoke the NATS credentials of agents and
//! services (`sysmonstm_kit::creds` does the work; this is its command line).
//! It needs no connection: the authority is a directory of keys.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use sysmonstm_kit::creds::{Authority, CredsError, Domain, Role};

use crate::InvalidInput;

#[derive(Debug, Subcommand)]
pub enum CredsCommand {
    /// Create the operator, the system account and the SYSMON account in DIR,
    /// and the resolver config servers include (`DIR/resolver.conf`).
    Init {
        /// Where the keys live (created 0700).
        dir: PathBuf,
        /// The edge's authority instead: an operator of its own, whose
        /// credentials (the leaf link's, the edge gateway's) the hub never
        /// accepts.
        #[arg(long)]
        edge: bool,
    },
    /// Credentials for one machine's agent: it may publish only its own
    /// snapshots and facts, and read nothing.
    Agent {
        /// The machine id (lowercase [a-z0-9_-]).
        machine: String,
        #[arg(long, env = "SYSMON_CREDS_DIR", default_value = ".data/creds")]
        dir: PathBuf,
    },
    /// Credentials for a service, with the least it needs.
    Service {
        service: Service,
        /// For `cli`: a credential that only reads (no acks, no rule edits).
        #[arg(long)]
        read_only: bool,
        #[arg(long, env = "SYSMON_CREDS_DIR", default_value = ".data/creds")]
        dir: PathBuf,
    },
    /// The leaf link: a `leaf` user in the edge's authority (DIR), and the
    /// hub's side of the link, `HUB_DIR/leaf-remote.conf` (dial URL with it),
    /// which `nats/hub.conf` includes.
    Leaf {
        #[arg(
            long,
            env = "SYSMON_EDGE_CREDS_DIR",
            default_value = ".data/creds-edge"
        )]
        dir: PathBuf,
        #[arg(long, env = "SYSMON_CREDS_DIR", default_value = ".data/creds")]
        hub_dir: PathBuf,
        /// The edge's leaf-node listener, as the hub reaches it.
        #[arg(long, default_value = "nats-leaf://127.0.0.1:7422")]
        url: String,
    },
    /// Split the hub's METRICS into N partition streams (1 to 16; 1 is one
    /// stream): the account maps each machine's snapshots to its partition.
    /// Reload the hub, and give every service that reads METRICS the same
    /// `metrics_partitions` (SYSMON_<SERVICE>_METRICS_PARTITIONS) before any
    /// snapshot is published under the new count.
    Partitions {
        #[arg(value_parser = clap::value_parser!(u64).range(1..=16))]
        n: u64,
        #[arg(long, env = "SYSMON_CREDS_DIR", default_value = ".data/creds")]
        dir: PathBuf,
    },
    /// Revoke what was issued under NAME (as `list` shows it, e.g.
    /// `agent-web-1`); servers refuse it after a config reload.
    Revoke {
        name: String,
        #[arg(long, env = "SYSMON_CREDS_DIR", default_value = ".data/creds")]
        dir: PathBuf,
    },
    /// What was issued, and what is revoked.
    List {
        #[arg(long, env = "SYSMON_CREDS_DIR", default_value = ".data/creds")]
        dir: PathBuf,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Service {
    Persister,
    Alerter,
    Gateway,
    Notifier,
    Cli,
    /// At the edge (`--dir` the edge's authority): creates the edge streams.
    EdgeAdmin,
    /// At the edge: the edge gateway, which only reads the edge streams.
    EdgeGateway,
    /// Bench hubs only: `sysmonstm-loadgen`, which publishes as any machine.
    Loadgen,
}

/// A directory that holds no authority (or already one), or an unknown name,
/// is the user's input: exit code 2.
fn input(e: CredsError) -> anyhow::Error {
    match e {
        CredsError::Exists(_)
        | CredsError::Missing(_)
        | CredsError::Unknown(_)
        | CredsError::WrongDomain { .. }
        | CredsError::BadUrl(_) => InvalidInput(e.to_string()).into(),
        e => e.into(),
    }
}

pub fn run(cmd: CredsCommand) -> anyhow::Result<()> {
    match cmd {
        CredsCommand::Init { dir, edge } => {
            let domain = if edge { Domain::Edge } else { Domain::Hub };
            let a = Authority::init_for(&dir, domain).map_err(input)?;
            println!(
                "created the {domain} credentials authority in {}",
                dir.display()
            );
            println!("  servers include: {}", dir.join("resolver.conf").display());
            println!("  account:         {}", a.account_public_key());
            if edge {
                println!(
                    "next: sysmonstm creds leaf --dir {}; sysmonstm creds service edge-gateway --dir {}",
                    dir.display(),
                    dir.display()
                );
            } else {
                println!(
                    "next: sysmonstm creds agent <machine> --dir {}",
                    dir.display()
                );
            }
        }
        CredsCommand::Leaf { dir, hub_dir, url } => {
            sysmonstm_kit::creds::check_leaf_url(&url).map_err(input)?;
            let hub = Authority::open(&hub_dir).map_err(input)?;
            if hub.domain() != Domain::Hub {
                return Err(InvalidInput(format!(
                    "--hub-dir {} holds an edge authority",
                    hub_dir.display()
                ))
                .into());
            }
            let creds = Authority::open(&dir)
                .map_err(input)?
                .issue(Role::Leaf)
                .map_err(input)?;
            let remote = hub.write_leaf_remote(&url, &creds).map_err(input)?;
            println!("{}", creds.display());
            eprintln!(
                "the hub dials {url} with it through {} (included by nats/hub.conf); \
                 restart or reload the hub",
                remote.display()
            );
        }
        CredsCommand::Agent { machine, dir } => {
            sysmonstm_schemas::MachineId::parse(&machine)
                .map_err(|e| InvalidInput(e.to_string()))?;
            let path = Authority::open(&dir)
                .map_err(input)?
                .issue(Role::Agent(machine.clone()))
                .map_err(input)?;
            println!("{}", path.display());
            eprintln!(
                "copy it to the machine and start the agent with \
                 --machine {machine} --creds <file>"
            );
        }
        CredsCommand::Service {
            service,
            read_only,
            dir,
        } => {
            let role = match (service, read_only) {
                (Service::Cli, true) => Role::CliReadOnly,
                (_, true) => {
                    return Err(InvalidInput("--read-only is only for `cli`".into()).into());
                }
                (Service::Persister, false) => Role::Persister,
                (Service::Alerter, false) => Role::Alerter,
                (Service::Gateway, false) => Role::Gateway,
                (Service::Notifier, false) => Role::Notifier,
                (Service::Cli, false) => Role::Cli,
                (Service::EdgeAdmin, false) => Role::EdgeAdmin,
                (Service::EdgeGateway, false) => Role::EdgeGateway,
                (Service::Loadgen, false) => Role::Loadgen,
            };
            let path = Authority::open(&dir)
                .map_err(input)?
                .issue(role)
                .map_err(input)?;
            println!("{}", path.display());
        }
        CredsCommand::Partitions { n, dir } => {
            let partitions = sysmonstm_schemas::streams::Partitions::new(n)
                .map_err(|e| InvalidInput(e.to_string()))?;
            let mut a = Authority::open(&dir).map_err(input)?;
            if a.domain() != Domain::Hub {
                return Err(InvalidInput(format!(
                    "{} holds an edge authority; partitions are the hub's",
                    dir.display()
                ))
                .into());
            }
            a.set_partitions(partitions).map_err(input)?;
            println!(
                "METRICS is split into {n} partition(s) in {}",
                dir.join("resolver.conf").display()
            );
            eprintln!(
                "reload the hub (nats-server --signal reload), then give every service that reads \
                 METRICS the same count: metrics_partitions = {n} (SYSMON_PERSISTER_METRICS_PARTITIONS, \
                 SYSMON_ALERTER_METRICS_PARTITIONS, SYSMON_GATEWAY_METRICS_PARTITIONS; \
                 SYSMON_METRICS_PARTITIONS for `sysmonstm machines` and `edge setup`)"
            );
        }
        CredsCommand::Revoke { name, dir } => {
            let mut a = Authority::open(&dir).map_err(input)?;
            let n = a.revoke(&name).map_err(input)?;
            println!("revoked {n} credential(s) issued as {name}");
            eprintln!(
                "servers refuse it after a restart (or, usually, a reload: nats-server --signal \
                 reload) of every server that includes {}",
                dir.join("resolver.conf").display()
            );
        }
        CredsCommand::List { dir, json } => {
            let a = Authority::open(&dir).map_err(input)?;
            for i in a.issued() {
                if json {
                    println!("{}", serde_json::to_string(i)?);
                } else {
                    let state = match i.revoked_at {
                        Some(at) => {
                            format!("revoked {}", crate::print::rfc3339(at.saturating_mul(1000)))
                        }
                        None => "valid".to_owned(),
                    };
                    println!(
                        "{:<24} {:<8} issued {}  {}",
                        i.name,
                        state,
                        crate::print::rfc3339(i.issued_at.saturating_mul(1000)),
                        i.public_key
                    );
                }
            }
        }
    }
    Ok(())
}
