//! The checker's input decoded and indexed once, so that each check reads plain
//! values: accepted orders, each symbol's engine inputs and events, the fills
//! (each fill id once), what happened to each order, and the ledger.
//!
//! Nothing here panics on bad data: an event that cannot be understood is left
//! out and described in one of the `malformed_*` lists, which the checks report.

use std::collections::{BTreeMap, BTreeSet};

use fafnir_platform::domain::{CloseReason, Instrument, OrderType, Side};
use fafnir_platform::proto::common;
use fafnir_platform::proto::events::{self, engine_event, ledger_event, order_event, EngineEvent, FillEvent};

use super::reference::RefOrder;
use super::CheckInput;

/// An accepted order as ORDERS holds it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Accepted<'a> {
    /// ORDERS stream sequence of the acceptance.
    pub seq: u64,
    pub symbol: &'a str,
    pub order: RefOrder,
    pub reserve_price_ticks: i64,
    pub inst: &'a Instrument,
}

impl Accepted<'_> {
    pub fn id(&self) -> u64 {
        self.order.id
    }

    pub fn account(&self) -> u64 {
        self.order.account
    }
}

/// One ORDERS input of a symbol's engine, in stream order.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Input<'a> {
    /// Every acceptance, duplicates included (the engine ignores those).
    Accept(Accepted<'a>),
    Cancel {
        seq: u64,
        order: u64,
    },
    /// An accept saga given up before acceptance (the engine ignores it).
    Abandon {
        seq: u64,
        order: u64,
    },
}

/// A TRADES event and where it sits in the stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stored<'a> {
    pub trades_seq: u64,
    pub event: &'a EngineEvent,
}

impl Stored<'_> {
    /// Where the event is, for messages.
    pub fn at(&self) -> String {
        let e = self.event;
        format!("TRADES#{} ({} ORDERS#{}.{})", self.trades_seq, e.symbol, e.input_seq, e.index)
    }
}

/// A well-formed fill, the first TRADES event with its fill id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fill<'a> {
    pub trades_seq: u64,
    pub input_seq: u64,
    /// The event's timestamp (its input's): which candle the fill is in.
    pub ts_ms: i64,
    pub symbol: &'a str,
    pub f: &'a FillEvent,
    pub taker_side: Side,
    pub tick_cents: i64,
}

impl Fill<'_> {
    /// (buy order, buyer, sell order, seller).
    pub fn parties(&self) -> (u64, u64, u64, u64) {
        let f = self.f;
        match self.taker_side {
            Side::Buy => (f.taker_order, f.taker_account, f.maker_order, f.maker_account),
            Side::Sell => (f.maker_order, f.maker_account, f.taker_order, f.taker_account),
        }
    }

    pub fn notional_cents(&self) -> i64 {
        notional_cents(self.f.price_ticks, self.f.qty, self.tick_cents)
    }
}

/// A TRADES fill whose fill id (symbol, match_seq) appeared before.
#[derive(Clone, Debug)]
pub(crate) struct DuplicateFill {
    pub symbol: String,
    pub match_seq: u64,
    pub first_trades_seq: u64,
    pub trades_seq: u64,
    /// The repeat carries exactly the same event.
    pub identical: bool,
}

/// What the engine's events say happened to one order.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Activity {
    /// Over its distinct fills.
    pub filled_qty: i64,
    pub filled_notional_cents: i64,
    /// The first close: reason and remaining.
    pub closed: Option<(CloseReason, i64)>,
    /// TRADES events naming the order in any role, repeats included.
    pub events: usize,
}

/// A cash deposit (symbol None) or a share deposit, the first with its request id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deposit<'a> {
    pub account: u64,
    pub cents: i64,
    pub symbol: Option<&'a str>,
    pub qty: i64,
}

/// A reservation as LEDGER recorded it (the first for its order).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reservation<'a> {
    pub ledger_seq: u64,
    pub order: u64,
    pub account: u64,
    pub symbol: &'a str,
    pub side: Side,
    pub qty: i64,
    pub price_ticks: i64,
    pub tick_cents: i64,
}

impl Reservation<'_> {
    /// Cash this reservation holds (buys) or 0 (sells hold shares).
    pub fn cents(&self) -> i64 {
        match self.side {
            Side::Buy => notional_cents(self.price_ticks, self.qty, self.tick_cents),
            Side::Sell => 0,
        }
    }
}

