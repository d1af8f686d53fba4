//! Rules: JSON round trips, validation naming the field, globs, durations.
use super::*;

fn cpu_rule() -> Rule {
    Rule {
        name: "cpu_high".into(),
        metric: Metric::Cpu,
        mount: None,
        op: Op::Gt,
        threshold: 90.0,
        clear: Some(80.0),
        for_: Duration::from_secs(30),
        severity: Severity::Critical,
        machines: vec!["web*".into()],
        exclude: vec!["web-canary".into()],
        repeat: Some(Duration::from_secs(900)),
        description: None,
    }
}

#[test]
fn json_round_trips_with_readable_durations() {
    let r = cpu_rule();
    let json = String::from_utf8(r.to_json()).expect("utf8");
    assert!(json.contains("\"for\":\"30s\"") && json.contains("\"repeat\":\"15m\""));
    assert_eq!(Rule::from_json(json.as_bytes()), Ok(r));
    let minimal = br#"{"name":"m","metric":"memory","threshold":95,"severity":"warning"}"#;
    let m = Rule::from_json(minimal).expect("defaults fill in");
    assert_eq!(
        (m.op, m.for_, m.machines),
        (Op::Gt, Duration::ZERO, vec!["*".into()])
    );
}

#[test]
fn every_metric_name_round_trips() {
    for m in Metric::ALL {
        let json = serde_json::to_string(&m).expect("ser");
        assert_eq!(json, format!("\"{}\"", m.name()));
        assert_eq!(serde_json::from_str::<Metric>(&json).expect("de"), m);
    }
}

#[test]
fn invalid_rules_name_the_field() {
    type Breaker = Box<dyn Fn(&mut Rule)>;
    let cases: Vec<(&str, Breaker)> = vec![
        ("name", Box::new(|r| r.name = "CPU High".into())),
        ("threshold", Box::new(|r| r.threshold = 150.0)),
        ("threshold", Box::new(|r| r.threshold = f64::NAN)),
        ("clear", Box::new(|r| r.clear = Some(95.0))),
        ("mount", Box::new(|r| r.mount = Some("/".into()))),
        (
            "mount",
            Box::new(|r| {
                r.metric = Metric::Disk;
                r.mount = Some("var".into());
            }),
        ),
        ("machines", Box::new(|r| r.machines = vec!["Web.*".into()])),
        ("machines", Box::new(|r| r.machines.clear())),
        ("exclude", Box::new(|r| r.exclude = vec![String::new()])),
        ("repeat", Box::new(|r| r.repeat = Some(Duration::ZERO))),
        (
            "for",
            Box::new(|r| r.for_ = Duration::from_secs(30 * 86_400)),
        ),
    ];
    for (field, break_it) in cases {
        let mut r = cpu_rule();
        break_it(&mut r);
        let e = r.validate().expect_err(field);
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
    }
    let mut lower = cpu_rule();
    (lower.op, lower.threshold, lower.clear) = (Op::Lt, 10.0, Some(5.0));
    assert_eq!(lower.validate().expect_err("clear").field, "clear");
    let mut silent = cpu_rule();
    (silent.metric, silent.threshold, silent.clear) = (Metric::Silent, 0.0, None);
    assert_eq!(silent.validate().expect_err("silent").field, "threshold");
    let bad_metric = br#"{"name":"x","metric":"cpux","threshold":1,"severity":"info"}"#;
    assert!(
        Rule::from_json(bad_metric)
            .expect_err("metric")
            .contains("cpux")
    );
}

#[test]
fn globs_include_and_exclude() {
    let r = cpu_rule();
    assert!(r.applies_to("web01"));
    assert!(!r.applies_to("web-canary"));
    assert!(!r.applies_to("db01"));
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b?c", "axxxbyc"));
    assert!(!glob_match("a*b?c", "axxxbc"));
    assert!(glob_match("*-east-*", "db-east-2"));
    assert!(is_plain_token("web01") && !is_plain_token("web*"));
}

#[test]
fn durations_parse_and_print() {
    for (s, ms) in [
        ("30s", 30_000),
        ("5m", 300_000),
        ("250ms", 250),
        ("2h", 7_200_000),
        ("45", 45_000),
    ] {
        assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
    }
    assert!(parse_duration("5 minutes").is_err());
    assert!(parse_duration("").is_err());
    assert_eq!(format_duration(Duration::from_millis(90_000)), "90s");
    assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
}
