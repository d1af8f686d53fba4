//! The running notifier: the durable consumer `notifier` on ALERTS, the
//! grouping of each machine's events, the silences watch, and the answers
//! to `sysmonstm notify test <channel>`.
//!
//! An event taken from ALERTS is checked (its subject names the machine,
//! rule and severity of its payload), routed, and held in its machine's
//! group for `group_window_ms` from the group's first event (or until
//! `max_group_events`); the group is then delivered (`deliver`) in a task of
//! its own. Everything held is bounded by the consumer's `max_ack_pending`
//! (`max_in_flight`): the server hands out no more unacknowledged events.
//!
//! Acknowledgements and reminders: an ACKNOWLEDGED event is routed like the
//! others (people learn that someone took it), and ends the reminders of
//! its episode here as well as at the alerter: a reminder that was already
//! on its way when the ack came is not sent.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt as _;
use sysmonstm_kit::config::ConfigError;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::{Alert, EventKind};
use sysmonstm_schemas::rules::{Metric, Severity};
use sysmonstm_schemas::{streams, subjects};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::NotifierConfig;
use crate::channel::Channels;
use crate::counters::Counters;
use crate::deliver::{Ctx, Hook, Item, deliver};
use crate::message::Event;
use crate::route::channels_for;
use crate::silences::{Silences, now_ms};

/// Episodes whose acknowledgement the notifier remembers (to drop a late
/// reminder); the oldest is forgotten first.
const ACKED_EPISODES: usize = 10_000;

pub struct Notifier {
    config: NotifierConfig,
    counters: Arc<Counters>,
    before_ack: Option<Hook>,
}

struct Group {
    deadline: Instant,
    items: Vec<Item>,
}

/// Remembers acknowledged episodes, bounded.
#[derive(Default)]
struct Acked {
    set: HashSet<(String, String, i64)>,
    order: VecDeque<(String, String, i64)>,
}

