//! `fafnir capacity`: drive the platform open loop at one offered order rate
//! after another, each step its own run (a fresh world in simulation, a
//! fresh in-process platform for real), and name the knee: the highest rate
//! whose p99 submit→ack is within the scenario's SLO with under 0.1 % of
//! requests failed or timed out and every check passing.
//!
//! The noise traders carry the rate: each step scales their count so that
//! their decisions a second (count × `rate_per_s`), times the orders a
//! decision sent in the steps so far ([`Calibration`]), give the step's rate
//! (several noise populations keep their shares); the other populations
//! (market makers, momentum and value traders) stay as the file has them and
//! add their own, smaller flow. The offered rate a step reports is what was
//! sent, measured. The agents share
//! one market-data subscription, as one load-generator process would.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::agents::AgentParams;
use crate::driver::ErrorKind;
use crate::run::{Outcome, RunResult, StageSummary};
use crate::scenario::{Scenario, Slo};

/// The default rates, orders per second.
pub const DEFAULT_RATES: &str = "500,1000,2000,5000,10000,20000";

/// The most requests of a step that may fail or time out for it to count
/// towards the knee: 0.1 %.
pub const MAX_ERROR_PPM: u32 = 1_000;

/// The scenario's submit→ack p99 SLO, which names the knee.
pub fn knee_slo(scn: &Scenario) -> Result<&Slo, String> {
    scn.slos.iter().find(|s| s.stage == "submit_to_ack" && s.quantile_ppm == 990_000).ok_or_else(|| {
        "slos: capacity needs a submit_to_ack.p99 SLO (for example \"submit_to_ack.p99 < 10ms\"): it names the knee"
            .to_string()
    })
}

/// Refuses what a capacity measurement cannot mean: faults (a calm platform
/// is measured), no noise traders to carry the rate, no knee SLO.
pub fn check(scn: &Scenario) -> Result<(), String> {
    if !scn.faults.is_empty() || scn.nemesis.is_some() || scn.buggify || scn.buggify_network {
        return Err(
            "capacity measures a calm platform: the scenario has faults ([[fault]], [nemesis] or buggify)".into()
        );
    }
    if noise_rate(scn) <= 0.0 {
        return Err("population: capacity needs a noise population to carry the rate (kind = \"noise\")".into());
    }
    knee_slo(scn).map(|_| ())
}

/// The summed `rate_per_s` of the noise traders as the file has them.
fn noise_rate(scn: &Scenario) -> f64 {
    scn.populations
        .iter()
        .filter_map(|p| match &p.config.params {
            AgentParams::Noise(n) => Some(f64::from(p.count) * n.rate_per_s),
            _ => None,
        })
        .sum()
}

/// The scenario for one step: the noise traders scaled to `rate` orders/s
/// (at least one agent a population), the load lasting `step`.
pub fn scaled(scn: &Scenario, rate: u64, step: Duration) -> Result<Scenario, String> {
    let factor = rate as f64 / noise_rate(scn);
    let mut s = scn.clone();
    s.duration = step;
    // One load generator, one market-data subscription: the platform's
    // fan-out is not multiplied by the number of agents the rate needs.
    s.shared_market_data = true;
    for (i, p) in s.populations.iter_mut().enumerate() {
        if let AgentParams::Noise(_) = p.config.params {
            let count = (f64::from(p.count) * factor).round().max(1.0);
            if count > 10_000.0 {
                return Err(format!(
                    "population[{i}]: {rate} orders/s needs {count} noise traders, more than 10000; raise their \
                     rate_per_s"
                ));
            }
            p.count = count as u32;
        }
    }
    Ok(s)
}

/// How many orders a noise trader's decision sends, learnt from the steps
/// run so far (a decision may cancel instead, or do nothing): each step asks
/// for as many decisions a second as its rate needs orders.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    orders_per_decision: f64,
}

impl Default for Calibration {
    fn default() -> Calibration {
        Calibration { orders_per_decision: 1.0 }
    }
}

impl Calibration {
    /// Noise decisions a second for `rate` orders a second.
    pub fn decisions_for(&self, rate: u64) -> u64 {
        (rate as f64 / self.orders_per_decision).round().max(1.0) as u64
    }

    /// Learns from a step of `scaled` that offered `offered_per_s`; returns
    /// whether it missed `target` by more than a tenth (the step is worth
    /// running again with what was learnt).
    pub fn learn(&mut self, scaled: &Scenario, offered_per_s: u64, target: u64) -> bool {
        let decisions = noise_rate(scaled);
        if offered_per_s > 0 && decisions > 0.0 {
            self.orders_per_decision = offered_per_s as f64 / decisions;
        }
        offered_per_s.abs_diff(target) * 10 > target
    }
}

