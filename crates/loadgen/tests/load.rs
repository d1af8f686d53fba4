//! The load generator against a real hub (fsync on every write, as
//! shipped): every snapshot it reports as sent is in the stream exactly
//! once, under its machine's subject, with the seqs it reports; silent
//! machines send less; the facts of every machine are there.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_loadgen::{FleetSpec, LoadSpec, load};
use sysmonstm_schemas::{streams, v1};
use sysmonstm_testkit::NatsServer;

#[tokio::test]
async fn every_snapshot_sent_is_stored_once_with_the_reported_seqs() {
    let nats = NatsServer::start_hub();
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let metrics = js
        .get_or_create_stream(streams::metrics(&streams::MetricsLimits {
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
        }))
        .await
        .expect("METRICS");
    let machines = js
        .get_or_create_stream(streams::machines())
        .await
        .expect("MACHINES");

    let fleet = FleetSpec {
        machines: 200,
        prefix: "t".into(),
        breach_percent: 10,
        silent_percent: 10,
    }
    .build()
    .expect("fleet");
    load::publish_info(&js, &fleet).await.expect("facts");
    let spec = LoadSpec {
        rate_hz: 5.0,
        duration: Duration::from_secs(4),
        in_flight: 512,
        ack_timeout: Duration::from_secs(10),
    };
    let report = load::run(js.clone(), &fleet, &spec, Arc::new(()))
        .await
        .expect("load");
    assert_eq!(report.offered, report.acked);
    assert_eq!(report.offered, report.sent.iter().sum::<u64>());
    assert!(report.offered >= 200 * 15, "offered {}", report.offered);
    for (sim, sent) in fleet.iter().zip(&report.sent) {
        if sim.silent {
            assert!(*sent < 20 * 3 / 4 + 1, "{} silent, sent {sent}", sim.id);
        } else {
            assert_eq!(*sent, 20, "{}", sim.id);
        }
    }

    let info = metrics.get_info().await.expect("info");
    assert_eq!(info.state.messages, report.offered, "stored once each");
    // Read everything back: the (machine, seq) set is the reported one.
    let consumer = metrics
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("consumer");
    let mut msgs = consumer.messages().await.expect("messages");
    let mut got: HashSet<(String, u64)> = HashSet::new();
    while (got.len() as u64) < report.offered {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .expect("in time")
            .expect("message")
            .expect("ok");
        let s = v1::Snapshot::decode(m.payload.clone()).expect("decodes");
        assert_eq!(
            m.subject.as_str(),
            format!("sysmon.metrics.{}", s.machine_id)
        );
        assert!(got.insert((s.machine_id, s.seq)), "no duplicate");
    }
    let want: HashSet<(String, u64)> = fleet
        .iter()
        .zip(&report.seqs)
        .flat_map(|(sim, seqs)| seqs.iter().map(move |s| (sim.id.to_string(), *s)))
        .collect();
    assert_eq!(
        want.len() as u64,
        report.offered,
        "seqs are unique per machine"
    );
    assert_eq!(got, want);
    assert_eq!(
        machines.get_info().await.expect("info").state.messages,
        200,
        "one fact record per machine"
    );
}
