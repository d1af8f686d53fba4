//! Per-agent credentials on a hub in operator mode (`sysmonstm creds`): the
//! broker, not our code, decides what an agent may do. An agent publishes
//! its own snapshots; with another machine's id its snapshots are refused by
//! the server, nothing is stored, and it says so clearly; its credentials
//! cannot read anyone's data or another agent's inbox; anonymous clients and
//! revoked agents are refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt as _;

use sysmonstm_kit::creds::{Authority, Role};
use sysmonstm_schemas::streams;
use sysmonstm_testkit::{NatsServer, eventually};

const WAIT: Duration = Duration::from_secs(20);

fn hub(authority: &Authority) -> NatsServer {
    NatsServer::start_with("sync_interval: always", &authority.include_line())
}

async fn connect(url: &str, creds: &Path, inbox: Option<&str>) -> Option<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::with_credentials_file(creds.to_owned())
        .await
        .expect("creds file reads");
    if let Some(p) = inbox {
        opts = opts.custom_inbox_prefix(p);
    }
    opts.connect(url).await.ok()
}

/// Runs the agent binary for a few snapshots; returns its stderr.
fn run_agent(url: &str, creds: &Path, machine: &str, state: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-agent"))
        .env_remove("SYSMON_AGENT_CONFIG")
        .env("RUST_LOG", "info")
        .args(["--machine", machine, "--count", "3", "--interval-ms", "100"])
        .arg("--state-dir")
        .arg(state)
        .arg("--server")
        .arg(url)
        .arg("--creds")
        .arg(creds)
        .env("SYSMON_AGENT_PUBLISH_TIMEOUT_MS", "300")
        .stdout(Stdio::null())
        .output()
        .expect("run the agent");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn stored(js: &async_nats::jetstream::Context, subject: &str) -> u64 {
    let s = js.get_stream(streams::METRICS).await.expect("METRICS");
    let info = s
        .info_with_subjects(subject)
        .await
        .expect("stream info")
        .next()
        .await;
    match info {
        Some(Ok((_, n))) => n as u64,
        _ => 0,
    }
}

#[tokio::test]
async fn an_agent_may_publish_as_itself_only_and_read_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut authority = Authority::init(&dir.path().join("creds")).expect("authority");
    let a = authority.issue(Role::Agent("a".into())).expect("agent a");
    let b = authority.issue(Role::Agent("b".into())).expect("agent b");
    let persister = authority.issue(Role::Persister).expect("persister");
    let nats = hub(&authority);
    let url = nats.url();

    // The persister's credential creates METRICS, as the persister does.
    let admin = connect(&url, &persister, None)
        .await
        .expect("persister connects");
    let js = async_nats::jetstream::new(admin);
    js.create_stream(streams::metrics(&streams::MetricsLimits {
        max_bytes: 1 << 30,
        ..Default::default()
    }))
    .await
    .expect("METRICS created with the persister's credential");

    // Agent a as itself: stored.
    let log = run_agent(&url, &a, "a", &dir.path().join("state-a"));
    eventually(WAIT, "agent a's snapshots stored", || {
        let js = js.clone();
        async move { (stored(&js, "sysmon.metrics.a").await >= 3).then_some(()) }
    })
    .await;
    assert!(!log.contains("Permissions Violation"), "{log}");

    // Agent a's credential used as machine b: refused by the server,
    // nothing stored, and the agent says why.
    let log = run_agent(&url, &a, "b", &dir.path().join("state-b"));
    assert!(
        log.contains("Permissions Violation") && log.contains("credentials"),
        "the agent does not report the refusal clearly:\n{log}"
    );
    assert_eq!(stored(&js, "sysmon.metrics.b").await, 0);

    // Reading: nobody's data, not another agent's inbox.
    let client = connect(&url, &a, Some("_INBOX_a"))
        .await
        .expect("agent a connects");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher = async_nats::ConnectOptions::with_credentials_file(a.clone())
        .await
        .expect("creds")
        .custom_inbox_prefix("_INBOX_a")
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.to_string());
            }
        })
        .connect(&url)
        .await
        .expect("agent a connects");
    for subject in [
        "sysmon.>",
        "sysmon.metrics.b",
        "_INBOX_b.>",
        "_INBOX.>",
        "$JS.API.>",
    ] {
        let _sub = watcher.subscribe(subject).await.expect("sent");
        watcher.flush().await.expect("flush");
        let refused = eventually(WAIT, &format!("subscription to {subject} refused"), || {
            let got = rx.try_recv().ok();
            async move { got.filter(|e| e.contains("Permissions Violation")) }
        })
        .await;
        assert!(refused.contains(subject), "{refused}");
    }
    // Its JetStream API calls are refused too: it cannot even list streams.
    let ajs = async_nats::jetstream::new(client);
    assert!(ajs.get_stream(streams::METRICS).await.is_err());
    drop(b);
}

#[tokio::test]
async fn anonymous_and_revoked_clients_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let creds_dir = dir.path().join("creds");
    let mut authority = Authority::init(&creds_dir).expect("authority");
    let a = authority.issue(Role::Agent("a".into())).expect("agent a");
    let keep = std::fs::read(&a).expect("creds");
    let nats = hub(&authority);
    let url = nats.url();

    let anon = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(&url)
        .await;
    assert!(anon.is_err(), "an anonymous client was let in");
    assert!(connect(&url, &a, Some("_INBOX_a")).await.is_some());

    // Revoked: the file is gone from the authority; a stolen copy is refused
    // once the server has reloaded its resolver config — a reload, not a
    // restart, as an operator does it. The revocation comes in a later
    // second than `creds init` (JWTs carry seconds), as it always does in
    // use: the reload once failed then, on a re-minted operator JWT.
    let now_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let t0 = now_s();
    eventually(WAIT, "the clock's next second", || async move {
        (now_s() > t0).then_some(())
    })
    .await;
    authority.revoke("agent-a").expect("revoked");
    let stolen = dir.path().join("stolen.creds");
    std::fs::write(&stolen, keep).expect("copy");
    nats.reload();
    eventually(WAIT, "the revoked agent is refused", || {
        let (url, stolen) = (url.clone(), stolen.clone());
        async move {
            connect(&url, &stolen, Some("_INBOX_a"))
                .await
                .is_none()
                .then_some(())
        }
    })
    .await;
}
