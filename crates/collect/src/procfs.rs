//! Parsers for the few `/proc` files whose counters sysinfo does not expose
//! in the detail the snapshot needs: `/proc/stat` (iowait and the
//! user/system split), `/proc/diskstats` (per block device bytes) and
//! `/proc/net/dev` (per interface bytes and errors). Each is one read of a
//! small file per sample. The parsers take text so they are tested on fixed
//! inputs; a line they do not understand is skipped, never a panic.

/// Cumulative CPU time of one CPU line of `/proc/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub total: u64,
}

/// The aggregate line (`cpu`) and each core (`cpu0`, `cpu1`, …) in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub all: CpuTimes,
    pub cores: Vec<CpuTimes>,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let mut stat = Stat::default();
    let mut seen_all = false;
    for line in text.lines() {
        let mut parts = line.split_ascii_whitespace();
        let Some(label) = parts.next() else { continue };
        if !label.starts_with("cpu") {
            continue;
        }
        let v: Vec<u64> = parts.map_while(|p| p.parse().ok()).collect();
        if v.len() < 4 {
            continue;
        }
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        // user nice system idle iowait irq softirq steal (guest is inside user).
        let times = CpuTimes {
            user: at(0) + at(1),
            system: at(2) + at(5) + at(6),
            idle: at(3),
            iowait: at(4),
            total: (0..8).map(at).sum(),
        };
        if label == "cpu" {
            stat.all = times;
            seen_all = true;
        } else {
            stat.cores.push(times);
        }
    }
    seen_all.then_some(stat)
}

/// Shares of the interval between two readings, in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuShares {
    pub busy: f32,
    pub user: f32,
    pub system: f32,
    pub iowait: f32,
}

/// `None` when the counters did not move forward (no time passed, or they
/// were reset): no share is better than a wrong one.
pub fn cpu_shares(prev: &CpuTimes, cur: &CpuTimes) -> Option<CpuShares> {
    let total = cur.total.checked_sub(prev.total).filter(|t| *t > 0)? as f64;
    let d = |c: u64, p: u64| c.saturating_sub(p) as f64 / total * 100.0;
    let idle = d(cur.idle, prev.idle) + d(cur.iowait, prev.iowait);
    Some(CpuShares {
        busy: (100.0 - idle).clamp(0.0, 100.0) as f32,
        user: d(cur.user, prev.user) as f32,
        system: d(cur.system, prev.system) as f32,
        iowait: d(cur.iowait, prev.iowait) as f32,
    })
}

/// Bytes read and written by one block device since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskCounters {
    pub read_bytes: u64,
    pub written_bytes: u64,
}

/// `/proc/diskstats`: name → counters. Sectors there are always 512 bytes.
/// `keep` decides which devices count (whole disks, not partitions or loops).
pub fn parse_diskstats(text: &str, keep: impl Fn(&str) -> bool) -> Vec<(String, DiskCounters)> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            let name = *f.get(2)?;
            if !keep(name) {
                return None;
            }
            let sectors_read: u64 = f.get(5)?.parse().ok()?;
            let sectors_written: u64 = f.get(9)?.parse().ok()?;
            Some((
                name.to_owned(),
                DiskCounters {
                    read_bytes: sectors_read.saturating_mul(512),
                    written_bytes: sectors_written.saturating_mul(512),
                },
            ))
        })
        .collect()
}

/// One interface's counters since it appeared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// `/proc/net/dev`: name → counters, without the loopback interface.
pub fn parse_net_dev(text: &str) -> Vec<(String, NetCounters)> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest
                .split_ascii_whitespace()
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            if v.len() < 16 {
                return None;
            }
            Some((
                name.to_owned(),
                NetCounters {
                    rx_bytes: v[0],
                    rx_errors: v[2],
                    tx_bytes: v[8],
                    tx_errors: v[10],
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 20 3 2 0 0 0\n\
                        cpu0 50 2 25 400 10 1 1 0 0 0\n\
                        cpu1 50 3 25 400 10 2 1 0 0 0\n\
                        intr 12345 0 0\nctxt 999\nbtime 1790000000\n";

    #[test]
    fn parses_stat() {
        let s = parse_stat(STAT).expect("parses");
        assert_eq!(
            s.all,
            CpuTimes {
                user: 105,
                system: 55,
                idle: 800,
                iowait: 20,
                total: 980
            }
        );
        assert_eq!(s.cores.len(), 2);
        assert_eq!(s.cores[1].user, 53);
        assert_eq!(parse_stat("intr 1 2 3\n"), None);
    }

    #[test]
    fn cpu_shares_from_deltas() {
        let a = CpuTimes {
            user: 100,
            system: 50,
            idle: 800,
            iowait: 50,
            total: 1000,
        };
        let b = CpuTimes {
            user: 130,
            system: 60,
            idle: 850,
            iowait: 60,
            total: 1100,
        };
        let s = cpu_shares(&a, &b).expect("moved");
        assert_eq!((s.user, s.system, s.iowait), (30.0, 10.0, 10.0));
        assert_eq!(s.busy, 40.0);
        assert_eq!(cpu_shares(&a, &a), None, "no time passed");
        assert_eq!(cpu_shares(&b, &a), None, "counters went back (reset)");
    }

    #[test]
    fn parses_diskstats_keeping_whole_disks() {
        let text = "   8       0 sda 100 0 2000 50 300 0 4000 60 0 100 110\n\
                    \x20  8       1 sda1 90 0 1800 40 290 0 3900 50 0 90 90\n\
                    \x20  7       0 loop0 1 0 8 0 0 0 0 0 0 0 0\n\
                    \x20garbage line\n";
        let got = parse_diskstats(text, |n| n == "sda");
        assert_eq!(
            got,
            vec![(
                "sda".to_owned(),
                DiskCounters {
                    read_bytes: 2000 * 512,
                    written_bytes: 4000 * 512
                }
            )]
        );
    }

    #[test]
    fn parses_net_dev_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n\
            \x20   lo: 5000 50 0 0 0 0 0 0 5000 50 0 0 0 0 0 0\n\
            \x20 eth0: 123456 100 2 0 0 0 0 0 654321 90 1 0 0 0 0 0\n\
            \x20 bad0: 1 2 3\n";
        let got = parse_net_dev(text);
        assert_eq!(
            got,
            vec![(
                "eth0".to_owned(),
                NetCounters {
                    rx_bytes: 123456,
                    tx_bytes: 654321,
                    rx_errors: 2,
                    tx_errors: 1
                }
            )]
        );
    }
}
