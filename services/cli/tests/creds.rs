//! `sysmonstm creds` as an operator runs it: an authority, credentials for a
//! machine and the services, the list, a revocation; and what it refuses
//! (exit code 2, nothing written).

use std::process::{Command, Output};

fn creds(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sysmonstm"))
        .env_remove("SYSMON_CREDS_DIR")
        .env_remove("NATS_URL")
        .arg("creds")
        .args(args)
        .output()
        .expect("run sysmonstm")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mint_list_and_revoke() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("creds");
    let d = dir.to_str().expect("utf-8");
    ok(&creds(&["init", d]));
    assert!(dir.join("resolver.conf").exists());

    let path = ok(&creds(&["agent", "web-1", "--dir", d]));
    let text = std::fs::read_to_string(path.trim()).expect("creds file");
    assert!(text.contains("BEGIN NATS USER JWT"), "{text}");
    ok(&creds(&["service", "gateway", "--dir", d]));
    ok(&creds(&["service", "cli", "--read-only", "--dir", d]));

    let list = ok(&creds(&["list", "--dir", d]));
    for name in ["agent-web-1", "gateway", "cli-read-only"] {
        assert!(list.contains(name), "{list}");
    }
    ok(&creds(&["revoke", "agent-web-1", "--dir", d]));
    let json = ok(&creds(&["list", "--json", "--dir", d]));
    let revoked: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .filter(|v: &serde_json::Value| v["revoked_at"].is_i64())
        .collect();
    assert_eq!(revoked.len(), 1, "{json}");
    assert_eq!(revoked[0]["name"], "agent-web-1");
    assert!(
        !std::path::Path::new(path.trim()).exists(),
        "revoked file removed"
    );
}

#[test]
fn refusals_are_exit_code_2_with_a_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("creds");
    let d = dir.to_str().expect("utf-8");
    for (args, says) in [
        (vec!["agent", "web-1", "--dir", d], "creds init"),
        (vec!["list", "--dir", d], "creds init"),
    ] {
        let out = creds(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}"
        );
    }
    ok(&creds(&["init", d]));
    for args in [
        vec!["init", d],
        vec!["agent", "Web 1", "--dir", d],
        vec!["agent", &"a".repeat(300), "--dir", d],
        vec!["revoke", "nobody", "--dir", d],
        vec!["service", "gateway", "--read-only", "--dir", d],
    ] {
        let out = creds(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!dir.join("users").join("agent-Web 1.creds").exists());
}
