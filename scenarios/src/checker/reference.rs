//! The reference book: a deliberately simple, obviously correct model of one
//! symbol's matching, written from the semantics (not the code) of the
//! platform's book, so that the two can only agree by both being right.
//!
//! Each side is a `Vec` of resting orders in arrival order. An incoming order
//! scans the opposite side for every order it accepts, sorts those by price
//! (best first; the sort is stable, so within a price the oldest stays first),
//! and fills them in that order at each maker's price. That is price-time
//! priority in a dozen lines, at O(resting) per input.
//!
//! Semantics (those of the engine): `Limit` rests its remainder; `Market` (any
//! price) and `Ioc` expire theirs; `Fok` fills completely or is killed before
//! touching the book. A second order with an id already seen on this symbol, or
//! a cancel of an order not resting, is ignored. Self-trades are allowed.
//! `match_seq` counts fills 1, 2, 3, ... per symbol.

use std::collections::BTreeSet;
use std::fmt;

use fafnir_platform::domain::{CloseReason, OrderType, Side};

/// An order entering the reference book. `limit_ticks` is None exactly for market orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefOrder {
    pub id: u64,
    pub account: u64,
    pub side: Side,
    pub kind: OrderType,
    pub limit_ticks: Option<i64>,
    pub qty: i64,
}

/// One match, with the same fields as the engine's `FillEvent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefFill {
    pub match_seq: u64,
    pub price_ticks: i64,
    pub qty: i64,
    pub maker_order: u64,
    pub maker_account: u64,
    pub taker_order: u64,
    pub taker_account: u64,
    pub taker_side: Side,
    pub maker_remaining: i64,
    pub taker_remaining: i64,
}

/// One outcome of one input, comparable with an engine event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Fill(RefFill),
    Rested {
        order: u64,
        remaining: i64,
    },
    Closed {
        order: u64,
        account: u64,
        remaining: i64,
        reason: CloseReason,
    },
    /// A duplicate order id or a cancel of an order not resting (0: an empty input).
    Ignored {
        order: u64,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Fill(x) => write!(
                f,
                "Fill match_seq={} {}x{} ticks maker={:x} (account {}, left {}) taker={:x} (account {}, {:?}, left {})",
                x.match_seq,
                x.qty,
                x.price_ticks,
                x.maker_order,
                x.maker_account,
                x.maker_remaining,
                x.taker_order,
                x.taker_account,
                x.taker_side,
                x.taker_remaining
            ),
            Outcome::Rested { order, remaining } => write!(f, "Rested order={order:x} remaining={remaining}"),
            Outcome::Closed { order, account, remaining, reason } => {
                write!(f, "Closed order={order:x} (account {account}) remaining={remaining} reason={reason:?}")
            }
            Outcome::Ignored { order } => write!(f, "Ignored order={order:x}"),
        }
    }
}

/// The best bid and the best ask: (price in ticks, shares resting at that
/// price in all), None for an empty side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Top {
    pub bid: Option<(i64, i64)>,
    pub ask: Option<(i64, i64)>,
}

impl fmt::Display for Top {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: Option<(i64, i64)>| s.map_or("none".to_string(), |(p, q)| format!("{q}@{p} ticks"));
        write!(f, "bid {} / ask {}", side(self.bid), side(self.ask))
    }
}

/// A resting order: its limit and what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resting {
    id: u64,
    account: u64,
    limit_ticks: i64,
    remaining: i64,
}

/// One symbol's reference book. See the module docs.
#[derive(Clone, Debug, Default)]
pub struct ReferenceBook {
    /// Resting buy orders, oldest first.
    bids: Vec<Resting>,
    /// Resting sell orders, oldest first.
    asks: Vec<Resting>,
    /// Every order id submitted here.
    seen: BTreeSet<u64>,
    last_match_seq: u64,
}

impl ReferenceBook {
    /// An empty book.
    pub fn new() -> ReferenceBook {
        ReferenceBook::default()
    }

