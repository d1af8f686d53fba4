//! sysmonstm-collect: reads this machine and maps what it sees into a
//! `Snapshot` (and its static facts into a `MachineInfo`, `info`). The
//! agent samples with it; tests and benches take realistic snapshots from it
//! through `sysmonstm-testkit`, so they need no agent.
//!
//! sysinfo gives memory, swap, load, uptime, filesystems, processes and
//! temperatures; three `/proc` files give what sysinfo lacks (iowait and the
//! user/system split, per block device and per interface counters — see
//! `procfs`). Only what the snapshot uses is refreshed, and the process table,
//! the most expensive part, only every `process_every` samples. A source that
//! cannot be read leaves its section empty and is logged once, never a panic.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sysinfo::{
    Components, DiskRefreshKind, Disks, MemoryRefreshKind, ProcessRefreshKind, ProcessesToUpdate,
    RefreshKind, System,
};
use sysmonstm_schemas::MachineId;
use sysmonstm_schemas::v1::{
    Cpu, Disk, Filesystem, Load, Memory, NetInterface, Process, Snapshot, Temperature,
};

pub mod info;
pub mod procfs;
pub mod rates;

use crate::procfs::{DiskCounters, NetCounters};
use crate::rates::{RateTracker, per_second};

/// Mounts and sensors are listed again every this many samples (a new USB
/// disk shows up within a minute at 1 s); in between only their values are
/// read.
const RELIST: u64 = 60;

/// Filesystem types that hold no user data.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "mqueue",
    "hugetlbfs",
    "fusectl",
    "autofs",
    "binfmt_misc",
    "efivarfs",
    "nsfs",
    "rpc_pipefs",
    "squashfs",
    "selinuxfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "overlay",
    "none",
];

