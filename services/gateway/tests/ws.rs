//! The WebSocket against a real nats-server and a gateway on a real socket:
//! the initial state arrives, then live updates; a client narrows to one
//! machine; a client that never reads does not delay another (measured);
//! a client that stops answering pings is closed; a foreign Origin is refused.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, WAIT, env, publish_snapshot, wait_latest};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use sysmonstm_gateway::{Gateway, GatewayConfig};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: std::net::SocketAddr) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("WebSocket connects")
        .0
}

/// The next batch of updates (skipping control frames).
async fn next_batch(ws: &mut Ws) -> Vec<Value> {
    next_batch_by(ws, tokio::time::Instant::now() + WAIT, "an update").await
}

/// The next batch of updates before `deadline`. Control frames do not extend
/// the wait: a ping every 20 s must not keep a test waiting for ever.
async fn next_batch_by(ws: &mut Ws, deadline: tokio::time::Instant, what: &str) -> Vec<Value> {
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str::<Vec<Value>>(&t).expect("a JSON array of updates");
        }
    }
}

/// Reads until `pred` holds for some update; returns it.
async fn until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(u) = next_batch_by(ws, deadline, what)
            .await
            .into_iter()
            .find(|u| pred(u))
        {
            return u;
        }
    }
}

fn is(u: &Value, kind: &str, machine: &str, seq: u64) -> bool {
    u["type"] == kind
        && u["data"]["machine_id"] == machine
        && u["data"]["seq"].as_u64() >= Some(seq)
}

async fn start(env: &common::Env, cfg: GatewayConfig) -> sysmonstm_gateway::Running {
    Gateway::connect(cfg)
        .await
        .expect("connects")
        .start(env.shutdown.clone())
        .await
        .expect("binds")
}

#[tokio::test]
async fn initial_state_then_live_then_one_machine_in_detail() {
    let env = env(false).await;
    let mut agents = Vec::new();
    for m in ["web-1", "web-2", "db-1"] {
        let mut a = Agent::new(m).await;
        a.publish(&env.js).await;
        a.publish_info(&env.js).await;
        agents.push(a);
    }
    // The gateway starts after the snapshots: it must find them through
    // last-per-subject, not by having watched them go by.
    let running = start(&env, env.config()).await;
    let probe = env.gateway().await.1;
    wait_latest(&probe, "db-1", 1).await;
    let gw_shared_ready = || async {
        let r = reqwest_like(running.addr(), "/api/machines").await;
        (r.matches("\"seq\"").count() == 3).then_some(())
    };
    sysmonstm_testkit::eventually(WAIT, "gateway holds three machines", gw_shared_ready).await;

    let mut ws = connect(running.addr()).await;
    let first = next_batch(&mut ws).await;
    let mut summaries: Vec<&str> = first
        .iter()
        .filter(|u| u["type"] == "summary")
        .filter_map(|u| u["data"]["machine_id"].as_str())
        .collect();
    summaries.sort();
    assert_eq!(
        summaries,
        ["db-1", "web-1", "web-2"],
        "initial state: {first:?}"
    );
    assert_eq!(first.iter().filter(|u| u["type"] == "info").count(), 3);
    assert!(
        first.iter().all(|u| u["type"] != "snapshot"),
        "summaries only"
    );

    let live = agents[1].publish(&env.js).await;
    let u = until(&mut ws, "live summary of web-2", |u| {
        is(u, "summary", "web-2", live.seq)
    })
    .await;
    assert_eq!(u["data"]["timestamp_ms"], live.timestamp_ms);

    // Narrow to db-1: its full snapshot first, then only db-1.
    ws.send(Message::Text(
        r#"{"type":"subscribe","machine":"db-1"}"#.into(),
    ))
    .await
    .expect("send");
    let u = until(&mut ws, "db-1 in detail", |u| u["type"] == "snapshot").await;
    assert_eq!(u["data"]["machine_id"], "db-1");
    assert!(u["data"]["filesystems"].is_array());
    agents[0].publish(&env.js).await;
    let d = agents[2].publish(&env.js).await;
    let batch_until_db = {
        let mut seen = Vec::new();
        loop {
            let b = next_batch(&mut ws).await;
            let done = b.iter().any(|u| is(u, "snapshot", "db-1", d.seq));
            seen.extend(b);
            if done {
                break seen;
            }
        }
    };
    assert!(
        batch_until_db
            .iter()
            .filter(|u| u["type"] == "snapshot" || u["type"] == "summary")
            .all(|u| u["data"]["machine_id"] == "db-1"),
        "narrowed to db-1: {batch_until_db:?}"
    );
    // Back to the summary of all.
    ws.send(Message::Text(
        r#"{"type":"subscribe","machine":null}"#.into(),
    ))
    .await
    .expect("send");
    until(&mut ws, "summaries again", |u| {
        u["type"] == "summary" && u["data"]["machine_id"] == "web-1"
    })
    .await;
}

/// A minimal HTTP GET over a raw socket (the gateway under test is real).
async fn reqwest_like(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}

