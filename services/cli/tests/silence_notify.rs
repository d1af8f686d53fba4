//! `sysmonstm silence …` and `sysmonstm notify test` run as a process
//! against a real nats-server. The notifier's side of both is tested in
//! services/notifier/tests; here an in-test responder stands where the
//! notifier answers, on the subject `schemas` defines.

mod common;

use async_nats::jetstream;
use common::*;
use futures::StreamExt as _;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_schemas::silence::Silence;
use sysmonstm_schemas::{streams, subjects};
use sysmonstm_testkit::NatsServer;

#[tokio::test]
async fn silence_add_list_rm() {
    let nats = NatsServer::start();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));

    let (code, _, err) = run(
        &url,
        &["silence", "add", "--machine", "web*", "--for", "soon"],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--for"), "{err}");
    let (code, _, err) = run(
        &url,
        &["silence", "add", "--machine", "Web.1", "--for", "1h"],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("machines"), "{err}");
    let (code, _, err) = run(
        &url,
        &["silence", "add", "--machine", "web*", "--for", "91d"],
    )
    .await;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = run(
        &url,
        &[
            "silence",
            "add",
            "--machine",
            "web*",
            "--rule",
            "disk_*",
            "--for",
            "2h",
            "--comment",
            "disk swap",
            "--by",
            "ops",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let id = out
        .split_whitespace()
        .nth(1)
        .expect("silence <id> added")
        .to_owned();
    let kv = js
        .get_key_value(streams::SILENCES_BUCKET)
        .await
        .expect("bucket");
    let s: Silence = serde_json::from_slice(&kv.get(&id).await.expect("get").expect("stored"))
        .expect("a silence");
    assert_eq!(s.machines, "web*");
    assert_eq!(s.rule.as_deref(), Some("disk_*"));
    assert_eq!(s.comment, "disk swap");
    assert_eq!(s.by, "ops");
    assert_eq!(s.ends_ms - s.starts_ms, 2 * 3600 * 1000);

    // `alerts watch` marks what the silence covers as muted; the rest not.
    let now = s.starts_ms;
    let mut w = Watcher::start(&js, &url, &["alerts", "watch", "--json"]).await;
    for (m, rule) in [
        ("web01", "disk_full"),
        ("web01", "cpu_high"),
        ("db01", "disk_full"),
    ] {
        js_kit::publish_alert(&js, &event(m, rule, EventKind::Firing, now))
            .await
            .expect("stored");
        let j = w.next_json().await;
        assert_eq!(j["machine"], m);
        let muted = m == "web01" && rule == "disk_full";
        assert_eq!(j["muted"], muted, "{j}");
    }

    let (code, out, _) = run(&url, &["silence", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("disk swap"), "{out}");
    let (code, out, _) = run(&url, &["silence", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1);

    let (code, out, err) = run(&url, &["silence", "rm", &id]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed"), "{out}");
    assert!(kv.get(&id).await.expect("get").is_none());
    let (code, out, _) = run(&url, &["silence", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = run(&url, &["silence", "rm", &id]).await;
    assert_eq!(code, 1, "{err}");
}

#[tokio::test]
async fn notify_test_prints_the_channels_answer() {
    let nats = NatsServer::start();
    let url = nats.url();
    let client = async_nats::connect(&url).await.expect("connect");

    let (code, _, err) = run(&url, &["notify", "test", "hook", "--timeout", "5"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no notifier"), "{err}");
    let (code, _, err) = run(&url, &["notify", "test", "Bad Name"]).await;
    assert_eq!(code, 2, "{err}");

    let mut sub = client
        .subscribe(subjects::NOTIFY_TEST_ALL)
        .await
        .expect("subscribe");
    let responder = client.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let ch = subjects::parse_notify_test(&m.subject).unwrap_or_default();
            let answer = if ch == "hook" {
                serde_json::json!({"ok": true, "channel": ch})
            } else {
                serde_json::json!({"ok": false, "channel": ch, "error": "HTTP 500: down"})
            };
            if let Some(r) = m.reply {
                let _ = responder.publish(r, answer.to_string().into()).await;
            }
        }
    });
    client.flush().await.expect("flush");
    let (code, out, err) = run(&url, &["notify", "test", "hook"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("test message sent on hook"), "{out}");
    let (code, _, err) = run(&url, &["notify", "test", "pager"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("channel pager: HTTP 500: down"), "{err}");
}
