//! The alerter against a real nats-server: a CPU held high fires once and
//! resolves once, a restart does not fire again, a rule change applies
//! while snapshots flow, the silent check runs on its timer, garbage is
//! counted and survived.

mod common;

use std::time::Duration;

use common::*;
use sysmonstm_alerter::Counters;
use sysmonstm_alerter::engine::EventKind;
use sysmonstm_schemas::rules::{AlertStateRecord, Phase, state_key};
use sysmonstm_schemas::{MachineId, subjects, v1};
use sysmonstm_testkit::{NatsServer, eventually};

const TICK: Duration = Duration::from_millis(200);

fn critical_filter(machine: &str, rule: &str) -> String {
    subjects::alerts_filter(
        Some(v1::Severity::Critical),
        Some(&MachineId::parse(machine).expect("id")),
        Some(&MachineId::parse(rule).expect("rule")),
    )
}

#[tokio::test]
async fn cpu_held_high_fires_once_then_resolves_once() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"cpu_high","metric":"cpu","threshold":90,"clear":80,
        "for":"1s","severity":"critical"}"#,
        ),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let mut web = Machine::new("web01").await;
    let filter = critical_filter("web01", "cpu_high");

    // Held at 97 % well past the 1 s window, then wobbling inside the
    // hysteresis band (above the clear level 80).
    for i in 0..25 {
        web.publish(&js, if i > 12 && i % 2 == 0 { 85.0 } else { 97.0 })
            .await;
        tokio::time::sleep(TICK).await;
    }
    // Every snapshot evaluated and the event stored, however slow the host.
    let c = alerter.counters.clone();
    eventually(WAIT, "all 25 snapshots evaluated", || {
        let c = c.clone();
        async move { (Counters::get(&c.snapshots_evaluated) >= 25).then_some(()) }
    })
    .await;
    let fired = eventually(WAIT, "the firing event stored", || {
        let (js, filter) = (js.clone(), filter.clone());
        async move {
            let ev = stored_events(&js, &filter).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    assert_eq!(kinds(&fired), vec![(EventKind::Firing, 0)], "{fired:?}");
    assert_eq!(Counters::get(&alerter.counters.events_firing), 1);
    assert_eq!((fired[0].value, fired[0].threshold), (97.0, 90.0));

    for _ in 0..5 {
        web.publish(&js, 20.0).await;
        tokio::time::sleep(TICK).await;
    }
    let events = eventually(WAIT, "a resolved event", || {
        let js = js.clone();
        let filter = filter.clone();
        async move {
            let ev = stored_events(&js, &filter).await;
            (ev.len() >= 2).then_some(ev)
        }
    })
    .await;
    assert_eq!(
        kinds(&events),
        vec![(EventKind::Firing, 0), (EventKind::Resolved, 0)]
    );
    assert_eq!(events[0].since_ms, events[1].since_ms, "one episode");
    assert!(Counters::get(&alerter.counters.snapshots_evaluated) >= 30);
    // Every snapshot comes by the subscription and by the consumer, and is
    // evaluated once: the second arrival is only counted.
    let c = alerter.counters.clone();
    eventually(WAIT, "the consumer catches up", || {
        let c = c.clone();
        async move {
            let evaluated = Counters::get(&c.snapshots_evaluated);
            let second = Counters::get(&c.snapshots_already_seen);
            (evaluated > 0 && second >= evaluated).then_some(())
        }
    })
    .await;
    assert_eq!(
        Counters::get(&c.snapshots_evaluated) + Counters::get(&c.snapshots_stale),
        Counters::get(&c.snapshots_received),
        "each stored snapshot evaluated once"
    );
    alerter.stop().await;
}

#[tokio::test]
async fn a_restart_while_firing_does_not_fire_again_nor_forget() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, state) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"cpu_high","metric":"cpu","threshold":90,
        "severity":"critical"}"#,
        ),
    )
    .await;
    let filter = critical_filter("web01", "cpu_high");
    let mut web = Machine::new("web01").await;

    let first = spawn(config(&nats.url()));
    ready(&js).await;
    eventually(WAIT, "the first alerter fires", || {
        let (js, filter) = (js.clone(), filter.clone());
        let publish = web.snapshot(97.0);
        async move {
            publish_snapshot(&js, &publish).await;
            (!stored_events(&js, &filter).await.is_empty()).then_some(())
        }
    })
    .await;
    // Its state is stored before the restart.
    let key = state_key("web01", "cpu_high");
    let rec: AlertStateRecord = eventually(WAIT, "the firing state in KV", || {
        let state = state.clone();
        let key = key.clone();
        async move {
            let v = state.get(&key).await.ok().flatten()?;
            serde_json::from_slice::<AlertStateRecord>(&v)
                .ok()
                .filter(|r| r.phase == Phase::Firing)
        }
    })
    .await;
    first.stop().await;

    let second = spawn(config(&nats.url()));
    for _ in 0..10 {
        web.publish(&js, 98.0).await;
        tokio::time::sleep(TICK).await;
    }
    eventually(WAIT, "the second alerter evaluates", || {
        let c = second.counters.clone();
        async move { (Counters::get(&c.snapshots_evaluated) >= 5).then_some(()) }
    })
    .await;
    assert_eq!(Counters::get(&second.counters.events_firing), 0);
    assert_eq!(
        kinds(&stored_events(&js, &filter).await),
        vec![(EventKind::Firing, 0)]
    );

    // It remembers: the drop resolves the alert of the first run.
    web.publish(&js, 10.0).await;
    let events = eventually(WAIT, "resolved by the second alerter", || {
        let (js, filter) = (js.clone(), filter.clone());
        async move {
            let ev = stored_events(&js, &filter).await;
            (ev.len() >= 2).then_some(ev)
        }
    })
    .await;
    assert_eq!(events[1].kind, EventKind::Resolved);
    assert_eq!(events[1].since_ms, rec.since_ms);
    second.stop().await;
}

