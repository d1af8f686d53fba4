//! The alerter against input anyone who can publish could send: a clock
//! years ahead, oversized and made-up payloads, bad subject tokens, tiny
//! intervals; and machines that leave (retired, forgotten). Each is refused
//! and counted by reason, and never freezes, bloats or fools the engine.

mod common;

use async_nats::jetstream;
use common::*;
use prost::Message as _;
use sysmonstm_alerter::Counters;
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_schemas::rules::{AlertStateRecord, Metric, Phase, Severity, state_key};
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use sysmonstm_testkit::{NatsServer, eventually};

/// Year ~8053 in Unix milliseconds.
const YEAR_8000_MS: i64 = 190_000_000_000_000;

fn filter(severity: v1::Severity, machine: &str, rule: &str) -> String {
    subjects::alerts_filter(
        Some(severity),
        Some(&MachineId::parse(machine).expect("id")),
        Some(&MachineId::parse(rule).expect("rule")),
    )
}

async fn publish_raw(js: &jetstream::Context, subject: &str, id: &str, payload: Vec<u8>) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::MSG_ID, id);
    js.publish_with_headers(subject.to_owned(), h, payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[tokio::test]
async fn a_snapshot_from_the_far_future_does_not_freeze_a_machine() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(r#"{"name":"cpu_high","metric":"cpu","threshold":90,"severity":"critical"}"#),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let mut web = Machine::new("web01").await;
    // Two snapshots from the future (year 8000 and the end of time), both
    // quiet, then current ones that breach the rule.
    for ts in [YEAR_8000_MS, i64::MAX] {
        let mut s = web.snapshot(5.0);
        s.timestamp_ms = ts;
        publish_snapshot(&js, &s).await;
    }
    for _ in 0..3 {
        web.publish(&js, 97.0).await;
    }
    let f = filter(v1::Severity::Critical, "web01", "cpu_high");
    let fired = eventually(WAIT, "the current breach fires", || {
        let (js, f) = (js.clone(), f.clone());
        async move {
            let ev = stored_events(&js, &f).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    assert_eq!(kinds(&fired), vec![(EventKind::Firing, 0)]);
    assert!(fired[0].ts_ms < now_ms() + 60_000, "{fired:?}");
    let c = alerter.counters.clone();
    eventually(WAIT, "both future snapshots refused as `future`", || {
        let c = c.clone();
        async move { (c.rejected("future") == 2).then_some(()) }
    })
    .await;
    alerter.stop().await;
}

#[tokio::test]
async fn oversized_made_up_and_tiny_interval_snapshots_are_refused_by_reason() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=","threshold":3,
            "severity":"critical"}"#,
        ),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let mut m = Machine::new("web01").await;
    // 100 KiB: over the 64 KiB limit, refused before decoding.
    let mut big = m.snapshot(5.0);
    big.machine_id = "web01".into();
    big.top_cpu = (0..2000)
        .map(|i| v1::Process {
            name: format!("process-with-a-long-name-{i:040}"),
            ..Default::default()
        })
        .collect();
    let big = big.encode_to_vec();
    assert!(big.len() > 64 * 1024);
    publish_raw(&js, "sysmon.metrics.web01", "big:1", big).await;
    // A token that is not a machine id, and one 300 characters long.
    let mut upper = m.snapshot(5.0);
    upper.machine_id = "UPPER-Case".into();
    publish_raw(
        &js,
        "sysmon.metrics.UPPER-Case",
        "upper:1",
        upper.encode_to_vec(),
    )
    .await;
    let long = "a".repeat(300);
    let mut l = m.snapshot(5.0);
    l.machine_id = long.clone();
    publish_raw(
        &js,
        &format!("sysmon.metrics.{long}"),
        "long:1",
        l.encode_to_vec(),
    )
    .await;
    // An interval of 1 ms, and a timestamp before 2000.
    let mut tiny = m.snapshot(5.0);
    tiny.interval_ms = 1;
    publish_snapshot(&js, &tiny).await;
    let mut old = m.snapshot(5.0);
    old.timestamp_ms = 1;
    publish_snapshot(&js, &old).await;
    m.publish(&js, 5.0).await;
    let c = alerter.counters.clone();
    eventually(
        WAIT,
        "each refused under its reason, the good one evaluated",
        || {
            let c = c.clone();
            async move {
                (c.rejected("oversized") == 1
                    && c.rejected("machine_id") == 2
                    && c.rejected("interval") == 1
                    && c.rejected("too_old") == 1
                    && Counters::get(&c.snapshots_evaluated) == 1)
                    .then_some(())
            }
        },
    )
    .await;
    // Only the real machine is followed: made-up tokens make none.
    assert_eq!(Counters::get(&c.machines), 1);
    alerter.stop().await;
}

#[tokio::test]
async fn a_last_snapshot_from_the_future_or_a_bad_token_is_refused_at_start() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=","threshold":3,
            "severity":"critical"}"#,
        ),
    )
    .await;
    let mut db = Machine::new("db01").await;
    db.publish(&js, 5.0).await;
    let mut future = Machine::new("fut01").await;
    let mut s = future.snapshot(5.0);
    s.timestamp_ms = YEAR_8000_MS;
    publish_snapshot(&js, &s).await;
    let mut bad = db.snapshot(5.0);
    bad.machine_id = "Bad".into();
    publish_raw(&js, "sysmon.metrics.Bad", "bad:1", bad.encode_to_vec()).await;
    let alerter = spawn(config(&nats.url()));
    let c = alerter.counters.clone();
    eventually(WAIT, "only db01 followed from METRICS", || {
        let c = c.clone();
        async move {
            (c.rejected("future") == 1
                && c.rejected("machine_id") == 1
                && Counters::get(&c.machines) == 1)
                .then_some(())
        }
    })
    .await;
    alerter.stop().await;
}

