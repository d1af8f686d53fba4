//! The silences the notifier holds: the bucket `sysmon_silences` watched
//! (current values first, then every change), kept in a bounded map that
//! delivery asks just before it sends. A silence added takes effect as soon
//! as the watch brings it (milliseconds); one that ends stops counting at
//! its `ends_ms` on the notifier's clock, whether or not the server has
//! removed the key yet.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt as _;
use sysmonstm_schemas::silence::Silence;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

#[derive(Debug, Default, Clone)]
pub struct Silences {
    map: Arc<RwLock<HashMap<String, Silence>>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Silences {
    /// Whether a silence covers `rule` on `machine` now.
    pub fn silenced(&self, machine: &str, rule: &str) -> bool {
        let now = now_ms();
        self.map
            .read()
            .map(|m| m.values().any(|s| s.silences(machine, rule, now)))
            .unwrap_or(false)
    }

    fn apply(&self, entry: &kv::Entry, max: usize, counters: &Counters) {
        let Ok(mut map) = self.map.write() else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => {
                let parsed = serde_json::from_slice::<Silence>(&entry.value)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.validate().map(|()| s).map_err(|e| e.to_string()));
                match parsed {
                    Ok(s) if map.contains_key(&entry.key) || map.len() < max => {
                        map.insert(entry.key.clone(), s);
                    }
                    Ok(_) => {
                        counters.silences_refused.inc();
                        tracing::warn!(key = %entry.key, max, "silence ignored: max_silences held");
                    }
                    Err(e) => {
                        counters.silences_refused.inc();
                        tracing::warn!(key = %entry.key, error = %e, "invalid silence ignored");
                    }
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                map.remove(&entry.key);
            }
        }
        // Ended ones go too, so the map holds what can still count.
        let now = now_ms();
        map.retain(|_, s| s.ends_ms > now);
        counters
            .silences
            .set(i64::try_from(map.len()).unwrap_or(i64::MAX));
    }

    /// Follows the bucket until `shutdown`, setting the watch up again with
    /// back-off when it ends (a hub restart).
    pub async fn follow(
        self,
        store: kv::Store,
        max: usize,
        counters: Arc<Counters>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match store.watch_with_history(">").await {
                Ok(mut watch) => loop {
                    tokio::select! {
                        e = watch.next() => match e {
                            Some(Ok(entry)) => {
                                backoff = Duration::from_millis(200);
                                self.apply(&entry, max, &counters);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "silences watch failed");
                                break;
                            }
                            None => break,
                        },
                        _ = shutdown.cancelled() => return,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot watch the silences"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