/// The indexed input. See the module docs.
pub(crate) struct Facts<'a> {
    pub input: &'a CheckInput,
    pub instruments: BTreeMap<&'a str, &'a Instrument>,
    /// Each order id's first acceptance.
    pub accepted: BTreeMap<u64, Accepted<'a>>,
    /// Each symbol's engine inputs, in ORDERS order.
    pub inputs: BTreeMap<&'a str, Vec<Input<'a>>>,
    /// Each symbol's TRADES events, in stream order.
    pub engine: BTreeMap<&'a str, Vec<Stored<'a>>>,
    /// Distinct well-formed fills, in TRADES order.
    pub fills: Vec<Fill<'a>>,
    /// Where each of those is in `fills`, by fill id (symbol, match_seq).
    pub fill_index: BTreeMap<(&'a str, u64), usize>,
    pub duplicate_fills: Vec<DuplicateFill>,
    pub activity: BTreeMap<u64, Activity>,
    pub deposits: Vec<Deposit<'a>>,
    deposit_ids: BTreeSet<&'a str>,
    pub reservations: BTreeMap<u64, Reservation<'a>>,
    pub released: BTreeSet<u64>,
    /// Orders given up before acceptance, and where.
    pub abandoned: BTreeMap<u64, u64>,
    pub malformed_orders: Vec<String>,
    pub malformed_trades: Vec<String>,
    pub malformed_ledger: Vec<String>,
}

