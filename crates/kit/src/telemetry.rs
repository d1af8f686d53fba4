//! Telemetry set up in one place: structured logs through `tracing`, filtered
//! by `RUST_LOG` (default `info`), written to stderr so stdout stays free for
//! a command's own output (`--once --json`).

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once (tests): later
/// calls are no-ops.
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    tracing::debug!(service, "telemetry ready");
}

/// For tests: logs go through the test harness's capture, shown only for a
/// failing test.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
