//! A decoded Snapshot as rows: the wide `metrics` row with the derived
//! figures the contract names (memory %, swap %, network and disk totals)
//! and the child rows of its devices and top processes.

use chrono::{DateTime, Utc};
use sysmonstm_schemas::v1;

use crate::decode::{MetricRow, big};

/// Everything one snapshot stores.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    pub row: MetricRow,
    pub filesystems: Vec<FsRow>,
    pub disks: Vec<DiskRow>,
    pub interfaces: Vec<NetRow>,
    pub temperatures: Vec<TempRow>,
    pub processes: Vec<ProcRow>,
}

impl Decoded {
    /// Rows this snapshot writes, child rows included.
    pub fn row_count(&self) -> usize {
        1 + self.filesystems.len()
            + self.disks.len()
            + self.interfaces.len()
            + self.temperatures.len()
            + self.processes.len()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FsRow {
    pub mount: String,
    pub fs_type: String,
    pub total_bytes: i64,
    pub used_bytes: i64,
    pub free_bytes: i64,
    pub used_percent: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiskRow {
    pub name: String,
    pub read_bps: Option<f32>,
    pub write_bps: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetRow {
    pub name: String,
    pub rx_bps: Option<f32>,
    pub tx_bps: Option<f32>,
    pub rx_errors_ps: Option<f32>,
    pub tx_errors_ps: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TempRow {
    pub label: String,
    pub celsius: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProcRow {
    /// `cpu` (from top_cpu) or `memory` (from top_memory).
    pub kind: &'static str,
    /// 1-based position in the agent's list.
    pub rank: i16,
    pub pid: i32,
    pub name: String,
    pub cpu_percent: Option<f32>,
    pub rss_bytes: Option<i64>,
}

fn percent(used: u64, total: u64) -> Option<f32> {
    (total > 0).then(|| (used as f64 * 100.0 / total as f64) as f32)
}

/// Sum of the present values; `None` when none is present (no rate yet).
fn sum_present(values: impl Iterator<Item = Option<f32>>) -> Option<f64> {
    values
        .flatten()
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + f64::from(v)))
}

/// The snapshot has been checked (machine, timestamp) by the caller.
pub(crate) fn from_snapshot(snap: v1::Snapshot, ts: DateTime<Utc>) -> Decoded {
    let mem = snap.memory.unwrap_or_default();
    let has_mem = snap.memory.is_some();
    let load = snap.load;
    let cpu = snap.cpu.as_ref();
    // Loopback traffic is the machine talking to itself, not network load.
    let nets = || snap.interfaces.iter().filter(|i| i.name != "lo");
    let row = MetricRow {
        machine_id: snap.machine_id.clone(),
        ts,
        seq: i64::try_from(snap.seq).unwrap_or(i64::MAX),
        interval_ms: i32::try_from(snap.interval_ms).unwrap_or(i32::MAX),
        cpu_percent: cpu.map(|c| c.usage_percent),
        cpu_user_percent: cpu.and_then(|c| c.user_percent),
        cpu_system_percent: cpu.and_then(|c| c.system_percent),
        cpu_iowait_percent: cpu.and_then(|c| c.iowait_percent),
        cpu_per_core: cpu
            .filter(|c| !c.per_core_percent.is_empty())
            .map(|c| c.per_core_percent.clone()),
        mem_total_bytes: has_mem.then(|| big(mem.total_bytes)),
        mem_used_bytes: has_mem.then(|| big(mem.used_bytes)),
        mem_available_bytes: has_mem.then(|| big(mem.available_bytes)),
        mem_used_percent: if has_mem {
            percent(mem.used_bytes, mem.total_bytes)
        } else {
            None
        },
        swap_total_bytes: has_mem.then(|| big(mem.swap_total_bytes)),
        swap_used_bytes: has_mem.then(|| big(mem.swap_used_bytes)),
        // The contract: 0 when the machine has no swap.
        swap_used_percent: has_mem
            .then(|| percent(mem.swap_used_bytes, mem.swap_total_bytes).unwrap_or(0.0)),
        load1: load.map(|l| l.one),
        load5: load.map(|l| l.five),
        load15: load.map(|l| l.fifteen),
        uptime_s: big(snap.uptime_s),
        process_count: i32::try_from(snap.process_count).unwrap_or(i32::MAX),
        net_rx_bps: sum_present(nets().map(|i| i.rx_bytes_per_s)),
        net_tx_bps: sum_present(nets().map(|i| i.tx_bytes_per_s)),
        disk_read_bps: sum_present(snap.disks.iter().map(|d| d.read_bytes_per_s)),
        disk_write_bps: sum_present(snap.disks.iter().map(|d| d.write_bytes_per_s)),
        temperature_max_c: snap
            .temperatures
            .iter()
            .map(|t| t.celsius)
            .fold(None, |m: Option<f32>, c| Some(m.map_or(c, |m| m.max(c)))),
        agent_spool_pending: snap.agent.map(|a| big(a.spool_pending)),
        agent_spool_dropped: snap.agent.map(|a| big(a.spool_dropped)),
    };
    let procs = |kind: &'static str, list: Vec<v1::Process>| {
        list.into_iter().enumerate().map(move |(i, p)| ProcRow {
            kind,
            rank: i16::try_from(i + 1).unwrap_or(i16::MAX),
            pid: i32::try_from(p.pid).unwrap_or(i32::MAX),
            name: p.name,
            cpu_percent: Some(p.cpu_percent),
            rss_bytes: Some(big(p.rss_bytes)),
        })
    };
    let mut processes: Vec<ProcRow> = procs("cpu", snap.top_cpu).collect();
    processes.extend(procs("memory", snap.top_memory));
    Decoded {
        row,
        filesystems: snap
            .filesystems
            .into_iter()
            .map(|f| FsRow {
                used_percent: percent(f.used_bytes, f.total_bytes),
                mount: f.mount,
                fs_type: f.fs_type,
                total_bytes: big(f.total_bytes),
                used_bytes: big(f.used_bytes),
                free_bytes: big(f.free_bytes),
            })
            .collect(),
        disks: snap
            .disks
            .into_iter()
            .map(|d| DiskRow {
                name: d.name,
                read_bps: d.read_bytes_per_s,
                write_bps: d.write_bytes_per_s,
            })
            .collect(),
        interfaces: snap
            .interfaces
            .into_iter()
            .map(|i| NetRow {
                name: i.name,
                rx_bps: i.rx_bytes_per_s,
                tx_bps: i.tx_bytes_per_s,
                rx_errors_ps: i.rx_errors_per_s,
                tx_errors_ps: i.tx_errors_per_s,
            })
            .collect(),
        temperatures: snap
            .temperatures
            .into_iter()
            .map(|t| TempRow {
                label: t.label,
                celsius: t.celsius,
            })
            .collect(),
        processes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    #[test]
    fn derives_the_contract_figures() {
        let snap = v1::Snapshot {
            machine_id: "m".into(),
            memory: Some(v1::Memory {
                total_bytes: 200,
                used_bytes: 50,
                swap_total_bytes: 0,
                ..Default::default()
            }),
            interfaces: vec![
                v1::NetInterface {
                    name: "lo".into(),
                    rx_bytes_per_s: Some(1e6),
                    ..Default::default()
                },
                v1::NetInterface {
                    name: "eth0".into(),
                    rx_bytes_per_s: Some(10.0),
                    tx_bytes_per_s: Some(4.0),
                    ..Default::default()
                },
                v1::NetInterface {
                    name: "eth1".into(),
                    rx_bytes_per_s: Some(5.0),
                    tx_bytes_per_s: None,
                    ..Default::default()
                },
            ],
            disks: vec![v1::Disk {
                name: "sda".into(),
                read_bytes_per_s: None,
                write_bytes_per_s: None,
            }],
            top_cpu: vec![v1::Process {
                pid: 1,
                name: "init".into(),
                ..Default::default()
            }],
            temperatures: vec![
                v1::Temperature {
                    label: "a".into(),
                    celsius: 40.0,
                },
                v1::Temperature {
                    label: "b".into(),
                    celsius: 55.5,
                },
            ],
            ..Default::default()
        };
        let d = from_snapshot(snap, Utc.timestamp_millis_opt(0).single().expect("ts"));
        assert_eq!(d.row.mem_used_percent, Some(25.0));
        assert_eq!(d.row.swap_used_percent, Some(0.0));
        assert_eq!(d.row.net_rx_bps, Some(15.0));
        assert_eq!(d.row.net_tx_bps, Some(4.0));
        assert_eq!(d.row.disk_read_bps, None);
        assert_eq!(d.row.temperature_max_c, Some(55.5));
        assert_eq!(d.interfaces.len(), 3);
        assert_eq!((d.processes[0].kind, d.processes[0].rank), ("cpu", 1));
        assert_eq!(d.row_count(), 1 + 3 + 1 + 2 + 1);
    }
}
