//! PostgreSQL's binary COPY format, written by hand for the one table the
//! persister streams into: `metrics`, one row per snapshot with the
//! per-device detail as JSON text. Binary COPY is the cheapest way in for the
//! server (no text parsing); the format is the stable one documented under
//! COPY "Binary Format", with each value in its type's send/recv form.

use chrono::{DateTime, Utc};

use std::ops::Range;

use crate::decode::{self, Limits, Rejection, big};
use crate::wire;

/// The type OID of `real` (pg_type.oid, fixed since forever), the element
/// type of the one array column, `cpu_per_core`.
const FLOAT4: u32 = 700;

/// 2000-01-01T00:00:00Z, PostgreSQL's timestamp epoch, in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// The columns [`encode`] writes, in order. `received_at` is left to its
/// default.
pub const COLUMNS: &str = "machine_id, ts, seq, interval_ms, cpu_percent, cpu_user_percent, \
    cpu_system_percent, cpu_iowait_percent, cpu_per_core, mem_total_bytes, mem_used_bytes, \
    mem_available_bytes, mem_used_percent, swap_total_bytes, swap_used_bytes, swap_used_percent, \
    load1, load5, load15, uptime_s, process_count, net_rx_bps, net_tx_bps, disk_read_bps, \
    disk_write_bps, temperature_max_c, agent_spool_pending, agent_spool_dropped, \
    procs_top_cpu, detail";
const FIELDS: i16 = 30;

/// A value with a binary form of its own.
trait Elem {
    fn put(&self, out: &mut Vec<u8>);
}

impl Elem for i16 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for i32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for i64 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for f32 {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for &str {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

/// The signature, no OIDs, no header extension.
const HEADER: [u8; 19] = *b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of the rows: a field count of -1.
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();

/// Rows of a COPY payload being built.
struct Buf(Vec<u8>);

impl Buf {
    fn row(&mut self, fields: i16) {
        self.0.extend_from_slice(&fields.to_be_bytes());
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A field whose bytes `write` appends; its length is filled in after.
    fn field(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        write(&mut self.0);
        let len = i32::try_from(self.0.len() - at - 4).unwrap_or(i32::MAX);
        self.0[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    fn val<T: Elem>(&mut self, v: T) {
        self.field(|o| v.put(o));
    }

    fn f64(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.field(|o| o.extend_from_slice(&v.to_be_bytes())),
            None => self.null(),
        }
    }

    fn opt<T: Elem>(&mut self, v: Option<T>) {
        match v {
            Some(v) => self.val(v),
            None => self.null(),
        }
    }

    fn ts(&mut self, t: DateTime<Utc>) {
        self.val(t.timestamp_micros() - PG_EPOCH_US);
    }

    /// A one-dimensional `real[]` without NULL elements (`cpu_per_core`),
    /// or NULL when there is nothing.
    fn reals(&mut self, items: &[f32]) {
        if items.is_empty() {
            return self.null();
        }
        let n = i32::try_from(items.len()).unwrap_or(i32::MAX);
        self.field(|o| {
            o.extend_from_slice(&1i32.to_be_bytes()); // dimensions
            o.extend_from_slice(&0i32.to_be_bytes()); // no NULL elements
            o.extend_from_slice(&FLOAT4.to_be_bytes());
            o.extend_from_slice(&n.to_be_bytes());
            o.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for v in items {
                o.extend_from_slice(&4i32.to_be_bytes());
                o.extend_from_slice(&v.to_be_bytes());
            }
        });
    }
}

/// Where one snapshot's row is in a [`Batch`].
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// The row's bytes in the row buffer.
    row: (usize, usize),
    /// The machine id's bytes in the row buffer.
    machine: (u32, u32),
    ts: DateTime<Utc>,
    /// Rows this snapshot writes, its per-device detail included.
    rows: u32,
}

/// Snapshots checked and encoded as rows of one binary COPY into
/// [`COLUMNS`], straight from their protobuf bytes.
pub struct Batch {
    rows: Buf,
    meta: Vec<Meta>,
    /// Reused for every snapshot read, so reading allocates nothing.
    scratch: wire::Snapshot,
}

impl Default for Batch {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Batch {
    pub fn with_capacity(snapshots: usize) -> Self {
        Self {
            rows: Buf(Vec::with_capacity(snapshots * 1024)),
            meta: Vec::with_capacity(snapshots),
            scratch: wire::Snapshot::default(),
        }
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.rows.0.clear();
        self.meta.clear();
    }

