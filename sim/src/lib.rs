//! # fafnir sim
//!
//! The deterministic world: under `cargo sim` (`--cfg madsim`) every fafnir
//! service, a simulated JetStream broker and a simulated Redis are nodes of
//! one `madsim` world with a modelled network and injected faults. A seed
//! replays a run exactly.
//!
//! ## Layout
//!
//! - [`faults`]: faults as data (time, action, target, duration), as TOML.
//! - [`rng`]: derived seeds, one per subsystem, from the root seed.
//! - [`nemesis`]: the random nemesis: per seed, which fault kinds are on, their rates and durations (swarm testing).
//! - [`service_time`]: the modelled processing time of each service.
//! - `world`: the madsim world of every service, the broker and Redis (simulated build).
//! - [`trace`]: the trace hash over every event the world delivers, in order.
//! - [`broker`]: the simulated JetStream broker node and its [`fafnir_platform::bus::EventBus`] client.
//! - [`redis`]: the simulated Redis node and its [`fafnir_platform::kv::Kv`] client.
//! - [`conformance`]: behaviour tests written once against the traits, run against
//!   the simulated models (`cargo sim test`) and the real servers (`cargo test`).

pub mod conformance;
pub mod faults;
pub mod nemesis;
pub mod rng;
pub mod service_time;
pub mod trace;

#[cfg(madsim)]
pub mod broker;
#[cfg(madsim)]
pub mod redis;
#[cfg(madsim)]
pub mod world;