/// Parses `--rates`: ascending, distinct, positive orders per second.
pub fn parse_rates(text: &str) -> Result<Vec<u64>, String> {
    let rates: Vec<u64> = text
        .split(',')
        .map(|r| r.trim().parse::<u64>().map_err(|_| format!("{r:?} is not a whole number of orders per second")))
        .collect::<Result<_, _>>()?;
    if rates.is_empty() || rates.contains(&0) {
        return Err("rates must be positive".into());
    }
    if rates.windows(2).any(|w| w[0] >= w[1]) {
        return Err("rates must be ascending and distinct".into());
    }
    Ok(rates)
}

/// One step's figures (`capacity.json`'s `steps`).
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub target_per_s: u64,
    pub agents: u64,
    /// Orders submitted per second of the step.
    pub offered_per_s: u64,
    /// Orders accepted per second of the step.
    pub achieved_per_s: u64,
    pub stages: BTreeMap<String, StageSummary>,
    pub errors: BTreeMap<String, ErrorKind>,
    /// Failed or timed-out submits and cancels, per million sent.
    pub error_ppm: u32,
    pub outcome: Outcome,
    pub checker_passed: bool,
    /// Whether this step counts towards the knee.
    pub within: bool,
    /// Why it does not, in a sentence.
    pub why_not: Option<String>,
    /// How late the load generator sent (p99), against the intended times.
    pub send_lag_p99_ns: u64,
    /// Real steps: the share of the machine's CPU the load generator (and
    /// the in-process platform) used over the load phase, in percent.
    pub cpu: Option<crate::driver::CpuShare>,
    /// This step's run directory, relative to the capacity directory.
    pub run_dir: String,
}

impl Step {
    pub fn of(target_per_s: u64, r: &RunResult, slo: &Slo, run_dir: String) -> Step {
        let s = &r.summary;
        let per_s = |n: u64| n * 1_000 / s.duration_ms.max(1);
        let b = &s.error_budget;
        let error_ppm = (b.errors * 1_000_000).checked_div(b.requests).unwrap_or(0) as u32;
        let p99 = s.stages.get("submit_to_ack").map_or(0, |q| q.p99_ns);
        let why_not = if let Some(why) = &s.stopped {
            Some(format!("the run stopped ({:?}): {why}", s.outcome))
        } else if !s.checker.passed {
            Some("the fill checker found a violation".to_string())
        } else if s.counts.accepted == 0 {
            Some("no order was accepted".to_string())
        } else if p99 > slo.limit_ns || (p99 == slo.limit_ns && !slo.text.contains("<=")) {
            Some(format!("p99 submit→ack {:.3} ms, over {}", p99 as f64 / 1e6, slo.text))
        } else if error_ppm >= MAX_ERROR_PPM {
            Some(format!("{} of requests failed or timed out (0.1 % allowed)", crate::scenario::percent(error_ppm)))
        } else {
            None
        };
        Step {
            target_per_s,
            agents: s.agents,
            offered_per_s: per_s(s.counts.submitted),
            achieved_per_s: per_s(s.counts.accepted),
            stages: s.stages.clone(),
            errors: s.errors.clone(),
            error_ppm,
            outcome: s.outcome,
            checker_passed: s.checker.passed,
            within: why_not.is_none(),
            why_not,
            send_lag_p99_ns: s.load_generator.send_lag_p99_ns,
            cpu: s.load_generator.cpu,
            run_dir,
        }
    }
}

/// What the accepted orders' p99 submit→ack may be when the platform is
/// offered twice its knee: an overload is refused, not queued.
pub const OVERLOAD_P99_NS: u64 = 50_000_000;

/// The step at twice the knee (`capacity.json`'s `overload`): the platform
/// must stay live and refuse the excess at once, at the gateway, with
/// RESOURCE_EXHAUSTED, rather than queue it.
#[derive(Clone, Debug, Serialize)]
pub struct Overload {
    pub step: Step,
    /// Submits refused as overloaded (RESOURCE_EXHAUSTED).
    pub refused: u64,
    /// Whether it held: every check passed, the accepted orders' p99
    /// submit→ack is within [`OVERLOAD_P99_NS`], and every failed request
    /// was a refusal.
    pub held: bool,
    /// Why it did not, in a sentence.
    pub why_not: Option<String>,
}

