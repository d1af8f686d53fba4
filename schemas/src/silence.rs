//! Silences, Alertmanager's model: "no notification for these machines
//! (and rules) until then". A [`Silence`] is the JSON value of one key (its
//! id) in [`SILENCES_BUCKET`](crate::streams::SILENCES_BUCKET), written with
//! a TTL so the key goes by itself; the CLI writes them, the notifier
//! watches them. An alert that matches one still fires and is stored: only
//! its notifications stay away.
//!
//! The expiry that counts is [`Silence::ends_ms`], not the key's TTL: the
//! server removes an expired key a little later, and a notifier must not
//! stay silent meanwhile.

use serde::{Deserialize, Serialize};

use crate::MachineId;
use crate::rules::glob_match;

/// The longest silence (`--for`): 90 days.
pub const MAX_DURATION_MS: i64 = 90 * 24 * 3600 * 1000;

/// One silence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Silence {
    /// The KV key: `[a-z0-9_-]`, 1 ..= 64 characters.
    pub id: String,
    /// Machine-id glob (`*`, `?`).
    pub machines: String,
    /// Rule-name glob; `None`: every rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default)]
    pub comment: String,
    /// Who added it.
    #[serde(default)]
    pub by: String,
    /// Unix milliseconds.
    pub starts_ms: i64,
    pub ends_ms: i64,
}

/// What is wrong with a silence, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("silence field `{field}`: {why}")]
pub struct InvalidSilence {
    pub field: &'static str,
    pub why: String,
}

fn is_glob(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 128
        && g.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '*' | '?')
        })
}

impl Silence {
    pub fn validate(&self) -> Result<(), InvalidSilence> {
        let bad = |field, why: String| Err(InvalidSilence { field, why });
        if self.id.len() > 64 || MachineId::parse(&self.id).is_err() {
            return bad("id", format!("{:?} is not 1..=64 of [a-z0-9_-]", self.id));
        }
        if !is_glob(&self.machines) {
            return bad(
                "machines",
                format!("{:?} is not a glob of [a-z0-9_-*?]", self.machines),
            );
        }
        if let Some(r) = &self.rule
            && !is_glob(r)
        {
            return bad("rule", format!("{r:?} is not a glob of [a-z0-9_-*?]"));
        }
        if self.comment.len() > 1024 || self.by.len() > 128 {
            return bad(
                "comment",
                "longer than 1024 bytes (or `by` than 128)".into(),
            );
        }
        let len = self.ends_ms.checked_sub(self.starts_ms).unwrap_or(-1);
        if len <= 0 || len > MAX_DURATION_MS {
            return bad(
                "ends_ms",
                format!(
                    "a silence lasts more than 0 and at most 90 days, this one {}",
                    crate::rules::format_duration(std::time::Duration::from_millis(
                        u64::try_from(len).unwrap_or(0)
                    ))
                ),
            );
        }
        Ok(())
    }

    /// Active at `now_ms` (started, not yet ended).
    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.ends_ms
    }

    /// Silences notifications of `rule` on `machine` at `now_ms`.
    pub fn silences(&self, machine: &str, rule: &str, now_ms: i64) -> bool {
        self.active(now_ms)
            && glob_match(&self.machines, machine)
            && self.rule.as_deref().is_none_or(|r| glob_match(r, rule))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Silence {
        Silence {
            id: "s1".into(),
            machines: "web*".into(),
            rule: Some("cpu_*".into()),
            comment: "disk swap".into(),
            by: "me".into(),
            starts_ms: 1000,
            ends_ms: 2000,
        }
    }

    #[test]
    fn matches_machines_rules_and_time() {
        let s = s();
        s.validate().expect("valid");
        assert!(s.silences("web01", "cpu_high", 1000));
        assert!(!s.silences("web01", "cpu_high", 2000), "ended");
        assert!(!s.silences("web01", "cpu_high", 999), "not started");
        assert!(!s.silences("db01", "cpu_high", 1500));
        assert!(!s.silences("web01", "disk", 1500));
        let all = Silence { rule: None, ..s };
        assert!(all.silences("web01", "disk", 1500));
    }

    #[test]
    fn invalid_fields_are_named() {
        for (bad, field) in [
            (
                Silence {
                    id: "A B".into(),
                    ..s()
                },
                "id",
            ),
            (
                Silence {
                    machines: "Web.*".into(),
                    ..s()
                },
                "machines",
            ),
            (
                Silence {
                    rule: Some(String::new()),
                    ..s()
                },
                "rule",
            ),
            (
                Silence {
                    ends_ms: 1000,
                    ..s()
                },
                "ends_ms",
            ),
            (
                Silence {
                    ends_ms: i64::MAX,
                    starts_ms: i64::MIN,
                    ..s()
                },
                "ends_ms",
            ),
        ] {
            assert_eq!(bad.validate().expect_err(field).field, field);
        }
    }
}
