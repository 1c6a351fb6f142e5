//! One run of a scenario: build the platform, drive it with the agents for the
//! scenario's duration (faults playing), let it quiesce (the liveness phase),
//! gather what it stored and reports, check every fill, and write the run
//! directory (`summary.json`, one `.hgrm` per stage).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use fafnir_platform::bus::{read_to_end, EventBus};
use fafnir_platform::proto::events::{engine_event, ledger_event, order_event, EngineEvent, LedgerEvent, OrderEvent};
use hdrhistogram::serialization::Serializer as _;
use hdrhistogram::Histogram;
use prost::Message as _;
use serde::Serialize;

use crate::checker::{CheckInput, ReceivedReport, ReceivedTop, ReceivedTrade, Served, Verdict};
use crate::client::Client;
use crate::driver::{retry, AgentHandle, AgentView, Counts, Received, Recorder};
use crate::scenario::{Scenario, Slo};
use crate::timeline::Timeline;

/// How a run ended; the process exit code of `fafnir run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every check passed, every SLO held, the errors within budget (exit 0).
    Success,
    /// The run could not be carried out (exit 1).
    Error,
    /// An SLO was violated; every fill was right, the errors within budget (exit 3).
    SloViolated,
    /// The fill checker found a violation (exit 4).
    CorrectnessViolated,
    /// More requests failed or timed out than the error budget allows;
    /// every fill was right (exit 5).
    ErrorBudgetExceeded,
    /// The platform did not settle in the liveness phase (or did not come
    /// up): the checker did not run (exit 6).
    Liveness,
    /// A panic in the platform or the harness stopped the run (exit 7).
    Crash,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::Error,
        Outcome::SloViolated,
        Outcome::CorrectnessViolated,
        Outcome::ErrorBudgetExceeded,
        Outcome::Liveness,
        Outcome::Crash,
    ];

    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => 0,
            Outcome::Error => 1,
            Outcome::SloViolated => 3,
            Outcome::CorrectnessViolated => 4,
            Outcome::ErrorBudgetExceeded => 5,
            Outcome::Liveness => 6,
            Outcome::Crash => 7,
        }
    }
}

/// `fafnir run`'s exit codes, as its `--help` and scenarios/SCENARIOS.md
/// show them (a test holds the code, the help and the document to it).
pub const EXIT_CODES: &str = "\
Outcomes (summary.json's `outcome`) and exit codes:

| exit | outcome               | when                                                                  |
|------|-----------------------|-----------------------------------------------------------------------|
| 0    | success               | every check passed, every SLO held, errors within the error budget    |
| 1    | error                 | the run could not be carried out (servers unreachable, disk)          |
| 2    | -                     | bad command line or scenario file: nothing ran                        |
| 3    | slo_violated          | an SLO was violated (every fill right, errors within budget)          |
| 4    | correctness_violated  | the fill checker found a violation                                    |
| 5    | error_budget_exceeded | more submits and cancels failed or timed out than the budget allows   |
| 6    | liveness              | the platform did not come up, or did not settle in the liveness phase |
| 7    | crash                 | a panic in the platform or the harness stopped the run                |
";

/// The requests that failed or timed out, against the scenario's budget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorBudget {
    /// Submits and cancels sent.
    pub requests: u64,
    /// Of them, failed or timed out (refusals for a reason of the order are not errors).
    pub errors: u64,
    /// The most that may fail, in parts per million of `requests`.
    pub budget_ppm: u32,
    pub passed: bool,
}

impl ErrorBudget {
    pub fn of(counts: &Counts, budget_ppm: u32) -> ErrorBudget {
        let requests = counts.submitted + counts.cancels;
        let errors = counts.failed + counts.timed_out + counts.cancels_failed + counts.cancels_timed_out;
        // errors / requests <= budget, in integers.
        let passed = u128::from(errors) * 1_000_000 <= u128::from(requests) * u128::from(budget_ppm);
        ErrorBudget { requests, errors, budget_ppm, passed }
    }

    /// "12 of 345 requests (3.47%) failed or timed out; the budget is 1%".
    pub fn describe(&self) -> String {
        let share = (self.errors * 1_000_000).checked_div(self.requests).unwrap_or(0);
        format!(
            "{} of {} requests ({}) failed or timed out; the budget is {}",
            self.errors,
            self.requests,
            crate::scenario::percent(share as u32),
            crate::scenario::percent(self.budget_ppm)
        )
    }
}

/// Latency quantiles of one stage, in nanoseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StageSummary {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

/// One SLO and whether it held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SloResult {
    pub slo: Slo,
    pub value_ns: u64,
    pub passed: bool,
}

