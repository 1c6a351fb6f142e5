//! `fafnir fidelity`: how well the simulation predicts the real platform.
//! The same scenario and seed run in both worlds (the real one in this
//! process, the simulated one by the simulated build's binary); per stage,
//! p50 / p90 / p99 of both and their ratio, simulated over real, and, when
//! asked, the capacity knee of both. A ratio within 0.8–1.25 is "within 25 %".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// A ratio within this band of 1 counts as a match (0.8–1.25).
pub const BAND: (f64, f64) = (0.8, 1.25);

/// One stage in both worlds.
#[derive(Clone, Debug, Serialize)]
pub struct StageFidelity {
    pub stage: String,
    pub count_sim: u64,
    pub count_real: u64,
    /// ns, by quantile name (p50, p90, p99).
    pub sim_ns: BTreeMap<String, u64>,
    pub real_ns: BTreeMap<String, u64>,
    /// Simulated over real, by quantile name.
    pub ratio: BTreeMap<String, f64>,
}

/// A hop is compared when both worlds have at least this many samples of it.
const HOP_MIN_COUNT: f64 = 20.0;

/// The capacity knee of both worlds (orders/s; None: no rate met the SLO),
/// and every step's stages side by side.
#[derive(Clone, Debug, Serialize)]
pub struct Knees {
    pub rates: Vec<u64>,
    pub sim: Option<u64>,
    pub real: Option<u64>,
    pub ratio: Option<f64>,
    pub steps: Vec<StepFidelity>,
}

/// One capacity step (an offered rate) in both worlds.
#[derive(Clone, Debug, Serialize)]
pub struct StepFidelity {
    pub target_per_s: u64,
    pub achieved_sim: u64,
    pub achieved_real: u64,
    pub stages: Vec<StageFidelity>,
}

/// What `fafnir fidelity` found.
#[derive(Clone, Debug, Serialize)]
pub struct Fidelity {
    pub scenario: String,
    pub seed: u64,
    pub calibration: Option<String>,
    pub stages: Vec<StageFidelity>,
    pub knees: Option<Knees>,
    /// The load generator's send lag (how late it woke for an intended send:
    /// a part of every stage), p50 and p99 in ns, simulated and real.
    pub send_lag_ns: BTreeMap<String, [u64; 2]>,
    /// The platform's own latency histograms side by side (hops: each RPC's
    /// handling, the publishes by stream, Redis's commands, market data's
    /// age), at the end of the run: where a stage's time goes. `stage`
    /// names the metric without `fafnir_` and `_seconds`, and its labels;
    /// quantiles are interpolated within the buckets, as Prometheus's
    /// `histogram_quantile` does, so coarser than the stages'. Empty for run
    /// directories without `metrics.jsonl`.
    pub hops: Vec<StageFidelity>,
    /// Stages whose p50 and p99 ratios are both within [`BAND`].
    pub within_band: Vec<String>,
    pub outside_band: Vec<String>,
    /// With `--repeat N`, the real world against itself: each stage's p50
    /// and p99 over the N real runs (the ratios above are against the
    /// first), and whether the simulated ones lie within that spread
    /// widened by the band. Empty with one real run.
    pub real_spread: Vec<RealSpread>,
}

/// One stage over several real runs of the same seed.
#[derive(Clone, Debug, Serialize)]
pub struct RealSpread {
    pub stage: String,
    pub runs: usize,
    /// ns, by quantile name (p50, p99): the lowest and highest real value.
    pub real_min_ns: BTreeMap<String, u64>,
    pub real_max_ns: BTreeMap<String, u64>,
    /// Highest over lowest real value, by quantile name: the real world's
    /// own spread, which no simulated prediction can beat.
    pub real_spread: BTreeMap<String, f64>,
    pub sim_ns: BTreeMap<String, u64>,
    /// The simulated p50 and p99 both within [lowest × 0.8, highest × 1.25].
    pub within: bool,
}

/// Each stage's spread over the real runs `reals` (the first is the one
/// `stages` compared against), and the simulated values against it.
pub fn spread(stages: &[StageFidelity], reals: &[PathBuf]) -> Result<Vec<RealSpread>, String> {
    if reals.len() < 2 {
        return Ok(Vec::new());
    }
    let summaries = reals.iter().map(|d| summary(d)).collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for f in stages {
        let mut s = RealSpread {
            stage: f.stage.clone(),
            runs: 0,
            real_min_ns: BTreeMap::new(),
            real_max_ns: BTreeMap::new(),
            real_spread: BTreeMap::new(),
            sim_ns: BTreeMap::new(),
            within: true,
        };
        for (q, field) in [("p50", "p50_ns"), ("p99", "p99_ns")] {
            let values: Vec<u64> =
                summaries.iter().filter_map(|r| r["stages"][&f.stage][field].as_u64()).filter(|v| *v > 0).collect();
            let (Some(lo), Some(hi)) = (values.iter().min().copied(), values.iter().max().copied()) else { continue };
            s.runs = values.len();
            let sim = f.sim_ns[q];
            s.within &= (lo as f64 * BAND.0..=hi as f64 * BAND.1).contains(&(sim as f64));
            s.real_min_ns.insert(q.to_string(), lo);
            s.real_max_ns.insert(q.to_string(), hi);
            s.real_spread.insert(q.to_string(), hi as f64 / lo.max(1) as f64);
            s.sim_ns.insert(q.to_string(), sim);
        }
        if s.runs >= 2 {
            out.push(s);
        }
    }
    Ok(out)
}

