//! The platform's own metrics over time (from `metrics.jsonl`): consumer
//! lag, settlement lag and requests in flight, one panel each, with the
//! fault windows shaded.

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::tick_label;
use super::spectrum::legend_line;
use super::{colour, err, seconds_label, shade_faults, Figure};
use crate::input::{FaultWindow, MetricSample};

/// One panel: a title, a y axis description and its series (label, (s, value)).
pub struct Panel {
    pub title: String,
    pub y_desc: &'static str,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// The three panels of metrics over time.
pub struct MetricsOverTime {
    pub panels: Vec<Panel>,
    pub windows: Vec<FaultWindow>,
    pub end_ms: u64,
}

/// Prometheus names read here (see `fafnir_platform::telemetry` and `fafnir_scenarios::observe`).
const CONSUMER_LAG: &str = "fafnir_consumer_lag_messages";
const SETTLEMENT_LAG: &str = "fafnir_settlement_lag_seconds";
const GATEWAY_IN_FLIGHT: &str = "fafnir_gateway_orders_in_flight";
const LOADGEN_IN_FLIGHT: &str = "fafnir_loadgen_requests_in_flight";

impl MetricsOverTime {
    /// The panels that have data; `None` when none has.
    pub fn new(samples: &[MetricSample], windows: Vec<FaultWindow>) -> Option<MetricsOverTime> {
        let end_s = samples.iter().map(|s| s.t_s).max()?;
        let mut panels = Vec::new();
        let lag = by_label(samples, CONSUMER_LAG, "consumer");
        if !lag.is_empty() {
            let series = lag.into_iter().map(|(c, points)| (format!("{c} (TRADES)"), points)).collect();
            panels.push(Panel { title: "Consumer lag".into(), y_desc: "messages not acked", series });
        }
        let settlement = settlement_lag_ms(samples);
        if !settlement.is_empty() {
            panels.push(Panel { title: "Settlement lag, each second".into(), y_desc: "ms", series: settlement });
        }
        let mut in_flight = Vec::new();
        for (name, label) in
            [(GATEWAY_IN_FLIGHT, "orders at the gateway"), (LOADGEN_IN_FLIGHT, "load generator requests")]
        {
            let points = summed(samples, name);
            if !points.is_empty() {
                in_flight.push((label.to_string(), points));
            }
        }
        if !in_flight.is_empty() {
            panels.push(Panel { title: "In flight".into(), y_desc: "requests", series: in_flight });
        }
        if panels.is_empty() {
            return None;
        }
        Some(MetricsOverTime { panels, windows, end_ms: (end_s + 1) * 1000 })
    }
}

/// `name` summed over every series, per second.
fn summed(samples: &[MetricSample], name: &str) -> Vec<(f64, f64)> {
    let mut by_t: BTreeMap<u64, f64> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        *by_t.entry(s.t_s).or_default() += s.value;
    }
    by_t.into_iter().map(|(t, v)| (t as f64, v)).collect()
}

/// `name` per value of `label`, per second.
fn by_label(samples: &[MetricSample], name: &str, label: &str) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        let key = s.labels.get(label).cloned().unwrap_or_default();
        out.entry(key).or_default().push((s.t_s as f64, s.value));
    }
    out
}

/// The settlement lag of the fills settled in each second, p50 and p99
/// (the upper bound of the bucket they fall in), from the histogram's
/// cumulative buckets, in ms.
fn settlement_lag_ms(samples: &[MetricSample]) -> Vec<(String, Vec<(f64, f64)>)> {
    let bucket = format!("{SETTLEMENT_LAG}_bucket");
    // t -> le -> cumulative count since the start.
    let mut at: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == bucket) {
        let le = match s.labels.get("le").map(String::as_str) {
            Some("+Inf") => f64::INFINITY,
            Some(v) => v.parse().unwrap_or(f64::NAN),
            None => continue,
        };
        at.entry(s.t_s).or_default().push((le, s.value));
    }
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut before: Vec<(f64, f64)> = Vec::new();
    for (t, mut buckets) in at {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let delta: Vec<(f64, f64)> = buckets
            .iter()
            .map(|(le, n)| (*le, n - before.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m)))
            .collect();
        if let Some(total) = delta.last().map(|(_, n)| *n).filter(|n| *n > 0.0) {
            let upper = |q: f64| delta.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| *le);
            if let Some(v) = upper(0.5).filter(|v| v.is_finite()) {
                p50.push((t as f64, v * 1e3));
            }
            if let Some(v) = upper(0.99).filter(|v| v.is_finite()) {
                p99.push((t as f64, v * 1e3));
            }
        }
        before = buckets;
    }
    let mut out = Vec::new();
    if !p50.is_empty() {
        out.push(("p50 (bucket bound)".to_string(), p50));
    }
    if !p99.is_empty() {
        out.push(("p99 (bucket bound)".to_string(), p99));
    }
    out
}

