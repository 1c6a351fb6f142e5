//! The end-to-end flows of the platform, written once against [`Platform`]
//! and run in both worlds: against the real nats-server and redis-server
//! (`real.rs`) and in the deterministic simulation (`sim.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fafnir_platform::book::{Book, BookEvent, NewOrder};
use fafnir_platform::bus::read_to_end;
use fafnir_platform::domain::{
    order_id_for, AccountId, OrderType as DomainType, PriceTicks, Shares, Side as DomainSide, UserId,
};
use fafnir_platform::proto::common::{Order, OrderStatus, OrderType, PortfolioView, Role, Side};
use fafnir_platform::proto::events::{engine_event, EngineEvent};
use fafnir_platform::proto::gateway::execution_report;
use fafnir_platform::services::jwt;
use fafnir_scenarios::client::{Client, OrderSpec};
use tonic::Code;

use crate::Platform;

pub use crate::graphql::graphql_users_trade_and_resume_their_executions;
pub use crate::health::{a_service_says_not_serving_until_it_has_rebuilt, every_service_says_serving_under_its_name};
pub use crate::hostile::hostile_requests_are_refused_without_effect;

pub const PASSWORD: &str = "correct horse battery";

pub async fn user(p: &dyn Platform, name: &str) -> Client {
    Client::register_and_login(p.gateway(), name, PASSWORD, Role::Trader).await.expect("register and login")
}

pub async fn engine_events(p: &dyn Platform) -> Vec<EngineEvent> {
    let stream = p.cfg().names().trades_stream();
    let bus = p.bus();
    let msgs =
        eventually("TRADES to be readable", || async { read_to_end(bus.as_ref(), &stream, "", 1).await.ok() }).await;
    msgs.iter().map(|m| prost::Message::decode(&m.payload[..]).expect("engine event")).collect()
}

/// Waits until the engine has answered every input in ORDERS.
pub async fn wait_engine_caught_up(p: &dyn Platform) {
    let bus = p.bus();
    let orders = p.cfg().names().orders_stream();
    let inputs =
        eventually("ORDERS to be readable", || async { read_to_end(bus.as_ref(), &orders, "", 1).await.ok() }).await;
    let last = inputs.last().map_or(0, |m| m.seq);
    eventually("the engine to catch up", || async {
        engine_events(p).await.iter().any(|e| e.input_seq == last).then_some(())
    })
    .await;
}

/// One trace id follows each order: the one its client sent (alice), or
/// the one the gateway made for it (bob); the gateway answers with it, the
/// ORDERS message carries it to the engine (header `traceparent`), and the
/// fill the order made carries it on in TRADES to the portfolio and orders.
pub async fn an_order_carries_one_trace_through_every_stream(p: &dyn Platform) {
    use fafnir_platform::telemetry::trace;
    let alice = user(p, "alice").await;
    let bob = user(p, "bob").await;
    alice.deposit_cash(1_000_000, "a-1").await.unwrap();
    bob.deposit_shares("ACME", 10, "b-1").await.unwrap();
    let sent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let (resting, answered) =
        alice.submit_traced(&OrderSpec::limit("a-buy", "ACME", Side::Buy, 500, 4), Some(sent)).await.unwrap();
    assert_eq!(answered.as_deref(), Some(sent), "the gateway answers with the client's context");
    let (taker, made) = bob.submit_traced(&OrderSpec::limit("b-sell", "ACME", Side::Sell, 500, 4), None).await.unwrap();
    let made = made.expect("the gateway makes a context when none is sent");
    assert!(trace::valid(&made), "{made}");
    assert_eq!(made, trace::for_order(bob.user_id, taker.order_id));
    // A context that is not valid is ignored, and one is made instead.
    let (_, replaced) = alice
        .submit_traced(&OrderSpec::limit("a-buy-2", "ACME", Side::Buy, 400, 1), Some("00-zz-zz-01"))
        .await
        .unwrap();
    assert!(replaced.is_some_and(|c| trace::valid(&c) && !c.contains("zz")));
    wait_engine_caught_up(p).await;
    let bus = p.bus();
    let inputs = read_to_end(bus.as_ref(), &p.cfg().names().orders_stream(), "", 1).await.unwrap();
    let trace_of_input = |n: usize| inputs[n].trace_parent.as_deref().map(trace::trace_id).map(str::to_string);
    assert_eq!(trace_of_input(0).as_deref(), Some(trace::trace_id(sent)), "alice's order in ORDERS");
    assert_eq!(trace_of_input(1).as_deref(), Some(trace::trace_id(&made)), "bob's order in ORDERS");
    let trades = read_to_end(bus.as_ref(), &p.cfg().names().trades_stream(), "", 1).await.unwrap();
    let fill = trades
        .iter()
        .find(|m| {
            let e: EngineEvent = prost::Message::decode(&m.payload[..]).unwrap();
            matches!(e.kind, Some(engine_event::Kind::Fill(ref f)) if f.taker_order == taker.order_id && f.maker_order == resting.order_id)
        })
        .expect("the two orders crossed");
    let context = fill.trace_parent.as_deref().expect("the fill carries a trace");
    assert!(trace::valid(context));
    assert_eq!(trace::trace_id(context), trace::trace_id(&made), "a fill carries the trace of the order that made it");
}

/// Polls `check` until it returns Some, or panics with `what` after 20 s.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(fafnir_platform::time::Instant::now() < deadline, "timed out waiting for {what}");
        fafnir_platform::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn order_reaches(c: &Client, id: u64, status: OrderStatus) -> Order {
    eventually(&format!("order {id:x} to be {status:?}"), || async {
        c.order(id).await.ok().filter(|o| o.status == status as i32)
    })
    .await
}

