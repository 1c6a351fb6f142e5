//! The open-loop driver: runs agents against the public gateway API.
//!
//! Each agent says when it next wants to act; the driver wakes it at that
//! *intended* time and sends its intents without waiting for earlier replies
//! (each request is its own task), so a slow platform cannot slow the load
//! down and hide its slowness. Every latency is measured from the intended
//! time (no coordinated omission) into an HdrHistogram in nanoseconds.
//! The code uses only `tokio::time`, so it runs the same for real and in
//! simulation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fafnir_platform::domain::{order_id_for, UserId};
use fafnir_platform::proto::common::{OrderType, Side as ProtoSide};
use fafnir_platform::proto::gateway::{execution_report, ExecutionReport, MarketDataUpdate};
use fafnir_platform::time::Instant;
use hdrhistogram::Histogram;
use tonic::Code;

use crate::agents::{Agent, Event, Intent, OpenOrder, OrderKind, Side, SymbolView, View};
use crate::checker::{ReportKind, ToldOrder};
use crate::client::{Client, OrderSpec};
use crate::observe::loadgen;
use crate::scenario::STAGES;

/// Outcome counts of a run's requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub submitted: u64,
    pub accepted: u64,
    /// Refused by the platform for a reason of the order (funds, price, ...).
    pub rejected: u64,
    /// Failed for a reason of the platform (unavailable, internal, ...).
    pub failed: u64,
    /// Not answered within the client's deadline.
    pub timed_out: u64,
    pub cancels: u64,
    pub cancels_acked: u64,
    /// Cancels refused for a reason of the order (already closed, unknown).
    pub cancels_rejected: u64,
    /// Cancels that failed for a reason of the platform.
    pub cancels_failed: u64,
    pub cancels_timed_out: u64,
    pub fills_reported: u64,
    pub md_updates: u64,
}

/// The requests that failed or timed out with one request kind and code.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorKind {
    pub count: u64,
    /// The first distinct messages (the reasons), up to [`ErrorKind::EXAMPLES`].
    pub first: Vec<String>,
}

impl ErrorKind {
    /// How many distinct messages are kept.
    pub const EXAMPLES: usize = 3;
    /// How much of each message is kept.
    const MESSAGE_CHARS: usize = 200;

    /// Adds `other`'s count, and its messages this one lacks while there is room.
    pub fn merge(&mut self, other: &ErrorKind) {
        self.count += other.count;
        for message in &other.first {
            if self.first.len() < ErrorKind::EXAMPLES && !self.first.contains(message) {
                self.first.push(message.clone());
            }
        }
    }
}

/// Outcome counts of one slot of the run's timeline.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotCounts {
    pub submitted: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub fills: u64,
}

impl Counts {
    /// Adds every count of `other` (the counts of another part of the same run).
    pub fn add(&mut self, other: &Counts) {
        let Counts {
            submitted,
            accepted,
            rejected,
            failed,
            timed_out,
            cancels,
            cancels_acked,
            cancels_rejected,
            cancels_failed,
            cancels_timed_out,
            fills_reported,
            md_updates,
        } = other;
        self.submitted += submitted;
        self.accepted += accepted;
        self.rejected += rejected;
        self.failed += failed;
        self.timed_out += timed_out;
        self.cancels += cancels;
        self.cancels_acked += cancels_acked;
        self.cancels_rejected += cancels_rejected;
        self.cancels_failed += cancels_failed;
        self.cancels_timed_out += cancels_timed_out;
        self.fills_reported += fills_reported;
        self.md_updates += md_updates;
    }
}

impl SlotCounts {
    /// Adds every count of `other` (the same slot in another part of the same run).
    pub fn add(&mut self, other: &SlotCounts) {
        let SlotCounts { submitted, accepted, rejected, failed, timed_out, fills } = other;
        self.submitted += submitted;
        self.accepted += accepted;
        self.rejected += rejected;
        self.failed += failed;
        self.timed_out += timed_out;
        self.fills += fills;
    }
}

/// Width of a timeline slot: counts and samples are kept at this resolution.
pub const SLOT_MS: u64 = 100;

