//! The engine's output: alert events in domain terms (the contract's
//! [`Alert`], from `schemas`) and the changes the service carries out.

use sysmonstm_schemas::rules::AlertStateRecord;

pub use sysmonstm_schemas::alert::{Alert, EventKind};

/// One thing to carry out: publish `event` (if any), then store `record`
/// under the pair's key, or delete the key when `record` is `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub machine: String,
    pub rule: String,
    pub event: Option<Alert>,
    pub record: Option<AlertStateRecord>,
}
