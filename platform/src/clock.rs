//! Time of day, injected. The platform never reads the wall clock itself: each
//! service is handed a [`Clock`] in its `Deps` — the system clock for real
//! (`fafnir_scenarios::real::SystemClock`), simulated time in the madsim world
//! (`fafnir_sim::world::SimClock`). Durations, timeouts and instants use
//! `crate::time` (simulated, and dilated, under madsim).

/// Time since the Unix epoch, from whatever time the deployment runs in.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_us(&self) -> i64;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64 {
        self.now_us().div_euclid(1_000)
    }
}
