//! `timeline.json`: what happened when. Per time bucket, the outcome counts
//! and each stage's latency quantiles; every trade per symbol; the fault
//! windows with labels. The report's plots over time are drawn from it.

use std::collections::BTreeMap;

use fafnir_platform::domain::Instrument;
use fafnir_platform::proto::events::{engine_event, EngineEvent};
use fafnir_sim::faults::{Action, Fault};
use serde::{Deserialize, Serialize};

use crate::driver::{Recorder, SlotCounts, SLOT_MS};

/// Latency quantiles of one stage within one bucket, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketStage {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// One bucket of the timeline: `t_ms` is its start, since the load started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub t_ms: u64,
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub fills: u64,
    /// Only stages with samples in this bucket.
    pub stages: BTreeMap<String, BucketStage>,
}

/// One trade, as the engine published it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TradePoint {
    pub t_ms: i64,
    pub price_cents: i64,
    pub qty: i64,
}

/// A fault's active window, labelled for a plot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub label: String,
    pub kind: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// `timeline.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub bucket_ms: u64,
    pub duration_ms: u64,
    pub buckets: Vec<Bucket>,
    pub trades: BTreeMap<String, Vec<TradePoint>>,
    pub fault_windows: Vec<FaultWindow>,
}

/// A bucket width giving about 50 buckets over `duration_ms`, a multiple of
/// the recorder's slot.
pub fn bucket_ms(duration_ms: u64) -> u64 {
    (duration_ms / 50).div_ceil(SLOT_MS).max(1) * SLOT_MS
}

impl Timeline {
    /// Builds the timeline of a run of `duration_ms` from what the driver
    /// recorded, the TRADES stream and the fault schedule.
    pub fn build(
        rec: &Recorder,
        trades_stream: &[(u64, EngineEvent)],
        instruments: &[Instrument],
        faults: &[Fault],
        duration_ms: u64,
    ) -> Timeline {
        let width = bucket_ms(duration_ms);
        let last_sample = rec.samples.values().flatten().map(|(t, _)| *t).max().unwrap_or(0);
        let last_slot = rec.slots.keys().last().map_or(0, |s| s * SLOT_MS);
        let end = duration_ms.max(last_sample + 1).max(last_slot + 1);
        let mut buckets: Vec<Bucket> =
            (0..end.div_ceil(width)).map(|i| Bucket { t_ms: i * width, ..Bucket::default() }).collect();
        for (slot, c) in &rec.slots {
            let b = &mut buckets[(slot * SLOT_MS / width) as usize];
            let SlotCounts { submitted, accepted, rejected, failed, timed_out, fills } = c;
            b.submitted += submitted;
            b.accepted += accepted;
            b.rejected += rejected;
            b.failed += failed;
            b.timed_out += timed_out;
            b.fills += fills;
        }
        for (stage, samples) in &rec.samples {
            let mut per_bucket: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
            for (t, ns) in samples {
                per_bucket.entry((t / width) as usize).or_default().push(*ns);
            }
            for (i, mut values) in per_bucket {
                values.sort_unstable();
                let at = |q: usize| values[(values.len() * q / 100).min(values.len() - 1)];
                let s = BucketStage {
                    count: values.len() as u64,
                    p50_ns: at(50),
                    p99_ns: at(99),
                    max_ns: *values.last().expect("non-empty"),
                };
                buckets[i].stages.insert(stage.to_string(), s);
            }
        }
        Timeline {
            bucket_ms: width,
            duration_ms,
            buckets,
            trades: trades(rec.t0_clock_ms, trades_stream, instruments),
            fault_windows: faults.iter().map(|f| window(f, duration_ms)).collect(),
        }
    }
}

fn trades(
    t0_clock_ms: i64,
    stream: &[(u64, EngineEvent)],
    instruments: &[Instrument],
) -> BTreeMap<String, Vec<TradePoint>> {
    let mut out: BTreeMap<String, Vec<TradePoint>> =
        instruments.iter().map(|i| (i.symbol.clone(), Vec::new())).collect();
    for (_, e) in stream {
        let Some(engine_event::Kind::Fill(f)) = &e.kind else { continue };
        let Some(inst) = instruments.iter().find(|i| i.symbol == e.symbol) else { continue };
        out.entry(e.symbol.clone()).or_default().push(TradePoint {
            t_ms: e.ts_ms - t0_clock_ms,
            price_cents: f.price_ticks * inst.tick_cents,
            qty: f.qty,
        });
    }
    out
}

/// The label and window of one fault ("kill engine-0", "partition engine-0 -> broker").
pub fn window(f: &Fault, duration_ms: u64) -> FaultWindow {
    let target = f.target.as_deref().unwrap_or("");
    let label = match f.action {
        Action::Isolate => format!("isolate {target}"),
        Action::Partition => {
            let arrow = if f.one_way { "->" } else { "<->" };
            format!("partition {target} {arrow} {}", f.peer.as_deref().unwrap_or(""))
        }
        Action::Kill => format!("kill {target}"),
        Action::Pause => format!("pause {target}"),
        Action::Slow => format!("slow {target} x{}", f.factor.unwrap_or(1)),
        Action::PacketLoss => format!("loss {:.1}%", f64::from(f.rate_ppm.unwrap_or(0)) / 1e4),
        Action::LatencySpike => {
            let [lo, hi] = f.latency_ms.unwrap_or([0, 0]);
            format!("latency {lo}-{hi} ms")
        }
    };
    let kind = serde_json::to_value(f.action).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let end_ms = f.duration_ms.map_or(duration_ms.max(f.at_ms), |d| f.at_ms + d);
    FaultWindow { label, kind, start_ms: f.at_ms, end_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_labelled_and_end_with_the_fault_or_the_run() {
        let mut p = Fault::new(500, Action::Partition, Some("engine-0")).lasting(1_000);
        p.peer = Some("broker".into());
        p.one_way = true;
        let w = window(&p, 10_000);
        assert_eq!(
            (w.label.as_str(), w.kind.as_str(), w.start_ms, w.end_ms),
            ("partition engine-0 -> broker", "partition", 500, 1_500)
        );
        let w = window(&Fault::new(2_000, Action::Kill, Some("broker")), 10_000);
        assert_eq!((w.label.as_str(), w.end_ms), ("kill broker", 10_000));
    }

    #[test]
    fn buckets_cover_the_run_and_hold_each_sample_once() {
        assert_eq!(bucket_ms(10_000), 200);
        assert_eq!(bucket_ms(1_000), 100);
        let mut rec = Recorder::new(tokio::time::Instant::now());
        rec.samples.get_mut("submit_to_ack").unwrap().extend([(10, 5), (150, 7), (250, 9), (260, 1)]);
        rec.slots.insert(2, SlotCounts { submitted: 3, accepted: 2, ..SlotCounts::default() });
        let t = Timeline::build(&rec, &[], &[], &[], 1_000);
        assert_eq!(t.buckets.len(), 10);
        assert_eq!(t.buckets[2].submitted, 3);
        let total: u64 = t.buckets.iter().filter_map(|b| b.stages.get("submit_to_ack")).map(|s| s.count).sum();
        assert_eq!(total, 4);
        assert_eq!(t.buckets[2].stages["submit_to_ack"], BucketStage { count: 2, p50_ns: 9, p99_ns: 9, max_ns: 9 });
    }
}
