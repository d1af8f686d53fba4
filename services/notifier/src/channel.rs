//! The channels: one send of one message, and what its failure means.
//!
//! A send either is accepted (HTTP 2xx; SMTP 250 after DATA), fails for now
//! ([`SendError::Transient`]: a 5xx, 408 or 429, a time-out, a refused or
//! broken connection, an SMTP 4xx — tried again with back-off), or fails
//! for good ([`SendError::Permanent`]: any other 4xx, an SMTP 5xx — the
//! same request would fail again, so it is recorded at once).

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use sysmonstm_schemas::rules::Severity;

use crate::config::{ChannelConfig, EmailConfig, NotifierConfig, SmtpTls};
use crate::message::{self, Event};

/// The header a webhook's HMAC-SHA256 signature travels in
/// (`sha256=<hex>` of the raw body, keyed with the channel's secret).
pub const SIGNATURE_HEADER: &str = "X-Sysmon-Signature";
/// The header with [`message::delivery_id`], the same for the same events.
pub const DELIVERY_HEADER: &str = "X-Sysmon-Delivery";

#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

enum Kind {
    Webhook {
        url: String,
        secret: Option<Vec<u8>>,
    },
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    Ntfy {
        url: String,
        token: Option<String>,
    },
    Email(Box<Mail>),
    Log,
}

struct Mail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