    /// Matches `order` and returns its outcomes in order: fills, then at most
    /// one of rested or closed.
    pub fn submit(&mut self, order: &RefOrder) -> Vec<Outcome> {
        if !self.seen.insert(order.id) {
            return vec![Outcome::Ignored { order: order.id }];
        }
        let closed = |remaining, reason| Outcome::Closed { order: order.id, account: order.account, remaining, reason };
        let makers = self.makers_for(order);
        if order.kind == OrderType::Fok {
            let side = self.opposite(order.side);
            let available = makers.iter().fold(0i64, |sum, &i| sum.saturating_add(side[i].remaining));
            if available < order.qty {
                return vec![closed(order.qty, CloseReason::Killed)];
            }
        }
        let mut out = Vec::new();
        let mut remaining = order.qty;
        for i in makers {
            if remaining == 0 {
                break;
            }
            self.last_match_seq += 1;
            let match_seq = self.last_match_seq;
            let maker = &mut self.opposite_mut(order.side)[i];
            let qty = remaining.min(maker.remaining);
            maker.remaining -= qty;
            remaining -= qty;
            out.push(Outcome::Fill(RefFill {
                match_seq,
                price_ticks: maker.limit_ticks,
                qty,
                maker_order: maker.id,
                maker_account: maker.account,
                taker_order: order.id,
                taker_account: order.account,
                taker_side: order.side,
                maker_remaining: maker.remaining,
                taker_remaining: remaining,
            }));
        }
        self.opposite_mut(order.side).retain(|m| m.remaining > 0);
        if remaining > 0 {
            match (order.kind, order.limit_ticks) {
                (OrderType::Limit, Some(limit_ticks)) => {
                    let resting = Resting { id: order.id, account: order.account, limit_ticks, remaining };
                    self.own_mut(order.side).push(resting);
                    out.push(Outcome::Rested { order: order.id, remaining });
                }
                // A FOK that passed its check fills completely, so only market and IOC get here.
                _ => out.push(closed(remaining, CloseReason::Expired)),
            }
        }
        out
    }

    /// An order given up before acceptance: ignored, and never accepted later.
    pub fn abandon(&mut self, id: u64) -> Outcome {
        self.seen.insert(id);
        Outcome::Ignored { order: id }
    }

    /// Cancels a resting order: closed with its remainder, or ignored if not resting.
    pub fn cancel(&mut self, id: u64) -> Outcome {
        for side in [&mut self.bids, &mut self.asks] {
            if let Some(at) = side.iter().position(|r| r.id == id) {
                let r = side.remove(at);
                return Outcome::Closed {
                    order: id,
                    account: r.account,
                    remaining: r.remaining,
                    reason: CloseReason::Canceled,
                };
            }
        }
        Outcome::Ignored { order: id }
    }

    /// The resting order `id`: (side, limit in ticks, remaining).
    pub fn resting(&self, id: u64) -> Option<(Side, i64, i64)> {
        let find = |side: &[Resting]| side.iter().find(|r| r.id == id).map(|r| (r.limit_ticks, r.remaining));
        find(&self.bids).map(|(p, q)| (Side::Buy, p, q)).or_else(|| find(&self.asks).map(|(p, q)| (Side::Sell, p, q)))
    }

    /// The best bid and ask now, each with all the shares resting at its price.
    pub fn top(&self) -> Top {
        let best = |side: &[Resting], better: fn(i64, i64) -> bool| {
            let price = side.iter().map(|r| r.limit_ticks).reduce(|a, b| if better(b, a) { b } else { a })?;
            let qty = side.iter().filter(|r| r.limit_ticks == price).fold(0i64, |q, r| q.saturating_add(r.remaining));
            Some((price, qty))
        };
        Top { bid: best(&self.bids, |a, b| a > b), ask: best(&self.asks, |a, b| a < b) }
    }

    /// Number of resting orders.
    pub fn resting_count(&self) -> usize {
        self.bids.len() + self.asks.len()
    }

    /// Indices into the opposite side of the makers `order` accepts, best price
    /// first and, within a price, oldest first.
    fn makers_for(&self, order: &RefOrder) -> Vec<usize> {
        let accepts = |maker_ticks: i64| match (order.side, order.limit_ticks) {
            (_, None) => true,
            (Side::Buy, Some(limit)) => maker_ticks <= limit,
            (Side::Sell, Some(limit)) => maker_ticks >= limit,
        };
        let side = self.opposite(order.side);
        let mut makers: Vec<usize> = (0..side.len()).filter(|&i| accepts(side[i].limit_ticks)).collect();
        // Stable sorts: equal prices keep arrival order.
        match order.side {
            Side::Buy => makers.sort_by_key(|&i| side[i].limit_ticks),
            Side::Sell => makers.sort_by_key(|&i| std::cmp::Reverse(side[i].limit_ticks)),
        }
        makers
    }

