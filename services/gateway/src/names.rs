//! Which machines the edge shows, and under which names (`edge_machines`).
//!
//! The edge faces the internet, and a machine id is usually its internal
//! hostname. With an allow-list configured, a machine not on it is dropped
//! where its messages are decoded (`feed`, the edge's history and alerts), so
//! no cache, answer or live message ever holds it; a listed machine is known
//! only by its public name from there on (id, hostname, alert messages), and
//! a public name in a request is turned back into the real id only to build
//! the subject it reads. Without a list (the hub, or an edge that shows
//! everything) every machine passes under its own id.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use sysmonstm_schemas::MachineId;

use crate::domain::{Alert, Detail, Info};

#[derive(Clone, Debug, Default)]
pub struct Names {
    /// `None`: everything passes unchanged.
    list: Option<Lists>,
}

#[derive(Clone, Debug)]
struct Lists {
    public: HashMap<String, String>,
    real: HashMap<String, String>,
}

impl Names {
    /// From `edge_machines` (real id → public name); both sides must be
    /// machine ids and no public name may be given twice.
    pub fn new(map: &BTreeMap<String, String>) -> Result<Self, String> {
        if map.is_empty() {
            return Ok(Self::default());
        }
        let mut public = HashMap::new();
        let mut real = HashMap::new();
        for (id, name) in map {
            MachineId::parse(id)
                .map_err(|e| format!("edge_machines: {id:?} is not a machine id: {e}"))?;
            MachineId::parse(name).map_err(|e| {
                format!(
                    "edge_machines: the public name {name:?} of {id:?} is not a machine id: {e}"
                )
            })?;
            if let Some(other) = real.insert(name.clone(), id.clone()) {
                return Err(format!(
                    "edge_machines: {other:?} and {id:?} both have the public name {name:?}"
                ));
            }
            public.insert(id.clone(), name.clone());
        }
        Ok(Self {
            list: Some(Lists { public, real }),
        })
    }

    /// An allow-list with nobody on it: every machine hidden.
    pub fn nothing() -> Self {
        Self {
            list: Some(Lists {
                public: HashMap::new(),
                real: HashMap::new(),
            }),
        }
    }

    /// Whether an allow-list is in force (names are replaced).
    pub fn listed(&self) -> bool {
        self.list.is_some()
    }

    /// The public name of machine `id`; `None` when it must not be shown.
    pub fn public<'a>(&'a self, id: &'a str) -> Option<Cow<'a, str>> {
        match &self.list {
            None => Some(Cow::Borrowed(id)),
            Some(l) => l.public.get(id).map(|p| Cow::Borrowed(p.as_str())),
        }
    }

    /// The real id behind a public name; `None` for a name not shown.
    pub fn real<'a>(&'a self, public: &'a str) -> Option<Cow<'a, str>> {
        match &self.list {
            None => Some(Cow::Borrowed(public)),
            Some(l) => l.real.get(public).map(|r| Cow::Borrowed(r.as_str())),
        }
    }

    /// Renames a decoded snapshot's machine; false when it must be dropped.
    pub fn snapshot(&self, d: &mut Detail) -> bool {
        match self.public(&d.summary.machine_id) {
            Some(p) => {
                let p = p.into_owned();
                d.summary.machine_id = p;
                true
            }
            None => false,
        }
    }

    /// Renames a machine's facts; with a list, the hostname is the public
    /// name too (the internal hostname is what the list hides).
    pub fn info(&self, i: &mut Info) -> bool {
        let Some(p) = self.public(&i.machine_id).map(Cow::into_owned) else {
            return false;
        };
        if self.listed() {
            i.hostname = p.clone();
        }
        i.machine_id = p;
        true
    }

    /// Renames an alert event's machine, also in its message. With a list
    /// an acknowledgement says only that: its message names who acked.
    pub fn alert(&self, a: &mut Alert) -> bool {
        let Some(p) = self.public(&a.machine_id).map(Cow::into_owned) else {
            return false;
        };
        if self.listed() && a.state == "acknowledged" {
            a.message = "acknowledged".to_owned();
        } else {
            a.message = self.scrub(&a.message, &a.machine_id, &p);
        }
        a.machine_id = p;
        true
    }

    /// `text` with every mention of the real id replaced by the public name.
    pub fn scrub(&self, text: &str, id: &str, public: &str) -> String {
        if self.list.is_none() || id == public || id.is_empty() {
            return text.to_owned();
        }
        text.replace(id, public)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn without_a_list_everything_passes_unchanged() {
        let n = Names::new(&BTreeMap::new()).expect("empty");
        assert!(!n.listed());
        assert_eq!(n.public("db-3").as_deref(), Some("db-3"));
        assert_eq!(n.real("db-3").as_deref(), Some("db-3"));
        assert_eq!(n.scrub("db-3 cpu", "db-3", "db-3"), "db-3 cpu");
    }

    #[test]
    fn a_list_hides_the_rest_and_renames_both_ways() {
        let n = Names::new(&map(&[("db-internal-3", "db"), ("web-1", "web-1")])).expect("list");
        assert_eq!(n.public("db-internal-3").as_deref(), Some("db"));
        assert_eq!(n.public("web-1").as_deref(), Some("web-1"));
        assert_eq!(n.public("secret"), None);
        assert_eq!(n.real("db").as_deref(), Some("db-internal-3"));
        assert_eq!(
            n.real("db-internal-3"),
            None,
            "only public names are asked for"
        );
        assert_eq!(
            n.scrub("db-internal-3: cpu high", "db-internal-3", "db"),
            "db: cpu high"
        );
    }

    #[test]
    fn the_empty_allow_list_hides_everything() {
        let n = Names::nothing();
        assert_eq!(n.public("web-1"), None);
        assert_eq!(n.real("web-1"), None);
    }

    #[test]
    fn bad_lists_are_refused_naming_the_entry() {
        for (m, what) in [
            (map(&[("Bad Host", "x")]), "Bad Host"),
            (map(&[("a", "Not Ok")]), "Not Ok"),
            (map(&[("a", "x"), ("b", "x")]), "\"x\""),
        ] {
            let e = Names::new(&m).expect_err(what);
            assert!(e.starts_with("edge_machines") && e.contains(what), "{e}");
        }
    }
}
