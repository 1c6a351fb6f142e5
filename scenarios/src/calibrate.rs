//! `fafnir calibrate`: measure this machine's service times and network
//! latency on the real platform, and write them as a calibration file that a
//! scenario names (`calibration = "calibration/<name>.toml"`) instead of
//! hand-written `[service_time]` and `[network]` numbers.
//!
//! - **Service times**: the scenario runs against an in-process platform
//!   that meters the CPU time of every unit of work (`telemetry::cpu_metered`:
//!   the thread CPU time of each poll of a handler's future, and of the
//!   consumer loops per message), and each handler's mean CPU time per unit
//!   becomes the mean of an exponential service time. The platform's other
//!   CPU, the part no handler's future runs (tonic's and hyper's I/O, the NATS
//!   and Redis clients' background tasks), is spread over the handlers in
//!   proportion (`overhead` in the file), so that their sum is what the
//!   platform's threads used.
//! - **Broker**: when nats-server runs on this machine, the probe of
//!   [`crate::broker_probe`] measures its CPU per message published,
//!   delivered and acknowledged, and what waking up after an idle pause
//!   costs it, and the simulated broker is modelled per message with them
//!   (`broker.publish`, `broker.deliver`, `broker.ack`, `broker.wake` and
//!   `wake_curve`) with `--broker-model per-message`. By default (and when
//!   nats-server is elsewhere), as for Redis: a publish's mean latency as the
//!   platform saw it (`fafnir_bus_publish_seconds`, single publishes), less
//!   the two network legs, modelled as `broker.publish` per publish request;
//!   the probe's figures are recorded in `[measured]` either way. (Per
//!   message is the faithful model of the broker, but it alone predicted the
//!   order path at 500 orders/s faster than the machine: the platform's own
//!   wake-ups, which the latency model's larger time stood in for, are not
//!   modelled; see the README.)
//!   Per message, the broker also gets a wake-up latency by idle gap
//!   (`wake_latency_us`): what the probe's paced publishes took beyond the
//!   quickest, plus the platform's own wake-up for the answer (a single
//!   publish's median latency in the run beyond what the probe explains).
//! - **Send lag**: how late the load generator woke for each intended send
//!   (`send_lag_us`, quantiles), which simulated agents then draw from.
//! - **Redis**: a command's mean latency as the platform saw it
//!   (`fafnir_redis_call_seconds`), less the two network legs, modelled as
//!   `redis.command`.
//! - **Load generator**: its CPU per request (its threads' share of the
//!   machine over the load phase), which the simulation spends on the same
//!   cores before each request, as the real one competes for them.
//! - **Network**: a gRPC health check over loopback, sequential, after a
//!   warm-up: half its round trip is one message's latency, through the whole
//!   gRPC stack of both ends; its 10th and 90th percentiles are the network
//!   model's range.
//! - **Cores**: the machine's; the simulated services, the load generator,
//!   the broker and Redis queue for them together, first come, first
//!   served; with `--time-shared-cores` (`core_sharing = "fair"`) every
//!   call in progress advances at once on them instead, as the operating
//!   system shares the real machine's cores among the processes' threads
//!   (measured: the order path's p99 under load nearer real, market data's
//!   p99 at a calm load further; see the README).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fafnir_platform::services::{gateway, health};
use fafnir_platform::telemetry::{WORK_CPU_NANOS, WORK_UNITS};
use fafnir_platform::time::Instant;

use crate::driver;
use crate::real_run::{self, RealRun, Target};
use crate::scenario::{BrokerModel, Calibration, FanOutModel, RawNetwork, RawServiceTime, Scenario};

/// Round trips measured for the network model (after as many again to warm up).
const PINGS: usize = 400;

/// What one handler's work cost.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkCost {
    pub work: String,
    pub units: u64,
    /// Metered CPU per unit, ns.
    pub cpu_ns_per_unit: u64,
}

/// What `calibrate` measured, and the calibration made of it.
pub struct Measured {
    pub costs: Vec<WorkCost>,
    /// The broker's and Redis's own time per publish or command (not CPU:
    /// latency less the network's legs).
    pub servers: Vec<WorkCost>,
    /// One-way latency percentiles (p10, p50, p90), µs.
    pub one_way_us: [u64; 3],
    /// Platform CPU over metered CPU (>= 1): the share of the unmetered CPU.
    pub overhead: f64,
    /// nats-server's CPU per message, when it runs on this machine.
    pub broker: Option<crate::broker_probe::BrokerCosts>,
    pub calibration: Calibration,
    pub run: RealRun,
}

