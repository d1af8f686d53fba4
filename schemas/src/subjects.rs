//! Every subject sysmonstm uses is built here and only here.

use crate::MachineId;

/// Root of all sysmonstm subjects.
pub const ROOT: &str = "sysmon";

/// Snapshots of every machine (stream METRICS binds this).
pub const METRICS_ALL: &str = "sysmon.metrics.*";
/// Machine facts of every machine.
pub const INFO_ALL: &str = "sysmon.info.*";
/// Alert events of every severity, machine and rule (stream ALERTS binds this).
pub const ALERTS_ALL: &str = "sysmon.alerts.*.*.*";

/// Where `machine` publishes its snapshots.
pub fn metrics(machine: &MachineId) -> String {
    format!("sysmon.metrics.{machine}")
}

/// Where `machine` publishes its [`MachineInfo`](crate::v1::MachineInfo).
pub fn info(machine: &MachineId) -> String {
    format!("sysmon.info.{machine}")
}

/// The machine a metrics subject belongs to, if it is one.
pub fn machine_of_metrics(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("sysmon.metrics.")
        .filter(|rest| !rest.is_empty() && !rest.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_metrics_subjects() {
        let m = MachineId::parse("web01").expect("valid");
        assert_eq!(metrics(&m), "sysmon.metrics.web01");
        assert_eq!(info(&m), "sysmon.info.web01");
        assert_eq!(machine_of_metrics(&metrics(&m)), Some("web01"));
        assert_eq!(machine_of_metrics("sysmon.metrics."), None);
        assert_eq!(machine_of_metrics("sysmon.metrics.a.b"), None);
        assert_eq!(machine_of_metrics("sysmon.info.web01"), None);
    }
}
