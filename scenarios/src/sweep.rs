//! What a seed sweep keeps of each seed, and the table it ends with: the
//! same for a sweep on one machine (`chaos`, simulated build) and one spread
//! over workers (`fafnir chaos --nats`, whose coordinator is the real build).
//! A seed's outcome crosses the work queue as JSON, so everything here
//! (de)serializes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// How a seed failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A panic or an error that stopped the run.
    Crash,
    /// The platform did not catch up after the faults ended.
    Liveness,
    /// The fill checker found a violation.
    Correctness,
    /// More requests failed or timed out than the error budget allows.
    ErrorBudget,
    /// An SLO was violated (every fill was right).
    Slo,
}

impl FailureKind {
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Crash,
        FailureKind::Liveness,
        FailureKind::Correctness,
        FailureKind::ErrorBudget,
        FailureKind::Slo,
    ];
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Crash => "crash",
            FailureKind::Liveness => "liveness",
            FailureKind::Correctness => "correctness",
            FailureKind::ErrorBudget => "error_budget",
            FailureKind::Slo => "slo",
        })
    }
}

/// What failed: the kind, and for correctness and SLO failures which checks
/// or SLOs. "The same way" means the same kind and at least one of the same
/// checks (or SLOs) failing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: FailureKind,
    pub failed: BTreeSet<String>,
    /// One line for a person.
    pub detail: String,
}

impl Failure {
    /// Whether `self` fails the way `other` did.
    pub fn same_way(&self, other: &Failure) -> bool {
        self.kind == other.kind && (other.failed.is_empty() || !self.failed.is_disjoint(&other.failed))
    }
}

/// What a sweep keeps of one seed once it has run: enough for the sweep's
/// table, a few hundred bytes, whatever the run measured (a whole run, its
/// latency samples and checker input, is megabytes: a sweep that kept them
/// grew by about 5 MB a seed). One JSON line of `outcomes.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedOutcome {
    pub seed: u64,
    pub failure: Option<Failure>,
    /// The faults that fired, by kind, and the orders in flight when they did
    /// (empty when the run did not finish).
    pub coverage: crate::run::Coverage,
    /// The run's submit_to_ack p99 (None when it did not finish).
    pub submit_to_ack_p99_ns: Option<u64>,
    pub trace_hash: Option<String>,
}

/// `--shard I/N`: the I-th of N interleaved parts of a seed range (seed `s`
/// belongs to part `(s - start) % N`), for sweeps split without a queue
/// (a Kubernetes Indexed Job's pods, one part each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub of: u64,
}

impl Shard {
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || format!("{text:?} is not a shard I/N (0 <= I < N, e.g. 3/10)");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let of: u64 = n.trim().parse().map_err(|_| bad())?;
        if of == 0 || index >= of {
            return Err(bad());
        }
        Ok(Shard { index, of })
    }

    /// The seeds of `range` in this shard, in order.
    pub fn seeds(self, range: std::ops::Range<u64>) -> Vec<u64> {
        let start = range.start;
        range.filter(|s| (s - start) % self.of == self.index).collect()
    }
}

/// The command that reruns one seed on its own (the simulated build).
pub fn rerun_command(file: &std::path::Path, seed: u64, duration: Option<std::time::Duration>) -> String {
    let d = duration.map(|d| format!(" --duration {}ms", d.as_millis())).unwrap_or_default();
    format!("cargo fafnir run {} --seed {seed}{d}", file.display())
}

/// The lines a sweep prints when a seed fails, as it fails: `n` of `total`
/// seeds done, the rerun command, and where its run directory is.
pub fn failure_lines(n: u64, total: u64, seed: u64, f: &Failure, rerun: &str, dir: &str) -> String {
    format!(
        "[{n}/{total}] seed {seed} FAILED {}: {}\n    rerun: {rerun}\n    replay without the nemesis: cargo fafnir run \
         {dir}/replay.toml; shrink: cargo fafnir shrink {dir}",
        f.kind, f.detail
    )
}