fn silent_record(machine: &str, last_seen_ms: i64) -> AlertStateRecord {
    AlertStateRecord {
        machine: machine.into(),
        rule: "machine_silent".into(),
        phase: Phase::Firing,
        severity: Severity::Critical,
        metric: Metric::Silent,
        since_ms: last_seen_ms + 3000,
        value: 3.0,
        threshold: 3.0,
        notified_ms: last_seen_ms + 3000,
        repeats: 0,
        acked: false,
        last_seen_ms,
        interval_ms: 1000,
        message: "no snapshot for 3 intervals".into(),
    }
}

#[tokio::test]
async fn a_machine_silent_past_the_horizon_is_retired_and_says_so() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, state) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=","threshold":3,
            "severity":"critical"}"#,
        ),
    )
    .await;
    // A machine last heard of eight days ago, its silent alert firing
    // since, as a previous alerter stored it.
    let key = state_key("old01", "machine_silent");
    let rec = silent_record("old01", now_ms() - 8 * 86_400_000);
    state
        .put(&key, serde_json::to_vec(&rec).expect("json").into())
        .await
        .expect("put state");
    let alerter = spawn(config(&nats.url()));
    let f = filter(v1::Severity::Critical, "old01", "machine_silent");
    let resolved = eventually(WAIT, "a resolved event saying it was retired", || {
        let (js, f) = (js.clone(), f.clone());
        async move {
            let ev = stored_events(&js, &f).await;
            (!ev.is_empty()).then_some(ev)
        }
    })
    .await;
    assert_eq!(kinds(&resolved), vec![(EventKind::Resolved, 0)]);
    assert!(resolved[0].message.contains("retired"), "{resolved:?}");
    assert_eq!(resolved[0].since_ms, rec.since_ms, "the same episode");
    let c = alerter.counters.clone();
    eventually(WAIT, "its state deleted and the retirement counted", || {
        let (state, key, c) = (state.clone(), key.clone(), c.clone());
        async move {
            let gone = state.get(&key).await.ok()?.is_none();
            (gone && Counters::get(&c.machines_retired) == 1 && Counters::get(&c.machines) == 0)
                .then_some(())
        }
    })
    .await;
    alerter.stop().await;
}