/// `summary.json` (documented in scenarios/SCENARIOS.md).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub mode: String,
    pub seed: u64,
    pub config_hash: String,
    pub trace_hash: String,
    pub duration_ms: u64,
    pub agents: u64,
    pub counts: Counts,
    /// Requests that failed or timed out, by request and gRPC code: how
    /// many, and the first distinct messages.
    pub errors: BTreeMap<String, crate::driver::ErrorKind>,
    pub error_budget: ErrorBudget,
    pub load_generator: LoadGenerator,
    pub stages: BTreeMap<String, StageSummary>,
    pub accepted_per_s: Vec<u64>,
    pub slos: Vec<SloResult>,
    /// The fill checker's verdict (no checks, not passed, when the run
    /// stopped before it could run: see `stopped`).
    pub checker: Verdict,
    pub faults: Vec<fafnir_sim::faults::Fault>,
    pub outcome: Outcome,
    /// Why a run that ended in liveness or crash stopped: what the liveness
    /// phase was still waiting for, or the panic's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub rerun: String,
    /// The effective configuration, one item a line (as printed before the run).
    pub effective_config: String,
    /// What the random nemesis drew for this seed (its faults are in `faults`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nemesis: Option<fafnir_sim::nemesis::NemesisOptions>,
    pub coverage: Coverage,
    /// What the hostile agents' requests met (absent when there were none).
    #[serde(skip_serializing_if = "crate::hostile_calls::HostileLog::is_empty")]
    pub hostile: crate::hostile_calls::HostileLog,
}

/// How the load generator kept up: how late it sent against the intended
/// times (a lag of milliseconds means it, not the platform, set the pace).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadGenerator {
    pub send_lag_p50_ns: u64,
    pub send_lag_p99_ns: u64,
    pub send_lag_max_ns: u64,
    /// Real runs: the share of the machine's CPU used over the load phase.
    pub cpu: Option<crate::driver::CpuShare>,
}

impl LoadGenerator {
    fn of(rec: &Recorder) -> LoadGenerator {
        LoadGenerator {
            send_lag_p50_ns: quantile(&rec.send_lag, 500_000),
            send_lag_p99_ns: quantile(&rec.send_lag, 990_000),
            send_lag_max_ns: quantile(&rec.send_lag, 1_000_000),
            cpu: rec.cpu,
        }
    }
}

/// What a run's faults covered: how many of each kind fired, and how many
/// submitted orders were awaiting their answer when they did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Coverage {
    pub fired: BTreeMap<String, u32>,
    pub orders_in_flight: BTreeMap<String, u64>,
}

impl Coverage {
    /// The faults that started within the load, by kind, and the submit
    /// requests in flight at each start.
    pub fn of(faults: &[fafnir_sim::faults::Fault], submits: &[(u64, u64)], load_ms: u64) -> Coverage {
        let fired: Vec<_> = faults.iter().filter(|f| f.at_ms < load_ms).cloned().collect();
        let mut c = Coverage::default();
        // A halves split is many partitions at once: it counts, and its orders in flight, once.
        for (f, (kind, stands)) in fired.iter().zip(fafnir_sim::nemesis::kinds(&fired)) {
            if !stands {
                continue;
            }
            let inflight = submits.iter().filter(|(sent, answered)| *sent <= f.at_ms && f.at_ms < *answered).count();
            *c.fired.entry(kind.to_string()).or_default() += 1;
            *c.orders_in_flight.entry(kind.to_string()).or_default() += inflight as u64;
        }
        c
    }

    /// "kill_service 2 (5 orders in flight), pause 1 (0 orders in flight)".
    pub fn describe(&self) -> String {
        if self.fired.is_empty() {
            return "no faults fired".into();
        }
        let parts: Vec<String> = self
            .fired
            .iter()
            .map(|(k, n)| format!("{k} {n} ({} orders in flight)", self.orders_in_flight.get(k).copied().unwrap_or(0)))
            .collect();
        parts.join(", ")
    }
}

/// Everything one run produced: the summary, the raw measurements and the timeline.
pub struct RunResult {
    pub summary: Summary,
    pub recorder: Recorder,
    pub timeline: Timeline,
}

/// What identifies a run, beside its scenario.
#[derive(Clone)]
pub struct RunMeta {
    pub mode: String,
    pub seed: u64,
    pub config_hash: String,
    pub trace_hash: String,
    pub rerun: String,
    pub agents: u64,
    pub nemesis: Option<fafnir_sim::nemesis::NemesisOptions>,
}

/// Checks every fill, judges the SLOs and assembles the run's result.
pub fn finish(scn: &Scenario, meta: RunMeta, recorder: Recorder, input: &CheckInput) -> RunResult {
    let verdict = crate::checker::check(input);
    let budget = ErrorBudget::of(&recorder.counts, scn.error_budget_ppm);
    let (stages, slos, outcome) = judge(&recorder, &scn.slos, &verdict, &budget);
    let timeline =
        crate::timeline::build(&recorder, &input.trades_stream, &input.instruments, scn.duration.as_millis() as u64);
    result(scn, meta, recorder, (stages, slos, outcome), verdict, None, timeline)
}