/// What a run measured.
#[derive(Clone)]
pub struct Recorder {
    pub histograms: BTreeMap<&'static str, Histogram<u64>>,
    pub counts: Counts,
    /// Every latency sample as (ms since the load started, ns), per stage.
    pub samples: BTreeMap<&'static str, Vec<(u64, u64)>>,
    /// Every submit request as (sent, answered) in ms since the load started.
    pub submits: Vec<(u64, u64)>,
    /// Outcome counts per [`SLOT_MS`] slot since the load started.
    pub slots: BTreeMap<u64, SlotCounts>,
    /// The platform clock (ms) when the load started: places the engine's
    /// event timestamps on the run's timeline.
    pub t0_clock_ms: i64,
    /// What the hostile agents' requests met.
    pub hostile: crate::hostile_calls::HostileLog,
    /// Requests that failed or timed out, by request and gRPC code
    /// ("submit DeadlineExceeded"), with the first distinct messages.
    pub errors: BTreeMap<String, ErrorKind>,
    /// How late the driver woke each agent, against its intended time (ns):
    /// the load generator's own lag.
    pub send_lag: Histogram<u64>,
    /// Real runs: the share of the machine's CPU the load generator (and the
    /// in-process platform) used over the load phase, in percent.
    pub cpu: Option<CpuShare>,
    /// Every metric of the platform and the load generator, sampled each
    /// second of the run (metrics.jsonl).
    pub metrics: crate::observe::MetricsLog,
    t0: Instant,
}

/// The share of the machine's CPU (all its cores) a real run's processes
/// used over the load phase, in percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CpuShare {
    pub load_generator_pct: u32,
    /// The in-process platform's (None: the platform runs elsewhere, --gateway).
    pub platform_pct: Option<u32>,
    /// The same, as CPU time (ms) over the load phase.
    pub load_generator_cpu_ms: u64,
    pub platform_cpu_ms: Option<u64>,
}

/// An empty latency histogram as the recorder keeps them: 1 ns to an hour,
/// three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

impl Recorder {
    pub fn new(t0: Instant) -> Recorder {
        let histograms = STAGES.iter().map(|s| (*s, latency_histogram())).collect();
        Recorder {
            histograms,
            counts: Counts::default(),
            samples: STAGES.iter().map(|s| (*s, Vec::new())).collect(),
            submits: Vec::new(),
            slots: BTreeMap::new(),
            t0_clock_ms: 0,
            hostile: Default::default(),
            errors: BTreeMap::new(),
            send_lag: latency_histogram(),
            cpu: None,
            metrics: Default::default(),
            t0,
        }
    }

    /// Milliseconds since the load started.
    pub fn elapsed_ms(&self) -> u64 {
        Instant::now().saturating_duration_since(self.t0).as_millis() as u64
    }

    fn record(&mut self, stage: &'static str, since: Instant) {
        let ns = Instant::now().saturating_duration_since(since).as_nanos().max(1) as u64;
        self.record_ns(stage, ns);
    }

    fn record_ns(&mut self, stage: &'static str, ns: u64) {
        let ns = ns.max(1);
        metrics::histogram!(loadgen::STAGE_SECONDS, "stage" => stage).record(ns as f64 / 1e9);
        self.histograms.get_mut(stage).expect("known stage").saturating_record(ns);
        let t = self.elapsed_ms();
        self.samples.get_mut(stage).expect("known stage").push((t, ns));
    }

    /// Counts a request that failed or timed out under its code.
    fn error(&mut self, request: &'static str, status: &tonic::Status) {
        let code = fafnir_platform::telemetry::code_name(status.code());
        metrics::counter!(loadgen::ERRORS, "op" => request, "code" => code).increment(1);
        let kind = self.errors.entry(format!("{request} {:?}", status.code())).or_default();
        kind.count += 1;
        let message: String = status.message().chars().take(ErrorKind::MESSAGE_CHARS).collect();
        if kind.first.len() < ErrorKind::EXAMPLES && !kind.first.contains(&message) {
            kind.first.push(message);
        }
    }

    /// Counts one outcome in the current timeline slot.
    fn slot(&mut self) -> &mut SlotCounts {
        let slot = self.elapsed_ms() / SLOT_MS;
        self.slots.entry(slot).or_default()
    }
}

/// One order as its agent knows it.
struct Tracked {
    tag: u64,
    symbol: String,
    side: Side,
    intended: Instant,
    first_fill_seen: bool,
    final_seen: bool,
    /// When each fill's report arrived, until its settlement notice does.
    fill_reported_at: BTreeMap<u64, Instant>,
    /// Fills whose settlement notice overtook their fill report.
    settled_first: BTreeSet<u64>,
}

