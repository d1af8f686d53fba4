//! The rule engine: pure state machines, one per (machine, rule), with time
//! passed in. It never touches NATS; it returns [`Change`]s (an event to
//! publish and/or a state to store) that the service carries out in order.
//!
//! Per pair: *ok* (no record) → *pending* while the condition holds but not
//! yet for the rule's `for` → *firing* (one firing event) → *ok* again once
//! the value passes back over the `clear` level (one resolved event). A
//! pending pair whose condition stops holding goes back to ok silently. While
//! firing, a rule with `repeat` sends numbered reminders until acknowledged.
//!
//! Every time it is given may come from a payload or a stored record, so all
//! arithmetic on times saturates: an extreme value is a long time, never a
//! panic or a wrap. Machines have a lifecycle ([`Engine::retire`],
//! [`Engine::forget`]) so that the set of machines stays bounded.

use std::collections::{BTreeMap, HashMap};

use sysmonstm_schemas::accept;
use sysmonstm_schemas::rules::{AlertStateRecord, Metric, Phase, Rule, format_duration};

use crate::sample::Sample;

mod event;
mod lifecycle;
pub use event::{Alert, Change, EventKind};

#[derive(Clone, Copy, Debug)]
struct Seen {
    last_ms: i64,
    interval_ms: u32,
}

/// The interval assumed for a snapshot that does not say.
const DEFAULT_INTERVAL_MS: u32 = 1000;

/// The shortest silence the `silent` rule counts at all: a machine that
/// states a tiny interval (down to the 10 ms `accept` allows) is not
/// "silent" between two of its snapshots and a timer tick.
pub const MIN_SILENCE_MS: i64 = 1000;

/// `d` in milliseconds, saturating (rule durations are bounded by
/// validation; this keeps the engine safe even without it).
fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[derive(Default)]
pub struct Engine {
    rules: BTreeMap<String, Rule>,
    states: HashMap<(String, String), AlertStateRecord>,
    machines: HashMap<String, Seen>,
}

impl Engine {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    pub fn state(&self, machine: &str, rule: &str) -> Option<&AlertStateRecord> {
        self.states.get(&(machine.to_owned(), rule.to_owned()))
    }

    pub fn states(&self) -> impl Iterator<Item = &AlertStateRecord> {
        self.states.values()
    }

    /// Adds or replaces a rule; it applies from the next evaluation. Pairs
    /// the new version no longer covers (other machines, another metric or
    /// direction) are closed: resolved if firing, dropped if pending.
    pub fn set_rule(&mut self, rule: Rule, now_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        if let Some(old) = self.rules.get(&rule.name) {
            let changed_kind =
                old.metric != rule.metric || old.op != rule.op || old.mount != rule.mount;
            let keys: Vec<_> = self
                .states
                .keys()
                .filter(|(m, r)| *r == rule.name && (changed_kind || !rule.applies_to(m)))
                .cloned()
                .collect();
            for key in keys {
                self.close(&key, now_ms, "rule changed", &mut out);
            }
        }
        self.rules.insert(rule.name.clone(), rule);
        out
    }

    /// Removes a rule; its firing alerts resolve ("rule removed").
    pub fn remove_rule(&mut self, name: &str, now_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        if self.rules.remove(name).is_some() {
            let keys: Vec<_> = self
                .states
                .keys()
                .filter(|(_, r)| r == name)
                .cloned()
                .collect();
            for key in keys {
                self.close(&key, now_ms, "rule removed", &mut out);
            }
        }
        out
    }

    /// Takes back the states a previous run stored, so nothing fires again
    /// and nothing is forgotten. States of rules that no longer exist are
    /// closed (call after the rules are loaded).
    pub fn restore(&mut self, records: Vec<AlertStateRecord>, now_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        for rec in records {
            // A record is input too: a "last seen" in the future would hold
            // the silent count at zero for ever.
            let last_seen_ms = rec.last_seen_ms.min(now_ms);
            // An interval out of the accepted range counts as unstated.
            let interval_ms = if accept::interval(rec.interval_ms).is_ok() {
                rec.interval_ms
            } else {
                0
            };
            let seen = self.machines.entry(rec.machine.clone()).or_insert(Seen {
                last_ms: last_seen_ms,
                interval_ms,
            });
            if last_seen_ms >= seen.last_ms {
                seen.last_ms = last_seen_ms;
                if interval_ms > 0 {
                    seen.interval_ms = interval_ms;
                }
            }
            let key = (rec.machine.clone(), rec.rule.clone());
            let orphan = !self.rules.contains_key(&rec.rule);
            self.states.insert(key.clone(), rec);
            if orphan {
                self.close(&key, now_ms, "rule removed", &mut out);
            }
        }
        out
    }

