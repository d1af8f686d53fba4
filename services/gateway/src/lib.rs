//! sysmonstm-gateway: what a person (or a script) looks through.
//!
//! * REST under `/api`: machines and their latest snapshot (from the moka
//!   caches the JetStream feeds fill), history (`sysmon_history` in
//!   PostgreSQL, its step chosen so an answer holds ~≤ 1000 points), alerts
//!   and rules; `/health`, `/ready`, `/metrics`.
//! * `/ws`: the latest of every machine on connect, then live updates, with a
//!   bounded, coalescing queue per client (see [`ws`]).
//! * `/`: the dashboard, built from `web/` at compile time and embedded.
//! * With `edge = true` (`--edge`), the public read-only edge: the same
//!   from the edge nats-server's streams alone, no PostgreSQL, GET only,
//!   a rate limit per address and an optional allow-list of machines
//!   ([`edge`], [`rate`], [`names`]).
//!
//! `run(config, shutdown)` is the whole service; tests use [`Gateway`] to get
//! the router without a socket or the bound address with one.

pub mod api;
pub mod assets;
pub mod budget;
pub mod config;
pub mod domain;
pub mod edge;
pub mod error;
pub mod feed;
pub mod guard;
pub mod names;
pub mod params;
pub mod rate;
pub mod rules_edit;
pub mod silences;
pub mod state;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, put};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

pub use config::GatewayConfig;
pub use state::Shared;

/// The gateway before it listens: connected to NATS, with a lazy database
/// pool and empty caches.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
}

/// A gateway that serves; [`addr`](Self::addr) is the bound address.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `metrics_listen` bound, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Waits until the server has stopped (after `shutdown`).
    pub async fn join(self) -> anyhow::Result<()> {
        self.task.await.context("server task")
    }
}

impl Gateway {
    /// Connects to NATS (waiting in the background if no server is up yet)
    /// and prepares the database pool, which connects on first use.
    pub async fn connect(config: GatewayConfig) -> anyhow::Result<Self> {
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
        let nats = config
            .nats
            .connect("sysmonstm-gateway", true)
            .await
            .context("NATS")?;
        // The edge has no write route, so no token; and no PostgreSQL.
        let (token, pool) = if config.edge {
            tracing::info!(
                machines = config.edge_machines.len(),
                "serving as the read-only edge: no database, no write route"
            );
            (None, None)
        } else {
            let token = config
                .load_api_token()
                .map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
            if token.is_none() {
                tracing::warn!(
                    "no API token configured (api_token_file, SYSMON_GATEWAY_API_TOKEN): rule writes are refused"
                );
            }
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(std::time::Duration::from_secs(3))
                .connect_lazy(&config.database_url)
                .context("database URL")?;
            (token, Some(pool))
        };
        let mut shared = Shared::new(config, nats, pool);
        shared.api_token = token.as_deref().map(guard::Token::new);
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Starts following METRICS, MACHINES and ALERTS until `shutdown`.
    pub fn start_feeds(&self, shutdown: &CancellationToken) {
        feed::spawn(&self.shared, shutdown);
    }

    /// Every route, for serving or for `oneshot` tests.
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.shared))
    }

    /// Starts the feeds, binds `config.listen` and serves until `shutdown`.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<Running> {
        let listener = tokio::net::TcpListener::bind(&self.shared.config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.shared.config.listen))?;
        let addr = listener.local_addr().context("bound address")?;
        let cfg = &self.shared.config;
        if let Ok(mut hosts) = self.shared.hosts.write() {
            *hosts = guard::Hosts::bound(&cfg.listen, addr, &cfg.allowed_hosts);
        }
        let metrics_addr = if cfg.metrics_listen.is_empty() {
            None
        } else {
            let ops = tokio::net::TcpListener::bind(&cfg.metrics_listen)
                .await
                .with_context(|| format!("cannot listen on {}", cfg.metrics_listen))?;
            let ops_addr = ops.local_addr().context("bound address")?;
            // Not `http::bound`: the address file names the main listener.
            tracing::info!(addr = %ops_addr, "gateway /metrics listening");
            let app = Router::new()
                .route("/metrics", get(api::prometheus))
                .route("/health", get(api::health))
                .with_state(Arc::clone(&self.shared));
            tokio::spawn(sysmonstm_kit::http::serve(
                ops,
                app,
                shutdown.clone(),
                sysmonstm_kit::http::ServeOptions::default(),
                Arc::new(sysmonstm_kit::http::ServeCounters::default()),
            ));
            Some(ops_addr)
        };
        self.start_feeds(&shutdown);
        let app = self.router();
        sysmonstm_kit::http::bound("gateway", addr);
        // kit::http gives each connection a header timeout, caps how many
        // are open, sets TCP_NODELAY (live updates are small writes; Nagle
        // would hold one back until the client's delayed ACK) and passes the
        // peer address, which caps WebSocket clients per address.
        let opts = sysmonstm_kit::http::ServeOptions {
            max_connections: self.shared.config.http_max_connections(),
            ..Default::default()
        };
        let task = tokio::spawn(sysmonstm_kit::http::serve(
            listener,
            app,
            shutdown,
            opts,
            Arc::clone(&self.shared.http),
        ));
        Ok(Running {
            addr,
            metrics_addr,
            task,
        })
    }
}

