//! Where the metrics go: the platform and the load generator record through
//! the [`metrics`] facade (names in [`fafnir_platform::telemetry`] and
//! [`LOADGEN`]); this module installs the Prometheus recorder that keeps
//! them, serves them on `/metrics` for real, and samples them into a run
//! directory's `metrics.jsonl` in both worlds.
//!
//! - Real: one recorder for the process ([`install_global`]); `fafnir up`,
//!   `fafnir serve`, `fafnir run` and `fafnir capacity` serve it on
//!   `--metrics-addr` ([`serve`]).
//! - Simulation: one recorder per world, installed on the world's thread only
//!   (`metrics::set_default_local_recorder`, in `sim_run`), so a sweep's worlds (one after another on each thread, or
//!   side by side on several) never mix their numbers. Nothing in the world
//!   reads a metric, and the samples are taken on the progress tick that
//!   runs either way, so sampling cannot change a run's trace.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use fafnir_platform::bus::ConsumerLag;
use fafnir_platform::telemetry;

/// The load generator's metrics (`fafnir run`, `fafnir capacity`, in both worlds).
pub mod loadgen {
    /// Orders the agents meant to send (at their intended times).
    pub const ORDERS_OFFERED: &str = "fafnir_loadgen_orders_offered_total";
    /// Requests answered, by `op` (submit, cancel) and `outcome` (accepted, rejected, failed, timed_out).
    pub const REQUESTS: &str = "fafnir_loadgen_requests_total";
    /// Requests that failed or timed out, by `op` and gRPC `code`.
    pub const ERRORS: &str = "fafnir_loadgen_errors_total";
    /// Requests sent and not yet answered.
    pub const IN_FLIGHT: &str = "fafnir_loadgen_requests_in_flight";
    /// The latency of each stage of an order's life, by `stage`, from the intended send time.
    pub const STAGE_SECONDS: &str = "fafnir_loadgen_stage_seconds";
    /// The rate the run offers, orders per second (a capacity step's rate; 0 when the scenario sets it).
    pub const TARGET_RATE: &str = "fafnir_loadgen_target_orders_per_second";
    /// Fills the agents were told of.
    pub const FILLS_REPORTED: &str = "fafnir_loadgen_fills_reported_total";
}

/// A recorder with the platform's histogram buckets (10 µs to 30 s) for every histogram.
pub fn recorder() -> PrometheusRecorder {
    PrometheusBuilder::new()
        .set_buckets(&telemetry::SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
        .build_recorder()
}

/// Says what each metric is (`# HELP` lines), for the recorder in use.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    telemetry::describe();
    describe_counter!(loadgen::ORDERS_OFFERED, "Orders the load generator's agents meant to send.");
    describe_counter!(loadgen::REQUESTS, "Load generator requests answered, by outcome.");
    describe_counter!(loadgen::ERRORS, "Load generator requests that failed or timed out, by gRPC code.");
    describe_gauge!(loadgen::IN_FLIGHT, "Load generator requests sent and not yet answered.");
    describe_histogram!(loadgen::STAGE_SECONDS, Unit::Seconds, "Latency of each stage of an order's life.");
    describe_gauge!(loadgen::TARGET_RATE, "Orders per second the run offers.");
    describe_counter!(loadgen::FILLS_REPORTED, "Fills the load generator's agents were told of.");
}

/// The process's recorder (real builds), installed on first call.
#[cfg(not(madsim))]
pub fn install_global() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
            describe();
            // Histogram samples wait in a queue until a render or an upkeep
            // drains them: without a scrape, the queue must not grow all run.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("fafnir-metrics".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(1));
                    upkeep.run_upkeep();
                })
                .expect("a thread can be started");
            handle
        })
        .clone()
}

/// One sample of one series, as Prometheus would store it: histograms as
/// their `_bucket` (with `le`), `_sum` and `_count` series.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// Seconds since the load started (simulated seconds in simulation).
    pub t_s: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every series of a rendered exposition at `t_s`, sorted by name and labels.
