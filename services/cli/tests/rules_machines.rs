//! `sysmonstm rules …` and `sysmonstm machines` run as a process, with the
//! real alerter picking a rule change up while snapshots flow.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use prost::Message as _;
use sysmonstm_alerter::Counters;
use sysmonstm_schemas::{streams, subjects};
use sysmonstm_testkit::{NatsServer, eventually};

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
async fn a_rule_changed_with_the_cli_while_snapshots_flow_applies_at_the_next_evaluation() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=99 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut web = Machine::new("web01").await;
    for _ in 0..5 {
        web.publish(&js, 70.0).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut w = Watcher::start(&js, &url, &["alerts", "watch", "--all", "--json"]).await;
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=60 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let flow = tokio::spawn({
        let js = js.clone();
        async move {
            for _ in 0..100 {
                web.publish(&js, 70.0).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let v = w.next_json().await;
    assert_eq!(
        (v["state"].as_str(), v["threshold"].as_f64()),
        (Some("firing"), Some(60.0)),
        "{v}"
    );
    assert!(Counters::get(&alerter.counters.rules_applied) >= 2);
    flow.abort();
    alerter.stop().await;
}

#[tokio::test]
async fn machines_lists_facts_last_seen_and_headline_values() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::metrics(&alerter_config(&url).metrics_limits()))
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
async fn machines_forget_removes_a_machine_everywhere_it_is_kept() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let (code, _, err) = run(
        &url,
        &[
            "rules",
            "set",
            r#"name="cpu_high" metric="cpu" threshold=90 severity="critical""#,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let alerter = start_alerter(&js, &url).await;
    let mut db = Machine::new("db01").await;
    let mut web = Machine::new("web01").await;
    web.publish(&js, 10.0).await;
    db.publish(&js, 97.0).await;
    let info = sysmonstm_schemas::v1::MachineInfo {
        machine_id: "db01".into(),
        hostname: "db01.example.com".into(),
        ..Default::default()
    };
    js.publish(subjects::info(&db.id), info.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let state_kv = js
        .get_key_value(streams::ALERT_STATE_BUCKET)
        .await
        .expect("state bucket");
    // db01 fires, so the alerter holds it and its state is stored.
    eventually(WAIT, "db01's alert state stored", || {
        let kv = state_kv.clone();
        async move { kv.get("db01.cpu_high").await.ok()?.map(|_| ()) }
    })
    .await;

    let (code, out, err) = run(&url, &["machines", "forget", "db01"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alerter: forgot db01"), "{out}");
    assert!(out.contains("METRICS: 1 snapshots"), "{out}");
    assert!(out.contains("MACHINES: 1 facts"), "{out}");
    // Gone from the streams and the bucket, so no restart brings it back.
    let metrics = js.get_stream(streams::METRICS).await.expect("METRICS");
    assert!(
        metrics
            .get_last_raw_message_by_subject(&subjects::metrics(&db.id))
            .await
            .is_err()
    );
    let machines = js.get_stream(streams::MACHINES).await.expect("MACHINES");
    assert!(
        machines
            .get_last_raw_message_by_subject(&subjects::info(&db.id))
            .await
            .is_err()
    );
    eventually(WAIT, "db01's alert state gone", || {
        let kv = state_kv.clone();
        async move { kv.get("db01.cpu_high").await.ok()?.is_none().then_some(()) }
    })
    .await;
    let (code, out, err) = run(&url, &["machines", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web01") && !out.contains("db01"), "{out}");
    // Its firing alert resolved, saying why.
    let (code, out, err) = run(&url, &["alerts", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("db01"), "{out}");
    alerter.stop().await;

    // Not a machine id: exit code 2, before connecting.
    let (code, _, err) = run(&url, &["machines", "forget", "Not.A.Machine"]).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn machines_leaves_out_made_up_tokens_and_payloads_of_other_machines() {
    let nats = NatsServer::start_hub();
    let url = nats.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.get_or_create_stream(streams::metrics(&alerter_config(&url).metrics_limits()))
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
