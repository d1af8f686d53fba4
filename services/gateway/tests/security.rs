//! Who may write and who may read, over a real socket against a real
//! nats-server: rule writes need the bearer token (none configured → every
//! write refused), a foreign `Origin` may neither write nor open `/ws`, and
//! a `Host` that is not served (DNS rebinding) gets nothing from any route.

mod common;

use std::net::SocketAddr;

use common::{WAIT, env};
use serde_json::Value;
use sysmonstm_gateway::{Gateway, GatewayConfig};
use sysmonstm_schemas::streams;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const TOKEN: &str = "s3cret-token-for-the-test-0123456789";

async fn start(env: &common::Env, cfg: GatewayConfig) -> sysmonstm_gateway::Running {
    Gateway::connect(cfg)
        .await
        .expect("connects")
        .start(env.shutdown.clone())
        .await
        .expect("binds")
}

struct Answer {
    status: u16,
    json: Value,
    raw: String,
}

/// One HTTP/1.1 request on its own connection; `headers` are sent as given
/// (a `Host` among them replaces the default).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked bodies: the JSON sits between the chunk sizes.
    let json = serde_json::from_str(body)
        .or_else(|_| {
            let start = body.find(['{', '[']).unwrap_or(0);
            let end = body.rfind(['}', ']']).map_or(body.len(), |e| e + 1);
            serde_json::from_str(&body[start..end])
        })
        .unwrap_or(Value::Null);
    Answer { status, json, raw }
}

const RULE: &str = r#"{"metric":"cpu","threshold":90,"for":"1m","severity":"critical"}"#;

async fn stored_rule(env: &common::Env, name: &str) -> Option<Value> {
    let kv = env.js.get_key_value(streams::RULES_BUCKET).await.ok()?;
    let v = kv.get(name).await.ok()??;
    serde_json::from_slice(&v).ok()
}

