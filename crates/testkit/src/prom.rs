//! Reading a Prometheus exposition in tests.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// `promtool check metrics` (Debian's `prometheus` package, which `just
/// test` installs; `$PROMTOOL` to point elsewhere) on `name`'s exposition:
/// format and naming conventions. Panics with promtool's answer.
pub fn promtool_check(name: &str, text: &str) {
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&bin)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {bin} ({e}); `just test` installs it"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics refuses the {name}'s /metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of one series (`name{labels}` exactly as exposed).
pub fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}
