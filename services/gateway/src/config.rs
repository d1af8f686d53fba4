//! The gateway's configuration: defaults, then a TOML file, then
//! `SYSMON_GATEWAY_*` variables, then flags (the same layering as every
//! sysmonstm binary, through `sysmonstm_kit::config`).

use serde::{Deserialize, Serialize};
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::accept;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address the HTTP server binds, e.g. `0.0.0.0:8080`; port 0 picks a
    /// free port (tests), which `Running::addr` reports.
    pub listen: String,
    /// PostgreSQL URL (history and alerts). The pool connects lazily, so the
    /// gateway serves live data while the database is away.
    pub database_url: String,
    /// `Origin` values a browser WebSocket may come from besides the
    /// gateway's own host (e.g. `https://dash.example.com`).
    pub allowed_origins: Vec<String>,
    /// A machine whose last snapshot is older than this many seconds is shown
    /// as silent.
    pub silent_after_s: u64,
    /// How long a history answer is reused, in seconds.
    pub history_cache_ttl_s: u64,
    /// Most points a history answer should hold; the step is chosen from
    /// the range so the answer stays under it.
    pub history_max_points: u32,
    /// Seconds between WebSocket pings; a client that has not answered for
    /// three intervals is closed.
    pub ws_ping_s: u64,
    /// Seconds a single WebSocket frame may take to go out before the client
    /// is considered stuck and closed.
    pub ws_send_timeout_s: u64,
    /// Most rows `/api/alerts` returns.
    pub alerts_limit: i64,
    /// Largest message the feeds take (bytes); a larger one is refused and
    /// counted (`reason="oversized"`).
    pub max_payload_bytes: usize,
    /// How far ahead of this clock a snapshot, fact or alert event may be
    /// dated (seconds); a later one is refused (`reason="future"`).
    pub max_future_skew_s: u64,
    /// Most bytes each cache holds (latest snapshots, facts, alert events,
    /// history answers; each is also bounded by entries). A full cache
    /// evicts the entries least used; a live machine's comes back with its
    /// next snapshot.
    pub cache_max_bytes: u64,
    /// Most WebSocket clients at once; more are refused with 503.
    pub ws_max_clients: u32,
    /// Most WebSocket clients from one address at once; more are refused
    /// with 429. Behind a reverse proxy every client has the proxy's
    /// address: raise it there (or cap per client at the proxy).
    pub ws_max_clients_per_address: u32,
    /// `subscribe` messages a client may send per second on average (each
    /// refills its queue from the caches) ...
    pub ws_subscribes_per_s: u32,
    /// ... and in a burst. A subscribe beyond them is counted and applied
    /// only when the client's allowance allows (the latest one wins).
    pub ws_subscribe_burst: u32,
    /// WebSocket connections one address may open per second on average,
    /// with bursts of four times that (each connect sends the client the
    /// state of every machine); beyond it, 429. Behind a reverse proxy every
    /// client has the proxy's address: raise it there.
    pub ws_connects_per_s: u32,
    pub nats: NatsConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            database_url: "postgres://postgres@127.0.0.1:5432/sysmon".to_owned(),
            allowed_origins: Vec::new(),
            silent_after_s: 10,
            history_cache_ttl_s: 5,
            history_max_points: 1000,
            ws_ping_s: 20,
            ws_send_timeout_s: 10,
            alerts_limit: 500,
            max_payload_bytes: accept::DEFAULT_MAX_PAYLOAD_BYTES,
            max_future_skew_s: (accept::DEFAULT_MAX_FUTURE_SKEW_MS / 1000) as u64,
            cache_max_bytes: 256 * 1024 * 1024,
            ws_max_clients: 1000,
            ws_max_clients_per_address: 100,
            ws_subscribes_per_s: 2,
            ws_subscribe_burst: 10,
            ws_connects_per_s: 5,
            nats: NatsConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// The `schemas::accept` limits the feeds apply.
    pub fn limits(&self) -> accept::Limits {
        accept::Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: i64::try_from(self.max_future_skew_s)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        }
    }
}
