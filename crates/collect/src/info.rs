//! MachineInfo: the machine's static facts (host, OS, kernel, CPU model and
//! count, memory, boot time), which the agent publishes on start and change.

use sysinfo::{CpuRefreshKind, RefreshKind, System};
use sysmonstm_schemas::MachineId;
use sysmonstm_schemas::v1::MachineInfo;

/// Reads the facts now. `agent_version` is this workspace's version, which
/// the agent shares.
pub fn read(machine: &MachineId) -> MachineInfo {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(sysinfo::MemoryRefreshKind::nothing().with_ram()),
    )
    .ok();
    let cpus = sys.as_ref().map(|s| s.cpus()).unwrap_or_default();
    MachineInfo {
        machine_id: machine.to_string(),
        hostname: System::host_name().unwrap_or_default(),
        os_name: System::name().unwrap_or_default(),
        // The version alone ("12"): sysinfo's long version repeats the name
        // ("Linux (Debian GNU/Linux 12)"), and readers show name + version.
        os_version: System::os_version().unwrap_or_default(),
        kernel_version: System::kernel_version().unwrap_or_default(),
        architecture: System::cpu_arch(),
        cpu_model: cpus
            .first()
            .map(|c| c.brand().trim().to_owned())
            .unwrap_or_default(),
        core_count: cpus.len() as u32,
        memory_total_bytes: sys.as_ref().map(|s| s.total_memory()).unwrap_or(0),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        boot_time_s: System::boot_time().map(|t| t as i64).unwrap_or(0),
        timestamp_ms: crate::now_ms(),
    }
}
