//! Chaos experiments: sweep a scenario over many seeds (each seed its own
//! deterministic world, its own random nemesis), classify what failed, save
//! each failure so it replays without the nemesis, and shrink a failure to
//! its core (fewer faults, a shorter load, fewer agents and symbols) while it
//! keeps failing the same way.
//!
//! Runs are independent madsim runtimes, so a sweep runs `jobs` of them at
//! once on their own threads (nothing is shared between them).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use fafnir_sim::faults::Fault;

use crate::run::{Outcome, RunResult};
use crate::scenario::Scenario;

pub use crate::sweep::{Failure, FailureKind, SeedOutcome};

/// One seed of a sweep.
pub struct SeedRun {
    pub seed: u64,
    /// Every fault the run played: the scenario's and the nemesis's.
    pub faults: Vec<Fault>,
    pub result: Option<RunResult>,
    pub failure: Option<Failure>,
}

/// The faults a seed plays: the scenario's own and what the nemesis draws.
pub fn played_faults(scn: &Scenario, seed: u64) -> Vec<Fault> {
    let mut faults = scn.faults.clone();
    if let Some((_, drawn)) = crate::sim_run::nemesis_draw(scn, seed) {
        faults.extend(drawn.faults);
    }
    faults.sort_by_key(|f| f.at_ms);
    faults
}

/// Runs one seed and classifies the outcome (a panic in the world is a
/// crash, with what the run measured until then).
pub fn run_seed(scn: &Scenario, seed: u64, rerun: &str) -> SeedRun {
    let faults = played_faults(scn, seed);
    let (result, failure) = match crate::sim_run::run(scn, seed, "chaos".into(), rerun.to_string()) {
        Err(e) => (None, Some(Failure { kind: FailureKind::Crash, failed: BTreeSet::new(), detail: first_line(&e) })),
        Ok(r) => {
            let failure = classify(&r);
            (Some(r), failure)
        }
    };
    SeedRun { seed, faults, result, failure }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// The failure of a finished run, if any.
pub fn classify(r: &RunResult) -> Option<Failure> {
    let s = &r.summary;
    match s.outcome {
        Outcome::Success => None,
        Outcome::CorrectnessViolated => {
            let failed: BTreeSet<String> =
                s.checker.checks.iter().filter(|c| !c.passed).map(|c| c.name.clone()).collect();
            let first = s.checker.checks.iter().find(|c| !c.passed).and_then(|c| c.first.first().cloned());
            let detail = format!(
                "checker: {}{}",
                failed.iter().cloned().collect::<Vec<_>>().join(", "),
                first.map(|f| format!(": {f}")).unwrap_or_default()
            );
            Some(Failure { kind: FailureKind::Correctness, failed, detail })
        }
        Outcome::SloViolated => {
            let failed: BTreeSet<String> = s.slos.iter().filter(|x| !x.passed).map(|x| x.slo.text.clone()).collect();
            let detail = format!("SLO: {}", failed.iter().cloned().collect::<Vec<_>>().join(", "));
            Some(Failure { kind: FailureKind::Slo, failed, detail })
        }
        Outcome::ErrorBudgetExceeded => {
            let failed: BTreeSet<String> = s.errors.keys().cloned().collect();
            let detail = format!("errors: {}", s.error_budget.describe());
            Some(Failure { kind: FailureKind::ErrorBudget, failed, detail })
        }
        Outcome::Liveness | Outcome::Crash | Outcome::Error => {
            let kind = if s.outcome == Outcome::Liveness { FailureKind::Liveness } else { FailureKind::Crash };
            let detail = first_line(s.stopped.as_deref().unwrap_or("stopped"));
            Some(Failure { kind, failed: BTreeSet::new(), detail })
        }
    }
}

impl SeedRun {
    /// What a sweep keeps of this run.
    pub fn outcome(&self) -> SeedOutcome {
        let summary = self.result.as_ref().map(|r| &r.summary);
        SeedOutcome {
            seed: self.seed,
            failure: self.failure.clone(),
            coverage: summary.map(|s| s.coverage.clone()).unwrap_or_default(),
            submit_to_ack_p99_ns: summary.and_then(|s| s.stages.get("submit_to_ack")).map(|q| q.p99_ns),
            trace_hash: summary.map(|s| s.trace_hash.clone()),
        }
    }
}

/// Runs every seed of `seeds`, `jobs` at a time; `each` sees every seed's
/// whole run as it finishes (in completion order: the place to save a
/// failure's run directory). Returns what the sweep keeps of each, in seed
/// order, so that its memory does not grow with the runs' size.
pub fn sweep(
    scn: &Scenario,
    seeds: &[u64],
    jobs: usize,
    rerun_of: &(dyn Fn(u64) -> String + Sync),
    each: &(dyn Fn(&SeedRun) + Sync),
) -> Vec<SeedOutcome> {
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                while let Some(&seed) = seeds.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let r = run_seed(scn, seed, &rerun_of(seed));
                    each(&r);
                    let kept = r.outcome();
                    drop(r);
                    done.lock().expect("results").push(kept);
                }
            });
        }
    });
    let mut runs = done.into_inner().expect("results");
    runs.sort_by_key(|r| r.seed);
    runs
}

