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