#[tokio::test]
async fn a_forget_request_drops_a_machine_at_once() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, state) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=","threshold":3,
            "severity":"critical"}"#,
        ),
    )
    .await;
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let mut db = Machine::new("db01").await;
    db.interval_ms = 200;
    db.publish(&js, 5.0).await;
    let f = filter(v1::Severity::Critical, "db01", "machine_silent");
    eventually(WAIT, "db01's silent alert fires", || {
        let (js, f) = (js.clone(), f.clone());
        async move { (!stored_events(&js, &f).await.is_empty()).then_some(()) }
    })
    .await;
    let id = MachineId::parse("db01").expect("id");
    let answer = js
        .client()
        .request(subjects::forget(&id), "".into())
        .await
        .expect("the alerter answers");
    let answer = String::from_utf8_lossy(&answer.payload).into_owned();
    assert!(answer.contains("forgot db01"), "{answer}");
    let events = eventually(WAIT, "resolved: forgotten", || {
        let (js, f) = (js.clone(), f.clone());
        async move {
            let ev = stored_events(&js, &f).await;
            (ev.len() >= 2).then_some(ev)
        }
    })
    .await;
    assert_eq!(
        kinds(&events),
        vec![(EventKind::Firing, 0), (EventKind::Resolved, 0)]
    );
    assert!(events[1].message.contains("forgotten"), "{events:?}");
    let c = alerter.counters.clone();
    let key = state_key("db01", "machine_silent");
    eventually(WAIT, "its state deleted, nothing followed", || {
        let (state, key, c) = (state.clone(), key.clone(), c.clone());
        async move {
            let gone = state.get(&key).await.ok()?.is_none();
            (gone && Counters::get(&c.machines) == 0 && Counters::get(&c.machines_forgotten) == 1)
                .then_some(())
        }
    })
    .await;
    alerter.stop().await;
}

#[tokio::test]
async fn a_full_confirm_queue_makes_evaluation_wait_and_loses_nothing() {
    const N: usize = 300;
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, state) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=","threshold":3,
            "severity":"critical"}"#,
        ),
    )
    .await;
    // N machines whose last snapshot is long gone: at the first tick all
    // of them fire at once, far more than the queue holds.
    let mut m = Machine::new("m000").await;
    let mut acks = Vec::new();
    for i in 0..N {
        let id = format!("m{i:03}");
        let mut s = m.snapshot(5.0);
        s.machine_id = id.clone();
        s.interval_ms = 1000;
        s.timestamp_ms = now_ms() - 60_000;
        let mut h = async_nats::HeaderMap::new();
        h.insert(headers::MSG_ID, format!("{id}:1").as_str());
        acks.push(
            js.publish_with_headers(format!("sysmon.metrics.{id}"), h, s.encode_to_vec().into())
                .await
                .expect("publish"),
        );
    }
    for a in acks {
        a.await.expect("stored");
    }
    let mut cfg = config(&nats.url());
    cfg.confirm_queue = 16;
    let alerter = spawn(cfg);
    let c = alerter.counters.clone();
    eventually(
        WAIT,
        "every machine's silent alert stored, with its state",
        || {
            let (js, state, c) = (js.clone(), state.clone(), c.clone());
            async move {
                let mut alerts = js
                    .get_stream(sysmonstm_schemas::streams::ALERTS)
                    .await
                    .ok()?;
                let events = alerts.info().await.ok()?.state.messages;
                let mut kv = state.stream.clone();
                let states = kv.info().await.ok()?.state.messages;
                (events == N as u64
                    && states == N as u64
                    && Counters::get(&c.events_firing) == N as u64)
                    .then_some(())
            }
        },
    )
    .await;
    assert!(
        Counters::get(&alerter.counters.confirm_queue_full) > 0,
        "the queue was full at least once"
    );
    alerter.stop().await;
}

/// A hub that refuses the streams (here: METRICS asks for more than the
/// server may store) is waited for, not a reason to exit: the alerter keeps
/// running and serving `/health`, and tries again. (It used to return the
/// error, and the process ended.)
#[tokio::test]
async fn a_hub_that_refuses_the_streams_is_waited_for() {
    // JetStream may store 64 MiB; the alerter's METRICS asks for 1 GiB.
    let nats = NatsServer::start_with("max_file_store: 64MB", "");
    let mut cfg = config(&nats.url());
    cfg.metrics_listen = Some("127.0.0.1:0".into());
    let alerter = spawn(cfg);
    let js = js_for(&nats.url()).await;
    // ALERTS (small) is made; METRICS is refused, again and again.
    eventually(WAIT, "ALERTS made before METRICS was refused", || {
        let js = js.clone();
        async move { js.get_stream(streams::ALERTS).await.ok().map(|_| ()) }
    })
    .await;
    let mut task = alerter.task;
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(3), &mut task).await;
    assert!(
        outcome.is_err(),
        "the alerter stopped instead of waiting: {outcome:?}"
    );
    assert!(js.get_stream(streams::METRICS).await.is_err());
    task.abort();
}
