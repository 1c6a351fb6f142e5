//! The plots over time, from `timeline.json`: latency per stage, and
//! throughput. Both shade the fault windows.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::{tick_label, LogAxis};
use super::spectrum::legend_line;
use super::{colour, err, seconds_label, segments, shade_faults, Figure};
use crate::input::{ordered, FaultWindow, Timeline};

/// One stage's latency per bucket, in ms; `None` where the bucket had no sample.
pub struct LatencyPanel {
    pub stage: String,
    pub p50: Vec<Option<(f64, f64)>>,
    pub p99: Vec<Option<(f64, f64)>>,
    pub max: Vec<Option<(f64, f64)>>,
}

/// p50, p99 and max of each stage over time, one panel per stage.
pub struct LatencyOverTime {
    pub panels: Vec<LatencyPanel>,
    pub windows: Vec<FaultWindow>,
    pub end_ms: u64,
}

/// The x of a bucket: its middle, in seconds.
fn bucket_s(t: &Timeline, t_ms: u64) -> f64 {
    (t_ms as f64 + t.bucket_ms as f64 / 2.0) / 1e3
}

/// Where the time axis ends: the timeline's duration or its last bucket, whichever is later.
pub fn end_ms(t: &Timeline) -> u64 {
    t.buckets.iter().map(|b| b.t_ms + t.bucket_ms).max().unwrap_or(0).max(t.duration_ms).max(t.bucket_ms)
}

impl LatencyOverTime {
    /// The panels of every stage with samples, known stages first; stages
    /// without a sample anywhere are returned by name to be noted.
    pub fn new(t: &Timeline, windows: Vec<FaultWindow>) -> (LatencyOverTime, Vec<String>) {
        let names = ordered(t.buckets.iter().flat_map(|b| b.stages.keys().cloned()));
        let (mut panels, mut empty) = (Vec::new(), Vec::new());
        for stage in names {
            let at = |f: &dyn Fn(&crate::input::BucketStage) -> u64| -> Vec<Option<(f64, f64)>> {
                t.buckets
                    .iter()
                    .map(|b| {
                        b.stages.get(&stage).filter(|s| s.count > 0).map(|s| (bucket_s(t, b.t_ms), f(s) as f64 / 1e6))
                    })
                    .collect()
            };
            let p50 = at(&|s| s.p50_ns);
            if p50.iter().all(Option::is_none) {
                empty.push(stage);
                continue;
            }
            panels.push(LatencyPanel { p99: at(&|s| s.p99_ns), max: at(&|s| s.max_ns), p50, stage });
        }
        (LatencyOverTime { panels, windows, end_ms: end_ms(t) }, empty)
    }
}

const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(255, 127, 14);
const MAX: RGBColor = RGBColor(110, 110, 110);