impl Overload {
    pub fn of(step: Step) -> Overload {
        let refused = step.errors.get("submit ResourceExhausted").map_or(0, |k| k.count);
        let other: Vec<&String> = step.errors.keys().filter(|k| *k != "submit ResourceExhausted").collect();
        let p99 = step.stages.get("submit_to_ack").map_or(0, |q| q.p99_ns);
        let broken =
            matches!(step.outcome, Outcome::Error | Outcome::CorrectnessViolated | Outcome::Liveness | Outcome::Crash);
        let why_not = if broken || !step.checker_passed {
            Some(format!("the step ended {:?}", step.outcome))
        } else if p99 > OVERLOAD_P99_NS {
            Some(format!("p99 submit→ack {:.3} ms, over {} ms", p99 as f64 / 1e6, OVERLOAD_P99_NS / 1_000_000))
        } else if !other.is_empty() {
            Some(format!("requests failed other than by refusal: {other:?}"))
        } else {
            None
        };
        Overload { step, refused, held: why_not.is_none(), why_not }
    }

    /// The line the command prints.
    pub fn line(&self) -> String {
        let s = &self.step;
        let p99 = s.stages.get("submit_to_ack").map_or(0, |q| q.p99_ns);
        format!(
            "overload at {}/s (twice the knee): offered {}/s, accepted {}/s, {} refused (RESOURCE_EXHAUSTED), \
             accepted p99 submit→ack {:.3} ms: {}",
            s.target_per_s,
            s.offered_per_s,
            s.achieved_per_s,
            self.refused,
            p99 as f64 / 1e6,
            match &self.why_not {
                None => "held".to_string(),
                Some(why) => format!("did not hold ({why})"),
            }
        )
    }
}

/// The highest step rate that is within, if any.
pub fn knee(steps: &[Step]) -> Option<u64> {
    steps.iter().filter(|s| s.within).map(|s| s.target_per_s).max()
}

/// `capacity.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Capacity {
    pub scenario: String,
    pub mode: String,
    pub seed: u64,
    pub step_ms: u64,
    pub slo: String,
    pub slo_limit_ns: u64,
    pub max_error_ppm: u32,
    /// The highest step rate that is within (None: none is).
    pub knee_orders_per_s: Option<u64>,
    pub steps: Vec<Step>,
    /// The step at twice the knee, when there is a knee and it was run.
    pub overload: Option<Overload>,
    /// What a reader should know: where the load generator lagged.
    pub notes: Vec<String>,
}

/// How late the load generator may send before its lag, not the platform,
/// is said to limit a step.
pub const LAG_LIMIT_NS: u64 = 1_000_000;

/// The share of the machine's CPU above which the load generator is said to
/// compete with the platform it measures.
pub const LOAD_GENERATOR_CPU_LIMIT_PCT: u32 = 25;

impl Capacity {
    /// The measurement of `scn` (whose knee SLO is `slo`) from its `steps`.
    pub fn new(scn: &Scenario, slo: &Slo, mode: String, step: Duration, steps: Vec<Step>) -> Capacity {
        let knee = knee(&steps);
        let mut notes: Vec<String> = steps
            .iter()
            .filter(|s| s.send_lag_p99_ns > LAG_LIMIT_NS)
            .map(|s| {
                format!(
                    "at {} orders/s the load generator sent late (p99 {:.3} ms behind the intended times): \
                     it, not only the platform, limited the step",
                    s.target_per_s,
                    s.send_lag_p99_ns as f64 / 1e6
                )
            })
            .collect();
        for s in &steps {
            if let Some(c) = s.cpu.filter(|c| c.load_generator_pct >= LOAD_GENERATOR_CPU_LIMIT_PCT) {
                let platform = c.platform_pct.map(|p| format!(", the in-process platform {p} %")).unwrap_or_default();
                notes.push(format!(
                    "at {} orders/s the load generator used {} % of the machine's CPU{platform}: on one machine \
                     it takes CPU the platform would use; run it on another (--gateway) to measure the platform alone",
                    s.target_per_s, c.load_generator_pct
                ));
            }
        }
        Capacity {
            scenario: scn.name.clone(),
            mode,
            seed: scn.seed,
            step_ms: step.as_millis() as u64,
            slo: slo.text.clone(),
            slo_limit_ns: slo.limit_ns,
            max_error_ppm: MAX_ERROR_PPM,
            knee_orders_per_s: knee,
            steps,
            overload: None,
            notes,
        }
    }

    /// The command's exit code: the worst of the steps' correctness,
    /// liveness and crash outcomes (an SLO or error budget missed at a high
    /// rate is what a capacity measurement finds, not a failure), else 0.
    pub fn exit_code(&self) -> u8 {
        let worst = |o: Outcome| matches!(o, Outcome::CorrectnessViolated | Outcome::Liveness | Outcome::Crash);
        let overload = self.overload.iter().map(|o| o.step.outcome);
        self.steps
            .iter()
            .map(|s| s.outcome)
            .chain(overload)
            .filter(|o| worst(*o))
            .map(Outcome::exit_code)
            .max()
            .unwrap_or(0)
    }

