//! Delivering one group (events of one machine that came within the group
//! window) to every channel its routes chose, then acknowledging it.
//!
//! The order is what makes a delivery trustworthy:
//!
//! 1. Just before sending, the silences are asked: a silenced event is
//!    acknowledged and nothing goes out.
//! 2. For each channel (all at once, so a failing channel does not hold the
//!    others back), the events already delivered there are left out: the
//!    bucket `sysmon_notifier_sent` holds a key per delivered (channel,
//!    event). A read that fails stops the group: it is not acknowledged and
//!    comes back later, so no event is sent twice for want of a record.
//! 3. The message goes out, tried again with back-off on time-outs, broken
//!    connections, 5xx, 408, 429 and SMTP 4xx, up to `max_attempts`; a
//!    permanent refusal (another 4xx, SMTP 5xx) ends it at once. Giving up
//!    is recorded: an event on `sysmon.notify.failed.<machine>.<channel>`
//!    (stream NOTIFICATIONS, Msg-Id `<event id>:<channel>:failed`), a
//!    counter and a log line.
//! 4. Once the channel has accepted (or it was given up), its key is
//!    written; a write that fails leaves the group unacknowledged.
//! 5. Only when every channel is through is each event acknowledged (a
//!    double ack: the server confirms it).
//!
//! While this runs, every event of the group is kept "in progress" at
//! JetStream, so `ack_wait` does not redeliver it to another notifier
//! during retries.
//!
//! **The crash window.** A notifier killed between a channel's acceptance
//! (2xx, SMTP 250) and the key's write (step 4) sends that message again
//! after a restart: the key write is one KV publish, milliseconds, so this
//! window is that long. The other way round — the key first, then the send
//! — would turn the same crash into a lost notification, which is worse
//! for an alert. The second copy carries the same delivery id
//! (`X-Sysmon-Delivery`, the mail's Message-ID, `delivery` in the JSON), so
//! a receiver or a mail client can drop it. A crash anywhere after step 4
//! sends nothing again: the keys are there. A crash before the channel
//! answered loses nothing: the event was not acknowledged and comes back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, kv};
use futures::future::BoxFuture;
use prost::Message as _;
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use tokio_util::sync::CancellationToken;

use crate::channel::{Channel, Channels};
use crate::config::NotifierConfig;
use crate::counters::Counters;
use crate::message::Event;
use crate::silences::{Silences, now_ms};

/// Called after every channel of a group is through and before its events
/// are acknowledged (tests stop the notifier there).
pub type Hook = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// One event and its message from ALERTS.
pub struct Item {
    pub msg: jetstream::Message,
    pub event: Event,
    pub channels: BTreeSet<String>,
}

/// What a delivery needs, shared by every group.
pub struct Ctx {
    pub config: NotifierConfig,
    pub channels: Channels,
    pub js: jetstream::Context,
    pub sent: kv::Store,
    pub silences: Silences,
    pub counters: Arc<Counters>,
    pub before_ack: Option<Hook>,
    pub shutdown: CancellationToken,
}

enum Sent {
    /// Every event went out (or was out before).
    Done,
    /// Given up; the failure is recorded, the events are done with.
    GaveUp,
    /// Neither: the group is left unacknowledged and comes back.
    Interrupted,
}

/// Delivers `items` (one machine's, in stream order) and acknowledges them.
pub async fn deliver(ctx: Arc<Ctx>, items: Vec<Item>) {
    let (silenced, items): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| {
        ctx.silences
            .silenced(&i.event.alert.machine, &i.event.alert.rule)
    });
    for i in &silenced {
        tracing::info!(event = %i.event.id, "silenced: no notification");
    }
    ack_all(&ctx, &silenced, "silenced").await;
    if items.is_empty() {
        return;
    }

    let union: BTreeSet<&String> = items.iter().flat_map(|i| i.channels.iter()).collect();
    let work = futures::future::join_all(union.into_iter().map(|name| {
        let ctx = Arc::clone(&ctx);
        let evs: Vec<&Event> = items
            .iter()
            .filter(|i| i.channels.contains(name))
            .map(|i| &i.event)
            .collect();
        async move { (name.clone(), to_channel(&ctx, name, evs).await) }
    }));
    // Kept in progress for exactly as long as the work runs: part of this
    // future, so a notifier that dies stops telling JetStream at once.
    let keeper = keep_in_progress(
        items.iter().map(|i| i.msg.clone()).collect(),
        Duration::from_secs(ctx.config.ack_wait_s.max(1)),
    );
    let results = tokio::select! {
        r = work => r,
        never = keeper => match never {},
    };

    if results.iter().any(|(_, r)| matches!(r, Sent::Interrupted)) {
        // Not acknowledged: JetStream delivers the group again, and the
        // channels that took it are skipped then.
        for i in &items {
            let _ = i
                .msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
        ctx.counters.in_flight.sub(len_i64(items.len()));
        return;
    }
    if let Some(hook) = &ctx.before_ack {
        hook().await;
    }
    let failed: BTreeSet<&String> = results
        .iter()
        .filter(|(_, r)| matches!(r, Sent::GaveUp))
        .map(|(n, _)| n)
        .collect();
    let (bad, good): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|i| i.channels.iter().any(|c| failed.contains(c)));
    ack_all(&ctx, &good, "delivered").await;
    ack_all(&ctx, &bad, "failed").await;
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn ack_all(ctx: &Ctx, items: &[Item], outcome: &str) {
    for i in items {
        if let Err(e) = i.msg.double_ack().await {
            // Not stored: the event comes back, and the delivered keys
            // keep it from going out again.
            tracing::warn!(event = %i.event.id, error = %e, "ack failed");
        }
    }
    ctx.counters.outcome(outcome, items.len() as u64);
    ctx.counters.in_flight.sub(len_i64(items.len()));
}

