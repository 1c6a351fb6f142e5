//! The order book against a reference book.
//!
//! The reference ([`RefBook`]) is deliberately naive: a `Vec` of resting orders,
//! scanned in full to pick each maker. Random streams of submits (all four order
//! types, both sides, prices in a narrow band so that they cross often) and cancels
//! (of submitted ids and of unknown ones) go to both books; after every step the
//! events, the resting orders, the top of book and the depth must be identical, and
//! the book's own invariants must hold.
//!
//! The streams come from a fixed proptest seed so that a run is reproducible; set
//! `PROPTEST_RNG_SEED=<u64>` to explore others, and
//! `cargo test -p fafnir-platform --test book_props` reruns it. A failure prints the
//! shrunk stream.
//!
//! A canary ([`canary_a_lifo_reference_is_caught`]) checks that the comparison
//! catches a reference with a deliberate bug, so a silent harness cannot pass.

use fafnir_platform::book::{Book, BookEvent, Fill, NewOrder};
use fafnir_platform::domain::{AccountId, CloseReason, OrderId, OrderType, PriceTicks, Shares, Side};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

// ---------------------------------------------------------------------------------
// The reference book.

#[derive(Clone, Debug)]
struct RefOrder {
    id: OrderId,
    account: AccountId,
    side: Side,
    price: PriceTicks,
    remaining: Shares,
    arrival: u64,
}

/// A deliberate bug to plant in the reference, for the canary.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Bug {
    None,
    /// Newest first within a price level.
    Lifo,
}

struct RefBook {
    resting: Vec<RefOrder>,
    arrivals: u64,
    match_seq: u64,
    bug: Bug,
}

impl RefBook {
    fn new(bug: Bug) -> RefBook {
        RefBook { resting: Vec::new(), arrivals: 0, match_seq: 0, bug }
    }

    /// Whether `taker` may trade with the resting order `maker`.
    fn acceptable(taker: &NewOrder, maker: &RefOrder) -> bool {
        maker.side != taker.side
            && match (taker.side, taker.limit) {
                (_, None) => true,
                (Side::Buy, Some(limit)) => maker.price <= limit,
                (Side::Sell, Some(limit)) => maker.price >= limit,
            }
    }

    /// Sort key of a resting order: best price first on its side, then by arrival.
    fn priority(&self, order: &RefOrder) -> (i64, i64) {
        let price = match order.side {
            Side::Buy => -order.price.0,
            Side::Sell => order.price.0,
        };
        let arrival = order.arrival as i64;
        (price, if self.bug == Bug::Lifo { -arrival } else { arrival })
    }

    fn submit(&mut self, taker: &NewOrder) -> Vec<BookEvent> {
        let closed = |remaining, reason| BookEvent::Closed {
            order: taker.id,
            account: taker.account,
            remaining: Shares(remaining),
            reason,
        };
        if self.resting.iter().any(|order| order.id == taker.id) {
            return vec![closed(taker.qty.0, CloseReason::Rejected)];
        }
        let available: i64 =
            self.resting.iter().filter(|maker| Self::acceptable(taker, maker)).map(|maker| maker.remaining.0).sum();
        if taker.kind == OrderType::Fok && available < taker.qty.0 {
            return vec![closed(taker.qty.0, CloseReason::Killed)];
        }
        let mut events = Vec::new();
        let mut remaining = taker.qty.0;
        while remaining > 0 {
            let best = (0..self.resting.len())
                .filter(|&i| Self::acceptable(taker, &self.resting[i]))
                .min_by_key(|&i| self.priority(&self.resting[i]));
            let Some(i) = best else { break };
            let maker = &mut self.resting[i];
            let qty = remaining.min(maker.remaining.0);
            maker.remaining.0 -= qty;
            remaining -= qty;
            self.match_seq += 1;
            events.push(BookEvent::Fill(Fill {
                match_seq: self.match_seq,
                price: maker.price,
                qty: Shares(qty),
                maker_order: maker.id,
                maker_account: maker.account,
                taker_order: taker.id,
                taker_account: taker.account,
                taker_side: taker.side,
                maker_remaining: maker.remaining,
                taker_remaining: Shares(remaining),
            }));
            if maker.remaining.0 == 0 {
                self.resting.remove(i);
            }
        }
        if remaining > 0 {
            match taker.kind {
                OrderType::Limit => {
                    self.arrivals += 1;
                    self.resting.push(RefOrder {
                        id: taker.id,
                        account: taker.account,
                        side: taker.side,
                        price: taker.limit.unwrap(),
                        remaining: Shares(remaining),
                        arrival: self.arrivals,
                    });
                    events.push(BookEvent::Rested { order: taker.id, remaining: Shares(remaining) });
                }
                _ => events.push(closed(remaining, CloseReason::Expired)),
            }
        }
        events
    }

