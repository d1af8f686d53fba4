//! The whole path of an alert on real servers: the agent's snapshots into
//! METRICS, the alerter's events into ALERTS, the persister's rows in
//! PostgreSQL's `alerts` table — one row per event, keyed by its Msg-Id.
//! The alerter's helpers are its own tests' (`services/alerter/tests/common`).

#[path = "../../../services/alerter/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_persister::{Persister, PersisterConfig};
use sysmonstm_testkit::{NatsServer, TestDb, eventually};
use tokio_util::sync::CancellationToken;

type AlertRow = (String, String, String, String, f64, f64, String);

async fn rows(pool: &sqlx::PgPool) -> Vec<AlertRow> {
    sqlx::query_as(
        "SELECT machine_id, rule, severity, state, value, threshold, msg_id FROM alerts ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

#[tokio::test]
async fn a_cpu_held_high_is_one_firing_row_and_then_one_resolved_row() {
    let nats = NatsServer::start_hub();
    let js = js_for(&nats.url()).await;
    let (rules, _) = setup(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"cpu_high","metric":"cpu","threshold":90,"clear":80,
        "for":"1s","severity":"critical"}"#,
        ),
    )
    .await;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let persister_stop = CancellationToken::new();
    let persister = tokio::spawn(
        Persister::new(PersisterConfig {
            database_url: db.url().to_owned(),
            metrics_listen: String::new(),
            stream_max_mib: 1024,
            linger_ms: 20,
            nats: NatsConfig {
                servers: vec![nats.url()],
                ..Default::default()
            },
            ..Default::default()
        })
        .run(persister_stop.clone()),
    );
    let alerter = spawn(config(&nats.url()));
    ready(&js).await;
    let mut web = Machine::new("web01").await;

    let firing = eventually(WAIT, "a firing row in alerts", || {
        let pool = pool.clone();
        let snap = web.snapshot(97.0);
        let js = js.clone();
        async move {
            publish_snapshot(&js, &snap).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = rows(&pool).await;
            (!r.is_empty()).then_some(r)
        }
    })
    .await;
    assert_eq!(firing.len(), 1, "{firing:?}");
    let (machine, rule_name, severity, state, value, threshold, msg_id) = &firing[0];
    assert_eq!(
        (
            machine.as_str(),
            rule_name.as_str(),
            severity.as_str(),
            state.as_str()
        ),
        ("web01", "cpu_high", "critical", "firing")
    );
    assert_eq!((*value, *threshold), (97.0, 90.0));
    assert!(
        msg_id.starts_with("web01:cpu_high:") && msg_id.ends_with(":firing"),
        "{msg_id}"
    );

    let both = eventually(WAIT, "a resolved row in alerts", || {
        let pool = pool.clone();
        let snap = web.snapshot(20.0);
        let js = js.clone();
        async move {
            publish_snapshot(&js, &snap).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = rows(&pool).await;
            (r.len() >= 2).then_some(r)
        }
    })
    .await;
    assert_eq!(both.len(), 2, "{both:?}");
    assert_eq!(both[1].3, "resolved");
    assert_eq!(
        both[1].6,
        msg_id.replace(":firing", ":resolved"),
        "the same episode"
    );
    alerter.stop().await;
    persister_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), persister).await;
}