/// The first seed of `seeds` that fails the way `want` says (stops there).
pub fn find(scn: &Scenario, seeds: std::ops::Range<u64>, want: impl Fn(&Failure) -> bool) -> Option<SeedRun> {
    seeds.map(|seed| run_seed(scn, seed, "")).find(|r| r.failure.as_ref().is_some_and(&want))
}

/// A scenario file that replays `faults` exactly, without the nemesis, at
/// `seed`: the original file's text with its `[nemesis]` table removed and
/// its `[[fault]]` list replaced.
pub fn replay_toml(original: &str, seed: u64, faults: &[Fault]) -> Result<String, String> {
    let mut doc: toml::Table = toml::from_str(original).map_err(|e| e.to_string())?;
    doc.remove("nemesis");
    doc.insert("seed".into(), toml::Value::Integer(seed as i64));
    set_faults(&mut doc, faults)?;
    toml::to_string(&doc).map_err(|e| e.to_string())
}

fn set_faults(doc: &mut toml::Table, faults: &[Fault]) -> Result<(), String> {
    if faults.is_empty() {
        doc.remove("fault");
        return Ok(());
    }
    let list = toml::Value::try_from(faults).map_err(|e| e.to_string())?;
    doc.insert("fault".into(), list);
    Ok(())
}

/// What shrinking removed.
#[derive(Clone, Debug)]
pub struct Shrunk {
    /// The minimal scenario file's text.
    pub text: String,
    pub failure: Failure,
    pub faults: (usize, usize),
    pub duration_ms: (u64, u64),
    pub agents: (u64, u64),
    pub symbols: (usize, usize),
    /// Runs it took.
    pub runs: u64,
}

impl fmt::Display for Shrunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "faults {} -> {}, load {} -> {} ms, agents {} -> {}, symbols {} -> {} ({} runs)",
            self.faults.0,
            self.faults.1,
            self.duration_ms.0,
            self.duration_ms.1,
            self.agents.0,
            self.agents.1,
            self.symbols.0,
            self.symbols.1,
            self.runs
        )
    }
}

