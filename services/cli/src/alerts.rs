//! `sysmonstm alerts watch | list | ack`.
//!
//! `watch` is one ordered consumer on ALERTS: with `--since` or `--all` it
//! starts in the past and simply keeps going, so the replay turns into the
//! live feed with no gap and no event twice.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use clap::Subcommand;
use futures::StreamExt as _;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::Alert;
use sysmonstm_schemas::rules::{
    AlertStateRecord, Phase, Severity, format_duration, glob_match, is_plain_token, parse_duration,
    state_key,
};
use sysmonstm_schemas::{MachineId, streams, subjects};

use crate::{InvalidInput, print};

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Follow alert events as they happen (optionally replaying the past first).
    Watch {
        /// Only this severity: info, warning or critical.
        #[arg(long)]
        severity: Option<String>,
        /// Machine id or glob (`web*`).
        #[arg(long)]
        machine: Option<String>,
        /// Rule name or glob.
        #[arg(long)]
        rule: Option<String>,
        /// Replay events of this recent past first (`1h`, `30m`, `2d`; at
        /// most 3650d).
        #[arg(long, conflicts_with = "all")]
        since: Option<String>,
        /// Replay every stored event first.
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Alerts that are pending or firing now.
    List {
        /// Only firing ones.
        #[arg(long)]
        firing: bool,
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a firing alert: no more reminders until it resolves.
    Ack {
        machine: String,
        rule: String,
        /// Who acknowledges (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
}

/// The longest `--since`: ten years, far beyond what ALERTS keeps, and
/// far inside what a timestamp can hold.
pub const MAX_SINCE: Duration = Duration::from_secs(3650 * 86_400);

/// When a `--since` replay starts: `now - since`, for `since` up to
/// [`MAX_SINCE`]; anything longer is the caller's mistake, not a panic.
pub fn since_start(
    since: &str,
    now: time::OffsetDateTime,
) -> Result<time::OffsetDateTime, InvalidInput> {
    let d = parse_duration(since).map_err(|e| InvalidInput(format!("--since: {e}")))?;
    let too_long = || {
        InvalidInput(format!(
            "--since {since:?} is longer than {}",
            format_duration(MAX_SINCE)
        ))
    };
    if d > MAX_SINCE {
        return Err(too_long());
    }
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| now.checked_sub(d))
        .ok_or_else(too_long)
}

impl AlertsCommand {
    /// Checks the flags before anything connects, so that a mistake is exit
    /// code 2 whether or not the hub answers.
    pub fn check(&self) -> Result<(), anyhow::Error> {
        if let AlertsCommand::Watch {
            severity,
            machine,
            rule,
            since,
            ..
        } = self
        {
            severity.as_deref().map(parse_severity).transpose()?;
            token_or_glob(machine.as_deref(), "machine")?;
            token_or_glob(rule.as_deref(), "rule")?;
            if let Some(s) = since {
                since_start(s, time::OffsetDateTime::now_utc())?;
            }
        }
        Ok(())
    }
}

pub async fn run(js: &jetstream::Context, cmd: AlertsCommand) -> anyhow::Result<()> {
    match cmd {
        AlertsCommand::Watch {
            severity,
            machine,
            rule,
            since,
            all,
            json,
        } => {
            let severity = severity.as_deref().map(parse_severity).transpose()?;
            let start = match (since, all) {
                (_, true) => consumer::DeliverPolicy::All,
                (Some(s), false) => consumer::DeliverPolicy::ByStartTime {
                    start_time: since_start(&s, time::OffsetDateTime::now_utc())?,
                },
                (None, false) => consumer::DeliverPolicy::New,
            };
            watch(js, severity, machine, rule, start, json).await
        }
        AlertsCommand::List { firing, json } => list(js, firing, json).await,
        AlertsCommand::Ack { machine, rule, by } => ack(js, &machine, &rule, by).await,
    }
}

fn parse_severity(s: &str) -> anyhow::Result<Severity> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        InvalidInput(format!("--severity {s:?}: one of info, warning, critical")).into()
    })
}

/// A plain token goes into the subject filter; a glob is checked here.
fn token_or_glob(
    arg: Option<&str>,
    what: &str,
) -> anyhow::Result<(Option<MachineId>, Option<String>)> {
    match arg {
        None => Ok((None, None)),
        Some(a) if is_plain_token(a) => Ok((Some(MachineId::parse(a)?), None)),
        Some(a)
            if a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*?".contains(c)) =>
        {
            Ok((None, Some(a.to_owned())))
        }
        Some(a) => {
            Err(InvalidInput(format!("--{what} {a:?}: lowercase [a-z0-9_-] with * and ?")).into())
        }
    }
}

