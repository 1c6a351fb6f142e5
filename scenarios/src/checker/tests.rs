//! The checker on hand-built runs: one clean run that passes every check, and
//! for each check a copy of it broken in one way that the check must flag.

use fafnir_platform::domain::Instrument;
use fafnir_platform::proto::common::{Candle, Holding, Order, OrderStatus, OrderType, PortfolioView, Quote, Side};
use fafnir_platform::proto::events::{
    engine_event, ledger_event, order_event, CancelRequested, CloseReason, ClosedEvent, Deposited, EngineEvent,
    FillEvent, IgnoredEvent, LedgerEvent, OrderAbandoned, OrderAccepted, OrderEvent, Released, Reserved, RestedEvent,
};

use super::*;

const ACME: &str = "ACME";
/// ACME's tick: 5 cents. Its band tops at 1,000 ticks, where market buys reserve.
const TICK: i64 = 5;
const MAX_TICKS: i64 = 1_000;

const A: u64 = 0xa1;
const B: u64 = 0xb2;
const C: u64 = 0xc3;
const D: u64 = 0xd4;
const E: u64 = 0xe5;
const F: u64 = 0xf6;
const G: u64 = 0x97;
const H: u64 = 0x98;
const I: u64 = 0x99;

/// Builds a `CheckInput` event by event, numbering each stream from 1.
struct Run {
    input: CheckInput,
}

impl Run {
    fn new() -> Run {
        let instruments = vec![Instrument::new(ACME, TICK, 1, 1, MAX_TICKS)];
        Run { input: CheckInput { instruments, ..CheckInput::default() } }
    }

    fn ledger(&mut self, kind: ledger_event::Kind) {
        let seq = self.input.ledger_stream.len() as u64 + 1;
        self.input.ledger_stream.push((seq, LedgerEvent { kind: Some(kind), trades_applied: 0 }));
    }

    fn deposit(&mut self, account: u64, cents: i64, request_id: &str) {
        let d = Deposited { account, cents, request_id: request_id.into(), ..Deposited::default() };
        self.ledger(ledger_event::Kind::Deposited(d));
    }

    fn deposit_shares(&mut self, account: u64, qty: i64, request_id: &str) {
        let d = Deposited { account, request_id: request_id.into(), symbol: ACME.into(), qty, cents: 0 };
        self.ledger(ledger_event::Kind::Deposited(d));
    }

    fn reserve(&mut self, order_id: u64, account: u64, side: Side, qty: i64, price_ticks: i64) {
        let r = Reserved { order_id, account, symbol: ACME.into(), side: side as i32, qty, price_ticks };
        self.ledger(ledger_event::Kind::Reserved(r));
    }

    fn order_event(&mut self, kind: order_event::Kind) -> u64 {
        let seq = self.input.orders_stream.len() as u64 + 1;
        self.input.orders_stream.push((seq, OrderEvent { kind: Some(kind) }));
        // The market follows every input (its top of book is the test's business).
        if let Some(market) = &mut self.input.market {
            market.values_mut().for_each(|s| s.quote.book_seq = seq);
        }
        seq
    }

    /// Reserves (limit, or the band's top for market orders) then accepts.
    fn accept(&mut self, order_id: u64, account: u64, side: Side, kind: OrderType, limit_ticks: i64, qty: i64) -> u64 {
        let reserve_price_ticks = if kind == OrderType::Market { MAX_TICKS } else { limit_ticks };
        self.reserve(order_id, account, side, qty, reserve_price_ticks);
        let a = OrderAccepted {
            order_id,
            user_id: account,
            client_order_id: format!("c{order_id}"),
            symbol: ACME.into(),
            side: side as i32,
            order_type: kind as i32,
            limit_ticks,
            qty,
            reserve_price_ticks,
            accepted_ms: 0,
        };
        self.order_event(order_event::Kind::Accepted(a))
    }

    /// An accept saga given up after reserving: abandoned, answered, released.
    fn abandon(&mut self, order_id: u64, account: u64) -> u64 {
        let a = OrderAbandoned { order_id, user_id: account, symbol: ACME.into(), abandoned_ms: 0 };
        let seq = self.order_event(order_event::Kind::Abandoned(a));
        self.engine(seq, vec![ignored(order_id)]);
        self.ledger(ledger_event::Kind::Released(Released { order_id }));
        seq
    }

    fn cancel(&mut self, order_id: u64, account: u64) -> u64 {
        let c = CancelRequested { order_id, user_id: account, symbol: ACME.into(), requested_ms: 0 };
        self.order_event(order_event::Kind::Cancel(c))
    }

    /// The engine's events answering ORDERS input `input_seq`.
    fn engine(&mut self, input_seq: u64, kinds: Vec<engine_event::Kind>) {
        for (index, kind) in (0u32..).zip(kinds) {
            let seq = self.input.trades_stream.len() as u64 + 1;
            let e = EngineEvent { symbol: ACME.into(), input_seq, index, ts_ms: 0, kind: Some(kind) };
            self.input.trades_stream.push((seq, e));
        }
    }

