//! `sysmonstm edge setup`: the edge server's streams, each sourcing the
//! hub's stream of the same name across the leaf link (definitions in
//! `schemas::streams`, creation in `kit::jetstream`). `just up` runs it
//! after starting the edge; running it again changes only the window.

use std::time::Duration;

use clap::Subcommand;
use sysmonstm_schemas::rules::parse_duration;
use sysmonstm_schemas::streams::{self, EdgeLimits};

use crate::InvalidInput;

#[derive(Debug, Subcommand)]
pub enum EdgeCommand {
    /// Create (or update) METRICS, ALERTS and MACHINES at the edge, sourced
    /// from the hub's JetStream domain.
    Setup {
        /// How long METRICS and ALERTS at the edge keep a message.
        #[arg(long, default_value = "24h")]
        max_age: String,
        /// METRICS at the edge drops its oldest beyond this many MiB.
        #[arg(long, default_value_t = 2048)]
        max_mb: u32,
        /// How many partitions the hub's METRICS is split into (the hub's
        /// `metrics_partitions`); the edge's one METRICS sources them all.
        #[arg(long, env = "SYSMON_METRICS_PARTITIONS", default_value_t = 1,
              value_parser = clap::value_parser!(u64).range(1..=u64::from(streams::Partitions::MAX)))]
        metrics_partitions: u64,
    },
}

pub async fn run(js: &async_nats::jetstream::Context, cmd: EdgeCommand) -> anyhow::Result<()> {
    match cmd {
        EdgeCommand::Setup {
            max_age,
            max_mb,
            metrics_partitions,
        } => {
            let partitions = streams::Partitions::new(metrics_partitions)
                .map_err(|e| InvalidInput(format!("--metrics-partitions: {e}")))?;
            let max_age =
                parse_duration(&max_age).map_err(|e| InvalidInput(format!("--max-age: {e}")))?;
            if max_age < Duration::from_secs(60) {
                return Err(InvalidInput("--max-age: at least 1m".into()).into());
            }
            if max_mb == 0 {
                return Err(InvalidInput("--max-mb: at least 1".into()).into());
            }
            let limits = EdgeLimits {
                max_age,
                max_bytes: i64::from(max_mb) * 1024 * 1024,
            };
            sysmonstm_kit::jetstream::ensure_edge_streams(js, &limits, partitions).await?;
            for name in streams::EDGE_SOURCED {
                let sources = if name == streams::METRICS {
                    partitions.names().join(", ")
                } else {
                    name.to_owned()
                };
                println!(
                    "edge stream {name}: sources {sources} in domain {}",
                    streams::HUB_DOMAIN
                );
            }
        }
    }
    Ok(())
}
