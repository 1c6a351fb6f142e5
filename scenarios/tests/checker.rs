//! The fill checker against the platform's own code: a random order stream is
//! matched by the real engine (`Matcher`, around the real `Book`) and settled
//! by the real portfolio `Ledger`; order records and what agents were told are
//! derived from the engine's events by plain arithmetic. The checker must pass
//! that run, and fail it once one fill (or one balance, or one report) is off.

use std::collections::BTreeMap;

use fafnir_platform::domain::{AccountId, Instrument};
use fafnir_platform::proto::common::{Holding, Order, OrderStatus, OrderType, PortfolioView, Side};
use fafnir_platform::proto::events::{
    engine_event, ledger_event, order_event, CancelRequested, CloseReason, Deposited, EngineEvent, LedgerEvent,
    MarketData, OrderAbandoned, OrderAccepted, OrderEvent, Released, Reserved,
};
use fafnir_platform::services::engine::Matcher;
use fafnir_platform::services::portfolio::{Fold, Ledger};
use fafnir_scenarios::checker::{check, CheckInput, ReceivedTop, ReceivedTrade, ToldOrder, Verdict};

/// SplitMix64: a seeded generator, enough for a workload.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const ACCOUNTS: u64 = 8;

fn instruments() -> Vec<Instrument> {
    vec![Instrument::new("ACME", 1, 1, 1, 200), Instrument::new("BOLT", 5, 10, 1, 200)]
}

/// A run of `inputs` random ORDERS messages over two symbols, matched and settled by the platform's code.
fn platform_run(seed: u64, inputs: usize) -> CheckInput {
    let mut rng = Rng(seed);
    let insts = instruments();
    let mut input = CheckInput { instruments: insts.clone(), ..CheckInput::default() };
    let mut ledger_events = Vec::new();
    for account in 1..=ACCOUNTS {
        let cash =
            Deposited { account, cents: 1_000_000_000, request_id: format!("{account}/cash"), ..Deposited::default() };
        ledger_events.push(ledger_event::Kind::Deposited(cash));
        for inst in &insts {
            let request_id = format!("{account}/{}", inst.symbol);
            let shares = Deposited { account, request_id, symbol: inst.symbol.clone(), qty: 1_000_000, cents: 0 };
            ledger_events.push(ledger_event::Kind::Deposited(shares));
        }
    }
    // A retried deposit, applied once.
    ledger_events.push(ledger_events[0].clone());
    let mut matchers: BTreeMap<String, Matcher> =
        insts.iter().map(|i| (i.symbol.clone(), Matcher::new(&i.symbol))).collect();
    let mut accepted: Vec<OrderAccepted> = Vec::new();
    for seq in 1..=inputs as u64 {
        let inst = rng.pick(&insts).clone();
        let kind = match rng.below(100) {
            0..=79 => order_event::Kind::Accepted(random_order(&mut rng, &inst, seq)),
            80..=94 if !accepted.is_empty() => {
                let old = rng.pick(&accepted).clone();
                order_event::Kind::Cancel(CancelRequested {
                    order_id: old.order_id,
                    user_id: old.user_id,
                    symbol: old.symbol,
                    requested_ms: 0,
                })
            }
            95..=97 if !accepted.is_empty() => order_event::Kind::Accepted(rng.pick(&accepted).clone()),
            _ => {
                // A cancel of an order that never existed, and a reservation whose order was never accepted.
                let order_id = rng.next() | 1;
                ledger_events.push(ledger_event::Kind::Reserved(Reserved {
                    order_id,
                    account: 1,
                    symbol: inst.symbol.clone(),
                    side: Side::Sell as i32,
                    qty: inst.lot_shares,
                    price_ticks: 100,
                }));
                ledger_events.push(ledger_event::Kind::Released(Released { order_id }));
                if rng.below(2) == 0 {
                    order_event::Kind::Cancel(CancelRequested {
                        order_id,
                        user_id: 1,
                        symbol: inst.symbol.clone(),
                        requested_ms: 0,
                    })
                } else {
                    // Its saga given up: the engine must answer the fence.
                    order_event::Kind::Abandoned(OrderAbandoned {
                        order_id,
                        user_id: 1,
                        symbol: inst.symbol.clone(),
                        abandoned_ms: 0,
                    })
                }
            }
        };
        if let order_event::Kind::Accepted(a) = &kind {
            if !accepted.iter().any(|x| x.order_id == a.order_id) {
                ledger_events.push(ledger_event::Kind::Reserved(Reserved {
                    order_id: a.order_id,
                    account: a.user_id,
                    symbol: a.symbol.clone(),
                    side: a.side,
                    qty: a.qty,
                    price_ticks: a.reserve_price_ticks,
                }));
                accepted.push(a.clone());
            }
        }
        let symbol = match &kind {
            order_event::Kind::Accepted(a) => a.symbol.clone(),
            order_event::Kind::Cancel(c) => c.symbol.clone(),
            order_event::Kind::Abandoned(a) => a.symbol.clone(),
        };
        let event = OrderEvent { kind: Some(kind) };
        let out = matchers.get_mut(&symbol).unwrap().apply(seq, &event);
        for e in out.events {
            input.trades_stream.push((input.trades_stream.len() as u64 + 1, e));
        }
        received(&mut input, &out.market_data);
        input.orders_stream.push((seq, event));
    }
    input.ledger_stream = ledger_events
        .into_iter()
        .zip(1..)
        .map(|(k, seq)| (seq, LedgerEvent { kind: Some(k), trades_applied: 0 }))
        .collect();
    settle(&mut input);
    input
}

