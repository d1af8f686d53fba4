//! One snapshot, one trace: the binaries of the agent, persister, alerter and
//! gateway, with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at an OTLP/HTTP
//! receiver in this test, export spans that share the agent's trace id — the
//! trace context travels in the snapshot's NATS headers (`traceparent`). An
//! agent without the variable sends no such header.
//!
//! Like the hostile suite it runs the binaries named by `SYSMON_BIN_DIR`
//! (`just test` builds them), so it is `#[ignore]`d for a plain `cargo test`.

mod common;

use common::Proc;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_schemas::{MachineId, headers, subjects};
use sysmonstm_testkit::{NatsServer, TestDb};

const WAIT: Duration = Duration::from_secs(30);

// The parts of opentelemetry-proto's ExportTraceServiceRequest this test
// reads (prost skips the other fields).
#[derive(Clone, PartialEq, prost::Message)]
struct ExportTraceServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceSpans>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeSpans>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Resource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<KeyValue>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct KeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<AnyValue>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct AnyValue {
    #[prost(string, optional, tag = "1")]
    string_value: Option<String>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeSpans {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Span>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct Span {
    #[prost(bytes = "vec", tag = "1")]
    trace_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    span_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    parent_span_id: Vec<u8>,
    #[prost(string, tag = "5")]
    name: String,
}

/// A span as received: which service sent it, and where it sits.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// An OTLP/HTTP receiver: POST /v1/traces with a protobuf body.
async fn otlp_receiver() -> (SocketAddr, Spans) {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(
                |axum::extract::State(spans): axum::extract::State<Spans>, body: Bytes| async move {
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Bytes::new());
                    };
                    let mut got = spans.lock().expect("lock");
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref()?.string_value.clone())
                            .unwrap_or_default();
                        for s in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                            got.push(Received {
                                service: service.clone(),
                                name: s.name,
                                trace_id: s.trace_id,
                                span_id: s.span_id,
                                parent: s.parent_span_id,
                            });
                        }
                    }
                    // An empty ExportTraceServiceResponse.
                    (axum::http::StatusCode::OK, Bytes::new())
                },
            ),
        )
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, spans)
}

