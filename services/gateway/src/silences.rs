//! Silences on the hub: the bucket `sysmon_silences` (written by
//! `sysmonstm silence add`, read by the notifier, which sends nothing for
//! what one covers) followed here so the dashboard can show an alert as
//! muted. Whether a silence covers an alert is `schemas::silence`'s one
//! matcher ([`Silence::silences`]); this module only holds the bucket's
//! silences (at most `max_silences`) and keeps the marks current:
//!
//! * the latest event of each rule (the `alerts` cache behind
//!   `/api/alerts/live` and `/ws`) is marked when a silence covers it *now*:
//!   on arrival, and again whenever a silence comes, goes, starts or ends,
//!   each entry whose mark changed re-encoded and sent to the WebSocket
//!   clients;
//! * a stored event (`/api/alerts`) is marked when a silence still in the
//!   bucket covered it at the event's time, as `sysmonstm alerts watch`
//!   does.
//!
//! Until the bucket exists (no silence added yet, no notifier run yet) the
//! follower waits and asks again; nothing is muted meanwhile. The edge has
//! no silences bucket and never follows one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::context::KeyValueErrorKind;
use async_nats::jetstream::kv;
use futures::{FutureExt as _, StreamExt as _};
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::silence::Silence;
use sysmonstm_schemas::streams;

use crate::domain::{Alert, Mute};
use crate::state::{Shared, Update};

/// The `reason` label of `silences_refused_total`.
pub const REFUSALS: [&str; 2] = ["invalid", "max_silences"];

/// Longest wait between two re-markings when no silence starts or ends
/// sooner (a clock step is caught up with by then).
const RECHECK: Duration = Duration::from_secs(60);

/// Most updates put on the fan-out channel as one batch.
const MAX_BATCH: usize = 256;

/// The silences held, by key.
#[derive(Debug, Default)]
pub struct Silences {
    map: RwLock<HashMap<String, Silence>>,
}

impl Silences {
    /// The silence that covers `rule` on `machine` at `at_ms`; of several,
    /// the one that ends last.
    pub fn muting(&self, machine: &str, rule: &str, at_ms: i64) -> Option<Mute> {
        let map = self.map.read().ok()?;
        map.values()
            .filter(|s| s.silences(machine, rule, at_ms))
            .max_by(|a, b| a.ends_ms.cmp(&b.ends_ms).then_with(|| b.id.cmp(&a.id)))
            .map(|s| Mute {
                id: s.id.clone(),
                comment: s.comment.clone(),
                ends_ms: s.ends_ms,
            })
    }

    /// Marks `alert` as a silence covers it at `at_ms`.
    pub fn mark(&self, alert: &mut Alert, at_ms: i64) {
        alert.silence = self.muting(&alert.machine_id, &alert.rule, at_ms);
        alert.muted = alert.silence.is_some();
    }

    /// The next time after `now_ms` a silence starts or ends.
    fn next_change(&self, now_ms: i64) -> Option<i64> {
        let map = self.map.read().ok()?;
        map.values()
            .flat_map(|s| [s.starts_ms, s.ends_ms])
            .filter(|t| *t > now_ms)
            .min()
    }

    fn len(&self) -> usize {
        self.map.read().map_or(0, |m| m.len())
    }

    /// Holds what the bucket holds now (at the start of a watch); returns
    /// the last revision read.
    fn replace(&self, entries: &[kv::Entry], max: usize, shared: &Shared) -> u64 {
        if let Ok(mut map) = self.map.write() {
            map.clear();
        }
        for e in entries {
            self.apply(e, max, shared);
        }
        entries.iter().map(|e| e.revision).max().unwrap_or(0)
    }

    /// One change of the bucket. A silence beyond `max` is refused unless
    /// ended ones make room; an invalid one is refused; both are counted.
    fn apply(&self, entry: &kv::Entry, max: usize, shared: &Shared) {
        let c = &shared.counters;
        let refused = |reason: &str, why: String| {
            c.silences_refused.with_label_values(&[reason]).inc();
            if shared.logs.feed_rejects.allow("silence ignored") {
                tracing::warn!(
                    key = %entry.key.chars().take(80).collect::<String>(),
                    reason,
                    why = %why,
                    "silence ignored"
                );
            }
        };
        let Ok(mut map) = self.map.write() else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => {
                let parsed = serde_json::from_slice::<Silence>(&entry.value)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.validate().map(|()| s).map_err(|e| e.to_string()));
                match parsed {
                    Ok(s) => {
                        if !map.contains_key(&entry.key) && map.len() >= max {
                            // Ended silences only mark stored events: a
                            // silence in force matters more.
                            let now = chrono::Utc::now().timestamp_millis();
                            map.retain(|_, s| s.ends_ms > now);
                        }
                        if map.contains_key(&entry.key) || map.len() < max {
                            map.insert(entry.key.clone(), s);
                        } else {
                            refused("max_silences", format!("{max} silences held"));
                        }
                    }
                    Err(e) => {
                        // A valid silence replaced by an invalid value no
                        // longer counts.
                        map.remove(&entry.key);
                        refused("invalid", e);
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                map.remove(&entry.key);
            }
        }
        c.silences.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
    }
}

