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
    // The cause is in the message and not also the error's `source`: a
    // caller printing the chain (`{:#}`) would say it twice.
    #[error("NATS server address {addr:?} is not valid: {cause}")]
    BadAddress { addr: String, cause: std::io::Error },
    #[error("cannot read {what} file {path}: {cause}")]
    File {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
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
                    .map_err(|cause| ConnectError::BadAddress {
                        addr: s.to_owned(),
                        cause,
                    })
            })
            .collect()
    }

    /// Builds the connect options; `name` is shown in the server's monitoring.
    pub async fn options(&self, name: &str) -> Result<ConnectOptions, ConnectError> {
        let mut opts = match &self.creds_file {
            Some(path) => {
                let (jwt, key) = read_creds(path).map_err(|cause| ConnectError::File {
                    what: "credentials",
                    path: path.clone(),
                    cause,
                })?;
                let key = std::sync::Arc::new(key);
                ConnectOptions::with_jwt(jwt, move |nonce| {
                    let key = key.clone();
                    async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
                })
            }
            None => ConnectOptions::new(),
        };
        if let Some(path) = &self.nkey_file {
            let seed = std::fs::read_to_string(path).map_err(|cause| ConnectError::File {
                what: "nkey seed",
                path: path.clone(),
                cause,
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

/// A credentials file is a JWT and a seed of a few hundred bytes each; a
/// path to something endless (`/dev/zero`) stops here.
const MAX_CREDS_BYTES: u64 = 64 * 1024;

/// Reads a `.creds` file (`nsc`, `nats`, `sysmonstm creds`): the user JWT
/// and the key pair of its seed.
///
/// Parsed here rather than by async-nats, which does it with a regular
/// expression: that is all that linked the `regex` crates into the agent,
/// whose memory is mostly its own code pages (docs/benchmarks.md).
fn read_creds(path: &std::path::Path) -> std::io::Result<(String, nkeys::KeyPair)> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CREDS_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CREDS_BYTES {
        return Err(bad_creds("it is over 64 KiB: not a credentials file"));
    }
    let (jwt, seed) = decorated_creds(&text)?;
    let key = nkeys::KeyPair::from_seed(seed)
        .map_err(|e| bad_creds(&format!("its nkey seed is not valid: {e}")))?;
    Ok((jwt.to_owned(), key))
}

fn bad_creds(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

/// The user JWT and the seed of a credentials file: the first two values
/// each on a line of its own between two marker lines (`-----BEGIN … -----`,
/// `------END … ------`), as the NATS clients read it; the comment between
/// them is ignored.
fn decorated_creds(text: &str) -> std::io::Result<(&str, &str)> {
    let marker = |l: &str| {
        let l = l.trim();
        l.len() >= 6 && l.starts_with("---") && l.ends_with("---")
    };
    let value = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'='))
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::with_capacity(2);
    let mut i = 0;
    while i + 2 < lines.len() && found.len() < 2 {
        if marker(lines[i]) && value(lines[i + 1].trim()) && marker(lines[i + 2]) {
            found.push(lines[i + 1].trim());
            i += 3;
        } else {
            i += 1;
        }
    }
    match found[..] {
        [jwt, seed] => Ok((jwt, seed)),
        [_] => Err(bad_creds(
            "it holds only one of the user JWT and the nkey seed between -----BEGIN/END----- lines",
        )),
        _ => Err(bad_creds(
            "it holds no user JWT between -----BEGIN/END----- lines",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> (String, nkeys::KeyPair) {
        let kp = nkeys::KeyPair::new_user();
        // Any JWT-shaped token: these tests read the file, not the claims.
        let jwt =
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVIn0.c2ln_-".to_owned();
        (jwt, kp)
    }

    #[test]
    fn reads_the_creds_files_sysmonstm_and_nats_write() {
        let (jwt, kp) = user();
        let seed = kp.seed().expect("seed");
        let dir = tempfile::tempdir().expect("dir");
        let text = crate::jwt::creds_file(&jwt, &seed);
        for (name, text) in [
            ("lf.creds", text.clone()),
            ("crlf.creds", text.replace('\n', "\r\n")),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            let (got_jwt, got) = read_creds(&path).expect(name);
            assert_eq!(got_jwt, jwt, "{name}");
            assert_eq!(got.public_key(), kp.public_key(), "{name}");
            // The key signs a nonce the user's public key verifies.
            let sig = got.sign(b"nonce").expect("sign");
            kp.verify(b"nonce", &sig).expect("verifies");
        }
    }

    #[test]
    fn a_broken_creds_file_is_a_clear_error() {
        let (jwt, kp) = user();
        let seed = kp.seed().expect("seed");
        let full = crate::jwt::creds_file(&jwt, &seed);
        let cut = full
            .split("-----BEGIN USER NKEY SEED")
            .next()
            .expect("head")
            .to_owned();
        let bad_seed = full.replace(
            &seed,
            "SUAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
        );
        let spaced = full.replace(&jwt, &format!("{jwt} trailing words"));
        for (text, says) in [
            (String::new(), "no user JWT"),
            ("just some text\n".to_owned(), "no user JWT"),
            (jwt.clone(), "no user JWT"),
            (cut, "only one of"),
            (spaced, "only one of"),
            (bad_seed, "seed is not valid"),
            ("x".repeat(70_000), "over 64 KiB"),
        ] {
            let dir = tempfile::tempdir().expect("dir");
            let path = dir.path().join("c.creds");
            std::fs::write(&path, &text).expect("write");
            let e = read_creds(&path)
                .err()
                .unwrap_or_else(|| panic!("{text:.60?} was taken"));
            assert!(e.to_string().contains(says), "{text:.60?}: {e}");
        }
        // Something endless stops at the bound rather than filling memory.
        let Err(e) = read_creds(std::path::Path::new("/dev/zero")) else {
            panic!("/dev/zero was taken as credentials");
        };
        assert!(e.to_string().contains("over 64 KiB"), "{e}");
    }

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
        let Err(e) = rt.block_on(missing.options("t")) else {
            panic!("a missing credentials file was taken");
        };
        assert!(matches!(
            e,
            ConnectError::File {
                what: "credentials",
                ..
            }
        ));
        // The cause is said once, however the error is printed.
        assert!(e.to_string().contains("No such file"), "{e}");
        assert!(std::error::Error::source(&e).is_none(), "{e}");
    }
}