/// Half the round trip of `PINGS` sequential health checks to a gRPC server
/// of this process, after a warm-up; (p10, p50, p90) in µs.
pub async fn one_way_latency() -> Result<[u64; 3], String> {
    let port = crate::real::free_ports(1)[0];
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let status = health::Health::new("fafnir.calibrate.Ping").await;
    status.set_serving().await;
    let server = tonic::transport::Server::builder().add_service(status.server()).serve(addr);
    let server = tokio::spawn(server);
    let mut client = health::client(addr, Duration::from_secs(5));
    // The spawned server binds its port when first polled: until then a
    // check is refused. Wait for its first answer (up to 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = health::check(&mut client, "").await {
        if Instant::now() > deadline {
            return Err(format!("health check of the ping server: {e}"));
        }
        fafnir_platform::time::sleep(Duration::from_millis(10)).await;
    }
    let mut halves = Vec::with_capacity(PINGS);
    for i in 0..PINGS * 2 {
        let t0 = Instant::now();
        health::check(&mut client, "").await.map_err(|e| format!("health check of the ping server: {e}"))?;
        if i >= PINGS {
            halves.push((t0.elapsed() / 2).as_micros() as u64);
        }
    }
    server.abort();
    halves.sort_unstable();
    let at = |q: usize| halves[(halves.len() - 1) * q / 100].max(1);
    Ok([at(10), at(50), at(90)])
}

/// The value at the end of the load phase (the last sample up to it) of
/// every series of `name`, by the value of its `label`.
fn last_by_label(run: &RealRun, name: &str, label: &str) -> BTreeMap<String, f64> {
    let end_s = run.summary.duration_ms.div_ceil(1_000);
    let log = &run.recorder.metrics;
    let values: std::collections::BTreeSet<&String> =
        log.samples.iter().filter(|s| s.name == name).filter_map(|s| s.labels.get(label)).collect();
    values
        .into_iter()
        .filter_map(|v| {
            let last = log.series(name, &[(label, v)]).into_iter().rfind(|(t, _)| *t <= end_s)?;
            Some((v.clone(), last.1))
        })
        .collect()
}

/// Runs `scn` on an in-process platform that meters its CPU, measures the
/// network, and makes the calibration.
pub async fn calibrate(
    scn: &Scenario,
    seed: u64,
    nats: String,
    redis: String,
    broker_model: BrokerModel,
    fan_out: FanOutModel,
) -> Result<Measured, String> {
    let one_way_us = one_way_latency().await?;
    let broker = crate::broker_probe::probe(&nats).await?;
    let mut scn = scn.clone();
    scn.measure_cpu = true;
    let target = Target { gateway: None, nats, redis, namespace: None };
    let run = real_run::run(&scn, seed, target, "-".into(), "-".into(), None).await?;
    let units = last_by_label(&run, WORK_UNITS, "work");
    let cpu = last_by_label(&run, WORK_CPU_NANOS, "work");
    let costs: Vec<WorkCost> = units
        .iter()
        .filter(|(work, n)| **n > 0.0 && priced_on_the_platform(work, fan_out))
        .map(|(work, n)| WorkCost {
            work: work.clone(),
            units: *n as u64,
            cpu_ns_per_unit: (cpu.get(work).copied().unwrap_or(0.0) / n) as u64,
        })
        .collect();
    if costs.iter().all(|c| c.cpu_ns_per_unit == 0) {
        return Err("no CPU time was metered: this build cannot read a thread's CPU clock".into());
    }
    // The platform's own: the load generator's is priced apart.
    let metered_s: f64 =
        cpu.iter().filter(|(w, _)| priced_on_the_platform(w, fan_out)).map(|(_, ns)| ns).sum::<f64>() / 1e9;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let overhead = platform_cpu_s(&run).map_or(1.0, |platform| (platform / metered_s.max(1e-9)).max(1.0));
    let mut servers = server_costs(&run, one_way_us[1]);
    servers.extend(loadgen_costs(&run, &units, &cpu, fan_out));
    let per_message = match (broker_model, &broker) {
        (BrokerModel::Latency, _) => None,
        (BrokerModel::PerMessage, Some(b)) => Some(b),
        (BrokerModel::PerMessage, None) => {
            return Err("--broker-model per-message: the broker probe found no nats-server on this machine (no local \
                        process listens on the NATS address's port), so its CPU per message cannot be measured"
                .into())
        }
    };
    // A single publish's median latency as the platform saw it.
    let publish_ns = median_publish_ns(&run);
    if per_message.is_some() {
        // Measured per message instead.
        servers.retain(|c| c.work != "broker.publish");
    }
    let mut calibration = make(&costs, &servers, one_way_us, overhead, cores, &scn, seed);
    calibration.send_lag_us = send_lag_points(&run.recorder.send_lag);
    match (per_message, &broker) {
        (Some(b), _) => {
            with_broker(&mut calibration, b);
            if let Some(ns) = publish_ns {
                with_platform_wake(&mut calibration, b, ns);
            }
        }
        (None, Some(b)) => record_probe(&mut calibration, b),
        (None, None) => {}
    }
    Ok(Measured { costs, servers, one_way_us, overhead, broker, calibration, run })
}

