//! A Snapshot read straight from its protobuf bytes, without building the
//! prost structs: strings stay where they are in the payload (as byte
//! ranges) and the repeated parts go into vectors that are reused from one
//! snapshot to the next, so a snapshot costs no allocation at all. Decoding
//! with prost and then copying every name into COPY's buffer took about a
//! third of the persister's CPU (`just bench ingest`).
//!
//! It accepts and refuses what prost does for `sysmonstm.v1.Snapshot`
//! (tested against prost below): unknown fields, groups included, are
//! skipped; a known field with the wrong wire type, a truncated value or a
//! string that is not UTF-8 is an error; a field seen twice keeps the last
//! value, a message field seen twice is merged, and repeated floats come
//! packed or not.

use std::ops::Range;

/// Why the bytes are not a Snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub &'static str);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

type R<T> = Result<T, WireError>;

/// A string of the payload, by position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Str {
    start: u32,
    end: u32,
}

impl Str {
    /// The text in `payload` (the one it was read from; already checked to
    /// be UTF-8).
    pub fn of<'a>(&self, payload: &'a [u8]) -> &'a str {
        std::str::from_utf8(&payload[self.start as usize..self.end as usize]).unwrap_or_default()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub usage_percent: f32,
    pub user_percent: Option<f32>,
    pub system_percent: Option<f32>,
    pub iowait_percent: Option<f32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub swap_total_bytes: u64,
    pub swap_used_bytes: u64,
    pub swap_free_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Agent {
    pub spool_pending: u64,
    pub spool_dropped: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filesystem {
    pub mount: Str,
    pub fs_type: Str,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Disk {
    pub name: Str,
    pub read_bytes_per_s: Option<f32>,
    pub write_bytes_per_s: Option<f32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetInterface {
    pub name: Str,
    pub rx_bytes_per_s: Option<f32>,
    pub tx_bytes_per_s: Option<f32>,
    pub rx_errors_per_s: Option<f32>,
    pub tx_errors_per_s: Option<f32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Process {
    pub pid: u32,
    pub name: Str,
    pub cpu_percent: f32,
    pub rss_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Temperature {
    pub label: Str,
    pub celsius: f32,
}

/// One Snapshot, by the positions of its strings in the payload it was
/// [`parse`](Self::parse)d from. Absent message fields are `None`, as with
/// prost.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub machine_id: Str,
    pub seq: u64,
    pub timestamp_ms: i64,
    pub interval_ms: u32,
    pub cpu: Option<Cpu>,
    pub per_core_percent: Vec<f32>,
    pub memory: Option<Memory>,
    pub load: Option<Load>,
    pub uptime_s: u64,
    pub process_count: u32,
    pub filesystems: Vec<Filesystem>,
    pub disks: Vec<Disk>,
    pub interfaces: Vec<NetInterface>,
    pub top_cpu: Vec<Process>,
    pub top_memory: Vec<Process>,
    pub temperatures: Vec<Temperature>,
    pub agent: Option<Agent>,
}

impl Snapshot {
    /// Reads `payload` into `self`, reusing its vectors. On an error `self`
    /// holds a partial snapshot; parse again before using it.
    pub fn parse(&mut self, payload: &[u8]) -> R<()> {
        if payload.len() > u32::MAX as usize {
            return Err(WireError("payload too large"));
        }
        self.clear();
        let mut r = Reader::new(payload, 0..payload.len());
        while let Some((field, v)) = r.next()? {
            match field {
                1 => self.machine_id = v.string(payload)?,
                2 => self.seq = v.varint()?,
                3 => self.timestamp_ms = v.varint()? as i64,
                4 => self.interval_ms = v.varint()? as u32,
                5 => {
                    let mut c = self.cpu.unwrap_or_default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => c.usage_percent = v.fixed32()?,
                            2 => v.floats(payload, &mut self.per_core_percent)?,
                            3 => c.user_percent = Some(v.fixed32()?),
                            4 => c.system_percent = Some(v.fixed32()?),
                            5 => c.iowait_percent = Some(v.fixed32()?),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.cpu = Some(c);
                }
                6 => {
                    let mut x = self.memory.unwrap_or_default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.total_bytes = v.varint()?,
                            2 => x.used_bytes = v.varint()?,
                            3 => x.available_bytes = v.varint()?,
                            4 => x.swap_total_bytes = v.varint()?,
                            5 => x.swap_used_bytes = v.varint()?,
                            6 => x.swap_free_bytes = v.varint()?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.memory = Some(x);
                }
                7 => {
                    let mut x = self.load.unwrap_or_default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.one = v.fixed64()?,
                            2 => x.five = v.fixed64()?,
                            3 => x.fifteen = v.fixed64()?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.load = Some(x);
                }
                8 => self.uptime_s = v.varint()?,
                9 => self.process_count = v.varint()? as u32,
                10 => {
                    let mut x = Filesystem::default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.mount = v.string(payload)?,
                            2 => x.fs_type = v.string(payload)?,
                            3 => x.total_bytes = v.varint()?,
                            4 => x.used_bytes = v.varint()?,
                            5 => x.free_bytes = v.varint()?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.filesystems.push(x);
                }
                11 => {
                    let mut x = Disk::default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.name = v.string(payload)?,
                            2 => x.read_bytes_per_s = Some(v.fixed32()?),
                            3 => x.write_bytes_per_s = Some(v.fixed32()?),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.disks.push(x);
                }
                12 => {
                    let mut x = NetInterface::default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.name = v.string(payload)?,
                            2 => x.rx_bytes_per_s = Some(v.fixed32()?),
                            3 => x.tx_bytes_per_s = Some(v.fixed32()?),
                            4 => x.rx_errors_per_s = Some(v.fixed32()?),
                            5 => x.tx_errors_per_s = Some(v.fixed32()?),
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.interfaces.push(x);
                }
                13 | 14 => {
                    let mut x = Process::default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.pid = v.varint()? as u32,
                            2 => x.name = v.string(payload)?,
                            3 => x.cpu_percent = v.fixed32()?,
                            4 => x.rss_bytes = v.varint()?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    if field == 13 {
                        self.top_cpu.push(x);
                    } else {
                        self.top_memory.push(x);
                    }
                }
                15 => {
                    let mut x = Temperature::default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.label = v.string(payload)?,
                            2 => x.celsius = v.fixed32()?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.temperatures.push(x);
                }
                16 => {
                    let mut x = self.agent.unwrap_or_default();
                    fields(payload, &v, |f, v| {
                        match f {
                            1 => x.spool_pending = v.varint()?,
                            2 => x.spool_dropped = v.varint()?,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    self.agent = Some(x);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.machine_id = Str::default();
        self.seq = 0;
        self.timestamp_ms = 0;
        self.interval_ms = 0;
        self.cpu = None;
        self.per_core_percent.clear();
        self.memory = None;
        self.load = None;
        self.uptime_s = 0;
        self.process_count = 0;
        self.filesystems.clear();
        self.disks.clear();
        self.interfaces.clear();
        self.top_cpu.clear();
        self.top_memory.clear();
        self.temperatures.clear();
        self.agent = None;
    }
}

/// Calls `each` with every field of the message `v` (a length-delimited
/// value of `payload`).
fn fields(payload: &[u8], v: &Value, mut each: impl FnMut(u32, Value) -> R<()>) -> R<()> {
    let mut m = Reader::new(payload, v.len()?);
    while let Some((f, v)) = m.next()? {
        each(f, v)?;
    }
    Ok(())
}

/// A field's value as it came on the wire; a known field checks its wire
/// type when it is read as the type it should be (as prost does). Unknown
/// fields are never read, so their wire type does not matter.
enum Value {
    Varint(u64),
    Fixed64(u64),
    Len(Range<usize>),
    Fixed32(u32),
    /// A group, skipped whole; no known field is one.
    Group,
}

const WRONG_TYPE: WireError = WireError("invalid wire type for a known field");

impl Value {
    fn varint(&self) -> R<u64> {
        match self {
            Value::Varint(v) => Ok(*v),
            _ => Err(WRONG_TYPE),
        }
    }
    fn fixed32(&self) -> R<f32> {
        match self {
            Value::Fixed32(v) => Ok(f32::from_bits(*v)),
            _ => Err(WRONG_TYPE),
        }
    }
    fn fixed64(&self) -> R<f64> {
        match self {
            Value::Fixed64(v) => Ok(f64::from_bits(*v)),
            _ => Err(WRONG_TYPE),
        }
    }
    fn len(&self) -> R<Range<usize>> {
        match self {
            Value::Len(r) => Ok(r.clone()),
            _ => Err(WRONG_TYPE),
        }
    }
    fn string(&self, payload: &[u8]) -> R<Str> {
        let r = self.len()?;
        std::str::from_utf8(&payload[r.clone()])
            .map_err(|_| WireError("invalid string value: data is not UTF-8 encoded"))?;
        // The payload is at most u32::MAX bytes long (checked in parse).
        Ok(Str {
            start: r.start as u32,
            end: r.end as u32,
        })
    }
    /// A repeated float: packed (one length-delimited run) or one value.
    fn floats(&self, payload: &[u8], out: &mut Vec<f32>) -> R<()> {
        match self {
            Value::Fixed32(v) => out.push(f32::from_bits(*v)),
            Value::Len(r) => {
                let run = &payload[r.clone()];
                if run.len() % 4 != 0 {
                    return Err(WireError("packed float run is not a multiple of 4 bytes"));
                }
                out.extend(
                    run.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
            }
            _ => return Err(WRONG_TYPE),
        }
        Ok(())
    }
}

/// Walks the fields of one message: `payload[range]`.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

const TRUNCATED: WireError = WireError("buffer underflow: value runs past the end");

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], range: Range<usize>) -> Self {
        Self {
            buf,
            pos: range.start,
            end: range.end,
        }
    }

    fn varint(&mut self) -> R<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf[..self.end].get(self.pos) else {
                return Err(TRUNCATED);
            };
            self.pos += 1;
            // The tenth byte holds the 64th bit only.
            if i == 9 && b > 1 {
                return Err(WireError("invalid varint"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(WireError("invalid varint"))
    }

    fn take(&mut self, n: usize) -> R<Range<usize>> {
        let start = self.pos;
        let end = start
            .checked_add(n)
            .filter(|e| *e <= self.end)
            .ok_or(TRUNCATED)?;
        self.pos = end;
        Ok(start..end)
    }

    fn fixed(&mut self, n: usize) -> R<u64> {
        let r = self.take(n)?;
        Ok(self.buf[r]
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    /// The field number and wire type of the next key.
    fn key(&mut self) -> R<(u32, u8)> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(WireError("invalid key value"));
        }
        let wire = (key & 7) as u8;
        let field = (key as u32) >> 3;
        if wire > 5 {
            return Err(WireError("invalid wire type value"));
        }
        if field == 0 {
            return Err(WireError("invalid tag value: 0"));
        }
        Ok((field, wire))
    }

    /// The next field, `None` at the end. Groups (deprecated, never in this
    /// schema) are skipped whole.
    fn next(&mut self) -> R<Option<(u32, Value)>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let (field, wire) = self.key()?;
        let v = match wire {
            0 => Value::Varint(self.varint()?),
            1 => Value::Fixed64(self.fixed(8)?),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| TRUNCATED)?;
                Value::Len(self.take(n)?)
            }
            3 => {
                self.skip_group(field)?;
                Value::Group
            }
            4 => return Err(WireError("unexpected end group tag")),
            _ => Value::Fixed32(self.fixed(4)? as u32),
        };
        Ok(Some((field, v)))
    }

    /// Skips to the end of the group `field` whose start was just read,
    /// nested groups included, as deep as prost goes (100).
    fn skip_group(&mut self, field: u32) -> R<()> {
        let mut open = [0u32; 100];
        open[0] = field;
        let mut depth = 1;
        while depth > 0 {
            if self.pos >= self.end {
                return Err(TRUNCATED);
            }
            let (f, wire) = self.key()?;
            match wire {
                0 => {
                    self.varint()?;
                }
                1 => {
                    self.take(8)?;
                }
                2 => {
                    let n = usize::try_from(self.varint()?).map_err(|_| TRUNCATED)?;
                    self.take(n)?;
                }
                3 => {
                    *open
                        .get_mut(depth)
                        .ok_or(WireError("recursion limit reached"))? = f;
                    depth += 1;
                }
                4 if f == open[depth - 1] => depth -= 1,
                4 => return Err(WireError("unexpected end group tag")),
                _ => {
                    self.take(4)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use sysmonstm_schemas::v1;

    /// The prost form of what [`Snapshot::parse`] read: equal to prost's
    /// own decoding when both read the same bytes the same way.
    fn to_prost(s: &Snapshot, p: &[u8]) -> v1::Snapshot {
        let proc = |x: &Process| v1::Process {
            pid: x.pid,
            name: x.name.of(p).into(),
            cpu_percent: x.cpu_percent,
            rss_bytes: x.rss_bytes,
        };
        v1::Snapshot {
            machine_id: s.machine_id.of(p).into(),
            seq: s.seq,
            timestamp_ms: s.timestamp_ms,
            interval_ms: s.interval_ms,
            cpu: s.cpu.map(|c| v1::Cpu {
                usage_percent: c.usage_percent,
                per_core_percent: s.per_core_percent.clone(),
                user_percent: c.user_percent,
                system_percent: c.system_percent,
                iowait_percent: c.iowait_percent,
            }),
            memory: s.memory.map(|m| v1::Memory {
                total_bytes: m.total_bytes,
                used_bytes: m.used_bytes,
                available_bytes: m.available_bytes,
                swap_total_bytes: m.swap_total_bytes,
                swap_used_bytes: m.swap_used_bytes,
                swap_free_bytes: m.swap_free_bytes,
            }),
            load: s.load.map(|l| v1::Load {
                one: l.one,
                five: l.five,
                fifteen: l.fifteen,
            }),
            uptime_s: s.uptime_s,
            process_count: s.process_count,
            filesystems: s
                .filesystems
                .iter()
                .map(|f| v1::Filesystem {
                    mount: f.mount.of(p).into(),
                    fs_type: f.fs_type.of(p).into(),
                    total_bytes: f.total_bytes,
                    used_bytes: f.used_bytes,
                    free_bytes: f.free_bytes,
                })
                .collect(),
            disks: s
                .disks
                .iter()
                .map(|d| v1::Disk {
                    name: d.name.of(p).into(),
                    read_bytes_per_s: d.read_bytes_per_s,
                    write_bytes_per_s: d.write_bytes_per_s,
                })
                .collect(),
            interfaces: s
                .interfaces
                .iter()
                .map(|i| v1::NetInterface {
                    name: i.name.of(p).into(),
                    rx_bytes_per_s: i.rx_bytes_per_s,
                    tx_bytes_per_s: i.tx_bytes_per_s,
                    rx_errors_per_s: i.rx_errors_per_s,
                    tx_errors_per_s: i.tx_errors_per_s,
                })
                .collect(),
            top_cpu: s.top_cpu.iter().map(proc).collect(),
            top_memory: s.top_memory.iter().map(proc).collect(),
            temperatures: s
                .temperatures
                .iter()
                .map(|t| v1::Temperature {
                    label: t.label.of(p).into(),
                    celsius: t.celsius,
                })
                .collect(),
            agent: s.agent.map(|a| v1::AgentStatus {
                spool_pending: a.spool_pending,
                spool_dropped: a.spool_dropped,
            }),
        }
    }

    /// Both readers on the same bytes: the same answer, or both refuse.
    fn same_as_prost(bytes: &[u8], s: &mut Snapshot) {
        let theirs = v1::Snapshot::decode(bytes);
        let ours = s.parse(bytes);
        match (&theirs, &ours) {
            // Compared encoded, so a NaN equals itself.
            (Ok(t), Ok(())) => assert_eq!(
                to_prost(s, bytes).encode_to_vec(),
                t.encode_to_vec(),
                "{:?} != {t:?}, bytes {bytes:02x?}",
                to_prost(s, bytes)
            ),
            (Err(_), Err(_)) => {}
            _ => panic!("prost {theirs:?}, ours {ours:?}, bytes {bytes:02x?}"),
        }
    }

    /// xorshift64*: reproducible variety without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn f32(&mut self) -> f32 {
            (self.below(1_000_000) as f32) / 7.0
        }
        fn opt(&mut self) -> Option<f32> {
            (self.below(3) > 0).then(|| self.f32())
        }
        fn text(&mut self) -> String {
            let words = [
                "", "/", "eth0", "lo", "nvme0n1", "/var/lib", "äöü", "日本", "x y",
            ];
            words[self.below(words.len() as u64) as usize].repeat(1 + self.below(3) as usize)
        }
        fn u64(&mut self) -> u64 {
            // Small, large and the extremes, to vary the varints' lengths.
            match self.below(4) {
                0 => self.below(200),
                1 => self.next() >> self.below(64),
                2 => u64::MAX,
                _ => 0,
            }
        }
    }

    fn random_snapshot(r: &mut Rng) -> v1::Snapshot {
        let n = |r: &mut Rng| r.below(4) as usize;
        let proc = |r: &mut Rng| v1::Process {
            pid: r.u64() as u32,
            name: r.text(),
            cpu_percent: r.f32(),
            rss_bytes: r.u64(),
        };
        v1::Snapshot {
            machine_id: r.text(),
            seq: r.u64(),
            timestamp_ms: r.u64() as i64,
            interval_ms: r.u64() as u32,
            cpu: (r.below(4) > 0).then(|| v1::Cpu {
                usage_percent: r.f32(),
                per_core_percent: (0..r.below(9)).map(|_| r.f32()).collect(),
                user_percent: r.opt(),
                system_percent: r.opt(),
                iowait_percent: r.opt(),
            }),
            memory: (r.below(4) > 0).then(|| v1::Memory {
                total_bytes: r.u64(),
                used_bytes: r.u64(),
                available_bytes: r.u64(),
                swap_total_bytes: r.u64(),
                swap_used_bytes: r.u64(),
                swap_free_bytes: r.u64(),
            }),
            load: (r.below(4) > 0).then(|| v1::Load {
                one: f64::from(r.f32()),
                five: -1.5,
                fifteen: f64::MAX,
            }),
            uptime_s: r.u64(),
            process_count: r.u64() as u32,
            filesystems: (0..n(r))
                .map(|_| v1::Filesystem {
                    mount: r.text(),
                    fs_type: r.text(),
                    total_bytes: r.u64(),
                    used_bytes: r.u64(),
                    free_bytes: r.u64(),
                })
                .collect(),
            disks: (0..n(r))
                .map(|_| v1::Disk {
                    name: r.text(),
                    read_bytes_per_s: r.opt(),
                    write_bytes_per_s: r.opt(),
                })
                .collect(),
            interfaces: (0..n(r))
                .map(|_| v1::NetInterface {
                    name: r.text(),
                    rx_bytes_per_s: r.opt(),
                    tx_bytes_per_s: r.opt(),
                    rx_errors_per_s: r.opt(),
                    tx_errors_per_s: r.opt(),
                })
                .collect(),
            top_cpu: (0..n(r)).map(|_| proc(r)).collect(),
            top_memory: (0..n(r)).map(|_| proc(r)).collect(),
            temperatures: (0..n(r))
                .map(|_| v1::Temperature {
                    label: r.text(),
                    celsius: r.f32(),
                })
                .collect(),
            agent: (r.below(2) > 0).then(|| v1::AgentStatus {
                spool_pending: r.u64(),
                spool_dropped: r.u64(),
            }),
        }
    }

    fn key(field: u32, wire: u8) -> Vec<u8> {
        let mut v = Vec::new();
        prost::encoding::encode_varint(u64::from(field << 3 | u32::from(wire)), &mut v);
        v
    }

    #[test]
    fn reads_what_prost_writes() {
        let mut r = Rng(0x5eed);
        let mut s = Snapshot::default();
        for _ in 0..2000 {
            let bytes = random_snapshot(&mut r).encode_to_vec();
            s.parse(&bytes).expect("valid");
            assert_eq!(
                to_prost(&s, &bytes),
                v1::Snapshot::decode(&bytes[..]).expect("valid")
            );
        }
    }

    #[test]
    fn merges_repeats_and_skips_unknown_fields_as_prost_does() {
        let mut r = Rng(42);
        let mut s = Snapshot::default();
        // Unknown fields of every wire type, a group with a nested group
        // among them, in the snapshot and inside a known message.
        let mut unknown = Vec::new();
        unknown.extend(key(99, 0));
        unknown.push(5);
        unknown.extend(key(98, 1));
        unknown.extend([1; 8]);
        unknown.extend(key(97, 2));
        unknown.extend([3, b'a', b'b', b'c']);
        unknown.extend(key(96, 5));
        unknown.extend([2; 4]);
        unknown.extend(key(95, 3));
        unknown.extend(key(94, 3));
        unknown.extend(key(1, 0));
        unknown.push(1);
        unknown.extend(key(94, 4));
        unknown.extend(key(95, 4));
        for _ in 0..300 {
            let a = random_snapshot(&mut r).encode_to_vec();
            let b = random_snapshot(&mut r).encode_to_vec();
            // Two messages back to back are one, merged.
            same_as_prost(&[a.clone(), b.clone()].concat(), &mut s);
            same_as_prost(
                &[unknown.clone(), a.clone(), unknown.clone()].concat(),
                &mut s,
            );
            // A cpu message with unknown fields and unpacked cores.
            let mut cpu = unknown.clone();
            for c in [1.5f32, 2.5] {
                cpu.extend(key(2, 5));
                cpu.extend(c.to_le_bytes());
            }
            let mut m = a.clone();
            m.extend(key(5, 2));
            m.push(cpu.len() as u8);
            m.extend(&cpu);
            same_as_prost(&m, &mut s);
        }
    }

    #[test]
    fn refuses_what_prost_refuses() {
        let mut r = Rng(7);
        let mut s = Snapshot::default();
        for _ in 0..40 {
            let bytes = random_snapshot(&mut r).encode_to_vec();
            // Every truncation.
            for end in 0..bytes.len() {
                same_as_prost(&bytes[..end], &mut s);
            }
            // Every byte changed to values that break keys, lengths and
            // wire types.
            for i in 0..bytes.len() {
                for v in [0x00, 0x07, 0x0b, 0x0c, 0x7f, 0x80, 0xff, bytes[i] ^ 0x02] {
                    let mut b = bytes.clone();
                    b[i] = v;
                    same_as_prost(&b, &mut s);
                }
            }
        }
        // Not UTF-8; a ten-byte varint with too much in its last byte;
        // an end group where none was opened; groups nested too deep.
        same_as_prost(&[0x0a, 0x02, 0xc3, 0x28], &mut s);
        let mut v = vec![0x10];
        v.extend([0xff; 9]);
        v.push(0x02);
        same_as_prost(&v, &mut s);
        same_as_prost(&key(99, 4), &mut s);
        // A known field sent as a group.
        same_as_prost(&[key(2, 3), key(2, 4)].concat(), &mut s);
        let deep: Vec<u8> = (0..200).flat_map(|_| key(99, 3)).collect();
        assert!(s.parse(&deep).is_err());
    }

    /// The same comparison with proptest: arbitrary bytes, arbitrary valid
    /// Snapshots (any strings, any numbers, NaN and infinities included), and
    /// valid ones damaged at an arbitrary place. Failures shrink to a small
    /// case.
    mod props {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        fn f32s() -> impl Strategy<Value = f32> {
            prop_oneof![any::<f32>(), Just(f32::NAN), Just(f32::INFINITY), Just(0.0)]
        }

        fn process() -> impl Strategy<Value = v1::Process> {
            (any::<u32>(), ".{0,12}", f32s(), any::<u64>()).prop_map(
                |(pid, name, cpu_percent, rss_bytes)| v1::Process {
                    pid,
                    name,
                    cpu_percent,
                    rss_bytes,
                },
            )
        }

        prop_compose! {
            fn cpu()(
                usage_percent in f32s(),
                per_core_percent in vec(f32s(), 0..6),
                user_percent in proptest::option::of(f32s()),
                system_percent in proptest::option::of(f32s()),
                iowait_percent in proptest::option::of(f32s()),
            ) -> v1::Cpu {
                v1::Cpu { usage_percent, per_core_percent, user_percent, system_percent, iowait_percent }
            }
        }

        prop_compose! {
            fn devices()(
                filesystems in vec((".{0,8}", ".{0,5}", any::<u64>(), any::<u64>(), any::<u64>())
                    .prop_map(|(mount, fs_type, total_bytes, used_bytes, free_bytes)| v1::Filesystem {
                        mount, fs_type, total_bytes, used_bytes, free_bytes,
                    }), 0..3),
                disks in vec((".{0,8}", proptest::option::of(f32s()), proptest::option::of(f32s()))
                    .prop_map(|(name, read_bytes_per_s, write_bytes_per_s)| v1::Disk {
                        name, read_bytes_per_s, write_bytes_per_s,
                    }), 0..3),
                interfaces in vec((".{0,8}", proptest::option::of(f32s()), proptest::option::of(f32s()))
                    .prop_map(|(name, rx_bytes_per_s, tx_bytes_per_s)| v1::NetInterface {
                        name, rx_bytes_per_s, tx_bytes_per_s, ..Default::default()
                    }), 0..3),
                temperatures in vec((".{0,8}", f32s())
                    .prop_map(|(label, celsius)| v1::Temperature { label, celsius }), 0..3),
                top_cpu in vec(process(), 0..3),
                top_memory in vec(process(), 0..3),
            ) -> v1::Snapshot {
                v1::Snapshot { filesystems, disks, interfaces, temperatures, top_cpu, top_memory, ..Default::default() }
            }
        }

        prop_compose! {
            fn snapshot()(
                machine_id in ".{0,20}",
                (seq, timestamp_ms, interval_ms, uptime_s, process_count) in
                    (any::<u64>(), any::<i64>(), any::<u32>(), any::<u64>(), any::<u32>()),
                cpu in proptest::option::of(cpu()),
                memory in proptest::option::of(vec(any::<u64>(), 6)),
                load in proptest::option::of((any::<f64>(), any::<f64>(), any::<f64>())),
                agent in proptest::option::of((any::<u64>(), any::<u64>())),
                devices in devices(),
            ) -> v1::Snapshot {
                v1::Snapshot {
                    machine_id, seq, timestamp_ms, interval_ms, uptime_s, process_count, cpu,
                    memory: memory.map(|m| v1::Memory {
                        total_bytes: m[0], used_bytes: m[1], available_bytes: m[2],
                        swap_total_bytes: m[3], swap_used_bytes: m[4], swap_free_bytes: m[5],
                    }),
                    load: load.map(|(one, five, fifteen)| v1::Load { one, five, fifteen }),
                    agent: agent.map(|(spool_pending, spool_dropped)| v1::AgentStatus { spool_pending, spool_dropped }),
                    ..devices
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_bytes_are_read_as_prost_reads_them(bytes in vec(any::<u8>(), 0..300)) {
                same_as_prost(&bytes, &mut Snapshot::default());
            }

            #[test]
            fn arbitrary_valid_snapshots_read_back_exactly(snap in snapshot()) {
                let bytes = snap.encode_to_vec();
                let mut s = Snapshot::default();
                prop_assert!(s.parse(&bytes).is_ok());
                // Compared encoded, so a NaN equals itself.
                prop_assert_eq!(to_prost(&s, &bytes).encode_to_vec(), bytes);
            }

            #[test]
            fn damaged_snapshots_are_refused_or_read_as_prost_reads_them(
                snap in snapshot(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = snap.encode_to_vec();
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                    let end = cut.index(bytes.len() + 1);
                    same_as_prost(&bytes, &mut Snapshot::default());
                    same_as_prost(&bytes[..end], &mut Snapshot::default());
                }
            }

            /// One reader reused across messages (as the persister does)
            /// keeps nothing of the previous one.
            #[test]
            fn a_reused_reader_forgets_the_previous_snapshot(a in snapshot(), b in snapshot()) {
                let mut s = Snapshot::default();
                let (a, b) = (a.encode_to_vec(), b.encode_to_vec());
                prop_assert!(s.parse(&a).is_ok());
                prop_assert!(s.parse(&b).is_ok());
                prop_assert_eq!(to_prost(&s, &b).encode_to_vec(), b);
            }
        }
    }
}
