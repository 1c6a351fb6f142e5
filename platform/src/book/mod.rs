//! The central limit order book of one instrument: price-time priority matching.
//!
//! An incoming order (the taker) matches the best opposite price first, and within a
//! price the oldest resting order (the maker) first; every fill is at the maker's
//! price. What the taker does with its remainder depends on its [`OrderType`]:
//! `Limit` rests, `Market` and `Ioc` expire, and `Fok` fills completely or is killed
//! before touching the book. Self-trades are allowed.
//!
//! # Layout
//! - [`Book`] (this file): each side as a `BTreeMap` from price to level slot, and
//!   the matching, resting and cancel logic.
//! - `level`: the slab of price levels; a level is a FIFO kept as an intrusive
//!   doubly linked list through the order slab. Each resting order names its level,
//!   so a cancel is O(1) unless it empties the level (then one tree removal).
//! - `orders`: the slab of resting orders (reused through a free list) and the id
//!   index, a `HashMap` with a fixed hasher.
//!
//! # Determinism
//! No clock, no randomness, no I/O, no threads, and no iteration over the id index
//! where its order could reach output: the same calls produce the same events.
//!
//! # Invariants
//! Cheap ones are `assert!`ed where the state changes, in every build: a fill is
//! positive and no larger than either order's remainder, `match_seq` grows by one per
//! fill, the taker's quantity equals its fills plus its remainder, and an order only
//! rests where it does not cross. The O(n) ones (level totals and counts, FIFO order,
//! no empty level kept, index in step) are in [`Book::check_invariants`], which
//! tests call after every step.

mod level;
mod orders;

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use self::level::{Level, Levels};
use self::orders::{Orders, Resting, NIL};
use crate::domain::{AccountId, CloseReason, OrderId, OrderType, PriceTicks, Shares, Side};

/// An order entering the book.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOrder {
    pub id: OrderId,
    pub account: AccountId,
    pub side: Side,
    pub kind: OrderType,
    /// None exactly when kind == Market.
    pub limit: Option<PriceTicks>,
    pub qty: Shares,
}

/// One match between a resting (maker) order and an incoming (taker) order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// 1, 2, 3, ... per book, never reused, increasing by one per fill.
    pub match_seq: u64,
    /// Always the maker's price.
    pub price: PriceTicks,
    pub qty: Shares,
    pub maker_order: OrderId,
    pub maker_account: AccountId,
    pub taker_order: OrderId,
    pub taker_account: AccountId,
    pub taker_side: Side,
    /// Shares of the maker order still unfilled after this fill.
    pub maker_remaining: Shares,
    /// Shares of the taker order still unfilled after this fill.
    pub taker_remaining: Shares,
}

/// What the book reports back for a submit or a cancel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookEvent {
    Fill(Fill),
    /// The order's remainder now rests in the book (limit orders only).
    Rested {
        order: OrderId,
        remaining: Shares,
    },
    /// The order stopped being live with `remaining` (> 0) shares unfilled.
    Closed {
        order: OrderId,
        account: AccountId,
        remaining: Shares,
        reason: CloseReason,
    },
    /// A cancel for an order that is not resting (unknown or already done).
    CancelRejected {
        order: OrderId,
    },
}

/// A resting order as [`Book::resting_orders`] lists it: (id, account, side, price, remaining).
pub type RestingOrder = (OrderId, AccountId, Side, PriceTicks, Shares);

/// A price level as [`Book::depth`] lists it: (price, total quantity, order count).
pub type DepthLevel = (PriceTicks, Shares, u32);

/// The order book of one instrument.
#[derive(Clone, Default)]
pub struct Book {
    /// Level slot by price; the best bid is the last key.
    bids: BTreeMap<PriceTicks, u32>,
    /// Level slot by price; the best ask is the first key.
    asks: BTreeMap<PriceTicks, u32>,
    levels: Levels,
    orders: Orders,
    /// `match_seq` of the last fill.
    match_seq: u64,
    /// Arrival rank handed to the next order that rests.
    next_arrival: u64,
}