/// Shrinks a failing scenario file (its faults inline, no nemesis: as
/// [`replay_toml`] writes it) at `seed`. `planted` carries a test-only planted
/// bug into every run; `log` hears of each step.
pub fn shrink(
    text: &str,
    seed: u64,
    planted: Option<fafnir_platform::config::PlantedBug>,
    log: &mut dyn FnMut(&str),
) -> Result<Shrunk, String> {
    let mut runs = 0u64;
    let mut attempt = |doc: &toml::Table| -> Option<Failure> {
        let text = toml::to_string(doc).ok()?;
        let mut scn = Scenario::parse(&text).ok()?;
        scn.planted_bug = planted;
        runs += 1;
        run_seed(&scn, seed, "").failure
    };
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    if doc.contains_key("nemesis") {
        return Err("the scenario has a [nemesis]: shrink its replay.toml (faults inline) instead".into());
    }
    let target = attempt(&doc).ok_or("the run does not fail: nothing to shrink")?;
    log(&format!("fails: {} ({})", target.kind, target.detail));
    let before = measure(&doc);
    let fails = |f: Option<Failure>| f.is_some_and(|f| f.same_way(&target));

    // 1. Fewer faults: delta debugging over the schedule.
    let faults: Vec<toml::Value> = doc.get("fault").and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let kept = ddmin(faults, &mut |subset: &[toml::Value]| {
        let mut d = doc.clone();
        if subset.is_empty() {
            d.remove("fault");
        } else {
            d.insert("fault".into(), toml::Value::Array(subset.to_vec()));
        }
        fails(attempt(&d))
    });
    if kept.is_empty() {
        doc.remove("fault");
    } else {
        doc.insert("fault".into(), toml::Value::Array(kept));
    }
    log(&format!("faults: {} -> {}", before.faults, measure(&doc).faults));

    // 2. A shorter load: halve it while it keeps failing (faults not ending inside it go).
    loop {
        let d = int(&doc, "duration_ms");
        if d <= 1_000 {
            break;
        }
        let mut c = doc.clone();
        let half = (d / 2).max(1_000);
        c.insert("duration_ms".into(), toml::Value::Integer(half as i64));
        if let Some(toml::Value::Array(fs)) = c.get_mut("fault") {
            // Faults that do not end inside the shorter load go (a scenario refuses them).
            let int_of = |f: &toml::Value, k: &str| f.get(k).and_then(|v| v.as_integer()).unwrap_or(i64::MAX / 4);
            fs.retain(|f| (int_of(f, "at_ms") + int_of(f, "duration_ms")) as u64 <= half);
        }
        if !fails(attempt(&c)) {
            break;
        }
        doc = c;
    }
    log(&format!("load: {} -> {} ms", before.duration_ms, measure(&doc).duration_ms));

    // 3. Fewer agents: drop whole populations, then shrink each one's count.
    let mut i = 0;
    while i < pops(&doc).len() && pops(&doc).len() > 1 {
        let mut c = doc.clone();
        pops_mut(&mut c).remove(i);
        if fails(attempt(&c)) {
            doc = c;
        } else {
            i += 1;
        }
    }
    for i in 0..pops(&doc).len() {
        loop {
            let count = pops(&doc)[i].get("count").and_then(|v| v.as_integer()).unwrap_or(1);
            if count <= 1 {
                break;
            }
            let mut c = doc.clone();
            pops_mut(&mut c)[i].as_table_mut().expect("population table").insert("count".into(), (count / 2).into());
            if !fails(attempt(&c)) {
                break;
            }
            doc = c;
        }
    }
    log(&format!("agents: {} -> {}", before.agents, measure(&doc).agents));

    // 4. Fewer symbols: drop an instrument and every mention of it.
    let symbols: Vec<String> = instruments(&doc);
    for symbol in symbols {
        if instruments(&doc).len() <= 1 {
            break;
        }
        let c = without_symbol(&doc, &symbol);
        if fails(attempt(&c)) {
            doc = c;
        }
    }
    log(&format!("symbols: {} -> {}", before.symbols, measure(&doc).symbols));

    let after = measure(&doc);
    let final_failure = attempt(&doc).ok_or("the shrunk scenario no longer fails (nondeterminism?)")?;
    Ok(Shrunk {
        text: toml::to_string(&doc).map_err(|e| e.to_string())?,
        failure: final_failure,
        faults: (before.faults, after.faults),
        duration_ms: (before.duration_ms, after.duration_ms),
        agents: (before.agents, after.agents),
        symbols: (before.symbols, after.symbols),
        runs,
    })
}

struct Size {
    faults: usize,
    duration_ms: u64,
    agents: u64,
    symbols: usize,
}

fn measure(doc: &toml::Table) -> Size {
    Size {
        faults: doc.get("fault").and_then(|v| v.as_array()).map_or(0, |a| a.len()),
        duration_ms: int(doc, "duration_ms"),
        agents: pops(doc).iter().map(|p| p.get("count").and_then(|v| v.as_integer()).unwrap_or(1) as u64).sum(),
        symbols: instruments(doc).len(),
    }
}

fn int(doc: &toml::Table, key: &str) -> u64 {
    doc.get(key).and_then(|v| v.as_integer()).unwrap_or(0) as u64
}

fn pops(doc: &toml::Table) -> Vec<toml::Value> {
    doc.get("population").and_then(|v| v.as_array()).cloned().unwrap_or_default()
}