/// How a run stopped before its checker could run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The platform did not come up or settle; what it was waiting for.
    Liveness(String),
    /// A panic or a crashed task; its message.
    Crash(String),
}

impl Stopped {
    /// A run's error, classified: a liveness failure says so first.
    pub fn from_error(e: String) -> Stopped {
        if e.starts_with("liveness") {
            Stopped::Liveness(e)
        } else {
            Stopped::Crash(e)
        }
    }
}

/// The result of a run that stopped: what it measured until then (counts,
/// percentiles, the timeline), the outcome and why, and no checker verdict.
pub fn stopped(scn: &Scenario, meta: RunMeta, recorder: Recorder, why: Stopped) -> RunResult {
    let verdict = Verdict { passed: false, checks: Vec::new() };
    let budget = ErrorBudget::of(&recorder.counts, scn.error_budget_ppm);
    let (stages, slos, _) = judge(&recorder, &scn.slos, &verdict, &budget);
    let (outcome, why) = match why {
        Stopped::Liveness(w) => (Outcome::Liveness, w),
        Stopped::Crash(w) => (Outcome::Crash, w),
    };
    let timeline = crate::timeline::build(&recorder, &[], &scn.instruments, scn.duration.as_millis() as u64);
    result(scn, meta, recorder, (stages, slos, outcome), verdict, Some(why), timeline)
}

/// A panic's message (its payload is a `String` or a `&str` when it has one).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic with no message".into())
}

type Judged = (BTreeMap<String, StageSummary>, Vec<SloResult>, Outcome);

fn result(
    scn: &Scenario,
    meta: RunMeta,
    recorder: Recorder,
    (stages, slos, outcome): Judged,
    verdict: Verdict,
    stopped: Option<String>,
    timeline: Timeline,
) -> RunResult {
    let duration_ms = scn.duration.as_millis() as u64;
    let summary = Summary {
        scenario: scn.name.clone(),
        mode: meta.mode,
        seed: meta.seed,
        config_hash: meta.config_hash,
        trace_hash: meta.trace_hash,
        duration_ms,
        agents: meta.agents,
        counts: recorder.counts.clone(),
        errors: recorder.errors.clone(),
        error_budget: ErrorBudget::of(&recorder.counts, scn.error_budget_ppm),
        load_generator: LoadGenerator::of(&recorder),
        hostile: recorder.hostile.clone(),
        stages,
        accepted_per_s: accepted_per_s(&recorder, scn.duration),
        slos,
        checker: verdict,
        faults: scn.faults.clone(),
        outcome,
        stopped,
        rerun: meta.rerun,
        effective_config: scn.effective(),
        nemesis: meta.nemesis,
        coverage: Coverage::of(&scn.faults, &recorder.submits, duration_ms),
    };
    RunResult { summary, recorder, timeline }
}

/// Accepted orders in each whole second of the load, from the recorder's slots.
fn accepted_per_s(rec: &Recorder, duration: std::time::Duration) -> Vec<u64> {
    let mut per_s = vec![0; duration.as_secs().max(1) as usize];
    for (slot, c) in &rec.slots {
        if let Some(n) = per_s.get_mut((slot * crate::driver::SLOT_MS / 1_000) as usize) {
            *n += c.accepted;
        }
    }
    per_s
}

