//! Log lines caused by input are budgeted: a flood of bad messages, bad
//! requests or refused connections is counted in full (the counters) but
//! logged only in part, so that whoever sends it cannot fill the disk or
//! drown the lines that matter. Each kind of event may log
//! [`LINES_PER_WINDOW`] lines per [`WINDOW`]; the first line of the next
//! window says how many were left out.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lines one kind of event may log per window.
pub const LINES_PER_WINDOW: u64 = 20;
/// The length of a window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The budget of one kind of event.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// Start of the current window, in ms since the process's first use.
    window_ms: AtomicU64,
    used: AtomicU64,
}

fn elapsed_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl LogBudget {
    /// Whether this event may log a line now. When a window ends after some
    /// lines were left out, says how many (once).
    pub fn allow(&self, what: &'static str) -> bool {
        let now = elapsed_ms();
        let start = self.window_ms.load(Ordering::Relaxed);
        let window = u64::try_from(WINDOW.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(start) >= window
            && self
                .window_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let used = self.used.swap(0, Ordering::Relaxed);
            if used > LINES_PER_WINDOW {
                tracing::warn!(
                    what,
                    left_out = used - LINES_PER_WINDOW,
                    "log lines left out in the last window (the counters have them all)"
                );
            }
        }
        self.used.fetch_add(1, Ordering::Relaxed) < LINES_PER_WINDOW
    }
}

/// The budgets of the events input can cause.
#[derive(Debug, Default)]
pub struct LogBudgets {
    pub feed_rejects: LogBudget,
    pub bad_requests: LogBudget,
    pub ws_refused: LogBudget,
    pub ws_closed: LogBudget,
    pub refused: LogBudget,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_only_its_budget() {
        let b = LogBudget::default();
        let allowed = (0..1000).filter(|_| b.allow("test")).count() as u64;
        assert_eq!(allowed, LINES_PER_WINDOW);
    }
}
