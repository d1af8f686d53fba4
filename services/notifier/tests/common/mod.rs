//! The notifier's test harness: a real nats-server (testkit), an HTTP
//! receiver that records what it is sent and can answer 500 or be down, a
//! real SMTP server (aiosmtpd), and the notifier itself in-process.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use sysmonstm_notifier::config::{ChannelConfig, RouteConfig, UrlConfig, WebhookConfig};
use sysmonstm_notifier::{Notifier, NotifierConfig};
use sysmonstm_schemas::alert::{Alert, EventKind};
use sysmonstm_schemas::rules::{Metric, Severity};
use sysmonstm_schemas::streams;
use sysmonstm_testkit::{NatsServer, PortHold, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(20);

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What it answered.
    pub status: u16,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The event ids of a webhook body.
    pub fn event_ids(&self) -> Vec<String> {
        self.json()["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Got>>,
    /// Answer 500 to this many requests first (per path), then 200.
    fail: Mutex<BTreeMap<String, usize>>,
}

/// An HTTP receiver for webhooks: `POST /<anything>`, every request
/// recorded; a path can be made to answer 500 a number of times (or for
/// ever), and the whole receiver stopped and started on the same port.
pub struct Receiver {
    inner: Arc<Inner>,
    port: u16,
    stop: Option<(CancellationToken, JoinHandle<()>)>,
    hold: Option<PortHold>,
}

async fn record(
    State(inner): State<Arc<Inner>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = {
        let mut fail = inner.fail.lock().expect("lock");
        match fail.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::OK,
        }
    };
    inner.got.lock().expect("lock").push(Got {
        path,
        headers,
        body,
        status: status.as_u16(),
    });
    status
}

impl Receiver {
    pub async fn start() -> Self {
        let mut me = Self {
            inner: Arc::default(),
            port: 0,
            stop: None,
            hold: None,
        };
        me.up().await;
        me
    }

    /// Serves again (on the same port after a [`Receiver::down`]).
    pub async fn up(&mut self) {
        let hold = self.hold.take();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the receiver");
        drop(hold);
        self.port = listener.local_addr().expect("addr").port();
        let app = Router::new()
            .route("/{*path}", axum::routing::post(record))
            .with_state(Arc::clone(&self.inner));
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { t.cancelled().await })
                .await;
        });
        self.stop = Some((token, task));
    }

    /// Stops serving: connections are refused (the port is held).
    pub async fn down(&mut self) {
        if let Some((token, task)) = self.stop.take() {
            token.cancel();
            let _ = task.await;
        }
        self.hold = Some(PortHold::on(self.port).expect("hold the receiver's port"));
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    pub fn fail(&self, path: &str, times: usize) {
        self.inner
            .fail
            .lock()
            .expect("lock")
            .insert(path.to_owned(), times);
    }

    pub fn got(&self) -> Vec<Got> {
        self.inner.got.lock().expect("lock").clone()
    }

    /// Requests to `path` answered 200.
    pub fn accepted(&self, path: &str) -> Vec<Got> {
        self.got()
            .into_iter()
            .filter(|g| g.path == path && g.status == 200)
            .collect()
    }

    /// Every event id accepted on `path`, with how often.
    pub fn accepted_ids(&self, path: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for g in self.accepted(path) {
            for id in g.event_ids() {
                *m.entry(id).or_insert(0) += 1;
            }
        }
        m
    }
}

/// A real SMTP server (aiosmtpd, installed by scripts/install-deps.sh),
/// saving each message as a file.
pub struct Smtpd {
    child: std::process::Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// How the test's SMTP server is protected.
pub struct SmtpTlsSetup {
    /// `starttls` or `tls`.
    pub mode: &'static str,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub login: Option<(String, String)>,
}

impl Smtpd {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    pub async fn start_with(tls: Option<&SmtpTlsSetup>) -> Self {
        let python = std::env::var("SYSMON_SMTPD_PYTHON").expect(
            "SYSMON_SMTPD_PYTHON names the Python with aiosmtpd: \
             eval \"$(scripts/install-deps.sh)\"",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let portfile = dir.path().join("port");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/common/smtpd.py");
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).expect("mail dir");
        let mut cmd = std::process::Command::new(python);
        cmd.arg(&script).arg(&mail).arg(&portfile);
        if let Some(t) = tls {
            cmd.arg(t.mode).arg(&t.cert).arg(&t.key);
            if let Some((u, p)) = &t.login {
                cmd.arg(u).arg(p);
            }
        }
        let child = cmd.spawn().expect("start aiosmtpd");
        let port = eventually(WAIT, "aiosmtpd listening", || {
            let p = std::fs::read_to_string(&portfile).ok();
            async move { p.and_then(|p| p.trim().parse::<u16>().ok()) }
        })
        .await;
        Self { child, port, dir }
    }

