//! A capacity search (`fafnir capacity`): its `capacity.json`, read leniently
//! like the run directory's files, and its `index.html`, one row per step with
//! a link to the step's own run page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

use crate::html::{escape, head, ms, plots_section, PlotEntry};
use crate::input::{read_json, Quantile, StageSummary};
use crate::ReportError;

/// The stage the knee and the plot are about.
pub const ACK: &str = "submit_to_ack";
/// The second stage of the plot.
pub const FIRST_FILL: &str = "submit_to_first_fill";
/// How many error kinds a step's row names, the most frequent first.
const ERROR_KINDS_SHOWN: usize = 3;

/// `capacity.json`. Only `scenario`, `mode` and `steps` are required; unknown
/// fields are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct Capacity {
    pub scenario: String,
    pub mode: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// How long each step ran.
    #[serde(default)]
    pub step_ms: Option<u64>,
    /// The SLO as written, "submit_to_ack.p99 < 10ms".
    #[serde(default)]
    pub slo: Option<String>,
    #[serde(default)]
    pub slo_limit_ns: Option<u64>,
    #[serde(default)]
    pub max_error_ppm: Option<u64>,
    /// The target of the knee step; `None` when no step was within.
    #[serde(default)]
    pub knee_orders_per_s: Option<u64>,
    /// Sorted by target on load.
    pub steps: Vec<Step>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One step of the search: a whole run at one target rate. Only
/// `target_per_s` and `achieved_per_s` are required.
#[derive(Clone, Debug, Deserialize)]
pub struct Step {
    pub target_per_s: u64,
    /// Orders per second the platform took (the plot's x).
    pub achieved_per_s: f64,
    #[serde(default)]
    pub agents: Option<u64>,
    #[serde(default)]
    pub offered_per_s: Option<f64>,
    /// By stage; a stage without samples has `count` 0.
    #[serde(default)]
    pub stages: BTreeMap<String, StageSummary>,
    /// By request kind and code.
    #[serde(default)]
    pub errors: BTreeMap<String, ErrorKind>,
    #[serde(default)]
    pub error_ppm: Option<u64>,
    #[serde(default)]
    pub outcome: Option<String>,
    /// Whether the step counts for the knee.
    #[serde(default)]
    pub within: bool,
    /// Why the step is not within, one sentence.
    #[serde(default)]
    pub why_not: Option<String>,
    #[serde(default)]
    pub send_lag_p99_ns: Option<u64>,
    /// The step's run directory, relative to the capacity directory.
    #[serde(default)]
    pub run_dir: Option<String>,
}

/// The failed or timed-out requests of one kind (their messages are on the step's page).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorKind {
    pub count: u64,
}

impl Capacity {
    /// Reads `dir/capacity.json`, its steps sorted by target.
    pub fn load(dir: &Path) -> Result<Capacity, ReportError> {
        let mut c: Capacity = read_json(&dir.join("capacity.json"))?;
        c.steps.sort_by_key(|s| s.target_per_s);
        Ok(c)
    }

    /// The step the knee names, if it names one that is there.
    pub fn knee(&self) -> Option<&Step> {
        let knee = self.knee_orders_per_s?;
        self.steps.iter().find(|s| s.target_per_s == knee)
    }

    /// Whether any step has a submit-to-ack sample.
    pub fn has_ack_samples(&self) -> bool {
        self.steps.iter().any(|s| s.samples(ACK).is_some())
    }
}

impl Step {
    /// `stage`'s quantiles, when it has samples.
    pub fn samples(&self, stage: &str) -> Option<&StageSummary> {
        self.stages.get(stage).filter(|s| s.count > 0)
    }

    /// The run directory, `step-<target>` when capacity.json does not say.
    pub fn run_dir(&self) -> String {
        self.run_dir.clone().unwrap_or_else(|| format!("step-{}", self.target_per_s))
    }
}

/// Parts per million as a percentage, exact: 1000 -> "0.1%", 0 -> "0%".
pub fn percent(ppm: u64) -> String {
    let (whole, fraction) = (ppm / 10_000, ppm % 10_000);
    if fraction == 0 {
        return format!("{whole}%");
    }
    let fraction = format!("{fraction:04}");
    format!("{whole}.{}%", fraction.trim_end_matches('0'))
}

/// A rate as a person writes it: "495", or "495.5" when it is not whole.
pub fn rate(per_s: f64) -> String {
    if per_s.fract() == 0.0 {
        format!("{per_s:.0}")
    } else {
        format!("{per_s:.1}")
    }
}

/// What stands in a cell for a value that is not there.
const NONE: &str = "–";

