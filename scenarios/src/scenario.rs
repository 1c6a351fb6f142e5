//! Scenario files: what a run is made of. The schema is documented in
//! `scenarios/SCENARIOS.md`; a malformed file is refused with the field and
//! the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use fafnir_platform::domain::Instrument;
use fafnir_sim::faults::Fault;
use fafnir_sim::nemesis::NemesisConfig;
use fafnir_sim::service_time::CoreSharing;
use serde::{Deserialize, Serialize};

use crate::agents::{AgentConfig, SymbolSpec};

/// The stages whose latency every run measures.
pub const STAGES: [&str; 6] =
    ["submit_to_ack", "submit_to_first_fill", "submit_to_final", "cancel_to_ack", "fill_to_settled", "md_fanout"];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default = "default_seed")]
    seed: u64,
    duration_ms: u64,
    #[serde(default = "default_quiesce")]
    quiesce_ms: u64,
    #[serde(rename = "instrument")]
    instruments: Vec<RawInstrument>,
    #[serde(default)]
    network: Option<RawNetwork>,
    #[serde(default)]
    service_time: BTreeMap<String, RawServiceTime>,
    /// A calibration file (`fafnir calibrate`): its network, service times
    /// and cores stand in for the scenario's own (which win where given).
    #[serde(default)]
    calibration: Option<String>,
    #[serde(rename = "population")]
    populations: Vec<toml::Table>,
    #[serde(default, rename = "fault")]
    faults: Vec<Fault>,
    #[serde(default)]
    nemesis: Option<NemesisConfig>,
    #[serde(default)]
    buggify: bool,
    #[serde(default)]
    buggify_network: bool,
    #[serde(default)]
    slos: Vec<String>,
    #[serde(default)]
    error_budget: Option<String>,
    #[serde(default)]
    shared_market_data: bool,
}

fn default_seed() -> u64 {
    1
}
fn default_quiesce() -> u64 {
    15_000
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RawInstrument {
    symbol: String,
    tick_cents: i64,
    lot_shares: i64,
    start_price_cents: i64,
    min_price_cents: i64,
    max_price_cents: i64,
    #[serde(default)]
    shard: usize,
    /// The largest order in shares (default: the platform's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_order_qty: Option<i64>,
    /// The largest order's cash value in cents (default: the platform's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_order_notional_cents: Option<i64>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub latency_us: [u64; 2],
    #[serde(default)]
    pub loss_ppm: u32,
}

/// One service's processing-time model: `dist` is fixed, uniform or exp, and
/// `us` its parameters in microseconds ([x], [lo, hi] or [mean]).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawServiceTime {
    pub dist: String,
    pub us: Vec<u64>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Handlers with a time of their own: the mean in µs of an exponential
    /// time, by handler (`"orders.submit" = 40`); the others take `dist`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub handlers: BTreeMap<String, u64>,
    /// The broker only: what share of `broker.wake` waking up after an idle
    /// gap costs it, as points `[gap µs, thousandths]` interpolated between
    /// (what `fafnir calibrate`'s probe of nats-server measures). With it,
    /// the broker is modelled per message: `broker.publish`,
    /// `broker.deliver` and `broker.ack` each message, and the share of the
    /// wake-up its idle gap calls for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_curve: Option<Vec<[u64; 2]>>,
    /// The broker only, with `wake_curve`: how much later it picks up work
    /// after an idle gap (its threads waking: latency, not CPU), as points
    /// `[gap µs, µs]` interpolated between (what the probe's publishes sent
    /// a pause apart took beyond the quickest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_latency_us: Option<Vec<[u64; 2]>>,
    /// The broker only, with `wake_curve`: how much later the platform takes
    /// up the broker's answers (acks, deliveries) after it has been idle,
    /// as points `[gap µs, µs]` by the gap since the platform's last work
    /// (its threads park while they wait, and the answer wakes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_wake_us: Option<Vec<[u64; 2]>>,
}

/// How `fafnir calibrate` models the simulated broker (`--broker-model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerModel {
    /// A publish's mean latency as the platform saw it, less the network's
    /// two legs, for each publish request (a pipelined batch is one).
    Latency,
    /// nats-server's CPU per message published, delivered and acknowledged,
    /// and its wake-up after an idle gap (the broker probe's figures).
    PerMessage,
}

