//! The notifier's configuration: defaults, then a TOML file (channels and
//! routes live there, beside the rules file), then `SYSMON_NOTIFIER_*`
//! variables, then flags. [`NotifierConfig::validate`] checks everything
//! before anything connects: every number within its range, every channel
//! complete (a URL that parses, an address that is one), every route naming
//! channels that exist; the error names the field
//! (`channels.mail.to[1]: …`, `routes[0].channels: …`) and the binary exits
//! with code 2.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sysmonstm_kit::config::ConfigError;
use sysmonstm_kit::nats::NatsConfig;
use sysmonstm_schemas::MachineId;
use sysmonstm_schemas::rules::Severity;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// Events of one machine that arrive within this many milliseconds of
    /// its first one go out as one message per channel (0 ..= 60000;
    /// default 2000; 0: each on its own).
    pub group_window_ms: u64,
    /// Most events in one message (1 ..= 500; default 50): a burst beyond
    /// it goes out in several.
    pub max_group_events: usize,
    /// Tries per (channel, message) before giving up and recording the
    /// failure (1 ..= 100; default 10).
    pub max_attempts: u32,
    /// Back-off after the first failed try, doubled each time up to
    /// `retry_max_ms` (10 ..= 60000; default 500).
    pub retry_initial_ms: u64,
    /// (100 ..= 600000; default 30000.) With the defaults a channel is
    /// tried for about two minutes.
    pub retry_max_ms: u64,
    /// Time for one HTTP request or one SMTP conversation, in milliseconds
    /// (100 ..= 120000; default 10000).
    pub request_timeout_ms: u64,
    /// Seconds before an event handed out and not acknowledged (the
    /// notifier died) is delivered again (1 ..= 3600; default 60). While an
    /// event is being retried the notifier tells JetStream it is working on
    /// it, so this is not a limit on retries.
    pub ack_wait_s: u64,
    /// Events in the notifier's hands at once, the consumer's
    /// max_ack_pending (1 ..= 100000; default 1024). It bounds every queue
    /// and map of events.
    pub max_in_flight: usize,
    /// How long the record of a delivered (channel, event) is kept, in
    /// hours (1 ..= 8760; default 168): an event redelivered within it is
    /// not sent again.
    pub dedupe_ttl_h: u64,
    /// Silences held at once (1 ..= 100000; default 10000); more are
    /// ignored and counted.
    pub max_silences: usize,
    /// Where `/health` and `/metrics` are served; empty: nowhere.
    pub metrics_listen: Option<String>,
    /// Named channels: `[channels.<name>]` with `type = "webhook" | "slack"
    /// | "discord" | "ntfy" | "email" | "log"`.
    pub channels: BTreeMap<String, ChannelConfig>,
    /// `[[routes]]`: every route an event matches adds its channels.
    pub routes: Vec<RouteConfig>,
    pub nats: NatsConfig,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            group_window_ms: 2000,
            max_group_events: 50,
            max_attempts: 10,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            request_timeout_ms: 10_000,
            ack_wait_s: 60,
            max_in_flight: 1024,
            dedupe_ttl_h: 168,
            max_silences: 10_000,
            metrics_listen: Some("127.0.0.1:9104".to_owned()),
            channels: BTreeMap::new(),
            routes: Vec::new(),
            nats: NatsConfig::default(),
        }
    }
}

/// One channel.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChannelConfig {
    /// JSON `{"events": […]}` POSTed to `url`; with a secret, the header
    /// `X-Sysmon-Signature: sha256=<hex HMAC-SHA256 of the body>`.
    Webhook(WebhookConfig),
    /// A Slack-compatible incoming webhook (`{"text": …}`; Mattermost,
    /// Rocket.Chat take it too).
    Slack(UrlConfig),
    /// A Discord incoming webhook (`{"content": …}`).
    Discord(UrlConfig),
    /// ntfy: `url` is the server and topic (`https://ntfy.sh/my-topic`).
    Ntfy(NtfyConfig),
    /// Mail over SMTP.
    Email(EmailConfig),
    /// A log line at warn level: for trying routes out.
    Log(LogConfig),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// HMAC key, inline (development) or from a file (deployments).
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UrlConfig {
    pub url: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NtfyConfig {
    pub url: String,
    /// Access token (`Authorization: Bearer …`), inline or from a file.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {}

/// How the SMTP connection is protected.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection, then STARTTLS, required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS at all: only for a relay on the same host.
    None,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub host: String,
    /// Default: 587 (starttls), 465 (tls), 25 (none).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_tls")]
    pub tls: SmtpTls,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted besides the platform's, for a server
    /// whose certificate a private CA signed.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// `alerts@example.com` or `sysmonstm <alerts@example.com>`.
    pub from: String,
    pub to: Vec<String>,
}

fn default_tls() -> SmtpTls {
    SmtpTls::Starttls
}

impl EmailConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        })
    }
}

