//! A hub and an edge nats-server linked by a leaf node, in operator mode
//! with their own operators, as `just up` runs them (and as
//! `crates/hostile/tests/edge.rs` tests the link): the hub's METRICS,
//! MACHINES and ALERTS made by the credentials that make them in production,
//! the edge's streams sourcing them (`sysmonstm edge setup`'s code), and the
//! edge gateway's own credential. Snapshots, facts and alert events are
//! published at the hub with the credentials that publish them there.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use prost::Message as _;
use sysmonstm_kit::creds::{Authority, Domain, Role};
use sysmonstm_schemas::{MachineId, streams, subjects, v1};
use sysmonstm_testkit::{NatsServer, eventually, free_port};

pub const WAIT: Duration = Duration::from_secs(30);

pub struct EdgePair {
    pub hub: NatsServer,
    pub edge: NatsServer,
    /// The edge gateway's credential (`creds service edge-gateway`).
    pub edge_gateway: PathBuf,
    /// METRICS' partitions at the hub (the edge gateway's
    /// `metrics_partitions`).
    pub parts: streams::Partitions,
    hub_auth: Authority,
    alerter: jetstream::Context,
    agents: std::collections::HashMap<String, jetstream::Context>,
    _dir: tempfile::TempDir,
}

async fn connect(url: &str, creds: &Path, inbox: Option<&str>) -> async_nats::Client {
    let mut opts = async_nats::ConnectOptions::with_credentials_file(creds.to_owned())
        .await
        .expect("creds file");
    if let Some(p) = inbox {
        opts = opts.custom_inbox_prefix(p);
    }
    opts.connect(url)
        .await
        .unwrap_or_else(|e| panic!("{} connects to {url}: {e}", creds.display()))
}

/// The number of leaf connections the edge's `/leafz` reports.
fn leafnodes(monitor: &str) -> Option<u64> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(monitor).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /leafz HTTP/1.0\r\nHost: edge\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let v: serde_json::Value = serde_json::from_str(body.split_once("\r\n\r\n")?.1).ok()?;
    v.get("leafnodes")?.as_u64()
}

impl EdgePair {
    /// Both servers, the link up, the hub's streams and the edge's sourcing
    /// ones made.
    pub async fn start() -> Self {
        Self::start_partitioned(streams::Partitions::ONE).await
    }

    /// As [`EdgePair::start`], with the hub's METRICS split into `parts`
    /// (`sysmonstm creds partitions`, the persister's `ensure_metrics`,
    /// `sysmonstm edge setup --metrics-partitions`).
    pub async fn start_partitioned(parts: streams::Partitions) -> Self {
        sysmonstm_kit::telemetry::init_for_tests();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut hub_auth = Authority::init(&dir.path().join("hub")).expect("hub authority");
        if parts.is_split() {
            hub_auth.set_partitions(parts).expect("partitions");
        }
        let mut edge_auth =
            Authority::init_for(&dir.path().join("edge"), Domain::Edge).expect("edge authority");
        let leaf = edge_auth.issue(Role::Leaf).expect("leaf");
        let edge_admin = edge_auth.issue(Role::EdgeAdmin).expect("edge admin");
        let edge_gateway = edge_auth.issue(Role::EdgeGateway).expect("edge gateway");
        let persister = hub_auth.issue(Role::Persister).expect("persister");
        let alerter = hub_auth.issue(Role::Alerter).expect("alerter");

        let leaf_port = free_port();
        let monitor = format!("127.0.0.1:{}", free_port());
        let edge = NatsServer::start_with(
            &format!("domain: {}", streams::EDGE_DOMAIN),
            &format!(
                "{}\nleafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\nhttp: {monitor:?}\n",
                edge_auth.include_line()
            ),
        );
        let hub = NatsServer::start_with(
            &format!("domain: {}", streams::HUB_DOMAIN),
            &format!(
                "{}\n{}",
                hub_auth.include_line(),
                hub_auth
                    .leaf_remote_conf(&format!("nats-leaf://127.0.0.1:{leaf_port}"), &leaf)
                    .expect("leaf remote")
            ),
        );
        let p = jetstream::new(connect(&hub.url(), &persister, None).await);
        for cfg in parts.configs(&streams::MetricsLimits {
            max_bytes: 256 << 20,
            ..Default::default()
        }) {
            p.create_stream(cfg).await.expect("METRICS");
        }
        p.create_stream(streams::machines())
            .await
            .expect("MACHINES");
        let alerter = jetstream::new(connect(&hub.url(), &alerter, None).await);
        alerter
            .create_stream(streams::alerts())
            .await
            .expect("ALERTS");
        // A source's consumer-create request sent while the link is down is
        // asked again only after 30 s: the edge's streams come after it.
        eventually(WAIT, "the hub's leaf link is up", || {
            let n = leafnodes(&monitor);
            async move { (n.unwrap_or(0) >= 1).then_some(()) }
        })
        .await;
        let admin = jetstream::new(connect(&edge.url(), &edge_admin, None).await);
        sysmonstm_kit::jetstream::ensure_edge_streams(
            &admin,
            &streams::EdgeLimits::default(),
            parts,
        )
        .await
        .expect("edge streams");
        Self {
            hub,
            edge,
            edge_gateway,
            parts,
            hub_auth,
            alerter,
            agents: Default::default(),
            _dir: dir,
        }
    }

