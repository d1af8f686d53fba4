//! PostgreSQL for tests: a fresh database per test on the shared server that
//! `just test` starts, or a whole server of a test's own.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgConnection};
use tempfile::TempDir;

use crate::port::PortHold;

/// The environment variable naming the shared test server's admin URL.
pub const TEST_DATABASE_URL: &str = "SYSMON_TEST_DATABASE_URL";

/// A database of one test's own, created on the shared test server and
/// dropped (with any connections still open) when this is dropped.
pub struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let admin_url = std::env::var(TEST_DATABASE_URL).unwrap_or_else(|_| {
            panic!(
                "{TEST_DATABASE_URL} is not set: run the tests with `just test`, which starts \
                 a PostgreSQL server and sets it (or `scripts/test-postgres.sh start`)"
            )
        });
        Self::on(&admin_url).await
    }

    /// A fresh database on the server behind `admin_url`.
    pub async fn on(admin_url: &str) -> Self {
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {admin_url}: {e}"));
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = replace_db(admin_url, &name);
        Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot block on itself.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// Refreshes TimescaleDB's continuous aggregates `views` over all time, the
/// way a test or benchmark needs them settled before it compares.
///
/// The refresh policies run in background workers on their own schedule,
/// and a manual refresh over a window one of them is refreshing fails with
/// 55P03 ("a concurrent refresh is already in progress"). So this pauses
/// this database's refresh jobs first and waits until no job worker of this
/// database is left running; then nothing can refresh concurrently.
pub async fn refresh_rollups(pool: &PgPool, views: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs
         WHERE proc_name = 'policy_refresh_continuous_aggregate' AND scheduled",
    )
    .execute(pool)
    .await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (running,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity a
             JOIN timescaledb_information.jobs j ON a.application_name = j.application_name
             WHERE a.datname = current_database()
               AND j.proc_name = 'policy_refresh_continuous_aggregate'",
        )
        .fetch_one(pool)
        .await?;
        if running == 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(sqlx::Error::Protocol(format!(
                "{running} refresh job(s) still running after 120 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for v in views {
        sqlx::query(&format!(
            "CALL refresh_continuous_aggregate('{v}', NULL, NULL)"
        ))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// `postgres://u@h:p/old?x` → `postgres://u@h:p/<db>?x`.
fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// PostgreSQL's server programs: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout), else the PATH.
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p).unwrap_or_default()
}

/// A PostgreSQL server of a test's own, in a temp dir on a port of its own; it
/// can be stopped and started again on the same port (the database "going
/// away"), held from the first start to the drop (`port::PortHold`). Removed on
/// drop.
pub struct PgCluster {
    dir: TempDir,
    port: u16,
    running: bool,
    hold: Option<PortHold>,
}

/// How long a start on a port someone else has just taken is retried.
const RETRY_FOR: Duration = Duration::from_secs(30);

impl PgCluster {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sysmonstm-pg-")
            .tempdir()
            .expect("temp dir for PostgreSQL");
        let data = dir.path().join("data");
        if crate::is_root() {
            // initdb and postgres refuse to run as root.
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()));
        }
        run(pg_command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data));
        let mut c = Self {
            dir,
            port: 0,
            running: false,
            hold: None,
        };
        // PostgreSQL cannot pick its own port: take a free one and hold it
        // (PostgreSQL sets SO_REUSEADDR, so it can listen on it held), and
        // another if it is gone by the time it is held.
        for _ in 0..20 {
            c.port = crate::free_port();
            c.hold = PortHold::on(c.port).ok();
            if c.hold.is_none() {
                continue;
            }
            match c.try_start() {
                Ok(()) => return c,
                Err(Some(why)) => panic!("{why}"),
                Err(None) => {}
            }
        }
        panic!("PostgreSQL found 20 free ports taken by the time it bound them");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server (fast shutdown: open connections are cut); its port
    /// stays held for [`start_again`](Self::start_again).
    pub fn stop(&mut self) {
        if self.running {
            run(pg_command("pg_ctl")
                .args(["stop", "-m", "fast", "-w", "-D"])
                .arg(self.data()));
            self.running = false;
        }
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(Some(why)) => panic!("{why}"),
                // Held, the port can only be taken by a program that asked
                // for this very port with SO_REUSEADDR: a real conflict. It
                // may let go again; wait a while.
                Err(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(None) => panic!(
                    "PostgreSQL cannot listen on port {} again: another process has held it for \
                     {RETRY_FOR:?}",
                    self.port
                ),
            }
        }
    }

    /// One start on `self.port`: `Err(None)` when the port is taken,
    /// `Err(Some(why))` on any other failure.
    fn try_start(&mut self) -> Result<(), Option<String>> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = pg_command("pg_ctl");
        cmd.args(["start", "-w", "-t", "60", "-o", &opts, "-l"])
            .arg(&log)
            .arg("-D")
            .arg(self.data());
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        if out.status.success() {
            self.running = true;
            return Ok(());
        }
        let text = std::fs::read(&log).unwrap_or_default();
        let from = usize::try_from(log_start).unwrap_or(0).min(text.len());
        let text = String::from_utf8_lossy(&text[from..]);
        if text.contains("Address already in use") {
            return Err(None);
        }
        Err(Some(format!(
            "{cmd:?} failed: {}\n{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Waits until the server answers.
    pub async fn ready(&self) {
        let url = self.url("postgres");
        crate::eventually(
            Duration::from_secs(30),
            "PostgreSQL accepts connections",
            || {
                let url = url.clone();
                async move { PgConnection::connect(&url).await.ok().map(|_| ()) }
            },
        )
        .await;
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command("pg_ctl")
                .args(["stop", "-m", "immediate", "-w", "-D"])
                .arg(self.data())
                .output();
        }
    }
}

/// A PostgreSQL program, run as `postgres` when we are root.
fn pg_command(program: &str) -> Command {
    let path = pg_bin().join(program);
    if crate::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::replace_db;

    #[test]
    fn replaces_the_database_in_a_url() {
        assert_eq!(
            replace_db("postgres://u@h:5/postgres?sslmode=disable", "t1"),
            "postgres://u@h:5/t1?sslmode=disable"
        );
        assert_eq!(replace_db("postgres://u@h:5", "t1"), "postgres://u@h:5/t1");
        assert_eq!(
            replace_db("postgres://u@h:5/x", "t1"),
            "postgres://u@h:5/t1"
        );
    }
}
