//! Writing rules: `PUT`/`POST /api/rules/{name}` stores one rule in the KV
//! bucket `sysmon_rules` (the alerter watches it), `DELETE` removes one.
//!
//! A rule is checked by the very code `sysmonstm rules set` uses
//! (`schemas::rules::file::parse`, which runs `Rule::validate`), so the API
//! and the CLI accept the same rules and word their refusals the same; a 400
//! names the field. Every write needs the bearer token ([`guard`]).
//!
//! [`guard`]: crate::guard

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::MachineId;
use sysmonstm_schemas::rules::file::{self as rules_file, RulesFileError};
use sysmonstm_schemas::streams;

use crate::api::counted;
use crate::error::ApiError;
use crate::guard;
use crate::state::{Counters, Shared};

/// Largest rule body taken (a rule is a few hundred bytes).
pub const MAX_RULE_BYTES: usize = 16 * 1024;

fn name_of(name: &str) -> Result<(), ApiError> {
    MachineId::parse(name)
        .map(|_| ())
        .map_err(|e| ApiError::bad("name", format!("rule name {name:?}: {e}")))
}

/// The field a serde message is about: the one it names (`` missing field
/// `metric` ``), or the key holding the value it refuses (`` unknown variant
/// `loud` ``); else `body`.
fn field_in(message: &str, rule: &serde_json::Map<String, Value>) -> String {
    let quoted = message.split('`').nth(1).unwrap_or("");
    let named = ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|p| message.starts_with(p));
    if named && !quoted.is_empty() {
        return quoted.to_owned();
    }
    if message.starts_with("unknown variant") {
        if let Some((k, _)) = rule.iter().find(|(_, v)| v.as_str() == Some(quoted)) {
            return k.clone();
        }
    }
    "body".to_owned()
}

/// The rule in `body` (a JSON object; its `name` may be left out, and if
/// given must be the path's), validated.
fn rule_from(name: &str, body: &[u8]) -> Result<sysmonstm_schemas::rules::Rule, ApiError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("request body is not JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::bad(
            "body",
            "request body must be a JSON object (one rule)",
        ));
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), Value::String(name.to_owned()));
        }
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(ApiError::bad(
                "name",
                format!("the body's name {other} is not the path's {name:?}"),
            ));
        }
    }
    let obj = v.as_object().cloned().unwrap_or_default();
    let obj = &obj;
    let text = serde_json::to_string(&v)
        .map_err(|e| ApiError::bad("body", format!("request body: {e}")))?;
    match rules_file::parse(&text, "request body") {
        Ok(mut rules) if rules.len() == 1 => Ok(rules.remove(0)),
        Ok(_) => Err(ApiError::bad("body", "request body must hold one rule")),
        Err(e @ RulesFileError::Invalid { .. }) => {
            let field = match &e {
                RulesFileError::Invalid { source, .. } => source.field,
                _ => "body",
            };
            Err(ApiError::bad(field, e.to_string()))
        }
        Err(e @ RulesFileError::Parse { .. }) => {
            let field = match &e {
                RulesFileError::Parse { message, .. } => field_in(message, obj),
                _ => "body".into(),
            };
            Err(ApiError::bad(&field, e.to_string()))
        }
        Err(e) => Err(ApiError::bad("body", e.to_string())),
    }
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let mut err = ApiError::bad("body", e.body_text());
        err.status = e.status();
        err
    })
}

