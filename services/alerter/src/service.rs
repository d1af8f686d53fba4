//! The running alerter: one task owns the [`Engine`] and takes, in turn,
//! snapshots, rule changes (watch on the rules bucket), acknowledgements
//! (events on ALERTS) and timer ticks.
//!
//! Snapshots come two ways. A plain subscription to `sysmon.metrics.>` gets
//! each as the hub receives it; the durable consumer `alerter` gets it once
//! the hub has stored it — with `sync_interval: always`, after an fsync that
//! takes milliseconds, seconds on a busy disk. Whichever comes first is
//! evaluated, the second is only acknowledged (newest timestamp per machine),
//! so an alert does not wait for the disk, and the consumer still guarantees
//! that every stored snapshot is seen: those the subscription missed while
//! disconnected, and the backlog after a restart.
//!
//! Events are sent from that task at once (low latency); a second task waits
//! for JetStream's ack of each, publishes again with the same Msg-Id if it
//! failed, and only then stores the pair's state. So a crash can at worst
//! send an event again, which ALERTS drops as a duplicate; it can never store
//! "firing" for an event that was not stored.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use prost::Message as _;
use sysmonstm_schemas::rules::{Phase, Rule};
use sysmonstm_schemas::{MachineId, streams, subjects, v1};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AlerterConfig;
use crate::clock::Clock;
use crate::counters::Counters;
use crate::effects::{ACK_EVERY, ACK_FLUSH, InFlight, ack_up_to, confirm_loop};
use crate::engine::{Change, Engine, EventKind};
use crate::sample::Sample;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::alert::Alert;
use sysmonstm_schemas::rules::file as rules_file;

pub struct Alerter {
    config: AlerterConfig,
    counters: Arc<Counters>,
    clock: Clock,
}