    /// Makes `machine` known to the silent check without evaluating
    /// anything (its last snapshot as found at start, or a stale one).
    pub fn seen(&mut self, machine: &str, at_ms: i64, interval_ms: u32) {
        let s = self.machines.entry(machine.to_owned()).or_insert(Seen {
            last_ms: at_ms,
            interval_ms,
        });
        s.last_ms = s.last_ms.max(at_ms);
        if interval_ms > 0 {
            s.interval_ms = interval_ms;
        }
    }

    /// Evaluates every rule that applies to the sample's machine.
    pub fn on_sample(&mut self, sample: &Sample, now_ms: i64) -> Vec<Change> {
        self.seen(&sample.machine, now_ms, sample.interval_ms);
        let seen = self.machines[&sample.machine];
        let mut out = Vec::new();
        let Self { rules, states, .. } = self;
        for rule in rules.values().filter(|r| r.applies_to(&sample.machine)) {
            let (value, detail) = match rule.metric {
                // A snapshot just arrived: nothing is missed.
                Metric::Silent => (0.0, None),
                _ => match sample.value(rule) {
                    Some(v) => v,
                    None => continue,
                },
            };
            let ctx = Ctx {
                machine: &sample.machine,
                seq: sample.seq,
                seen,
                now_ms,
                detail,
            };
            step(rule, states, &ctx, value, &mut out);
        }
        out
    }

    /// The timer's turn: counts missed intervals for the silent rules.
    pub fn on_tick(&mut self, now_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        let Self {
            rules,
            states,
            machines,
        } = self;
        for rule in rules.values().filter(|r| r.metric == Metric::Silent) {
            for (machine, seen) in machines.iter() {
                if !rule.applies_to(machine) {
                    continue;
                }
                let interval = i64::from(if seen.interval_ms == 0 {
                    DEFAULT_INTERVAL_MS
                } else {
                    seen.interval_ms
                });
                let silence = now_ms.saturating_sub(seen.last_ms).max(0);
                let missed = if silence < MIN_SILENCE_MS {
                    0.0
                } else {
                    (silence / interval.max(1)) as f64
                };
                let ctx = Ctx {
                    machine,
                    seq: 0,
                    seen: *seen,
                    now_ms,
                    detail: None,
                };
                step(rule, states, &ctx, missed, &mut out);
            }
        }
        out
    }

    /// An operator acknowledged the firing alert that began at `since_ms`:
    /// no more reminders until it resolves. Returns the state to store.
    pub fn ack(&mut self, machine: &str, rule: &str, since_ms: i64) -> Option<Change> {
        let rec = self
            .states
            .get_mut(&(machine.to_owned(), rule.to_owned()))?;
        if rec.phase != Phase::Firing || rec.since_ms != since_ms || rec.acked {
            return None;
        }
        rec.acked = true;
        Some(Change {
            machine: machine.to_owned(),
            rule: rule.to_owned(),
            event: None,
            record: Some(rec.clone()),
        })
    }

    fn close(&mut self, key: &(String, String), now_ms: i64, why: &str, out: &mut Vec<Change>) {
        let Some(rec) = self.states.remove(key) else {
            return;
        };
        let event = (rec.phase == Phase::Firing).then(|| Alert {
            machine: rec.machine.clone(),
            rule: rec.rule.clone(),
            severity: rec.severity,
            kind: EventKind::Resolved,
            metric: rec.metric,
            value: rec.value,
            threshold: rec.threshold,
            since_ms: rec.since_ms,
            ts_ms: now_ms,
            message: why.to_owned(),
            repeat: 0,
            trigger_seq: 0,
        });
        out.push(Change {
            machine: key.0.clone(),
            rule: key.1.clone(),
            event,
            record: None,
        });
    }
}

struct Ctx<'a> {
    machine: &'a str,
    /// The snapshot being evaluated; 0 on a timer tick.
    seq: u64,
    seen: Seen,
    now_ms: i64,
    detail: Option<&'a str>,
}

