//! The OTLP trace exporter's HTTP client: one blocking `POST` per batch of
//! spans over std's `TcpStream`, on the SDK's batch thread (which drives the
//! exporter with a plain `block_on`, outside any tokio runtime).
//!
//! reqwest's blocking client did this before, with hyper, a tokio runtime of
//! its own and their code in every binary — ~0.4 MiB of the agent's resident
//! code pages, linked even where no endpoint is set (docs/benchmarks.md).
//! The exporter needs one request shape to one collector on plain http
//! (docs/configuration.md), so this is all of it: HTTP/1.1 with
//! `Connection: close`, a deadline over the whole exchange, and bounded
//! reads of whatever the collector answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// The whole exchange (connect, send, read the answer) within this.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's status line and headers; more is not a collector.
const MAX_HEAD: usize = 16 * 1024;
/// A collector's answer body (an OTLP partial-success message is a few
/// bytes; the SDK's own clients stop at 4 MiB).
const MAX_BODY: usize = 1024 * 1024;

/// See the module's documentation.
#[derive(Debug)]
pub(crate) struct Client {
    timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Self { timeout: TIMEOUT }
    }
}

/// Refuses, before any span is made, an endpoint this client cannot reach.
pub(crate) fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let uri: http::Uri = endpoint
        .trim()
        .parse()
        .map_err(|e| format!("OTLP endpoint {endpoint:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Some("http") => Err(format!("OTLP endpoint {endpoint:?} has no host")),
        Some("https") => Err(format!(
            "OTLP endpoint {endpoint:?}: traces are sent over plain http only; \
             run a collector on this machine or network and point at it with http://"
        )),
        _ => Err(format!("OTLP endpoint {endpoint:?} is not an http:// URL")),
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        self.send(&request)
    }
}

impl Client {
    fn send(&self, request: &Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let deadline = Instant::now() + self.timeout;
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(format!("{uri}: only http:// is supported").into());
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut stream = connect((bare, port).to_socket_addrs()?, deadline)?;

        // Host and port only: never a user:password@ of the URL.
        let authority = match uri.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        };
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
            request.method(),
            uri.path_and_query().map_or("/", |p| p.as_str()),
            request.body().len(),
        )
        .into_bytes();
        for (name, value) in request.headers() {
            if [
                http::header::HOST,
                http::header::CONTENT_LENGTH,
                http::header::CONNECTION,
                http::header::TRANSFER_ENCODING,
            ]
            .contains(name)
            {
                continue;
            }
            // `HeaderValue` holds no CR or LF: a header cannot split the head.
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        send_all(&mut stream, &head, deadline)?;
        send_all(&mut stream, request.body(), deadline)?;
        read_response(&mut stream, deadline)
    }
}

/// The first of `addrs` that accepts a connection before the deadline, with
/// every later read and write bounded by what is left of it.
fn connect(
    addrs: impl Iterator<Item = SocketAddr>,
    deadline: Instant,
) -> Result<TcpStream, HttpError> {
    let mut last: Option<std::io::Error> = None;
    for addr in addrs {
        let left = left(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| "the host has no address".into(), Into::into))
}

/// Writes all of `bytes` within what is left of the deadline, however
/// slowly the other end reads (each write waits at most what is left).
fn send_all(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> Result<(), HttpError> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        match stream.write(&bytes[..bytes.len().min(64 * 1024)]) {
            Ok(0) => return Err("the connection closed while sending".into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("timed out".into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn left(deadline: Instant) -> Result<Duration, HttpError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".into())
}

/// Reads the answer: its head, then a body delimited by `Content-Length`,
/// chunks or the end of the connection, each read within the deadline and
/// every part within its bound.
fn read_response(stream: &mut TcpStream, deadline: Instant) -> Result<Response<Bytes>, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("the answer's head is over 16 KiB".into());
        }
        if fill(stream, &mut buf, deadline)? == 0 {
            return Err("the connection closed before the answer's head ended".into());
        }
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| "the answer's head is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1."))
        .filter(|l| {
            l.as_bytes().get(1) == Some(&b' ') && matches!(l.as_bytes().get(5), None | Some(b' '))
        })
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or("the answer does not start with an HTTP/1.x status line")?;
    let mut response = Response::builder().status(status);
    let (mut length, mut chunked) = (None, false);
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("a header line without ':'")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "a bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
        response = response.header(name.trim(), value);
    }
    let mut body = buf.split_off(head_end);
    match (chunked, length) {
        (true, _) => {
            while find(&body, b"0\r\n\r\n").is_none_or(|i| !ends_chunks(&body, i)) {
                if fill(stream, &mut body, deadline)? == 0 {
                    break;
                }
                if body.len() > MAX_BODY {
                    return Err("the answer's body is over 1 MiB".into());
                }
            }
            body = dechunk(&body)?;
        }
        (false, Some(n)) if n > MAX_BODY => return Err("the answer's body is over 1 MiB".into()),
        (false, Some(n)) => {
            while body.len() < n {
                if fill(stream, &mut body, deadline)? == 0 {
                    return Err("the connection closed before the answer's body ended".into());
                }
            }
            body.truncate(n);
        }
        (false, None) => {
            while fill(stream, &mut body, deadline)? != 0 {
                if body.len() > MAX_BODY {
                    return Err("the answer's body is over 1 MiB".into());
                }
            }
        }
    }
    Ok(response.body(Bytes::from(body))?)
}

