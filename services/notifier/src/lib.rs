//! sysmonstm-notifier: delivers alert events to people — generic webhooks
//! (JSON, HMAC-signed), Slack- and Discord-compatible incoming webhooks,
//! ntfy, and mail over SMTP — routed by severity, machine and rule, grouped
//! per machine, silenced on request, and never twice for one event.
//!
//! It is an independent consumer (durable `notifier` on ALERTS): stopping
//! it stops notifications and nothing else; started again, it sends what
//! came meanwhile. `deliver` holds the delivery guarantees and their one
//! crash window; `config` the channels and routes; `route` which channels
//! an event goes to; `message` what a person reads; `channel` the sends.

pub mod channel;
pub mod config;
pub mod counters;
mod deliver;
pub mod message;
pub mod route;
mod service;
mod silences;

pub use config::NotifierConfig;
pub use counters::Counters;
pub use deliver::Hook;
pub use service::Notifier;
