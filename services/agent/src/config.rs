//! The agent's configuration: defaults, then a TOML file, then
//! `SYSMON_AGENT_*` variables, then flags (applied in `main`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::MachineId;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Machine id; derived from the hostname when unset.
    pub machine: Option<String>,
    /// Sampling interval in milliseconds.
    pub interval_ms: u64,
    /// Where the agent keeps its sequence number and its spool.
    /// Unset: `$STATE_DIRECTORY` (systemd), else `~/.local/state/sysmonstm-agent`.
    pub state_dir: Option<PathBuf>,
    /// How long to wait for JetStream's ack before publishing the same
    /// message (same Msg-Id) again.
    pub publish_timeout_ms: u64,
    /// Upper bound of the on-disk spool (every snapshot not yet acked), in
    /// MiB; when full, the oldest snapshots are dropped and counted.
    pub spool_max_mb: u64,
    /// How often the spool is fsynced, in milliseconds (0: every sample).
    pub spool_fsync_ms: u64,
    /// Unacked snapshots also kept in memory, so a healthy agent never reads
    /// its spool back; older ones are read from disk when replayed.
    pub spool_memory_records: usize,
    /// Publishes in flight at once while a backlog drains.
    pub publish_window: usize,
    /// Processes in each top list (by CPU, by memory).
    pub top_n: usize,
    /// Refresh the process table (the costly part of a sample) every this
    /// many samples; the top lists repeat the last refresh in between.
    pub process_every: u32,
    /// Stop after this many snapshots (tests, one-off runs); unset: run until
    /// shut down.
    pub count: Option<u64>,
    pub nats: NatsConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            machine: None,
            interval_ms: 1000,
            state_dir: None,
            publish_timeout_ms: 2000,
            spool_max_mb: 64,
            spool_fsync_ms: 1000,
            spool_memory_records: 16,
            publish_window: 32,
            top_n: 5,
            process_every: 5,
            count: None,
            nats: NatsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("invalid machine id: {0}")]
    Machine(#[from] sysmonstm_schemas::InvalidMachineId),
    #[error("this machine has no hostname; pass --machine")]
    NoHostname,
    #[error("interval_ms must be at least 10, got {0}")]
    Interval(u64),
    #[error("no state dir: set state_dir (or $STATE_DIRECTORY, or $HOME)")]
    NoStateDir,
    #[error("spool_max_mb must be at least 1, got {0}")]
    SpoolSize(u64),
}

impl AgentConfig {
    pub fn collect_options(&self) -> sysmonstm_collect::CollectOptions {
        sysmonstm_collect::CollectOptions {
            interval: std::time::Duration::from_millis(self.interval_ms),
            top_n: self.top_n,
            process_every: self.process_every.max(1),
            ..Default::default()
        }
    }

    /// The machine id: the configured one, checked as it is, or the hostname
    /// made into a valid subject token.
    pub fn machine_id(&self) -> Result<MachineId, AgentConfigError> {
        match &self.machine {
            Some(m) => Ok(MachineId::parse(m)?),
            None => {
                let host =
                    sysinfo::System::host_name().map_err(|_| AgentConfigError::NoHostname)?;
                Ok(MachineId::from_hostname(&host)?)
            }
        }
    }

    pub fn spool_options(&self) -> crate::spool::SpoolOptions {
        crate::spool::SpoolOptions {
            max_bytes: self.spool_max_mb.saturating_mul(1024 * 1024),
            memory_records: self.spool_memory_records.max(1),
            fsync_every: std::time::Duration::from_millis(self.spool_fsync_ms),
        }
    }

    pub fn state_dir(&self) -> Result<PathBuf, AgentConfigError> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
            return Ok(PathBuf::from(d));
        }
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/state/sysmonstm-agent"))
            .ok_or(AgentConfigError::NoStateDir)
    }

    pub fn validate(&self) -> Result<(), AgentConfigError> {
        if self.interval_ms < 10 {
            return Err(AgentConfigError::Interval(self.interval_ms));
        }
        if self.spool_max_mb < 1 {
            return Err(AgentConfigError::SpoolSize(self.spool_max_mb));
        }
        self.machine_id()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
        let cfg: AgentConfig =
            sysmonstm_kit::config::load(Some(&path), "SYSMON_AGENT_EXAMPLE_TEST_")
                .expect("example config loads");
        assert_eq!(cfg, AgentConfig::default());
    }

    #[test]
    fn bad_values_are_refused() {
        let cfg = AgentConfig {
            machine: Some("Web.01".into()),
            ..Default::default()
        };
        assert!(matches!(cfg.validate(), Err(AgentConfigError::Machine(_))));
        let cfg = AgentConfig {
            machine: Some("web01".into()),
            interval_ms: 5,
            ..Default::default()
        };
        assert!(matches!(cfg.validate(), Err(AgentConfigError::Interval(5))));
    }
}