/// Tells JetStream every `ack_wait / 3` that the group is being worked on;
/// never ends (dropped with the delivery).
async fn keep_in_progress(
    msgs: Vec<jetstream::Message>,
    ack_wait: Duration,
) -> std::convert::Infallible {
    let every = (ack_wait / 3).max(Duration::from_millis(300));
    loop {
        tokio::time::sleep(every).await;
        for m in &msgs {
            let _ = m.ack_with(AckKind::Progress).await;
        }
    }
}

async fn to_channel(ctx: &Ctx, name: &str, evs: Vec<&Event>) -> Sent {
    let Some(channel) = ctx.channels.get(name) else {
        // Validation makes every route name a channel.
        return Sent::GaveUp;
    };
    let mut pending = Vec::with_capacity(evs.len());
    for e in evs {
        match ctx.sent.get(streams::notifier_sent_key(name, &e.id)).await {
            Ok(Some(_)) => {
                ctx.counters.already_sent.inc();
                tracing::info!(channel = name, event = %e.id, "delivered before: not sent again");
            }
            Ok(None) => pending.push(e),
            Err(err) => {
                ctx.counters.dedupe_errors.inc();
                tracing::warn!(channel = name, error = %err, "cannot read the delivered bucket");
                return Sent::Interrupted;
            }
        }
    }
    if pending.is_empty() {
        return Sent::Done;
    }
    let first_attempt_ms = now_ms();
    let (outcome, mark) = match send_with_retries(ctx, channel, &pending).await {
        Ok(()) => {
            ctx.counters.messages_sent.inc();
            (Sent::Done, "sent")
        }
        Err(None) => return Sent::Interrupted,
        Err(Some((attempts, why))) => {
            for e in &pending {
                record_failure(ctx, name, e, (first_attempt_ms, attempts), &why).await;
            }
            (Sent::GaveUp, "failed")
        }
    };
    for e in &pending {
        let key = streams::notifier_sent_key(name, &e.id);
        if let Err(err) = ctx.sent.put(key, mark.into()).await {
            ctx.counters.dedupe_errors.inc();
            tracing::warn!(channel = name, event = %e.id, error = %err,
                "cannot record the delivery; the event stays unacknowledged");
            return Sent::Interrupted;
        }
    }
    outcome
}

/// `Err(None)`: interrupted by shutdown. `Err(Some((tries, why)))`: given up.
async fn send_with_retries(
    ctx: &Ctx,
    channel: &Channel,
    evs: &[&Event],
) -> Result<(), Option<(u32, String)>> {
    let max = ctx.config.max_attempts.max(1);
    let mut n = 0u32;
    loop {
        n = n.saturating_add(1);
        let err = tokio::select! {
            r = ctx.channels.send(channel, evs) => match r {
                Ok(()) => return Ok(()),
                Err(e) => e,
            },
            _ = ctx.shutdown.cancelled() => return Err(None),
        };
        if !err.is_transient() || n >= max {
            tracing::warn!(channel = %channel.name, tries = n, error = %err, "giving up");
            return Err(Some((n, err.to_string())));
        }
        ctx.counters.retries.inc();
        let wait = ctx.config.backoff(n);
        tracing::info!(channel = %channel.name, tries = n, retry_in = ?wait, error = %err, "send failed; trying again");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.cancelled() => return Err(None),
        }
    }
}

/// `tried`: when the first attempt began (Unix ms) and how many there were.
async fn record_failure(ctx: &Ctx, channel: &str, e: &Event, tried: (i64, u32), why: &str) {
    let (first_attempt_ms, attempts) = tried;
    ctx.counters.gave_up.inc();
    tracing::error!(channel, event = %e.id, attempts, error = why, "notification given up");
    let (Ok(m), Ok(c)) = (
        MachineId::parse(&e.alert.machine),
        MachineId::parse(channel),
    ) else {
        ctx.counters.record_errors.inc();
        return;
    };
    let rec = v1::NotificationFailure {
        event_id: e.id.clone(),
        machine_id: e.alert.machine.clone(),
        rule: e.alert.rule.clone(),
        channel: channel.to_owned(),
        attempts,
        error: why.chars().take(1000).collect(),
        timestamp_ms: now_ms(),
        first_attempt_ms,
    };
    let mut h = HeaderMap::new();
    h.insert(
        headers::MSG_ID,
        headers::notify_failed_msg_id(&e.id, channel).as_str(),
    );
    let res = async {
        ctx.js
            .publish_with_headers(
                subjects::notify_failed(&m, &c),
                h,
                rec.encode_to_vec().into(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(err) = res {
        ctx.counters.record_errors.inc();
        tracing::error!(channel, event = %e.id, error = %err, "cannot record the failure");
    }
}
