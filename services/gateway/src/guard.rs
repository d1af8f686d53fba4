//! Who may reach the gateway, checked before any handler runs.
//!
//! * **`Host` allow-list, every route.** DNS rebinding points a name the
//!   attacker owns at this address; the victim's browser then treats the
//!   gateway as the attacker's site, and the page's requests carry
//!   `Host: evil.example` *and* `Origin: http://evil.example` — so "Origin
//!   equals Host" alone lets it read everything. Only names the operator
//!   serves under pass ([`Hosts`]); the rest get 421. A request without
//!   `Host` is not from a browser (every browser sends one) and passes.
//! * **`Origin`, on `/ws` and the write routes.** A browser page elsewhere
//!   must neither read the live feed through a visitor's browser nor write
//!   rules with it: the `Origin` must be the (allowed) `Host` itself or one
//!   of `allowed_origins`. Clients that send none (scripts, the CLI) pass.
//! * **Bearer token, on the write routes**, compared in constant time. With
//!   no token configured every write is refused: never open by default.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use crate::error::ApiError;
use crate::state::Shared;

/// Why a request was refused before its handler (the counter's label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Host,
    Origin,
    NoTokenConfigured,
    Unauthorized,
    /// Over an address's request allowance (the edge, `rate`).
    Rate,
    /// A method other than GET/HEAD at the read-only edge.
    Method,
}

impl Refusal {
    pub const REASONS: [&'static str; 6] = [
        "host",
        "origin",
        "no_token",
        "unauthorized",
        "rate",
        "method",
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Origin => "origin",
            Self::NoTokenConfigured => "no_token",
            Self::Unauthorized => "unauthorized",
            Self::Rate => "rate",
            Self::Method => "method",
        }
    }
}

/// The API token; never printed.
pub struct Token(Vec<u8>);

impl Token {
    pub fn new(token: &str) -> Self {
        Self(token.as_bytes().to_vec())
    }

    /// Constant time in the token's content (a different length is refused
    /// at once: the length is not the secret).
    pub fn matches(&self, given: &[u8]) -> bool {
        bool::from(self.0.as_slice().ct_eq(given))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The `Host` values served.
#[derive(Clone, Debug)]
pub struct Hosts {
    /// Lowercase names (or IP literals, IPv6 in brackets) with the port they
    /// must come with (`None`: any).
    allowed: Vec<(String, Option<u16>)>,
    /// Listening on every address: any IP literal on our port is fine (a
    /// rebinding page always arrives under a name, never an IP literal).
    any_ip: bool,
    port: u16,
}

impl Hosts {
    /// From the configured listen address (its port may still be 0) and
    /// `allowed_hosts`.
    pub fn new(listen: &str, extra: &[String]) -> Self {
        let (host, port) = split_host(listen).unwrap_or(("127.0.0.1".to_owned(), None));
        Self::build(&host, port.unwrap_or(0), extra)
    }

    /// Once bound: the real port.
    pub fn bound(listen: &str, addr: SocketAddr, extra: &[String]) -> Self {
        let host = split_host(listen)
            .map(|(h, _)| h)
            .unwrap_or_else(|| bracket(addr.ip()));
        Self::build(&host, addr.port(), extra)
    }

    fn build(listen_host: &str, port: u16, extra: &[String]) -> Self {
        let any_ip = listen_host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        let mut allowed: Vec<(String, Option<u16>)> =
            [listen_host, "localhost", "127.0.0.1", "[::1]"]
                .iter()
                .map(|h| (h.to_ascii_lowercase(), Some(port)))
                .collect();
        for e in extra {
            if let Some((h, p)) = split_host(e) {
                allowed.push((h, p));
            }
        }
        Self {
            allowed,
            any_ip,
            port,
        }
    }

    /// Whether a request with this `Host` header is served. A `Host`
    /// without a port means port 80.
    pub fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = split_host(host) else {
            return false;
        };
        let port = port.unwrap_or(80);
        if self
            .allowed
            .iter()
            .any(|(n, p)| *n == name && p.is_none_or(|p| p == port))
        {
            return true;
        }
        self.any_ip
            && port == self.port
            && name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .is_ok()
    }
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// `name`, `name:port`, `[v6]`, `[v6]:port` → lowercase name (a trailing
/// dot dropped, IPv6 kept in brackets) and port; `None` if malformed.
fn split_host(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        (format!("[{v6}]"), port)
    } else {
        match s.split_once(':') {
            Some((n, p)) => (n.to_owned(), Some(p.parse::<u16>().ok()?)),
            None => (s.to_owned(), None),
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
    ok.then_some((name, port))
}

pub(crate) fn refuse(s: &Shared, why: Refusal, status: StatusCode, message: String) -> Response {
    s.counters
        .http_refused
        .with_label_values(&[why.reason()])
        .inc();
    if s.logs.refused.allow("request refused") {
        tracing::warn!(reason = why.reason(), %message, "request refused");
    }
    let mut e = ApiError::bad(
        match why {
            Refusal::Host => "Host",
            Refusal::Origin => "Origin",
            Refusal::NoTokenConfigured | Refusal::Unauthorized => "Authorization",
            Refusal::Rate => "address",
            Refusal::Method => "method",
        },
        message,
    );
    e.status = status;
    let mut resp = e.into_response();
    if why == Refusal::Method {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sysmonstm\""),
        );
    }
    resp
}

/// Middleware on every route: the `Host` allow-list.
pub async fn hosts(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let host = match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok().map(str::to_owned),
        None => match req.uri().authority() {
            Some(a) => Some(a.as_str().to_owned()),
            None => return next.run(req).await,
        },
    };
    let allowed = host
        .as_deref()
        .is_some_and(|h| s.hosts.read().map(|hosts| hosts.allows(h)).unwrap_or(false));
    if allowed {
        return next.run(req).await;
    }
    refuse(
        &s,
        Refusal::Host,
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "Host {:?} is not served here; an operator adds the name to allowed_hosts",
            host.unwrap_or_default()
        ),
    )
}

