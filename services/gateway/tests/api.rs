//! Router tests without a socket (`tower::ServiceExt::oneshot`), against a
//! real nats-server (and PostgreSQL where an endpoint needs it): every
//! endpoint, the 400s with the parameter they name, and bad messages on the
//! feed that are counted and skipped.

mod common;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Agent, WAIT, env, publish_snapshot, wait_latest};
use http_body_util::BodyExt as _;
use serde_json::Value;
use sysmonstm_schemas::streams;
use tower::ServiceExt as _;

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (status, body) = get_raw(app, uri).await;
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v)
}

async fn get_raw(app: &Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("router answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body.to_vec())
}

/// A 400 whose JSON names `parameter`.
async fn bad(app: &Router, uri: &str, parameter: &str) {
    let (status, v) = get(app, uri).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
    assert_eq!(v["parameter"], parameter, "{uri}: {v}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{uri}: {v}"
    );
}

#[tokio::test]
async fn machines_their_facts_and_latest_snapshot() {
    let env = env(false).await;
    let (gw, shared) = env.gateway().await;
    let app = gw.router();
    let mut a = Agent::new("web-1").await;
    let mut b = Agent::new("db-1").await;
    let info = a.publish_info(&env.js).await;
    a.publish(&env.js).await;
    let last_a = a.publish(&env.js).await;
    let last_b = b.publish(&env.js).await;
    wait_latest(&shared, "web-1", last_a.seq).await;
    wait_latest(&shared, "db-1", last_b.seq).await;
    sysmonstm_testkit::eventually(WAIT, "facts of web-1", || async {
        shared.info.get("web-1").map(|_| ())
    })
    .await;

    let (status, v) = get(&app, "/api/machines").await;
    assert_eq!(status, StatusCode::OK);
    let ms = v["machines"].as_array().expect("array");
    let ids: Vec<&str> = ms.iter().filter_map(|m| m["machine_id"].as_str()).collect();
    assert_eq!(ids, ["db-1", "web-1"]);
    let web = &ms[1];
    assert_eq!(web["online"], true);
    assert_eq!(web["hostname"], info.hostname.as_str());
    assert_eq!(web["latest"]["seq"], last_a.seq);
    assert_eq!(web["last_seen_ms"], last_a.timestamp_ms);
    let cpu = last_a.cpu.as_ref().map(|c| f64::from(c.usage_percent));
    assert_eq!(
        web["latest"]["cpu"].as_f64().map(|c| (c * 1e3).round()),
        cpu.map(|c| (c * 1e3).round())
    );

    assert_eq!(v["next_after"], Value::Null, "the whole list");
    // Pages, in id order: each says where the next begins.
    let page = |q: &'static str| {
        let app = app.clone();
        async move {
            let (status, v) = get(&app, &format!("/api/machines?{q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {v}");
            let ids: Vec<String> = v["machines"]
                .as_array()
                .expect("array")
                .iter()
                .filter_map(|m| m["machine_id"].as_str().map(str::to_owned))
                .collect();
            (ids, v["next_after"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(
        page("limit=1").await,
        (vec!["db-1".into()], Some("db-1".into()))
    );
    assert_eq!(
        page("limit=1&after=db-1").await,
        (vec!["web-1".into()], None)
    );
    assert_eq!(
        page("limit=2").await,
        (vec!["db-1".into(), "web-1".into()], None)
    );
    assert_eq!(page("after=cache-9").await.0, ["db-1", "web-1"]);
    assert_eq!(page("after=web-1").await, (vec![], None));

    let (status, v) = get(&app, "/api/machines/web-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["info"]["core_count"], info.core_count);
    assert_eq!(v["info"]["kernel_version"], info.kernel_version.as_str());

    let (status, v) = get(&app, "/api/machines/web-1/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["seq"], last_a.seq);
    assert_eq!(
        v["filesystems"].as_array().map(Vec::len),
        Some(last_a.filesystems.len())
    );
    assert_eq!(
        v["cpu_per_core"].as_array().map(Vec::len),
        Some(last_a.cpu.as_ref().map_or(0, |c| c.per_core_percent.len()))
    );

    assert_eq!(
        get(&app, "/api/machines/nobody").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/api/machines/nobody/metrics").await.0,
        StatusCode::NOT_FOUND
    );
    bad(&app, "/api/machines/Bad.Id", "id").await;
    bad(&app, "/api/machines/Bad.Id/metrics", "id").await;
    for q in ["limit=0", "limit=10001", "limit=x", "limit=-1", "limit="] {
        bad(&app, &format!("/api/machines?{q}"), "limit").await;
    }
    bad(&app, "/api/machines?after=Bad.Id", "after").await;
    bad(&app, "/api/machines?page=2", "page").await;
    assert!(shared.counters.http_bad_requests.get() >= 9);
    assert_eq!(shared.counters.latest_hits.get(), 1);
    assert_eq!(shared.counters.latest_misses.get(), 1);
}

#[tokio::test]
async fn history_and_alerts_refuse_bad_parameters_before_the_database() {
    // No database at all: every one of these must still be a 400, never a
    // 500 (and not the 503 a real query would give).
    let env = env(false).await;
    let (gw, _shared) = env.gateway().await;
    let app = gw.router();
    let h = "/api/machines/web-1/history";
    bad(&app, h, "metric").await;
    bad(&app, &format!("{h}?metric=cpux"), "metric").await;
    bad(&app, &format!("{h}?metric=cpu&from=yesterday"), "from").await;
    bad(&app, &format!("{h}?metric=cpu&to=12:00"), "to").await;
    bad(
        &app,
        &format!("{h}?metric=cpu&from=2026-11-23T10:00:00Z&to=2026-11-23T09:00:00Z"),
        "from",
    )
    .await;
    bad(
        &app,
        &format!("{h}?metric=cpu&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z"),
        "from",
    )
    .await;
    bad(&app, &format!("{h}?metric=cpu&mertic=x"), "mertic").await;
    // Times at and past the ends of their range (the first one panicked on
    // `to - 1h`, which aborts a release build).
    bad(&app, &format!("{h}?metric=cpu&to=-8334601213037969"), "to").await;
    bad(&app, &format!("{h}?metric=cpu&to={}", i64::MIN), "to").await;
    let first_hour = chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_millis() + 1000;
    bad(&app, &format!("{h}?metric=cpu&to={first_hour}"), "to").await;
    bad(&app, &format!("{h}?metric=cpu&from={}", i64::MAX), "from").await;
    bad(
        &app,
        &format!("{h}?metric=cpu&from=-262143-01-01T00:00:00Z"),
        "from",
    )
    .await;
    bad(
        &app,
        &format!("{h}?metric=cpu&to=2100-01-01T00:00:00.001Z"),
        "to",
    )
    .await;
    bad(
        &app,
        &format!("{h}?metric=cpu&to=1999-12-31T23:59:59Z"),
        "to",
    )
    .await;
    bad(&app, &format!("/api/alerts?since={}", i64::MIN), "since").await;
    bad(&app, "/api/alerts?since=-262143-01-01T00:00:00Z", "since").await;
    bad(&app, "/api/machines/-x!/history?metric=cpu", "id").await;
    bad(&app, "/api/alerts?state=burning", "state").await;
    bad(&app, "/api/alerts?since=last-week", "since").await;
    bad(&app, "/api/alerts?machine=Not%20One", "machine").await;
    bad(&app, "/api/alerts?sevrity=critical", "sevrity").await;
    // A good query with the database away is the database's fault: 503.
    let (status, v) = get(&app, &format!("{h}?metric=cpu")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

#[tokio::test]
async fn rules_are_the_bucket_values_as_an_array() {
    let env = env(false).await;
    let (gw, shared) = env.gateway().await;
    let app = gw.router();
    let (status, v) = get(&app, "/api/rules").await;
    assert_eq!(status, StatusCode::OK, "no bucket yet is no rules");
    assert_eq!(v, serde_json::json!([]));

    let kv = env
        .js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: streams::RULES_BUCKET.into(),
            ..Default::default()
        })
        .await
        .expect("bucket");
    kv.put(
        "cpu_high",
        r#"{"name":"cpu_high","metric":"cpu","threshold":90}"#.into(),
    )
    .await
    .expect("put");
    kv.put(
        "disk_full",
        r#"{"name":"disk_full","metric":"disk","threshold":95}"#.into(),
    )
    .await
    .expect("put");
    kv.put("broken", "not json".into()).await.expect("put");
    kv.put("gone", "{}".into()).await.expect("put");
    kv.delete("gone").await.expect("delete");

    let (status, v) = get(&app, "/api/rules").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["cpu_high", "disk_full"]);
    assert_eq!(shared.counters.rules_bad_values.get(), 1);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let env = env(false).await;
    let (gw, _) = env.gateway().await;
    let app = gw.router();
    assert_eq!(get(&app, "/health").await.0, StatusCode::OK);
    let (status, v) = sysmonstm_testkit::eventually(WAIT, "NATS connected", || async {
        let r = get(&app, "/ready").await;
        (r.1["nats"] == true).then_some(r)
    })
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no database: not ready"
    );
    assert_eq!(v["postgres"], false);

    let with_db = common::env(true).await;
    let (gw, _) = with_db.gateway().await;
    let app_db = gw.router();
    sysmonstm_testkit::eventually(WAIT, "ready with NATS and PostgreSQL", || async {
        (get(&app_db, "/ready").await.0 == StatusCode::OK).then_some(())
    })
    .await;

    bad(&app, "/api/alerts?state=nope", "state").await;
    let (status, body) = get_raw(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).expect("text");
    assert!(
        text.contains("sysmonstm_gateway_http_bad_requests_total 1"),
        "{text}"
    );
    assert!(
        text.contains("sysmonstm_gateway_cache_hit_ratio{cache=\"history\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn garbage_on_the_feed_is_counted_and_skipped() {
    let env = env(false).await;
    let (gw, shared) = env.gateway().await;
    let app = gw.router();
    let mut a = Agent::new("web-1").await;
    let first = a.publish(&env.js).await;
    wait_latest(&shared, "web-1", first.seq).await;
    env.js
        .publish(
            "sysmon.metrics.web-1",
            bytes::Bytes::from_static(b"\xff\xff garbage"),
        )
        .await
        .expect("sent")
        .await
        .expect("acked");
    // A snapshot that claims another machine than its subject.
    let mut other = a.sample();
    other.machine_id = "db-9".into();
    let payload = prost::Message::encode_to_vec(&other);
    env.js
        .publish("sysmon.metrics.web-1", payload.into())
        .await
        .expect("sent")
        .await
        .expect("acked");
    let next = a.publish(&env.js).await;
    wait_latest(&shared, "web-1", next.seq).await;
    assert_eq!(shared.counters.decode_errors.get(), 2);
    assert!(shared.latest.get("db-9").is_none());
    // An older snapshot (a replayed spool: lower seq, older time) does not
    // replace the latest.
    let mut old = next.clone();
    old.seq = first.seq;
    old.timestamp_ms = next.timestamp_ms - 60_000;
    publish_snapshot(&env.js, &old).await;
    sysmonstm_testkit::eventually(WAIT, "the replayed snapshot counted as stale", || async {
        (shared.counters.snapshots_stale.get() >= 1).then_some(())
    })
    .await;
    let (_, v) = get(&app, "/api/machines/web-1/metrics").await;
    assert_eq!(v["seq"], next.seq, "the replay replaced the latest");
    let fresh = a.publish(&env.js).await;
    wait_latest(&shared, "web-1", fresh.seq).await;
    let (_, v) = get(&app, "/api/machines/web-1/metrics").await;
    assert_eq!(v["seq"], fresh.seq);
}

/// The second of two snapshots taken in one millisecond, and a snapshot
/// taken after the agent's clock stepped back, are the latest: the agent's
/// seq says so. (Ordering by time alone dropped both; the WebSocket test
/// that publishes a probe every millisecond or so then waited in vain.)
#[tokio::test]
async fn a_later_seq_is_shown_in_the_same_millisecond_and_after_a_clock_step_back() {
    let env = env(false).await;
    let (gw, shared) = env.gateway().await;
    let app = gw.router();
    let mut a = Agent::new("web-1").await;
    let first = a.publish(&env.js).await;
    wait_latest(&shared, "web-1", first.seq).await;
    let mut same_ms = a.sample();
    same_ms.timestamp_ms = first.timestamp_ms;
    publish_snapshot(&env.js, &same_ms).await;
    wait_latest(&shared, "web-1", same_ms.seq).await;
    let mut stepped_back = a.sample();
    stepped_back.timestamp_ms = first.timestamp_ms - 60_000;
    publish_snapshot(&env.js, &stepped_back).await;
    wait_latest(&shared, "web-1", stepped_back.seq).await;
    let (_, v) = get(&app, "/api/machines/web-1/metrics").await;
    assert_eq!(v["seq"], stepped_back.seq);
    assert_eq!(v["timestamp_ms"], stepped_back.timestamp_ms);
    // A duplicate of the one shown changes nothing.
    publish_snapshot(&env.js, &stepped_back).await;
    let fresh = a.publish(&env.js).await;
    wait_latest(&shared, "web-1", fresh.seq).await;
    assert_eq!(shared.counters.snapshots_stale.get(), 1);
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let env = env(false).await;
    let (gw, _) = env.gateway().await;
    let app = gw.router();
    let (status, body) = get_raw(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("/assets/app.js"));
    let (status, js) = get_raw(&app, "/assets/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        js.len() > 1000,
        "the bundle holds uPlot and the app ({} bytes)",
        js.len()
    );
    let (status, css) = get_raw(&app, "/assets/app.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&css).contains(".uplot"));
    // A page of the single-page app is the app; an unknown API path is not.
    assert_eq!(get_raw(&app, "/machine/web-1").await.0, StatusCode::OK);
    let (status, v) = get(&app, "/api/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());
}

/// The caches are bounded by bytes as well as entries: many machines'
/// snapshots into a small cache keep it within its bytes, and the newest
/// still answers.
#[tokio::test]
async fn the_latest_cache_is_bounded_by_bytes() {
    let env = env(false).await;
    let cap = 64 * 1024;
    let (gw, shared) = env
        .gateway_with(sysmonstm_gateway::GatewayConfig {
            cache_max_bytes: cap,
            ..env.config()
        })
        .await;
    let app = gw.router();
    let mut a = Agent::new("web-1").await;
    let n = 60;
    let mut last = None;
    for i in 0..n {
        let mut s = a.sample();
        s.machine_id = format!("m-{i}");
        publish_snapshot(&env.js, &s).await;
        last = Some(s);
    }
    let last = last.expect("published");
    wait_latest(&shared, &last.machine_id, last.seq).await;
    shared.latest.run_pending_tasks();
    let (entries, bytes) = (shared.latest.entry_count(), shared.latest.weighted_size());
    eprintln!("{entries} entries, {bytes} bytes weighed, cap {cap}");
    assert!(bytes <= cap, "{bytes} bytes held, over {cap}");
    assert!(entries < n, "every one of {n} machines held in {cap} bytes");
    let (status, v) = get(&app, &format!("/api/machines/{}/metrics", last.machine_id)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}