/// Whether `work` is one of the platform's own units the calibration prices
/// (the load generator's are priced apart; with the fan-out folded, the
/// gateway's market-data batches are part of the platform's overhead).
fn priced_on_the_platform(work: &str, fan_out: FanOutModel) -> bool {
    !work.starts_with("loadgen.") && (fan_out == FanOutModel::Priced || work != gateway::MARKET_DATA_WORK)
}

/// The load generator's CPU per request (submit or cancel) and per
/// market-data update received: it shares the machine's cores with the
/// platform, and at high rates takes a good part of them. Its CPU is split
/// between the two by the CPU metered on each (a request's tasks; a
/// subscription's reading), its unmetered rest (the gRPC connections) in the
/// same proportion. With the fan-out folded, or without metered figures,
/// all of it goes to requests.
fn loadgen_costs(
    run: &RealRun,
    units: &BTreeMap<String, f64>,
    cpu: &BTreeMap<String, f64>,
    fan_out: FanOutModel,
) -> Vec<WorkCost> {
    let Some(cpu_ms) = run.summary.load_generator.cpu.as_ref().map(|c| c.load_generator_cpu_ms) else {
        return Vec::new();
    };
    let c = &run.summary.counts;
    let requests = c.submitted + c.cancels;
    let total_ns = cpu_ms as f64 * 1e6;
    if requests == 0 || cpu_ms == 0 {
        return Vec::new();
    }
    let metered = |work: &str| cpu.get(work).copied().unwrap_or(0.0);
    let (request_ns, md_ns) = (metered(driver::LOADGEN_REQUEST), metered(driver::LOADGEN_MARKET_DATA));
    let md_units = units.get(driver::LOADGEN_MARKET_DATA).copied().unwrap_or(0.0) as u64;
    let priced = fan_out == FanOutModel::Priced && md_units > 0 && request_ns + md_ns > 0.0;
    let md_share = if priced { md_ns / (request_ns + md_ns) } else { 0.0 };
    let mut out = vec![WorkCost {
        work: driver::LOADGEN_REQUEST.into(),
        units: requests,
        cpu_ns_per_unit: (total_ns * (1.0 - md_share) / requests as f64) as u64,
    }];
    if md_share > 0.0 {
        out.push(WorkCost {
            work: driver::LOADGEN_MARKET_DATA.into(),
            units: md_units,
            cpu_ns_per_unit: (total_ns * md_share / md_units as f64) as u64,
        });
    }
    out
}

/// The quantiles of the load generator's send lag a calibration keeps
/// (thousandths).
const SEND_LAG_QUANTILES: [u64; 11] = [0, 50, 100, 250, 500, 750, 900, 950, 990, 999, 1_000];

