//! A realistic run directory, made up deterministically from a seed: ten
//! seconds of load in 500 ms buckets, an engine killed from 2.0 s to 3.5 s
//! (acks stall, then a backlog drains), a one-way partition from 6 s to 7 s,
//! two symbols trading, and one stage without samples.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// What to make.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    /// Every latency is multiplied by this (to make a "B" run slower than "A").
    pub latency_factor: f64,
    pub with_timeline: bool,
    pub with_hdr: bool,
    /// Write metrics.jsonl (consumer lag and in flight rising while the engine is killed).
    pub with_metrics: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { seed: 42, latency_factor: 1.0, with_timeline: true, with_hdr: true, with_metrics: true }
    }
}

pub const DURATION_MS: u64 = 10_000;
pub const BUCKET_MS: u64 = 500;
const KILL: (u64, u64) = (2_000, 3_500);
const PARTITION: (u64, u64) = (6_000, 7_000);

/// (stage, median ms, samples per submission in percent). fill_to_settled has none.
const STAGES: [(&str, f64, u64); 6] = [
    ("submit_to_ack", 4.0, 100),
    ("submit_to_first_fill", 9.0, 45),
    ("submit_to_final", 14.0, 60),
    ("cancel_to_ack", 5.0, 20),
    ("fill_to_settled", 3.0, 0),
    ("md_fanout", 1.5, 150),
];

/// splitmix64: small, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms).
    fn gauss(&mut self) -> f64 {
        (0..6).map(|_| self.unit()).sum::<f64>() - 3.0
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("bounds")
}

/// One latency sample in ns for a stage at time `t_ms`.
fn sample_ns(rng: &mut Rng, median_ms: f64, t_ms: u64, factor: f64) -> u64 {
    let mut ms = median_ms * (0.45 * rng.gauss()).exp() * factor;
    if (KILL.0..KILL.1).contains(&t_ms) {
        // Requests wait for the restart: up to the remaining kill time.
        ms += (KILL.1 - t_ms) as f64 * rng.unit();
    } else if (KILL.1..KILL.1 + 1_000).contains(&t_ms) {
        ms *= 3.0; // the backlog drains
    } else if (PARTITION.0..PARTITION.1).contains(&t_ms) && rng.unit() < 0.3 {
        ms += 200.0 * rng.unit();
    }
    if rng.unit() < 0.002 {
        ms *= 8.0; // a rare slow one: the tail
    }
    (ms * 1e6) as u64
}

/// Writes `summary.json`, `<stage>.hdr` and `timeline.json` into `dir`.
pub fn write_run(dir: &Path, o: &Options) {
    std::fs::create_dir_all(dir).expect("create run dir");
    let mut rng = Rng(o.seed);
    let mut whole: BTreeMap<&str, Histogram<u64>> = STAGES.iter().map(|s| (s.0, new_histogram())).collect();
    let mut buckets = Vec::new();
    let mut totals = [0u64; 6];
    let mut accepted_per_s = vec![0u64; usize::try_from(DURATION_MS / 1000).expect("small")];
    for b in 0..DURATION_MS / BUCKET_MS {
        let t_ms = b * BUCKET_MS;
        let killed = (KILL.0..KILL.1).contains(&t_ms);
        let submitted = 180 + rng.next() % 40;
        let accepted = if killed { submitted / 10 } else { submitted - rng.next() % 4 };
        let rejected = if killed { rng.next() % 3 } else { submitted - accepted };
        let failed = submitted - accepted - rejected;
        let fills = accepted * 45 / 100;
        let mut stages = serde_json::Map::new();
        for (name, median_ms, per_100) in STAGES {
            let n = accepted * per_100 / 100;
            if n == 0 {
                continue;
            }
            let mut h = new_histogram();
            for _ in 0..n {
                let t = t_ms + rng.next() % BUCKET_MS;
                h.record(sample_ns(&mut rng, median_ms, t, o.latency_factor)).expect("in bounds");
            }
            whole.get_mut(name).expect("known stage").add(&h).expect("same bounds");
            stages.insert(
                name.to_string(),
                json!({"count": h.len(), "p50_ns": h.value_at_quantile(0.5), "p99_ns": h.value_at_quantile(0.99), "max_ns": h.max()}),
            );
        }
        accepted_per_s[usize::try_from(t_ms / 1000).expect("small")] += accepted;
        for (i, v) in [submitted, accepted, rejected, failed, 0, fills].into_iter().enumerate() {
            totals[i] += v;
        }
        buckets.push(json!({"t_ms": t_ms, "submitted": submitted, "accepted": accepted, "rejected": rejected,
            "failed": failed, "timed_out": 0, "fills": fills, "stages": stages}));
    }
    if o.with_hdr {
        for (name, h) in &whole {
            let mut raw = Vec::new();
            V2Serializer::new().serialize(h, &mut raw).expect("serialize");
            std::fs::write(dir.join(format!("{name}.hdr")), raw).expect("write hdr");
        }
    }
    if o.with_metrics {
        write_metrics(dir);
    }
    if o.with_timeline {
        let timeline = json!({
            "bucket_ms": BUCKET_MS,
            "duration_ms": DURATION_MS,
            "buckets": buckets,
            "trades": {"ACME": trades(&mut rng, 10_000, 12), "BOLT": trades(&mut rng, 4_250, 31)},
        });
        write_json(&dir.join("timeline.json"), &timeline);
    }
    write_json(&dir.join("summary.json"), &summary(o, &whole, totals, &accepted_per_s));
}

