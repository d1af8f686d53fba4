//! JetStream helpers every service and the CLI share: opening (or creating)
//! the streams and buckets the contract defines, reading the current value
//! of every key or the last message of every subject, publishing an alert
//! event with its Msg-Id, and how many servers of a cluster hold each stream
//! a service creates (`Replicas`).

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, kv};
use futures::StreamExt as _;
use sysmonstm_schemas::alert::{AddressError, Alert};
use sysmonstm_schemas::{headers, streams};

/// How many servers of a JetStream cluster keep a copy of each stream (and
/// bucket) a service creates: 1 on a single server, 3 on a cluster, so one
/// server can die with nothing lost and nothing stopped. JetStream allows
/// 1 to 5. It applies when a stream is created: an existing stream keeps its
/// replicas (`nats stream edit <name> --replicas 3` changes them).
/// Consumers follow their stream's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Replicas(u8);

impl Replicas {
    /// JetStream's limit.
    pub const MAX: u8 = 5;
    pub const ONE: Self = Self(1);

    pub fn get(self) -> usize {
        usize::from(self.0)
    }

    /// `cfg` with these replicas.
    pub fn stream(self, cfg: jetstream::stream::Config) -> jetstream::stream::Config {
        jetstream::stream::Config {
            num_replicas: self.get(),
            ..cfg
        }
    }

    /// `cfg` with these replicas.
    pub fn kv(self, cfg: kv::Config) -> kv::Config {
        kv::Config {
            num_replicas: self.get(),
            ..cfg
        }
    }

    /// Logs a warning when an existing stream has other replicas than
    /// configured: the setting only applies when a stream is created, and an
    /// operator who moved to a cluster should hear that theirs was not
    /// changed.
    pub fn check(self, info: &jetstream::stream::Info) {
        let have = info.config.num_replicas.max(1);
        if have != self.get() {
            tracing::warn!(
                stream = %info.config.name,
                replicas = have,
                configured = self.get(),
                "the stream exists with other replicas than configured; `replicas` applies \
                 when a stream is created (change it with `nats stream edit {} --replicas {}`)",
                info.config.name,
                self.get()
            );
        }
    }
}

impl Default for Replicas {
    fn default() -> Self {
        Self::ONE
    }
}

impl TryFrom<u64> for Replicas {
    type Error = String;

    fn try_from(n: u64) -> Result<Self, String> {
        match u8::try_from(n) {
            Ok(r) if (1..=Self::MAX).contains(&r) => Ok(Self(r)),
            _ => Err(format!(
                "replicas must be 1 to {} (servers of a JetStream cluster holding each stream), not {n}",
                Self::MAX
            )),
        }
    }
}

impl From<Replicas> for u64 {
    fn from(r: Replicas) -> u64 {
        u64::from(r.0)
    }
}

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

/// Creates ALERTS if it is missing (whoever needs it first does), on one
/// server; the services create it with their `replicas`
/// ([`ensure_alerts_on`]), so only a tool run first (the CLI) makes it here.
pub async fn ensure_alerts(
    js: &jetstream::Context,
) -> Result<jetstream::stream::Stream, JetStreamError> {
    ensure_alerts_on(js, Replicas::ONE).await
}

