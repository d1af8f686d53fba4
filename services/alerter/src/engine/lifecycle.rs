//! How a machine leaves the engine. Every subject token that ever carried
//! an accepted snapshot becomes a machine the `silent` rule watches; without
//! an end, a machine decommissioned (or a token made up once) would be
//! reported silent for ever and the set of machines would only grow.
//!
//! - [`Engine::retire`]: a machine silent for longer than the horizon is
//!   dropped; its firing alerts resolve with a message that says why.
//! - [`Engine::forget`]: an operator's `sysmonstm machines forget <id>`
//!   drops one at once, in the same way.

use sysmonstm_schemas::rules::format_duration;

use super::{Change, Engine};

impl Engine {
    /// Drops every machine not heard of for longer than `horizon_ms`, with
    /// all its pairs (a firing alert resolves: "machine retired …"). Returns
    /// the changes to carry out and the machines retired.
    pub fn retire(&mut self, now_ms: i64, horizon_ms: i64) -> (Vec<Change>, Vec<String>) {
        let gone: Vec<String> = self
            .machines
            .iter()
            .filter(|(_, seen)| now_ms.saturating_sub(seen.last_ms) > horizon_ms)
            .map(|(m, _)| m.clone())
            .collect();
        let mut out = Vec::new();
        if gone.is_empty() {
            return (out, gone);
        }
        let why = format!(
            "machine retired: no snapshot for more than {}",
            format_duration(std::time::Duration::from_millis(
                u64::try_from(horizon_ms).unwrap_or(0)
            ))
        );
        for m in &gone {
            self.drop_machine(m, now_ms, &why, &mut out);
        }
        (out, gone)
    }

    /// Drops `machine` now, with all its pairs (a firing alert resolves:
    /// "machine forgotten"). Returns the changes (every pair's key deleted)
    /// and whether the machine was known at all.
    pub fn forget(&mut self, machine: &str, now_ms: i64) -> (Vec<Change>, bool) {
        let mut out = Vec::new();
        let known =
            self.machines.contains_key(machine) || self.states.keys().any(|(m, _)| m == machine);
        self.drop_machine(
            machine,
            now_ms,
            "machine forgotten by an operator",
            &mut out,
        );
        (out, known)
    }

    /// How many machines the engine follows (for the silent check).
    pub fn machine_count(&self) -> usize {
        self.machines.len()
    }

    fn drop_machine(&mut self, machine: &str, now_ms: i64, why: &str, out: &mut Vec<Change>) {
        self.machines.remove(machine);
        let keys: Vec<_> = self
            .states
            .keys()
            .filter(|(m, _)| m == machine)
            .cloned()
            .collect();
        for key in keys {
            self.close(&key, now_ms, why, out);
        }
    }
}
