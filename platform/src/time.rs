//! Durations and instants, in one place: every sleep, timeout, interval and
//! clock read of `platform/`, `sim/` and `scenarios/` goes through this module
//! (clippy's `disallowed-methods` bans the direct tokio and madsim calls).
//!
//! Why: madsim never sleeps less than 1 ms (its `sleep_until` clamps every
//! deadline to at least now + 1 ms, and its network sleeps before each send),
//! so in its plain time a message costs at least a millisecond and the
//! microsecond latencies of a trading platform cannot appear. The simulated
//! build therefore runs on a dilated clock: [`DILATION`] nanoseconds of
//! madsim's time stand for one nanosecond of modelled time, so madsim's 1 ms
//! floor is 1 µs of modelled time, and a latency, service time or schedule
//! of any length above that is served as drawn. Everything a caller sees,
//! every [`Duration`] in and out of this module, is modelled time; only
//! [`to_runtime`] and [`from_runtime`] cross to the runtime's clock, for APIs
//! that take a runtime duration themselves (a tonic endpoint's timeout,
//! madsim's network latency). The real build runs undilated
//! (`DILATION == 1`): every function here is the tokio call it wraps.

use std::future::Future;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// Nanoseconds of the runtime's clock per nanosecond of modelled time: 1,000
/// in the simulated build (madsim's 1 ms floor is 1 µs modelled), 1 in the real one.
pub const DILATION: u32 = if cfg!(madsim) { 1_000 } else { 1 };

/// The runtime's duration for a modelled one (saturating: a "forever" stays forever).
pub fn to_runtime(d: Duration) -> Duration {
    d.checked_mul(DILATION).unwrap_or(Duration::MAX)
}

/// The modelled duration for a runtime one.
pub fn from_runtime(d: Duration) -> Duration {
    d / DILATION
}

/// A moment on the modelled clock. Differences and offsets are modelled time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(tokio::time::Instant);

impl Instant {
    /// Now (simulated under madsim).
    #[allow(clippy::disallowed_methods)] // the one place the runtime's clock is read
    pub fn now() -> Instant {
        Instant(tokio::time::Instant::now())
    }

    /// Modelled time since `self` (zero if `self` is in the future).
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(*self)
    }

    /// Modelled time from `earlier` to `self` (zero if `earlier` is later).
    pub fn saturating_duration_since(&self, earlier: Instant) -> Duration {
        from_runtime(self.0.saturating_duration_since(earlier.0))
    }

    /// Modelled time from `earlier` to `self` (zero if `earlier` is later).
    pub fn duration_since(&self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }

    pub fn checked_add(&self, d: Duration) -> Option<Instant> {
        d.checked_mul(DILATION).and_then(|r| self.0.checked_add(r)).map(Instant)
    }

    pub fn checked_sub(&self, d: Duration) -> Option<Instant> {
        d.checked_mul(DILATION).and_then(|r| self.0.checked_sub(r)).map(Instant)
    }

    /// The runtime's instant, for an API that takes one.
    pub fn into_runtime(self) -> tokio::time::Instant {
        self.0
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0 + to_runtime(d))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant(self.0 - to_runtime(d))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

/// Waits for `d` of modelled time.
#[allow(clippy::disallowed_methods)]
pub fn sleep(d: Duration) -> impl Future<Output = ()> + Send + 'static {
    tokio::time::sleep(to_runtime(d))
}

/// Waits until `deadline`.
#[allow(clippy::disallowed_methods)]
pub fn sleep_until(deadline: Instant) -> impl Future<Output = ()> + Send + 'static {
    tokio::time::sleep_until(deadline.0)
}

/// The error of a [`timeout`] that expired.
pub use tokio::time::error::Elapsed;

/// Runs `fut` for at most `d` of modelled time.
#[allow(clippy::disallowed_methods)]
pub fn timeout<F: Future>(d: Duration, fut: F) -> impl Future<Output = Result<F::Output, Elapsed>> {
    tokio::time::timeout(to_runtime(d), fut)
}

pub use tokio::time::MissedTickBehavior;

/// Ticks every `period` of modelled time, the first at once.
pub fn interval(period: Duration) -> Interval {
    interval_at(Instant::now(), period)
}

/// Ticks every `period` of modelled time from `start`.
#[allow(clippy::disallowed_methods)]
pub fn interval_at(start: Instant, period: Duration) -> Interval {
    Interval(tokio::time::interval_at(start.0, to_runtime(period)))
}

/// A periodic tick on the modelled clock.
#[derive(Debug)]
pub struct Interval(tokio::time::Interval);

impl Interval {
    /// Waits for the next tick; returns when it was due.
    pub async fn tick(&mut self) -> Instant {
        Instant(self.0.tick().await)
    }

    pub fn set_missed_tick_behavior(&mut self, behavior: MissedTickBehavior) {
        self.0.set_missed_tick_behavior(behavior);
    }
}

#[cfg(all(test, madsim))]
mod tests {
    use super::*;

    /// The 1 ms floor of madsim is 1 µs here: short sleeps are served as asked.
    #[madsim::test]
    async fn microsecond_sleeps_are_served_exactly() {
        for us in [3u64, 17, 300, 999, 1_500] {
            let t0 = Instant::now();
            sleep(Duration::from_micros(us)).await;
            assert_eq!(t0.elapsed(), Duration::from_micros(us), "sleep of {us} µs");
        }
        // Below the floor: at most 1 µs.
        let t0 = Instant::now();
        sleep(Duration::from_nanos(200)).await;
        assert!(t0.elapsed() <= Duration::from_micros(1));
    }

    #[madsim::test]
    async fn intervals_and_timeouts_run_on_modelled_time() {
        let t0 = Instant::now();
        let mut every = interval(Duration::from_micros(250));
        for n in 0..5u32 {
            // The first tick is due at once, which madsim serves 1 µs later (its floor).
            let due = every.tick().await;
            let want = Duration::from_micros(250) * n;
            assert!((due - t0).abs_diff(want) <= Duration::from_micros(1), "tick {n} at {:?}", due - t0);
        }
        let late = timeout(Duration::from_micros(40), sleep(Duration::from_micros(50))).await;
        assert!(late.is_err());
        let t1 = Instant::now();
        timeout(Duration::from_micros(60), sleep(Duration::from_micros(50))).await.expect("in time");
        assert_eq!(t1.elapsed(), Duration::from_micros(50));
    }
}
