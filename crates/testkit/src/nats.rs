//! A real `nats-server` per test, in the manner of nats.rs's `nats-server`
//! crate: JetStream on, its own store dir and port, killed on drop.
//!
//! The server picks its own port (`listen: 127.0.0.1:-1`) and reports it in
//! its ports file (`ports_file_dir`), so two tests can never meet on one port.
//! Killed and started again, it comes back on the same port, held from the
//! first kill to the drop (`port::PortHold`), because the services under test
//! reconnect to the URL they were given.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::port::PortHold;

/// The binary: `$NATS_SERVER_BIN`, else `nats-server` on the PATH.
/// `just test` installs a pinned version and sets the variable.
pub fn binary() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// How long a start may take (JetStream recovers its store first).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct NatsServer {
    dir: TempDir,
    /// The config without its `listen` line, which each start writes.
    body: String,
    port: u16,
    child: Option<Child>,
    /// Keeps the port for restarts (`port`).
    hold: Option<PortHold>,
}

/// Why one start did not give a listening server.
enum StartError {
    /// The port was taken (only on a restart, where the port is fixed).
    PortTaken,
    Failed(String),
}

impl NatsServer {
    /// Starts a server with JetStream and waits until it accepts clients.
    pub fn start() -> Self {
        Self::start_with("", "")
    }

    /// A server as durable as the hub (`nats/hub.conf`): JetStream fsyncs
    /// every write before acking, so a SIGKILL loses nothing acked.
    pub fn start_hub() -> Self {
        Self::start_with("sync_interval: always", "")
    }

    /// Starts a server with `jetstream` added to its JetStream block and
    /// `extra` appended to its config (accounts, leaf nodes …).
    pub fn start_with(jetstream: &str, extra: &str) -> Self {
        let name = format!("test_{:08x}", rand::random::<u32>());
        Self::start_conf(|store| {
            format!(
                "server_name: {name}\n\
                 jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 4GB\n  {jetstream}\n}}\n{extra}\n"
            )
        })
    }

    /// A hub (`sync_interval: always`) whose global account maps METRICS
    /// subjects into `partitions`, as `sysmonstm creds partitions` makes the
    /// hub's account do in operator mode.
    pub fn start_partitioned(partitions: sysmonstm_schemas::streams::Partitions) -> Self {
        Self::start_with("sync_interval: always", &partition_mapping(partitions))
    }

    /// A server configured as the hub ships (`nats/hub.conf`: its name,
    /// JetStream domain, limits and `sync_interval`), for benchmarks whose
    /// figures must hold for the hub as shipped. Only its listen address,
    /// store dir and monitoring port (none) are its own.
    pub fn start_shipped_hub() -> Self {
        Self::start_shipped_hub_with("")
    }