/// What an agent received, kept for the checker: each distinct execution
/// report, and a digest of its market data (each distinct top of book and
/// trade once, however often it arrived), so that memory grows with what
/// the platform did, not with how often it was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// (order id, kind, cursor) of every execution report.
    pub reports: BTreeSet<(u64, ReportKind, u64)>,
    /// Per symbol: (input_seq, [bid cents, bid qty, ask cents, ask qty]) of every update.
    pub tops: BTreeMap<String, BTreeSet<(u64, [i64; 4])>>,
    /// Per symbol: (match_seq, input_seq, price cents, qty) of every trade in an update.
    pub trades: BTreeMap<String, BTreeSet<(u64, u64, i64, i64)>>,
}

impl Received {
    fn report(&mut self, report: &ExecutionReport) {
        let kind = match &report.kind {
            None => ReportKind::Opening,
            Some(execution_report::Kind::Fill(f)) => ReportKind::Fill { match_seq: f.match_seq, maker: f.maker },
            Some(execution_report::Kind::Closed(_)) => ReportKind::Closed,
            Some(execution_report::Kind::Settled(st)) => ReportKind::Settled { match_seq: st.match_seq },
        };
        self.reports.insert((report.order_id, kind, report.cursor));
    }

    fn market_data(&mut self, u: &MarketDataUpdate) {
        let top = (u.input_seq, [u.bid_cents, u.bid_qty, u.ask_cents, u.ask_qty]);
        match self.tops.get_mut(&u.symbol) {
            Some(tops) => {
                tops.insert(top);
            }
            None => {
                self.tops.insert(u.symbol.clone(), BTreeSet::from([top]));
            }
        }
        if u.trades.is_empty() {
            return;
        }
        let trades = self.trades.entry(u.symbol.clone()).or_default();
        trades.extend(u.trades.iter().map(|t| (t.match_seq, u.input_seq, t.price_cents, t.qty)));
    }
}

/// An agent's view of its own world, shared between its wake loop, its
/// request tasks and its stream listeners.
pub struct AgentState {
    pub user: u64,
    pub cash_cents: i64,
    pub holdings: BTreeMap<String, i64>,
    pub open: BTreeMap<u64, OpenOrder>,
    pub market: BTreeMap<String, SymbolView>,
    /// Execution reports and trades not yet passed to the agent.
    inbox: Vec<OwnedEvent>,
    orders: BTreeMap<u64, Tracked>,
    order_of_tag: BTreeMap<u64, u64>,
    /// What the agent was told, by order id.
    pub told: BTreeMap<u64, ToldOrder>,
    /// Every execution report and market-data update it received, for the checker.
    pub received: Received,
    /// The execution stream's cursor: a reconnect resumes after it (None
    /// before the first stream opened: a reconnect then starts from now).
    exec_cursor: Option<u64>,
    /// The cash and shares deposited at set-up.
    pub setup: (i64, BTreeMap<String, i64>),
    /// It sent hostile requests (its account must end as it was set up).
    pub hostile: bool,
}

/// What the checker needs of one agent's own world: its account, what it
/// was told of its orders, what it received, what it deposited at set-up
/// and whether it sent hostile requests. Serde, so that a worker of a
/// distributed run can hand it to the coordinator that checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentView {
    pub user: u64,
    pub told: BTreeMap<u64, ToldOrder>,
    pub received: Received,
    pub setup: (i64, BTreeMap<String, i64>),
    pub hostile: bool,
}

impl AgentState {
    /// A copy of what the checker needs of this agent.
    pub fn view(&self) -> AgentView {
        AgentView {
            user: self.user,
            told: self.told.clone(),
            received: self.received.clone(),
            setup: self.setup.clone(),
            hostile: self.hostile,
        }
    }
}

enum OwnedEvent {
    Fill { tag: u64, symbol: String, side: Side, price_cents: i64, qty: i64, remaining: i64 },
    Done { tag: u64 },
    Trade { symbol: String, price_cents: i64, qty: i64 },
}

/// The password of every agent's account (they are the harness's own
/// throwaway users; a coordinator of a distributed run logs in as them
/// again to check their accounts).
pub const AGENT_PASSWORD: &str = "agent-password";