/// How `fafnir calibrate` models market data's fan-out (`--fan-out`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FanOutModel {
    /// Not a unit of its own: the load generator's CPU for it is folded into
    /// its requests', the gateway's into the platform's overhead.
    Folded,
    /// `gateway.market_data` for each batch sent to a subscriber and
    /// `loadgen.market_data` for each batch a subscription reads, at their
    /// CPU as measured at the calibrated load.
    Priced,
}

/// A service-time profile measured on a machine (`fafnir calibrate`), which
/// a scenario names with `calibration = "calibration/<name>.toml"`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// How it was measured (informational).
    #[serde(default)]
    pub measured: BTreeMap<String, String>,
    /// The cores the services share: every service's work queues for them
    /// (one pool for the whole platform), instead of each service having
    /// workers of its own. Absent: each service its own `concurrency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<usize>,
    /// How those cores take the calls: `"queue"` (first come, first served,
    /// the default) or `"fair"` (time-shared among every call in progress,
    /// as the operating system shares the real machine's cores among its
    /// threads: a short call is not held behind a long one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core_sharing: Option<CoreSharing>,
    /// How late the real load generator woke for an intended send (its
    /// send lag: a thread waking after an idle pause), as quantile points
    /// `[thousandths, µs]` from 0 to 1000: in simulation each agent wakes
    /// that late, drawn from them, since every latency is measured from the
    /// intended time. Absent: agents wake on time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<Vec<[u64; 2]>>,
    pub network: RawNetwork,
    pub service_time: BTreeMap<String, RawServiceTime>,
}

impl Calibration {
    /// `path` as given when it exists or is absolute; else the first directory
    /// above the working one that has it (a test runs in its crate's directory,
    /// and a scenario names `calibration/...` from the repository root).
    fn find(path: &str) -> std::path::PathBuf {
        let given = std::path::PathBuf::from(path);
        if given.exists() || given.is_absolute() {
            return given;
        }
        let cwd = std::env::current_dir().unwrap_or_default();
        cwd.ancestors().map(|dir| dir.join(path)).find(|p| p.is_file()).unwrap_or(given)
    }

    /// Reads and checks a calibration file; errors name the file and the field.
    pub fn load(path: &str) -> Result<Calibration, String> {
        let text = std::fs::read_to_string(Calibration::find(path)).map_err(|e| {
            format!(
                "calibration: cannot read {path:?}: {e} (a path relative to where fafnir runs or a directory \
                 above it, or absolute)"
            )
        })?;
        let cal: Calibration =
            toml::from_str(&text).map_err(|e| format!("calibration {path:?}: {}", e.to_string().trim_end()))?;
        let at = |e: String| format!("calibration {path:?}: {e}");
        check_network(&cal.network).map_err(at)?;
        for (service, st) in &cal.service_time {
            validate_service_time(service, st).map_err(at)?;
        }
        if cal.cores == Some(0) {
            return Err(at("cores: must be at least 1".into()));
        }
        if let Some(points) = &cal.send_lag_us {
            check_send_lag(points).map_err(at)?;
        }
        Ok(cal)
    }
}

/// Quantile points `[thousandths, µs]`: from 0 to 1000 thousandths,
/// increasing, with times that never fall.
fn check_send_lag(points: &[[u64; 2]]) -> Result<(), String> {
    let first_last = (points.first().map(|p| p[0]), points.last().map(|p| p[0]));
    if points.len() < 2 || first_last != (Some(0), Some(1_000)) {
        return Err("send_lag_us: [thousandths, µs] points from 0 to 1000 thousandths".into());
    }
    for w in points.windows(2) {
        if w[1][0] <= w[0][0] {
            return Err(format!("send_lag_us: thousandths must increase ({} after {})", w[1][0], w[0][0]));
        }
        if w[1][1] < w[0][1] {
            return Err(format!(
                "send_lag_us: a higher quantile's lag cannot be shorter ({} µs after {} µs)",
                w[1][1], w[0][1]
            ));
        }
    }
    Ok(())
}

fn check_network(network: &RawNetwork) -> Result<(), String> {
    if network.latency_us[0] > network.latency_us[1] {
        return Err("network.latency_us: [low, high] with low <= high".into());
    }
    if network.loss_ppm > 1_000_000 {
        return Err("network.loss_ppm: at most 1000000".into());
    }
    Ok(())
}

fn default_concurrency() -> usize {
    4
}

/// A population of agents of one kind.
#[derive(Clone, Debug)]
pub struct Population {
    pub config: AgentConfig,
    pub count: u32,
    pub cash_cents: i64,
    pub holdings: BTreeMap<String, i64>,
}