pub fn samples(text: &str, t_s: u64) -> Vec<Sample> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("reading from memory cannot fail");
    let mut out = Vec::new();
    for s in scrape.samples {
        let labels: BTreeMap<String, String> = s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                out.push(Sample { t_s, name: s.metric, labels, value: v });
            }
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let mut labels = labels.clone();
                    labels.insert("le".into(), le(b.less_than));
                    out.push(Sample { t_s, name: format!("{}_bucket", s.metric), labels, value: b.count });
                }
            }
            prometheus_parse::Value::Summary(_) => {}
        }
    }
    out.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
    out
}

/// The `q` quantile of cumulative buckets (upper bound ns → count),
/// interpolated linearly within its bucket (from 0 for the first; the
/// highest finite bound when it falls in +Inf), as Prometheus's
/// `histogram_quantile` does.
pub fn quantile_of_buckets(buckets: &BTreeMap<u64, f64>, q: f64) -> Option<u64> {
    let total = *buckets.values().last()?;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lo, mut below) = (0u64, 0.0);
    for (&bound, &count) in buckets {
        if count >= rank {
            if bound == u64::MAX {
                return Some(lo);
            }
            let share = if count > below { (rank - below) / (count - below) } else { 0.0 };
            return Some(lo + ((bound - lo) as f64 * share) as u64);
        }
        (lo, below) = (bound, count);
    }
    Some(lo)
}

/// Every `_seconds` histogram of `samples` at its last sample: by its name
/// (without `_bucket`) and labels (without `le`), its cumulative buckets
/// (upper bound ns → count).
pub fn last_histograms(samples: &[Sample]) -> BTreeMap<(String, BTreeMap<String, String>), BTreeMap<u64, f64>> {
    let mut last_t: BTreeMap<(String, BTreeMap<String, String>), u64> = BTreeMap::new();
    let key = |s: &Sample| -> Option<(String, BTreeMap<String, String>)> {
        let name = s.name.strip_suffix("_bucket")?;
        let mut labels = s.labels.clone();
        labels.remove("le")?;
        Some((name.to_string(), labels))
    };
    for s in samples {
        if let Some(k) = key(s) {
            let t = last_t.entry(k).or_insert(s.t_s);
            *t = (*t).max(s.t_s);
        }
    }
    let mut out: BTreeMap<(String, BTreeMap<String, String>), BTreeMap<u64, f64>> = BTreeMap::new();
    for s in samples {
        let Some(k) = key(s) else { continue };
        if last_t.get(&k) != Some(&s.t_s) {
            continue;
        }
        let le = &s.labels["le"];
        let bound_ns = if le == "+Inf" {
            u64::MAX
        } else {
            match le.parse::<f64>() {
                Ok(v) => (v * 1e9).round() as u64,
                Err(_) => continue,
            }
        };
        *out.entry(k).or_default().entry(bound_ns).or_default() += s.value;
    }
    out
}

fn le(bound: f64) -> String {
    if bound.is_infinite() {
        "+Inf".into()
    } else {
        format!("{bound}")
    }
}

/// Every series of `handle` at `t_s`, with the consumers' lag set first.
/// Rendering and reading it back costs milliseconds of CPU: a real run does
/// it off its runtime and without holding the recorder.
pub fn snapshot(handle: &PrometheusHandle, t_s: u64, lags: &[(String, String, ConsumerLag)]) -> Vec<Sample> {
    for (stream, consumer, lag) in lags {
        telemetry::record_consumer_lag(stream, consumer, *lag);
    }
    samples(&handle.render(), t_s)
}

/// The metrics of one run over time: a sample of every series each second.
#[derive(Clone, Debug, Default)]
pub struct MetricsLog {
    pub samples: Vec<Sample>,
    /// The next whole second to sample at.
    next_s: u64,
}

impl MetricsLog {
    /// The whole second to sample at, if one has passed since the last
    /// sample (`elapsed` since the load started); it is then taken as done.
    pub fn due(&mut self, elapsed: Duration) -> Option<u64> {
        let t_s = elapsed.as_secs();
        if t_s < self.next_s {
            return None;
        }
        self.next_s = t_s + 1;
        Some(t_s)
    }

    /// Adds one sample's series (from [`snapshot`]).
    pub fn push(&mut self, taken: Vec<Sample>) {
        self.samples.extend(taken);
    }

