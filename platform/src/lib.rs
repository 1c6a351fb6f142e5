//! # fafnir platform
//!
//! The trading services of fafnir — gateway, auth, market, orders, engine and
//! portfolio — written once and run either for real (tokio, nats-server,
//! redis-server) or inside the deterministic `madsim` world of `fafnir-sim`.
//!
//! ## Layout
//!
//! - [`domain`]: pure types; money in integer cents, prices in ticks, quantities in shares.
//! - [`book`]: the central limit order book, pure (no I/O, no clock, no randomness).
//! - [`bus`]: the [`bus::EventBus`] trait (the JetStream semantics used) and its NATS adapter.
//! - [`kv`]: the [`kv::Kv`] trait (the Redis commands used) and its Redis adapter.
//! - [`services`]: one module per service, each with a `serve` entry point taking its
//!   dependencies, plus [`services::launch`] that starts a whole deployment, and
//!   [`services::health`] / [`services::front`]: the gRPC health protocol every service
//!   answers from its start, and its calls refused until it has rebuilt its state.
//! - [`proto`]: the generated gRPC and event types (`platform/proto/*.proto`).
//! - [`rpc`]: the unary calls on an order's path (multiplexed in simulation).
//! - `calls` (simulation only): the calls in flight on one simulated connection, with deadlines.
//! - [`config`]: one deployment's configuration; [`clock`]: the one wall-clock read.
//! - [`telemetry`]: the metrics every service records (names, the gRPC call wrapper, timed bus and kv).
//!
//! JetStream is the system of record; Redis holds derived state only. Every
//! stateful service rebuilds itself from its streams on start.

pub mod book;
pub mod bus;
#[cfg(madsim)]
pub mod calls;
pub mod clock;
pub mod config;
pub mod domain;
pub mod kv;
pub mod proto;
pub mod rng;
pub mod rpc;
pub mod services;
pub mod telemetry;
pub mod time;