/// A logged-in agent, its client and its shared state.
pub struct AgentHandle {
    pub name: String,
    pub client: Client,
    pub state: Arc<Mutex<AgentState>>,
    /// Set by a real run that calibrates (`fafnir calibrate`): the CPU of the
    /// agent's requests is metered on this clock as `loadgen.request`.
    pub cpu_clock: Option<Arc<dyn fafnir_platform::clock::Clock>>,
}

impl AgentHandle {
    /// Registers and logs in `name`, deposits its starting cash and shares.
    pub async fn setup(
        gateway: std::net::SocketAddr,
        name: &str,
        cash_cents: i64,
        holdings: &BTreeMap<String, i64>,
    ) -> Result<AgentHandle, String> {
        let role = fafnir_platform::proto::common::Role::Trader;
        let client = retry(|| Client::register_or_login(gateway, name, AGENT_PASSWORD, role))
            .await
            .map_err(|s| format!("{name}: register: {s}"))?;
        if cash_cents > 0 {
            retry(|| client.deposit_cash(cash_cents, "start")).await.map_err(|s| format!("{name}: deposit: {s}"))?;
        }
        for (symbol, qty) in holdings.iter().filter(|(_, q)| **q > 0) {
            let request_id = format!("start-{symbol}");
            retry(|| client.deposit_shares(symbol, *qty, &request_id))
                .await
                .map_err(|s| format!("{name}: deposit {symbol}: {s}"))?;
        }
        let state = AgentState {
            user: client.user_id,
            cash_cents,
            holdings: holdings.clone(),
            open: BTreeMap::new(),
            market: BTreeMap::new(),
            inbox: Vec::new(),
            orders: BTreeMap::new(),
            order_of_tag: BTreeMap::new(),
            told: BTreeMap::new(),
            received: Received::default(),
            exec_cursor: None,
            setup: (cash_cents, holdings.clone()),
            hostile: false,
        };
        Ok(AgentHandle { name: name.to_string(), client, state: Arc::new(Mutex::new(state)), cpu_clock: None })
    }
}