    fn record(&mut self, order_id: u64, status: OrderStatus, filled_qty: i64, filled_notional_cents: i64) {
        let a = accepted(&self.input, order_id).clone();
        let order = Order {
            order_id,
            user_id: a.user_id,
            client_order_id: a.client_order_id,
            symbol: a.symbol,
            side: a.side,
            order_type: a.order_type,
            price_cents: a.limit_ticks * TICK,
            qty: a.qty,
            filled_qty,
            filled_notional_cents,
            status: status as i32,
            reason: String::new(),
        };
        self.input.orders.insert(order_id, order);
    }

    fn portfolio(&mut self, account: u64, cash_cents: i64, reserved_cents: i64, qty: i64, reserved_qty: i64) {
        let holdings = vec![Holding { symbol: ACME.into(), qty, reserved_qty }];
        let view = PortfolioView { account_id: account, cash_cents, reserved_cents, holdings };
        self.input.portfolios.insert(account, view);
    }

    fn told(&mut self, order_id: u64, filled_qty: i64, filled_notional_cents: i64, closed: bool) {
        let account = accepted(&self.input, order_id).user_id;
        let told = ToldOrder { account, symbol: ACME.into(), filled_qty, filled_notional_cents, closed };
        self.input.told.insert(order_id, told);
    }

    /// `account` received an execution report of `order_id`.
    fn report(&mut self, account: u64, order_id: u64, kind: ReportKind) {
        let cursor = self.input.trades_stream.len() as u64;
        self.input.reports.push(ReceivedReport { account, order_id, kind, cursor });
    }

    /// Account 1 received a market-data update of input `input_seq`: top
    /// [bid cents, bid qty, ask cents, ask qty] and trades (match_seq, cents, qty).
    fn md(&mut self, input_seq: u64, top: [i64; 4], trades: &[(u64, i64, i64)]) {
        let [bid_cents, bid_qty, ask_cents, ask_qty] = top;
        let symbol = ACME.to_string();
        let received =
            ReceivedTop { account: 1, symbol: symbol.clone(), input_seq, bid_cents, bid_qty, ask_cents, ask_qty };
        self.input.md_tops.push(received);
        for &(match_seq, price_cents, qty) in trades {
            let t = ReceivedTrade { account: 1, symbol: symbol.clone(), input_seq, match_seq, price_cents, qty };
            self.input.md_trades.push(t);
        }
    }

    fn served(&mut self) -> &mut Served {
        self.input.market.as_mut().expect("market gathered").get_mut(ACME).expect("ACME served")
    }
}

fn accepted(input: &CheckInput, order_id: u64) -> &OrderAccepted {
    input
        .orders_stream
        .iter()
        .find_map(|(_, e)| match &e.kind {
            Some(order_event::Kind::Accepted(a)) if a.order_id == order_id => Some(a),
            _ => None,
        })
        .expect("accepted in the test run")
}

#[allow(clippy::too_many_arguments)]
fn fill(
    seq: u64,
    price: i64,
    qty: i64,
    maker: (u64, u64),
    taker: (u64, u64),
    side: Side,
    rem: (i64, i64),
) -> engine_event::Kind {
    engine_event::Kind::Fill(FillEvent {
        match_seq: seq,
        price_ticks: price,
        qty,
        maker_order: maker.0,
        maker_account: maker.1,
        taker_order: taker.0,
        taker_account: taker.1,
        taker_side: side as i32,
        maker_remaining: rem.0,
        taker_remaining: rem.1,
    })
}

fn rested(order_id: u64, remaining: i64) -> engine_event::Kind {
    engine_event::Kind::Rested(RestedEvent { order_id, remaining })
}

fn closed(order_id: u64, account: u64, remaining: i64, reason: CloseReason) -> engine_event::Kind {
    engine_event::Kind::Closed(ClosedEvent { order_id, account, remaining, reason: reason as i32 })
}

fn ignored(order_id: u64) -> engine_event::Kind {
    engine_event::Kind::Ignored(IgnoredEvent { order_id, reason: "not resting".into() })
}