/// One configured channel, ready to send.
pub struct Channel {
    pub name: String,
    kind: Kind,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every configured channel, with the HTTP client they share.
#[derive(Debug)]
pub struct Channels {
    http: reqwest::Client,
    /// A bound on one whole send, whatever the channel's own time-outs.
    timeout: Duration,
    map: BTreeMap<String, Channel>,
}

fn read_secret(
    field: &str,
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> anyhow::Result<Option<String>> {
    if let Some(p) = file {
        let s = std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{field}_file: cannot read {}: {e}", p.display()))?;
        return Ok(Some(s.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(inline.clone())
}

fn smtp(name: &str, e: &EmailConfig, timeout: Duration) -> anyhow::Result<Mail> {
    let tls_params = || -> anyhow::Result<TlsParameters> {
        let mut b = TlsParameters::builder(e.host.clone());
        if let Some(p) = &e.tls_ca {
            let pem = std::fs::read(p).map_err(|err| {
                anyhow::anyhow!("channels.{name}.tls_ca: cannot read {}: {err}", p.display())
            })?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|err| anyhow::anyhow!("channels.{name}.tls_ca: {err}"))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|err| anyhow::anyhow!("channels.{name}.tls: {err}"))
    };
    let tls = match e.tls {
        SmtpTls::Starttls => Tls::Required(tls_params()?),
        SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        SmtpTls::None => Tls::None,
    };
    let builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host).tls(tls);
    let mut builder = builder.port(e.port()).timeout(Some(timeout));
    let password = read_secret(
        &format!("channels.{name}.password"),
        &e.password,
        &e.password_file,
    )?;
    if let (Some(user), Some(pw)) = (&e.user, password) {
        builder = builder.credentials(Credentials::new(user.clone(), pw));
    }
    let parse = |field: String, s: &str| {
        s.parse::<Mailbox>()
            .map_err(|err| anyhow::anyhow!("{field}: {s:?}: {err}"))
    };
    Ok(Mail {
        transport: builder.build(),
        from: parse(format!("channels.{name}.from"), &e.from)?,
        to: e
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| parse(format!("channels.{name}.to[{i}]"), t))
            .collect::<anyhow::Result<_>>()?,
    })
}

impl Channels {
    /// Builds every channel of a validated configuration (secret files
    /// read, SMTP transports made; nothing connects yet).
    pub fn build(cfg: &NotifierConfig) -> anyhow::Result<Self> {
        sysmonstm_kit::install_tls_provider();
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout())
            .connect_timeout(cfg.request_timeout())
            .user_agent(concat!("sysmonstm-notifier/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        let mut map = BTreeMap::new();
        for (name, c) in &cfg.channels {
            let kind = match c {
                ChannelConfig::Webhook(w) => Kind::Webhook {
                    url: w.url.clone(),
                    secret: read_secret(
                        &format!("channels.{name}.secret"),
                        &w.secret,
                        &w.secret_file,
                    )?
                    .map(String::into_bytes),
                },
                ChannelConfig::Slack(u) => Kind::Slack { url: u.url.clone() },
                ChannelConfig::Discord(u) => Kind::Discord { url: u.url.clone() },
                ChannelConfig::Ntfy(n) => Kind::Ntfy {
                    url: n.url.clone(),
                    token: read_secret(&format!("channels.{name}.token"), &n.token, &n.token_file)?,
                },
                ChannelConfig::Email(e) => {
                    Kind::Email(Box::new(smtp(name, e, cfg.request_timeout())?))
                }
                ChannelConfig::Log(_) => Kind::Log,
            };
            map.insert(
                name.clone(),
                Channel {
                    name: name.clone(),
                    kind,
                },
            );
        }
        Ok(Self {
            http,
            timeout: cfg.request_timeout(),
            map,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Channel> {
        self.map.get(name)
    }

    /// Sends one message with `events` (all of one machine) to `channel`,
    /// within `request_timeout_ms` (more is a failure for now).
    pub async fn send(&self, channel: &Channel, events: &[&Event]) -> Result<(), SendError> {
        match tokio::time::timeout(self.timeout, self.send_once(channel, events)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Transient(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    async fn send_once(&self, channel: &Channel, events: &[&Event]) -> Result<(), SendError> {
        let title = message::title(events);
        let text = message::text(events);
        let delivery = message::delivery_id(events);
        match &channel.kind {
            Kind::Webhook { url, secret } => {
                let body = serde_json::to_vec(&message::json(events))
                    .map_err(|e| SendError::Permanent(e.to_string()))?;
                let mut req = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header(DELIVERY_HEADER, &delivery);
                if let Some(key) = secret {
                    req = req.header(SIGNATURE_HEADER, sign(key, &body));
                }
                http_result(req.body(body).send().await).await
            }
            Kind::Slack { url } => {
                let body = serde_json::json!({ "text": format!("*{title}*\n{text}") });
                http_result(self.http.post(url).json_body(&body).send().await).await
            }
            Kind::Discord { url } => {
                // Discord refuses content over 2000 characters.
                let content: String = format!("**{title}**\n{text}").chars().take(2000).collect();
                let body = serde_json::json!({ "content": content });
                http_result(self.http.post(url).json_body(&body).send().await).await
            }
            Kind::Ntfy { url, token } => {
                let worst = events
                    .iter()
                    .map(|e| e.alert.severity)
                    .max_by_key(|s| *s as u8)
                    .unwrap_or(Severity::Info);
                let resolved = events
                    .iter()
                    .all(|e| e.alert.kind != sysmonstm_schemas::alert::EventKind::Firing);
                let (priority, tag) = match (worst, resolved) {
                    (_, true) => ("3", "white_check_mark"),
                    (Severity::Critical, _) => ("5", "rotating_light"),
                    (Severity::Warning, _) => ("4", "warning"),
                    (Severity::Info, _) => ("3", "information_source"),
                };
                // ntfy takes the title from a header, which must be ASCII.
                let ascii_title: String = title
                    .chars()
                    .map(|c| {
                        if c.is_ascii() && !c.is_ascii_control() {
                            c
                        } else {
                            '?'
                        }
                    })
                    .collect();
                let mut req = self
                    .http
                    .post(url)
                    .header("Title", ascii_title)
                    .header("Priority", priority)
                    .header("Tags", tag)
                    .header(DELIVERY_HEADER, &delivery);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                http_result(req.body(text).send().await).await
            }
            Kind::Email(m) => {
                let mut b = lettre::Message::builder()
                    .from(m.from.clone())
                    .subject(title)
                    .message_id(Some(format!(
                        "<{delivery}.{}@sysmonstm.invalid>",
                        channel.name
                    )))
                    .header(ContentType::TEXT_PLAIN);
                for t in &m.to {
                    b = b.to(t.clone());
                }
                let msg = b
                    .body(text)
                    .map_err(|e| SendError::Permanent(format!("cannot build the mail: {e}")))?;
                match m.transport.send(msg).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("{e}"))),
                    Err(e) => Err(SendError::Transient(format!("{e}"))),
                }
            }
            Kind::Log => {
                tracing::warn!(channel = %channel.name, %delivery, "{title}\n{text}");
                Ok(())
            }
        }
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`key`, `body`).
pub fn sign(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!(
        "sha256={}",
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes())
    )
}

trait JsonBody {
    fn json_body(self, v: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, v: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

async fn http_result(r: Result<reqwest::Response, reqwest::Error>) -> Result<(), SendError> {
    let resp = match r {
        Ok(r) => r,
        // Time-outs, refused and broken connections: the receiver may be
        // back soon. A request that could not even be built is ours.
        Err(e) if e.is_builder() => return Err(SendError::Permanent(e.to_string())),
        Err(e) => return Err(SendError::Transient(error_chain(&e))),
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // A little of the answer helps whoever reads the failure.
    let body: String = resp
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let why = format!("HTTP {status}: {body}");
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Err(SendError::Transient(why))
    } else {
        Err(SendError::Permanent(why))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
