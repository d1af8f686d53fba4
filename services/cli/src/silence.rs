//! `sysmonstm silence add | list | rm`: silences in the bucket
//! `sysmon_silences` (Alertmanager's model). Each key is written with a TTL
//! of the silence's length, so it goes by itself; the notifier watches the
//! bucket and sends nothing for what a silence covers (the alert still fires
//! and is stored).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use clap::Subcommand;
use futures::StreamExt as _;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::rules::{format_duration, parse_duration};
use sysmonstm_schemas::silence::Silence;
use sysmonstm_schemas::streams;

use crate::{InvalidInput, print};

#[derive(Debug, Subcommand)]
pub enum SilenceCommand {
    /// Mute notifications for machines (and rules) for a while.
    Add {
        /// Machine-id glob (`web*`, `db0?`).
        #[arg(long)]
        machine: String,
        /// Rule-name glob; default: every rule.
        #[arg(long)]
        rule: Option<String>,
        /// How long: `30m`, `2h`, `1d` (at most 90 days).
        #[arg(long = "for")]
        duration: String,
        #[arg(long, default_value = "")]
        comment: String,
        /// Who adds it (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// The silences in force or still to come.
    List {
        /// One JSON silence per line.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Rm { id: String },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub async fn run(js: &jetstream::Context, cmd: SilenceCommand) -> anyhow::Result<()> {
    let kv = js_kit::ensure_kv(js, streams::silences_bucket()).await?;
    match cmd {
        SilenceCommand::Add {
            machine,
            rule,
            duration,
            comment,
            by,
        } => {
            let d = parse_duration(&duration)
                .map_err(|e| InvalidInput(format!("--for {duration:?}: {e}")))?;
            let len = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            let now = now_ms();
            // Time-ordered and unique enough for people; `create` refuses a
            // clash instead of overwriting.
            let id = format!("s{:x}", now);
            let s = Silence {
                id: id.clone(),
                machines: machine,
                rule,
                comment,
                by: by
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_default(),
                starts_ms: now,
                ends_ms: now.saturating_add(len),
            };
            s.validate().map_err(|e| InvalidInput(e.to_string()))?;
            // The key lives a little longer than the silence: the notifier
            // goes by `ends_ms`, and `list` can still show one just ended.
            let ttl = d.saturating_add(Duration::from_secs(60));
            kv.create_with_ttl(&id, serde_json::to_vec(&s)?.into(), ttl)
                .await
                .map_err(|e| anyhow::anyhow!("cannot store the silence: {e}"))?;
            println!(
                "silence {id} added: {} {} for {}",
                s.machines,
                s.rule.as_deref().unwrap_or("(every rule)"),
                format_duration(d)
            );
            Ok(())
        }
        SilenceCommand::List { json } => {
            let now = now_ms();
            let mut all: Vec<Silence> = js_kit::current_entries(&kv)
                .await?
                .into_iter()
                .filter_map(|e| serde_json::from_slice::<Silence>(&e.value).ok())
                .filter(|s| s.ends_ms > now)
                .collect();
            all.sort_by_key(|s| s.ends_ms);
            if json {
                for s in &all {
                    println!("{}", serde_json::to_string(s)?);
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = all
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.machines.clone(),
                        s.rule.clone().unwrap_or_else(|| "*".into()),
                        print::rfc3339(s.ends_ms),
                        s.by.clone(),
                        s.comment.clone(),
                    ]
                })
                .collect();
            print::table(&["ID", "MACHINES", "RULE", "UNTIL", "BY", "COMMENT"], &rows);
            Ok(())
        }
        SilenceCommand::Rm { id } => match kv.get(&id).await {
            Ok(Some(_)) => {
                kv.purge(&id)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot remove silence {id}: {e}"))?;
                println!("silence {id} removed");
                Ok(())
            }
            Ok(None) => anyhow::bail!("no silence {id:?}"),
            Err(e) => anyhow::bail!("cannot read silence {id}: {e}"),
        },
    }
}

/// The silences in the bucket, followed live, for `alerts watch` to mark an
/// event "muted" when one covered it at the event's time. A replayed event
/// is judged by the silences still in the bucket (an ended one goes a
/// minute after its end). Without a bucket (no notifier yet), nothing is
/// muted.
#[derive(Clone, Default)]
pub struct Muted {
    map: Arc<Mutex<HashMap<String, Silence>>>,
}

impl Muted {
    /// The current silences, then every change in a task of its own (the
    /// watch starts first, so nothing falls in between).
    pub async fn follow(js: &jetstream::Context) -> Self {
        let me = Self::default();
        let Ok(kv) = js.get_key_value(streams::SILENCES_BUCKET).await else {
            return me;
        };
        let watch = kv.watch_all().await.ok();
        if let Ok(entries) = js_kit::current_entries(&kv).await {
            for e in &entries {
                me.apply(e);
            }
        }
        if let Some(mut watch) = watch {
            let m = me.clone();
            tokio::spawn(async move {
                while let Some(Ok(e)) = watch.next().await {
                    m.apply(&e);
                }
            });
        }
        me
    }

    fn apply(&self, e: &kv::Entry) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        match e.operation {
            kv::Operation::Put => {
                if let Ok(s) = serde_json::from_slice::<Silence>(&e.value)
                    && s.validate().is_ok()
                    && (map.len() < 100_000 || map.contains_key(&e.key))
                {
                    map.insert(e.key.clone(), s);
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                map.remove(&e.key);
            }
        }
    }

    /// Whether a silence covered `rule` on `machine` at `ts_ms`.
    pub fn covers(&self, machine: &str, rule: &str, ts_ms: i64) -> bool {
        self.map
            .lock()
            .map(|m| m.values().any(|s| s.silences(machine, rule, ts_ms)))
            .unwrap_or(false)
    }
}
