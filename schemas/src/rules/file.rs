//! Rules written by people: a TOML file of `[[rule]]` tables (see
//! `rules.example.toml`) for `sysmonstm-alerter --rules`, or one rule inline
//! (TOML or JSON) for `sysmonstm rules set`. Everything is validated before
//! anything is used, so a file with one bad rule changes nothing. Both
//! programs read rules with this one parser.

use std::collections::HashSet;
use std::path::Path;

use super::{Rule, RuleError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RulesFileError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A syntax error or a field of the wrong type; toml's message carries
    /// the line and column.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {source}")]
    Invalid { origin: String, source: RuleError },
    #[error("{origin}: rule {name:?} is defined twice")]
    Duplicate { origin: String, name: String },
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<Rule>,
}

/// `rules` as a rules file (`[[rule]]` tables) that [`parse`] reads back.
pub fn to_toml(rules: &[Rule]) -> Result<String, String> {
    toml::to_string(&RulesFile {
        rule: rules.to_vec(),
    })
    .map_err(|e| e.to_string())
}

/// Reads and validates a rules file.
pub fn load(path: &Path) -> Result<Vec<Rule>, RulesFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesFileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses `text` as a rules file (`[[rule]]` tables), or as one rule (TOML
/// keys at the top level, or a JSON object); `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Rule>, RulesFileError> {
    let parse_err = |message: String| RulesFileError::Parse {
        origin: origin.to_owned(),
        message: message.trim_end().to_owned(),
    };
    let rules = if text.trim_start().starts_with('{') {
        vec![serde_json::from_str::<Rule>(text).map_err(|e| parse_err(e.to_string()))?]
    } else {
        let table: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        if table.contains_key("rule") || table.is_empty() {
            toml::from_str::<RulesFile>(text)
                .map_err(|e| parse_err(e.to_string()))?
                .rule
        } else {
            vec![toml::from_str::<Rule>(text).map_err(|e| parse_err(e.to_string()))?]
        }
    };
    let mut names = HashSet::new();
    for r in &rules {
        r.validate().map_err(|source| RulesFileError::Invalid {
            origin: origin.to_owned(),
            source,
        })?;
        if !names.insert(r.name.clone()) {
            return Err(RulesFileError::Duplicate {
                origin: origin.to_owned(),
                name: r.name.clone(),
            });
        }
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Metric;
    use std::time::Duration;

    #[test]
    fn the_example_file_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules.example.toml");
        let rules = load(&p).expect("rules.example.toml is valid");
        assert!(rules.iter().any(|r| r.metric == Metric::Silent));
        assert!(rules.len() >= 5);
    }

    #[test]
    fn broken_toml_names_the_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("rules.toml");
        std::fs::write(&p, "[[rule]]\nname = \"a\"\nthreshold = = 3\n").expect("write");
        let msg = load(&p).expect_err("broken").to_string();
        assert!(
            msg.contains("rules.toml") && msg.contains("line 3"),
            "{msg}"
        );
    }

    #[test]
    fn an_unknown_metric_names_the_line_and_the_value() {
        let text =
            "[[rule]]\nname = \"a\"\nmetric = \"cpux\"\nthreshold = 1\nseverity = \"info\"\n";
        let msg = parse(text, "r.toml").expect_err("bad metric").to_string();
        assert!(msg.contains("cpux") && msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn one_invalid_rule_refuses_the_whole_file_naming_the_field() {
        let text = "[[rule]]\nname = \"ok\"\nmetric = \"cpu\"\nthreshold = 90\nseverity = \"info\"\n\
                    [[rule]]\nname = \"bad\"\nmetric = \"cpu\"\nthreshold = 90\nclear = 95\nseverity = \"info\"\n";
        let err = parse(text, "r.toml").expect_err("invalid");
        assert!(
            matches!(&err, RulesFileError::Invalid { source, .. } if source.field == "clear"),
            "{err}"
        );
        let dup = "[[rule]]\nname = \"a\"\nmetric = \"cpu\"\nthreshold = 9\nseverity = \"info\"\n"
            .repeat(2);
        assert!(matches!(
            parse(&dup, "d"),
            Err(RulesFileError::Duplicate { .. })
        ));
    }

    #[test]
    fn a_single_rule_inline_in_toml_or_json() {
        let t = parse(
            "name = \"c\"\nmetric = \"cpu\"\nthreshold = 50\nfor = \"1m\"\nseverity = \"warning\"",
            "inline",
        )
        .expect("toml");
        assert_eq!(t[0].for_, Duration::from_secs(60));
        let j = parse(
            r#"{"name":"c","metric":"load1_per_core","threshold":2,"severity":"info"}"#,
            "inline",
        )
        .expect("json");
        assert_eq!(j[0].metric, Metric::Load1PerCore);
        let e = parse(
            r#"{"name":"c","metric":"cpu","threshold":2,"severity":"loud"}"#,
            "inline",
        )
        .expect_err("bad severity");
        assert!(e.to_string().contains("loud"), "{e}");
    }
}
