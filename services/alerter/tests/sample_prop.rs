//! Property tests of the alerter's edge: whatever bytes arrive on whatever
//! subject, `sample::accept` answers (a snapshot or a reason) without
//! panicking, and a sample made from any snapshot, however extreme its
//! numbers, gives every rule a finite value or none.

use proptest::prelude::*;
use prost::Message as _;
use sysmonstm_alerter::sample::{self, Sample};
use sysmonstm_schemas::accept::{Limits, Reject};
use sysmonstm_schemas::rules::{Metric, Op, Rule, Severity};
use sysmonstm_schemas::v1;

const NOW: i64 = 1_800_000_000_000;

fn rules() -> Vec<Rule> {
    Metric::ALL
        .iter()
        .map(|&metric| Rule {
            name: metric.name().to_owned(),
            metric,
            mount: None,
            op: Op::Gt,
            threshold: 1.0,
            clear: None,
            for_: std::time::Duration::ZERO,
            severity: Severity::Info,
            machines: vec!["*".into()],
            exclude: vec![],
            repeat: None,
            description: None,
        })
        .collect()
}

fn any_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<f32>(),
        Just(f32::NAN),
        Just(f32::INFINITY),
        Just(f32::NEG_INFINITY),
        Just(f32::MAX),
        -1e3f32..1e3f32,
    ]
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::MAX),
        -1e3f64..1e3f64,
    ]
}

prop_compose! {
    fn snapshot()(
        cpu in any_f32(),
        cores in prop::collection::vec(any_f32(), 0..8),
        load in (any_f64(), any_f64(), any_f64()),
        used in any::<u64>(), total in any::<u64>(),
        swap in (any::<u64>(), any::<u64>()),
        rates in prop::collection::vec((any_f32(), any_f32()), 0..4),
        temps in prop::collection::vec(any_f32(), 0..4),
        fs in prop::collection::vec((any::<u64>(), any::<u64>()), 0..4),
        processes in any::<u32>(),
        ts in any::<i64>(), interval in any::<u32>(),
    ) -> v1::Snapshot {
        v1::Snapshot {
            machine_id: "web01".into(),
            timestamp_ms: ts,
            interval_ms: interval,
            cpu: Some(v1::Cpu { usage_percent: cpu, per_core_percent: cores, ..Default::default() }),
            memory: Some(v1::Memory {
                used_bytes: used, total_bytes: total,
                swap_used_bytes: swap.0, swap_total_bytes: swap.1,
                ..Default::default()
            }),
            load: Some(v1::Load { one: load.0, five: load.1, fifteen: load.2 }),
            interfaces: rates.iter().enumerate().map(|(i, (rx, tx))| v1::NetInterface {
                name: format!("eth{i}"), rx_bytes_per_s: Some(*rx), tx_bytes_per_s: Some(*tx),
                ..Default::default()
            }).collect(),
            disks: rates.iter().enumerate().map(|(i, (r, w))| v1::Disk {
                name: format!("sd{i}"), read_bytes_per_s: Some(*r), write_bytes_per_s: Some(*w),
            }).collect(),
            temperatures: temps.iter().map(|c| v1::Temperature { label: "t".into(), celsius: *c }).collect(),
            filesystems: fs.iter().enumerate().map(|(i, (u, t))| v1::Filesystem {
                mount: format!("/m{i}"), used_bytes: *u, total_bytes: *t, ..Default::default()
            }).collect(),
            process_count: processes,
            ..Default::default()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_on_any_subject_are_a_snapshot_or_a_reason(
        payload in prop::collection::vec(any::<u8>(), 0..512),
        subject in prop_oneof![
            Just("sysmon.metrics.web01".to_owned()),
            "sysmon\\.metrics\\.[a-zA-Z0-9_.-]{0,20}",
            ".{0,40}",
        ],
    ) {
        match sample::accept(&subject, &payload, NOW, &Limits::default()) {
            Ok(snap) => {
                let s = Sample::from_snapshot(&snap);
                for r in rules() {
                    if let Some((v, _)) = s.value(&r) {
                        prop_assert!(v.is_finite());
                    }
                }
            }
            Err(r) => prop_assert!(Reject::REASONS.contains(&r.reason())),
        }
    }

    #[test]
    fn any_snapshot_gives_every_rule_a_finite_value_or_none(snap in snapshot()) {
        let bytes = snap.encode_to_vec();
        // The edge never panics, whatever the timestamp and interval.
        let _ = sample::accept("sysmon.metrics.web01", &bytes, NOW, &Limits::default());
        let s = Sample::from_snapshot(&snap);
        for r in rules() {
            if let Some((v, _)) = s.value(&r) {
                prop_assert!(v.is_finite(), "{}: {v}", r.metric);
            }
        }
    }
}
