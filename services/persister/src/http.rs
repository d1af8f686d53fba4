//! The `/metrics` endpoint: a minimal HTTP/1.1 server (one response per
//! connection) so Prometheus can scrape the counters without another
//! dependency.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// Serves until shutdown.
pub async fn serve(listener: TcpListener, counters: Arc<Counters>, shutdown: CancellationToken) {
    loop {
        let (mut sock, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on /metrics failed");
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            // Read up to the end of the request head (or a full buffer).
            while n < buf.len() {
                match sock.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = if path == "/metrics" {
                ("200 OK", "text/plain; version=0.0.4", counters.render())
            } else {
                (
                    "404 Not Found",
                    "text/plain",
                    "not found; try /metrics\n".to_owned(),
                )
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
