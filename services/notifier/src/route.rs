//! Which channels an event goes to: every route it matches adds its
//! channels. Pure, so the whole table is tested without a server.

use std::collections::BTreeSet;

use sysmonstm_schemas::alert::{Alert, EventKind};
use sysmonstm_schemas::rules::glob_match;

use crate::config::{RouteConfig, StateName};

/// The names of the channels `a` goes to (none: nobody is told).
pub fn channels_for(routes: &[RouteConfig], a: &Alert) -> BTreeSet<String> {
    let state = match a.kind {
        EventKind::Firing => StateName::Firing,
        EventKind::Resolved => StateName::Resolved,
        EventKind::Acknowledged => StateName::Acknowledged,
    };
    let reminder = a.kind == EventKind::Firing && a.repeat > 0;
    routes
        .iter()
        .filter(|r| r.severity.is_empty() || r.severity.contains(&a.severity))
        .filter(|r| r.states.is_empty() || r.states.contains(&state))
        .filter(|r| r.reminders || !reminder)
        .filter(|r| r.machines.iter().any(|g| glob_match(g, &a.machine)))
        .filter(|r| !r.exclude.iter().any(|g| glob_match(g, &a.machine)))
        .filter(|r| r.rules.iter().any(|g| glob_match(g, &a.rule)))
        .flat_map(|r| r.channels.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sysmonstm_schemas::rules::{Metric, Severity};

    fn alert(machine: &str, rule: &str, severity: Severity, kind: EventKind) -> Alert {
        Alert {
            machine: machine.into(),
            rule: rule.into(),
            severity,
            kind,
            metric: Metric::Cpu,
            value: 95.0,
            threshold: 90.0,
            since_ms: 1,
            ts_ms: 2,
            message: String::new(),
            repeat: 0,
            trigger_seq: 0,
        }
    }

    fn route(channels: &[&str]) -> RouteConfig {
        RouteConfig {
            severity: Vec::new(),
            machines: vec!["*".into()],
            exclude: Vec::new(),
            rules: vec!["*".into()],
            states: Vec::new(),
            reminders: true,
            channels: channels.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn routes_select_by_severity_machine_rule_state_and_reminder() {
        let routes = vec![
            RouteConfig {
                severity: vec![Severity::Critical],
                ..route(&["pager"])
            },
            RouteConfig {
                machines: vec!["web*".into()],
                exclude: vec!["web-test*".into()],
                rules: vec!["disk*".into()],
                ..route(&["web"])
            },
            RouteConfig {
                states: vec![StateName::Firing],
                reminders: false,
                ..route(&["chat"])
            },
        ];
        let names = |a: &Alert| channels_for(&routes, a).into_iter().collect::<Vec<_>>();
        let crit = alert("db1", "cpu", Severity::Critical, EventKind::Firing);
        assert_eq!(names(&crit), ["chat", "pager"]);
        let warn_web = alert("web1", "disk_full", Severity::Warning, EventKind::Resolved);
        assert_eq!(names(&warn_web), ["web"]);
        let excluded = alert(
            "web-test1",
            "disk_full",
            Severity::Warning,
            EventKind::Resolved,
        );
        assert!(names(&excluded).is_empty());
        let reminder = Alert {
            repeat: 3,
            ..alert("db1", "cpu", Severity::Info, EventKind::Firing)
        };
        assert!(names(&reminder).is_empty());
        assert!(channels_for(&[], &crit).is_empty());
    }
}