    /// The agent credential of `machine` (publishes only its subjects).
    async fn agent(&mut self, machine: &MachineId) -> jetstream::Context {
        if let Some(js) = self.agents.get(machine.as_str()) {
            return js.clone();
        }
        let creds = self
            .hub_auth
            .issue(Role::Agent(machine.to_string()))
            .expect("agent creds");
        let inbox = subjects::agent_inbox_prefix(machine);
        let js = jetstream::new(connect(&self.hub.url(), &creds, Some(&inbox)).await);
        self.agents.insert(machine.to_string(), js.clone());
        js
    }

    /// A snapshot of `machine` with `seq`, taken at `ts_ms`, its CPU at
    /// `cpu`, published at the hub as its agent does.
    pub async fn snapshot(&mut self, machine: &str, seq: u64, ts_ms: i64, cpu: f32) {
        let id = MachineId::parse(machine).expect("machine id");
        let s = v1::Snapshot {
            machine_id: machine.into(),
            seq,
            timestamp_ms: ts_ms,
            interval_ms: 1000,
            cpu: Some(v1::Cpu {
                usage_percent: cpu,
                ..Default::default()
            }),
            memory: Some(v1::Memory {
                total_bytes: 8 << 30,
                used_bytes: 2 << 30,
                available_bytes: 6 << 30,
                ..Default::default()
            }),
            process_count: 120,
            top_cpu: vec![v1::Process {
                pid: 4242,
                name: "secret-batch-job".into(),
                cpu_percent: cpu,
                rss_bytes: 1 << 30,
            }],
            top_memory: vec![v1::Process {
                pid: 4242,
                name: "secret-batch-job".into(),
                cpu_percent: cpu,
                rss_bytes: 1 << 30,
            }],
            ..Default::default()
        };
        let js = self.agent(&id).await;
        js.send_publish(
            subjects::metrics(&id),
            PublishMessage::build()
                .message_id(sysmonstm_schemas::headers::msg_id(&id, seq))
                .payload(s.encode_to_vec().into()),
        )
        .await
        .expect("sent")
        .await
        .expect("acked");
    }

    /// The facts of `machine`, with `hostname`.
    pub async fn info(&mut self, machine: &str, hostname: &str) {
        let id = MachineId::parse(machine).expect("machine id");
        let i = v1::MachineInfo {
            machine_id: machine.into(),
            hostname: hostname.into(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            kernel_version: "6.1.0".into(),
            architecture: "x86_64".into(),
            agent_version: "0.1.0".into(),
            boot_time_s: chrono::Utc::now().timestamp() - 86_400,
            core_count: 4,
            memory_total_bytes: 8 << 30,
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
            ..Default::default()
        };
        let js = self.agent(&id).await;
        js.send_publish(
            subjects::info(&id),
            PublishMessage::build().payload(i.encode_to_vec().into()),
        )
        .await
        .expect("sent")
        .await
        .expect("acked");
    }

    /// A firing alert event of `machine`, as the alerter publishes it.
    pub async fn alert(&self, machine: &str, rule: &str, message: &str) {
        let id = MachineId::parse(machine).expect("machine id");
        let rule_id = MachineId::parse(rule).expect("rule token");
        let now = chrono::Utc::now().timestamp_millis();
        let since = now - 30_000;
        let ev = v1::AlertEvent {
            machine_id: machine.into(),
            rule: rule.into(),
            severity: v1::Severity::Critical as i32,
            state: v1::AlertState::Firing as i32,
            metric: "cpu".into(),
            value: 97.5,
            threshold: 90.0,
            since_ms: since,
            timestamp_ms: now,
            message: message.into(),
            repeat: 0,
            trigger_seq: 0,
        };
        self.alerter
            .send_publish(
                subjects::alert(v1::Severity::Critical, &id, &rule_id),
                PublishMessage::build()
                    .message_id(format!("{machine}:{rule}:{since}:firing"))
                    .payload(ev.encode_to_vec().into()),
            )
            .await
            .expect("sent")
            .await
            .expect("acked");
    }

    /// A gateway config for the edge: edge mode, the edge server, the edge
    /// gateway's credential, and no database anywhere.
    pub fn gateway_config(&self) -> sysmonstm_gateway::GatewayConfig {
        let mut cfg = sysmonstm_gateway::GatewayConfig {
            listen: "127.0.0.1:0".into(),
            edge: true,
            // Nothing listens there; the edge must never try.
            database_url: "postgres://postgres@127.0.0.1:9/none".into(),
            metrics_partitions: self.parts,
            ..Default::default()
        };
        cfg.nats.servers = vec![self.edge.url()];
        cfg.nats.creds_file = Some(self.edge_gateway.clone());
        cfg
    }
}