/// A run that exercises every order type, a cancel, an ignored cancel, a
/// released never-accepted reservation and a retried deposit. Tick 5 cents.
///
/// | ORDERS | order | engine |
/// |---|---|---|
/// | 1 | A: acct 2 sells 10 @ 100 | rests |
/// | 2 | B: acct 2 sells 10 @ 100 | rests behind A |
/// | 3 | C: acct 1 buys 15 @ 101 | #1 10 from A, #2 5 from B |
/// | 4 | D: acct 1 buys 5 @ 99 | rests |
/// | 5 | E: acct 3 market buy 10 | #3 5 from B, 5 expire |
/// | 6 | cancel D | closed 5 |
/// | 7 | F: acct 2 IOC sell 10 @ 100 | no bid: 10 expire |
/// | 8 | G: acct 2 FOK buy 5 @ 200 | no ask: killed |
/// | 9 | H: acct 2 sells 20 @ 102 | rests |
/// | 10 | I: acct 1 IOC buy 5 @ 102 | #4 5 from H |
/// | 11 | cancel C | ignored (filled) |
fn clean() -> Run {
    let mut r = Run::new();
    r.deposit(1, 100_000, "d1");
    r.deposit(1, 100_000, "d1");
    r.deposit(2, 10_000, "d2");
    r.deposit_shares(2, 100, "d3");
    r.deposit(3, 50_000, "d4");
    r.deposit_shares(3, 50, "d5");
    r.reserve(0xee, 1, Side::Buy, 2, 50);
    r.ledger(ledger_event::Kind::Released(Released { order_id: 0xee }));
    let s = r.accept(A, 2, Side::Sell, OrderType::Limit, 100, 10);
    r.engine(s, vec![rested(A, 10)]);
    let s = r.accept(B, 2, Side::Sell, OrderType::Limit, 100, 10);
    r.engine(s, vec![rested(B, 10)]);
    let s = r.accept(C, 1, Side::Buy, OrderType::Limit, 101, 15);
    r.engine(
        s,
        vec![fill(1, 100, 10, (A, 2), (C, 1), Side::Buy, (0, 5)), fill(2, 100, 5, (B, 2), (C, 1), Side::Buy, (5, 0))],
    );
    let s = r.accept(D, 1, Side::Buy, OrderType::Limit, 99, 5);
    r.engine(s, vec![rested(D, 5)]);
    let s = r.accept(E, 3, Side::Buy, OrderType::Market, 0, 10);
    r.engine(s, vec![fill(3, 100, 5, (B, 2), (E, 3), Side::Buy, (0, 5)), closed(E, 3, 5, CloseReason::Expired)]);
    let s = r.cancel(D, 1);
    r.engine(s, vec![closed(D, 1, 5, CloseReason::Canceled)]);
    let s = r.accept(F, 2, Side::Sell, OrderType::Ioc, 100, 10);
    r.engine(s, vec![closed(F, 2, 10, CloseReason::Expired)]);
    let s = r.accept(G, 2, Side::Buy, OrderType::Fok, 200, 5);
    r.engine(s, vec![closed(G, 2, 5, CloseReason::Killed)]);
    let s = r.accept(H, 2, Side::Sell, OrderType::Limit, 102, 20);
    r.engine(s, vec![rested(H, 20)]);
    let s = r.accept(I, 1, Side::Buy, OrderType::Ioc, 102, 5);
    r.engine(s, vec![fill(4, 102, 5, (H, 2), (I, 1), Side::Buy, (15, 0))]);
    let s = r.cancel(C, 1);
    r.engine(s, vec![ignored(C)]);
    // Fills in cents: #1 5,000; #2 2,500; #3 2,500; #4 2,550.
    r.portfolio(1, 100_000 - 5_000 - 2_500 - 2_550, 0, 20, 0);
    r.portfolio(2, 10_000 + 5_000 + 2_500 + 2_500 + 2_550, 0, 100 - 25, 15);
    r.portfolio(3, 50_000 - 2_500, 0, 55, 0);
    r.record(A, OrderStatus::Filled, 10, 5_000);
    r.record(B, OrderStatus::Filled, 10, 5_000);
    r.record(C, OrderStatus::Filled, 15, 7_500);
    r.record(D, OrderStatus::Canceled, 0, 0);
    r.record(E, OrderStatus::Canceled, 5, 2_500);
    r.record(F, OrderStatus::Canceled, 0, 0);
    r.record(G, OrderStatus::Canceled, 0, 0);
    r.record(H, OrderStatus::PartiallyFilled, 5, 2_550);
    r.record(I, OrderStatus::Filled, 5, 2_550);
    r.told(C, 15, 7_500, false);
    r.told(D, 0, 0, true);
    r.told(E, 5, 2_500, true);
    r.told(H, 5, 2_550, false);
    // A hostile client (account 4): every request refused, its account as set up.
    r.deposit(4, 1_000, "d6");
    r.deposit_shares(4, 7, "d7");
    r.portfolio(4, 1_000, 0, 7, 0);
    r.input.hostile.refused = 5;
    r.input.hostile.sent.insert("submit".into(), 5);
    r.input.hostile_accounts.insert(4, (1_000, [(ACME.to_string(), 7)].into()));
    received(&mut r);
    r
}

/// What the agents of the clean run received: execution reports of their own
/// orders, and market data of every input (tops in cents, tick 5), and what
/// the market serves at the end.
fn received(r: &mut Run) {
    let fill = |match_seq, maker| ReportKind::Fill { match_seq, maker };
    r.report(1, 0, ReportKind::Opening);
    for (account, order, kind) in [
        (2, A, fill(1, true)),
        (1, C, fill(1, false)),
        (2, B, fill(2, true)),
        (1, C, fill(2, false)),
        (1, C, ReportKind::Settled { match_seq: 2 }),
        (2, B, fill(3, true)),
        (3, E, fill(3, false)),
        (3, E, ReportKind::Closed),
        (1, D, ReportKind::Closed),
        (2, F, ReportKind::Closed),
        (2, G, ReportKind::Closed),
        (2, H, fill(4, true)),
        (1, I, fill(4, false)),
        (2, H, ReportKind::Settled { match_seq: 4 }),
    ] {
        r.report(account, order, kind);
    }
    // The engine's top at start, before any input.
    r.md(0, [0, 0, 0, 0], &[]);
    r.md(1, [0, 0, 500, 10], &[]);
    r.md(2, [0, 0, 500, 20], &[]);
    r.md(3, [0, 0, 500, 5], &[(1, 500, 10), (2, 500, 5)]);
    r.md(4, [495, 5, 500, 5], &[]);
    r.md(5, [495, 5, 0, 0], &[(3, 500, 5)]);
    for input_seq in 6..=8 {
        r.md(input_seq, [0, 0, 0, 0], &[]);
    }
    r.md(9, [0, 0, 510, 20], &[]);
    r.md(10, [0, 0, 510, 15], &[(4, 510, 5)]);
    r.md(11, [0, 0, 510, 15], &[]);
    let quote = Quote {
        symbol: ACME.into(),
        last_price_cents: 510,
        last_qty: 5,
        bid_cents: 0,
        bid_qty: 0,
        ask_cents: 510,
        ask_qty: 15,
        trades: 4,
        volume: 25,
        match_seq: 4,
        book_seq: 11,
    };
    let candle = Candle { start_ms: 0, open_cents: 500, high_cents: 510, low_cents: 500, close_cents: 510, volume: 25 };
    let served = Served { quote, candles: vec![candle] };
    r.input.market = Some([(ACME.to_string(), served)].into());
}

