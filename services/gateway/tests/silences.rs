//! Silences on the dashboard, against a real nats-server and a gateway on a
//! real socket: a silence put in the bucket `sysmon_silences` (as `sysmonstm
//! silence add` puts it) marks the alerts it covers as muted in
//! `/api/alerts/live` and over the WebSocket, leaves the others alone, and
//! unmarks them when it ends; a hub where nobody created the bucket yet is
//! no error; the silences held are bounded by `max_silences`.

mod common;

use async_nats::jetstream::{self, message::PublishMessage};
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use common::{WAIT, env};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use prost::Message as _;
use serde_json::Value;
use sysmonstm_gateway::{Gateway, GatewayConfig};
use sysmonstm_schemas::silence::Silence;
use sysmonstm_schemas::{MachineId, streams, subjects, v1};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt as _;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A firing AlertEvent of `rule` on `machine`, as the alerter publishes it.
async fn fire(js: &jetstream::Context, machine: &str, rule: &str, repeat: u32) {
    let (m, r) = (
        MachineId::parse(machine).expect("machine"),
        MachineId::parse(rule).expect("rule"),
    );
    let now = now_ms();
    let ev = v1::AlertEvent {
        machine_id: machine.into(),
        rule: rule.into(),
        severity: v1::Severity::Critical as i32,
        state: v1::AlertState::Firing as i32,
        metric: "cpu".into(),
        value: 97.5,
        threshold: 90.0,
        since_ms: now - 60_000,
        timestamp_ms: now,
        message: "CPU above 90 %".into(),
        repeat,
        trigger_seq: 0,
    };
    js.send_publish(
        subjects::alert(v1::Severity::Critical, &m, &r),
        PublishMessage::build()
            .message_id(format!("{machine}:{rule}:{now}:{repeat}"))
            .payload(ev.encode_to_vec().into()),
    )
    .await
    .expect("sent")
    .await
    .expect("acked");
}

fn silence(id: &str, machines: &str, rule: Option<&str>, ends_ms: i64) -> Silence {
    Silence {
        id: id.into(),
        machines: machines.into(),
        rule: rule.map(Into::into),
        comment: "disk swap".into(),
        by: "test".into(),
        starts_ms: now_ms() - 1000,
        ends_ms,
    }
}

async fn put(kv: &jetstream::kv::Store, s: &Silence) {
    kv.put(&s.id, serde_json::to_vec(s).expect("JSON").into())
        .await
        .expect("silence stored");
}

/// `/api/alerts/live`, by `machine:rule`.
async fn live(app: &Router) -> std::collections::HashMap<String, Value> {
    let resp = app
        .clone()
        .oneshot(
            Request::get("/api/alerts/live")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("router answers");
    assert!(resp.status().is_success());
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    v["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| {
            (
                format!(
                    "{}:{}",
                    a["machine_id"].as_str().unwrap_or(""),
                    a["rule"].as_str().unwrap_or("")
                ),
                a.clone(),
            )
        })
        .collect()
}

/// Waits until `/api/alerts/live` holds `key` and `pred` holds for it.
async fn live_until(app: &Router, key: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    sysmonstm_testkit::eventually(WAIT, what, || async {
        live(app).await.remove(key).filter(|a| pred(a))
    })
    .await
}

/// Reads the socket until an alert update of `key` for which `pred` holds.
async fn ws_until(ws: &mut Ws, key: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("socket open")
            .expect("frame");
        let Message::Text(t) = msg else { continue };
        let batch: Vec<Value> = serde_json::from_str(&t).expect("a JSON array");
        if let Some(u) = batch.into_iter().find(|u| {
            u["type"] == "alert"
                && format!(
                    "{}:{}",
                    u["data"]["machine_id"].as_str().unwrap_or(""),
                    u["data"]["rule"].as_str().unwrap_or("")
                ) == key
                && pred(&u["data"])
        }) {
            return u["data"].clone();
        }
    }
}

async fn start(
    env: &common::Env,
    cfg: GatewayConfig,
) -> (
    Router,
    std::sync::Arc<sysmonstm_gateway::Shared>,
    sysmonstm_gateway::Running,
) {
    let gw = Gateway::connect(cfg).await.expect("connects");
    let (app, shared) = (gw.router(), gw.shared());
    let running = gw.start(env.shutdown.clone()).await.expect("binds");
    (app, shared, running)
}

