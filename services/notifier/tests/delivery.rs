//! Delivery you can trust, against real servers: a nats-server, an HTTP
//! receiver and an SMTP server started by each test. Events are published
//! as the alerter publishes them (the `schemas` codec, subject and Msg-Id).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use prost::Message as _;
use sysmonstm_notifier::Notifier;
use sysmonstm_notifier::channel::sign;
use sysmonstm_notifier::config::{
    ChannelConfig, EmailConfig, NtfyConfig, SmtpTls, UrlConfig, WebhookConfig,
};
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_schemas::{streams, v1};
use sysmonstm_testkit::{NatsServer, eventually};

#[tokio::test]
async fn each_channel_gets_one_message_per_machine_group_signed_and_shaped_for_it() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.group_window_ms = 1500;
    cfg.channels.insert(
        "hook".into(),
        ChannelConfig::Webhook(WebhookConfig {
            url: rx.url("hook"),
            secret: Some("s3cret".into()),
            secret_file: None,
        }),
    );
    cfg.channels.insert("chat".into(), slack(rx.url("slack")));
    cfg.channels.insert(
        "discord".into(),
        ChannelConfig::Discord(UrlConfig {
            url: rx.url("discord"),
        }),
    );
    cfg.channels.insert(
        "push".into(),
        ChannelConfig::Ntfy(NtfyConfig {
            url: rx.url("ntfy/sysmon"),
            token: Some("tk".into()),
            token_file: None,
        }),
    );
    cfg.routes.push(route(&["hook", "chat", "discord", "push"]));
    let n = Running::start(Notifier::new(cfg), &js).await;

    let mut web = Vec::new();
    for rule in ["disk_full", "cpu_high", "memory_high"] {
        web.push(publish(&js, &alert("web01", rule, EventKind::Firing, 0)).await);
    }
    let db = publish(&js, &alert("db01", "disk_full", EventKind::Firing, 0)).await;
    eventually(WAIT, "two messages on every channel", || {
        let ok = ["hook", "slack", "discord", "ntfy/sysmon"]
            .iter()
            .all(|p| rx.accepted(p).len() == 2);
        async move { ok.then_some(()) }
    })
    .await;
    all_acked(&js).await;

    let hooks = rx.accepted("hook");
    let mut groups: Vec<Vec<String>> = hooks.iter().map(Got::event_ids).collect();
    groups.sort_by_key(Vec::len);
    web.sort();
    groups[1].sort();
    assert_eq!(groups, vec![vec![db], web], "one message per machine");
    for h in &hooks {
        let sig = h.headers["x-sysmon-signature"].to_str().expect("ascii");
        assert_eq!(sig, sign(b"s3cret", &h.body), "HMAC of the body");
        assert_eq!(h.headers["content-type"], "application/json");
        assert!(h.headers.contains_key("x-sysmon-delivery"));
    }
    let slack = rx.accepted("slack");
    let text = slack
        .iter()
        .map(|g| g.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect::<String>();
    assert!(text.contains("web01: 3 alert events (3 firing)"), "{text}");
    assert!(
        text.contains("CRITICAL FIRING disk_full on db01: disk 97.5 (threshold 90)"),
        "{text}"
    );
    assert!(
        rx.accepted("discord")
            .iter()
            .all(|g| g.json()["content"].is_string())
    );
    for g in rx.accepted("ntfy/sysmon") {
        assert_eq!(g.headers["priority"], "5");
        assert_eq!(g.headers["authorization"], "Bearer tk");
        assert!(
            g.headers["title"]
                .to_str()
                .expect("ascii")
                .starts_with("[sysmonstm]")
        );
    }
    assert_eq!(n.counters.events_with("delivered"), 4);
    n.stop().await;
}

