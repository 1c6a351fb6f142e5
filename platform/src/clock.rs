//! Time of day, injected. The platform never reads the wall clock itself: each
//! service is handed a [`Clock`] in its `Deps` — the system clock for real
//! (`fafnir_scenarios::real::SystemClock`), simulated time in the madsim world
//! (`fafnir_sim::world::SimClock`). Durations and timeouts use `tokio::time`
//! (simulated under madsim).

/// Milliseconds since the Unix epoch, from whatever time the deployment runs in.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}