impl Alerter {
    pub fn new(config: AlerterConfig) -> Self {
        Self {
            config,
            counters: Arc::default(),
            clock: Clock::new(),
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Runs until `shutdown`. A broken rules file is an error before
    /// anything connects ([`rules_file::RulesFileError`] in the chain).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.config;
        let file_rules = match &cfg.rules_file {
            Some(p) => Some(rules_file::load(p)?),
            None => None,
        };
        // Empty turns it off, as for the persister (an env variable cannot be unset).
        if let Some(addr) = cfg.metrics_listen.as_ref().filter(|a| !a.is_empty()) {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for /metrics on {addr}: {e}"))?;
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
            tokio::spawn(crate::counters::serve(
                listener,
                self.counters(),
                shutdown.clone(),
            ));
        }
        let client = cfg.nats.connect("sysmonstm-alerter", true).await?;
        let js = jetstream::new(client);
        let setup = async {
            let alerts = js_kit::ensure_alerts(&js).await?;
            let metrics = js
                .get_or_create_stream(streams::metrics(&cfg.metrics_limits()))
                .await?;
            let rules_kv = js_kit::ensure_kv(&js, streams::rules_bucket()).await?;
            let state_kv = js_kit::ensure_kv(&js, streams::alert_state_bucket()).await?;
            anyhow::Ok((alerts, metrics, rules_kv, state_kv))
        };
        let (alerts, metrics, rules_kv, state_kv) = tokio::select! {
            r = setup => r?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        if let Some(rules) = file_rules {
            put_rules(&rules_kv, &rules).await?;
        }

        let mut engine = Engine::new();
        let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
        let confirm = tokio::spawn(confirm_loop(js.clone(), rx, Arc::clone(&self.counters)));

        // The live watch starts before the current values are read, so a
        // change in between is not missed (applying one twice is harmless).
        let mut rule_watch = rules_kv.watch_all().await?;
        for entry in js_kit::current_entries(&rules_kv).await? {
            self.apply_rule(&mut engine, &entry, &js, &tx).await;
        }
        // Acks: live from now; those given while we were away are read back
        // from the last event of each firing alert below.
        let mut acks = alerts
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects::ALERTS_ALL.to_owned(),
                deliver_policy: consumer::DeliverPolicy::New,
                ..Default::default()
            })
            .await?
            .messages()
            .await?;
        let records = js_kit::current_entries(&state_kv)
            .await?
            .into_iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect::<Vec<sysmonstm_schemas::rules::AlertStateRecord>>();
        let restored = records.len();
        let changes = engine.restore(records, self.clock.now_ms());
        self.emit(&js, changes, &tx).await;
        self.reconcile_acks(&mut engine, &alerts, &tx).await;
        self.seed_machines(&mut engine, &js).await;

        let wanted = streams::alerter_consumer(Duration::from_secs(cfg.ack_wait_s.max(1)));
        // Cumulative acks only work on a consumer made for them; one left by
        // an older alerter (explicit acks) would redeliver nearly everything.
        // The server cannot change an ack policy, so it is made again.
        if let Ok(info) = metrics.consumer_info(streams::ALERTER_CONSUMER).await
            && info.config.ack_policy != wanted.ack_policy
        {
            tracing::warn!(old = ?info.config.ack_policy, "alerter consumer has another ack policy; making it again");
            metrics.delete_consumer(streams::ALERTER_CONSUMER).await?;
        }
        let consumer = metrics
            .get_or_create_consumer(streams::ALERTER_CONSUMER, wanted)
            .await?;
        // Subscribed before the consumer starts, so the two overlap.
        let mut live = js.client().subscribe(subjects::METRICS_ALL).await?;
        let mut snapshots = consumer.messages().await?;
        let mut newest = std::collections::HashMap::<String, i64>::new();
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(rules = engine.rules().count(), restored, "alerter ready");
        // Snapshots are acknowledged cumulatively (AckPolicy::All): the last
        // one evaluated, every ACK_EVERY messages or ACK_FLUSH. One ack per
        // snapshot would be an fsynced write on the hub for each.
        let (mut unacked, mut unacked_n): (Option<jetstream::Message>, usize) = (None, 0);
        let mut ack_flush = tokio::time::interval(ACK_FLUSH);

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = live.next() => match m {
                    Some(msg) => {
                        self.on_snapshot(&mut engine, &mut newest, (msg.subject.as_str(), &msg.payload), false, &js, &tx).await;
                    }
                    None => anyhow::bail!("the METRICS subscription ended"),
                },
                m = snapshots.next() => match m {
                    Some(Ok(msg)) => {
                        self.on_snapshot(&mut engine, &mut newest, (msg.subject.as_str(), &msg.payload), true, &js, &tx).await;
                        unacked_n += 1;
                        unacked = Some(msg);
                        if unacked_n >= ACK_EVERY {
                            ack_up_to(unacked.take()).await;
                            unacked_n = 0;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pull from METRICS failed; retrying"),
                    None => anyhow::bail!("the METRICS consumer ended"),
                },
                e = rule_watch.next() => match e {
                    Some(Ok(entry)) => self.apply_rule(&mut engine, &entry, &js, &tx).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "rules watch error"),
                    None => {
                        tracing::warn!("rules watch ended; watching again");
                        rule_watch = rules_kv.watch_all().await?;
                    }
                },
                a = acks.next() => match a {
                    Some(Ok(msg)) => {
                        if let Some(ev) = Alert::decode(&msg.payload) {
                            self.apply_ack(&mut engine, &ev, &tx);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "ALERTS ack watch error"),
                    None => anyhow::bail!("the ALERTS ack watch ended"),
                },
                _ = ack_flush.tick() => {
                    ack_up_to(unacked.take()).await;
                    unacked_n = 0;
                }
                _ = tick.tick() => {
                    let changes = engine.on_tick(self.clock.now_ms());
                    self.emit(&js, changes, &tx).await;
                }
            }
        }
        ack_up_to(unacked.take()).await;
        drop(tx);
        // Let the events already sent be confirmed and their states stored.
        let _ = tokio::time::timeout(Duration::from_secs(5), confirm).await;
        tracing::info!(
            evaluated = Counters::get(&self.counters.snapshots_evaluated),
            "alerter stopped"
        );
        Ok(())
    }

