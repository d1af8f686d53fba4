//! The gateway's configuration: defaults, then a TOML file, then
//! `SYSMON_GATEWAY_*` variables, then flags (the same layering as every
//! sysmonstm binary, through `sysmonstm_kit::config`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sysmonstm_kit::jetstream::Replicas;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::{accept, streams};

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
    /// `Host` names (or `name:port`) the gateway answers besides the listen
    /// address's host and `localhost`/`127.0.0.1`/`[::1]` on its port. Any
    /// other `Host` gets 421: a page on a name rebound to this address (DNS
    /// rebinding) sends its own name, so it reads nothing. Behind a reverse
    /// proxy or under a DNS name, list that name here.
    pub allowed_hosts: Vec<String>,
    /// File holding the bearer token that rule writes (`PUT`/`DELETE
    /// /api/rules/{name}`) need; its first line is the token (at least 16
    /// characters). Without it (or `api_token`), every write is refused.
    pub api_token_file: Option<std::path::PathBuf>,
    /// The token itself, normally from `SYSMON_GATEWAY_API_TOKEN` (keep it
    /// out of config files; `api_token_file` wins when both are set).
    #[serde(skip_serializing)]
    pub api_token: Option<Secret>,
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
    /// Serve as the public edge (`--edge`, `SYSMON_GATEWAY_EDGE=true`):
    /// everything from the edge nats-server's streams (live data, history
    /// from their retained window, alerts), no PostgreSQL at all, no write
    /// route, the dashboard read-only, and a rate limit per address
    /// (`http_requests_per_s`).
    pub edge: bool,
    /// Address of a second listener with only `/metrics` and `/health`
    /// (e.g. `127.0.0.1:9105`; port 0 picks one); empty: none. The hub's
    /// main listener serves `/metrics` too; the edge's does not (it faces
    /// the internet), so there this is where Prometheus scrapes.
    pub metrics_listen: String,
    /// At the edge: the machines shown, each under its public name
    /// (`"db-internal-3" = "db"`; a name may be kept: `"web-1" = "web-1"`).
    /// Empty: every machine, under its own id. Otherwise a machine not listed
    /// never appears in any answer or live message, and a listed one's id and
    /// hostname are replaced by its public name everywhere (also in alert
    /// messages). Public names are machine ids too (`[a-z0-9_-]`), and unique.
    pub edge_machines: BTreeMap<String, String>,
    /// At the edge: most messages one history or alerts request reads from
    /// the edge's streams. A longer range is answered from one sample per
    /// step instead (at most `history_max_points` message gets).
    pub edge_max_read: u32,
    /// At the edge: whether a machine's snapshot keeps its top processes
    /// (pid, name, CPU, memory). Off: the public copy shows the numbers,
    /// not what runs on the machine.
    pub edge_show_processes: bool,
    /// At the edge: requests (REST, WebSocket connects, assets) one address
    /// may make per second on average ...
    pub http_requests_per_s: u32,
    /// ... and in a burst; beyond them, 429 with `Retry-After`. IPv6
    /// addresses count per /64. Behind a reverse proxy every client has the
    /// proxy's address: raise both there.
    pub http_burst: u32,
    /// Servers of a JetStream cluster holding each stream and bucket the
    /// gateway creates when it is first (MACHINES, ALERTS, the rules
    /// bucket): 1 to 5, 3 on a cluster. Applies when a stream is created.
    pub replicas: Replicas,
    /// Silences held at once (1 ..= 100000, as the notifier's); more are
    /// ignored and counted (`silences_refused_total{reason="max_silences"}`).
    pub max_silences: usize,
    /// How many streams the hub's METRICS is split into (1 to 16, the hub
    /// account's `sysmonstm creds partitions N`; 1 is the single stream
    /// `METRICS`). The hub gateway reads the latest snapshot of every
    /// machine from each `METRICS_<p>`; the edge gateway reads a machine's
    /// history under the subject its partition stores it as.
    pub metrics_partitions: streams::Partitions,
    pub nats: NatsConfig,
}

/// Shortest API token accepted: anything shorter is guessable.
pub const MIN_TOKEN_CHARS: usize = 16;

/// A value that must not appear in logs or `Debug` output.
#[derive(Clone, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(pub String);

/// The layered config parses an environment value that looks like a number
/// or a boolean as one; a token is text whatever it looks like.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            U(u64),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Self(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::U(n) => n.to_string(),
            Scalar::I(n) => n.to_string(),
            Scalar::F(n) => n.to_string(),
            Scalar::B(b) => b.to_string(),
        }))
    }
}

/// The variable the token may come from. Read as it is (not through the
/// layered config, which would turn a long all-digit token into a number).
pub const TOKEN_ENV: &str = "SYSMON_GATEWAY_API_TOKEN";

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            database_url: "postgres://postgres@127.0.0.1:5432/sysmon".to_owned(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            api_token_file: None,
            api_token: None,
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
            edge: false,
            metrics_listen: String::new(),
            edge_machines: BTreeMap::new(),
            edge_max_read: 20_000,
            edge_show_processes: false,
            http_requests_per_s: 20,
            http_burst: 100,
            replicas: Replicas::ONE,
            max_silences: 10_000,
            metrics_partitions: streams::Partitions::ONE,
            nats: NatsConfig::default(),
        }
    }
}