#[tokio::test]
async fn a_silence_mutes_what_it_covers_until_it_ends() {
    let env = env(false).await;
    env.js
        .get_or_create_stream(streams::alerts())
        .await
        .expect("ALERTS");
    // No silences bucket: the gateway serves, nothing is muted.
    let (app, _shared, running) = start(&env, env.config()).await;
    fire(&env.js, "web-1", "cpu_high", 0).await;
    fire(&env.js, "db-1", "cpu_high", 0).await;
    for key in ["web-1:cpu_high", "db-1:cpu_high"] {
        let a = live_until(&app, key, "both alerts live", |_| true).await;
        assert_eq!(a["muted"], false, "{a}");
        assert!(a.get("silence").is_none(), "{a}");
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", running.addr()))
        .await
        .expect("WebSocket connects");
    ws_until(&mut ws, "db-1:cpu_high", "the initial alerts", |a| {
        a["muted"] == false
    })
    .await;

    // The bucket made and a silence of web* put, as `silence add` does.
    let kv = sysmonstm_kit::jetstream::ensure_kv(&env.js, streams::silences_bucket())
        .await
        .expect("silences bucket");
    let ends = now_ms() + 3_600_000;
    put(&kv, &silence("swap", "web*", Some("cpu_*"), ends)).await;
    let a = live_until(&app, "web-1:cpu_high", "web-1 muted in REST", |a| {
        a["muted"] == true
    })
    .await;
    assert_eq!(a["silence"]["id"], "swap", "{a}");
    assert_eq!(a["silence"]["comment"], "disk swap", "{a}");
    assert_eq!(a["silence"]["ends_ms"], ends, "{a}");
    let u = ws_until(
        &mut ws,
        "web-1:cpu_high",
        "web-1 muted over the socket",
        |a| a["muted"] == true,
    )
    .await;
    assert_eq!(u["silence"]["ends_ms"], ends, "{u}");
    // Not covered: another machine.
    assert_eq!(live(&app).await["db-1:cpu_high"]["muted"], false);
    // A new event of a muted alert (a reminder) arrives muted.
    fire(&env.js, "web-1", "cpu_high", 1).await;
    let a = live_until(&app, "web-1:cpu_high", "the reminder", |a| a["repeat"] == 1).await;
    assert_eq!(a["muted"], true, "{a}");
    ws_until(
        &mut ws,
        "web-1:cpu_high",
        "the reminder over the socket",
        |a| a["repeat"] == 1 && a["muted"] == true,
    )
    .await;

    // The silence shortened to end in a moment: when it ends, the alert is
    // unmarked, in REST and over the socket, while its key is still there.
    let ends = now_ms() + 1500;
    put(&kv, &silence("swap", "web*", Some("cpu_*"), ends)).await;
    let u = ws_until(
        &mut ws,
        "web-1:cpu_high",
        "web-1 unmuted over the socket",
        |a| a["muted"] == false,
    )
    .await;
    assert!(now_ms() >= ends, "unmuted before the silence ended: {u}");
    assert!(u.get("silence").is_none(), "{u}");
    assert_eq!(live(&app).await["web-1:cpu_high"]["muted"], false);
    assert!(
        kv.get("swap").await.expect("read").is_some(),
        "the key is still there"
    );

    // A deleted silence unmarks too (`silence rm`).
    put(&kv, &silence("all", "*", None, now_ms() + 3_600_000)).await;
    live_until(
        &app,
        "db-1:cpu_high",
        "db-1 muted by a silence of every rule",
        |a| a["muted"] == true,
    )
    .await;
    kv.delete("all").await.expect("deleted");
    live_until(
        &app,
        "db-1:cpu_high",
        "db-1 unmuted after the delete",
        |a| a["muted"] == false,
    )
    .await;
    ws_until(
        &mut ws,
        "db-1:cpu_high",
        "db-1 unmuted over the socket",
        |a| a["muted"] == false,
    )
    .await;
}

#[tokio::test]
async fn silences_held_are_bounded_and_invalid_ones_counted() {
    let env = env(false).await;
    env.js
        .get_or_create_stream(streams::alerts())
        .await
        .expect("ALERTS");
    let kv = sysmonstm_kit::jetstream::ensure_kv(&env.js, streams::silences_bucket())
        .await
        .expect("silences bucket");
    let cfg = GatewayConfig {
        max_silences: 2,
        ..env.config()
    };
    let (app, shared, _running) = start(&env, cfg).await;
    let far = now_ms() + 3_600_000;
    put(&kv, &silence("a", "a-*", None, far)).await;
    put(&kv, &silence("b", "b-*", None, far)).await;
    put(&kv, &silence("c", "c-*", None, far)).await;
    kv.put("bad", "{\"id\":\"bad\"}".into())
        .await
        .expect("stored");
    let refused = |r: &str| {
        shared
            .counters
            .silences_refused
            .with_label_values(&[r])
            .get()
    };
    sysmonstm_testkit::eventually(
        WAIT,
        "the third refused, the invalid one counted",
        || async { (refused("max_silences") == 1 && refused("invalid") == 1).then_some(()) },
    )
    .await;
    assert_eq!(shared.counters.silences.get(), 2);
    fire(&env.js, "b-1", "cpu_high", 0).await;
    fire(&env.js, "c-1", "cpu_high", 0).await;
    live_until(&app, "b-1:cpu_high", "b-1 muted", |a| a["muted"] == true).await;
    let c = live_until(&app, "c-1:cpu_high", "c-1 shown", |_| true).await;
    assert_eq!(
        c["muted"], false,
        "a silence beyond max_silences counted: {c}"
    );
    // Room again once one goes.
    kv.delete("a").await.expect("deleted");
    put(&kv, &silence("c", "c-*", None, far)).await;
    live_until(&app, "c-1:cpu_high", "c-1 muted once there is room", |a| {
        a["muted"] == true
    })
    .await;
}

/// The persister's schema, applied as the persister applies it.
const BASELINE: &str = include_str!("../../persister/migrations/0001_baseline.sql");

#[tokio::test]
async fn a_stored_event_is_muted_when_a_silence_covered_it_at_its_time() {
    use sqlx::ConnectOptions as _;
    let env = env(true).await;
    let db = env.db.as_ref().expect("database").url().to_owned();
    let opts: sqlx::postgres::PgConnectOptions = db.parse().expect("database URL");
    let mut conn = opts
        .options([("sysmon.storage", "plain")])
        .connect()
        .await
        .expect("connect");
    sqlx::raw_sql(BASELINE)
        .execute(&mut conn)
        .await
        .expect("the persister's migration");
    // web-1 ten minutes ago (in the silence) and three hours ago (before
    // it); db-1 ten minutes ago (another machine).
    for (machine, ago, id) in [
        ("web-1", "10 minutes", "in"),
        ("web-1", "3 hours", "before"),
        ("db-1", "10 minutes", "other"),
    ] {
        sqlx::query(
            "INSERT INTO alerts (machine_id, rule, severity, state, metric, value, threshold, \
                 since, ts, message, msg_id) \
             VALUES ($1, 'cpu_high', 'critical', 'firing', 'cpu', 97.5, 90, \
                     now() - $2::interval, now() - $2::interval, 'CPU above 90 %', $3)",
        )
        .bind(machine)
        .bind(ago)
        .bind(id)
        .execute(&mut conn)
        .await
        .expect("stored alert");
    }
    let kv = sysmonstm_kit::jetstream::ensure_kv(&env.js, streams::silences_bucket())
        .await
        .expect("silences bucket");
    let s = Silence {
        starts_ms: now_ms() - 3_600_000,
        ..silence("swap", "web-*", None, now_ms() + 3_600_000)
    };
    put(&kv, &s).await;
    let (app, _shared, _running) = start(&env, env.config()).await;
    let by_age = sysmonstm_testkit::eventually(WAIT, "the stored event marked", || async {
        let resp = app
            .clone()
            .oneshot(
                Request::get("/api/alerts")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("router answers");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&body).ok()?;
        let rows = v["alerts"].as_array()?.clone();
        (rows.len() == 3 && rows.iter().any(|r| r["muted"] == true)).then_some(rows)
    })
    .await;
    let find = |machine: &str, newest: bool| {
        let mut rows: Vec<&Value> = by_age
            .iter()
            .filter(|r| r["machine_id"] == machine)
            .collect();
        rows.sort_by_key(|r| r["timestamp_ms"].as_i64());
        if newest {
            rows.last().copied()
        } else {
            rows.first().copied()
        }
        .cloned()
        .expect("row")
    };
    let inside = find("web-1", true);
    assert_eq!(inside["muted"], true, "{inside}");
    assert_eq!(inside["silence"]["id"], "swap", "{inside}");
    let before = find("web-1", false);
    assert_eq!(before["muted"], false, "before the silence: {before}");
    assert!(before.get("silence").is_none(), "{before}");
    assert_eq!(find("db-1", true)["muted"], false);
}
