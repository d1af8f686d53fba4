//! Serving an axum router on a listener with the limits a public socket needs.
//!
//! `axum::serve` sets no read timeout (hyper's header timeout needs a timer,
//! which it does not give) and no cap on connections, so an idle or slow
//! client holds a task for ever and a flood of them grows memory without
//! bound. Here each connection must send its request head within
//! [`ServeOptions::header_read_timeout`], at most
//! [`ServeOptions::max_connections`] are served at once (the next ones are
//! closed at accept and counted), and the peer address is available to
//! handlers as `axum::extract::ConnectInfo<SocketAddr>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits of one HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Connections served at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, also between
    /// requests on a kept-alive connection.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// What the server counts; shared with the service's `/metrics`.
#[derive(Debug, Default)]
pub struct ServeCounters {
    /// Connections closed at accept because `max_connections` were open.
    pub refused_connections: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicU64,
}

/// A service's own endpoint (the persister and the alerter have no other
/// HTTP): `GET /metrics` from `registry` and `GET /health`, bound on `listen`
/// (port 0 picks one), announced with [`bound`] and served with the default
/// [`ServeOptions`] until `shutdown`. Returns the bound address.
pub async fn serve_ops(
    service: &str,
    listen: &str,
    registry: Arc<crate::metrics::Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let app = registry
        .router()
        .route("/health", axum::routing::get(|| async { "ok\n" }));
    bound(service, addr);
    tokio::spawn(serve(
        listener,
        app,
        shutdown,
        ServeOptions::default(),
        Arc::new(ServeCounters::default()),
    ));
    Ok(addr)
}

/// Says where a service's HTTP listener is bound: a log line, and when the
/// environment names a file in `SYSMON_ADDR_FILE`, that file holds the
/// address (written whole, then renamed into place), so whoever started the
/// process with port 0 — a test, `just up` — learns the port without a race.
pub fn bound(service: &str, addr: SocketAddr) {
    tracing::info!(%addr, "{service} listening");
    let Some(path) = std::env::var_os("SYSMON_ADDR_FILE") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let tmp = path.with_extension("tmp");
    let res = std::fs::write(&tmp, addr.to_string()).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = res {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the address file");
    }
}

/// Serves `app` until `shutdown`; then stops accepting, asks every open
/// connection to finish its request and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    opts: ServeOptions,
    counters: Arc<ServeCounters>,
) {
    let permits = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment
                    // instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            counters.refused_connections.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = app
            .clone()
            .layer(axum::Extension(ConnectInfo::<SocketAddr>(peer)));
        let shutdown = shutdown.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            counters.open_connections.fetch_add(1, Ordering::Relaxed);
            // HTTP/1 (with upgrades, for WebSockets) only: hyper-util's
            // auto builder would first wait for bytes to tell HTTP/1 from
            // HTTP/2, with no timeout on that wait.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(opts.header_read_timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                }
            }
            counters.open_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    async fn start(opts: ServeOptions) -> (SocketAddr, CancellationToken, Arc<ServeCounters>) {
        let app = Router::new().route(
            "/peer",
            get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let counters = Arc::new(ServeCounters::default());
        tokio::spawn(serve(
            listener,
            app,
            stop.clone(),
            opts,
            Arc::clone(&counters),
        ));
        (addr, stop, counters)
    }

    async fn get_split(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // A request head split across packets is still one request.
        s.write_all(b"GET /pe").await.expect("write");
        s.flush().await.expect("flush");
        tokio::task::yield_now().await;
        s.write_all(b"er HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn a_split_request_is_answered_with_the_peer_known() {
        let (addr, stop, _) = start(ServeOptions::default()).await;
        let out = get_split(addr).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("127.0.0.1"), "{out}");
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_full_server_refuses() {
        let opts = ServeOptions {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(300),
        };
        let (addr, stop, counters) = start(opts).await;
        // An idle client: it sends nothing, and is closed after the timeout.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        sysmonstm_eventually(|| counters.open_connections.load(Ordering::Relaxed) == 1).await;
        // While it holds the only slot, another connection is refused.
        let mut other = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), other.read(&mut buf))
            .await
            .expect("refused connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "refused connection got bytes");
        assert_eq!(counters.refused_connections.load(Ordering::Relaxed), 1);
        let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
            .await
            .expect("idle connection closed by the header timeout");
        // hyper may answer 408 or just close.
        let _ = n;
        sysmonstm_eventually(|| counters.open_connections.load(Ordering::Relaxed) == 0).await;
        // The slot is free again.
        assert!(get_split(addr).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
    }

    async fn sysmonstm_eventually(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "condition not met");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
