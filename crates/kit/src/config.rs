//! Layered configuration: built-in defaults, then an optional TOML file, then
//! environment variables (`<PREFIX>_<FIELD>`, nested fields joined by `__`).
//! Command-line flags are applied last by each binary.
//!
//! A broken file or a value of the wrong type is an error that names the
//! field and where it came from; binaries exit with code 2 on it.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Exit code for a configuration a binary cannot start with.
pub const EXIT_CONFIG: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// `Err` naming `field` when `v` is outside `lo ..= hi`: what every
/// service's `validate` says of a number out of its range.
pub fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{field} = {v} is outside {lo} ..= {hi}"));
    }
    Ok(())
}

/// Loads `T` from its defaults, the TOML file at `path` (if given) and the
/// environment variables that start with `env_prefix` (e.g. `SYSMON_AGENT_`).
pub fn load<T>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(p) = path {
        if !p.exists() {
            return Err(ConfigError::Missing(p.display().to_string()));
        }
        fig = fig.merge(Toml::file_exact(p));
    }
    fig = fig.merge(Env::prefixed(env_prefix).split("__"));
    fig.extract().map_err(|e| ConfigError::Invalid(describe(e)))
}

/// Figment's own messages name the key and the source; join every error so a
/// person sees all that is wrong at once.
fn describe(err: figment::Error) -> String {
    err.into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        interval_ms: u64,
        name: String,
    }

    #[test]
    fn file_values_override_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "interval_ms = 250\n").expect("write");
        let s: Sample = load(Some(&p), "SYSMON_KIT_TEST_A_").expect("loads");
        assert_eq!(
            s,
            Sample {
                interval_ms: 250,
                name: String::new()
            }
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "interval_ms = \"soon\"\n").expect("write");
        let err = load::<Sample>(Some(&p), "SYSMON_KIT_TEST_B_").expect_err("must fail");
        assert!(err.to_string().contains("interval_ms"), "{err}");
    }

    #[test]
    fn broken_toml_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("broken.toml");
        std::fs::write(&p, "name = \"x\"\ninterval_ms = = 3\n").expect("write");
        let err = load::<Sample>(Some(&p), "SYSMON_KIT_TEST_C_").expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("broken.toml") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_field_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "intervall_ms = 3\n").expect("write");
        let err = load::<Sample>(Some(&p), "SYSMON_KIT_TEST_D_").expect_err("must fail");
        assert!(err.to_string().contains("intervall_ms"), "{err}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/x.toml")), "SYSMON_KIT_TEST_E_")
            .expect_err("must fail");
        assert!(matches!(err, ConfigError::Missing(_)));
    }
}