async fn portfolio_is(c: &Client, cash: i64, reserved: i64, holdings: &[(&str, i64, i64)]) -> PortfolioView {
    let want: Vec<(String, i64, i64)> = holdings.iter().map(|(s, q, r)| (s.to_string(), *q, *r)).collect();
    let mut last = None;
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(20);
    loop {
        // A fault may still be cutting the gateway off from the portfolio: ask again.
        let Ok(p) = c.portfolio().await else {
            assert!(fafnir_platform::time::Instant::now() < deadline, "portfolio of user {} unreachable", c.user_id);
            fafnir_platform::time::sleep(Duration::from_millis(25)).await;
            continue;
        };
        let got: Vec<(String, i64, i64)> =
            p.holdings.iter().map(|h| (h.symbol.clone(), h.qty, h.reserved_qty)).collect();
        if p.cash_cents == cash && p.reserved_cents == reserved && got == want {
            return p;
        }
        if fafnir_platform::time::Instant::now() >= deadline {
            panic!(
                "portfolio of user {} never became cash {cash} reserved {reserved} holdings {want:?}; last {last:?}",
                c.user_id
            );
        }
        last = Some(p);
        fafnir_platform::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn end_to_end_crossing_limits_and_a_market_order(p: &dyn Platform) {
    let alice = user(p, "alice").await;
    let bob = user(p, "bob").await;
    alice.deposit_cash(1_000_000, "a-1").await.unwrap();
    bob.deposit_shares("ACME", 100, "b-1").await.unwrap();
    let mut alice_reports = alice.executions().await.unwrap();

    let sell = bob.submit(&OrderSpec::limit("s1", "ACME", Side::Sell, 10_000, 50)).await.unwrap();
    assert_eq!(sell.status, OrderStatus::Accepted as i32);
    let buy1 = alice.submit(&OrderSpec::limit("b1", "ACME", Side::Buy, 10_100, 30)).await.unwrap();
    let buy1 = order_reaches(&alice, buy1.order_id, OrderStatus::Filled).await;
    assert_eq!((buy1.filled_qty, buy1.filled_notional_cents), (30, 300_000), "filled at the maker's price");
    let buy2 = alice.submit(&OrderSpec::limit("b2", "ACME", Side::Buy, 9_900, 10)).await.unwrap();
    let sell = order_reaches(&bob, sell.order_id, OrderStatus::PartiallyFilled).await;
    assert_eq!(sell.filled_qty, 30);
    // Resting alice bid 10 @ 99.00: wait until it rests before the market sell.
    portfolio_is(&alice, 700_000, 99_000, &[("ACME", 30, 0)]).await;
    let mkt = bob.submit(&OrderSpec::market("m1", "ACME", Side::Sell, 15)).await.unwrap();
    let mkt = order_reaches(&bob, mkt.order_id, OrderStatus::Canceled).await;
    assert_eq!((mkt.filled_qty, mkt.filled_notional_cents), (10, 99_000), "10 filled, the 5 left expire");
    order_reaches(&alice, buy2.order_id, OrderStatus::Filled).await;

    portfolio_is(&alice, 601_000, 0, &[("ACME", 40, 0)]).await;
    portfolio_is(&bob, 399_000, 0, &[("ACME", 60, 20)]).await;

    bob.cancel(sell.order_id).await.unwrap();
    let sell = order_reaches(&bob, sell.order_id, OrderStatus::Canceled).await;
    assert_eq!(sell.filled_qty, 30);
    portfolio_is(&bob, 399_000, 0, &[("ACME", 60, 0)]).await;

    let mut fills = Vec::new();
    let mut cursors = Vec::new();
    while fills.len() < 2 {
        let r = fafnir_platform::time::timeout(Duration::from_secs(10), alice_reports.message())
            .await
            .expect("report in time")
            .unwrap()
            .unwrap();
        if let Some(execution_report::Kind::Fill(f)) = r.kind {
            fills.push((r.order_id, f.price_cents, f.qty, f.remaining, f.maker));
            cursors.push(r.cursor);
        }
    }
    assert_eq!(fills, vec![(buy1.order_id, 10_000, 30, 0, false), (buy2.order_id, 9_900, 10, 0, true)]);
    assert!(cursors[0] > 0 && cursors[0] < cursors[1], "cursors grow: {cursors:?}");

    // A stream resumed after the first fill's cursor replays the second fill first.
    let mut resumed = alice.executions_after(cursors[0]).await.unwrap();
    let opening = resumed.message().await.unwrap().unwrap();
    assert_eq!((opening.kind, opening.order_id), (None, 0), "the opening report carries only the cursor");
    assert!(opening.cursor >= cursors[1], "{} < {}", opening.cursor, cursors[1]);
    let replayed = loop {
        let r = fafnir_platform::time::timeout(Duration::from_secs(10), resumed.message())
            .await
            .expect("replayed report in time")
            .unwrap()
            .unwrap();
        if let Some(execution_report::Kind::Fill(f)) = r.kind {
            break (r.order_id, f.price_cents, f.qty, f.remaining, f.maker, r.cursor);
        }
    };
    assert_eq!(replayed, (buy2.order_id, 9_900, 10, 0, true, cursors[1]));

    let quote = eventually("the quote", || async { alice.quote("ACME").await.ok().filter(|q| q.trades == 2) }).await;
    assert_eq!((quote.last_price_cents, quote.last_qty, quote.volume), (9_900, 10, 40));
    let orders = alice.orders().await.unwrap();
    assert_eq!(orders.len(), 2);
}

pub async fn ioc_and_fok_partial_and_no_fill(p: &dyn Platform) {
    let carol = user(p, "carol").await;
    let dave = user(p, "dave").await;
    carol.deposit_cash(1_000_000, "c").await.unwrap();
    dave.deposit_shares("ACME", 100, "d").await.unwrap();
    let ask = dave.submit(&OrderSpec::limit("s1", "ACME", Side::Sell, 5_000, 10)).await.unwrap();
    portfolio_is(&dave, 0, 0, &[("ACME", 100, 10)]).await;

    let ioc =
        carol.submit(&OrderSpec::limit("i1", "ACME", Side::Buy, 5_000, 15).with_type(OrderType::Ioc)).await.unwrap();
    let ioc = order_reaches(&carol, ioc.order_id, OrderStatus::Canceled).await;
    assert_eq!(ioc.filled_qty, 10, "IOC takes what is there and cancels the rest");
    order_reaches(&dave, ask.order_id, OrderStatus::Filled).await;

    let ioc =
        carol.submit(&OrderSpec::limit("i2", "ACME", Side::Buy, 4_000, 5).with_type(OrderType::Ioc)).await.unwrap();
    let ioc = order_reaches(&carol, ioc.order_id, OrderStatus::Canceled).await;
    assert_eq!(ioc.filled_qty, 0, "IOC with nothing to take fills nothing");

    dave.submit(&OrderSpec::limit("s2", "ACME", Side::Sell, 5_000, 10)).await.unwrap();
    portfolio_is(&dave, 50_000, 0, &[("ACME", 90, 10)]).await;
    let fok =
        carol.submit(&OrderSpec::limit("f1", "ACME", Side::Buy, 5_000, 20).with_type(OrderType::Fok)).await.unwrap();
    let fok = order_reaches(&carol, fok.order_id, OrderStatus::Canceled).await;
    assert_eq!(fok.filled_qty, 0, "FOK that cannot fill completely fills nothing");
    portfolio_is(&carol, 950_000, 0, &[("ACME", 10, 0)]).await;
    let fok =
        carol.submit(&OrderSpec::limit("f2", "ACME", Side::Buy, 5_000, 10).with_type(OrderType::Fok)).await.unwrap();
    let fok = order_reaches(&carol, fok.order_id, OrderStatus::Filled).await;
    assert_eq!(fok.filled_notional_cents, 50_000, "the killed FOK left the book as it was");

    portfolio_is(&carol, 900_000, 0, &[("ACME", 20, 0)]).await;
    portfolio_is(&dave, 100_000, 0, &[("ACME", 80, 0)]).await;
}

pub async fn a_retried_submit_is_booked_once(p: &dyn Platform) {
    let eve = user(p, "eve").await;
    let frank = user(p, "frank").await;
    eve.deposit_cash(100_000, "e1").await.unwrap();
    eve.deposit_cash(100_000, "e1").await.unwrap();
    frank.deposit_shares("ACME", 100, "f1").await.unwrap();
    frank.submit(&OrderSpec::limit("s", "ACME", Side::Sell, 1_000, 10)).await.unwrap();

    let spec = OrderSpec::limit("x1", "ACME", Side::Buy, 1_000, 10);
    let first = eve.submit(&spec).await.unwrap();
    let (a, b, c) = tokio::join!(eve.submit(&spec), eve.submit(&spec), eve.submit(&spec));
    for retry in [a, b, c] {
        match retry {
            Ok(o) => assert_eq!(o.order_id, first.order_id, "a retry answers with the same order"),
            Err(s) => assert_eq!(s.code(), Code::Aborted, "only 'in progress' may refuse a retry: {s}"),
        }
    }
    assert_eq!(first.order_id, order_id_for(UserId(eve.user_id), "x1").0);
    let reused = eve.submit(&OrderSpec { qty: 5, ..spec.clone() }).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists, "{reused}");

    order_reaches(&eve, first.order_id, OrderStatus::Filled).await;
    portfolio_is(&eve, 90_000, 0, &[("ACME", 10, 0)]).await;
    assert_eq!(eve.orders().await.unwrap().len(), 1);
    let fills = engine_events(p).await.iter().filter(|e| matches!(e.kind, Some(engine_event::Kind::Fill(_)))).count();
    assert_eq!(fills, 1, "one fill in the TRADES stream");
}

/// Submits, retrying while the platform is (partly) down; the client order id
/// makes each retry the same order.
pub async fn submit_retrying(c: &Client, spec: &OrderSpec) -> Order {
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.submit(spec).await {
            Ok(o) => return o,
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Aborted | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                ) =>
            {
                assert!(
                    fafnir_platform::time::Instant::now() < deadline,
                    "submit {} never accepted: {s}",
                    spec.client_order_id
                );
                fafnir_platform::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("submit {} refused: {s}", spec.client_order_id),
        }
    }
}