/// An agent (account 1) received the engine's market data as the gateway sends it: prices in cents.
fn received(input: &mut CheckInput, md: &MarketData) {
    let tick = input.instruments.iter().find(|i| i.symbol == md.symbol).unwrap().tick_cents;
    input.md_tops.push(ReceivedTop {
        account: 1,
        symbol: md.symbol.clone(),
        input_seq: md.input_seq,
        bid_cents: md.bid_ticks * tick,
        bid_qty: md.bid_qty,
        ask_cents: md.ask_ticks * tick,
        ask_qty: md.ask_qty,
    });
    for t in &md.trades {
        input.md_trades.push(ReceivedTrade {
            account: 1,
            symbol: md.symbol.clone(),
            input_seq: md.input_seq,
            match_seq: t.match_seq,
            price_cents: t.price_ticks * tick,
            qty: t.qty,
        });
    }
}

fn random_order(rng: &mut Rng, inst: &Instrument, seq: u64) -> OrderAccepted {
    let side = if rng.below(2) == 0 { Side::Buy } else { Side::Sell };
    let order_type = *rng.pick(&[
        OrderType::Limit,
        OrderType::Limit,
        OrderType::Limit,
        OrderType::Market,
        OrderType::Ioc,
        OrderType::Fok,
    ]);
    // Buyers a little below, sellers a little above 100 ticks, so the book both rests and crosses.
    let skew = if side == Side::Buy { -2 } else { 2 };
    let limit_ticks = if order_type == OrderType::Market { 0 } else { 100 + skew + rng.below(13) as i64 - 6 };
    let user_id = 1 + rng.below(ACCOUNTS);
    OrderAccepted {
        order_id: rng.next() ^ seq,
        user_id,
        client_order_id: format!("c{seq}"),
        symbol: inst.symbol.clone(),
        side: side as i32,
        order_type: order_type as i32,
        limit_ticks,
        qty: inst.lot_shares * (1 + rng.below(12) as i64),
        reserve_price_ticks: if order_type == OrderType::Market { inst.max_price_ticks } else { limit_ticks },
        accepted_ms: 0,
    }
}

