//! Latency against throughput over the steps of a capacity search: one line
//! per stage quantile, one point per step at its achieved rate, the SLO limit
//! and the knee as dashed lines.

use plotters::coord::Shift;
use plotters::element::DynElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::axis::{tick_label, LogAxis};
use super::spectrum::legend_line;
use super::{err, stage_colour, Figure, FONT};
use crate::capacity::{Capacity, ACK, FIRST_FILL};
use crate::input::Quantile;

/// How a line marks its points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Marker {
    Circle,
    Triangle,
    Cross,
}

/// One stage quantile across the steps.
pub struct Line {
    pub label: String,
    pub colour: RGBColor,
    pub dashed: bool,
    pub marker: Marker,
    /// (achieved orders/s, latency ms), in the order of the steps' targets.
    pub points: Vec<(f64, f64)>,
}

/// The plot.
pub struct CapacityLatency {
    pub title: String,
    pub lines: Vec<Line>,
    /// The SLO limit in ms, and its text.
    pub slo: Option<(f64, String)>,
    /// The knee's achieved orders/s, and its label.
    pub knee: Option<(f64, String)>,
}

/// The lines drawn: stage, quantile, how to read it, line style and marker.
const LINES: [(&str, &str, Quantile, bool, Marker); 5] = [
    (ACK, "p50", |s| s.p50_ns, true, Marker::Circle),
    (ACK, "p99", |s| s.p99_ns, false, Marker::Triangle),
    (ACK, "p99.9", |s| s.p999_ns, false, Marker::Cross),
    (FIRST_FILL, "p50", |s| s.p50_ns, true, Marker::Circle),
    (FIRST_FILL, "p99", |s| s.p99_ns, false, Marker::Triangle),
];

impl CapacityLatency {
    /// The lines of `c`: a step whose stage has no samples gives no point, and
    /// a line without points is left out.
    pub fn new(c: &Capacity) -> CapacityLatency {
        let mut lines = Vec::new();
        for (stage, quantile, read, dashed, marker) in LINES {
            let points: Vec<(f64, f64)> = c
                .steps
                .iter()
                .filter_map(|step| step.samples(stage).map(|s| (step.achieved_per_s, read(s) as f64 / 1e6)))
                // Zero has no place on a log axis.
                .filter(|(_, ms)| *ms > 0.0)
                .collect();
            if points.is_empty() {
                continue;
            }
            let colour = stage_colour(stage, 0);
            lines.push(Line { label: format!("{stage} {quantile}"), colour, dashed, marker, points });
        }
        let slo = c.slo_limit_ns.filter(|ns| *ns > 0).map(|ns| {
            let text = c.slo.clone().unwrap_or_else(|| format!("SLO {} ms", tick_label(ns as f64 / 1e6)));
            (ns as f64 / 1e6, text)
        });
        let knee = c.knee().map(|s| (s.achieved_per_s, format!("knee {} orders/s", s.target_per_s)));
        let title = format!("Latency against throughput: {} ({})", c.scenario, c.mode);
        CapacityLatency { title, lines, slo, knee }
    }
}

const SLO: RGBColor = RGBColor(198, 40, 40);
const KNEE: RGBColor = RGBColor(70, 70, 70);

/// A point's mark at `at`, in chart or pixel coordinates.
fn mark<DB: DrawingBackend, C: Clone + 'static>(at: C, marker: Marker, c: RGBColor) -> DynElement<'static, DB, C> {
    match marker {
        Marker::Circle => Circle::new(at, 4, c.filled()).into_dyn(),
        Marker::Triangle => TriangleMarker::new(at, 6, c.filled()).into_dyn(),
        Marker::Cross => Cross::new(at, 4, c.stroke_width(2)).into_dyn(),
    }
}

