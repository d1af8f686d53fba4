//! History and stored alerts against real rows: the persister's own
//! migrations (`sysmonstm_persister::migrate`) and the persister itself
//! writing what real agent snapshots and AlertEvents it took from JetStream.
//! The gateway's answers are checked against the values that were published.
//! The gateway's helpers are its own tests' (`services/gateway/tests/common`).

#[path = "../../../services/gateway/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use async_nats::jetstream::message::PublishMessage;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Agent, WAIT, env, publish_snapshot};
use http_body_util::BodyExt as _;
use prost::Message as _;
use serde_json::Value;
use sqlx::PgPool;
use sysmonstm_persister::{Persister, PersisterConfig};
use sysmonstm_schemas::{MachineId, subjects, v1};
use tower::ServiceExt as _;

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("router answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Migrates with the persister's own migrations and runs the real persister.
async fn persister(env: &common::Env) -> PgPool {
    let db = env.db.as_ref().expect("database");
    let pool = db.pool().await;
    sysmonstm_persister::migrate(&pool)
        .await
        .expect("persister migrations");
    let mut cfg = PersisterConfig {
        database_url: db.url().to_owned(),
        batch_size: 200,
        linger_ms: 50,
        stream_max_mib: 512,
        metrics_listen: "127.0.0.1:0".to_owned(),
        rollup_settle_ms: 200,
        ..Default::default()
    };
    cfg.nats.servers = vec![env.nats.url()];
    let shutdown = env.shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = Persister::new(cfg).run(shutdown).await {
            panic!("persister failed: {e:#}");
        }
    });
    pool
}

async fn wait_count(pool: &PgPool, sql: &str, n: i64) {
    sysmonstm_testkit::eventually(WAIT, &format!("{n} rows: {sql}"), || async {
        let c: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or(-1);
        (c >= n).then_some(())
    })
    .await;
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * b.abs().max(1.0)
}

/// Each bucket of `width_ms` in the answer `h` has the mean, minimum and
/// maximum of the published values in it, and no bucket is missing.
fn assert_buckets(h: &Value, cpu_by_ts: &BTreeMap<i64, f64>, width_ms: i64) {
    let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (t, v) in cpu_by_ts {
        buckets
            .entry(t - t.rem_euclid(width_ms))
            .or_default()
            .push(*v);
    }
    let ts: Vec<i64> = h["ts"]
        .as_array()
        .expect("ts")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert_eq!(ts, buckets.keys().copied().collect::<Vec<_>>(), "{h}");
    for (i, vs) in buckets.values().enumerate() {
        let mean = vs.iter().sum::<f64>() / vs.len() as f64;
        let got = h["avg"][i].as_f64().expect("avg");
        assert!(
            close(got, mean),
            "{width_ms} ms bucket {i}: {got} vs {mean}"
        );
        let max = vs.iter().copied().fold(f64::MIN, f64::max);
        let min = vs.iter().copied().fold(f64::MAX, f64::min);
        assert!(close(h["max"][i].as_f64().expect("max"), max));
        assert!(close(h["min"][i].as_f64().expect("min"), min));
    }
}