const ALL: [&str; 11] = [
    "fills_match_reference",
    "no_trade_through_or_overfill",
    "conservation",
    "every_order_accounted",
    "settled_exactly_once",
    "no_negative_balance",
    "reservations_balance",
    "agents_told_the_truth",
    "market_data_agrees",
    "reports_isolated",
    "hostile_refused",
];

fn failed(v: &Verdict) -> Vec<&str> {
    v.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect()
}

fn lines<'v>(v: &'v Verdict, name: &str) -> &'v [String] {
    &v.checks.iter().find(|c| c.name == name).expect("a check of that name").first
}

/// Asserts `target` failed with a line containing all of `needles`, and that
/// the checks failing are exactly `target` and `also` (those an inherently
/// coupled property also breaks).
fn assert_flags(v: &Verdict, target: &str, also: &[&str], needles: &[&str]) {
    assert!(!v.passed, "{v:#?}");
    let mut want: Vec<&str> = also.iter().copied().chain([target]).collect();
    want.sort_by_key(|name| ALL.iter().position(|n| n == name));
    assert_eq!(failed(v), want, "{v:#?}");
    let hit = lines(v, target).iter().any(|l| needles.iter().all(|n| l.contains(n)));
    assert!(hit, "{target}: no line contains all of {needles:?}: {:#?}", lines(v, target));
}

fn fill_mut(input: &mut CheckInput, match_seq: u64) -> &mut FillEvent {
    input
        .trades_stream
        .iter_mut()
        .find_map(|(_, e)| match &mut e.kind {
            Some(engine_event::Kind::Fill(f)) if f.match_seq == match_seq => Some(f),
            _ => None,
        })
        .expect("fill in the test run")
}

#[test]
fn a_clean_run_passes_every_check() {
    let v = check(&clean().input);
    assert!(v.passed, "{v:#?}");
    assert_eq!(v.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ALL);
    assert!(v.checks.iter().all(|c| c.violations == 0 && c.first.is_empty()));
}

#[test]
fn a_duplicate_accept_is_ignored_like_the_engine_does() {
    let mut r = clean();
    let again = accepted(&r.input, C).clone();
    let s = r.order_event(order_event::Kind::Accepted(again));
    r.engine(s, vec![ignored(C)]);
    let v = check(&r.input);
    assert!(v.passed, "{v:#?}");
    // The engine matching the duplicate again is flagged.
    let mut r = clean();
    let again = accepted(&r.input, C).clone();
    let s = r.order_event(order_event::Kind::Accepted(again));
    r.engine(s, vec![rested(C, 15)]);
    let v = check(&r.input);
    assert!(lines(&v, "fills_match_reference")[0].contains("expected [ORDERS#12.0] Ignored order=c3"), "{v:#?}");
}

#[test]
fn fills_match_reference_catches_time_priority_ignored() {
    // The engine takes B before A at the same price. The same account owns both
    // and both end filled, so only the fills themselves show it.
    let mut r = clean();
    *fill_mut(&mut r.input, 1) = FillEvent { maker_order: B, maker_remaining: 0, ..*fill_mut(&mut r.input, 1) };
    *fill_mut(&mut r.input, 2) = FillEvent { maker_order: A, maker_remaining: 5, ..*fill_mut(&mut r.input, 2) };
    *fill_mut(&mut r.input, 3) = FillEvent { maker_order: A, ..*fill_mut(&mut r.input, 3) };
    // The maker's reports as the gateway would send them of those fills.
    let mut trades = r.input.clone();
    for report in &mut r.input.reports {
        if let (2, ReportKind::Fill { match_seq, maker: true }) = (report.account, report.kind) {
            report.order_id = fill_mut(&mut trades, match_seq).maker_order;
        }
    }
    let v = check(&r.input);
    assert_flags(&v, "fills_match_reference", &[], &["ACME: first divergence", "match_seq=1", "maker=a1", "maker=b2"]);
    assert_eq!(lines(&v, "fills_match_reference").len(), 1, "one line per diverging symbol");
}