    /// Samples `handle` if a whole second has passed since the last sample
    /// (`elapsed` since the load started), with the consumers' lag set first.
    pub fn sample_if_due(
        &mut self,
        handle: &PrometheusHandle,
        elapsed: Duration,
        lags: &[(String, String, ConsumerLag)],
    ) {
        if let Some(t_s) = self.due(elapsed) {
            self.push(snapshot(handle, t_s, lags));
        }
    }

    /// Samples `handle` now, in the second after the last sample at the
    /// latest (the run's last sample, when it ends between two seconds).
    pub fn sample_last(
        &mut self,
        handle: &PrometheusHandle,
        elapsed: Duration,
        lags: &[(String, String, ConsumerLag)],
    ) {
        let t_s = elapsed.as_secs().max(self.next_s);
        self.next_s = t_s;
        self.sample_if_due(handle, Duration::from_secs(t_s), lags);
    }

    /// One JSON object per line.
    pub fn jsonl(&self) -> String {
        let mut out = String::new();
        for s in &self.samples {
            out.push_str(&serde_json::to_string(s).expect("a sample serializes"));
            out.push('\n');
        }
        out
    }

    /// The values of one series over time (`labels` must all match), summed
    /// over the series that match: what a query `sum(name{labels})` gives.
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(u64, f64)> {
        let mut by_t: BTreeMap<u64, f64> = BTreeMap::new();
        for s in &self.samples {
            if s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)) {
                *by_t.entry(s.t_s).or_default() += s.value;
            }
        }
        by_t.into_iter().collect()
    }
}

/// Serves `handle` as Prometheus text on `http://addr/metrics` until the
/// process ends; before each scrape, `refresh` sets what is read on demand
/// (the consumers' lag). Fails at once when `addr` cannot be listened on.
#[cfg(not(madsim))]
pub async fn serve(
    addr: std::net::SocketAddr,
    handle: PrometheusHandle,
    refresh: Option<Refresh>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics: cannot listen on {addr}: {e} (choose another with --metrics-addr)"))?;
    let refresh = refresh.map(std::sync::Arc::new);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let (handle, refresh) = (handle.clone(), refresh.clone());
            async move {
                if let Some(r) = refresh {
                    r.consumer_lags().await;
                }
                ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
            }
        }),
    );
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    }))
}

/// What a scrape reads on demand: the lag of the deployment's durable consumers.
#[cfg(not(madsim))]
pub struct Refresh {
    pub bus: std::sync::Arc<dyn fafnir_platform::bus::EventBus>,
    /// (stream, durable) pairs.
    pub consumers: Vec<(String, String)>,
}

#[cfg(not(madsim))]
impl Refresh {
    /// The platform's durable consumers of `names`' TRADES stream.
    pub fn of(
        bus: std::sync::Arc<dyn fafnir_platform::bus::EventBus>,
        names: &fafnir_platform::config::Names,
    ) -> Refresh {
        Refresh { bus, consumers: durable_consumers(names) }
    }

    /// Reads and records every consumer's lag (one that cannot be read keeps its last value).
    pub async fn consumer_lags(&self) -> Vec<(String, String, ConsumerLag)> {
        let mut lags = Vec::new();
        for (stream, durable) in &self.consumers {
            let read =
                fafnir_platform::time::timeout(Duration::from_secs(2), self.bus.consumer_lag(stream, durable)).await;
            if let Ok(Ok(lag)) = read {
                telemetry::record_consumer_lag(stream, durable, lag);
                lags.push((stream.clone(), durable.clone(), lag));
            }
        }
        lags
    }
}