    fn cancel(&mut self, id: OrderId) -> Vec<BookEvent> {
        match self.resting.iter().position(|order| order.id == id) {
            None => vec![BookEvent::CancelRejected { order: id }],
            Some(i) => {
                let order = self.resting.remove(i);
                vec![BookEvent::Closed {
                    order: id,
                    account: order.account,
                    remaining: order.remaining,
                    reason: CloseReason::Canceled,
                }]
            }
        }
    }

    fn resting_orders(&self) -> Vec<(OrderId, AccountId, Side, PriceTicks, Shares)> {
        let mut sorted = self.resting.clone();
        sorted.sort_by_key(|order| (order.side, self.priority(order)));
        sorted.iter().map(|o| (o.id, o.account, o.side, o.price, o.remaining)).collect()
    }

    /// (price, total, count) per level of `side`, best first.
    fn depth(&self, side: Side) -> Vec<(PriceTicks, Shares, u32)> {
        let mut levels: Vec<(PriceTicks, Shares, u32)> = Vec::new();
        for (_, _, order_side, price, remaining) in self.resting_orders() {
            if order_side != side {
                continue;
            }
            match levels.last_mut() {
                Some(level) if level.0 == price => {
                    level.1 .0 += remaining.0;
                    level.2 += 1;
                }
                _ => levels.push((price, remaining, 1)),
            }
        }
        levels
    }
}

// ---------------------------------------------------------------------------------
// Streams of operations.

#[derive(Clone, Debug)]
enum Op {
    Submit {
        /// Reuse the id of an earlier submit (a duplicate if it still rests).
        reuse: Option<Index>,
        account: u64,
        side: Side,
        kind: OrderType,
        price: i64,
        qty: i64,
    },
    Cancel(CancelTarget),
}

#[derive(Clone, Debug)]
enum CancelTarget {
    /// An order resting now (an unknown id if none rests).
    Resting(Index),
    /// The id of any earlier submit: resting, done, or rejected.
    Submitted(Index),
    /// An id never submitted.
    Unknown,
}

const PRICE_LOW: i64 = 95;
const PRICE_HIGH: i64 = 105;

fn op_strategy() -> impl Strategy<Value = Op> {
    let side = prop_oneof![Just(Side::Buy), Just(Side::Sell)];
    let kind = prop_oneof![
        5 => Just(OrderType::Limit),
        1 => Just(OrderType::Market),
        2 => Just(OrderType::Ioc),
        2 => Just(OrderType::Fok),
    ];
    // Mostly small, sometimes large enough to sweep several levels.
    let qty = prop_oneof![6 => 1i64..=10, 1 => 10i64..=60];
    let submit = (prop::option::weighted(0.1, any::<Index>()), 1u64..=3, side, kind, PRICE_LOW..=PRICE_HIGH, qty)
        .prop_map(|(reuse, account, side, kind, price, qty)| Op::Submit { reuse, account, side, kind, price, qty });
    let cancel = prop_oneof![
        5 => any::<Index>().prop_map(CancelTarget::Resting),
        3 => any::<Index>().prop_map(CancelTarget::Submitted),
        1 => Just(CancelTarget::Unknown),
    ]
    .prop_map(Op::Cancel);
    prop_oneof![3 => submit, 1 => cancel]
}

fn config(cases: u32) -> Config {
    let mut config = Config { cases, failure_persistence: None, ..Config::default() };
    // Reproducible by default; PROPTEST_RNG_SEED (read by Config::default) overrides.
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x00fa_f41e);
    }
    config
}

