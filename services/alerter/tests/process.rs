//! The `sysmonstm-alerter` binary as an operator runs it.

use std::process::Command;

#[test]
fn a_broken_rules_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"cpu_high\"\nmetric = \"cpu\"\nthreshold = 90\nseverity = \"critical\"\nfor = 30s\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-alerter"))
        .arg("--rules")
        .arg(&rules)
        // Nothing listens here: the file must be refused before connecting.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sysmonstm-alerter");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rules.toml") && err.contains("line 6"),
        "{err}"
    );
}

#[test]
fn an_invalid_rule_in_the_file_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"disk\"\nmetric = \"disk\"\nmount = \"var\"\nthreshold = 90\nseverity = \"critical\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-alerter"))
        .arg("--rules")
        .arg(&rules)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run sysmonstm-alerter");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`mount`") && err.contains("rules.toml"),
        "{err}"
    );
}

/// The binary as `just up` starts it: the example rules end up in the
/// bucket, and SIGTERM stops it cleanly.
#[tokio::test]
async fn the_binary_loads_the_example_rules_and_stops_on_sigterm() {
    let nats = sysmonstm_testkit::NatsServer::start_hub();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules.example.toml");
    let metrics = format!("127.0.0.1:{}", sysmonstm_testkit::free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sysmonstm-alerter"))
        .arg("--rules")
        .arg(example)
        .arg("--metrics-listen")
        .arg(&metrics)
        .env("NATS_URL", nats.url())
        .env("SYSMON_ALERTER_STREAM_MAX_MIB", "1024")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start sysmonstm-alerter");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    let rule = sysmonstm_testkit::eventually(
        std::time::Duration::from_secs(30),
        "machine_silent in the rules bucket",
        || {
            let js = js.clone();
            async move {
                let kv = js
                    .get_key_value(sysmonstm_schemas::streams::RULES_BUCKET)
                    .await
                    .ok()?;
                let v = kv.get("machine_silent").await.ok()??;
                sysmonstm_schemas::rules::Rule::from_json(&v).ok()
            }
        },
    )
    .await;
    assert_eq!(rule.metric, sysmonstm_schemas::rules::Metric::Silent);
    // In the bucket is not enough: the alerter must have applied all nine
    // (a bucket it created itself once looked empty to it).
    sysmonstm_testkit::eventually(
        std::time::Duration::from_secs(30),
        "the nine example rules applied",
        || {
            let metrics = metrics.clone();
            async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                let mut s = tokio::net::TcpStream::connect(&metrics).await.ok()?;
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.ok()?;
                let mut body = String::new();
                s.read_to_string(&mut body).await.ok()?;
                body.contains("sysmonstm_alerter_rules_total{outcome=\"applied\"} 9\n")
                    .then_some(())
            }
        },
    )
    .await;
    let pid = child.id().expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), child.wait())
        .await
        .expect("stops within 15 s")
        .expect("wait");
    assert!(status.success(), "{status}");
}
