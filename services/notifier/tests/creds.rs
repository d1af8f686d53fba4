//! The notifier's credential (`sysmonstm creds service notifier`) is
//! enough for all its work on an operator-mode hub, and the CLI's for
//! silences: made from the same policy as `crates/hostile/tests/security.rs`
//! holds every role to.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use sysmonstm_kit::creds::{Authority, Role};
use sysmonstm_notifier::Notifier;
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_schemas::streams;
use sysmonstm_testkit::{NatsServer, eventually};

async fn js_as(url: &str, creds: &std::path::Path) -> jetstream::Context {
    let client = async_nats::ConnectOptions::with_credentials_file(creds.to_owned())
        .await
        .expect("creds")
        .connect(url)
        .await
        .expect("connect");
    jetstream::new(client)
}

#[tokio::test]
async fn the_notifier_does_all_its_work_with_its_own_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut auth = Authority::init(&dir.path().join("creds")).expect("authority");
    let notifier = auth.issue(Role::Notifier).expect("notifier");
    let alerter = auth.issue(Role::Alerter).expect("alerter");
    let cli = auth.issue(Role::Cli).expect("cli");
    let nats = NatsServer::start_with("", &auth.include_line());
    let url = nats.url();
    let alerter = js_as(&url, &alerter).await;
    sysmonstm_kit::jetstream::ensure_alerts(&alerter)
        .await
        .expect("the alerter makes ALERTS");

    let rx = Receiver::start().await;
    rx.fail("bad", usize::MAX);
    let mut cfg = config(&nats);
    cfg.nats.creds_file = Some(notifier);
    cfg.max_attempts = 2;
    cfg.channels.insert("hook".into(), webhook(rx.url("hook")));
    cfg.channels.insert("bad".into(), webhook(rx.url("bad")));
    cfg.routes.push(route(&["hook", "bad"]));
    let n = Running::start(Notifier::new(cfg), &alerter).await;

    let first = publish(&alerter, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&alerter).await;
    assert_eq!(rx.accepted_ids("hook").get(&first), Some(&1));
    assert_eq!(n.counters.gave_up.get(), 1);
    assert_eq!(
        n.counters.record_errors.get(),
        0,
        "the failure was recorded"
    );
    assert_eq!(n.counters.dedupe_errors.get(), 0);

    // A silence put with the CLI's credential reaches the notifier.
    let cli = js_as(&url, &cli).await;
    let kv = cli
        .get_key_value(streams::SILENCES_BUCKET)
        .await
        .expect("the CLI opens the silences");
    let now = chrono_now();
    let s = sysmonstm_schemas::silence::Silence {
        id: "maint".into(),
        machines: "*".into(),
        rule: None,
        comment: String::new(),
        by: "cli".into(),
        starts_ms: now,
        ends_ms: now + 600_000,
    };
    kv.create_with_ttl(
        "maint",
        serde_json::to_vec(&s).expect("json").into(),
        Duration::from_secs(600),
    )
    .await
    .expect("silence put");
    eventually(WAIT, "the notifier holds the silence", || {
        let c = n.counters.silences.get();
        async move { (c == 1).then_some(()) }
    })
    .await;
    publish(
        &alerter,
        &alert("web01", "disk_full", EventKind::Resolved, 0),
    )
    .await;
    all_acked(&alerter).await;
    assert_eq!(n.counters.events_with("silenced"), 1);
    n.stop().await;
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
        .unwrap_or(0)
}