/// A deterministic two-user order flow: (user index, spec).
pub fn flow() -> Vec<(usize, OrderSpec)> {
    (0..40)
        .map(|i| {
            let price = 10_000 + ((i * 37) % 9) as i64 * 10 - 40;
            let qty = 5 + (i % 4) as i64 * 5;
            let (user, side) = if i % 2 == 0 { (0, Side::Buy) } else { (1, Side::Sell) };
            let mut spec = OrderSpec::limit(&format!("o{i}"), "ACME", side, price, qty);
            if i % 7 == 3 {
                spec = spec.with_type(OrderType::Ioc);
            }
            (user, spec)
        })
        .collect()
}

/// What the flow must end in: each account's (cash, ACME) and each order's filled qty.
pub fn expected(
    n: usize,
    users: [u64; 2],
    cash0: [i64; 2],
    shares0: [i64; 2],
) -> ([(i64, i64); 2], BTreeMap<u64, i64>, usize) {
    let mut book = Book::new();
    let mut events = Vec::new();
    let mut filled = BTreeMap::new();
    let mut acct = [(cash0[0], shares0[0]), (cash0[1], shares0[1])];
    let mut fills = 0;
    for (u, spec) in flow().into_iter().take(n) {
        let id = order_id_for(UserId(users[u]), &spec.client_order_id);
        filled.insert(id.0, 0);
        let side = if spec.side == Side::Buy { DomainSide::Buy } else { DomainSide::Sell };
        let kind = if spec.order_type == OrderType::Ioc { DomainType::Ioc } else { DomainType::Limit };
        book.submit(
            NewOrder {
                id,
                account: AccountId(users[u]),
                side,
                kind,
                limit: Some(PriceTicks(spec.price_cents)),
                qty: Shares(spec.qty),
            },
            &mut events,
        );
    }
    for e in events {
        if let BookEvent::Fill(f) = e {
            fills += 1;
            *filled.get_mut(&f.maker_order.0).unwrap() += f.qty.0;
            *filled.get_mut(&f.taker_order.0).unwrap() += f.qty.0;
            let buyer = if f.taker_side == DomainSide::Buy { f.taker_account } else { f.maker_account };
            let notional = f.price.0 * f.qty.0;
            for (i, a) in acct.iter_mut().enumerate() {
                if AccountId(users[i]) == buyer {
                    *a = (a.0 - notional, a.1 + f.qty.0);
                } else {
                    *a = (a.0 + notional, a.1 - f.qty.0);
                }
            }
        }
    }
    (acct, filled, fills)
}

pub async fn check_flow_outcome(
    p: &dyn Platform,
    users: &[Client; 2],
    want: &([(i64, i64); 2], BTreeMap<u64, i64>, usize),
) {
    for (i, c) in users.iter().enumerate() {
        let (cash, shares) = want.0[i];
        let mut open_reserved = 0;
        // A fault may still be cutting the gateway off from orders: ask until answered.
        for o in eventually("the order list", || async { c.orders().await.ok() }).await {
            let expect = want.1[&o.order_id];
            let o = eventually("order fills", || async {
                c.order(o.order_id).await.ok().filter(|x| {
                    x.filled_qty == expect && x.status != OrderStatus::Accepted as i32
                        || expect == 0 && x.filled_qty == 0
                })
            })
            .await;
            if o.status == OrderStatus::Accepted as i32 || o.status == OrderStatus::PartiallyFilled as i32 {
                open_reserved += (o.qty - o.filled_qty) * if o.side == Side::Buy as i32 { o.price_cents } else { 1 };
            }
        }
        let (reserved_cash, reserved_shares) = if i == 0 { (open_reserved, 0) } else { (0, open_reserved) };
        portfolio_is(c, cash, reserved_cash, &[("ACME", shares, reserved_shares)]).await;
    }
    let events = engine_events(p).await;
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(engine_event::Kind::Fill(f)) => Some(f.match_seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=want.2 as u64).collect::<Vec<_>>(), "every fill once, in order, none twice");
}