/// FNV-1a over bytes, as 16 hex digits.
pub fn hash_hex(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn quantile(h: &Histogram<u64>, ppm: u32) -> u64 {
    if h.is_empty() {
        return 0;
    }
    if ppm >= 1_000_000 {
        h.max()
    } else {
        h.value_at_quantile(f64::from(ppm) / 1e6)
    }
}

/// Stage quantiles, SLO results and the outcome.
pub fn judge(rec: &Recorder, slos: &[Slo], verdict: &Verdict, budget: &ErrorBudget) -> Judged {
    let stages: BTreeMap<String, StageSummary> = rec
        .histograms
        .iter()
        .map(|(name, h)| {
            let s = StageSummary {
                count: h.len(),
                p50_ns: quantile(h, 500_000),
                p90_ns: quantile(h, 900_000),
                p99_ns: quantile(h, 990_000),
                p999_ns: quantile(h, 999_000),
                max_ns: quantile(h, 1_000_000),
            };
            (name.to_string(), s)
        })
        .collect();
    let slo_results: Vec<SloResult> = slos
        .iter()
        .map(|slo| {
            let value_ns = rec.histograms.get(slo.stage.as_str()).map_or(0, |h| quantile(h, slo.quantile_ppm));
            let passed = if slo.text.contains("<=") { value_ns <= slo.limit_ns } else { value_ns < slo.limit_ns };
            SloResult { slo: slo.clone(), value_ns, passed }
        })
        .collect();
    let outcome = if !verdict.passed {
        Outcome::CorrectnessViolated
    } else if !budget.passed {
        Outcome::ErrorBudgetExceeded
    } else if slo_results.iter().any(|s| !s.passed) {
        Outcome::SloViolated
    } else {
        Outcome::Success
    };
    (stages, slo_results, outcome)
}

/// Writes `summary.json`, `timeline.json`, and per stage `<stage>.hgrm` (HdrHistogram's
/// percentile distribution text, values in milliseconds) and `<stage>.hdr`
/// (the raw histogram, V2 encoding, values in nanoseconds) into `dir`.
pub fn write_run_dir(dir: &Path, run: &RunResult) -> Result<(), String> {
    let (summary, rec) = (&run.summary, &run.recorder);
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let json = serde_json::to_string_pretty(summary).expect("summary serializes");
    std::fs::write(dir.join("summary.json"), json + "\n").map_err(|e| format!("write summary.json: {e}"))?;
    let json = serde_json::to_string(&run.timeline).expect("timeline serializes");
    std::fs::write(dir.join("timeline.json"), json + "\n").map_err(|e| format!("write timeline.json: {e}"))?;
    if !rec.metrics.samples.is_empty() {
        std::fs::write(dir.join("metrics.jsonl"), rec.metrics.jsonl())
            .map_err(|e| format!("write metrics.jsonl: {e}"))?;
    }
    for (stage, h) in &rec.histograms {
        let path = dir.join(format!("{stage}.hgrm"));
        std::fs::write(&path, hgrm(h)).map_err(|e| format!("write {}: {e}", path.display()))?;
        // The raw histogram, in HdrHistogram's V2 encoding (readable by every HdrHistogram library).
        let mut raw = Vec::new();
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(h, &mut raw)
            .map_err(|e| format!("encode {stage} histogram: {e:?}"))?;
        let path = dir.join(format!("{stage}.hdr"));
        std::fs::write(&path, raw).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format (ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)").ok();
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let inverse = if q < 1.0 { format!("{:14.2}", 1.0 / (1.0 - q)) } else { format!("{:>14}", "inf") };
            writeln!(out, "{:12.3} {:14.12} {:10} {}", v.value_iterated_to() as f64 / 1e6, q, total, inverse).ok();
        }
    }
    let ms = |ns: f64| ns / 1e6;
    writeln!(out, "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]", ms(h.mean()), ms(h.stdev())).ok();
    writeln!(out, "#[Max     = {:12.3}, Total count    = {:12}]", ms(h.max() as f64), h.len()).ok();
    writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), h.distinct_values()).ok();
    String::from_utf8(out).expect("ascii")
}