/// The trace id of a trace in which an agent's `publish` span has a child
/// of each `wanted` (service, span name).
fn one_trace(got: &[Received], wanted: &[(&str, &str)]) -> Option<Vec<u8>> {
    let publishes: BTreeMap<&[u8], &Received> = got
        .iter()
        .filter(|s| s.service == "sysmonstm-agent" && s.name == "publish")
        .map(|s| (s.span_id.as_slice(), s))
        .collect();
    let mut by_trace: BTreeMap<&[u8], BTreeSet<(&str, &str)>> = BTreeMap::new();
    for s in got {
        if let Some(p) = publishes.get(s.parent.as_slice())
            && p.trace_id == s.trace_id
        {
            by_trace
                .entry(s.trace_id.as_slice())
                .or_default()
                .insert((s.service.as_str(), s.name.as_str()));
        }
    }
    by_trace
        .into_iter()
        .find(|(_, children)| wanted.iter().all(|w| children.contains(w)))
        .map(|(t, _)| t.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by `just test` with the binaries (SYSMON_BIN_DIR)"]
async fn one_snapshot_is_one_trace_across_the_services() {
    let (otlp, spans) = otlp_receiver().await;
    let endpoint = format!("http://{otlp}");
    let nats = NatsServer::start_hub();
    let db = TestDb::new().await;
    let url = nats.url();
    let work = tempfile::tempdir().expect("temp dir");
    let traced = [
        ("NATS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Export every 200 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ];

    let mut persister = Proc::start(
        "persister",
        "sysmonstm-persister",
        &[],
        &[
            traced[0],
            traced[1],
            traced[2],
            ("DATABASE_URL", db.url()),
            ("SYSMON_PERSISTER_METRICS_LISTEN", "127.0.0.1:0"),
            // Within the test server's JetStream limits.
            ("SYSMON_PERSISTER_STREAM_MAX_MIB", "512"),
        ],
    );
    persister.addr().await;
    let mut alerter = Proc::start(
        "alerter",
        "sysmonstm-alerter",
        &[],
        &[
            traced[0],
            traced[1],
            traced[2],
            ("SYSMON_ALERTER_METRICS_LISTEN", "127.0.0.1:0"),
            // If it makes METRICS before the persister does: within the
            // test server's JetStream limits too.
            ("SYSMON_ALERTER_STREAM_MAX_MIB", "512"),
        ],
    );
    alerter.addr().await;
    let mut gateway = Proc::start(
        "gateway",
        "sysmonstm-gateway",
        &["--listen", "127.0.0.1:0"],
        // Its logs at warn: traces do not depend on the log level.
        &[
            traced[0],
            traced[1],
            traced[2],
            ("DATABASE_URL", db.url()),
            ("RUST_LOG", "warn"),
        ],
    );
    gateway.addr().await;

    // What the agents put on the wire, to see the header (or its absence).
    let client = async_nats::connect(&url).await.expect("connect");
    let mut wire = client
        .subscribe(subjects::METRICS_ALL)
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let state = |m: &str| work.path().join(m).to_str().expect("utf-8").to_owned();
    let (traced_dir, plain_dir) = (state("traced"), state("plain"));
    let _agent = Proc::start(
        "agent",
        "sysmonstm-agent",
        &[
            "--machine",
            "traced-1",
            "--state-dir",
            &traced_dir,
            "--interval-ms",
            "300",
        ],
        &traced,
    );
    let _plain = Proc::start(
        "plain agent",
        "sysmonstm-agent",
        &[
            "--machine",
            "plain-1",
            "--state-dir",
            &plain_dir,
            "--interval-ms",
            "300",
        ],
        &[traced[0]],
    );

    // On the wire: the traced agent's snapshots carry a traceparent, the
    // plain agent's none.
    let traced_subject = subjects::metrics(&MachineId::parse("traced-1").expect("id"));
    let plain_subject = subjects::metrics(&MachineId::parse("plain-1").expect("id"));
    let (mut seen_traced, mut seen_plain) = (false, false);
    tokio::time::timeout(WAIT, async {
        while !(seen_traced && seen_plain) {
            let msg = wire.next().await.expect("subscription open");
            let tp = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::TRACEPARENT))
                .map(|v| v.as_str().to_owned());
            if msg.subject.as_str() == traced_subject {
                let tp = tp.expect("the traced agent's snapshot carries a traceparent");
                assert!(
                    tp.starts_with("00-") && tp.len() == 55,
                    "not a W3C traceparent: {tp}"
                );
                seen_traced = true;
            } else if msg.subject.as_str() == plain_subject {
                assert_eq!(
                    tp, None,
                    "an agent without an endpoint sends no trace header"
                );
                seen_plain = true;
            }
        }
    })
    .await
    .expect("both agents' snapshots on the wire");

    // At the receiver: one trace holding the agent's `publish` and the
    // `store`, `evaluate` and `fan_out` of the same snapshot, each a child
    // of that `publish` span.
    let wanted = [
        ("sysmonstm-persister", "store"),
        ("sysmonstm-alerter", "evaluate"),
        ("sysmonstm-gateway", "fan_out"),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let found = loop {
        let got = spans.lock().expect("lock").clone();
        if let Some(t) = one_trace(&got, &wanted) {
            break t;
        }
        if tokio::time::Instant::now() > deadline {
            let mut summary: BTreeMap<(String, String, bool), usize> = BTreeMap::new();
            for s in &got {
                *summary
                    .entry((s.service.clone(), s.name.clone(), !s.parent.is_empty()))
                    .or_default() += 1;
            }
            panic!(
                "no trace with spans from every service after {WAIT:?}; received \
                 (service, span, has a parent) → count: {summary:#?}\npersister log:\n{}\n\
                 alerter log:\n{}",
                persister.log(),
                alerter.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 16, "a trace id has 16 bytes");
    // The plain agent exported nothing (it has no endpoint), and nothing
    // came from a service we did not start.
    let got = spans.lock().expect("lock").clone();
    let services: BTreeSet<&str> = got.iter().map(|s| s.service.as_str()).collect();
    assert!(
        services.iter().all(|s| [
            "sysmonstm-agent",
            "sysmonstm-persister",
            "sysmonstm-alerter",
            "sysmonstm-gateway"
        ]
        .contains(s)),
        "unexpected services: {services:?}"
    );
    for p in [&persister, &alerter] {
        assert!(
            p.log().contains("exporting traces over OTLP/HTTP"),
            "{} did not say it exports traces:\n{}",
            p.name,
            p.log()
        );
    }
}