    /// Checks the snapshot in `payload`, which came on `subject`, and adds
    /// its row; a refused one adds nothing.
    pub fn push(
        &mut self,
        subject: &str,
        payload: &[u8],
        now: DateTime<Utc>,
        limits: Limits,
    ) -> Result<(), Rejection> {
        let s = &mut self.scratch;
        let ts = decode::check(subject, payload, s, now, limits)?;
        let start = self.rows.0.len();
        let machine = encode_row(&mut self.rows, payload, s, ts);
        let at = |i: usize| u32::try_from(start + i).unwrap_or(u32::MAX);
        self.meta.push(Meta {
            row: (start, self.rows.0.len()),
            machine: (at(machine.start), at(machine.end)),
            ts,
            rows: u32::try_from(
                1 + s.filesystems.len()
                    + s.disks.len()
                    + s.interfaces.len()
                    + s.temperatures.len()
                    + s.top_cpu.len()
                    + s.top_memory.len(),
            )
            .unwrap_or(u32::MAX),
        });
        Ok(())
    }

    /// Snapshots in the batch.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Rows the batch writes, per-device detail included.
    pub fn row_count(&self) -> u64 {
        self.meta.iter().map(|m| u64::from(m.rows)).sum()
    }

    /// The machine and time of each snapshot, in order.
    pub fn snapshots(&self) -> impl Iterator<Item = (&str, DateTime<Utc>)> + '_ {
        self.meta.iter().map(|m| {
            let b = &self.rows.0[m.machine.0 as usize..m.machine.1 as usize];
            (std::str::from_utf8(b).unwrap_or_default(), m.ts)
        })
    }

    /// A batch of the snapshots `range` of this one (their rows copied), to
    /// write apart: how a batch that PostgreSQL refuses is narrowed down to
    /// the snapshot it refuses.
    pub fn part(&self, range: Range<usize>) -> Batch {
        let meta = &self.meta[range];
        let (Some(first), Some(last)) = (meta.first(), meta.last()) else {
            return Batch::default();
        };
        let from = first.row.0;
        let shift = |i: u32| i.saturating_sub(u32::try_from(from).unwrap_or(u32::MAX));
        Batch {
            rows: Buf(self.rows.0[from..last.row.1].to_vec()),
            meta: meta
                .iter()
                .map(|m| Meta {
                    row: (m.row.0 - from, m.row.1 - from),
                    machine: (shift(m.machine.0), shift(m.machine.1)),
                    ..*m
                })
                .collect(),
            scratch: wire::Snapshot::default(),
        }
    }

