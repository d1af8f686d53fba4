//! MachineInfo: the machine's static facts, published on
//! `sysmon.info.<machine>` when the agent starts and whenever they change
//! (checked every minute). Its own task and its own retries, keeping only the
//! latest facts, so it never holds up a snapshot.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use sysmonstm_collect::info::read;
use sysmonstm_schemas::v1::MachineInfo;
use sysmonstm_schemas::{MachineId, subjects};
use tokio_util::sync::CancellationToken;

/// Equal but for when they were read.
fn same_facts(a: &MachineInfo, b: &MachineInfo) -> bool {
    MachineInfo {
        timestamp_ms: 0,
        ..a.clone()
    } == MachineInfo {
        timestamp_ms: 0,
        ..b.clone()
    }
}

/// Publishes the facts now and whenever they change, until `shutdown`.
pub async fn run(
    js: jetstream::Context,
    machine: MachineId,
    ack_timeout: Duration,
    shutdown: CancellationToken,
) {
    let subject = subjects::info(&machine);
    let mut published: Option<MachineInfo> = None;
    let mut backoff = Duration::from_millis(200);
    loop {
        let current = read(&machine);
        let due = published.as_ref().is_none_or(|p| !same_facts(p, &current));
        let wait = if due {
            // The Msg-Id changes with the facts, so a retry of the same facts
            // is stored once.
            let id = format!("{machine}:info:{}", current.timestamp_ms);
            let msg = PublishMessage::build()
                .message_id(id)
                .payload(current.encode_to_vec().into());
            let sent = async {
                let ack = js
                    .send_publish(subject.clone(), msg)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(ack_timeout, ack)
                    .await
                    .map_err(|_| "no ack".to_owned())?
                    .map_err(|e| e.to_string())
            };
            match sent.await {
                Ok(_) => {
                    tracing::info!(%subject, "machine info published");
                    published = Some(current);
                    backoff = Duration::from_millis(200);
                    Duration::from_secs(60)
                }
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?backoff, "machine info not acknowledged");
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    w
                }
            }
        } else {
            Duration::from_secs(60)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_facts_of_this_machine() {
        let m = MachineId::parse("here").expect("valid");
        let info = read(&m);
        assert_eq!(info.machine_id, "here");
        assert!(info.core_count >= 1 && info.memory_total_bytes > 0);
        assert!(!info.kernel_version.is_empty() && !info.architecture.is_empty());
        assert!(info.boot_time_s > 1_000_000_000);
        // Name and version are two facts: the version does not repeat the
        // name (the dashboard shows "Debian GNU/Linux 12").
        assert!(
            info.os_name.is_empty() || !info.os_version.contains(&info.os_name),
            "os_version {:?} repeats os_name {:?}",
            info.os_version,
            info.os_name
        );
        let later = MachineInfo {
            timestamp_ms: info.timestamp_ms + 1,
            ..info.clone()
        };
        assert!(same_facts(&info, &later));
        let changed = MachineInfo {
            memory_total_bytes: 1,
            ..info.clone()
        };
        assert!(!same_facts(&info, &changed));
    }
}
