//! How events and states look: JSON lines for programs, one coloured line
//! for people (colour only on a terminal).

use std::io::{IsTerminal as _, Write as _};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sysmonstm_schemas::alert::{Alert, EventKind};
use sysmonstm_schemas::rules::Severity;

pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[derive(Serialize)]
struct EventJson<'a> {
    stream_seq: u64,
    /// A silence covered it: no notification went out.
    muted: bool,
    subject: &'a str,
    machine: &'a str,
    rule: &'a str,
    severity: &'static str,
    state: &'static str,
    metric: &'static str,
    value: f64,
    threshold: f64,
    since: String,
    ts: String,
    repeat: u32,
    message: &'a str,
}

pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Prints one event; `Err` only when stdout is gone.
pub fn event(
    a: &Alert,
    subject: &str,
    stream_seq: u64,
    muted: bool,
    json: bool,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let j = EventJson {
            stream_seq,
            muted,
            subject,
            machine: &a.machine,
            rule: &a.rule,
            severity: a.severity.name(),
            state: a.kind.name(),
            metric: a.metric.name(),
            value: a.value,
            threshold: a.threshold,
            since: rfc3339(a.since_ms),
            ts: rfc3339(a.ts_ms),
            repeat: a.repeat,
            message: &a.message,
        };
        let line = serde_json::to_string(&j).unwrap_or_default();
        writeln!(out, "{line}")?;
    } else {
        let c = colour();
        let sev = match a.severity {
            Severity::Critical => paint(c, "1;31", "CRITICAL"),
            Severity::Warning => paint(c, "33", "WARNING "),
            Severity::Info => paint(c, "36", "INFO    "),
        };
        let state = match a.kind {
            EventKind::Firing if a.repeat > 0 => paint(c, "31", "REMINDER"),
            EventKind::Firing => paint(c, "1;31", "FIRING  "),
            EventKind::Resolved => paint(c, "32", "RESOLVED"),
            EventKind::Acknowledged => paint(c, "34", "ACKED   "),
        };
        let muted = if muted {
            paint(c, "2", " [muted]")
        } else {
            String::new()
        };
        writeln!(
            out,
            "{} {sev} {state}{muted} {}/{}  {}  (since {})",
            rfc3339(a.ts_ms),
            a.machine,
            a.rule,
            a.message,
            rfc3339(a.since_ms)
        )?;
    }
    out.flush()
}

/// Prints rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(header.iter().map(|s| (*s).to_owned()).collect()));
    for r in rows {
        println!("{}", line(r.clone()));
    }
}