/// A threshold on a stage's latency quantile: `stage.pXX < 5ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Slo {
    pub text: String,
    pub stage: String,
    /// In parts per million: p99 = 990_000, p999 = 999_000, max = 1_000_000.
    pub quantile_ppm: u32,
    pub limit_ns: u64,
}

/// A parsed, validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: Duration,
    pub quiesce: Duration,
    pub instruments: Vec<Instrument>,
    pub symbols: Vec<SymbolSpec>,
    pub engine_shards: Vec<Vec<String>>,
    pub network: RawNetwork,
    pub service_time: BTreeMap<String, RawServiceTime>,
    /// Cores the services share (from a calibration): see [`Calibration::cores`].
    pub cores: Option<usize>,
    /// How they take calls (from a calibration): see [`Calibration::core_sharing`].
    pub core_sharing: Option<CoreSharing>,
    /// The load generator's wake-up lag (from a calibration): see [`Calibration::send_lag_us`].
    pub send_lag_us: Option<Vec<[u64; 2]>>,
    /// The calibration file the scenario names, if any.
    pub calibration: Option<String>,
    pub populations: Vec<Population>,
    pub faults: Vec<Fault>,
    /// Random faults drawn per seed on top of `faults` (when enabled).
    pub nemesis: Option<NemesisConfig>,
    /// Simulation only: the platform's in-code fault points (BUGGIFY) are on.
    pub buggify: bool,
    /// Simulation only: madsim's network fault points are on (a tenth of all
    /// messages delayed 1-5 s: nearly every request meets one).
    pub buggify_network: bool,
    pub slos: Vec<Slo>,
    /// The share of requests (submits and cancels) that may fail or time out,
    /// in parts per million (`error_budget = "1%"` in the file, the default).
    pub error_budget_ppm: u32,
    /// The agents share one market-data subscription (the load generator's)
    /// instead of each opening its own; `fafnir capacity` always does.
    pub shared_market_data: bool,
    /// Test-only canary (never read from the file): a bug to plant in the platform.
    pub planted_bug: Option<fafnir_platform::config::PlantedBug>,
    /// Never read from the file: the platform meters its handlers' CPU
    /// (`fafnir calibrate`; see `PlatformConfig::measure_cpu`).
    pub measure_cpu: bool,
}

/// What a `[service_time.<name>]` may model: the services, the broker and
/// Redis, and the load generator (whose times a calibration measures; they
/// take none otherwise).
pub const SERVICES: [&str; 9] =
    ["gateway", "auth", "market", "orders", "engine", "portfolio", "broker", "redis", "loadgen"];

/// The error budget of a scenario that names none: 1 % of requests.
pub const DEFAULT_ERROR_BUDGET_PPM: u32 = 10_000;

/// The shortest liveness phase a scenario may ask for.
pub const QUIESCE_MIN_MS: u64 = 2_000;

