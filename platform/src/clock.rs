//! The one place the platform reads the time of day.
//!
//! Under `cfg(madsim)` madsim intercepts the system clock, so this is simulated
//! time there and the run stays deterministic. Durations and timeouts use
//! `tokio::time` (also simulated under madsim).

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // the sanctioned wall-clock read, simulated under madsim
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
