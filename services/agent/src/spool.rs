//! The on-disk spool: every snapshot is appended here before it is published,
//! and leaves once JetStream has acknowledged it.
//!
//! Writing ahead, rather than only when a publish fails, is what makes an
//! agent killed while the hub is away lose nothing: whatever was sampled is
//! in a file, and the next start replays it with its original Msg-Id. The cost
//! is one small `write` per sample into the page cache; `fsync` runs every
//! `fsync_every` (and at shutdown), not per sample.
//!
//! Layout, in `<state_dir>/spool/`:
//! * segment files `<first seq, 20 digits>.seg`, each a run of records
//!   `[len u32 LE][crc32 u32 LE][body]`, body = `[seq u64 LE][subject len u16]
//!   [subject][msg id len u16][msg id][payload]`. A new segment starts when the
//!   current one passes `segment_bytes`. A segment whose every record is
//!   acknowledged is deleted (the newest is kept: it tells the next start the
//!   last seq).
//! * `acked`: the highest acknowledged seq, rewritten (by rename) at most every
//!   `fsync_every`. After a crash, records acked since are sent again with
//!   their Msg-Id, which JetStream's duplicate window discards.
//!
//! Bounded: when the segments pass `max_bytes`, the oldest segment is deleted
//! and its unacknowledged records are counted as dropped — the only loss the
//! agent allows, and it is logged and reported in every snapshot.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// One spooled snapshot: what to publish, and under which Msg-Id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub subject: String,
    pub msg_id: String,
    pub payload: Bytes,
}

/// Sizes and timings of a spool.
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    /// Upper bound of all segment files together.
    pub max_bytes: u64,
    /// Records kept in memory as well, so a healthy agent never reads its
    /// own files back.
    pub memory_records: usize,
    /// How often the current segment is fsynced and `acked` written.
    pub fsync_every: Duration,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            memory_records: 64,
            fsync_every: Duration::from_secs(1),
        }
    }
}

struct Segment {
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
    path: PathBuf,
}

/// Where the disk reader is: the segment (by first seq), the byte offset of
/// the next record in it, and the seq of the record before that offset.
struct ReadPos {
    segment_first_seq: u64,
    offset: u64,
    last_seq: u64,
}

/// Counters a spool keeps, for snapshots, logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended and not yet acknowledged.
    pub pending: u64,
    /// Records dropped because the spool was full (since this start).
    pub dropped: u64,
    /// Bytes in segment files.
    pub bytes: u64,
    /// Records the disk reader returned (replays and overflow of memory).
    pub read_from_disk: u64,
}

const HEADER: usize = 8;
const MAX_RECORD: usize = 16 * 1024 * 1024;

