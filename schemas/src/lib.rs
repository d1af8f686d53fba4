//! The wire contract of sysmonstm, and nothing else.
//!
//! Every service talks to the others only through what this crate defines:
//! the protobuf messages (package `sysmonstm.v1`), the subjects they travel on,
//! the JetStream streams and consumers that hold them, and the headers that
//! carry meaning. Subjects are built here and nowhere else, so a typo in one
//! service cannot silently split the data flow.

pub mod accept;
pub mod alert;
pub mod headers;
mod machine_id;
pub mod rules;
pub mod silence;
pub mod streams;
pub mod subjects;

pub use machine_id::{InvalidMachineId, MachineId};

/// The generated protobuf types (`sysmonstm.v1`).
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/sysmonstm.v1.rs"));
}
