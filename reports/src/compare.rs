//! Two runs side by side: a table of their quantiles and counts with the
//! change from A to B, and both spectra on one plot.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::input::{ordered, ordered_counts, Quantile, Run, StageSummary};
use crate::plot::spectrum::{Series, Spectrum};
use crate::plot::{save, stage_colour};
use crate::ReportError;

/// The change from `a` to `b` in percent of `a`: "+25.0%", or "n/a" when `a` is 0.
pub fn change(a: f64, b: f64) -> String {
    if a == 0.0 {
        "n/a".to_string()
    } else {
        format!("{:+.1}%", (b - a) / a * 100.0)
    }
}

/// The quantile rows of the table: label, and how to read it from a stage.
const QUANTILES: [(&str, Quantile); 5] = [
    ("p50", |s| s.p50_ns),
    ("p90", |s| s.p90_ns),
    ("p99", |s| s.p99_ns),
    ("p99.9", |s| s.p999_ns),
    ("max", |s| s.max_ns),
];

/// The printable table (see [`crate::compare`]).
pub fn table(a: &Run, b: &Run) -> String {
    let mut t = String::new();
    for (tag, run) in [("A", a), ("B", b)] {
        let s = &run.summary;
        let _ = writeln!(
            t,
            "{tag}: {}  (scenario {}, seed {}, outcome {}, trace {})",
            run.dir.display(),
            s.scenario,
            s.seed,
            s.outcome,
            s.trace_hash
        );
    }
    let _ = writeln!(t, "\n{:<22} {:<8} {:>12} {:>12} {:>10}", "stage", "quantile", "A (ms)", "B (ms)", "change");
    let names = ordered(a.summary.stages.keys().chain(b.summary.stages.keys()).cloned());
    for name in names {
        let (sa, sb) = (a.summary.stages.get(&name), b.summary.stages.get(&name));
        let count = |s: Option<&StageSummary>| s.map_or("-".to_string(), |s| s.count.to_string());
        let _ = writeln!(
            t,
            "{:<22} {:<8} {:>12} {:>12} {:>10}",
            name,
            "count",
            count(sa),
            count(sb),
            both(sa, sb, |s| s.count as f64)
        );
        for (label, read) in QUANTILES {
            let ms = |s: Option<&StageSummary>| s.map_or("-".to_string(), |s| crate::html::ms(read(s)));
            let _ = writeln!(
                t,
                "{:<22} {:<8} {:>12} {:>12} {:>10}",
                "",
                label,
                ms(sa),
                ms(sb),
                both(sa, sb, |s| read(s) as f64)
            );
        }
    }
    let _ = writeln!(t, "\n{:<31} {:>12} {:>12} {:>10}", "count", "A", "B", "change");
    let mut names: Vec<&str> = ordered_counts(&a.summary.counts).into_iter().map(|(k, _)| k).collect();
    for (k, _) in ordered_counts(&b.summary.counts) {
        if !names.contains(&k) {
            names.push(k);
        }
    }
    for k in names {
        let (va, vb) = (a.summary.counts.get(k), b.summary.counts.get(k));
        let text = |v: Option<&Value>| v.map_or("-".to_string(), |v| v.to_string());
        let delta = match (va.and_then(Value::as_f64), vb.and_then(Value::as_f64)) {
            (Some(x), Some(y)) => change(x, y),
            _ => "n/a".to_string(),
        };
        let _ = writeln!(t, "{:<31} {:>12} {:>12} {:>10}", k, text(va), text(vb), delta);
    }
    for (tag, run) in [("A", a), ("B", b)] {
        for n in &run.notes {
            let _ = writeln!(t, "note {tag}: {n}");
        }
    }
    t
}

fn both(a: Option<&StageSummary>, b: Option<&StageSummary>, f: impl Fn(&StageSummary) -> f64) -> String {
    match (a, b) {
        (Some(a), Some(b)) => change(f(a), f(b)),
        _ => "n/a".to_string(),
    }
}

/// Both runs' spectra on one plot, A solid and B dashed, a stage one colour in both.
pub fn draw_spectra(a: &Run, b: &Run, out: &Path) -> Result<Vec<std::path::PathBuf>, ReportError> {
    let names = ordered(a.stages().into_iter().chain(b.stages()));
    let mut series = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut labelled = false;
        for (run, dashed) in [(a, false), (b, true)] {
            let Some(points) = crate::stage_spectrum(run, name) else { continue };
            // The stage is named once; the line style says which run.
            let label = if labelled { String::new() } else { name.clone() };
            labelled = true;
            series.push(Series { label, colour: stage_colour(name, i), dashed, points });
        }
    }
    let figure = Spectrum {
        title: "Latency spectrum: A vs B".to_string(),
        series,
        style_legend: vec![
            (format!("A (solid): {}", a.dir.display()), false),
            (format!("B (dashed): {}", b.dir.display()), true),
        ],
    };
    save(out, "compare_spectrum", &figure)
}
