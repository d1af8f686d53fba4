//! The agent binary as a person runs it.

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sysmonstm-agent"));
    c.env_remove("SYSMON_AGENT_CONFIG").env_remove("NATS_URL");
    c
}

#[test]
fn once_json_prints_what_this_machine_has() {
    let out = agent()
        .args(["--once", "--json", "--machine", "cli-test"])
        .output()
        .expect("run agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["machine_id"], "cli-test");
    assert!(
        v["timestamp_ms"]
            .as_i64()
            .is_some_and(|t| t > 1_700_000_000_000)
    );
    assert!(v["memory"]["total_bytes"].as_u64().is_some_and(|m| m > 0));
    assert!(
        v["memory"]["available_bytes"]
            .as_u64()
            .is_some_and(|m| m > 0)
    );
    let cores = v["cpu"]["per_core_percent"]
        .as_array()
        .expect("per-core list");
    assert_eq!(
        cores.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    assert!(v["uptime_s"].as_u64().is_some_and(|u| u > 0));
    assert!(v["process_count"].as_u64().is_some_and(|p| p > 1));
    assert!(v["load"]["one"].as_f64().is_some());
    assert!(v["cpu"]["iowait_percent"].as_f64().is_some());
    // Every section this machine has (it has no sensors: temperatures may
    // be empty).
    for section in [
        "filesystems",
        "disks",
        "interfaces",
        "top_cpu",
        "top_memory",
    ] {
        let list = v[section]
            .as_array()
            .unwrap_or_else(|| panic!("{section} is a list"));
        assert!(!list.is_empty(), "{section} is populated");
    }
    assert!(
        v["disks"][0]["read_bytes_per_s"].as_f64().is_some(),
        "rates after warm-up"
    );
}

#[test]
fn a_broken_config_file_names_the_field_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    // The agent's stderr when started with `text` as its config file.
    let refused = |text: &str| {
        std::fs::write(&path, text).expect("write");
        let out = agent()
            .args(["--once", "--json", "--machine", "x", "--config"])
            .arg(&path)
            .output()
            .expect("run agent");
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused("interval_ms = \"fast\"\n");
    assert!(err.contains("interval_ms"), "{err}");
    let err = refused("interval_ms = 1000\n[nats\n");
    assert!(
        err.contains("agent.toml") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn an_invalid_machine_id_is_a_startup_error() {
    let out = agent()
        .args(["--once", "--json", "--machine", "No.Dots"])
        .output()
        .expect("run agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid machine id"));
}
