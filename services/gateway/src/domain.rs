//! The edge where protobuf ends: snapshots, machine facts and alert events
//! from JetStream become the JSON shapes the API and the dashboard use.
//! Nothing past this module sees prost types.
//!
//! Every message passes `schemas::accept` first (the rule every consumer
//! applies): bounded payload, machine id from the subject and the same one
//! in the payload, a timestamp within the allowed skew, a bounded interval.
//! What fails is a [`Reject`], counted by its reason; it never reaches a
//! cache, a client or the "latest" order of a machine.

use serde::Serialize;
use sysmonstm_schemas::accept::{self, Limits, Reject};
use sysmonstm_schemas::{MachineId, subjects, v1};

/// The headline values of one machine: what an overview card shows.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub machine_id: String,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub interval_ms: u32,
    /// Absent on an agent's first sample (no delta yet).
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
    pub swap: Option<f64>,
    /// Highest used share of any filesystem, in percent.
    pub disk: Option<f64>,
    pub load1: Option<f64>,
    pub load5: Option<f64>,
    pub load15: Option<f64>,
    pub net_rx: f64,
    pub net_tx: f64,
    pub disk_read: f64,
    pub disk_write: f64,
    pub processes: u32,
    pub uptime_s: u64,
}

impl Summary {
    /// The value of a history metric (`params::HISTORY_METRICS`), where
    /// the snapshot has it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "cpu" => self.cpu,
            "memory" => self.memory,
            "swap" => self.swap,
            "disk" => self.disk,
            "load1" => self.load1,
            "load5" => self.load5,
            "load15" => self.load15,
            "net_rx" => Some(self.net_rx),
            "net_tx" => Some(self.net_tx),
            "disk_read" => Some(self.disk_read),
            "disk_write" => Some(self.disk_write),
            "processes" => Some(f64::from(self.processes)),
            _ => None,
        }
    }
}