pub async fn restarts_and_a_redis_wipe_change_nothing(p: &dyn Platform) {
    let users = [user(p, "gina").await, user(p, "hank").await];
    users[0].deposit_cash(10_000_000, "g").await.unwrap();
    users[1].deposit_shares("ACME", 1_000, "h").await.unwrap();
    let ids = [users[0].user_id, users[1].user_id];
    let want = expected(40, ids, [10_000_000, 0], [0, 1_000]);
    assert!(want.2 >= 10, "the flow crosses often enough to matter ({} fills)", want.2);
    let flow = flow();

    for (u, spec) in &flow[..10] {
        submit_retrying(&users[*u], spec).await;
    }
    // The engine dies with orders still arriving; they wait in the stream.
    p.kill("engine-0").await;
    for (u, spec) in &flow[10..20] {
        submit_retrying(&users[*u], spec).await;
    }
    // The portfolio dies, and the engine comes back and fills what waited: the
    // fills reach the restarted portfolio both in its replay of TRADES and as
    // deliveries of its durable consumer, and must be settled once.
    p.kill("portfolio").await;
    p.start("engine-0").await;
    wait_engine_caught_up(p).await;
    p.start_after("portfolio", Duration::from_millis(300));
    // Submits fail over to retries until the portfolio is back.
    for (u, spec) in &flow[20..30] {
        submit_retrying(&users[*u], spec).await;
    }
    // Checked now, before another restart could rebuild over a double settlement.
    check_flow_outcome(p, &users, &expected(30, ids, [10_000_000, 0], [0, 1_000])).await;
    // Engine, portfolio and orders all at once, while the last orders go in.
    for name in ["engine-0", "portfolio", "orders"] {
        p.kill(name).await;
    }
    for name in ["orders", "portfolio", "engine-0"] {
        p.start(name).await;
    }
    for (u, spec) in &flow[30..] {
        submit_retrying(&users[*u], spec).await;
    }
    check_flow_outcome(p, &users, &want).await;
    let quote_before = users[0].quote("ACME").await.unwrap();

    // Redis loses everything; a full restart rebuilds the same state from the streams.
    p.restart_all_with_empty_redis().await;
    check_flow_outcome(p, &users, &want).await;
    let quote_after = eventually("quote rebuilt", || async {
        users[0].quote("ACME").await.ok().filter(|q| q.trades == quote_before.trades)
    })
    .await;
    assert_eq!(
        (quote_after.last_price_cents, quote_after.volume),
        (quote_before.last_price_cents, quote_before.volume)
    );
}

