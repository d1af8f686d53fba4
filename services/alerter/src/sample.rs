//! The edge where protobuf stops: the bytes of a message pass
//! `schemas::accept` ([`accept`]), and the `Snapshot` becomes a [`Sample`],
//! the handful of numbers rules look at, so the engine never sees prost.
//! Every value in a sample is finite: a NaN or an infinity in a payload is
//! "not reported", never a comparison that resolves an alert by accident.

use prost::Message as _;
use sysmonstm_schemas::accept::{self, Reject};
use sysmonstm_schemas::rules::{Metric, Rule};
use sysmonstm_schemas::v1;

/// The whole `schemas::accept` rule for one snapshot: size first (before
/// decoding), then decoding, subject, machine, timestamp and interval.
pub fn accept(
    subject: &str,
    payload: &[u8],
    now_ms: i64,
    limits: &accept::Limits,
) -> Result<v1::Snapshot, Reject> {
    accept::payload_size(payload.len(), limits)?;
    let snap = v1::Snapshot::decode(payload).map_err(|e| Reject::Decode(e.to_string()))?;
    accept::snapshot(
        subject,
        accept::SnapshotFields {
            machine_id: &snap.machine_id,
            timestamp_ms: snap.timestamp_ms,
            interval_ms: snap.interval_ms,
        },
        now_ms,
        limits,
    )?;
    Ok(snap)
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// What the rules can ask of one snapshot. `None` where the agent did not
/// report it (an older agent, no sensors, the first sample without rates).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub machine: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub interval_ms: u32,
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub swap: Option<f64>,
    pub load: Option<[f64; 3]>,
    pub cores: usize,
    pub net_rx: Option<f64>,
    pub net_tx: Option<f64>,
    pub disk_read: Option<f64>,
    pub disk_write: Option<f64>,
    pub processes: Option<f64>,
    pub temperature: Option<f64>,
    /// (mount, used %) of every filesystem with a size.
    pub mounts: Vec<(String, f64)>,
}

fn percent(used: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| used as f64 * 100.0 / total as f64)
}

/// Sums the finite rates that are present; `None` when none is.
fn sum(values: impl Iterator<Item = Option<f32>>) -> Option<f64> {
    values
        .flatten()
        .filter_map(|v| finite(f64::from(v)))
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
        .and_then(finite)
}

impl Sample {
    pub fn from_snapshot(s: &v1::Snapshot) -> Self {
        let mem = s.memory.as_ref();
        let ifaces = || s.interfaces.iter().filter(|i| i.name != "lo");
        Self {
            machine: s.machine_id.clone(),
            seq: s.seq,
            timestamp_ms: s.timestamp_ms,
            interval_ms: s.interval_ms,
            cpu: s
                .cpu
                .as_ref()
                .and_then(|c| finite(f64::from(c.usage_percent))),
            memory: mem.and_then(|m| percent(m.used_bytes, m.total_bytes)),
            swap: mem.map(|m| percent(m.swap_used_bytes, m.swap_total_bytes).unwrap_or(0.0)),
            load: s
                .load
                .as_ref()
                .filter(|l| [l.one, l.five, l.fifteen].iter().all(|v| v.is_finite()))
                .map(|l| [l.one, l.five, l.fifteen]),
            cores: s.cpu.as_ref().map_or(0, |c| c.per_core_percent.len()),
            net_rx: sum(ifaces().map(|i| i.rx_bytes_per_s)),
            net_tx: sum(ifaces().map(|i| i.tx_bytes_per_s)),
            disk_read: sum(s.disks.iter().map(|d| d.read_bytes_per_s)),
            disk_write: sum(s.disks.iter().map(|d| d.write_bytes_per_s)),
            processes: Some(f64::from(s.process_count)),
            temperature: s
                .temperatures
                .iter()
                .filter_map(|t| finite(f64::from(t.celsius)))
                .fold(None, |m: Option<f64>, c| Some(m.map_or(c, |m| m.max(c)))),
            mounts: s
                .filesystems
                .iter()
                .filter_map(|f| Some((f.mount.clone(), percent(f.used_bytes, f.total_bytes)?)))
                .collect(),
        }
    }