/// Creates ALERTS on `replicas` servers if it is missing.
pub async fn ensure_alerts_on(
    js: &jetstream::Context,
    replicas: Replicas,
) -> Result<jetstream::stream::Stream, JetStreamError> {
    js.get_or_create_stream(replicas.stream(streams::alerts()))
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
    partitions: streams::Partitions,
) -> Result<(), JetStreamError> {
    for cfg in streams::edge_streams(limits, partitions) {
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

/// Opens every METRICS stream (one per partition, partition 0 first),
/// creating a missing one with `limits` on `replicas` servers. Logs when an
/// existing one has other replicas than configured.
pub async fn ensure_metrics(
    js: &jetstream::Context,
    partitions: streams::Partitions,
    replicas: Replicas,
    limits: &streams::MetricsLimits,
) -> Result<Vec<jetstream::stream::Stream>, JetStreamError> {
    let mut out = Vec::with_capacity(partitions.get());
    for cfg in partitions.configs(limits) {
        let name = cfg.name.clone();
        let s = js
            .get_or_create_stream(replicas.stream(cfg))
            .await
            .map_err(|e| JetStreamError::Setup {
                what: name,
                why: e.to_string(),
            })?;
        replicas.check(s.cached_info());
        out.push(s);
    }
    Ok(out)
}

/// Opens every METRICS stream, none created (their retention is the
/// persister's to set): an error while one is missing.
pub async fn metrics_streams(
    js: &jetstream::Context,
    partitions: streams::Partitions,
) -> Result<Vec<jetstream::stream::Stream>, JetStreamError> {
    let mut out = Vec::with_capacity(partitions.get());
    for name in partitions.names() {
        let s = js
            .get_stream(&name)
            .await
            .map_err(|e| JetStreamError::Setup {
                what: name,
                why: e.to_string(),
            })?;
        out.push(s);
    }
    Ok(out)
}

/// A stream on the hub that stores metrics subjects and that a service
/// reading `partitions` does not read: left from another partition count,
/// or the sign that this service's count is not the hub's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadMetrics {
    pub stream: String,
    pub messages: u64,
    /// How long ago it stored its last message (`None`: empty).
    pub last_ago: Option<Duration>,
}

impl UnreadMetrics {
    /// Still being written: its last message is younger than [`UNREAD_RECENT`].
    pub fn receiving(&self) -> bool {
        self.last_ago.is_some_and(|a| a < UNREAD_RECENT)
    }
}

/// A stream written to this recently is taken to be receiving snapshots.
pub const UNREAD_RECENT: Duration = Duration::from_secs(300);

/// The streams binding metrics subjects that are not the METRICS streams
/// of `partitions`, with how full they are and how fresh their last
/// message is, in name order.
pub async fn unread_metrics(
    js: &jetstream::Context,
    partitions: streams::Partitions,
) -> Result<Vec<UnreadMetrics>, JetStreamError> {
    let setup = |why: String| JetStreamError::Setup {
        what: "listing the streams that store metrics".into(),
        why,
    };
    let ours = partitions.names();
    // STREAM.NAMES with a subject lists the streams whose subjects overlap
    // it (async-nats only exposes that for one name), a page at a time.
    let mut others = Vec::new();
    let mut offset = 0u64;
    loop {
        let page: serde_json::Value = js
            .request(
                "STREAM.NAMES",
                &serde_json::json!({
                    "subject": sysmonstm_schemas::subjects::METRICS_LIVE,
                    "offset": offset,
                }),
            )
            .await
            .map_err(|e| setup(e.to_string()))?;
        if let Some(e) = page.get("error") {
            return Err(setup(e.to_string()));
        }
        let names = page
            .get("streams")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        if names.is_empty() {
            break;
        }
        offset = offset.saturating_add(names.len() as u64);
        for name in names.iter().filter_map(serde_json::Value::as_str) {
            if !ours.iter().any(|o| o == name) && others.len() < 64 {
                others.push(name.to_owned());
            }
        }
        let total = page.get("total").and_then(serde_json::Value::as_u64);
        if total.is_none_or(|t| offset >= t) || others.len() >= 64 {
            break;
        }
    }
    others.sort();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut out = Vec::with_capacity(others.len());
    for name in others {
        // Removed meanwhile: nothing left unread there.
        let Ok(mut s) = js.get_stream(&name).await else {
            continue;
        };
        let Ok(info) = s.info().await else {
            continue;
        };
        let messages = info.state.messages;
        let last = u64::try_from(info.state.last_timestamp.unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(0);
        out.push(UnreadMetrics {
            stream: name,
            messages,
            last_ago: (messages > 0).then(|| Duration::from_millis(now.saturating_sub(last))),
        });
    }
    Ok(out)
}

/// How often [`watch_unread_metrics`] looks.
pub const UNREAD_CHECK: Duration = Duration::from_secs(60);

/// Looks for unread METRICS streams ([`unread_metrics`]) now and every
/// [`UNREAD_CHECK`] until `shutdown`, keeps on `gauge` how many are receiving
/// snapshots, and logs them: an error for each one receiving (snapshots
/// stored there are not `what` — the service's partition count is not the
/// hub's), a warning once for each idle one that still holds messages.
pub async fn watch_unread_metrics(
    js: jetstream::Context,
    partitions: streams::Partitions,
    what: &'static str,
    gauge: prometheus::IntGauge,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut idle_told = std::collections::BTreeSet::new();
    loop {
        match unread_metrics(&js, partitions).await {
            Ok(found) => {
                let receiving = found.iter().filter(|u| u.receiving()).count();
                gauge.set(i64::try_from(receiving).unwrap_or(i64::MAX));
                for u in &found {
                    if u.receiving() {
                        tracing::error!(
                            stream = %u.stream,
                            messages = u.messages,
                            last_ago = ?u.last_ago.unwrap_or_default(),
                            metrics_partitions = partitions.get(),
                            reads = %partitions.names().join(","),
                            "{} receives snapshots that are not {what}: this service's \
                             metrics_partitions is not the hub's (the hub's count is the \
                             `metrics-partitions` file beside its credentials, set by \
                             `sysmonstm creds partitions`); give every service the same count",
                            u.stream
                        );
                    } else if u.messages > 0
                        && idle_told.len() < 64
                        && idle_told.insert(u.stream.clone())
                    {
                        tracing::warn!(
                            stream = %u.stream,
                            messages = u.messages,
                            "{} holds snapshots this service does not read (none new for \
                             {:?}): left from another partition count; remove it once it \
                             is not needed (`nats stream rm {}`)",
                            u.stream,
                            u.last_ago.unwrap_or_default(),
                            u.stream
                        );
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot list the streams that store metrics"),
        }
        tokio::select! {
            _ = tokio::time::sleep(UNREAD_CHECK) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The last snapshot of every machine, from every METRICS partition, as
/// (subject as stored, payload).
pub async fn last_snapshots(
    js: &jetstream::Context,
    partitions: streams::Partitions,
) -> Result<Vec<(String, bytes::Bytes)>, JetStreamError> {
    let mut out = Vec::new();
    for p in 0..partitions.get() {
        out.extend(last_per_subject(js, &partitions.name(p), &partitions.filter(p)).await?);
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Cfg {
        replicas: Replicas,
    }

    #[test]
    fn replicas_are_one_to_five() {
        for n in 1..=5u64 {
            let c: Cfg = serde_json::from_str(&format!("{{\"replicas\":{n}}}")).expect("valid");
            assert_eq!(c.replicas.get() as u64, n);
        }
        for bad in ["0", "6", "300", "-1"] {
            let err = serde_json::from_str::<Cfg>(&format!("{{\"replicas\":{bad}}}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.is_empty(), "{bad} accepted");
        }
        let err = serde_json::from_str::<Cfg>("{\"replicas\":7}")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("replicas must be 1 to 5"), "{err}");
        assert_eq!(Replicas::default(), Replicas::ONE);
        let cfg = Replicas::try_from(3).expect("3").stream(streams::alerts());
        assert_eq!(cfg.num_replicas, 3);
    }
}