pub async fn bad_input_changes_nothing_and_says_why(p: &dyn Platform) {
    let ivy = user(p, "ivy").await;
    let jack = user(p, "jack").await;
    ivy.deposit_cash(100_000, "i").await.unwrap();
    ivy.deposit_shares("ACME", 10, "i-s").await.unwrap();
    jack.deposit_shares("ACME", 10, "j-s").await.unwrap();
    let jacks = jack.submit(&OrderSpec::limit("j1", "ACME", Side::Sell, 2_000, 5)).await.unwrap();
    let before = portfolio_is(&ivy, 100_000, 0, &[("ACME", 10, 0)]).await;

    let cases: Vec<(OrderSpec, Code, &str)> = vec![
        (OrderSpec::limit("q0", "ACME", Side::Buy, 1_000, 0), Code::InvalidArgument, "qty"),
        (OrderSpec::limit("q-", "ACME", Side::Buy, 1_000, -5), Code::InvalidArgument, "qty"),
        (OrderSpec::limit("lot", "GLOBX", Side::Buy, 1_000, 5), Code::InvalidArgument, "lot"),
        (OrderSpec::limit("tick", "GLOBX", Side::Buy, 10_003, 10), Code::InvalidArgument, "tick"),
        (OrderSpec::limit("p0", "ACME", Side::Buy, 0, 1), Code::InvalidArgument, "price"),
        (OrderSpec::limit("band", "ACME", Side::Buy, 100_001, 1), Code::InvalidArgument, "band"),
        (OrderSpec::limit("sym", "NOPE", Side::Buy, 1_000, 1), Code::InvalidArgument, "unknown symbol"),
        (
            OrderSpec { price_cents: 500, ..OrderSpec::market("mp", "ACME", Side::Buy, 1) },
            Code::InvalidArgument,
            "market",
        ),
        (
            OrderSpec { side: Side::Unspecified, ..OrderSpec::limit("side", "ACME", Side::Buy, 1_000, 1) },
            Code::InvalidArgument,
            "side",
        ),
        (OrderSpec::limit("cash", "ACME", Side::Buy, 10_000, 11), Code::FailedPrecondition, "insufficient cash"),
        (OrderSpec::limit("shares", "ACME", Side::Sell, 1_000, 11), Code::FailedPrecondition, "insufficient shares"),
        (OrderSpec::market("mcash", "ACME", Side::Buy, 2), Code::FailedPrecondition, "insufficient cash"),
    ];
    for (spec, code, words) in cases {
        let err = ivy.submit(&spec).await.expect_err(&spec.client_order_id);
        assert_eq!(err.code(), code, "{}: {err}", spec.client_order_id);
        assert!(
            err.message().contains(words),
            "{}: {:?} should mention {words:?}",
            spec.client_order_id,
            err.message()
        );
    }
    assert_eq!(ivy.deposit_cash(-5, "neg").await.unwrap_err().code(), Code::InvalidArgument);

    let anonymous = Client::new(p.gateway());
    assert_eq!(anonymous.portfolio().await.unwrap_err().code(), Code::Unauthenticated);
    let submit = anonymous.submit(&OrderSpec::limit("anon", "ACME", Side::Buy, 1_000, 1)).await.unwrap_err();
    assert_eq!(submit.code(), Code::Unauthenticated);
    let claims = jwt::Claims { sub: ivy.user_id, role: Role::Trader as i32, exp: i64::MAX / 2 };
    let forged = Client { token: Some(jwt::issue("not-the-secret", &claims)), ..anonymous.clone() };
    let err = forged.submit(&OrderSpec::limit("forged", "ACME", Side::Buy, 1_000, 1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let expired =
        Client { token: Some(jwt::issue(&p.cfg().jwt_secret, &jwt::Claims { exp: 1, ..claims })), ..anonymous };
    assert_eq!(expired.portfolio().await.unwrap_err().code(), Code::Unauthenticated);

    assert_eq!(ivy.order(jacks.order_id).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(ivy.cancel(jacks.order_id).await.unwrap_err().code(), Code::NotFound);

    fafnir_platform::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ivy.portfolio().await.unwrap(), before, "nothing moved");
    assert!(ivy.orders().await.unwrap().is_empty(), "nothing booked");
    let jacks = jack.order(jacks.order_id).await.unwrap();
    assert_eq!(jacks.status, OrderStatus::Accepted as i32, "another user could not touch it");
    portfolio_is(&jack, 0, 0, &[("ACME", 10, 5)]).await;
    let fills = engine_events(p).await.iter().filter(|e| matches!(e.kind, Some(engine_event::Kind::Fill(_)))).count();
    assert_eq!(fills, 0);
}

pub async fn market_data_streams_candles_and_roles(p: &dyn Platform) {
    let maker = Client::register_and_login(p.gateway(), "maker", PASSWORD, Role::MarketMaker).await.unwrap();
    let taker = user(p, "taker").await;
    let admin = fafnir_platform::proto::gateway::RegisterRequest {
        username: "root".into(),
        password: PASSWORD.into(),
        role: Role::Admin as i32,
    };
    let refused = Client::new(p.gateway()).api.register(admin).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "nobody registers themselves as admin");
    let taken = Client::register_and_login(p.gateway(), "maker", PASSWORD, Role::Trader).await.err().unwrap();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let mut wrong = Client::new(p.gateway());
    assert_eq!(wrong.login("maker", "not the password").await.unwrap_err().code(), Code::Unauthenticated);

    maker.deposit_shares("GLOBX", 100, "m").await.unwrap();
    taker.deposit_cash(1_000_000, "t").await.unwrap();
    let mut md = taker.market_data(&["GLOBX"]).await.unwrap();
    assert_eq!(taker.market_data(&["NOPE"]).await.unwrap_err().code(), Code::InvalidArgument);

    maker.submit(&OrderSpec::limit("a", "GLOBX", Side::Sell, 2_005, 50)).await.unwrap();
    let update = fafnir_platform::time::timeout(Duration::from_secs(10), md.message())
        .await
        .expect("md in time")
        .unwrap()
        .unwrap();
    assert_eq!((update.symbol.as_str(), update.ask_cents, update.ask_qty, update.bid_qty), ("GLOBX", 2_005, 50, 0));
    taker.submit(&OrderSpec::limit("b", "GLOBX", Side::Buy, 2_010, 20)).await.unwrap();
    let update = fafnir_platform::time::timeout(Duration::from_secs(10), md.message())
        .await
        .expect("md in time")
        .unwrap()
        .unwrap();
    assert_eq!(update.trades.len(), 1);
    assert_eq!((update.trades[0].price_cents, update.trades[0].qty), (2_005, 20));
    assert_eq!((update.ask_cents, update.ask_qty), (2_005, 30));

    taker.submit(&OrderSpec::limit("c", "GLOBX", Side::Buy, 2_005, 10)).await.unwrap();
    // Both trades, in one candle, or in two adjacent ones when they straddle
    // a minute boundary (the real build's clock is the wall clock).
    let candles = eventually("candles with both trades", || async {
        taker.candles("GLOBX").await.ok().filter(|c| c.iter().map(|c| c.volume).sum::<i64>() == 30)
    })
    .await;
    assert!(candles.len() <= 2, "{candles:?}");
    for c in &candles {
        assert_eq!((c.open_cents, c.high_cents, c.low_cents, c.close_cents), (2_005, 2_005, 2_005, 2_005));
        assert_eq!(c.start_ms % 60_000, 0, "one-minute buckets");
    }
    if let [a, b] = &candles[..] {
        assert_eq!((a.volume, b.volume, b.start_ms - a.start_ms), (20, 10, 60_000), "adjacent minutes");
    }
    portfolio_is(&taker, 1_000_000 - 30 * 2_005, 0, &[("GLOBX", 30, 0)]).await;
}

/// Needs a platform whose rate limit is 1 per second with a burst of 5.
pub async fn the_rate_limit_is_per_user(p: &dyn Platform) {
    assert_eq!((p.cfg().rate_limit.per_second, p.cfg().rate_limit.burst), (1, 5));
    let busy = user(p, "busy").await;
    let calm = user(p, "calm").await;
    let mut refused = 0;
    for _ in 0..8 {
        match busy.portfolio().await {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s}");
                refused += 1;
            }
        }
    }
    assert!((2..=3).contains(&refused), "a burst of 5 at 1/s lets 5 or 6 of 8 through; refused {refused}");
    calm.portfolio().await.expect("another user has their own bucket");
}

/// The restart that bricked the portfolio: 100,000 cents, a buy of one share
/// at 60,000 cents and its cancel, twice (each reservation fits only because
/// the cancel released the one before). After the whole platform restarts,
/// the portfolio serves, shows what it showed live, and takes the next order;
/// a second restart, with that order resting, comes back too.
pub async fn a_whole_platform_restart_replays_what_the_portfolio_did(p: &dyn Platform) {
    let alice = user(p, "alice").await;
    alice.deposit_cash(100_000, "a-1").await.unwrap();
    for i in 0..2 {
        let o = alice.submit(&OrderSpec::limit(&format!("b{i}"), "ACME", Side::Buy, 60_000, 1)).await.unwrap();
        portfolio_is(&alice, 100_000, 60_000, &[]).await;
        alice.cancel(o.order_id).await.unwrap();
        order_reaches(&alice, o.order_id, OrderStatus::Canceled).await;
        portfolio_is(&alice, 100_000, 0, &[]).await;
    }
    p.restart_all().await;
    portfolio_is(&alice, 100_000, 0, &[]).await;
    let o = submit_retrying(&alice, &OrderSpec::limit("b2", "ACME", Side::Buy, 60_000, 1)).await;
    assert_eq!(o.status, OrderStatus::Accepted as i32);
    portfolio_is(&alice, 100_000, 60_000, &[]).await;
    p.restart_all().await;
    portfolio_is(&alice, 100_000, 60_000, &[]).await;
    let o = order_reaches(&alice, o.order_id, OrderStatus::Accepted).await;
    assert_eq!(o.filled_qty, 0);
}