/// Retries a call while the platform is unavailable (set-up and gathering only;
/// the measured load never retries silently).
pub async fn retry<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut last = None;
    for _ in 0..100 {
        match call().await {
            Ok(v) => return Ok(v),
            Err(s) if transient(s.code()) => {
                last = Some(s);
                fafnir_platform::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// What a refused request's code says: a reason of the request (refused),
/// no answer in time, or a failure of the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Refused,
    TimedOut,
    Failed,
}

impl Answer {
    /// As the `outcome` label of [`loadgen::REQUESTS`] names it.
    fn label(self) -> &'static str {
        match self {
            Answer::Refused => "rejected",
            Answer::TimedOut => "timed_out",
            Answer::Failed => "failed",
        }
    }
}

fn answer_kind(code: Code) -> Answer {
    match code {
        Code::DeadlineExceeded => Answer::TimedOut,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied => Answer::Refused,
        // Unavailable, Internal, Unknown, Unauthenticated (a valid session's
        // token refused), ResourceExhausted (an agent is no flood), ...
        _ => Answer::Failed,
    }
}

fn transient(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Listens to the agent's execution reports until the stream ends.
async fn follow_executions(
    mut stream: tonic::Streaming<ExecutionReport>,
    state: Arc<Mutex<AgentState>>,
    rec: Arc<Mutex<Recorder>>,
) {
    while let Ok(Some(report)) = stream.message().await {
        let mut s = state.lock().expect("agent state");
        if report.kind.is_none() || report.cursor != 0 {
            // Settled notices carry no cursor; every other report (the opening one too) moves it.
            s.exec_cursor = Some(s.exec_cursor.unwrap_or(0).max(report.cursor));
        }
        s.received.report(&report);
        let mut r = rec.lock().expect("recorder");
        on_report(&mut s, &mut r, &report);
    }
}

/// Follows the agent's execution reports for as long as the task lives:
/// when the stream breaks (the gateway restarted, a partition), it
/// reconnects and resumes after the last report's cursor, so the agent is
/// told everything, late rather than never.
pub async fn keep_following_executions(handle: Arc<AgentHandle>, rec: Arc<Mutex<Recorder>>) {
    loop {
        let after = handle.state.lock().expect("agent state").exec_cursor;
        let opened = match after {
            Some(after) => retry(|| handle.client.executions_after(after)).await,
            None => retry(|| handle.client.executions()).await,
        };
        match opened {
            Ok(stream) => follow_executions(stream, handle.state.clone(), rec.clone()).await,
            Err(s) => tracing::warn!(agent = %handle.name, status = %s, "execution stream not reopened; trying again"),
        }
        fafnir_platform::time::sleep(Duration::from_millis(100)).await;
    }
}

fn on_report(s: &mut AgentState, r: &mut Recorder, report: &ExecutionReport) {
    let Some(tracked) = s.orders.get_mut(&report.order_id) else { return };
    let (tag, symbol, side) = (tracked.tag, tracked.symbol.clone(), tracked.side);
    match &report.kind {
        Some(execution_report::Kind::Fill(f)) => {
            r.counts.fills_reported += 1;
            metrics::counter!(loadgen::FILLS_REPORTED).increment(1);
            r.slot().fills += 1;
            if tracked.settled_first.remove(&f.match_seq) {
                // Settled before the owner heard of the fill: no lag to speak of.
                r.record_ns("fill_to_settled", 1);
            } else {
                tracked.fill_reported_at.insert(f.match_seq, Instant::now());
            }
            if !tracked.first_fill_seen {
                tracked.first_fill_seen = true;
                r.record("submit_to_first_fill", tracked.intended);
            }
            if f.remaining == 0 && !tracked.final_seen {
                tracked.final_seen = true;
                r.record("submit_to_final", tracked.intended);
            }
            if let Some(told) = s.told.get_mut(&report.order_id) {
                told.filled_qty += f.qty;
                told.filled_notional_cents += f.qty * f.price_cents;
            }
            let notional = f.qty * f.price_cents;
            let held = s.holdings.entry(symbol.clone()).or_default();
            match side {
                Side::Buy => {
                    s.cash_cents -= notional;
                    *held += f.qty;
                }
                Side::Sell => {
                    s.cash_cents += notional;
                    *held -= f.qty;
                }
            }
            if f.remaining == 0 {
                s.open.remove(&tag);
            } else if let Some(open) = s.open.get_mut(&tag) {
                open.remaining = f.remaining;
            }
            s.inbox.push(OwnedEvent::Fill {
                tag,
                symbol,
                side,
                price_cents: f.price_cents,
                qty: f.qty,
                remaining: f.remaining,
            });
        }
        Some(execution_report::Kind::Settled(st)) => match tracked.fill_reported_at.remove(&st.match_seq) {
            Some(at) => r.record("fill_to_settled", at),
            None => {
                tracked.settled_first.insert(st.match_seq);
            }
        },
        Some(execution_report::Kind::Closed(_)) => {
            if !tracked.final_seen {
                tracked.final_seen = true;
                r.record("submit_to_final", tracked.intended);
            }
            if let Some(told) = s.told.get_mut(&report.order_id) {
                told.closed = true;
            }
            s.open.remove(&tag);
            s.inbox.push(OwnedEvent::Done { tag });
        }
        None => {}
    }
}

/// Listens to market data until the stream ends.
pub async fn follow_market_data(
    mut stream: tonic::Streaming<MarketDataUpdate>,
    states: Vec<Arc<Mutex<AgentState>>>,
    rec: Arc<Mutex<Recorder>>,
    clock: Arc<dyn fafnir_platform::clock::Clock>,
) {
    use futures::FutureExt as _;
    while let Ok(Some(first)) = stream.message().await {
        // What has arrived by now is read together: one unit of the load
        // generator's work (a busy subscription reads its updates in batches).
        let mut batch = vec![first];
        while let Some(Ok(Some(u))) = stream.message().now_or_never() {
            batch.push(u);
        }
        loadgen_work(LOADGEN_MARKET_DATA).await;
        let now_us = clock.now_us();
        for u in batch {
            received_market_data(&u, now_us, &states, &rec);
        }
    }
}

/// One market-data update received at `now_us`: its fan-out latency recorded,
/// and every agent of the subscription told.
fn received_market_data(u: &MarketDataUpdate, now_us: i64, states: &[Arc<Mutex<AgentState>>], rec: &Mutex<Recorder>) {
    {
        let mut r = rec.lock().expect("recorder");
        r.counts.md_updates += 1;
        // From the engine publishing the update (its timestamp, µs) to this receipt.
        let published_us = if u.ts_us > 0 { u.ts_us } else { u.ts_ms.saturating_mul(1_000) };
        r.record_ns("md_fanout", (now_us.saturating_sub(published_us)).max(0) as u64 * 1_000);
    }
    for (i, state) in states.iter().enumerate() {
        let mut s = state.lock().expect("agent state");
        if i == 0 {
            // What was received is kept once, with the subscriber's account.
            s.received.market_data(u);
        }
        let view = s.market.entry(u.symbol.clone()).or_default();
        view.bid = (u.bid_qty > 0).then_some((u.bid_cents, u.bid_qty));
        view.ask = (u.ask_qty > 0).then_some((u.ask_cents, u.ask_qty));
        if let Some(t) = u.trades.last() {
            view.last = Some(t.price_cents);
        }
        for t in &u.trades {
            s.inbox.push(OwnedEvent::Trade { symbol: u.symbol.clone(), price_cents: t.price_cents, qty: t.qty });
        }
    }
}

/// Runs one agent's schedule from `t0` for `duration`; returns when every
/// request it sent has been answered (or has timed out).
pub async fn run_agent(
    mut agent: Box<dyn Agent>,
    handle: Arc<AgentHandle>,
    rec: Arc<Mutex<Recorder>>,
    t0: Instant,
    duration: Duration,
) {
    let end_us = duration.as_micros() as u64;
    let mut next = agent.start(0);
    let mut inflight = Vec::new();
    let mut intents = Vec::new();
    while next < end_us {
        let intended = t0 + Duration::from_micros(next);
        // For real, finer than tokio's 1 ms timer wheel (see `precise`).
        #[cfg(not(madsim))]
        crate::precise::sleep_until(intended).await;
        #[cfg(madsim)]
        fafnir_platform::time::sleep_until(intended).await;
        // The real load generator wakes this late (a calibration's send lag);
        // the simulated agent decides on time, on the view of the market the
        // same seed gives the real one, and its requests leave this late.
        #[cfg(madsim)]
        let late = draw_send_lag();
        #[cfg(not(madsim))]
        let late = Duration::ZERO;
        let lag = (Instant::now() + late).saturating_duration_since(intended).as_nanos().max(1) as u64;
        rec.lock().expect("recorder").send_lag.saturating_record(lag);
        intents.clear();
        let wake = {
            let mut s = handle.state.lock().expect("agent state");
            for e in std::mem::take(&mut s.inbox) {
                agent.observe(&borrow(&e));
            }
            let view = View {
                now_us: next,
                now_ms: next / 1_000,
                market: &s.market,
                cash_cents: s.cash_cents,
                holdings: &s.holdings,
                open: &s.open,
            };
            agent.wake(&view, &mut intents)
        };
        for intent in intents.drain(..) {
            let request = execute(intent, handle.clone(), rec.clone(), intended);
            let request = async move {
                if !late.is_zero() {
                    fafnir_platform::time::sleep(late).await;
                }
                request.await
            };
            let metered =
                fafnir_platform::telemetry::cpu_metered_on(handle.cpu_clock.clone(), LOADGEN_REQUEST, request);
            inflight.push(tokio::spawn(metered));
        }
        match wake {
            Some(t) if t > next => next = t,
            Some(t) => panic!("agent {} asked to wake at {t} µs, not after {next} µs", handle.name),
            None => break,
        }
    }
    for task in inflight {
        let _ = task.await;
    }
}

fn borrow(e: &OwnedEvent) -> Event<'_> {
    match e {
        OwnedEvent::Fill { tag, symbol, side, price_cents, qty, remaining } => {
            Event::Fill { tag: *tag, symbol, side: *side, price_cents: *price_cents, qty: *qty, remaining: *remaining }
        }
        OwnedEvent::Done { tag } => Event::Done { tag: *tag },
        OwnedEvent::Trade { symbol, price_cents, qty } => Event::Trade { symbol, price_cents: *price_cents, qty: *qty },
    }
}

/// A request of the load generator sent and not yet answered, counted in
/// [`loadgen::IN_FLIGHT`] while it lives.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        metrics::gauge!(loadgen::IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(loadgen::IN_FLIGHT).decrement(1.0);
    }
}

