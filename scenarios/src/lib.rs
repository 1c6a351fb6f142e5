//! # fafnir scenarios
//!
//! The top of the dependency graph: the `fafnir` binary, the gateway client
//! that agents and tests use, and (outside simulation) the wiring of the
//! platform to the real nats-server and redis-server.
//!
//! ## Layout
//!
//! - [`baselines`]: ci/baselines.toml, latency percentiles guarded by `fafnir ci check`.
//! - `chaos` (simulated build): seed sweeps, failure classes, replay files, shrinking.
//! - [`sweep`]: what a sweep keeps of each seed, `--shard`, and the table it ends with (both builds).
//! - `queue`, `worker`, `distributed` (real build): the JetStream work queue, `fafnir worker`,
//!   and the coordinators of sweeps and runs spread over workers.
//! - [`regressions`]: ci/regressions.toml, seeds that once found bugs, replayed by `fafnir ci replay`.
//! - [`agents`]: the market agents (noise, market maker, momentum, value, whale).
//! - [`checker`]: the fill checker and its reference book.
//! - [`scenario`]: scenario files (TOML), their schema and SLOs.
//! - [`run`]: one run's outcome, summary.json and .hgrm files; `sim_run` runs it in simulation,
//!   `real_run` against real servers.
//! - [`progress`]: where a run is, and the progress bar's line.
//! - [`observe`]: the metrics recorder, `/metrics`, and metrics.jsonl (a sample of every metric each second).
//! - `otlp` (feature `otlp`, real build): export of the platform's spans over OTLP.
//! - [`timeline`]: timeline.json, what happened when (buckets, trades, fault windows).
//! - [`driver`]: the open-loop driver and its latency recorder.
//! - [`capacity`]: `fafnir capacity`'s steps, figures and knee.
//! - [`hostile_calls`]: sending a hostile agent's requests and judging the answers.
//! - [`client`]: a logged-in user of the public gateway API.
//! - [`real`]: connect a deployment to real NATS and Redis; pick local ports.
//! - `servers` (real build): private nats-server and redis-server processes that tests kill and restart.
//! - `split_load` (real build): a run's agents split over workers, their measurements merged exactly, one check.
//! - `simbench` (simulated build): the simulation's speed benchmark.
//! - `src/bin/fafnir.rs`: the command line (`up`, `serve`).

pub mod agents;
pub mod baselines;
#[cfg(not(madsim))]
pub mod broker_probe;
#[cfg(not(madsim))]
pub mod calibrate;
pub mod capacity;
#[cfg(madsim)]
pub mod chaos;
pub mod checker;
pub mod client;
#[cfg(not(madsim))]
pub mod distributed;
pub mod driver;
#[cfg(not(madsim))]
pub mod fidelity;
pub mod hostile_calls;
pub mod observe;
#[cfg(all(feature = "otlp", not(madsim)))]
pub mod otlp;
#[cfg(not(madsim))]
pub mod precise;
pub mod progress;
#[cfg(not(madsim))]
pub mod queue;
#[cfg(not(madsim))]
pub mod real;
#[cfg(not(madsim))]
pub mod real_run;
pub mod regressions;
pub mod run;
pub mod scenario;
#[cfg(not(madsim))]
pub mod servers;
#[cfg(madsim)]
pub mod sim_run;
#[cfg(madsim)]
pub mod simbench;
#[cfg(not(madsim))]
pub mod split_load;
pub mod sweep;
pub mod timeline;
#[cfg(not(madsim))]
pub mod worker;
