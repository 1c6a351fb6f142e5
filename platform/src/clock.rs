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

    /// The CPU time the calling thread has used, where the deployment can
    /// read it (real: the OS's per-thread clock; None in simulation, where
    /// CPU work takes no time). Only for measuring (`fafnir calibrate`).
    fn thread_cpu(&self) -> Option<std::time::Duration> {
        None
    }
}
