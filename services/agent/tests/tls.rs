//! TLS between the agent and the hub: a nats-server with a `tls {}` block
//! (certificates made here with `rcgen`: a CA and a server certificate it
//! signed), the real agent binary given the CA file (`--tlsca`, `tls_ca` in
//! its config) stores its snapshots; the same agent without the CA, or
//! trusting another CA, is refused and stores nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sysmonstm_schemas::streams;
use sysmonstm_testkit::{NatsServer, eventually};

const WAIT: Duration = Duration::from_secs(20);

struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.self_signed(&key).expect("CA certificate"), key)
}

/// A CA and a server certificate for `localhost` and 127.0.0.1 it signed,
/// written to `dir`.
fn pki(dir: &Path) -> Pki {
    let (ca_cert, ca_key) = ca("sysmonstm test CA");
    let key = KeyPair::generate().expect("server key");
    let mut p = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    p.distinguished_name.push(DnType::CommonName, "hub");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("server certificate");
    let out = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("hub.pem"),
        key: dir.join("hub-key.pem"),
    };
    std::fs::write(&out.ca, ca_cert.pem()).expect("write CA");
    std::fs::write(&out.cert, cert.pem()).expect("write cert");
    std::fs::write(&out.key, key.serialize_pem()).expect("write key");
    out
}

/// Runs the agent binary for three snapshots (killed after `limit`);
/// returns its stderr.
async fn run_agent(url: &str, machine: &str, state: &Path, ca: Option<&Path>) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sysmonstm-agent"));
    cmd.env_remove("SYSMON_AGENT_CONFIG")
        .env_remove("NATS_CA")
        .env("RUST_LOG", "info")
        .env("SYSMON_AGENT_PUBLISH_TIMEOUT_MS", "500")
        .args(["--machine", machine, "--count", "3", "--interval-ms", "100"])
        .arg("--state-dir")
        .arg(state)
        .args(["--server", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ca) = ca {
        cmd.arg("--tlsca").arg(ca);
    }
    let child = cmd.spawn().expect("agent starts");
    match tokio::time::timeout(WAIT, child.wait_with_output()).await {
        Ok(out) => String::from_utf8_lossy(&out.expect("agent output").stderr).into_owned(),
        Err(_) => String::from("(the agent did not finish in time)"),
    }
}

async fn stored(js: &async_nats::jetstream::Context, subject: &str) -> u64 {
    let s = js.get_stream(streams::METRICS).await.expect("METRICS");
    match s
        .info_with_subjects(subject)
        .await
        .expect("stream info")
        .next()
        .await
    {
        Some(Ok((_, n))) => n as u64,
        _ => 0,
    }
}

#[tokio::test]
async fn an_agent_with_the_ca_file_connects_over_tls_and_one_without_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = pki(dir.path());
    let nats = NatsServer::start_with(
        "sync_interval: always",
        &format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 2\n}}",
            pki.cert, pki.key
        ),
    );
    let url = nats.url();

    // A plain client is refused: the server requires TLS.
    assert!(
        async_nats::ConnectOptions::new()
            .connect(&url)
            .await
            .is_err(),
        "a client without TLS connected"
    );
    let admin = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .expect("a client trusting the CA connects");
    let js = async_nats::jetstream::new(admin);
    js.create_stream(streams::metrics(&streams::MetricsLimits {
        max_bytes: 1 << 30,
        ..Default::default()
    }))
    .await
    .expect("METRICS");

    let log = run_agent(&url, "tls-a", &dir.path().join("state-a"), Some(&pki.ca)).await;
    eventually(WAIT, "the TLS agent's snapshots stored", || {
        let js = js.clone();
        async move { (stored(&js, "sysmon.metrics.tls-a").await >= 3).then_some(()) }
    })
    .await;
    assert!(!log.to_lowercase().contains("certificate"), "{log}");

    // Without the CA (the system's roots) and trusting another CA: the
    // server's certificate is not accepted, nothing is stored, and the log
    // says why.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, ca("another CA").0.pem()).expect("write");
    for (machine, ca) in [("tls-b", None), ("tls-c", Some(other.as_path()))] {
        let log = run_agent(&url, machine, &dir.path().join(machine), ca).await;
        assert!(
            log.contains("cannot connect to NATS")
                && log.contains("certificate is not trusted")
                && log.contains("tls_ca"),
            "{machine}: the agent does not say why it cannot connect:\n{log}"
        );
        assert_eq!(
            stored(&js, &format!("sysmon.metrics.{machine}")).await,
            0,
            "{machine}: stored without trusting the server"
        );
    }
}