/// The alert states a route can select.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    Firing,
    Resolved,
    Acknowledged,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Severities this route takes; empty (default): all.
    #[serde(default)]
    pub severity: Vec<Severity>,
    /// Machine-id globs (`*`, `?`); default `["*"]`.
    #[serde(default = "all")]
    pub machines: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Rule-name globs; default `["*"]`.
    #[serde(default = "all")]
    pub rules: Vec<String>,
    /// Event states; empty (default): all.
    #[serde(default)]
    pub states: Vec<StateName>,
    /// Whether reminders of a firing alert go out too (default true).
    #[serde(default = "yes")]
    pub reminders: bool,
    pub channels: Vec<String>,
}

fn all() -> Vec<String> {
    vec!["*".to_owned()]
}

fn yes() -> bool {
    true
}

fn invalid(field: impl std::fmt::Display, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{field}: {why}"))
}

fn check<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ConfigError> {
    sysmonstm_kit::config::in_range(field, v, lo, hi).map_err(ConfigError::Invalid)
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let u = reqwest::Url::parse(url).map_err(|e| invalid(field, format!("{url:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(invalid(field, format!("{url:?} is not an http(s) URL")));
    }
    Ok(())
}

fn check_glob(field: &str, g: &str) -> Result<(), ConfigError> {
    let ok = !g.is_empty()
        && g.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '*' | '?')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{g:?} is not a glob of [a-z0-9_-*?]"),
        ))
    }
}

fn check_secret(
    field: &str,
    inline: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    if inline.is_some() && file.is_some() {
        return Err(invalid(field, "give the value or the file, not both"));
    }
    if let Some(p) = file
        && !p.is_file()
    {
        return Err(invalid(
            format!("{field}_file"),
            format!("{} is not a readable file", p.display()),
        ));
    }
    Ok(())
}

impl NotifierConfig {
    /// Everything checked; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check("group_window_ms", self.group_window_ms, 0, 60_000)?;
        check("max_group_events", self.max_group_events, 1, 500)?;
        check("max_attempts", self.max_attempts, 1, 100)?;
        check("retry_initial_ms", self.retry_initial_ms, 10, 60_000)?;
        check("retry_max_ms", self.retry_max_ms, 100, 600_000)?;
        check("request_timeout_ms", self.request_timeout_ms, 100, 120_000)?;
        check("ack_wait_s", self.ack_wait_s, 1, 3600)?;
        check("max_in_flight", self.max_in_flight, 1, 100_000)?;
        check("dedupe_ttl_h", self.dedupe_ttl_h, 1, 8760)?;
        check("max_silences", self.max_silences, 1, 100_000)?;
        if self.channels.len() > 256 {
            return Err(invalid("channels", "more than 256"));
        }
        for (name, ch) in &self.channels {
            if name.len() > 64 || MachineId::parse(name).is_err() {
                return Err(invalid(
                    format!("channels.{name}"),
                    "a channel name is 1..=64 of [a-z0-9_-]",
                ));
            }
            let f = |k: &str| format!("channels.{name}.{k}");
            match ch {
                ChannelConfig::Webhook(w) => {
                    check_url(&f("url"), &w.url)?;
                    check_secret(&f("secret"), &w.secret, &w.secret_file)?;
                }
                ChannelConfig::Slack(u) | ChannelConfig::Discord(u) => {
                    check_url(&f("url"), &u.url)?;
                }
                ChannelConfig::Ntfy(n) => {
                    check_url(&f("url"), &n.url)?;
                    check_secret(&f("token"), &n.token, &n.token_file)?;
                }
                ChannelConfig::Email(e) => {
                    if e.host.is_empty() {
                        return Err(invalid(f("host"), "empty"));
                    }
                    if e.port == Some(0) {
                        return Err(invalid(f("port"), "0 is not a port"));
                    }
                    e.from
                        .parse::<lettre::message::Mailbox>()
                        .map_err(|err| invalid(f("from"), format!("{:?}: {err}", e.from)))?;
                    if e.to.is_empty() {
                        return Err(invalid(f("to"), "no recipient"));
                    }
                    if e.to.len() > 100 {
                        return Err(invalid(f("to"), "more than 100 recipients"));
                    }
                    for (i, t) in e.to.iter().enumerate() {
                        t.parse::<lettre::message::Mailbox>().map_err(|err| {
                            invalid(f(&format!("to[{i}]")), format!("{t:?}: {err}"))
                        })?;
                    }
                    if e.password.is_some() || e.password_file.is_some() {
                        if e.user.is_none() {
                            return Err(invalid(f("user"), "a password is given without a user"));
                        }
                        if e.tls == SmtpTls::None {
                            return Err(invalid(
                                f("tls"),
                                "\"none\" would send the password in clear; use starttls or tls",
                            ));
                        }
                    }
                    check_secret(&f("password"), &e.password, &e.password_file)?;
                    if let Some(p) = &e.tls_ca
                        && !p.is_file()
                    {
                        return Err(invalid(
                            f("tls_ca"),
                            format!("{} is not a readable file", p.display()),
                        ));
                    }
                }
                ChannelConfig::Log(_) => {}
            }
        }
        if self.routes.len() > 1000 {
            return Err(invalid("routes", "more than 1000"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let f = |k: &str| format!("routes[{i}].{k}");
            if r.channels.is_empty() {
                return Err(invalid(f("channels"), "a route names at least one channel"));
            }
            for c in &r.channels {
                if !self.channels.contains_key(c) {
                    let known: Vec<&str> = self.channels.keys().map(String::as_str).collect();
                    return Err(invalid(
                        f("channels"),
                        format!("no channel {c:?} (configured: {known:?})"),
                    ));
                }
            }
            for g in &r.machines {
                check_glob(&f("machines"), g)?;
            }
            for g in &r.exclude {
                check_glob(&f("exclude"), g)?;
            }
            for g in &r.rules {
                check_glob(&f("rules"), g)?;
            }
        }
        Ok(())
    }

    pub fn group_window(&self) -> Duration {
        Duration::from_millis(self.group_window_ms.min(60_000))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.clamp(100, 120_000))
    }