impl<'a> Facts<'a> {
    pub fn new(input: &'a CheckInput) -> Facts<'a> {
        let mut facts = Facts {
            input,
            instruments: input.instruments.iter().map(|i| (i.symbol.as_str(), i)).collect(),
            accepted: BTreeMap::new(),
            inputs: BTreeMap::new(),
            engine: BTreeMap::new(),
            fills: Vec::new(),
            fill_index: BTreeMap::new(),
            duplicate_fills: Vec::new(),
            activity: BTreeMap::new(),
            deposits: Vec::new(),
            deposit_ids: BTreeSet::new(),
            reservations: BTreeMap::new(),
            released: BTreeSet::new(),
            abandoned: BTreeMap::new(),
            malformed_orders: Vec::new(),
            malformed_trades: Vec::new(),
            malformed_ledger: Vec::new(),
        };
        for (seq, e) in &input.orders_stream {
            facts.add_order_event(*seq, e);
        }
        let mut fill_ids: BTreeMap<(&str, u64), Stored<'a>> = BTreeMap::new();
        for (seq, e) in &input.trades_stream {
            facts.add_engine_event(Stored { trades_seq: *seq, event: e }, &mut fill_ids);
        }
        for (seq, e) in &input.ledger_stream {
            facts.add_ledger_event(*seq, e);
        }
        facts
    }

    fn add_order_event(&mut self, seq: u64, e: &'a events::OrderEvent) {
        match &e.kind {
            Some(order_event::Kind::Accepted(a)) => match self.parse_accepted(seq, a) {
                Ok(accepted) => {
                    self.accepted.entry(a.order_id).or_insert(accepted);
                    self.inputs.entry(&a.symbol).or_default().push(Input::Accept(accepted));
                }
                Err(why) => self.malformed_orders.push(format!(
                    "ORDERS#{seq}: {} order {:x} (account {}) malformed: {why}",
                    a.symbol, a.order_id, a.user_id
                )),
            },
            Some(order_event::Kind::Cancel(c)) => {
                self.inputs.entry(&c.symbol).or_default().push(Input::Cancel { seq, order: c.order_id });
            }
            Some(order_event::Kind::Abandoned(a)) => {
                self.abandoned.entry(a.order_id).or_insert(seq);
                self.inputs.entry(&a.symbol).or_default().push(Input::Abandon { seq, order: a.order_id });
            }
            None => self.malformed_orders.push(format!("ORDERS#{seq}: empty event (no accepted, no cancel)")),
        }
    }

    fn parse_accepted(&self, seq: u64, a: &'a events::OrderAccepted) -> Result<Accepted<'a>, String> {
        let inst = *self.instruments.get(a.symbol.as_str()).ok_or("unknown symbol")?;
        let side = side_of(a.side).ok_or_else(|| format!("side {}", a.side))?;
        let kind = order_type_of(a.order_type).ok_or_else(|| format!("order type {}", a.order_type))?;
        if a.qty <= 0 {
            return Err(format!("qty {}", a.qty));
        }
        let limit_ticks = match kind {
            OrderType::Market if a.limit_ticks != 0 => {
                return Err(format!("market order with limit {}", a.limit_ticks))
            }
            OrderType::Market => None,
            _ if a.limit_ticks <= 0 => return Err(format!("{kind:?} order with limit {}", a.limit_ticks)),
            _ => Some(a.limit_ticks),
        };
        let order = RefOrder { id: a.order_id, account: a.user_id, side, kind, limit_ticks, qty: a.qty };
        Ok(Accepted { seq, symbol: &a.symbol, order, reserve_price_ticks: a.reserve_price_ticks, inst })
    }

    fn add_engine_event(&mut self, stored: Stored<'a>, fill_ids: &mut BTreeMap<(&'a str, u64), Stored<'a>>) {
        let e = stored.event;
        self.engine.entry(&e.symbol).or_default().push(stored);
        match &e.kind {
            Some(engine_event::Kind::Fill(f)) => {
                self.touch(f.maker_order);
                if f.taker_order != f.maker_order {
                    self.touch(f.taker_order);
                }
                let Some(first) = fill_ids.get(&(e.symbol.as_str(), f.match_seq)) else {
                    fill_ids.insert((&e.symbol, f.match_seq), stored);
                    self.add_fill(stored, f);
                    return;
                };
                self.duplicate_fills.push(DuplicateFill {
                    symbol: e.symbol.clone(),
                    match_seq: f.match_seq,
                    first_trades_seq: first.trades_seq,
                    trades_seq: stored.trades_seq,
                    identical: first.event.kind == e.kind,
                });
            }
            Some(engine_event::Kind::Rested(r)) => self.touch(r.order_id),
            Some(engine_event::Kind::Closed(c)) => {
                self.touch(c.order_id);
                let Some(reason) = close_reason_of(c.reason) else {
                    let order = c.order_id;
                    self.malformed_trades.push(format!(
                        "{}: close of order {order:x} with reason {}",
                        stored.at(),
                        c.reason
                    ));
                    return;
                };
                let activity = self.activity.entry(c.order_id).or_default();
                activity.closed.get_or_insert((reason, c.remaining));
            }
            Some(engine_event::Kind::Ignored(i)) => self.touch(i.order_id),
            None => self.malformed_trades.push(format!("{}: empty event", stored.at())),
        }
    }

    fn touch(&mut self, order: u64) {
        self.activity.entry(order).or_default().events += 1;
    }

    fn add_fill(&mut self, stored: Stored<'a>, f: &'a FillEvent) {
        let e = stored.event;
        let Some(inst) = self.instruments.get(e.symbol.as_str()) else {
            self.malformed_trades.push(format!("{}: fill match_seq {} of unknown symbol", stored.at(), f.match_seq));
            return;
        };
        let Some(taker_side) = side_of(f.taker_side) else {
            self.malformed_trades.push(format!(
                "{}: fill match_seq {} with taker side {}",
                stored.at(),
                f.match_seq,
                f.taker_side
            ));
            return;
        };
        let fill = Fill {
            trades_seq: stored.trades_seq,
            input_seq: e.input_seq,
            ts_ms: e.ts_ms,
            symbol: &e.symbol,
            f,
            taker_side,
            tick_cents: inst.tick_cents,
        };
        let notional = fill.notional_cents();
        let orders =
            if f.maker_order == f.taker_order { vec![f.maker_order] } else { vec![f.maker_order, f.taker_order] };
        for order in orders {
            let a = self.activity.entry(order).or_default();
            a.filled_qty = a.filled_qty.saturating_add(f.qty);
            a.filled_notional_cents = a.filled_notional_cents.saturating_add(notional);
        }
        self.fill_index.insert((fill.symbol, f.match_seq), self.fills.len());
        self.fills.push(fill);
    }

    /// The fill with id (`symbol`, `match_seq`), if TRADES holds a well-formed one.
    pub fn fill(&self, symbol: &str, match_seq: u64) -> Option<&Fill<'a>> {
        self.fill_index.get(&(symbol, match_seq)).map(|&i| &self.fills[i])
    }