/// One evaluation of one pair.
fn step(
    rule: &Rule,
    states: &mut HashMap<(String, String), AlertStateRecord>,
    ctx: &Ctx<'_>,
    value: f64,
    out: &mut Vec<Change>,
) {
    let breach = rule.op.holds(value, rule.threshold);
    let key = (ctx.machine.to_owned(), rule.name.clone());
    let change = |event: Option<Alert>, record: Option<AlertStateRecord>| Change {
        machine: ctx.machine.to_owned(),
        rule: rule.name.clone(),
        event,
        record,
    };
    match states.get_mut(&key) {
        None => {
            if !breach {
                return;
            }
            let mut rec = AlertStateRecord {
                machine: ctx.machine.to_owned(),
                rule: rule.name.clone(),
                phase: Phase::Pending,
                severity: rule.severity,
                metric: rule.metric,
                since_ms: ctx.now_ms,
                value,
                threshold: rule.threshold,
                notified_ms: 0,
                repeats: 0,
                acked: false,
                last_seen_ms: ctx.seen.last_ms,
                interval_ms: ctx.seen.interval_ms,
                message: String::new(),
            };
            let event = rule
                .for_
                .is_zero()
                .then(|| fire(rule, &mut rec, ctx, value));
            out.push(change(event, Some(rec.clone())));
            states.insert(key, rec);
        }
        Some(rec) if rec.phase == Phase::Pending => {
            if !breach {
                states.remove(&key);
                out.push(change(None, None));
            } else if ctx.now_ms.saturating_sub(rec.since_ms) >= millis(rule.for_) {
                let event = fire(rule, rec, ctx, value);
                out.push(change(Some(event), Some(rec.clone())));
            }
        }
        Some(rec) => {
            rec.value = value;
            if !rule.op.holds(value, rule.clear_level()) {
                let event = Alert {
                    kind: EventKind::Resolved,
                    ts_ms: ctx.now_ms,
                    message: format!(
                        "{} {} is back (clears {} {})",
                        rule.metric,
                        show(value),
                        resolving_symbol(rule),
                        show(rule.clear_level())
                    ),
                    repeat: 0,
                    trigger_seq: ctx.seq,
                    ..alert_from(rec, ctx.now_ms)
                };
                states.remove(&key);
                out.push(change(Some(event), None));
            } else if let Some(every) = rule.repeat
                && !rec.acked
                && ctx.now_ms.saturating_sub(rec.notified_ms) >= millis(every)
            {
                rec.repeats = rec.repeats.saturating_add(1);
                rec.notified_ms = ctx.now_ms;
                let event = Alert {
                    repeat: rec.repeats,
                    trigger_seq: ctx.seq,
                    message: format!("{} (reminder {})", rec.message, rec.repeats),
                    ..alert_from(rec, ctx.now_ms)
                };
                out.push(change(Some(event), Some(rec.clone())));
            }
        }
    }
}

/// Turns a record into firing and returns its first event.
fn fire(rule: &Rule, rec: &mut AlertStateRecord, ctx: &Ctx<'_>, value: f64) -> Alert {
    rec.phase = Phase::Firing;
    rec.value = value;
    rec.threshold = rule.threshold;
    rec.notified_ms = ctx.now_ms;
    rec.repeats = 0;
    rec.acked = false;
    rec.last_seen_ms = ctx.seen.last_ms;
    rec.message = firing_message(rule, value, ctx.detail);
    Alert {
        trigger_seq: ctx.seq,
        ..alert_from(rec, ctx.now_ms)
    }
}

fn alert_from(rec: &AlertStateRecord, now_ms: i64) -> Alert {
    Alert {
        machine: rec.machine.clone(),
        rule: rec.rule.clone(),
        severity: rec.severity,
        kind: EventKind::Firing,
        metric: rec.metric,
        value: rec.value,
        threshold: rec.threshold,
        since_ms: rec.since_ms,
        ts_ms: now_ms,
        message: rec.message.clone(),
        repeat: 0,
        trigger_seq: 0,
    }
}

fn firing_message(rule: &Rule, value: f64, detail: Option<&str>) -> String {
    let mut m = if rule.metric == Metric::Silent {
        format!("no snapshot for {} intervals", show(value))
    } else {
        format!(
            "{} {} {} {}",
            rule.metric,
            show(value),
            rule.op.symbol(),
            show(rule.threshold)
        )
    };
    if let Some(d) = detail {
        // A mount name comes from the payload: keep the message short.
        let cut = d.char_indices().nth(120).map_or(d.len(), |(i, _)| i);
        m.push_str(&format!(" on {}", &d[..cut]));
    }
    if !rule.for_.is_zero() {
        m.push_str(&format!(" for {}", format_duration(rule.for_)));
    }
    if let Some(d) = &rule.description {
        m.push_str(&format!(": {d}"));
    }
    m
}

fn resolving_symbol(rule: &Rule) -> &'static str {
    use sysmonstm_schemas::rules::Op;
    match rule.op {
        Op::Gt => "<=",
        Op::Ge => "<",
        Op::Lt => ">=",
        Op::Le => ">",
    }
}

/// Numbers as people read them: no trailing `.0` noise, one decimal.
fn show(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests;