/// Trades every `every_ms` or so, the price a random walk from `start_cents`.
fn trades(rng: &mut Rng, start_cents: i64, every_ms: u64) -> Value {
    let (mut t_ms, mut price) = (0u64, start_cents);
    let mut out = Vec::new();
    while t_ms < DURATION_MS {
        t_ms += 1 + rng.next() % (2 * every_ms);
        if (KILL.0..KILL.1).contains(&t_ms) {
            continue; // the engine is down: no trades
        }
        price += (rng.next() % 7) as i64 - 3;
        out.push(json!({"t_ms": t_ms, "price_cents": price, "qty": 1 + rng.next() % 20}));
    }
    Value::Array(out)
}

fn summary(o: &Options, whole: &BTreeMap<&str, Histogram<u64>>, totals: [u64; 6], accepted_per_s: &[u64]) -> Value {
    let stages: serde_json::Map<String, Value> = whole
        .iter()
        .map(|(name, h)| {
            let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
            let v = json!({"count": h.len(), "p50_ns": q(0.5), "p90_ns": q(0.9), "p99_ns": q(0.99),
                "p999_ns": q(0.999), "max_ns": h.max()});
            (name.to_string(), v)
        })
        .collect();
    let ack_p99 = whole["submit_to_ack"].value_at_quantile(0.99);
    json!({
        "scenario": "steady_with_kill",
        "mode": "simulation",
        "seed": o.seed,
        "config_hash": "1f2e3d4c5b6a7988",
        "trace_hash": "a1b2c3d4e5f60718",
        "duration_ms": DURATION_MS,
        "agents": 8,
        "counts": {"submitted": totals[0], "accepted": totals[1], "rejected": totals[2], "failed": totals[3],
            "timed_out": totals[4], "cancels": 400, "cancels_acked": 398, "fills_reported": totals[5], "md_updates": 30_000},
        "stages": stages,
        "accepted_per_s": accepted_per_s,
        "slos": [
            {"slo": {"stage": "submit_to_ack", "text": "submit_to_ack.p99 < 2000ms", "quantile_ppm": 990_000, "limit_ns": 2_000_000_000u64},
             "value_ns": ack_p99, "passed": true},
            {"slo": {"stage": "submit_to_ack", "text": "submit_to_ack.max < 50ms", "quantile_ppm": 1_000_000, "limit_ns": 50_000_000},
             "value_ns": whole["submit_to_ack"].max(), "passed": false}
        ],
        "checker": {"passed": false, "checks": [
            {"name": "fills_match_reference", "passed": true, "violations": 0, "first": []},
            {"name": "no_overfill", "passed": false, "violations": 2,
             "first": ["order 17: filled 12 > qty 10 <overfill>", "order 23: filled 7 > qty 5 & closed"]}
        ]},
        "faults": [
            {"at_ms": KILL.0, "action": "kill", "target": "engine-0", "duration_ms": KILL.1 - KILL.0},
            {"at_ms": PARTITION.0, "action": "partition", "target": "engine-0", "peer": "broker", "one_way": true,
             "duration_ms": PARTITION.1 - PARTITION.0}
        ],
        "outcome": "correctness_violated",
        "rerun": "fafnir run scenarios/steady_with_kill.toml --seed 42 --mode simulation --out \"runs/a&b\"",
        "effective_config": "[platform]\nengines = 2\nbroker = \"nats\"\n\n[load]\nrate_per_s = 400\n",
        "nemesis": {"kind": "scheduled", "faults": 2},
        "future_field": {"answer": 42}
    })
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("json") + "\n").expect("write json");
}

/// metrics.jsonl: each second, the TRADES consumers' lag, the settlement-lag
/// histogram's cumulative buckets and the requests in flight, all rising
/// while the engine is killed and draining after.
fn write_metrics(dir: &Path) {
    let mut lines = String::new();
    let mut line = |t_s: u64, name: &str, labels: Value, value: f64| {
        let sample = json!({"t_s": t_s, "name": name, "labels": labels, "value": value});
        lines.push_str(&format!("{sample}\n"));
    };
    let (mut fast, mut slow) = (0.0, 0.0);
    for t_s in 0..=DURATION_MS / 1000 {
        let behind = (KILL.0..KILL.1 + 1000).contains(&(t_s * 1000));
        let lag = if behind { 400.0 } else { 2.0 };
        for consumer in ["orders", "portfolio"] {
            line(t_s, "fafnir_consumer_lag_messages", json!({"consumer": consumer, "stream": "FAFNIR_TRADES"}), lag);
        }
        fast += if behind { 5.0 } else { 80.0 };
        slow += if behind { 60.0 } else { 1.0 };
        let b = "fafnir_settlement_lag_seconds_bucket";
        line(t_s, b, json!({"le": "0.005"}), fast);
        line(t_s, b, json!({"le": "1"}), fast + slow);
        line(t_s, b, json!({"le": "+Inf"}), fast + slow);
        line(t_s, "fafnir_gateway_orders_in_flight", json!({}), if behind { 64.0 } else { 3.0 });
        line(t_s, "fafnir_loadgen_requests_in_flight", json!({}), if behind { 150.0 } else { 4.0 });
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).expect("write metrics.jsonl");
}