    fn add_ledger_event(&mut self, seq: u64, e: &'a events::LedgerEvent) {
        match &e.kind {
            Some(ledger_event::Kind::Deposited(d)) => self.add_deposit(seq, d),
            Some(ledger_event::Kind::Reserved(r)) => {
                let inst = self.instruments.get(r.symbol.as_str());
                let (Some(inst), Some(side), true) = (inst, side_of(r.side), r.qty > 0 && r.price_ticks > 0) else {
                    self.malformed_ledger.push(format!(
                        "LEDGER#{seq}: reservation of order {:x} (account {}) malformed: {} side {} qty {} @ {} ticks",
                        r.order_id, r.account, r.symbol, r.side, r.qty, r.price_ticks
                    ));
                    return;
                };
                self.reservations.entry(r.order_id).or_insert(Reservation {
                    ledger_seq: seq,
                    order: r.order_id,
                    account: r.account,
                    symbol: &r.symbol,
                    side,
                    qty: r.qty,
                    price_ticks: r.price_ticks,
                    tick_cents: inst.tick_cents,
                });
            }
            Some(ledger_event::Kind::Released(r)) => {
                self.released.insert(r.order_id);
            }
            // Informational notices: they move no money.
            Some(ledger_event::Kind::Settled(_)) => {}
            None => self.malformed_ledger.push(format!("LEDGER#{seq}: empty event")),
        }
    }

    fn add_deposit(&mut self, seq: u64, d: &'a events::Deposited) {
        let valid = if d.symbol.is_empty() {
            d.cents > 0 && d.qty == 0
        } else {
            self.instruments.contains_key(d.symbol.as_str()) && d.qty > 0 && d.cents == 0
        };
        if !valid {
            self.malformed_ledger.push(format!(
                "LEDGER#{seq}: deposit {:?} to account {} malformed: {} cents, {} shares of {:?}",
                d.request_id, d.account, d.cents, d.qty, d.symbol
            ));
            return;
        }
        // The ledger dedupes deposits by request id (a retried deposit).
        if !self.deposit_ids.insert(&d.request_id) {
            return;
        }
        let symbol = (!d.symbol.is_empty()).then_some(d.symbol.as_str());
        self.deposits.push(Deposit { account: d.account, cents: d.cents, symbol, qty: d.qty });
    }
}

/// price * qty * tick in cents; saturates rather than panics on absurd data.
pub(crate) fn notional_cents(price_ticks: i64, qty: i64, tick_cents: i64) -> i64 {
    price_ticks.saturating_mul(tick_cents).saturating_mul(qty)
}

pub(crate) fn side_of(v: i32) -> Option<Side> {
    match common::Side::try_from(v) {
        Ok(common::Side::Buy) => Some(Side::Buy),
        Ok(common::Side::Sell) => Some(Side::Sell),
        _ => None,
    }
}

pub(crate) fn order_type_of(v: i32) -> Option<OrderType> {
    match common::OrderType::try_from(v) {
        Ok(common::OrderType::Market) => Some(OrderType::Market),
        Ok(common::OrderType::Limit) => Some(OrderType::Limit),
        Ok(common::OrderType::Ioc) => Some(OrderType::Ioc),
        Ok(common::OrderType::Fok) => Some(OrderType::Fok),
        _ => None,
    }
}

pub(crate) fn close_reason_of(v: i32) -> Option<CloseReason> {
    match events::CloseReason::try_from(v) {
        Ok(events::CloseReason::Canceled) => Some(CloseReason::Canceled),
        Ok(events::CloseReason::Expired) => Some(CloseReason::Expired),
        Ok(events::CloseReason::Killed) => Some(CloseReason::Killed),
        Ok(events::CloseReason::Rejected) => Some(CloseReason::Rejected),
        _ => None,
    }
}

/// An order status by name, for messages (`FILLED`, or the raw number if unknown).
pub(crate) fn status_name(v: i32) -> String {
    match common::OrderStatus::try_from(v) {
        Ok(s) => s.as_str_name().trim_start_matches("ORDER_STATUS_").to_string(),
        Err(_) => format!("status {v}"),
    }
}