const QUANTILES: [(&str, &str); 3] = [("p50", "p50_ns"), ("p90", "p90_ns"), ("p99", "p99_ns")];

fn summary(dir: &Path) -> Result<serde_json::Value, String> {
    let path = dir.join("summary.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Compares the run directories `sim` and `real`.
pub fn compare(sim: &Path, real: &Path, knees: Option<Knees>, calibration: Option<String>) -> Result<Fidelity, String> {
    let (s, r) = (summary(sim)?, summary(real)?);
    let stages = compare_stages(&s["stages"], &r["stages"]);
    let inside = |f: &StageFidelity, q: &str| f.ratio.get(q).is_some_and(|r| (BAND.0..=BAND.1).contains(r));
    let (within, outside): (Vec<&StageFidelity>, Vec<&StageFidelity>) =
        stages.iter().partition(|f| inside(f, "p50") && inside(f, "p99"));
    let name = |v: Vec<&StageFidelity>| v.into_iter().map(|f| f.stage.clone()).collect();
    let (within_band, outside_band) = (name(within), name(outside));
    let lag = |v: &serde_json::Value| {
        let lg = &v["load_generator"];
        [lg["send_lag_p50_ns"].as_u64().unwrap_or(0), lg["send_lag_p99_ns"].as_u64().unwrap_or(0)]
    };
    let send_lag_ns = BTreeMap::from([("sim".to_string(), lag(&s)), ("real".to_string(), lag(&r))]);
    Ok(Fidelity {
        scenario: r["scenario"].as_str().unwrap_or_default().to_string(),
        seed: r["seed"].as_u64().unwrap_or(0),
        calibration,
        stages,
        knees,
        send_lag_ns,
        hops: compare_hops(sim, real)?,
        within_band,
        outside_band,
        real_spread: Vec::new(),
    })
}

/// One measure in both worlds: its counts and its (simulated, real) p50,
/// p90 and p99 in ns, with their ratios.
fn side_by_side(name: String, counts: (u64, u64), quantiles: [(u64, u64); 3]) -> StageFidelity {
    let mut f = StageFidelity {
        stage: name,
        count_sim: counts.0,
        count_real: counts.1,
        sim_ns: BTreeMap::new(),
        real_ns: BTreeMap::new(),
        ratio: BTreeMap::new(),
    };
    for ((q, _), (a, b)) in QUANTILES.iter().zip(quantiles) {
        f.sim_ns.insert(q.to_string(), a);
        f.real_ns.insert(q.to_string(), b);
        f.ratio.insert(q.to_string(), a as f64 / b.max(1) as f64);
    }
    f
}

/// A run directory's `metrics.jsonl` (none: an empty list).
fn metrics(dir: &Path) -> Result<Vec<crate::observe::Sample>, String> {
    let path = dir.join("metrics.jsonl");
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(Vec::new()) };
    text.lines()
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

/// The platform's histograms both run directories have enough samples of
/// (the stages' own, `fafnir_loadgen_stage_seconds`, are compared exactly
/// from the HdrHistograms instead).
pub fn compare_hops(sim: &Path, real: &Path) -> Result<Vec<StageFidelity>, String> {
    use crate::observe::{last_histograms, quantile_of_buckets};
    let (s, r) = (last_histograms(&metrics(sim)?), last_histograms(&metrics(real)?));
    let total = |b: &BTreeMap<u64, f64>| b.values().last().copied().unwrap_or(0.0);
    let mut hops = Vec::new();
    for (key, sb) in &s {
        let Some(rb) = r.get(key) else { continue };
        let (name, labels) = key;
        if name == "fafnir_loadgen_stage_seconds" || total(sb) < HOP_MIN_COUNT || total(rb) < HOP_MIN_COUNT {
            continue;
        }
        let short = name.trim_start_matches("fafnir_").trim_end_matches("_seconds");
        let shown: Vec<String> = match (labels.get("grpc_service"), labels.get("grpc_method")) {
            (Some(service), Some(method)) => vec![format!("{}/{method}", service.trim_start_matches("fafnir."))],
            _ => labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        };
        let name = if shown.is_empty() { short.to_string() } else { format!("{short}{{{}}}", shown.join(",")) };
        let at = |b: &BTreeMap<u64, f64>, q: f64| quantile_of_buckets(b, q).unwrap_or(0);
        let quantiles = [0.5, 0.9, 0.99].map(|q| (at(sb, q), at(rb, q)));
        hops.push(side_by_side(name, (total(sb) as u64, total(rb) as u64), quantiles));
    }
    Ok(hops)
}

/// The stages both `stages` objects (summary.json's, or a capacity step's) have samples of.
fn compare_stages(sim: &serde_json::Value, real: &serde_json::Value) -> Vec<StageFidelity> {
    let mut stages = Vec::new();
    let empty = serde_json::Map::new();
    let (ss, rs) = (sim.as_object().unwrap_or(&empty), real.as_object().unwrap_or(&empty));
    for (stage, sv) in ss {
        let Some(rv) = rs.get(stage) else { continue };
        let count = |v: &serde_json::Value| v["count"].as_u64().unwrap_or(0);
        if count(sv) == 0 || count(rv) == 0 {
            continue;
        }
        let quantiles = QUANTILES.map(|(_, field)| (sv[field].as_u64().unwrap_or(0), rv[field].as_u64().unwrap_or(0)));
        stages.push(side_by_side(stage.clone(), (count(sv), count(rv)), quantiles));
    }
    stages
}

impl Fidelity {
    /// The terminal table.
    pub fn table(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut out = format!(
            "  {:<22} {:>19} {:>19} {:>19}\n  {:<22} {:>19} {:>19} {:>19}\n",
            "stage (ms)", "p50", "p90", "p99", "", "sim / real  ratio", "sim / real  ratio", "sim / real  ratio"
        );
        for f in &self.stages {
            out.push_str(&format!("  {:<22}", f.stage));
            for (q, _) in QUANTILES {
                out.push_str(&format!(" {:>7.3} /{:>7.3} {:>4.2}", ms(f.sim_ns[q]), ms(f.real_ns[q]), f.ratio[q]));
            }
            out.push('\n');
        }
        if let (Some(s), Some(r)) = (self.send_lag_ns.get("sim"), self.send_lag_ns.get("real")) {
            out.push_str(&format!(
                "  {:<22} {:>7.3} /{:>7.3} {:>4.2}  (p50, p99: {:.3} / {:.3}; the load generator waking late, part of \
                 every stage)\n",
                "send lag",
                ms(s[0]),
                ms(r[0]),
                s[0] as f64 / r[0].max(1) as f64,
                ms(s[1]),
                ms(r[1])
            ));
        }
        if !self.hops.is_empty() {
            out.push_str("  per hop (the platform's own histograms; quantiles interpolated within their buckets):\n");
            for h in &self.hops {
                out.push_str(&format!("    {:<66}", h.stage.chars().take(66).collect::<String>()));
                for q in ["p50", "p99"] {
                    out.push_str(&format!(
                        " {q} {:>6.3} /{:>6.3} {:>4.2}",
                        ms(h.sim_ns[q]),
                        ms(h.real_ns[q]),
                        h.ratio[q]
                    ));
                }
                out.push('\n');
            }
        }
        out.push_str(&format!(
            "  within 25 % at p50 and p99 (ratio {}-{}): {} of {} stages{}\n",
            BAND.0,
            BAND.1,
            self.within_band.len(),
            self.stages.len(),
            if self.outside_band.is_empty() {
                String::new()
            } else {
                format!("; outside: {}", self.outside_band.join(", "))
            }
        ));
        if let Some(runs) = self.real_spread.first().map(|s| s.runs) {
            out.push_str(&format!(
                "  the real world against itself, {runs} runs (ratios above: against the first); p50 and p99, \
                 lowest - highest real (highest / lowest), simulated:\n"
            ));
            for s in &self.real_spread {
                out.push_str(&format!("  {:<22}", s.stage));
                for q in ["p50", "p99"] {
                    out.push_str(&format!(
                        " {q} {:>7.3} -{:>7.3} ({:.2}) sim {:>7.3};",
                        ms(s.real_min_ns[q]),
                        ms(s.real_max_ns[q]),
                        s.real_spread[q],
                        ms(s.sim_ns[q])
                    ));
                }
                out.push_str(if s.within { " within\n" } else { " outside\n" });
            }
            let within = self.real_spread.iter().filter(|s| s.within).count();
            out.push_str(&format!(
                "  within the real runs' spread widened by 25 % at p50 and p99: {within} of {} stages\n",
                self.real_spread.len()
            ));
        }
        if let Some(k) = &self.knees {
            let show = |v: Option<u64>| v.map_or("none".to_string(), |v| format!("{v}/s"));
            out.push_str(&format!(
                "  capacity knee at rates {:?}: simulated {}, real {}{}\n",
                k.rates,
                show(k.sim),
                show(k.real),
                k.ratio.map_or(String::new(), |r| format!(" (ratio {r:.2})"))
            ));
            for step in &k.steps {
                out.push_str(&format!(
                    "    {:>6}/s offered (achieved sim {}/s, real {}/s), p50 / p99 ratio:",
                    step.target_per_s, step.achieved_sim, step.achieved_real
                ));
                for f in step.stages.iter().filter(|f| !f.stage.starts_with("submit_to_f")) {
                    out.push_str(&format!(" {} {:.2} / {:.2};", f.stage, f.ratio["p50"], f.ratio["p99"]));
                }
                out.push('\n');
            }
        }
        out
    }
}

/// The simulated build's binary beside this one: `<target>/sim/release/fafnir`
/// when this is `<target>/release/fafnir`.
pub fn default_sim_bin() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("where this binary is: {e}"))?;
    let target = exe.parent().and_then(Path::parent).ok_or("this binary is not in a target directory")?;
    let bin = target.join("sim/release/fafnir");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the simulated build's binary is not at {}: build it with `cargo sim build --release -p \
             fafnir-scenarios --bin fafnir`, or name it with --sim-bin",
            bin.display()
        ))
    }
}

