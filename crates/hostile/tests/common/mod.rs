//! What the suites that run the built binaries share: where the binaries
//! are, and one service process with its log and the address it reports.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sysmonstm_testkit::eventually;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(30);

pub fn bin_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("SYSMON_BIN_DIR").unwrap_or_else(|| {
        panic!(
            "SYSMON_BIN_DIR is not set: `just test` builds the binaries (cargo build --profile \
             hostile --bins) and runs this suite with them"
        )
    }))
}

/// One service process, its log and the address it reported.
pub struct Proc {
    pub name: &'static str,
    child: Child,
    dir: TempDir,
}

impl Proc {
    pub fn start(name: &'static str, bin: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sysmonstm-bin-{name}-"))
            .tempdir()
            .expect("temp dir");
        let log = std::fs::File::create(dir.path().join("log")).expect("log file");
        let mut cmd = Command::new(bin_dir().join(bin));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("SYSMON_ADDR_FILE", dir.path().join("addr"))
            // Traces only where a suite asks for them.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} from {:?}: {e}", bin_dir()));
        Self { name, child, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Panics with the log's tail if the process has exited (an abort).
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = self.log();
            let tail: String = log
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            panic!("{} exited ({status}); its log ends:\n{tail}", self.name);
        }
    }

    pub async fn addr(&mut self) -> SocketAddr {
        let path = self.dir.path().join("addr");
        let name = self.name;
        let addr = eventually(WAIT, &format!("{name} reports its address"), || {
            let text = std::fs::read_to_string(&path).ok();
            async move { text.and_then(|t| t.trim().parse::<SocketAddr>().ok()) }
        })
        .await;
        self.assert_alive();
        addr
    }

    pub fn rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("process status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS");
        kib / 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
