//! What every handler shares: the NATS and PostgreSQL handles, the moka
//! caches of the latest snapshot / facts / alert of each machine, the history
//! answer cache, the fan-out channel of live updates and the counters.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;
use sqlx::PgPool;
use tokio::sync::broadcast;

use sysmonstm_kit::metrics::{Gauge, IntCounter, IntCounterVec, IntGauge, Registry};
use sysmonstm_schemas::accept::{Limits, Reject};

use crate::config::GatewayConfig;
use crate::domain::{Alert, Detail, Info};

/// The latest snapshot of a machine, with its two WebSocket frames encoded
/// once (not once per client).
#[derive(Debug)]
pub struct Latest {
    pub detail: Detail,
    /// When the gateway received it, Unix milliseconds.
    pub received_ms: i64,
    pub summary_frame: Arc<str>,
    pub detail_frame: Arc<str>,
}

/// One live change, fanned out to every WebSocket client.
#[derive(Debug)]
pub enum Update {
    Snapshot {
        machine: String,
        summary_frame: Arc<str>,
        detail_frame: Arc<str>,
    },
    Info {
        machine: String,
        frame: Arc<str>,
    },
    Alert {
        key: String,
        frame: Arc<str>,
    },
    /// `sysmonstm machines forget`: the machine is gone from every cache.
    Forget {
        machine: String,
        frame: Arc<str>,
    },
}

/// What the gateway did, exported on `/metrics` as `sysmonstm_gateway_…`
/// (through `kit::metrics`).
#[derive(Debug)]
pub struct Counters {
    registry: Arc<Registry>,
    pub snapshots: IntCounter,
    pub snapshots_stale: IntCounter,
    pub infos: IntCounter,
    pub alerts: IntCounter,
    pub decode_errors: IntCounter,
    pub feed_restarts: IntCounter,
    pub http_requests: IntCounter,
    pub http_bad_requests: IntCounter,
    pub http_db_errors: IntCounter,
    pub latest_hits: IntCounter,
    pub latest_misses: IntCounter,
    pub history_hits: IntCounter,
    pub history_misses: IntCounter,
    pub rules_bad_values: IntCounter,
    /// Messages of machines not on the edge's allow-list, dropped.
    pub machines_hidden: IntCounter,
    pub ws_clients: IntGauge,
    pub ws_connections: IntCounter,
    pub ws_origin_refused: IntCounter,
    /// Requests refused before their handler, by `guard::Refusal::reason`.
    pub http_refused: IntCounterVec,
    pub rules_written: IntCounter,
    pub rules_deleted: IntCounter,
    pub ws_frames: IntCounter,
    pub ws_messages: IntCounter,
    pub ws_coalesced: IntCounter,
    pub ws_lagged: IntCounter,
    pub ws_closed_stuck: IntCounter,
    pub ws_bad_client_messages: IntCounter,
    pub ws_refused_clients: IntCounter,
    pub ws_refused_per_address: IntCounter,
    pub ws_refused_rate: IntCounter,
    pub ws_subscribes_limited: IntCounter,
    pub rejected: Rejected,
    /// Silences not held, by reason: `invalid` (not a valid silence) or
    /// `max_silences` (that many were held).
    pub silences_refused: IntCounterVec,
    /// Silences held now (the bucket's, ended ones until their key goes).
    pub silences: IntGauge,
    /// Streams receiving snapshots that this gateway does not read.
    pub metrics_streams_unread: IntGauge,
    http_connections_open: IntGauge,
    http_connections_refused: IntCounter,
    cache_hit_ratio_latest: Gauge,
    cache_hit_ratio_history: Gauge,
    machines: IntGauge,
}

/// Messages the feeds refused, by feed and `accept::Reject::reason`: a
/// fixed set of series, all exported from the start
/// (`snapshots_rejected_total`, `infos_rejected_total`,
/// `alert_events_rejected_total`, each by `reason`).
#[derive(Debug)]
pub struct Rejected {
    by_feed: [IntCounterVec; 3],
}

