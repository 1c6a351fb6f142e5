//! fafnir-reports: turns a run directory into plots and an HTML page,
//! compares two runs, and turns a capacity search into one page over its steps.
//!
//! It reads only files (it depends on no other fafnir crate, they depend on
//! it): `summary.json` (required), `timeline.json` and one `<stage>.hdr` per
//! stage (optional: what is missing is noted on the page and in
//! [`Rendered::notes`], and the rest is drawn); for a capacity search,
//! `capacity.json`. Output is deterministic: the same directory gives the
//! same bytes.
//!
//! # Layout
//! - [`render_run`] / [`compare`] / [`render_capacity`]: the three entry
//!   points, here.
//! - `input.rs`: the run directory's files, read leniently (unknown fields
//!   ignored, later fields optional), and the order stages are shown in.
//! - `capacity.rs`: `capacity.json` (written by `fafnir capacity` beside one
//!   run directory per step, `step-<target_per_s>/`), read the same way, and
//!   the search's `index.html`: the knee, a row per step linking to the
//!   step's own page, the notes.
//! - `plot/`: one file per kind of plot, each a `Figure` drawn once as PNG and
//!   once as SVG (`plot/mod.rs`: saving, fonts, colours, fault shading;
//!   `plot/axis.rs`: the readable log axis; `plot/capacity.rs`: latency
//!   against achieved throughput over a capacity search's steps).
//! - `html.rs`: a run's `index.html`, and what every page shares.
//! - `compare.rs`: the side-by-side table and the two-run spectrum.
//! - `error.rs`: [`ReportError`], whose message always starts with the file.
//! - `tests/reports/fixture.rs`: a realistic made-up run directory (kill and
//!   partition faults, two symbols, an empty stage), used by the tests and by
//!   `examples/fixture_report.rs`; `tests/reports/capacity.rs`: a made-up
//!   capacity search of four steps; `examples/render.rs` renders (a run or a
//!   capacity search) or compares real run directories.

mod capacity;
mod compare;
mod error;
mod html;
mod input;
mod plot;

use std::path::{Path, PathBuf};

pub use error::ReportError;
pub use input::{Bucket, BucketStage, Timeline, Trade};

use capacity::Capacity;
use html::PlotEntry;
use input::Run;
use plot::capacity::CapacityLatency;
use plot::metrics::MetricsOverTime;
use plot::prices::Prices;
use plot::spectrum::{self, Series, Spectrum};
use plot::timeline::{LatencyOverTime, Throughput};
use plot::{save, stage_colour};

/// What [`render_run`] or [`render_capacity`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// `<dir>/index.html`.
    pub index: PathBuf,
    /// Every file written, the page last.
    pub files: Vec<PathBuf>,
    /// What was missing or left out, one sentence each (also on the page).
    pub notes: Vec<String>,
}

/// Reads the run directory `dir` and writes into it `spectrum`,
/// `latency_over_time`, `throughput` and `prices` (each `.png` and `.svg`)
/// and `index.html`. A plot whose data is missing is not drawn and is noted.
pub fn render_run(dir: &Path) -> Result<Rendered, ReportError> {
    let run = Run::load(dir)?;
    let mut notes = run.notes.clone();
    let mut files = Vec::new();
    let mut plots = Vec::new();
    let mut add = |name: &'static str, caption: &'static str, drawn: Option<Vec<PathBuf>>| {
        plots.push(PlotEntry { name, caption, drawn: drawn.is_some() });
        files.extend(drawn.unwrap_or_default());
    };

    let spectrum = run_spectrum(&run, &mut notes);
    let drawn = if spectrum.series.is_empty() {
        notes.push("No stage has samples: no spectrum.".to_string());
        None
    } else {
        Some(save(dir, "spectrum", &spectrum)?)
    };
    add("spectrum", "Latency percentile spectrum per stage", drawn);

    let (latency, throughput, prices) = match &run.timeline {
        Some(t) => timeline_plots(&run, t, &mut notes)?,
        None if !run.summary.accepted_per_s.is_empty() => {
            notes.push("Throughput shows only accepted orders, from accepted_per_s in summary.json.".to_string());
            let throughput = Throughput::from_accepted_per_s(&run.summary.accepted_per_s, run.fault_windows());
            (None, Some(save(dir, "throughput", &throughput)?), None)
        }
        None => (None, None, None),
    };
    add("latency_over_time", "Latency over time (p50, p99, max per bucket)", latency);
    add("throughput", "Throughput over time", throughput);
    add("prices", "Trade prices and volume per symbol", prices);

    let drawn = match MetricsOverTime::new(&run.metrics, run.fault_windows()) {
        Some(m) => Some(save(dir, "metrics_over_time", &m)?),
        None => {
            notes.push("metrics.jsonl is missing or holds no lag or in-flight series: no metrics over time.".into());
            None
        }
    };
    add("metrics_over_time", "Consumer lag, settlement lag and requests in flight over time (metrics.jsonl)", drawn);

    let index = dir.join("index.html");
    std::fs::write(&index, html::page(&run, &plots, &notes)).map_err(|e| ReportError::io(&index, e))?;
    files.push(index.clone());
    Ok(Rendered { index, files, notes })
}

