//! What each credential that `sysmonstm creds` issues may do, tried against a
//! real nats-server in operator mode. Without credentials anyone who reached
//! the hub could publish snapshots as any machine, forge alert events and put
//! or delete rules and alert state; here each of those is tried with every
//! credential, and the broker refuses all but the ones that need it.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use sysmonstm_kit::creds::{Authority, Role};
use sysmonstm_schemas::streams;
use sysmonstm_testkit::NatsServer;

/// What a refused JetStream publish waits for before it counts as refused.
const REFUSED_AFTER: Duration = Duration::from_millis(1500);

async fn js_for(url: &str, creds: &Path) -> jetstream::Context {
    let client = async_nats::ConnectOptions::with_credentials_file(creds.to_owned())
        .await
        .expect("creds file")
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("{} connects: {e}", creds.display()));
    let mut js = jetstream::new(client);
    js.set_timeout(REFUSED_AFTER);
    js
}

/// True when a JetStream publish on `subject` was stored (acked).
async fn stored(js: &jetstream::Context, subject: &str) -> bool {
    match js.publish(subject.to_owned(), "forged".into()).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// A snapshot as a machine that is not the credential's own.
    SnapshotAsOther,
    /// An alert event (firing, or an acknowledgement).
    AlertEvent,
    /// Put a rule in the rules bucket.
    PutRule,
    /// Put an alert state.
    PutAlertState,
    /// Purge a stream (`machines forget` does, per subject).
    PurgeStream,
    /// Delete a stream.
    DeleteStream,
    /// Read ALERTS.
    ReadAlerts,
    /// Put a silence (which mutes notifications).
    PutSilence,
    /// Watch the silences bucket (the notifier sends nothing for what a
    /// silence covers; the gateway shows it muted).
    ReadSilences,
    /// Record a notification failure on NOTIFICATIONS.
    RecordNotifyFailure,
    /// Mark a notification delivered (the notifier's dedupe bucket).
    PutDelivered,
    /// Bind the persister's durable consumer on NOTIFICATIONS (to store
    /// the failures).
    ReadNotifyFailures,
}

const ACTS: [Act; 12] = [
    Act::SnapshotAsOther,
    Act::AlertEvent,
    Act::PutRule,
    Act::PutAlertState,
    Act::PurgeStream,
    Act::DeleteStream,
    Act::ReadAlerts,
    Act::PutSilence,
    Act::ReadSilences,
    Act::RecordNotifyFailure,
    Act::PutDelivered,
    Act::ReadNotifyFailures,
];

/// The policy: who may do what. Everything not listed is refused.
fn allowed(role: &Role, act: Act) -> bool {
    use Act::*;
    match role {
        Role::Agent(_) => false,
        // Every credential that reads JetStream may read the failures and
        // the silences; the persister needs the failures to store them (it
        // waits for the stream, it does not make it).
        Role::Persister => matches!(act, ReadAlerts | ReadNotifyFailures | ReadSilences),
        Role::Alerter => matches!(
            act,
            AlertEvent | PutRule | PutAlertState | ReadAlerts | ReadNotifyFailures | ReadSilences
        ),
        Role::Gateway => matches!(
            act,
            PutRule | ReadAlerts | ReadNotifyFailures | ReadSilences
        ),
        Role::Notifier => matches!(
            act,
            ReadAlerts | ReadSilences | RecordNotifyFailure | PutDelivered
        ),
        Role::Cli => matches!(
            act,
            AlertEvent
                | PutRule
                | PutAlertState
                | PurgeStream
                | ReadAlerts
                | PutSilence
                | ReadNotifyFailures
                | ReadSilences
        ),
        Role::CliReadOnly => matches!(act, ReadAlerts | ReadNotifyFailures | ReadSilences),
        // Issued by the edge's authority, never by the hub's (tests/edge.rs).
        Role::Leaf | Role::EdgeAdmin | Role::EdgeGateway => false,
        // Bench hubs only: it simulates a fleet (its doc says so).
        Role::Loadgen => matches!(act, SnapshotAsOther),
    }
}

async fn attempt(js: &jetstream::Context, act: Act) -> bool {
    match act {
        Act::SnapshotAsOther => stored(js, "sysmon.metrics.victim").await,
        Act::AlertEvent => stored(js, "sysmon.alerts.critical.victim.cpu_high").await,
        Act::PutRule => stored(js, "$KV.sysmon_rules.forged").await,
        Act::PutAlertState => stored(js, &streams::alert_state_subject("victim.cpu_high")).await,
        Act::PurgeStream => {
            js.get_stream(streams::MACHINES)
                .await
                .ok()
                .is_some_and(|_| true)
                && purge(js).await
        }
        Act::DeleteStream => js.delete_stream("SCRATCH").await.is_ok(),
        Act::ReadAlerts => js.get_stream(streams::ALERTS).await.is_ok(),
        Act::PutSilence => stored(js, &format!("$KV.{}.forged", streams::SILENCES_BUCKET)).await,
        Act::ReadSilences => read_silence(js).await,
        Act::RecordNotifyFailure => stored(js, "sysmon.notify.failed.victim.hook").await,
        Act::PutDelivered => {
            stored(js, &format!("$KV.{}.forged", streams::NOTIFIER_SENT_BUCKET)).await
        }
        Act::ReadNotifyFailures => match js.get_stream(streams::NOTIFICATIONS).await {
            Ok(s) => s
                .get_or_create_consumer(
                    streams::PERSISTER_NOTIFICATIONS_CONSUMER,
                    streams::persister_notifications_consumer(Duration::from_secs(30)),
                )
                .await
                .is_ok(),
            Err(_) => false,
        },
    }
}