#[tokio::test]
async fn a_rule_changed_while_snapshots_flow_applies_without_restart() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"cpu_high","metric":"cpu","threshold":99,
        "severity":"critical"}"#,
        ),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let filter = critical_filter("web01", "cpu_high");
    let mut web = Machine::new("web01").await;
    for _ in 0..10 {
        web.publish(&js, 60.0).await;
    }
    // All ten evaluated (one task, in order; whatever an evaluation produces
    // is sent by the same task before the next). How many came twice is not
    // fixed: the durable consumer brings every one, the live subscription
    // only those published after it was made, which may be after the
    // consumer `ready` waited for.
    let c = alerter.counters.clone();
    eventually(WAIT, "the ten snapshots evaluated", || {
        let c = c.clone();
        async move { (Counters::get(&c.snapshots_evaluated) == 10).then_some(()) }
    })
    .await;
    assert_eq!(Counters::get(&c.events_firing), 0, "60 < 99: nothing yet");
    assert!(stored_events(&js, &filter).await.is_empty());

    put_rule(
        &rules,
        &rule(
            r#"{"name":"cpu_high","metric":"cpu","threshold":50,
        "severity":"critical"}"#,
        ),
    )
    .await;
    let changed_at = std::time::Instant::now();
    let fired = eventually(WAIT, "firing under the changed rule", || {
        let (js, filter) = (js.clone(), filter.clone());
        let snap = web.snapshot(60.0);
        async move {
            publish_snapshot(&js, &snap).await;
            let ev = stored_events(&js, &filter).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    tracing::info!(after = ?changed_at.elapsed(), "rule change took effect");
    assert_eq!((fired[0].threshold, fired[0].value), (50.0, 60.0));
    alerter.stop().await;
}

/// Two snapshots of one machine in one millisecond, and one after its clock
/// stepped back, are three snapshots: each is evaluated (the seq says which
/// is later). Only the same snapshot again (its retry) is "already seen".
#[tokio::test]
async fn snapshots_in_one_millisecond_or_after_a_clock_step_back_are_each_evaluated() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(r#"{"name":"cpu_high","metric":"cpu","threshold":99,"severity":"critical"}"#),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let mut web = Machine::new("web01").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .expect("clock");
    let mut a = web.snapshot(10.0);
    a.timestamp_ms = now;
    let mut b = web.snapshot(10.0);
    b.timestamp_ms = now;
    let mut c = web.snapshot(10.0);
    c.timestamp_ms = now - 3_000;
    for s in [&a, &b, &c, &b] {
        publish_snapshot(&js, s).await;
    }
    let counters = alerter.counters.clone();
    eventually(WAIT, "the three stored snapshots delivered", || {
        let c = counters.clone();
        async move { (Counters::get(&c.snapshots_received) == 3).then_some(()) }
    })
    .await;
    assert_eq!(
        Counters::get(&counters.snapshots_evaluated),
        3,
        "same millisecond (seq 2) and clock stepped back (seq 3) are new snapshots"
    );
    alerter.stop().await;
}

#[tokio::test]
async fn a_silent_machine_fires_on_the_timer_and_resolves_when_back() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=",
        "threshold":3,"severity":"critical"}"#,
        ),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let filter = critical_filter("db01", "machine_silent");
    let mut db = Machine::new("db01").await;
    db.interval_ms = 200;
    for _ in 0..5 {
        db.publish(&js, 5.0).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(stored_events(&js, &filter).await.is_empty());
    // Silence: nothing arrives, the timer notices.
    let fired = eventually(WAIT, "machine_silent fires", || {
        let (js, filter) = (js.clone(), filter.clone());
        async move {
            let ev = stored_events(&js, &filter).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    assert_eq!(kinds(&fired), vec![(EventKind::Firing, 0)]);
    assert!(fired[0].value >= 3.0);
    db.publish(&js, 5.0).await;
    let events = eventually(WAIT, "resolved once it is back", || {
        let (js, filter) = (js.clone(), filter.clone());
        async move {
            let ev = stored_events(&js, &filter).await;
            (ev.len() >= 2).then_some(ev)
        }
    })
    .await;
    assert_eq!(
        kinds(&events),
        vec![(EventKind::Firing, 0), (EventKind::Resolved, 0)]
    );
    alerter.stop().await;
}

#[tokio::test]
async fn garbage_and_lies_are_counted_and_survived() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"cpu_high","metric":"cpu","threshold":90,
        "severity":"critical"}"#,
        ),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    // An invalid rule written behind the CLI's back is refused; the valid
    // version stays in force.
    rules
        .put(
            "cpu_high",
            br#"{"name":"cpu_high","metric":"cpu","threshold":5000,"severity":"critical"}"#
                .to_vec()
                .into(),
        )
        .await
        .expect("put");
    let c = alerter.counters.clone();
    eventually(WAIT, "the invalid rule refused", || {
        let c = c.clone();
        async move { (Counters::get(&c.rules_invalid) == 1).then_some(()) }
    })
    .await;
    let web = MachineId::parse("web01").expect("id");
    js.publish(subjects::metrics(&web), vec![0xff, 0x13, 0x37].into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let mut liar = Machine::new("db01").await;
    let mut snap = liar.snapshot(99.0);
    snap.machine_id = "web01".into();
    let mut h = async_nats::HeaderMap::new();
    h.insert(sysmonstm_schemas::headers::MSG_ID, "lie:1");
    use prost::Message as _;
    js.publish_with_headers(
        subjects::metrics(&MachineId::parse("db01").expect("id")),
        h,
        snap.encode_to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
    let mut good = Machine::new("web01").await;
    good.publish(&js, 97.0).await;
    let c = alerter.counters.clone();
    eventually(WAIT, "garbage counted, the good snapshot evaluated", || {
        let c = c.clone();
        async move {
            (c.rejected("decode") == 1
                && c.rejected("machine_mismatch") == 1
                && Counters::get(&c.snapshots_evaluated) == 1
                && Counters::get(&c.rules_invalid) == 1)
                .then_some(())
        }
    })
    .await;
    let fired = eventually(WAIT, "the valid rule fires", || {
        let js = js.clone();
        async move {
            let ev = stored_events(&js, &critical_filter("web01", "cpu_high")).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    assert_eq!(fired[0].threshold, 90.0);
    alerter.stop().await;
}

#[tokio::test]
async fn a_machine_that_went_quiet_before_the_alerter_started_is_still_silent() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=",
        "threshold":3,"severity":"critical"}"#,
        ),
    )
    .await;
    let mut db = Machine::new("db02").await;
    db.interval_ms = 200;
    for _ in 0..3 {
        db.publish(&js, 5.0).await;
    }
    // No alerter was running; the one that starts now learns of db02 from
    // its last snapshot in METRICS.
    let alerter = spawn(config(&nats.url()));
    let filter = critical_filter("db02", "machine_silent");
    let fired = eventually(WAIT, "machine_silent fires for db02", || {
        let (js, filter) = (js.clone(), filter.clone());
        async move {
            let ev = stored_events(&js, &filter).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    assert_eq!(kinds(&fired), vec![(EventKind::Firing, 0)]);
    alerter.stop().await;
}

#[tokio::test]
async fn a_consumer_left_with_explicit_acks_is_made_again_for_cumulative_acks() {
    use async_nats::jetstream::consumer;
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    setup(&js).await;
    let metrics = js
        .get_stream(sysmonstm_schemas::streams::METRICS)
        .await
        .expect("METRICS");
    let mut old = sysmonstm_schemas::streams::alerter_consumer(Duration::from_secs(30));
    old.ack_policy = consumer::AckPolicy::Explicit;
    metrics
        .create_consumer(old)
        .await
        .expect("an old-style consumer");
    let alerter = spawn(config(&nats.url()));
    eventually(WAIT, "the consumer made again with AckPolicy::All", || {
        let metrics = metrics.clone();
        async move {
            let info = metrics
                .consumer_info(sysmonstm_schemas::streams::ALERTER_CONSUMER)
                .await
                .ok()?;
            (info.config.ack_policy == consumer::AckPolicy::All).then_some(())
        }
    })
    .await;
    alerter.stop().await;
}
