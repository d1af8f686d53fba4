//! A snapshot that passes every check but that PostgreSQL refuses (a poison
//! row) must not stall a writer: its batch is narrowed down to it, it is
//! terminated and counted (`reason="refused_by_database"`), and everything
//! else in the batch, and after it, is stored. On a real PostgreSQL, both
//! storage paths.
//!
//! No snapshot the decoder accepts is refused by the schema on its own any
//! more (NUL, out-of-range integers and times are dealt with before), so the
//! test database alone gets a CHECK that refuses seq 13 — the way PostgreSQL
//! answers a value it will never take.

mod common;

use std::collections::BTreeSet;

use common::*;
use sysmonstm_persister::{Counters, PersisterConfig, migrate_with};
use sysmonstm_testkit::{NatsServer, TestDb, eventually};

#[tokio::test]
async fn a_snapshot_postgresql_refuses_is_terminated_and_the_rest_of_its_batch_is_stored() {
    for storage in storage_paths().await {
        let nats = NatsServer::start();
        let db = TestDb::new().await;
        let pool = db.pool().await;
        migrate_with(&pool, storage).await.expect("migrations");
        sqlx::query("ALTER TABLE metrics ADD CONSTRAINT test_poison CHECK (seq <> 13)")
            .execute(&pool)
            .await
            .expect("the test's CHECK");
        let js = js_for(&nats.url()).await;
        let stream = ensure_stream(&js).await;
        // All in the stream before the persister starts: one batch.
        for seq in 1..=40 {
            publish(&js, &snapshot("poison", seq)).await;
        }
        let persister = spawn(PersisterConfig {
            storage,
            ..config(&nats.url(), db.url())
        });

        let want: BTreeSet<(String, i64)> = (1..=40)
            .filter(|s| *s != 13)
            .map(|s| ("poison".to_owned(), s))
            .collect();
        eventually(WAIT, "all but the refused snapshot stored", || async {
            (stored_set(&pool).await == want).then_some(())
        })
        .await;
        eventually(WAIT, "the refused one counted", || async {
            (Counters::get(&persister.counters.rejected_refused) == 1).then_some(())
        })
        .await;
        // Terminated, not left to come back.
        wait_consumer_drained(&stream).await;

        // And the writer goes on.
        publish(&js, &snapshot("poison", 41)).await;
        eventually(WAIT, "a later snapshot stored", || async {
            stored_set(&pool)
                .await
                .contains(&("poison".to_owned(), 41))
                .then_some(())
        })
        .await;
        let c = &persister.counters;
        assert_eq!(Counters::get(&c.stored), 40, "{storage:?}");
        assert_eq!(Counters::get(&c.rejected_refused), 1, "{storage:?}");
        assert_eq!(
            Counters::get(&c.db_errors),
            0,
            "a refused value is not a database failure"
        );
        assert!(
            c.render()
                .contains("rejected_total{reason=\"refused_by_database\"} 1\n"),
            "{}",
            c.render()
        );
        persister.stop().await;
    }
}

/// The same for alert events: the one PostgreSQL refuses (here too, a CHECK
/// in the test database) is terminated and counted, the others stored.
#[tokio::test]
async fn an_alert_event_postgresql_refuses_is_terminated_and_the_others_are_stored() {
    use prost::Message as _;
    use sysmonstm_schemas::{MachineId, subjects, v1};
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    migrate_with(&pool, sysmonstm_persister::Storage::Auto)
        .await
        .expect("migrations");
    sqlx::query("ALTER TABLE alerts ADD CONSTRAINT test_poison CHECK (rule <> 'poison')")
        .execute(&pool)
        .await
        .expect("the test's CHECK");
    let js = js_for(&nats.url()).await;
    js.get_or_create_stream(sysmonstm_schemas::streams::alerts())
        .await
        .expect("ALERTS");
    let machine = MachineId::parse("a1").expect("id");
    for rule in ["cpu_high", "poison", "disk_full"] {
        let event = v1::AlertEvent {
            machine_id: "a1".into(),
            rule: rule.into(),
            severity: v1::Severity::Warning as i32,
            state: v1::AlertState::Firing as i32,
            since_ms: base_ms(),
            timestamp_ms: base_ms(),
            ..Default::default()
        };
        let subject = subjects::alert(
            v1::Severity::Warning,
            &machine,
            &MachineId::parse(rule).expect("rule"),
        );
        publish_raw(&js, &subject, &format!("a1:{rule}"), event.encode_to_vec()).await;
    }
    let persister = spawn(config(&nats.url(), db.url()));
    let rules = || async {
        sqlx::query_scalar::<_, String>("SELECT rule FROM alerts ORDER BY rule")
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
    };
    eventually(WAIT, "the two other events stored", || async {
        (rules().await == ["cpu_high", "disk_full"]).then_some(())
    })
    .await;
    eventually(WAIT, "the refused one counted", || async {
        (Counters::get(&persister.counters.rejected_alert) == 1).then_some(())
    })
    .await;
    assert_eq!(Counters::get(&persister.counters.db_errors), 0);
    persister.stop().await;
}

/// ALERTS removed and made again (an operator, a new hub) takes the
/// persister's consumer with it: the persister binds it again and goes on
/// storing events, without a restart.
#[tokio::test]
async fn alerts_removed_and_made_again_is_bound_again() {
    use prost::Message as _;
    use sysmonstm_schemas::{MachineId, streams, subjects, v1};
    let nats = NatsServer::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;
    js.get_or_create_stream(streams::alerts())
        .await
        .expect("ALERTS");
    let persister = spawn(config(&nats.url(), db.url()));
    let machine = MachineId::parse("a1").expect("id");
    for (i, rule) in ["cpu_high", "disk_full"].into_iter().enumerate() {
        if i == 1 {
            js.delete_stream(streams::ALERTS).await.expect("removed");
            js.create_stream(streams::alerts())
                .await
                .expect("made again");
        }
        let event = v1::AlertEvent {
            machine_id: "a1".into(),
            rule: rule.into(),
            severity: v1::Severity::Warning as i32,
            state: v1::AlertState::Firing as i32,
            since_ms: base_ms(),
            timestamp_ms: base_ms(),
            ..Default::default()
        };
        let subject = subjects::alert(
            v1::Severity::Warning,
            &machine,
            &MachineId::parse(rule).expect("rule"),
        );
        publish_raw(&js, &subject, &format!("a1:{rule}"), event.encode_to_vec()).await;
        eventually(WAIT, &format!("the {rule} event stored"), || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            (n == i as i64 + 1).then_some(())
        })
        .await;
    }
    persister.stop().await;
}