impl Scenario {
    /// The scenario with the calibration at `path` in place of its own
    /// network, service times and cores (`--calibration FILE`).
    pub fn with_calibration(self, path: &str) -> Result<Scenario, String> {
        let cal = Calibration::load(path)?;
        Ok(Scenario {
            network: cal.network,
            service_time: cal.service_time,
            cores: cal.cores,
            core_sharing: cal.core_sharing,
            send_lag_us: cal.send_lag_us,
            calibration: Some(path.to_string()),
            ..self
        })
    }

    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let raw: RawScenario = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if raw.name.is_empty() {
            return Err("name: must not be empty".into());
        }
        if raw.duration_ms == 0 {
            return Err("duration_ms: must be positive".into());
        }
        let (instruments, symbols, engine_shards) = instruments(&raw.instruments)?;
        for (service, st) in &raw.service_time {
            validate_service_time(service, st)?;
        }
        let calibration = raw.calibration.as_deref().map(Calibration::load).transpose()?;
        let network = raw
            .network
            .or(calibration.as_ref().map(|c| c.network))
            .unwrap_or(RawNetwork { latency_us: [50, 250], loss_ppm: 0 });
        check_network(&network)?;
        let mut service_time = calibration.as_ref().map(|c| c.service_time.clone()).unwrap_or_default();
        service_time.extend(raw.service_time);
        let known: Vec<String> = symbols.iter().map(|s| s.symbol.clone()).collect();
        let populations = raw
            .populations
            .iter()
            .enumerate()
            .map(|(i, table)| population(table, &known).map_err(|e| format!("population[{i}].{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if populations.is_empty() {
            return Err("population: at least one is needed".into());
        }
        for (i, pop) in populations.iter().enumerate() {
            check_population(pop, &symbols).map_err(|e| format!("population[{i}]: {e}"))?;
        }
        if let Some(n) = &raw.nemesis {
            n.validate()?;
        }
        if raw.quiesce_ms < QUIESCE_MIN_MS {
            return Err(format!(
                "quiesce_ms: {} is too short: the liveness phase needs at least {QUIESCE_MIN_MS} ms to tell a \
                 platform that recovers from one that does not",
                raw.quiesce_ms
            ));
        }
        let slos = raw
            .slos
            .iter()
            .enumerate()
            .map(|(i, s)| parse_slo(s).map_err(|e| format!("slos[{i}] ({s:?}): {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let error_budget_ppm = match &raw.error_budget {
            None => DEFAULT_ERROR_BUDGET_PPM,
            Some(text) => parse_percent(text).map_err(|e| format!("error_budget ({text:?}): {e}"))?,
        };
        let scn = Scenario {
            name: raw.name,
            description: raw.description,
            seed: raw.seed,
            duration: Duration::from_millis(raw.duration_ms),
            quiesce: Duration::from_millis(raw.quiesce_ms),
            instruments,
            symbols,
            engine_shards,
            network,
            service_time,
            cores: calibration.as_ref().and_then(|c| c.cores),
            core_sharing: calibration.as_ref().and_then(|c| c.core_sharing),
            send_lag_us: calibration.as_ref().and_then(|c| c.send_lag_us.clone()),
            calibration: raw.calibration,
            populations,
            faults: raw.faults,
            nemesis: raw.nemesis.filter(|n| n.enabled),
            buggify: raw.buggify,
            buggify_network: raw.buggify_network,
            slos,
            error_budget_ppm,
            shared_market_data: raw.shared_market_data,
            planted_bug: None,
            measure_cpu: false,
        };
        scn.check_faults()?;
        Ok(scn)
    }

    /// Checks every `[[fault]]` against this scenario: its fields, that the
    /// nodes it names exist, and that it starts and ends inside the load
    /// phase (so that the liveness phase sees the platform recover). Run
    /// again after an override of the load's duration.
    pub fn check_faults(&self) -> Result<(), String> {
        let nodes = self.fault_targets();
        let load_ms = self.duration.as_millis() as u64;
        for (i, f) in self.faults.iter().enumerate() {
            let at = |why: String| format!("fault[{i}] (at_ms {}): {why}", f.at_ms);
            f.validate(&nodes).map_err(at)?;
            if f.at_ms >= load_ms {
                return Err(at(format!("starts after the load phase ends (duration_ms {load_ms})")));
            }
            match f.duration_ms {
                None => {
                    return Err(at(format!(
                        "duration_ms: missing; a fault must end inside the load phase (duration_ms {load_ms})"
                    )))
                }
                Some(d) if f.at_ms + d > load_ms => {
                    return Err(at(format!(
                        "duration_ms: ends at {} ms, after the load phase (duration_ms {load_ms}); a fault must \
                         end inside it, so that the liveness phase sees the platform recover",
                        f.at_ms + d
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The effective configuration, one item a line (printed before every run).
    pub fn effective(&self) -> String {
        let mut out = vec![format!(
            "load {} ms, liveness phase up to {} ms",
            self.duration.as_millis(),
            self.quiesce.as_millis()
        )];
        for (spec, shard) in
            self.symbols.iter().map(|s| (s, self.engine_shards.iter().position(|sh| sh.contains(&s.symbol))))
        {
            out.push(format!(
                "instrument {}: tick {}c, lot {}, start {}c, band {}c..={}c, engine shard {}",
                spec.symbol,
                spec.tick_cents,
                spec.lot_shares,
                spec.start_price_cents,
                spec.min_price_cents,
                spec.max_price_cents,
                shard.unwrap_or(0)
            ));
        }
        out.push(format!(
            "network: latency {}-{} us, loss {} ppm",
            self.network.latency_us[0], self.network.latency_us[1], self.network.loss_ppm
        ));
        if let Some(c) = &self.calibration {
            out.push(format!("calibration: {c}"));
        }
        for (service, st) in &self.service_time {
            out.push(format!("service time {service}: {} {:?} us, {} at once", st.dist, st.us, st.concurrency));
            for (handler, mean) in &st.handlers {
                out.push(format!("service time {handler}: exp mean {mean} us"));
            }
        }
        if let Some(cores) = self.cores {
            match self.core_sharing.unwrap_or_default() {
                CoreSharing::Queue => out.push(format!("the services share {cores} cores, first come, first served")),
                CoreSharing::Fair => out.push(format!("the services share {cores} cores, time-shared")),
            }
        }
        out.push("service time of other services: uniform [20, 60] us, 4 at once".into());
        for p in &self.populations {
            out.push(format!(
                "{} x {:?}: cash {}c, holdings {:?}, {:?}",
                p.count, p.config.kind, p.cash_cents, p.holdings, p.config.params
            ));
        }
        for f in &self.faults {
            out.push(format!("fault: {}", toml::to_string(f).unwrap_or_default().trim().replace('\n', ", ")));
        }
        if self.buggify {
            out.push("buggify: the in-code fault points are on".into());
        }
        if self.buggify_network {
            out.push(
                "buggify_network: madsim's network fault points are on (a tenth of messages delayed 1-5 s)".into(),
            );
        }
        if let Some(n) = &self.nemesis {
            out.push(format!("nemesis: {}", toml::to_string(n).unwrap_or_default().trim().replace('\n', ", ")));
        }
        for s in &self.slos {
            out.push(format!("slo: {}", s.text));
        }
        if self.shared_market_data {
            out.push("market data: one subscription shared by every agent".into());
        }
        out.push(format!(
            "error budget: at most {} of submits and cancels failed or timed out",
            percent(self.error_budget_ppm)
        ));
        out.join("\n")
    }

    /// The node names a fault may target (checked once the world is known).
    pub fn fault_targets(&self) -> Vec<String> {
        let mut nodes: Vec<String> = ["broker", "redis", "gateway", "auth", "market", "orders", "portfolio"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        nodes.extend((0..self.engine_shards.len()).map(|i| format!("engine-{i}")));
        nodes
    }
}

type Instruments = (Vec<Instrument>, Vec<SymbolSpec>, Vec<Vec<String>>);

fn instruments(raw: &[RawInstrument]) -> Result<Instruments, String> {
    if raw.is_empty() {
        return Err("instrument: at least one is needed".into());
    }
    let mut out = Vec::new();
    let mut specs = Vec::new();
    let mut shards: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, r) in raw.iter().enumerate() {
        let at = |field: &str, why: &str| format!("instrument[{i}].{field}: {why}");
        if r.tick_cents <= 0 {
            return Err(at("tick_cents", "must be positive"));
        }
        for (field, v) in [
            ("start_price_cents", r.start_price_cents),
            ("min_price_cents", r.min_price_cents),
            ("max_price_cents", r.max_price_cents),
        ] {
            if v <= 0 || v % r.tick_cents != 0 {
                return Err(at(field, &format!("{v} must be a positive multiple of tick_cents ({})", r.tick_cents)));
            }
        }
        if r.min_price_cents > r.max_price_cents {
            return Err(at(
                "min_price_cents",
                &format!(
                    "{} is above max_price_cents ({}): the band is inverted",
                    r.min_price_cents, r.max_price_cents
                ),
            ));
        }
        if !(r.min_price_cents <= r.start_price_cents && r.start_price_cents <= r.max_price_cents) {
            return Err(at("start_price_cents", "must lie within [min_price_cents, max_price_cents]"));
        }
        let mut inst = Instrument::new(
            &r.symbol,
            r.tick_cents,
            r.lot_shares,
            r.min_price_cents / r.tick_cents,
            r.max_price_cents / r.tick_cents,
        );
        inst.max_order_qty = r.max_order_qty.unwrap_or(inst.max_order_qty);
        inst.max_order_notional_cents = r.max_order_notional_cents.unwrap_or(inst.max_order_notional_cents);
        inst.validate().map_err(|e| format!("instrument[{i}]: {e}"))?;
        if out.iter().any(|o: &Instrument| o.symbol == r.symbol) {
            return Err(at("symbol", &format!("{} appears twice", r.symbol)));
        }
        out.push(inst);
        specs.push(SymbolSpec {
            symbol: r.symbol.clone(),
            tick_cents: r.tick_cents,
            lot_shares: r.lot_shares,
            start_price_cents: r.start_price_cents,
            min_price_cents: r.min_price_cents,
            max_price_cents: r.max_price_cents,
        });
        shards.entry(r.shard).or_default().push(r.symbol.clone());
    }
    let shard_list: Vec<Vec<String>> = shards.values().cloned().collect();
    if shards.keys().copied().ne(0..shard_list.len()) {
        return Err(format!("instrument.shard: shards must be numbered 0..{} without gaps", shard_list.len()));
    }
    Ok((out, specs, shard_list))
}

fn validate_service_time(service: &str, st: &RawServiceTime) -> Result<(), String> {
    let at = |field: &str, why: &str| format!("service_time.{service}.{field}: {why}");
    if !SERVICES.contains(&service) {
        return Err(format!("service_time.{service}: unknown service (one of {})", SERVICES.join(", ")));
    }
    let want = match st.dist.as_str() {
        "fixed" | "exp" => 1,
        "uniform" => 2,
        other => return Err(at("dist", &format!("{other:?} is not fixed, uniform or exp"))),
    };
    if st.us.len() != want {
        return Err(at("us", &format!("{} takes {want} value(s) in microseconds", st.dist)));
    }
    if st.dist == "uniform" && st.us[0] > st.us[1] {
        return Err(at("us", "[low, high] with low <= high"));
    }
    if st.concurrency == 0 {
        return Err(at("concurrency", "must be at least 1"));
    }
    if let Some(h) = st.handlers.keys().find(|h| !h.starts_with(&format!("{service}."))) {
        return Err(at("handlers", &format!("{h:?} is not a handler of {service} (\"{service}.<name>\")")));
    }
    for (field, points) in [("wake_latency_us", &st.wake_latency_us), ("reply_wake_us", &st.reply_wake_us)] {
        let Some(points) = points else { continue };
        if st.wake_curve.is_none() {
            return Err(at(field, "only with wake_curve (the broker modelled per message)"));
        }
        if points.is_empty() || points.windows(2).any(|w| w[0][0] >= w[1][0]) {
            return Err(at(field, "[gap µs, µs] points, at least one, gaps increasing"));
        }
    }
    if let Some(curve) = &st.wake_curve {
        if service != "broker" {
            return Err(at("wake_curve", "only the broker is modelled per message (its wake-up after an idle gap)"));
        }
        if curve.is_empty() || curve.windows(2).any(|w| w[0][0] >= w[1][0]) {
            return Err(at("wake_curve", "[gap µs, thousandths] points, at least one, gaps increasing"));
        }
        if curve.iter().any(|p| p[1] > 1_000) {
            return Err(at("wake_curve", "a share is at most 1000 thousandths"));
        }
    }
    Ok(())
}

fn population(table: &toml::Table, symbols: &[String]) -> Result<Population, String> {
    let mut params = table.clone();
    let kind = match params.remove("kind") {
        Some(toml::Value::String(k)) => k,
        Some(_) => return Err("kind: must be a string".into()),
        None => return Err("kind: missing (noise, market_maker, momentum, value or whale)".into()),
    };
    let int = |v: Option<toml::Value>, field: &str, default: i64| -> Result<i64, String> {
        match v {
            None => Ok(default),
            Some(toml::Value::Integer(i)) => Ok(i),
            Some(other) => Err(format!("{field}: must be an integer, not {}", other.type_str())),
        }
    };
    let count = int(params.remove("count"), "count", 1)?;
    if !(1..=10_000).contains(&count) {
        return Err(format!("count: {count} must be between 1 and 10000"));
    }
    let cash_cents = int(params.remove("cash_cents"), "cash_cents", 0)?;
    if cash_cents < 0 {
        return Err("cash_cents: must not be negative".into());
    }
    let mut holdings = BTreeMap::new();
    match params.remove("holdings") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (symbol, v) in t {
                if !symbols.contains(&symbol) {
                    return Err(format!("holdings.{symbol}: unknown symbol"));
                }
                let qty = int(Some(v), &format!("holdings.{symbol}"), 0)?;
                if qty < 0 {
                    return Err(format!("holdings.{symbol}: must not be negative"));
                }
                holdings.insert(symbol, qty);
            }
        }
        Some(_) => return Err("holdings: must be a table of symbol = shares".into()),
    }
    let config = AgentConfig::parse(&kind, &params)?;
    Ok(Population { config, count: count as u32, cash_cents, holdings })
}

fn check_population(pop: &Population, symbols: &[SymbolSpec]) -> Result<(), String> {
    pop.config.check_symbols(symbols)
}

/// Parses `stage.pXX < 5ms` (also `<=`; quantiles p50, p90, p99, p999, p9999, max;
/// units ns, us, ms, s).
/// A percentage with up to four decimals ("1%", "0.5%", "100%") in parts
/// per million.
pub fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text.trim().strip_suffix('%').ok_or("expected a percentage, e.g. \"1%\" or \"0.5%\"")?.trim();
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !(frac.is_empty() || digits(frac)) || frac.len() > 4 {
        return Err(format!("{number:?} is not a number with at most four decimals"));
    }
    let whole: u64 = whole.parse().map_err(|_| format!("{whole:?} is too large"))?;
    let frac: u64 = format!("{frac:0<4}").parse().expect("four digits");
    let ppm = whole.checked_mul(10_000).and_then(|w| w.checked_add(frac)).filter(|&p| p <= 1_000_000);
    ppm.map(|p| p as u32).ok_or_else(|| "at most 100%".to_string())
}

/// A share in parts per million as a percentage ("1%", "0.25%").
pub fn percent(ppm: u32) -> String {
    let (whole, frac) = (ppm / 10_000, ppm % 10_000);
    if frac == 0 {
        format!("{whole}%")
    } else {
        format!("{whole}.{}%", format!("{frac:04}").trim_end_matches('0'))
    }
}

pub fn parse_slo(text: &str) -> Result<Slo, String> {
    let (lhs, rhs) = text
        .split_once("<=")
        .or_else(|| text.split_once('<'))
        .ok_or("expected `stage.quantile < duration`, e.g. `submit_to_ack.p99 < 5ms`")?;
    let (stage, quantile) = lhs.trim().rsplit_once('.').ok_or("expected `stage.quantile` on the left")?;
    if !STAGES.contains(&stage) {
        return Err(format!("unknown stage {stage:?} (one of {})", STAGES.join(", ")));
    }
    let quantile_ppm = match quantile {
        "p50" => 500_000,
        "p90" => 900_000,
        "p99" => 990_000,
        "p999" => 999_000,
        "p9999" => 999_900,
        "max" => 1_000_000,
        q => return Err(format!("unknown quantile {q:?} (p50, p90, p99, p999, p9999 or max)")),
    };
    let rhs = rhs.trim();
    let split = rhs.find(|c: char| !c.is_ascii_digit()).ok_or("the limit needs a unit: ns, us, ms or s")?;
    let (number, unit) = rhs.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{number:?} is not a whole number"))?;
    let scale = match unit.trim() {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        u => return Err(format!("unknown unit {u:?} (ns, us, ms or s)")),
    };
    Ok(Slo { text: text.to_string(), stage: stage.to_string(), quantile_ppm, limit_ns: n * scale })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_budgets_parse_and_refuse() {
        assert_eq!(parse_percent("1%"), Ok(10_000));
        assert_eq!(parse_percent(" 0.5 %"), Ok(5_000));
        assert_eq!(parse_percent("100%"), Ok(1_000_000));
        assert_eq!(parse_percent("0.0001%"), Ok(1));
        assert!(parse_percent("1").unwrap_err().contains("percentage"));
        assert!(parse_percent("101%").unwrap_err().contains("at most 100%"));
        assert!(parse_percent("-1%").is_err() && parse_percent("1.00001%").is_err() && parse_percent(".5%").is_err());
        assert_eq!((percent(10_000), percent(2_500), percent(0)), ("1%".into(), "0.25%".into(), "0%".into()));
    }

    #[test]
    fn slos_parse_and_refuse() {
        let s = parse_slo("submit_to_ack.p99 < 2ms").unwrap();
        assert_eq!((s.stage.as_str(), s.quantile_ppm, s.limit_ns), ("submit_to_ack", 990_000, 2_000_000));
        assert_eq!(parse_slo("md_fanout.max <= 1s").unwrap().limit_ns, 1_000_000_000);
        assert!(parse_slo("submit_to_nowhere.p99 < 2ms").unwrap_err().contains("unknown stage"));
        assert!(parse_slo("submit_to_ack.p98 < 2ms").unwrap_err().contains("unknown quantile"));
        assert!(parse_slo("submit_to_ack.p99 < 2 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse_slo("submit_to_ack.p99 > 2ms").is_err());
    }
}
