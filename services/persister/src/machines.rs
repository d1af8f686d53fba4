//! MachineInfo from the MACHINES stream into `machines`. An ordered consumer
//! starting at the last message of every machine: MACHINES keeps only that
//! one, and the upsert keeps the newer facts, so reading them all again after
//! a restart changes nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use chrono::{DateTime, TimeZone as _, Utc};
use futures::StreamExt as _;
use prost::Message as _;
use sqlx::PgPool;
use sysmonstm_kit::jetstream::Replicas;
use sysmonstm_schemas::accept::{self, Limits, Reject};
use sysmonstm_schemas::{streams, subjects, v1};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// Follows MACHINES until shutdown, re-subscribing after errors.
pub async fn run(
    js: jetstream::Context,
    pool: PgPool,
    counters: Arc<Counters>,
    limits: Limits,
    replicas: Replicas,
    max_backoff: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let attempt = async {
            let stream = js
                .get_or_create_stream(replicas.stream(streams::machines()))
                .await?;
            let consumer = stream
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    filter_subject: subjects::INFO_ALL.to_owned(),
                    ..Default::default()
                })
                .await?;
            let mut msgs = consumer.messages().await?;
            loop {
                let msg = tokio::select! {
                    m = msgs.next() => m,
                    _ = shutdown.cancelled() => return Ok(()),
                };
                let Some(msg) = msg else {
                    anyhow::bail!("MACHINES consumer ended");
                };
                let msg = msg?;
                match decode(msg.subject.as_str(), &msg.payload, Utc::now(), &limits) {
                    Ok(info) => store(&pool, &info, &counters, max_backoff, &shutdown).await,
                    Err(why) => {
                        Counters::add(&counters.rejected_info, 1);
                        tracing::warn!(subject = %msg.subject, reason = %why, "MachineInfo rejected");
                    }
                }
            }
        };
        match attempt.await {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff,
                "following MACHINES failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// The contract's rule (`schemas::accept`) for MachineInfo: a valid machine
/// id on the subject, the same in the payload, a believable time. A time of 0
/// is "not stated" (the upsert takes now).
fn decode(
    subject: &str,
    payload: &[u8],
    now: DateTime<Utc>,
    limits: &Limits,
) -> Result<v1::MachineInfo, Reject> {
    accept::payload_size(payload.len(), limits)?;
    let machine = accept::info_subject(subject)?;
    let mut info = v1::MachineInfo::decode(payload).map_err(|e| Reject::Decode(e.to_string()))?;
    accept::same_machine(&machine, &info.machine_id)?;
    // Facts from the future would stand for ever: older ones never replace
    // newer.
    if info.timestamp_ms != 0 {
        accept::timestamp(info.timestamp_ms, now.timestamp_millis(), limits)?;
    }
    for s in [
        &mut info.hostname,
        &mut info.os_name,
        &mut info.os_version,
        &mut info.kernel_version,
        &mut info.architecture,
        &mut info.cpu_model,
        &mut info.agent_version,
    ] {
        crate::decode::pg_text(s);
    }
    Ok(info)
}

/// Upserts until it works (or shutdown): older facts never replace newer.
async fn store(
    pool: &PgPool,
    info: &v1::MachineInfo,
    counters: &Counters,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) {
    let boot = (info.boot_time_s > 0)
        .then(|| Utc.timestamp_opt(info.boot_time_s, 0).single())
        .flatten();
    let info_at = Utc
        .timestamp_millis_opt(info.timestamp_ms)
        .single()
        .filter(|_| info.timestamp_ms != 0)
        .unwrap_or_else(Utc::now);
    let mut backoff = Duration::from_millis(100);
    loop {
        let r = sqlx::query(
            "INSERT INTO machines AS m (machine_id, hostname, os_name, os_version, kernel_version,
                 architecture, cpu_model, core_count, memory_total_bytes, agent_version,
                 boot_time, info_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (machine_id) DO UPDATE SET hostname = EXCLUDED.hostname,
                 os_name = EXCLUDED.os_name, os_version = EXCLUDED.os_version,
                 kernel_version = EXCLUDED.kernel_version, architecture = EXCLUDED.architecture,
                 cpu_model = EXCLUDED.cpu_model, core_count = EXCLUDED.core_count,
                 memory_total_bytes = EXCLUDED.memory_total_bytes,
                 agent_version = EXCLUDED.agent_version, boot_time = EXCLUDED.boot_time,
                 info_at = EXCLUDED.info_at
             WHERE m.info_at IS NULL OR m.info_at <= EXCLUDED.info_at",
        )
        .bind(&info.machine_id)
        .bind(&info.hostname)
        .bind(&info.os_name)
        .bind(&info.os_version)
        .bind(&info.kernel_version)
        .bind(&info.architecture)
        .bind(&info.cpu_model)
        .bind(i32::try_from(info.core_count).unwrap_or(i32::MAX))
        .bind(crate::decode::big(info.memory_total_bytes))
        .bind(&info.agent_version)
        .bind(boot)
        .bind(info_at)
        .execute(pool)
        .await;
        match r {
            Ok(_) => {
                Counters::add(&counters.machines_stored, 1);
                return;
            }
            // Values PostgreSQL will never take: retrying would stop every
            // later MachineInfo.
            Err(e) if crate::store::refuses_the_data(&e) => {
                Counters::add(&counters.rejected_info, 1);
                tracing::warn!(error = %e, machine = %info.machine_id,
                    "PostgreSQL refused this MachineInfo; skipped");
                return;
            }
            Err(e) => {
                Counters::add(&counters.db_errors, 1);
                tracing::warn!(error = %e, retry_in = ?backoff, "storing MachineInfo failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// `sysmonstm machines forget <id>`: deletes the machine's `machines` row
/// (its history in `metrics` and `alerts` stays, until retention) and
/// answers the requester. A request while the persister is down is lost:
/// the CLI says nobody answered, and the row comes back only if the machine
/// sends again.
pub async fn follow_forget(client: async_nats::Client, pool: PgPool, shutdown: CancellationToken) {
    let mut subscription = match client.subscribe(subjects::FORGET_ALL).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow forget requests; `machines forget` leaves rows");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            m = subscription.next() => match m {
                Some(m) => m,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let answer = match sysmonstm_schemas::accept::forget_subject(&msg.subject) {
            Err(r) => {
                tracing::warn!(error = %r, "forget request refused");
                continue;
            }
            Ok(m) => match sqlx::query("DELETE FROM machines WHERE machine_id = $1")
                .bind(m.as_str())
                .execute(&pool)
                .await
            {
                Ok(r) => {
                    tracing::info!(machine = %m, rows = r.rows_affected(), "machine forgotten on request");
                    format!(
                        "persister: removed {} machines row of {m}",
                        r.rows_affected()
                    )
                }
                Err(e) => {
                    tracing::warn!(machine = %m, error = %e, "cannot delete the machines row");
                    format!("persister: cannot remove the machines row of {m}: {e}")
                }
            },
        };
        if let Some(reply) = msg.reply {
            let _ = client.publish(reply, answer.into()).await;
        }
    }
}
