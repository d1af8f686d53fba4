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

/// The phase of one (machine, rule) pair that is not simply "fine".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The condition holds but not yet for the rule's `for`.
    Pending,
    /// The alert fired and has not resolved.
    Firing,
}

/// The alerter's durable state of one (machine, rule) pair; absent means
/// the condition does not hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertStateRecord {
    pub machine: String,
    pub rule: String,
    pub phase: Phase,
    pub severity: Severity,
    pub metric: Metric,
    /// When the condition started to hold, Unix ms. Part of every event's
    /// Msg-Id, so it must never change while the alert lasts.
    pub since_ms: i64,
    /// The value at the last evaluation, and the threshold then.
    pub value: f64,
    pub threshold: f64,
    /// When the last firing event (first or reminder) went out, Unix ms.
    pub notified_ms: i64,
    /// Reminders published so far.
    pub repeats: u32,
    /// Acknowledged by an operator: no more reminders until resolved.
    pub acked: bool,
    /// When this machine's last snapshot arrived (alerter's clock), so that
    /// a restarted alerter still counts the silence of a dead machine.
    pub last_seen_ms: i64,
    /// That machine's sampling interval, which the silent check counts in.
    #[serde(default)]
    pub interval_ms: u32,
    #[serde(default)]
    pub message: String,
}

/// The KV key of a (machine, rule) state: `<machine>.<rule>`.
pub fn state_key(machine: &str, rule: &str) -> String {
    format!("{machine}.{rule}")
}

/// `"90s"` → 90 s. Units: ms, s, m, h, d; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like \"30s\", \"5m\", \"1h\""))?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        u => return Err(format!("{s:?}: unknown unit {u:?} (ms, s, m, h, d)")),
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// The shortest exact spelling of `d` that [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms > 0 && ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 {
        "0s".to_owned()
    } else {
        format!("{ms}ms")
    }
}

mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Secs(u64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(t) => super::parse_duration(&t).map_err(serde::de::Error::custom),
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
        }
    }
}

mod opt_duration_str {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_str::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu_rule() -> Rule {
        Rule {
            name: "cpu_high".into(),
            metric: Metric::Cpu,
            mount: None,
            op: Op::Gt,
            threshold: 90.0,
            clear: Some(80.0),
            for_: Duration::from_secs(30),
            severity: Severity::Critical,
            machines: vec!["web*".into()],
            exclude: vec!["web-canary".into()],
            repeat: Some(Duration::from_secs(900)),
            description: None,
        }
    }

    #[test]
    fn json_round_trips_with_readable_durations() {
        let r = cpu_rule();
        let json = String::from_utf8(r.to_json()).expect("utf8");
        assert!(json.contains("\"for\":\"30s\"") && json.contains("\"repeat\":\"15m\""));
        assert_eq!(Rule::from_json(json.as_bytes()), Ok(r));
        let minimal = br#"{"name":"m","metric":"memory","threshold":95,"severity":"warning"}"#;
        let m = Rule::from_json(minimal).expect("defaults fill in");
        assert_eq!(
            (m.op, m.for_, m.machines),
            (Op::Gt, Duration::ZERO, vec!["*".into()])
        );
    }

    #[test]
    fn every_metric_name_round_trips() {
        for m in Metric::ALL {
            let json = serde_json::to_string(&m).expect("ser");
            assert_eq!(json, format!("\"{}\"", m.name()));
            assert_eq!(serde_json::from_str::<Metric>(&json).expect("de"), m);
        }
    }

    #[test]
    fn invalid_rules_name_the_field() {
        type Breaker = Box<dyn Fn(&mut Rule)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("name", Box::new(|r| r.name = "CPU High".into())),
            ("threshold", Box::new(|r| r.threshold = 150.0)),
            ("threshold", Box::new(|r| r.threshold = f64::NAN)),
            ("clear", Box::new(|r| r.clear = Some(95.0))),
            ("mount", Box::new(|r| r.mount = Some("/".into()))),
            (
                "mount",
                Box::new(|r| {
                    r.metric = Metric::Disk;
                    r.mount = Some("var".into());
                }),
            ),
            ("machines", Box::new(|r| r.machines = vec!["Web.*".into()])),
            ("machines", Box::new(|r| r.machines.clear())),
            ("exclude", Box::new(|r| r.exclude = vec![String::new()])),
            ("repeat", Box::new(|r| r.repeat = Some(Duration::ZERO))),
            (
                "for",
                Box::new(|r| r.for_ = Duration::from_secs(30 * 86_400)),
            ),
        ];
        for (field, break_it) in cases {
            let mut r = cpu_rule();
            break_it(&mut r);
            let e = r.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        }
        let mut lower = cpu_rule();
        (lower.op, lower.threshold, lower.clear) = (Op::Lt, 10.0, Some(5.0));
        assert_eq!(lower.validate().expect_err("clear").field, "clear");
        let mut silent = cpu_rule();
        (silent.metric, silent.threshold, silent.clear) = (Metric::Silent, 0.0, None);
        assert_eq!(silent.validate().expect_err("silent").field, "threshold");
        let bad_metric = br#"{"name":"x","metric":"cpux","threshold":1,"severity":"info"}"#;
        assert!(
            Rule::from_json(bad_metric)
                .expect_err("metric")
                .contains("cpux")
        );
    }

    #[test]
    fn globs_include_and_exclude() {
        let r = cpu_rule();
        assert!(r.applies_to("web01"));
        assert!(!r.applies_to("web-canary"));
        assert!(!r.applies_to("db01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b?c", "axxxbyc"));
        assert!(!glob_match("a*b?c", "axxxbc"));
        assert!(glob_match("*-east-*", "db-east-2"));
        assert!(is_plain_token("web01") && !is_plain_token("web*"));
    }

    #[test]
    fn durations_parse_and_print() {
        for (s, ms) in [
            ("30s", 30_000),
            ("5m", 300_000),
            ("250ms", 250),
            ("2h", 7_200_000),
            ("45", 45_000),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_millis(90_000)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
    }
}
