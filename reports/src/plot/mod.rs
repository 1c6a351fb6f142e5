//! The plots. Each is a [`Figure`] drawn twice, once as PNG and once as SVG,
//! by [`save`]. Text is drawn with DejaVu Sans embedded in the binary, so no
//! system font or font library is needed.

pub mod axis;
pub mod capacity;
pub mod metrics;
pub mod prices;
pub mod spectrum;
pub mod timeline;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::ranged1d::Ranged;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::input::{stage_rank, FaultWindow};
use crate::ReportError;

/// The family every text style names.
pub const FONT: &str = "sans-serif";

/// A plot that can draw itself on any plotters backend.
pub trait Figure {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws `figure` into `dir/name.png` and `dir/name.svg`; returns both paths.
pub fn save(dir: &Path, name: &str, figure: &impl Figure) -> Result<Vec<PathBuf>, ReportError> {
    register_fonts();
    let png = dir.join(format!("{name}.png"));
    let plot_err = |path: &Path, reason: String| ReportError::Plot { path: path.to_path_buf(), reason };
    {
        let root = BitMapBackend::new(&png, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&png, e.to_string()))?;
        figure.draw(&root).map_err(|e| plot_err(&png, e))?;
        root.present().map_err(|e| plot_err(&png, e.to_string()))?;
    }
    let svg = dir.join(format!("{name}.svg"));
    {
        let root = SVGBackend::new(&svg, figure.size()).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(&svg, e.to_string()))?;
        figure.draw(&root).map_err(|e| plot_err(&svg, e))?;
        root.present().map_err(|e| plot_err(&svg, e.to_string()))?;
    }
    Ok(vec![png, svg])
}

/// Registers the embedded DejaVu Sans as [`FONT`], once per process.
fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let normal = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let bold = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
        assert!(normal.is_ok() && bold.is_ok(), "the embedded DejaVu Sans is a valid font");
    });
}

/// Turns a plotters error into the message carried by [`ReportError::Plot`].
pub fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Distinct colours (matplotlib's tab10), the first six for the known stages in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The `i`th colour of the palette, wrapping.
pub fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A stage's colour, the same in every plot: by its place in the known order,
/// unknown stages after them by their position among the stages drawn.
pub fn stage_colour(stage: &str, position: usize) -> RGBColor {
    let rank = stage_rank(stage);
    if rank < crate::input::STAGE_ORDER.len() {
        colour(rank)
    } else {
        colour(crate::input::STAGE_ORDER.len() + position)
    }
}

/// Text styles, scaled to the figure.
pub fn caption_style() -> TextStyle<'static> {
    (FONT, 26).into_font().style(FontStyle::Bold).into()
}

pub fn panel_caption_style() -> TextStyle<'static> {
    (FONT, 19).into_font().style(FontStyle::Bold).into()
}

pub fn axis_desc_style() -> TextStyle<'static> {
    (FONT, 17).into_font().into()
}

pub fn tick_style() -> TextStyle<'static> {
    (FONT, 15).into_font().into()
}

pub fn legend_style() -> TextStyle<'static> {
    (FONT, 15).into_font().into()
}

/// The shading of a fault kind, and its label colour.
fn fault_colour(kind: &str) -> RGBColor {
    match kind {
        "kill" => RGBColor(214, 39, 40),
        "isolate" | "partition" => RGBColor(255, 127, 14),
        "pause" => RGBColor(148, 103, 189),
        "slow" => RGBColor(140, 86, 75),
        _ => RGBColor(127, 127, 127),
    }
}

/// Shades each fault window on a chart whose x axis is seconds, and, when
/// `labelled`, writes its label at the top, one row per window so that
/// overlapping windows stay readable.
pub fn shade_faults<DB: DrawingBackend, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, Y>>,
    windows: &[FaultWindow],
    end_ms: u64,
    labelled: bool,
) -> Result<(), String> {
    let Range { start: y_lo, end: y_hi } = chart.y_range();
    for (i, w) in windows.iter().enumerate() {
        let c = fault_colour(&w.kind);
        let x0 = w.start_ms as f64 / 1e3;
        let x1 = w.end_ms.unwrap_or(end_ms).max(w.start_ms) as f64 / 1e3;
        chart
            .draw_series(std::iter::once(Rectangle::new([(x0, y_lo), (x1, y_hi)], c.mix(0.13).filled())))
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(x0, y_lo), (x0, y_hi)], c.mix(0.6).stroke_width(1))))
            .map_err(err)?;
        if labelled {
            let style = TextStyle::from((FONT, 14).into_font()).color(&c);
            let row = i32::try_from(i % 4).expect("small");
            let label = EmptyElement::at((x0, y_hi)) + Text::new(w.label.clone(), (4, 4 + 17 * row), style);
            chart.draw_series(std::iter::once(label)).map_err(err)?;
        }
    }
    Ok(())
}

/// A legend box in the upper right, on white so it stays readable over the lines.
pub fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .label_font(legend_style())
        .draw()
        .map_err(err)
}

/// Seconds on a time axis: "0", "2.5", "10".
pub fn seconds_label(v: &f64) -> String {
    axis::tick_label(*v)
}

/// A line that breaks where a value is missing: one `LineSeries` per run of points.
pub fn segments(points: &[Option<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for p in points {
        match p {
            Some(p) => out.last_mut().expect("never empty").push(*p),
            None if out.last().is_some_and(|s| !s.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The range of a log axis holding every value in `values` (ms), with headroom on top
/// for the legend and the fault labels; `None` when there is no positive value.
pub fn log_range(values: impl IntoIterator<Item = f64>, headroom: f64) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.into_iter().filter(|v| *v > 0.0 && v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi <= 0.0 {
        return None;
    }
    // At least a decade and a bit, so a flat line is not stretched into noise.
    let lo = (lo / 1.5).min(hi / 10.0);
    Some((lo, hi * headroom))
}
