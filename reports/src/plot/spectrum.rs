//! The latency percentile spectrum: latency (ms, log) against the percentile
//! on a "nines" axis, x = 1/(1-q), so 90%, 99%, 99.9% are equally spaced.

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::element::ComposedElement;
use plotters::prelude::*;

use super::axis::{nines_label, tick_label, LogAxis};
use super::{err, Figure};
use crate::input::StageSummary;

/// One line of a spectrum.
pub struct Series {
    pub label: String,
    pub colour: RGBColor,
    pub dashed: bool,
    /// (1/(1-q), latency ms), x rising.
    pub points: Vec<(f64, f64)>,
}

/// A spectrum plot of any number of lines.
pub struct Spectrum {
    pub title: String,
    pub series: Vec<Series>,
    /// Legend lines that name the line styles (solid/dashed) rather than a stage.
    pub style_legend: Vec<(String, bool)>,
}

/// The points of a histogram's spectrum. The last one (the max, q = 1) is put
/// at x = count, where the last sample sits; no point is put further right.
pub fn from_histogram(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = h.len() as f64;
    let mut points = Vec::new();
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let x = if q < 1.0 { (1.0 / (1.0 - q)).min(n) } else { n };
        points.push((x.max(1.0), v.value_iterated_to() as f64 / 1e6));
    }
    points
}

/// The few points the summary's quantiles give, for a stage without its `.hdr`.
pub fn from_summary(s: &StageSummary) -> Vec<(f64, f64)> {
    let n = s.count as f64;
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut points: Vec<(f64, f64)> = [(2.0, s.p50_ns), (10.0, s.p90_ns), (100.0, s.p99_ns), (1000.0, s.p999_ns)]
        .into_iter()
        .filter(|(x, _)| *x < n)
        .map(|(x, ns)| (x, ms(ns)))
        .collect();
    points.push((n.max(1.0), ms(s.max_ns)));
    points
}

impl Figure for Spectrum {
    fn size(&self) -> (u32, u32) {
        (1200, 720)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let x_max = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(100.0, f64::max);
        // Whole decades, so the last label is a round number of nines.
        let x_max = 10f64.powf(x_max.log10().ceil());
        let Some((y_lo, y_hi)) = super::log_range(self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)), 1.6)
        else {
            return Ok(());
        };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, super::caption_style())
            .margin(20)
            .margin_right(50)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(LogAxis::decades(1.0, x_max), LogAxis::new(y_lo, y_hi))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms, log scale)")
            .x_label_formatter(&|x| nines_label(*x))
            .y_label_formatter(&|y| tick_label(*y))
            .x_labels(12)
            .y_labels(16)
            .axis_desc_style(super::axis_desc_style())
            .label_style(super::tick_style())
            .light_line_style(BLACK.mix(0.05))
            .bold_line_style(BLACK.mix(0.15))
            .draw()
            .map_err(err)?;
        for s in &self.series {
            let style = s.colour.stroke_width(2);
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.clone(), 10, 6, style)).map_err(err)?
            } else {
                chart.draw_series(LineSeries::new(s.points.clone(), style)).map_err(err)?
            };
            if !s.label.is_empty() {
                let (c, dashed) = (s.colour, s.dashed);
                anno.label(&s.label).legend(move |(x, y)| legend_line(x, y, c, dashed));
            }
        }
        for (label, dashed) in &self.style_legend {
            let dashed = *dashed;
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| legend_line(x, y, BLACK, dashed));
        }
        super::legend(&mut chart, SeriesLabelPosition::UpperLeft)
    }
}

/// A legend's line sample: two pieces, joined (solid) or apart (dashed).
pub type LegendLine<DB> = ComposedElement<(i32, i32), DB, PathElement<(i32, i32)>, PathElement<(i32, i32)>>;

/// A short solid or dashed line for a legend entry at (x, y).
pub fn legend_line<DB: DrawingBackend>(x: i32, y: i32, c: RGBColor, dashed: bool) -> LegendLine<DB> {
    let style = c.stroke_width(2);
    let (first_end, second_start) = if dashed { (7, 11) } else { (9, 9) };
    EmptyElement::at((x, y))
        + PathElement::new(vec![(0, 0), (first_end, 0)], style)
        + PathElement::new(vec![(second_start, 0), (18, 0)], style)
}