#[test]
fn fills_match_reference_catches_a_missing_event_and_match_seq_gaps() {
    let mut r = clean();
    fill_mut(&mut r.input, 4).match_seq = 5;
    let v = check(&r.input);
    assert!(lines(&v, "fills_match_reference")[0].contains("match_seq=4"), "{v:#?}");
    let mut r = clean();
    r.input.trades_stream.pop();
    let v = check(&r.input);
    assert_flags(&v, "fills_match_reference", &[], &["expected [ORDERS#11.0] Ignored order=c3", "no more events"]);
}

#[test]
fn no_trade_through_catches_a_fill_through_the_limit() {
    // H sells at 103 and the engine fills I (an IOC buy limited at 102) there;
    // the platform settles what the engine said.
    let mut r = clean();
    for (_, e) in &mut r.input.orders_stream {
        if let Some(order_event::Kind::Accepted(a)) = &mut e.kind {
            if a.order_id == H {
                (a.limit_ticks, a.reserve_price_ticks) = (103, 103);
            }
        }
    }
    for (_, e) in &mut r.input.ledger_stream {
        if let Some(ledger_event::Kind::Reserved(x)) = &mut e.kind {
            if x.order_id == H {
                x.price_ticks = 103;
            }
        }
    }
    fill_mut(&mut r.input, 4).price_ticks = 103;
    r.portfolio(1, 100_000 - 5_000 - 2_500 - 2_575, 0, 20, 0);
    r.portfolio(2, 10_000 + 5_000 + 2_500 + 2_500 + 2_575, 0, 75, 15);
    r.record(H, OrderStatus::PartiallyFilled, 5, 2_575);
    r.record(I, OrderStatus::Filled, 5, 2_575);
    r.told(H, 5, 2_575, false);
    let v = check(&r.input);
    // The reference does not fill I, so H is not partly filled there either
    // (and the market data, of the fill at 102, is not the engine's).
    assert_flags(
        &v,
        "no_trade_through_or_overfill",
        &["fills_match_reference", "every_order_accounted", "market_data_agrees"],
        &["ACME match_seq 4", "trade-through: Buy 99 (account 1) limited at 102 ticks filled at 103"],
    );
}

#[test]
fn no_trade_through_catches_overfill_and_a_price_not_the_makers() {
    let mut r = clean();
    let f = fill_mut(&mut r.input, 2);
    (f.qty, f.taker_remaining) = (6, -1);
    let v = check(&r.input);
    assert!(lines(&v, "no_trade_through_or_overfill")
        .iter()
        .any(|l| l.contains("taker c3 (account 1) overfilled: 16 of 15")));
    let mut r = clean();
    fill_mut(&mut r.input, 4).price_ticks = 101;
    let v = check(&r.input);
    let l = lines(&v, "no_trade_through_or_overfill");
    assert!(l.iter().any(|l| l.contains("price 101 ticks is not the maker's")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("trade-through: Sell 98")), "below the seller's limit: {l:#?}");
}

#[test]
fn conservation_catches_cash_from_nowhere() {
    let mut r = clean();
    r.input.portfolios.get_mut(&3).unwrap().cash_cents += 1_000;
    let v = check(&r.input);
    assert_flags(
        &v,
        "conservation",
        &["settled_exactly_once"],
        &["total cash: deposited 161000 cents, accounts hold 162000"],
    );
    let mut r = clean();
    r.input.portfolios.get_mut(&2).unwrap().holdings[0].qty -= 1;
    let v = check(&r.input);
    assert_flags(
        &v,
        "conservation",
        &["settled_exactly_once"],
        &["total ACME shares: deposited 157, accounts hold 156"],
    );
}

#[test]
fn every_order_accounted_catches_a_lost_order() {
    // J is accepted (its reservation still held) but the engine never says a word about it.
    let mut r = clean();
    r.accept(0x1a, 1, Side::Buy, OrderType::Limit, 90, 5);
    r.record(0x1a, OrderStatus::Accepted, 0, 0);
    r.input.portfolios.get_mut(&1).unwrap().reserved_cents = 5 * 90 * TICK;
    let v = check(&r.input);
    // The reference book rests J: the top of book the market shows does not.
    assert_flags(
        &v,
        "every_order_accounted",
        &["fills_match_reference", "market_data_agrees"],
        &["ACME order 1a (account 1, ORDERS#12): lost"],
    );
}

#[test]
fn every_order_accounted_catches_a_wrong_status_or_sum() {
    let mut r = clean();
    r.input.orders.get_mut(&H).unwrap().status = OrderStatus::Filled as i32;
    let v = check(&r.input);
    assert_flags(&v, "every_order_accounted", &[], &["order 98", "expected PARTIALLY_FILLED", "record says FILLED"]);
    let mut r = clean();
    r.input.orders.get_mut(&E).unwrap().filled_notional_cents = 2_501;
    r.told(E, 5, 2_501, true);
    let v = check(&r.input);
    assert_flags(&v, "every_order_accounted", &[], &["order e5", "2500 cents", "5 / 2501"]);
    let mut r = clean();
    r.input.orders.remove(&D);
    r.input.told.remove(&D);
    let v = check(&r.input);
    assert_flags(&v, "every_order_accounted", &[], &["order d4", "no final order record"]);
}

