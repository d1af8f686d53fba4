//! A broken configuration stops the binary before it connects, with exit
//! code 2 and a message naming the field.

use std::process::Command;

fn run(toml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("notifier.toml");
    std::fs::write(&p, toml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-notifier"))
        .arg("--config")
        .arg(&p)
        // Nothing listens there: a config error must come first.
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("SYSMON_NOTIFIER_METRICS_LISTEN", "")
        .output()
        .expect("run the notifier");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configs_exit_2_naming_the_field() {
    for (toml, field) in [
        (
            "[channels.ops]\ntype = \"webhook\"\nurl = \"ftp://example.com\"\n[[routes]]\nchannels = [\"ops\"]\n",
            "channels.ops.url",
        ),
        (
            "[channels.ops]\ntype = \"log\"\n[[routes]]\nchannels = [\"opps\"]\n",
            "routes[0].channels",
        ),
        ("max_attempts = 1000\n", "max_attempts"),
        (
            "[channels.m]\ntype = \"email\"\nhost = \"smtp.example.com\"\nfrom = \"not an address\"\nto = [\"a@example.com\"]\n",
            "channels.m.from",
        ),
        (
            "[channels.w]\ntype = \"webhook\"\nurl = \"http://x\"\nsecret_file = \"/nonexistent/secret\"\n",
            "channels.w.secret_file",
        ),
        ("[channels.w]\ntype = \"webhook\"\n", "url"),
        ("group_window_ms = \"soon\"\n", "group_window_ms"),
    ] {
        let (code, err) = run(toml);
        assert_eq!(code, 2, "{field}: {err}");
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn the_shipped_example_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/notifier.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sysmonstm-notifier"))
        .args(["--check", "--config", example])
        .output()
        .expect("run the notifier");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
