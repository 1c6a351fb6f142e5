//! The fill checker: decides, from what the platform stored and reports after a
//! run has quiesced, whether every fill was right. Lives outside `platform/`
//! and shares none of its matching or ledger code (see `reference.rs`).
//!
//! [`check`] runs eleven checks over a [`CheckInput`] and returns a [`Verdict`]
//! with one [`CheckResult`] per check, under these stable names:
//!
//! | name | what must hold |
//! |---|---|
//! | `fills_match_reference` | a simple reference book fed each symbol's ORDERS yields exactly the engine's TRADES events |
//! | `no_trade_through_or_overfill` | fills respect limits, happen at the maker's price, never exceed an order |
//! | `conservation` | total cash and shares per symbol equal what was deposited |
//! | `every_order_accounted` | each accepted order ends filled, canceled, rejected or resting; its record agrees |
//! | `settled_exactly_once` | each account's cash and holdings equal deposits plus each fill once |
//! | `no_negative_balance` | no negative cash, reservations or holdings; reserved never above owned |
//! | `reservations_balance` | reserved cash and shares equal what the open orders still need |
//! | `agents_told_the_truth` | what agents were told equals the platform's final records |
//! | `market_data_agrees` | each trade and top of book agents received, and the final quotes and candles, agree with TRADES and the reference book |
//! | `reports_isolated` | every execution report an agent received is of its own order |
//! | `hostile_refused` | every hostile request was refused, and each hostile account ends as it was set up, with no order |
//!
//! Bad data never panics: a malformed event is itself a violation.
//!
//! # Layout
//! - `facts`: the input decoded and indexed once (accepted orders, fills, per-order activity, ledger).
//! - `reference`: the reference book, a Vec of resting orders per side scanned linearly.
//! - `matching`: checks 1 and 2 (the engine's fills).
//! - `money`: checks 3, 5, 6 and 7 (cash, shares, reservations).
//! - `lifecycle`: checks 4 and 8 (order records and what agents were told).
//! - `market`: check 9 (market data, quotes and candles).
//! - `isolation`: check 10 (whose execution reports each agent received).
//! - `hostile`: check 11 (hostile requests refused without effect).

mod facts;
mod hostile;
mod isolation;
mod lifecycle;
mod market;
mod matching;
mod money;
pub mod reference;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use fafnir_platform::domain::Instrument;
use fafnir_platform::proto::common::{Candle, Order, PortfolioView, Quote};
use fafnir_platform::proto::events::{EngineEvent, LedgerEvent, OrderEvent};
use serde::{Deserialize, Serialize};

/// What an agent was told about one of its orders, from its execution reports
/// and submit/cancel replies.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToldOrder {
    pub account: u64,
    pub symbol: String,
    /// Sum of the fill quantities in the execution reports.
    pub filled_qty: i64,
    /// Sum of price * qty over those fills, in cents.
    pub filled_notional_cents: i64,
    /// A Closed report arrived (canceled, expired, killed or rejected).
    pub closed: bool,
}

/// Everything the checker looks at, gathered after the liveness phase.
#[derive(Clone, Debug, Default)]
pub struct CheckInput {
    pub instruments: Vec<Instrument>,
    /// The ORDERS stream, decoded, in stream order: (stream sequence, event).
    pub orders_stream: Vec<(u64, OrderEvent)>,
    /// The TRADES stream, decoded, in stream order.
    pub trades_stream: Vec<(u64, EngineEvent)>,
    /// The LEDGER stream, decoded, in stream order.
    pub ledger_stream: Vec<(u64, LedgerEvent)>,
    /// Final portfolio of every account, as the platform reports it (GetPortfolio).
    pub portfolios: BTreeMap<u64, PortfolioView>,
    /// Final record of every order, as the platform reports it (GetOrder/ListOrders), by order id.
    pub orders: BTreeMap<u64, Order>,
    /// What the agents were told, by order id (orders an agent never heard of are absent).
    pub told: BTreeMap<u64, ToldOrder>,
    /// Every execution report the agents received (a report received twice by one agent once).
    pub reports: Vec<ReceivedReport>,
    /// Every distinct top of book in the market data the agents received,
    /// with the first account that received it.
    pub md_tops: Vec<ReceivedTop>,
    /// Every distinct trade in the market data the agents received, likewise.
    pub md_trades: Vec<ReceivedTrade>,
    /// Each symbol's quote and candles as the market serves them after the
    /// liveness phase (through the gateway); None when not gathered.
    pub market: Option<BTreeMap<String, Served>>,
    /// What the hostile agents' requests met.
    pub hostile: crate::hostile_calls::HostileLog,
    /// The hostile agents' accounts and what each deposited at set-up (cash,
    /// shares by symbol): all they may end with.
    pub hostile_accounts: BTreeMap<u64, (i64, BTreeMap<String, i64>)>,
}