/// Needs a platform that takes at most 4 orders in flight. 100 buys sent at
/// once by 10 users: the gateway takes what it may and refuses the rest at
/// once with RESOURCE_EXHAUSTED ("overloaded"), and a refused order is not
/// booked anywhere: each user's orders are exactly the ones answered, and
/// their reserved cash exactly theirs. The platform takes the next order.
pub async fn an_overload_is_refused_not_queued(p: &dyn Platform) {
    assert_eq!(p.cfg().max_orders_in_flight, 4);
    let mut users = Vec::new();
    for i in 0..10 {
        let c = user(p, &format!("trader{i}")).await;
        c.deposit_cash(1_000_000, "d").await.unwrap();
        users.push(c);
    }
    let sends: Vec<(&Client, OrderSpec)> = users
        .iter()
        .flat_map(|c| (0..10).map(move |i| (c, OrderSpec::limit(&format!("b{i}"), "ACME", Side::Buy, 10_000, 1))))
        .collect();
    let answers =
        futures::future::join_all(sends.iter().map(|(c, spec)| async move { (c.user_id, c.submit(spec).await) })).await;
    let mut taken: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut refused = 0;
    for (user_id, answer) in answers {
        match answer {
            Ok(o) => taken.entry(user_id).or_default().push(o.order_id),
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "user {user_id}: {s:?}");
                assert!(s.message().contains("overloaded"), "user {user_id}: {s:?}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "100 orders at once with 4 in flight: some are refused");
    assert!(refused < 100, "some of the 100 orders are taken");
    for c in &users {
        let mut want = taken.get(&c.user_id).cloned().unwrap_or_default();
        want.sort_unstable();
        let mut booked: Vec<u64> = c.orders().await.unwrap().iter().map(|o| o.order_id).collect();
        booked.sort_unstable();
        assert_eq!(booked, want, "user {}: the orders booked are the ones taken", c.user_id);
        portfolio_is(c, 1_000_000, 10_000 * want.len() as i64, &[]).await;
    }
    let o = submit_retrying(&users[0], &OrderSpec::limit("after", "ACME", Side::Buy, 10_000, 1)).await;
    assert_eq!(o.status, OrderStatus::Accepted as i32);
}

/// The portfolio records reservations in groups (one LEDGER publish round
/// for all that arrive together): ten buys of one account sent at once, of
/// which only five fit its cash, beside three other accounts' buys that all
/// fit. Exactly five of the ten are accepted (writes of one account are never
/// checked in the same group, each against the ledger without the others),
/// every other account's are, and a restart of the whole platform replays
/// the same balances.
pub async fn writes_sent_together_are_checked_one_account_at_a_time(p: &dyn Platform) {
    let alice = user(p, "alice").await;
    let others = [user(p, "bob").await, user(p, "carol").await, user(p, "dave").await];
    alice.deposit_cash(100_000, "a-1").await.unwrap();
    for (i, c) in others.iter().enumerate() {
        c.deposit_cash(100_000, &format!("o-{i}")).await.unwrap();
    }
    let mut sends: Vec<(&Client, OrderSpec)> =
        (0..10).map(|i| (&alice, OrderSpec::limit(&format!("a{i}"), "ACME", Side::Buy, 20_000, 1))).collect();
    for c in &others {
        sends.extend((0..3).map(|i| (c, OrderSpec::limit(&format!("o{i}"), "ACME", Side::Buy, 30_000, 1))));
    }
    let answers =
        futures::future::join_all(sends.iter().map(|(c, spec)| async move { (c.user_id, c.submit(spec).await) })).await;
    let mut accepted: BTreeMap<u64, usize> = BTreeMap::new();
    for (user_id, answer) in &answers {
        match answer {
            Ok(_) => *accepted.entry(*user_id).or_default() += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "user {user_id}: {s:?}");
                assert!(s.message().contains("cash"), "user {user_id}: {s:?}");
            }
        }
    }
    assert_eq!(accepted.get(&alice.user_id), Some(&5), "5 of alice's 10 buys fit her cash: {accepted:?}");
    for c in &others {
        assert_eq!(accepted.get(&c.user_id), Some(&3), "all of user {}'s buys fit: {accepted:?}", c.user_id);
    }
    portfolio_is(&alice, 100_000, 100_000, &[]).await;
    for c in &others {
        portfolio_is(c, 100_000, 90_000, &[]).await;
    }
    p.restart_all().await;
    portfolio_is(&alice, 100_000, 100_000, &[]).await;
    for c in &others {
        portfolio_is(c, 100_000, 90_000, &[]).await;
    }
}

async fn cancel_retrying(c: &Client, order_id: u64) {
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(30);
    loop {
        match c.cancel(order_id).await {
            Ok(_) => return,
            Err(s)
                if matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded) =>
            {
                assert!(fafnir_platform::time::Instant::now() < deadline, "cancel of {order_id:x} never accepted: {s}");
                fafnir_platform::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("cancel of {order_id:x} refused: {s}"),
        }
    }
}

/// Waits for the next update with a trade on `md`, at most `within`.
async fn next_trade_update(
    md: &mut tonic::Streaming<fafnir_platform::proto::gateway::MarketDataUpdate>,
    within: Duration,
) -> fafnir_platform::proto::gateway::MarketDataUpdate {
    let deadline = fafnir_platform::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(fafnir_platform::time::Instant::now());
        let update = fafnir_platform::time::timeout(left, md.message()).await.expect("market data in time");
        let update = update.expect("market data stream healthy").expect("market data stream open");
        if !update.trades.is_empty() {
            return update;
        }
    }
}