/// One read of up to 8 KiB appended to `buf`, within what is left of the
/// deadline; 0 at the end of the connection.
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant) -> Result<usize, HttpError> {
    stream.set_read_timeout(Some(left(deadline)?))?;
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err("timed out".into())
        }
        Err(e) => Err(e.into()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether the `0\r\n\r\n` at `i` is the last chunk rather than the end of
/// a chunk's data: decoding what comes before it must end exactly there.
fn ends_chunks(body: &[u8], i: usize) -> bool {
    dechunk(&body[..i + 5]).is_ok()
}

/// The data of a complete chunked body (no trailers: a collector sends none).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("a chunk without its size line")?;
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .map(|s| s.split(';').next().unwrap_or("").trim())
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or("a bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return if rest == b"\r\n" {
                Ok(out)
            } else {
                Err("bytes after the last chunk".into())
            };
        }
        if size > MAX_BODY - out.len().min(MAX_BODY) || rest.len() < size + 2 {
            return Err("a chunk longer than the body".into());
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("a chunk not ended by CRLF".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A collector on a port the kernel chose that reads one request and
    /// answers `reply`; returns the client's request as received.
    fn collector(reply: &'static [u8]) -> (String, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = Vec::new();
            let mut b = [0u8; 4096];
            // The head, then the body its Content-Length announces.
            loop {
                let n = s.read(&mut b).expect("read");
                got.extend_from_slice(&b[..n]);
                if let Some(i) = find(&got, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..i]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("content-length");
                    if got.len() >= i + 4 + len {
                        break;
                    }
                }
                assert!(n > 0, "client closed early");
            }
            s.write_all(reply).expect("reply");
            got
        });
        (url, h)
    }

    fn post(url: &str) -> Request<Bytes> {
        Request::post(url)
            .header("content-type", "application/x-protobuf")
            .header("x-tenant", "ops")
            .body(Bytes::from_static(b"\x0a\x02spans"))
            .expect("request")
    }

    fn send(url: &str) -> Result<Response<Bytes>, HttpError> {
        Client::default().send(&post(url))
    }

    #[test]
    fn posts_the_spans_and_reads_a_sized_answer() {
        let (url, h) = collector(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 2\r\n\r\nok");
        let r = send(&url).expect("sent");
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"ok");
        assert_eq!(r.headers()["content-type"], "application/x-protobuf");
        let got = h.join().expect("collector");
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("POST /v1/traces HTTP/1.1\r\n"), "{got}");
        for line in [
            "Host: 127.0.0.1:",
            "Content-Length: 7\r\n",
            "Connection: close\r\n",
            "content-type: application/x-protobuf\r\n",
            "x-tenant: ops\r\n",
        ] {
            assert!(got.contains(line), "{line:?} missing from {got:?}");
        }
        assert!(got.ends_with("\r\n\r\n\x0a\x02spans"), "{got:?}");
    }

    #[test]
    fn reads_chunked_and_closed_answers_and_keeps_error_statuses() {
        let (url, _h) = collector(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n");
        assert_eq!(send(&url).expect("chunked").body().as_ref(), b"abcde");
        let (url, _h) =
            collector(b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 3\r\n\r\nbusy");
        let r = send(&url).expect("closed");
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.body().as_ref(), b"busy");
    }

    #[test]
    fn garbage_oversized_and_short_answers_are_errors() {
        for reply in [
            &b"SSH-2.0-OpenSSH_9.2\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            let (url, _h) = collector(reply);
            let r = send(&url);
            assert!(r.is_err(), "{:?} was taken: {r:?}", String::from_utf8_lossy(reply));
        }
    }

    #[test]
    fn a_collector_that_never_answers_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", l.local_addr().expect("addr"));
        let c = Client {
            timeout: Duration::from_millis(300),
        };
        let started = Instant::now();
        let e = c.send(&post(&url)).expect_err("no answer");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(l);
    }

    #[test]
    fn a_collector_that_stops_reading_times_out_however_large_the_spans() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/v1/traces", l.local_addr().expect("addr"));
        // Accepts, then never reads: the client's writes fill both buffers.
        let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
        let big = Request::post(url)
            .body(Bytes::from(vec![b'x'; 64 * 1024 * 1024]))
            .expect("request");
        let c = Client {
            timeout: Duration::from_millis(500),
        };
        let started = Instant::now();
        let e = c.send(&big).expect_err("nobody read it");
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(held.join());
    }

    #[test]
    fn only_plain_http_endpoints_are_taken() {
        check_endpoint("http://127.0.0.1:4318").expect("http");
        check_endpoint("http://collector:4318/v1/traces").expect("named");
        check_endpoint("http://[::1]:4318").expect("v6");
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "ftp://x",
            "http://",
            "http://a b",
            "",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unreachable_collector_is_an_error_not_a_hang() {
        // A port the kernel gave and took back: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        assert!(send(&format!("http://127.0.0.1:{port}/v1/traces")).is_err());
    }
}
