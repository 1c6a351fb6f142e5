//! Where a run is, for a progress bar: simulated and real runs report the
//! same [`Progress`] every [`PROGRESS_EVERY`]; [`bar_line`] draws it.

use std::sync::Arc;
use std::time::Duration;

use crate::driver::Recorder;

/// How often a run reports its progress (simulated time in a simulated run,
/// wall time in a real one).
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Called every [`PROGRESS_EVERY`] while a run's load and liveness phases last.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Which clock a run's time is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunClock {
    /// The simulation's clock: a second of it may take a millisecond.
    Simulated,
    /// Wall time, in a run against real servers.
    Wall,
}

impl RunClock {
    /// How a progress bar names time on this clock.
    pub fn label(self) -> &'static str {
        match self {
            RunClock::Simulated => "simulated",
            RunClock::Wall => "elapsed",
        }
    }
}

/// Where a run is, for a progress bar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// "load" while the agents trade, "liveness" while the platform catches up.
    pub phase: &'static str,
    pub clock: RunClock,
    /// Time since the load started, on `clock`.
    pub elapsed_ms: u64,
    /// How long the load lasts, on `clock`.
    pub duration_ms: u64,
    pub submitted: u64,
    pub accepted: u64,
    /// Submits and cancels sent, and of them failed or timed out.
    pub requests: u64,
    pub errors: u64,
    /// submit_to_ack p99 so far.
    pub p99_ack_ns: u64,
}

impl Progress {
    /// Reads `rec` for a run whose load of `duration` started `elapsed` ago.
    pub fn read(rec: &Recorder, clock: RunClock, elapsed: Duration, duration: Duration) -> Progress {
        let elapsed_ms = elapsed.as_millis() as u64;
        let duration_ms = duration.as_millis() as u64;
        let ack = &rec.histograms["submit_to_ack"];
        Progress {
            phase: if elapsed_ms < duration_ms { "load" } else { "liveness" },
            clock,
            elapsed_ms,
            duration_ms,
            submitted: rec.counts.submitted,
            accepted: rec.counts.accepted,
            requests: rec.counts.submitted + rec.counts.cancels,
            errors: rec.counts.failed + rec.counts.timed_out + rec.counts.cancels_failed + rec.counts.cancels_timed_out,
            p99_ack_ns: if ack.is_empty() { 0 } else { ack.value_at_quantile(0.99) },
        }
    }
}

/// The bar's width in characters.
const BAR_WIDTH: u64 = 30;

/// One line of a progress bar for `p`, without terminal control codes. The
/// bar stays full through the liveness phase; the time goes on counting.
pub fn bar_line(p: &Progress) -> String {
    let done = (p.elapsed_ms.min(p.duration_ms) * BAR_WIDTH / p.duration_ms.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(done), "-".repeat(BAR_WIDTH as usize - done));
    format!(
        "[{bar}] {:>6.1}/{:.1} s {} ({}) | {} orders, {} accepted | {} errors ({}) | p99 submit->ack {:.1} ms",
        p.elapsed_ms as f64 / 1e3,
        p.duration_ms as f64 / 1e3,
        p.clock.label(),
        p.phase,
        p.submitted,
        p.accepted,
        p.errors,
        crate::scenario::percent((p.errors * 1_000_000).checked_div(p.requests).unwrap_or(0) as u32),
        p.p99_ack_ns as f64 / 1e6
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(clock: RunClock, elapsed_ms: u64, phase: &'static str) -> Progress {
        Progress {
            phase,
            clock,
            elapsed_ms,
            duration_ms: 10_000,
            submitted: 1234,
            accepted: 1200,
            requests: 1600,
            errors: 4,
            p99_ack_ns: 2_345_000,
        }
    }

    #[test]
    fn bar_line_shows_the_fraction_of_the_load_done_and_labels_the_clock() {
        assert_eq!(
            bar_line(&at(RunClock::Simulated, 2_500, "load")),
            "[#######-----------------------]    2.5/10.0 s simulated (load) \
             | 1234 orders, 1200 accepted | 4 errors (0.25%) | p99 submit->ack 2.3 ms"
        );
        let wall = bar_line(&at(RunClock::Wall, 5_000, "load"));
        assert!(wall.starts_with(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))), "{wall}");
        assert!(wall.contains("5.0/10.0 s elapsed (load)"), "{wall}");
        assert!(!wall.contains("simulated"), "{wall}");
    }

    #[test]
    fn bar_line_stays_full_past_the_duration_while_the_time_counts_on() {
        let line = bar_line(&at(RunClock::Wall, 13_700, "liveness"));
        assert!(line.starts_with(&format!("[{}]", "#".repeat(30))), "{line}");
        assert!(line.contains("13.7/10.0 s elapsed (liveness)"), "{line}");
        let empty = bar_line(&Progress { duration_ms: 0, ..at(RunClock::Simulated, 0, "liveness") });
        assert!(empty.starts_with(&format!("[{}]", "-".repeat(30))), "a zero duration divides by one: {empty}");
    }
}
