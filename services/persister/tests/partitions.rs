//! METRICS split into partitions (`metrics_partitions`): the hub's account
//! maps each machine's snapshots to one of the streams `METRICS_<p>`, and the
//! persister consumes every one of them. Against a real nats-server with
//! the mapping in its account and a real PostgreSQL: a few hundred machines
//! publish as agents do (`sysmon.metrics.<m>`, one Msg-Id per snapshot), the
//! persister is killed mid-way, snapshots arrive while none runs, and two
//! persisters on the same durable consumers take over; every published
//! (machine, seq) is stored exactly once.

mod common;

use std::collections::BTreeSet;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use common::*;
use prost::Message as _;
use sysmonstm_persister::{Counters, PersisterConfig};
use sysmonstm_schemas::streams::{self, Partitions};
use sysmonstm_schemas::{MachineId, headers, subjects};
use sysmonstm_testkit::{NatsServer, TestDb, eventually};

const MACHINES: u64 = 200;

/// Test servers have 4 GB of file store: 256 MiB over the partitions.
fn partitioned(nats_url: &str, db_url: &str, parts: Partitions) -> PersisterConfig {
    PersisterConfig {
        metrics_partitions: parts,
        stream_max_mib: 256,
        ..config(nats_url, db_url)
    }
}

/// Snapshots `seqs` of every machine, published as the agent publishes
/// (its own subject, Msg-Id `<machine>:<seq>`) and each stored; returns the
/// streams that stored them.
async fn publish_round(
    js: &jetstream::Context,
    seqs: std::ops::RangeInclusive<u64>,
) -> BTreeSet<String> {
    let mut acks: Vec<PublishAckFuture> = Vec::new();
    for seq in seqs {
        for m in 0..MACHINES {
            let name = format!("m{m:03}");
            let id = MachineId::parse(&name).expect("valid");
            let payload = snapshot(&name, seq).encode_to_vec();
            let ack = js
                .send_publish(
                    subjects::metrics(&id),
                    PublishMessage::build()
                        .message_id(headers::msg_id(&id, seq))
                        .payload(payload.into()),
                )
                .await
                .expect("publish sent");
            acks.push(ack);
        }
    }
    let mut streams = BTreeSet::new();
    for ack in acks {
        streams.insert(ack.await.expect("stored").stream);
    }
    streams
}

async fn consumer(
    js: &jetstream::Context,
    stream: &str,
) -> Option<jetstream::consumer::PullConsumer> {
    js.get_stream(stream)
        .await
        .ok()?
        .get_consumer(streams::PERSISTER_CONSUMER)
        .await
        .ok()
}

