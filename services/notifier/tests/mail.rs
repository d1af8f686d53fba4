//! Mail over a protected connection to a real SMTP server (aiosmtpd):
//! STARTTLS with authentication, TLS from the first byte, and a wrong
//! password refused for good (not tried again). The server's certificate is
//! signed by a CA made here, which the channel trusts through `tls_ca`.

mod common;

use std::path::Path;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sysmonstm_notifier::Notifier;
use sysmonstm_notifier::config::{ChannelConfig, EmailConfig, SmtpTls};
use sysmonstm_schemas::alert::EventKind;
use sysmonstm_testkit::{NatsServer, eventually};

/// A CA (its PEM at `dir/ca.pem`) and a certificate for 127.0.0.1 it signed.
fn pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "sysmonstm test CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = p.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("server params");
    p.distinguished_name.push(DnType::CommonName, "smtp");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key).expect("server certificate");
    let out = (
        dir.join("ca.pem"),
        dir.join("smtp.pem"),
        dir.join("smtp-key.pem"),
    );
    std::fs::write(&out.0, ca.pem()).expect("write");
    std::fs::write(&out.1, cert.pem()).expect("write");
    std::fs::write(&out.2, key.serialize_pem()).expect("write");
    out
}

fn email(port: u16, tls: SmtpTls, ca: &Path, login: Option<(&str, &str)>) -> ChannelConfig {
    ChannelConfig::Email(EmailConfig {
        host: "127.0.0.1".into(),
        port: Some(port),
        tls,
        user: login.map(|(u, _)| u.to_owned()),
        password: login.map(|(_, p)| p.to_owned()),
        password_file: None,
        tls_ca: Some(ca.to_owned()),
        from: "alerts@example.com".into(),
        to: vec!["ops@example.com".into()],
    })
}

async fn one_mail(
    mode: &'static str,
    tls: SmtpTls,
    login: Option<(&str, &str)>,
    to: &str,
    max_attempts: u32,
) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = pki(dir.path());
    let smtpd = Smtpd::start_with(Some(&SmtpTlsSetup {
        mode,
        cert,
        key,
        login: Some(("notifier".into(), "s3cret".into())).filter(|_| login.is_some()),
    }))
    .await;
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let mut cfg = config(&nats);
    cfg.max_attempts = max_attempts;
    let mut ch = email(smtpd.port, tls, &ca, login);
    if let ChannelConfig::Email(e) = &mut ch {
        e.to = vec![to.to_owned()];
    }
    cfg.channels.insert("mail".into(), ch);
    cfg.routes.push(route(&["mail"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&js).await;
    let got = smtpd.messages();
    let gave_up = n.counters.gave_up.get();
    let retries = n.counters.retries.get();
    n.stop().await;
    match got.into_iter().next() {
        Some(m) => m,
        None => format!("(no mail; gave_up {gave_up}, retries {retries})"),
    }
}

#[tokio::test]
async fn starttls_with_a_login() {
    let m = one_mail(
        "starttls",
        SmtpTls::Starttls,
        Some(("notifier", "s3cret")),
        "ops@example.com",
        5,
    )
    .await;
    assert!(m.contains("X-Test-TLS: yes"), "{m}");
    assert!(m.contains("X-Test-Auth: yes"), "{m}");
    assert!(
        m.contains("Subject: [sysmonstm] CRITICAL FIRING disk_full on web01"),
        "{m}"
    );
}

#[tokio::test]
async fn tls_from_the_first_byte() {
    let m = one_mail("tls", SmtpTls::Tls, None, "ops@example.com", 5).await;
    assert!(m.contains("X-Test-TLS: yes"), "{m}");
    assert!(m.contains("disk 97.5 (threshold 90)"), "{m}");
}

/// A 5xx (here: no such mailbox) is the server's "no": given up at once.
#[tokio::test]
async fn a_refused_recipient_is_refused_for_good() {
    let m = one_mail("tls", SmtpTls::Tls, None, "nobody@example.com", 5).await;
    assert_eq!(m, "(no mail; gave_up 1, retries 0)");
}

/// aiosmtpd 1.4.6 never answers a wrong password (the connection hangs):
/// the send's own time-out ends each try, and the tries are bounded.
#[tokio::test]
async fn a_wrong_password_ends_in_bounded_tries() {
    let m = one_mail(
        "starttls",
        SmtpTls::Starttls,
        Some(("notifier", "wrong")),
        "ops@example.com",
        2,
    )
    .await;
    assert_eq!(m, "(no mail; gave_up 1, retries 1)");
}

#[tokio::test]
async fn an_untrusted_certificate_is_not_sent_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, cert, key) = pki(dir.path());
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = pki(other.path());
    let smtpd = Smtpd::start_with(Some(&SmtpTlsSetup {
        mode: "starttls",
        cert,
        key,
        login: None,
    }))
    .await;
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let mut cfg = config(&nats);
    cfg.max_attempts = 2;
    cfg.channels.insert(
        "mail".into(),
        email(smtpd.port, SmtpTls::Starttls, &other_ca, None),
    );
    cfg.routes.push(route(&["mail"]));
    let n = Running::start(Notifier::new(cfg), &js).await;
    publish(&js, &alert("web01", "disk_full", EventKind::Firing, 0)).await;
    all_acked(&js).await;
    eventually(WAIT, "given up", || {
        let g = n.counters.gave_up.get();
        async move { (g == 1).then_some(()) }
    })
    .await;
    assert!(smtpd.messages().is_empty());
    n.stop().await;
}