    /// [`Self::start_shipped_hub`] with `extra` config appended, e.g. an
    /// operator-mode `include` and a leaf remote (`kit::creds`).
    pub fn start_shipped_hub_with(extra: &str) -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats/hub.conf");
        let shipped = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        Self::start_conf(|store| {
            let mut conf = String::new();
            let mut in_jetstream = false;
            for line in shipped.lines() {
                let t = line.trim_start();
                // The addresses and the store are the test's own; so is
                // authentication (the shipped hub includes the development
                // credentials `just up` makes; a bench measures JetStream).
                if ["listen", "http", "store_dir", "include"]
                    .iter()
                    .any(|k| t.starts_with(k))
                {
                    continue;
                }
                conf.push_str(line);
                conf.push('\n');
                if t.starts_with("jetstream") && t.ends_with('{') {
                    in_jetstream = true;
                    conf.push_str(&format!("  store_dir: {store:?}\n"));
                }
            }
            assert!(
                in_jetstream,
                "{} has no `jetstream {{` block",
                path.display()
            );
            conf.push_str(extra);
            conf.push('\n');
            conf
        })
    }

    /// Starts a server whose config is `conf(store dir)`, on a port it
    /// picks.
    fn start_conf(conf: impl FnOnce(&Path) -> String) -> Self {
        Self::start_conf_on(None, conf)
    }

    /// Starts a server on `hold`'s port, held until the drop (its address
    /// was given to others before it started: a cluster's routes), or on a
    /// port it picks.
    pub(crate) fn start_conf_on(
        hold: Option<PortHold>,
        conf: impl FnOnce(&Path) -> String,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sysmonstm-nats-")
            .tempdir()
            .expect("temp dir for nats-server");
        let ports = dir.path().join("ports");
        std::fs::create_dir(&ports).expect("ports dir");
        let body = format!(
            "ports_file_dir: {ports:?}\n{}",
            conf(&dir.path().join("store"))
        );
        let listen = match &hold {
            Some(h) => format!("127.0.0.1:{}", h.port()),
            None => "127.0.0.1:-1".to_owned(),
        };
        let mut server = Self {
            dir,
            body,
            port: 0,
            child: None,
            hold,
        };
        match server.spawn(&listen) {
            Ok(port) => server.port = port,
            Err(StartError::PortTaken) => panic!("nats-server cannot listen on {listen}: taken"),
            Err(StartError::Failed(why)) => panic!("{why}"),
        }
        server
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Asks the server to reload its config (SIGHUP), as
    /// `nats-server --signal reload` does; it reloads in the background.
    pub fn reload(&self) {
        let pid = self.pid().expect("the server runs");
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "SIGHUP to nats-server {pid} failed");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Kills the server the hard way (SIGKILL), as a crash would; the store
    /// dir stays for [`restart`](Self::restart), and the port is held for it
    /// (connections are refused meanwhile, as with no server).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // A listening port cannot be held, so the hold is taken here, the
            // moment the server is gone, and kept to the drop: the server can
            // listen on it held.
            if self.hold.is_none() {
                self.hold = PortHold::on(self.port).ok();
            }
        }
    }

    /// (Re)starts the server on the same port and store, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let listen = format!("127.0.0.1:{}", self.port);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn(&listen) {
                Ok(_) => return,
                Err(StartError::Failed(why)) => panic!("{why}"),
                // Held, the port can only be taken by a program that asked
                // for this very port with SO_REUSEADDR: a real conflict. It
                // may let go again; wait a while.
                Err(StartError::PortTaken) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartError::PortTaken) => panic!(
                    "nats-server cannot listen on {listen} again: another process has taken the \
                     port for {START_TIMEOUT:?}; its log:\n{}",
                    std::fs::read_to_string(self.log_path()).unwrap_or_default()
                ),
            }
        }
    }

    /// One start listening on `listen`: the port it listens on, once it
    /// accepts connections.
    fn spawn(&mut self, listen: &str) -> Result<u16, StartError> {
        let conf = format!("listen: {listen}\n{}", self.body);
        std::fs::File::create(self.config_path())
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let mut child = Command::new(binary())
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?} ({e}); run the tests with `just test`, which installs it",
                    binary()
                )
            });
        let ports = self.dir.path().join("ports");
        let deadline = Instant::now() + START_TIMEOUT;
        let outcome = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = log_since(&self.log_path(), log_start);
                break Err(if text.contains("address already in use") {
                    StartError::PortTaken
                } else {
                    StartError::Failed(format!("nats-server exited ({status}); its log:\n{text}"))
                });
            }
            if let Some(port) = reported_port(&ports, child.id())
                && TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                break Ok(port);
            }
            if Instant::now() >= deadline {
                break Err(StartError::Failed(format!(
                    "nats-server did not listen on {listen} within {START_TIMEOUT:?}; its log:\n{}",
                    log_since(&self.log_path(), log_start)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match outcome {
            Ok(_) => self.child = Some(child),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        outcome
    }
}

/// The client port in the ports file of process `pid`
/// (`<ports_file_dir>/<exe>_<pid>.ports`: `{"nats":["nats://127.0.0.1:4222"],…}`).
fn reported_port(dir: &Path, pid: u32) -> Option<u16> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let url = text.split("\"nats\":[\"").nth(1)?.split('"').next()?;
    url.rsplit(':').next()?.parse().ok()
}

fn log_since(log: &Path, from: u64) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(0).min(text.len());
    String::from_utf8_lossy(&text[from..]).into_owned()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config line that maps METRICS subjects into `partitions` in the
/// global account of a server without operator mode (empty for one).
pub fn partition_mapping(partitions: sysmonstm_schemas::streams::Partitions) -> String {
    match partitions.mapping() {
        Some((from, to)) => format!("mappings = {{ {from:?}: {to:?} }}\n"),
        None => String::new(),
    }
}
