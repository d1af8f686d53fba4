//! A machine's identity on the wire: a single valid subject token.

use std::fmt;

/// Longest machine id accepted; keeps subjects and database keys short.
pub const MAX_LEN: usize = 64;

/// A validated machine id: 1 to 64 characters of lowercase `[a-z0-9_-]`.
///
/// It is one token of every per-machine subject (`sysmon.metrics.<machine>`),
/// so it must never contain `.`, `*`, `>` or white space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MachineId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidMachineId {
    #[error("machine id is empty")]
    Empty,
    #[error("machine id {0:?} is longer than {MAX_LEN} characters")]
    TooLong(String),
    #[error(
        "machine id {id:?} has the character {ch:?}; only lowercase letters, digits, '_' and '-' are allowed"
    )]
    BadChar { id: String, ch: char },
    #[error("hostname {0:?} has nothing that can be made into a machine id; pass --machine")]
    Unusable(String),
}

impl MachineId {
    /// Accepts `s` as it is, or says exactly why not.
    pub fn parse(s: &str) -> Result<Self, InvalidMachineId> {
        if s.is_empty() {
            return Err(InvalidMachineId::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(InvalidMachineId::TooLong(s.to_owned()));
        }
        if let Some(ch) = s.chars().find(|c| !is_token_char(*c)) {
            return Err(InvalidMachineId::BadChar {
                id: s.to_owned(),
                ch,
            });
        }
        Ok(Self(s.to_owned()))
    }

    /// Derives an id from a hostname: lowercased, every run of other
    /// characters (dots of a FQDN included) folded into one `-`, trimmed of
    /// leading and trailing `-`, cut to [`MAX_LEN`].
    pub fn from_hostname(host: &str) -> Result<Self, InvalidMachineId> {
        let mut out = String::with_capacity(host.len());
        for c in host.trim().chars().flat_map(char::to_lowercase) {
            if is_token_char(c) {
                out.push(c);
            } else if !out.ends_with('-') {
                out.push('-');
            }
        }
        let trimmed: String = out.trim_matches('-').chars().take(MAX_LEN).collect();
        let trimmed = trimmed.trim_end_matches('-');
        if trimmed.is_empty() {
            return Err(InvalidMachineId::Unusable(host.to_owned()));
        }
        Self::parse(trimmed)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MachineId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_tokens() {
        for ok in ["web01", "a", "db_2-east", &"x".repeat(MAX_LEN)] {
            assert_eq!(
                MachineId::parse(ok).map(|m| m.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn rejects_what_would_break_a_subject() {
        assert_eq!(MachineId::parse(""), Err(InvalidMachineId::Empty));
        for (bad, ch) in [
            ("web.01", '.'),
            ("a*", '*'),
            ("a>", '>'),
            ("A", 'A'),
            ("a b", ' '),
        ] {
            assert_eq!(
                MachineId::parse(bad),
                Err(InvalidMachineId::BadChar { id: bad.into(), ch })
            );
        }
        assert!(matches!(
            MachineId::parse(&"x".repeat(MAX_LEN + 1)),
            Err(InvalidMachineId::TooLong(_))
        ));
    }

    #[test]
    fn derives_from_hostnames() {
        let cases = [
            ("Web01", "web01"),
            ("web01.example.com", "web01-example-com"),
            ("  My Laptop!! ", "my-laptop"),
            ("-edge-", "edge"),
            ("ÄBC", "bc"),
        ];
        for (host, want) in cases {
            assert_eq!(
                MachineId::from_hostname(host).map(|m| m.to_string()),
                Ok(want.into()),
                "{host}"
            );
        }
        assert!(matches!(
            MachineId::from_hostname("..."),
            Err(InvalidMachineId::Unusable(_))
        ));
        let long = format!("{}.example.com", "a".repeat(80));
        assert_eq!(
            MachineId::from_hostname(&long).map(|m| m.as_str().len()),
            Ok(MAX_LEN)
        );
    }
}
