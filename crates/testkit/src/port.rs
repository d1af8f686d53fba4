//! Ports for the servers tests start, stop and start again, chosen so that no
//! other process can take one in between.
//!
//! The race this prevents: bind port 0, read the port, release it, start the
//! server on it — and in between another test process's server, bound to port
//! 0 too, gets the same port from the kernel (seen as ConnectionRefused right
//! after a hub "started": it never listened). So:
//!
//! * A server that can pick its own port does (nats-server's `-1`, read back
//!   from its ports file; see `nats.rs`).
//! * A program that must be told a port gets one from [`free_port`]: free now
//!   and below the kernel's ephemeral range, which the kernel never hands out
//!   for a bind to port 0 or an outgoing connection. Only another explicit
//!   choice of the same port could meet it, and a random pick from ~10 000
//!   ports, re-checked, makes that a one-in-millions event, retried by the
//!   starters here on a bind failure.
//! * A server stopped and started again must come back on the same port (the
//!   services under test reconnect to the URL they were given). While it is
//!   down and until it is dropped, [`PortHold`] keeps that port: a socket
//!   bound to it with `SO_REUSEADDR`, never listening (taken before the first
//!   start where the port is known then, else the moment the server dies: a
//!   listening port cannot be held). The kernel hands a port with a
//!   bound socket to no one (a bind to port 0 and an outgoing connection both
//!   skip it), while the server itself, which also sets `SO_REUSEADDR`
//!   (nats-server and PostgreSQL both do), can still listen on it. While the
//!   server is down, connections are refused, exactly as with no server.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use tokio::net::TcpSocket;

/// A port on 127.0.0.1 held by a bound, non-listening socket with
/// `SO_REUSEADDR`: the kernel gives it to no one else until this is dropped,
/// and only a program that asks for this very port with `SO_REUSEADDR` (the
/// server it is held for) can listen on it.
pub struct PortHold {
    _socket: TcpSocket,
    port: u16,
}

impl PortHold {
    /// Holds `port`. Fails if something else has it.
    pub fn on(port: u16) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        // Lets the server listen on the held port, and the hold bind over the
        // TIME_WAIT connections a killed server leaves.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        let port = socket.local_addr()?.port();
        Ok(Self {
            _socket: socket,
            port,
        })
    }

    /// A port where connections are refused for as long as this lives: for
    /// "no server there" tests.
    pub fn refusing() -> Self {
        Self::on(0).expect("the OS gives out a port")
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Ports below the ephemeral range that [`free_port`] picks from.
const FLOOR: u16 = 10_000;

/// A port on 127.0.0.1 for a program that must be told one (a binary's
/// `--listen`): free now, and outside the kernel's ephemeral range so that no
/// bind to port 0 and no outgoing connection can take it before the program
/// binds it (module doc). Where a server can pick its own port, let it.
pub fn free_port() -> u16 {
    let top = ephemeral_start().unwrap_or(32_768);
    if top > FLOOR + 1_000 {
        for _ in 0..200 {
            let port = rand::random_range(FLOOR..top);
            if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return port;
            }
        }
    }
    // No room below the ephemeral range (an unusual sysctl): the kernel's
    // choice, racy as described above.
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS gives out a free port")
}

/// The first port of `net.ipv4.ip_local_port_range`.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_refuses_connections_until_its_server_listens() {
        let hold = PortHold::refusing();
        let addr = (Ipv4Addr::LOCALHOST, hold.port());
        let err = std::net::TcpStream::connect(addr).expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        // The server it is held for can listen (std sets SO_REUSEADDR).
        let server = TcpListener::bind(addr).expect("listen on the held port");
        drop(server);
        assert_eq!(
            std::net::TcpStream::connect(addr)
                .map_err(|e| e.kind())
                .err(),
            Some(std::io::ErrorKind::ConnectionRefused),
            "refused again once the server is gone"
        );
    }

    #[test]
    fn free_ports_come_from_below_the_ephemeral_range() {
        let top = ephemeral_start().unwrap_or(32_768);
        for _ in 0..20 {
            let p = free_port();
            assert!((FLOOR..top).contains(&p), "{p}");
        }
    }
}
