//! What a run directory holds, read leniently: fields this crate does not
//! know are ignored (or shown as they are), fields added after the first
//! `summary.json` are optional. Only what a report cannot do without is
//! required, and a missing one is an error naming the file and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ReportError;

/// The stages the harness measures, in the order of an order's life.
/// Stages not listed here come after these, by name.
pub const STAGE_ORDER: [&str; 6] =
    ["submit_to_ack", "submit_to_first_fill", "submit_to_final", "cancel_to_ack", "fill_to_settled", "md_fanout"];

/// The counts in the order a reader wants them; others follow by name.
const COUNT_ORDER: [&str; 9] = [
    "submitted",
    "accepted",
    "rejected",
    "failed",
    "timed_out",
    "cancels",
    "cancels_acked",
    "fills_reported",
    "md_updates",
];

/// `summary.json`.
#[derive(Clone, Debug, Deserialize)]
pub struct Summary {
    pub scenario: String,
    pub mode: String,
    pub seed: u64,
    pub config_hash: String,
    pub trace_hash: String,
    pub duration_ms: u64,
    #[serde(default)]
    pub agents: u64,
    /// By name; values are numbers today, but a later field of another type is kept and shown.
    pub counts: BTreeMap<String, Value>,
    pub stages: BTreeMap<String, StageSummary>,
    #[serde(default)]
    pub accepted_per_s: Vec<u64>,
    #[serde(default)]
    pub slos: Vec<SloResult>,
    #[serde(default)]
    pub checker: Option<Verdict>,
    #[serde(default)]
    pub faults: Vec<Fault>,
    pub outcome: String,
    #[serde(default)]
    pub rerun: String,
    #[serde(default)]
    pub effective_config: String,
    #[serde(default)]
    pub nemesis: Option<Value>,
    /// Every field not named above, shown as JSON on the page.
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Latency quantiles of one stage over the whole run, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StageSummary {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// Reads one quantile of a stage, in ns.
pub type Quantile = fn(&StageSummary) -> u64;

/// One SLO and whether it held.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct SloResult {
    pub slo: Slo,
    pub value_ns: u64,
    pub passed: bool,
}

/// A threshold on a stage's latency quantile.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Slo {
    pub stage: String,
    pub text: String,
    pub quantile_ppm: u32,
    pub limit_ns: u64,
}

/// The fill checker's verdict.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// One check of the fill checker.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub violations: u64,
    pub first: Vec<String>,
}

/// One scheduled fault, as the scenario gave it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Fault {
    pub at_ms: u64,
    pub action: String,
    pub target: Option<String>,
    pub peer: Option<String>,
    pub one_way: bool,
    pub duration_ms: Option<u64>,
    pub factor: Option<u32>,
    pub rate_ppm: Option<u32>,
    pub latency_ms: Option<[u64; 2]>,
}

impl Fault {
    /// "partition engine-0 -> broker", "slow engine-0 x4", "packet_loss 20000 ppm".
    pub fn label(&self) -> String {
        let mut s = self.action.clone();
        if let Some(t) = &self.target {
            s.push(' ');
            s.push_str(t);
        }
        if let Some(p) = &self.peer {
            s.push_str(if self.one_way { " -> " } else { " <-> " });
            s.push_str(p);
        }
        if let Some(f) = self.factor {
            s.push_str(&format!(" x{f}"));
        }
        if let Some(r) = self.rate_ppm {
            s.push_str(&format!(" {r} ppm"));
        }
        if let Some([lo, hi]) = self.latency_ms {
            s.push_str(&format!(" {lo}-{hi} ms"));
        }
        s
    }
}

/// `timeline.json`: the run cut into buckets of `bucket_ms`. The harness
/// writes it with these same types (it depends on this crate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub bucket_ms: u64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub buckets: Vec<Bucket>,
    /// Trades by symbol, in time order.
    #[serde(default)]
    pub trades: BTreeMap<String, Vec<Trade>>,
}

/// What happened in one bucket; `t_ms` is its start, from the start of the load.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bucket {
    pub t_ms: u64,
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub fills: u64,
    /// Only the stages that had samples in this bucket.
    pub stages: BTreeMap<String, BucketStage>,
}

/// A stage's latency within one bucket, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BucketStage {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// One trade.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Trade {
    /// Signed: a trade can be stamped before the load started.
    pub t_ms: i64,
    pub price_cents: i64,
    pub qty: i64,
}

/// When a fault was in force; no end means to the end of the run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultWindow {
    pub label: String,
    pub kind: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

