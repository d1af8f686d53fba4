//! Reads this machine through `sysinfo` and maps what it sees into a
//! `Snapshot`. Only what the snapshot uses is refreshed: every refresh costs
//! CPU on the machine being watched.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use sysmonstm_schemas::MachineId;
use sysmonstm_schemas::v1::{Cpu, Load, Memory, Snapshot};

pub struct Collector {
    machine: MachineId,
    interval_ms: u32,
    sys: System,
}

impl Collector {
    /// Fails only where sysinfo cannot read this OS at all.
    pub fn new(machine: MachineId, interval: Duration) -> Result<Self, sysinfo::Error> {
        let sys = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_usage())
                .with_memory(MemoryRefreshKind::everything()),
        )?;
        Ok(Self {
            machine,
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            sys,
        })
    }

    /// CPU usage is a delta between two reads; before the first real sample
    /// wait the minimum interval sysinfo needs so it is not a meaningless 0.
    pub async fn warm_up(&mut self) {
        self.sys.refresh_cpu_usage();
        tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
    }

    /// Takes one sample now.
    pub fn sample(&mut self, seq: u64) -> Snapshot {
        self.sys.refresh_cpu_usage();
        self.sys.refresh_memory();
        // A field the OS will not give is left at its default, not guessed.
        let load = System::load_average().unwrap_or_default();
        Snapshot {
            machine_id: self.machine.to_string(),
            seq,
            timestamp_ms: now_ms(),
            interval_ms: self.interval_ms,
            cpu: Some(Cpu {
                usage_percent: self.sys.global_cpu_usage(),
                per_core_percent: self.sys.cpus().iter().map(|c| c.usage()).collect(),
                user_percent: None,
                system_percent: None,
                iowait_percent: None,
            }),
            memory: Some(Memory {
                total_bytes: self.sys.total_memory(),
                used_bytes: self.sys.used_memory(),
                available_bytes: self.sys.available_memory(),
                swap_total_bytes: self.sys.total_swap(),
                swap_used_bytes: self.sys.used_swap(),
                swap_free_bytes: self.sys.free_swap(),
            }),
            load: Some(Load {
                one: load.one,
                five: load.five,
                fifteen: load.fifteen,
            }),
            uptime_s: System::uptime().unwrap_or(0),
            process_count: process_count(),
            ..Default::default()
        }
    }
}

/// Counting `/proc`'s numeric entries is far cheaper than refreshing the
/// whole process table just to learn its length.
fn process_count() -> u32 {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u32
        })
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