/// What the collector takes from its configuration.
#[derive(Clone, Debug)]
pub struct CollectOptions {
    pub interval: Duration,
    /// How many processes in each top list.
    pub top_n: usize,
    /// Refresh the process table every this many samples (1 = every one).
    pub process_every: u32,
    /// Where `/proc` and `/sys` are (tests point these at prepared trees).
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            top_n: 5,
            process_every: 5,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

pub struct Collector {
    machine: MachineId,
    opts: CollectOptions,
    sys: System,
    filesystems: Disks,
    components: Components,
    cpu_prev: Option<procfs::Stat>,
    disk_rates: RateTracker<DiskCounters>,
    net_rates: RateTracker<NetCounters>,
    whole_disks: HashSet<String>,
    /// Every name of /proc/diskstats seen so far (partitions and loop
    /// devices too), so /sys/block is listed again only for a new one.
    disk_names_seen: HashSet<String>,
    samples: u64,
    top_cpu: Vec<Process>,
    top_memory: Vec<Process>,
    warned: HashSet<String>,
}

impl Collector {
    /// Fails only where sysinfo cannot read this OS at all.
    pub fn new(machine: MachineId, opts: CollectOptions) -> Result<Self, sysinfo::Error> {
        let sys = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::everything()),
        )?;
        let filesystems =
            Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage())
                .or_else(|_| Disks::new())?;
        let components = Components::new_with_refreshed_list().or_else(|_| Components::new())?;
        Ok(Self {
            machine,
            opts,
            sys,
            filesystems,
            components,
            cpu_prev: None,
            disk_rates: RateTracker::default(),
            net_rates: RateTracker::default(),
            whole_disks: HashSet::new(),
            disk_names_seen: HashSet::new(),
            samples: 0,
            top_cpu: Vec::new(),
            top_memory: Vec::new(),
            warned: HashSet::new(),
        })
    }

    /// CPU shares and rates are deltas: read every counter once and wait the
    /// minimum interval, so the first snapshot already carries real values.
    pub async fn warm_up(&mut self) {
        self.cpu_prev = self.read("stat").and_then(|t| procfs::parse_stat(&t));
        let now = Instant::now();
        let disks = self.disk_counters();
        self.disk_rates.update(now, disks, |_, _, _| ());
        let nets = self.net_counters();
        self.net_rates.update(now, nets, |_, _, _| ());
        self.refresh_processes();
        tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL).await;
    }

    /// Takes one sample now.
    pub fn sample(&mut self, seq: u64) -> Snapshot {
        let now = Instant::now();
        self.sys.refresh_memory();
        if self.samples % u64::from(self.opts.process_every.max(1)) == 0 {
            self.refresh_processes();
        }
        self.samples += 1;
        let load = System::load_average().unwrap_or_default();
        Snapshot {
            machine_id: self.machine.to_string(),
            seq,
            timestamp_ms: now_ms(),
            interval_ms: u32::try_from(self.opts.interval.as_millis()).unwrap_or(u32::MAX),
            cpu: self.cpu(),
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
            process_count: self.process_count(),
            filesystems: self.filesystems(),
            disks: self.disks(now),
            interfaces: self.interfaces(now),
            top_cpu: self.top_cpu.clone(),
            top_memory: self.top_memory.clone(),
            temperatures: self.temperatures(),
            agent: None,
        }
    }

    /// Reads `<proc_root>/<name>`; a failure is logged once per file.
    fn read(&mut self, name: &str) -> Option<String> {
        let path = self.opts.proc_root.join(name);
        self.read_path(&path)
    }

    fn read_path(&mut self, path: &Path) -> Option<String> {
        match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) => {
                if self.warned.insert(path.display().to_string()) {
                    tracing::warn!(path = %path.display(), error = %e,
                        "cannot read; the fields it gives are left out (logged once)");
                }
                None
            }
        }
    }

    fn cpu(&mut self) -> Option<Cpu> {
        let cur = self.read("stat").and_then(|t| procfs::parse_stat(&t))?;
        let prev = self.cpu_prev.replace(cur.clone())?;
        let all = procfs::cpu_shares(&prev.all, &cur.all)?;
        Some(Cpu {
            usage_percent: all.busy,
            per_core_percent: prev
                .cores
                .iter()
                .zip(&cur.cores)
                .map(|(p, c)| procfs::cpu_shares(p, c).map_or(0.0, |s| s.busy))
                .collect(),
            user_percent: Some(all.user),
            system_percent: Some(all.system),
            iowait_percent: Some(all.iowait),
        })
    }

    fn disk_counters(&mut self) -> Vec<(String, DiskCounters)> {
        let Some(text) = self.read("diskstats") else {
            return Vec::new();
        };
        // Whole disks are the entries of /sys/block, less loop and RAM devices;
        // re-list them only when an unknown name shows up.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_ascii_whitespace().nth(2))
            .collect();
        if names.iter().any(|n| !self.disk_names_seen.contains(*n)) {
            self.disk_names_seen = names.iter().map(|n| (*n).to_owned()).collect();
            self.whole_disks = std::fs::read_dir(self.opts.sys_root.join("block"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with("loop") && !n.starts_with("ram"))
                .collect();
        }
        let keep = &self.whole_disks;
        procfs::parse_diskstats(&text, |n| keep.contains(n))
    }

    fn net_counters(&mut self) -> Vec<(String, NetCounters)> {
        self.read("net/dev")
            .map(|t| procfs::parse_net_dev(&t))
            .unwrap_or_default()
    }

    fn disks(&mut self, now: Instant) -> Vec<Disk> {
        let counters = self.disk_counters();
        self.disk_rates
            .update(now, counters, |p, c, s| {
                (
                    per_second(p.read_bytes, c.read_bytes, s),
                    per_second(p.written_bytes, c.written_bytes, s),
                )
            })
            .into_iter()
            .map(|(name, r)| {
                let (read, write) = r.unwrap_or((None, None));
                Disk {
                    name,
                    read_bytes_per_s: read,
                    write_bytes_per_s: write,
                }
            })
            .collect()
    }

    fn interfaces(&mut self, now: Instant) -> Vec<NetInterface> {
        let counters = self.net_counters();
        self.net_rates
            .update(now, counters, |p, c, s| {
                [
                    per_second(p.rx_bytes, c.rx_bytes, s),
                    per_second(p.tx_bytes, c.tx_bytes, s),
                    per_second(p.rx_errors, c.rx_errors, s),
                    per_second(p.tx_errors, c.tx_errors, s),
                ]
            })
            .into_iter()
            .map(|(name, r)| {
                let [rx, tx, rxe, txe] = r.unwrap_or([None; 4]);
                NetInterface {
                    name,
                    rx_bytes_per_s: rx,
                    tx_bytes_per_s: tx,
                    rx_errors_per_s: rxe,
                    tx_errors_per_s: txe,
                }
            })
            .collect()
    }

    fn filesystems(&mut self) -> Vec<Filesystem> {
        // Listing mounts costs far more than reading their usage: re-list
        // every RELIST samples, read usage every sample.
        let storage = DiskRefreshKind::nothing().with_storage();
        if self.samples % RELIST == 1 {
            self.filesystems.refresh_specifics(true, storage);
        } else {
            for d in self.filesystems.iter_mut() {
                d.refresh_specifics(storage);
            }
        }
        let mut seen_devices = HashSet::new();
        let mut out: Vec<Filesystem> = self
            .filesystems
            .iter()
            .filter(|d| {
                let fs = d.file_system().to_string_lossy();
                !PSEUDO_FS.contains(&fs.as_ref()) && d.total_space() > 0
            })
            // A device mounted twice (bind mounts) is reported once.
            .filter(|d| seen_devices.insert(d.name().to_owned()))
            .map(|d| Filesystem {
                mount: d.mount_point().to_string_lossy().into_owned(),
                fs_type: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                used_bytes: d.total_space().saturating_sub(d.available_space()),
                free_bytes: d.available_space(),
            })
            .collect();
        out.sort_by(|a, b| a.mount.cmp(&b.mount));
        out
    }

    fn refresh_processes(&mut self) {
        self.sys.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing()
                .with_cpu()
                .with_memory()
                .without_tasks(),
        );
        let mut all: Vec<Process> = self
            .sys
            .processes()
            .values()
            // Threads are listed as processes on Linux; count each once.
            .filter(|p| p.thread_kind().is_none())
            .map(|p| Process {
                pid: p.pid().as_u32(),
                name: p.name().to_string_lossy().into_owned(),
                cpu_percent: p.cpu_usage(),
                rss_bytes: p.memory(),
            })
            .collect();
        let n = self.opts.top_n;
        all.sort_by(|a, b| {
            b.cpu_percent
                .total_cmp(&a.cpu_percent)
                .then(a.pid.cmp(&b.pid))
        });
        self.top_cpu = all.iter().take(n).cloned().collect();
        all.sort_by(|a, b| b.rss_bytes.cmp(&a.rss_bytes).then(a.pid.cmp(&b.pid)));
        self.top_memory = all.into_iter().take(n).collect();
    }

    /// Counting `/proc`'s numeric entries is far cheaper than refreshing the
    /// whole process table just to learn its length.
    fn process_count(&mut self) -> u32 {
        match std::fs::read_dir(&self.opts.proc_root) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                })
                .count() as u32,
            Err(_) => 0,
        }
    }

    fn temperatures(&mut self) -> Vec<Temperature> {
        if self.samples % RELIST == 1 {
            self.components.refresh(true);
        } else {
            for c in self.components.iter_mut() {
                c.refresh();
            }
        }
        self.components
            .iter()
            .filter_map(|c| {
                Some(Temperature {
                    label: c.label().to_owned(),
                    celsius: c.temperature().filter(|t| t.is_finite())?,
                })
            })
            .collect()
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    fn net(rx: u64, tx: u64) -> String {
        format!("h1\nh2\n  eth9: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n")
    }

    #[tokio::test]
    async fn an_unreadable_source_leaves_its_section_out_and_is_logged_once() {
        let proc_root = tempfile::tempdir().expect("tempdir");
        let sys_root = tempfile::tempdir().expect("tempdir");
        // No `stat` file: CPU cannot be read. Disks and network can.
        write(
            proc_root.path(),
            "diskstats",
            "8 0 sdz 1 0 100 0 1 0 200 0 0 0 0\n",
        );
        write(proc_root.path(), "net/dev", &net(1000, 2000));
        std::fs::create_dir_all(sys_root.path().join("block/sdz")).expect("mkdir");
        let opts = CollectOptions {
            proc_root: proc_root.path().to_owned(),
            sys_root: sys_root.path().to_owned(),
            ..Default::default()
        };
        let mut c = Collector::new(MachineId::parse("t").expect("valid"), opts).expect("collector");

        let first = c.sample(1);
        assert_eq!(
            first.cpu, None,
            "no /proc/stat: no CPU section rather than zeros"
        );
        assert!(first.memory.is_some(), "the rest is still collected");
        assert_eq!(first.disks.len(), 1);
        assert_eq!(
            first.disks[0].read_bytes_per_s, None,
            "first sample: no rate"
        );
        assert_eq!(first.interfaces[0].rx_bytes_per_s, None);

        write(
            proc_root.path(),
            "diskstats",
            "8 0 sdz 1 0 300 0 1 0 200 0 0 0 0\n",
        );
        write(proc_root.path(), "net/dev", &net(5000, 2000));
        let second = c.sample(2);
        assert_eq!(second.cpu, None);
        let read = second.disks[0].read_bytes_per_s.expect("a rate now");
        assert!(read > 0.0 && second.disks[0].write_bytes_per_s == Some(0.0));
        assert!(second.interfaces[0].rx_bytes_per_s.is_some_and(|r| r > 0.0));
        assert_eq!(second.interfaces[0].tx_bytes_per_s, Some(0.0));
        assert_eq!(
            c.warned.len(),
            1,
            "the missing file is logged once, not every sample"
        );

        // The device disappears: it is left out, nothing breaks.
        write(proc_root.path(), "diskstats", "");
        assert!(c.sample(3).disks.is_empty());
    }

    #[tokio::test]
    async fn this_machine_fills_every_section_it_has() {
        let mut c = Collector::new(
            MachineId::parse("t").expect("valid"),
            CollectOptions::default(),
        )
        .expect("collector");
        c.warm_up().await;
        let s = c.sample(1);
        let cpu = s.cpu.expect("cpu");
        assert_eq!(
            cpu.per_core_percent.len(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        assert!(cpu.iowait_percent.is_some() && cpu.user_percent.is_some());
        assert!(!s.filesystems.is_empty(), "a real filesystem is mounted");
        assert!(
            s.filesystems
                .iter()
                .all(|f| !PSEUDO_FS.contains(&f.fs_type.as_str()))
        );
        assert!(!s.interfaces.is_empty() && s.interfaces.iter().all(|i| i.name != "lo"));
        assert!(!s.top_memory.is_empty() && s.top_memory.len() <= 5);
        assert!(
            s.top_memory
                .windows(2)
                .all(|w| w[0].rss_bytes >= w[1].rss_bytes)
        );
        assert!(
            s.top_cpu
                .windows(2)
                .all(|w| w[0].cpu_percent >= w[1].cpu_percent)
        );
    }
}
