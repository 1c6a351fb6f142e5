//! One symbol's matching state: the book plus what the engine must remember
//! to turn an ORDERS input into TRADES outputs deterministically. Pure.

use std::collections::BTreeSet;

use crate::book::{Book, BookEvent, NewOrder};
use crate::domain::{AccountId, OrderId, OrderType, PriceTicks, Shares};
use crate::proto::events::{self, engine_event, order_event, EngineEvent, MarketData, OrderEvent};
use crate::services::{close_reason_to_proto, order_type_from_proto, side_from_proto, side_to_proto};

/// A symbol's engine state.
pub struct Matcher {
    pub symbol: String,
    pub book: Book,
    /// Every order id ever accepted here, so a duplicate publish is ignored.
    seen: BTreeSet<OrderId>,
    /// Stream sequence of the last ORDERS message applied (0 = none).
    pub last_input_seq: u64,
    scratch: Vec<BookEvent>,
}

/// The outputs of one input.
pub struct Outputs {
    pub events: Vec<EngineEvent>,
    pub market_data: MarketData,
}

impl Matcher {
    pub fn new(symbol: &str) -> Matcher {
        Matcher {
            symbol: symbol.to_string(),
            book: Book::new(),
            seen: BTreeSet::new(),
            last_input_seq: 0,
            scratch: Vec::new(),
        }
    }

    /// Orders resting in the book.
    pub fn resting_count(&self) -> usize {
        self.book.resting_count()
    }

    /// Applies the ORDERS message at `seq`. Inputs must come in stream order.
    pub fn apply(&mut self, seq: u64, input: &OrderEvent) -> Outputs {
        assert!(seq > self.last_input_seq, "{}: input {seq} after {}", self.symbol, self.last_input_seq);
        self.last_input_seq = seq;
        self.scratch.clear();
        let mut events = Vec::new();
        let ts_ms = match &input.kind {
            Some(order_event::Kind::Accepted(a)) => {
                self.accept(a, &mut events);
                a.accepted_ms
            }
            Some(order_event::Kind::Cancel(c)) => {
                let order = OrderId(c.order_id);
                let mut out = std::mem::take(&mut self.scratch);
                self.book.cancel(order, &mut out);
                self.scratch = out;
                c.requested_ms
            }
            Some(order_event::Kind::Abandoned(a)) => {
                // The order can never be accepted now: a late acceptance is a duplicate.
                self.seen.insert(OrderId(a.order_id));
                events.push(engine_event::Kind::Ignored(events::IgnoredEvent {
                    order_id: a.order_id,
                    reason: "abandoned before acceptance".into(),
                }));
                a.abandoned_ms
            }
            None => {
                events.push(engine_event::Kind::Ignored(events::IgnoredEvent {
                    order_id: 0,
                    reason: "empty input".into(),
                }));
                0
            }
        };
        let mut trades = Vec::new();
        for e in self.scratch.drain(..) {
            let kind = to_kind(e);
            if let engine_event::Kind::Fill(f) = &kind {
                trades.push(*f);
            }
            events.push(kind);
        }
        assert!(!events.is_empty(), "{}: input {seq} produced no event", self.symbol);
        let events = events
            .into_iter()
            .enumerate()
            .map(|(i, kind)| EngineEvent {
                symbol: self.symbol.clone(),
                input_seq: seq,
                index: u32::try_from(i).expect("fewer than 2^32 events per input"),
                ts_ms,
                kind: Some(kind),
            })
            .collect();
        let market_data = self.market_data(seq, ts_ms, trades);
        Outputs { events, market_data }
    }

    fn accept(&mut self, a: &events::OrderAccepted, events: &mut Vec<engine_event::Kind>) {
        let order = OrderId(a.order_id);
        if !self.seen.insert(order) {
            events.push(engine_event::Kind::Ignored(events::IgnoredEvent {
                order_id: a.order_id,
                reason: "duplicate order id".into(),
            }));
            return;
        }
        let side = side_from_proto(a.side).expect("orders publishes valid sides");
        let kind = order_type_from_proto(a.order_type).expect("orders publishes valid types");
        let limit = (kind != OrderType::Market).then_some(PriceTicks(a.limit_ticks));
        let new = NewOrder { id: order, account: AccountId(a.user_id), side, kind, limit, qty: Shares(a.qty) };
        let mut out = std::mem::take(&mut self.scratch);
        self.book.submit(new, &mut out);
        self.scratch = out;
    }

    /// The top of book now, as a market-data update of no trades (what is
    /// published again when an update was lost).
    pub fn top_of_book(&self) -> MarketData {
        self.market_data(self.last_input_seq, 0, Vec::new())
    }

    fn market_data(&self, seq: u64, ts_ms: i64, trades: Vec<events::FillEvent>) -> MarketData {
        let (bid_ticks, bid_qty) = self.book.best_bid().map_or((0, 0), |(p, q)| (p.0, q.0));
        let (ask_ticks, ask_qty) = self.book.best_ask().map_or((0, 0), |(p, q)| (p.0, q.0));
        MarketData {
            symbol: self.symbol.clone(),
            ts_ms,
            bid_ticks,
            bid_qty,
            ask_ticks,
            ask_qty,
            trades,
            input_seq: seq,
            // Stamped at publication (`market_data_msg`).
            ts_us: ts_ms.saturating_mul(1_000),
        }
    }
}

fn to_kind(e: BookEvent) -> engine_event::Kind {
    match e {
        BookEvent::Fill(f) => engine_event::Kind::Fill(events::FillEvent {
            match_seq: f.match_seq,
            price_ticks: f.price.0,
            qty: f.qty.0,
            maker_order: f.maker_order.0,
            maker_account: f.maker_account.0,
            taker_order: f.taker_order.0,
            taker_account: f.taker_account.0,
            taker_side: side_to_proto(f.taker_side) as i32,
            maker_remaining: f.maker_remaining.0,
            taker_remaining: f.taker_remaining.0,
        }),
        BookEvent::Rested { order, remaining } => {
            engine_event::Kind::Rested(events::RestedEvent { order_id: order.0, remaining: remaining.0 })
        }
        BookEvent::Closed { order, account, remaining, reason } => engine_event::Kind::Closed(events::ClosedEvent {
            order_id: order.0,
            account: account.0,
            remaining: remaining.0,
            reason: close_reason_to_proto(reason) as i32,
        }),
        BookEvent::CancelRejected { order } => engine_event::Kind::Ignored(events::IgnoredEvent {
            order_id: order.0,
            reason: "cancel of an order not resting".into(),
        }),
    }
}

/// The message id of an engine event: fills by their fill id (symbol and match
/// sequence), other events by their input and position.
pub fn msg_id(event: &EngineEvent) -> String {
    match &event.kind {
        Some(engine_event::Kind::Fill(f)) => format!("{}-f{}", event.symbol, f.match_seq),
        _ => format!("{}-i{}-{}", event.symbol, event.input_seq, event.index),
    }
}