    /// The COPY payload, in the pieces it is sent in: signature and header,
    /// rows, trailer.
    pub fn payload(&self) -> [&[u8]; 3] {
        [&HEADER, &self.rows.0, &TRAILER]
    }
}

fn percent(used: u64, total: u64) -> Option<f32> {
    (total > 0).then(|| (used as f64 * 100.0 / total as f64) as f32)
}

/// Sum of the present values; `None` when none is present (no rate yet).
fn sum_present(values: impl Iterator<Item = Option<f32>>) -> Option<f64> {
    values
        .flatten()
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + f64::from(v)))
}

/// The figures of a row that the contract derives from the snapshot.
#[derive(Debug, PartialEq)]
struct Derived {
    mem_used_percent: Option<f32>,
    swap_used_percent: Option<f32>,
    net_rx_bps: Option<f64>,
    net_tx_bps: Option<f64>,
    disk_read_bps: Option<f64>,
    disk_write_bps: Option<f64>,
    temperature_max_c: Option<f32>,
}

impl Derived {
    fn of(p: &[u8], s: &wire::Snapshot) -> Self {
        // Loopback traffic is the machine talking to itself, not network load.
        let nets = || s.interfaces.iter().filter(|i| i.name.of(p) != "lo");
        Self {
            mem_used_percent: s.memory.and_then(|m| percent(m.used_bytes, m.total_bytes)),
            // The contract: 0 when the machine has no swap.
            swap_used_percent: s
                .memory
                .map(|m| percent(m.swap_used_bytes, m.swap_total_bytes).unwrap_or(0.0)),
            net_rx_bps: sum_present(nets().map(|i| i.rx_bytes_per_s)),
            net_tx_bps: sum_present(nets().map(|i| i.tx_bytes_per_s)),
            disk_read_bps: sum_present(s.disks.iter().map(|d| d.read_bytes_per_s)),
            disk_write_bps: sum_present(s.disks.iter().map(|d| d.write_bytes_per_s)),
            temperature_max_c: s
                .temperatures
                .iter()
                .map(|t| t.celsius)
                .fold(None, |m: Option<f32>, c| Some(m.map_or(c, |m| m.max(c)))),
        }
    }
}

/// Appends the row of `s` (read from `p`, taken at `ts`); returns where its
/// machine id is, relative to the row's start.
fn encode_row(b: &mut Buf, p: &[u8], s: &wire::Snapshot, ts: DateTime<Utc>) -> Range<usize> {
    let start = b.0.len();
    let d = Derived::of(p, s);
    b.row(FIELDS);
    let machine_at = b.0.len() + 4 - start;
    let machine = s.machine_id.of(p);
    b.val(machine);
    b.ts(ts);
    b.val(big(s.seq));
    b.val(i32::try_from(s.interval_ms).unwrap_or(i32::MAX));
    let cpu = s.cpu.as_ref();
    b.opt(cpu.map(|c| c.usage_percent));
    b.opt(cpu.and_then(|c| c.user_percent));
    b.opt(cpu.and_then(|c| c.system_percent));
    b.opt(cpu.and_then(|c| c.iowait_percent));
    match cpu {
        Some(_) => b.reals(&s.per_core_percent),
        None => b.null(),
    }
    let mem = s.memory.as_ref();
    b.opt(mem.map(|m| big(m.total_bytes)));
    b.opt(mem.map(|m| big(m.used_bytes)));
    b.opt(mem.map(|m| big(m.available_bytes)));
    b.opt(d.mem_used_percent);
    b.opt(mem.map(|m| big(m.swap_total_bytes)));
    b.opt(mem.map(|m| big(m.swap_used_bytes)));
    b.opt(d.swap_used_percent);
    b.f64(s.load.map(|l| l.one));
    b.f64(s.load.map(|l| l.five));
    b.f64(s.load.map(|l| l.fifteen));
    b.val(big(s.uptime_s));
    b.val(i32::try_from(s.process_count).unwrap_or(i32::MAX));
    b.f64(d.net_rx_bps);
    b.f64(d.net_tx_bps);
    b.f64(d.disk_read_bps);
    b.f64(d.disk_write_bps);
    b.opt(d.temperature_max_c);
    b.opt(s.agent.map(|a| big(a.spool_pending)));
    b.opt(s.agent.map(|a| big(a.spool_dropped)));

    // Top processes: those by CPU first, then those by memory; the count of
    // the first kind tells the two apart.
    let procs = s.top_cpu.len() + s.top_memory.len();
    b.opt((procs > 0).then(|| i16::try_from(s.top_cpu.len()).unwrap_or(i16::MAX)));
    let empty = s.filesystems.is_empty()
        && s.disks.is_empty()
        && s.interfaces.is_empty()
        && s.temperatures.is_empty()
        && procs == 0;
    if empty {
        b.null();
    } else {
        b.field(|o| detail_json(o, p, s));
    }
    machine_at..machine_at + machine.len()
}

/// The per-device detail of `s` as JSON text: one array per section, one
/// array per device in the agent's order, values by position (the views
/// `metrics_fs` … `metrics_proc` give them names); empty sections left out:
///
/// `{"fs":[[mount,type,total,used,free]],"disks":[[name,read,write]],
///   "ifaces":[[name,rx,tx,rx_errors,tx_errors]],"temps":[[label,celsius]],
///   "procs":[[pid,name,cpu,rss]]}` (processes: top by CPU, then by memory)
///
/// PostgreSQL takes a text field for about the price of copying it, where
/// the same detail as 19 arrays cost it 3.1 times as much as all the scalar
/// columns of a row together (figures in the baseline migration). Absent
/// rates are `null`;
/// non-finite floats are the strings PostgreSQL's float input reads back
/// (`"NaN"`, `"Infinity"`, `"-Infinity"`).
fn detail_json(o: &mut Vec<u8>, p: &[u8], s: &wire::Snapshot) {
    o.push(b'{');
    let mut first = true;
    section(o, &mut first, "fs", &s.filesystems, |t, f| {
        t.str(f.mount.of(p));
        t.str(f.fs_type.of(p));
        t.int(big(f.total_bytes));
        t.int(big(f.used_bytes));
        t.int(big(f.free_bytes));
    });
    section(o, &mut first, "disks", &s.disks, |t, d| {
        t.str(d.name.of(p));
        t.float(d.read_bytes_per_s);
        t.float(d.write_bytes_per_s);
    });
    section(o, &mut first, "ifaces", &s.interfaces, |t, i| {
        t.str(i.name.of(p));
        t.float(i.rx_bytes_per_s);
        t.float(i.tx_bytes_per_s);
        t.float(i.rx_errors_per_s);
        t.float(i.tx_errors_per_s);
    });
    section(o, &mut first, "temps", &s.temperatures, |t, x| {
        t.str(x.label.of(p));
        t.float(Some(x.celsius));
    });
    let procs = s.top_cpu.iter().chain(&s.top_memory);
    section(o, &mut first, "procs", procs, |t, x| {
        t.int(i64::from(i32::try_from(x.pid).unwrap_or(i32::MAX)));
        t.str(x.name.of(p));
        t.float(Some(x.cpu_percent));
        t.int(big(x.rss_bytes));
    });
    o.push(b'}');
}

/// `"key":[[…],[…]]`, one inner array per item; nothing for no items.
fn section<'a, T: 'a>(
    o: &mut Vec<u8>,
    first: &mut bool,
    key: &str,
    items: impl IntoIterator<Item = &'a T>,
    mut each: impl FnMut(&mut Tuple<'_>, &T),
) {
    let mut items = items.into_iter().peekable();
    if items.peek().is_none() {
        return;
    }
    if !std::mem::take(first) {
        o.push(b',');
    }
    o.push(b'"');
    o.extend_from_slice(key.as_bytes());
    o.extend_from_slice(b"\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            o.push(b',');
        }
        o.push(b'[');
        each(&mut Tuple { o, n: 0 }, item);
        o.push(b']');
    }
    o.push(b']');
}

/// The values of one JSON array, comma-separated as they are written.
struct Tuple<'a> {
    o: &'a mut Vec<u8>,
    n: usize,
}