#[test]
fn every_order_accounted_catches_an_open_order_the_reference_does_not_rest() {
    // The engine says D rested, never says it was canceled, and the record agrees.
    let mut r = clean();
    r.input.trades_stream.retain(|(_, e)| !matches!(&e.kind, Some(engine_event::Kind::Closed(c)) if c.order_id == D));
    r.record(D, OrderStatus::Accepted, 0, 0);
    r.told(D, 0, 0, false);
    r.input.portfolios.get_mut(&1).unwrap().reserved_cents = 5 * 99 * TICK;
    let v = check(&r.input);
    assert_flags(
        &v,
        "every_order_accounted",
        &["fills_match_reference"],
        &["order d4", "open per the engine (0 of 5 filled, never closed), not resting in the reference book"],
    );
}

#[test]
fn settled_exactly_once_catches_a_fill_settled_twice() {
    // Fill #4 is published twice and the portfolio applies it twice.
    let mut r = clean();
    let again = r.input.trades_stream.iter().find(|(_, e)| e.input_seq == 10).unwrap().1.clone();
    let seq = r.input.trades_stream.len() as u64 + 1;
    r.input.trades_stream.push((seq, again));
    r.portfolio(1, 100_000 - 5_000 - 2_500 - 2 * 2_550, 0, 25, 0);
    r.portfolio(2, 10_000 + 5_000 + 2_500 + 2_500 + 2 * 2_550, 0, 70, 15);
    let v = check(&r.input);
    assert_flags(
        &v,
        "settled_exactly_once",
        &[],
        &["ACME match_seq 4: fill published again (TRADES#12 and TRADES#14)"],
    );
    assert!(lines(&v, "settled_exactly_once").iter().any(|l| l.contains("account 1: cash expected 89950 cents")));
    // Charged twice from a single event: the same, without the duplicate line.
    r.input.trades_stream.pop();
    let v = check(&r.input);
    assert_flags(&v, "settled_exactly_once", &[], &["account 2 ACME: holding expected 75 shares, platform reports 70"]);
}

#[test]
fn no_negative_balance_catches_an_overdrawn_account() {
    // Account 3 deposited only 1,000 cents yet bought for 2,500: every other
    // number is consistent with the streams.
    let mut r = clean();
    for (_, e) in &mut r.input.ledger_stream {
        if let Some(ledger_event::Kind::Deposited(d)) = &mut e.kind {
            if d.request_id == "d4" {
                d.cents = 1_000;
            }
        }
    }
    r.input.portfolios.get_mut(&3).unwrap().cash_cents = 1_000 - 2_500;
    let v = check(&r.input);
    assert_flags(&v, "no_negative_balance", &[], &["account 3: cash -1500 cents"]);
    let mut r = clean();
    r.input.portfolios.get_mut(&2).unwrap().holdings[0].reserved_qty = 80;
    let v = check(&r.input);
    assert!(lines(&v, "no_negative_balance")[0].contains("account 2 ACME: 75 shares with 80 reserved"), "{v:#?}");
}

#[test]
fn reservations_balance_catches_a_reservation_not_released_on_cancel() {
    let mut r = clean();
    r.input.portfolios.get_mut(&1).unwrap().reserved_cents = 5 * 99 * TICK;
    let v = check(&r.input);
    assert_flags(&v, "reservations_balance", &[], &["account 1: reserved cash expected 0 cents", "reports 2475"]);
    let mut r = clean();
    r.input.portfolios.get_mut(&2).unwrap().holdings[0].reserved_qty = 25;
    let v = check(&r.input);
    assert_flags(
        &v,
        "reservations_balance",
        &[],
        &["account 2 ACME: reserved shares expected 15 (open sells), platform reports 25"],
    );
}

#[test]
fn reservations_balance_catches_a_leaked_reservation() {
    // Reserved for an order that was never accepted (a crash mid-saga) and never released.
    let mut r = clean();
    r.reserve(0xff, 3, Side::Buy, 2, 50);
    r.input.portfolios.get_mut(&3).unwrap().reserved_cents = 2 * 50 * TICK;
    let v = check(&r.input);
    assert_flags(
        &v,
        "reservations_balance",
        &[],
        &["reservation leaked: ACME order ff (account 3) reserved Buy 2 @ 50"],
    );
    assert_eq!(v.checks[6].violations, 1, "the balance itself is as the platform holds it: {v:#?}");
}

#[test]
fn an_abandoned_saga_released_and_ignored_is_clean() {
    let mut r = clean();
    r.reserve(0xfd, 3, Side::Buy, 2, 50);
    r.abandon(0xfd, 3);
    let v = check(&r.input);
    assert!(v.passed, "{v:#?}");
}

#[test]
fn reservations_balance_catches_an_order_both_abandoned_and_accepted() {
    // The message-id fence failed: the abandoned order was accepted after all.
    let mut r = clean();
    r.reserve(0xfd, 3, Side::Buy, 2, 50);
    r.abandon(0xfd, 3);
    let s = r.accept(0xfd, 3, Side::Buy, OrderType::Limit, 50, 2);
    r.engine(s, vec![ignored(0xfd)]);
    let v = check(&r.input);
    // The engine ignored the late acceptance, so the order is never accounted for either.
    let also = ["every_order_accounted"];
    assert_flags(
        &v,
        "reservations_balance",
        &also,
        &["ACME order fd both abandoned (ORDERS#12) and accepted (ORDERS#13)"],
    );
}

