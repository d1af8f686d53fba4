//! The alerter's notion of "now", in Unix milliseconds.
//!
//! It is wall time read once at start and advanced by tokio's clock, so tests
//! on paused time (`tokio::time::pause` / `advance`) move rule windows and the
//! machine-silent timer without waiting, while a real run follows the wall.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct Clock {
    base_ms: i64,
    base: Instant,
}

impl Clock {
    /// Starts at the current wall time.
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self::starting_at(wall)
    }

    /// Starts at `base_ms` (tests that want round numbers).
    pub fn starting_at(base_ms: i64) -> Self {
        Self {
            base_ms,
            base: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.base.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.base_ms.saturating_add(elapsed)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
