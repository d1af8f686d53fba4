//! Connecting to NATS with the options the nats CLI offers: a server list,
//! credentials file, nkey seed, user/password, token, TLS, custom inbox
//! prefix. Every binary takes the same `[nats]` section.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs, tried in turn (e.g. `nats://127.0.0.1:4222`).
    pub servers: Vec<String>,
    /// A `.creds` file (JWT and nkey seed), as `nats --creds`.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey seed (`SU…`), as `nats --nkey`.
    pub nkey_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate(s) to verify the server with; implies TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Inbox prefix for replies, e.g. `_INBOX_<machine>` where permissions
    /// allow only the machine's own inbox.
    pub inbox_prefix: Option<String>,
    /// Seconds to wait for a TCP connection to one server.
    pub connect_timeout_s: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            creds_file: None,
            nkey_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            inbox_prefix: None,
            connect_timeout_s: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no NATS server configured")]
    NoServers,
    #[error("NATS server address {addr:?} is not valid: {source}")]
    BadAddress {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot read {what} file {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls_cert and tls_key must be given together")]
    HalfClientCert,
    #[error("password given without a user")]
    PasswordWithoutUser,
    #[error("cannot connect to NATS at {servers}: {source}")]
    Connect {
        servers: String,
        source: async_nats::ConnectError,
    },
}

impl NatsConfig {
    /// Parses the server list, so a typo is reported before any connection.
    pub fn server_addrs(&self) -> Result<Vec<ServerAddr>, ConnectError> {
        if self.servers.is_empty() {
            return Err(ConnectError::NoServers);
        }
        self.servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|source| ConnectError::BadAddress {
                        addr: s.to_owned(),
                        source,
                    })
            })
            .collect()
    }

    /// Builds the connect options; `name` is shown in the server's monitoring.
    pub async fn options(&self, name: &str) -> Result<ConnectOptions, ConnectError> {
        let mut opts = match &self.creds_file {
            Some(path) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|source| ConnectError::File {
                    what: "credentials",
                    path: path.clone(),
                    source,
                })?,
            None => ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::File {
                what: "nkey seed",
                path: path.clone(),
                source,
            })?;
            opts = opts.nkey(seed.trim().to_owned());
        }
        match (&self.user, &self.password) {
            (Some(u), p) => {
                opts = opts.user_and_password(u.clone(), p.clone().unwrap_or_default());
            }
            (None, Some(_)) => return Err(ConnectError::PasswordWithoutUser),
            (None, None) => {}
        }
        if let Some(t) = &self.token {
            opts = opts.token(t.clone());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => {
                opts = opts
                    .add_client_certificate(c.clone(), k.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err(ConnectError::HalfClientCert),
        }
        if let Some(p) = &self.inbox_prefix {
            opts = opts.custom_inbox_prefix(p.clone());
        }
        Ok(opts
            .name(name)
            .connection_timeout(Duration::from_secs(self.connect_timeout_s.max(1)))
            .event_callback(|event| async move { log_event(&event) }))
    }

    /// Connects; with `retry_initial` the client keeps trying in the
    /// background when no server is up yet (an agent must start even while
    /// its hub is away) and this returns at once.
    pub async fn connect(
        &self,
        name: &str,
        retry_initial: bool,
    ) -> Result<async_nats::Client, ConnectError> {
        let addrs = self.server_addrs()?;
        let mut opts = self.options(name).await?;
        if retry_initial {
            opts = opts
                .retry_on_initial_connect()
                .event_callback(self.diagnosing_callback(name));
        }
        opts.connect(addrs)
            .await
            .map_err(|source| ConnectError::Connect {
                servers: self.servers.join(","),
                source,
            })
    }
}

impl NatsConfig {
    /// The event callback of a client that connects in the background: as
    /// `log_event`, and on the first failure to connect one more attempt
    /// whose whole error is logged. async-nats reports such failures only by
    /// kind ("IO error"), which hides an untrusted certificate or a refused
    /// TLS handshake behind a retry loop.
    fn diagnosing_callback(
        &self,
        name: &str,
    ) -> impl Fn(
        async_nats::Event,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>
    + Send
    + Sync
    + 'static {
        let cfg = self.clone();
        let name = name.to_owned();
        let diagnosed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        move |event| {
            log_event(&event);
            let failed = matches!(
                event,
                async_nats::Event::ClientError(async_nats::ClientError::Other(_))
            );
            if failed && !diagnosed.swap(true, std::sync::atomic::Ordering::Relaxed) {
                let (cfg, name) = (cfg.clone(), name.clone());
                tokio::spawn(async move { cfg.diagnose(&name).await });
            }
            Box::pin(async {})
        }
    }

    /// One connection attempt without retries, its error logged in full
    /// with a hint for the usual causes.
    async fn diagnose(&self, name: &str) {
        let Ok(addrs) = self.server_addrs() else {
            return;
        };
        let Ok(opts) = self.options(name).await else {
            return;
        };
        if let Err(e) = opts.connect(addrs).await {
            let text = e.to_string();
            let lower = text.to_lowercase();
            let hint = if lower.contains("certificate") || lower.contains("unknownissuer") {
                "the server's TLS certificate is not trusted: give the CA file that signed it (tls_ca, --tlsca)"
            } else if lower.contains("tls") {
                "the TLS handshake failed: check that the server and this client agree on TLS (tls_ca, tls_cert/tls_key)"
            } else if lower.contains("authorization") || lower.contains("authentication") {
                "the server refused the credentials (creds_file, --creds)"
            } else {
                // A server that is away is normal (the agent spools).
                tracing::warn!(servers = %self.servers.join(","), error = %text, "cannot connect to NATS yet; still trying in the background");
                return;
            };
            tracing::error!(servers = %self.servers.join(","), error = %text, "cannot connect to NATS: {hint}; still trying");
        }
    }
}

/// Connection events go to the log; a refusal by the server (a permission
/// violation, an authorization error) is an error that says what to check,
/// not a time-out the user has to guess at.
fn log_event(event: &async_nats::Event) {
    match event {
        async_nats::Event::ServerError(async_nats::ServerError::Other(e))
            if e.to_lowercase().contains("permissions violation") =>
        {
            tracing::error!(
                error = %e,
                "the NATS server refused this: the credentials do not allow it (for an agent: \
                 its creds must be issued for this machine id, `sysmonstm creds agent <machine>`)"
            );
        }
        async_nats::Event::ServerError(e) => {
            tracing::error!(error = %e, "the NATS server reported an error");
        }
        event => tracing::info!(%event, "nats connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_server_list() {
        let cfg = NatsConfig {
            servers: vec!["nats://a:4222, nats://b:4222".into(), "c:4223".into()],
            ..Default::default()
        };
        assert_eq!(cfg.server_addrs().expect("valid").len(), 3);
    }

    #[test]
    fn bad_combinations_are_refused() {
        let no_servers = NatsConfig {
            servers: vec![],
            ..Default::default()
        };
        assert!(matches!(
            no_servers.server_addrs(),
            Err(ConnectError::NoServers)
        ));

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let half = NatsConfig {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(matches!(
            rt.block_on(half.options("t")),
            Err(ConnectError::HalfClientCert)
        ));
        let missing = NatsConfig {
            creds_file: Some("/nonexistent/agent.creds".into()),
            ..Default::default()
        };
        assert!(matches!(
            rt.block_on(missing.options("t")),
            Err(ConnectError::File {
                what: "credentials",
                ..
            })
        ));
    }
}
