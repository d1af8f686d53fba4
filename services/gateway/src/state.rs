//! What every handler shares: the NATS and PostgreSQL handles, the moka
//! caches of the latest snapshot / facts / alert of each machine, the history
//! answer cache, the fan-out channel of live updates and the counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;
use sqlx::PgPool;
use tokio::sync::broadcast;

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
}

/// Counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub snapshots: AtomicU64,
    pub snapshots_stale: AtomicU64,
    pub infos: AtomicU64,
    pub alerts: AtomicU64,
    pub decode_errors: AtomicU64,
    pub feed_restarts: AtomicU64,
    pub http_requests: AtomicU64,
    pub http_bad_requests: AtomicU64,
    pub http_db_errors: AtomicU64,
    pub latest_hits: AtomicU64,
    pub latest_misses: AtomicU64,
    pub history_hits: AtomicU64,
    pub history_misses: AtomicU64,
    pub rules_bad_values: AtomicU64,
    pub ws_clients: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_origin_refused: AtomicU64,
    pub ws_frames: AtomicU64,
    pub ws_messages: AtomicU64,
    pub ws_coalesced: AtomicU64,
    pub ws_lagged: AtomicU64,
    pub ws_closed_stuck: AtomicU64,
    pub ws_bad_client_messages: AtomicU64,
    pub ws_refused_clients: AtomicU64,
    pub ws_refused_per_address: AtomicU64,
    pub ws_refused_rate: AtomicU64,
    pub ws_subscribes_limited: AtomicU64,
    pub rejected: Rejected,
}

/// Messages the feeds refused, by feed and `accept::Reject::reason`: a
/// fixed set of series, all exported from the start.
#[derive(Debug, Default)]
pub struct Rejected {
    counts: [[AtomicU64; Reject::REASONS.len()]; Rejected::FEEDS.len()],
}