#[tokio::test]
async fn rule_writes_need_the_token_and_are_validated_like_the_cli() {
    let env = env(false).await;
    let cfg = GatewayConfig {
        api_token: Some(sysmonstm_gateway::config::Secret(TOKEN.into())),
        ..env.config()
    };
    let addr = start(&env, cfg).await.addr();
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];

    let a = http(addr, "PUT", "/api/rules/cpu_high", &[], RULE).await;
    assert_eq!(a.status, 401, "{}", a.raw);
    assert!(a.raw.contains("WWW-Authenticate") || a.raw.contains("www-authenticate"));
    let a = http(
        addr,
        "PUT",
        "/api/rules/cpu_high",
        &[(
            "Authorization",
            "Bearer s3cret-token-for-the-test-012345678X",
        )],
        RULE,
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.raw);
    let a = http(addr, "DELETE", "/api/rules/cpu_high", &[], "").await;
    assert_eq!(a.status, 401, "{}", a.raw);
    assert!(stored_rule(&env, "cpu_high").await.is_none());

    // The right token, but from another site's page.
    let a = http(
        addr,
        "PUT",
        "/api/rules/cpu_high",
        &[auth[0], ("Origin", "http://evil.example")],
        RULE,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.raw);
    assert_eq!(a.json["parameter"], "Origin");
    assert!(stored_rule(&env, "cpu_high").await.is_none());

    // Invalid rules: a 400 naming the field, in the CLI's words.
    let bad = http(
        addr,
        "PUT",
        "/api/rules/cpu_high",
        &auth,
        r#"{"metric":"cpu","threshold":90,"clear":95,"severity":"critical"}"#,
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.raw);
    assert_eq!(bad.json["parameter"], "clear");
    assert!(
        bad.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("field `clear`")),
        "{}",
        bad.json
    );
    for (body, field) in [
        (
            r#"{"metric":"cpu","threshold":120,"severity":"info"}"#,
            "threshold",
        ),
        (
            r#"{"metric":"cpu","threshold":1,"severity":"loud"}"#,
            "severity",
        ),
        (r#"{"threshold":1,"severity":"info"}"#, "metric"),
        (
            r#"{"metric":"cpu","threshold":1,"severity":"info","extra":1}"#,
            "extra",
        ),
        ("not json", "body"),
    ] {
        let a = http(addr, "PUT", "/api/rules/cpu_high", &auth, body).await;
        assert_eq!(a.status, 400, "{body}: {}", a.raw);
        assert_eq!(a.json["parameter"], field, "{body}: {}", a.json);
    }
    let a = http(addr, "PUT", "/api/rules/Bad%20Name", &auth, RULE).await;
    assert_eq!(a.status, 400, "{}", a.raw);
    assert_eq!(a.json["parameter"], "name");
    let big = format!(
        r#"{{"metric":"cpu","threshold":1,"severity":"info","description":"{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let a = http(addr, "PUT", "/api/rules/cpu_high", &auth, &big).await;
    assert_eq!(a.status, 413, "{}", &a.raw[..a.raw.len().min(300)]);
    assert!(stored_rule(&env, "cpu_high").await.is_none());

    // With the token: stored, listed, changed, removed.
    let a = http(addr, "PUT", "/api/rules/cpu_high", &auth, RULE).await;
    assert_eq!(a.status, 200, "{}", a.raw);
    let stored = stored_rule(&env, "cpu_high").await.expect("stored");
    assert_eq!(stored["threshold"], 90.0);
    assert_eq!(stored["name"], "cpu_high");
    let list = http(addr, "GET", "/api/rules", &[], "").await;
    assert_eq!(list.json[0]["name"], "cpu_high", "{}", list.raw);
    let a = http(
        addr,
        "POST",
        "/api/rules/cpu_high",
        &auth,
        r#"{"name":"cpu_high","metric":"cpu","threshold":75,"severity":"warning"}"#,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert_eq!(
        stored_rule(&env, "cpu_high").await.expect("stored")["threshold"],
        75.0
    );
    let a = http(addr, "DELETE", "/api/rules/cpu_high", &auth, "").await;
    assert_eq!(a.status, 200, "{}", a.raw);
    assert!(stored_rule(&env, "cpu_high").await.is_none());
    let a = http(addr, "DELETE", "/api/rules/cpu_high", &auth, "").await;
    assert_eq!(a.status, 404, "{}", a.raw);

    let metrics = http(addr, "GET", "/metrics", &[], "").await.raw;
    for line in [
        "sysmonstm_gateway_http_refused_total{reason=\"unauthorized\"} 3",
        "sysmonstm_gateway_http_refused_total{reason=\"origin\"} 1",
        "sysmonstm_gateway_rules_written_total 2",
        "sysmonstm_gateway_rules_deleted_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn without_a_configured_token_every_write_is_refused() {
    let env = env(false).await;
    let addr = start(&env, env.config()).await.addr();
    for (method, body) in [("PUT", RULE), ("POST", RULE), ("DELETE", "")] {
        for auth in [
            vec![],
            vec![("Authorization", "Bearer ")],
            vec![("Authorization", "Bearer anything-at-all-here")],
        ] {
            let a = http(addr, method, "/api/rules/cpu_high", &auth, body).await;
            assert_eq!(a.status, 403, "{method}: {}", a.raw);
            assert!(
                a.json["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no API token")),
                "{}",
                a.json
            );
        }
    }
    assert!(stored_rule(&env, "cpu_high").await.is_none());
}

#[tokio::test]
async fn the_token_comes_from_a_file_and_a_short_one_is_a_configuration_error() {
    let env = env(false).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
    let cfg = GatewayConfig {
        api_token_file: Some(file.clone()),
        ..env.config()
    };
    let addr = start(&env, cfg).await.addr();
    let bearer = format!("Bearer {TOKEN}");
    let a = http(
        addr,
        "PUT",
        "/api/rules/cpu_high",
        &[("Authorization", &bearer)],
        RULE,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.raw);

    std::fs::write(&file, "short\n").expect("write");
    let e = Gateway::connect(GatewayConfig {
        api_token_file: Some(file),
        ..env.config()
    })
    .await
    .expect_err("a short token is refused");
    assert!(e.to_string().contains("at least 16"), "{e}");
}

/// DNS rebinding: the attacker's name now resolves to the gateway, and the
/// page's requests carry that name in `Host` and `Origin`.
#[tokio::test]
async fn a_host_that_is_not_served_gets_nothing_from_any_route() {
    let env = env(false).await;
    let cfg = GatewayConfig {
        allowed_hosts: vec!["dash.example.com".into()],
        api_token: Some(sysmonstm_gateway::config::Secret(TOKEN.into())),
        ..env.config()
    };
    let addr = start(&env, cfg).await.addr();
    let port = addr.port();
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://evil.example:{port}");
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, body) in [
        ("GET", "/api/machines", ""),
        ("GET", "/api/rules", ""),
        ("GET", "/", ""),
        ("GET", "/metrics", ""),
        ("PUT", "/api/rules/cpu_high", RULE),
    ] {
        let a = http(
            addr,
            method,
            path,
            &[
                ("Host", &evil),
                ("Origin", &evil_origin),
                ("Authorization", &bearer),
            ],
            body,
        )
        .await;
        assert_eq!(a.status, 421, "{path}: {}", a.raw);
        assert_eq!(a.json["parameter"], "Host", "{path}: {}", a.raw);
    }
    assert!(stored_rule(&env, "cpu_high").await.is_none());
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "dash.example.com".into(),
    ] {
        let a = http(addr, "GET", "/api/machines", &[("Host", &host)], "").await;
        assert_eq!(a.status, 200, "{host}: {}", a.raw);
    }

    let ws = |host: &str, origin: &str| {
        let mut req = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("request");
        req.headers_mut()
            .insert("Host", host.parse().expect("header"));
        req.headers_mut()
            .insert("Origin", origin.parse().expect("header"));
        req
    };
    match tokio_tungstenite::connect_async(ws(&evil, &evil_origin)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 421),
        Err(e) => panic!("expected a 421, got {e}"),
        Ok(_) => panic!("a rebinding page opened the live feed"),
    }
    tokio_tungstenite::connect_async(ws(
        &format!("localhost:{port}"),
        &format!("http://localhost:{port}"),
    ))
    .await
    .expect("the gateway's own page opens the live feed");
    let metrics = http(addr, "GET", "/metrics", &[], "").await.raw;
    assert!(
        metrics.contains("sysmonstm_gateway_http_refused_total{reason=\"host\"} 6"),
        "{metrics}"
    );
    let _ = WAIT;
}