pub struct Spool {
    dir: PathBuf,
    opts: SpoolOptions,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    writer: Option<File>,
    dirty: bool,
    last_sync: Instant,
    /// Highest seq acknowledged by JetStream.
    acked: u64,
    acked_written: u64,
    /// Highest seq ever appended (0 if none).
    last_seq: u64,
    /// Newest records, also on disk.
    memory: VecDeque<Record>,
    /// Records up to this seq may be on disk only (not in `memory`).
    disk_only_until: u64,
    read_pos: Option<ReadPos>,
    stats: SpoolStats,
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl Spool {
    /// Opens the spool in `dir` (created if missing), checks every segment
    /// and cuts a torn record off the end of one (a crash mid-write).
    pub fn open(dir: &Path, opts: SpoolOptions) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let acked = match std::fs::read_to_string(dir.join("acked")) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|e| io_err(format!("{}/acked is corrupt: {e}", dir.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut files: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(first) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                files.push((first, path));
            }
        }
        files.sort();
        let segment_bytes = (opts.max_bytes / 16).clamp(4 * 1024, 4 * 1024 * 1024);
        let mut spool = Self {
            dir: dir.to_owned(),
            segment_bytes,
            segments: VecDeque::new(),
            writer: None,
            dirty: false,
            last_sync: Instant::now(),
            acked,
            acked_written: acked,
            last_seq: acked,
            memory: VecDeque::new(),
            disk_only_until: 0,
            read_pos: None,
            stats: SpoolStats::default(),
            opts,
        };
        for (first, path) in files {
            let scan = scan_segment(&path)?;
            if scan.valid_bytes < scan.file_bytes {
                tracing::warn!(path = %path.display(), kept_bytes = scan.valid_bytes,
                    cut_bytes = scan.file_bytes - scan.valid_bytes,
                    "spool segment ends in a torn or corrupt record; cutting it off");
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(scan.valid_bytes)?;
            }
            if scan.records == 0 {
                std::fs::remove_file(&path)?;
                continue;
            }
            spool.stats.pending += scan.seqs_above(acked);
            spool.last_seq = spool.last_seq.max(scan.last_seq);
            spool.stats.bytes += scan.valid_bytes;
            spool.segments.push_back(Segment {
                first_seq: first.min(scan.first_seq),
                last_seq: scan.last_seq,
                bytes: scan.valid_bytes,
                path,
            });
        }
        spool.disk_only_until = spool.last_seq;
        if spool.stats.pending > 0 {
            tracing::info!(
                pending = spool.stats.pending,
                acked,
                last_seq = spool.last_seq,
                "spool holds unacknowledged snapshots from an earlier run; replaying them"
            );
        }
        Ok(spool)
    }

