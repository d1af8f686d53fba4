//! Header names and values with a meaning on the wire.

/// JetStream's de-duplication header. The agent sets it to
/// [`msg_id`]`(machine, seq)` so a publish retried after a time-out or a
/// reconnect is stored once.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// The value of [`MSG_ID`] for one snapshot of one machine.
pub fn msg_id(machine: &crate::MachineId, seq: u64) -> String {
    format!("{machine}:{seq}")
}