/// The load generator's send lag (how late it woke for each intended send)
/// as quantile points `[thousandths, µs]`; None when it sent nothing.
pub fn send_lag_points(lag: &hdrhistogram::Histogram<u64>) -> Option<Vec<[u64; 2]>> {
    if lag.is_empty() {
        return None;
    }
    let points: Vec<[u64; 2]> = SEND_LAG_QUANTILES
        .iter()
        .map(|&q| {
            let ns = match q {
                0 => lag.min(),
                1_000 => lag.max(),
                _ => lag.value_at_quantile(q as f64 / 1_000.0),
            };
            [q, ns / 1_000]
        })
        .collect();
    Some(points)
}

/// The broker's time per publish and Redis's per command: their mean latency
/// less two one-way network legs (at least 1 µs).
fn server_costs(run: &RealRun, one_way_us: u64) -> Vec<WorkCost> {
    let mean = |name: &str, op: Option<&str>| -> Option<(u64, f64)> {
        let sum_of = |suffix: &str| -> f64 {
            let series = format!("{name}_{suffix}");
            let by_op = last_by_label(run, &series, "op");
            by_op.iter().filter(|(k, _)| op.is_none_or(|o| o == k.as_str())).map(|(_, v)| v).sum()
        };
        let (sum, count) = (sum_of("sum"), sum_of("count"));
        (count > 0.0).then(|| (count as u64, sum / count * 1e9))
    };
    let mut out = Vec::new();
    let legs_ns = 2.0 * one_way_us as f64 * 1e3;
    let publish = mean(fafnir_platform::telemetry::BUS_PUBLISH_SECONDS, Some("publish"));
    let redis = mean(fafnir_platform::telemetry::REDIS_CALL_SECONDS, None);
    for (work, m) in [("broker.publish", publish), ("redis.command", redis)] {
        if let Some((units, ns)) = m {
            out.push(WorkCost { work: work.into(), units, cpu_ns_per_unit: (ns - legs_ns).max(1e3) as u64 });
        }
    }
    out
}

/// The CPU seconds the in-process platform's threads used over the load
/// phase (from the run's CPU share).
fn platform_cpu_s(run: &RealRun) -> Option<f64> {
    Some(run.summary.load_generator.cpu?.platform_cpu_ms? as f64 / 1e3)
}

fn make(
    costs: &[WorkCost],
    servers: &[WorkCost],
    one_way_us: [u64; 3],
    overhead: f64,
    cores: usize,
    scn: &Scenario,
    seed: u64,
) -> Calibration {
    let mut by_service: BTreeMap<String, Vec<(&WorkCost, f64)>> = BTreeMap::new();
    // The platform's unmetered CPU is spread over its handlers; the broker's
    // and Redis's times are what they are.
    for (c, scale) in costs.iter().map(|c| (c, overhead)).chain(servers.iter().map(|c| (c, 1.0))) {
        let service = c.work.split('.').next().unwrap_or_default().to_string();
        by_service.entry(service).or_default().push((c, scale));
    }
    let us = |ns: f64| ((ns / 1e3).round() as u64).max(1);
    let service_time = by_service
        .into_iter()
        .filter(|(s, _)| crate::scenario::SERVICES.contains(&s.as_str()))
        .map(|(service, works)| {
            let units: u64 = works.iter().map(|(w, _)| w.units).sum();
            let total: f64 = works.iter().map(|(w, s)| w.cpu_ns_per_unit as f64 * s * w.units as f64).sum();
            let handlers = works.iter().map(|(w, s)| (w.work.clone(), us(w.cpu_ns_per_unit as f64 * s))).collect();
            let st = RawServiceTime {
                dist: "exp".into(),
                us: vec![us(total / units.max(1) as f64)],
                concurrency: cores,
                handlers,
                wake_curve: None,
                wake_latency_us: None,
                reply_wake_us: None,
            };
            (service, st)
        })
        .collect();
    let measured = BTreeMap::from([
        ("by".into(), format!("fafnir calibrate (scenario {:?}, seed {seed})", scn.name)),
        ("cores".into(), cores.to_string()),
        ("one_way_latency_us".into(), format!("p10 {} p50 {} p90 {}", one_way_us[0], one_way_us[1], one_way_us[2])),
        ("overhead".into(), format!("{overhead:.2} (platform CPU / metered handler CPU; folded into the times)")),
        ("units".into(), costs.iter().map(|c| c.units).sum::<u64>().to_string()),
    ]);
    Calibration {
        measured,
        cores: Some(cores),
        core_sharing: None,
        send_lag_us: None,
        network: RawNetwork { latency_us: [one_way_us[0], one_way_us[2]], loss_ppm: 0 },
        service_time,
    }
}