#[cfg(madsim)]
thread_local! {
    /// The load generator's modelled time per request in the simulated world
    /// on this thread (see `World::loadgen`); None: it takes none.
    static LOADGEN_TIME: std::cell::RefCell<Option<Arc<dyn fafnir_platform::services::ServiceTime>>> =
        const { std::cell::RefCell::new(None) };
}

/// Sets (or clears) the load generator's modelled time per request for the
/// simulation on this thread.
#[cfg(madsim)]
pub fn set_loadgen_time(model: Option<Arc<dyn fafnir_platform::services::ServiceTime>>) {
    LOADGEN_TIME.with(|m| *m.borrow_mut() = model);
}

#[cfg(madsim)]
thread_local! {
    /// The real load generator's send lag in the simulated world on this
    /// thread (a calibration's `send_lag_us`) and the draws' generator; None:
    /// agents wake on time.
    static SEND_LAG: std::cell::RefCell<Option<(Vec<[u64; 2]>, fafnir_platform::rng::SplitMix64)>> =
        const { std::cell::RefCell::new(None) };
}

/// Sets (or clears) the simulated load generator's send lag on this thread:
/// each agent wakes late by a draw from the quantile points (`[thousandths,
/// µs]`), from a generator seeded by `seed`.
#[cfg(madsim)]
pub fn set_send_lag(points: Option<Vec<[u64; 2]>>, seed: u64) {
    let model = points.map(|p| (p, fafnir_platform::rng::SplitMix64::new(seed)));
    SEND_LAG.with(|m| *m.borrow_mut() = model);
}