/// Reads a whole stream and decodes every message.
async fn decoded<M: prost::Message + Default>(bus: &dyn EventBus, stream: &str) -> Result<Vec<(u64, M)>, String> {
    // The platform has quiesced, but a read can still meet a slow broker: retry a few times.
    let mut attempt = 0;
    let msgs = loop {
        match read_to_end(bus, stream, "", 1).await {
            Ok(m) => break m,
            Err(e) if attempt >= 10 => return Err(format!("read {stream}: {e}")),
            Err(_) => {
                attempt += 1;
                fafnir_platform::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    msgs.iter()
        .map(|m| M::decode(&m.payload[..]).map(|e| (m.seq, e)).map_err(|e| format!("{stream}#{}: {e}", m.seq)))
        .collect()
}

/// Gathers what the checker needs, from the streams and from each agent's view.
pub async fn gather(
    bus: &dyn EventBus,
    cfg: &fafnir_platform::config::PlatformConfig,
    agents: &[std::sync::Arc<AgentHandle>],
) -> Result<CheckInput, String> {
    let accounts: Vec<(&str, &Client)> = agents.iter().map(|a| (a.name.as_str(), &a.client)).collect();
    let mut input = gather_platform(bus, cfg, &accounts).await?;
    let mut digest = Digest::default();
    for a in agents {
        let s = a.state.lock().expect("agent state");
        digest.add(&mut input, s.user, &s.told, &s.received, s.hostile, &s.setup);
    }
    digest.finish(&mut input);
    Ok(input)
}

/// [`gather`] for agents that ran elsewhere (the workers of a distributed
/// run): `accounts` are clients logged in as them, in the order of `views`,
/// the views what each agent saw.
pub async fn gather_views(
    bus: &dyn EventBus,
    cfg: &fafnir_platform::config::PlatformConfig,
    accounts: &[(&str, &Client)],
    views: &[AgentView],
) -> Result<CheckInput, String> {
    assert_eq!(accounts.len(), views.len(), "one client per agent view");
    for ((name, client), view) in accounts.iter().zip(views) {
        if client.user_id != view.user {
            return Err(format!(
                "{name} logged in as account {}, its view is of account {}",
                client.user_id, view.user
            ));
        }
    }
    let mut input = gather_platform(bus, cfg, accounts).await?;
    let mut digest = Digest::default();
    for v in views {
        digest.add(&mut input, v.user, &v.told, &v.received, v.hostile, &v.setup);
    }
    digest.finish(&mut input);
    Ok(input)
}

/// What the platform stored (the streams) and reports to each of
/// `accounts` (its portfolio and orders; the market as the first sees it).
async fn gather_platform(
    bus: &dyn EventBus,
    cfg: &fafnir_platform::config::PlatformConfig,
    accounts: &[(&str, &Client)],
) -> Result<CheckInput, String> {
    let names = cfg.names();
    let orders_stream: Vec<(u64, OrderEvent)> = decoded(bus, &names.orders_stream()).await?;
    let trades_stream: Vec<(u64, EngineEvent)> = decoded(bus, &names.trades_stream()).await?;
    let ledger_stream: Vec<(u64, LedgerEvent)> = decoded(bus, &names.ledger_stream()).await?;
    let mut input = CheckInput {
        instruments: cfg.instruments.clone(),
        orders_stream,
        trades_stream,
        ledger_stream,
        ..CheckInput::default()
    };
    for (name, client) in accounts {
        let portfolio = retry(|| client.portfolio()).await.map_err(|s| format!("{name}: portfolio: {s}"))?;
        input.portfolios.insert(client.user_id, portfolio);
        for o in retry(|| client.orders()).await.map_err(|s| format!("{name}: orders: {s}"))? {
            input.orders.insert(o.order_id, o);
        }
    }
    if let Some(first) = accounts.first() {
        input.market = Some(served_market(*first, &input).await?);
    }
    Ok(input)
}

/// The agents' own views, added to a [`CheckInput`] one by one: what each
/// was told and received, each distinct top of book and trade kept once.
#[derive(Default)]
struct Digest {
    tops: BTreeMap<TopKey, u64>,
    trades: BTreeMap<TradeKey, u64>,
}

impl Digest {
    fn add(
        &mut self,
        input: &mut CheckInput,
        account: u64,
        told: &BTreeMap<u64, crate::checker::ToldOrder>,
        received: &Received,
        hostile: bool,
        setup: &(i64, BTreeMap<String, i64>),
    ) {
        input.told.extend(told.iter().map(|(k, v)| (*k, v.clone())));
        if hostile {
            input.hostile_accounts.insert(account, setup.clone());
        }
        add_received(input, account, received, &mut self.tops, &mut self.trades);
    }

    fn finish(self, input: &mut CheckInput) {
        input.md_tops = self
            .tops
            .into_iter()
            .map(|((symbol, input_seq, t), account)| ReceivedTop {
                account,
                symbol,
                input_seq,
                bid_cents: t[0],
                bid_qty: t[1],
                ask_cents: t[2],
                ask_qty: t[3],
            })
            .collect();
        input.md_trades = self
            .trades
            .into_iter()
            .map(|((symbol, match_seq, input_seq, price_cents, qty), account)| ReceivedTrade {
                account,
                symbol,
                input_seq,
                match_seq,
                price_cents,
                qty,
            })
            .collect();
    }
}

type TopKey = (String, u64, [i64; 4]);
type TradeKey = (String, u64, u64, i64, i64);

/// Adds what the agent of `account` received: its reports, and the tops of
/// book and trades no agent before it received (each kept once, with the
/// first account that received it, so the input grows with the market, not
/// with the number of agents).
fn add_received(
    input: &mut CheckInput,
    account: u64,
    received: &Received,
    tops: &mut BTreeMap<TopKey, u64>,
    trades: &mut BTreeMap<TradeKey, u64>,
) {
    input.reports.extend(received.reports.iter().map(|&(order_id, kind, cursor)| ReceivedReport {
        account,
        order_id,
        kind,
        cursor,
    }));
    for (symbol, seen) in &received.tops {
        for &(input_seq, top) in seen {
            tops.entry((symbol.clone(), input_seq, top)).or_insert(account);
        }
    }
    for (symbol, seen) in &received.trades {
        for &(match_seq, input_seq, price, qty) in seen {
            trades.entry((symbol.clone(), match_seq, input_seq, price, qty)).or_insert(account);
        }
    }
}

/// How long the market may take, after the liveness phase, to count every
/// fill and show the top of book after every input.
const MARKET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Each symbol's last fill (match sequence) in TRADES and last input (ORDERS
/// sequence), 0 for none: how far the market must get.
fn market_ends(input: &CheckInput) -> BTreeMap<&str, (u64, u64)> {
    let mut ends: BTreeMap<&str, (u64, u64)> = input.instruments.iter().map(|i| (i.symbol.as_str(), (0, 0))).collect();
    for (_, e) in &input.trades_stream {
        if let (Some(engine_event::Kind::Fill(f)), Some(end)) = (&e.kind, ends.get_mut(e.symbol.as_str())) {
            end.0 = end.0.max(f.match_seq);
        }
    }
    for (seq, e) in &input.orders_stream {
        let symbol = match &e.kind {
            Some(order_event::Kind::Accepted(a)) => &a.symbol,
            Some(order_event::Kind::Cancel(c)) => &c.symbol,
            Some(order_event::Kind::Abandoned(a)) => &a.symbol,
            None => continue,
        };
        if let Some(end) = ends.get_mut(symbol.as_str()) {
            end.1 = end.1.max(*seq);
        }
    }
    ends
}

/// Each symbol's quote and candles through the gateway, as `agent` sees
/// them, once the market has caught up: every quote counts its symbol's last
/// fill in TRADES and shows the top of book after its last input. (The
/// market derives them from TRADES and MD by itself, so the liveness phase,
/// which waits for the consumers of TRADES, does not wait for it.) A market
/// that does not catch up within [`MARKET_WAIT`] fails the liveness phase.
async fn served_market(
    (name, client): (&str, &Client),
    input: &CheckInput,
) -> Result<BTreeMap<String, Served>, String> {
    let ends = market_ends(input);
    let deadline = fafnir_platform::time::Instant::now() + MARKET_WAIT;
    let quote = |symbol: &str| {
        let symbol = symbol.to_string();
        async move { retry(|| client.quote(&symbol)).await.map_err(|s| format!("{name}: quote: {s}")) }
    };
    let mut served = BTreeMap::new();
    for (&symbol, &(fill, input_seq)) in &ends {
        let mut q = quote(symbol).await?;
        while q.match_seq < fill || q.book_seq < input_seq {
            if fafnir_platform::time::Instant::now() >= deadline {
                return Err(format!(
                    "liveness: the market did not catch up within {MARKET_WAIT:?} of the platform quiescing: \
                     {symbol}'s quote is at fill {} and input {}, TRADES and ORDERS at {fill} and {input_seq}",
                    q.match_seq, q.book_seq
                ));
            }
            fafnir_platform::time::sleep(std::time::Duration::from_millis(100)).await;
            q = quote(symbol).await?;
        }
        let candles = retry(|| client.candles(symbol)).await.map_err(|s| format!("{name}: candles: {s}"))?;
        served.insert(symbol.to_string(), Served { quote: q, candles });
    }
    Ok(served)
}

/// The liveness phase: waits until the engine has answered the last accepted
/// input, every accept saga is over (each LEDGER reservation is of an
/// accepted order or released) and the portfolio and orders have been
/// delivered and have acked all of TRADES, then `settle` more for reports to
/// drain behind it. If that does not happen within
/// `limit`, says what was still wrong at the end (a stream that cannot be
/// read, an unanswered input, a saga still open).
/// The first durable consumer of TRADES (portfolio, orders) that has not
/// yet been delivered and acked everything stored, said as the reason the
/// liveness phase is waiting; None when all have. (A delivery lost in a
/// partition comes back only after the ack wait: until then, an order's
/// record may lack the fill or close its events hold.)
async fn consumers_behind(bus: &dyn EventBus, names: &fafnir_platform::config::Names) -> Option<String> {
    let stream = names.trades_stream();
    for durable in fafnir_platform::services::DURABLES {
        match bus.consumer_lag(&stream, durable).await {
            Ok(lag) if lag.caught_up() => {}
            Ok(lag) => {
                return Some(format!(
                    "the {durable} consumer of {stream} has {} messages not delivered and {} not acked",
                    lag.pending, lag.ack_pending
                ))
            }
            Err(e) => return Some(format!("the {durable} consumer of {stream} cannot be read: {e}")),
        }
    }
    None
}

pub async fn quiesce(
    bus: &dyn EventBus,
    cfg: &fafnir_platform::config::PlatformConfig,
    limit: std::time::Duration,
    settle: std::time::Duration,
) -> Result<(), String> {
    let names = cfg.names();
    let deadline = fafnir_platform::time::Instant::now() + limit;
    let mut why = String::from("no attempt");
    while fafnir_platform::time::Instant::now() < deadline {
        let inputs = read_to_end(bus, &names.orders_stream(), "", 1).await;
        let trades = read_to_end(bus, &names.trades_stream(), "", 1).await;
        match (inputs, trades) {
            (Ok(inputs), Ok(trades)) => {
                let last = inputs.last().map_or(0, |m| m.seq);
                let answered = |m: &fafnir_platform::bus::StoredMsg| {
                    EngineEvent::decode(&m.payload[..]).is_ok_and(|e| e.input_seq == last)
                };
                if last != 0 && !trades.iter().rev().any(answered) {
                    why = format!("no TRADES event answers the last input, {}#{last}", names.orders_stream());
                } else {
                    match open_saga(bus, &names, &inputs).await {
                        Ok(None) => match consumers_behind(bus, &names).await {
                            None => {
                                fafnir_platform::time::sleep(settle).await;
                                return Ok(());
                            }
                            Some(behind) => why = behind,
                        },
                        Ok(Some(open)) => why = open,
                        Err(e) => why = format!("{} cannot be read: {e}", names.ledger_stream()),
                    }
                }
            }
            (Err(e), _) => why = format!("{} cannot be read: {e}", names.orders_stream()),
            (_, Err(e)) => why = format!("{} cannot be read: {e}", names.trades_stream()),
        }
        fafnir_platform::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(why)
}

/// The first LEDGER reservation whose order is neither accepted in `inputs`
/// (ORDERS) nor released: an accept saga that is not over.
async fn open_saga(
    bus: &dyn EventBus,
    names: &fafnir_platform::config::Names,
    inputs: &[fafnir_platform::bus::StoredMsg],
) -> Result<Option<String>, fafnir_platform::bus::BusError> {
    let mut open = BTreeMap::new();
    for m in read_to_end(bus, &names.ledger_stream(), "", 1).await? {
        match LedgerEvent::decode(&m.payload[..]).ok().and_then(|e| e.kind) {
            Some(ledger_event::Kind::Reserved(r)) => {
                open.insert(r.order_id, m.seq);
            }
            Some(ledger_event::Kind::Released(r)) => {
                open.remove(&r.order_id);
            }
            _ => {}
        }
    }
    for m in inputs {
        if let Some(order_event::Kind::Accepted(a)) = OrderEvent::decode(&m.payload[..]).ok().and_then(|e| e.kind) {
            open.remove(&a.order_id);
        }
    }
    Ok(open.iter().next().map(|(order, seq)| {
        format!(
            "{} reservations of orders neither accepted nor released (the first: order {order:x} at {}#{seq}): accept sagas still open",
            open.len(),
            names.ledger_stream()
        )
    }))
}

/// Loads a scenario file and applies overrides of its seed and duration;
/// returns the scenario, its config hash and the command that replays it.
/// Errors name the file, the field and the reason.
pub fn load(
    file: &Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
) -> Result<(Scenario, String, String), String> {
    load_calibrated(file, seed, duration, None)
}

/// [`load`], with the calibration file `calibration` in place of the
/// scenario's network and service times (`--calibration`).
pub fn load_calibrated(
    file: &Path,
    seed: Option<u64>,
    duration: Option<std::time::Duration>,
    calibration: Option<&Path>,
) -> Result<(Scenario, String, String), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut scn = Scenario::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    if let Some(c) = calibration {
        scn = scn.with_calibration(&c.display().to_string())?;
    }
    if let Some(seed) = seed {
        scn.seed = seed;
    }
    if let Some(d) = duration {
        scn.duration = d;
        scn.check_faults().map_err(|e| format!("{} with --duration {} ms: {e}", file.display(), d.as_millis()))?;
    }
    let mut config = format!("{text}\n{:?}", scn.duration);
    if scn.calibration.is_some() {
        // What the calibration file says is part of the configuration.
        config.push_str(&format!("\n{:?}\n{:?}\n{:?}", scn.network, scn.service_time, scn.cores));
        if let Some(sharing) = scn.core_sharing {
            config.push_str(&format!("\n{sharing:?}"));
        }
    }
    let config_hash = hash_hex(config.as_bytes());
    let mut rerun = rerun_command(&file.display().to_string(), scn.seed, duration.map(|d| d.as_millis() as u64));
    if let Some(c) = calibration {
        rerun.push_str(&format!(" --calibration {}", c.display()));
    }
    Ok((scn, config_hash, rerun))
}

/// The command that replays this run.
pub fn rerun_command(file: &str, seed: u64, duration_ms: Option<u64>) -> String {
    match duration_ms {
        Some(d) => format!("cargo fafnir run {file} --seed {seed} --duration {d}ms"),
        None => format!("cargo fafnir run {file} --seed {seed}"),
    }
}

/// The agents' names, configs and seeds, in a fixed order.
pub fn agent_plan(scn: &Scenario, root_seed: u64) -> Vec<(String, usize, u32, u64)> {
    let mut plan = Vec::new();
    for (p, pop) in scn.populations.iter().enumerate() {
        for i in 0..pop.count {
            let name = format!("{:?}-{p}-{i}", pop.config.kind).to_lowercase().replace('_', "-");
            let seed = fafnir_sim::rng::derive_seed(root_seed, &format!("agent/{p}/{i}"));
            plan.push((name, p, i, seed));
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_counts_a_halves_split_and_its_orders_in_flight_once() {
        use fafnir_sim::faults::{Action, Fault};
        let link = |a: &str, b: &str| {
            let mut f = Fault::new(1_000, Action::Partition, Some(a)).lasting(500);
            f.peer = Some(b.into());
            f
        };
        let faults = vec![
            link("orders", "broker"),
            link("orders", "redis"),
            Fault::new(2_000, Action::Kill, Some("engine-0")).lasting(100),
            Fault::new(9_000, Action::Pause, Some("portfolio")).lasting(100),
        ];
        // Two submits in flight at 1 s, one at 2 s; the pause starts after the load.
        let submits = [(900, 1_100), (950, 2_500), (1_200, 1_300)];
        let c = Coverage::of(&faults, &submits, 5_000);
        assert_eq!(c.fired.get("partition_halves"), Some(&1));
        assert_eq!(c.orders_in_flight.get("partition_halves"), Some(&2));
        assert_eq!((c.fired.get("kill_service"), c.orders_in_flight.get("kill_service")), (Some(&1), Some(&1)));
        assert!(!c.fired.contains_key("pause"), "{c:?}");
        assert_eq!(c.describe(), "kill_service 1 (1 orders in flight), partition_halves 1 (2 orders in flight)");
    }

    #[test]
    fn the_error_budget_counts_failed_and_timed_out_requests_and_decides_before_the_slos() {
        let counts =
            Counts { submitted: 180, cancels: 20, failed: 1, timed_out: 1, cancels_timed_out: 0, ..Counts::default() };
        // 2 of 200 is exactly 1 %: within; one more is not. Refusals are no errors.
        assert!(ErrorBudget::of(&counts, 10_000).passed);
        let over = Counts { cancels_failed: 1, rejected: 50, ..counts.clone() };
        let b = ErrorBudget::of(&over, 10_000);
        assert_eq!((b.requests, b.errors, b.passed), (200, 3, false));
        assert_eq!(b.describe(), "3 of 200 requests (1.5%) failed or timed out; the budget is 1%");
        assert!(!ErrorBudget::of(&Counts { timed_out: 1, submitted: 1, ..Counts::default() }, 0).passed);
        assert!(ErrorBudget::of(&Counts::default(), 0).passed, "no requests, no errors");
        let mut rec = Recorder::new(fafnir_platform::time::Instant::now());
        rec.histograms.get_mut("submit_to_ack").unwrap().record(50_000_000).unwrap();
        let slo = crate::scenario::parse_slo("submit_to_ack.p99 < 1ms").unwrap();
        let ok = Verdict { passed: true, checks: Vec::new() };
        let bad = Verdict { passed: false, checks: Vec::new() };
        let slos = std::slice::from_ref(&slo);
        assert_eq!(judge(&rec, slos, &ok, &b).2, Outcome::ErrorBudgetExceeded);
        assert_eq!(judge(&rec, slos, &bad, &b).2, Outcome::CorrectnessViolated);
        assert_eq!(judge(&rec, slos, &ok, &ErrorBudget::of(&counts, 10_000)).2, Outcome::SloViolated);
    }

    #[test]
    fn histograms_are_written_in_both_hdr_formats() {
        let mut rec = Recorder::new(fafnir_platform::time::Instant::now());
        for ns in [1_000_000u64, 2_000_000, 3_000_000, 50_000_000] {
            rec.histograms.get_mut("submit_to_ack").unwrap().record(ns).unwrap();
        }
        let text = hgrm(&rec.histograms["submit_to_ack"]);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"), "{text}");
        assert!(text.contains("#[Max     =       50.") && text.contains("Total count    =            4"), "{text}");
        let dir = std::env::temp_dir().join(format!("fafnir-run-test-{}", std::process::id()));
        let verdict = Verdict { passed: true, checks: Vec::new() };
        let (stages, slos, outcome) = judge(&rec, &[], &verdict, &ErrorBudget::of(&rec.counts, 10_000));
        let summary = Summary {
            scenario: "t".into(),
            mode: "test".into(),
            seed: 1,
            config_hash: "0".into(),
            trace_hash: "0".into(),
            duration_ms: 1,
            agents: 0,
            counts: rec.counts.clone(),
            errors: Default::default(),
            error_budget: Default::default(),
            load_generator: Default::default(),
            stages,
            accepted_per_s: Vec::new(),
            slos,
            checker: verdict,
            faults: Vec::new(),
            outcome,
            stopped: None,
            rerun: String::new(),
            effective_config: String::new(),
            nemesis: None,
            coverage: Coverage::default(),
            hostile: Default::default(),
        };
        let timeline = crate::timeline::build(&rec, &[], &[], 1);
        write_run_dir(&dir, &RunResult { summary, recorder: rec.clone(), timeline }).unwrap();
        let raw = std::fs::read(dir.join("submit_to_ack.hdr")).unwrap();
        let back: Histogram<u64> =
            hdrhistogram::serialization::Deserializer::new().deserialize(&mut &raw[..]).expect("valid V2 histogram");
        assert_eq!((back.len(), back.max()), (4, rec.histograms["submit_to_ack"].max()));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
        assert_eq!(json["stages"]["submit_to_ack"]["count"], 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