impl Figure for MetricsOverTime {
    fn size(&self) -> (u32, u32) {
        (1200, 300 * self.panels.len() as u32 + 40)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root = root.titled("Platform metrics over time (metrics.jsonl)", super::caption_style()).map_err(err)?;
        let areas = root.split_evenly((self.panels.len(), 1));
        for (area, panel) in areas.iter().zip(&self.panels) {
            draw_panel(area, panel, &self.windows, self.end_ms)?;
        }
        Ok(())
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    windows: &[FaultWindow],
    end_ms: u64,
) -> Result<(), String> {
    let y_max = panel.series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, super::panel_caption_style())
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..end_ms as f64 / 1e3, 0.0..y_max * 1.3)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc(panel.y_desc)
        .x_label_formatter(&seconds_label)
        .y_label_formatter(&|y| tick_label(*y))
        .x_labels(20)
        .y_labels(6)
        .axis_desc_style(super::axis_desc_style())
        .label_style(super::tick_style())
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()
        .map_err(err)?;
    shade_faults(&mut chart, windows, end_ms, false)?;
    for (i, (label, points)) in panel.series.iter().enumerate() {
        let c = colour(i);
        // A second without a value (no fill settled in it) breaks the line
        // rather than being bridged; a lone value is a dot.
        let runs = consecutive_runs(points);
        for run in runs.iter().filter(|r| r.len() == 1) {
            chart.draw_series(run.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
        }
        let mut lines = runs.into_iter().filter(|r| r.len() > 1).peekable();
        if lines.peek().is_none() {
            continue;
        }
        let mut first = true;
        for run in lines {
            let drawn = chart.draw_series(LineSeries::new(run, c.stroke_width(2))).map_err(err)?;
            if std::mem::take(&mut first) {
                drawn.label(label).legend(move |(x, y)| legend_line(x, y, c, false));
            }
        }
    }
    super::legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// `points` (one a second at most) split where a second is missing.
fn consecutive_runs(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    for p in points {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|q| p.0 - q.0 <= 1.0) => run.push(*p),
            _ => runs.push(vec![*p]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: u64, name: &str, labels: &[(&str, &str)], value: f64) -> MetricSample {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        MetricSample { t_s, name: name.into(), labels, value }
    }

    #[test]
    fn settlement_lag_per_second_comes_from_bucket_deltas() {
        let b = "fafnir_settlement_lag_seconds_bucket";
        let samples = vec![
            // Second 0: 10 fills, all within 1 ms.
            sample(0, b, &[("le", "0.001")], 10.0),
            sample(0, b, &[("le", "0.01")], 10.0),
            sample(0, b, &[("le", "+Inf")], 10.0),
            // Second 1: 10 more, 9 within 10 ms and one beyond.
            sample(1, b, &[("le", "0.001")], 10.0),
            sample(1, b, &[("le", "0.01")], 19.0),
            sample(1, b, &[("le", "+Inf")], 20.0),
        ];
        let series = settlement_lag_ms(&samples);
        assert_eq!(series[0], ("p50 (bucket bound)".to_string(), vec![(0.0, 1.0), (1.0, 10.0)]));
        // The second's p99 is beyond the last finite bound: not drawn.
        assert_eq!(series[1], ("p99 (bucket bound)".to_string(), vec![(0.0, 1.0)]));
    }

    #[test]
    fn a_missing_second_breaks_the_line() {
        let points = [(0.0, 1.0), (1.0, 2.0), (4.0, 3.0), (6.0, 1.0), (7.0, 1.0)];
        let runs = consecutive_runs(&points);
        assert_eq!(runs, vec![vec![(0.0, 1.0), (1.0, 2.0)], vec![(4.0, 3.0)], vec![(6.0, 1.0), (7.0, 1.0)]]);
    }

    #[test]
    fn panels_are_made_only_for_what_was_sampled() {
        let samples = vec![
            sample(0, CONSUMER_LAG, &[("consumer", "portfolio")], 3.0),
            sample(1, CONSUMER_LAG, &[("consumer", "portfolio")], 0.0),
        ];
        let m = MetricsOverTime::new(&samples, Vec::new()).expect("one panel");
        assert_eq!(m.panels.len(), 1);
        assert_eq!(m.end_ms, 2000);
        assert!(MetricsOverTime::new(&[], Vec::new()).is_none());
    }
}
