//! `sysmonstm alerts …` run as a process: watch live and replayed. Acks with
//! the real alerter beside the CLI: `crates/e2e/tests/cli_alerter.rs`.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_testkit::NatsServer;

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
