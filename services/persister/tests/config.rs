//! A broken configuration stops the binary before it connects, with exit
//! code 2 and a message naming the field.

use std::process::Command;

fn run(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("persister.toml");
    std::fs::write(&p, toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-persister"))
        .arg("--config")
        .arg(&p)
        // Nothing listens at either: a config error must come first.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("SYSMON_PERSISTER_METRICS_LISTEN", "")
        .output()
        .expect("run the persister");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_2_naming_the_field() {
    for (toml, field) in [
        ("batch_size = 18446744073709551615\n", "batch_size"),
        ("batch_size = 0\n", "batch_size"),
        ("writers = 100000\n", "writers"),
        ("max_ack_pending = -5\n", "max_ack_pending"),
        ("ack_wait_s = 18446744073709551615\n", "ack_wait_s"),
        ("max_backoff_ms = 18446744073709551615\n", "max_backoff_ms"),
        ("retention_raw_days = 4000000000\n", "retention_raw_days"),
        ("maintenance_interval_s = 0\n", "maintenance_interval_s"),
        ("stream_max_mib = 9223372036854775807\n", "stream_max_mib"),
        ("linger_ms = \"soon\"\n", "linger_ms"),
        ("bacth_size = 10\n", "bacth_size"),
    ] {
        let (code, err) = run(toml);
        assert_eq!(code, 2, "{field}: {err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}
