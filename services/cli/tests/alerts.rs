//! `sysmonstm alerts …` run as a process: watch live and replayed, ack.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use sysmonstm_alerter::Counters;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_testkit::{NatsServer, eventually};

#[tokio::test]
async fn watch_json_prints_a_live_event() {
    let nats = NatsServer::start_hub();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let mut w = Watcher::start(&js, &nats.url(), &["alerts", "watch", "--json"]).await;
    js_kit::publish_alert(
        &js,
        &event("web01", "cpu_high", EventKind::Firing, 1_700_000_000_000),
    )
    .await
    .expect("publish");
    let v = w.next_json().await;
    assert_eq!(v["subject"], "sysmon.alerts.critical.web01.cpu_high");
    assert_eq!(
        (v["state"].as_str(), v["machine"].as_str()),
        (Some("firing"), Some("web01"))
    );
    assert_eq!(v["value"], 97.0);
    assert_eq!(v["since"], "2023-11-14T22:13:20.000Z");
}

#[tokio::test]
async fn watch_since_prints_the_past_then_live_events_each_once() {
    let nats = NatsServer::start_hub();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    js_kit::ensure_alerts(&js).await.expect("ALERTS");
    for i in 0..3 {
        js_kit::publish_alert(
            &js,
            &event(&format!("web0{i}"), "cpu_high", EventKind::Firing, 1000 + i),
        )
        .await
        .expect("publish past");
    }
    // A filter that leaves one out: only web* machines.
    js_kit::publish_alert(&js, &event("db01", "cpu_high", EventKind::Firing, 5))
        .await
        .expect("publish");
    let mut w = Watcher::start(
        &js,
        &nats.url(),
        &[
            "alerts",
            "watch",
            "--since",
            "1h",
            "--machine",
            "web*",
            "--json",
        ],
    )
    .await;
    for i in 0..2 {
        js_kit::publish_alert(
            &js,
            &event(
                &format!("web1{i}"),
                "cpu_high",
                EventKind::Resolved,
                2000 + i,
            ),
        )
        .await
        .expect("publish live");
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let v = w.next_json().await;
        seen.push((
            v["machine"].as_str().unwrap_or("").to_owned(),
            v["state"].as_str().unwrap_or("").to_owned(),
        ));
    }
    let want: Vec<(String, String)> = [
        ("web00", "firing"),
        ("web01", "firing"),
        ("web02", "firing"),
        ("web10", "resolved"),
        ("web11", "resolved"),
    ]
    .iter()
    .map(|(m, s)| ((*m).to_owned(), (*s).to_owned()))
    .collect();
    assert_eq!(seen, want);
    w.nothing_more_within(Duration::from_secs(1)).await;
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
async fn a_since_out_of_range_is_exit_code_2_not_a_panic() {
    let nats = NatsServer::start_hub();
    for since in ["5000000d", "3651d", "18446744073709551615ms"] {
        let (code, _, err) = run(&nats.url(), &["alerts", "watch", "--since", since]).await;
        assert_eq!(code, 2, "--since {since}: {err}");
        assert!(
            err.contains("--since") && !err.contains("panicked"),
            "{err}"
        );
    }
}