/// The final portfolios from the platform's own ledger; the order records and
/// what agents were told from the engine's events.
fn settle(input: &mut CheckInput) {
    let mut fold = Fold::new(Ledger::new(&input.instruments));
    for (_, e) in &input.ledger_stream {
        fold.apply_ledger(e).expect("ledger event applies");
    }
    for (seq, e) in &input.trades_stream {
        fold.apply_trade(*seq, e).expect("trade event applies");
    }
    let ledger = fold.ledger();
    for account in 1..=ACCOUNTS {
        let a = ledger.account(AccountId(account));
        let holdings = a
            .holdings
            .iter()
            .map(|(symbol, h)| Holding { symbol: symbol.clone(), qty: h.qty.0, reserved_qty: h.reserved.0 })
            .collect();
        let view =
            PortfolioView { account_id: account, cash_cents: a.cash.0, reserved_cents: a.reserved_cash.0, holdings };
        input.portfolios.insert(account, view);
    }
    let ticks: BTreeMap<String, i64> = input.instruments.iter().map(|i| (i.symbol.clone(), i.tick_cents)).collect();
    for (_, e) in &input.orders_stream {
        if let Some(order_event::Kind::Accepted(a)) = &e.kind {
            let order = Order {
                order_id: a.order_id,
                user_id: a.user_id,
                client_order_id: a.client_order_id.clone(),
                symbol: a.symbol.clone(),
                side: a.side,
                order_type: a.order_type,
                price_cents: a.limit_ticks * ticks[&a.symbol],
                qty: a.qty,
                status: OrderStatus::Accepted as i32,
                ..Order::default()
            };
            input.orders.entry(a.order_id).or_insert(order);
        }
    }
    let mut closed: BTreeMap<u64, i32> = BTreeMap::new();
    for (_, e) in &input.trades_stream {
        match &e.kind {
            Some(engine_event::Kind::Fill(f)) => {
                for id in [f.maker_order, f.taker_order] {
                    let o = input.orders.get_mut(&id).unwrap();
                    o.filled_qty += f.qty;
                    o.filled_notional_cents += f.qty * f.price_ticks * ticks[&e.symbol];
                }
            }
            Some(engine_event::Kind::Closed(c)) => {
                closed.insert(c.order_id, c.reason);
            }
            _ => {}
        }
    }
    for o in input.orders.values_mut() {
        o.status = match closed.get(&o.order_id) {
            _ if o.filled_qty == o.qty => OrderStatus::Filled,
            Some(r) if *r == CloseReason::Rejected as i32 => OrderStatus::Rejected,
            Some(_) => OrderStatus::Canceled,
            None if o.filled_qty > 0 => OrderStatus::PartiallyFilled,
            None => OrderStatus::Accepted,
        } as i32;
        // Agents of odd accounts report what they heard: the truth.
        if o.user_id % 2 == 1 {
            let closed = o.status == OrderStatus::Canceled as i32 || o.status == OrderStatus::Rejected as i32;
            let told = ToldOrder {
                account: o.user_id,
                symbol: o.symbol.clone(),
                filled_qty: o.filled_qty,
                filled_notional_cents: o.filled_notional_cents,
                closed,
            };
            input.told.insert(o.order_id, told);
        }
    }
}

fn failed(v: &Verdict) -> Vec<&str> {
    v.checks.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect()
}

fn fills(input: &CheckInput) -> Vec<usize> {
    (0..input.trades_stream.len())
        .filter(|&i| matches!(input.trades_stream[i].1.kind, Some(engine_event::Kind::Fill(_))))
        .collect()
}

fn fill_at(input: &mut CheckInput, at: usize) -> &mut fafnir_platform::proto::events::FillEvent {
    match &mut input.trades_stream[at].1.kind {
        Some(engine_event::Kind::Fill(f)) => f,
        _ => unreachable!("an index from fills()"),
    }
}

