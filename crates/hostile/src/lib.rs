//! The hostile suite lives in `tests/hostile.rs`; this crate has no code of
//! its own. It starts the release binaries (built by `just test` with the
//! `hostile` profile: release code, `panic = "abort"`, so a reachable panic is
//! an abort, as in production) against a real nats-server and PostgreSQL,
//! sends them what an attacker or a careless operator would, and checks that
//! every service still answers, stays within its memory bound, counted every
//! reject by reason, and still carries a normal machine end to end.