#[test]
fn reservations_balance_catches_an_accepted_order_without_reservation() {
    let mut r = clean();
    r.input.ledger_stream.retain(|(_, e)| !matches!(&e.kind, Some(ledger_event::Kind::Reserved(x)) if x.order_id == G));
    let v = check(&r.input);
    assert_flags(&v, "reservations_balance", &[], &["ACME order 97 (account 2, Buy Fok)", "without a reservation"]);
}

#[test]
fn agents_told_the_truth_catches_a_wrong_fill_report() {
    let mut r = clean();
    r.told(H, 10, 5_100, false);
    let v = check(&r.input);
    assert_flags(
        &v,
        "agents_told_the_truth",
        &[],
        &["ACME order 98 (account 2): told 10 shares / 5100 cents", "5 / 2550"],
    );
    let mut r = clean();
    r.told(E, 5, 2_500, false);
    let v = check(&r.input);
    assert_flags(&v, "agents_told_the_truth", &[], &["order e5", "told closed: false, record is CANCELED"]);
}

#[test]
fn market_data_agrees_catches_a_trade_that_is_not_the_fill() {
    let mut r = clean();
    r.input.md_trades[3].price_cents = 505;
    let v = check(&r.input);
    assert_flags(
        &v,
        "market_data_agrees",
        &[],
        &["ACME trade match_seq 4 (5x505c, ORDERS#10) received by account 1", "the fill is 5x510c of ORDERS#10"],
    );
    // A trade no fill has, and a real fill said to come of another input.
    let mut r = clean();
    r.md(11, [0, 0, 510, 15], &[(5, 510, 1)]);
    r.input.md_trades[0].input_seq = 4;
    let v = check(&r.input);
    let l = lines(&v, "market_data_agrees");
    assert!(l.iter().any(|l| l.contains("match_seq 5") && l.contains("no such fill in TRADES")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("match_seq 1 (10x500c, ORDERS#4)") && l.contains("of ORDERS#3")), "{l:#?}");
    assert_eq!(failed(&v), ["market_data_agrees"]);
}

#[test]
fn market_data_agrees_catches_a_top_of_book_that_is_not_the_references() {
    // The bid's size after D rested, one share off.
    let mut r = clean();
    r.input.md_tops[4].bid_qty = 6;
    let v = check(&r.input);
    assert_flags(
        &v,
        "market_data_agrees",
        &[],
        &["ACME top of book after ORDERS#4: account 1 received bid 6x495c / ask 5x500c", "has bid 5x495c / ask 5x500c"],
    );
    // A stale top: the book before E took the ask, sent as the book after it.
    let mut r = clean();
    r.md(5, [495, 5, 500, 5], &[]);
    let v = check(&r.input);
    assert_flags(&v, "market_data_agrees", &[], &["after ORDERS#5", "received bid 5x495c / ask 5x500c"]);
    // Bid and ask swapped, and a top said to follow an input that is not ACME's.
    let mut r = clean();
    r.md(9, [510, 20, 0, 0], &[]);
    r.md(12, [0, 0, 510, 15], &[]);
    let v = check(&r.input);
    let l = lines(&v, "market_data_agrees");
    assert!(l.iter().any(|l| l.contains("after ORDERS#9") && l.contains("has bid 0x0c / ask 20x510c")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("after ORDERS#12, not an input of ACME")), "{l:#?}");
}

#[test]
fn market_data_agrees_catches_a_quote_or_candle_that_is_not_what_the_fills_make() {
    // Fills #1 and #2 counted twice.
    let mut r = clean();
    let q = &mut r.served().quote;
    (q.trades, q.volume) = (6, 40);
    let v = check(&r.input);
    assert_flags(
        &v,
        "market_data_agrees",
        &[],
        &["ACME quote: 6 trades, volume 40, last 5x510c (match_seq 4); the fills in TRADES make 4 trades, volume 25"],
    );
    // The top before I's fill, and a candle missing a fill.
    let mut r = clean();
    r.served().quote.ask_qty = 20;
    r.served().candles[0].volume = 20;
    let v = check(&r.input);
    let l = lines(&v, "market_data_agrees");
    assert!(l.iter().any(|l| l.contains("quote: bid 0x0c / ask 20x510c after ORDERS#11; the reference book ends with bid 0x0c / ask 15x510c after ORDERS#11")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("candles: 1 served, the fills make 1") && l.contains("v20")), "{l:#?}");
    assert_eq!(failed(&v), ["market_data_agrees"]);
    // A symbol the market served nothing of.
    let mut r = clean();
    r.input.market.as_mut().unwrap().clear();
    assert_flags(&check(&r.input), "market_data_agrees", &[], &["ACME: no quote or candles were gathered"]);
    // Not gathered at all: only what agents received is checked.
    let mut r = clean();
    r.input.market = None;
    assert!(check(&r.input).passed);
}

