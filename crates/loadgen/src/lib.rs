//! A simulated fleet for load: `sysmonstm-loadgen` publishes it through a
//! real hub; `just bench stack` runs it against the whole stack.

pub mod fleet;
pub mod load;

pub use fleet::{FleetSpec, Sim};
pub use load::{LoadSpec, Observer, Report};
