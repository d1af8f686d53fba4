//! Property tests of the rules-file parser: any text (random, or shaped
//! like a rules file) is rules or an error, never a panic; and every valid
//! rule written as a rules file reads back as the same rule.

use std::time::Duration;

use proptest::prelude::*;
use sysmonstm_schemas::rules::file::{parse, to_toml};
use sysmonstm_schemas::rules::{Metric, Op, Rule, Severity};

/// Text that looks like a rules file: known and unknown keys, values of
/// every TOML kind and of the wrong kind, tables, broken lines.
fn tomlish() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("metric"),
        Just("op"),
        Just("threshold"),
        Just("clear"),
        Just("for"),
        Just("severity"),
        Just("machines"),
        Just("exclude"),
        Just("repeat"),
        Just("mount"),
        Just("description"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        "\"[a-z0-9_*?/ .>=<-]{0,12}\"",
        "-?[0-9]{1,25}(\\.[0-9]{0,5})?(e-?[0-9]{1,3})?",
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        Just("true".to_owned()),
        "\\[(\"[a-z*?]{0,5}\", ?){0,3}\\]",
        Just("\"18446744073709551616d\"".to_owned()),
        Just("\"99999999999999999999ms\"".to_owned()),
        Just("{ a = 1 }".to_owned()),
        "[\\[\\]{}=\"]{1,4}",
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => Just("[[rule]]".to_owned()),
        1 => Just("[rule]".to_owned()),
        1 => ".{0,20}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}

fn metric() -> impl Strategy<Value = Metric> {
    (0..Metric::ALL.len()).prop_map(|i| Metric::ALL[i])
}

fn glob() -> impl Strategy<Value = String> {
    "[a-z0-9_*?-]{1,12}"
}

prop_compose! {
    fn valid_rule()(
        name in "[a-z0-9_-]{1,60}",
        metric in metric(),
        op_i in 0..4usize,
        unit in 0.0f64..=1.0,
        big in -1e9f64..1e9,
        clear_by in prop::option::of(0.0f64..50.0),
        mount in prop::option::of("/[a-z0-9/]{0,10}"),
        for_ms in 0u64..=7 * 86_400_000,
        repeat_ms in prop::option::of(1000u64..=7 * 86_400_000),
        severity_i in 0..3usize,
        machines in prop::collection::vec(glob(), 1..4),
        exclude in prop::collection::vec(glob(), 0..3),
        description in prop::option::of("[ -~]{0,30}"),
    ) -> Rule {
        let ops = [Op::Gt, Op::Ge, Op::Lt, Op::Le];
        let op = if metric == Metric::Silent { ops[op_i % 2] } else { ops[op_i] };
        let threshold = if metric.is_percent() {
            unit * 100.0
        } else if metric == Metric::Silent {
            1.0 + unit * 100.0
        } else {
            big
        };
        let upper = matches!(op, Op::Gt | Op::Ge);
        Rule {
            name,
            metric,
            mount: if metric == Metric::Disk { mount } else { None },
            op,
            threshold,
            clear: clear_by.map(|d| if upper { threshold - d } else { threshold + d }),
            for_: Duration::from_millis(for_ms),
            severity: [Severity::Info, Severity::Warning, Severity::Critical][severity_i],
            machines,
            exclude,
            repeat: repeat_ms.map(Duration::from_millis),
            description,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_text_is_rules_or_an_error(text in prop_oneof![tomlish(), ".{0,200}"]) {
        if let Ok(rules) = parse(&text, "prop") {
            for r in &rules {
                prop_assert!(r.validate().is_ok());
            }
        }
    }

    #[test]
    fn valid_rules_round_trip_through_a_rules_file(
        rules in prop::collection::vec(valid_rule(), 1..4),
    ) {
        // Names must differ within a file.
        let mut rules = rules;
        for (i, r) in rules.iter_mut().enumerate() {
            r.name = format!("{}{i}", r.name);
        }
        for r in &rules {
            prop_assert!(r.validate().is_ok(), "{:?}: {:?}", r, r.validate());
        }
        let text = to_toml(&rules).expect("serialises");
        let back = parse(&text, "prop").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&back, &rules);
        // And one rule inline, as `sysmonstm rules set` takes it.
        let json = String::from_utf8(rules[0].to_json()).expect("utf-8");
        prop_assert_eq!(&parse(&json, "inline").expect("json"), &rules[..1]);
    }
}