/// Feeds `ops` to a [`Book`] and a reference with `bug`, comparing after every step.
fn run_stream(ops: &[Op], bug: Bug) -> Result<(), TestCaseError> {
    let mut book = Book::new();
    let mut reference = RefBook::new(bug);
    let mut submitted: Vec<OrderId> = Vec::new();
    let mut out = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        out.clear();
        let expected = match op {
            Op::Submit { reuse, account, side, kind, price, qty } => {
                let id = match reuse {
                    Some(index) if !submitted.is_empty() => submitted[index.index(submitted.len())],
                    _ => OrderId(1_000 + step as u64),
                };
                submitted.push(id);
                let limit = kind.has_limit().then_some(PriceTicks(*price));
                let order =
                    NewOrder { id, account: AccountId(*account), side: *side, kind: *kind, limit, qty: Shares(*qty) };
                let seq_before = book.last_match_seq();
                book.submit(order.clone(), &mut out);
                check_submit_events(&order, &out, seq_before)?;
                reference.submit(&order)
            }
            Op::Cancel(target) => {
                let resting = reference.resting_orders();
                let id = match target {
                    CancelTarget::Resting(index) if !resting.is_empty() => resting[index.index(resting.len())].0,
                    CancelTarget::Submitted(index) if !submitted.is_empty() => submitted[index.index(submitted.len())],
                    _ => OrderId(u64::MAX - step as u64),
                };
                book.cancel(id, &mut out);
                prop_assert_eq!(book.resting(id), None, "order {} still rests after cancel", id);
                reference.cancel(id)
            }
        };
        prop_assert_eq!(&out, &expected, "events differ at step {}: {:?}", step, op);
        compare_state(&book, &reference, step)?;
    }
    Ok(())
}

/// The shape of one submit's events: fills with consecutive `match_seq`, each no
/// larger than either order's remainder, then at most one of Rested or Closed, and the
/// taker's quantity conserved.
fn check_submit_events(order: &NewOrder, events: &[BookEvent], seq_before: u64) -> Result<(), TestCaseError> {
    let mut taker_left = order.qty.0;
    let mut seq = seq_before;
    let mut ended = None;
    for event in events {
        prop_assert!(ended.is_none(), "event after the last one: {:?}", events);
        match event {
            BookEvent::Fill(fill) => {
                seq += 1;
                prop_assert_eq!(fill.match_seq, seq);
                prop_assert!(fill.qty.0 > 0 && fill.qty.0 <= taker_left);
                prop_assert!(fill.maker_remaining.0 >= 0);
                prop_assert_eq!(fill.taker_remaining.0, taker_left - fill.qty.0);
                prop_assert_eq!((fill.taker_order, fill.taker_side), (order.id, order.side));
                if let Some(limit) = order.limit {
                    let ok = match order.side {
                        Side::Buy => fill.price <= limit,
                        Side::Sell => fill.price >= limit,
                    };
                    prop_assert!(ok, "fill at {:?} beyond limit {:?}", fill.price, limit);
                }
                taker_left -= fill.qty.0;
            }
            BookEvent::Rested { order: id, remaining } | BookEvent::Closed { order: id, remaining, .. } => {
                prop_assert_eq!(*id, order.id);
                prop_assert!(remaining.0 > 0);
                ended = Some(remaining.0);
            }
            BookEvent::CancelRejected { .. } => prop_assert!(false, "CancelRejected from a submit"),
        }
    }
    prop_assert_eq!(ended.unwrap_or(0), taker_left, "quantity not conserved: {:?}", events);
    Ok(())
}