#[tokio::test]
async fn a_500_is_tried_again_and_the_event_delivered_once() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    rx.fail("hook", 2);
    let mut cfg = config(&nats);
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.routes.push(route(&["hook"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    let id = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&js).await;
    assert_eq!(rx.accepted_ids("hook").get(&id), Some(&1));
    assert_eq!(rx.got().len(), 3, "500, 500, 200");
    assert_eq!(n.counters.retries.get(), 2);
    n.stop().await;
}

/// The receiver is down for 30 s while events come: each is delivered once
/// when it is back, none while it is away, none twice (the notifier keeps
/// them in progress at JetStream, so ack_wait (2 s here) redelivers none).
#[tokio::test]
async fn receiver_down_30s_then_every_event_is_delivered_once() {
    let down_s: u64 = std::env::var("SYSMON_TEST_DOWN_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let mut rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.max_attempts = 100;
    cfg.retry_max_ms = 2000;
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.routes.push(route(&["hook"]));
    let n = Running::start(Notifier::new(cfg), &js).await;

    rx.down().await;
    let mut ids = Vec::new();
    for (m, rule) in [
        ("web01", "disk_full"),
        ("web01", "cpu_high"),
        ("web02", "disk_full"),
        ("db01", "memory_high"),
        ("db02", "load"),
    ] {
        ids.push(publish(&js, &alert(m, rule, EventKind::Firing, 0)).await);
    }
    eventually(WAIT, "the notifier trying", || {
        let r = n.counters.retries.get();
        async move { (r >= 5).then_some(()) }
    })
    .await;
    // The outage itself, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(down_s)).await;
    assert!(rx.got().is_empty());
    rx.up().await;
    eventually(Duration::from_secs(30), "every event delivered", || {
        let n = rx.accepted_ids("hook").len();
        async move { (n == 5).then_some(()) }
    })
    .await;
    all_acked(&js).await;
    let got = rx.accepted_ids("hook");
    ids.sort();
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), ids);
    assert!(got.values().all(|&c| c == 1), "{got:?}");
    assert_eq!(n.counters.gave_up.get(), 0);
    n.stop().await;
}

