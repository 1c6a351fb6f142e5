//! `timeline.json`: what happened when. Per time bucket, the outcome counts
//! and each stage's latency quantiles; every trade per symbol. The report's
//! plots over time are drawn from it (with the fault windows of summary.json).

use std::collections::BTreeMap;

use fafnir_platform::domain::Instrument;
use fafnir_platform::proto::events::{engine_event, EngineEvent};
pub use fafnir_reports::{Bucket, BucketStage, Timeline, Trade};
use hdrhistogram::Histogram;

use crate::driver::{Recorder, SlotCounts, SLOT_MS};

/// A bucket width giving about 50 buckets over `duration_ms`, a multiple of
/// the recorder's slot.
pub fn bucket_ms(duration_ms: u64) -> u64 {
    (duration_ms / 50).div_ceil(SLOT_MS).max(1) * SLOT_MS
}

/// Builds the timeline of a run of `duration_ms` from what the driver
/// recorded, the TRADES stream and the fault schedule.
pub fn build(
    rec: &Recorder,
    trades_stream: &[(u64, EngineEvent)],
    instruments: &[Instrument],
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
            let at = |q: u64| values[rank(values.len() as u64, q) as usize];
            let s = BucketStage {
                count: values.len() as u64,
                p50_ns: at(50),
                p99_ns: at(99),
                max_ns: *values.last().expect("non-empty"),
            };
            buckets[i].stages.insert(stage.to_string(), s);
        }
    }
    Timeline { bucket_ms: width, duration_ms, buckets, trades: trades(rec.t0_clock_ms, trades_stream, instruments) }
}

/// The place (from 0) of a bucket's `q` percentile among its `count` sorted values.
fn rank(count: u64, q: u64) -> u64 {
    (count * q / 100).min(count.saturating_sub(1))
}

/// Each stage's samples as one histogram per timeline bucket `width` ms
/// wide, by bucket number: what a worker of a distributed run hands over
/// in place of its samples (a few hundred bytes a bucket, however many
/// samples it holds).
pub fn bucket_histograms(rec: &Recorder, width: u64) -> BTreeMap<&'static str, BTreeMap<u64, Histogram<u64>>> {
    assert!(width > 0, "a bucket is at least 1 ms wide");
    let mut out: BTreeMap<&'static str, BTreeMap<u64, Histogram<u64>>> = BTreeMap::new();
    for (stage, samples) in &rec.samples {
        for (t, ns) in samples {
            let h = out.entry(stage).or_default().entry(t / width).or_insert_with(crate::driver::latency_histogram);
            h.saturating_record(*ns);
        }
    }
    out
}

/// Sets each bucket's figures of `stage` from its histogram (by bucket
/// number, as [`bucket_histograms`] makes them), adding buckets past the
/// end if needed: the timeline of a distributed run, whose samples stayed on
/// its workers. The quantiles are taken at the same ranks as from samples;
/// each value is HdrHistogram's highest equivalent of the sample (within
/// 0.1 % of it).
pub fn set_stage_from_histograms(t: &mut Timeline, stage: &str, per_bucket: &BTreeMap<u64, Histogram<u64>>) {
    for (&i, h) in per_bucket.iter().filter(|(_, h)| !h.is_empty()) {
        while t.buckets.len() as u64 <= i {
            let t_ms = t.buckets.len() as u64 * t.bucket_ms;
            t.buckets.push(Bucket { t_ms, ..Bucket::default() });
        }
        let at = |q: u64| value_at_rank(h, rank(h.len(), q));
        let s = BucketStage { count: h.len(), p50_ns: at(50), p99_ns: at(99), max_ns: h.max() };
        t.buckets[i as usize].stages.insert(stage.to_string(), s);
    }
}

/// The value at place `rank` (from 0) of the histogram's values in order.
fn value_at_rank(h: &Histogram<u64>, rank: u64) -> u64 {
    let mut seen = 0;
    for v in h.iter_recorded() {
        seen += v.count_at_value();
        if seen > rank {
            return h.highest_equivalent(v.value_iterated_to());
        }
    }
    h.max()
}

fn trades(t0_clock_ms: i64, stream: &[(u64, EngineEvent)], instruments: &[Instrument]) -> BTreeMap<String, Vec<Trade>> {
    let mut out: BTreeMap<String, Vec<Trade>> = instruments.iter().map(|i| (i.symbol.clone(), Vec::new())).collect();
    for (_, e) in stream {
        let Some(engine_event::Kind::Fill(f)) = &e.kind else { continue };
        let Some(inst) = instruments.iter().find(|i| i.symbol == e.symbol) else { continue };
        out.entry(e.symbol.clone()).or_default().push(Trade {
            t_ms: e.ts_ms - t0_clock_ms,
            price_cents: f.price_ticks * inst.tick_cents,
            qty: f.qty,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_run_and_hold_each_sample_once() {
        assert_eq!(bucket_ms(10_000), 200);
        assert_eq!(bucket_ms(1_000), 100);
        let mut rec = Recorder::new(fafnir_platform::time::Instant::now());
        rec.samples.get_mut("submit_to_ack").unwrap().extend([(10, 5), (150, 7), (250, 9), (260, 1)]);
        rec.slots.insert(2, SlotCounts { submitted: 3, accepted: 2, ..SlotCounts::default() });
        let t = build(&rec, &[], &[], 1_000);
        assert_eq!(t.buckets.len(), 10);
        assert_eq!(t.buckets[2].submitted, 3);
        let total: u64 = t.buckets.iter().filter_map(|b| b.stages.get("submit_to_ack")).map(|s| s.count).sum();
        assert_eq!(total, 4);
        assert_eq!(t.buckets[2].stages["submit_to_ack"], BucketStage { count: 2, p50_ns: 9, p99_ns: 9, max_ns: 9 });
    }

    /// A distributed run's timeline, built from per-bucket histograms, shows
    /// the figures the samples would have given (exactly, for values
    /// HdrHistogram holds exactly), also in a bucket past the end.
    #[test]
    fn bucket_histograms_give_the_figures_of_the_samples() {
        let mut rec = Recorder::new(fafnir_platform::time::Instant::now());
        let samples: Vec<(u64, u64)> = (0..500u64).map(|i| (i * 7 % 1_300, 1 + i * 37 % 2_000)).collect();
        rec.samples.get_mut("submit_to_ack").unwrap().extend(samples);
        let from_samples = build(&rec, &[], &[], 1_000);
        let per_bucket = bucket_histograms(&rec, from_samples.bucket_ms);
        rec.samples.values_mut().for_each(Vec::clear);
        let mut from_histograms = build(&rec, &[], &[], 1_000);
        assert!(from_histograms.buckets.iter().all(|b| b.stages.is_empty()));
        set_stage_from_histograms(&mut from_histograms, "submit_to_ack", &per_bucket["submit_to_ack"]);
        assert_eq!(from_samples.buckets.len(), 13, "samples until 1.3 s");
        assert_eq!(from_histograms.buckets, from_samples.buckets);
    }
}