/// True when a watch of the silences bucket brings the silence put there
/// before the checks (`SEEN_SILENCE`).
async fn read_silence(js: &jetstream::Context) -> bool {
    use futures::StreamExt as _;
    let Ok(kv) = js.get_key_value(streams::SILENCES_BUCKET).await else {
        return false;
    };
    let Ok(mut watch) = kv.watch_with_history(SEEN_SILENCE).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(REFUSED_AFTER, watch.next()).await,
        Ok(Some(Ok(e))) if e.key == SEEN_SILENCE
    )
}

/// The key of the silence every reader of the bucket should see.
const SEEN_SILENCE: &str = "seen";

async fn purge(js: &jetstream::Context) -> bool {
    match js.get_stream(streams::MACHINES).await {
        Ok(s) => s.purge().filter("sysmon.info.victim").await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn every_credential_may_do_what_its_role_needs_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut authority = Authority::init(&dir.path().join("creds")).expect("authority");
    let roles = [
        Role::Agent("a".into()),
        Role::Persister,
        Role::Alerter,
        Role::Gateway,
        Role::Cli,
        Role::CliReadOnly,
        Role::Notifier,
        Role::Loadgen,
    ];
    let mut creds = Vec::new();
    for r in &roles {
        creds.push((r.clone(), authority.issue(r.clone()).expect("issued")));
    }
    let nats = NatsServer::start_with("", &authority.include_line());
    let url = nats.url();

    // The streams and buckets, made by the credentials that make them in
    // production: the persister METRICS, the alerter the rest.
    let persister = js_for(&url, &creds[1].1).await;
    persister
        .create_stream(streams::metrics(&streams::MetricsLimits {
            max_bytes: 1 << 30,
            ..Default::default()
        }))
        .await
        .expect("the persister creates METRICS");
    let alerter = js_for(&url, &creds[2].1).await;
    alerter
        .create_stream(streams::alerts())
        .await
        .expect("the alerter creates ALERTS");
    alerter
        .create_stream(streams::machines())
        .await
        .expect("the alerter creates MACHINES");
    alerter
        .create_key_value(streams::rules_bucket())
        .await
        .expect("rules bucket");
    alerter
        .create_key_value(streams::alert_state_bucket())
        .await
        .expect("alert state bucket");
    // The notifier makes its own: NOTIFICATIONS and both buckets.
    let notifier = js_for(&url, &creds[6].1).await;
    notifier
        .create_stream(streams::notifications())
        .await
        .expect("the notifier creates NOTIFICATIONS");
    for b in [
        streams::silences_bucket(),
        streams::notifier_sent_bucket(Duration::from_secs(3600)),
    ] {
        notifier
            .create_key_value(b)
            .await
            .expect("the notifier creates its buckets");
    }
    // A silence, put by the CLI as `silence add` puts one.
    js_for(&url, &creds[4].1)
        .await
        .get_key_value(streams::SILENCES_BUCKET)
        .await
        .expect("the CLI opens the silences bucket")
        .put(SEEN_SILENCE, "{}".into())
        .await
        .expect("the CLI puts a silence");
    alerter
        .create_stream(jetstream::stream::Config {
            name: "SCRATCH".into(),
            subjects: vec!["scratch.>".into()],
            ..Default::default()
        })
        .await
        .expect("a scratch stream");

    // Each credential on its own connection, all at once: a refusal is a
    // time-out, and there are many.
    let checks = creds.iter().map(|(role, path)| {
        let url = url.clone();
        async move {
            let js = js_for(&url, path).await;
            let mut wrong = Vec::new();
            for act in ACTS {
                let did = attempt(&js, act).await;
                if did != allowed(role, act) {
                    wrong.push(format!(
                        "{role:?} {act:?}: {} (policy: {})",
                        if did { "done" } else { "refused" },
                        if allowed(role, act) {
                            "allow"
                        } else {
                            "refuse"
                        }
                    ));
                }
            }
            wrong
        }
    });
    let wrong: Vec<String> = futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        wrong.is_empty(),
        "the broker's answers differ from the policy:\n{}",
        wrong.join("\n")
    );
    // The refused writes left nothing behind: METRICS holds only what the
    // roles allowed to write it (the bench's load generator) wrote.
    let mut metrics = persister
        .get_stream(streams::METRICS)
        .await
        .expect("METRICS");
    let allowed_writers = roles
        .iter()
        .filter(|r| allowed(r, Act::SnapshotAsOther))
        .count() as u64;
    assert_eq!(
        metrics.info().await.expect("info").state.messages,
        allowed_writers
    );
}
