//! The edge: a second nats-server in its own JetStream domain, fed over a
//! leaf link the hub dials out to, whose streams *source* the hub's METRICS,
//! ALERTS and MACHINES. Real servers in operator mode, each side with its own
//! operator (`sysmonstm creds init --edge`).
//!
//! * The leaf link is cut for `SYSMON_EDGE_CUT_S` seconds (60 by default, as
//!   the issue asks) while three agents publish a snapshot every 100 ms: once
//!   by killing the edge and starting it again on the same store, once as a
//!   network cut between two network namespaces (veth taken down and up;
//!   neither server is told). Afterwards the edge holds every message of the
//!   hub exactly once: counts and (machine, seq) sets compared, for ALERTS
//!   too, and MACHINES ends with the same latest facts.
//! * A client at the edge that may publish anything (minted here with the
//!   edge account's key, as a leaked or mis-issued credential would be) sends
//!   snapshots, alert events and hub stream admin requests: nothing reaches
//!   the hub. The leaf link's permissions stop it, not the client's.
//! * The edge gateway's credential reads the edge streams and can publish
//!   nothing; no hub credential works at the edge and no edge one at the hub.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use sysmonstm_kit::creds::{Authority, Domain, Role};
use sysmonstm_kit::jwt::{self, Claims, Permission, UserNats};
use sysmonstm_schemas::{MachineId, headers, streams, subjects, v1};
use sysmonstm_testkit::{NatsServer, eventually, free_port};

const MACHINES: [&str; 3] = ["edge-a", "edge-b", "edge-c"];
const TICK: Duration = Duration::from_millis(100);

