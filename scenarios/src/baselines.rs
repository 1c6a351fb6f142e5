//! Latency baselines (`ci/baselines.toml`): a fixed set of scenario + seed
//! pairs, run in simulation (deterministic, so their percentiles are exact),
//! with the percentiles they gave when last blessed. `fafnir ci check` reruns
//! them and fails when a tracked percentile regresses beyond the tolerance or
//! a run's checker fails; `fafnir ci bless` rewrites the percentiles.
//!
//! ```toml
//! tolerance_pct = 10   # a percentile may grow this much ...
//! slack_us = 100       # ... plus this, before it counts as a regression
//!
//! [[run]]
//! scenario = "scenarios/baseline.toml"
//! seed = 1
//! duration_ms = 5000   # optional: shorten the scenario's load
//! noise_rate_per_s = 500   # optional: a capacity step (the noise traders scaled to
//!                          # this many decisions a second, about 340 orders a second here)
//! calibration = "calibration/baseline.toml"   # optional: `fafnir run --calibration`
//! [run.percentiles]    # written by `fafnir ci bless`, in ns
//! "submit_to_ack.p99" = 79167487
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::run::{Outcome, StageSummary, Summary};

/// The quantiles a baseline tracks, by their names in the file.
pub const TRACKED: [&str; 3] = ["p50", "p99", "p999"];

/// `ci/baselines.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baselines {
    /// How much (percent) a percentile may grow before it is a regression.
    pub tolerance_pct: u32,
    /// Absolute slack (µs) on top of the tolerance, so that tiny values
    /// (tens of simulated µs) do not fail on one message's worth of change.
    #[serde(default)]
    pub slack_us: u64,
    #[serde(rename = "run")]
    pub runs: Vec<BaselineRun>,
}

/// One scenario + seed pair and its blessed percentiles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineRun {
    /// Path of the scenario file, relative to the repository root.
    pub scenario: String,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// A capacity step: the scenario's noise traders scaled to this many
    /// decisions a second (as `fafnir capacity` scales them, without its
    /// calibration to an order rate), so that a change that serialises the
    /// platform again shows at a rate the baseline's calm market never reaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_rate_per_s: Option<u64>,
    /// Per-run override of the file's tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance_pct: Option<u32>,
    /// A calibration file (relative to the repository root) in place of the
    /// scenario's network and service times, as `fafnir run --calibration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<String>,
    /// "<stage>.<quantile>" -> nanoseconds.
    #[serde(default)]
    pub percentiles: BTreeMap<String, u64>,
}

impl BaselineRun {
    /// "baseline.toml seed 1".
    pub fn label(&self) -> String {
        let file = self.scenario.rsplit('/').next().unwrap_or(&self.scenario);
        let mut label = match self.noise_rate_per_s {
            Some(rate) => format!("{file} seed {} at {rate} noise decisions/s", self.seed),
            None => format!("{file} seed {}", self.seed),
        };
        if let Some(c) = &self.calibration {
            label.push_str(&format!(" calibrated by {}", c.rsplit('/').next().unwrap_or(c)));
        }
        label
    }
}

impl Baselines {
    /// Parses the file; errors name the field and the reason.
    pub fn parse(text: &str) -> Result<Baselines, String> {
        let b: Baselines = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if b.runs.is_empty() {
            return Err("run: at least one [[run]] is needed".into());
        }
        for (i, r) in b.runs.iter().enumerate() {
            for key in r.percentiles.keys() {
                let (stage, q) = key.split_once('.').unwrap_or((key, ""));
                if !crate::scenario::STAGES.contains(&stage) || !TRACKED.contains(&q) {
                    return Err(format!(
                        "run[{i}].percentiles: {key:?} is not <stage>.<quantile> (stages {}; quantiles {})",
                        crate::scenario::STAGES.join(", "),
                        TRACKED.join(", ")
                    ));
                }
            }
        }
        Ok(b)
    }

    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).expect("baselines serialize");
        format!(
            "# Latency baselines checked by `fafnir ci check` (run from ci/test) and\n\
             # rewritten by `fafnir ci bless`. Percentiles are in nanoseconds of\n\
             # simulated time; each run is deterministic, so they are exact.\n{body}"
        )
    }

    /// The same runs with the percentiles of `measured` (one per run, in order).
    pub fn blessed(&self, measured: &[Summary]) -> Baselines {
        let mut out = self.clone();
        for (run, m) in out.runs.iter_mut().zip(measured) {
            run.percentiles = tracked(&m.stages);
        }
        out
    }
}