/// `PUT` (and `POST`) `/api/rules/{name}`: add or replace the rule.
pub async fn put(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    Counters::inc(&s.counters.http_requests);
    if let Some(refused) = guard::write_refused(&s, &headers) {
        return refused;
    }
    let r = counted(
        &s,
        async {
            name_of(&name)?;
            let body = body_of(body)?;
            let rule = rule_from(&name, &body)?;
            let kv = js_kit::ensure_kv(&s.js, s.config.replicas.kv(streams::rules_bucket()))
                .await
                .map_err(|e| ApiError::unavailable(format!("rules unavailable: {e}")))?;
            let revision = kv
                .put(&rule.name, rule.to_json().into())
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!("cannot store rule {:?}: {e}", rule.name))
                })?;
            Counters::inc(&s.counters.rules_written);
            tracing::info!(rule = %rule.name, revision, "rule set through the API");
            let stored: Value = serde_json::from_slice(&rule.to_json()).unwrap_or(Value::Null);
            Ok(Json(json!({ "rule": stored, "revision": revision })).into_response())
        }
        .await,
    );
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /api/rules/{name}`: remove the rule (its firing alerts resolve).
pub async fn delete(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    Counters::inc(&s.counters.http_requests);
    if let Some(refused) = guard::write_refused(&s, &headers) {
        return refused;
    }
    let r = counted(
        &s,
        async {
            name_of(&name)?;
            let unavailable = |e: String| ApiError::unavailable(format!("rules unavailable: {e}"));
            let kv = js_kit::ensure_kv(&s.js, s.config.replicas.kv(streams::rules_bucket()))
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            if kv
                .get(&name)
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .is_none()
            {
                return Err(ApiError::not_found(format!("no rule named {name:?}")));
            }
            kv.delete(&name)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            Counters::inc(&s.counters.rules_deleted);
            tracing::info!(rule = %name, "rule removed through the API");
            Ok((StatusCode::OK, Json(json!({ "deleted": name }))).into_response())
        }
        .await,
    );
    r.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            "[a-z0-9*?/ ]{0,12}".prop_map(Value::String),
            prop::collection::vec("[a-z*]{0,4}", 0..3).prop_map(|v| json!(v)),
            prop_oneof![
                Just("cpu"),
                Just("disk"),
                Just("silent"),
                Just(">="),
                Just("<"),
                Just("critical"),
                Just("5m"),
                Just("8d")
            ]
            .prop_map(|s| json!(s)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever a client sends is a valid rule or a 400 naming a field,
        /// never a panic.
        #[test]
        fn any_body_is_a_valid_rule_or_a_400(
            fields in prop::collection::btree_map(
                prop_oneof![
                    Just("name"), Just("metric"), Just("mount"), Just("op"), Just("threshold"),
                    Just("clear"), Just("for"), Just("severity"), Just("machines"), Just("exclude"),
                    Just("repeat"), Just("description"), Just("other"),
                ],
                value(),
                0..10,
            ),
            raw in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let obj: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let body = serde_json::to_vec(&obj).expect("JSON");
            for b in [body.as_slice(), raw.as_slice()] {
                match rule_from("r1", b) {
                    Ok(r) => prop_assert!(r.validate().is_ok()),
                    Err(e) => {
                        prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                        prop_assert!(e.parameter.is_some_and(|p| !p.is_empty()));
                    }
                }
            }
        }
    }

    #[test]
    fn a_bad_rule_names_its_field_with_the_clis_words() {
        let e = rule_from(
            "cpu_high",
            br#"{"metric":"cpu","threshold":90,"clear":95,"severity":"critical"}"#,
        )
        .expect_err("clear above threshold");
        assert_eq!(e.parameter.as_deref(), Some("clear"));
        assert!(e.error.contains("field `clear`"), "{}", e.error);
        let e = rule_from("cpu_high", br#"{"threshold":90,"severity":"critical"}"#)
            .expect_err("no metric");
        assert_eq!(e.parameter.as_deref(), Some("metric"), "{}", e.error);
        let e = rule_from(
            "cpu_high",
            br#"{"name":"other","metric":"cpu","threshold":9,"severity":"info"}"#,
        )
        .expect_err("name differs");
        assert_eq!(e.parameter.as_deref(), Some("name"));
        let e = rule_from("x", b"[1]").expect_err("not an object");
        assert_eq!(e.parameter.as_deref(), Some("body"));
        let r =
            rule_from("x", br#"{"metric":"cpu","threshold":9,"severity":"info"}"#).expect("valid");
        assert_eq!(r.name, "x");
    }
}