impl Rejected {
    pub const FEEDS: [&'static str; 3] = ["metrics", "machines", "alerts"];

    pub fn inc(&self, feed: &str, reason: &str) {
        let f = Self::FEEDS.iter().position(|x| *x == feed);
        let r = Reject::REASONS.iter().position(|x| *x == reason);
        if let (Some(f), Some(r)) = (f, r) {
            Counters::inc(&self.counts[f][r]);
        }
    }

    pub fn get(&self, feed: &str, reason: &str) -> u64 {
        let f = Self::FEEDS.iter().position(|x| *x == feed);
        let r = Reject::REASONS.iter().position(|x| *x == reason);
        match (f, r) {
            (Some(f), Some(r)) => self.counts[f][r].load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
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
    pub pool: PgPool,
    pub latest: Cache<String, Arc<Latest>>,
    pub info: Cache<String, Arc<(Info, Arc<str>)>>,
    /// The latest event of each `machine:rule`.
    pub alerts: Cache<String, Arc<(Alert, Arc<str>)>>,
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
    pub fn new(config: GatewayConfig, nats: async_nats::Client, pool: PgPool) -> Self {
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
            logs: Default::default(),
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

    /// The Prometheus text exposition of the counters and cache ratios.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.counters;
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: &AtomicU64, kind: &str| {
            let _ = writeln!(out, "# HELP sysmon_gateway_{name} {help}");
            let _ = writeln!(out, "# TYPE sysmon_gateway_{name} {kind}");
            let _ = writeln!(out, "sysmon_gateway_{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            "snapshots_total",
            "Snapshots taken from METRICS.",
            &c.snapshots,
            "counter",
        );
        counter(
            "snapshots_stale_total",
            "Snapshots not shown because a later one of their machine already was (a replayed spool, a duplicate).",
            &c.snapshots_stale,
            "counter",
        );
        counter(
            "infos_total",
            "MachineInfo messages taken from MACHINES.",
            &c.infos,
            "counter",
        );
        counter(
            "alert_events_total",
            "Alert events taken from ALERTS.",
            &c.alerts,
            "counter",
        );
        counter(
            "decode_errors_total",
            "Messages from JetStream not taken, for any reason (by reason in rejected_total).",
            &c.decode_errors,
            "counter",
        );
        counter(
            "feed_restarts_total",
            "Times a JetStream feed was set up again after an error.",
            &c.feed_restarts,
            "counter",
        );
        counter(
            "http_requests_total",
            "API requests served.",
            &c.http_requests,
            "counter",
        );
        counter(
            "http_bad_requests_total",
            "API requests refused with 400.",
            &c.http_bad_requests,
            "counter",
        );
        counter(
            "http_db_errors_total",
            "API requests that failed on the database.",
            &c.http_db_errors,
            "counter",
        );
        counter(
            "latest_cache_hits_total",
            "Latest-snapshot lookups found in the cache.",
            &c.latest_hits,
            "counter",
        );
        counter(
            "latest_cache_misses_total",
            "Latest-snapshot lookups not in the cache.",
            &c.latest_misses,
            "counter",
        );
        counter(
            "history_cache_hits_total",
            "History answers served from the cache.",
            &c.history_hits,
            "counter",
        );
        counter(
            "history_cache_misses_total",
            "History answers computed by PostgreSQL.",
            &c.history_misses,
            "counter",
        );
        counter(
            "rules_bad_values_total",
            "Rule KV values that are not JSON (skipped).",
            &c.rules_bad_values,
            "counter",
        );
        counter(
            "ws_clients",
            "WebSocket clients connected now.",
            &c.ws_clients,
            "gauge",
        );
        counter(
            "ws_connections_total",
            "WebSocket connections accepted.",
            &c.ws_connections,
            "counter",
        );
        counter(
            "ws_origin_refused_total",
            "WebSocket upgrades refused for their Origin.",
            &c.ws_origin_refused,
            "counter",
        );
        counter(
            "ws_frames_total",
            "Updates sent to WebSocket clients.",
            &c.ws_frames,
            "counter",
        );
        counter(
            "ws_messages_total",
            "WebSocket messages sent (each carries one or more updates).",
            &c.ws_messages,
            "counter",
        );
        counter(
            "ws_coalesced_total",
            "Updates replaced by a newer one before a slow client took them.",
            &c.ws_coalesced,
            "counter",
        );
        counter(
            "ws_lagged_total",
            "Times a client's pump fell behind the fan-out and resynchronised.",
            &c.ws_lagged,
            "counter",
        );
        counter(
            "ws_closed_stuck_total",
            "Clients closed because they stopped reading or answering pings.",
            &c.ws_closed_stuck,
            "counter",
        );
        counter(
            "ws_bad_client_messages_total",
            "Client WebSocket messages that were not understood.",
            &c.ws_bad_client_messages,
            "counter",
        );
        counter(
            "ws_subscribes_limited_total",
            "Client subscribe messages beyond the allowance (deferred; the latest wins).",
            &c.ws_subscribes_limited,
            "counter",
        );
        let _ = writeln!(
            out,
            "# HELP sysmon_gateway_ws_refused_total WebSocket upgrades refused for capacity, by reason."
        );
        let _ = writeln!(out, "# TYPE sysmon_gateway_ws_refused_total counter");
        for (reason, v) in [
            ("clients", &c.ws_refused_clients),
            ("per_address", &c.ws_refused_per_address),
            ("rate", &c.ws_refused_rate),
        ] {
            let _ = writeln!(
                out,
                "sysmon_gateway_ws_refused_total{{reason=\"{reason}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP sysmon_gateway_rejected_total Messages from JetStream refused by the accept rule, by feed and reason."
        );
        let _ = writeln!(out, "# TYPE sysmon_gateway_rejected_total counter");
        for feed in Rejected::FEEDS {
            for reason in Reject::REASONS {
                let _ = writeln!(
                    out,
                    "sysmon_gateway_rejected_total{{feed=\"{feed}\",reason=\"{reason}\"}} {}",
                    c.rejected.get(feed, reason)
                );
            }
        }
        let ratio = |h: &AtomicU64, m: &AtomicU64| {
            let (h, m) = (
                h.load(Ordering::Relaxed) as f64,
                m.load(Ordering::Relaxed) as f64,
            );
            if h + m > 0.0 { h / (h + m) } else { 0.0 }
        };
        let _ = writeln!(
            out,
            "# HELP sysmon_gateway_cache_hit_ratio Share of lookups answered by a cache."
        );
        let _ = writeln!(out, "# TYPE sysmon_gateway_cache_hit_ratio gauge");
        let _ = writeln!(
            out,
            "sysmon_gateway_cache_hit_ratio{{cache=\"latest\"}} {}",
            ratio(&c.latest_hits, &c.latest_misses)
        );
        let _ = writeln!(
            out,
            "sysmon_gateway_cache_hit_ratio{{cache=\"history\"}} {}",
            ratio(&c.history_hits, &c.history_misses)
        );
        let _ = writeln!(
            out,
            "# HELP sysmon_gateway_machines Machines with a latest snapshot."
        );
        let _ = writeln!(out, "# TYPE sysmon_gateway_machines gauge");
        let _ = writeln!(out, "sysmon_gateway_machines {}", self.latest.entry_count());
        out
    }
}
