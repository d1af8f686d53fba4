//! The snapshot sequence number, kept in the state dir so it keeps growing
//! across restarts. It is part of the Msg-Id (`<machine>:<seq>`): a restarted
//! agent that began at 1 again would have its new snapshots discarded as
//! duplicates by JetStream for the length of the duplicate window.
//!
//! The spool holds every snapshot until it is acked and keeps its newest
//! segment, so it knows the last seq too; the agent starts after the larger
//! of the two. This file is the floor for when the spool is lost, and is
//! written when the spool is synced rather than on every sample.

use std::io::Write;
use std::path::{Path, PathBuf};

pub struct SeqStore {
    path: PathBuf,
    last: u64,
}

impl SeqStore {
    /// Opens (or creates) the store in `dir`. An unreadable or corrupt file is
    /// an error rather than a silent restart at 1.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("seq");
        let last = match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a sequence number: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(Self { path, last })
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Records `n` as used, if it is beyond what is recorded.
    pub fn record(&mut self, n: u64) -> std::io::Result<()> {
        if n <= self.last {
            return Ok(());
        }
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{n}")?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.last = n;
        Ok(())
    }

    /// The next number, recorded before it is used. Written with a rename so
    /// a crash leaves either the old or the new value, never a torn one.
    pub fn advance(&mut self) -> std::io::Result<u64> {
        let n = self.last + 1;
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{n}")?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.last = n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = SeqStore::open(dir.path()).expect("open");
        assert_eq!(s.advance().expect("next"), 1);
        assert_eq!(s.advance().expect("next"), 2);
        drop(s);
        let mut s = SeqStore::open(dir.path()).expect("reopen");
        assert_eq!(s.last(), 2);
        assert_eq!(s.advance().expect("next"), 3);
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("seq"), "garbage").expect("write");
        let err = SeqStore::open(dir.path()).err().expect("must fail");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
