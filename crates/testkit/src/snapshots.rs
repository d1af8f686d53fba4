//! Realistic snapshots without an agent: this host read by the agent's own
//! collector (`sysmonstm-collect`), under a machine id and `seq` the test
//! chooses. Every field is a real value from this machine (memory, load,
//! filesystems, disks, interfaces, processes), so decoders, rows and views
//! see what a real agent sends; each machine has a collector of its own, so
//! rates and CPU shares move between its samples as they would.

use sysmonstm_collect::{CollectOptions, Collector};
use sysmonstm_schemas::MachineId;
use sysmonstm_schemas::v1::{MachineInfo, Snapshot};

/// One simulated machine: real samples of this host, named `id`.
pub struct RealSnapshots {
    id: MachineId,
    collector: Collector,
}

impl RealSnapshots {
    /// A collector for `id`, warmed up (its first CPU reading taken), with
    /// the agent's default options. Panics where sysinfo cannot read this
    /// OS at all: a test cannot run there.
    pub async fn new(id: &MachineId) -> Self {
        let mut collector =
            Collector::new(id.clone(), CollectOptions::default()).expect("read this machine");
        collector.warm_up().await;
        Self {
            id: id.clone(),
            collector,
        }
    }

    pub fn id(&self) -> &MachineId {
        &self.id
    }

    /// A snapshot taken now, numbered `seq`.
    pub fn sample(&mut self, seq: u64) -> Snapshot {
        self.collector.sample(seq)
    }

    /// This host's facts under the machine's id, read now.
    pub fn info(&self) -> MachineInfo {
        sysmonstm_collect::info::read(&self.id)
    }
}

/// One real snapshot of this host under `id`, numbered 1: the template a
/// benchmark copies for its simulated machines.
pub async fn template(id: &MachineId) -> Snapshot {
    RealSnapshots::new(id).await.sample(1)
}
