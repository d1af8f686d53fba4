//! The services together, in-process: this crate has no code of its own.
//! Each service depends on `schemas` and `kit` only, in its tests and
//! benches too; what needs two of them at once lives here, and may depend on
//! every service.
//!
//! * `tests/agent_persister.rs`: the real agent's snapshots as rows.
//! * `tests/alerter_persister.rs`: an alert's events as rows in `alerts`.
//! * `tests/gateway_history.rs`: history and stored alerts the gateway
//!   answers from what the real persister wrote.
//! * `tests/cli_alerter.rs`: the `sysmonstm` binary beside the real alerter.
//! * `examples/bench_gateway`: `just bench gateway`, whose history half needs
//!   a database with the persister's schema.
//!
//! The tests reuse each service's own test helpers (`#[path]` to its
//! `tests/common`), so there is one copy of each.
