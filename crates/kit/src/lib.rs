//! The runtime kit: what every sysmonstm binary needs before it does its own
//! work — layered configuration, telemetry, a NATS connection built like the
//! nats CLI builds one, and a shutdown signal passed down as a value; and
//! the JetStream helpers (`jetstream`) the services and the CLI share.

pub mod config;
pub mod creds;
pub mod http;
pub mod jetstream;
pub mod jwt;
pub mod metrics;
pub mod nats;
pub mod shutdown;
pub mod telemetry;
