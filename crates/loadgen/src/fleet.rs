//! A simulated fleet: machines with their own shape (cores, memory, disks,
//! interfaces) and values that move over time, as a real fleet's do.
//!
//! * Most machines idle around a per-machine base load with a slow wave and
//!   some noise: they never meet a sane CPU rule.
//! * `breach_percent` of them follow a square wave (20 s at ~95 % CPU, 20 s
//!   at ~10 %, phases spread), so CPU rules fire and resolve.
//! * `silent_percent` of them stop publishing for the second quarter of the
//!   run and come back, as machines that reboot or lose their link do.
//!
//! Values are a pure function of (machine, time): two runs with the same
//! spec send the same fleet.

use std::time::Duration;

use sysmonstm_schemas::{MachineId, v1};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub machines: usize,
    /// Machine ids are `<prefix>-<n>` (n zero-padded).
    pub prefix: String,
    pub breach_percent: u32,
    pub silent_percent: u32,
}

#[derive(Clone, Debug)]
pub struct Sim {
    pub id: MachineId,
    pub subject: String,
    pub info_subject: String,
    cores: u32,
    mem_total: u64,
    disk_total: u64,
    phase: f64,
    base: f64,
    pub breach: bool,
    pub silent: bool,
}

/// A cheap, stable hash (splitmix64) for per-machine variety.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

impl FleetSpec {
    pub fn build(&self) -> anyhow::Result<Vec<Sim>> {
        anyhow::ensure!(self.machines > 0, "at least one machine");
        anyhow::ensure!(
            self.breach_percent + self.silent_percent <= 100,
            "breach_percent + silent_percent must be at most 100"
        );
        let width = self.machines.to_string().len().max(4);
        let breach_n = self.machines * self.breach_percent as usize / 100;
        let silent_n = self.machines * self.silent_percent as usize / 100;
        (0..self.machines)
            .map(|i| {
                let id =
                    MachineId::parse(&format!("{}-{i:0width$}", self.prefix)).map_err(|e| {
                        anyhow::anyhow!("machine id from prefix {:?}: {e}", self.prefix)
                    })?;
                let h = i as u64;
                // Breaching and silent machines spread through the fleet.
                let breach = breach_n > 0
                    && i % (self.machines / breach_n).max(1) == 0
                    && i / (self.machines / breach_n).max(1) < breach_n;
                let silent = !breach
                    && silent_n > 0
                    && (i + 1) % (self.machines / silent_n).max(1) == 0
                    && (i + 1) / (self.machines / silent_n).max(1) <= silent_n;
                Ok(Sim {
                    subject: sysmonstm_schemas::subjects::metrics(&id),
                    info_subject: sysmonstm_schemas::subjects::info(&id),
                    id,
                    cores: [2, 4, 8, 16, 32][(mix(h) % 5) as usize],
                    mem_total: [4u64, 8, 16, 32, 64][(mix(h + 1) % 5) as usize] << 30,
                    disk_total: [64u64, 256, 512, 2048][(mix(h + 2) % 4) as usize] << 30,
                    phase: unit(h + 3) * std::f64::consts::TAU,
                    base: 5.0 + 30.0 * unit(h + 4),
                    breach,
                    silent,
                })
            })
            .collect()
    }
}

impl Sim {
    /// Whether this machine publishes at `elapsed` into a run of `total`.
    pub fn publishes_at(&self, elapsed: Duration, total: Duration) -> bool {
        !(self.silent && elapsed >= total / 4 && elapsed < total / 2)
    }

    /// CPU % at `t_s` seconds since the epoch.
    pub fn cpu(&self, t_s: f64) -> f64 {
        if self.breach {
            // 40 s period, phase spread by machine.
            let p = (t_s + self.phase / std::f64::consts::TAU * 40.0).rem_euclid(40.0);
            if p < 20.0 {
                95.0 + 3.0 * (t_s * 1.7 + self.phase).sin()
            } else {
                10.0 + 3.0 * (t_s * 1.3 + self.phase).sin()
            }
        } else {
            (self.base
                + 10.0 * (t_s / 300.0 + self.phase).sin()
                + 4.0 * (t_s * 0.9 + self.phase).sin())
            .clamp(0.0, 100.0)
        }
    }

