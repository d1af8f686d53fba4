//! Alert rules and alert state, as they are stored in JetStream KV.
//!
//! A [`Rule`] is the JSON value of one key (the rule's name) in the bucket
//! [`RULES_BUCKET`](crate::streams::RULES_BUCKET); the alerter watches it, the
//! CLI writes it, the gateway shows it. An [`AlertStateRecord`] is the JSON
//! value of key [`state_key`]`(machine, rule)` in
//! [`ALERT_STATE_BUCKET`](crate::streams::ALERT_STATE_BUCKET), written only by
//! the alerter, so a restarted alerter neither fires again nor forgets.
//!
//! Every writer calls [`Rule::validate`] first; its error names the rule and
//! the field, so a person can fix the one thing that is wrong.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::MachineId;

/// The metrics a rule can watch (names fixed in the contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Busy share of all cores, %.
    Cpu,
    /// Memory used of total, %.
    Memory,
    /// Swap used of total, %; 0 without swap.
    Swap,
    Load1,
    Load5,
    Load15,
    /// Load average divided by the number of cores.
    Load1PerCore,
    Load5PerCore,
    Load15PerCore,
    /// Bytes/s received, summed over interfaces except `lo`.
    NetRx,
    /// Bytes/s sent, summed over interfaces except `lo`.
    NetTx,
    /// Bytes/s read, summed over disks.
    DiskRead,
    /// Bytes/s written, summed over disks.
    DiskWrite,
    /// Number of processes.
    Processes,
    /// Used % of one mount (`mount = "/var"`), or of the fullest mount.
    Disk,
    /// Highest temperature reported by the machine's sensors, °C.
    Temperature,
    /// The built-in machine-silent check: intervals passed without a
    /// snapshot, counted by the alerter's clock, not by any message.
    Silent,
}

impl Metric {
    pub const ALL: [Metric; 17] = [
        Metric::Cpu,
        Metric::Memory,
        Metric::Swap,
        Metric::Load1,
        Metric::Load5,
        Metric::Load15,
        Metric::Load1PerCore,
        Metric::Load5PerCore,
        Metric::Load15PerCore,
        Metric::NetRx,
        Metric::NetTx,
        Metric::DiskRead,
        Metric::DiskWrite,
        Metric::Processes,
        Metric::Disk,
        Metric::Temperature,
        Metric::Silent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Cpu => "cpu",
            Metric::Memory => "memory",
            Metric::Swap => "swap",
            Metric::Load1 => "load1",
            Metric::Load5 => "load5",
            Metric::Load15 => "load15",
            Metric::Load1PerCore => "load1_per_core",
            Metric::Load5PerCore => "load5_per_core",
            Metric::Load15PerCore => "load15_per_core",
            Metric::NetRx => "net_rx",
            Metric::NetTx => "net_tx",
            Metric::DiskRead => "disk_read",
            Metric::DiskWrite => "disk_write",
            Metric::Processes => "processes",
            Metric::Disk => "disk",
            Metric::Temperature => "temperature",
            Metric::Silent => "silent",
        }
    }

    /// Metrics whose value is a share in 0..=100.
    pub fn is_percent(self) -> bool {
        matches!(
            self,
            Metric::Cpu | Metric::Memory | Metric::Swap | Metric::Disk
        )
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the value is compared with the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
        }
    }

    fn is_upper(self) -> bool {
        matches!(self, Op::Gt | Op::Ge)
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

/// A rule's severity; it is the first token of the alert subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn to_proto(self) -> crate::v1::Severity {
        match self {
            Severity::Info => crate::v1::Severity::Info,
            Severity::Warning => crate::v1::Severity::Warning,
            Severity::Critical => crate::v1::Severity::Critical,
        }
    }

    pub fn from_proto(s: crate::v1::Severity) -> Option<Self> {
        match s {
            crate::v1::Severity::Info => Some(Severity::Info),
            crate::v1::Severity::Warning => Some(Severity::Warning),
            crate::v1::Severity::Critical => Some(Severity::Critical),
            crate::v1::Severity::Unspecified => None,
        }
    }

    pub fn name(self) -> &'static str {
        crate::subjects::severity_token(self.to_proto())
    }
}

/// One alert rule. In TOML and JSON the durations are strings such as
/// `"30s"`, `"5m"`, `"1h"` or `"250ms"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The rule's name, also its KV key and the last subject token:
    /// lowercase `[a-z0-9_-]`.
    pub name: String,
    pub metric: Metric,
    /// Only for `metric = "disk"`: the mount point to watch. Without it the
    /// fullest mount counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// `>`, `>=`, `<` or `<=`; default `>`.
    #[serde(default = "default_op")]
    pub op: Op,
    pub threshold: f64,
    /// Hysteresis: a firing alert resolves only once the value no longer
    /// passes `clear` (e.g. fires above 90, resolves at or below 80).
    /// Default: the threshold itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", default, with = "duration_str")]
    pub for_: Duration,
    pub severity: Severity,
    /// Machine-id globs (`*`, `?`) the rule applies to; default all.
    #[serde(default = "all_machines")]
    pub machines: Vec<String>,
    /// Machine-id globs excluded even if `machines` matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// While firing and not acknowledged, publish a reminder this often.
    #[serde(
        default,
        with = "opt_duration_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub repeat: Option<Duration>,
    /// Free text carried in the alert's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn default_op() -> Op {
    Op::Gt
}