    /// The value `rule` compares, and for `disk` the mount it came from.
    /// `silent` is not a property of a snapshot and has no value here.
    pub fn value(&self, rule: &Rule) -> Option<(f64, Option<&str>)> {
        let per_core = |i: usize| {
            let l = self.load?[i];
            (self.cores > 0).then(|| l / self.cores as f64)
        };
        let v = match rule.metric {
            Metric::Cpu => self.cpu,
            Metric::Memory => self.memory,
            Metric::Swap => self.swap,
            Metric::Load1 => self.load.map(|l| l[0]),
            Metric::Load5 => self.load.map(|l| l[1]),
            Metric::Load15 => self.load.map(|l| l[2]),
            Metric::Load1PerCore => per_core(0),
            Metric::Load5PerCore => per_core(1),
            Metric::Load15PerCore => per_core(2),
            Metric::NetRx => self.net_rx,
            Metric::NetTx => self.net_tx,
            Metric::DiskRead => self.disk_read,
            Metric::DiskWrite => self.disk_write,
            Metric::Processes => self.processes,
            Metric::Temperature => self.temperature,
            Metric::Silent => None,
            Metric::Disk => {
                let found = match &rule.mount {
                    Some(m) => self.mounts.iter().find(|(name, _)| name == m),
                    None => self.mounts.iter().max_by(|a, b| a.1.total_cmp(&b.1)),
                };
                return found.map(|(m, v)| (*v, Some(m.as_str())));
            }
        };
        v.map(|v| (v, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sysmonstm_schemas::rules::Rule;

    fn rule(json: &str) -> Rule {
        serde_json::from_str(json).expect("rule")
    }

    #[test]
    fn values_follow_the_contract_names() {
        let snap = v1::Snapshot {
            machine_id: "web01".into(),
            cpu: Some(v1::Cpu {
                usage_percent: 42.0,
                per_core_percent: vec![40.0, 44.0, 41.0, 43.0],
                ..Default::default()
            }),
            memory: Some(v1::Memory {
                total_bytes: 1000,
                used_bytes: 250,
                swap_total_bytes: 0,
                ..Default::default()
            }),
            load: Some(v1::Load {
                one: 2.0,
                five: 1.0,
                fifteen: 0.5,
            }),
            process_count: 312,
            interfaces: vec![
                v1::NetInterface {
                    name: "lo".into(),
                    rx_bytes_per_s: Some(1e9),
                    ..Default::default()
                },
                v1::NetInterface {
                    name: "eth0".into(),
                    rx_bytes_per_s: Some(100.0),
                    ..Default::default()
                },
                v1::NetInterface {
                    name: "eth1".into(),
                    rx_bytes_per_s: Some(50.0),
                    ..Default::default()
                },
            ],
            filesystems: vec![
                v1::Filesystem {
                    mount: "/".into(),
                    total_bytes: 100,
                    used_bytes: 50,
                    ..Default::default()
                },
                v1::Filesystem {
                    mount: "/var".into(),
                    total_bytes: 100,
                    used_bytes: 93,
                    ..Default::default()
                },
            ],
            temperatures: vec![
                v1::Temperature {
                    label: "a".into(),
                    celsius: 40.0,
                },
                v1::Temperature {
                    label: "b".into(),
                    celsius: 71.5,
                },
            ],
            ..Default::default()
        };
        let s = Sample::from_snapshot(&snap);
        let v = |j: &str| s.value(&rule(j)).map(|(v, m)| (v, m.map(str::to_owned)));
        let base =
            |m: &str| format!(r#"{{"name":"r","metric":"{m}","threshold":1,"severity":"info"}}"#);
        assert_eq!(v(&base("cpu")), Some((42.0, None)));
        assert_eq!(v(&base("memory")), Some((25.0, None)));
        assert_eq!(v(&base("swap")), Some((0.0, None)), "no swap counts as 0 %");
        assert_eq!(v(&base("load1_per_core")), Some((0.5, None)));
        assert_eq!(v(&base("net_rx")), Some((150.0, None)), "lo left out");
        assert_eq!(v(&base("net_tx")), None, "no rate reported is no value");
        assert_eq!(v(&base("processes")), Some((312.0, None)));
        assert_eq!(v(&base("temperature")), Some((71.5, None)));
        assert_eq!(
            v(&base("disk")),
            Some((93.0, Some("/var".into()))),
            "fullest mount"
        );
        let root = r#"{"name":"r","metric":"disk","mount":"/","threshold":1,"severity":"info"}"#;
        assert_eq!(v(root), Some((50.0, Some("/".into()))));
        assert_eq!(v(&base("silent")), None);
    }
}
