//! The `sysmonstm-alerter` binary as an operator runs it.

use std::process::Command;

#[test]
fn a_broken_rules_file_stops_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"cpu_high\"\nmetric = \"cpu\"\nthreshold = 90\nseverity = \"critical\"\nfor = 30s\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-alerter"))
        .arg("--rules")
        .arg(&rules)
        // Nothing listens here: the file must be refused before connecting.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run sysmonstm-alerter");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("rules.toml") && err.contains("line 6"),
        "{err}"
    );
}

#[test]
fn an_invalid_rule_in_the_file_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"disk\"\nmetric = \"disk\"\nmount = \"var\"\nthreshold = 90\nseverity = \"critical\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-alerter"))
        .arg("--rules")
        .arg(&rules)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run sysmonstm-alerter");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("`mount`") && err.contains("rules.toml"),
        "{err}"
    );
}