impl Figure for LatencyOverTime {
    fn size(&self) -> (u32, u32) {
        let n = u32::try_from(self.panels.len()).expect("few stages").max(1);
        (1200, 70 + 290 * n)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root =
            root.margin(10, 0, 0, 0).titled("Latency over time (per bucket)", super::caption_style()).map_err(err)?;
        let areas = root.split_evenly((self.panels.len().max(1), 1));
        let x_end = self.end_ms as f64 / 1e3;
        for (i, (panel, area)) in self.panels.iter().zip(&areas).enumerate() {
            let all = [&panel.p50, &panel.p99, &panel.max].into_iter().flatten().flatten().map(|p| p.1);
            let Some((y_lo, y_hi)) = super::log_range(all, 2.5) else { continue };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.stage, super::panel_caption_style())
                .margin_left(20)
                .margin_right(20)
                .margin_top(10)
                .x_label_area_size(45)
                .y_label_area_size(80)
                .build_cartesian_2d(0.0..x_end, LogAxis::new(y_lo, y_hi))
                .map_err(err)?;
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc("latency (ms, log)")
                .x_label_formatter(&seconds_label)
                .y_label_formatter(&|y| tick_label(*y))
                .x_labels(20)
                .y_labels(8)
                .axis_desc_style(super::axis_desc_style())
                .label_style(super::tick_style())
                .light_line_style(BLACK.mix(0.04))
                .bold_line_style(BLACK.mix(0.12))
                .draw()
                .map_err(err)?;
            shade_faults(&mut chart, &self.windows, self.end_ms, i == 0)?;
            for (name, points, c, dashed) in
                [("p50", &panel.p50, P50, false), ("p99", &panel.p99, P99, false), ("max", &panel.max, MAX, true)]
            {
                for (k, seg) in segments(points).into_iter().enumerate() {
                    let style = c.stroke_width(if dashed { 1 } else { 2 });
                    // A bucket alone between gaps makes no line: mark it with a dot.
                    if seg.len() == 1 {
                        chart.draw_series(seg.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
                    }
                    let anno = if dashed {
                        chart.draw_series(DashedLineSeries::new(seg, 6, 4, style)).map_err(err)?
                    } else {
                        chart.draw_series(LineSeries::new(seg, style)).map_err(err)?
                    };
                    if k == 0 {
                        anno.label(name).legend(move |(x, y)| legend_line(x, y, c, dashed));
                    }
                }
            }
            super::legend(&mut chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    }
}

/// Events per second over time.
pub struct Throughput {
    /// (label, per-second rate at each bucket's middle).
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub windows: Vec<FaultWindow>,
    pub end_ms: u64,
}

impl Throughput {
    pub fn new(t: &Timeline, windows: Vec<FaultWindow>) -> Throughput {
        let per_s = 1e3 / t.bucket_ms as f64;
        let rate = |f: &dyn Fn(&crate::input::Bucket) -> u64| -> Vec<(f64, f64)> {
            t.buckets.iter().map(|b| (bucket_s(t, b.t_ms), f(b) as f64 * per_s)).collect()
        };
        let series = vec![
            ("submitted".to_string(), rate(&|b| b.submitted)),
            ("accepted".to_string(), rate(&|b| b.accepted)),
            ("fills".to_string(), rate(&|b| b.fills)),
            ("rejected + failed + timed out".to_string(), rate(&|b| b.rejected + b.failed + b.timed_out)),
        ];
        Throughput { series, windows, end_ms: end_ms(t) }
    }
}

impl Throughput {
    /// Accepted orders per second only, from `summary.json`, for a run without a timeline.
    pub fn from_accepted_per_s(accepted_per_s: &[u64], windows: Vec<FaultWindow>) -> Throughput {
        let points = accepted_per_s.iter().enumerate().map(|(i, n)| (i as f64 + 0.5, *n as f64)).collect();
        let end_ms = u64::try_from(accepted_per_s.len()).expect("seconds fit") * 1000;
        Throughput { series: vec![("accepted".to_string(), points)], windows, end_ms }
    }
}

impl Figure for Throughput {
    fn size(&self) -> (u32, u32) {
        (1200, 620)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let y_max = self.series.iter().flat_map(|s| s.1.iter().map(|p| p.1)).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption("Throughput", super::caption_style())
            .margin(20)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..self.end_ms as f64 / 1e3, 0.0..y_max * 1.35)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("events per second")
            .x_label_formatter(&seconds_label)
            .y_label_formatter(&|y| tick_label(*y))
            .x_labels(20)
            .y_labels(10)
            .axis_desc_style(super::axis_desc_style())
            .label_style(super::tick_style())
            .light_line_style(BLACK.mix(0.04))
            .bold_line_style(BLACK.mix(0.12))
            .draw()
            .map_err(err)?;
        shade_faults(&mut chart, &self.windows, self.end_ms, true)?;
        for (i, (label, points)) in self.series.iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| legend_line(x, y, c, false));
        }
        super::legend(&mut chart, SeriesLabelPosition::UpperRight)
    }
}
