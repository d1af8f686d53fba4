//! `sysmonstm-gateway --edge` against a real hub and edge linked by a leaf
//! node (operator mode, the edge gateway's own credential), with no
//! PostgreSQL configured or running anywhere:
//!
//! * machines, live WebSocket updates, history and alerts come from the
//!   edge's sourced streams alone;
//! * every method but GET/HEAD on every path (the hub gateway's routes,
//!   read from `src/lib.rs`, its write routes among them) is refused;
//! * one address over its request allowance gets 429 while another is
//!   served;
//! * machines off the allow-list appear in no answer and no live message,
//!   and listed ones only under their public names.

#[path = "edge_pair/mod.rs"]
mod edge_pair;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use edge_pair::{EdgePair, WAIT};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use serde_json::Value;
use sysmonstm_gateway::{Gateway, GatewayConfig, Shared};
use sysmonstm_testkit::{NatsServer, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

struct Served {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn serve(cfg: GatewayConfig) -> Served {
    let gw = Gateway::connect(cfg).await.expect("gateway");
    let shared = gw.shared();
    let shutdown = CancellationToken::new();
    let running = gw.start(shutdown.clone()).await.expect("serves");
    Served {
        addr: running.addr(),
        shared,
        shutdown,
    }
}

/// One HTTP/1.0 request from source address `from` (all of 127/8 is
/// loopback on Linux): status, headers (lowercase names), body.
async fn http_from(
    from: IpAddr,
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> (u16, HashMap<String, String>, String) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(from, 0))
        .expect("bind the source");
    let mut s = sock.connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 2\r\n\
         Content-Type: application/json\r\nAuthorization: Bearer edge-test-token-0123456789\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_from([127, 0, 0, 1].into(), addr, "GET", path).await;
    (status, body)
}

async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(addr: SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("WebSocket")
        .0
}

/// Reads WebSocket messages until `done` holds for one update; returns
/// every message's text read on the way.
async fn ws_until(ws: &mut Ws, what: &str, done: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(msg) = ws.next().await {
            let msg = msg.expect("WebSocket message");
            let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
                continue;
            };
            let updates: Vec<Value> = serde_json::from_str(&t).expect("a JSON array");
            seen.push(t.to_string());
            if updates.iter().any(&done) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "over the WebSocket: {what}; seen {seen:?}"
    );
    seen
}

fn summary_of(machine: &str, seq: u64) -> impl Fn(&Value) -> bool {
    let machine = machine.to_owned();
    move |u: &Value| {
        u["type"] == "summary"
            && u["data"]["machine_id"] == machine.as_str()
            && u["data"]["seq"] == seq
    }
}