/// The broker modelled per message in `c`, with the probe's figures
/// recorded (`--broker-model per-message`, `--broker-only`): all else `c`
/// holds is kept.
pub fn with_broker(c: &mut Calibration, b: &crate::broker_probe::BrokerCosts) {
    record_probe(c, b);
    let cores = c.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The nearest µs (a calibration's times are whole µs), at least 1.
    let us = |ns: u64| ((ns + 500) / 1_000).max(1);
    let handlers = BTreeMap::from([
        ("broker.publish".to_string(), us(b.publish_ns)),
        ("broker.deliver".to_string(), us(b.deliver_ns)),
        ("broker.ack".to_string(), us(b.ack_ns)),
        ("broker.wake".to_string(), us(b.wake_ns)),
    ]);
    let st = RawServiceTime {
        dist: "exp".into(),
        us: vec![us(b.publish_ns)],
        concurrency: cores,
        handlers,
        wake_curve: Some(b.wake_curve.iter().map(|(gap, share)| [*gap, u64::from(*share)]).collect()),
        wake_latency_us: Some(wake_latency(&b.latency_curve)),
        reply_wake_us: None,
    };
    c.service_time.insert("broker".into(), st);
}

/// The median latency of a single publish in the load phase (ns), from
/// the platform's histogram (`fafnir_bus_publish_seconds`, op publish),
/// interpolated within its bucket as Prometheus's `histogram_quantile` does.
fn median_publish_ns(run: &RealRun) -> Option<u64> {
    let end_s = run.summary.duration_ms.div_ceil(1_000);
    let name = format!("{}_bucket", fafnir_platform::telemetry::BUS_PUBLISH_SECONDS);
    let load: Vec<_> =
        run.recorder.metrics.samples.iter().filter(|s| s.name == name && s.t_s <= end_s).cloned().collect();
    let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
    for ((_, labels), series) in crate::observe::last_histograms(&load) {
        if labels.get("op").map(String::as_str) == Some("publish") {
            series.into_iter().for_each(|(bound, count)| *buckets.entry(bound).or_default() += count);
        }
    }
    crate::observe::quantile_of_buckets(&buckets, 0.5)
}

/// The platform's threads park as soon as they have nothing to do: an idle
/// gap this long (the broker probe's shortest pause) parks them.
const PARKED_AFTER_US: u64 = 25;

/// The platform's own wake-up for the broker's answers (`reply_wake_us`):
/// a single publish's median latency in the run (`publish_ns`) beyond what
/// the simulation already gives a publish on an idle platform: the round
/// trip of its network model (twice the mean one-way latency of `c`'s
/// `[network]`, which every message of the simulated world takes, the
/// broker's among them), the broker's CPU for the publish and its CPU
/// wake-up. The platform's threads park while they wait for an ack or a
/// delivery and are woken by it, which costs this machine some 50–150 µs
/// beyond the round trip; the simulated broker sends its answers that much
/// later when the platform has been idle 25 µs or more. It takes the place
/// of the probe's `wake_latency_us`. (Measured against the probe's quickest
/// publish instead, a raw NATS round trip shorter than the network model's,
/// the simulated publishes were 1.5–1.7 times real at the median.)
pub fn with_platform_wake(c: &mut Calibration, b: &crate::broker_probe::BrokerCosts, publish_ns: u64) {
    let round_trip_ns = (c.network.latency_us[0] + c.network.latency_us[1]) * 1_000;
    let extra_us = publish_ns.saturating_sub(round_trip_ns + b.publish_ns + b.wake_ns) / 1_000;
    c.measured.insert(
        "platform_wake".into(),
        format!(
            "{extra_us} µs (a publish's median latency {:.1} µs, less the network model's round trip {:.1} µs, the \
             broker's CPU per publish {:.1} µs and its CPU wake-up {:.1} µs)",
            publish_ns as f64 / 1e3,
            round_trip_ns as f64 / 1e3,
            b.publish_ns as f64 / 1e3,
            b.wake_ns as f64 / 1e3
        ),
    );
    if let Some(broker) = c.service_time.get_mut("broker") {
        broker.reply_wake_us = Some(vec![[0, 0], [PARKED_AFTER_US, extra_us]]);
        // The run's publishes took the broker's own wake-up too: the probe's
        // on top would count it twice (measured: the LEDGER batches, the
        // first publish after an idle gap, 1.5 times real with it, 0.9
        // without).
        broker.wake_latency_us = None;
    }
}

/// The broker's wake-up latency by idle gap, `[gap µs, µs]`, from the
/// probe's median publish latency at each pause (µs, ns): what each took
/// beyond the quickest, from the quickest's pause on (the shortest pauses
/// queue publishes behind one another: their latency is not a wake-up),
/// made non-decreasing (a longer pause never wakes faster but by noise).
pub fn wake_latency(latency_curve: &[(u64, u64)]) -> Vec<[u64; 2]> {
    let Some(quickest) = latency_curve.iter().enumerate().min_by_key(|(_, (_, ns))| *ns).map(|(i, _)| i) else {
        return Vec::new();
    };
    let floor = latency_curve[quickest].1;
    let mut highest = 0;
    latency_curve[quickest..]
        .iter()
        .map(|&(pause, ns)| {
            highest = highest.max((ns - floor + 500) / 1_000);
            [pause, highest]
        })
        .collect()
}

/// What the broker probe measured, in the file's `[measured]`.
fn record_probe(c: &mut Calibration, b: &crate::broker_probe::BrokerCosts) {
    let curve: Vec<String> = b.curve.iter().map(|(p, ns)| format!("{p}:{:.1}", *ns as f64 / 1e3)).collect();
    c.measured.insert(
        "broker_probe".into(),
        format!(
            "nats-server (pid {}) CPU µs per message: publish {:.1}, deliver {:.1}, ack {:.1} (back to back); \
             a publish every N µs (N:µs) {}",
            b.pid,
            b.publish_ns as f64 / 1e3,
            b.deliver_ns as f64 / 1e3,
            b.ack_ns as f64 / 1e3,
            curve.join(" ")
        ),
    );
}

/// The calibration as a file, with a header saying what it is.
pub fn to_toml(c: &Calibration) -> String {
    let body = toml::to_string(c).expect("a calibration serializes");
    format!(
        "# A service-time profile measured by `fafnir calibrate` on one machine: name it from a\n\
         # scenario with calibration = \"<this file>\". Service times are exponential with the\n\
         # measured mean CPU time per unit of work (µs); the network's range is the 10th to\n\
         # 90th percentile of one message's latency through the gRPC stack over loopback.\n\n{body}"
    )
}

/// What the broker probe measured, for the terminal.
pub fn broker_table(b: &crate::broker_probe::BrokerCosts) -> String {
    let mut out = format!("  broker (nats-server, pid {}), its CPU per message:\n", b.pid);
    for (what, ns) in [("publish", b.publish_ns), ("deliver", b.deliver_ns), ("ack", b.ack_ns)] {
        out.push_str(&format!("    {what:<24} {:>26.1}  (back to back)\n", ns as f64 / 1e3));
    }
    for (pause, ns) in &b.curve {
        let latency = b.latency_curve.iter().find(|(p, _)| p == pause).map_or(0, |(_, l)| *l);
        out.push_str(&format!(
            "    a publish every {pause:>5} µs {:>18.1}  (its latency, median: {:.1} µs)\n",
            *ns as f64 / 1e3,
            latency as f64 / 1e3
        ));
    }
    let shares: Vec<String> = b.wake_curve.iter().map(|(gap, s)| format!("{gap}: {:.0} %", *s as f64 / 10.0)).collect();
    out.push_str(&format!(
        "    wake-up {:.1} µs; the share of it paid at each pause (µs): {}\n",
        b.wake_ns as f64 / 1e3,
        shares.join(", ")
    ));
    out
}

/// A table of what was measured, for the terminal.
pub fn table(m: &Measured) -> String {
    let mut out = format!(
        "  network: one-way latency p10 {} µs, p50 {} µs, p90 {} µs (gRPC over loopback)\n",
        m.one_way_us[0], m.one_way_us[1], m.one_way_us[2]
    );
    out.push_str(&format!(
        "  platform CPU / metered handler CPU: {:.2} (the rest is spread over the handlers)\n",
        m.overhead
    ));
    out.push_str(&format!("  {:<26} {:>9} {:>16}\n", "work", "units", "CPU µs per unit"));
    for c in &m.costs {
        out.push_str(&format!("  {:<26} {:>9} {:>16.1}\n", c.work, c.units, c.cpu_ns_per_unit as f64 / 1e3));
    }
    for c in &m.servers {
        let what = if c.work.starts_with("loadgen") { "CPU" } else { "latency less the network's legs" };
        out.push_str(&format!("  {:<26} {:>9} {:>16.1}  ({what})\n", c.work, c.units, c.cpu_ns_per_unit as f64 / 1e3));
    }
    if let Some(points) = &m.calibration.send_lag_us {
        let at = |q: u64| points.iter().find(|p| p[0] == q).map_or(0, |p| p[1]);
        out.push_str(&format!(
            "  load generator's send lag (how late it woke for an intended send): p50 {} µs, p99 {} µs, max {} µs \
             (simulated agents wake as late)\n",
            at(500),
            at(990),
            at(1_000)
        ));
    }
    match &m.broker {
        Some(b) => out.push_str(&broker_table(b)),
        None => out.push_str(
            "  broker: nats-server does not run on this machine (no local process listens on its port): its CPU \
             per message was not measured, and broker.publish is its latency less the network's legs\n",
        ),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{wake_latency, with_platform_wake};
    use crate::scenario::{Calibration, RawNetwork};

    /// What a publish took in the run beyond the simulated round trip (the
    /// network model's, twice its mean), the broker's CPU and its wake-up.
    #[test]
    fn the_platform_wake_is_a_publish_beyond_the_simulated_round_trip() {
        let mut c = Calibration {
            measured: Default::default(),
            cores: Some(2),
            core_sharing: None,
            send_lag_us: None,
            network: RawNetwork { latency_us: [50, 80], loss_ppm: 0 },
            service_time: Default::default(),
        };
        let b = crate::broker_probe::BrokerCosts {
            pid: 1,
            publish_ns: 8_000,
            deliver_ns: 3_000,
            ack_ns: 3_000,
            wake_ns: 62_000,
            wake_curve: Vec::new(),
            curve: Vec::new(),
            latency_curve: vec![(100, 50_000)],
        };
        crate::calibrate::with_broker(&mut c, &b);
        // 260 µs, less a round trip of 130 µs, 8 µs and 62 µs: 60 µs.
        with_platform_wake(&mut c, &b, 260_000);
        let broker = &c.service_time["broker"];
        assert_eq!(broker.reply_wake_us, Some(vec![[0, 0], [25, 60]]));
        assert_eq!(broker.wake_latency_us, None);
        assert!(c.measured["platform_wake"].starts_with("60 µs"), "{:?}", c.measured);
        // A publish no slower than the simulated one: no wake-up.
        with_platform_wake(&mut c, &b, 150_000);
        assert_eq!(c.service_time["broker"].reply_wake_us, Some(vec![[0, 0], [25, 0]]));
    }

    #[test]
    fn the_wake_up_latency_is_what_each_pause_took_beyond_the_quickest() {
        // Measured here (µs): a publish every 25, 50, 100, 200, 400, 800,
        // 1,600 µs took 295.6, 259.0, 26.4, 27.2, 31.5, 52.1, 108.9 (the
        // shortest pauses queue publishes behind one another).
        let curve = [
            (25, 295_600),
            (50, 259_000),
            (100, 26_400),
            (200, 27_200),
            (400, 31_500),
            (800, 52_100),
            (1_600, 108_900),
        ];
        assert_eq!(wake_latency(&curve), vec![[100, 0], [200, 1], [400, 5], [800, 26], [1_600, 83]]);
        // Noise never makes a longer pause quicker.
        assert_eq!(wake_latency(&[(100, 20_000), (200, 40_000), (400, 30_000)]), vec![[100, 0], [200, 20], [400, 20]]);
        assert_eq!(wake_latency(&[]), Vec::<[u64; 2]>::new());
    }
}