#[cfg(madsim)]
fn draw_send_lag() -> Duration {
    SEND_LAG.with(|m| match &mut *m.borrow_mut() {
        Some((points, rng)) => quantile_us(points, rng.range(0, 999_999)),
        None => Duration::ZERO,
    })
}

/// The value at `millionths` of quantile points `[thousandths, µs]`,
/// interpolated between the two around it (to the nanosecond).
pub fn quantile_us(points: &[[u64; 2]], millionths: u64) -> Duration {
    let points = points.iter().map(|&[at, us]| (u128::from(at) * 1_000, u128::from(us) * 1_000));
    Duration::from_nanos(fafnir_sim::service_time::interpolate(points, u128::from(millionths)) as u64)
}

/// The load generator's work for one request (a submit or a cancel).
pub const LOADGEN_REQUEST: &str = "loadgen.request";
/// The load generator's work for one market-data update received on one
/// subscription (priced only by a calibration that measured it).
pub const LOADGEN_MARKET_DATA: &str = "loadgen.market_data";

/// The load generator's own work for one unit of `work`: its modelled time
/// in simulation (it shares the machine's cores with the platform for real,
/// where it is counted for `fafnir calibrate`).
async fn loadgen_work(work: &'static str) {
    metrics::counter!(fafnir_platform::telemetry::WORK_UNITS, "work" => work).increment(1);
    #[cfg(madsim)]
    {
        let model = LOADGEN_TIME.with(|m| m.borrow().clone());
        if let Some(model) = model {
            match work {
                LOADGEN_REQUEST => model.process(work).await,
                _ => model.process_if_named(work).await,
            }
        }
    }
}