fn compare_state(book: &Book, reference: &RefBook, step: usize) -> Result<(), TestCaseError> {
    book.check_invariants();
    let resting = book.resting_orders();
    prop_assert_eq!(&resting, &reference.resting_orders(), "resting orders differ after step {}", step);
    prop_assert_eq!(book.resting_count(), resting.len());
    prop_assert_eq!(book.last_match_seq(), reference.match_seq);
    let (bids, asks) = (reference.depth(Side::Buy), reference.depth(Side::Sell));
    prop_assert_eq!(book.best_bid(), bids.first().map(|level| (level.0, level.1)));
    prop_assert_eq!(book.best_ask(), asks.first().map(|level| (level.0, level.1)));
    if let (Some(bid), Some(ask)) = (book.best_bid(), book.best_ask()) {
        prop_assert!(bid.0 < ask.0, "crossed at rest after step {}", step);
    }
    let depth = book.depth(3);
    prop_assert_eq!(&depth.0[..], &bids[..bids.len().min(3)]);
    prop_assert_eq!(&depth.1[..], &asks[..asks.len().min(3)]);
    for &(id, _, side, price, remaining) in &resting {
        prop_assert_eq!(book.resting(id), Some((side, price, remaining)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    fn book_matches_reference(ops in prop::collection::vec(op_strategy(), 1..250)) {
        run_stream(&ops, Bug::None)?;
    }

    #[test]
    fn snapshot_round_trips(ops in prop::collection::vec(op_strategy(), 1..120)) {
        let mut book = Book::new();
        let mut out = Vec::new();
        for (step, op) in ops.iter().enumerate() {
            if let Op::Submit { side, kind, price, qty, .. } = op {
                let limit = kind.has_limit().then_some(PriceTicks(*price));
                let order = NewOrder {
                    id: OrderId(step as u64 + 1), account: AccountId(1), side: *side, kind: *kind, limit, qty: Shares(*qty),
                };
                book.submit(order, &mut out);
            }
        }
        let restored = Book::from_snapshot(&book.resting_orders(), book.last_match_seq());
        restored.check_invariants();
        prop_assert_eq!(restored.resting_orders(), book.resting_orders());
        prop_assert_eq!(restored.depth(usize::MAX), book.depth(usize::MAX));
        prop_assert_eq!(restored.last_match_seq(), book.last_match_seq());
        // Both must go on identically.
        let (mut a, mut b) = (book, restored);
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        let sweep = |id, side| NewOrder {
            id: OrderId(id), account: AccountId(2), side, kind: OrderType::Market, limit: None, qty: Shares(1_000),
        };
        for (id, side) in [(1_000_001, Side::Buy), (1_000_002, Side::Sell)] {
            a.submit(sweep(id, side), &mut out_a);
            b.submit(sweep(id, side), &mut out_b);
        }
        prop_assert_eq!(out_a, out_b);
    }
}

/// The canary: the same comparison must catch a reference that is LIFO within a level.
#[test]
fn canary_a_lifo_reference_is_caught() {
    let mut runner = TestRunner::new(config(600));
    let result = runner.run(&prop::collection::vec(op_strategy(), 1..250), |ops| run_stream(&ops, Bug::Lifo));
    assert!(result.is_err(), "the comparison did not notice a LIFO reference book");
}

// ---------------------------------------------------------------------------------
// Specific cases.

fn limit(id: u64, side: Side, price: i64, qty: i64) -> NewOrder {
    typed(id, side, OrderType::Limit, Some(price), qty)
}

fn typed(id: u64, side: Side, kind: OrderType, price: Option<i64>, qty: i64) -> NewOrder {
    NewOrder {
        id: OrderId(id),
        account: AccountId(id % 10),
        side,
        kind,
        limit: price.map(PriceTicks),
        qty: Shares(qty),
    }
}

fn submit(book: &mut Book, order: NewOrder) -> Vec<BookEvent> {
    let mut out = Vec::new();
    book.submit(order, &mut out);
    book.check_invariants();
    out
}

fn fills(events: &[BookEvent]) -> Vec<(u64, i64, i64, u64, i64, i64)> {
    events
        .iter()
        .filter_map(|event| match event {
            BookEvent::Fill(f) => {
                Some((f.match_seq, f.price.0, f.qty.0, f.maker_order.0, f.maker_remaining.0, f.taker_remaining.0))
            }
            _ => None,
        })
        .collect()
}

fn closed(id: u64, remaining: i64, reason: CloseReason) -> BookEvent {
    BookEvent::Closed { order: OrderId(id), account: AccountId(id % 10), remaining: Shares(remaining), reason }
}

#[test]
fn partial_fill_then_rest_at_limit() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Sell, 101, 4));
    let events = submit(&mut book, limit(2, Side::Buy, 102, 10));
    assert_eq!(fills(&events), vec![(1, 101, 4, 1, 0, 6)]);
    assert_eq!(events.last(), Some(&BookEvent::Rested { order: OrderId(2), remaining: Shares(6) }));
    assert_eq!(book.best_bid(), Some((PriceTicks(102), Shares(6))));
    assert_eq!(book.best_ask(), None);
    assert_eq!(book.resting(OrderId(2)), Some((Side::Buy, PriceTicks(102), Shares(6))));
}