impl Tuple<'_> {
    fn next(&mut self) {
        if self.n > 0 {
            self.o.push(b',');
        }
        self.n += 1;
    }

    fn int(&mut self, v: i64) {
        self.next();
        self.o
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    /// Shortest form that reads back as the same `f32`.
    fn float(&mut self, v: Option<f32>) {
        self.next();
        let text: &[u8] = match v {
            None => b"null",
            Some(v) if v.is_nan() => b"\"NaN\"",
            Some(v) if v == f32::INFINITY => b"\"Infinity\"",
            Some(v) if v == f32::NEG_INFINITY => b"\"-Infinity\"",
            Some(v) => {
                self.o
                    .extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
                return;
            }
        };
        self.o.extend_from_slice(text);
    }

    fn str(&mut self, s: &str) {
        self.next();
        json_str(self.o, s);
    }
}

/// `s` as a JSON string. NUL, which PostgreSQL's text cannot hold (nor
/// `jsonb` read as `\u0000`), becomes U+FFFD.
fn json_str(o: &mut Vec<u8>, s: &str) {
    o.push(b'"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        o.extend_from_slice(s.as_bytes());
    } else {
        for c in s.chars() {
            match c {
                '"' => o.extend_from_slice(b"\\\""),
                '\\' => o.extend_from_slice(b"\\\\"),
                '\n' => o.extend_from_slice(b"\\n"),
                '\r' => o.extend_from_slice(b"\\r"),
                '\t' => o.extend_from_slice(b"\\t"),
                '\0' => o.extend_from_slice("\u{fffd}".as_bytes()),
                c if (c as u32) < 0x20 => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    let b = c as usize;
                    o.extend_from_slice(b"\\u00");
                    o.extend_from_slice(&[HEX[b >> 4], HEX[b & 15]]);
                }
                c => {
                    let mut buf = [0; 4];
                    o.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
    o.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    use prost::Message as _;
    use sysmonstm_schemas::v1;

    fn derived(snap: &v1::Snapshot) -> Derived {
        let bytes = snap.encode_to_vec();
        let mut s = wire::Snapshot::default();
        s.parse(&bytes).expect("valid");
        Derived::of(&bytes, &s)
    }

    #[test]
    fn derives_the_contract_figures() {
        let if_ = |name: &str, rx: Option<f32>, tx: Option<f32>| v1::NetInterface {
            name: name.into(),
            rx_bytes_per_s: rx,
            tx_bytes_per_s: tx,
            ..Default::default()
        };
        let snap = v1::Snapshot {
            machine_id: "m".into(),
            memory: Some(v1::Memory {
                total_bytes: 200,
                used_bytes: 50,
                swap_total_bytes: 0,
                ..Default::default()
            }),
            interfaces: vec![
                if_("lo", Some(1e6), Some(1e6)),
                if_("eth0", Some(10.0), Some(4.0)),
                if_("eth1", Some(5.0), None),
            ],
            disks: vec![v1::Disk {
                name: "sda".into(),
                read_bytes_per_s: None,
                write_bytes_per_s: Some(3.0),
            }],
            temperatures: vec![
                v1::Temperature {
                    label: "a".into(),
                    celsius: 40.0,
                },
                v1::Temperature {
                    label: "b".into(),
                    celsius: 55.5,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            derived(&snap),
            Derived {
                mem_used_percent: Some(25.0),
                // No swap: 0, as the contract says.
                swap_used_percent: Some(0.0),
                // Loopback left out.
                net_rx_bps: Some(15.0),
                net_tx_bps: Some(4.0),
                // No rate yet is no figure, not 0.
                disk_read_bps: None,
                disk_write_bps: Some(3.0),
                temperature_max_c: Some(55.5),
            }
        );
    }

    #[test]
    fn missing_sections_are_null_not_zero() {
        let d = derived(&v1::Snapshot {
            machine_id: "a".into(),
            ..Default::default()
        });
        assert_eq!(
            (
                d.mem_used_percent,
                d.swap_used_percent,
                d.net_rx_bps,
                d.temperature_max_c
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn a_batch_counts_rows_and_finds_its_machines() {
        let limits = Limits {
            max_payload_bytes: 1 << 20,
            max_future_skew_ms: 60_000,
        };
        let now = Utc::now();
        let mut b = Batch::default();
        for (i, id) in ["web01", "db-2"].into_iter().enumerate() {
            let s = v1::Snapshot {
                machine_id: id.into(),
                timestamp_ms: now.timestamp_millis() - i as i64,
                disks: vec![v1::Disk::default(); i + 1],
                ..Default::default()
            };
            b.push(
                &format!("sysmon.metrics.{id}"),
                &s.encode_to_vec(),
                now,
                limits,
            )
            .expect("valid");
        }
        // A refused one leaves nothing behind.
        let rows = b.payload()[1].len();
        assert!(
            b.push("sysmon.metrics.x", b"\xff\xff", now, limits)
                .is_err()
        );
        assert_eq!(b.payload()[1].len(), rows);
        assert_eq!((b.len(), b.row_count()), (2, 2 + 3));
        let seen: Vec<(&str, i64)> = b
            .snapshots()
            .map(|(m, t)| (m, t.timestamp_millis()))
            .collect();
        let ms = now.timestamp_millis();
        assert_eq!(seen, [("web01", ms), ("db-2", ms - 1)]);
        // Signature, flags and extension length; a field count of -1.
        assert_eq!(&b.payload()[0][..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(b.payload()[0].len(), 19);
        assert_eq!(b.payload()[2], (-1i16).to_be_bytes());
    }

    /// Every string, escaped and read back by a JSON parser, is itself (NUL
    /// aside, which becomes U+FFFD).
    #[test]
    fn json_strings_escape_what_they_must() {
        let mut odd: Vec<String> = (0u32..0x80)
            .filter_map(char::from_u32)
            .map(|c| format!("a{c}b"))
            .collect();
        odd.extend(["", "\"\\\"", "ü✓監視😀", "\u{7f}\u{2028}", "\0\0"].map(String::from));
        for s in odd {
            let mut o = Vec::new();
            json_str(&mut o, &s);
            let back: String = serde_json::from_slice(&o).expect("valid JSON");
            assert_eq!(back, s.replace('\0', "\u{fffd}"), "{s:?}");
        }
    }

    /// The detail's JSON, read by a JSON parser: sections in order, absent
    /// ones left out, absent rates null, floats exact.
    #[test]
    fn detail_json_has_every_device_in_order() {
        let snap = v1::Snapshot {
            machine_id: "m".into(),
            disks: vec![v1::Disk {
                name: "sda".into(),
                read_bytes_per_s: None,
                write_bytes_per_s: Some(0.1),
            }],
            interfaces: vec![v1::NetInterface {
                name: "eth0".into(),
                rx_bytes_per_s: Some(f32::NAN),
                tx_bytes_per_s: Some(f32::NEG_INFINITY),
                rx_errors_per_s: Some(1e-7),
                tx_errors_per_s: Some(16_777_216.0),
            }],
            top_cpu: vec![v1::Process {
                pid: 7,
                name: "a".into(),
                cpu_percent: 50.5,
                rss_bytes: u64::MAX,
            }],
            top_memory: vec![v1::Process {
                pid: 8,
                name: "b".into(),
                cpu_percent: 0.0,
                rss_bytes: 1 << 40,
            }],
            ..Default::default()
        };
        let bytes = snap.encode_to_vec();
        let mut s = wire::Snapshot::default();
        s.parse(&bytes).expect("valid");
        let mut o = Vec::new();
        detail_json(&mut o, &bytes, &s);
        let v: serde_json::Value = serde_json::from_slice(&o).expect("valid JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "disks": [["sda", null, 0.1]],
                "ifaces": [["eth0", "NaN", "-Infinity", 1e-7, 16777216.0]],
                "procs": [[7, "a", 50.5, i64::MAX], [8, "b", 0.0, 1_i64 << 40]],
            })
        );
        let text = String::from_utf8(o).expect("utf-8");
        // Shortest forms that read back as the same f32, not f64 noise.
        assert!(text.contains(",0.1]") && text.contains(",1e-7,"), "{text}");
    }

    #[test]
    fn columns_and_fields_agree() {
        assert_eq!(COLUMNS.split(',').count(), FIELDS as usize);
    }

    #[test]
    fn a_real_array_is_sized_and_empty_is_null() {
        let mut b = Buf(Vec::new());
        b.reals(&[1.5, -2.0]);
        let f = &b.0;
        let word = |i: usize| i32::from_be_bytes(f[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        // length, ndim, has_null, oid, dim, lbound, (elem len, elem) x 2
        assert_eq!(word(0), (f.len() - 4) as i32);
        assert_eq!(
            (word(1), word(2), word(3), word(4), word(5)),
            (1, 0, 700, 2, 1)
        );
        assert_eq!((word(6), word(8)), (4, 4));
        assert_eq!(f32::from_bits(word(7) as u32), 1.5);
        assert_eq!(f32::from_bits(word(9) as u32), -2.0);
        let mut e = Buf(Vec::new());
        e.reals(&[]);
        assert_eq!(e.0, (-1i32).to_be_bytes());
    }
}