#[tokio::test]
async fn every_partition_is_stored_exactly_once_across_a_crash_and_two_instances() {
    let parts = Partitions::new(4).expect("4");
    let nats = NatsServer::start_partitioned(parts);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;

    // Small batches: the first persister is still storing when it is killed.
    let first = spawn(PersisterConfig {
        batch_size: 20,
        linger_ms: 20,
        ..partitioned(&nats.url(), db.url(), parts)
    });
    // The persister makes every partition's stream and its consumer on each.
    for (p, name) in parts.names().iter().enumerate() {
        let c = eventually(WAIT, &format!("the consumer persister on {name}"), || {
            consumer(&js, name)
        })
        .await;
        assert_eq!(c.cached_info().config.filter_subject, parts.filter(p));
    }

    let load = tokio::spawn({
        let js = js.clone();
        async move { publish_round(&js, 1..=5).await }
    });
    // Killed while storing: whatever it pulled and did not acknowledge is
    // delivered again after ack_wait (2 s).
    eventually(WAIT, "some snapshots stored", || async {
        (row_count(&pool).await >= (MACHINES as i64) / 2).then_some(())
    })
    .await;
    first.task.abort();
    first.shutdown.cancel();
    let used = load.await.expect("load published");
    assert_eq!(
        used,
        parts.names().into_iter().collect::<BTreeSet<_>>(),
        "the machines land in every partition"
    );
    // Published while no persister runs.
    publish_round(&js, 6..=7).await;

    let a = spawn(partitioned(&nats.url(), db.url(), parts));
    let b = spawn(partitioned(&nats.url(), db.url(), parts));
    let want = published_set(MACHINES, 7);
    eventually(WAIT, "every (machine, seq) stored", || async {
        (stored_set(&pool).await == want).then_some(())
    })
    .await;
    for name in parts.names() {
        let c = consumer(&js, &name).await.expect("consumer");
        eventually(
            WAIT,
            &format!("{name}: nothing pending or unacknowledged"),
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
    // Nothing beyond, and nothing twice.
    assert_eq!(stored_set(&pool).await, want);
    assert_eq!(row_count(&pool).await, want.len() as i64);
    let rejected = a.counters.rejected_total() + b.counters.rejected_total();
    assert_eq!(rejected, 0, "mapped subjects are accepted");
    // The lag gauges sum the partitions: all caught up.
    for r in [&a, &b] {
        let c = r.counters.clone();
        eventually(WAIT, "the lag gauges at 0", || {
            let c = c.clone();
            async move {
                (Counters::get(&c.consumer_lag) == 0 && Counters::get(&c.consumer_ack_pending) == 0)
                    .then_some(())
            }
        })
        .await;
    }
    eprintln!(
        "after the kill: {} redelivered, {} found stored already, {} + {} stored by the two",
        Counters::get(&a.counters.redelivered) + Counters::get(&b.counters.redelivered),
        Counters::get(&a.counters.duplicates) + Counters::get(&b.counters.duplicates),
        Counters::get(&a.counters.stored),
        Counters::get(&b.counters.stored),
    );
    a.stop().await;
    b.stop().await;
}

/// A persister given another partition count than the hub's reads none of
/// the streams the snapshots land in: it says so (the gauge, an error in
/// its log) instead of sitting quietly, and nothing is lost: the right
/// count, given back, stores all of it.
#[tokio::test]
async fn a_partition_count_not_the_hubs_is_reported_and_loses_nothing() {
    let parts = Partitions::new(4).expect("4");
    let nats = NatsServer::start_partitioned(parts);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let js = js_for(&nats.url()).await;

    let right = spawn(partitioned(&nats.url(), db.url(), parts));
    for name in parts.names() {
        eventually(WAIT, &format!("the consumer on {name}"), || {
            consumer(&js, &name)
        })
        .await;
    }
    publish_round(&js, 1..=2).await;
    let two = published_set(MACHINES, 2);
    eventually(WAIT, "rounds 1 and 2 stored", || async {
        (stored_set(&pool).await == two).then_some(())
    })
    .await;
    right.stop().await;

    // One stream where the hub has four.
    let wrong = spawn(partitioned(&nats.url(), db.url(), Partitions::ONE));
    let c = wrong.counters.clone();
    eventually(WAIT, "the four partitions reported unread", || {
        let c = c.clone();
        async move { (Counters::get(&c.metrics_streams_unread) == 4).then_some(()) }
    })
    .await;
    publish_round(&js, 3..=3).await;
    assert_eq!(
        stored_set(&pool).await,
        two,
        "nothing read from streams it was not given"
    );
    wrong.stop().await;

    // The hub's count again: round 3 waited in the partitions.
    let back = spawn(partitioned(&nats.url(), db.url(), parts));
    let three = published_set(MACHINES, 3);
    eventually(WAIT, "round 3 stored after all", || async {
        (stored_set(&pool).await == three).then_some(())
    })
    .await;
    // The single METRICS the wrong count made is unread but empty, so not
    // receiving anything.
    let unread = sysmonstm_kit::jetstream::unread_metrics(&js, parts)
        .await
        .expect("listed");
    assert_eq!(
        unread
            .iter()
            .map(|u| (u.stream.as_str(), u.messages, u.receiving()))
            .collect::<Vec<_>>(),
        [(streams::METRICS, 0, false)]
    );
    back.stop().await;
}