/// Waits until `/api/machines` shows `machine` with its snapshot `seq`.
async fn machine_at(addr: SocketAddr, machine: &str, seq: u64) {
    eventually(
        WAIT,
        &format!("{machine} at seq {seq} at the edge"),
        || async {
            let (status, body) = get(addr, "/api/machines").await;
            let v: Value = serde_json::from_str(&body).ok()?;
            (status == 200
                && v["machines"].as_array()?.iter().any(|m| {
                    m["machine_id"] == machine && m["latest"]["seq"].as_u64() == Some(seq)
                }))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_machines_live_updates_history_and_alerts_without_postgresql() {
    let mut pair = EdgePair::start().await;
    let t0 = now_ms() - 100_000;
    for seq in 1..=20u64 {
        let ts = t0 + (seq as i64) * 5_000;
        pair.snapshot("web-1", seq, ts, seq as f32 * 2.0).await;
    }
    // Facts of a machine with no snapshot in the window (MACHINES keeps
    // facts for ever), before web-1's.
    pair.info("old-box", "old-box").await;
    pair.info("web-1", "web-1").await;
    pair.alert("web-1", "cpu_high", "cpu 97.5 > 90").await;

    let edge = serve(pair.gateway_config()).await;
    let addr = edge.addr;
    machine_at(addr, "web-1", 20).await;
    assert!(edge.shared.pool.is_none(), "the edge has no database pool");
    let ready = get_json(addr, "/ready").await;
    assert_eq!(ready["nats"], true, "{ready}");
    assert!(ready["postgres"].is_null(), "{ready}");
    let mode = get_json(addr, "/api/mode").await;
    assert_eq!(mode["read_only"], true, "{mode}");
    eventually(WAIT, "web-1's facts at the edge", || async {
        let m = get_json(addr, "/api/machines/web-1").await;
        (m["info"]["hostname"] == "web-1").then_some(())
    })
    .await;
    let listed = get_json(addr, "/api/machines").await;
    let ids: Vec<&str> = listed["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter_map(|m| m["machine_id"].as_str())
        .collect();
    assert_eq!(ids, ["web-1"], "the list is the window's");
    // What runs on the machine stays at the hub: no process in the public
    // copy, by default, in the answer or in any live message.
    let detail = get_json(addr, "/api/machines/web-1/metrics").await;
    assert_eq!(detail["seq"], 20, "{detail}");
    assert_eq!(detail["top_cpu"], serde_json::json!([]), "{detail}");
    assert_eq!(detail["top_memory"], serde_json::json!([]), "{detail}");
    assert!(!detail.to_string().contains("secret-batch-job"), "{detail}");

    // Live: a new snapshot at the hub reaches a WebSocket client at the edge.
    let mut client = ws(addr).await;
    ws_until(&mut client, "the latest of web-1", summary_of("web-1", 20)).await;
    pair.snapshot("web-1", 21, now_ms(), 50.0).await;
    ws_until(
        &mut client,
        "web-1's next snapshot, live",
        summary_of("web-1", 21),
    )
    .await;

    // History from the edge's window: every snapshot read (the range fits
    // the read budget), one point per 1 s step that has one.
    let (from, to) = (t0, t0 + 100_000);
    let path = format!("/api/machines/web-1/history?metric=cpu&from={from}&to={to}");
    let h = get_json(addr, &path).await;
    assert_eq!(h["resolution"], "raw", "{h}");
    assert_eq!(h["points"], 20, "{h}");
    assert_eq!(h["avg"][0], 2.0, "{h}");
    assert_eq!(h["max"][19], 40.0, "{h}");
    assert_eq!(h["ts"][0], t0 + 5_000, "{h}");

    // Alerts from the edge's ALERTS, once the edge has sourced the event
    // (it crosses the leaf link after the hub stored it).
    let alerts = eventually(WAIT, "the alert event at the edge", || async move {
        let alerts = get_json(addr, "/api/alerts").await;
        (alerts["alerts"][0]["machine_id"] == "web-1").then_some(alerts)
    })
    .await;
    let a = &alerts["alerts"][0];
    assert_eq!(a["machine_id"], "web-1", "{alerts}");
    assert_eq!(a["rule"], "cpu_high", "{alerts}");
    assert_eq!(a["state"], "firing", "{alerts}");
    // No silences reach the edge: nothing is muted there.
    assert_eq!(a["muted"], false, "{alerts}");
    let none = get_json(addr, "/api/alerts?state=resolved").await;
    assert_eq!(none["alerts"].as_array().map(Vec::len), Some(0), "{none}");
    let live = get_json(addr, "/api/alerts/live").await;
    assert_eq!(live["alerts"][0]["rule"], "cpu_high", "{live}");
    assert_eq!(live["alerts"][0]["muted"], false, "{live}");

    // A range longer than the read budget: one sampled snapshot per step,
    // never more gets than steps.
    let sampled = serve(GatewayConfig {
        edge_max_read: 5,
        ..pair.gateway_config()
    })
    .await;
    machine_at(sampled.addr, "web-1", 21).await;
    let h = get_json(sampled.addr, &path).await;
    assert_eq!(h["resolution"], "sampled", "{h}");
    assert_eq!(h["points"], 20, "each stored snapshot once: {h}");
    assert_eq!(h["avg"][4], 10.0, "{h}");
}

/// The hub's METRICS split into four partitions: the edge's one METRICS
/// sources them all and keeps their subjects (`sysmon.metrics.<p>.<m>`),
/// and the edge gateway at `metrics_partitions = 4` shows a machine of
/// every partition, its history (read whole and sampled, under its
/// partition's subject) and its next snapshot live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_reads_every_partition_of_the_hubs_metrics() {
    let parts = sysmonstm_schemas::streams::Partitions::new(4).expect("4");
    let mut pair = EdgePair::start_partitioned(parts).await;
    let machines: Vec<String> = (0..parts.get())
        .map(|p| {
            (0..1000)
                .map(|i| format!("host-{i}"))
                .find(|n| parts.of(n) == p)
                .expect("a machine in every partition")
        })
        .collect();
    let t0 = now_ms() - 100_000;
    for (k, m) in machines.iter().enumerate() {
        for seq in 1..=5u64 {
            let cpu = (k * 10) as f32 + seq as f32;
            pair.snapshot(m, seq, t0 + (seq as i64) * 5_000, cpu).await;
        }
    }
    // An operator who wants the processes public says so.
    let edge = serve(sysmonstm_gateway::GatewayConfig {
        edge_show_processes: true,
        ..pair.gateway_config()
    })
    .await;
    let addr = edge.addr;
    for m in &machines {
        machine_at(addr, m, 5).await;
    }
    let detail = get_json(addr, &format!("/api/machines/{}/metrics", machines[0])).await;
    assert_eq!(detail["top_cpu"][0]["name"], "secret-batch-job", "{detail}");
    let (from, to) = (t0, t0 + 100_000);
    for (k, m) in machines.iter().enumerate() {
        let path = format!("/api/machines/{m}/history?metric=cpu&from={from}&to={to}");
        let h = get_json(addr, &path).await;
        assert_eq!(h["resolution"], "raw", "{m}: {h}");
        assert_eq!(h["points"], 5, "{m}: {h}");
        assert_eq!(h["avg"][0], (k * 10 + 1) as f64, "{m}: {h}");
        assert_eq!(h["ts"][4], t0 + 25_000, "{m}: {h}");
    }
    let sampled = serve(GatewayConfig {
        edge_max_read: 2,
        ..pair.gateway_config()
    })
    .await;
    let m = &machines[3];
    machine_at(sampled.addr, m, 5).await;
    let h = get_json(
        sampled.addr,
        &format!("/api/machines/{m}/history?metric=cpu&from={from}&to={to}"),
    )
    .await;
    assert_eq!(h["resolution"], "sampled", "{h}");
    assert_eq!(h["points"], 5, "each stored snapshot once: {h}");
    assert_eq!(h["max"][4], 35.0, "{h}");

    let mut client = ws(addr).await;
    ws_until(&mut client, "the latest of a machine", summary_of(m, 5)).await;
    pair.snapshot(m, 6, now_ms(), 50.0).await;
    ws_until(&mut client, "its next snapshot, live", summary_of(m, 6)).await;
}

/// The routes of the hub's gateway, read from its router, with their
/// parameters filled in, and paths no route serves.
fn every_path() -> Vec<String> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs"))
        .expect("src/lib.rs");
    let mut paths: Vec<String> = src
        .split(".route(")
        .skip(1)
        .filter_map(|r| r.trim_start().strip_prefix('"')?.split('"').next())
        .map(|p| {
            p.replace("{id}", "web-1")
                .replace("{name}", "cpu_high")
                .replace("{*rest}", "x/y")
        })
        .collect();
    assert!(
        paths.iter().any(|p| p == "/api/rules/cpu_high"),
        "the hub's rule write route is among them: {paths:?}"
    );
    paths.extend(
        [
            "/",
            "/index.html",
            "/rules",
            "/machine/web-1",
            "/assets/app.js",
            "/assets/app.css",
            "/api/alerts/ack",
            "/api/machines/web-1/forget",
            "/nothing/here",
        ]
        .map(String::from),
    );
    paths.sort();
    paths.dedup();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_but_get_on_every_path_is_refused() {
    let mut pair = EdgePair::start().await;
    pair.snapshot("web-1", 1, now_ms(), 10.0).await;
    let gw = Gateway::connect(pair.gateway_config())
        .await
        .expect("gateway");
    let router = gw.router();
    let paths = every_path();
    let methods = [
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::TRACE,
        Method::CONNECT,
        Method::from_bytes(b"PROPFIND").expect("method"),
        Method::from_bytes(b"PURGE").expect("method"),
    ];
    let mut answered = Vec::new();
    for path in &paths {
        for method in &methods {
            let req = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .header("authorization", "Bearer edge-test-token-0123456789")
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"name":"cpu_high","metric":"cpu","op":">","threshold":1}"#,
                ))
                .expect("request");
            let resp = router.clone().oneshot(req).await.expect("answer");
            let status = resp.status();
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert!(
                status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND,
                "{method} {path} → {status} {}",
                String::from_utf8_lossy(&body)
            );
            answered.push(status);
        }
        // The path itself is served read-only (or is a 404), never refused
        // for its method.
        let req = Request::builder()
            .uri(path.as_str())
            .body(Body::empty())
            .expect("request");
        let status = router.clone().oneshot(req).await.expect("answer").status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "GET {path}");
    }
    assert_eq!(answered.len(), paths.len() * methods.len());

    // Over a real socket too, where the rule writes of the hub live.
    let shutdown = CancellationToken::new();
    let running = gw.start(shutdown.clone()).await.expect("serves");
    for (method, path) in [
        ("PUT", "/api/rules/cpu_high"),
        ("POST", "/api/rules/cpu_high"),
        ("DELETE", "/api/rules/cpu_high"),
        ("POST", "/api/machines"),
        ("POST", "/ws"),
    ] {
        let (status, headers, body) =
            http_from([127, 0, 0, 1].into(), running.addr(), method, path).await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    }
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_over_its_allowance_gets_429_and_another_is_served() {
    sysmonstm_kit::telemetry::init_for_tests();
    let nats = NatsServer::start();
    let mut cfg = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        edge: true,
        http_requests_per_s: 1,
        http_burst: 3,
        ..Default::default()
    };
    cfg.nats.servers = vec![nats.url()];
    let edge = serve(cfg).await;
    let (a, b): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
    // The burst is served, then 429 (a slow machine may refill a token or
    // two in between: a few more tries, never an open tap).
    let mut served = 0;
    let (headers, body) = loop {
        let (status, headers, body) = http_from(a, edge.addr, "GET", "/api/machines").await;
        match status {
            200 => served += 1,
            429 => break (headers, body),
            other => panic!("{other}: {body}"),
        }
        assert!(served <= 6, "still served after {served} requests");
    };
    assert!(served >= 3, "the burst of 3 is served, {served} were");
    assert!(body.contains("too many requests"), "{body}");
    let retry: u64 = headers
        .get("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "{retry}");
    // A WebSocket connect takes from the same allowance (emptied again
    // right before it).
    for _ in 0..10 {
        if http_from(a, edge.addr, "GET", "/health").await.0 == 429 {
            break;
        }
    }
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(a, 0)).expect("bind");
    let stream = sock.connect(edge.addr).await.expect("connect");
    let refused = tokio_tungstenite::client_async(format!("ws://{}/ws", edge.addr), stream).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS)
        }
        other => panic!("the WebSocket over the allowance: {other:?}"),
    }
    // Another address has its own allowance: a request and a live client.
    assert_eq!(http_from(b, edge.addr, "GET", "/api/mode").await.0, 200);
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(b, 0)).expect("bind");
    let stream = sock.connect(edge.addr).await.expect("connect");
    let (mut client, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", edge.addr), stream)
        .await
        .expect("another address opens a live feed");
    client.close(None).await.ok();
    let rate = edge
        .shared
        .counters
        .http_refused
        .with_label_values(&["rate"])
        .get();
    assert!(rate >= 2, "counted by reason: {rate}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_off_the_allow_list_never_appear_and_listed_ones_only_by_their_public_name() {
    const HIDDEN: [&str; 3] = ["secret-box", "db-internal-3", "corp.internal"];
    let mut pair = EdgePair::start().await;
    let t0 = now_ms() - 30_000;
    // The hidden machine first in every stream: what the edge shows later
    // was sourced after it.
    for m in ["secret-box", "db-internal-3", "web-1"] {
        pair.info(m, &format!("{m}.corp.internal")).await;
        for seq in 1..=3u64 {
            pair.snapshot(m, seq, t0 + seq as i64 * 1000, 20.0).await;
        }
        pair.alert(m, "cpu_high", &format!("{m}: cpu 97.5 > 90"))
            .await;
    }
    let mut cfg = pair.gateway_config();
    cfg.edge_machines = [("db-internal-3", "db"), ("web-1", "web-1")]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .into();
    let edge = serve(cfg).await;
    let addr = edge.addr;
    machine_at(addr, "db", 3).await;
    machine_at(addr, "web-1", 3).await;
    eventually(WAIT, "both listed machines' alerts", || async {
        let v = get_json(addr, "/api/alerts/live").await;
        (v["alerts"].as_array()?.len() == 2).then_some(())
    })
    .await;

    let clean = |what: &str, text: &str| {
        for h in HIDDEN {
            assert!(!text.contains(h), "{what} names {h:?}: {text}");
        }
    };
    let machines = get_json(addr, "/api/machines").await;
    let ids: Vec<&str> = machines["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter_map(|m| m["machine_id"].as_str())
        .collect();
    assert_eq!(ids, ["db", "web-1"]);
    eventually(WAIT, "db's facts under its public name", || async {
        let db = get_json(addr, "/api/machines/db").await;
        (db["info"]["hostname"] == "db").then_some(())
    })
    .await;
    let alerts = get_json(addr, "/api/alerts").await;
    let messages: Vec<&str> = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter_map(|a| a["message"].as_str())
        .collect();
    assert_eq!(messages, ["web-1: cpu 97.5 > 90", "db: cpu 97.5 > 90"]);
    let history = format!(
        "/api/machines/db/history?metric=cpu&from={}&to={}",
        t0,
        t0 + 10_000
    );
    let h = get_json(addr, &history).await;
    assert_eq!(h["points"], 3, "{h}");
    for path in [
        "/api/machines",
        "/api/machines/db",
        "/api/machines/db/metrics",
        "/api/machines/web-1",
        "/api/alerts",
        "/api/alerts?machine=db",
        "/api/alerts/live",
        history.as_str(),
    ] {
        let (status, body) = get(addr, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        clean(path, &body);
    }
    for m in ["secret-box", "db-internal-3"] {
        for path in [
            format!("/api/machines/{m}"),
            format!("/api/machines/{m}/metrics"),
            format!(
                "/api/machines/{m}/history?metric=cpu&from={t0}&to={}",
                t0 + 10_000
            ),
        ] {
            let (status, body) = get(addr, &path).await;
            assert_eq!(status, 404, "{path}: {body}");
        }
        let (_, body) = get(addr, &format!("/api/alerts?machine={m}")).await;
        assert_eq!(body, r#"{"alerts":[]}"#, "{m}");
    }

    // Live: the state on connect and the next round of every machine.
    let mut client = ws(addr).await;
    let mut seen = ws_until(&mut client, "db's latest", summary_of("db", 3)).await;
    client
        .send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"subscribe","machine":null}"#.into(),
        ))
        .await
        .expect("subscribe");
    for m in ["secret-box", "db-internal-3", "web-1"] {
        pair.snapshot(m, 4, now_ms(), 30.0).await;
    }
    seen.extend(ws_until(&mut client, "web-1's next snapshot", summary_of("web-1", 4)).await);
    assert!(
        seen.iter().any(|t| t.contains(r#""machine_id":"db""#)),
        "db is shown: {seen:?}"
    );
    for t in &seen {
        clean("a WebSocket message", t);
    }
    assert!(
        // Its facts, its latest snapshot of the window, its alert, its
        // live snapshot.
        edge.shared.counters.machines_hidden.get() >= 4,
        "the hidden machine's messages are counted"
    );
}

/// The edge faces the internet: its counters are not on the public
/// listener, only on `metrics_listen` for the operator's Prometheus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_metrics_only_on_its_own_listener() {
    let pair = EdgePair::start().await;
    let gw = Gateway::connect(GatewayConfig {
        metrics_listen: "127.0.0.1:0".into(),
        ..pair.gateway_config()
    })
    .await
    .expect("gateway");
    let shutdown = CancellationToken::new();
    let running = gw.start(shutdown.clone()).await.expect("serves");
    let (status, body) = get(running.addr(), "/metrics").await;
    assert_eq!(status, 404, "public /metrics: {body}");
    assert!(!body.contains("sysmonstm_gateway_"), "{body}");
    let ops = running.metrics_addr().expect("metrics listener");
    let (status, body) = get(ops, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("sysmonstm_gateway_"), "{body}");
    assert_eq!(get(ops, "/health").await.0, 200);
    shutdown.cancel();
}