/// Follows the silences bucket until the task is dropped: set up again
/// with back-off after an error, a hub restart, or while there is no
/// bucket yet.
pub async fn follow(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(200);
    let mut told_missing = false;
    loop {
        match follow_once(&shared, &mut backoff).await {
            Ok(()) => tracing::warn!("silences watch ended; following again"),
            Err(Missing) if !told_missing => {
                told_missing = true;
                tracing::info!("no silences bucket yet (no silence added); waiting for one");
            }
            Err(Missing) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The bucket is not there (or not reachable now); logged by the caller.
struct Missing;

async fn follow_once(shared: &Shared, backoff: &mut Duration) -> Result<(), Missing> {
    let max = shared.config.max_silences;
    let store = match shared.js.get_key_value(streams::SILENCES_BUCKET).await {
        Ok(s) => s,
        Err(e) if e.kind() == KeyValueErrorKind::GetBucket => return Err(Missing),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the silences bucket");
            return Ok(());
        }
    };
    // The watch first, then what the bucket holds: a change in between
    // comes through the watch, applied after (in order).
    let mut watch = match store.watch_all().await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the silences");
            return Ok(());
        }
    };
    // What the watch brings that the read already had is skipped.
    let read = match js_kit::current_entries(&store).await {
        Ok(entries) => shared.silences.replace(&entries, max, shared),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the silences");
            return Ok(());
        }
    };
    let apply = |entry: &kv::Entry| {
        if entry.revision > read {
            shared.silences.apply(entry, max, shared);
        }
    };
    tracing::info!(silences = shared.silences.len(), "following the silences");
    *backoff = Duration::from_millis(200);
    remark(shared);
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let wait = shared
            .silences
            .next_change(now)
            .and_then(|t| u64::try_from(t.saturating_sub(now)).ok())
            .map_or(RECHECK, |ms| {
                Duration::from_millis(ms.saturating_add(1)).min(RECHECK)
            });
        tokio::select! {
            e = watch.next() => match e {
                Some(Ok(entry)) => {
                    apply(&entry);
                    // A burst of changes (many silences added at once) is
                    // one re-marking.
                    loop {
                        match watch.next().now_or_never() {
                            Some(Some(Ok(entry))) => apply(&entry),
                            Some(Some(Err(e))) => {
                                tracing::warn!(error = %e, "silences watch failed");
                                remark(shared);
                                return Ok(());
                            }
                            Some(None) => {
                                remark(shared);
                                return Ok(());
                            }
                            None => break,
                        }
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "silences watch failed");
                    return Ok(());
                }
                None => return Ok(()),
            },
            _ = tokio::time::sleep(wait) => {}
        }
        remark(shared);
    }
}

/// Marks every latest event as the silences cover it now; each one whose
/// mark changed is re-encoded, replaced in the cache and sent to the
/// WebSocket clients.
pub fn remark(shared: &Shared) {
    let now = chrono::Utc::now().timestamp_millis();
    // Under `alert_writes`, sending included: a newer event from the feed
    // is neither overwritten nor overtaken.
    let Ok(_writing) = shared.alert_writes.lock() else {
        return;
    };
    let mut batch = Vec::new();
    for (key, a) in shared.alerts.iter() {
        let silence = shared.silences.muting(&a.0.machine_id, &a.0.rule, now);
        if silence == a.0.silence {
            continue;
        }
        let mut alert = a.0.clone();
        alert.muted = silence.is_some();
        alert.silence = silence;
        let f = crate::feed::frame("alert", &alert);
        let key = key.to_string();
        shared
            .alerts
            .insert(key.clone(), Arc::new((alert, Arc::clone(&f))));
        batch.push(Update::Alert { key, frame: f });
        if batch.len() >= MAX_BATCH {
            crate::feed::send(shared, std::mem::take(&mut batch));
        }
    }
    crate::feed::send(shared, batch);
}