    /// The table the command prints.
    pub fn table(&self) -> String {
        let ms = |ns: u64| ns as f64 / 1e6;
        let mut out = format!(
            "{:>8} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}  {}\n",
            "target/s",
            "agents",
            "offered",
            "achieved",
            "ack p50",
            "ack p99",
            "ack p999",
            "errors",
            "lag p99",
            "cpu lg/pf",
            "verdict"
        );
        for s in &self.steps {
            let q = s.stages.get("submit_to_ack").cloned().unwrap_or_default();
            let verdict = match &s.why_not {
                None => "within".to_string(),
                Some(why) => why.clone(),
            };
            out.push_str(&format!(
                "{:>8} {:>6} {:>8} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>8.3} {:>9}  {verdict}\n",
                s.target_per_s,
                s.agents,
                s.offered_per_s,
                s.achieved_per_s,
                ms(q.p50_ns),
                ms(q.p99_ns),
                ms(q.p999_ns),
                crate::scenario::percent(s.error_ppm),
                ms(s.send_lag_p99_ns),
                match s.cpu {
                    Some(c) => format!(
                        "{}/{}",
                        c.load_generator_pct,
                        c.platform_pct.map_or("-".to_string(), |p| p.to_string())
                    ),
                    None => "-".to_string(),
                }
            ));
        }
        match self.knee_orders_per_s {
            Some(k) => out.push_str(&format!("knee: {k} orders/s ({} with under 0.1 % errors)\n", self.slo)),
            None => out.push_str(&format!("knee: none (no step met {} with under 0.1 % errors)\n", self.slo)),
        }
        if let Some(o) = &self.overload {
            out.push_str(&format!("{}\n", o.line()));
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity_file() -> Scenario {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/capacity.toml");
        Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_step_scales_the_noise_traders_to_its_rate_and_keeps_the_rest() {
        let scn = capacity_file();
        let s = scaled(&scn, 2_000, Duration::from_secs(2)).unwrap();
        assert_eq!(s.duration, Duration::from_secs(2));
        assert!((noise_rate(&s) - 2_000.0).abs() < 20.0, "{}", noise_rate(&s));
        for (a, b) in scn.populations.iter().zip(&s.populations) {
            if !matches!(a.config.params, AgentParams::Noise(_)) {
                assert_eq!(a.count, b.count, "{:?} stays", a.config.kind);
            }
        }
        let tiny = scaled(&scn, 1, Duration::from_secs(1)).unwrap();
        assert!(tiny.populations.iter().all(|p| p.count >= 1));
        assert!(scaled(&scn, 100_000_000, Duration::from_secs(1)).unwrap_err().contains("more than 10000"));
    }

    #[test]
    fn calibration_learns_orders_per_decision() {
        let scn = capacity_file();
        let mut c = Calibration::default();
        assert_eq!(c.decisions_for(1_000), 1_000);
        let step = scaled(&scn, c.decisions_for(1_000), Duration::from_secs(1)).unwrap();
        // 600 orders a second from 1,000 decisions: off by more than a tenth.
        assert!(c.learn(&step, 600, 1_000));
        assert_eq!(c.decisions_for(1_000), 1_667);
        let again = scaled(&scn, c.decisions_for(1_000), Duration::from_secs(1)).unwrap();
        assert!(!c.learn(&again, 980, 1_000), "within a tenth");
    }

    #[test]
    fn rates_parse_ascending_and_positive() {
        assert_eq!(parse_rates(DEFAULT_RATES).unwrap(), vec![500, 1_000, 2_000, 5_000, 10_000, 20_000]);
        assert!(parse_rates("1000,500").unwrap_err().contains("ascending"));
        assert!(parse_rates("0").is_err() && parse_rates("fast").is_err() && parse_rates("").is_err());
    }

    #[test]
    fn capacity_refuses_faults_a_missing_knee_slo_and_no_noise() {
        let scn = capacity_file();
        assert!(check(&scn).is_ok());
        let no_slo = Scenario { slos: Vec::new(), ..scn.clone() };
        assert!(check(&no_slo).unwrap_err().contains("submit_to_ack.p99"));
        let faults = Scenario {
            faults: vec![fafnir_sim::faults::Fault::new(1, fafnir_sim::faults::Action::Kill, Some("orders"))],
            ..scn.clone()
        };
        assert!(check(&faults).unwrap_err().contains("calm platform"));
        let no_noise = Scenario {
            populations: scn
                .populations
                .iter()
                .filter(|p| !matches!(p.config.params, AgentParams::Noise(_)))
                .cloned()
                .collect(),
            ..scn
        };
        assert!(check(&no_noise).unwrap_err().contains("noise"));
    }
}
