//! JetStream stream and consumer definitions, so every service that creates
//! or binds them agrees on names, subjects and limits.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};

use crate::subjects;

/// The stream of every machine's snapshots.
pub const METRICS: &str = "METRICS";
/// The stream of machine facts: the last `MachineInfo` of every machine.
pub const MACHINES: &str = "MACHINES";
/// The stream of alert events (firing / resolved / acknowledged).
pub const ALERTS: &str = "ALERTS";
/// The persister's durable pull consumer on [`METRICS`].
pub const PERSISTER_CONSUMER: &str = "persister";
/// The persister's durable pull consumer on [`ALERTS`].
pub const PERSISTER_ALERTS_CONSUMER: &str = "persister_alerts";
/// The persister's durable pull consumer on [`NOTIFICATIONS`].
pub const PERSISTER_NOTIFICATIONS_CONSUMER: &str = "persister_notifications";
/// The alerter's durable pull consumer on [`METRICS`].
pub const ALERTER_CONSUMER: &str = "alerter";
/// KV bucket holding the alert rules, one key per rule name.
pub const RULES_BUCKET: &str = "sysmon_rules";
/// KV bucket holding the alerter's per-(machine, rule) state.
pub const ALERT_STATE_BUCKET: &str = "sysmon_alert_state";
/// How long ALERTS keeps events by default.
pub const ALERTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// JetStream drops a second message with the same `Nats-Msg-Id` within this
/// window. It must outlast the longest publish retry of an agent; the contract
/// asks for at least two minutes.
pub const METRICS_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How much METRICS keeps before the oldest is discarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsLimits {
    pub max_age: Duration,
    pub max_bytes: i64,
}