#[test]
fn sweep_fills_at_each_makers_price_best_first() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Buy, 99, 2));
    submit(&mut book, limit(2, Side::Buy, 100, 2));
    submit(&mut book, limit(3, Side::Buy, 98, 2));
    let events = submit(&mut book, limit(4, Side::Sell, 99, 5));
    assert_eq!(fills(&events), vec![(1, 100, 2, 2, 0, 3), (2, 99, 2, 1, 0, 1)]);
    assert_eq!(events.last(), Some(&BookEvent::Rested { order: OrderId(4), remaining: Shares(1) }));
    assert_eq!(book.depth(5), (vec![(PriceTicks(98), Shares(2), 1)], vec![(PriceTicks(99), Shares(1), 1)]));
}

#[test]
fn ioc_partial_fill_expires_the_rest() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Sell, 100, 3));
    submit(&mut book, limit(2, Side::Sell, 103, 3));
    let events = submit(&mut book, typed(3, Side::Buy, OrderType::Ioc, Some(101), 5));
    assert_eq!(fills(&events), vec![(1, 100, 3, 1, 0, 2)]);
    assert_eq!(events.last(), Some(&closed(3, 2, CloseReason::Expired)));
    assert_eq!(book.resting(OrderId(3)), None);
    assert_eq!(book.resting_count(), 1);
}

#[test]
fn ioc_without_a_cross_only_expires() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Sell, 100, 3));
    let events = submit(&mut book, typed(2, Side::Buy, OrderType::Ioc, Some(99), 5));
    assert_eq!(events, vec![closed(2, 5, CloseReason::Expired)]);
    assert_eq!(book.resting_orders().len(), 1);
}

#[test]
fn fok_fills_completely_across_levels() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Sell, 100, 3));
    submit(&mut book, limit(2, Side::Sell, 101, 3));
    let events = submit(&mut book, typed(3, Side::Buy, OrderType::Fok, Some(101), 5));
    assert_eq!(fills(&events), vec![(1, 100, 3, 1, 0, 2), (2, 101, 2, 2, 1, 0)]);
    assert_eq!(events.len(), 2, "a complete fill has no Rested or Closed");
    assert_eq!(book.best_ask(), Some((PriceTicks(101), Shares(1))));
}

#[test]
fn fok_short_is_killed_and_changes_nothing() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Sell, 100, 3));
    submit(&mut book, limit(2, Side::Sell, 102, 3));
    let before = book.resting_orders();
    // 6 rest in total, but only 3 within the limit.
    let events = submit(&mut book, typed(3, Side::Buy, OrderType::Fok, Some(101), 4));
    assert_eq!(events, vec![closed(3, 4, CloseReason::Killed)]);
    assert_eq!(book.resting_orders(), before);
    assert_eq!(book.last_match_seq(), 0);
}

#[test]
fn market_on_an_empty_book_expires() {
    let mut book = Book::new();
    let events = submit(&mut book, typed(1, Side::Buy, OrderType::Market, None, 7));
    assert_eq!(events, vec![closed(1, 7, CloseReason::Expired)]);
    assert_eq!(book.resting_count(), 0);
}

