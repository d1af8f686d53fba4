//! METRICS split into partitions (`metrics_partitions`): the hub's account
//! maps each machine's snapshots to one of the streams `METRICS_<p>`, and the
//! alerter keeps its durable consumer on each, merges them with the live
//! subscription, and acknowledges each consumer on its own. Against a real
//! nats-server with the mapping in its account: machines in every partition
//! fire, a restarted alerter resumes every partition where the first stopped
//! (no alert fired again, none missed, nothing delivered twice), and a
//! machine silent before any alerter ran is found in its partition.

mod common;

use std::collections::BTreeMap;

use async_nats::jetstream::{self, consumer::PullConsumer};
use common::*;
use sysmonstm_alerter::engine::EventKind;
use sysmonstm_alerter::{AlerterConfig, Counters};
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::rules::{AlertStateRecord, Phase, state_key};
use sysmonstm_schemas::streams::{self, MetricsLimits, Partitions};
use sysmonstm_schemas::{MachineId, subjects, v1};
use sysmonstm_testkit::{NatsServer, eventually};

fn parts() -> Partitions {
    Partitions::new(4).expect("4")
}

/// Test servers have 4 GB of file store: 256 MiB over the partitions.
fn partitioned(url: &str) -> AlerterConfig {
    AlerterConfig {
        metrics_partitions: parts(),
        stream_max_mib: 256,
        ..config(url)
    }
}

/// The partition streams, ALERTS and the buckets, as the services make them.
async fn setup_partitioned(js: &jetstream::Context) -> async_nats::jetstream::kv::Store {
    js_kit::ensure_metrics(
        js,
        parts(),
        js_kit::Replicas::ONE,
        &MetricsLimits {
            max_bytes: 256 * 1024 * 1024,
            ..MetricsLimits::default()
        },
    )
    .await
    .expect("METRICS partitions");
    js_kit::ensure_alerts(js).await.expect("ALERTS");
    js_kit::ensure_kv(js, streams::alert_state_bucket())
        .await
        .expect("state bucket");
    js_kit::ensure_kv(js, streams::rules_bucket())
        .await
        .expect("rules bucket")
}

/// `per` machines in each partition, partition 0's first.
async fn machines_in_every_partition(per: usize) -> Vec<Machine> {
    let mut by_part: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let name = format!("host-{i}");
        let list = by_part.entry(parts().of(&name)).or_default();
        if list.len() < per {
            list.push(name);
        }
        if by_part.len() == parts().get() && by_part.values().all(|l| l.len() == per) {
            break;
        }
    }
    let mut out = Vec::new();
    for name in by_part.into_values().flatten() {
        out.push(Machine::new(&name).await);
    }
    out
}

async fn alerter_consumers(js: &jetstream::Context) -> Vec<PullConsumer> {
    let mut out = Vec::new();
    for (p, name) in parts().names().iter().enumerate() {
        let c: PullConsumer = eventually(WAIT, &format!("the consumer alerter on {name}"), || {
            let js = js.clone();
            let name = name.clone();
            async move {
                js.get_stream(&name)
                    .await
                    .ok()?
                    .get_consumer(streams::ALERTER_CONSUMER)
                    .await
                    .ok()
            }
        })
        .await;
        assert_eq!(c.cached_info().config.filter_subject, parts().filter(p));
        out.push(c);
    }
    out
}