/// The whole service: runs until `shutdown`.
pub async fn run(config: GatewayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    Gateway::connect(config)
        .await?
        .start(shutdown)
        .await?
        .join()
        .await
}

fn router(shared: Arc<Shared>) -> Router {
    if shared.config.edge {
        return edge_router(shared);
    }
    Router::new()
        .route("/api/mode", get(api::mode))
        .route("/api/machines", get(api::machines))
        .route("/api/machines/{id}", get(api::machine))
        .route("/api/machines/{id}/metrics", get(api::metrics_latest))
        .route("/api/machines/{id}/history", get(api::history))
        .route("/api/alerts", get(api::alerts))
        .route("/api/alerts/live", get(api::alerts_live))
        .route("/api/rules", get(api::rules))
        .route(
            "/api/rules/{name}",
            put(rules_edit::put)
                .post(rules_edit::put)
                .delete(rules_edit::delete)
                .get(api::api_not_found)
                .layer(DefaultBodyLimit::max(rules_edit::MAX_RULE_BYTES)),
        )
        .route("/api", get(api::api_not_found))
        .route("/api/{*rest}", get(api::api_not_found))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        .route("/metrics", get(api::prometheus))
        .route("/ws", get(ws::upgrade))
        .fallback(get(assets::serve))
        .with_state(Arc::clone(&shared))
        .layer(axum::middleware::from_fn_with_state(shared, guard::hosts))
}

/// The edge's routes: GET only, no rules (there is no rules bucket at the
/// edge, and nothing may be written), and two checks before routing: any
/// other method is refused on every path (`edge::read_only`), and every
/// request takes from its address's allowance (`rate`).
fn edge_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/mode", get(api::mode))
        .route("/api/machines", get(api::machines))
        .route("/api/machines/{id}", get(api::machine))
        .route("/api/machines/{id}/metrics", get(api::metrics_latest))
        .route("/api/machines/{id}/history", get(api::history))
        .route("/api/alerts", get(api::alerts))
        .route("/api/alerts/live", get(api::alerts_live))
        .route("/api", get(api::api_not_found))
        .route("/api/{*rest}", get(api::api_not_found))
        .route("/health", get(api::health))
        .route("/ready", get(api::ready))
        // Not public: the counters are for the operator (`metrics_listen`).
        .route("/metrics", get(api::api_not_found))
        .route("/ws", get(ws::upgrade))
        .fallback(get(assets::serve))
        .with_state(Arc::clone(&shared))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            guard::hosts,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&shared),
            edge::read_only,
        ))
        .layer(axum::middleware::from_fn_with_state(shared, rate::limit))
}
