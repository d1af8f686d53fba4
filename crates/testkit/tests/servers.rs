//! The harness itself: servers pick their own ports, and a server that is
//! down keeps its port, so a restart comes back on the URL the services
//! under test were given and no other test can meet it there.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use sysmonstm_testkit::{NatsServer, PgCluster, PortHold};

fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// A bind as the kernel's own choices see a port: a bound socket (without
/// SO_REUSEADDR on both sides) makes it taken.
fn bind_without_reuse(port: u16) -> std::io::Result<()> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(false)?;
    s.bind((Ipv4Addr::LOCALHOST, port).into())
}

/// The first line a NATS server sends.
fn nats_info(port: u16) -> String {
    let s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("INFO line");
    line
}

#[test]
fn a_killed_nats_server_keeps_its_port_and_restarts_on_it() {
    let mut hub = NatsServer::start();
    let port = hub.port();
    assert!(nats_info(port).starts_with("INFO "));
    hub.kill();
    assert!(refused(port), "a dead hub refuses connections");
    assert!(
        bind_without_reuse(port).is_err(),
        "the port stays held while the hub is down"
    );
    hub.restart();
    assert_eq!(hub.port(), port);
    assert!(nats_info(port).starts_with("INFO "));
}

#[test]
fn nats_servers_started_together_each_get_a_port_of_their_own() {
    let servers: Vec<NatsServer> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(NatsServer::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start"))
            .collect()
    });
    let mut ports: Vec<u16> = servers.iter().map(NatsServer::port).collect();
    for p in &ports {
        // The server that answers is a NATS server (not another test's).
        assert!(nats_info(*p).starts_with("INFO "));
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
}

#[tokio::test]
async fn a_stopped_postgresql_keeps_its_port_and_starts_again_on_it() {
    let mut pg = PgCluster::start();
    pg.ready().await;
    let port = pg.port();
    pg.stop();
    assert!(refused(port), "a stopped server refuses connections");
    assert!(
        bind_without_reuse(port).is_err(),
        "the port stays held while PostgreSQL is down"
    );
    pg.start_again();
    assert_eq!(pg.port(), port);
    pg.ready().await;
}

#[test]
fn a_refusing_port_refuses() {
    let hold = PortHold::refusing();
    assert!(refused(hold.port()));
}

#[test]
fn the_shipped_hub_runs_with_its_jetstream_settings() {
    let hub = NatsServer::start_shipped_hub();
    let info = nats_info(hub.port());
    assert!(info.contains("\"jetstream\":true"), "{info}");
    let conf =
        std::fs::read_to_string(hub.store_dir().with_file_name("server.conf")).expect("conf");
    assert!(conf.contains("sync_interval: always"), "{conf}");
    assert!(!conf.contains("4222") && !conf.contains("8222"), "{conf}");
}