/// Killed after the channel took the message and the delivery was recorded,
/// before the event was acked: the next notifier gets the event again and
/// sends nothing. Killed while the channel was failing: the next one
/// delivers it. Each event accepted exactly once.
#[tokio::test]
async fn a_notifier_killed_mid_delivery_loses_nothing_and_sends_nothing_twice() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.channels.insert("chat".into(), slack(rx.url("slack")));
    cfg.routes.push(route(&["hook", "chat"]));

    // 1. Stopped between the channels' answers and the ack.
    let reached = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&reached);
    let n = Running::start(
        Notifier::new(cfg.clone()).before_ack(Arc::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
            Box::pin(std::future::pending())
        })),
        &js,
    )
    .await;
    let a = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    eventually(WAIT, "delivered, not yet acked", || {
        let c = count(&reached);
        async move { (c >= 1).then_some(()) }
    })
    .await;
    assert_eq!(rx.accepted_ids("hook").get(&a), Some(&1));
    n.kill().await;

    // 2. Killed while the channel fails.
    rx.fail("hook", usize::MAX);
    let n = Running::start(Notifier::new(cfg.clone()), &js).await;
    let b = publish(&js, &alert("web02", "cpu_high", EventKind::Firing, 0)).await;
    eventually(WAIT, "a failed try of the second event", || {
        let tried = rx
            .got()
            .iter()
            .any(|g| g.path == "hook" && g.event_ids().contains(&b));
        async move { tried.then_some(()) }
    })
    .await;
    n.kill().await;
    rx.fail("hook", 0);

    // 3. Started again: the first event comes back and is only acked, the
    // second goes out.
    let n = Running::start(Notifier::new(cfg), &js).await;
    all_acked(&js).await;
    for path in ["hook", "slack"] {
        eventually(WAIT, "the second event delivered", || {
            let got = rx.accepted(path).len();
            async move { (got >= 2).then_some(()) }
        })
        .await;
    }
    let hook = rx.accepted_ids("hook");
    assert_eq!(hook.get(&a), Some(&1), "{hook:?}");
    assert_eq!(hook.get(&b), Some(&1), "{hook:?}");
    assert_eq!(rx.accepted("slack").len(), 2, "chat: once each");
    assert!(
        n.counters.already_sent.get() >= 2,
        "the first event was found delivered"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_channel_that_always_fails_is_given_up_and_recorded_and_others_go_on() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    rx.fail("bad", usize::MAX);
    let mut cfg = config(&nats);
    cfg.max_attempts = 4;
    cfg.retry_initial_ms = 500;
    cfg.channels.insert("bad".into(), webhook(rx.url("bad")));
    cfg.channels.insert("good".into(), webhook(rx.url("good")));
    cfg.channels.insert("gone".into(), webhook(rx.url("gone")));
    cfg.routes.push(route(&["bad", "good"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    let id = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    // The good channel does not wait for the bad one's retries.
    eventually(WAIT, "the good channel served", || {
        let ok = rx.accepted_ids("good").get(&id) == Some(&1);
        async move { ok.then_some(()) }
    })
    .await;
    assert!(
        n.counters.gave_up.get() == 0,
        "good was served while bad was tried"
    );
    all_acked(&js).await;
    let tries = rx.got().iter().filter(|g| g.path == "bad").count();
    assert_eq!(tries, 4, "bounded: max_attempts");
    assert_eq!(n.counters.gave_up.get(), 1);
    assert_eq!(n.counters.events_with("failed"), 1);

    // Recorded on NOTIFICATIONS, for whoever stores or watches failures.
    let stream = js
        .get_stream(streams::NOTIFICATIONS)
        .await
        .expect("NOTIFICATIONS");
    let msg = stream
        .get_last_raw_message_by_subject("sysmon.notify.failed.web01.bad")
        .await
        .expect("a failure record");
    let rec = v1::NotificationFailure::decode(msg.payload.as_ref()).expect("decodes");
    assert_eq!(rec.event_id, id);
    assert_eq!(rec.channel, "bad");
    assert_eq!(rec.attempts, 4);
    assert!(rec.error.contains("500"), "{}", rec.error);
    // Four tries with back-off between them: the first began before the last.
    assert!(
        rec.first_attempt_ms > 0 && rec.first_attempt_ms < rec.timestamp_ms,
        "{rec:?}"
    );
    n.stop().await;
}

#[tokio::test]
async fn a_permanent_refusal_is_not_tried_again() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    // No route on the receiver for GET-only paths: a 404 or 405 is the
    // receiver's "no", and asking again changes nothing.
    cfg.channels.insert(
        "nowhere".into(),
        webhook(rx.url("").trim_end_matches('/').to_owned() + "/"),
    );
    cfg.routes.push(route(&["nowhere"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&js).await;
    assert_eq!(n.counters.gave_up.get(), 1);
    assert_eq!(n.counters.retries.get(), 0);
    n.stop().await;
}

#[tokio::test]
async fn mail_arrives_at_a_real_smtp_server_with_subject_and_body() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let smtpd = Smtpd::start().await;
    let mut cfg = config(&nats);
    cfg.channels.insert(
        "mail".into(),
        ChannelConfig::Email(EmailConfig {
            host: "127.0.0.1".into(),
            port: Some(smtpd.port),
            tls: SmtpTls::None,
            user: None,
            password: None,
            password_file: None,
            tls_ca: None,
            from: "sysmonstm <alerts@example.com>".into(),
            to: vec![
                "ops@example.com".into(),
                "Night Shift <night@example.com>".into(),
            ],
        }),
    );
    cfg.routes.push(route(&["mail"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    let mail = eventually(WAIT, "a mail", || {
        let m = smtpd.messages();
        async move { m.into_iter().next() }
    })
    .await;
    all_acked(&js).await;
    assert!(
        mail.contains("Subject: [sysmonstm] CRITICAL FIRING disk_full on web01"),
        "{mail}"
    );
    assert!(
        mail.contains("CRITICAL FIRING disk_full on web01: disk 97.5 (threshold 90)"),
        "{mail}"
    );
    assert!(
        mail.contains("X-Envelope-To: ops@example.com, night@example.com"),
        "{mail}"
    );
    assert!(
        mail.contains("From: sysmonstm <alerts@example.com>"),
        "{mail}"
    );
    assert!(mail.contains("Message-ID: <"), "{mail}");
    assert_eq!(smtpd.messages().len(), 1);
    n.stop().await;
}

#[tokio::test]
async fn an_acknowledgement_is_told_and_stops_a_late_reminder() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.routes.push(route(&["hook"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    let fire = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    let ack = publish(
        &js,
        &alert("web01", "disk_full", EventKind::Acknowledged, 0),
    )
    .await;
    let late = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 1)).await;
    all_acked(&js).await;
    let got = rx.accepted_ids("hook");
    assert!(got.contains_key(&fire) && got.contains_key(&ack), "{got:?}");
    assert!(!got.contains_key(&late), "{got:?}");
    assert_eq!(n.counters.events_with("after_ack"), 1);
    n.stop().await;
}

/// A silence stops notifications as soon as the notifier has it; the alert
/// still fires (the event is in ALERTS); once it ends, the next event goes
/// out. Another machine is not silenced meanwhile.
#[tokio::test]
async fn a_silence_stops_notifications_at_once_and_the_next_event_after_it_notifies() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.routes.push(route(&["hook"]));
    let n = Running::start(Notifier::new(cfg), &js).await;

    let first = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    eventually(WAIT, "the first event", || {
        let ok = rx.accepted_ids("hook").contains_key(&first);
        async move { ok.then_some(()) }
    })
    .await;

    let now = sysmonstm_schemas_now();
    let silence = sysmonstm_schemas::silence::Silence {
        id: "s1".into(),
        machines: "web*".into(),
        rule: None,
        comment: "disk swap".into(),
        by: "test".into(),
        starts_ms: now,
        ends_ms: now + 6000,
    };
    let kv = js
        .get_key_value(streams::SILENCES_BUCKET)
        .await
        .expect("the notifier made the bucket");
    kv.create_with_ttl(
        &silence.id,
        serde_json::to_vec(&silence).expect("json").into(),
        Duration::from_secs(6),
    )
    .await
    .expect("silence stored");
    eventually(WAIT, "the notifier holds the silence", || {
        let s = n.counters.silences.get();
        async move { (s == 1).then_some(()) }
    })
    .await;

    let muted = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 1)).await;
    let other = publish(&js, &alert("db01", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&js).await;
    let got = rx.accepted_ids("hook");
    assert!(!got.contains_key(&muted), "{got:?}");
    assert!(got.contains_key(&other), "{got:?}");
    assert_eq!(n.counters.events_with("silenced"), 1);

    // Expired: the next event notifies, whether or not the key is gone yet.
    eventually(Duration::from_secs(10), "the silence's end", || {
        let over = sysmonstm_schemas_now() >= silence.ends_ms;
        async move { over.then_some(()) }
    })
    .await;
    let after = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 2)).await;
    eventually(WAIT, "the event after the silence", || {
        let ok = rx.accepted_ids("hook").contains_key(&after);
        async move { ok.then_some(()) }
    })
    .await;
    // And the server removes the key by itself.
    eventually(WAIT, "the silence's key expired", || {
        let kv = kv.clone();
        async move { kv.get("s1").await.ok().flatten().is_none().then_some(()) }
    })
    .await;
    n.stop().await;
}

fn sysmonstm_schemas_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test]
async fn notify_test_sends_one_message_and_answers() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.channels.insert("down".into(), webhook(rx.url("down")));
    rx.fail("down", usize::MAX);
    let n = Running::start(Notifier::new(cfg), &js).await;
    let ask = |ch: &'static str| {
        let client = js.client().clone();
        async move {
            let id = sysmonstm_schemas::MachineId::parse(ch).expect("token");
            let r = client
                .request(sysmonstm_schemas::subjects::notify_test(&id), "".into())
                .await
                .expect("an answer");
            serde_json::from_slice::<serde_json::Value>(&r.payload).expect("json")
        }
    };
    assert_eq!(ask("hook").await["ok"], true);
    assert_eq!(rx.accepted("hook").len(), 1);
    let t = rx.accepted("hook")[0].json();
    assert!(
        t["text"]
            .as_str()
            .unwrap_or_default()
            .contains("notify test hook"),
        "{t}"
    );
    let down = ask("down").await;
    assert_eq!(down["ok"], false);
    assert!(
        down["error"].as_str().unwrap_or_default().contains("500"),
        "{down}"
    );
    let none = ask("nope").await;
    assert!(
        none["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no channel"),
        "{none}"
    );
    n.stop().await;
}

/// Garbage on ALERTS, and an event whose subject names another machine,
/// are refused (terminated, counted by reason) and never sent; the events
/// around them are.
#[tokio::test]
async fn bad_events_are_refused_and_counted_and_the_rest_goes_out() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let mut cfg = config(&nats);
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.routes.push(route(&["hook"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    let before = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    js.publish(
        "sysmon.alerts.critical.web01.cpu_high",
        "\u{ff}garbage".into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    let forged = alert("web01", "cpu_high", EventKind::Firing, 0);
    js.publish(
        "sysmon.alerts.critical.db01.cpu_high",
        forged.encode().into(),
    )
    .await
    .expect("sent")
    .await
    .expect("stored");
    let after = publish(&js, &alert("web02", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&js).await;
    let got = rx.accepted_ids("hook");
    assert_eq!(got.keys().cloned().collect::<Vec<_>>(), {
        let mut v = vec![before, after];
        v.sort();
        v
    });
    assert_eq!(n.counters.rejected.with_label_values(&["decode"]).get(), 1);
    assert_eq!(
        n.counters
            .rejected
            .with_label_values(&["machine_mismatch"])
            .get(),
        1
    );
    n.stop().await;
}