async fn watch(
    js: &jetstream::Context,
    severity: Option<Severity>,
    machine: Option<String>,
    rule: Option<String>,
    start: consumer::DeliverPolicy,
    json: bool,
) -> anyhow::Result<()> {
    let (m_token, m_glob) = token_or_glob(machine.as_deref(), "machine")?;
    let (r_token, r_glob) = token_or_glob(rule.as_deref(), "rule")?;
    let filter = subjects::alerts_filter(
        severity.map(Severity::to_proto),
        m_token.as_ref(),
        r_token.as_ref(),
    );
    let stream = js_kit::ensure_alerts(js).await?;
    let silences = crate::silence::Muted::follow(js).await;
    let mut msgs = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .context("cannot follow ALERTS")?
        .messages()
        .await?;
    while let Some(m) = msgs.next().await {
        let m = m.context("lost the ALERTS feed")?;
        let Some(ev) = Alert::decode(&m.payload) else {
            tracing::warn!(subject = %m.subject, "not an alert event; skipped");
            continue;
        };
        if m_glob
            .as_deref()
            .is_some_and(|g| !glob_match(g, &ev.machine))
            || r_glob.as_deref().is_some_and(|g| !glob_match(g, &ev.rule))
        {
            continue;
        }
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let muted = silences.covers(&ev.machine, &ev.rule, ev.ts_ms);
        if print::event(&ev, m.subject.as_str(), seq, muted, json).is_err() {
            break; // stdout closed
        }
    }
    Ok(())
}

async fn states(js: &jetstream::Context) -> anyhow::Result<Vec<AlertStateRecord>> {
    let kv = js_kit::ensure_kv(js, streams::alert_state_bucket()).await?;
    let mut out: Vec<AlertStateRecord> = js_kit::current_entries(&kv)
        .await?
        .into_iter()
        .filter_map(|e| serde_json::from_slice(&e.value).ok())
        .collect();
    out.sort_by(|a, b| (&a.machine, &a.rule).cmp(&(&b.machine, &b.rule)));
    Ok(out)
}

async fn list(js: &jetstream::Context, firing_only: bool, json: bool) -> anyhow::Result<()> {
    let recs: Vec<_> = states(js)
        .await?
        .into_iter()
        .filter(|r| !firing_only || r.phase == Phase::Firing)
        .collect();
    if json {
        for r in &recs {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    if recs.is_empty() {
        println!(
            "no {} alerts",
            if firing_only {
                "firing"
            } else {
                "pending or firing"
            }
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = recs
        .iter()
        .map(|r| {
            vec![
                r.machine.clone(),
                r.rule.clone(),
                r.severity.name().to_owned(),
                match (r.phase, r.acked) {
                    (Phase::Firing, true) => "firing (acked)".to_owned(),
                    (Phase::Firing, false) => "firing".to_owned(),
                    (Phase::Pending, _) => "pending".to_owned(),
                },
                print::rfc3339(r.since_ms),
                format!("{} {:.1}", r.metric, r.value),
                r.message.clone(),
            ]
        })
        .collect();
    print::table(
        &[
            "MACHINE", "RULE", "SEVERITY", "STATE", "SINCE", "VALUE", "MESSAGE",
        ],
        &rows,
    );
    Ok(())
}

async fn ack(
    js: &jetstream::Context,
    machine: &str,
    rule: &str,
    by: Option<String>,
) -> anyhow::Result<()> {
    let kv = js_kit::ensure_kv(js, streams::alert_state_bucket()).await?;
    let key = state_key(machine, rule);
    let rec: AlertStateRecord = match kv.get(&key).await.context("cannot read alert state")? {
        Some(v) => serde_json::from_slice(&v).context("alert state unreadable")?,
        None => anyhow::bail!("no alert {rule:?} is firing on {machine:?}"),
    };
    if rec.phase != Phase::Firing {
        anyhow::bail!(
            "alert {rule:?} on {machine:?} is pending, not firing; nothing to acknowledge"
        );
    }
    if rec.acked {
        println!("{machine}/{rule} was already acknowledged");
        return Ok(());
    }
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "sysmonstm".to_owned());
    let now = chrono::Utc::now().timestamp_millis();
    let ev = Alert::acknowledged(&rec, now, &by);
    js_kit::ensure_alerts(js).await?;
    js_kit::publish_alert(js, &ev).await?;
    println!(
        "acknowledged {machine}/{rule} (firing since {})",
        print::rfc3339(rec.since_ms)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_bounded_and_never_panics() {
        let now = time::OffsetDateTime::now_utc();
        let start = since_start("1h", now).expect("1h");
        assert_eq!(now - start, time::Duration::hours(1));
        since_start("3650d", now).expect("at the limit");
        for bad in ["3651d", "5000000d", "18446744073709551615ms"] {
            let e = since_start(bad, now).expect_err(bad);
            assert!(e.0.contains("--since"), "{e}");
        }
        assert!(since_start("99999999999999999999999d", now).is_err());
        // At the start of what `time` can represent, even a short replay
        // has nowhere to start.
        let earliest = time::PrimitiveDateTime::MIN.assume_utc();
        assert!(since_start("1d", earliest).is_err());
    }
}