/// The table a sweep ends with: runs and failures by kind, the faults that
/// fired over the sweep, the slowest p99s, and the verdict line. Returns the
/// number of failed seeds.
pub fn table(runs: &[SeedOutcome], out: &std::path::Path) -> (String, u64) {
    use std::fmt::Write as _;
    let mut by_kind: BTreeMap<FailureKind, u64> = BTreeMap::new();
    let mut fired: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in runs {
        if let Some(f) = &r.failure {
            *by_kind.entry(f.kind).or_default() += 1;
        }
        for (k, n) in &r.coverage.fired {
            let e = fired.entry(k.clone()).or_default();
            e.0 += u64::from(*n);
            e.1 += r.coverage.orders_in_flight.get(k).copied().unwrap_or(0);
        }
    }
    let failures: u64 = by_kind.values().sum();
    let mut s = String::new();
    let _ = writeln!(s, "\n{:<22} {:>6}", "runs", runs.len());
    for kind in FailureKind::ALL {
        let _ = writeln!(s, "{:<22} {:>6}", format!("{kind} failures"), by_kind.get(&kind).copied().unwrap_or(0));
    }
    let _ = writeln!(s, "\nfaults fired over the sweep (and submitted orders in flight when they did):");
    if fired.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for (k, (n, inflight)) in &fired {
        let _ = writeln!(s, "  {k:<18} {n:>6} fired, {inflight:>7} orders in flight");
    }
    let mut slowest: Vec<(u64, u64)> =
        runs.iter().filter_map(|r| r.submit_to_ack_p99_ns.map(|p99| (p99, r.seed))).collect();
    slowest.sort_by(|a, b| b.cmp(a));
    let _ = writeln!(s, "\nslowest submit_to_ack p99:");
    for (p99, seed) in slowest.iter().take(5) {
        let _ = writeln!(s, "  seed {seed:<8} {:>10.3} ms", *p99 as f64 / 1e6);
    }
    if failures == 0 {
        let _ = write!(s, "\nchaos: all {} seeds passed", runs.len());
    } else {
        let _ = write!(
            s,
            "\nchaos: {failures} of {} seeds failed; their run directories are under {}",
            runs.len(),
            out.display()
        );
    }
    (s, failures)
}

/// `outcomes.jsonl`: one line per seed, in seed order.
pub fn outcomes_jsonl(runs: &[SeedOutcome]) -> String {
    runs.iter().map(|r| serde_json::to_string(r).expect("a seed outcome serializes") + "\n").collect()
}

/// Reads `outcomes.jsonl`.
pub fn parse_outcomes(text: &str) -> Result<Vec<SeedOutcome>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("outcomes line {}: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_a_range_into_interleaved_parts_that_cover_it_once() {
        let parts: Vec<Vec<u64>> = (0..3).map(|i| Shard { index: i, of: 3 }.seeds(10..20)).collect();
        assert_eq!(parts[0], vec![10, 13, 16, 19]);
        assert_eq!(parts[2], vec![12, 15, 18]);
        let mut all: Vec<u64> = parts.concat();
        all.sort();
        assert_eq!(all, (10..20).collect::<Vec<_>>());
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, of: 3 }));
        for bad in ["3/3", "1/0", "x/2", "2", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outcomes_round_trip_through_jsonl() {
        let runs = vec![
            SeedOutcome {
                seed: 7,
                failure: Some(Failure {
                    kind: FailureKind::Correctness,
                    failed: ["conservation".to_string()].into(),
                    detail: "checker: conservation".into(),
                }),
                coverage: Default::default(),
                submit_to_ack_p99_ns: Some(1_234_567),
                trace_hash: Some("abc".into()),
            },
            SeedOutcome {
                seed: 8,
                failure: None,
                coverage: Default::default(),
                submit_to_ack_p99_ns: None,
                trace_hash: None,
            },
        ];
        assert_eq!(parse_outcomes(&outcomes_jsonl(&runs)), Ok(runs.clone()));
        let (text, failed) = table(&runs, std::path::Path::new("runs/x"));
        assert_eq!(failed, 1);
        let row = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(text.lines().any(|l| row(l) == "correctness failures 1"), "{text}");
        assert!(text.lines().any(|l| row(l) == "slo failures 0"), "{text}");
        assert!(text.ends_with("chaos: 1 of 2 seeds failed; their run directories are under runs/x"), "{text}");
    }
}