    fn opposite(&self, side: Side) -> &Vec<Resting> {
        match side {
            Side::Buy => &self.asks,
            Side::Sell => &self.bids,
        }
    }

    fn opposite_mut(&mut self, side: Side) -> &mut Vec<Resting> {
        match side {
            Side::Buy => &mut self.asks,
            Side::Sell => &mut self.bids,
        }
    }

    fn own_mut(&mut self, side: Side) -> &mut Vec<Resting> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: u64, side: Side, kind: OrderType, limit: i64, qty: i64) -> RefOrder {
        let limit_ticks = (kind != OrderType::Market).then_some(limit);
        RefOrder { id, account: id * 10, side, kind, limit_ticks, qty }
    }

    fn fills(out: &[Outcome]) -> Vec<(u64, i64, i64, u64)> {
        out.iter()
            .filter_map(|o| match o {
                Outcome::Fill(f) => Some((f.match_seq, f.price_ticks, f.qty, f.maker_order)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn price_then_time_priority_at_the_makers_price() {
        let mut b = ReferenceBook::new();
        b.submit(&order(1, Side::Sell, OrderType::Limit, 101, 5));
        b.submit(&order(2, Side::Sell, OrderType::Limit, 100, 5));
        b.submit(&order(3, Side::Sell, OrderType::Limit, 100, 5));
        let out = b.submit(&order(4, Side::Buy, OrderType::Limit, 102, 12));
        assert_eq!(fills(&out), vec![(1, 100, 5, 2), (2, 100, 5, 3), (3, 101, 2, 1)]);
        assert_eq!(b.resting(1), Some((Side::Sell, 101, 3)));
        assert_eq!(b.resting(4), None, "a filled taker does not rest");
        assert_eq!(b.top(), Top { bid: None, ask: Some((101, 3)) });
        let out = b.submit(&order(5, Side::Sell, OrderType::Limit, 99, 4));
        assert_eq!(out, vec![Outcome::Rested { order: 5, remaining: 4 }], "no bids left");
        let out = b.submit(&order(6, Side::Buy, OrderType::Limit, 100, 6));
        assert_eq!(fills(&out), vec![(4, 99, 4, 5)]);
        assert_eq!(out[1], Outcome::Rested { order: 6, remaining: 2 });
        b.submit(&order(7, Side::Buy, OrderType::Limit, 100, 3));
        b.submit(&order(8, Side::Buy, OrderType::Limit, 98, 9));
        assert_eq!(b.top(), Top { bid: Some((100, 5)), ask: Some((101, 3)) }, "a level's shares in all");
        assert_eq!(ReferenceBook::new().top(), Top::default());
    }

    #[test]
    fn market_ioc_fok_and_cancel() {
        let mut b = ReferenceBook::new();
        b.submit(&order(1, Side::Buy, OrderType::Limit, 50, 10));
        let killed = b.submit(&order(2, Side::Sell, OrderType::Fok, 50, 11));
        assert_eq!(killed, vec![Outcome::Closed { order: 2, account: 20, remaining: 11, reason: CloseReason::Killed }]);
        assert_eq!(b.resting(1), Some((Side::Buy, 50, 10)), "a killed FOK touches nothing");
        let ioc = b.submit(&order(3, Side::Sell, OrderType::Ioc, 51, 3));
        assert_eq!(ioc, vec![Outcome::Closed { order: 3, account: 30, remaining: 3, reason: CloseReason::Expired }]);
        let market = b.submit(&order(4, Side::Sell, OrderType::Market, 0, 12));
        assert_eq!(fills(&market), vec![(1, 50, 10, 1)]);
        assert_eq!(market[1], Outcome::Closed { order: 4, account: 40, remaining: 2, reason: CloseReason::Expired });
        assert_eq!(b.resting_count(), 0);
        b.submit(&order(5, Side::Buy, OrderType::Limit, 40, 1));
        assert_eq!(b.submit(&order(5, Side::Buy, OrderType::Limit, 40, 1)), vec![Outcome::Ignored { order: 5 }]);
        assert_eq!(b.cancel(5), Outcome::Closed { order: 5, account: 50, remaining: 1, reason: CloseReason::Canceled });
        assert_eq!(b.cancel(5), Outcome::Ignored { order: 5 });
        assert_eq!(b.submit(&order(5, Side::Buy, OrderType::Limit, 40, 1)), vec![Outcome::Ignored { order: 5 }]);
    }
}