/// Runs every baseline run in simulation, scenario paths relative to `root`;
/// `each` sees each run's summary as it finishes.
#[cfg(madsim)]
pub fn run_all(
    baselines: &Baselines,
    root: &std::path::Path,
    mut each: impl FnMut(&BaselineRun, &Summary),
) -> Result<Vec<Summary>, String> {
    let mut out = Vec::new();
    for run in &baselines.runs {
        let duration = run.duration_ms.map(std::time::Duration::from_millis);
        let calibration = run.calibration.as_ref().map(|c| root.join(c));
        let (mut scn, hash, rerun) =
            crate::run::load_calibrated(&root.join(&run.scenario), Some(run.seed), duration, calibration.as_deref())?;
        if let Some(rate) = run.noise_rate_per_s {
            crate::capacity::check(&scn).map_err(|e| format!("{}: {e}", run.label()))?;
            scn = crate::capacity::scaled(&scn, rate, scn.duration).map_err(|e| format!("{}: {e}", run.label()))?;
        }
        let r = crate::sim_run::run(&scn, run.seed, hash, rerun).map_err(|e| format!("{}: {e}", run.label()))?;
        each(run, &r.summary);
        out.push(r.summary);
    }
    Ok(out)
}

/// The tracked percentiles of a run's stages (stages without samples are not tracked).
pub fn tracked(stages: &BTreeMap<String, StageSummary>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (stage, s) in stages.iter().filter(|(_, s)| s.count > 0) {
        for (q, v) in [("p50", s.p50_ns), ("p99", s.p99_ns), ("p999", s.p999_ns)] {
            out.insert(format!("{stage}.{q}"), v);
        }
    }
    out
}

/// One compared percentile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub run: String,
    pub key: String,
    pub baseline_ns: u64,
    pub measured_ns: u64,
    pub limit_ns: u64,
}

impl Row {
    pub fn regressed(&self) -> bool {
        self.measured_ns > self.limit_ns
    }
}

/// The result of `fafnir ci check`.
#[derive(Clone, Debug, Default)]
pub struct Check {
    pub rows: Vec<Row>,
    /// Every reason the check fails, one line each.
    pub failures: Vec<String>,
    /// Things worth knowing that do not fail the check.
    pub notes: Vec<String>,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The table `fafnir ci check` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let ms = |ns: u64| ns as f64 / 1e6;
        writeln!(
            out,
            "{:<28} {:<26} {:>11} {:>11} {:>8} {:>11}  ",
            "run", "percentile", "baseline ms", "measured ms", "change", "limit ms"
        )
        .ok();
        for r in &self.rows {
            let change = if r.baseline_ns == 0 {
                "n/a".to_string()
            } else {
                format!("{:+.1}%", (r.measured_ns as f64 - r.baseline_ns as f64) * 100.0 / r.baseline_ns as f64)
            };
            let mark = if r.regressed() { "REGRESSED" } else { "" };
            writeln!(
                out,
                "{:<28} {:<26} {:>11.3} {:>11.3} {:>8} {:>11.3}  {mark}",
                r.run,
                r.key,
                ms(r.baseline_ns),
                ms(r.measured_ns),
                change,
                ms(r.limit_ns)
            )
            .ok();
        }
        out
    }
}