/// Runs `bin args` to the end; fine whatever its exit code when it wrote
/// its run directory (an SLO missed is a measurement), an error otherwise.
pub fn run_quietly(bin: &Path, args: &[String]) -> Result<(), String> {
    let out = Command::new(bin).args(args).output().map_err(|e| format!("{}: {e}", bin.display()))?;
    match out.status.code() {
        Some(0 | 3..=7) => Ok(()),
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
            Err(format!(
                "{} {} failed ({}): {}",
                bin.display(),
                args.join(" "),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }
}

fn capacity_json(dir: &Path) -> Result<serde_json::Value, String> {
    let path = dir.join("capacity.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The capacity knee of both worlds: `fafnir capacity` of this binary (real,
/// in-process) and of the simulated one, at `rates`, without the overload step.
pub fn knees(
    file: &Path,
    sim_bin: &Path,
    rates: &[u64],
    step: std::time::Duration,
    seed: u64,
    calibration: Option<&Path>,
    out: &Path,
) -> Result<Knees, String> {
    let rates_arg = rates.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    let args = |dir: &Path| -> Vec<String> {
        let mut a = vec!["capacity".into(), file.display().to_string(), "--rates".into(), rates_arg.clone()];
        a.extend(["--step".into(), format!("{}ms", step.as_millis()), "--seed".into(), seed.to_string()]);
        a.extend(["--no-overload".into(), "--out".into(), dir.display().to_string()]);
        a
    };
    let (sim_dir, real_dir) = (out.join("capacity-sim"), out.join("capacity-real"));
    let mut sim_args = args(&sim_dir);
    if let Some(c) = calibration {
        sim_args.extend(["--calibration".into(), c.display().to_string()]);
    }
    println!("  simulated capacity: {} {}", sim_bin.display(), sim_args.join(" "));
    run_quietly(sim_bin, &sim_args)?;
    let me = std::env::current_exe().map_err(|e| format!("where this binary is: {e}"))?;
    println!("  real capacity: {} {}", me.display(), args(&real_dir).join(" "));
    run_quietly(&me, &args(&real_dir))?;
    let (s, r) = (capacity_json(&sim_dir)?, capacity_json(&real_dir)?);
    let (sim, real) = (s["knee_orders_per_s"].as_u64(), r["knee_orders_per_s"].as_u64());
    let ratio = sim.zip(real).map(|(s, r)| s as f64 / r.max(1) as f64);
    let none = Vec::new();
    let (ss, rs) = (s["steps"].as_array().unwrap_or(&none), r["steps"].as_array().unwrap_or(&none));
    let steps = ss
        .iter()
        .filter_map(|a| {
            let target = a["target_per_s"].as_u64()?;
            let b = rs.iter().find(|b| b["target_per_s"].as_u64() == Some(target))?;
            Some(StepFidelity {
                target_per_s: target,
                achieved_sim: a["achieved_per_s"].as_u64().unwrap_or(0),
                achieved_real: b["achieved_per_s"].as_u64().unwrap_or(0),
                stages: compare_stages(&a["stages"], &b["stages"]),
            })
        })
        .collect();
    Ok(Knees { rates: rates.to_vec(), sim, real, ratio, steps })
}
