//! The engine on paused tokio time: windows, hysteresis, reminders, acks and
//! the silent check, driven second by second without waiting.

use std::time::Duration;

use sysmonstm_schemas::rules::{Metric, Op, Phase, Rule, Severity};
use tokio::time::advance;

use super::*;
use crate::clock::Clock;

const SECOND: Duration = Duration::from_secs(1);

fn rule(name: &str, metric: Metric, threshold: f64) -> Rule {
    Rule {
        name: name.into(),
        metric,
        mount: None,
        op: Op::Gt,
        threshold,
        clear: None,
        for_: Duration::ZERO,
        severity: Severity::Critical,
        machines: vec!["*".into()],
        exclude: vec![],
        repeat: None,
        description: None,
    }
}

fn cpu(machine: &str, v: f64) -> Sample {
    Sample {
        machine: machine.into(),
        interval_ms: 1000,
        cpu: Some(v),
        ..Default::default()
    }
}

/// Events only, in order, with the second (since the clock's start) each
/// was produced at.
#[derive(Default)]
struct Log(Vec<(i64, EventKind, u32)>);

impl Log {
    fn take(&mut self, clock: &Clock, changes: Vec<Change>) {
        for c in changes {
            if let Some(e) = c.event {
                self.0.push((clock.now_ms() / 1000, e.kind, e.repeat));
            }
        }
    }
    fn kinds(&self) -> Vec<EventKind> {
        self.0.iter().map(|e| e.1).collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_30s_window_fires_once_at_30s_not_before() {
    let clock = Clock::starting_at(0);
    let mut e = Engine::new();
    let mut r = rule("cpu_high", Metric::Cpu, 90.0);
    r.for_ = Duration::from_secs(30);
    e.set_rule(r, clock.now_ms());
    let mut log = Log::default();
    for _ in 0..=90 {
        log.take(&clock, e.on_sample(&cpu("web01", 95.0), clock.now_ms()));
        advance(SECOND).await;
    }
    assert_eq!(log.0, vec![(30, EventKind::Firing, 0)]);
    let st = e.state("web01", "cpu_high").expect("firing state");
    assert_eq!((st.phase, st.since_ms), (Phase::Firing, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dip_inside_the_window_restarts_it() {
    let clock = Clock::starting_at(0);
    let mut e = Engine::new();
    let mut r = rule("cpu_high", Metric::Cpu, 90.0);
    r.for_ = Duration::from_secs(30);
    e.set_rule(r, 0);
    let mut log = Log::default();
    for t in 0..=60 {
        let v = if t == 20 { 50.0 } else { 95.0 };
        log.take(&clock, e.on_sample(&cpu("web01", v), clock.now_ms()));
        advance(SECOND).await;
    }
    // Pending again from t=21, so the window is met at t=51.
    assert_eq!(log.0, vec![(51, EventKind::Firing, 0)]);
}

/// Values hovering around 90 between the clear level 80 and above: one
/// firing, one resolved. The same series without hysteresis flaps, which is
/// what the clear level is for.
#[tokio::test(start_paused = true)]
async fn hysteresis_turns_hovering_into_one_firing_and_one_resolved() {
    let series = [
        91.0, 89.0, 92.0, 85.0, 95.0, 88.0, 91.0, 82.0, 90.5, 86.0, 79.0, 75.0,
    ];
    let run = |clear: Option<f64>| async move {
        let clock = Clock::starting_at(0);
        let mut e = Engine::new();
        let mut r = rule("cpu_high", Metric::Cpu, 90.0);
        r.clear = clear;
        e.set_rule(r, 0);
        let mut log = Log::default();
        for v in series {
            log.take(&clock, e.on_sample(&cpu("web01", v), clock.now_ms()));
            advance(SECOND).await;
        }
        log.kinds()
    };
    assert_eq!(
        run(Some(80.0)).await,
        vec![EventKind::Firing, EventKind::Resolved]
    );
    assert!(run(None).await.len() > 6, "without clear it flaps");
}

#[tokio::test(start_paused = true)]
async fn repeat_fires_on_schedule_and_stops_after_ack() {
    let clock = Clock::starting_at(0);
    let mut e = Engine::new();
    let mut r = rule("cpu_high", Metric::Cpu, 90.0);
    r.repeat = Some(Duration::from_secs(60));
    e.set_rule(r, 0);
    let mut log = Log::default();
    for t in 0..=300 {
        if t == 150 {
            let since = e.state("web01", "cpu_high").expect("firing").since_ms;
            let change = e.ack("web01", "cpu_high", since).expect("ack takes");
            assert!(change.record.as_ref().is_some_and(|r| r.acked) && change.event.is_none());
            assert!(
                e.ack("web01", "cpu_high", since).is_none(),
                "second ack changes nothing"
            );
        }
        let v = if t < 250 { 95.0 } else { 10.0 };
        log.take(&clock, e.on_sample(&cpu("web01", v), clock.now_ms()));
        advance(SECOND).await;
    }
    assert_eq!(
        log.0,
        vec![
            (0, EventKind::Firing, 0),
            (60, EventKind::Firing, 1),
            (120, EventKind::Firing, 2),
            (250, EventKind::Resolved, 0),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_ack_for_another_episode_is_ignored() {
    let mut e = Engine::new();
    e.set_rule(rule("cpu_high", Metric::Cpu, 90.0), 0);
    e.on_sample(&cpu("web01", 95.0), 5_000);
    assert!(e.ack("web01", "cpu_high", 1_234).is_none());
    assert!(e.ack("db01", "cpu_high", 5_000).is_none());
    assert!(e.ack("web01", "cpu_high", 5_000).is_some());
}

#[tokio::test(start_paused = true)]
async fn machine_silent_fires_on_the_timer_and_resolves_when_it_is_back() {
    let clock = Clock::starting_at(0);
    let mut e = Engine::new();
    let mut r = rule("machine_silent", Metric::Silent, 3.0);
    r.op = Op::Ge;
    e.set_rule(r, 0);
    let mut log = Log::default();
    // Snapshots for 10 s, silence for 20 s (only the timer ticks), then back.
    for t in 0..40 {
        if !(10..30).contains(&t) {
            log.take(&clock, e.on_sample(&cpu("web01", 5.0), clock.now_ms()));
        }
        log.take(&clock, e.on_tick(clock.now_ms()));
        advance(SECOND).await;
    }
    // Last snapshot at t=9; three intervals missed at t=12.
    assert_eq!(
        log.0,
        vec![(12, EventKind::Firing, 0), (30, EventKind::Resolved, 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_restored_firing_state_does_not_fire_again() {
    let clock = Clock::starting_at(1_000_000);
    let mut first = Engine::new();
    first.set_rule(rule("cpu_high", Metric::Cpu, 90.0), clock.now_ms());
    let changes = first.on_sample(&cpu("web01", 95.0), clock.now_ms());
    let stored: Vec<_> = changes.into_iter().filter_map(|c| c.record).collect();
    assert_eq!(stored.len(), 1);

    advance(Duration::from_secs(5)).await;
    let mut second = Engine::new();
    second.set_rule(rule("cpu_high", Metric::Cpu, 90.0), clock.now_ms());
    assert!(second.restore(stored, clock.now_ms()).is_empty());
    let again = second.on_sample(&cpu("web01", 96.0), clock.now_ms());
    assert!(again.iter().all(|c| c.event.is_none()), "{again:?}");
    let back = second.on_sample(&cpu("web01", 10.0), clock.now_ms());
    let ev = back[0].event.as_ref().expect("resolved");
    assert_eq!((ev.kind, ev.since_ms), (EventKind::Resolved, 1_000_000));
}

#[tokio::test(start_paused = true)]
async fn rule_changes_apply_at_the_next_evaluation() {
    let mut e = Engine::new();
    e.set_rule(rule("cpu_high", Metric::Cpu, 90.0), 0);
    assert!(e.on_sample(&cpu("web01", 60.0), 1000).is_empty());
    e.set_rule(rule("cpu_high", Metric::Cpu, 50.0), 1500);
    let fired = e.on_sample(&cpu("web01", 60.0), 2000);
    assert_eq!(fired[0].event.as_ref().map(|a| a.threshold), Some(50.0));

    // Narrowed to other machines: the firing alert resolves.
    let mut narrowed = rule("cpu_high", Metric::Cpu, 50.0);
    narrowed.machines = vec!["db*".into()];
    let closed = e.set_rule(narrowed, 2500);
    assert_eq!(
        closed[0].event.as_ref().map(|a| a.kind),
        Some(EventKind::Resolved)
    );
    assert!(e.on_sample(&cpu("web01", 99.0), 3000).is_empty());

    let fired = e.on_sample(&cpu("db01", 99.0), 3000);
    assert_eq!(fired.len(), 1);
    let removed = e.remove_rule("cpu_high", 4000);
    assert_eq!(
        removed[0].event.as_ref().map(|a| a.message.as_str()),
        Some("rule removed")
    );
    assert!(e.state("db01", "cpu_high").is_none());
}

#[tokio::test(start_paused = true)]
async fn missing_values_and_other_machines_are_left_alone() {
    let mut e = Engine::new();
    let mut r = rule("hot", Metric::Temperature, 80.0);
    r.exclude = vec!["lab-*".into()];
    e.set_rule(r, 0);
    assert!(
        e.on_sample(&cpu("web01", 99.0), 0).is_empty(),
        "no sensors, no value"
    );
    let hot = |m: &str| Sample {
        temperature: Some(90.0),
        ..cpu(m, 1.0)
    };
    assert!(e.on_sample(&hot("lab-1"), 0).is_empty(), "excluded");
    assert_eq!(e.on_sample(&hot("web01"), 0).len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_event_names_the_snapshot_that_completed_its_window() {
    let mut e = Engine::new();
    let mut r = rule("cpu_high", Metric::Cpu, 90.0);
    r.for_ = Duration::from_secs(2);
    e.set_rule(r, 0);
    let mut fired = Vec::new();
    for seq in 1..=5u64 {
        let s = Sample {
            seq,
            ..cpu("web01", 95.0)
        };
        fired.extend(
            e.on_sample(&s, seq as i64 * 1000)
                .into_iter()
                .filter_map(|c| c.event),
        );
    }
    // Pending from seq 1 (t=1 s), window met at seq 3 (t=3 s).
    assert_eq!(
        fired.iter().map(|a| a.trigger_seq).collect::<Vec<_>>(),
        vec![3]
    );
}

#[tokio::test(start_paused = true)]
async fn extreme_times_from_payloads_and_records_are_values_not_panics() {
    let mut e = Engine::new();
    let mut silent = rule("machine_silent", Metric::Silent, 3.0);
    silent.op = Op::Ge;
    e.set_rule(silent, 0);
    let mut r = rule("cpu_high", Metric::Cpu, 90.0);
    r.for_ = Duration::from_secs(30);
    r.repeat = Some(Duration::from_secs(60));
    e.set_rule(r, 0);
    // Machines seen at the ends of the range, a tick at the other end.
    e.seen("old", i64::MIN, 1000);
    e.seen("new", i64::MAX, 1000);
    e.on_tick(i64::MAX);
    e.on_tick(i64::MIN);
    // Records from the state bucket with extreme times and counts.
    let rec = |machine: &str, since: i64, notified: i64| AlertStateRecord {
        machine: machine.into(),
        rule: "cpu_high".into(),
        phase: Phase::Firing,
        severity: Severity::Critical,
        metric: Metric::Cpu,
        since_ms: since,
        value: 95.0,
        threshold: 90.0,
        notified_ms: notified,
        repeats: u32::MAX,
        acked: false,
        last_seen_ms: i64::MAX,
        interval_ms: 1000,
        message: String::new(),
    };
    e.restore(
        vec![rec("a", i64::MIN, i64::MIN), rec("b", i64::MAX, i64::MAX)],
        0,
    );
    for now in [i64::MIN, 0, i64::MAX] {
        e.on_sample(&cpu("a", 95.0), now);
        e.on_sample(&cpu("b", 95.0), now);
    }
    let st = e.state("a", "cpu_high").expect("still firing");
    assert_eq!(st.repeats, u32::MAX, "saturated, not wrapped");
    // A restored "last seen" in the future does not hold the silent count
    // at zero: it is taken as now.
    let mut e2 = Engine::new();
    let mut silent = rule("machine_silent", Metric::Silent, 3.0);
    silent.op = Op::Ge;
    e2.set_rule(silent, 0);
    e2.restore(vec![rec("c", 0, 0)], 1_000_000);
    let fired = e2.on_tick(1_000_000 + 10_000);
    assert!(
        fired.iter().any(|c| c.machine == "c" && c.event.is_some()),
        "{fired:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tiny_interval_never_makes_a_machine_silent_between_snapshots() {
    let mut e = Engine::new();
    let mut r = rule("machine_silent", Metric::Silent, 3.0);
    r.op = Op::Ge;
    e.set_rule(r, 0);
    let tiny = Sample {
        interval_ms: 10,
        ..cpu("web01", 5.0)
    };
    // A snapshot, then a tick 200 ms later: 20 "intervals", but far below
    // the floor of one second of silence.
    e.on_sample(&tiny, 10_000);
    assert!(e.on_tick(10_200).is_empty());
    assert!(e.on_tick(10_999).is_empty());
    // Real silence still counts in the machine's own intervals.
    let fired = e.on_tick(12_000);
    assert_eq!(fired.len(), 1, "{fired:?}");
}

#[tokio::test(start_paused = true)]
async fn a_machine_silent_past_the_horizon_is_retired_with_its_alerts_resolved() {
    let day = 86_400_000;
    let mut e = Engine::new();
    let mut r = rule("machine_silent", Metric::Silent, 3.0);
    r.op = Op::Ge;
    e.set_rule(r, 0);
    e.on_sample(&cpu("gone", 5.0), 0);
    e.on_sample(&cpu("alive", 5.0), 0);
    let fired = e.on_tick(10_000);
    assert_eq!(fired.len(), 2);
    e.on_sample(&cpu("alive", 5.0), 7 * day);
    let (none, retired) = e.retire(7 * day, 7 * day);
    assert!(
        none.is_empty() && retired.is_empty(),
        "exactly 7 days is not past"
    );
    let (changes, retired) = e.retire(7 * day + 1, 7 * day);
    assert_eq!(retired, vec!["gone".to_owned()]);
    let ev = changes[0]
        .event
        .as_ref()
        .expect("its silent alert resolves");
    assert_eq!(ev.kind, EventKind::Resolved);
    assert!(
        ev.message.contains("retired") && ev.message.contains("7d"),
        "{ev:?}"
    );
    assert!(changes[0].record.is_none(), "its state is deleted");
    assert_eq!(e.machine_count(), 1);
    // No longer reported silent.
    assert!(e.on_tick(8 * day).iter().all(|c| c.machine != "gone"));
    // Forget: at once, whatever the time.
    let (changes, known) = e.forget("alive", 8 * day);
    assert!(known);
    assert!(changes.iter().all(|c| c.record.is_none()));
    assert_eq!(e.machine_count(), 0);
    assert!(!e.forget("never", 0).1);
}
