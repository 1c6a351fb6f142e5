//! # fafnir scenarios
//!
//! The top of the dependency graph: the `fafnir` binary, the gateway client
//! that agents and tests use, and (outside simulation) the wiring of the
//! platform to the real nats-server and redis-server.
//!
//! ## Layout
//!
//! - [`client`]: a logged-in user of the public gateway API.
//! - [`real`]: connect a deployment to real NATS and Redis; pick local ports.
//! - `simbench` (simulated build): the simulation's speed benchmark.
//! - `src/bin/fafnir.rs`: the command line (`up`, `serve`).

pub mod client;
#[cfg(not(madsim))]
pub mod real;
#[cfg(madsim)]
pub mod simbench;