/// Compares each run's measurements with its baseline.
pub fn check(baselines: &Baselines, measured: &[Summary]) -> Check {
    let mut c = Check::default();
    let slack_ns = baselines.slack_us * 1_000;
    for (run, m) in baselines.runs.iter().zip(measured) {
        let label = run.label();
        if let Some(why) = &m.stopped {
            c.failures.push(format!("{label}: the run stopped ({:?}): {why}", m.outcome));
            continue;
        }
        if m.outcome == Outcome::CorrectnessViolated || !m.checker.passed {
            let failed: Vec<&str> = m.checker.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
            c.failures.push(format!("{label}: the fill checker failed ({})", failed.join(", ")));
        }
        if run.percentiles.is_empty() {
            c.failures.push(format!("{label}: no blessed percentiles; run `fafnir ci bless`"));
            continue;
        }
        let now = tracked(&m.stages);
        let tolerance = u64::from(run.tolerance_pct.unwrap_or(baselines.tolerance_pct));
        for (key, base) in &run.percentiles {
            let Some(measured_ns) = now.get(key).copied() else {
                c.failures.push(format!("{label}: {key} has no samples any more"));
                continue;
            };
            let limit_ns = base + base * tolerance / 100 + slack_ns;
            let row = Row { run: label.clone(), key: key.clone(), baseline_ns: *base, measured_ns, limit_ns };
            if row.regressed() {
                c.failures.push(format!(
                    "{label}: {key} regressed: {:.3} ms, baseline {:.3} ms, limit {:.3} ms (+{tolerance}% +{} µs)",
                    measured_ns as f64 / 1e6,
                    *base as f64 / 1e6,
                    limit_ns as f64 / 1e6,
                    baselines.slack_us
                ));
            } else if measured_ns + measured_ns * tolerance / 100 + slack_ns < *base {
                c.notes.push(format!("{label}: {key} improved beyond the tolerance; `fafnir ci bless` tightens it"));
            }
            c.rows.push(row);
        }
        for key in now.keys().filter(|k| !run.percentiles.contains_key(*k)) {
            c.notes.push(format!("{label}: {key} is measured but not tracked; `fafnir ci bless` adds it"));
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Verdict;

    fn summary(p99_ms: u64, passed: bool) -> Summary {
        let stage = StageSummary {
            count: 10,
            p50_ns: 5_000_000,
            p90_ns: 8_000_000,
            p99_ns: p99_ms * 1_000_000,
            p999_ns: p99_ms * 1_000_000,
            max_ns: p99_ms * 1_000_000,
        };
        Summary {
            scenario: "s".into(),
            mode: "simulation".into(),
            seed: 1,
            config_hash: "0".into(),
            trace_hash: "0".into(),
            duration_ms: 1000,
            agents: 1,
            counts: Default::default(),
            errors: Default::default(),
            error_budget: Default::default(),
            load_generator: Default::default(),
            stages: [("submit_to_ack".to_string(), stage)].into_iter().collect(),
            accepted_per_s: Vec::new(),
            slos: Vec::new(),
            checker: Verdict { passed, checks: Vec::new() },
            faults: Vec::new(),
            outcome: if passed { Outcome::Success } else { Outcome::CorrectnessViolated },
            stopped: None,
            rerun: String::new(),
            effective_config: String::new(),
            nemesis: None,
            coverage: Default::default(),
            hostile: Default::default(),
        }
    }

    fn file() -> Baselines {
        Baselines::parse("tolerance_pct = 10\nslack_us = 1000\n[[run]]\nscenario = \"scenarios/a.toml\"\nseed = 3\n")
            .unwrap()
    }

    #[test]
    fn blessing_then_checking_the_same_run_passes_and_a_slower_one_fails() {
        let blessed = file().blessed(&[summary(50, true)]);
        assert_eq!(blessed.runs[0].percentiles["submit_to_ack.p99"], 50_000_000);
        let again = Baselines::parse(&blessed.to_toml()).unwrap();
        assert_eq!(again, blessed);
        assert!(check(&again, &[summary(50, true)]).passed());
        // 50 ms + 10% + 1 ms = 56 ms is the limit.
        assert!(check(&again, &[summary(56, true)]).passed());
        let c = check(&again, &[summary(57, true)]);
        assert!(!c.passed());
        assert!(c.failures.iter().any(|f| f.contains("submit_to_ack.p99 regressed")), "{:?}", c.failures);
        assert!(c.table().contains("REGRESSED"), "{}", c.table());
    }

    #[test]
    fn a_failed_checker_fails_the_check_whatever_the_latency() {
        let blessed = file().blessed(&[summary(50, true)]);
        let c = check(&blessed, &[summary(10, false)]);
        assert!(c.failures.iter().any(|f| f.contains("fill checker failed")), "{:?}", c.failures);
    }

    #[test]
    fn unblessed_runs_and_bad_keys_are_reported() {
        assert!(!check(&file(), &[summary(50, true)]).passed());
        let e = Baselines::parse(
            "tolerance_pct = 10\n[[run]]\nscenario = \"a\"\nseed = 1\n[run.percentiles]\n\"nope.p99\" = 1\n",
        )
        .unwrap_err();
        assert!(e.contains("run[0].percentiles") && e.contains("nope.p99"), "{e}");
        assert!(Baselines::parse("tolerance_pct = 10\n").unwrap_err().contains("run"));
    }
}