async fn execute(intent: Intent, handle: Arc<AgentHandle>, rec: Arc<Mutex<Recorder>>, intended: Instant) {
    loadgen_work(LOADGEN_REQUEST).await;
    match intent {
        Intent::Submit { tag, symbol, side, kind, price_cents, qty } => {
            let coid = format!("t{tag}");
            let order_id = order_id_for(UserId(handle.client.user_id), &coid).0;
            {
                let mut s = handle.state.lock().expect("agent state");
                s.open.insert(tag, OpenOrder { symbol: symbol.clone(), side, price_cents, remaining: qty });
                let tracked = Tracked {
                    tag,
                    symbol: symbol.clone(),
                    side,
                    intended,
                    first_fill_seen: false,
                    final_seen: false,
                    fill_reported_at: BTreeMap::new(),
                    settled_first: BTreeSet::new(),
                };
                s.orders.insert(order_id, tracked);
                s.order_of_tag.insert(tag, order_id);
                let account = s.user;
                s.told.insert(order_id, ToldOrder { account, symbol: symbol.clone(), ..ToldOrder::default() });
            }
            {
                let mut r = rec.lock().expect("recorder");
                r.counts.submitted += 1;
                r.slot().submitted += 1;
            }
            metrics::counter!(loadgen::ORDERS_OFFERED).increment(1);
            let in_flight = InFlight::new();
            let spec = OrderSpec {
                client_order_id: coid,
                symbol,
                side: match side {
                    Side::Buy => ProtoSide::Buy,
                    Side::Sell => ProtoSide::Sell,
                },
                order_type: match kind {
                    OrderKind::Market => OrderType::Market,
                    OrderKind::Limit => OrderType::Limit,
                    OrderKind::Ioc => OrderType::Ioc,
                    OrderKind::Fok => OrderType::Fok,
                },
                price_cents,
                qty,
            };
            let result = handle.client.submit(&spec).await;
            drop(in_flight);
            let outcome = match &result {
                Ok(_) => "accepted",
                Err(status) => answer_kind(status.code()).label(),
            };
            metrics::counter!(loadgen::REQUESTS, "op" => "submit", "outcome" => outcome).increment(1);
            let mut r = rec.lock().expect("recorder");
            let sent = intended.saturating_duration_since(r.t0).as_millis() as u64;
            let answered = r.elapsed_ms();
            r.submits.push((sent, answered));
            match result {
                Ok(_) => {
                    r.record("submit_to_ack", intended);
                    r.counts.accepted += 1;
                    r.slot().accepted += 1;
                }
                Err(status) => {
                    match answer_kind(status.code()) {
                        Answer::TimedOut => {
                            r.counts.timed_out += 1;
                            r.slot().timed_out += 1;
                            r.error("submit", &status);
                        }
                        Answer::Failed => {
                            r.counts.failed += 1;
                            r.slot().failed += 1;
                            r.error("submit", &status);
                        }
                        Answer::Refused => {
                            r.counts.rejected += 1;
                            r.slot().rejected += 1;
                        }
                    }
                    drop(r);
                    let mut s = handle.state.lock().expect("agent state");
                    s.open.remove(&tag);
                    s.inbox.push(OwnedEvent::Done { tag });
                    // Whether a failed (not refused) submit landed is unknown: it is not "told".
                    s.told.remove(&order_id);
                }
            }
        }
        Intent::Hostile(request) => {
            handle.state.lock().expect("agent state").hostile = true;
            let outcome = crate::hostile_calls::send(&handle.client, &request).await;
            rec.lock().expect("recorder").hostile.record(&request, outcome);
        }
        Intent::Cancel { tag } => {
            let order_id = handle.state.lock().expect("agent state").order_of_tag.get(&tag).copied();
            let Some(order_id) = order_id else { return };
            rec.lock().expect("recorder").counts.cancels += 1;
            let in_flight = InFlight::new();
            let result = handle.client.cancel(order_id).await;
            drop(in_flight);
            let outcome = match &result {
                Ok(_) => "accepted",
                Err(status) => answer_kind(status.code()).label(),
            };
            metrics::counter!(loadgen::REQUESTS, "op" => "cancel", "outcome" => outcome).increment(1);
            let mut r = rec.lock().expect("recorder");
            match result.map_err(|s| (answer_kind(s.code()), s)) {
                Ok(_) => {
                    r.counts.cancels_acked += 1;
                    r.record("cancel_to_ack", intended);
                }
                Err((Answer::Refused, _)) => r.counts.cancels_rejected += 1,
                Err((Answer::Failed, status)) => {
                    r.counts.cancels_failed += 1;
                    r.error("cancel", &status);
                }
                Err((Answer::TimedOut, status)) => {
                    r.counts.cancels_timed_out += 1;
                    r.error("cancel", &status);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quantile_us;
    use std::time::Duration;

    #[test]
    fn a_quantile_is_interpolated_between_the_points_around_it() {
        let points = [[0, 100], [500, 200], [990, 400], [1_000, 500]];
        let us = Duration::from_micros;
        assert_eq!(quantile_us(&points, 0), us(100));
        assert_eq!(quantile_us(&points, 250_000), us(150));
        assert_eq!(quantile_us(&points, 500_000), us(200));
        assert_eq!(quantile_us(&points, 995_000), us(450));
        assert_eq!(quantile_us(&points, 999_999), Duration::from_nanos(499_990));
        assert_eq!(quantile_us(&points, 1_000_000), us(500));
        assert_eq!(quantile_us(&[], 500_000), Duration::ZERO);
    }
}
