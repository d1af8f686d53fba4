//! `sysmonstm rules …` and `sysmonstm machines` run as a process. With the
//! real alerter picking a rule change up while snapshots flow, and forgetting
//! a machine: `crates/e2e/tests/cli_alerter.rs`.

mod common;

use async_nats::jetstream;
use common::*;
use prost::Message as _;
use sysmonstm_schemas::{streams, subjects};
use sysmonstm_testkit::NatsServer;

#[tokio::test]
async fn rules_set_refuses_an_invalid_rule_naming_the_field_and_changes_nothing() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, out, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 clear=95 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`clear`") && err.contains("cpu_high"), "{err}");
    assert_eq!(
        rule_in_kv(&js, "cpu_high").await.and_then(|r| r.clear),
        None,
        "unchanged"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[rule]]\nname = \"x\"\nmetric = = \"cpu\"\n").expect("write");
    let (code, _, err) = run(&url, &["rules", "set", broken.to_str().expect("utf8")]).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("broken.toml") && err.contains("line 3"),
        "{err}"
    );

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rules.example.toml");
    let (code, out, err) = run(&url, &["rules", "set", example]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rule machine_silent set"), "{out}");
    let (_, listed, _) = run(&url, &["rules", "list", "--json"]).await;
    assert!(listed.lines().count() >= 9, "{listed}");
    let (code, out, _) = run(&url, &["rules", "rm", "too_hot"]).await;
    assert_eq!((code, out.trim()), (0, "rule too_hot removed"));
    assert!(rule_in_kv(&js, "too_hot").await.is_none());
    let (code, _, err) = run(&url, &["rules", "rm", "too_hot"]).await;
    assert!(code == 1 && err.contains("no rule named"), "{err}");
}

#[tokio::test]
async fn machines_lists_facts_last_seen_and_headline_values() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::metrics(&metrics_limits()))
        .await
        .expect("METRICS");
    js.get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let mut web = Machine::new("web01").await;
    for _ in 0..3 {
        web.publish(&js, 42.5).await;
    }
    let info = sysmonstm_schemas::v1::MachineInfo {
        machine_id: "web01".into(),
        hostname: "web01.example.com".into(),
        core_count: 8,
        ..Default::default()
    };
    js.publish(subjects::info(&web.id), info.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let (code, out, err) = run(&url, &["machines", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["machine"], "web01");
    assert_eq!(rows[0]["hostname"], "web01.example.com");
    assert_eq!(rows[0]["status"], "online");
    assert_eq!(rows[0]["cpu"], 42.5);
    let (_, table, _) = run(&url, &["machines"]).await;
    assert!(
        table.starts_with("MACHINE") && table.contains("online"),
        "{table}"
    );
}

#[tokio::test]
async fn no_server_is_a_clear_error_with_exit_code_1() {
    // Held for the test: connections are refused and no server can appear.
    let nothing = sysmonstm_testkit::PortHold::refusing();
    let url = format!("nats://127.0.0.1:{}", nothing.port());
    let (code, _, err) = run(&url, &["rules", "list"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

#[tokio::test]
async fn machines_leaves_out_made_up_tokens_and_payloads_of_other_machines() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::metrics(&metrics_limits()))
        .await
        .expect("METRICS");
    let mut web = Machine::new("web01").await;
    web.publish(&js, 10.0).await;
    let mut snap = web.collector.sample(99);
    for (subject, machine) in [
        (
            "sysmon.metrics.UPPER-Case".to_owned(),
            "UPPER-Case".to_owned(),
        ),
        (
            format!("sysmon.metrics.{}", "a".repeat(300)),
            "a".repeat(300),
        ),
        ("sysmon.metrics.db01".to_owned(), "web01".to_owned()),
    ] {
        snap.machine_id = machine;
        js.publish(subject, snap.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }
    let (code, out, err) = run(&url, &["machines", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["machine"], "web01");
    assert!(err.contains("3 subjects left out"), "{err}");
}

/// METRICS split into four partitions (the hub's account maps each
/// machine's subject into `METRICS_<p>`): `machines` lists a machine of
/// every partition, and `machines forget` purges the machine's snapshots
/// from its partition's stream and nothing of the others'.
#[tokio::test]
async fn machines_and_forget_work_on_every_partition_of_metrics() {
    let parts = streams::Partitions::new(4).expect("4");
    let nats = NatsServer::start_partitioned(parts);
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let metrics = sysmonstm_kit::jetstream::ensure_metrics(
        &js,
        parts,
        sysmonstm_kit::jetstream::Replicas::ONE,
        &streams::MetricsLimits {
            max_bytes: 256 * 1024 * 1024,
            ..Default::default()
        },
    )
    .await
    .expect("METRICS partitions");
    js.get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let mut ids = Vec::new();
    for p in 0..parts.get() {
        let name = (0..1000)
            .map(|i| format!("host-{i}"))
            .find(|n| parts.of(n) == p)
            .expect("a machine in every partition");
        let mut m = Machine::new(&name).await;
        m.publish(&js, 10.0).await;
        m.publish(&js, 20.0).await;
        ids.push(m.id.clone());
    }
    let listed = |out: &str| -> Vec<String> {
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["status"] == "online" && r["cpu"] == 20.0)
            .filter_map(|r| r["machine"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        v
    };
    let mut all: Vec<String> = ids.iter().map(ToString::to_string).collect();
    all.sort();
    let (code, out, err) = run(&url, &["machines", "--json", "--metrics-partitions", "4"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(listed(&out), all, "{out}");

    // The count from the environment, as every service takes it.
    let gone = &ids[2];
    let out = cli(&url)
        .env("SYSMON_METRICS_PARTITIONS", "4")
        .args(["machines", "forget", gone.as_str(), "--wait-ms", "0"])
        .output()
        .await
        .expect("run sysmonstm");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("METRICS_2: 2 snapshots of {gone} purged")),
        "{text}"
    );
    for (p, s) in metrics.into_iter().enumerate() {
        let mut s = s;
        let n = s.info().await.expect("info").state.messages;
        assert_eq!(n, if p == 2 { 0 } else { 2 }, "METRICS_{p}");
    }
    let (code, out, err) = run(&url, &["machines", "--json", "--metrics-partitions", "4"]).await;
    assert_eq!(code, 0, "{err}");
    all.retain(|m| m != gone.as_str());
    assert_eq!(listed(&out), all, "{out}");

    let (code, _, err) = run(&url, &["machines", "--metrics-partitions", "17"]).await;
    assert_eq!(code, 2, "{err}");
}