/// How long the link stays cut: `SYSMON_EDGE_CUT_S`, default 60 s.
fn cut_for() -> Duration {
    let s = std::env::var("SYSMON_EDGE_CUT_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(60);
    Duration::from_secs(s)
}

/// The edge catches up within this after the link is back.
const CATCH_UP: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// Credentials

struct Creds {
    _dir: tempfile::TempDir,
    hub: Authority,
    edge: Authority,
    agents: Vec<(MachineId, PathBuf)>,
    persister: PathBuf,
    alerter: PathBuf,
    hub_reader: PathBuf,
    leaf: PathBuf,
    edge_admin: PathBuf,
    edge_gateway: PathBuf,
}

fn creds() -> Creds {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = Authority::init(&dir.path().join("hub")).expect("hub authority");
    let mut edge =
        Authority::init_for(&dir.path().join("edge"), Domain::Edge).expect("edge authority");
    let agents = MACHINES
        .iter()
        .map(|m| {
            let id = MachineId::parse(m).expect("machine id");
            let p = hub.issue(Role::Agent((*m).into())).expect("agent");
            (id, p)
        })
        .collect();
    Creds {
        persister: hub.issue(Role::Persister).expect("persister"),
        alerter: hub.issue(Role::Alerter).expect("alerter"),
        hub_reader: hub.issue(Role::CliReadOnly).expect("cli read-only"),
        leaf: edge.issue(Role::Leaf).expect("leaf"),
        edge_admin: edge.issue(Role::EdgeAdmin).expect("edge admin"),
        edge_gateway: edge.issue(Role::EdgeGateway).expect("edge gateway"),
        agents,
        hub,
        edge,
        _dir: dir,
    }
}

/// A user of `authority`'s account that may publish and subscribe to
/// anything: what a leaked or carelessly issued credential would be. Minted
/// here with the account's signing key; `sysmonstm creds` issues none.
fn anything_goes(authority: &Authority, name: &str) -> PathBuf {
    let seed = std::fs::read_to_string(authority.dir().join("sysmon-signing.nk")).expect("seed");
    let signing = nkeys::KeyPair::from_seed(seed.trim()).expect("signing key");
    let user = nkeys::KeyPair::new_user();
    let all = Permission {
        allow: vec![">".into()],
        deny: Vec::new(),
    };
    let claims = Claims {
        jti: String::new(),
        iat: 1,
        iss: String::new(),
        name: name.into(),
        sub: user.public_key(),
        exp: None,
        nats: UserNats::new(all.clone(), all, authority.account_public_key()),
    };
    let token = jwt::encode(claims, &signing).expect("signed");
    let path = authority.dir().join(format!("{name}.creds"));
    std::fs::write(
        &path,
        jwt::creds_file(&token, &user.seed().expect("user seed")),
    )
    .expect("write creds");
    path
}

async fn connect(url: &str, creds: &Path, inbox: Option<&str>) -> async_nats::Client {
    let mut opts = async_nats::ConnectOptions::with_credentials_file(creds.to_owned())
        .await
        .expect("creds file")
        .retry_on_initial_connect();
    if let Some(p) = inbox {
        opts = opts.custom_inbox_prefix(p);
    }
    opts.connect(url)
        .await
        .unwrap_or_else(|e| panic!("{} connects to {url}: {e}", creds.display()))
}

// ---------------------------------------------------------------------------
// Server configs

fn hub_extra(c: &Creds, leaf_url: &str) -> String {
    format!(
        "{}\n{}",
        c.hub.include_line(),
        c.hub
            .leaf_remote_conf(leaf_url, &c.leaf)
            .expect("leaf remote")
    )
}

/// The edge's config: its authority, the leaf-node listener, and the
/// monitoring port (`/leafz` tells when the hub's link is up).
fn edge_extra(c: &Creds, leaf_listen: &str, monitor: &str) -> String {
    format!(
        "{}\nleafnodes {{\n  listen: {leaf_listen:?}\n}}\nhttp: {monitor:?}\n",
        c.edge.include_line()
    )
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
    let json = body.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.get("leafnodes")?.as_u64()
}

/// Waits until the hub's leaf link to the edge is up. The edge's streams
/// are made after it: a source's consumer-create request sent while the
/// link is down is lost, and nats-server waits 30 s before asking again.
async fn leaf_link_up(monitor: &str) {
    eventually(Duration::from_secs(30), "the hub's leaf link is up", || {
        let n = leafnodes(monitor);
        async move { (n.unwrap_or(0) >= 1).then_some(()) }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Traffic: agents every 100 ms, an alerter every second

/// Publishes until `stop`, each message acked before the next (retried with
/// the same Msg-Id until it is). Returns how many were acked.
async fn agent(url: String, machine: MachineId, creds: PathBuf, stop: Arc<AtomicBool>) -> u64 {
    let inbox = subjects::agent_inbox_prefix(&machine);
    let js = jetstream::new(connect(&url, &creds, Some(&inbox)).await);
    let subject = subjects::metrics(&machine);
    // Facts once at start; again below, so MACHINES has something to keep
    // the latest of.
    publish_acked(
        &js,
        &subjects::info(&machine),
        &format!("{machine}:info:0"),
        b"facts 0",
    )
    .await;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let id = headers::msg_id(&machine, seq);
        publish_acked(&js, &subject, &id, id.as_bytes()).await;
        if seq == 100 {
            publish_acked(
                &js,
                &subjects::info(&machine),
                &format!("{machine}:info:1"),
                b"facts 1",
            )
            .await;
        }
    }
    seq
}

async fn alerter(url: String, creds: PathBuf, stop: Arc<AtomicBool>) -> u64 {
    let js = jetstream::new(connect(&url, &creds, None).await);
    let rule = MachineId::parse("cpu_high").expect("rule");
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        n += 1;
        let m = MachineId::parse(MACHINES[(n % 3) as usize]).expect("machine");
        let subject = subjects::alert(v1::Severity::Critical, &m, &rule);
        let id = format!("{m}:cpu_high:{n}:firing");
        publish_acked(&js, &subject, &id, id.as_bytes()).await;
    }
    n
}

async fn publish_acked(js: &jetstream::Context, subject: &str, id: &str, payload: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut h = HeaderMap::new();
        h.insert(headers::MSG_ID, id);
        let sent = js
            .publish_with_headers(subject.to_owned(), h, payload.to_vec().into())
            .await;
        if let Ok(ack) = sent
            && ack.await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the hub did not ack {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------
// Reading a whole stream

/// Every message of `name`: (subject, Msg-Id), in stream order.
async fn contents(js: &jetstream::Context, name: &str) -> Vec<(String, String)> {
    let mut s = js
        .get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let n = s.info().await.expect("stream info").state.messages;
    if n == 0 {
        return Vec::new();
    }
    let c = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut msgs = c.messages().await.expect("messages");
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    while (out.len() as u64) < n {
        let m = tokio::time::timeout(Duration::from_secs(20), msgs.next())
            .await
            .expect("the stream is read to its end")
            .expect("not closed")
            .expect("a message");
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get(headers::MSG_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((m.subject.to_string(), id));
    }
    out
}

async fn count(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// The edge holds each hub message exactly once: same count, no duplicate,
/// same set. For METRICS the set is of (machine, seq), the machine from the
/// subject and the Msg-Id agreeing.
fn assert_exactly_once(name: &str, hub: &[(String, String)], edge: &[(String, String)]) {
    let mut seen = BTreeMap::new();
    for m in edge {
        *seen.entry(m).or_insert(0u32) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "{name}: duplicates at the edge: {dups:?}");
    let hub_set: BTreeSet<_> = hub.iter().collect();
    let edge_set: BTreeSet<_> = edge.iter().collect();
    let missing: Vec<_> = hub_set.difference(&edge_set).take(10).collect();
    let extra: Vec<_> = edge_set.difference(&hub_set).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: missing at the edge {missing:?}, not at the hub {extra:?}"
    );
    assert_eq!(hub.len(), edge.len(), "{name}: counts");
    if name == streams::METRICS {
        let mut per_machine: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for (subject, id) in edge {
            let m = subjects::machine_of_metrics(subject).expect("a metrics subject");
            let (idm, seq) = id.rsplit_once(':').expect("<machine>:<seq>");
            assert_eq!(m, idm, "subject and Msg-Id agree");
            per_machine
                .entry(m)
                .or_default()
                .insert(seq.parse().expect("seq"));
        }
        for (m, seqs) in per_machine {
            let last = seqs.iter().next_back().copied().unwrap_or(0);
            assert_eq!(
                seqs.len() as u64,
                last,
                "{m}: seqs 1..={last} without a gap"
            );
        }
    }
}

/// Compares the hub's and the edge's streams once the edge has caught up.
async fn compare(hub: &jetstream::Context, edge: &jetstream::Context) {
    for name in [streams::METRICS, streams::ALERTS] {
        let h = contents(hub, name).await;
        let e = contents(edge, name).await;
        assert_exactly_once(name, &h, &e);
        eprintln!(
            "{name}: {} messages at the hub and at the edge, each once",
            h.len()
        );
    }
    // MACHINES keeps the latest per machine on both sides.
    let (h, e) = (latest_facts(hub).await, latest_facts(edge).await);
    assert_eq!(h, e, "MACHINES: the same latest facts");
    assert_eq!(h.len(), MACHINES.len());
}

/// MACHINES as a set of (subject, Msg-Id).
async fn latest_facts(js: &jetstream::Context) -> BTreeSet<(String, String)> {
    contents(js, streams::MACHINES).await.into_iter().collect()
}

/// Waits until the edge holds as many messages as the hub in every stream.
async fn caught_up(hub: &jetstream::Context, edge: &jetstream::Context) -> Duration {
    let start = Instant::now();
    eventually(CATCH_UP, "the edge catches up with the hub", || async {
        if std::env::var_os("SYSMON_EDGE_TRACE").is_some() {
            eprintln!(
                "{:?} hub {} edge {}",
                start.elapsed(),
                count(hub, streams::METRICS).await,
                count(edge, streams::METRICS).await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for name in streams::EDGE_SOURCED {
            let (h, e) = (count(hub, name).await, count(edge, name).await);
            if h == 0 || h != e {
                return None;
            }
        }
        // MACHINES keeps one message per machine, so its count is the same
        // on both sides long before the edge holds the latest facts: wait
        // for the facts themselves.
        (latest_facts(hub).await == latest_facts(edge).await).then_some(())
    })
    .await;
    start.elapsed()
}

/// The hub's streams, created by the credentials that create them in
/// production.
async fn hub_streams(url: &str, c: &Creds) {
    let p = jetstream::new(connect(url, &c.persister, None).await);
    p.create_stream(streams::metrics(&streams::MetricsLimits {
        max_bytes: 1 << 30,
        ..Default::default()
    }))
    .await
    .expect("METRICS");
    p.create_stream(streams::machines())
        .await
        .expect("MACHINES");
    let a = jetstream::new(connect(url, &c.alerter, None).await);
    a.create_stream(streams::alerts()).await.expect("ALERTS");
}

/// Runs the traffic while `cut` cuts the link and `heal` heals it, then
/// waits for the edge and compares. `hub_url`/`edge_url` are reached from
/// where this future runs.
struct Run {
    during_cut: u64,
    catch_up: Duration,
}

async fn traffic_with_cut<C, H, CF, HF>(
    hub_url: &str,
    edge_url: &str,
    edge_monitor: &str,
    c: &Creds,
    cut: C,
    heal: H,
) -> Run
where
    C: FnOnce() -> CF,
    CF: Future<Output = ()>,
    H: FnOnce() -> HF,
    HF: Future<Output = ()>,
{
    hub_streams(hub_url, c).await;
    leaf_link_up(edge_monitor).await;
    let admin = jetstream::new(connect(edge_url, &c.edge_admin, None).await);
    sysmonstm_kit::jetstream::ensure_edge_streams(
        &admin,
        &streams::EdgeLimits::default(),
        streams::Partitions::ONE,
    )
    .await
    .expect("edge streams");
    // A second setup is harmless and keeps the hub as the source.
    sysmonstm_kit::jetstream::ensure_edge_streams(
        &admin,
        &streams::EdgeLimits::default(),
        streams::Partitions::ONE,
    )
    .await
    .expect("edge streams again");
    let mut m = admin
        .get_stream(streams::METRICS)
        .await
        .expect("edge METRICS");
    let cfg = m.info().await.expect("info").config.clone();
    assert!(cfg.subjects.is_empty());
    let src = cfg.sources.unwrap_or_default();
    assert_eq!(
        src.first()
            .and_then(|s| s.external.as_ref())
            .map(|e| e.api_prefix.as_str()),
        Some("$JS.hub.API"),
        "an update kept the hub as the source"
    );

    let hub = jetstream::new(connect(hub_url, &c.hub_reader, None).await);
    let edge = jetstream::new(connect(edge_url, &c.edge_gateway, None).await);

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (id, path) in &c.agents {
        tasks.push(tokio::spawn(agent(
            hub_url.to_owned(),
            id.clone(),
            path.clone(),
            stop.clone(),
        )));
    }
    let alerts = tokio::spawn(alerter(hub_url.to_owned(), c.alerter.clone(), stop.clone()));

    // Linked: the edge follows.
    eventually(
        Duration::from_secs(60),
        "snapshots reach the edge",
        || async { (count(&edge, streams::METRICS).await >= 20).then_some(()) },
    )
    .await;

    cut().await;
    let before = count(&hub, streams::METRICS).await;
    tokio::time::sleep(cut_for()).await; // the outage itself, not a wait for a condition
    let during_cut = count(&hub, streams::METRICS).await - before;
    heal().await;

    // A few seconds more of traffic after the link is back, then stop.
    let healed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await; // traffic, not a wait
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in tasks {
        sent += t.await.expect("agent task");
    }
    let alerts_sent = alerts.await.expect("alerter task");
    caught_up(&hub, &edge).await;
    let catch_up = healed_at.elapsed();
    assert_eq!(count(&hub, streams::METRICS).await, sent);
    assert_eq!(count(&hub, streams::ALERTS).await, alerts_sent);
    compare(&hub, &edge).await;
    Run {
        during_cut,
        catch_up,
    }
}

// ---------------------------------------------------------------------------
// 1. The edge server stopped and started again on the same store

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edge_restarted_after_a_cut_holds_every_hub_message_once() {
    let c = creds();
    let leaf_port = free_port();
    let monitor = format!("127.0.0.1:{}", free_port());
    let edge = Arc::new(std::sync::Mutex::new(NatsServer::start_with(
        &format!("domain: {}", streams::EDGE_DOMAIN),
        &edge_extra(&c, &format!("127.0.0.1:{leaf_port}"), &monitor),
    )));
    let edge_url = edge.lock().expect("edge").url();
    let hub = NatsServer::start_with(
        &format!("domain: {}\n  sync_interval: always", streams::HUB_DOMAIN),
        &hub_extra(&c, &format!("nats-leaf://127.0.0.1:{leaf_port}")),
    );
    let started = Instant::now();
    let (e1, e2) = (edge.clone(), edge.clone());
    let run = traffic_with_cut(
        &hub.url(),
        &edge_url,
        &monitor,
        &c,
        || async move { e1.lock().expect("edge").kill() },
        || async move { e2.lock().expect("edge").restart() },
    )
    .await;
    if std::env::var_os("SYSMON_EDGE_TRACE").is_some() {
        let dir = edge.lock().expect("edge").store_dir();
        let log = std::fs::read_to_string(dir.parent().expect("dir").join("server.log"));
        eprintln!("edge log:\n{}", log.unwrap_or_default());
        let log =
            std::fs::read_to_string(hub.store_dir().parent().expect("dir").join("server.log"));
        eprintln!("hub log:\n{}", log.unwrap_or_default());
    }
    assert!(
        run.during_cut >= cut_for().as_secs() * 10 * 2,
        "agents published during the cut"
    );
    eprintln!(
        "edge restart: cut {:?}, {} snapshots at the hub during it, caught up {:?} after the restart, test {:?}",
        cut_for(),
        run.during_cut,
        run.catch_up,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2. A real network cut: hub and edge in network namespaces of their own

/// Two network namespaces joined by a veth pair, deleted on drop (with
/// everything in them) even when the test fails. The link's addresses exist
/// only inside them; the test reaches each server through a forwarder on
/// this namespace's loopback.
struct Netns {
    hub: String,
    edge: String,
    hub_if: String,
    edge_if: String,
}

const HUB_ADDR: &str = "10.213.7.1";
const EDGE_ADDR: &str = "10.213.7.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes namespaces this test left behind in a run that was killed
/// before its `Drop` (named after a process that no longer exists).
fn sweep_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("sysmon-") else {
            continue;
        };
        let Some((pid, role)) = rest.split_once('-') else {
            continue;
        };
        if (role == "hub" || role == "edge")
            && pid.parse::<u32>().is_ok()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Netns {
    fn new() -> Result<Self, String> {
        sweep_stale_namespaces();
        let pid = std::process::id();
        let me = Self {
            hub: format!("sysmon-{pid}-hub"),
            edge: format!("sysmon-{pid}-edge"),
            hub_if: format!("smh{pid}"),
            edge_if: format!("sme{pid}"),
        };
        ip(&["netns", "add", &me.hub])?;
        ip(&["netns", "add", &me.edge])?;
        ip(&[
            "link",
            "add",
            &me.hub_if,
            "type",
            "veth",
            "peer",
            "name",
            &me.edge_if,
        ])?;
        ip(&["link", "set", &me.hub_if, "netns", &me.hub])?;
        ip(&["link", "set", &me.edge_if, "netns", &me.edge])?;
        for (ns, dev, addr) in [
            (&me.hub, &me.hub_if, HUB_ADDR),
            (&me.edge, &me.edge_if, EDGE_ADDR),
        ] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(me)
    }

    /// Takes the link down (`up = false`) or up on both ends. The servers
    /// are not told: their sockets stay open, packets just stop.
    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        for (ns, dev) in [(&self.hub, &self.hub_if), (&self.edge, &self.edge_if)] {
            ip(&["-n", ns, "link", "set", dev, state]).expect("link state");
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and the pair.
        let _ = ip(&["netns", "del", &self.hub]);
        let _ = ip(&["netns", "del", &self.edge]);
    }
}

/// Runs `f` on a thread of its own inside network namespace `ns`; sockets
/// it makes stay in that namespace.
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        rustix::thread::move_into_link_name_space(
            file.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        f()
    })
}

/// A TCP forwarder from 127.0.0.1:<returned port> here to `target` inside
/// namespace `ns`. Lives as long as the test process.
fn forward(ns: &str, target: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let ns = ns.clone();
            std::thread::spawn(move || {
                let Ok(Ok(server)) =
                    in_netns(&ns, move || std::net::TcpStream::connect(target)).join()
                else {
                    return;
                };
                let (mut c2, mut s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => return,
                };
                let up = std::thread::spawn(move || {
                    let mut c = client;
                    let mut s = server;
                    let _ = std::io::copy(&mut c, &mut s);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
                let _ = up.join();
            });
        }
    });
    port
}

/// A nats-server run with `ip netns exec`, killed on drop.
struct NsServer {
    child: Child,
    dir: tempfile::TempDir,
}

impl NsServer {
    fn start(ns: &str, config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sysmonstm-netns-")
            .tempdir()
            .expect("tempdir");
        let conf = dir.path().join("server.conf");
        let store = dir.path().join("store");
        std::fs::write(
            &conf,
            config.replace("@STORE@", &format!("{:?}", store.display().to_string())),
        )
        .expect("config");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into()))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ip netns exec nats-server");
        Self { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ns_server_conf(domain: &str, extra: &str) -> String {
    format!(
        "listen: 127.0.0.1:4222\nserver_name: {domain}\n\
         jetstream {{\n  store_dir: @STORE@\n  domain: {domain}\n  max_memory_store: 64MB\n  max_file_store: 4GB\n}}\n{extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_network_cut_between_namespaces_loses_and_duplicates_nothing() {
    // No skipping: where `ip netns` cannot work (no root, no iproute2), this
    // test fails and says why; scripts/install-deps.sh installs iproute2.
    let net = Netns::new().unwrap_or_else(|e| {
        panic!("network namespaces are needed for the network-cut test and failed: {e}")
    });
    let c = creds();
    let edge = NsServer::start(
        &net.edge,
        &ns_server_conf(
            streams::EDGE_DOMAIN,
            &edge_extra(&c, &format!("{EDGE_ADDR}:7422"), "127.0.0.1:8223"),
        ),
    );
    let hub = NsServer::start(
        &net.hub,
        &ns_server_conf(
            streams::HUB_DOMAIN,
            &format!(
                "{}\n",
                hub_extra(&c, &format!("nats-leaf://{EDGE_ADDR}:7422"))
            ),
        ),
    );
    let hub_url = format!("nats://127.0.0.1:{}", forward(&net.hub, "127.0.0.1:4222"));
    let edge_url = format!("nats://127.0.0.1:{}", forward(&net.edge, "127.0.0.1:4222"));
    let monitor = format!("127.0.0.1:{}", forward(&net.edge, "127.0.0.1:8223"));

    let started = Instant::now();
    let run = traffic_with_cut(
        &hub_url,
        &edge_url,
        &monitor,
        &c,
        || async { net.link(false) },
        || async { net.link(true) },
    )
    .await;
    if std::env::var_os("SYSMON_EDGE_TRACE").is_some() {
        eprintln!("edge log:\n{}\nhub log:\n{}", edge.log(), hub.log());
    }
    assert!(
        run.during_cut >= cut_for().as_secs() * 10 * 2,
        "agents published during the cut"
    );
    eprintln!(
        "network cut: {:?}, {} snapshots at the hub during it, caught up {:?} after the link came back, test {:?}",
        cut_for(),
        run.during_cut,
        run.catch_up,
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 3. Nothing published at the edge reaches the hub; the edge gateway's
//    credential publishes nothing; the operators do not mix.

/// A hub and an edge linked, the hub's streams and the edge's made, and the
/// first snapshot sourced (so the link is known to work).
async fn linked(c: &Creds) -> (NatsServer, NatsServer) {
    let leaf_port = free_port();
    let monitor = format!("127.0.0.1:{}", free_port());
    let edge = NatsServer::start_with(
        &format!("domain: {}", streams::EDGE_DOMAIN),
        &edge_extra(c, &format!("127.0.0.1:{leaf_port}"), &monitor),
    );
    let hub = NatsServer::start_with(
        &format!("domain: {}", streams::HUB_DOMAIN),
        &hub_extra(c, &format!("nats-leaf://127.0.0.1:{leaf_port}")),
    );
    hub_streams(&hub.url(), c).await;
    leaf_link_up(&monitor).await;
    let admin = jetstream::new(connect(&edge.url(), &c.edge_admin, None).await);
    sysmonstm_kit::jetstream::ensure_edge_streams(
        &admin,
        &streams::EdgeLimits::default(),
        streams::Partitions::ONE,
    )
    .await
    .expect("edge streams");
    let (id, path) = &c.agents[0];
    let js =
        jetstream::new(connect(&hub.url(), path, Some(&subjects::agent_inbox_prefix(id))).await);
    let mid = headers::msg_id(id, 1);
    publish_acked(&js, &subjects::metrics(id), &mid, b"one").await;
    let edge_js = jetstream::new(connect(&edge.url(), &c.edge_gateway, None).await);
    eventually(
        Duration::from_secs(60),
        "the first snapshot at the edge",
        || async { (count(&edge_js, streams::METRICS).await == 1).then_some(()) },
    )
    .await;
    (hub, edge)
}

/// What a client at the edge might try to get to the hub.
const EDGE_TO_HUB: [&str; 9] = [
    "sysmon.metrics.x",
    "sysmon.alerts.critical.x.cpu_high",
    "sysmon.alerts.resolved.edge-a.cpu_high",
    "sysmon.info.x",
    "sysmon.admin.forget.edge-a",
    "$KV.sysmon_rules.evil",
    "$JS.hub.API.STREAM.DELETE.METRICS",
    "$JS.hub.API.STREAM.PURGE.METRICS",
    "$JS.hub.API.STREAM.CREATE.EVIL",
];

#[tokio::test]
async fn nothing_published_at_the_edge_reaches_the_hub() {
    let c = creds();
    let (hub, edge) = linked(&c).await;

    // At the hub, a subscriber to everything (what any service listens to
    // is a subset of it).
    let hub_all = anything_goes(&c.hub, "hub-all");
    let watcher = connect(&hub.url(), &hub_all, None).await;
    let mut everything = watcher.subscribe(">").await.expect("subscribe");
    watcher.flush().await.expect("flush");

    // At the edge, a client that may publish anything.
    let edge_all = anything_goes(&c.edge, "edge-all");
    let client = connect(&edge.url(), &edge_all, None).await;
    for subject in EDGE_TO_HUB {
        client
            .publish(subject, "from the edge".into())
            .await
            .expect("published");
    }
    client.flush().await.expect("flush");
    // As requests: "no responders" means nobody anywhere the edge can reach
    // listens — the hub's interest in these subjects does not cross the
    // leaf link (a request that did cross would time out or be answered).
    for subject in EDGE_TO_HUB {
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(subject, "from the edge".into()),
        )
        .await
        .unwrap_or_else(|_| panic!("{subject}: the request hung"));
        match got {
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            other => panic!("{subject}: reached someone: {other:?}"),
        }
    }
    // The hub's subscriber saw none of it.
    watcher.flush().await.expect("flush");
    while let Ok(Some(m)) = tokio::time::timeout(Duration::ZERO, everything.next()).await {
        assert!(
            !EDGE_TO_HUB.contains(&m.subject.as_str()) && m.payload.as_ref() != b"from the edge",
            "{} arrived at the hub",
            m.subject
        );
    }
    // The hub's streams are as they were.
    let hub_js = jetstream::new(connect(&hub.url(), &c.hub_reader, None).await);
    assert_eq!(count(&hub_js, streams::METRICS).await, 1);
    assert_eq!(count(&hub_js, streams::ALERTS).await, 0);
    assert_eq!(count(&hub_js, streams::MACHINES).await, 0);
    assert!(hub_js.get_stream("EVIL").await.is_err());
    // And the edge did not store them either: its streams bind no subject.
    let edge_js = jetstream::new(connect(&edge.url(), &c.edge_gateway, None).await);
    assert_eq!(count(&edge_js, streams::METRICS).await, 1);
    assert_eq!(count(&edge_js, streams::ALERTS).await, 0);
}

#[tokio::test]
async fn the_edge_gateway_credential_reads_and_publishes_nothing() {
    let c = creds();
    let (hub, edge) = linked(&c).await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_credentials_file(c.edge_gateway.clone())
        .await
        .expect("creds")
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.to_string());
            }
        })
        .connect(edge.url())
        .await
        .expect("the edge gateway connects at the edge");
    let forbidden = EDGE_TO_HUB.iter().copied().chain([
        "$JS.API.STREAM.CREATE.EVIL",
        "$JS.API.STREAM.UPDATE.METRICS",
        "$JS.API.STREAM.DELETE.METRICS",
        "$JS.API.STREAM.PURGE.METRICS",
        "$JS.API.CONSUMER.DURABLE.CREATE.METRICS.x",
        "$JS.API.CONSUMER.DELETE.METRICS.x",
        "$JS.hub.API.CONSUMER.CREATE.METRICS",
        "$JS.FC.METRICS.x.y",
        "$JS.S.x",
        "anything.else",
    ]);
    for subject in forbidden {
        client
            .publish(subject, "edge gateway".into())
            .await
            .expect("sent");
        client.flush().await.expect("flush");
        let refused = eventually(
            Duration::from_secs(10),
            &format!("publishing to {subject} refused"),
            || {
                let got = rx.try_recv().ok();
                async move { got.filter(|e| e.contains("Permissions Violation")) }
            },
        )
        .await;
        assert!(refused.contains(subject), "{refused}");
    }
    // What it is for: reading the edge's streams.
    let js = jetstream::new(client);
    let got = contents(&js, streams::METRICS).await;
    assert_eq!(got.len(), 1);
    let s = js.get_stream(streams::METRICS).await.expect("METRICS");
    assert!(s.purge().await.is_err(), "the edge gateway purged METRICS");
    assert_eq!(count(&js, streams::METRICS).await, 1);

    // The operators do not mix: no edge credential at the hub, no hub
    // credential at the edge.
    for (url, creds) in [
        (hub.url(), &c.edge_gateway),
        (hub.url(), &c.leaf),
        (edge.url(), &c.hub_reader),
        (edge.url(), &c.agents[0].1),
    ] {
        let r = async_nats::ConnectOptions::with_credentials_file(creds.clone())
            .await
            .expect("creds")
            .connect(&url)
            .await;
        assert!(r.is_err(), "{} was accepted at {url}", creds.display());
    }
}