impl Book {
    /// An empty book.
    pub fn new() -> Book {
        Book::default()
    }

    /// Rebuilds a book from a snapshot: `resting` in the canonical order of
    /// [`Book::resting_orders`] and the `last_match_seq` of the book it came from.
    /// Panics if the snapshot is not canonical (crossed, duplicate ids, empty orders).
    pub fn from_snapshot(resting: &[RestingOrder], last_match_seq: u64) -> Book {
        let mut book = Book { match_seq: last_match_seq, ..Book::default() };
        for &(id, account, side, price, remaining) in resting {
            assert!(price.0 > 0, "snapshot order {id} at {price:?}");
            assert!(book.orders.find(id).is_none(), "snapshot holds order {id} twice");
            book.rest(id, account, side, price, remaining);
        }
        assert_eq!(book.resting_orders(), resting, "snapshot is not in canonical order");
        book
    }

    /// Matches `order` against the book, appending every event to `out` in order:
    /// zero or more `Fill`, then exactly one of `Rested` or `Closed` unless the order
    /// was completely filled (then neither). A duplicate id of a resting order is
    /// `Closed { reason: Rejected }` and changes nothing.
    ///
    /// Panics on a malformed order (qty <= 0, a market order with a limit, another
    /// type without a positive limit): the orders service validates before the engine.
    pub fn submit(&mut self, order: NewOrder, out: &mut Vec<BookEvent>) {
        assert_well_formed(&order);
        if self.orders.find(order.id).is_some() {
            out.push(close(&order, order.qty, CloseReason::Rejected));
            return;
        }
        if order.kind == OrderType::Fok {
            let limit = order.limit.expect("a FOK order has a limit");
            if self.available(order.side.opposite(), limit, order.qty) < order.qty {
                out.push(close(&order, order.qty, CloseReason::Killed));
                return;
            }
        }
        let first_event = out.len();
        let remaining = self.take(&order, out);
        let filled: i64 = out[first_event..]
            .iter()
            .map(|event| match event {
                BookEvent::Fill(fill) => fill.qty.0,
                _ => unreachable!("only fills while taking"),
            })
            .sum();
        assert_eq!(filled + remaining.0, order.qty.0, "taker quantity not conserved");
        if remaining.0 == 0 {
            return;
        }
        match order.kind {
            OrderType::Limit => {
                let limit = order.limit.expect("a limit order has a limit");
                self.rest(order.id, order.account, order.side, limit, remaining);
                out.push(BookEvent::Rested { order: order.id, remaining });
            }
            OrderType::Market | OrderType::Ioc => out.push(close(&order, remaining, CloseReason::Expired)),
            OrderType::Fok => panic!("FOK order {} left {remaining:?} after its check", order.id),
        }
    }

    /// Cancels a resting order: `Closed { reason: Canceled }` with its remainder, or
    /// `CancelRejected` if no order `id` rests here.
    pub fn cancel(&mut self, id: OrderId, out: &mut Vec<BookEvent>) {
        let Some(slot) = self.orders.find(id) else {
            out.push(BookEvent::CancelRejected { order: id });
            return;
        };
        let (side, price, level) = {
            let order = self.orders.get(slot);
            (order.side, order.price, order.level)
        };
        self.levels.get_mut(level).unlink(&mut self.orders, slot);
        if self.levels.get(level).is_empty() {
            let removed = self.side_mut(side).remove(&price);
            assert_eq!(removed, Some(level), "order {id} named a level not in the book at {price:?}");
            self.levels.close(level);
        }
        let order = self.orders.remove(slot);
        out.push(BookEvent::Closed {
            order: id,
            account: order.account,
            remaining: order.remaining,
            reason: CloseReason::Canceled,
        });
    }

    /// Best bid price and the total quantity there.
    pub fn best_bid(&self) -> Option<(PriceTicks, Shares)> {
        self.bids.last_key_value().map(|(&price, &level)| (price, self.levels.get(level).total))
    }

