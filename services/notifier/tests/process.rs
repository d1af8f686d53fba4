//! The notifier's binary under hostile input: garbage of every size on the
//! subjects it reads (ALERTS, the silences bucket), then a normal event,
//! which still goes out. It stays up, answers /health, counts the rejects,
//! and its /metrics passes `promtool check metrics`.

mod common;

use std::process::{Command, Stdio};

use common::*;
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_testkit::prom::{promtool_check, series};
use sysmonstm_testkit::{NatsServer, eventually};

async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_survives_garbage_counts_it_and_still_delivers() {
    let nats = NatsServer::start_hub();
    let js = js(&nats).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("notifier.toml");
    std::fs::write(
        &conf,
        format!(
            "group_window_ms = 100\n[channels.hook]\ntype = \"webhook\"\nurl = \"{}\"\n\
             [[routes]]\nchannels = [\"hook\"]\n",
            rx.url("hook")
        ),
    )
    .expect("config");
    let addr_file = dir.path().join("addr");
    let mut child = Child(
        Command::new(env!("CARGO_BIN_EXE_sysmonstm-notifier"))
            .arg("--config")
            .arg(&conf)
            .env("NATS_URL", nats.url())
            .env("SYSMON_NOTIFIER_METRICS_LISTEN", "127.0.0.1:0")
            .env("SYSMON_ADDR_FILE", &addr_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the notifier"),
    );
    let addr = eventually(WAIT, "the notifier's address", || {
        let a = std::fs::read_to_string(&addr_file).ok();
        async move { a }
    })
    .await;
    // Ready once its consumer exists (it made its buckets before).
    let alerts = js
        .get_stream(sysmonstm_schemas::streams::ALERTS)
        .await
        .expect("ALERTS");
    eventually(WAIT, "the notifier's consumer", || {
        let alerts = alerts.clone();
        async move {
            alerts
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    sysmonstm_schemas::streams::NOTIFIER_CONSUMER,
                )
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;

    let client = js.client();
    let max = client.server_info().max_payload;
    let big = bytes::Bytes::from(vec![0x0a_u8; (1 << 20).min(max.saturating_sub(512))]);
    for subject in [
        "sysmon.alerts.critical.garbage-1.cpu_high",
        "sysmon.alerts.nonsense.garbage-1.cpu_high",
        "$KV.sysmon_silences.garbage",
    ] {
        client.publish(subject, big.clone()).await.expect("publish");
        for len in [0usize, 1, 2, 7, 64, 1000, 65_537] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
            client.publish(subject, junk.into()).await.expect("publish");
        }
    }
    // A well-formed event on a subject that is not its own.
    client
        .publish(
            "sysmon.alerts.nonsense.garbage-1.cpu_high",
            alert("garbage-1", "cpu_high", EventKind::Firing, 0)
                .encode()
                .into(),
        )
        .await
        .expect("publish");
    // A silence that parses but is not one (it would mute everything for
    // ever): refused.
    client
        .publish(
            "$KV.sysmon_silences.forever",
            r#"{"id":"forever","machines":"*","starts_ms":0,"ends_ms":9223372036854775807}"#.into(),
        )
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    let id = publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    eventually(WAIT, "the normal event delivered", || {
        let ok = rx.accepted_ids("hook").contains_key(&id);
        async move { ok.then_some(()) }
    })
    .await;
    assert!(
        child.0.try_wait().expect("wait").is_none(),
        "the notifier died"
    );
    let (status, _) = get(&addr, "/health").await.expect("health answers");
    assert_eq!(status, 200);
    let text = eventually(WAIT, "the rejects counted", || {
        let addr = addr.clone();
        async move {
            let (_, text) = get(&addr, "/metrics").await?;
            let decode = series(
                &text,
                "sysmonstm_notifier_events_rejected_total{reason=\"decode\"}",
            )?;
            let mismatch = series(
                &text,
                "sysmonstm_notifier_events_rejected_total{reason=\"machine_mismatch\"}",
            )?;
            let silences = series(&text, "sysmonstm_notifier_silences_refused_total")?;
            (decode >= 1.0 && mismatch >= 1.0 && silences >= 2.0).then_some(text)
        }
    })
    .await;
    assert_eq!(
        series(&text, "sysmonstm_notifier_silences"),
        Some(0.0),
        "no garbage became a silence"
    );
    promtool_check("notifier", &text);
    // Everything it took was acknowledged or terminated.
    all_acked(&js).await;
}
