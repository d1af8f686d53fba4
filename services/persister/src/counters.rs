//! What the persister did, in numbers. Labels come from a small fixed set
//! (the rejection reasons), never from data.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub redelivered: AtomicU64,
    pub batches: AtomicU64,
    pub db_errors: AtomicU64,
    pub rejected_decode: AtomicU64,
    pub rejected_subject: AtomicU64,
    pub rejected_timestamp: AtomicU64,
    pub rejected_oversized: AtomicU64,
}

impl Counters {
    pub fn rejected_total(&self) -> u64 {
        [
            &self.rejected_decode,
            &self.rejected_subject,
            &self.rejected_timestamp,
            &self.rejected_oversized,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
