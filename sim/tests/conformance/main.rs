//! The conformance suite, one binary: `bus` runs the event-bus cases, `kv`
//! the key-value cases, each against the simulated models under `cargo sim
//! test` and against the real servers under `cargo test`.

mod bus;
mod kv;
