//! What the alerter did, in numbers, and `/metrics` to read them. Labels
//! come from a small fixed set, never from data.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sysmonstm_schemas::accept::Reject;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Counters {
    pub snapshots_received: AtomicU64,
    pub snapshots_evaluated: AtomicU64,
    pub snapshots_stale: AtomicU64,
    pub snapshots_already_seen: AtomicU64,
    /// Snapshots refused by `schemas::accept`, in the order of
    /// [`Reject::REASONS`].
    pub rejected: [AtomicU64; Reject::REASONS.len()],
    pub events_firing: AtomicU64,
    pub events_reminder: AtomicU64,
    pub events_resolved: AtomicU64,
    pub acks_applied: AtomicU64,
    pub publish_retries: AtomicU64,
    pub state_write_errors: AtomicU64,
    pub rules_applied: AtomicU64,
    pub rules_invalid: AtomicU64,
    pub machines_retired: AtomicU64,
    pub machines_forgotten: AtomicU64,
    /// Machines the engine follows now (a gauge).
    pub machines: AtomicU64,
    /// Times evaluation waited for room in the full confirm queue.
    pub confirm_queue_full: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(c: &AtomicU64, n: u64) {
        c.store(n, Ordering::Relaxed);
    }

    /// Counts a refused snapshot under its reason.
    pub fn reject(&self, r: &Reject) {
        if let Some(i) = Reject::REASONS.iter().position(|x| *x == r.reason()) {
            Self::add(&self.rejected[i], 1);
        }
    }

    /// Snapshots refused for `reason` (one of [`Reject::REASONS`]).
    pub fn rejected(&self, reason: &str) -> u64 {
        Reject::REASONS
            .iter()
            .position(|x| *x == reason)
            .map_or(0, |i| Self::get(&self.rejected[i]))
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = Self::get;
        let mut out = String::new();
        let mut typed = |kind: &str, name: &str, help: &str, rows: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in rows {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let mut line = |name: &str, help: &str, rows: &[(&str, u64)]| {
            typed("counter", name, help, rows);
        };
        let reasons: Vec<(String, u64)> = Reject::REASONS
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (format!("{{reason=\"{r}\"}}"), g(c)))
            .collect();
        let reasons: Vec<(&str, u64)> = reasons.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        line(
            "sysmonstm_alerter_snapshots_received_total",
            "Snapshots received, from the live subscription and from the consumer.",
            &[("", g(&self.snapshots_received))],
        );
        line(
            "sysmonstm_alerter_snapshots_evaluated_total",
            "Snapshots evaluated against the rules.",
            &[("", g(&self.snapshots_evaluated))],
        );
        line(
            "sysmonstm_alerter_snapshots_already_seen_total",
            "Snapshots that came second (live subscription and consumer both deliver each), or older than one evaluated.",
            &[("", g(&self.snapshots_already_seen))],
        );
        line(
            "sysmonstm_alerter_snapshots_stale_total",
            "Snapshots too old to evaluate (only mark the machine alive).",
            &[("", g(&self.snapshots_stale))],
        );
        line(
            "sysmonstm_alerter_snapshots_rejected_total",
            "Snapshots refused (schemas::accept: size, decoding, subject, machine, timestamp, interval), by reason; counted once, as the consumer delivers them.",
            &reasons,
        );
        line(
            "sysmonstm_alerter_events_total",
            "Alert events published, by kind.",
            &[
                ("{kind=\"firing\"}", g(&self.events_firing)),
                ("{kind=\"reminder\"}", g(&self.events_reminder)),
                ("{kind=\"resolved\"}", g(&self.events_resolved)),
            ],
        );
        line(
            "sysmonstm_alerter_acks_applied_total",
            "Acknowledgements that stopped reminders.",
            &[("", g(&self.acks_applied))],
        );
        line(
            "sysmonstm_alerter_publish_retries_total",
            "Alert events published again after a failed ack.",
            &[("", g(&self.publish_retries))],
        );
        line(
            "sysmonstm_alerter_state_write_errors_total",
            "Failed writes to the alert-state bucket.",
            &[("", g(&self.state_write_errors))],
        );
        line(
            "sysmonstm_alerter_rules_total",
            "Rule changes from the rules bucket, by outcome.",
            &[
                ("{outcome=\"applied\"}", g(&self.rules_applied)),
                ("{outcome=\"invalid\"}", g(&self.rules_invalid)),
            ],
        );
        line(
            "sysmonstm_alerter_machines_retired_total",
            "Machines retired after no snapshot for retire_after_s (their firing alerts resolved).",
            &[("", g(&self.machines_retired))],
        );
        line(
            "sysmonstm_alerter_machines_forgotten_total",
            "Machines dropped at once by `sysmonstm machines forget`.",
            &[("", g(&self.machines_forgotten))],
        );
        line(
            "sysmonstm_alerter_confirm_queue_full_total",
            "Times evaluation waited for room in the full confirm queue.",
            &[("", g(&self.confirm_queue_full))],
        );
        typed(
            "gauge",
            "sysmonstm_alerter_machines",
            "Machines the alerter follows now (for the silent rule).",
            &[("", g(&self.machines))],
        );
        out
    }
}

/// Serves `GET /metrics` on `listener` until shutdown. Deliberately tiny:
/// one response per connection, nothing else routed.
pub async fn serve(listener: TcpListener, counters: Arc<Counters>, shutdown: CancellationToken) {
    loop {
        let (mut sock, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                ("200 OK", counters.render())
            } else {
                ("404 Not Found", "only /metrics here\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_are_served_as_prometheus_text() {
        let counters = Arc::new(Counters::default());
        Counters::add(&counters.events_firing, 3);
        counters.reject(&Reject::Decode(String::new()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, Arc::clone(&counters), stop.clone()));
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        sock.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .expect("send");
        let mut body = String::new();
        sock.read_to_string(&mut body).await.expect("read");
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("sysmonstm_alerter_events_total{kind=\"firing\"} 3\n"),
            "{body}"
        );
        assert!(
            body.contains("sysmonstm_alerter_snapshots_rejected_total{reason=\"decode\"} 1\n"),
            "{body}"
        );
        stop.cancel();
    }
}
