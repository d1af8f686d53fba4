//! `sysmonstm rules list | set | rm`: the rules bucket, edited while
//! everything runs (the alerter watches it). `set` validates every rule
//! before writing any, so an invalid one changes nothing.

use std::path::Path;

use async_nats::jetstream;
use clap::Subcommand;
use sysmonstm_kit::jetstream as js_kit;
use sysmonstm_schemas::rules::file as rules_file;
use sysmonstm_schemas::rules::{Rule, format_duration};
use sysmonstm_schemas::streams;

use crate::{InvalidInput, print};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Every rule in the bucket.
    List {
        /// One JSON rule per line (as stored).
        #[arg(long)]
        json: bool,
    },
    /// Add or replace rules: a TOML file of [[rule]] tables, or one rule
    /// inline as TOML (`'name="x" metric="cpu" threshold=90 severity="info"'`,
    /// keys separated by newlines or spaces) or JSON.
    Set { file_or_inline: String },
    /// Remove a rule; its firing alerts resolve.
    Rm { name: String },
}

pub async fn run(js: &jetstream::Context, cmd: RulesCommand) -> anyhow::Result<()> {
    let kv = js_kit::ensure_kv(js, streams::rules_bucket()).await?;
    match cmd {
        RulesCommand::List { json } => {
            let mut rules: Vec<Rule> = Vec::new();
            for e in js_kit::current_entries(&kv).await? {
                match Rule::from_json(&e.value) {
                    Ok(r) => rules.push(r),
                    Err(why) => eprintln!(
                        "sysmonstm: rule {:?} in the bucket is invalid: {why}",
                        e.key
                    ),
                }
            }
            if json {
                for r in &rules {
                    println!("{}", String::from_utf8_lossy(&r.to_json()));
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = rules.iter().map(row).collect();
            print::table(
                &[
                    "NAME",
                    "SEVERITY",
                    "CONDITION",
                    "FOR",
                    "CLEAR",
                    "REPEAT",
                    "MACHINES",
                ],
                &rows,
            );
            Ok(())
        }
        RulesCommand::Set { file_or_inline } => {
            let rules = parse_arg(&file_or_inline).map_err(|e| InvalidInput(e.to_string()))?;
            if rules.is_empty() {
                return Err(InvalidInput(format!("{file_or_inline}: no [[rule]] in it")).into());
            }
            for r in &rules {
                let rev = kv
                    .put(&r.name, r.to_json().into())
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot store rule {:?}: {e}", r.name))?;
                println!("rule {} set (revision {rev})", r.name);
            }
            Ok(())
        }
        RulesCommand::Rm { name } => {
            if kv.get(&name).await?.is_none() {
                anyhow::bail!("no rule named {name:?}");
            }
            kv.delete(&name).await?;
            println!("rule {name} removed");
            Ok(())
        }
    }
}

/// A path that exists is a file; anything else is one rule inline. Inline
/// TOML may put its keys on one line separated by spaces, the way a shell
/// argument is easiest to type.
fn parse_arg(arg: &str) -> Result<Vec<Rule>, rules_file::RulesFileError> {
    let p = Path::new(arg);
    if p.is_file() {
        return rules_file::load(p);
    }
    match rules_file::parse(arg, "inline rule") {
        Ok(r) => Ok(r),
        Err(first) => match one_line_toml(arg) {
            // Still no TOML: the first message points at the real spot.
            Some(t) => match rules_file::parse(&t, "inline rule") {
                Err(rules_file::RulesFileError::Parse { .. }) => Err(first),
                other => other,
            },
            None => Err(first),
        },
    }
}

/// `a=1 b="x y" c=[1, 2]` → one key per line: splits at spaces that are
/// outside quotes and brackets and followed by `key=`.
fn one_line_toml(s: &str) -> Option<String> {
    if s.contains('\n') || s.trim_start().starts_with('{') {
        return None;
    }
    let (mut out, mut in_str, mut depth) = (String::new(), false, 0i32);
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '"' => in_str = !in_str,
            '[' if !in_str => depth += 1,
            ']' if !in_str => depth -= 1,
            ' ' if !in_str && depth == 0 => {
                let rest: String = chars[i + 1..].iter().collect();
                let starts_key = rest.split_once('=').is_some_and(|(k, _)| {
                    !k.trim().is_empty()
                        && k.trim()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
                if starts_key && !out.trim_end().ends_with('=') {
                    out.push('\n');
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
    }
    Some(out)
}

fn row(r: &Rule) -> Vec<String> {
    let metric = match &r.mount {
        Some(m) => format!("{}({m})", r.metric),
        None => r.metric.to_string(),
    };
    let mut machines = r.machines.join(",");
    if !r.exclude.is_empty() {
        machines.push_str(&format!(" except {}", r.exclude.join(",")));
    }
    vec![
        r.name.clone(),
        r.severity.name().to_owned(),
        format!("{metric} {} {}", r.op.symbol(), r.threshold),
        format_duration(r.for_),
        r.clear.map(|c| c.to_string()).unwrap_or_default(),
        r.repeat.map(format_duration).unwrap_or_default(),
        machines,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_rules_on_one_line() {
        let r = parse_arg(r#"name="cpu_high" metric="cpu" threshold=50 for="1m" machines=["web*", "db-1"] severity="critical""#)
            .expect("one-line toml");
        assert_eq!(r[0].threshold, 50.0);
        assert_eq!(r[0].machines, vec!["web*".to_owned(), "db-1".to_owned()]);
    }

    #[test]
    fn an_invalid_inline_rule_names_the_field() {
        let e =
            parse_arg(r#"name="cpu_high" metric="cpu" threshold=90 clear=95 severity="critical""#)
                .expect_err("clear above threshold");
        assert!(e.to_string().contains("`clear`"), "{e}");
    }
}
