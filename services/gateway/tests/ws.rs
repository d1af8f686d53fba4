//! The WebSocket against a real nats-server and a gateway on a real socket:
//! the initial state arrives, then live updates; a client narrows to one
//! machine; a client that never reads does not delay another (measured);
//! a client that stops answering pings is closed; a foreign Origin is refused.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, WAIT, env, env_partitioned, publish_snapshot, wait_latest};
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
async fn next_batch_by<S>(ws: &mut S, deadline: tokio::time::Instant, what: &str) -> Vec<Value>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
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
        .find_map(|l| l.strip_prefix("sysmonstm_gateway_ws_coalesced_total "))
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
            .find_map(|l| l.strip_prefix("sysmonstm_gateway_ws_closed_stuck_total "))
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
        metrics.contains("sysmonstm_gateway_ws_origin_refused_total 1"),
        "{metrics}"
    );
}

/// Publishes raw bytes on `subject` through JetStream.
async fn publish_raw(env: &common::Env, subject: String, payload: Vec<u8>) {
    env.js
        .publish(subject, payload.into())
        .await
        .expect("sent")
        .await
        .expect("acked");
}

/// What the accept rule refuses never reaches a cache, a client or the
/// order of a machine's snapshots: snapshots dated in the year ~8000 and at
/// `i64::MAX` (with a seq far ahead, so that neither time nor seq may let
/// them move the clock), ids the contract does not allow (upper case, 300
/// characters), a payload over the size limit and facts on a bad subject.
/// The current snapshots that follow are what the API and the WebSocket show.
#[tokio::test]
async fn refused_messages_reach_no_cache_no_client_and_move_no_clock() {
    use prost::Message as _;
    let env = env(false).await;
    let running = start(&env, env.config()).await;
    let addr = running.addr();
    let mut a = Agent::new("web-1").await;
    let first = a.publish(&env.js).await;
    let mut ws = connect(addr).await;
    until(&mut ws, "the first snapshot", |u| {
        is(u, "summary", "web-1", first.seq)
    })
    .await;

    let year_8000_ms = 6_000 * 365 * 86_400_000 + first.timestamp_ms;
    for (i, ts) in [year_8000_ms, i64::MAX].into_iter().enumerate() {
        let mut f = first.clone();
        f.seq = first.seq + 1_000_000 + i as u64;
        f.timestamp_ms = ts;
        publish_snapshot(&env.js, &f).await;
    }
    let long = "a".repeat(300);
    for id in ["UPPER-Case", long.as_str()] {
        let mut s = first.clone();
        s.machine_id = id.to_owned();
        publish_raw(&env, format!("sysmon.metrics.{id}"), s.encode_to_vec()).await;
        let info = sysmonstm_schemas::v1::MachineInfo {
            machine_id: id.to_owned(),
            hostname: "evil".into(),
            timestamp_ms: first.timestamp_ms,
            ..Default::default()
        };
        publish_raw(&env, format!("sysmon.info.{id}"), info.encode_to_vec()).await;
    }
    let mut huge = first.clone();
    huge.seq = first.seq + 2_000_000;
    huge.top_cpu = (0..20_000)
        .map(|pid| sysmonstm_schemas::v1::Process {
            pid,
            name: "x".repeat(8),
            ..Default::default()
        })
        .collect();
    let huge = huge.encode_to_vec();
    assert!(huge.len() > 64 * 1024 && huge.len() < 1024 * 1024);
    publish_raw(&env, "sysmon.metrics.web-1".into(), huge).await;

    let mut current = Vec::new();
    for _ in 0..3 {
        current.push(a.publish(&env.js).await);
    }
    let last = current.last().expect("three").clone();
    // The live client: every update it got is a current one of web-1.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.iter().any(|u| is(u, "summary", "web-1", last.seq)) {
        seen.extend(next_batch_by(&mut ws, deadline, "the current snapshots").await);
    }
    for u in &seen {
        assert_eq!(u["data"]["machine_id"], "web-1", "{u}");
        assert!(u["data"]["seq"].as_u64() <= Some(last.seq), "{u}");
        assert!(
            u["data"]["timestamp_ms"].as_i64() <= Some(last.timestamp_ms),
            "{u}"
        );
    }

    let (api, body) = reqwest_body(addr, "/api/machines/web-1/metrics").await;
    assert!(api.contains(" 200 "), "{api}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["seq"], last.seq);
    assert_eq!(v["timestamp_ms"], last.timestamp_ms);
    let (_, body) = reqwest_body(addr, "/api/machines").await;
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let ids: Vec<&str> = v["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter_map(|m| m["machine_id"].as_str())
        .collect();
    assert_eq!(ids, ["web-1"], "{body}");
    assert_eq!(v["machines"][0]["online"], true);

    // A new client (a dashboard opened now) gets the current state only.
    let mut fresh = connect(addr).await;
    let initial = next_batch(&mut fresh).await;
    let cards: Vec<(&str, Option<u64>)> = initial
        .iter()
        .filter(|u| u["type"] == "summary" || u["type"] == "info")
        .map(|u| {
            (
                u["data"]["machine_id"].as_str().unwrap_or(""),
                u["data"]["seq"].as_u64(),
            )
        })
        .collect();
    assert!(
        cards.iter().all(|(m, _)| *m == "web-1"),
        "only web-1: {cards:?}"
    );
    assert!(cards.contains(&("web-1", Some(last.seq))), "{cards:?}");

    // Every refusal counted by feed and reason (MACHINES is its own feed,
    // so its count may come a moment later).
    let expected: Vec<String> = [
        ("snapshots", "future", 2),
        ("snapshots", "machine_id", 2),
        ("infos", "machine_id", 2),
        ("snapshots", "oversized", 1),
    ]
    .iter()
    .map(|(what, reason, n)| {
        format!("sysmonstm_gateway_{what}_rejected_total{{reason=\"{reason}\"}} {n}")
    })
    .chain(["sysmonstm_gateway_decode_errors_total 7".to_owned()])
    .collect();
    sysmonstm_testkit::eventually(WAIT, "every refusal counted", || async {
        let metrics = reqwest_like(addr, "/metrics").await;
        expected.iter().all(|l| metrics.contains(l)).then_some(())
    })
    .await;
}

/// Status line and body of a GET.
async fn reqwest_body(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let raw = reqwest_like(addr, path).await;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The value of an unlabelled counter on `/metrics`.
async fn counter(addr: std::net::SocketAddr, name: &str) -> u64 {
    let m = reqwest_like(addr, "/metrics").await;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported:\n{m}"))
}

fn refused_with(r: Result<impl Sized, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, the upgrade was accepted"),
    }
}

#[tokio::test]
async fn connections_are_capped_in_total_and_per_address() {
    let env = env(false).await;
    let per_address = start(
        &env,
        GatewayConfig {
            ws_max_clients: 10,
            ws_max_clients_per_address: 2,
            ..env.config()
        },
    )
    .await;
    let url = format!("ws://{}/ws", per_address.addr());
    let a = connect(per_address.addr()).await;
    let _b = connect(per_address.addr()).await;
    assert_eq!(
        refused_with(tokio_tungstenite::connect_async(&url).await),
        429
    );
    let m = reqwest_like(per_address.addr(), "/metrics").await;
    assert!(
        m.contains(r#"sysmonstm_gateway_ws_refused_total{reason="per_address"} 1"#),
        "{m}"
    );
    // A client that leaves gives its place back.
    drop(a);
    sysmonstm_testkit::eventually(WAIT, "a place again after a client left", || async {
        tokio_tungstenite::connect_async(&url)
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    let total = start(
        &env,
        GatewayConfig {
            ws_max_clients: 2,
            ws_max_clients_per_address: 10,
            ..env.config()
        },
    )
    .await;
    let url = format!("ws://{}/ws", total.addr());
    let _c = connect(total.addr()).await;
    let _d = connect(total.addr()).await;
    assert_eq!(
        refused_with(tokio_tungstenite::connect_async(&url).await),
        503
    );
    let m = reqwest_like(total.addr(), "/metrics").await;
    assert!(
        m.contains(r#"sysmonstm_gateway_ws_refused_total{reason="clients"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_client_message_over_4_kib_closes_that_client_only() {
    let env = env(false).await;
    let running = start(&env, env.config()).await;
    let addr = running.addr();
    let mut other = connect(addr).await;
    let mut big = connect(addr).await;
    // Not understood but within the limit: counted, the client stays.
    big.send(Message::Text("x".repeat(3 * 1024).into()))
        .await
        .expect("send");
    sysmonstm_testkit::eventually(WAIT, "the odd message counted", || async {
        (counter(addr, "sysmonstm_gateway_ws_bad_client_messages_total").await >= 1).then_some(())
    })
    .await;
    big.send(Message::Text("x".repeat(5 * 1024).into()))
        .await
        .expect("send");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, big.next()).await {
            Err(_) => panic!("the client that sent 5 KiB was not closed"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Ok(_))) => {}
        }
    }
    assert!(counter(addr, "sysmonstm_gateway_ws_bad_client_messages_total").await >= 2);
    // The other client still gets live updates.
    let mut a = Agent::new("web-1").await;
    let s = a.publish(&env.js).await;
    until(&mut other, "web-1 live", |u| {
        is(u, "summary", "web-1", s.seq)
    })
    .await;
}

/// Each `subscribe` refills the client's queue from every cache; a client
/// sending thousands of them gets its allowance (a burst, then a few a
/// second) and its latest choice, not thousands of refills.
#[tokio::test]
async fn subscribe_floods_are_limited_and_the_latest_view_wins() {
    let env = env(false).await;
    let running = start(&env, env.config()).await;
    let addr = running.addr();
    let mut agents = Vec::new();
    for m in ["m-0", "m-1", "m-2"] {
        let mut a = Agent::new(m).await;
        a.publish(&env.js).await;
        agents.push(a);
    }
    let probe = env.gateway().await.1;
    for a in &agents {
        wait_latest(&probe, a.id.as_str(), 1).await;
    }
    let ws = connect(addr).await;
    let n = 2000;
    let msgs = (0..n).map(|i| {
        let m = ["m-0", "m-1"][i % 2];
        Ok(Message::Text(
            format!(r#"{{"type":"subscribe","machine":"{m}"}}"#).into(),
        ))
    });
    let (mut tx, mut rx) = ws.split();
    let reading = tokio::spawn(async move {
        let mut details = 0usize;
        loop {
            let b =
                next_batch_by(&mut rx, tokio::time::Instant::now() + WAIT, "m-2 in detail").await;
            details += b.iter().filter(|u| u["type"] == "snapshot").count();
            if b.iter()
                .any(|u| u["type"] == "snapshot" && u["data"]["machine_id"] == "m-2")
            {
                return details;
            }
        }
    });
    let t0 = Instant::now();
    tx.send_all(&mut futures::stream::iter(msgs))
        .await
        .expect("send");
    // What the allowance (burst 10, 2 a second) lets through while sending.
    let allowed = 10 + 2 * t0.elapsed().as_secs() + 2;
    tx.send(Message::Text(
        r#"{"type":"subscribe","machine":"m-2"}"#.into(),
    ))
    .await
    .expect("send");
    let details = reading.await.expect("reader");
    let limited = counter(addr, "sysmonstm_gateway_ws_subscribes_limited_total").await;
    eprintln!("{details} detail snapshots sent for {n} subscribes; {limited} over the allowance");
    assert!(
        limited >= n as u64 - allowed,
        "only {limited} of {n} limited"
    );
    assert!(
        details as u64 <= allowed + 1,
        "{details} refills for one client"
    );
}

/// Each connect sends the client the state of every machine: an address
/// that reconnects in a loop gets its allowance (a burst of four times
/// `ws_connects_per_s`, then that many a second), then 429s.
#[tokio::test]
async fn connects_from_one_address_are_rate_limited() {
    let env = env(false).await;
    let running = start(
        &env,
        GatewayConfig {
            ws_connects_per_s: 1,
            ..env.config()
        },
    )
    .await;
    let url = format!("ws://{}/ws", running.addr());
    let t0 = Instant::now();
    let mut accepted = 0u64;
    let mut refused = 0u64;
    for _ in 0..30 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(refused_with(Err::<(), _>(e)), 429);
                refused += 1;
            }
        }
    }
    let allowed = 4 + t0.elapsed().as_secs() + 1;
    assert!(
        (4..=allowed).contains(&accepted),
        "{accepted} of 30 connects accepted (allowance {allowed})"
    );
    let m = reqwest_like(running.addr(), "/metrics").await;
    let line = format!(r#"sysmonstm_gateway_ws_refused_total{{reason="rate"}} {refused}"#);
    assert!(m.contains(&line), "{line} in\n{m}");
}

/// `sysmonstm machines forget <id>`: the gateway drops the machine from its
/// caches at once, tells every WebSocket client, and answers the asker.
#[tokio::test]
async fn a_forgotten_machine_leaves_the_caches_and_every_client() {
    let env = env(false).await;
    let running = start(&env, env.config()).await;
    let addr = running.addr();
    let mut gone = Agent::new("gone-1").await;
    let mut kept = Agent::new("kept-1").await;
    gone.publish(&env.js).await;
    gone.publish_info(&env.js).await;
    let k = kept.publish(&env.js).await;
    sysmonstm_testkit::eventually(WAIT, "both machines shown", || async {
        let (status, _) = reqwest_body(addr, "/api/machines/gone-1/metrics").await;
        let m = reqwest_like(addr, "/api/machines").await;
        (status.contains("200") && m.contains("kept-1")).then_some(())
    })
    .await;
    let mut ws = connect(addr).await;
    until(&mut ws, "the initial state", |u| u["type"] == "summary").await;

    let client = env.js.client();
    let id = sysmonstm_schemas::MachineId::parse("gone-1").expect("id");
    let reply = tokio::time::timeout(
        WAIT,
        client.request(sysmonstm_schemas::subjects::forget(&id), "".into()),
    )
    .await
    .expect("answered in time")
    .expect("an answer");
    let answer = String::from_utf8_lossy(&reply.payload).into_owned();
    assert!(answer.starts_with("gateway:"), "{answer}");

    until(&mut ws, "the forget update", |u| {
        u["type"] == "forget" && u["data"]["machine_id"] == "gone-1"
    })
    .await;
    let (status, _) = reqwest_body(addr, "/api/machines/gone-1/metrics").await;
    assert!(status.contains("404"), "{status}");
    let (status, _) = reqwest_body(addr, "/api/machines/gone-1").await;
    assert!(status.contains("404"), "{status}");
    let machines = reqwest_like(addr, "/api/machines").await;
    assert!(
        !machines.contains("gone-1") && machines.contains("kept-1"),
        "{machines}"
    );
    // A forget of a token that is no machine id changes nothing and is not
    // answered.
    let bad = tokio::time::timeout(
        Duration::from_secs(1),
        client.request("sysmon.admin.forget.UPPER".to_owned(), "".into()),
    )
    .await;
    assert!(!matches!(bad, Ok(Ok(_))), "an invalid forget was answered");
    assert!(reqwest_like(addr, "/api/machines").await.contains("kept-1"));
    drop(k);
}

/// METRICS split into four partitions (the hub's account maps a machine's
/// `sysmon.metrics.<m>` to `sysmon.metrics.<p>.<m>`, stream `METRICS_<p>`
/// stores it) and the gateway at `metrics_partitions = 4`: the latest
/// snapshot of a machine in every partition is found at start, and each
/// one's next snapshot reaches a WebSocket client live.
#[tokio::test]
async fn every_partition_of_metrics_is_read_and_followed_live() {
    let parts = sysmonstm_schemas::streams::Partitions::new(4).expect("4");
    let env = env_partitioned(parts).await;
    // One machine in each partition.
    let mut agents = Vec::new();
    for p in 0..parts.get() {
        let name = (0..1000)
            .map(|i| format!("host-{i}"))
            .find(|n| parts.of(n) == p)
            .expect("a machine in every partition");
        let mut a = Agent::new(&name).await;
        a.publish(&env.js).await;
        a.publish(&env.js).await;
        agents.push(a);
    }
    for name in parts.names() {
        let mut s = env.js.get_stream(&name).await.expect("partition stream");
        let n = s.info().await.expect("info").state.messages;
        assert_eq!(n, 2, "{name} holds its machine's two snapshots");
    }
    // The gateway starts after the snapshots: it finds them in the streams.
    let running = start(&env, env.config()).await;
    let addr = running.addr();
    let ids: Vec<String> = agents.iter().map(|a| a.id.to_string()).collect();
    sysmonstm_testkit::eventually(WAIT, "every partition's machine listed", || async {
        let (_, body) = reqwest_body(addr, "/api/machines").await;
        let v: Value = serde_json::from_str(&body).ok()?;
        let mut listed: Vec<(String, u64)> = v["machines"]
            .as_array()?
            .iter()
            .filter_map(|m| {
                Some((
                    m["machine_id"].as_str()?.to_owned(),
                    m["latest"]["seq"].as_u64()?,
                ))
            })
            .collect();
        listed.sort();
        let mut want: Vec<(String, u64)> = ids.iter().map(|i| (i.clone(), 2)).collect();
        want.sort();
        (listed == want).then_some(())
    })
    .await;

    let mut ws = connect(addr).await;
    for a in &mut agents {
        let live = a.publish(&env.js).await;
        let id = a.id.to_string();
        until(&mut ws, &format!("live summary of {id}"), |u| {
            is(u, "summary", &id, live.seq)
        })
        .await;
    }
    assert_eq!(
        counter(addr, "sysmonstm_gateway_decode_errors_total").await,
        0
    );

    // A gateway given one stream where the hub has four shows nothing of
    // them, and says so on /metrics (and in its log).
    let wrong = start(
        &env,
        GatewayConfig {
            metrics_partitions: sysmonstm_schemas::streams::Partitions::ONE,
            ..env.config()
        },
    )
    .await;
    let gauge = "sysmonstm_gateway_metrics_streams_unread";
    sysmonstm_testkit::eventually(WAIT, "the four partitions reported unread", || async {
        (counter(wrong.addr(), gauge).await == 4).then_some(())
    })
    .await;
}

/// `{"type":"pause"}` (the dashboard's overview out of sight): the client
/// gets nothing but forgets, then, on its next `subscribe`, the current state
/// of its view first.
#[tokio::test]
async fn a_paused_client_gets_only_forgets_until_it_subscribes_again() {
    let env = env(false).await;
    let running = start(&env, env.config()).await;
    let addr = running.addr();
    let mut live = Agent::new("live-1").await;
    let mut gone = Agent::new("gone-2").await;
    live.publish(&env.js).await;
    gone.publish(&env.js).await;
    sysmonstm_testkit::eventually(WAIT, "both machines shown", || async {
        let m = reqwest_like(addr, "/api/machines").await;
        (m.contains("live-1") && m.contains("gone-2")).then_some(())
    })
    .await;
    let mut ws = connect(addr).await;
    until(&mut ws, "the initial state", |u| {
        u["type"] == "summary" && u["data"]["machine_id"] == "live-1"
    })
    .await;

    // The socket's messages are read in order: once the message after the
    // pause is counted as not understood, the pause has been applied.
    let bad = "sysmonstm_gateway_ws_bad_client_messages_total";
    let before = counter(addr, bad).await;
    for text in [r#"{"type":"pause"}"#, r#"{"type":"after-the-pause"}"#] {
        ws.send(Message::Text(text.into())).await.expect("send");
    }
    sysmonstm_testkit::eventually(WAIT, "the pause read", || async {
        (counter(addr, bad).await > before).then_some(())
    })
    .await;

    // A live snapshot reaches the gateway (its API shows it) but not the
    // paused client; a forget after it does, with nothing before it.
    let s = live.publish(&env.js).await;
    sysmonstm_testkit::eventually(WAIT, "the gateway holds the new snapshot", || async {
        let (_, body) = reqwest_body(addr, "/api/machines/live-1/metrics").await;
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["seq"] == s.seq).then_some(())
    })
    .await;
    let id = sysmonstm_schemas::MachineId::parse("gone-2").expect("id");
    tokio::time::timeout(
        WAIT,
        env.js
            .client()
            .request(sysmonstm_schemas::subjects::forget(&id), "".into()),
    )
    .await
    .expect("answered in time")
    .expect("an answer");
    let mut while_paused = Vec::new();
    loop {
        let b = next_batch(&mut ws).await;
        let done = b.iter().any(|u| u["type"] == "forget");
        while_paused.extend(b);
        if done {
            break;
        }
    }
    assert!(
        while_paused.iter().all(|u| u["type"] == "forget"),
        "a paused client got {while_paused:?}"
    );

    // Resumed: the current state first, the snapshot it missed included.
    ws.send(Message::Text(
        r#"{"type":"subscribe","machine":null}"#.into(),
    ))
    .await
    .expect("send");
    until(&mut ws, "the state again", |u| {
        is(u, "summary", "live-1", s.seq)
    })
    .await;
    let n = live.publish(&env.js).await;
    until(&mut ws, "live updates again", |u| {
        is(u, "summary", "live-1", n.seq)
    })
    .await;
}
