//! The notifier's failures (NOTIFICATIONS) into `notification_failures`, on
//! a real nats-server and PostgreSQL, on both storage paths: the persister
//! starts without the stream (the notifier makes it) and binds it once it
//! appears; a failure is one row, whether JetStream dropped the second copy
//! (same Msg-Id), stored it twice (another Msg-Id) or delivered it again to
//! a new consumer after a restart; garbage is terminated, counted by reason
//! and the rest stored. The failures are published with the `schemas` types,
//! as the notifier does.

mod common;

use async_nats::jetstream;
use common::*;
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_persister::Counters;
use sysmonstm_persister::notifications::FAILURE_REASONS;
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use sysmonstm_testkit::{NatsServer, TestDb, eventually};

fn failure(event_id: &str, channel: &str) -> v1::NotificationFailure {
    v1::NotificationFailure {
        event_id: event_id.to_owned(),
        machine_id: "web01".into(),
        rule: "cpu_high".into(),
        channel: channel.to_owned(),
        attempts: 4,
        error: "HTTP 500 Internal Server Error".into(),
        timestamp_ms: base_ms() + 5_000,
        first_attempt_ms: base_ms(),
    }
}

fn subject_of(f: &v1::NotificationFailure) -> String {
    subjects::notify_failed(
        &MachineId::parse(&f.machine_id).expect("machine"),
        &MachineId::parse(&f.channel).expect("channel"),
    )
}

/// Publishes `f` as the notifier does; true when JetStream took it for a
/// duplicate.
async fn record(js: &jetstream::Context, f: &v1::NotificationFailure, msg_id: &str) -> bool {
    publish_raw(js, &subject_of(f), msg_id, f.encode_to_vec()).await
}

