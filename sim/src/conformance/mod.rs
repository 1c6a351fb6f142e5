//! Behaviour tests written once against the platform's I/O traits. Each case
//! is a plain async function taking the implementation under test; the test
//! binary `sim/tests/conformance` runs every case against the simulated models
//! (`cargo sim test`) and against real nats-server / redis-server (`cargo test`).
//! When the two disagree, the model is fixed.

pub mod bus;
pub mod kv;