    /// Best ask price and the total quantity there.
    pub fn best_ask(&self) -> Option<(PriceTicks, Shares)> {
        self.asks.first_key_value().map(|(&price, &level)| (price, self.levels.get(level).total))
    }

    /// Up to `levels` price levels per side, best first: (bids, asks).
    pub fn depth(&self, levels: usize) -> (Vec<DepthLevel>, Vec<DepthLevel>) {
        let row = |(&price, &level): (&PriceTicks, &u32)| {
            let level = self.levels.get(level);
            (price, level.total, level.count)
        };
        let bids = self.bids.iter().rev().take(levels).map(row).collect();
        let asks = self.asks.iter().take(levels).map(row).collect();
        (bids, asks)
    }

    /// The resting order `id`: (side, price, remaining).
    pub fn resting(&self, id: OrderId) -> Option<(Side, PriceTicks, Shares)> {
        let order = self.orders.get(self.orders.find(id)?);
        Some((order.side, order.price, order.remaining))
    }

    /// Number of resting orders.
    pub fn resting_count(&self) -> usize {
        self.orders.len()
    }

    /// `match_seq` of the last fill (0 if none).
    pub fn last_match_seq(&self) -> u64 {
        self.match_seq
    }

    /// All resting orders in canonical order: bids best first, then asks best first,
    /// oldest first within a level. Used for snapshots and equality checks.
    pub fn resting_orders(&self) -> Vec<RestingOrder> {
        let mut all = Vec::with_capacity(self.orders.len());
        let levels = self.bids.values().rev().chain(self.asks.values());
        for &level in levels {
            all.extend(self.levels.get(level).slots(&self.orders).map(|slot| {
                let order = self.orders.get(slot);
                (order.id, order.account, order.side, order.price, order.remaining)
            }));
        }
        all
    }

    /// Checks every invariant, including the O(n) ones; panics on the first broken
    /// one. Tests call it after every step.
    pub fn check_invariants(&self) {
        let mut linked = 0;
        for (side, levels) in [(Side::Buy, &self.bids), (Side::Sell, &self.asks)] {
            for (&price, &slot) in levels {
                let level = self.levels.get(slot);
                assert_eq!(level.price, price, "level filed under another price");
                linked += level.check(&self.orders, slot, side);
            }
        }
        self.levels.check(self.bids.len() + self.asks.len());
        self.orders.check(linked);
        if let (Some((bid, _)), Some((ask, _))) = (self.best_bid(), self.best_ask()) {
            assert!(bid < ask, "book crossed at rest: bid {bid:?} >= ask {ask:?}");
        }
    }

    /// Fills `taker` against the opposite side while it crosses; returns what is left.
    fn take(&mut self, taker: &NewOrder, out: &mut Vec<BookEvent>) -> Shares {
        let mut remaining = taker.qty;
        while remaining.0 > 0 {
            let best = match taker.side {
                Side::Buy => self.asks.first_key_value(),
                Side::Sell => self.bids.last_key_value(),
            };
            let Some((&price, &level)) = best else { break };
            if !crosses(taker.side, taker.limit, price) {
                break;
            }
            let maker_level = self.levels.get_mut(level);
            remaining = take_level(&mut self.orders, &mut self.match_seq, maker_level, taker, remaining, out);
            if self.levels.get(level).is_empty() {
                let removed = match taker.side {
                    Side::Buy => self.asks.pop_first(),
                    Side::Sell => self.bids.pop_last(),
                };
                assert_eq!(removed, Some((price, level)), "emptied level is not the best");
                self.levels.close(level);
            }
        }
        remaining
    }

    /// Quantity resting on `side` at prices a taker limited at `limit` accepts,
    /// counted only up to `enough`.
    fn available(&self, side: Side, limit: PriceTicks, enough: Shares) -> Shares {
        let total = |(_, &level): (&PriceTicks, &u32)| self.levels.get(level).total;
        match side {
            Side::Sell => sum_until(self.asks.range(..=limit).map(total), enough),
            Side::Buy => sum_until(self.bids.range(limit..).rev().map(total), enough),
        }
    }