impl Rejected {
    pub const FEEDS: [&'static str; 3] = ["metrics", "machines", "alerts"];

    pub fn inc(&self, feed: &str, reason: &str) {
        if let Some(c) = self.counter(feed, reason) {
            c.inc();
        }
    }

    pub fn get(&self, feed: &str, reason: &str) -> u64 {
        self.counter(feed, reason).map_or(0, |c| c.get())
    }

    fn counter(&self, feed: &str, reason: &str) -> Option<IntCounter> {
        let f = Self::FEEDS.iter().position(|x| *x == feed)?;
        Reject::REASONS
            .contains(&reason)
            .then(|| self.by_feed[f].with_label_values(&[reason]))
    }
}

impl Default for Counters {
    fn default() -> Self {
        let r = Registry::new("gateway");
        let c = |name: &str, help: &str| r.counter(name, help);
        let refused = r.counter_vec(
            "ws_refused_total",
            "WebSocket upgrades refused for capacity, by reason.",
            "reason",
            &["clients", "per_address", "rate"],
        );
        let rejected = |name: &str, what: &str| {
            r.counter_vec(
                name,
                &format!("{what} from JetStream refused by the accept rule, by reason."),
                "reason",
                &Reject::REASONS,
            )
        };
        let ratio = r.gauge_vec_f(
            "cache_hit_ratio",
            "Share of lookups answered by a cache.",
            "cache",
            &["latest", "history"],
        );
        Self {
            snapshots: c("snapshots_received_total", "Snapshots taken from METRICS."),
            snapshots_stale: c(
                "snapshots_stale_total",
                "Snapshots older than the one shown (a replayed spool, a duplicate), not shown.",
            ),
            infos: c(
                "infos_received_total",
                "MachineInfo messages taken from MACHINES.",
            ),
            alerts: c(
                "alert_events_received_total",
                "Alert events taken from ALERTS.",
            ),
            decode_errors: c(
                "decode_errors_total",
                "Messages from JetStream not taken, for any reason (by reason in *_rejected_total).",
            ),
            feed_restarts: c(
                "feed_restarts_total",
                "Times a JetStream feed was set up again after an error.",
            ),
            http_requests: c("http_requests_total", "API requests served."),
            http_bad_requests: c("http_bad_requests_total", "API requests refused with 400."),
            http_db_errors: c(
                "http_database_errors_total",
                "API requests that failed on the database.",
            ),
            latest_hits: c(
                "latest_cache_hits_total",
                "Latest-snapshot lookups found in the cache.",
            ),
            latest_misses: c(
                "latest_cache_misses_total",
                "Latest-snapshot lookups not in the cache.",
            ),
            history_hits: c(
                "history_cache_hits_total",
                "History answers served from the cache.",
            ),
            history_misses: c(
                "history_cache_misses_total",
                "History answers computed by PostgreSQL.",
            ),
            rules_bad_values: c(
                "rules_bad_values_total",
                "Rule KV values that are not JSON (skipped).",
            ),
            machines_hidden: c(
                "machines_hidden_total",
                "Messages of machines not on the edge's allow-list (edge_machines), dropped.",
            ),
            ws_clients: r.gauge("ws_clients", "WebSocket clients connected now."),
            ws_connections: c("ws_connections_total", "WebSocket connections accepted."),
            ws_origin_refused: c(
                "ws_origin_refused_total",
                "WebSocket upgrades refused for their Origin.",
            ),
            http_refused: r.counter_vec(
                "http_refused_total",
                "Requests refused by the Host, Origin or token check, by reason.",
                "reason",
                &crate::guard::Refusal::REASONS,
            ),
            rules_written: c(
                "rules_written_total",
                "Rules stored through PUT /api/rules.",
            ),
            rules_deleted: c(
                "rules_deleted_total",
                "Rules removed through DELETE /api/rules.",
            ),
            ws_frames: c(
                "ws_updates_sent_total",
                "Updates sent to WebSocket clients.",
            ),
            ws_messages: c(
                "ws_messages_sent_total",
                "WebSocket messages sent (each carries one or more updates).",
            ),
            ws_coalesced: c(
                "ws_coalesced_total",
                "Updates replaced by a newer one before a slow client took them.",
            ),
            ws_lagged: c(
                "ws_lagged_total",
                "Times a client's pump fell behind the fan-out and resynchronised.",
            ),
            ws_closed_stuck: c(
                "ws_closed_stuck_total",
                "Clients closed because they stopped reading or answering pings.",
            ),
            ws_bad_client_messages: c(
                "ws_bad_client_messages_total",
                "Client WebSocket messages that were not understood or too large.",
            ),
            ws_subscribes_limited: c(
                "ws_subscribes_limited_total",
                "Subscribe messages beyond a client's allowance (applied later, the last one winning).",
            ),
            ws_refused_clients: refused.with_label_values(&["clients"]),
            ws_refused_per_address: refused.with_label_values(&["per_address"]),
            ws_refused_rate: refused.with_label_values(&["rate"]),
            rejected: Rejected {
                by_feed: [
                    rejected("snapshots_rejected_total", "Snapshots"),
                    rejected("infos_rejected_total", "MachineInfo messages"),
                    rejected("alert_events_rejected_total", "Alert events"),
                ],
            },
            silences_refused: r.counter_vec(
                "silences_refused_total",
                "Silences from the silences bucket not held, by reason.",
                "reason",
                &crate::silences::REFUSALS,
            ),
            silences: r.gauge("silences", "Silences held now (muting alerts shown)."),
            http_connections_open: r.gauge("http_connections_open", "HTTP connections open now."),
            http_connections_refused: c(
                "http_connections_refused_total",
                "HTTP connections closed at accept because the most were open.",
            ),
            cache_hit_ratio_latest: ratio.with_label_values(&["latest"]),
            cache_hit_ratio_history: ratio.with_label_values(&["history"]),
            machines: r.gauge("machines", "Machines with a latest snapshot."),
            metrics_streams_unread: r.gauge(
                "metrics_streams_unread",
                "Streams on the hub receiving snapshots that this gateway's metrics_partitions does not read (its count is not the hub's).",
            ),
            registry: Arc::new(r),
        }
    }
}

impl Counters {
    pub fn inc(c: &IntCounter) {
        c.inc();
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

/// A cached history answer (already JSON).
pub type HistoryAnswer = Arc<serde_json::Value>;

/// Key of a history answer: machine, metric, from, to (ms) and step (s).
pub type HistoryKey = (String, String, i64, i64, i64);

pub struct Shared {
    pub config: GatewayConfig,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// PostgreSQL (history, stored alerts); `None` at the edge, which has
    /// none and answers from its streams.
    pub pool: Option<PgPool>,
    /// Which machines are shown, under which names (`edge_machines`).
    pub names: crate::names::Names,
    /// The request allowance of each address (prefix) seen in the last
    /// minute, at the edge (`rate`).
    pub http_rate: Cache<crate::rate::Key, Arc<std::sync::Mutex<crate::ws::Allowance>>>,
    pub latest: Cache<String, Arc<Latest>>,
    pub info: Cache<String, Arc<(Info, Arc<str>)>>,
    /// The latest event of each `machine:rule`.
    pub alerts: Cache<String, Arc<(Alert, Arc<str>)>>,
    /// Held while an entry of `alerts` is read and replaced: the alerts feed
    /// and the silences (which re-mark entries) must not overwrite each
    /// other's newer entry.
    pub alert_writes: std::sync::Mutex<()>,
    /// The silences bucket, followed on the hub (empty at the edge).
    pub silences: crate::silences::Silences,
    pub history: moka::future::Cache<HistoryKey, HistoryAnswer>,
    /// Batches of updates, in order of arrival.
    pub updates: broadcast::Sender<Arc<[Update]>>,
    pub counters: Counters,
    /// What the feeds accept (`schemas::accept`), from the configuration.
    pub limits: Limits,
    /// WebSocket clients now, in total and per address.
    pub ws_slots: std::sync::Mutex<crate::ws::Slots>,
    /// The connect allowance of each address seen in the last minute.
    pub ws_connects: Cache<std::net::IpAddr, Arc<std::sync::Mutex<crate::ws::Allowance>>>,
    /// How many lines input may make this process log.
    pub logs: crate::budget::LogBudgets,
    /// What the HTTP server counts (connections open, refused over the cap).
    pub http: Arc<sysmonstm_kit::http::ServeCounters>,
    /// The bearer token rule writes need (`None`: every write is refused).
    pub api_token: Option<crate::guard::Token>,
    /// `Host` values served (see `guard`); filled from the bound address.
    pub hosts: std::sync::RwLock<crate::guard::Hosts>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

/// Most machines (and alert keys) held; far above any real fleet, there so a
/// flood of bogus subjects cannot grow memory without bound.
const MAX_MACHINES: u64 = 200_000;

/// Most history answers held.
const MAX_HISTORY_ANSWERS: u64 = 10_000;

/// A cache bounded both by bytes (`max_bytes`, the sum of what `bytes`
/// says of each entry) and by entries (`max_entries`): each entry weighs at
/// least `max_bytes / max_entries`, so no more than `max_entries` fit.
fn weighed<K, V>(
    max_bytes: u64,
    max_entries: u64,
    bytes: impl Fn(&K, &V) -> usize + Send + Sync + 'static,
) -> moka::sync::CacheBuilder<K, V, Cache<K, V>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let floor = (max_bytes / max_entries.max(1)).max(1);
    Cache::builder()
        // The entry written last is the one to keep (a live machine's
        // newest state), not one read often: least recently used goes.
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .max_capacity(max_bytes.max(1))
        .weigher(move |k: &K, v: &V| {
            let b = u64::try_from(bytes(k, v)).unwrap_or(u64::MAX).max(floor);
            u32::try_from(b).unwrap_or(u32::MAX)
        })
}

/// Bytes of a cached JSON history answer: its four arrays of `points`.
fn history_bytes(answer: &HistoryAnswer) -> u64 {
    let points = answer["points"].as_u64().unwrap_or(0);
    256u64.saturating_add(points.saturating_mul(4 * 24))
}

impl Shared {
    pub fn new(config: GatewayConfig, nats: async_nats::Client, pool: Option<PgPool>) -> Self {
        let js = async_nats::jetstream::new(nats.clone());
        let (updates, _) = broadcast::channel(16 * 1024);
        // moka refuses a time to live of a thousand years or more.
        let ttl = Duration::from_secs(config.history_cache_ttl_s.clamp(1, 86_400));
        let max_bytes = config.cache_max_bytes;
        Self {
            js,
            nats,
            pool,
            latest: weighed(max_bytes, MAX_MACHINES, |k: &String, l: &Arc<Latest>| {
                k.len() + l.summary_frame.len() + 2 * l.detail_frame.len() + 512
            })
            .build(),
            info: weighed(
                max_bytes,
                MAX_MACHINES,
                |k: &String, i: &Arc<(Info, Arc<str>)>| k.len() + 2 * i.1.len() + 256,
            )
            .build(),
            alerts: weighed(
                max_bytes,
                MAX_MACHINES,
                |k: &String, a: &Arc<(Alert, Arc<str>)>| k.len() + 2 * a.1.len() + 256,
            )
            .build(),
            alert_writes: std::sync::Mutex::new(()),
            silences: Default::default(),
            history: moka::future::Cache::builder()
                .max_capacity(max_bytes.max(1))
                .weigher(move |_k: &HistoryKey, v: &HistoryAnswer| {
                    let floor = (max_bytes / MAX_HISTORY_ANSWERS).max(1);
                    u32::try_from(history_bytes(v).max(floor)).unwrap_or(u32::MAX)
                })
                .time_to_live(ttl)
                .build(),
            updates,
            counters: Counters::default(),
            limits: config.limits(),
            ws_slots: Default::default(),
            ws_connects: Cache::builder()
                .max_capacity(MAX_MACHINES)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            http_rate: Cache::builder()
                .max_capacity(crate::rate::MAX_ADDRESSES)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            // Only the edge hides and renames (the hub's history is keyed by
            // the real ids). A list that does not parse (`validate` refuses
            // it first) hides everything rather than nothing.
            names: if config.edge {
                crate::names::Names::new(&config.edge_machines)
                    .unwrap_or_else(|_| crate::names::Names::nothing())
            } else {
                crate::names::Names::default()
            },
            logs: Default::default(),
            http: Default::default(),
            api_token: None,
            hosts: std::sync::RwLock::new(crate::guard::Hosts::new(
                &config.listen,
                &config.allowed_hosts,
            )),
            config,
        }
    }

    /// True when the machine's last snapshot is recent enough. Saturating
    /// arithmetic: a timestamp or a configured value at the end of its range
    /// is an answer, not an overflow.
    pub fn online(&self, latest: &Latest, now_ms: i64) -> bool {
        let interval = i64::from(latest.detail.summary.interval_ms).max(1000);
        let limit = i64::try_from(self.config.silent_after_s)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000)
            .max(interval.saturating_mul(3));
        now_ms.saturating_sub(latest.detail.summary.timestamp_ms) <= limit
    }

    /// The Prometheus text exposition: the counters, and the gauges read
    /// at the moment of asking (cache hit ratios, machines held).
    pub fn prometheus(&self) -> String {
        let c = &self.counters;
        let ratio = |h: &IntCounter, m: &IntCounter| {
            let (h, m) = (h.get() as f64, m.get() as f64);
            if h + m > 0.0 { h / (h + m) } else { 0.0 }
        };
        c.cache_hit_ratio_latest
            .set(ratio(&c.latest_hits, &c.latest_misses));
        c.cache_hit_ratio_history
            .set(ratio(&c.history_hits, &c.history_misses));
        c.machines
            .set(i64::try_from(self.latest.entry_count()).unwrap_or(i64::MAX));
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        c.http_connections_open
            .set(i64::try_from(load(&self.http.open_connections)).unwrap_or(i64::MAX));
        let refused = load(&self.http.refused_connections);
        c.http_connections_refused
            .inc_by(refused.saturating_sub(c.http_connections_refused.get()));
        c.registry.render()
    }
}