/// The broker and then Redis are killed and restarted while a buyer trades
/// with nearly all of her cash (the second 780,000-cent order fits only
/// because the cancel of a 750,000-cent one released it, across the broker
/// restart). Afterwards the portfolio is exact, the quote and candles count
/// the trade made before Redis lost its data, market data and execution
/// reports flow again within seconds (the reports on a stream opened before
/// the broker restart), and whole-platform restarts, one with Redis emptied,
/// change nothing.
pub async fn the_broker_and_redis_restart_mid_trading(p: &dyn Platform) {
    let bea = user(p, "bea").await;
    let sol = user(p, "sol").await;
    bea.deposit_cash(1_000_000, "b").await.unwrap();
    sol.deposit_shares("ACME", 50, "s").await.unwrap();
    let mut reports = bea.executions().await.unwrap();
    submit_retrying(&sol, &OrderSpec::limit("s1", "ACME", Side::Sell, 20_000, 10)).await;
    let b1 = submit_retrying(&bea, &OrderSpec::limit("b1", "ACME", Side::Buy, 20_000, 10)).await;
    order_reaches(&bea, b1.order_id, OrderStatus::Filled).await;
    let big = submit_retrying(&bea, &OrderSpec::limit("b2", "ACME", Side::Buy, 25_000, 30)).await;
    portfolio_is(&bea, 800_000, 750_000, &[("ACME", 10, 0)]).await;

    p.restart_broker().await;
    cancel_retrying(&bea, big.order_id).await;
    order_reaches(&bea, big.order_id, OrderStatus::Canceled).await;
    // The portfolio follows TRADES on its own: the release may come a moment after the status.
    portfolio_is(&bea, 800_000, 0, &[("ACME", 10, 0)]).await;
    let b3 = submit_retrying(&bea, &OrderSpec::limit("b3", "ACME", Side::Buy, 26_000, 30)).await;
    portfolio_is(&bea, 800_000, 780_000, &[("ACME", 10, 0)]).await;

    // A resting ask, so the book's top is something to lose.
    submit_retrying(&sol, &OrderSpec::limit("s9", "ACME", Side::Sell, 90_000, 5)).await;
    eventually("the ask in the quote", || async { bea.quote("ACME").await.ok().filter(|q| q.ask_cents == 90_000) })
        .await;
    p.restart_redis().await;
    // Redis came back empty; the market writes back the top of book and the
    // trade counters with no new market event for ACME.
    let quote = eventually("the quote rebuilt", || async {
        bea.quote("ACME").await.ok().filter(|q| q.ask_cents == 90_000 && q.trades == 1)
    })
    .await;
    assert_eq!((quote.ask_qty, quote.volume, quote.last_price_cents), (5, 10, 20_000), "{quote:?}");
    let mut md = eventually("a market-data stream", || async { sol.market_data(&["ACME", "GLOBX"]).await.ok() }).await;
    submit_retrying(&sol, &OrderSpec::limit("s2", "ACME", Side::Sell, 26_000, 30)).await;
    // Market data is best effort: the update of a trade made while MD was
    // being made again is lost. Trades made after it are seen within seconds.
    let pat = user(p, "pat").await;
    pat.deposit_shares("GLOBX", 1_000, "p").await.unwrap();
    pat.deposit_cash(1_000_000, "p2").await.unwrap();
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(10);
    for probe in 0.. {
        assert!(
            fafnir_platform::time::Instant::now() < deadline,
            "no market data with a trade within 10 s of the restarts"
        );
        let sell = OrderSpec::limit(&format!("ps{probe}"), "GLOBX", Side::Sell, 2_005, 10);
        let buy = OrderSpec::limit(&format!("pb{probe}"), "GLOBX", Side::Buy, 2_005, 10);
        submit_retrying(&pat, &sell).await;
        submit_retrying(&pat, &buy).await;
        let next = fafnir_platform::time::timeout(
            Duration::from_millis(500),
            next_trade_update(&mut md, Duration::from_secs(10)),
        );
        if let Ok(update) = next.await {
            let trade = (update.symbol.as_str(), update.trades[0].price_cents, update.trades[0].qty);
            assert!(trade == ("GLOBX", 2_005, 10) || trade == ("ACME", 26_000, 30), "{update:?}");
            break;
        }
    }
    // The report of that fill, on the stream opened before the broker restart.
    let deadline = fafnir_platform::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(fafnir_platform::time::Instant::now());
        let report = fafnir_platform::time::timeout(left, reports.message()).await.expect("execution report in time");
        let report = report.expect("execution stream healthy").expect("execution stream open");
        if report.order_id == b3.order_id && matches!(report.kind, Some(execution_report::Kind::Fill(_))) {
            break;
        }
    }
    order_reaches(&bea, b3.order_id, OrderStatus::Filled).await;

    // Checked as it is, after a whole-platform restart, and after another
    // with Redis emptied meanwhile (the quiet book's top must come back too).
    for round in 0..3 {
        portfolio_is(&bea, 20_000, 0, &[("ACME", 40, 0)]).await;
        portfolio_is(&sol, 980_000, 0, &[("ACME", 10, 5)]).await;
        // Two trades, one of them before Redis lost everything.
        let quote = eventually("the quote to count both trades", || async {
            bea.quote("ACME").await.ok().filter(|q| q.trades == 2)
        })
        .await;
        assert_eq!((quote.volume, quote.last_price_cents, quote.last_qty), (40, 26_000, 30), "round {round}");
        assert_eq!((quote.ask_cents, quote.ask_qty, quote.bid_qty), (90_000, 5, 0), "round {round}");
        let candles = eventually("candles with both trades", || async {
            bea.candles("ACME").await.ok().filter(|c| c.iter().map(|c| c.volume).sum::<i64>() == 40)
        })
        .await;
        assert_eq!(candles.iter().map(|c| c.high_cents).max(), Some(26_000), "{candles:?}");
        assert_eq!(candles.iter().map(|c| c.low_cents).min(), Some(20_000), "{candles:?}");
        match round {
            0 => p.restart_all().await,
            1 => p.restart_all_with_empty_redis().await,
            _ => {}
        }
    }
}

/// Two users with one password get two salts, so two hashes; both log in,
/// before and after auth restarts and rebuilds its users from USERS.
pub async fn passwords_are_salted_per_user_and_survive_an_auth_restart(p: &dyn Platform) {
    let (mut olga, mut otto) = (user(p, "olga").await, user(p, "otto").await);
    let stream = p.cfg().names().users_stream();
    let bus = p.bus();
    let msgs =
        eventually("USERS to be readable", || async { read_to_end(bus.as_ref(), &stream, "", 1).await.ok() }).await;
    let hashes: BTreeMap<String, String> = msgs
        .iter()
        .map(|m| {
            let u: fafnir_platform::proto::events::UserRegistered =
                prost::Message::decode(&m.payload[..]).expect("user registered");
            (u.username, u.password_hash)
        })
        .collect();
    let salt = |hash: &str| hash.split('$').nth(4).expect("a PHC string").to_string();
    let (a, b) = (&hashes["olga"], &hashes["otto"]);
    assert!(a.starts_with("$argon2id$") && b.starts_with("$argon2id$"), "{a} {b}");
    assert_ne!(salt(a), salt(b), "a salt per user");
    assert_ne!(a, b, "the same password, two hashes");
    assert!(!a.contains(PASSWORD) && !b.contains(PASSWORD));

    p.kill("auth").await;
    p.start("auth").await;
    for (name, c) in [("olga", &mut olga), ("otto", &mut otto)] {
        eventually(&format!("{name} to log in after the restart"), || {
            let mut fresh = Client::new(p.gateway());
            async move { fresh.login(name, PASSWORD).await.ok() }
        })
        .await;
        let wrong = c.login(name, "not the password").await.unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong}");
    }
}

