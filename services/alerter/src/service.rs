//! The running alerter: one task owns the [`Engine`] and takes, in turn,
//! snapshots, rule changes (watch on the rules bucket), acknowledgements
//! (events on ALERTS) and timer ticks.
//!
//! Snapshots come two ways. A plain subscription to `sysmon.metrics.>` gets
//! each as the hub receives it; the durable consumer `alerter` gets it once
//! the hub has stored it — with `sync_interval: always`, after an fsync that
//! takes milliseconds, seconds on a busy disk. Whichever comes first is
//! evaluated, the second is only acknowledged (the latest per machine, [`Latest`]),
//! so an alert does not wait for the disk, and the consumer still guarantees
//! that every stored snapshot is seen: those the subscription missed while
//! disconnected, and the backlog after a restart. METRICS split into
//! partitions has the consumer `alerter` on each stream; their messages are
//! merged, and each consumer is acknowledged (cumulatively) on its own.
//!
//! Events are sent from that task at once (low latency); a second task waits
//! for JetStream's ack of each, publishes again with the same Msg-Id if it
//! failed, and only then stores the pair's state. So a crash can at worst
//! send an event again, which ALERTS drops as a duplicate; it can never store
//! "firing" for an event that was not stored. The queue between them is
//! bounded (`confirm_queue`): when it is full, evaluation waits, and the
//! snapshots wait in JetStream.
//!
//! Every snapshot, whichever way it comes (and the last one of each machine
//! read at start), passes `schemas::accept` first: size, decoding, subject,
//! machine, timestamp within the skew, interval. A refused one is counted by
//! reason and logged (once, as the consumer delivers it) and never reaches
//! the engine: it moves no clock and makes no machine.
//!
//! Machines leave: one silent for `retire_after_s` is retired on the timer,
//! and `sysmonstm machines forget` (a request on `sysmon.admin.forget.<id>`)
//! drops one at once; both resolve its firing alerts and delete its states.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use sysmonstm_schemas::accept;
use sysmonstm_schemas::rules::{Phase, Rule};
use sysmonstm_schemas::{streams, subjects};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AlerterConfig;
use crate::clock::Clock;
use crate::counters::Counters;
use crate::effects::{ACK_EVERY, ACK_FLUSH, InFlight, PULL_BATCH, ack_up_to, confirm_loop};
use crate::engine::{Change, Engine, EventKind};
use crate::sample::{self, Sample};
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_kit::telemetry;
use sysmonstm_schemas::alert::Alert;
use sysmonstm_schemas::rules::file as rules_file;
use tracing::Instrument as _;

/// What "already seen" is measured against, per machine: the highest seq
/// and the latest time evaluated so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Latest {
    seq: u64,
    timestamp_ms: i64,
}

impl Latest {
    /// Whether `self` (a snapshot) is new after `seen`: a higher seq than
    /// any evaluated (the agent's seq only grows, across restarts too: so
    /// also in the same millisecond, or after the agent's clock stepped
    /// back), or a later time than any (an agent that lost its state dir
    /// counts from 1 again). The same snapshot twice (subscription and
    /// consumer), a retry of an older one and a spool replay are neither.
    /// By time alone, the second of two snapshots taken in one millisecond
    /// was never evaluated, and a clock stepped back silenced the machine's
    /// rules until it caught up; by the last snapshot's (seq, time) pair, a
    /// retry from before a clock step back was evaluated again.
    fn is_new_after(&self, seen: &Latest) -> bool {
        self.seq > seen.seq || self.timestamp_ms > seen.timestamp_ms
    }

