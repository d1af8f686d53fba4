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
mod otlp_http;
pub mod shutdown;
pub mod telemetry;

/// Makes ring (the provider async-nats already uses) rustls's process-wide
/// default, once; later calls change nothing. reqwest, built with rustls
/// but without a provider of its own (the notifier's HTTP channels), panics
/// when it builds a client without a default: call this before any client.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