/// What `account` is told of TRADES (fills and closes), as the gateway
/// derives it: (cursor, order id, "fill" or "closed"), in stream order.
pub async fn reports_in_trades(p: &dyn Platform, account: u64) -> Vec<(u64, u64, &'static str)> {
    let stream = p.cfg().names().trades_stream();
    let bus = p.bus();
    let msgs =
        eventually("TRADES to be readable", || async { read_to_end(bus.as_ref(), &stream, "", 1).await.ok() }).await;
    let mut out = Vec::new();
    for m in msgs {
        let e: EngineEvent = prost::Message::decode(&m.payload[..]).expect("engine event");
        match e.kind {
            Some(engine_event::Kind::Fill(f)) => {
                for (a, order) in [(f.maker_account, f.maker_order), (f.taker_account, f.taker_order)] {
                    if a == account {
                        out.push((m.seq, order, "fill"));
                    }
                }
            }
            Some(engine_event::Kind::Closed(c)) if c.account == account => out.push((m.seq, c.order_id, "closed")),
            _ => {}
        }
    }
    out
}

/// The fill and close reports a stream delivers, until `n` have come.
async fn next_reports(
    stream: &mut tonic::Streaming<fafnir_platform::proto::gateway::ExecutionReport>,
    n: usize,
) -> Vec<(u64, u64, &'static str)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = fafnir_platform::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a report in time")
            .expect("the stream stays open")
            .expect("the stream stays open");
        match r.kind {
            Some(execution_report::Kind::Fill(_)) => out.push((r.cursor, r.order_id, "fill")),
            Some(execution_report::Kind::Closed(_)) => out.push((r.cursor, r.order_id, "closed")),
            _ => {}
        }
    }
    out
}

/// A client whose stream broke resumes, after the gateway restarted, with
/// its last cursor: it is sent exactly what it missed, in order, once, though
/// the reports predate the new gateway (which reads its window back at start).
pub async fn a_resumed_stream_gets_what_it_missed_across_a_gateway_restart(p: &dyn Platform) {
    let (kim, lee) = (user(p, "kim").await, user(p, "lee").await);
    kim.deposit_cash(1_000_000, "k").await.unwrap();
    lee.deposit_shares("ACME", 100, "l").await.unwrap();
    let mut live = kim.executions().await.unwrap();
    lee.submit(&OrderSpec::limit("s1", "ACME", Side::Sell, 1_000, 10)).await.unwrap();
    let b1 = kim.submit(&OrderSpec::limit("b1", "ACME", Side::Buy, 1_000, 10)).await.unwrap();
    let first = next_reports(&mut live, 1).await;
    assert_eq!((first[0].1, first[0].2), (b1.order_id, "fill"));
    let cursor = first[0].0;
    drop(live);

    // Kim is away: two more trades, one with a remainder canceled.
    lee.submit(&OrderSpec::limit("s2", "ACME", Side::Sell, 1_000, 5)).await.unwrap();
    let b2 = kim.submit(&OrderSpec::limit("b2", "ACME", Side::Buy, 1_000, 5)).await.unwrap();
    lee.submit(&OrderSpec::limit("s3", "ACME", Side::Sell, 1_010, 5)).await.unwrap();
    let b3 = kim.submit(&OrderSpec::limit("b3", "ACME", Side::Buy, 1_010, 8).with_type(OrderType::Ioc)).await.unwrap();
    order_reaches(&kim, b2.order_id, OrderStatus::Filled).await;
    order_reaches(&kim, b3.order_id, OrderStatus::Canceled).await;
    wait_engine_caught_up(p).await;
    let missed: Vec<_> = reports_in_trades(p, kim.user_id).await.into_iter().filter(|r| r.0 > cursor).collect();
    let orders: Vec<_> = missed.iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(orders, [(b2.order_id, "fill"), (b3.order_id, "fill"), (b3.order_id, "closed")]);

    p.kill("gateway").await;
    p.start("gateway").await;
    let mut resumed = eventually("the gateway back", || async { kim.executions_after(cursor).await.ok() }).await;
    assert_eq!(next_reports(&mut resumed, missed.len()).await, missed, "exactly what was missed, in order");
    // Nothing more: a trade of lee's alone is not kim's, and comes after.
    let other = user(p, "other").await;
    other.deposit_cash(100_000, "o").await.unwrap();
    lee.submit(&OrderSpec::limit("s4", "ACME", Side::Sell, 1_000, 1)).await.unwrap();
    other.submit(&OrderSpec::limit("o1", "ACME", Side::Buy, 1_000, 1)).await.unwrap();
    let b5 = kim.submit(&OrderSpec::limit("b5", "ACME", Side::Buy, 900, 1)).await.unwrap();
    kim.cancel(b5.order_id).await.unwrap();
    let next = next_reports(&mut resumed, 1).await;
    assert_eq!((next[0].1, next[0].2), (b5.order_id, "closed"), "no report twice, none of another's");
}

/// Needs a platform whose execution window holds 4 reports: a cursor older
/// than the window is refused with a status that says what to do, and one
/// inside it still gets exactly what follows.
pub async fn a_cursor_older_than_the_window_is_refused(p: &dyn Platform) {
    assert_eq!(p.cfg().execution_window, 4);
    let (mia, ned) = (user(p, "mia").await, user(p, "ned").await);
    mia.deposit_cash(1_000_000, "m").await.unwrap();
    ned.deposit_shares("ACME", 100, "n").await.unwrap();
    for i in 0..4 {
        ned.submit(&OrderSpec::limit(&format!("s{i}"), "ACME", Side::Sell, 1_000, 1)).await.unwrap();
        let b = mia.submit(&OrderSpec::limit(&format!("b{i}"), "ACME", Side::Buy, 1_000, 1)).await.unwrap();
        order_reaches(&mia, b.order_id, OrderStatus::Filled).await;
    }
    wait_engine_caught_up(p).await;
    let (mias, neds) = (reports_in_trades(p, mia.user_id).await, reports_in_trades(p, ned.user_id).await);
    assert_eq!((mias.len(), neds.len()), (4, 4), "one fill report each per trade");
    // The window holds the last 4 of the 8 reports: those of the last two trades.
    // A resume after the second trade needs only those: served. One after the
    // first needs the second's too, which left the window: refused.
    let mut resumed = mia.executions_after(mias[1].0).await.unwrap();
    assert_eq!(next_reports(&mut resumed, 2).await, mias[2..].to_vec());
    let err = mia.executions_after(mias[0].0).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("ListOrders") && err.message().contains("without after_cursor"), "{err}");
    let fresh = mia.executions().await.unwrap().message().await.unwrap().unwrap();
    assert!(fresh.cursor >= mias[3].0, "no after_cursor always opens, from now");
    assert_eq!(mia.orders().await.unwrap().len(), 4, "what a refused client reads instead");
}