impl Default for MetricsLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// METRICS: file storage, bounded by age and bytes, de-duplicating by Msg-Id.
pub fn metrics(limits: &MetricsLimits) -> stream::Config {
    stream::Config {
        name: METRICS.to_owned(),
        description: Some("sysmonstm snapshots, one subject per machine".to_owned()),
        subjects: vec![subjects::METRICS_ALL.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        duplicate_window: METRICS_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// How many streams METRICS is split into. One stream stores its messages
/// one after another: with `sync_interval: always` each waits for the fsync
/// of the one before, so a stream stores at most one message per fsync
/// (~4 700/s on a VM disk that fsyncs in 0.2 ms). Split, the hub maps each
/// machine's subject to a partition by a hash of the machine id (an account
/// subject mapping, `sysmon.metrics.<m>` → `sysmon.metrics.<p>.<m>`: see
/// [`Partitions::mapping`]), and stream `METRICS_<p>` stores partition `p`;
/// the partitions fsync side by side, and in a cluster their leaders spread
/// over the servers. A machine always lands in the same partition, so its
/// snapshots stay in order. Agents publish as before and need no setting;
/// the hub's account and every service that reads METRICS must agree on the
/// number. One (the default) is the single stream `METRICS`, unmapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Partitions(u8);

/// A partition count outside `1..=Partitions::MAX`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("metrics_partitions must be 1 to {max}, not {0}", max = Partitions::MAX)]
pub struct BadPartitions(pub u64);

impl Partitions {
    /// Most partitions (the leaf user at the edge may source each by name).
    pub const MAX: u8 = 16;
    pub const ONE: Self = Self(1);

    pub fn new(n: u64) -> Result<Self, BadPartitions> {
        match u8::try_from(n) {
            Ok(v) if (1..=Self::MAX).contains(&v) => Ok(Self(v)),
            _ => Err(BadPartitions(n)),
        }
    }

    pub fn get(self) -> usize {
        usize::from(self.0)
    }

    /// More than one stream.
    pub fn is_split(self) -> bool {
        self.0 > 1
    }

    /// The stream of partition `p`: `METRICS` when not split, else
    /// `METRICS_<p>`.
    pub fn name(self, p: usize) -> String {
        if self.is_split() {
            partition_name(p)
        } else {
            METRICS.to_owned()
        }
    }

    /// Every METRICS stream, partition 0 first.
    pub fn names(self) -> Vec<String> {
        (0..self.get()).map(|p| self.name(p)).collect()
    }

    /// The subjects partition `p`'s stream binds.
    pub fn filter(self, p: usize) -> String {
        if self.is_split() {
            format!("sysmon.metrics.{p}.*")
        } else {
            subjects::METRICS_ALL.to_owned()
        }
    }

    /// Partition `p`'s stream: [`metrics`] under its name and subjects,
    /// with its share of `limits.max_bytes` (the limits are METRICS' as a
    /// whole).
    pub fn config(self, p: usize, limits: &MetricsLimits) -> stream::Config {
        let share = MetricsLimits {
            max_bytes: (limits.max_bytes / i64::from(self.0)).max(1),
            ..limits.clone()
        };
        stream::Config {
            name: self.name(p),
            subjects: vec![self.filter(p)],
            ..metrics(&share)
        }
    }

    /// Every partition's stream config, partition 0 first.
    pub fn configs(self, limits: &MetricsLimits) -> Vec<stream::Config> {
        (0..self.get()).map(|p| self.config(p, limits)).collect()
    }

    /// The partition of `machine`: nats-server's `partition(n, …)` mapping
    /// function, FNV-1a (32 bit) of the machine id modulo the count.
    pub fn of(self, machine: &str) -> usize {
        let mut h: u32 = 0x811c_9dc5;
        for b in machine.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        // u32 → usize is lossless on every target async-nats builds for.
        (h % u32::from(self.0)) as usize
    }

    /// The stream holding `machine`'s snapshots.
    pub fn stream_of(self, machine: &str) -> String {
        self.name(self.of(machine))
    }

    /// The subject `machine`'s snapshots are stored (and delivered) under.
    pub fn subject_of(self, machine: &crate::MachineId) -> String {
        if self.is_split() {
            format!("sysmon.metrics.{}.{machine}", self.of(machine.as_str()))
        } else {
            subjects::metrics(machine)
        }
    }

    /// The hub account's subject mapping (source, destination) that sends a
    /// published snapshot to its partition; `None` when not split.
    pub fn mapping(self) -> Option<(String, String)> {
        self.is_split().then(|| {
            (
                subjects::METRICS_ALL.to_owned(),
                format!(
                    "sysmon.metrics.{{{{partition({},1)}}}}.{{{{wildcard(1)}}}}",
                    self.0
                ),
            )
        })
    }
}

fn partition_name(p: usize) -> String {
    format!("{METRICS}_{p}")
}

impl Default for Partitions {
    fn default() -> Self {
        Self::ONE
    }
}

impl TryFrom<u64> for Partitions {
    type Error = BadPartitions;
    fn try_from(n: u64) -> Result<Self, BadPartitions> {
        Self::new(n)
    }
}

impl From<Partitions> for u64 {
    fn from(p: Partitions) -> u64 {
        u64::from(p.0)
    }
}

impl std::fmt::Display for Partitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// MACHINES: file storage, only the latest message per subject (machine).
pub fn machines() -> stream::Config {
    stream::Config {
        name: MACHINES.to_owned(),
        description: Some("sysmonstm machine facts, the latest per machine".to_owned()),
        subjects: vec![subjects::INFO_ALL.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_messages_per_subject: 1,
        duplicate_window: METRICS_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// ALERTS: file storage, long retention, de-duplicating by Msg-Id so a
/// retried event is stored once.
pub fn alerts() -> stream::Config {
    stream::Config {
        name: ALERTS.to_owned(),
        description: Some("sysmonstm alert events: firing, resolved, acknowledged".to_owned()),
        subjects: vec![subjects::ALERTS_ALL.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: ALERTS_MAX_AGE,
        duplicate_window: METRICS_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The hub's JetStream domain (`nats/hub.conf`).
pub const HUB_DOMAIN: &str = "hub";
/// The edge's JetStream domain (`nats/edge.conf`).
pub const EDGE_DOMAIN: &str = "edge";
/// The hub streams the edge keeps a copy of, by sourcing across the leaf
/// link. The edge's streams have the same names in its own domain.
pub const EDGE_SOURCED: [&str; 3] = [METRICS, ALERTS, MACHINES];

/// How much the edge keeps: a window, not the history (that is the hub's
/// PostgreSQL).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// METRICS and ALERTS at the edge drop what is older (default 24 h).
    pub max_age: Duration,
    /// METRICS at the edge drops its oldest beyond this many bytes.
    pub max_bytes: i64,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// The hub's JetStream API as seen from the edge, across the leaf link: the
/// server maps `$JS.<domain>.API.>` to the domain's `$JS.API.>`.
pub fn domain_api(domain: &str) -> String {
    format!("$JS.{domain}.API")
}

/// The source of an edge stream: the hub stream of the same name, through
/// the hub domain's API. `external` is set explicitly: async-nats turns a
/// `domain` into it on create, but not on update, which would silently drop
/// the hub from an updated stream.
fn hub_source(name: &str) -> stream::Source {
    stream::Source {
        name: name.to_owned(),
        external: Some(stream::External {
            api_prefix: domain_api(HUB_DOMAIN),
            delivery_prefix: None,
        }),
        ..Default::default()
    }
}

/// An edge stream: no subjects of its own (a message published at the edge
/// is never stored, and a hub message is never stored twice), fed only by
/// sourcing the hub's stream of the same name. The Msg-Ids travel with the
/// sourced messages, so a message sourced again after a link cut within the
/// duplicate window is stored once.
fn edge_stream(name: &str, description: &str) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        subjects: Vec::new(),
        sources: Some(vec![hub_source(name)]),
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: METRICS_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// METRICS at the edge: the hub's snapshots of the last `max_age`, from
/// every partition of the hub's METRICS (one stream at the edge, which
/// fsyncs lazily and needs no split).
pub fn edge_metrics(limits: &EdgeLimits, partitions: Partitions) -> stream::Config {
    stream::Config {
        max_age: limits.max_age,
        max_bytes: limits.max_bytes,
        sources: Some(partitions.names().iter().map(|n| hub_source(n)).collect()),
        ..edge_stream(METRICS, "sysmonstm snapshots, sourced from the hub")
    }
}

/// ALERTS at the edge: the hub's alert events of the last `max_age`.
pub fn edge_alerts(limits: &EdgeLimits) -> stream::Config {
    stream::Config {
        max_age: limits.max_age,
        ..edge_stream(ALERTS, "sysmonstm alert events, sourced from the hub")
    }
}

/// MACHINES at the edge: the latest facts per machine, as at the hub. No
/// age limit: an agent publishes its facts at start and on change only, so
/// a 24 h window would lose a machine that has run unchanged for a day.
pub fn edge_machines() -> stream::Config {
    stream::Config {
        max_messages_per_subject: 1,
        ..edge_stream(MACHINES, "sysmonstm machine facts, sourced from the hub")
    }
}

/// Every edge stream, in [`EDGE_SOURCED`] order.
pub fn edge_streams(limits: &EdgeLimits, partitions: Partitions) -> [stream::Config; 3] {
    [
        edge_metrics(limits, partitions),
        edge_alerts(limits),
        edge_machines(),
    ]
}

/// What the hub may send to the edge over the leaf link (the leaf user's
/// publish permission, issued at the edge): sourced messages and heartbeats
/// on their delivery subjects, and the replies to the edge's consumer-create
/// requests. Plain subjects (`sysmon.>`) do not cross.
pub fn leaf_hub_to_edge() -> Vec<String> {
    vec!["$JS.S.>".to_owned(), "$JSC.R.>".to_owned()]
}

/// What the edge may send to the hub over the leaf link (the leaf user's
/// subscribe permission: the hub's interest the edge may serve): creating
/// the sourcing consumers of exactly the sourced streams, and their flow
/// control answers; nothing published at the edge reaches the hub. The
/// literal `CREATE` token matters: a wildcard there breaks sourcing
/// (nats-server #4832).
pub fn leaf_edge_to_hub() -> Vec<String> {
    let api = domain_api(HUB_DOMAIN);
    // Every partition METRICS may be split into, by name: the edge's
    // authority need not know the hub's count.
    let partitions = (0..usize::from(Partitions::MAX)).map(partition_name);
    EDGE_SOURCED
        .iter()
        .map(|s| (*s).to_owned())
        .chain(partitions)
        .flat_map(|s| {
            [
                format!("{api}.CONSUMER.CREATE.{s}"),
                format!("{api}.CONSUMER.CREATE.{s}.>"),
                format!("$JS.FC.{s}.>"),
            ]
        })
        .collect()
}

/// The persister's consumer on ALERTS: every event, into the `alerts` table.
pub fn persister_alerts_consumer(ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(PERSISTER_ALERTS_CONSUMER.to_owned()),
        description: Some("sysmonstm-persister: alert events into PostgreSQL".to_owned()),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        filter_subject: subjects::ALERTS_ALL.to_owned(),
        ..Default::default()
    }
}

/// The persister's consumer on NOTIFICATIONS: every failure the notifier
/// recorded, into the `notification_failures` table.
pub fn persister_notifications_consumer(ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(PERSISTER_NOTIFICATIONS_CONSUMER.to_owned()),
        description: Some(
            "sysmonstm-persister: notifications given up on into PostgreSQL".to_owned(),
        ),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        filter_subject: subjects::NOTIFY_FAILED_ALL.to_owned(),
        ..Default::default()
    }
}

/// The persister's consumer: durable, explicit acks, everything from the
/// start of the stream. Several persister instances may pull from it at once
/// and share the work. A message not acked within `ack_wait` (its persister
/// died) is delivered again.
pub fn persister_consumer(max_ack_pending: i64, ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(PERSISTER_CONSUMER.to_owned()),
        description: Some("sysmonstm-persister: snapshots into PostgreSQL".to_owned()),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        filter_subject: subjects::METRICS_ALL.to_owned(),
        ..Default::default()
    }
}

/// The alerter's consumer on METRICS: durable, so a restarted alerter
/// resumes where it stopped; a new one starts with the newest snapshots (old
/// history is nothing to alert on). Acks are cumulative (AckPolicy::All): one
/// ack covers every snapshot before it, so the hub stores one ack per batch
/// rather than one per snapshot, and a crash still redelivers what was not
/// evaluated.
pub fn alerter_consumer(ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(ALERTER_CONSUMER.to_owned()),
        description: Some("sysmonstm-alerter: snapshots into rule evaluation".to_owned()),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::All,
        ack_wait,
        max_ack_pending: 50_000,
        filter_subject: subjects::METRICS_ALL.to_owned(),
        ..Default::default()
    }
}

/// The rules bucket: a little history so a bad change can be looked up.
pub fn rules_bucket() -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: RULES_BUCKET.to_owned(),
        description: "sysmonstm alert rules, JSON, one key per rule".to_owned(),
        history: 5,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The alert-state bucket: the latest state per (machine, rule).
pub fn alert_state_bucket() -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: ALERT_STATE_BUCKET.to_owned(),
        description: "sysmonstm-alerter state per machine.rule".to_owned(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The subject a write to key `key` of [`ALERT_STATE_BUCKET`] is published
/// on (JetStream KV's own layout, `$KV.<bucket>.<key>`). The alerter writes
/// there directly so that many state writes can be in flight at once.
pub fn alert_state_subject(key: &str) -> String {
    format!("$KV.{ALERT_STATE_BUCKET}.{key}")
}

/// The notifier's durable pull consumer on [`ALERTS`].
pub const NOTIFIER_CONSUMER: &str = "notifier";
/// Failures to deliver a notification (the notifier's record of giving up).
pub const NOTIFICATIONS: &str = "NOTIFICATIONS";
/// KV bucket of silences, one key per silence; each key expires with its
/// silence (per-message TTL).
pub const SILENCES_BUCKET: &str = "sysmon_silences";
/// KV bucket of the notifications the notifier has delivered, one key per
/// (channel, event): a redelivered event is not sent twice.
pub const NOTIFIER_SENT_BUCKET: &str = "sysmon_notifier_sent";

/// The notifier's consumer: durable, explicit acks (an event is acked only
/// once every channel its routes chose took it), starting with the newest
/// events (a new notifier does not page anyone about a year of history).
/// `max_ack_pending` bounds the events in the notifier's hands at once.
pub fn notifier_consumer(ack_wait: Duration, max_ack_pending: i64) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(NOTIFIER_CONSUMER.to_owned()),
        description: Some("sysmonstm-notifier: alert events to people".to_owned()),
        deliver_policy: consumer::DeliverPolicy::New,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        filter_subject: subjects::ALERTS_ALL.to_owned(),
        ..Default::default()
    }
}

/// NOTIFICATIONS: the notifier's failures, kept 90 days, de-duplicated by
/// Msg-Id (`<event id>:<channel>`), so a failure recorded again after a
/// crash is stored once.
pub fn notifications() -> stream::Config {
    stream::Config {
        name: NOTIFICATIONS.to_owned(),
        description: Some("sysmonstm notifications the notifier gave up on".to_owned()),
        subjects: vec![subjects::NOTIFY_FAILED_ALL.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(90 * 24 * 3600),
        duplicate_window: METRICS_DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The silences bucket: per-key TTLs (a silence expires by itself), and a
/// marker when one does, so a watcher sees it go.
pub fn silences_bucket() -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: SILENCES_BUCKET.to_owned(),
        description: "sysmonstm silences, JSON, one key per silence".to_owned(),
        history: 1,
        storage: stream::StorageType::File,
        limit_markers: Some(Duration::from_secs(60)),
        ..Default::default()
    }
}

/// The delivered-notifications bucket: keys live for `ttl`, which must
/// outlast the longest time an event can stay unacknowledged (a notifier
/// down, a receiver down) and come back.
pub fn notifier_sent_bucket(ttl: Duration) -> async_nats::jetstream::kv::Config {
    async_nats::jetstream::kv::Config {
        bucket: NOTIFIER_SENT_BUCKET.to_owned(),
        description: "sysmonstm-notifier: delivered (channel, event) pairs".to_owned(),
        history: 1,
        max_age: ttl,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// The key of (channel, event) in [`NOTIFIER_SENT_BUCKET`]: the event's
/// Msg-Id with `:` turned into `.` (its parts are subject tokens, so the key
/// stays unique and valid), after the channel.
pub fn notifier_sent_key(channel: &str, event_id: &str) -> String {
    format!("{channel}.{}", event_id.replace(':', "."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_stream_meets_the_contract() {
        let cfg = metrics(&MetricsLimits::default());
        assert_eq!(cfg.storage, stream::StorageType::File);
        assert!(cfg.duplicate_window >= Duration::from_secs(120));
        assert!(cfg.max_age > Duration::ZERO && cfg.max_bytes > 0);
        assert_eq!(cfg.subjects, vec!["sysmon.metrics.*".to_owned()]);
    }

    #[test]
    fn partitions_split_metrics_by_machine() {
        let one = Partitions::ONE;
        assert_eq!(one.names(), vec!["METRICS".to_owned()]);
        assert_eq!(
            one.config(0, &MetricsLimits::default()),
            metrics(&MetricsLimits::default())
        );
        assert_eq!(one.mapping(), None);
        let m = crate::MachineId::parse("web01").expect("valid");
        assert_eq!(one.subject_of(&m), "sysmon.metrics.web01");

        let four = Partitions::new(4).expect("4");
        assert_eq!(
            four.names(),
            ["METRICS_0", "METRICS_1", "METRICS_2", "METRICS_3"]
        );
        let cfgs = four.configs(&MetricsLimits::default());
        assert_eq!(cfgs[2].subjects, vec!["sysmon.metrics.2.*".to_owned()]);
        assert_eq!(cfgs[2].duplicate_window, METRICS_DUPLICATE_WINDOW);
        assert_eq!(cfgs[2].max_bytes, MetricsLimits::default().max_bytes / 4);
        assert_eq!(
            four.mapping(),
            Some((
                "sysmon.metrics.*".to_owned(),
                "sysmon.metrics.{{partition(4,1)}}.{{wildcard(1)}}".to_owned()
            ))
        );
        // As nats-server 2.14 mapped "m1" with partition(4,1) (checked by hand).
        assert_eq!(four.of("m1"), 3);
        assert_eq!(
            four.subject_of(&crate::MachineId::parse("m1").expect("valid")),
            "sysmon.metrics.3.m1"
        );
        let p = four.of("web01");
        assert_eq!(four.stream_of("web01"), format!("METRICS_{p}"));
        assert_eq!(
            subjects::machine_of_metrics(&four.subject_of(&m)),
            Some("web01")
        );
        let spread: std::collections::BTreeSet<usize> =
            (0..100).map(|i| four.of(&format!("host-{i}"))).collect();
        assert_eq!(spread.len(), 4);

        assert!(Partitions::new(0).is_err());
        assert!(Partitions::new(17).is_err());
        assert!(Partitions::new(u64::MAX).is_err());
        assert_eq!(Partitions::default(), Partitions::ONE);
        let edge = edge_metrics(&EdgeLimits::default(), four);
        let names: Vec<_> = edge
            .sources
            .expect("sources")
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, four.names());
        let leaf = leaf_edge_to_hub();
        assert!(leaf.contains(&"$JS.hub.API.CONSUMER.CREATE.METRICS_15".to_owned()));
        assert!(leaf.contains(&"$JS.FC.METRICS_0.>".to_owned()));
    }

    #[test]
    fn alerts_stream_dedupes_and_keeps_long() {
        let cfg = alerts();
        assert!(cfg.duplicate_window >= Duration::from_secs(120));
        assert!(cfg.max_age >= Duration::from_secs(30 * 24 * 3600));
        assert_eq!(cfg.subjects, vec!["sysmon.alerts.*.*.*".to_owned()]);
    }

    #[test]
    fn edge_streams_only_source_the_hub() {
        for cfg in edge_streams(&EdgeLimits::default(), Partitions::ONE) {
            assert!(cfg.subjects.is_empty(), "{} binds subjects", cfg.name);
            let src = cfg.sources.as_deref().unwrap_or_default();
            assert_eq!(src.len(), 1);
            assert_eq!(src[0].name, cfg.name);
            let ext = src[0].external.as_ref().expect("external set");
            assert_eq!(ext.api_prefix, "$JS.hub.API");
            assert!(cfg.mirror.is_none());
        }
        let m = edge_metrics(&EdgeLimits::default(), Partitions::ONE);
        assert_eq!(m.max_age, Duration::from_secs(24 * 3600));
        assert_eq!(edge_machines().max_messages_per_subject, 1);
        assert!(leaf_edge_to_hub().iter().all(|s| !s.contains('*')));
        assert!(leaf_hub_to_edge().iter().all(|s| s.starts_with("$JS")));
    }

    #[test]
    fn machines_stream_keeps_the_latest_per_machine() {
        let cfg = machines();
        assert_eq!(cfg.max_messages_per_subject, 1);
        assert_eq!(cfg.subjects, vec!["sysmon.info.*".to_owned()]);
    }
}