/// Publish → receipt of `machine`'s summary in `ws`, `n` times.
async fn latencies(env: &common::Env, agent: &mut Agent, ws: &mut Ws, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let snap = agent.sample();
        let t0 = Instant::now();
        publish_snapshot(&env.js, &snap).await;
        until(ws, "the probe's summary", |u| {
            is(u, "summary", agent.id.as_str(), snap.seq)
        })
        .await;
        out.push(t0.elapsed());
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_delay_another() {
    let env = env(false).await;
    let running = start(&env, env.config()).await;
    let mut probe = Agent::new("probe").await;
    let mut flood = Agent::new("flood").await;
    let mut fast = connect(running.addr()).await;
    // Settle: one update through before measuring.
    let _ = latencies(&env, &mut probe, &mut fast, 3).await;
    let before = latencies(&env, &mut probe, &mut fast, 30).await;

    // The stuck client looks at `flood` in full detail and never reads; the
    // flood fills its socket buffers (several MB) so its writer is blocked.
    let mut stuck = connect(running.addr()).await;
    stuck
        .send(Message::Text(
            r#"{"type":"subscribe","machine":"flood"}"#.into(),
        ))
        .await
        .expect("send");
    let flood_snap = flood.sample();
    let big = {
        let mut s = flood_snap.clone();
        // Detail frames of ~40 KB: real values, many of them.
        let procs = s.top_cpu.clone();
        for _ in 0..60 {
            s.top_cpu.extend(procs.iter().cloned());
            s.top_memory.extend(procs.iter().cloned());
        }
        s
    };
    let shared_probe = env.gateway().await.1;
    for i in 0..600u64 {
        let mut s = big.clone();
        s.seq = flood_snap.seq + i;
        s.timestamp_ms = flood_snap.timestamp_ms + i as i64;
        publish_snapshot(&env.js, &s).await;
    }
    wait_latest(&shared_probe, "flood", flood_snap.seq + 599).await;
    let during = latencies(&env, &mut probe, &mut fast, 30).await;

    let med = |v: &[Duration]| v[v.len() / 2];
    let max = |v: &[Duration]| v[v.len() - 1];
    eprintln!(
        "publish→receipt with no stuck client: median {:?} max {:?}; with a stuck client: median {:?} max {:?}",
        med(&before),
        max(&before),
        med(&during),
        max(&during)
    );
    assert!(
        med(&during) <= med(&before) * 3 + Duration::from_millis(20),
        "a stuck client slowed another: median {:?} → {:?}",
        med(&before),
        med(&during)
    );
    assert!(
        max(&during) < Duration::from_millis(500),
        "worst {:?}",
        max(&during)
    );
    // And the stuck client was really stuck: its updates were coalesced.
    let metrics = reqwest_like(running.addr(), "/metrics").await;
    let coalesced: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sysmon_gateway_ws_coalesced_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("counter exported");
    assert!(
        coalesced > 0,
        "the stuck client's queue coalesced nothing:\n{metrics}"
    );
    // Now read the stuck client: it gets the latest flood snapshot, but not
    // all 600 (the ones that came while it was stuck were coalesced).
    let last = flood_snap.seq + 599;
    let mut got = 0u64;
    loop {
        let b = next_batch(&mut stuck).await;
        got += b.iter().filter(|u| u["type"] == "snapshot").count() as u64;
        if b.iter().any(|u| is(u, "snapshot", "flood", last)) {
            break;
        }
    }
    eprintln!("the stuck client received {got} of 600 flood snapshots, the last included");
    assert!(got < 600, "nothing was coalesced for the stuck client");
    drop(stuck);
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed() {
    let env = env(false).await;
    let cfg = GatewayConfig {
        ws_ping_s: 1,
        ..env.config()
    };
    let running = start(&env, cfg).await;
    let silent = connect(running.addr()).await;
    // tungstenite answers pings only while the socket is read; this one is not.
    let metric = || async {
        let m = reqwest_like(running.addr(), "/metrics").await;
        m.lines()
            .find_map(|l| l.strip_prefix("sysmon_gateway_ws_closed_stuck_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|v| *v >= 1)
    };
    let t0 = Instant::now();
    sysmonstm_testkit::eventually(Duration::from_secs(10), "the silent client closed", metric)
        .await;
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "closed before three ping intervals"
    );
    // A client that reads (and so answers pings) stays.
    let mut reading = connect(running.addr()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), reading.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                panic!("reading client was closed")
            }
            _ => {}
        }
    }
    drop(silent);
}

#[tokio::test]
async fn a_foreign_origin_is_refused() {
    let env = env(false).await;
    let cfg = GatewayConfig {
        allowed_origins: vec!["https://dash.example.com".into()],
        ..env.config()
    };
    let running = start(&env, cfg).await;
    let addr = running.addr();
    let with_origin = |o: &str| {
        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("Origin", o.parse().expect("header"));
        req
    };
    let err = tokio_tungstenite::connect_async(with_origin("http://evil.example"))
        .await
        .expect_err("refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        e => panic!("expected a 403, got {e}"),
    }
    tokio_tungstenite::connect_async(with_origin(&format!("http://{addr}")))
        .await
        .expect("same origin is allowed");
    tokio_tungstenite::connect_async(with_origin("https://dash.example.com"))
        .await
        .expect("a configured origin is allowed");
    let metrics = reqwest_like(addr, "/metrics").await;
    assert!(
        metrics.contains("sysmon_gateway_ws_origin_refused_total 1"),
        "{metrics}"
    );
}