    async fn on_snapshot(
        &self,
        engine: &mut Engine,
        newest: &mut std::collections::HashMap<String, i64>,
        (subject, payload): (&str, &[u8]),
        via_consumer: bool,
        js: &jetstream::Context,
        tx: &mpsc::UnboundedSender<InFlight>,
    ) {
        // A rejected snapshot is not terminated one by one: the next
        // cumulative ack covers it, and it is counted and logged here, once:
        // as the consumer delivers it (the subscription only skips it).
        let c = &self.counters;
        if via_consumer {
            Counters::add(&c.snapshots_received, 1);
        }
        let snap = match v1::Snapshot::decode(payload) {
            Ok(s) => s,
            Err(_) if !via_consumer => return,
            Err(e) => {
                Counters::add(&c.rejected_decode, 1);
                tracing::warn!(subject, error = %e, "snapshot cannot be decoded; skipped");
                return;
            }
        };
        let subject_machine = subjects::machine_of_metrics(subject);
        if subject_machine != Some(snap.machine_id.as_str())
            || MachineId::parse(&snap.machine_id).is_err()
        {
            if !via_consumer {
                return;
            }
            Counters::add(&c.rejected_subject, 1);
            tracing::warn!(subject, machine = %snap.machine_id,
                "snapshot's machine does not match its subject; skipped");
            return;
        }
        // Each snapshot comes twice (subscription and consumer); an older
        // one after a newer (a backlog) would only turn the clock back.
        match newest.get_mut(&snap.machine_id) {
            Some(t) if *t >= snap.timestamp_ms => {
                Counters::add(&c.snapshots_already_seen, 1);
                return;
            }
            Some(t) => *t = snap.timestamp_ms,
            None => {
                newest.insert(snap.machine_id.clone(), snap.timestamp_ms);
            }
        }
        let now = self.clock.now_ms();
        let max_age = i64::try_from(self.config.max_snapshot_age_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        if snap.timestamp_ms < now - max_age {
            Counters::add(&c.snapshots_stale, 1);
            engine.seen(
                &snap.machine_id,
                snap.timestamp_ms.min(now),
                snap.interval_ms,
            );
        } else {
            Counters::add(&c.snapshots_evaluated, 1);
            let changes = engine.on_sample(&Sample::from_snapshot(&snap), now);
            self.emit(js, changes, tx).await;
        }
    }

    async fn apply_rule(
        &self,
        engine: &mut Engine,
        entry: &kv::Entry,
        js: &jetstream::Context,
        tx: &mpsc::UnboundedSender<InFlight>,
    ) {
        let now = self.clock.now_ms();
        let changes = match entry.operation {
            kv::Operation::Delete | kv::Operation::Purge => {
                tracing::info!(rule = %entry.key, "rule removed");
                engine.remove_rule(&entry.key, now)
            }
            kv::Operation::Put => match Rule::from_json(&entry.value) {
                Ok(rule) if rule.name == entry.key => {
                    tracing::info!(rule = %rule.name, revision = entry.revision, "rule applied");
                    engine.set_rule(rule, now)
                }
                Ok(rule) => {
                    self.refuse_rule(&entry.key, &format!("its name is {:?}", rule.name));
                    return;
                }
                Err(why) => {
                    self.refuse_rule(&entry.key, &why);
                    return;
                }
            },
        };
        Counters::add(&self.counters.rules_applied, 1);
        self.emit(js, changes, tx).await;
    }

    /// A value nobody should have written (the CLI validates): the rule
    /// stays as it was.
    fn refuse_rule(&self, key: &str, why: &str) {
        Counters::add(&self.counters.rules_invalid, 1);
        tracing::error!(
            key,
            why,
            "invalid rule in the rules bucket ignored; the previous version stays"
        );
    }

    fn apply_ack(&self, engine: &mut Engine, ev: &Alert, tx: &mpsc::UnboundedSender<InFlight>) {
        if ev.kind != EventKind::Acknowledged {
            return;
        }
        if let Some(change) = engine.ack(&ev.machine, &ev.rule, ev.since_ms) {
            Counters::add(&self.counters.acks_applied, 1);
            tracing::info!(machine = %ev.machine, rule = %ev.rule, "alert acknowledged; no more reminders");
            let _ = tx.send(InFlight { change, ack: None });
        }
    }

    /// Acks given while this alerter was down: the last event of a firing
    /// alert's subject is the acknowledgement.
    async fn reconcile_acks(
        &self,
        engine: &mut Engine,
        alerts: &jetstream::stream::Stream,
        tx: &mpsc::UnboundedSender<InFlight>,
    ) {
        let firing: Vec<_> = engine
            .states()
            .filter(|r| r.phase == Phase::Firing && !r.acked)
            .cloned()
            .collect();
        for rec in firing {
            let probe = Alert::acknowledged(&rec, 0, "");
            let Ok((subject, _)) = probe.address() else {
                continue;
            };
            if let Ok(m) = alerts.get_last_raw_message_by_subject(&subject).await
                && let Some(ev) = Alert::decode(&m.payload)
            {
                self.apply_ack(engine, &ev, tx);
            }
        }
    }

    /// Machines that went quiet while no alerter ran are still owed a
    /// silent alert: their last snapshot in METRICS says when they were
    /// last heard of.
    async fn seed_machines(&self, engine: &mut Engine, js: &jetstream::Context) {
        let now = self.clock.now_ms();
        match js_kit::last_per_subject(js, streams::METRICS, subjects::METRICS_ALL).await {
            Ok(lasts) => {
                for (subject, payload) in lasts {
                    if let (Some(m), Ok(s)) = (
                        subjects::machine_of_metrics(&subject),
                        v1::Snapshot::decode(payload.as_ref()),
                    ) {
                        engine.seen(m, s.timestamp_ms.min(now), s.interval_ms);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last snapshots; silent machines are counted from their next snapshot")
            }
        }
    }

    /// Sends each change's event now and hands it to the confirm task.
    async fn emit(
        &self,
        js: &jetstream::Context,
        changes: Vec<Change>,
        tx: &mpsc::UnboundedSender<InFlight>,
    ) {
        for change in changes {
            let ack = match &change.event {
                Some(ev) => {
                    let c = &self.counters;
                    match (ev.kind, ev.repeat) {
                        (EventKind::Firing, 0) => Counters::add(&c.events_firing, 1),
                        (EventKind::Firing, _) => Counters::add(&c.events_reminder, 1),
                        _ => Counters::add(&c.events_resolved, 1),
                    }
                    tracing::info!(machine = %ev.machine, rule = %ev.rule, kind = ?ev.kind,
                        value = ev.value, "alert event");
                    match js_kit::send_alert(js, ev).await {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::warn!(error = %e, "alert event not sent; retrying");
                            None
                        }
                    }
                }
                None => None,
            };
            let _ = tx.send(InFlight { change, ack });
        }
    }
}

/// Writes the rules of a file into the bucket, leaving equal ones alone.
async fn put_rules(kv: &kv::Store, rules: &[Rule]) -> anyhow::Result<()> {
    for r in rules {
        let json = r.to_json();
        if kv.get(&r.name).await.ok().flatten().as_deref() == Some(json.as_slice()) {
            continue;
        }
        kv.put(&r.name, json.into())
            .await
            .map_err(|e| anyhow::anyhow!("cannot store rule {:?}: {e}", r.name))?;
    }
    tracing::info!(
        rules = rules.len(),
        "rules file loaded into the rules bucket"
    );
    Ok(())
}