    /// Every message received, whole.
    pub fn messages(&self) -> Vec<String> {
        let mut v: Vec<(u32, String)> = std::fs::read_dir(self.dir.path().join("mail"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let n = name.strip_suffix(".eml")?.parse().ok()?;
                        Some((n, std::fs::read_to_string(e.path()).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v.into_iter().map(|(_, m)| m).collect()
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn js(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client);
    sysmonstm_kit::jetstream::ensure_alerts(&js)
        .await
        .expect("ALERTS");
    js
}

pub fn alert(machine: &str, rule: &str, kind: EventKind, repeat: u32) -> Alert {
    Alert {
        machine: machine.into(),
        rule: rule.into(),
        severity: Severity::Critical,
        kind,
        metric: Metric::Disk,
        value: 97.5,
        threshold: 90.0,
        since_ms: 1_700_000_000_000,
        ts_ms: 1_700_000_030_000,
        message: "disk / 97.5 % used".into(),
        repeat,
        trigger_seq: 7,
    }
}

/// Publishes an event as the alerter does (its codec, subject and Msg-Id)
/// and returns its id.
pub async fn publish(js: &jetstream::Context, a: &Alert) -> String {
    sysmonstm_kit::jetstream::publish_alert(js, a)
        .await
        .expect("ALERTS stored the event");
    a.address().expect("valid").1
}

pub fn webhook(url: String) -> ChannelConfig {
    ChannelConfig::Webhook(WebhookConfig {
        url,
        secret: None,
        secret_file: None,
    })
}

pub fn slack(url: String) -> ChannelConfig {
    ChannelConfig::Slack(UrlConfig { url })
}

pub fn route(channels: &[&str]) -> RouteConfig {
    RouteConfig {
        severity: Vec::new(),
        machines: vec!["*".into()],
        exclude: Vec::new(),
        rules: vec!["*".into()],
        states: Vec::new(),
        reminders: true,
        channels: channels.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// A configuration for tests: this server, quick retries, short ack wait,
/// no /metrics listener.
pub fn config(nats: &NatsServer) -> NotifierConfig {
    let mut c = NotifierConfig {
        group_window_ms: 0,
        retry_initial_ms: 50,
        retry_max_ms: 500,
        max_attempts: 5,
        request_timeout_ms: 2000,
        ack_wait_s: 2,
        metrics_listen: None,
        ..Default::default()
    };
    c.nats.servers = vec![nats.url()];
    c
}

/// A notifier running in-process until stopped (or aborted: a crash).
pub struct Running {
    pub task: JoinHandle<anyhow::Result<()>>,
    pub token: CancellationToken,
    pub counters: Arc<sysmonstm_notifier::Counters>,
}

impl Running {
    pub async fn start(n: Notifier, js: &jetstream::Context) -> Self {
        sysmonstm_kit::telemetry::init_for_tests();
        let counters = n.counters();
        let token = CancellationToken::new();
        let task = tokio::spawn(n.run(token.clone()));
        // Ready once its consumer exists.
        let alerts = js.get_stream(streams::ALERTS).await.expect("ALERTS");
        eventually(WAIT, "the notifier's consumer", || {
            let alerts = alerts.clone();
            async move {
                alerts
                    .get_consumer::<jetstream::consumer::pull::Config>(streams::NOTIFIER_CONSUMER)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        Self {
            task,
            token,
            counters,
        }
    }

    /// Dies where it is: no shutdown, nothing more sent or acked.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        self.token.cancel();
    }

    pub async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

/// Waits until the consumer has nothing pending or unacknowledged.
pub async fn all_acked(js: &jetstream::Context) {
    let alerts = js.get_stream(streams::ALERTS).await.expect("ALERTS");
    eventually(WAIT, "every event acknowledged", || {
        let alerts = alerts.clone();
        async move {
            let mut c = alerts
                .get_consumer::<jetstream::consumer::pull::Config>(streams::NOTIFIER_CONSUMER)
                .await
                .ok()?;
            let info = c.info().await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
}

pub fn count(n: &AtomicUsize) -> usize {
    n.load(Ordering::SeqCst)
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