impl Figure for CapacityLatency {
    fn size(&self) -> (u32, u32) {
        (1200, 720)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let ys = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).chain(self.slo.iter().map(|s| s.0));
        let Some((y_lo, y_hi)) = super::log_range(ys, 3.0) else {
            return Ok(());
        };
        // Room under the lowest line for the knee's label.
        let y_lo = y_lo / 2.0;
        let xs = self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)).chain(self.knee.iter().map(|k| k.0));
        let x_hi = xs.fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, super::caption_style())
            .margin(20)
            .margin_right(50)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_hi, LogAxis::new(y_lo, y_hi))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("achieved orders per second")
            .y_desc("latency (ms, log scale)")
            .x_label_formatter(&|x| tick_label(*x))
            .y_label_formatter(&|y| tick_label(*y))
            .x_labels(12)
            .y_labels(16)
            .axis_desc_style(super::axis_desc_style())
            .label_style(super::tick_style())
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.15))
            .draw()
            .map_err(err)?;
        if let Some((limit, text)) = &self.slo {
            let line = [(0.0, *limit), (x_hi, *limit)];
            chart.draw_series(DashedLineSeries::new(line, 10, 6, SLO.stroke_width(2))).map_err(err)?;
            let style = TextStyle::from((FONT, 15).into_font()).color(&SLO).pos(Pos::new(HPos::Right, VPos::Bottom));
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((x_hi, *limit)) + Text::new(text.clone(), (-8, -4), style),
                ))
                .map_err(err)?;
        }
        if let Some((x, label)) = &self.knee {
            let line = [(*x, y_lo), (*x, y_hi)];
            chart.draw_series(DashedLineSeries::new(line, 10, 6, KNEE.stroke_width(2))).map_err(err)?;
            let style = TextStyle::from((FONT, 15).into_font()).color(&KNEE).pos(Pos::new(HPos::Left, VPos::Bottom));
            chart
                .draw_series(std::iter::once(EmptyElement::at((*x, y_lo)) + Text::new(label.clone(), (6, -6), style)))
                .map_err(err)?;
        }
        for l in &self.lines {
            let (c, dashed, marker) = (l.colour, l.dashed, l.marker);
            let style = c.stroke_width(2);
            let anno = if dashed {
                chart.draw_series(DashedLineSeries::new(l.points.clone(), 8, 5, style)).map_err(err)?
            } else {
                chart.draw_series(LineSeries::new(l.points.clone(), style)).map_err(err)?
            };
            anno.label(&l.label).legend(move |(x, y)| legend_line(x, y, c, dashed) + mark((9, 0), marker, c));
            chart.draw_series(l.points.iter().map(|p| mark(*p, marker, c))).map_err(err)?;
        }
        super::legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacity(steps: serde_json::Value) -> Capacity {
        let c = serde_json::json!({"scenario": "s", "mode": "simulation", "knee_orders_per_s": 200, "steps": steps});
        serde_json::from_value(c).expect("a capacity.json")
    }

    fn stage(count: u64, ms: u64) -> serde_json::Value {
        let ns = ms * 1_000_000;
        serde_json::json!({"count": count, "p50_ns": ns, "p90_ns": ns, "p99_ns": 2 * ns, "p999_ns": 3 * ns, "max_ns": 4 * ns})
    }

    #[test]
    fn a_stage_without_samples_gives_no_point_and_an_empty_line_is_left_out() {
        let c = capacity(serde_json::json!([
            {"target_per_s": 100, "achieved_per_s": 99, "stages": {"submit_to_ack": stage(10, 1), "submit_to_first_fill": stage(0, 0)}},
            {"target_per_s": 200, "achieved_per_s": 190.5, "stages": {"submit_to_ack": stage(20, 2)}},
            {"target_per_s": 400, "achieved_per_s": 250, "stages": {"submit_to_ack": stage(0, 9)}},
        ]));
        let figure = CapacityLatency::new(&c);
        let labels: Vec<&str> = figure.lines.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(labels, ["submit_to_ack p50", "submit_to_ack p99", "submit_to_ack p99.9"]);
        assert_eq!(figure.lines[1].points, [(99.0, 2.0), (190.5, 4.0)]);
        assert_eq!(figure.knee, Some((190.5, "knee 200 orders/s".to_string())));
        assert_eq!(figure.slo, None, "no limit, no line");
        assert_eq!(figure.title, "Latency against throughput: s (simulation)");
    }
}