#[test]
fn reports_isolated_catches_a_report_of_another_accounts_order() {
    // Account 1 (C's owner) is also sent the maker's report of fill #1.
    let mut r = clean();
    r.report(1, A, ReportKind::Fill { match_seq: 1, maker: true });
    let v = check(&r.input);
    assert_flags(
        &v,
        "reports_isolated",
        &[],
        &["account 1 received a maker fill report (match_seq 1) of order a1", "account 2's order on ACME"],
    );
    assert_eq!(v.checks[9].violations, 1, "{v:#?}");
    // Its own order, in a fill between two others; an order never accepted; a kindless report of an order.
    let mut r = clean();
    r.report(1, D, ReportKind::Fill { match_seq: 3, maker: false });
    r.report(3, E, ReportKind::Settled { match_seq: 9 });
    r.report(1, 0x77, ReportKind::Closed);
    r.report(2, A, ReportKind::Opening);
    let v = check(&r.input);
    let l = lines(&v, "reports_isolated");
    assert!(l.iter().any(|l| l.contains("of order d4") && l.contains("maker is b2, its taker e5")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("of order e5") && l.contains("TRADES has no fill ACME match_seq 9")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("close report of order 77") && l.contains("never accepted")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("account 2 received a report of order a1 without a kind")), "{l:#?}");
    assert_eq!(failed(&v), ["reports_isolated"]);
}

#[test]
fn malformed_events_are_violations_not_panics() {
    let mut r = clean();
    r.input.orders_stream.push((12, OrderEvent { kind: None }));
    let s = r.order_event(order_event::Kind::Accepted(OrderAccepted {
        order_id: 7,
        qty: -3,
        ..accepted(&r.input, A).clone()
    }));
    r.engine(s, vec![ignored(7)]);
    r.input.trades_stream.push((99, EngineEvent { symbol: ACME.into(), ..EngineEvent::default() }));
    let bad_side = FillEvent { taker_side: 9, ..FillEvent::default() };
    r.input
        .trades_stream
        .push((100, EngineEvent { kind: Some(engine_event::Kind::Fill(bad_side)), ..EngineEvent::default() }));
    r.deposit(4, -5, "d-neg");
    r.input.ledger_stream.push((200, LedgerEvent { kind: None, trades_applied: 0 }));
    let huge = Deposited { account: 5, cents: i64::MAX, request_id: "huge".into(), ..Deposited::default() };
    r.ledger(ledger_event::Kind::Deposited(huge));
    r.input.portfolios.insert(6, PortfolioView { account_id: 6, cash_cents: i64::MIN, ..PortfolioView::default() });
    let v = check(&r.input);
    assert!(!v.passed);
    let l = lines(&v, "fills_match_reference");
    assert!(l.iter().any(|l| l.contains("ORDERS#12: empty event")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("order 7 (account 2) malformed: qty -3")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("TRADES#99") && l.contains("empty event")), "{l:#?}");
    let l = lines(&v, "conservation");
    assert!(l.iter().any(|l| l.contains("deposit \"d-neg\" to account 4 malformed")), "{l:#?}");
    assert!(l.iter().any(|l| l.contains("LEDGER#200: empty event")), "{l:#?}");
}

#[test]
fn at_most_ten_lines_per_check() {
    let mut r = clean();
    for account in 10..40 {
        r.input
            .portfolios
            .insert(account, PortfolioView { account_id: account, cash_cents: -1, ..PortfolioView::default() });
    }
    let v = check(&r.input);
    let c = v.checks.iter().find(|c| c.name == "no_negative_balance").unwrap();
    assert_eq!((c.violations, c.first.len()), (30, FIRST_MAX));
    assert!(!c.first.iter().any(|l| l.contains('\n')));
}

#[test]
fn the_verdict_serializes() {
    let json = serde_json::to_value(check(&clean().input)).unwrap();
    assert_eq!(json["passed"], true);
    assert_eq!(json["checks"][0]["name"], "fills_match_reference");
}

#[test]
fn hostile_refused_catches_an_accepted_request() {
    let mut r = clean();
    r.input.hostile.violations_total = 2;
    r.input.hostile.violations.push("deposit accepted: Deposit { cents: 9223372036854775807 }".into());
    let v = check(&r.input);
    assert_flags(&v, "hostile_refused", &[], &["not refused", "deposit accepted"]);
    assert_eq!(lines(&v, "hostile_refused").len(), 2, "the ones not kept word for word count too");
}

#[test]
fn hostile_refused_catches_an_effect_on_the_hostile_account() {
    let mut r = clean();
    r.portfolio(4, 1_001, 0, 7, 0);
    let v = check(&r.input);
    assert!(failed(&v).contains(&"hostile_refused"), "{v:#?}");
    assert_flags(&v, "hostile_refused", &["conservation", "settled_exactly_once"], &["hostile account 4", "cash 1001"]);
    let mut r = clean();
    let s = r.accept(0x44, 4, Side::Buy, OrderType::Limit, 100, 1);
    r.engine(s, vec![rested(0x44, 1)]);
    let v = check(&r.input);
    assert!(lines(&v, "hostile_refused").iter().any(|l| l.contains("order 44 accepted")), "{v:#?}");
}
