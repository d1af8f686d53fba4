//! The CLI and the alerter together: `sysmonstm` run as a process (the
//! workspace's build of it) beside the real alerter in-process, on a real
//! nats-server — acks the alerter honours, a rule changed while snapshots
//! flow, a machine forgotten everywhere it is kept. The CLI's helpers are its
//! own tests' (`services/cli/tests/common`).

#[path = "../../../services/cli/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use prost::Message as _;
use sysmonstm_alerter::{Alerter, AlerterConfig, Counters};
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::{streams, subjects};
use sysmonstm_testkit::{NatsServer, eventually};
use tokio_util::sync::CancellationToken;

/// The alerter's configuration for these tests: a fast tick, no `/metrics`.
fn alerter_config(url: &str) -> AlerterConfig {
    AlerterConfig {
        tick_ms: 100,
        metrics_listen: None,
        stream_max_mib: 1024,
        nats: NatsConfig {
            servers: vec![url.to_owned()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The real alerter running in-process, with its live counters.
struct RunningAlerter {
    pub counters: std::sync::Arc<Counters>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the alerter and waits for its consumer on METRICS.
async fn start_alerter(js: &jetstream::Context, url: &str) -> RunningAlerter {
    js.get_or_create_stream(streams::metrics(&alerter_config(url).metrics_limits()))
        .await
        .expect("METRICS");
    let a = Alerter::new(alerter_config(url));
    let counters = a.counters();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(a.run(shutdown.clone()));
    eventually(WAIT, "the alerter's consumer", || {
        let js = js.clone();
        async move {
            let s = js.get_stream(streams::METRICS).await.ok()?;
            s.consumer_info(streams::ALERTER_CONSUMER)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    RunningAlerter {
        counters,
        shutdown,
        task,
    }
}

impl RunningAlerter {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

#[tokio::test]
async fn ack_stops_the_reminders_and_is_stored_as_an_event() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 repeat="1s" severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut w = Watcher::start(&js, &url, &["alerts", "watch", "--json"]).await;
    let flow = tokio::spawn({
        let js = js.clone();
        let mut web = Machine::new("web01").await;
        async move {
            for _ in 0..300 {
                web.publish(&js, 97.0).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    // The first firing and one reminder.
    assert_eq!(w.next_json().await["repeat"], 0);
    assert_eq!(w.next_json().await["repeat"], 1);
    let (code, out, err) = run(&url, &["alerts", "ack", "web01", "cpu_high", "--by", "ops"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // A reminder may have crossed the ack; after the ack event none follows.
    loop {
        let v = w.next_json().await;
        if v["state"] == "acknowledged" {
            assert_eq!(v["message"], "acknowledged by ops");
            break;
        }
        assert_eq!(v["state"], "firing");
    }
    let c = alerter.counters.clone();
    eventually(WAIT, "the alerter applies the ack", || {
        let c = c.clone();
        async move { (Counters::get(&c.acks_applied) == 1).then_some(()) }
    })
    .await;
    w.nothing_more_within(Duration::from_secs(3)).await;
    let (_, listed, _) = run(&url, &["alerts", "list", "--firing"]).await;
    assert!(listed.contains("firing (acked)"), "{listed}");
    flow.abort();
    alerter.stop().await;
}

#[tokio::test]
async fn an_ack_given_while_the_alerter_was_down_is_honoured_after_its_restart() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 repeat="1s" severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let first = start_alerter(&js, &url).await;
    let mut web = Machine::new("web01").await;
    for _ in 0..300 {
        web.publish(&js, 97.0).await;
        if Counters::get(&first.counters.events_firing) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Counters::get(&first.counters.events_firing), 1);
    first.stop().await;
    let (code, out, err) = run(&url, &["alerts", "ack", "web01", "cpu_high"]).await;
    assert_eq!(code, 0, "{out}{err}");

    let second = start_alerter(&js, &url).await;
    for _ in 0..30 {
        web.publish(&js, 97.0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reminders are 1 s apart: after 2 s of evaluations one would be due.
    let c = second.counters.clone();
    eventually(WAIT, "the second alerter evaluates for 2 s", || {
        let c = c.clone();
        async move { (Counters::get(&c.snapshots_evaluated) >= 20).then_some(()) }
    })
    .await;
    assert_eq!(Counters::get(&second.counters.acks_applied), 1);
    assert_eq!(Counters::get(&second.counters.events_reminder), 0);
    assert_eq!(Counters::get(&second.counters.events_firing), 0);
    second.stop().await;
}

#[tokio::test]
async fn a_rule_changed_with_the_cli_while_snapshots_flow_applies_at_the_next_evaluation() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=99 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut web = Machine::new("web01").await;
    for _ in 0..5 {
        web.publish(&js, 70.0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut w = Watcher::start(&js, &url, &["alerts", "watch", "--all", "--json"]).await;
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=60 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let flow = tokio::spawn({
        let js = js.clone();
        async move {
            for _ in 0..100 {
                web.publish(&js, 70.0).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let v = w.next_json().await;
    assert_eq!(
        (v["state"].as_str(), v["threshold"].as_f64()),
        (Some("firing"), Some(60.0)),
        "{v}"
    );
    assert!(Counters::get(&alerter.counters.rules_applied) >= 2);
    flow.abort();
    alerter.stop().await;
}

#[tokio::test]
async fn machines_forget_removes_a_machine_everywhere_it_is_kept() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut db = Machine::new("db01").await;
    let mut web = Machine::new("web01").await;
    web.publish(&js, 10.0).await;
    db.publish(&js, 97.0).await;
    let info = sysmonstm_schemas::v1::MachineInfo {
        machine_id: "db01".into(),
        hostname: "db01.example.com".into(),
        ..Default::default()
    };
    js.publish(subjects::info(&db.id), info.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let state_kv = js
        .get_key_value(streams::ALERT_STATE_BUCKET)
        .await
        .expect("state bucket");
    // db01 fires, so the alerter holds it and its state is stored.
    eventually(WAIT, "db01's alert state stored", || {
        let kv = state_kv.clone();
        async move { kv.get("db01.cpu_high").await.ok()?.map(|_| ()) }
    })
    .await;

    let (code, out, err) = run(&url, &["machines", "forget", "db01"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alerter: forgot db01"), "{out}");
    assert!(out.contains("METRICS: 1 snapshots"), "{out}");
    assert!(out.contains("MACHINES: 1 facts"), "{out}");
    // Gone from the streams and the bucket, so no restart brings it back.
    let metrics = js.get_stream(streams::METRICS).await.expect("METRICS");
    assert!(
        metrics
            .get_last_raw_message_by_subject(&subjects::metrics(&db.id))
            .await
            .is_err()
    );
    let machines = js.get_stream(streams::MACHINES).await.expect("MACHINES");
    assert!(
        machines
            .get_last_raw_message_by_subject(&subjects::info(&db.id))
            .await
            .is_err()
    );
    eventually(WAIT, "db01's alert state gone", || {
        let kv = state_kv.clone();
        async move { kv.get("db01.cpu_high").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let (code, out, err) = run(&url, &["machines", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web01") && !out.contains("db01"), "{out}");
    // Its firing alert resolved, saying why.
    let (code, out, err) = run(&url, &["alerts", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("db01"), "{out}");
    alerter.stop().await;

    // Not a machine id: exit code 2, before connecting.
    let (code, _, err) = run(&url, &["machines", "forget", "Not.A.Machine"]).await;
    assert_eq!(code, 2, "{err}");
}
