//! NATS decentralised-auth JWTs (operator, account, user), minted with
//! `nkeys`.
//!
//! The broker enforces what each agent and service may do, so these claims
//! are the security boundary, and they are few enough to write as serde
//! structs rather than depend on an unofficial JWT crate. The format, checked
//! against nats-server 2.10: header `{"typ":"JWT","alg":"ed25519-nkey"}`;
//! payload `{jti, iat, iss, name, sub, nats:{…, type, version: 2}}`; the
//! signature is ed25519 by the issuer's nkey over `b64url(header) "."
//! b64url(payload)`, base64url without padding; `jti` is the base32 (no
//! padding) SHA-512/256 of the claims with `jti` empty.
//!
//! A `0` limit in a JWT is literal (`conn: 0` admits no connection), so every
//! limit that should be open is written as `-1`.

use std::collections::BTreeMap;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("not a JWT: {0}")]
    Malformed(String),
    #[error("the signature does not verify against the issuer {0}")]
    Signature(String),
}

/// The claims common to every kind.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims<N> {
    pub jti: String,
    pub iat: i64,
    pub iss: String,
    pub name: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<i64>,
    pub nats: N,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatorNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub signing_keys: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub system_account: String,
}

/// Account limits; `-1` is unlimited, `0` is none.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
    /// JetStream: absent (0) for the system account, which must have none.
    #[serde(skip_serializing_if = "is_zero", default)]
    pub mem_storage: i64,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub disk_storage: i64,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub streams: i64,
    #[serde(skip_serializing_if = "is_zero", default)]
    pub consumer: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl AccountLimits {
    /// Open limits, with or without JetStream.
    pub fn open(jetstream: bool) -> Self {
        let js = if jetstream { -1 } else { 0 };
        Self {
            subs: -1,
            data: -1,
            payload: -1,
            imports: -1,
            exports: -1,
            wildcards: true,
            conn: -1,
            leaf: -1,
            mem_storage: js,
            disk_storage: js,
            streams: js,
            consumer: js,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccountNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    pub limits: AccountLimits,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub signing_keys: Vec<String>,
    /// User public key → Unix seconds: users issued at or before are refused.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub revocations: BTreeMap<String, i64>,
    /// Subject mappings of the account: source → destinations by weight.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub mappings: BTreeMap<String, Vec<WeightedMapping>>,
}

/// One destination of a subject mapping; weights of a source add up to 100.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WeightedMapping {
    pub subject: String,
    pub weight: u8,
}

/// Subjects allowed and denied for publish or subscribe.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Permission {
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub deny: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UserNats {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(rename = "pub")]
    pub publish: Permission,
    #[serde(rename = "sub")]
    pub subscribe: Permission,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    /// The account, when a signing key of it (not its identity key) signed.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub issuer_account: String,
}

impl UserNats {
    pub fn new(publish: Permission, subscribe: Permission, issuer_account: String) -> Self {
        Self {
            kind: "user".into(),
            version: 2,
            publish,
            subscribe,
            subs: -1,
            data: -1,
            payload: -1,
            issuer_account,
        }
    }
}

/// Signs `claims` as `issuer`, filling in `iss` and `jti`.
pub fn encode<N: Serialize>(mut claims: Claims<N>, issuer: &KeyPair) -> Result<String, JwtError> {
    claims.iss = issuer.public_key();
    claims.jti = String::new();
    let unsigned = serde_json::to_vec(&claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    claims.jti = BASE32_NOPAD.encode(&sha2::Sha512_256::digest(&unsigned));
    let payload = serde_json::to_vec(&claims).map_err(|e| JwtError::Sign(e.to_string()))?;
    let header = br#"{"typ":"JWT","alg":"ed25519-nkey"}"#;
    let signing_input = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header),
        BASE64URL_NOPAD.encode(&payload)
    );
    let sig = issuer
        .sign(signing_input.as_bytes())
        .map_err(|e| JwtError::Sign(e.to_string()))?;
    Ok(format!("{signing_input}.{}", BASE64URL_NOPAD.encode(&sig)))
}

/// Reads a JWT's claims and checks its signature against its `iss`.
pub fn decode<N: for<'de> Deserialize<'de>>(jwt: &str) -> Result<Claims<N>, JwtError> {
    let mut parts = jwt.trim().split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three parts".into()));
    };
    let payload = BASE64URL_NOPAD
        .decode(p.as_bytes())
        .map_err(|e| JwtError::Malformed(e.to_string()))?;
    let sig = BASE64URL_NOPAD
        .decode(s.as_bytes())
        .map_err(|e| JwtError::Malformed(e.to_string()))?;
    let claims: Claims<N> =
        serde_json::from_slice(&payload).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let issuer =
        KeyPair::from_public_key(&claims.iss).map_err(|e| JwtError::Malformed(e.to_string()))?;
    issuer
        .verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| JwtError::Signature(claims.iss.clone()))?;
    Ok(claims)
}

/// A `.creds` file: the user's JWT and seed in the format nats tools read.
pub fn creds_file(user_jwt: &str, user_seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{user_seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_claims(sub: &str) -> Claims<UserNats> {
        Claims {
            jti: String::new(),
            iat: 1_800_000_000,
            iss: String::new(),
            name: "web-1".into(),
            sub: sub.into(),
            exp: None,
            nats: UserNats::new(
                Permission {
                    allow: vec!["sysmon.metrics.web-1".into()],
                    deny: vec![],
                },
                Permission::default(),
                String::new(),
            ),
        }
    }

    #[test]
    fn a_jwt_round_trips_and_its_jti_is_the_hash_of_its_claims() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(user_claims(&user.public_key()), &account).expect("signed");
        let back: Claims<UserNats> = decode(&jwt).expect("verifies");
        assert_eq!(back.iss, account.public_key());
        assert_eq!(back.sub, user.public_key());
        let mut unsigned = back.clone();
        unsigned.jti = String::new();
        let expect = BASE32_NOPAD.encode(&sha2::Sha512_256::digest(
            serde_json::to_vec(&unsigned).expect("json"),
        ));
        assert_eq!(back.jti, expect);
        // Zero limits are written, and open ones are -1.
        assert!(jwt.split('.').count() == 3);
        let payload = String::from_utf8(
            BASE64URL_NOPAD
                .decode(jwt.split('.').nth(1).expect("payload").as_bytes())
                .expect("b64"),
        )
        .expect("utf-8");
        assert!(payload.contains(r#""subs":-1"#), "{payload}");
        assert!(payload.contains(r#""type":"user""#), "{payload}");
    }

    #[test]
    fn a_changed_payload_or_another_signer_does_not_verify() {
        let account = KeyPair::new_account();
        let jwt = encode(user_claims("U"), &account).expect("signed");
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut claims: Claims<UserNats> = decode(&jwt).expect("ok");
        claims.nats.publish.allow = vec![">".into()];
        parts[1] = BASE64URL_NOPAD.encode(&serde_json::to_vec(&claims).expect("json"));
        let forged = parts.join(".");
        assert!(matches!(
            decode::<UserNats>(&forged),
            Err(JwtError::Signature(_))
        ));
        assert!(decode::<UserNats>("a.b").is_err());
        assert!(decode::<UserNats>("").is_err());
    }

    #[test]
    fn the_system_account_has_no_jetstream_limits() {
        let sys = serde_json::to_string(&AccountLimits::open(false)).expect("json");
        assert!(!sys.contains("disk_storage"), "{sys}");
        let js = serde_json::to_string(&AccountLimits::open(true)).expect("json");
        assert!(js.contains(r#""disk_storage":-1"#), "{js}");
    }
}