/// An execution report an agent received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedReport {
    /// The receiving agent's account.
    pub account: u64,
    pub order_id: u64,
    pub kind: ReportKind,
    /// The report's place in the execution stream (a TRADES sequence; 0 for settled notices).
    pub cursor: u64,
}

/// What an execution report said, as far as whose it is goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReportKind {
    /// A stream's first report: no order, only the cursor it starts after.
    Opening,
    /// A fill of the order, on the maker's side or the taker's.
    Fill {
        match_seq: u64,
        maker: bool,
    },
    Closed,
    /// The portfolio settled this fill of the order.
    Settled {
        match_seq: u64,
    },
}

/// A top of book in a market-data update an agent received: the engine input
/// it reflects and the best bid and ask in cents with their sizes (0 and 0
/// for an empty side).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedTop {
    pub account: u64,
    pub symbol: String,
    pub input_seq: u64,
    pub bid_cents: i64,
    pub bid_qty: i64,
    pub ask_cents: i64,
    pub ask_qty: i64,
}

/// A trade in a market-data update an agent received, with the input of that update.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReceivedTrade {
    pub account: u64,
    pub symbol: String,
    pub input_seq: u64,
    pub match_seq: u64,
    pub price_cents: i64,
    pub qty: i64,
}

/// What the market serves of one symbol: its quote and candles (GetQuote, GetCandles).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub quote: Quote,
    pub candles: Vec<Candle>,
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// How many violations in all.
    pub violations: usize,
    /// The first few, each one line a person can act on.
    pub first: Vec<String>,
}

/// The checker's verdict on a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<CheckResult>,
}

/// At most this many violations are listed per check.
pub const FIRST_MAX: usize = 10;

/// Runs every check; never panics on bad data (a malformed event is a violation).
pub fn check(input: &CheckInput) -> Verdict {
    let facts = facts::Facts::new(input);
    let reference = matching::run_reference(&facts);
    let checks = vec![
        matching::fills_match_reference(&facts, &reference),
        matching::no_trade_through_or_overfill(&facts),
        money::conservation(&facts),
        lifecycle::every_order_accounted(&facts, &reference),
        money::settled_exactly_once(&facts),
        money::no_negative_balance(&facts),
        money::reservations_balance(&facts),
        lifecycle::agents_told_the_truth(&facts),
        market::market_data_agrees(&facts, &reference),
        isolation::reports_isolated(&facts),
        hostile::hostile_refused(&facts),
    ];
    Verdict { passed: checks.iter().all(|c| c.passed), checks }
}

/// Collects one check's violations, keeping the first [`FIRST_MAX`] lines.
struct Tally {
    name: &'static str,
    violations: usize,
    first: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Tally {
        Tally { name, violations: 0, first: Vec::new() }
    }

    /// Records one violation; `line` is only built while it will be kept.
    fn flag(&mut self, line: impl FnOnce() -> String) {
        self.violations += 1;
        if self.first.len() < FIRST_MAX {
            self.first.push(line());
        }
    }

    fn finish(self) -> CheckResult {
        CheckResult {
            name: self.name.to_string(),
            passed: self.violations == 0,
            violations: self.violations,
            first: self.first,
        }
    }
}
