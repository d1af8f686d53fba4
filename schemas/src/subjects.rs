//! Every subject sysmonstm uses is built here and only here.

use crate::MachineId;

/// Root of all sysmonstm subjects.
pub const ROOT: &str = "sysmon";

/// Snapshots of every machine, as agents publish them (stream METRICS binds
/// this when it is not split into partitions: [`crate::streams::Partitions`]).
pub const METRICS_ALL: &str = "sysmon.metrics.*";
/// Every snapshot as subscribers see it: published (`sysmon.metrics.<m>`),
/// or as the hub's account maps it to a partition
/// (`sysmon.metrics.<p>.<m>`). Live subscriptions use this.
pub const METRICS_LIVE: &str = "sysmon.metrics.>";
/// Machine facts of every machine.
pub const INFO_ALL: &str = "sysmon.info.*";
/// Alert events of every severity, machine and rule (stream ALERTS binds this).
pub const ALERTS_ALL: &str = "sysmon.alerts.*.*.*";

/// Requests to forget a machine (`sysmonstm machines forget`), for every
/// service that keeps per-machine state. Four tokens, so no agent's
/// `sysmon.*.<machine>` permission covers it.
pub const FORGET_ALL: &str = "sysmon.admin.forget.*";

/// Where `sysmonstm machines forget <machine>` asks the services that keep
/// state of `machine` to drop it; each answers on the reply subject.
pub fn forget(machine: &MachineId) -> String {
    format!("sysmon.admin.forget.{machine}")
}

/// Failures to deliver a notification, of every machine and channel
/// (stream NOTIFICATIONS binds this).
pub const NOTIFY_FAILED_ALL: &str = "sysmon.notify.failed.*.*";

/// Where the notifier records that it gave up delivering an alert event of
/// `machine` to `channel` (a channel name has the machine id's characters).
pub fn notify_failed(machine: &MachineId, channel: &MachineId) -> String {
    format!("sysmon.notify.failed.{machine}.{channel}")
}

/// Requests to send a test message (`sysmonstm notify test <channel>`),
/// answered by the running notifier on the reply subject.
pub const NOTIFY_TEST_ALL: &str = "sysmon.admin.notify_test.*";

/// Where `sysmonstm notify test <channel>` asks the notifier.
pub fn notify_test(channel: &MachineId) -> String {
    format!("sysmon.admin.notify_test.{channel}")
}

/// The channel a notify-test subject names.
pub fn parse_notify_test(subject: &str) -> Option<&str> {
    subject
        .strip_prefix("sysmon.admin.notify_test.")
        .filter(|rest| !rest.is_empty() && !rest.contains('.'))
}

/// Where `machine` publishes its snapshots.
pub fn metrics(machine: &MachineId) -> String {
    format!("sysmon.metrics.{machine}")
}

/// Where `machine` publishes its [`MachineInfo`](crate::v1::MachineInfo).
pub fn info(machine: &MachineId) -> String {
    format!("sysmon.info.{machine}")
}

/// The severity token of an alert subject.
pub fn severity_token(severity: crate::v1::Severity) -> &'static str {
    use crate::v1::Severity;
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
        Severity::Unspecified => "unspecified",
    }
}

/// Where the alerter publishes an event of `rule` on `machine`.
/// `rule` must be a valid token (the same character set as a machine id).
pub fn alert(severity: crate::v1::Severity, machine: &MachineId, rule: &MachineId) -> String {
    format!(
        "sysmon.alerts.{}.{machine}.{rule}",
        severity_token(severity)
    )
}

/// A subscription filter over alert subjects; `None` is a wildcard.
/// Machine and rule here may themselves be plain tokens only (no glob): the
/// caller filters finer globs client-side.
pub fn alerts_filter(
    severity: Option<crate::v1::Severity>,
    machine: Option<&MachineId>,
    rule: Option<&MachineId>,
) -> String {
    format!(
        "sysmon.alerts.{}.{}.{}",
        severity.map_or("*", severity_token),
        machine.map_or("*", |m| m.as_str()),
        rule.map_or("*", |r| r.as_str()),
    )
}

/// The parts of an alert subject: (severity, machine, rule).
pub fn parse_alert(subject: &str) -> Option<(&str, &str, &str)> {
    let rest = subject.strip_prefix("sysmon.alerts.")?;
    let mut it = rest.split('.');
    let (sev, machine, rule) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || sev.is_empty() || machine.is_empty() || rule.is_empty() {
        return None;
    }
    Some((sev, machine, rule))
}

/// The machine a metrics subject belongs to, if it is one: as published
/// (`sysmon.metrics.<m>`) or mapped to a partition (`sysmon.metrics.<p>.<m>`,
/// `p` a partition number).
pub fn machine_of_metrics(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("sysmon.metrics.")?;
    let machine = match rest.split_once('.') {
        None => rest,
        Some((p, m)) => {
            let partition = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
            if !partition {
                return None;
            }
            m
        }
    };
    (!machine.is_empty() && !machine.contains('.')).then_some(machine)
}

/// Every reply inbox under the default prefix (services and the CLI).
pub const INBOX_ALL: &str = "_INBOX.>";

/// The inbox prefix of `machine`'s agent: its credentials may subscribe to
/// this prefix only, so it can receive JetStream acks and nothing else.
pub fn agent_inbox_prefix(machine: &MachineId) -> String {
    format!("_INBOX_{machine}")
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
        assert_eq!(machine_of_metrics("sysmon.metrics.3.web01"), Some("web01"));
        assert_eq!(machine_of_metrics("sysmon.metrics.3."), None);
        assert_eq!(machine_of_metrics("sysmon.metrics.3.a.b"), None);
        assert_eq!(machine_of_metrics("sysmon.metrics.1234.a"), None);
        assert_eq!(machine_of_metrics("sysmon.info.web01"), None);
        assert_eq!(forget(&m), "sysmon.admin.forget.web01");
        assert_eq!(notify_failed(&m, &m), "sysmon.notify.failed.web01.web01");
        assert_eq!(parse_notify_test(&notify_test(&m)), Some("web01"));
        assert_eq!(parse_notify_test("sysmon.admin.notify_test.a.b"), None);
    }

    #[test]
    fn builds_and_parses_alert_subjects() {
        use crate::v1::Severity;
        let m = MachineId::parse("web01").expect("valid");
        let r = MachineId::parse("cpu_high").expect("valid");
        let s = alert(Severity::Critical, &m, &r);
        assert_eq!(s, "sysmon.alerts.critical.web01.cpu_high");
        assert_eq!(parse_alert(&s), Some(("critical", "web01", "cpu_high")));
        assert_eq!(parse_alert("sysmon.alerts.critical.web01"), None);
        assert_eq!(parse_alert("sysmon.alerts.a.b.c.d"), None);
        assert_eq!(alerts_filter(None, None, None), ALERTS_ALL);
        assert_eq!(
            alerts_filter(Some(Severity::Warning), Some(&m), None),
            "sysmon.alerts.warning.web01.*"
        );
    }
}