impl GatewayConfig {
    /// HTTP connections served at once: every WebSocket client may have one,
    /// and REST requests have room beside them.
    pub fn http_max_connections(&self) -> usize {
        usize::try_from(self.ws_max_clients)
            .unwrap_or(usize::MAX)
            .saturating_add(256)
    }

    /// Refuses values outside their documented range, naming the key, so a
    /// typo in a config file is an error at start rather than a gateway that
    /// refuses every client or every message.
    pub fn validate(&self) -> Result<(), String> {
        use sysmonstm_kit::config::in_range as range;
        const YEAR_S: u64 = 366 * 86_400;
        range("silent_after_s", self.silent_after_s, 1, YEAR_S)?;
        range("history_cache_ttl_s", self.history_cache_ttl_s, 1, 86_400)?;
        range("history_max_points", self.history_max_points, 1, 100_000)?;
        range("ws_ping_s", self.ws_ping_s, 1, 3600)?;
        range("ws_send_timeout_s", self.ws_send_timeout_s, 1, 3600)?;
        range("alerts_limit", self.alerts_limit, 1, 100_000)?;
        range(
            "max_payload_bytes",
            self.max_payload_bytes,
            1024,
            64 * 1024 * 1024,
        )?;
        range("max_future_skew_s", self.max_future_skew_s, 0, YEAR_S)?;
        range("cache_max_bytes", self.cache_max_bytes, 1 << 16, 1 << 40)?;
        range("ws_max_clients", self.ws_max_clients, 1, 1_000_000)?;
        range(
            "ws_max_clients_per_address",
            self.ws_max_clients_per_address,
            1,
            1_000_000,
        )?;
        range("ws_subscribes_per_s", self.ws_subscribes_per_s, 1, 10_000)?;
        range("ws_subscribe_burst", self.ws_subscribe_burst, 1, 10_000)?;
        range("ws_connects_per_s", self.ws_connects_per_s, 1, 1_000_000)?;
        range("edge_max_read", self.edge_max_read, 1, 10_000_000)?;
        range(
            "http_requests_per_s",
            self.http_requests_per_s,
            1,
            1_000_000,
        )?;
        range("http_burst", self.http_burst, 1, 1_000_000)?;
        range("max_silences", self.max_silences, 1, 100_000)?;
        crate::names::Names::new(&self.edge_machines)?;
        Ok(())
    }

    /// The token rule writes need: the first line of `api_token_file`, else
    /// `api_token`; `None` when neither is set. A token shorter than
    /// [`MIN_TOKEN_CHARS`] or a file that cannot be read is an error, so a
    /// typo is noticed at start rather than as a gateway refusing writes.
    pub fn load_api_token(&self) -> Result<Option<String>, String> {
        let token = match (&self.api_token_file, &self.api_token) {
            (Some(p), _) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("api_token_file {}: {e}", p.display()))?;
                let first = text.lines().next().unwrap_or("").trim().to_owned();
                if first.is_empty() {
                    return Err(format!("api_token_file {}: is empty", p.display()));
                }
                first
            }
            (None, configured) => {
                match std::env::var(TOKEN_ENV)
                    .ok()
                    .filter(|t| !t.trim().is_empty())
                    .or_else(|| configured.as_ref().map(|t| t.0.clone()))
                {
                    Some(t) => t.trim().to_owned(),
                    None => return Ok(None),
                }
            }
        };
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the API token must be at least {MIN_TOKEN_CHARS} characters"
            ));
        }
        Ok(Some(token))
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_looks_like_a_number_is_still_a_string() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "api_token = 1234567890123456789\n").expect("write");
        let cfg = sysmonstm_kit::config::load::<GatewayConfig>(Some(&file), "SYSMON_GWTEST_NONE_")
            .expect("loads");
        assert_eq!(
            cfg.api_token.as_ref().map(|s| s.0.as_str()),
            Some("1234567890123456789")
        );
        assert!(
            !format!("{cfg:?}").contains("1234567890123456789"),
            "the token is printed"
        );
    }

    #[test]
    fn metrics_partitions_load_from_the_file_and_a_bad_count_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gateway.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).expect("write");
            sysmonstm_kit::config::load::<GatewayConfig>(Some(&file), "SYSMON_GWTEST_NONE_")
        };
        assert_eq!(
            load("").expect("loads").metrics_partitions,
            streams::Partitions::ONE
        );
        assert_eq!(
            load("metrics_partitions = 4\n")
                .expect("loads")
                .metrics_partitions
                .get(),
            4
        );
        for bad in ["0", "17", "-1"] {
            let e = load(&format!("metrics_partitions = {bad}\n")).expect_err(bad);
            assert!(e.to_string().contains("metrics_partitions"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_defaults_are_valid_and_values_out_of_range_are_named() {
        GatewayConfig::default().validate().expect("defaults");
        for (cfg, key) in [
            (
                GatewayConfig {
                    ws_ping_s: u64::MAX,
                    ..Default::default()
                },
                "ws_ping_s",
            ),
            (
                GatewayConfig {
                    alerts_limit: -1,
                    ..Default::default()
                },
                "alerts_limit",
            ),
            (
                GatewayConfig {
                    ws_max_clients: 0,
                    ..Default::default()
                },
                "ws_max_clients",
            ),
            (
                GatewayConfig {
                    max_payload_bytes: 0,
                    ..Default::default()
                },
                "max_payload_bytes",
            ),
        ] {
            let e = cfg.validate().expect_err(key);
            assert!(e.starts_with(key), "{e}");
        }
    }
}