fn pops_mut(doc: &mut toml::Table) -> &mut Vec<toml::Value> {
    doc.get_mut("population").and_then(|v| v.as_array_mut()).expect("a scenario has populations")
}

fn instruments(doc: &toml::Table) -> Vec<String> {
    doc.get("instrument")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|i| i.get("symbol").and_then(|s| s.as_str()).map(str::to_string)).collect())
        .unwrap_or_default()
}

fn without_symbol(doc: &toml::Table, symbol: &str) -> toml::Table {
    let mut c = doc.clone();
    if let Some(toml::Value::Array(list)) = c.get_mut("instrument") {
        list.retain(|i| i.get("symbol").and_then(|s| s.as_str()) != Some(symbol));
    }
    if let Some(toml::Value::Array(list)) = c.get_mut("population") {
        for p in list.iter_mut().filter_map(|p| p.as_table_mut()) {
            if let Some(toml::Value::Table(h)) = p.get_mut("holdings") {
                h.remove(symbol);
            }
            if let Some(toml::Value::Array(s)) = p.get_mut("symbols") {
                s.retain(|x| x.as_str() != Some(symbol));
            }
        }
    }
    c
}

/// Zeller's delta debugging (ddmin): a 1-minimal subset of `items` for which
/// `fails` holds, assuming it holds for all of `items`.
pub fn ddmin<T: Clone>(items: Vec<T>, fails: &mut dyn FnMut(&[T]) -> bool) -> Vec<T> {
    if items.is_empty() || fails(&[]) {
        return Vec::new();
    }
    let mut current = items;
    let mut n = 2usize;
    while current.len() >= 2 {
        let chunk = current.len().div_ceil(n);
        let parts: Vec<Vec<T>> = current.chunks(chunk).map(|c| c.to_vec()).collect();
        let mut reduced = false;
        for (i, part) in parts.iter().enumerate() {
            if fails(part) {
                current = part.clone();
                n = 2;
                reduced = true;
                break;
            }
            let complement: Vec<T> =
                parts.iter().enumerate().filter(|(j, _)| *j != i).flat_map(|(_, p)| p.iter().cloned()).collect();
            if parts.len() > 2 && fails(&complement) {
                current = complement;
                n = (n - 1).max(2);
                reduced = true;
                break;
            }
        }
        if !reduced {
            if n >= current.len() {
                break;
            }
            n = (n * 2).min(current.len());
        }
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddmin_finds_the_faults_that_matter() {
        let items: Vec<u32> = (0..20).collect();
        let mut calls = 0;
        let kept = ddmin(items, &mut |s: &[u32]| {
            calls += 1;
            s.contains(&3) && s.contains(&17)
        });
        assert_eq!(kept, vec![3, 17]);
        assert!(calls < 60, "{calls} calls");
        assert_eq!(ddmin(vec![1, 2, 3], &mut |_| true), Vec::<i32>::new());
    }

    #[test]
    fn a_replay_file_has_the_faults_inline_and_no_nemesis() {
        let original = "name = \"x\"\nseed = 1\nduration_ms = 1000\n[nemesis]\nenabled = true\n";
        let f = Fault::new(200, fafnir_sim::faults::Action::Kill, Some("engine-0")).lasting(300);
        let text = replay_toml(original, 42, &[f]).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        assert!(!doc.contains_key("nemesis"), "{text}");
        assert_eq!(doc["seed"].as_integer(), Some(42));
        assert_eq!(doc["fault"][0]["target"].as_str(), Some("engine-0"), "{text}");
    }

    #[test]
    fn the_same_way_means_the_same_kind_and_a_shared_check() {
        let f = |kind, names: &[&str]| Failure {
            kind,
            failed: names.iter().map(|s| s.to_string()).collect(),
            detail: String::new(),
        };
        let target = f(FailureKind::Correctness, &["settled_exactly_once"]);
        assert!(f(FailureKind::Correctness, &["settled_exactly_once", "cash_conserved"]).same_way(&target));
        assert!(!f(FailureKind::Correctness, &["cash_conserved"]).same_way(&target));
        assert!(!f(FailureKind::Liveness, &[]).same_way(&target));
    }
}
