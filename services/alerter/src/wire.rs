//! The NATS edge shared by the alerter and the CLI: alert events to and from
//! protobuf, publishing them with their Msg-Id, and setting up the streams
//! and buckets both need.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv};
use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_schemas::rules::Severity;
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};

use crate::engine::{Alert, EventKind};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("alert for machine {machine:?} rule {rule:?} has no valid subject: {why}")]
    BadToken {
        machine: String,
        rule: String,
        why: String,
    },
    #[error("cannot publish alert event: {0}")]
    Publish(String),
    #[error("cannot set up {what}: {why}")]
    Setup { what: String, why: String },
}

fn kind_to_proto(k: EventKind) -> v1::AlertState {
    match k {
        EventKind::Firing => v1::AlertState::Firing,
        EventKind::Resolved => v1::AlertState::Resolved,
        EventKind::Acknowledged => v1::AlertState::Acknowledged,
    }
}

pub fn to_proto(a: &Alert) -> v1::AlertEvent {
    v1::AlertEvent {
        machine_id: a.machine.clone(),
        rule: a.rule.clone(),
        severity: a.severity.to_proto() as i32,
        state: kind_to_proto(a.kind) as i32,
        metric: a.metric.name().to_owned(),
        value: a.value,
        threshold: a.threshold,
        since_ms: a.since_ms,
        timestamp_ms: a.ts_ms,
        message: a.message.clone(),
        repeat: a.repeat,
        trigger_seq: a.trigger_seq,
    }
}

/// The subject and the Msg-Id of an event.
pub fn address(a: &Alert) -> Result<(String, String), WireError> {
    let bad = |why: String| WireError::BadToken {
        machine: a.machine.clone(),
        rule: a.rule.clone(),
        why,
    };
    let m = MachineId::parse(&a.machine).map_err(|e| bad(e.to_string()))?;
    let r = MachineId::parse(&a.rule).map_err(|e| bad(e.to_string()))?;
    let subject = subjects::alert(a.severity.to_proto(), &m, &r);
    let id = headers::alert_msg_id(
        &a.machine,
        &a.rule,
        a.since_ms,
        kind_to_proto(a.kind),
        a.repeat,
    );
    Ok((subject, id))
}

/// Sends an event to ALERTS and returns the future of JetStream's ack. A
/// retry with the same event is stored once (same Msg-Id).
pub async fn send(js: &jetstream::Context, a: &Alert) -> Result<PublishAckFuture, WireError> {
    let (subject, id) = address(a)?;
    let mut h = HeaderMap::new();
    h.insert(headers::MSG_ID, id.as_str());
    js.publish_with_headers(subject, h, to_proto(a).encode_to_vec().into())
        .await
        .map_err(|e| WireError::Publish(e.to_string()))
}

/// Publishes an event and waits until ALERTS has stored it.
pub async fn publish(js: &jetstream::Context, a: &Alert) -> Result<(), WireError> {
    send(js, a)
        .await?
        .await
        .map(|_| ())
        .map_err(|e| WireError::Publish(e.to_string()))
}

/// Creates ALERTS if it is missing (whoever needs it first does).
pub async fn ensure_alerts(
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, WireError> {
    js.get_or_create_stream(streams::alerts())
        .await
        .map_err(|e| WireError::Setup {
            what: streams::ALERTS.to_owned(),
            why: e.to_string(),
        })
}

/// Opens a KV bucket, creating it with `config` if it does not exist.
pub async fn ensure_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, WireError> {
    if let Ok(store) = js.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.create_key_value(config)
        .await
        .map_err(|e| WireError::Setup {
            what: format!("KV bucket {name}"),
            why: e.to_string(),
        })
}

/// The current value of every key of a bucket (deleted keys left out), read
/// with one last-per-subject watch.
pub async fn current_entries(store: &kv::Store) -> Result<Vec<kv::Entry>, WireError> {
    let setup = |why: String| WireError::Setup {
        what: "reading a KV bucket".to_owned(),
        why,
    };
    // `Store::status` answers from the info cached when the bucket was
    // opened, which misses what was written since (a rules file loaded a
    // moment ago); ask the server.
    let mut stream = store.stream.clone();
    let info = stream.info().await.map_err(|e| setup(e.to_string()))?;
    if info.state.messages == 0 {
        return Ok(Vec::new());
    }
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| setup(e.to_string()))?;
    let mut out = Vec::new();
    // A bucket emptied between the status and the watch delivers nothing;
    // the time-out ends the read then.
    while let Ok(Some(entry)) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        let entry = entry.map_err(|e| setup(e.to_string()))?;
        let done = entry.delta == 0;
        if entry.operation == kv::Operation::Put {
            out.push(entry);
        }
        if done {
            break;
        }
    }
    Ok(out)
}

/// An event decoded from ALERTS, in domain terms; `None` for what is not a
/// well-formed sysmonstm alert event.
pub fn from_proto(ev: &v1::AlertEvent) -> Option<Alert> {
    let kind = match v1::AlertState::try_from(ev.state).ok()? {
        v1::AlertState::Firing => EventKind::Firing,
        v1::AlertState::Resolved => EventKind::Resolved,
        v1::AlertState::Acknowledged => EventKind::Acknowledged,
        v1::AlertState::Unspecified => return None,
    };
    let severity = Severity::from_proto(v1::Severity::try_from(ev.severity).ok()?)?;
    let metric = serde_json::from_value(serde_json::Value::String(ev.metric.clone())).ok()?;
    Some(Alert {
        machine: ev.machine_id.clone(),
        rule: ev.rule.clone(),
        severity,
        kind,
        metric,
        value: ev.value,
        threshold: ev.threshold,
        since_ms: ev.since_ms,
        ts_ms: ev.timestamp_ms,
        message: ev.message.clone(),
        repeat: ev.repeat,
        trigger_seq: ev.trigger_seq,
    })
}

pub fn decode(payload: &[u8]) -> Option<Alert> {
    from_proto(&v1::AlertEvent::decode(payload).ok()?)
}

/// The last message of every subject of `stream` under `filter` (subject,
/// payload), read with one last-per-subject ordered consumer: the cost
/// follows the number of subjects, not the history.
pub async fn last_per_subject(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(String, bytes::Bytes)>, WireError> {
    let setup = |why: String| WireError::Setup {
        what: format!("reading the last of each subject of {stream}"),
        why,
    };
    let Ok(mut s) = js.get_stream(stream).await else {
        return Ok(Vec::new());
    };
    if s.info()
        .await
        .map_err(|e| setup(e.to_string()))?
        .state
        .messages
        == 0
    {
        return Ok(Vec::new());
    }
    let mut msgs = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| setup(e.to_string()))?
        .messages()
        .await
        .map_err(|e| setup(e.to_string()))?;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), msgs.next()).await {
        let m = m.map_err(|e| setup(e.to_string()))?;
        let pending = m.info().map(|i| i.pending).unwrap_or(0);
        out.push((m.subject.to_string(), m.payload.clone()));
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}