#[test]
fn market_takes_any_price_and_expires_the_rest() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Buy, 5, 2));
    submit(&mut book, limit(2, Side::Buy, 500, 2));
    let events = submit(&mut book, typed(3, Side::Sell, OrderType::Market, None, 6));
    assert_eq!(fills(&events), vec![(1, 500, 2, 2, 0, 4), (2, 5, 2, 1, 0, 2)]);
    assert_eq!(events.last(), Some(&closed(3, 2, CloseReason::Expired)));
    assert_eq!((book.best_bid(), book.best_ask()), (None, None));
}

#[test]
fn cancel_unknown_or_done_is_rejected() {
    let mut book = Book::new();
    let mut out = Vec::new();
    book.cancel(OrderId(9), &mut out);
    assert_eq!(out, vec![BookEvent::CancelRejected { order: OrderId(9) }]);
    submit(&mut book, limit(1, Side::Buy, 100, 3));
    out.clear();
    book.cancel(OrderId(1), &mut out);
    book.cancel(OrderId(1), &mut out);
    assert_eq!(out, vec![closed(1, 3, CloseReason::Canceled), BookEvent::CancelRejected { order: OrderId(1) }]);
    book.check_invariants();
    assert_eq!(book.depth(10), (vec![], vec![]));
}

#[test]
fn fifo_within_a_level_survives_a_cancel_in_the_middle() {
    let mut book = Book::new();
    for id in 1..=4 {
        submit(&mut book, limit(id, Side::Sell, 100, 2));
    }
    let mut out = Vec::new();
    book.cancel(OrderId(2), &mut out);
    book.check_invariants();
    submit(&mut book, limit(5, Side::Sell, 100, 2));
    assert_eq!(book.depth(1).1, vec![(PriceTicks(100), Shares(8), 4)]);
    let events = submit(&mut book, limit(6, Side::Buy, 100, 7));
    let makers: Vec<u64> = fills(&events).iter().map(|fill| fill.3).collect();
    assert_eq!(makers, vec![1, 3, 4, 5]);
    assert_eq!(book.resting(OrderId(5)), Some((Side::Sell, PriceTicks(100), Shares(1))));
}

#[test]
fn duplicate_of_a_resting_id_is_rejected_and_changes_nothing() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Buy, 100, 3));
    submit(&mut book, limit(2, Side::Sell, 105, 3));
    let before = book.resting_orders();
    // Would cross if it were accepted.
    let events = submit(&mut book, limit(1, Side::Buy, 105, 4));
    assert_eq!(events, vec![closed(1, 4, CloseReason::Rejected)]);
    assert_eq!(book.resting_orders(), before);
    // Once the id no longer rests, it may be used again.
    let mut out = Vec::new();
    book.cancel(OrderId(1), &mut out);
    let events = submit(&mut book, limit(1, Side::Buy, 101, 4));
    assert_eq!(events, vec![BookEvent::Rested { order: OrderId(1), remaining: Shares(4) }]);
}

#[test]
fn self_trade_is_allowed() {
    let mut book = Book::new();
    submit(&mut book, limit(1, Side::Sell, 100, 3));
    let events = submit(&mut book, limit(11, Side::Buy, 100, 3));
    let BookEvent::Fill(fill) = &events[0] else { panic!("expected a fill, got {events:?}") };
    assert_eq!((fill.maker_account, fill.taker_account), (AccountId(1), AccountId(1)));
    assert_eq!(events.len(), 1);
}

#[test]
#[should_panic(expected = "has qty")]
fn zero_quantity_is_a_caller_bug() {
    submit(&mut Book::new(), limit(1, Side::Buy, 100, 0));
}

#[test]
#[should_panic(expected = "market order")]
fn market_with_a_limit_is_a_caller_bug() {
    submit(&mut Book::new(), typed(1, Side::Buy, OrderType::Market, Some(100), 1));
}

#[test]
#[should_panic(expected = "has limit None")]
fn limit_without_a_price_is_a_caller_bug() {
    submit(&mut Book::new(), typed(1, Side::Buy, OrderType::Ioc, None, 1));
}

#[test]
#[should_panic(expected = "has limit Some(PriceTicks(0))")]
fn non_positive_limit_is_a_caller_bug() {
    submit(&mut Book::new(), typed(1, Side::Sell, OrderType::Limit, Some(0), 1));
}