#[test]
fn random_runs_of_the_real_engine_pass_and_fail_when_one_fill_is_off() {
    for seed in [1, 2, 3] {
        let run = platform_run(seed, 5_000);
        let kinds = |k: fn(&EngineEvent) -> bool| run.trades_stream.iter().filter(|(_, e)| k(e)).count();
        let fill_count = fills(&run).len();
        let rested = kinds(|e| matches!(e.kind, Some(engine_event::Kind::Rested(_))));
        let ignored = kinds(|e| matches!(e.kind, Some(engine_event::Kind::Ignored(_))));
        assert!(
            fill_count > 1_000 && rested > 500 && ignored > 100,
            "a workload that matches: {fill_count} {rested} {ignored}"
        );
        let v = check(&run);
        assert!(v.passed, "seed {seed}: {v:#?}");

        let mut rng = Rng(seed);
        let at = *rng.pick(&fills(&run));
        let mut qty = run.clone();
        fill_at(&mut qty, at).qty += 1;
        let v = check(&qty);
        assert!(failed(&v).contains(&"fills_match_reference"), "seed {seed}, fill qty off: {v:#?}");
        assert!(failed(&v).contains(&"no_trade_through_or_overfill"), "seed {seed}, fill qty off: {v:#?}");

        let mut maker = run.clone();
        let f = fill_at(&mut maker, at);
        f.maker_account = f.maker_account % ACCOUNTS + 1;
        let v = check(&maker);
        assert!(failed(&v).contains(&"fills_match_reference"), "seed {seed}, maker account off: {v:#?}");
        assert!(failed(&v).contains(&"settled_exactly_once"), "seed {seed}, maker account off: {v:#?}");

        let mut dup = run.clone();
        let again = dup.trades_stream[at].1.clone();
        dup.trades_stream.push((u64::MAX, again));
        let v = check(&dup);
        assert_eq!(failed(&v), ["settled_exactly_once"], "seed {seed}, fill published twice: {v:#?}");

        // The engine's own market data agrees with the reference book; one size off does not.
        assert!(run.md_tops.iter().filter(|t| t.bid_qty > 0 && t.ask_qty > 0).count() > 1_000);
        let mut top = run.clone();
        let at = rng.below(top.md_tops.len() as u64) as usize;
        top.md_tops[at].ask_qty += 1;
        let v = check(&top);
        assert_eq!(failed(&v), ["market_data_agrees"], "seed {seed}, ask size off: {v:#?}");
    }
}

#[test]
fn a_run_settled_by_the_real_ledger_with_one_balance_or_report_off_fails() {
    let run = platform_run(7, 3_000);
    assert!(check(&run).passed);
    let mut cash = run.clone();
    cash.portfolios.get_mut(&3).unwrap().cash_cents += 1;
    assert_eq!(failed(&check(&cash)), ["conservation", "settled_exactly_once"]);
    let mut reserved = run.clone();
    reserved.portfolios.get_mut(&4).unwrap().reserved_cents += 1;
    assert_eq!(failed(&check(&reserved)), ["reservations_balance"]);
    let mut told = run.clone();
    let (_, t) = told.told.iter_mut().find(|(_, t)| t.filled_qty > 0).unwrap();
    t.filled_notional_cents -= 1;
    assert_eq!(failed(&check(&told)), ["agents_told_the_truth"]);
}

/// The checker's budget: a run of 100k inputs is checked in seconds (in a
/// release build; `cargo test --release -- --ignored`).
#[test]
#[ignore]
#[allow(clippy::disallowed_methods)] // the wall clock, outside any simulation
fn a_large_run_is_checked_in_seconds() {
    let run = platform_run(11, 100_000);
    let started = std::time::Instant::now();
    let v = check(&run);
    let took = started.elapsed();
    assert!(v.passed, "{v:#?}");
    eprintln!("checked {} ORDERS and {} TRADES events in {took:?}", run.orders_stream.len(), run.trades_stream.len());
    assert!(took.as_secs() < 10, "took {took:?}");
}
