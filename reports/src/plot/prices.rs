//! Trade prices and volume per symbol over time, one panel per symbol.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::axis::tick_label;
use super::spectrum::legend_line;
use super::{err, seconds_label, segments, shade_faults, Figure};
use crate::input::{FaultWindow, Timeline};

/// More symbols than this are left out of the plot (and noted).
pub const SYMBOLS_MAX: usize = 6;

/// One symbol's trades.
pub struct SymbolPanel {
    pub symbol: String,
    /// (time s, price in currency units); `None` breaks the line where no trade happened for a while.
    pub prices: Vec<Option<(f64, f64)>>,
    /// (bucket start s, bucket end s, quantity traded).
    pub volume: Vec<(f64, f64, i64)>,
}

/// Prices and volume of the first [`SYMBOLS_MAX`] symbols with trades.
pub struct Prices {
    pub panels: Vec<SymbolPanel>,
    pub windows: Vec<FaultWindow>,
    /// The time axis: from the first trade if it came before the load (then below 0), to the end.
    pub start_ms: i64,
    pub end_ms: u64,
}

impl Prices {
    /// The panels, and the symbols left out.
    pub fn new(t: &Timeline, windows: Vec<FaultWindow>) -> (Prices, Vec<String>) {
        let traded: Vec<(&String, &Vec<crate::input::Trade>)> =
            t.trades.iter().filter(|(_, v)| !v.is_empty()).collect();
        let left_out = traded.iter().skip(SYMBOLS_MAX).map(|(s, _)| (*s).clone()).collect();
        let mut end_ms = super::timeline::end_ms(t);
        let mut start_ms = 0i64;
        let bucket_ms = i64::try_from(t.bucket_ms).expect("bucket_ms fits i64");
        let panels = traded
            .into_iter()
            .take(SYMBOLS_MAX)
            .map(|(symbol, trades)| {
                let mut trades = trades.clone();
                trades.sort_by_key(|tr| tr.t_ms);
                start_ms = start_ms.min(trades.first().map_or(0, |tr| tr.t_ms));
                end_ms = end_ms.max(trades.last().map_or(0, |tr| u64::try_from(tr.t_ms).unwrap_or(0)));
                let mut prices = Vec::new();
                for (i, tr) in trades.iter().enumerate() {
                    // A pause of two buckets or more is a gap, not a straight line from the last trade.
                    if i > 0 && tr.t_ms - trades[i - 1].t_ms >= 2 * bucket_ms {
                        prices.push(None);
                    }
                    prices.push(Some((tr.t_ms as f64 / 1e3, tr.price_cents as f64 / 100.0)));
                }
                let mut by_bucket = std::collections::BTreeMap::<i64, i64>::new();
                for tr in &trades {
                    *by_bucket.entry(tr.t_ms.div_euclid(bucket_ms)).or_default() += tr.qty;
                }
                let volume = by_bucket
                    .into_iter()
                    .map(|(k, qty)| ((k * bucket_ms) as f64 / 1e3, ((k + 1) * bucket_ms) as f64 / 1e3, qty))
                    .collect();
                SymbolPanel { symbol: symbol.clone(), prices, volume }
            })
            .collect();
        (Prices { panels, windows, start_ms, end_ms }, left_out)
    }
}

const PRICE: RGBColor = RGBColor(31, 119, 180);
const VOLUME: RGBColor = RGBColor(160, 160, 160);

impl Figure for Prices {
    fn size(&self) -> (u32, u32) {
        let n = u32::try_from(self.panels.len()).expect("few symbols").max(1);
        (1200, 60 + 300 * n)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let root = root.margin(10, 0, 0, 0).titled("Trade prices and volume", super::caption_style()).map_err(err)?;
        let areas = root.split_evenly((self.panels.len().max(1), 1));
        let (x_start, x_end) = (self.start_ms as f64 / 1e3, self.end_ms as f64 / 1e3);
        for (i, (panel, area)) in self.panels.iter().zip(&areas).enumerate() {
            let lo = panel.prices.iter().flatten().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = panel.prices.iter().flatten().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.002).max(0.01);
            let vol_max = panel.volume.iter().map(|v| v.2).max().unwrap_or(1).max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.symbol, super::panel_caption_style())
                .margin_left(20)
                .margin_right(20)
                .margin_top(10)
                .x_label_area_size(45)
                .y_label_area_size(90)
                .right_y_label_area_size(80)
                .build_cartesian_2d(x_start..x_end, (lo - pad)..(hi + pad * 2.5))
                .map_err(err)?
                // Volume bars use the lower part of the panel, under the price line.
                .set_secondary_coord(x_start..x_end, 0.0..vol_max * 2.2);
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc("price ($)")
                .x_label_formatter(&seconds_label)
                .y_label_formatter(&|y| format!("{y:.2}"))
                .x_labels(20)
                .y_labels(6)
                .axis_desc_style(super::axis_desc_style())
                .label_style(super::tick_style())
                .light_line_style(BLACK.mix(0.04))
                .bold_line_style(BLACK.mix(0.12))
                .draw()
                .map_err(err)?;
            chart
                .configure_secondary_axes()
                .y_desc("volume (qty per bucket)")
                .y_label_formatter(&|y| tick_label(*y))
                .y_labels(5)
                .axis_desc_style(super::axis_desc_style())
                .label_style(super::tick_style())
                .draw()
                .map_err(err)?;
            shade_faults(&mut *chart, &self.windows, self.end_ms, i == 0)?;
            // A small gap between the bars so that each bucket reads as one.
            let gap = ((x_end - x_start) / 400.0).min(0.02);
            chart
                .draw_secondary_series(panel.volume.iter().map(|(x0, x1, q)| {
                    Rectangle::new([(*x0 + gap, 0.0), (*x1 - gap, *q as f64)], VOLUME.mix(0.55).filled())
                }))
                .map_err(err)?
                .label("volume")
                .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], VOLUME.mix(0.55).filled()));
            for (k, seg) in segments(&panel.prices).into_iter().enumerate() {
                // A lone trade makes no line: mark it with a dot.
                if seg.len() == 1 {
                    chart.draw_series(seg.iter().map(|p| Circle::new(*p, 3, PRICE.filled()))).map_err(err)?;
                }
                let anno = chart.draw_series(LineSeries::new(seg, PRICE.stroke_width(2))).map_err(err)?;
                if k == 0 {
                    anno.label("trade price").legend(|(x, y)| legend_line(x, y, PRICE, false));
                }
            }
            super::legend(&mut *chart, SeriesLabelPosition::UpperRight)?;
        }
        Ok(())
    }
}