    /// The highest seq this spool has seen (appended or acknowledged); a
    /// restarted agent continues after it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn stats(&self) -> SpoolStats {
        self.stats
    }

    /// Appends a record (seq must grow). Makes room by dropping the oldest
    /// segment when the spool is full.
    pub fn append(&mut self, rec: Record) -> std::io::Result<()> {
        debug_assert!(rec.seq > self.last_seq || self.last_seq == 0);
        let body_len = 8 + 2 + rec.subject.len() + 2 + rec.msg_id.len() + rec.payload.len();
        if body_len > MAX_RECORD
            || rec.subject.len() > u16::MAX as usize
            || rec.msg_id.len() > u16::MAX as usize
        {
            return Err(io_err(format!("record of {body_len} bytes is too large")));
        }
        let mut buf = Vec::with_capacity(HEADER + body_len);
        buf.extend_from_slice(&(body_len as u32).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&rec.seq.to_le_bytes());
        buf.extend_from_slice(&(rec.subject.len() as u16).to_le_bytes());
        buf.extend_from_slice(rec.subject.as_bytes());
        buf.extend_from_slice(&(rec.msg_id.len() as u16).to_le_bytes());
        buf.extend_from_slice(rec.msg_id.as_bytes());
        buf.extend_from_slice(&rec.payload);
        let crc = crc32fast::hash(&buf[HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());

        let rotate = match self.segments.back() {
            None => true,
            Some(s) => s.bytes >= self.segment_bytes || self.writer.is_none(),
        };
        if rotate {
            self.sync()?;
            let path = self.dir.join(format!("{:020}.seg", rec.seq));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let existing = file.metadata()?.len();
            self.writer = Some(file);
            self.stats.bytes += existing;
            self.segments.push_back(Segment {
                first_seq: rec.seq,
                last_seq: rec.seq,
                bytes: existing,
                path,
            });
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(io_err("spool has no open segment".into()));
        };
        writer.write_all(&buf)?;
        self.dirty = true;
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        seg.bytes += buf.len() as u64;
        seg.last_seq = rec.seq;
        self.stats.bytes += buf.len() as u64;
        self.stats.pending += 1;
        self.last_seq = rec.seq;

        self.memory.push_back(rec);
        if self.memory.len() > self.opts.memory_records {
            if let Some(old) = self.memory.pop_front() {
                self.disk_only_until = self.disk_only_until.max(old.seq);
            }
        }
        while self.stats.bytes > self.opts.max_bytes && self.segments.len() > 1 {
            self.drop_oldest()?;
        }
        if self.last_sync.elapsed() >= self.opts.fsync_every {
            self.sync()?;
        }
        Ok(())
    }

    fn drop_oldest(&mut self) -> std::io::Result<()> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(());
        };
        let lost = scan_segment(&seg.path)
            .map(|s| s.seqs_above(self.acked))
            .unwrap_or(0);
        std::fs::remove_file(&seg.path)?;
        self.stats.bytes -= seg.bytes;
        self.stats.pending = self.stats.pending.saturating_sub(lost);
        self.stats.dropped += lost;
        self.memory.retain(|r| r.seq > seg.last_seq);
        if self
            .read_pos
            .as_ref()
            .is_some_and(|p| p.segment_first_seq == seg.first_seq)
        {
            self.read_pos = None;
        }
        if lost > 0 {
            tracing::warn!(
                lost,
                dropped_total = self.stats.dropped,
                first_seq = seg.first_seq,
                last_seq = seg.last_seq,
                max_bytes = self.opts.max_bytes,
                "spool full: the oldest unacknowledged snapshots were dropped"
            );
        }
        Ok(())
    }

    /// Up to `max` records after `after`, in seq order: from memory when it
    /// holds them, else read back from the segment files.
    pub fn peek(&mut self, after: u64, max: usize) -> std::io::Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < max {
            let next = if cursor >= self.disk_only_until {
                self.memory.iter().find(|r| r.seq > cursor).cloned()
            } else {
                let r = self.read_after(cursor)?;
                if r.is_some() {
                    self.stats.read_from_disk += 1;
                }
                r
            };
            match next {
                Some(r) => {
                    cursor = r.seq;
                    out.push(r);
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// The first record on disk with seq > `after`.
    fn read_after(&mut self, after: u64) -> std::io::Result<Option<Record>> {
        // The position is only good for reading on from where it stopped; a
        // reader asked for something earlier (a failed batch is sent again)
        // starts from the oldest segment.
        let start_index = match &self.read_pos {
            Some(p) if after >= p.last_seq => self
                .segments
                .iter()
                .position(|s| s.first_seq == p.segment_first_seq),
            _ => None,
        };
        let (mut index, mut offset) = match (start_index, &self.read_pos) {
            (Some(i), Some(p)) => (i, p.offset),
            _ => (0, 0),
        };
        while index < self.segments.len() {
            let seg = &self.segments[index];
            if seg.last_seq <= after {
                index += 1;
                offset = 0;
                continue;
            }
            let mut file = BufReader::new(File::open(&seg.path)?);
            file.seek(SeekFrom::Start(offset))?;
            while let Some((rec, len)) = read_record(&mut file)? {
                offset += len;
                if rec.seq > after {
                    self.read_pos = Some(ReadPos {
                        segment_first_seq: seg.first_seq,
                        offset,
                        last_seq: rec.seq,
                    });
                    return Ok(Some(rec));
                }
            }
            index += 1;
            offset = 0;
        }
        self.read_pos = None;
        Ok(None)
    }

    /// JetStream acknowledged every record up to `seq`.
    pub fn ack(&mut self, seq: u64) -> std::io::Result<()> {
        if seq <= self.acked {
            return Ok(());
        }
        let before = self.acked;
        self.acked = seq;
        let now_acked = self.count_between(before, seq);
        self.stats.pending = self.stats.pending.saturating_sub(now_acked);
        while let Some(r) = self.memory.front() {
            if r.seq <= seq {
                self.memory.pop_front();
            } else {
                break;
            }
        }
        // Whole segments behind the ack (but never the newest) go.
        while self.segments.len() > 1 && self.segments[0].last_seq <= self.acked {
            let seg = self.segments.pop_front().expect("len > 1");
            self.stats.bytes -= seg.bytes;
            std::fs::remove_file(&seg.path)?;
            if self
                .read_pos
                .as_ref()
                .is_some_and(|p| p.segment_first_seq == seg.first_seq)
            {
                self.read_pos = None;
            }
        }
        Ok(())
    }

    /// Records in (`lo`, `hi`]: seqs are contiguous within a run, so this is
    /// the difference — counted from the oldest record still in the spool,
    /// since those before it were dropped (and counted) already — bounded by
    /// what is pending.
    fn count_between(&self, lo: u64, hi: u64) -> u64 {
        let oldest = self
            .segments
            .front()
            .map_or(hi, |s| s.first_seq.saturating_sub(1));
        hi.saturating_sub(lo.max(oldest)).min(self.stats.pending)
    }

    /// Fsyncs the current segment and records `acked` if either changed.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.dirty {
            if let Some(w) = self.writer.as_mut() {
                w.sync_data()?;
            }
            self.dirty = false;
        }
        if self.acked != self.acked_written {
            let tmp = self.dir.join("acked.tmp");
            {
                let mut f = File::create(&tmp)?;
                writeln!(f, "{}", self.acked)?;
            }
            std::fs::rename(&tmp, self.dir.join("acked"))?;
            self.acked_written = self.acked;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Calls [`sync`](Self::sync) when `fsync_every` has passed since the
    /// last one (the sampler calls this every tick).
    pub fn maybe_sync(&mut self) -> std::io::Result<()> {
        if self.last_sync.elapsed() >= self.opts.fsync_every {
            self.sync()?;
        }
        Ok(())
    }
}

struct Scan {
    records: u64,
    first_seq: u64,
    last_seq: u64,
    valid_bytes: u64,
    file_bytes: u64,
    /// Every seq in the segment, as contiguous runs (first, last).
    runs: Vec<(u64, u64)>,
}

impl Scan {
    fn seqs_above(&self, acked: u64) -> u64 {
        self.runs
            .iter()
            .map(|&(a, b)| {
                if b <= acked {
                    0
                } else {
                    b - a.max(acked + 1) + 1
                }
            })
            .sum()
    }
}

fn scan_segment(path: &Path) -> std::io::Result<Scan> {
    let file = File::open(path)?;
    let file_bytes = file.metadata()?.len();
    let mut r = BufReader::new(file);
    let mut scan = Scan {
        records: 0,
        first_seq: u64::MAX,
        last_seq: 0,
        valid_bytes: 0,
        file_bytes,
        runs: Vec::new(),
    };
    while let Some((rec, len)) = read_record(&mut r)? {
        scan.records += 1;
        scan.first_seq = scan.first_seq.min(rec.seq);
        scan.last_seq = scan.last_seq.max(rec.seq);
        scan.valid_bytes += len;
        match scan.runs.last_mut() {
            Some(run) if run.1 + 1 == rec.seq => run.1 = rec.seq,
            _ => scan.runs.push((rec.seq, rec.seq)),
        }
    }
    if scan.records == 0 {
        scan.first_seq = 0;
    }
    Ok(scan)
}

/// Reads one record; `None` at the end or at a torn / corrupt record (what
/// follows it cannot be trusted). Returns the record and its size on disk.
fn read_record(r: &mut impl Read) -> std::io::Result<Option<(Record, u64)>> {
    let mut header = [0u8; HEADER];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(12..=MAX_RECORD).contains(&len) {
        return Ok(None);
    }
    let mut body = vec![0u8; len];
    if !read_full(r, &mut body)? || crc32fast::hash(&body) != crc {
        return Ok(None);
    }
    let parse = || -> Option<Record> {
        let seq = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
        let sl = u16::from_le_bytes(body.get(8..10)?.try_into().ok()?) as usize;
        let subject = std::str::from_utf8(body.get(10..10 + sl)?).ok()?.to_owned();
        let p = 10 + sl;
        let il = u16::from_le_bytes(body.get(p..p + 2)?.try_into().ok()?) as usize;
        let msg_id = std::str::from_utf8(body.get(p + 2..p + 2 + il)?)
            .ok()?
            .to_owned();
        let payload = Bytes::copy_from_slice(body.get(p + 2 + il..)?);
        Some(Record {
            seq,
            subject,
            msg_id,
            payload,
        })
    };
    Ok(parse().map(|rec| (rec, (HEADER + len) as u64)))
}

/// Fills `buf`; false on a clean or torn end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, size: usize) -> Record {
        Record {
            seq,
            subject: "sysmon.metrics.m1".into(),
            msg_id: format!("m1:{seq}"),
            payload: Bytes::from(vec![(seq % 251) as u8; size]),
        }
    }

    fn opts(max_bytes: u64, memory_records: usize) -> SpoolOptions {
        SpoolOptions {
            max_bytes,
            memory_records,
            fsync_every: Duration::from_secs(3600),
        }
    }

    fn seqs(v: &[Record]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn records_come_back_in_order_from_memory_and_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(1 << 20, 4)).expect("open");
        for n in 1..=10 {
            s.append(rec(n, 100)).expect("append");
        }
        // Only the newest 4 are in memory; 1..=6 must come from disk.
        let got = s.peek(0, 100).expect("peek");
        assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
        assert_eq!(got[2], rec(3, 100), "payload and ids survive the disk");
        assert_eq!(s.stats().read_from_disk, 6);
        s.ack(7).expect("ack");
        assert_eq!(seqs(&s.peek(7, 100).expect("peek")), vec![8, 9, 10]);
        assert_eq!(s.stats().pending, 3);
    }

    #[test]
    fn a_reopened_spool_replays_what_was_not_acked() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path(), opts(1 << 20, 64)).expect("open");
            for n in 1..=20 {
                s.append(rec(n, 50)).expect("append");
            }
            s.ack(12).expect("ack");
            s.sync().expect("sync");
        }
        let mut s = Spool::open(dir.path(), opts(1 << 20, 64)).expect("reopen");
        assert_eq!(s.last_seq(), 20);
        assert_eq!(s.acked(), 12);
        assert_eq!(s.stats().pending, 8);
        assert_eq!(
            seqs(&s.peek(s.acked(), 100).expect("peek")),
            (13..=20).collect::<Vec<_>>()
        );
        // New records follow the replayed ones.
        s.append(rec(21, 50)).expect("append");
        assert_eq!(seqs(&s.peek(19, 100).expect("peek")), vec![20, 21]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut s = Spool::open(dir.path(), opts(1 << 20, 64)).expect("open");
            for n in 1..=5 {
                s.append(rec(n, 40)).expect("append");
            }
            s.sync().expect("sync");
        }
        let seg = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .expect("a segment");
        let len = std::fs::metadata(&seg).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open")
            .set_len(len - 10)
            .expect("truncate");
        let mut s = Spool::open(dir.path(), opts(1 << 20, 64)).expect("reopen");
        assert_eq!(seqs(&s.peek(0, 100).expect("peek")), vec![1, 2, 3, 4]);
        assert_eq!(s.last_seq(), 4);
        s.append(rec(5, 40)).expect("append after the cut");
        assert_eq!(seqs(&s.peek(3, 100).expect("peek")), vec![4, 5]);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 64 KiB bound, 4 KiB segments, ~1 KiB records.
        let mut s = Spool::open(dir.path(), opts(64 * 1024, 8)).expect("open");
        for n in 1..=200 {
            s.append(rec(n, 1000)).expect("append");
        }
        let st = s.stats();
        assert!(st.bytes <= 64 * 1024, "bounded: {st:?}");
        assert!(st.dropped > 0, "{st:?}");
        assert_eq!(
            st.dropped + st.pending,
            200,
            "every record is pending or counted dropped"
        );
        let left = seqs(&s.peek(0, 1000).expect("peek"));
        assert_eq!(left.len() as u64, st.pending);
        assert_eq!(*left.last().expect("some"), 200, "the newest are kept");
        assert!(
            left.windows(2).all(|w| w[1] == w[0] + 1),
            "in order, no hole"
        );
    }

    /// A length that does not fit its u16 field would be written cut, under
    /// a valid CRC, and read back as another record: refused instead.
    #[test]
    fn a_msg_id_too_long_for_its_length_field_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(1 << 20, 4)).expect("open");
        let long = Record {
            msg_id: "x".repeat(70_000),
            ..rec(1, 10)
        };
        assert!(s.append(long).is_err());
        s.append(rec(1, 10)).expect("the spool goes on");
        assert_eq!(s.peek(0, 10).expect("peek"), vec![rec(1, 10)]);
    }

    #[test]
    fn acked_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Spool::open(dir.path(), opts(64 * 1024, 8)).expect("open");
        for n in 1..=40 {
            s.append(rec(n, 1000)).expect("append");
        }
        let before = s.stats().bytes;
        s.ack(40).expect("ack");
        let st = s.stats();
        assert_eq!(st.pending, 0);
        assert!(st.bytes < before && st.bytes <= 8 * 1024, "{st:?}");
        let files = std::fs::read_dir(dir.path()).expect("dir").count();
        assert!(files <= 2, "only the newest segment (and acked) remain");
    }

    /// The record reader against damage, with proptest: any bytes never
    /// panic it and never yield a record whose CRC fails; a spool whose
    /// segment is cut short or has a byte changed anywhere keeps every record
    /// before the damage (and every other segment), and returns nothing that
    /// was not written.
    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn records() -> impl Strategy<Value = Vec<Record>> {
            vec(
                ("[a-z0-9-]{1,20}", ".{0,30}", vec(any::<u8>(), 0..300)),
                1..60,
            )
            .prop_map(|v| {
                v.into_iter()
                    .enumerate()
                    .map(|(i, (machine, msg_id, payload))| Record {
                        seq: i as u64 + 1,
                        subject: format!("sysmon.metrics.{machine}"),
                        msg_id,
                        payload: Bytes::from(payload),
                    })
                    .collect()
            })
        }

        /// (seq, end offset) of each record in a segment's bytes.
        fn layout(bytes: &[u8]) -> Vec<(u64, usize)> {
            let mut out = Vec::new();
            let mut at = 0;
            while at + HEADER + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
                let seq = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8"));
                at += HEADER + len;
                out.push((seq, at));
            }
            out
        }

        #[derive(Clone, Debug)]
        enum Damage {
            Cut(prop::sample::Index),
            Byte(prop::sample::Index, u8),
        }

        fn damage() -> impl Strategy<Value = Damage> {
            prop_oneof![
                any::<prop::sample::Index>().prop_map(Damage::Cut),
                (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Byte(i, b)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn any_bytes_give_only_records_whose_crc_holds(bytes in vec(any::<u8>(), 0..400)) {
                let mut r = &bytes[..];
                let mut at = 0usize;
                while let Some((rec, len)) = read_record(&mut r).expect("reading memory") {
                    let len = len as usize;
                    let record = &bytes[at..at + len];
                    let crc = u32::from_le_bytes(record[4..8].try_into().expect("4"));
                    prop_assert_eq!(crc32fast::hash(&record[HEADER..]), crc);
                    prop_assert_eq!(u64::from_le_bytes(record[8..16].try_into().expect("8")), rec.seq);
                    at += len;
                }
            }

            /// Frames with the right length and any body, each with its true
            /// CRC or a wrong one, then garbage: records come back up to the
            /// first frame whose CRC fails, never past it.
            #[test]
            fn reading_stops_at_the_first_frame_whose_crc_fails(
                frames in vec(
                    ((any::<u64>(), "[a-z.]{0,20}", ".{0,10}", vec(any::<u8>(), 0..50)), any::<bool>(), any::<u32>()),
                    1..6,
                ),
                tail in vec(any::<u8>(), 0..40),
            ) {
                let frames: Vec<(Vec<u8>, bool, u32)> = frames
                    .into_iter()
                    .map(|((seq, subject, msg_id, payload), right, other)| {
                        let mut body = seq.to_le_bytes().to_vec();
                        body.extend_from_slice(&(subject.len() as u16).to_le_bytes());
                        body.extend_from_slice(subject.as_bytes());
                        body.extend_from_slice(&(msg_id.len() as u16).to_le_bytes());
                        body.extend_from_slice(msg_id.as_bytes());
                        body.extend_from_slice(&payload);
                        (body, right, other)
                    })
                    .collect();
                let mut bytes = Vec::new();
                let mut good = 0;
                let mut broken = false;
                for (body, right, other) in &frames {
                    let crc = crc32fast::hash(body);
                    let crc = if *right || *other == crc { crc } else { *other };
                    broken |= crc != crc32fast::hash(body);
                    if !broken {
                        good += 1;
                    }
                    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
                    bytes.extend_from_slice(&crc.to_le_bytes());
                    bytes.extend_from_slice(body);
                }
                bytes.extend_from_slice(&tail);
                let mut r = &bytes[..];
                let mut read = 0;
                while let Some((rec, _)) = read_record(&mut r).expect("reading memory") {
                    prop_assert!(read < good, "record {read} read past a failed CRC: {rec:?}");
                    let (body, _, _) = &frames[read];
                    prop_assert_eq!(rec.seq, u64::from_le_bytes(body[0..8].try_into().expect("8")));
                    read += 1;
                }
                prop_assert_eq!(read, good, "every frame before the first bad one is read");
            }

            #[test]
            fn a_damaged_segment_keeps_every_record_before_the_damage(
                recs in records(),
                which in any::<prop::sample::Index>(),
                damage in damage(),
            ) {
                let dir = tempfile::tempdir().expect("tempdir");
                {
                    // 4 KiB segments: several of them.
                    let mut s = Spool::open(dir.path(), opts(64 * 1024, 4)).expect("open");
                    for r in &recs {
                        s.append(r.clone()).expect("append");
                    }
                    s.sync().expect("sync");
                }
                let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.path())
                    .expect("dir")
                    .map(|e| e.expect("entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "seg"))
                    .collect();
                segs.sort();
                let seg = &segs[which.index(segs.len())];
                let mut bytes = std::fs::read(seg).expect("read");
                let original = bytes.clone();
                // Records of this segment from the damaged one on are lost.
                let damaged_at = match damage {
                    Damage::Cut(i) => {
                        let at = i.index(bytes.len() + 1);
                        bytes.truncate(at);
                        // A cut at a record's end loses nothing before it.
                        at
                    }
                    Damage::Byte(i, b) => {
                        let at = i.index(bytes.len());
                        if bytes[at] == b { usize::MAX } else { bytes[at] = b; at }
                    }
                };
                std::fs::write(seg, &bytes).expect("damage");
                let lost: Vec<u64> = layout(&original)
                    .into_iter()
                    .filter(|&(_, end)| end > damaged_at)
                    .map(|(seq, _)| seq)
                    .collect();

                let mut s = Spool::open(dir.path(), opts(64 * 1024, 4)).expect("reopen");
                let got = s.peek(0, 10_000).expect("peek");
                for r in &got {
                    // Nothing that was not written, byte for byte.
                    prop_assert_eq!(r, &recs[r.seq as usize - 1]);
                }
                let got: Vec<u64> = seqs(&got);
                let want: Vec<u64> = recs.iter().map(|r| r.seq).filter(|s| !lost.contains(s)).collect();
                prop_assert_eq!(got, want);
                // And the spool goes on after the damage.
                let next = recs.len() as u64 + 1;
                s.append(rec(next, 10)).expect("append after the damage");
                prop_assert_eq!(s.last_seq(), next);
            }
        }
    }
}