impl Acked {
    fn insert(&mut self, k: (String, String, i64)) {
        if self.set.insert(k.clone()) {
            self.order.push_back(k);
            while self.order.len() > ACKED_EPISODES {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn remove(&mut self, k: &(String, String, i64)) {
        // The queue keeps its copy until it falls out; harmless.
        self.set.remove(k);
    }

    fn contains(&self, k: &(String, String, i64)) -> bool {
        self.set.contains(k)
    }
}

/// An event from ALERTS, or why it is refused.
fn parse(subject: &str, payload: &[u8]) -> Result<Event, &'static str> {
    let (sev, machine, rule) = subjects::parse_alert(subject).ok_or("subject")?;
    let alert = Alert::decode(payload).ok_or("decode")?;
    if alert.machine != machine || alert.rule != rule || alert.severity.name() != sev {
        return Err("machine_mismatch");
    }
    let (_, id) = alert.address().map_err(|_| "subject")?;
    Ok(Event { id, alert })
}

impl Notifier {
    pub fn new(config: NotifierConfig) -> Self {
        Self {
            config,
            counters: Arc::default(),
            before_ack: None,
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Runs `hook` after a group's channels are through and before its
    /// events are acknowledged (tests stop the notifier there).
    pub fn before_ack(mut self, hook: Hook) -> Self {
        self.before_ack = Some(hook);
        self
    }

    /// Runs until `shutdown`. A configuration error (a [`ConfigError`] in
    /// the chain) comes before anything connects.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        cfg.validate()?;
        let channels = Channels::build(&cfg).map_err(|e| ConfigError::Invalid(format!("{e:#}")))?;
        if let Some(addr) = cfg.metrics_listen.as_ref().filter(|a| !a.is_empty()) {
            sysmonstm_kit::http::serve_ops(
                "notifier",
                addr,
                Arc::clone(self.counters.registry()),
                shutdown.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for /metrics on {addr}: {e}"))?;
        }
        let client = cfg.nats.connect("sysmonstm-notifier", true).await?;
        let js = jetstream::new(client);
        // ALERTS is the alerter's; the rest is the notifier's own. A hub
        // without them yet is waited for.
        let setup = || async {
            let alerts = js.get_stream(streams::ALERTS).await?;
            js.get_or_create_stream(streams::notifications()).await?;
            let sil = js_kit::ensure_kv(&js, streams::silences_bucket()).await?;
            let sent =
                js_kit::ensure_kv(&js, streams::notifier_sent_bucket(cfg.dedupe_ttl())).await?;
            anyhow::Ok((alerts, sil, sent))
        };
        let mut backoff = Duration::from_millis(200);
        let (alerts, sil_kv, sent) = loop {
            tokio::select! {
                r = setup() => match r {
                    Ok(v) => break v,
                    Err(e) => tracing::warn!(error = %e, retry_in = ?backoff,
                        "cannot set up ALERTS, NOTIFICATIONS and the buckets; trying again"),
                },
                _ = shutdown.cancelled() => return Ok(()),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        let silences = Silences::default();
        tokio::spawn(silences.clone().follow(
            sil_kv,
            cfg.max_silences,
            Arc::clone(&self.counters),
            shutdown.clone(),
        ));
        let ctx = Arc::new(Ctx {
            config: cfg.clone(),
            channels,
            js: js.clone(),
            sent,
            silences,
            counters: Arc::clone(&self.counters),
            before_ack: self.before_ack.clone(),
            shutdown: shutdown.clone(),
        });
        let tests = js.client().subscribe(subjects::NOTIFY_TEST_ALL).await?;
        tokio::spawn(answer_tests(Arc::clone(&ctx), tests, shutdown.clone()));

        let consumer = alerts
            .get_or_create_consumer(
                streams::NOTIFIER_CONSUMER,
                streams::notifier_consumer(
                    Duration::from_secs(cfg.ack_wait_s.max(1)),
                    i64::try_from(cfg.max_in_flight).unwrap_or(1024),
                ),
            )
            .await?;
        let mut msgs = consumer.messages().await?;
        tracing::info!(
            channels = cfg.channels.len(),
            routes = cfg.routes.len(),
            "notifier ready"
        );

        let window = cfg.group_window();
        let mut groups: HashMap<String, Group> = HashMap::new();
        let mut acked = Acked::default();
        // Event ids being delivered now: a redelivery of one of them (its
        // ack_wait ran out) is left alone; the first copy acknowledges it.
        let mut busy: HashSet<String> = HashSet::new();
        let mut tasks: JoinSet<Vec<String>> = JoinSet::new();
        loop {
            let next = groups.values().map(|g| g.deadline).min();
            tokio::select! {
                m = msgs.next() => {
                    let msg = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "ALERTS consumer error");
                            continue;
                        }
                        None => {
                            // The pull ended (the consumer or the hub went
                            // away): set it up again, with back-off.
                            tracing::warn!("ALERTS consumer ended; pulling again");
                            match resume(&consumer, &shutdown).await {
                                Some(m) => msgs = m,
                                None => break,
                            }
                            continue;
                        }
                    };
                    self.counters.received.inc();
                    let ev = match parse(&msg.subject, &msg.payload) {
                        Ok(ev) => ev,
                        Err(reason) => {
                            self.counters.reject(reason);
                            tracing::warn!(subject = %msg.subject, reason, "alert event refused");
                            let _ = msg.ack_with(AckKind::Term).await;
                            continue;
                        }
                    };
                    if busy.contains(&ev.id) {
                        continue;
                    }
                    let episode = (ev.alert.machine.clone(), ev.alert.rule.clone(), ev.alert.since_ms);
                    match ev.alert.kind {
                        EventKind::Acknowledged => acked.insert(episode.clone()),
                        EventKind::Resolved => acked.remove(&episode),
                        EventKind::Firing => {}
                    }
                    if ev.alert.kind == EventKind::Firing && ev.alert.repeat > 0 && acked.contains(&episode) {
                        tracing::info!(event = %ev.id, "reminder after an acknowledgement: not sent");
                        let _ = msg.double_ack().await;
                        self.counters.outcome("after_ack", 1);
                        continue;
                    }
                    let channels = channels_for(&cfg.routes, &ev.alert);
                    if channels.is_empty() {
                        let _ = msg.double_ack().await;
                        self.counters.outcome("unrouted", 1);
                        continue;
                    }
                    self.counters.in_flight.inc();
                    busy.insert(ev.id.clone());
                    let machine = ev.alert.machine.clone();
                    let g = groups.entry(machine.clone()).or_insert_with(|| Group {
                        deadline: Instant::now() + window,
                        items: Vec::new(),
                    });
                    g.items.push(Item { msg, event: ev, channels });
                    if g.items.len() >= cfg.max_group_events || window.is_zero() {
                        if let Some(g) = groups.remove(&machine) {
                            spawn_group(&mut tasks, &ctx, g.items);
                        }
                    }
                }
                _ = sleep_until(next) => {
                    let now = Instant::now();
                    let due: Vec<String> = groups
                        .iter()
                        .filter(|(_, g)| g.deadline <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in due {
                        if let Some(g) = groups.remove(&k) {
                            spawn_group(&mut tasks, &ctx, g.items);
                        }
                    }
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(ids) = done {
                        for id in ids {
                            busy.remove(&id);
                        }
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        // Groups not yet sent stay unacknowledged and come back; deliveries
        // under way finish their current send (retries stop at shutdown).
        drop(groups);
        let _ = tokio::time::timeout(Duration::from_secs(15), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }
}

/// A new pull on `consumer`, tried with back-off until it works or
/// `shutdown`.
async fn resume(
    consumer: &jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    shutdown: &CancellationToken,
) -> Option<jetstream::consumer::pull::Stream> {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return None,
        }
        match consumer.messages().await {
            Ok(m) => return Some(m),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "cannot pull from ALERTS"),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn spawn_group(tasks: &mut JoinSet<Vec<String>>, ctx: &Arc<Ctx>, items: Vec<Item>) {
    let ids = items.iter().map(|i| i.event.id.clone()).collect();
    let ctx = Arc::clone(ctx);
    tasks.spawn(async move {
        deliver(ctx, items).await;
        ids
    });
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Answers `sysmonstm notify test <channel>`: one message, one try, and
/// the channel's answer as JSON `{"ok": …, "error": …}`. One at a time.
async fn answer_tests(ctx: Arc<Ctx>, mut sub: async_nats::Subscriber, shutdown: CancellationToken) {
    loop {
        let req = tokio::select! {
            r = sub.next() => match r { Some(r) => r, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Some(reply) = req.reply.clone() else {
            continue;
        };
        let name = subjects::parse_notify_test(&req.subject).unwrap_or_default();
        let answer = match ctx.channels.get(name) {
            None => serde_json::json!({ "ok": false, "channel": name,
                "error": format!("no channel {name:?} in the notifier's configuration") }),
            Some(ch) => {
                let now = now_ms();
                let ev = Event {
                    id: format!("sysmonstm-test:notify_test:{now}:firing"),
                    alert: Alert {
                        machine: "sysmonstm-test".into(),
                        rule: "notify_test".into(),
                        severity: Severity::Info,
                        kind: EventKind::Firing,
                        metric: Metric::Cpu,
                        value: 0.0,
                        threshold: 0.0,
                        since_ms: now,
                        ts_ms: now,
                        message: format!("test message from `sysmonstm notify test {name}`"),
                        repeat: 0,
                        trigger_seq: 0,
                    },
                };
                match ctx.channels.send(ch, &[&ev]).await {
                    Ok(()) => serde_json::json!({ "ok": true, "channel": name }),
                    Err(e) => {
                        serde_json::json!({ "ok": false, "channel": name, "error": e.to_string() })
                    }
                }
            }
        };
        let _ = ctx
            .js
            .client()
            .publish(reply, answer.to_string().into())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever arrives on ALERTS: no panic, and what is taken is what
        /// the subject says it is.
        #[test]
        fn parse_never_panics_and_takes_only_its_own(
            sev in "[a-z]{0,9}",
            machine in "[a-z0-9_-]{0,12}",
            rule in "[a-z0-9_-]{0,12}",
            payload in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let subject = format!("sysmon.alerts.{sev}.{machine}.{rule}");
            if let Ok(ev) = parse(&subject, &payload) {
                prop_assert_eq!(&ev.alert.machine, &machine);
                prop_assert_eq!(&ev.alert.rule, &rule);
                prop_assert_eq!(ev.alert.severity.name(), sev.as_str());
            }
        }
    }

    #[test]
    fn an_event_whose_subject_and_payload_differ_is_refused() {
        let a = Alert {
            machine: "web01".into(),
            rule: "cpu_high".into(),
            severity: Severity::Critical,
            kind: EventKind::Firing,
            metric: Metric::Cpu,
            value: 1.0,
            threshold: 0.5,
            since_ms: 1,
            ts_ms: 2,
            message: String::new(),
            repeat: 0,
            trigger_seq: 0,
        };
        let (subject, id) = a.address().expect("valid");
        assert_eq!(parse(&subject, &a.encode()).map(|e| e.id), Ok(id));
        assert_eq!(
            parse("sysmon.alerts.critical.db01.cpu_high", &a.encode()).err(),
            Some("machine_mismatch")
        );
        assert_eq!(
            parse("sysmon.alerts.warning.web01.cpu_high", &a.encode()).err(),
            Some("machine_mismatch")
        );
        assert_eq!(parse(&subject, b"\xff").err(), Some("decode"));
        assert_eq!(parse("sysmon.alerts.x", &a.encode()).err(), Some("subject"));
    }
}
