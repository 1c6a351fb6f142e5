//! A logarithmic axis whose ticks a person can read: 1, 2, 5, 10, 20, 50...
//! (plotters' own log axis labels only the powers of ten), or only the powers
//! of ten for the "nines" axis of a percentile spectrum.

use std::ops::Range;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};

/// A log-scale axis over `lo..hi` (both above 0).
#[derive(Clone, Debug)]
pub struct LogAxis {
    lo: f64,
    hi: f64,
    /// The mantissas of the labelled ticks in each decade.
    steps: &'static [f64],
}

impl LogAxis {
    /// Ticks at 1, 2 and 5 of each decade (fewer when they would not fit).
    pub fn new(lo: f64, hi: f64) -> LogAxis {
        LogAxis::with_steps(lo, hi, &[1.0, 2.0, 5.0])
    }

    /// Ticks at the powers of ten only.
    pub fn decades(lo: f64, hi: f64) -> LogAxis {
        LogAxis::with_steps(lo, hi, &[1.0])
    }

    fn with_steps(lo: f64, hi: f64, steps: &'static [f64]) -> LogAxis {
        assert!(lo > 0.0 && lo.is_finite(), "log axis starts above 0: {lo}");
        assert!(hi > lo && hi.is_finite(), "log axis ends above its start: {lo}..{hi}");
        LogAxis { lo, hi, steps }
    }

    /// Every `m * 10^k` within the range, `m` from `mantissas`.
    fn ticks(&self, mantissas: &[f64]) -> Vec<f64> {
        let first = self.lo.log10().floor() as i32;
        let last = self.hi.log10().ceil() as i32;
        let mut out = Vec::new();
        for k in first..=last {
            for m in mantissas {
                let v = m * 10f64.powi(k);
                // A relative tolerance so that 10^k computed as 9.999..e(k-1) still counts.
                if v >= self.lo * (1.0 - 1e-9) && v <= self.hi * (1.0 + 1e-9) {
                    out.push(v);
                }
            }
        }
        out
    }
}

impl Ranged for LogAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        // Zero and below have no place on a log axis: pin them far below the range (clipped).
        let v = value.max(self.lo * 1e-6);
        let f = (v.log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10());
        limit.0 + (f * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        let max = hint.max_num_points().max(1);
        if hint.weight().allow_light_points() {
            // The light grid: every integer mantissa, if it is not too dense.
            let all = self.ticks(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
            return if all.len() <= max { all } else { Vec::new() };
        }
        let mut ticks = self.ticks(self.steps);
        if ticks.len() > max {
            ticks = self.ticks(&[1.0]);
        }
        if ticks.len() > max {
            let every = ticks.len().div_ceil(max);
            ticks = ticks.into_iter().step_by(every).collect();
        }
        ticks
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

impl ValueFormatter<f64> for LogAxis {
    fn format(value: &f64) -> String {
        tick_label(*value)
    }
}

/// A tick label: "0.5", "2", "1000", without trailing zeros.
pub fn tick_label(v: f64) -> String {
    if v >= 100.0 {
        return format!("{v:.0}");
    }
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The percentile at `x = 1/(1-q)`: 1 -> "0%", 10 -> "90%", 1000 -> "99.9%".
pub fn nines_label(x: f64) -> String {
    if x < 1.5 {
        return "0%".to_string();
    }
    let decimals = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{:.*}%", decimals, 100.0 * (1.0 - 1.0 / x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plotters::coord::ranged1d::BoldPoints;

    #[test]
    fn ticks_are_one_two_five() {
        let axis = LogAxis::new(3.0, 600.0);
        assert_eq!(axis.key_points(BoldPoints(20)), vec![5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]);
        assert_eq!(axis.key_points(BoldPoints(3)), vec![10.0, 100.0]);
    }

    #[test]
    fn map_is_logarithmic() {
        let axis = LogAxis::decades(1.0, 1000.0);
        assert_eq!(axis.map(&1.0, (0, 300)), 0);
        assert_eq!(axis.map(&10.0, (0, 300)), 100);
        assert_eq!(axis.map(&1000.0, (0, 300)), 300);
    }

    #[test]
    fn labels() {
        assert_eq!(nines_label(1.0), "0%");
        assert_eq!(nines_label(10.0), "90%");
        assert_eq!(nines_label(100.0), "99%");
        assert_eq!(nines_label(1e4), "99.99%");
        assert_eq!(tick_label(0.5), "0.5");
        assert_eq!(tick_label(20.0), "20");
        assert_eq!(tick_label(2000.0), "2000");
    }
}