    pub fn snapshot(&self, seq: u64, now_ms: i64, interval_ms: u32) -> v1::Snapshot {
        let t = now_ms as f64 / 1000.0;
        let cpu = self.cpu(t);
        let mem_frac = (0.35 + 0.2 * (t / 900.0 + self.phase).sin()).clamp(0.05, 0.95);
        let used = (self.mem_total as f64 * mem_frac) as u64;
        let wave =
            |k: f64, scale: f64| (scale * (1.2 + (t * k + self.phase).sin())).max(0.0) as f32;
        let per_core = (0..self.cores)
            .map(|c| (cpu + 8.0 * (t * 0.5 + f64::from(c)).sin()).clamp(0.0, 100.0) as f32)
            .collect();
        let disk_used = (self.disk_total as f64 * (0.4 + 0.1 * self.phase.sin())) as u64;
        let load1 = cpu / 100.0 * f64::from(self.cores);
        v1::Snapshot {
            machine_id: self.id.to_string(),
            seq,
            timestamp_ms: now_ms,
            interval_ms,
            cpu: Some(v1::Cpu {
                usage_percent: cpu as f32,
                per_core_percent: per_core,
                user_percent: Some((cpu * 0.7) as f32),
                system_percent: Some((cpu * 0.25) as f32),
                iowait_percent: Some((cpu * 0.05) as f32),
            }),
            memory: Some(v1::Memory {
                total_bytes: self.mem_total,
                used_bytes: used,
                available_bytes: self.mem_total - used,
                swap_total_bytes: 2 << 30,
                swap_used_bytes: 64 << 20,
                swap_free_bytes: (2 << 30) - (64 << 20),
            }),
            load: Some(v1::Load {
                one: load1,
                five: load1 * 0.9,
                fifteen: load1 * 0.8,
            }),
            uptime_s: (now_ms / 1000).rem_euclid(3_000_000) as u64,
            process_count: 150 + (mix(seq) % 50) as u32,
            filesystems: vec![
                v1::Filesystem {
                    mount: "/".into(),
                    fs_type: "ext4".into(),
                    total_bytes: self.disk_total,
                    used_bytes: disk_used,
                    free_bytes: self.disk_total - disk_used,
                },
                v1::Filesystem {
                    mount: "/boot".into(),
                    fs_type: "ext4".into(),
                    total_bytes: 512 << 20,
                    used_bytes: 100 << 20,
                    free_bytes: 412 << 20,
                },
            ],
            disks: vec![v1::Disk {
                name: "sda".into(),
                read_bytes_per_s: Some(wave(0.3, 2e5)),
                write_bytes_per_s: Some(wave(0.2, 1e6)),
            }],
            interfaces: vec![v1::NetInterface {
                name: "eth0".into(),
                rx_bytes_per_s: Some(wave(0.7, 1e5)),
                tx_bytes_per_s: Some(wave(0.4, 5e4)),
                rx_errors_per_s: Some(0.0),
                tx_errors_per_s: Some(0.0),
            }],
            top_cpu: ["postgres", "nginx", "java", "sshd", "systemd"]
                .iter()
                .enumerate()
                .map(|(i, n)| v1::Process {
                    pid: 1000 + i as u32,
                    name: (*n).into(),
                    cpu_percent: (cpu / (i as f64 + 2.0)) as f32,
                    rss_bytes: (200 << 20) >> i,
                })
                .collect(),
            top_memory: vec![v1::Process {
                pid: 1002,
                name: "java".into(),
                cpu_percent: (cpu / 4.0) as f32,
                rss_bytes: used / 3,
            }],
            temperatures: vec![v1::Temperature {
                label: "Package id 0".into(),
                celsius: (40.0 + cpu * 0.3) as f32,
            }],
            agent: None,
        }
    }

    pub fn info(&self, now_ms: i64) -> v1::MachineInfo {
        v1::MachineInfo {
            machine_id: self.id.to_string(),
            hostname: self.id.to_string(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            kernel_version: "6.1.0-loadgen".into(),
            architecture: "x86_64".into(),
            cpu_model: "Simulated CPU".into(),
            core_count: self.cores,
            memory_total_bytes: self.mem_total,
            agent_version: concat!("loadgen-", env!("CARGO_PKG_VERSION")).into(),
            boot_time_s: now_ms / 1000 - 86_400,
            timestamp_ms: now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sysmonstm_schemas::accept;

    #[test]
    fn the_fleet_has_the_asked_shares_and_valid_ids() {
        let fleet = FleetSpec {
            machines: 1000,
            prefix: "lg".into(),
            breach_percent: 10,
            silent_percent: 5,
        }
        .build()
        .expect("fleet");
        assert_eq!(fleet.iter().filter(|s| s.breach).count(), 100);
        assert_eq!(fleet.iter().filter(|s| s.silent).count(), 50);
        assert!(fleet.iter().all(|s| !(s.breach && s.silent)));
        let ids: std::collections::HashSet<_> = fleet.iter().map(|s| s.id.to_string()).collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn breaching_machines_cross_a_90_percent_rule_and_the_rest_do_not() {
        let fleet = FleetSpec {
            machines: 100,
            prefix: "lg".into(),
            breach_percent: 10,
            silent_percent: 0,
        }
        .build()
        .expect("fleet");
        for s in &fleet {
            let over = (0..80)
                .filter(|t| s.cpu(1.0e9 + f64::from(*t)) > 90.0)
                .count();
            if s.breach {
                assert!((30..=50).contains(&over), "{}: {over} of 80 s over", s.id);
            } else {
                assert_eq!(over, 0, "{}", s.id);
            }
        }
    }

    #[test]
    fn snapshots_pass_the_consumers_acceptance_rule() {
        let fleet = FleetSpec {
            machines: 10,
            prefix: "lg".into(),
            breach_percent: 10,
            silent_percent: 10,
        }
        .build()
        .expect("fleet");
        let now = 1_800_000_000_000;
        let limits = accept::Limits::default();
        for s in &fleet {
            let snap = s.snapshot(7, now, 1000);
            let id = accept::metrics_subject(&s.subject).expect("subject");
            accept::same_machine(&id, &snap.machine_id).expect("same machine");
            accept::timestamp(snap.timestamp_ms, now, &limits).expect("timestamp");
            accept::interval(snap.interval_ms).expect("interval");
            accept::payload_size(prost::Message::encoded_len(&snap), &limits).expect("size");
            let cpu = snap.cpu.as_ref().expect("cpu").usage_percent;
            assert!((0.0..=100.0).contains(&cpu));
            let m = snap.memory.as_ref().expect("memory");
            assert_eq!(m.used_bytes + m.available_bytes, m.total_bytes);
        }
    }
}