/// One sample of one metric series (a line of `metrics.jsonl`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// Seconds since the load started.
    pub t_s: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Reads `metrics.jsonl`: one [`MetricSample`] per line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricSample>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| ReportError::malformed(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Everything read from one run directory.
pub struct Run {
    pub dir: PathBuf,
    pub summary: Summary,
    pub timeline: Option<Timeline>,
    /// The raw histograms (`<stage>.hdr`, nanoseconds) that were there.
    pub histograms: BTreeMap<String, Histogram<u64>>,
    /// What was missing or skipped, one sentence each, for the page.
    pub notes: Vec<String>,
    /// `metrics.jsonl`, when the run wrote it.
    pub metrics: Vec<MetricSample>,
}

impl Run {
    /// Reads `summary.json` (required), `timeline.json` and `<stage>.hdr` (optional).
    pub fn load(dir: &Path) -> Result<Run, ReportError> {
        let summary: Summary = read_json(&dir.join("summary.json"))?;
        let mut notes = Vec::new();
        let timeline_path = dir.join("timeline.json");
        let timeline = if timeline_path.exists() {
            let t: Timeline = read_json(&timeline_path)?;
            if t.bucket_ms == 0 {
                return Err(ReportError::malformed(&timeline_path, "bucket_ms must be above 0"));
            }
            Some(t)
        } else {
            notes.push("timeline.json is missing: no latency over time and no prices.".to_string());
            None
        };
        let mut names: Vec<String> = summary.stages.keys().cloned().collect();
        names.extend(hdr_stages_in(dir)?);
        let mut histograms = BTreeMap::new();
        for stage in ordered(names) {
            let path = dir.join(format!("{stage}.hdr"));
            if path.exists() {
                histograms.insert(stage, read_hdr(&path)?);
            } else if summary.stages.get(&stage).is_some_and(|s| s.count > 0) {
                notes
                    .push(format!("{stage}.hdr is missing: its spectrum is drawn from the quantiles in summary.json."));
            }
        }
        let metrics_path = dir.join("metrics.jsonl");
        let metrics = if metrics_path.exists() { read_metrics(&metrics_path)? } else { Vec::new() };
        Ok(Run { dir: dir.to_path_buf(), summary, timeline, histograms, notes, metrics })
    }

    /// Every stage named in the summary or with a histogram, in [`STAGE_ORDER`].
    pub fn stages(&self) -> Vec<String> {
        ordered(self.summary.stages.keys().chain(self.histograms.keys()).cloned())
    }

    /// The windows of the faults the run played (`summary.json`'s `faults`).
    pub fn fault_windows(&self) -> Vec<FaultWindow> {
        self.summary
            .faults
            .iter()
            .map(|f| FaultWindow {
                label: f.label(),
                kind: f.action.clone(),
                start_ms: f.at_ms,
                end_ms: f.duration_ms.map(|d| f.at_ms + d),
            })
            .collect()
    }
}

/// The counts of a summary, known ones first.
pub fn ordered_counts(counts: &BTreeMap<String, Value>) -> Vec<(&str, &Value)> {
    let mut out: Vec<(&str, &Value)> =
        COUNT_ORDER.iter().filter_map(|k| counts.get_key_value(*k)).map(|(k, v)| (k.as_str(), v)).collect();
    out.extend(counts.iter().filter(|(k, _)| !COUNT_ORDER.contains(&k.as_str())).map(|(k, v)| (k.as_str(), v)));
    out
}

/// Stage names without repeats, known stages first in their order, then the rest by name.
pub fn ordered(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort_by_key(|n| (stage_rank(n), n.clone()));
    names.dedup();
    names
}

/// Where a stage sorts (and which colour it gets): its place in [`STAGE_ORDER`], unknown stages after.
pub fn stage_rank(name: &str) -> usize {
    STAGE_ORDER.iter().position(|s| *s == name).unwrap_or(STAGE_ORDER.len())
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| ReportError::malformed(path, e.to_string()))
}

fn read_hdr(path: &Path) -> Result<Histogram<u64>, ReportError> {
    let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| ReportError::malformed(path, format!("not a V2 HdrHistogram: {e:?}")))
}

/// The stages that have a `.hdr` file in `dir`.
fn hdr_stages_in(dir: &Path) -> Result<Vec<String>, ReportError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReportError::io(dir, e))?;
    let mut stages = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(stage) = name.strip_suffix(".hdr") {
            stages.push(stage.to_string());
        }
    }
    Ok(stages)
}