/// The whole page: `own_notes` are the report's (what it left out), after capacity.json's.
pub fn page(c: &Capacity, plot: &PlotEntry, own_notes: &[String]) -> String {
    let mut h = head(&format!("fafnir capacity: {}", c.scenario));
    knee_sentence(&mut h, c);
    facts(&mut h, c);
    plots_section(&mut h, std::slice::from_ref(plot));
    steps(&mut h, c);
    if !c.notes.is_empty() || !own_notes.is_empty() {
        h.push_str("<h2>Notes</h2>\n<ul>\n");
        for n in &c.notes {
            let _ = writeln!(h, "<li>{}</li>", escape(n));
        }
        for n in own_notes {
            let _ = writeln!(h, "<li class=\"note\">{}</li>", escape(n));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn knee_sentence(h: &mut String, c: &Capacity) {
    match (c.knee_orders_per_s, c.knee()) {
        (Some(knee), Some(step)) => {
            let _ = writeln!(
                h,
                "<p>Knee: <span class=\"pass\">{knee} orders/s</span> (the step's target; it achieved {} orders/s).</p>",
                rate(step.achieved_per_s)
            );
        }
        (Some(knee), None) => {
            let _ = writeln!(
                h,
                "<p>Knee: <span class=\"pass\">{knee} orders/s</span> (no step has this target: see the notes).</p>"
            );
        }
        (None, _) => {
            h.push_str(
                "<p>Knee: <span class=\"fail\">none</span>: no step was within the SLO and the error limit.</p>\n",
            );
        }
    }
}

fn facts(h: &mut String, c: &Capacity) {
    let or_not = |v: Option<String>| v.unwrap_or_else(|| "(not recorded)".to_string());
    let slo = match (&c.slo, c.slo_limit_ns) {
        (Some(text), Some(limit)) => Some(format!("{text} (limit {} ms)", ms(limit))),
        (Some(text), None) => Some(text.clone()),
        (None, Some(limit)) => Some(format!("limit {} ms", ms(limit))),
        (None, None) => None,
    };
    let rows = [
        ("scenario", c.scenario.clone()),
        ("mode", c.mode.clone()),
        ("seed", or_not(c.seed.map(|s| s.to_string()))),
        ("each step", or_not(c.step_ms.map(|t| format!("{t} ms")))),
        ("SLO", or_not(slo)),
        ("error limit", or_not(c.max_error_ppm.map(|p| format!("{} ({p} ppm)", percent(p))))),
        ("steps", c.steps.len().to_string()),
    ];
    h.push_str("<h2>Search</h2>\n<table>\n");
    for (k, v) in rows {
        let _ = writeln!(h, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    h.push_str("</table>\n");
}

/// A stage quantile in ms, or [`NONE`] when the stage has no samples.
fn latency(step: &Step, stage: &str, read: Quantile) -> String {
    step.samples(stage).map_or_else(|| NONE.to_string(), |s| ms(read(s)))
}

fn steps(h: &mut String, c: &Capacity) {
    h.push_str("<h2>Steps</h2>\n<table>\n<tr><th>target (/s)</th><th>agents</th><th>offered (/s)</th>");
    h.push_str("<th>achieved (/s)</th><th>submit→ack p50 (ms)</th><th>submit→ack p99 (ms)</th>");
    h.push_str("<th>submit→ack p99.9 (ms)</th><th>submit→first fill p50 (ms)</th>");
    h.push_str("<th>submit→first fill p99 (ms)</th><th>errors</th><th>outcome</th><th>within</th>");
    h.push_str("<th>send lag p99 (ms)</th><th>run</th></tr>\n");
    for s in &c.steps {
        let knee = c.knee_orders_per_s == Some(s.target_per_s);
        h.push_str(if knee { "<tr class=\"knee\">" } else { "<tr>" });
        let numbers = [
            s.target_per_s.to_string(),
            s.agents.map_or_else(|| NONE.to_string(), |a| a.to_string()),
            s.offered_per_s.map_or_else(|| NONE.to_string(), rate),
            rate(s.achieved_per_s),
            latency(s, ACK, |q| q.p50_ns),
            latency(s, ACK, |q| q.p99_ns),
            latency(s, ACK, |q| q.p999_ns),
            latency(s, FIRST_FILL, |q| q.p50_ns),
            latency(s, FIRST_FILL, |q| q.p99_ns),
        ];
        for n in numbers {
            let _ = write!(h, "<td class=\"num\">{}</td>", escape(&n));
        }
        errors(h, s);
        let outcome = s.outcome.as_deref().unwrap_or(NONE);
        let class = if outcome == "success" { "pass" } else { "fail" };
        let _ = write!(h, "<td><span class=\"{class}\">{}</span></td>", escape(outcome));
        match (s.within, &s.why_not) {
            (true, _) => h.push_str("<td><span class=\"pass\">yes</span></td>"),
            (false, Some(why)) => {
                let _ = write!(h, "<td><span class=\"fail\">no</span>: {}</td>", escape(why));
            }
            (false, None) => h.push_str("<td><span class=\"fail\">no</span></td>"),
        }
        let lag = s.send_lag_p99_ns.map_or_else(|| NONE.to_string(), ms);
        let dir = escape(&s.run_dir());
        let _ = writeln!(h, "<td class=\"num\">{lag}</td><td><a href=\"{dir}/index.html\">{dir}</a></td></tr>");
    }
    h.push_str("</table>\n");
}

/// The share of requests that failed, and the most frequent kinds.
fn errors(h: &mut String, s: &Step) {
    let _ = write!(h, "<td>{}", s.error_ppm.map_or_else(|| NONE.to_string(), percent));
    let mut kinds: Vec<(&String, &ErrorKind)> = s.errors.iter().collect();
    kinds.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(b.0)));
    if !kinds.is_empty() {
        h.push_str("<ul>");
        for (kind, e) in kinds.iter().take(ERROR_KINDS_SHOWN) {
            let _ = write!(h, "<li>{}: {}</li>", escape(kind), e.count);
        }
        match kinds.len().saturating_sub(ERROR_KINDS_SHOWN) {
            0 => {}
            1 => h.push_str("<li>and 1 more kind</li>"),
            more => {
                let _ = write!(h, "<li>and {more} more kinds</li>");
            }
        }
        h.push_str("</ul>");
    }
    h.push_str("</td>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_exact() {
        assert_eq!(percent(0), "0%");
        assert_eq!(percent(1), "0.0001%");
        assert_eq!(percent(1000), "0.1%");
        assert_eq!(percent(12_345), "1.2345%");
        assert_eq!(percent(1_000_000), "100%");
    }

    #[test]
    fn rates() {
        assert_eq!(rate(495.0), "495");
        assert_eq!(rate(495.46), "495.5");
    }
}
