//! JetStream helpers every service and the CLI share: opening (or creating)
//! the streams and buckets the contract defines, reading the current value
//! of every key or the last message of every subject, and publishing an
//! alert event with its Msg-Id.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv};
use futures::StreamExt as _;
use sysmonstm_schemas::alert::{AddressError, Alert};
use sysmonstm_schemas::{headers, streams};

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("cannot publish alert event: {0}")]
    Publish(String),
    #[error("cannot set up {what}: {why}")]
    Setup { what: String, why: String },
}

/// Sends an event to ALERTS and returns the future of JetStream's ack. A
/// retry with the same event is stored once (same Msg-Id).
pub async fn send_alert(
    js: &jetstream::Context,
    a: &Alert,
) -> Result<PublishAckFuture, JetStreamError> {
    let (subject, id) = a.address()?;
    let mut h = HeaderMap::new();
    h.insert(headers::MSG_ID, id.as_str());
    js.publish_with_headers(subject, h, a.encode().into())
        .await
        .map_err(|e| JetStreamError::Publish(e.to_string()))
}

/// Publishes an event and waits until ALERTS has stored it.
pub async fn publish_alert(js: &jetstream::Context, a: &Alert) -> Result<(), JetStreamError> {
    send_alert(js, a)
        .await?
        .await
        .map(|_| ())
        .map_err(|e| JetStreamError::Publish(e.to_string()))
}

/// Creates ALERTS if it is missing (whoever needs it first does).
pub async fn ensure_alerts(
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, JetStreamError> {
    js.get_or_create_stream(streams::alerts())
        .await
        .map_err(|e| JetStreamError::Setup {
            what: streams::ALERTS.to_owned(),
            why: e.to_string(),
        })
}

/// Creates the edge's streams (each sourcing the hub's stream of the same
/// name), or updates them to `limits`: what starts the edge calls it
/// (`sysmonstm edge setup`). Idempotent; a stream that exists with other
/// settings is updated, never recreated (its window would be lost).
pub async fn ensure_edge_streams(
    js: &jetstream::Context,
    limits: &streams::EdgeLimits,
) -> Result<(), JetStreamError> {
    for cfg in streams::edge_streams(limits) {
        let name = cfg.name.clone();
        let setup = |why: String| JetStreamError::Setup {
            what: format!("the edge stream {name}"),
            why,
        };
        match js.get_stream(&name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| setup(e.to_string()))?;
                if !info.config.subjects.is_empty() {
                    return Err(setup(format!(
                        "it binds subjects {:?}: an edge stream only sources the hub \
                         (a message would be stored twice); delete it first",
                        info.config.subjects
                    )));
                }
                js.update_stream(cfg)
                    .await
                    .map_err(|e| setup(e.to_string()))?;
            }
            Err(_) => {
                js.create_stream(cfg)
                    .await
                    .map_err(|e| setup(e.to_string()))?;
            }
        }
    }
    Ok(())
}

/// Opens a KV bucket, creating it with `config` if it does not exist.
pub async fn ensure_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, JetStreamError> {
    if let Ok(store) = js.get_key_value(config.bucket.clone()).await {
        return Ok(store);
    }
    let name = config.bucket.clone();
    js.create_key_value(config)
        .await
        .map_err(|e| JetStreamError::Setup {
            what: format!("KV bucket {name}"),
            why: e.to_string(),
        })
}

/// The current value of every key of a bucket (deleted keys left out), read
/// with one last-per-subject watch.
pub async fn current_entries(store: &kv::Store) -> Result<Vec<kv::Entry>, JetStreamError> {
    let setup = |why: String| JetStreamError::Setup {
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

/// The last message of every subject of `stream` under `filter` (subject,
/// payload), read with one last-per-subject ordered consumer: the cost
/// follows the number of subjects, not the history. A stream that does not
/// exist has no messages.
pub async fn last_per_subject(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<(String, bytes::Bytes)>, JetStreamError> {
    let setup = |why: String| JetStreamError::Setup {
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
