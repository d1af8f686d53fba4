//! Real servers for tests, never stand-ins.
//!
//! * [`NatsServer`]: a `nats-server` per test with JetStream on, a temp store
//!   dir and a port it picks itself; killed and cleaned on drop; it can be
//!   stopped and started again on the same port and store (links cut, hubs
//!   restarted).
//! * [`NatsCluster`]: a JetStream cluster of such servers, routed to each
//!   other on ports held from before the first start to the drop.
//! * [`TestDb`]: a fresh database per test on the PostgreSQL server that
//!   `just test` starts (`SYSMON_TEST_DATABASE_URL`), dropped afterwards.
//! * [`PgCluster`]: a PostgreSQL server of a test's own, for tests that stop
//!   and start the database itself.
//! * [`eventually`]: wait for a condition instead of sleeping.
//! * [`free_port`], [`PortHold`]: ports no other process can take in between
//!   (`port`).
//! * [`RealSnapshots`]: realistic snapshots and facts of this host under any
//!   machine id, from the agent's collector, without an agent.
//! * [`workspace_bin`]: a binary of another package of the workspace, for
//!   the tests that run several services.

mod cluster;
mod nats;
mod pg;
mod port;
pub mod prom;
pub mod snapshots;

pub use cluster::NatsCluster;
pub use nats::{NatsServer, partition_mapping};
pub use pg::{PgCluster, TEST_DATABASE_URL, TestDb, refresh_rollups};
pub use port::{PortHold, free_port};
pub use snapshots::RealSnapshots;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Polls `check` every 25 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True when this process runs as root (CI and the dev machines do), so
/// PostgreSQL's tools must be run as the `postgres` user.
fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The binary `name` of any package of the workspace, where cargo put it:
/// beside this test's own directory (`target/<profile>/`, tests run from
/// `target/<profile>/deps/`). Cargo hands a test only its own package's
/// binaries (`CARGO_BIN_EXE_*`); `cargo test --workspace` builds every
/// package's binaries before it runs any test, so there they are current.
/// Run alone (`cargo test -p …`), a test needs them built first: this panics
/// when one is missing, naming the command.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test --workspace` builds it, or `cargo build --bins` first",
        bin.display()
    );
    bin
}