/// Whether the request's `Origin` (if any) is this site or an allowed one.
/// The `Host` has passed [`hosts`] already, so "Origin equals Host" means a
/// page of a name the operator serves under.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed.iter().any(|a| a == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// The checks of a write route: `Origin`, then the bearer token. `Some`
/// is the refusal to send.
pub fn write_refused(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    if !origin_allowed(headers, &s.config.allowed_origins) {
        return Some(refuse(
            s,
            Refusal::Origin,
            StatusCode::FORBIDDEN,
            "this Origin may not change rules".into(),
        ));
    }
    let Some(token) = &s.api_token else {
        return Some(refuse(
            s,
            Refusal::NoTokenConfigured,
            StatusCode::FORBIDDEN,
            "rule writes are disabled: the gateway has no API token \
             (set api_token_file or SYSMON_GATEWAY_API_TOKEN)"
                .into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| rest.trim().to_owned())
        });
    match given {
        None => Some(refuse(
            s,
            Refusal::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "rule writes need an `Authorization: Bearer <token>` header".into(),
        )),
        Some(t) if !token.matches(t.as_bytes()) => Some(refuse(
            s,
            Refusal::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "the bearer token is wrong".into(),
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listen_host_and_loopback_on_its_port_are_served() {
        let h = Hosts::bound(
            "127.0.0.1:0",
            "127.0.0.1:8080".parse().expect("addr"),
            &["dash.example.com".into(), "other.example:9000".into()],
        );
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST:8080",
            "[::1]:8080",
            "dash.example.com",
            "dash.example.com:443",
            "dash.example.com.",
            "other.example:9000",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8080",
            "localhost:8081",
            "localhost",
            "other.example:9001",
            "10.0.0.1:8080",
            "",
            "localhost:99999",
            "[::1",
            "a b:8080",
        ] {
            assert!(!h.allows(refused), "{refused}");
        }
    }

    #[test]
    fn on_every_address_ip_literals_on_the_port_are_served_but_not_names() {
        let h = Hosts::bound("0.0.0.0:8080", "0.0.0.0:8080".parse().expect("addr"), &[]);
        assert!(h.allows("10.0.0.1:8080"));
        assert!(h.allows("[fe80::1]:8080"));
        assert!(!h.allows("10.0.0.1:8081"));
        assert!(!h.allows("evil.example:8080"));
    }

    #[test]
    fn the_token_compares_whole() {
        let t = Token::new("0123456789abcdef");
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b"0123456789abcde"));
        assert!(!t.matches(b""));
    }
}