    /// Puts an order at the back of its level. The price must not cross the other side.
    fn rest(&mut self, id: OrderId, account: AccountId, side: Side, price: PriceTicks, remaining: Shares) {
        let (own, opposite_best) = match side {
            Side::Buy => (&mut self.bids, self.asks.first_key_value()),
            Side::Sell => (&mut self.asks, self.bids.last_key_value()),
        };
        if let Some((&best, _)) = opposite_best {
            assert!(!crosses(side, Some(price), best), "order {id} would rest crossed at {price:?}");
        }
        let level = match own.entry(price) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => *entry.insert(self.levels.open(price)),
        };
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        let order = Resting { id, account, side, price, remaining, arrival, level, prev: NIL, next: NIL };
        let slot = self.orders.insert(order);
        self.levels.get_mut(level).push_back(&mut self.orders, slot);
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<PriceTicks, u32> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }
}

impl fmt::Debug for Book {
    /// A summary: printing every order would be long, and the index has no order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Book")
            .field("best_bid", &self.best_bid())
            .field("best_ask", &self.best_ask())
            .field("resting_count", &self.resting_count())
            .field("last_match_seq", &self.match_seq)
            .finish()
    }
}

/// Fills `taker` against one level, oldest maker first, until either is used up.
fn take_level(
    orders: &mut Orders,
    match_seq: &mut u64,
    level: &mut Level,
    taker: &NewOrder,
    mut remaining: Shares,
    out: &mut Vec<BookEvent>,
) -> Shares {
    while let (true, Some(slot)) = (remaining.0 > 0, level.head()) {
        let maker = orders.get(slot);
        let qty = remaining.min(maker.remaining);
        assert!(qty.0 > 0 && qty <= remaining && qty <= maker.remaining, "fill of {qty:?}");
        level.reduce(orders, slot, qty);
        remaining = Shares(remaining.0 - qty.0);
        let maker = orders.get(slot);
        *match_seq = match_seq.checked_add(1).expect("match_seq overflows");
        out.push(BookEvent::Fill(Fill {
            match_seq: *match_seq,
            price: level.price,
            qty,
            maker_order: maker.id,
            maker_account: maker.account,
            taker_order: taker.id,
            taker_account: taker.account,
            taker_side: taker.side,
            maker_remaining: maker.remaining,
            taker_remaining: remaining,
        }));
        if maker.remaining.0 == 0 {
            level.unlink(orders, slot);
            orders.remove(slot);
        }
    }
    remaining
}

/// Whether a `taker_side` order with `limit` (None: market) accepts a maker at `price`.
fn crosses(taker_side: Side, limit: Option<PriceTicks>, price: PriceTicks) -> bool {
    match (taker_side, limit) {
        (_, None) => true,
        (Side::Buy, Some(limit)) => price <= limit,
        (Side::Sell, Some(limit)) => price >= limit,
    }
}

/// The sum of `totals` in order, stopping once it reaches `enough`.
fn sum_until(totals: impl Iterator<Item = Shares>, enough: Shares) -> Shares {
    let mut sum = Shares(0);
    for total in totals {
        sum = Shares(sum.0.checked_add(total.0).expect("book total overflows"));
        if sum >= enough {
            break;
        }
    }
    sum
}

fn close(order: &NewOrder, remaining: Shares, reason: CloseReason) -> BookEvent {
    assert!(remaining.0 > 0, "order {} closed with nothing left", order.id);
    BookEvent::Closed { order: order.id, account: order.account, remaining, reason }
}

fn assert_well_formed(order: &NewOrder) {
    assert!(order.qty.0 > 0, "order {} has qty {:?}", order.id, order.qty);
    match (order.kind, order.limit) {
        (OrderType::Market, limit) => assert!(limit.is_none(), "market order {} has limit {limit:?}", order.id),
        (kind, limit) => {
            assert!(matches!(limit, Some(price) if price.0 > 0), "{kind:?} order {} has limit {limit:?}", order.id)
        }
    }
}