fn all_machines() -> Vec<String> {
    vec!["*".to_owned()]
}

/// What is wrong with a rule: which rule, which field, why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule {rule:?}: field `{field}`: {reason}")]
pub struct RuleError {
    pub rule: String,
    pub field: &'static str,
    pub reason: String,
}

/// Longest `for` and `repeat` accepted; anything longer is a typo.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

impl Rule {
    /// Checks everything serde cannot: the name is a token, numbers are
    /// finite and in range, `clear` lies on the resolving side of the
    /// threshold, globs are well formed.
    pub fn validate(&self) -> Result<(), RuleError> {
        let err = |field: &'static str, reason: String| RuleError {
            rule: self.name.clone(),
            field,
            reason,
        };
        MachineId::parse(&self.name).map_err(|e| err("name", e.to_string()))?;
        if !self.threshold.is_finite() {
            return Err(err("threshold", "must be a finite number".into()));
        }
        if self.metric.is_percent() && !(0.0..=100.0).contains(&self.threshold) {
            return Err(err(
                "threshold",
                format!(
                    "{} is a percentage; {} is outside 0..100",
                    self.metric, self.threshold
                ),
            ));
        }
        if let Some(c) = self.clear {
            if !c.is_finite() {
                return Err(err("clear", "must be a finite number".into()));
            }
            let on_resolving_side = if self.op.is_upper() {
                c <= self.threshold
            } else {
                c >= self.threshold
            };
            if !on_resolving_side {
                return Err(err(
                    "clear",
                    format!(
                        "{c} must be {} the threshold {} for op {:?}",
                        if self.op.is_upper() {
                            "at or below"
                        } else {
                            "at or above"
                        },
                        self.threshold,
                        self.op.symbol()
                    ),
                ));
            }
        }
        match (&self.mount, self.metric) {
            (Some(m), Metric::Disk) if !m.starts_with('/') => {
                return Err(err("mount", format!("{m:?} is not an absolute path")));
            }
            (Some(_), Metric::Disk) => {}
            (Some(_), other) => {
                return Err(err(
                    "mount",
                    format!("only metric \"disk\" has mounts, not {other:?}"),
                ));
            }
            _ => {}
        }
        if self.metric == Metric::Silent {
            if !self.op.is_upper() {
                return Err(err(
                    "op",
                    "metric \"silent\" counts missed intervals; use \">\" or \">=\"".into(),
                ));
            }
            if self.threshold < 1.0 {
                return Err(err(
                    "threshold",
                    "metric \"silent\" needs at least 1 missed interval".into(),
                ));
            }
        }
        if self.for_ > MAX_DURATION {
            return Err(err("for", "longer than 7 days".into()));
        }
        if let Some(r) = self.repeat {
            if r < Duration::from_secs(1) || r > MAX_DURATION {
                return Err(err("repeat", "must be between 1s and 7d".into()));
            }
        }
        if self.machines.is_empty() {
            return Err(err(
                "machines",
                "is empty, so the rule matches nothing; use [\"*\"] for all".into(),
            ));
        }
        for (field, globs) in [("machines", &self.machines), ("exclude", &self.exclude)] {
            for g in globs.iter() {
                if g.is_empty() || !g.chars().all(is_glob_char) {
                    return Err(err(
                        field,
                        format!("{g:?} is not a machine glob (lowercase [a-z0-9_-], * and ?)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the rule applies to `machine` (included and not excluded).
    pub fn applies_to(&self, machine: &str) -> bool {
        self.machines.iter().any(|g| glob_match(g, machine))
            && !self.exclude.iter().any(|g| glob_match(g, machine))
    }

    /// The level a firing alert must fall back past to resolve.
    pub fn clear_level(&self) -> f64 {
        self.clear.unwrap_or(self.threshold)
    }

    /// Parses the JSON stored in KV and validates it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let rule: Rule = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        rule.validate().map_err(|e| e.to_string())?;
        Ok(rule)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn is_glob_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '*' | '?')
}

/// Shell-style match of `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether a glob is a plain token, usable in a subject filter as it is.
pub fn is_plain_token(glob: &str) -> bool {
    !glob.contains(['*', '?']) && MachineId::parse(glob).is_ok()
}

mod duration;
pub mod file;
mod state;

use duration::{duration_str, opt_duration_str};
pub use duration::{format_duration, parse_duration};
pub use state::{AlertStateRecord, Phase, state_key};

#[cfg(test)]
mod tests;
