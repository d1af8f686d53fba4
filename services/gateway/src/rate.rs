//! The edge's request allowance per address: every request (REST, a
//! WebSocket connect, an asset) takes a token from its address's bucket
//! (`http_burst` tokens, refilled at `http_requests_per_s`); an empty bucket
//! is a 429 with `Retry-After`, counted in `http_refused_total{reason="rate"}`.
//!
//! The map of buckets is a moka cache bounded by entries
//! ([`MAX_ADDRESSES`]) whose entries go after a minute unused, so a scan from
//! many addresses costs bounded memory; an address evicted early only gets a
//! full bucket again. IPv6 addresses count per /64, the block one subscriber
//! is usually given, so an address from the same block is not a new budget.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::guard::{Refusal, refuse};
use crate::state::Shared;
use crate::ws::{Allowance, lock};

/// Most addresses whose allowance is held at once.
pub const MAX_ADDRESSES: u64 = 100_000;

/// What one allowance is kept for: an IPv4 address, or an IPv6 /64.
pub type Key = IpAddr;

/// The bucket an address counts in: IPv4 as it is (also when mapped into
/// IPv6), IPv6 by its /64.
pub fn key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

/// Middleware (edge): takes one token of the peer's allowance, or refuses.
/// A request without a peer address (a router driven in a test) passes.
pub async fn limit(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip())
    else {
        return next.run(req).await;
    };
    let (per_s, burst) = (s.config.http_requests_per_s, s.config.http_burst);
    let allowance = s.http_rate.get_with(key(ip), || {
        Arc::new(Mutex::new(Allowance::new(burst, per_s)))
    });
    let taken = lock(&allowance).take(Instant::now());
    match taken {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            let mut resp = refuse(
                &s,
                Refusal::Rate,
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many requests from {ip} (http_requests_per_s, http_burst)"),
            );
            let secs = wait.as_secs().saturating_add(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("v6");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("v6");
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("mapped");
        assert_eq!(key(mapped), "192.0.2.7".parse::<IpAddr>().expect("v4"));
        assert_ne!(
            key("127.0.0.1".parse().expect("v4")),
            key("127.0.0.2".parse().expect("v4"))
        );
    }
}