    fn absorb(&mut self, other: &Latest) {
        self.seq = self.seq.max(other.seq);
        self.timestamp_ms = self.timestamp_ms.max(other.timestamp_ms);
    }
}

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
        cfg.validate()?;
        let file_rules = match &cfg.rules_file {
            Some(p) => Some(rules_file::load(p)?),
            None => None,
        };
        // Empty turns it off, as for the persister (an env variable cannot be unset).
        if let Some(addr) = cfg.metrics_listen.as_ref().filter(|a| !a.is_empty()) {
            sysmonstm_kit::http::serve_ops(
                "alerter",
                addr,
                Arc::clone(self.counters.registry()),
                shutdown.clone(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for /metrics on {addr}: {e}"))?;
        }
        let client = cfg.nats.connect("sysmonstm-alerter", true).await?;
        let js = jetstream::new(client);
        let parts = cfg.metrics_partitions;
        let setup = || async {
            let r = cfg.replicas;
            let alerts = js_kit::ensure_alerts_on(&js, r).await?;
            r.check(alerts.cached_info());
            let metrics = js_kit::ensure_metrics(&js, parts, r, &cfg.metrics_limits()).await?;
            let rules_kv = js_kit::ensure_kv(&js, r.kv(streams::rules_bucket())).await?;
            let state_kv = js_kit::ensure_kv(&js, r.kv(streams::alert_state_bucket())).await?;
            anyhow::Ok((alerts, metrics, rules_kv, state_kv))
        };
        // A hub that refuses the streams for now (no storage left, a limit
        // another service set differently, JetStream still starting) is
        // waited for, as the persister waits: the alerter keeps serving
        // /health and tries again, instead of exiting.
        let mut backoff = Duration::from_millis(200);
        let (alerts, metrics, rules_kv, state_kv) = loop {
            tokio::select! {
                r = setup() => match r {
                    Ok(v) => break v,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff,
                            "cannot set up the streams and buckets; trying again");
                    }
                },
                _ = shutdown.cancelled() => return Ok(()),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        if let Some(rules) = file_rules {
            put_rules(&rules_kv, &rules).await?;
        }

        tokio::spawn(js_kit::watch_unread_metrics(
            js.clone(),
            parts,
            "evaluated",
            self.counters.metrics_streams_unread.clone(),
            shutdown.clone(),
        ));

        let mut engine = Engine::new();
        let (tx, rx) = mpsc::channel::<InFlight>(cfg.confirm_queue);
        let confirm = tokio::spawn(confirm_loop(
            js.clone(),
            rx,
            cfg.confirm_queue,
            Arc::clone(&self.counters),
        ));

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
            .filter_map(|e| {
                let rec: sysmonstm_schemas::rules::AlertStateRecord =
                    serde_json::from_slice(&e.value).ok()?;
                // Only the alerter writes the bucket, but a record is input
                // all the same: one that names no valid machine or rule
                // would make a machine no snapshot can ever reach.
                let valid = sysmonstm_schemas::MachineId::parse(&rec.machine).is_ok()
                    && sysmonstm_schemas::MachineId::parse(&rec.rule).is_ok();
                if !valid {
                    tracing::warn!(key = %e.key, "alert state with an invalid machine or rule ignored");
                }
                valid.then_some(rec)
            })
            .collect::<Vec<_>>();
        let restored = records.len();
        let changes = engine.restore(records, self.clock.now_ms());
        self.emit(&js, changes, &tx).await;
        self.reconcile_acks(&mut engine, &alerts, &tx).await;
        self.seed_machines(&mut engine, &js).await;

        let wanted = streams::alerter_consumer(Duration::from_secs(cfg.ack_wait_s.max(1)));
        let mut consumers = Vec::with_capacity(metrics.len());
        for (p, metrics) in metrics.iter().enumerate() {
            // Cumulative acks only work on a consumer made for them; one left by
            // an older alerter (explicit acks) would redeliver nearly everything.
            // The server cannot change an ack policy, so it is made again.
            if let Ok(info) = metrics.consumer_info(streams::ALERTER_CONSUMER).await
                && info.config.ack_policy != wanted.ack_policy
            {
                tracing::warn!(stream = %parts.name(p), old = ?info.config.ack_policy,
                    "alerter consumer has another ack policy; making it again");
                metrics.delete_consumer(streams::ALERTER_CONSUMER).await?;
            }
            let wanted = consumer::pull::Config {
                filter_subject: parts.filter(p),
                ..wanted.clone()
            };
            consumers.push(
                metrics
                    .get_or_create_consumer(streams::ALERTER_CONSUMER, wanted)
                    .await?,
            );
        }
        // Subscribed before the consumers start, so the two overlap; mapped
        // to a partition, a snapshot's subject has one token more.
        let mut live = js.client().subscribe(subjects::METRICS_LIVE).await?;
        let mut forgets = js.client().subscribe(subjects::FORGET_ALL).await?;
        // Every partition's messages in one stream, each tagged with its
        // partition; a consumer's end is a `None` of its own.
        let mut merged = Vec::with_capacity(consumers.len());
        for (p, c) in consumers.iter().enumerate() {
            let msgs = c
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .messages()
                .await?;
            merged.push(
                msgs.map(move |m| (p, Some(m)))
                    .chain(futures::stream::iter([(p, None)]))
                    .boxed(),
            );
        }
        let mut snapshots = futures::stream::select_all(merged);
        let mut newest = std::collections::HashMap::<String, Latest>::new();
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.tick_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(rules = engine.rules().count(), restored, "alerter ready");
        // Snapshots are acknowledged cumulatively (AckPolicy::All): the last
        // one evaluated, every ACK_EVERY messages or ACK_FLUSH. One ack per
        // snapshot would be an fsynced write on the hub for each. An ack
        // covers its own consumer only: one pending ack per partition.
        let mut unacked = Unacked::new(consumers.len());
        let mut ack_flush = tokio::time::interval(ACK_FLUSH);

        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                m = live.next() => match m {
                    Some(msg) => {
                        self.on_snapshot(&mut engine, &mut newest, (msg.subject.as_str(), &msg.payload, msg.headers.as_ref()), false, &js, &tx).await;
                    }
                    None => anyhow::bail!("the METRICS subscription ended"),
                },
                m = snapshots.next() => match m {
                    Some((p, Some(Ok(msg)))) => {
                        self.on_snapshot(&mut engine, &mut newest, (msg.subject.as_str(), &msg.payload, msg.headers.as_ref()), true, &js, &tx).await;
                        unacked.evaluated(p, msg).await;
                    }
                    Some((p, Some(Err(e)))) => tracing::warn!(error = %e, stream = %parts.name(p), "pull from METRICS failed; retrying"),
                    Some((p, None)) => anyhow::bail!("the METRICS consumer on {} ended", parts.name(p)),
                    None => anyhow::bail!("the METRICS consumers ended"),
                },
                e = rule_watch.next() => match e {
                    Some(Ok(entry)) => self.apply_rule(&mut engine, &entry, &js, &tx).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "rules watch error"),
                    None => {
                        tracing::warn!("rules watch ended; watching again");
                        rule_watch = rules_kv.watch_all().await?;
                    }
                },
                f = forgets.next() => match f {
                    Some(msg) => self.on_forget(&mut engine, &mut newest, &msg, &js, &tx).await,
                    None => anyhow::bail!("the forget subscription ended"),
                },
                a = acks.next() => match a {
                    Some(Ok(msg)) => {
                        if let Some(ev) = Alert::decode(&msg.payload) {
                            self.apply_ack(&mut engine, &ev, &tx).await;
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "ALERTS ack watch error"),
                    None => anyhow::bail!("the ALERTS ack watch ended"),
                },
                _ = ack_flush.tick() => unacked.flush().await,
                _ = tick.tick() => {
                    let now = self.clock.now_ms();
                    let changes = engine.on_tick(now);
                    self.emit(&js, changes, &tx).await;
                    self.retire(&mut engine, &mut newest, now, &js, &tx).await;
                }
            }
        }
        unacked.flush().await;
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
        newest: &mut std::collections::HashMap<String, Latest>,
        (subject, payload, headers): (&str, &[u8], Option<&async_nats::HeaderMap>),
        via_consumer: bool,
        js: &jetstream::Context,
        tx: &mpsc::Sender<InFlight>,
    ) {
        // A rejected snapshot is not terminated one by one: the next
        // cumulative ack covers it, and it is counted and logged here, once:
        // as the consumer delivers it (the subscription only skips it).
        let c = &self.counters;
        if via_consumer {
            Counters::add(&c.snapshots_received, 1);
        }
        let now = self.clock.now_ms();
        let snap = match sample::accept(subject, payload, now, &self.config.accept_limits()) {
            Ok(s) => s,
            Err(r) => {
                if via_consumer {
                    c.reject(&r);
                    tracing::warn!(subject = %short(subject), reason = r.reason(), error = %r,
                        "snapshot refused; skipped");
                }
                return;
            }
        };
        // Each snapshot comes twice (subscription and consumer); an older
        // one after a newer (a backlog) would only turn the clock back. Only
        // accepted timestamps get here, so none is beyond the skew.
        let this = Latest {
            seq: snap.seq,
            timestamp_ms: snap.timestamp_ms,
        };
        match newest.get_mut(&snap.machine_id) {
            Some(seen) if !this.is_new_after(seen) => {
                Counters::add(&c.snapshots_already_seen, 1);
                return;
            }
            Some(seen) => seen.absorb(&this),
            None => {
                newest.insert(snap.machine_id.clone(), this);
            }
        }
        if snap.timestamp_ms < now.saturating_sub(self.config.max_snapshot_age_ms()) {
            Counters::add(&c.snapshots_stale, 1);
            engine.seen(
                &snap.machine_id,
                snap.timestamp_ms.min(now),
                snap.interval_ms,
            );
        } else {
            Counters::add(&c.snapshots_evaluated, 1);
            // The child of the agent's `publish` when traces are exported
            // (once per snapshot: only the copy that is evaluated).
            let span = telemetry::consumer_span(
                headers,
                || tracing::info_span!("evaluate", otel.kind = "consumer", machine = %snap.machine_id),
            );
            let changes = span.in_scope(|| engine.on_sample(&Sample::from_snapshot(&snap), now));
            self.emit(js, changes, tx).instrument(span).await;
        }
        Counters::set(&c.machines, engine.machine_count() as u64);
    }

    /// Retires the machines silent past the horizon (on the timer).
    async fn retire(
        &self,
        engine: &mut Engine,
        newest: &mut std::collections::HashMap<String, Latest>,
        now: i64,
        js: &jetstream::Context,
        tx: &mpsc::Sender<InFlight>,
    ) {
        let (changes, retired) = engine.retire(now, self.config.retire_after_ms());
        for m in &retired {
            newest.remove(m);
            Counters::add(&self.counters.machines_retired, 1);
            tracing::warn!(machine = %m, after_s = self.config.retire_after_s,
                "machine retired: no snapshot within retire_after_s; its alerts resolve and its state is dropped");
        }
        self.emit(js, changes, tx).await;
        Counters::set(&self.counters.machines, engine.machine_count() as u64);
    }

    /// `sysmonstm machines forget <id>`: the machine is dropped at once, its
    /// firing alerts resolve, its states are deleted (in order after every
    /// change already queued); the requester gets an answer.
    async fn on_forget(
        &self,
        engine: &mut Engine,
        newest: &mut std::collections::HashMap<String, Latest>,
        msg: &async_nats::Message,
        js: &jetstream::Context,
        tx: &mpsc::Sender<InFlight>,
    ) {
        let machine = match accept::forget_subject(&msg.subject) {
            Ok(m) => m,
            Err(r) => {
                tracing::warn!(subject = %short(&msg.subject), error = %r, "forget request refused");
                return;
            }
        };
        let (changes, known) = engine.forget(machine.as_str(), self.clock.now_ms());
        newest.remove(machine.as_str());
        let states = changes.len();
        self.emit(js, changes, tx).await;
        Counters::set(&self.counters.machines, engine.machine_count() as u64);
        if known {
            Counters::add(&self.counters.machines_forgotten, 1);
        }
        tracing::info!(machine = %machine, known, states, "machine forgotten on request");
        if let Some(reply) = &msg.reply {
            let answer = if known {
                format!("alerter: forgot {machine} ({states} alert states)")
            } else {
                format!("alerter: {machine} was not known")
            };
            let _ = js.client().publish(reply.clone(), answer.into()).await;
        }
    }

    async fn apply_rule(
        &self,
        engine: &mut Engine,
        entry: &kv::Entry,
        js: &jetstream::Context,
        tx: &mpsc::Sender<InFlight>,
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

    async fn apply_ack(&self, engine: &mut Engine, ev: &Alert, tx: &mpsc::Sender<InFlight>) {
        if ev.kind != EventKind::Acknowledged {
            return;
        }
        if let Some(change) = engine.ack(&ev.machine, &ev.rule, ev.since_ms) {
            Counters::add(&self.counters.acks_applied, 1);
            tracing::info!(machine = %ev.machine, rule = %ev.rule, "alert acknowledged; no more reminders");
            self.queue(tx, InFlight { change, ack: None }).await;
        }
    }

    /// Hands a change to the confirm task; when its queue is full, waits
    /// (and counts the wait): evaluation slows down, nothing is dropped.
    async fn queue(&self, tx: &mpsc::Sender<InFlight>, item: InFlight) {
        match tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                Counters::add(&self.counters.confirm_queue_full, 1);
                let _ = tx.send(item).await;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Acks given while this alerter was down: the last event of a firing
    /// alert's subject is the acknowledgement.
    async fn reconcile_acks(
        &self,
        engine: &mut Engine,
        alerts: &jetstream::stream::Stream,
        tx: &mpsc::Sender<InFlight>,
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
                self.apply_ack(engine, &ev, tx).await;
            }
        }
    }

    /// Machines that went quiet while no alerter ran are still owed a
    /// silent alert: their last snapshot in METRICS says when they were
    /// last heard of.
    async fn seed_machines(&self, engine: &mut Engine, js: &jetstream::Context) {
        let now = self.clock.now_ms();
        match js_kit::last_snapshots(js, self.config.metrics_partitions).await {
            Ok(lasts) => {
                let limits = self.config.accept_limits();
                for (subject, payload) in lasts {
                    // The same rule as for every snapshot: a last snapshot
                    // from the far future must not start a machine's clock
                    // there, nor a bad token make a machine.
                    match sample::accept(&subject, &payload, now, &limits) {
                        Ok(s) => engine.seen(&s.machine_id, s.timestamp_ms.min(now), s.interval_ms),
                        Err(r) => {
                            self.counters.reject(&r);
                            tracing::warn!(subject = %short(&subject), reason = r.reason(), error = %r,
                                "last snapshot in METRICS refused; that machine is not followed");
                        }
                    }
                }
                Counters::set(&self.counters.machines, engine.machine_count() as u64);
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
        tx: &mpsc::Sender<InFlight>,
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
            self.queue(tx, InFlight { change, ack }).await;
        }
    }
}

/// The last snapshot evaluated and not yet acknowledged, and how many, of
/// each METRICS partition's consumer.
struct Unacked(Vec<(Option<jetstream::Message>, usize)>);

impl Unacked {
    fn new(partitions: usize) -> Self {
        Self((0..partitions).map(|_| (None, 0)).collect())
    }

    /// `msg` of partition `p` was evaluated: acknowledged with those before
    /// it once ACK_EVERY are waiting.
    async fn evaluated(&mut self, p: usize, msg: jetstream::Message) {
        let Some((last, n)) = self.0.get_mut(p) else {
            return;
        };
        *last = Some(msg);
        *n += 1;
        if *n >= ACK_EVERY {
            ack_up_to(last.take()).await;
            *n = 0;
        }
    }

    /// Acknowledges every partition's last evaluated snapshot.
    async fn flush(&mut self) {
        for (last, n) in &mut self.0 {
            ack_up_to(last.take()).await;
            *n = 0;
        }
    }
}

/// A subject for a log line: anyone can make one kilobytes long.
fn short(subject: &str) -> &str {
    let cut = subject
        .char_indices()
        .nth(120)
        .map_or(subject.len(), |(i, _)| i);
    &subject[..cut]
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