async fn rows(pool: &PgPool) -> Vec<(String, String, String, String, i64, String, bool)> {
    sqlx::query_as(
        "SELECT event_id, channel, machine_id, msg_id, attempts, error,
                first_attempt_at < last_attempt_at AND last_attempt_at <= received_at
         FROM notification_failures ORDER BY event_id, channel",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

/// The persister's consumer on NOTIFICATIONS has nothing left to deliver
/// and nothing unacknowledged.
async fn drained(js: &jetstream::Context) {
    eventually(WAIT, "persister_notifications drained", || async {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_consumer_from_stream(
                streams::PERSISTER_NOTIFICATIONS_CONSUMER,
                streams::NOTIFICATIONS,
            )
            .await
            .ok()?;
        let i = c.info().await.ok()?;
        (i.num_pending == 0 && i.num_ack_pending == 0).then_some(())
    })
    .await;
}

fn rejected(c: &Counters, reason: &str) -> u64 {
    c.rejected_notification.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn failures_are_stored_once_and_garbage_counted_on_both_paths() {
    for storage in storage_paths().await {
        let nats = NatsServer::start();
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let mut cfg = config(&nats.url(), db.url());
        cfg.storage = storage;
        let persister = spawn(cfg.clone());
        let js = js_for(&nats.url()).await;

        // The persister comes up with no NOTIFICATIONS: it migrates, stores
        // snapshots, and does not make the stream.
        ensure_stream(&js).await;
        publish(&js, &snapshot("web01", 1)).await;
        wait_rows(&pool, 1).await;
        assert!(
            js.get_stream(streams::NOTIFICATIONS).await.is_err(),
            "the persister leaves NOTIFICATIONS to the notifier"
        );
        assert!(!persister.task.is_finished(), "{storage:?}");

        // The notifier makes it; the persister picks it up.
        js.create_stream(streams::notifications())
            .await
            .expect("NOTIFICATIONS");
        let event = format!("web01:cpu_high:{}:firing", base_ms());
        let hook = failure(&event, "hook");
        let id = headers::notify_failed_msg_id(&event, "hook");
        assert!(!record(&js, &hook, &id).await);
        // Recorded again after a notifier's crash: JetStream drops it.
        assert!(record(&js, &hook, &id).await, "same Msg-Id is a duplicate");
        // The same failure under another Msg-Id reaches the persister twice.
        assert!(!record(&js, &hook, "another-id").await);
        // Another channel of the same event is a row of its own.
        let mail = failure(&event, "mail");
        let mail_id = headers::notify_failed_msg_id(&event, "mail");
        record(&js, &mail, &mail_id).await;
        // Garbage, each for a reason, among them.
        let subject = subject_of(&hook);
        publish_raw(&js, &subject, "g1", b"\xff\xff\xff".to_vec()).await;
        let other_channel = v1::NotificationFailure {
            channel: "slack".into(),
            ..failure("web01:x:1:firing", "hook")
        };
        publish_raw(&js, &subject, "g2", other_channel.encode_to_vec()).await;
        let other_machine = v1::NotificationFailure {
            machine_id: "db01".into(),
            ..failure("web01:x:2:firing", "hook")
        };
        publish_raw(&js, &subject, "g3", other_machine.encode_to_vec()).await;
        let no_event = failure("", "hook");
        publish_raw(&js, &subject, "g4", no_event.encode_to_vec()).await;
        let future = v1::NotificationFailure {
            timestamp_ms: chrono::Utc::now().timestamp_millis() + 86_400_000,
            ..failure("web01:x:3:firing", "hook")
        };
        publish_raw(&js, &subject, "g5", future.encode_to_vec()).await;

        drained(&js).await;
        let c = &persister.counters;
        let want = [
            ("decode", 1),
            ("channel_mismatch", 1),
            ("machine_mismatch", 1),
            ("field", 1),
            ("future", 1),
        ];
        for (reason, n) in want {
            assert_eq!(rejected(c, reason), n, "{storage:?} {reason}");
        }
        let total: u64 = FAILURE_REASONS.iter().map(|r| rejected(c, r)).sum();
        assert_eq!(total, 5, "{storage:?}");
        assert_eq!(Counters::get(&c.notification_failures_stored), 2);
        assert_eq!(Counters::get(&c.notification_failures_duplicates), 1);
        let error = "HTTP 500 Internal Server Error".to_owned();
        let want = vec![
            (
                event.clone(),
                "hook".to_owned(),
                "web01".to_owned(),
                id.clone(),
                4,
                error.clone(),
                true,
            ),
            (
                event.clone(),
                "mail".to_owned(),
                "web01".to_owned(),
                mail_id.clone(),
                4,
                error.clone(),
                true,
            ),
        ];
        assert_eq!(rows(&pool).await, want, "{storage:?}");
        let text = c.render();
        assert!(
            text.contains(
                "sysmonstm_persister_notification_failures_rejected_total{reason=\"decode\"} 1"
            ),
            "{text}"
        );

        // Restarted with its consumer gone: every failure is delivered
        // again, and none adds a row.
        persister.stop().await;
        js.delete_consumer_from_stream(
            streams::PERSISTER_NOTIFICATIONS_CONSUMER,
            streams::NOTIFICATIONS,
        )
        .await
        .expect("consumer deleted");
        let again = spawn(cfg);
        eventually(WAIT, "the redelivered failures seen again", || async {
            (Counters::get(&again.counters.notification_failures_duplicates) == 3).then_some(())
        })
        .await;
        drained(&js).await;
        assert_eq!(
            Counters::get(&again.counters.notification_failures_stored),
            0
        );
        assert_eq!(rows(&pool).await, want, "{storage:?} after redelivery");
        again.stop().await;
    }
}

/// A record PostgreSQL refuses (here: a CHECK the test adds) is terminated
/// and counted; the others of its batch are stored, and nothing is retried
/// for ever.
#[tokio::test]
async fn a_record_the_database_refuses_is_terminated_and_the_rest_stored() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    sysmonstm_persister::migrate(&pool).await.expect("migrated");
    sqlx::query(
        "ALTER TABLE notification_failures ADD CONSTRAINT test_poison CHECK (rule <> 'poison')",
    )
    .execute(&pool)
    .await
    .expect("constraint");
    let js = js_for(&nats.url()).await;
    js.create_stream(streams::notifications())
        .await
        .expect("NOTIFICATIONS");
    for (i, rule) in ["before", "poison", "after"].into_iter().enumerate() {
        let event = format!("web01:{rule}:{i}:firing");
        let f = v1::NotificationFailure {
            rule: rule.into(),
            ..failure(&event, "hook")
        };
        record(&js, &f, &headers::notify_failed_msg_id(&event, "hook")).await;
    }
    let persister = spawn(config(&nats.url(), db.url()));
    drained(&js).await;
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT rule FROM notification_failures ORDER BY rule")
            .fetch_all(&pool)
            .await
            .expect("rows");
    assert_eq!(stored, ["after", "before"]);
    assert_eq!(rejected(&persister.counters, "refused_by_database"), 1);
    persister.stop().await;
}

/// NOTIFICATIONS is the notifier's, so it may go and come back (an operator
/// removes it, a new hub): the persister binds it again and goes on
/// storing, without a restart.
#[tokio::test]
async fn a_stream_removed_and_made_again_is_bound_again() {
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    js.create_stream(streams::notifications())
        .await
        .expect("NOTIFICATIONS");
    let persister = spawn(config(&nats.url(), db.url()));
    for (i, channel) in ["hook", "mail"].into_iter().enumerate() {
        if i == 1 {
            js.delete_stream(streams::NOTIFICATIONS)
                .await
                .expect("removed");
            js.create_stream(streams::notifications())
                .await
                .expect("made again");
        }
        let event = format!("web01:cpu_high:{i}:firing");
        let f = failure(&event, channel);
        record(&js, &f, &headers::notify_failed_msg_id(&event, channel)).await;
        eventually(WAIT, "the failure stored", || async {
            (rows(&pool).await.len() == i + 1).then_some(())
        })
        .await;
    }
    persister.stop().await;
}
