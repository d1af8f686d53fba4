//! Rates from cumulative counters: the difference between two samples over
//! the time between them. The first sample of a device carries no rate (there
//! is nothing to compare with), and neither does a counter that went back
//! unless it is a 32-bit counter wrapping — a rate that is absent is better
//! than one that is wrong.

use std::collections::HashMap;
use std::time::Instant;

/// Per-second rate of a counter that went from `prev` to `cur` in `secs`.
pub fn per_second(prev: u64, cur: u64, secs: f64) -> Option<f32> {
    if secs <= 0.0 {
        return None;
    }
    let delta = if cur >= prev {
        cur - prev
    } else if prev <= u64::from(u32::MAX) {
        // A 32-bit counter (some drivers, 32-bit kernels) wrapped around.
        (u64::from(u32::MAX) + 1 - prev) + cur
    } else {
        // A 64-bit counter going back is a reset (device re-created).
        return None;
    };
    Some((delta as f64 / secs) as f32)
}

/// Remembers the last counters of every device by name.
#[derive(Debug)]
pub struct RateTracker<C> {
    prev: HashMap<String, C>,
    at: Option<Instant>,
}

impl<C> Default for RateTracker<C> {
    fn default() -> Self {
        Self {
            prev: HashMap::new(),
            at: None,
        }
    }
}

impl<C: Copy> RateTracker<C> {
    /// Takes this sample's counters and returns, per device, what `rate`
    /// makes of the previous and current counters over the elapsed seconds;
    /// `None` for a device seen for the first time. Devices that disappeared
    /// are forgotten, so one that comes back starts again without a rate.
    pub fn update<R>(
        &mut self,
        now: Instant,
        current: Vec<(String, C)>,
        rate: impl Fn(&C, &C, f64) -> R,
    ) -> Vec<(String, Option<R>)> {
        let secs = self.at.map(|t| now.duration_since(t).as_secs_f64());
        let mut next = HashMap::with_capacity(current.len());
        let out = current
            .into_iter()
            .map(|(name, cur)| {
                let r = match (secs, self.prev.get(&name)) {
                    (Some(s), Some(p)) => Some(rate(p, &cur, s)),
                    _ => None,
                };
                next.insert(name.clone(), cur);
                (name, r)
            })
            .collect();
        self.prev = next;
        self.at = Some(now);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_over_the_interval() {
        assert_eq!(per_second(1000, 3000, 2.0), Some(1000.0));
        assert_eq!(per_second(5, 5, 1.0), Some(0.0));
        assert_eq!(per_second(5, 6, 0.0), None);
    }

    #[test]
    fn a_32_bit_counter_wrap_is_counted_not_negative() {
        let before = u64::from(u32::MAX) - 99;
        assert_eq!(per_second(before, 100, 1.0), Some(200.0));
    }

    #[test]
    fn a_64_bit_counter_going_back_is_a_reset_with_no_rate() {
        assert_eq!(per_second(1 << 40, 10, 1.0), None);
    }

    #[test]
    fn first_sample_and_new_or_returning_devices_have_no_rate() {
        let t0 = Instant::now();
        let mut r = RateTracker::<u64>::default();
        let f = |p: &u64, c: &u64, s: f64| per_second(*p, *c, s);
        let first = r.update(t0, vec![("eth0".into(), 100)], f);
        assert_eq!(first, vec![("eth0".to_owned(), None)]);

        let t1 = t0 + Duration::from_secs(1);
        let second = r.update(t1, vec![("eth0".into(), 600), ("wlan0".into(), 5)], f);
        assert_eq!(
            second,
            vec![
                ("eth0".to_owned(), Some(Some(500.0))),
                ("wlan0".to_owned(), None)
            ]
        );

        // eth0 disappears: it is simply not reported, nothing panics.
        let t2 = t1 + Duration::from_secs(1);
        let third = r.update(t2, vec![("wlan0".into(), 15)], f);
        assert_eq!(third, vec![("wlan0".to_owned(), Some(Some(10.0)))]);

        // eth0 comes back with reset counters: no rate on its first sample.
        let t3 = t2 + Duration::from_secs(1);
        let fourth = r.update(t3, vec![("eth0".into(), 7), ("wlan0".into(), 25)], f);
        assert_eq!(
            fourth,
            vec![
                ("eth0".to_owned(), None),
                ("wlan0".to_owned(), Some(Some(10.0)))
            ]
        );
    }
}