/// Reads the capacity search in `dir` (`capacity.json`, written by `fafnir
/// capacity`, with each step's run directory beside it) and writes into it
/// `capacity_latency.png` and `.svg` (latency against achieved throughput per
/// step, the SLO limit and the knee) and `index.html` (the knee, the plot, a
/// row per step linking to the step's own page, the notes). With no
/// submit-to-ack sample in any step the plot is not drawn and is noted; a
/// step whose page is not there yet is noted too. The notes returned are the
/// report's own; capacity.json's notes are on the page.
pub fn render_capacity(dir: &Path) -> Result<Rendered, ReportError> {
    let c = Capacity::load(dir)?;
    let mut notes = Vec::new();
    let mut files = Vec::new();
    let drawn = if c.has_ack_samples() {
        files.extend(save(dir, "capacity_latency", &CapacityLatency::new(&c))?);
        true
    } else {
        notes.push(format!("No step has {} samples: no latency against throughput plot.", capacity::ACK));
        false
    };
    if let (Some(knee), None) = (c.knee_orders_per_s, c.knee()) {
        notes.push(format!("capacity.json names the knee {knee} orders/s, but no step has that target."));
    }
    for step in &c.steps {
        let page = format!("{}/index.html", step.run_dir());
        if !dir.join(&page).exists() {
            notes.push(format!("{page} is not there: the step's link leads nowhere."));
        }
    }
    let plot = PlotEntry { name: "capacity_latency", caption: "Latency against throughput, per step", drawn };
    let index = dir.join("index.html");
    std::fs::write(&index, capacity::page(&c, &plot, &notes)).map_err(|e| ReportError::io(&index, e))?;
    files.push(index.clone());
    Ok(Rendered { index, files, notes })
}

/// Compares run A (`a`) with run B (`b`): returns a printable table of each
/// stage's count, p50, p90, p99, p99.9 and max (ms) in A and B with the change
/// in percent of A ("n/a" when A is 0), and of the counts; and draws both
/// spectra into `out/compare_spectrum.png` and `.svg` (`out` is created).
pub fn compare(a: &Path, b: &Path, out: &Path) -> Result<String, ReportError> {
    let (run_a, run_b) = (Run::load(a)?, Run::load(b)?);
    std::fs::create_dir_all(out).map_err(|e| ReportError::io(out, e))?;
    compare::draw_spectra(&run_a, &run_b, out)?;
    Ok(compare::table(&run_a, &run_b))
}

/// The spectrum of every stage with samples; stages without are noted.
fn run_spectrum(run: &Run, notes: &mut Vec<String>) -> Spectrum {
    let mut series = Vec::new();
    for (i, name) in run.stages().iter().enumerate() {
        let Some(points) = stage_spectrum(run, name) else {
            notes.push(format!("Stage {name} has no samples: left out of the plots."));
            continue;
        };
        let count = run.histograms.get(name).map_or_else(|| run.summary.stages[name].count, |h| h.len());
        let source = if run.histograms.contains_key(name) { "" } else { ", from summary quantiles" };
        let label = format!("{name} (n = {count}{source})");
        series.push(Series { label, colour: stage_colour(name, i), dashed: false, points });
    }
    let s = &run.summary;
    Spectrum { title: format!("Latency spectrum: {} (seed {})", s.scenario, s.seed), series, style_legend: Vec::new() }
}

/// A stage's spectrum points, from its histogram or else from the summary's
/// quantiles; `None` when it has no samples.
fn stage_spectrum(run: &Run, stage: &str) -> Option<Vec<(f64, f64)>> {
    match run.histograms.get(stage) {
        Some(h) if !h.is_empty() => Some(spectrum::from_histogram(h)),
        Some(_) => None,
        None => run.summary.stages.get(stage).filter(|s| s.count > 0).map(spectrum::from_summary),
    }
}

type Drawn = Option<Vec<PathBuf>>;

/// latency_over_time, throughput and prices, each `None` when it has nothing to show.
fn timeline_plots(
    run: &Run,
    t: &input::Timeline,
    notes: &mut Vec<String>,
) -> Result<(Drawn, Drawn, Drawn), ReportError> {
    let dir = run.dir.as_path();
    if t.buckets.is_empty() {
        notes.push("timeline.json has no buckets: no latency or throughput over time.".to_string());
    }
    let (latency, empty) = LatencyOverTime::new(t, run.fault_windows());
    for stage in empty {
        notes.push(format!("Stage {stage} has no samples in any bucket: left out of latency over time."));
    }
    let latency = if latency.panels.is_empty() { None } else { Some(save(dir, "latency_over_time", &latency)?) };
    let throughput = if t.buckets.is_empty() {
        None
    } else {
        Some(save(dir, "throughput", &Throughput::new(t, run.fault_windows()))?)
    };
    let (prices, left_out) = Prices::new(t, run.fault_windows());
    if !left_out.is_empty() {
        notes.push(format!(
            "Prices shows the first {} symbols; left out: {}.",
            prices.panels.len(),
            left_out.join(", ")
        ));
    }
    let prices = if prices.panels.is_empty() {
        notes.push("timeline.json has no trades: no price plot.".to_string());
        None
    } else {
        Some(save(dir, "prices", &prices)?)
    };
    Ok((latency, throughput, prices))
}