/// One snapshot in full: the machine page.
#[derive(Clone, Debug, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    pub cpu_per_core: Vec<f32>,
    pub cpu_user: Option<f32>,
    pub cpu_system: Option<f32>,
    pub cpu_iowait: Option<f32>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub swap_total_bytes: Option<u64>,
    pub swap_used_bytes: Option<u64>,
    pub filesystems: Vec<Filesystem>,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<Interface>,
    pub top_cpu: Vec<Process>,
    pub top_memory: Vec<Process>,
    pub temperatures: Vec<Temperature>,
    pub spool_pending: Option<u64>,
    pub spool_dropped: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Filesystem {
    pub mount: String,
    pub fs_type: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub used_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Disk {
    pub name: String,
    pub read_bytes_per_s: Option<f32>,
    pub write_bytes_per_s: Option<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Interface {
    pub name: String,
    pub rx_bytes_per_s: Option<f32>,
    pub tx_bytes_per_s: Option<f32>,
    pub rx_errors_per_s: Option<f32>,
    pub tx_errors_per_s: Option<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Process {
    pub pid: u32,
    pub name: String,
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Temperature {
    pub label: String,
    pub celsius: f32,
}

/// The facts of a machine (`MachineInfo`).
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    pub machine_id: String,
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel_version: String,
    pub architecture: String,
    pub cpu_model: String,
    pub core_count: u32,
    pub memory_total_bytes: u64,
    pub agent_version: String,
    pub boot_time_s: i64,
    pub timestamp_ms: i64,
}

/// An alert event as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub machine_id: String,
    pub rule: String,
    pub severity: &'static str,
    pub state: &'static str,
    pub metric: String,
    pub value: f64,
    pub threshold: f64,
    pub since_ms: i64,
    pub timestamp_ms: i64,
    pub message: String,
    /// 0 for the first firing event, 1, 2 … for reminders.
    pub repeat: u32,
    /// A silence covers it, so no notification goes out: now for the
    /// latest event of a rule (`/api/alerts/live`, `/ws`), at the event's
    /// time for a stored one; never at the edge, which has no silences.
    pub muted: bool,
    /// The silence, when muted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silence: Option<Mute>,
}

/// The silence that mutes an alert, as the dashboard shows it (of several,
/// the one that ends last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mute {
    pub id: String,
    pub comment: String,
    /// Unix milliseconds.
    pub ends_ms: i64,
}

fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

fn decode<T: prost::Message + Default>(payload: &[u8], limits: &Limits) -> Result<T, Reject> {
    accept::payload_size(payload.len(), limits)?;
    T::decode(payload).map_err(|e| Reject::Decode(e.to_string()))
}

/// A snapshot from `sysmon.metrics.<machine>`, checked against the clock
/// `now_ms`.
pub fn snapshot(
    subject: &str,
    payload: &[u8],
    now_ms: i64,
    limits: &Limits,
) -> Result<Detail, Reject> {
    let s: v1::Snapshot = decode(payload, limits)?;
    accept::snapshot(
        subject,
        accept::SnapshotFields {
            machine_id: &s.machine_id,
            timestamp_ms: s.timestamp_ms,
            interval_ms: s.interval_ms,
        },
        now_ms,
        limits,
    )?;
    let mem = s.memory.unwrap_or_default();
    let has_mem = s.memory.is_some();
    let load = s.load;
    let filesystems: Vec<Filesystem> = s
        .filesystems
        .iter()
        .map(|f| Filesystem {
            mount: f.mount.clone(),
            fs_type: f.fs_type.clone(),
            total_bytes: f.total_bytes,
            used_bytes: f.used_bytes,
            free_bytes: f.free_bytes,
            used_percent: percent(f.used_bytes, f.total_bytes).unwrap_or(0.0),
        })
        .collect();
    let disk = filesystems
        .iter()
        .filter(|f| f.total_bytes > 0)
        .map(|f| f.used_percent)
        .fold(None, |acc: Option<f64>, v| {
            Some(acc.map_or(v, |a| a.max(v)))
        });
    // Contract: net rates summed over interfaces except loopback.
    let up = s.interfaces.iter().filter(|i| i.name != "lo");
    let net_rx = up
        .clone()
        .filter_map(|i| i.rx_bytes_per_s)
        .map(f64::from)
        .sum();
    let net_tx = up.filter_map(|i| i.tx_bytes_per_s).map(f64::from).sum();
    let disk_read = s
        .disks
        .iter()
        .filter_map(|d| d.read_bytes_per_s)
        .map(f64::from)
        .sum();
    let disk_write = s
        .disks
        .iter()
        .filter_map(|d| d.write_bytes_per_s)
        .map(f64::from)
        .sum();
    let cpu = s.cpu.clone().unwrap_or_default();
    let summary = Summary {
        machine_id: s.machine_id.clone(),
        seq: s.seq,
        timestamp_ms: s.timestamp_ms,
        interval_ms: s.interval_ms,
        cpu: s.cpu.as_ref().map(|c| f64::from(c.usage_percent)),
        memory: if has_mem {
            percent(mem.used_bytes, mem.total_bytes)
        } else {
            None
        },
        swap: has_mem.then(|| percent(mem.swap_used_bytes, mem.swap_total_bytes).unwrap_or(0.0)),
        disk,
        load1: load.map(|l| l.one),
        load5: load.map(|l| l.five),
        load15: load.map(|l| l.fifteen),
        net_rx,
        net_tx,
        disk_read,
        disk_write,
        processes: s.process_count,
        uptime_s: s.uptime_s,
    };
    let proc = |p: &v1::Process| Process {
        pid: p.pid,
        name: p.name.clone(),
        cpu_percent: p.cpu_percent,
        rss_bytes: p.rss_bytes,
    };
    Ok(Detail {
        summary,
        cpu_per_core: cpu.per_core_percent,
        cpu_user: cpu.user_percent,
        cpu_system: cpu.system_percent,
        cpu_iowait: cpu.iowait_percent,
        memory_total_bytes: has_mem.then_some(mem.total_bytes),
        memory_used_bytes: has_mem.then_some(mem.used_bytes),
        memory_available_bytes: has_mem.then_some(mem.available_bytes),
        swap_total_bytes: has_mem.then_some(mem.swap_total_bytes),
        swap_used_bytes: has_mem.then_some(mem.swap_used_bytes),
        filesystems,
        disks: s
            .disks
            .iter()
            .map(|d| Disk {
                name: d.name.clone(),
                read_bytes_per_s: d.read_bytes_per_s,
                write_bytes_per_s: d.write_bytes_per_s,
            })
            .collect(),
        interfaces: s
            .interfaces
            .iter()
            .map(|i| Interface {
                name: i.name.clone(),
                rx_bytes_per_s: i.rx_bytes_per_s,
                tx_bytes_per_s: i.tx_bytes_per_s,
                rx_errors_per_s: i.rx_errors_per_s,
                tx_errors_per_s: i.tx_errors_per_s,
            })
            .collect(),
        top_cpu: s.top_cpu.iter().map(proc).collect(),
        top_memory: s.top_memory.iter().map(proc).collect(),
        temperatures: s
            .temperatures
            .iter()
            .map(|t| Temperature {
                label: t.label.clone(),
                celsius: t.celsius,
            })
            .collect(),
        spool_pending: s.agent.map(|a| a.spool_pending),
        spool_dropped: s.agent.map(|a| a.spool_dropped),
    })
}

/// Machine facts from `sysmon.info.<machine>`. MACHINES keeps the last
/// facts of a machine for ever, so an old timestamp is fine; one from before
/// 2000 or beyond the skew is not a real agent's.
pub fn info(subject: &str, payload: &[u8], now_ms: i64, limits: &Limits) -> Result<Info, Reject> {
    let machine = accept::info_subject(subject)?;
    let i: v1::MachineInfo = decode(payload, limits)?;
    accept::same_machine(&machine, &i.machine_id)?;
    accept::timestamp(i.timestamp_ms, now_ms, limits)?;
    Ok(Info {
        machine_id: i.machine_id,
        hostname: i.hostname,
        os_name: i.os_name,
        os_version: i.os_version,
        kernel_version: i.kernel_version,
        architecture: i.architecture,
        cpu_model: i.cpu_model,
        core_count: i.core_count,
        memory_total_bytes: i.memory_total_bytes,
        agent_version: i.agent_version,
        boot_time_s: i.boot_time_s,
        timestamp_ms: i.timestamp_ms,
    })
}

/// An alert event from `sysmon.alerts.<severity>.<machine>.<rule>`. Its
/// time orders the events of one `machine:rule`, so it is bounded like a
/// snapshot's.
pub fn alert(subject: &str, payload: &[u8], now_ms: i64, limits: &Limits) -> Result<Alert, Reject> {
    let (_, token, _) =
        subjects::parse_alert(subject).ok_or_else(|| Reject::Subject(short(subject)))?;
    let machine = MachineId::parse(token).map_err(|_| Reject::MachineId(short(token)))?;
    let a: v1::AlertEvent = decode(payload, limits)?;
    accept::same_machine(&machine, &a.machine_id)?;
    accept::timestamp(a.timestamp_ms, now_ms, limits)?;
    let severity = match a.severity() {
        v1::Severity::Info => "info",
        v1::Severity::Warning => "warning",
        v1::Severity::Critical => "critical",
        v1::Severity::Unspecified => "unspecified",
    };
    let state = match a.state() {
        v1::AlertState::Firing => "firing",
        v1::AlertState::Resolved => "resolved",
        v1::AlertState::Acknowledged => "acknowledged",
        v1::AlertState::Unspecified => "unspecified",
    };
    Ok(Alert {
        machine_id: a.machine_id,
        rule: a.rule,
        severity,
        state,
        metric: a.metric,
        value: a.value,
        threshold: a.threshold,
        since_ms: a.since_ms,
        timestamp_ms: a.timestamp_ms,
        message: a.message,
        repeat: a.repeat,
        muted: false,
        silence: None,
    })
}

/// A subject or token cut for an error message (and so a log line).
fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn snap(machine: &str) -> v1::Snapshot {
        v1::Snapshot {
            machine_id: machine.into(),
            seq: 7,
            timestamp_ms: 1_700_000_000_000,
            interval_ms: 1000,
            memory: Some(v1::Memory {
                total_bytes: 200,
                used_bytes: 50,
                ..Default::default()
            }),
            interfaces: vec![
                v1::NetInterface {
                    name: "lo".into(),
                    rx_bytes_per_s: Some(1000.0),
                    ..Default::default()
                },
                v1::NetInterface {
                    name: "eth0".into(),
                    rx_bytes_per_s: Some(10.0),
                    tx_bytes_per_s: Some(4.0),
                    ..Default::default()
                },
            ],
            filesystems: vec![
                v1::Filesystem {
                    mount: "/".into(),
                    total_bytes: 100,
                    used_bytes: 30,
                    ..Default::default()
                },
                v1::Filesystem {
                    mount: "/data".into(),
                    total_bytes: 100,
                    used_bytes: 90,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    const NOW: i64 = 1_700_000_000_000;

    fn decode_snap(subject: &str, payload: &[u8]) -> Result<Detail, Reject> {
        snapshot(subject, payload, NOW, &Limits::default())
    }

    #[test]
    fn headline_values_follow_the_contract() {
        let d =
            decode_snap("sysmon.metrics.web-1", &snap("web-1").encode_to_vec()).expect("decodes");
        assert_eq!(d.summary.memory, Some(25.0));
        assert_eq!(d.summary.swap, Some(0.0), "no swap is 0 %");
        assert_eq!(d.summary.net_rx, 10.0, "loopback is not counted");
        assert_eq!(d.summary.disk, Some(90.0), "fullest filesystem");
    }

    #[test]
    fn what_the_contract_refuses_is_a_reject_with_its_reason() {
        let good = snap("web-1").encode_to_vec();
        let reason = |subject: &str, payload: &[u8]| {
            decode_snap(subject, payload).expect_err(subject).reason()
        };
        assert_eq!(reason("sysmon.metrics.web-2", &good), "machine_mismatch");
        assert_eq!(reason("sysmon.metrics.web-1", b"\xff\xff\xff"), "decode");
        assert_eq!(reason("sysmon.metrics.Web-1", &good), "machine_id");
        let long = format!("sysmon.metrics.{}", "a".repeat(300));
        assert_eq!(reason(&long, &good), "machine_id");
        let mut future = snap("web-1");
        future.timestamp_ms = i64::MAX;
        assert_eq!(
            reason("sysmon.metrics.web-1", &future.encode_to_vec()),
            "future"
        );
        let big = vec![0u8; Limits::default().max_payload_bytes + 1];
        assert_eq!(reason("sysmon.metrics.web-1", &big), "oversized");

        let facts = v1::MachineInfo {
            machine_id: "web-1".into(),
            timestamp_ms: NOW,
            ..Default::default()
        };
        let l = Limits::default();
        info("sysmon.info.web-1", &facts.encode_to_vec(), NOW, &l).expect("facts");
        assert_eq!(
            info("sysmon.info.WEB", &facts.encode_to_vec(), NOW, &l)
                .expect_err("upper case")
                .reason(),
            "machine_id"
        );
        let alert_event = v1::AlertEvent {
            machine_id: "web-1".into(),
            rule: "cpu".into(),
            timestamp_ms: 8_000 * 365 * 86_400_000,
            ..Default::default()
        };
        assert_eq!(
            alert(
                "sysmon.alerts.critical.web-1.cpu",
                &alert_event.encode_to_vec(),
                NOW,
                &l
            )
            .expect_err("year ~8000")
            .reason(),
            "future"
        );
        assert_eq!(
            alert(
                "sysmon.alerts.critical.Web-1.cpu",
                &alert_event.encode_to_vec(),
                NOW,
                &l
            )
            .expect_err("bad id")
            .reason(),
            "machine_id"
        );
    }

    use proptest::prelude::*;

    fn subject() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("sysmon.metrics.web-1".to_owned()),
            Just("sysmon.info.web-1".to_owned()),
            Just("sysmon.alerts.critical.web-1.cpu".to_owned()),
            "sysmon\\.(metrics|info|alerts)\\.[A-Za-z0-9_.-]{0,80}",
            ".{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary bytes on arbitrary subjects: never a panic; whatever
        /// is taken names a valid machine and a time within the rule.
        #[test]
        fn the_decoders_take_only_what_the_rule_allows(
            subject in subject(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
            now_ms in any::<i64>(),
        ) {
            let l = Limits::default();
            let ok_time = |ts: i64| accept::timestamp(ts, now_ms, &l).is_ok();
            if let Ok(d) = snapshot(&subject, &payload, now_ms, &l) {
                prop_assert!(MachineId::parse(&d.summary.machine_id).is_ok());
                prop_assert!(ok_time(d.summary.timestamp_ms));
            }
            if let Ok(i) = info(&subject, &payload, now_ms, &l) {
                prop_assert!(MachineId::parse(&i.machine_id).is_ok());
                prop_assert!(ok_time(i.timestamp_ms));
            }
            if let Ok(a) = alert(&subject, &payload, now_ms, &l) {
                prop_assert!(MachineId::parse(&a.machine_id).is_ok());
                prop_assert!(ok_time(a.timestamp_ms));
            }
        }

        /// Real snapshots with their fields at any value: taken exactly when
        /// the rule says so.
        #[test]
        fn a_snapshot_is_taken_exactly_when_the_rule_allows_it(
            machine in prop_oneof![Just("web-1".to_owned()), "[a-zA-Z0-9_-]{0,70}"],
            ts in prop_oneof![any::<i64>(), NOW - 10_000_000..NOW + 10_000_000],
            interval in prop_oneof![any::<u32>(), 0u32..2000],
        ) {
            let mut s = snap("web-1");
            s.machine_id = machine.clone();
            s.timestamp_ms = ts;
            s.interval_ms = interval;
            let l = Limits::default();
            let subject = format!("sysmon.metrics.{machine}");
            let rule = accept::snapshot(
                &subject,
                accept::SnapshotFields { machine_id: &machine, timestamp_ms: ts, interval_ms: interval },
                NOW,
                &l,
            );
            let got = snapshot(&subject, &s.encode_to_vec(), NOW, &l);
            prop_assert_eq!(got.is_ok(), rule.is_ok());
            if let (Err(a), Err(b)) = (got, rule) {
                prop_assert_eq!(a.reason(), b.reason());
            }
        }
    }
}