    pub fn dedupe_ttl(&self) -> Duration {
        Duration::from_secs(self.dedupe_ttl_h.clamp(1, 8760) * 3600)
    }

    /// The back-off before try `n + 1` after `n` failed ones (n ≥ 1).
    pub fn backoff(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(20);
        let ms = self
            .retry_initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.retry_max_ms);
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<NotifierConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("notifier.toml");
        std::fs::write(&p, text).expect("write");
        let c: NotifierConfig =
            sysmonstm_kit::config::load(Some(&p), "SYSMON_NOTIFIER_TEST_UNSET_")?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn a_full_file_is_read() {
        let c = load(
            r#"
group_window_ms = 0
[channels.hook]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret = "s3cret"
[channels.chat]
type = "slack"
url = "https://hooks.example.com/x"
[channels.mail]
type = "email"
host = "smtp.example.com"
user = "u"
password = "p"
from = "sysmonstm <alerts@example.com>"
to = ["ops@example.com"]
[channels.local]
type = "log"
[[routes]]
severity = ["critical"]
machines = ["web*"]
channels = ["hook", "mail"]
[[routes]]
channels = ["local"]
"#,
        )
        .expect("valid");
        assert_eq!(c.channels.len(), 4);
        assert_eq!(c.routes[0].rules, vec!["*"]);
        assert!(c.routes[1].reminders);
    }

    #[test]
    fn errors_name_the_field() {
        let base = "[channels.local]\ntype = \"log\"\n";
        for (text, field) in [
            ("max_attempts = 0\n".to_owned(), "max_attempts"),
            (
                format!("{base}[[routes]]\nchannels = [\"nope\"]\n"),
                "routes[0].channels",
            ),
            (
                "[channels.hook]\ntype = \"webhook\"\nurl = \"not a url\"\n".to_owned(),
                "channels.hook.url",
            ),
            (
                "[channels.m]\ntype = \"email\"\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"ok@x.y\", \"broken\"]\n"
                    .to_owned(),
                "channels.m.to[1]",
            ),
            (
                "[channels.m]\ntype = \"email\"\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"ok@x.y\"]\nuser = \"u\"\npassword = \"p\"\ntls = \"none\"\n"
                    .to_owned(),
                "channels.m.tls",
            ),
            (
                "[channels.x]\ntype = \"pager\"\nurl = \"http://a\"\n".to_owned(),
                "pager",
            ),
            (
                "[channels.x]\ntype = \"slack\"\nurl = \"http://a\"\nchannel = \"#ops\"\n"
                    .to_owned(),
                "channel",
            ),
            (
                format!("{base}[[routes]]\nmachines = [\"Web.*\"]\nchannels = [\"local\"]\n"),
                "routes[0].machines",
            ),
            ("[channels.\"Bad Name\"]\ntype = \"log\"\n".to_owned(), "channels.Bad Name"),
        ] {
            let e = load(&text).expect_err(field).to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = NotifierConfig::default();
        assert_eq!(c.backoff(1), Duration::from_millis(500));
        assert_eq!(c.backoff(2), Duration::from_millis(1000));
        assert_eq!(c.backoff(8), Duration::from_millis(30_000));
        assert_eq!(c.backoff(u32::MAX), Duration::from_millis(30_000));
    }
}