/// The deployment's durable consumers, as (stream, durable).
pub fn durable_consumers(names: &fafnir_platform::config::Names) -> Vec<(String, String)> {
    let trades = names.trades_stream();
    fafnir_platform::services::DURABLES.iter().map(|d| (trades.clone(), d.to_string())).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_quantile_of_buckets_is_interpolated_within_its_bucket() {
        let buckets = std::collections::BTreeMap::from([(100_000, 10.0), (250_000, 90.0), (u64::MAX, 100.0)]);
        // The 50th of 100 is 40 of the 80 in (100, 250] µs: half-way.
        assert_eq!(super::quantile_of_buckets(&buckets, 0.5), Some(175_000));
        assert_eq!(super::quantile_of_buckets(&buckets, 0.05), Some(50_000));
        assert_eq!(super::quantile_of_buckets(&buckets, 0.99), Some(250_000));
        assert_eq!(super::quantile_of_buckets(&Default::default(), 0.5), None);
    }

    #[test]
    fn the_last_sample_of_each_histogram_is_read() {
        let text = |n: u64| {
            format!(
                "# TYPE fafnir_x_seconds histogram\nfafnir_x_seconds_bucket{{op=\"a\",le=\"0.0001\"}} {n}\n\
                 fafnir_x_seconds_bucket{{op=\"a\",le=\"+Inf\"}} {}\nfafnir_x_seconds_sum{{op=\"a\"}} 1\n\
                 fafnir_x_seconds_count{{op=\"a\"}} {}\n",
                n * 2,
                n * 2
            )
        };
        let mut all = super::samples(&text(1), 0);
        all.extend(super::samples(&text(5), 1));
        let h = super::last_histograms(&all);
        let labels = std::collections::BTreeMap::from([("op".to_string(), "a".to_string())]);
        let buckets = &h[&("fafnir_x_seconds".to_string(), labels)];
        assert_eq!(buckets, &std::collections::BTreeMap::from([(100_000, 5.0), (u64::MAX, 10.0)]));
        assert_eq!(h.len(), 1);
    }

    use super::*;

    #[test]
    fn an_exposition_becomes_sorted_samples_with_buckets() {
        let text = "# TYPE a_total counter\na_total{x=\"2\"} 3\na_total{x=\"1\"} 4\n\
                    # TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\n\
                    h_seconds_sum 0.3\nh_seconds_count 2\n";
        let s = samples(text, 7);
        let names: Vec<_> =
            s.iter().map(|s| (s.name.as_str(), s.labels.values().cloned().collect::<Vec<_>>())).collect();
        assert_eq!(
            names,
            [
                ("a_total", vec!["1".to_string()]),
                ("a_total", vec!["2".to_string()]),
                ("h_seconds_bucket", vec!["+Inf".to_string()]),
                ("h_seconds_bucket", vec!["0.1".to_string()]),
                ("h_seconds_count", vec![]),
                ("h_seconds_sum", vec![]),
            ]
        );
        assert!(s.iter().all(|s| s.t_s == 7));
        assert_eq!(s[2].value, 2.0);
    }

    #[test]
    fn a_sample_is_due_once_each_whole_second_and_stored_when_pushed() {
        let mut log = MetricsLog::default();
        let ms = Duration::from_millis;
        assert_eq!(log.due(ms(3)), Some(0));
        // Taken as done when due: a second caller in the same second finds nothing due.
        assert_eq!(log.due(ms(900)), None);
        assert_eq!(log.due(ms(1_020)), Some(1));
        // A late tick skips the seconds it missed rather than sampling each.
        assert_eq!(log.due(ms(3_400)), Some(3));
        assert_eq!(log.due(ms(3_999)), None);
        assert!(log.samples.is_empty(), "nothing is stored until a sample is pushed");
        let taken = samples("# TYPE a_total counter\na_total 4\n", 3);
        log.push(taken.clone());
        assert_eq!(log.samples, taken);
        assert_eq!(log.series("a_total", &[]), vec![(3, 4.0)]);
    }

    #[test]
    fn a_series_sums_what_matches() {
        let mut log = MetricsLog::default();
        for (t, x, v) in [(0, "a", 1.0), (0, "b", 2.0), (1, "a", 5.0)] {
            let labels = [("x".to_string(), x.to_string())].into_iter().collect();
            log.samples.push(Sample { t_s: t, name: "m".into(), labels, value: v });
        }
        assert_eq!(log.series("m", &[]), vec![(0, 3.0), (1, 5.0)]);
        assert_eq!(log.series("m", &[("x", "b")]), vec![(0, 2.0)]);
    }
}