#[tokio::test]
async fn history_answers_from_rows_the_persister_wrote() {
    let env = env(true).await;
    let pool = persister(&env).await;
    let (gw, shared) = env.gateway().await;
    let app = gw.router();

    // 150 real snapshots, one a second, ending a minute ago. Taken back to
    // back, their CPU share is all 100 % or absent, so it is set to a ramp
    // here: averages, minima and maxima must then differ per bucket.
    let mut agent = Agent::new("hist-1").await;
    let end_ms = chrono::Utc::now().timestamp_millis() / 1000 * 1000 - 60_000;
    let start_ms = end_ms - 149_000;
    let mut cpu_by_ts = BTreeMap::new();
    for i in 0..150 {
        let mut s = agent.sample();
        s.timestamp_ms = start_ms + i * 1000;
        let c = s.cpu.get_or_insert_with(Default::default);
        c.usage_percent = (i % 97) as f32 + 0.5;
        cpu_by_ts.insert(s.timestamp_ms, f64::from(c.usage_percent));
        publish_snapshot(&env.js, &s).await;
    }
    wait_count(
        &pool,
        "SELECT count(*) FROM metrics WHERE machine_id = 'hist-1'",
        150,
    )
    .await;
    // The rollups hold them too (on the plain path they follow the rows
    // within `rollup_settle_ms`).
    for v in ["metrics_1m", "metrics_5m", "metrics_1h"] {
        wait_count(
            &pool,
            &format!("SELECT coalesce(sum(samples), 0)::int8 FROM {v} WHERE machine_id = 'hist-1'"),
            150,
        )
        .await;
    }

    // A short range: raw rows, one point a second, the published values.
    let uri = format!(
        "/api/machines/hist-1/history?metric=cpu&from={start_ms}&to={}",
        end_ms + 1000
    );
    let (status, h) = get(&app, &uri).await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["resolution"], "raw");
    assert_eq!(h["step_s"], 1);
    let ts: Vec<i64> = h["ts"]
        .as_array()
        .expect("ts")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    let avg: Vec<f64> = h["avg"]
        .as_array()
        .expect("avg")
        .iter()
        .filter_map(Value::as_f64)
        .collect();
    assert_eq!(ts.len(), cpu_by_ts.len(), "{h}");
    for (t, a) in ts.iter().zip(&avg) {
        assert!(
            close(*a, cpu_by_ts[t]),
            "cpu at {t}: {a} vs {}",
            cpu_by_ts[t]
        );
    }
    // The same question again comes from the cache.
    let _ = get(&app, &uri).await;
    assert_eq!(shared.counters.history_hits.get(), 1);

    // A day: the 1-minute rollup re-bucketed by 2 minutes; each bucket's
    // average is the mean of the published values in it.
    let to = end_ms + 1000;
    let (status, h) = cpu_history(&app, to - 86_400_000, to).await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["resolution"], "1m");
    assert_eq!(h["step_s"], 120);
    assert_buckets(&h, &cpu_by_ts, 120_000);

    // A week: the 5-minute rollup re-bucketed by 15 minutes.
    let (status, h) = cpu_history(&app, to - 7 * 86_400_000, to).await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["resolution"], "5m");
    assert_eq!(h["step_s"], 900);
    assert_buckets(&h, &cpu_by_ts, 900_000);

    // 30 days: the hourly rollup, at most 1000 points.
    let (status, h) = cpu_history(&app, to - 30 * 86_400_000, to).await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["resolution"], "1h");
    let hours: std::collections::BTreeSet<i64> = cpu_by_ts
        .keys()
        .map(|t| t - t.rem_euclid(3_600_000))
        .collect();
    assert_eq!(h["points"], hours.len(), "{h}");
}

#[tokio::test]
async fn stored_alerts_are_filtered_by_state_and_time() {
    let env = env(true).await;
    let pool = persister(&env).await;
    let (gw, _) = env.gateway().await;
    let app = gw.router();
    env.js
        .get_or_create_stream(sysmonstm_schemas::streams::alerts())
        .await
        .expect("ALERTS");
    let machine = MachineId::parse("web-1").expect("id");
    let rule = MachineId::parse("cpu_high").expect("rule");
    let now = chrono::Utc::now().timestamp_millis();
    let since = now - 60_000;
    for (state, ts) in [
        (v1::AlertState::Firing, now - 30_000),
        (v1::AlertState::Resolved, now - 5_000),
    ] {
        let ev = v1::AlertEvent {
            machine_id: machine.to_string(),
            rule: rule.to_string(),
            severity: v1::Severity::Critical as i32,
            state: state as i32,
            metric: "cpu".into(),
            value: 97.0,
            threshold: 90.0,
            since_ms: since,
            timestamp_ms: ts,
            message: "CPU above 90 %".into(),
            repeat: 0,
            trigger_seq: 0,
        };
        let st = if state == v1::AlertState::Firing {
            "firing"
        } else {
            "resolved"
        };
        env.js
            .send_publish(
                subjects::alert(v1::Severity::Critical, &machine, &rule),
                PublishMessage::build()
                    .message_id(format!("{machine}:{rule}:{since}:{st}"))
                    .payload(ev.encode_to_vec().into()),
            )
            .await
            .expect("sent")
            .await
            .expect("acked");
    }
    wait_count(&pool, "SELECT count(*) FROM alerts", 2).await;

    let (status, v) = get(&app, "/api/alerts").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let states: Vec<&str> = v["alerts"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|a| a["state"].as_str())
        .collect();
    assert_eq!(states, ["resolved", "firing"], "newest first");
    let (_, v) = get(&app, "/api/alerts?state=firing").await;
    let a = &v["alerts"][0];
    assert_eq!(v["alerts"].as_array().map(Vec::len), Some(1));
    assert_eq!(a["machine_id"], "web-1");
    assert_eq!(a["severity"], "critical");
    assert_eq!(a["since_ms"], since);
    assert_eq!(a["timestamp_ms"], now - 30_000);
    let (_, v) = get(&app, &format!("/api/alerts?since={}", now - 10_000)).await;
    assert_eq!(v["alerts"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = get(&app, "/api/alerts?machine=db-1").await;
    assert_eq!(v["alerts"].as_array().map(Vec::len), Some(0), "{v}");
}

/// `/api/machines/hist-1/history?metric=cpu` from `from` to `to` (ms).
async fn cpu_history(app: &axum::Router, from: i64, to: i64) -> (StatusCode, Value) {
    get(
        app,
        &format!("/api/machines/hist-1/history?metric=cpu&from={from}&to={to}"),
    )
    .await
}