/// Every partition's consumer has delivered everything and had it all
/// acknowledged.
async fn drained(consumers: &[PullConsumer]) {
    for c in consumers {
        eventually(
            WAIT,
            "a partition's consumer drained and acknowledged",
            || {
                let mut c = c.clone();
                async move {
                    let info = c.info().await.ok()?;
                    (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
                }
            },
        )
        .await;
    }
}

fn cpu_filter() -> String {
    subjects::alerts_filter(
        Some(v1::Severity::Critical),
        None,
        Some(&MachineId::parse("cpu_high").expect("rule")),
    )
}

/// The kinds of the events stored for each machine, oldest first.
async fn events_by_machine(js: &jetstream::Context) -> BTreeMap<String, Vec<EventKind>> {
    let mut out: BTreeMap<String, Vec<EventKind>> = BTreeMap::new();
    for ev in stored_events(js, &cpu_filter()).await {
        out.entry(ev.machine).or_default().push(ev.kind);
    }
    out
}

#[tokio::test]
async fn machines_in_every_partition_fire_and_a_restart_resumes_each_partition() {
    let nats = NatsServer::start_partitioned(parts());
    let js = js_for(&nats.url()).await;
    let rules = setup_partitioned(&js).await;
    put_rule(
        &rules,
        &rule(r#"{"name":"cpu_high","metric":"cpu","threshold":90,"severity":"critical"}"#),
    )
    .await;
    let mut machines = machines_in_every_partition(2).await;
    let n = machines.len();

    let first = spawn(partitioned(&nats.url()));
    let consumers = alerter_consumers(&js).await;
    for m in &mut machines {
        m.publish(&js, 97.0).await;
    }
    let fired = eventually(WAIT, "a firing event for every machine", || async {
        let ev = events_by_machine(&js).await;
        (ev.len() == n).then_some(ev)
    })
    .await;
    for (m, kinds) in &fired {
        assert_eq!(kinds, &[EventKind::Firing], "{m}");
    }
    // The live subscription is made before the first snapshot is taken from
    // a consumer: from now on each snapshot comes both ways, the mapped
    // subject on the subscription too.
    let c = first.counters.clone();
    eventually(WAIT, "the first round taken from the consumers", || {
        let c = c.clone();
        async move { (Counters::get(&c.snapshots_received) == n as u64).then_some(()) }
    })
    .await;
    let seen_before = Counters::get(&c.snapshots_already_seen);
    for m in &mut machines {
        m.publish(&js, 97.0).await;
    }
    eventually(WAIT, "the second round seen both ways", || {
        let c = c.clone();
        async move {
            let both = Counters::get(&c.snapshots_received) == 2 * n as u64
                && Counters::get(&c.snapshots_already_seen) == seen_before + n as u64;
            both.then_some(())
        }
    })
    .await;
    // Every partition's consumer acknowledged to its end, and each firing
    // state stored, before the restart.
    drained(&consumers).await;
    assert_eq!(Counters::get(&c.snapshots_evaluated), 2 * n as u64);
    assert_eq!(Counters::get(&c.events_firing), n as u64);
    let state = js_kit::ensure_kv(&js, streams::alert_state_bucket())
        .await
        .expect("state bucket");
    for m in &machines {
        let key = state_key(m.id.as_str(), "cpu_high");
        eventually(
            WAIT,
            &format!("the firing state of {} stored", m.id),
            || {
                let (state, key) = (state.clone(), key.clone());
                async move {
                    let v = state.get(&key).await.ok().flatten()?;
                    serde_json::from_slice::<AlertStateRecord>(&v)
                        .ok()
                        .filter(|r| r.phase == Phase::Firing)
                }
            },
        )
        .await;
    }
    first.stop().await;

    // While no alerter runs: the first machine of each partition drops, the
    // second stays high.
    for (i, m) in machines.iter_mut().enumerate() {
        m.publish(&js, if i % 2 == 0 { 10.0 } else { 98.0 }).await;
    }
    let second = spawn(partitioned(&nats.url()));
    let events = eventually(WAIT, "the dropped machines resolved", || async {
        let ev = events_by_machine(&js).await;
        (ev.values().filter(|k| k.len() == 2).count() == n / 2).then_some(ev)
    })
    .await;
    for (i, m) in machines.iter().enumerate() {
        let want: &[EventKind] = if i % 2 == 0 {
            &[EventKind::Firing, EventKind::Resolved]
        } else {
            &[EventKind::Firing]
        };
        assert_eq!(events[m.id.as_str()], want, "{}", m.id);
    }
    drained(&consumers).await;
    // Each partition resumed where the first alerter acknowledged: the n
    // snapshots published meanwhile, nothing again, nothing fired again.
    let c = second.counters.clone();
    assert_eq!(Counters::get(&c.snapshots_received), n as u64);
    assert_eq!(Counters::get(&c.snapshots_evaluated), n as u64);
    assert_eq!(Counters::get(&c.events_firing), 0);
    assert_eq!(Counters::get(&c.events_resolved), (n / 2) as u64);
    for reason in sysmonstm_schemas::accept::Reject::REASONS {
        assert_eq!(c.rejected.with_label_values(&[reason]).get(), 0, "{reason}");
    }
    second.stop().await;
}

#[tokio::test]
async fn a_machine_silent_before_the_alerter_started_is_found_in_its_partition() {
    let nats = NatsServer::start_partitioned(parts());
    let js = js_for(&nats.url()).await;
    let rules = setup_partitioned(&js).await;
    put_rule(
        &rules,
        &rule(
            r#"{"name":"machine_silent","metric":"silent","op":">=",
        "threshold":3,"severity":"critical"}"#,
        ),
    )
    .await;
    let mut machines = machines_in_every_partition(1).await;
    for m in &mut machines {
        m.interval_ms = 200;
        for _ in 0..3 {
            m.publish(&js, 5.0).await;
        }
    }
    // Learnt from the last snapshot of each machine in its partition.
    let alerter = spawn(partitioned(&nats.url()));
    let filter = subjects::alerts_filter(
        Some(v1::Severity::Critical),
        None,
        Some(&MachineId::parse("machine_silent").expect("rule")),
    );
    let n = machines.len();
    let fired = eventually(WAIT, "machine_silent fires for every machine", || {
        let (js, filter) = (js.clone(), filter.clone());
        async move {
            let ev = stored_events(&js, &filter).await;
            (ev.len() >= n).then_some(ev)
        }
    })
    .await;
    assert!(
        fired.iter().all(|e| e.kind == EventKind::Firing),
        "{fired:?}"
    );
    let got: std::collections::BTreeSet<_> = fired.iter().map(|e| e.machine.clone()).collect();
    let want: std::collections::BTreeSet<_> = machines.iter().map(|m| m.id.to_string()).collect();
    assert_eq!((got, fired.len()), (want, n));
    alerter.stop().await;
}

/// An alerter given another partition count than the hub's evaluates none
/// of the snapshots: it says so on `metrics_streams_unread` (and in its
/// log) rather than staying quiet while machines breach their rules.
#[tokio::test]
async fn a_partition_count_not_the_hubs_is_reported() {
    let nats = NatsServer::start_partitioned(parts());
    let js = js_for(&nats.url()).await;
    setup_partitioned(&js).await;
    for m in &mut machines_in_every_partition(1).await {
        m.publish(&js, 5.0).await;
    }
    let alerter = spawn(AlerterConfig {
        metrics_partitions: Partitions::ONE,
        ..partitioned(&nats.url())
    });
    let c = alerter.counters.clone();
    eventually(WAIT, "the four partitions reported unread", || {
        let c = c.clone();
        async move { (Counters::get(&c.metrics_streams_unread) == 4).then_some(()) }
    })
    .await;
    assert_eq!(Counters::get(&alerter.counters.snapshots_evaluated), 0);
    alerter.stop().await;
}
