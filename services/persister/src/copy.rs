//! PostgreSQL's binary COPY format, written by hand for the one table the
//! persister streams into: `metrics`, one row per snapshot with the
//! per-device detail as arrays. Binary COPY is the cheapest way in for the
//! server (no text parsing); the format is the stable one documented under
//! COPY "Binary Format", with each value in its type's send/recv form.

use chrono::{DateTime, Utc};

use crate::decode::Decoded;

/// Type OIDs of array elements (pg_type.oid, fixed since forever).
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const TEXT: u32 = 25;
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
    fs_mount, fs_type, fs_total_bytes, fs_used_bytes, fs_free_bytes, \
    disks_name, disks_read_bps, disks_write_bps, \
    ifaces_name, ifaces_rx_bps, ifaces_tx_bps, ifaces_rx_errors_ps, ifaces_tx_errors_ps, \
    temps_label, temps_celsius, \
    procs_top_cpu, procs_pid, procs_name, procs_cpu_percent, procs_rss_bytes";
const FIELDS: i16 = 48;

/// A value that has a binary form in an array of element type `OID`.
trait Elem {
    const OID: u32;
    fn put(&self, out: &mut Vec<u8>);
}

impl Elem for i16 {
    const OID: u32 = INT2;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for i32 {
    const OID: u32 = INT4;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for i64 {
    const OID: u32 = INT8;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for f32 {
    const OID: u32 = FLOAT4;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
}
impl Elem for &str {
    const OID: u32 = TEXT;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

/// A COPY payload being built: the signature, then rows, then the trailer.
struct Buf(Vec<u8>);

impl Buf {
    fn new(capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity);
        v.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        v.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        v.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self(v)
    }

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

    /// A one-dimensional array, or NULL when there is nothing (so the
    /// detail views' `unnest` yields no row).
    fn array<T: Elem>(&mut self, items: impl ExactSizeIterator<Item = Option<T>> + Clone) {
        if items.len() == 0 {
            return self.null();
        }
        let has_null = items.clone().any(|i| i.is_none());
        let n = i32::try_from(items.len()).unwrap_or(i32::MAX);
        self.field(|o| {
            o.extend_from_slice(&1i32.to_be_bytes()); // dimensions
            o.extend_from_slice(&i32::from(has_null).to_be_bytes());
            o.extend_from_slice(&T::OID.to_be_bytes());
            o.extend_from_slice(&n.to_be_bytes());
            o.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            for item in items {
                match item {
                    Some(v) => {
                        let at = o.len();
                        o.extend_from_slice(&[0; 4]);
                        v.put(o);
                        let len = i32::try_from(o.len() - at - 4).unwrap_or(i32::MAX);
                        o[at..at + 4].copy_from_slice(&len.to_be_bytes());
                    }
                    None => o.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        });
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

/// The binary COPY payload of `snaps` for [`COLUMNS`].
pub fn encode(snaps: &[Decoded]) -> Vec<u8> {
    let mut b = Buf::new(snaps.len() * 1024 + 32);
    for s in snaps {
        let r = &s.row;
        b.row(FIELDS);
        b.val(r.machine_id.as_str());
        b.ts(r.ts);
        b.val(r.seq);
        b.val(r.interval_ms);
        b.opt(r.cpu_percent);
        b.opt(r.cpu_user_percent);
        b.opt(r.cpu_system_percent);
        b.opt(r.cpu_iowait_percent);
        match &r.cpu_per_core {
            Some(v) => b.array(v.iter().map(|x| Some(*x))),
            None => b.null(),
        }
        b.opt(r.mem_total_bytes);
        b.opt(r.mem_used_bytes);
        b.opt(r.mem_available_bytes);
        b.opt(r.mem_used_percent);
        b.opt(r.swap_total_bytes);
        b.opt(r.swap_used_bytes);
        b.opt(r.swap_used_percent);
        b.f64(r.load1);
        b.f64(r.load5);
        b.f64(r.load15);
        b.val(r.uptime_s);
        b.val(r.process_count);
        b.f64(r.net_rx_bps);
        b.f64(r.net_tx_bps);
        b.f64(r.disk_read_bps);
        b.f64(r.disk_write_bps);
        b.opt(r.temperature_max_c);
        b.opt(r.agent_spool_pending);
        b.opt(r.agent_spool_dropped);

        let fs = &s.filesystems;
        b.array(fs.iter().map(|f| Some(f.mount.as_str())));
        b.array(fs.iter().map(|f| Some(f.fs_type.as_str())));
        b.array(fs.iter().map(|f| Some(f.total_bytes)));
        b.array(fs.iter().map(|f| Some(f.used_bytes)));
        b.array(fs.iter().map(|f| Some(f.free_bytes)));
        let d = &s.disks;
        b.array(d.iter().map(|d| Some(d.name.as_str())));
        b.array(d.iter().map(|d| d.read_bps));
        b.array(d.iter().map(|d| d.write_bps));
        let n = &s.interfaces;
        b.array(n.iter().map(|i| Some(i.name.as_str())));
        b.array(n.iter().map(|i| i.rx_bps));
        b.array(n.iter().map(|i| i.tx_bps));
        b.array(n.iter().map(|i| i.rx_errors_ps));
        b.array(n.iter().map(|i| i.tx_errors_ps));
        let t = &s.temperatures;
        b.array(t.iter().map(|t| Some(t.label.as_str())));
        b.array(t.iter().map(|t| Some(t.celsius)));
        // Top processes: those by CPU first, then those by memory; the count
        // of the first kind tells the two apart.
        let p = &s.processes;
        let top_cpu = p.iter().filter(|p| p.kind == "cpu").count();
        b.opt((!p.is_empty()).then(|| i16::try_from(top_cpu).unwrap_or(i16::MAX)));
        b.array(p.iter().map(|p| Some(p.pid)));
        b.array(p.iter().map(|p| Some(p.name.as_str())));
        b.array(p.iter().map(|p| p.cpu_percent));
        b.array(p.iter().map(|p| p.rss_bytes));
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_and_fields_agree() {
        assert_eq!(COLUMNS.split(',').count(), FIELDS as usize);
    }

    #[test]
    fn an_array_with_a_null_is_flagged_and_sized() {
        let mut b = Buf::new(0);
        let start = b.0.len();
        b.array([Some(1.5f32), None].into_iter());
        let f = &b.0[start..];
        let word = |i: usize| i32::from_be_bytes(f[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
        // length, ndim, has_null, oid, dim, lbound, elem len, elem, null
        assert_eq!(word(0), (f.len() - 4) as i32);
        assert_eq!(
            (word(1), word(2), word(3), word(4), word(5)),
            (1, 1, 700, 2, 1)
        );
        assert_eq!((word(6), word(8)), (4, -1));
    }
}
