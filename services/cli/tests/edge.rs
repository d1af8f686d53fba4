//! The edge as `just up` makes it: `sysmonstm creds init --edge`, the edge
//! gateway's and the stream admin's credentials, `creds leaf` (which writes
//! the hub's side of the link), then `sysmonstm edge setup` against a real
//! edge linked to a real hub — and a snapshot published at the hub shows up
//! in the edge's METRICS. Refusals: hub roles from the edge authority, an
//! edge authority as the hub's, a bad window (exit code 2, nothing written).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use async_nats::HeaderMap;
use sysmonstm_schemas::{MachineId, headers, streams, subjects};
use sysmonstm_testkit::{NatsServer, eventually, free_port};

fn sysmonstm(args: &[&str], server: Option<(&str, &Path)>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sysmonstm"));
    cmd.env_remove("SYSMON_CREDS_DIR")
        .env_remove("SYSMON_EDGE_CREDS_DIR")
        .env_remove("NATS_URL")
        .env_remove("NATS_CREDS")
        .args(args);
    if let Some((url, creds)) = server {
        cmd.env("NATS_URL", url).env("NATS_CREDS", creds);
    }
    cmd.output().expect("run sysmonstm")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, says: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(says), "{err}");
}

#[tokio::test]
async fn just_up_s_edge_commands_link_an_edge_to_the_hub() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub_dir = tmp.path().join("creds");
    let edge_dir = tmp.path().join("creds-edge");
    let (h, e) = (
        hub_dir.to_str().expect("utf-8"),
        edge_dir.to_str().expect("utf-8"),
    );
    ok(&sysmonstm(&["creds", "init", h], None));
    ok(&sysmonstm(&["creds", "init", e, "--edge"], None));
    let agent = ok(&sysmonstm(&["creds", "agent", "web-1", "--dir", h], None));
    let admin = ok(&sysmonstm(
        &["creds", "service", "edge-admin", "--dir", e],
        None,
    ));
    ok(&sysmonstm(
        &["creds", "service", "edge-gateway", "--dir", e],
        None,
    ));
    let persister = ok(&sysmonstm(
        &["creds", "service", "persister", "--dir", h],
        None,
    ));

    // Refusals, before anything is linked.
    refused(
        &sysmonstm(&["creds", "service", "persister", "--dir", e], None),
        "hub authority",
    );
    refused(
        &sysmonstm(&["creds", "service", "edge-gateway", "--dir", h], None),
        "edge authority",
    );
    refused(
        &sysmonstm(&["creds", "leaf", "--dir", e, "--hub-dir", e], None),
        "edge authority",
    );
    refused(
        &sysmonstm(
            &[
                "creds",
                "leaf",
                "--dir",
                e,
                "--hub-dir",
                h,
                "--url",
                "edge:7422",
            ],
            None,
        ),
        "not a leaf URL",
    );
    assert!(!hub_dir.join("leaf-remote.conf").exists());
    assert!(
        !edge_dir.join("users/leaf.creds").exists(),
        "nothing issued"
    );
    assert!(!edge_dir.join("leaf-remote.conf").exists());

    let leaf_port = free_port();
    let url = format!("nats-leaf://127.0.0.1:{leaf_port}");
    ok(&sysmonstm(
        &["creds", "leaf", "--dir", e, "--hub-dir", h, "--url", &url],
        None,
    ));
    let remote = hub_dir.join("leaf-remote.conf");
    let remote_text = std::fs::read_to_string(&remote).expect("leaf-remote.conf");
    assert!(remote_text.contains(&url), "{remote_text}");

    // The servers, configured as nats/edge.conf and nats/hub.conf are: the
    // authorities' resolver configs and the hub's leaf-remote.conf included.
    let include = |p: &Path| {
        let down: std::path::PathBuf = p
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        format!("include \"{}{}\"\n", "../".repeat(64), down.display())
    };
    let edge = NatsServer::start_with(
        "domain: edge",
        &format!(
            "{}leafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n",
            include(&edge_dir.join("resolver.conf"))
        ),
    );
    let hub = NatsServer::start_with(
        "domain: hub",
        &format!(
            "{}{}",
            include(&hub_dir.join("resolver.conf")),
            include(&remote)
        ),
    );

    // The hub's streams, as the persister and the alerter make them.
    let p = async_nats::ConnectOptions::with_credentials_file(persister.trim())
        .await
        .expect("creds")
        .connect(hub.url())
        .await
        .expect("persister connects");
    let js = async_nats::jetstream::new(p);
    for cfg in [
        streams::metrics(&streams::MetricsLimits {
            max_bytes: 1 << 30,
            ..Default::default()
        }),
        streams::alerts(),
        streams::machines(),
    ] {
        js.create_stream(cfg).await.expect("hub stream");
    }

    // Bad input first: exit code 2, nothing made.
    let admin = Path::new(admin.trim());
    refused(
        &sysmonstm(
            &["edge", "setup", "--max-age", "soon"],
            Some((&edge.url(), admin)),
        ),
        "--max-age",
    );
    // The setup; twice is the same as once. The leaf link may still be
    // coming up: sourcing retries by itself.
    for _ in 0..2 {
        let out = ok(&sysmonstm(&["edge", "setup"], Some((&edge.url(), admin))));
        assert!(
            out.contains("METRICS") && out.contains("domain hub"),
            "{out}"
        );
    }
    // Without the admin credential, no setup (the agent's is a hub one).
    let out = sysmonstm(
        &["edge", "setup"],
        Some((&edge.url(), Path::new(agent.trim()))),
    );
    assert!(!out.status.success());

    // A snapshot at the hub reaches the edge's METRICS.
    let id = MachineId::parse("web-1").expect("id");
    let a = async_nats::ConnectOptions::with_credentials_file(agent.trim())
        .await
        .expect("creds")
        .custom_inbox_prefix(subjects::agent_inbox_prefix(&id))
        .connect(hub.url())
        .await
        .expect("agent connects");
    let ajs = async_nats::jetstream::new(a);
    let mut hdr = HeaderMap::new();
    hdr.insert(headers::MSG_ID, headers::msg_id(&id, 1).as_str());
    ajs.publish_with_headers(subjects::metrics(&id), hdr, "snapshot".into())
        .await
        .expect("sent")
        .await
        .expect("stored at the hub");
    let ejs = async_nats::jetstream::new(
        async_nats::ConnectOptions::with_credentials_file(admin.to_owned())
            .await
            .expect("creds")
            .connect(edge.url())
            .await
            .expect("admin connects"),
    );
    // Up to one retry of the source's consumer request (nats-server waits
    // 30 s for an answer that the not-yet-linked leaf lost).
    eventually(
        Duration::from_secs(90),
        "the snapshot at the edge",
        || async {
            let mut s = ejs.get_stream(streams::METRICS).await.ok()?;
            (s.info().await.ok()?.state.messages == 1).then_some(())
        },
    )
    .await;
}
