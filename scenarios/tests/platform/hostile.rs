//! Hostile input, driven through every public RPC with extreme and random
//! field values (i64 and u64 extremes, zero, negatives, huge and unicode
//! strings, enum numbers that name nothing): no service panics, every
//! refusal is a clear status with a short message, a refused request changes
//! nothing, and nothing a request left behind keeps the platform from
//! restarting (no poison message in a stream).

use fafnir_platform::proto::common::{OrderStatus, PortfolioView};
use fafnir_platform::proto::gateway::*;
use fafnir_platform::rng::SplitMix64;
use fafnir_scenarios::client::Client;
use tonic::{Code, Request, Status};

use crate::flows::{eventually, user};
use crate::Platform;

/// Codes a refusal of bad input may carry: each says what is wrong with the
/// request. Unavailable, Unknown, Internal and their kind would mean a
/// handler failed (a panic shows as a reset stream: Unknown or Unavailable).
const REFUSALS: [Code; 8] = [
    Code::InvalidArgument,
    Code::FailedPrecondition,
    Code::NotFound,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::AlreadyExists,
    Code::ResourceExhausted,
    Code::OutOfRange,
];

fn i64_value(rng: &mut SplitMix64) -> i64 {
    const EXTREMES: [i64; 14] = [
        i64::MIN,
        i64::MIN + 1,
        -1_000_000_000_000,
        -1,
        0,
        1,
        7,
        1_000_000,
        1_000_000_000_000_000,
        1_000_000_000_000_001,
        i64::MAX / 2,
        i64::MAX / 3,
        i64::MAX - 1,
        i64::MAX,
    ];
    match rng.range(0, 3) {
        0 => rng.next_u64() as i64,
        _ => EXTREMES[rng.range(0, EXTREMES.len() as u64 - 1) as usize],
    }
}

fn u64_value(rng: &mut SplitMix64) -> u64 {
    [0, 1, 2, u64::MAX, u64::MAX - 1, 1 << 63, rng.next_u64()][rng.range(0, 6) as usize]
}

fn enum_value(rng: &mut SplitMix64) -> i32 {
    [i32::MIN, -1, 0, 1, 2, 3, 4, 5, 99, i32::MAX][rng.range(0, 9) as usize]
}

fn text(rng: &mut SplitMix64) -> String {
    match rng.range(0, 11) {
        0 => String::new(),
        1 => "ACME".into(),
        2 => "acme".into(),
        3 => "ACME\0".into(),
        4 => "Ä".repeat(rng.range(1, 5_000) as usize),
        5 => "X".repeat(100_000),
        6 => "🦀".repeat(rng.range(1, 300) as usize),
        7 => "ACME.>".into(),
        8 => "*".into(),
        9 => " GLOBX ".into(),
        10 => "../../etc/passwd".into(),
        _ => format!("c{}", rng.next_u64()),
    }
}

/// What the fuzzing user can observe of their own state.
#[derive(Debug, PartialEq)]
struct Snapshot {
    portfolio: PortfolioView,
    orders: Vec<(u64, i32, i64, i64)>,
}

async fn snapshot(c: &Client) -> Snapshot {
    let portfolio = eventually("the portfolio", || async { c.portfolio().await.ok() }).await;
    let orders = eventually("the order list", || async { c.orders().await.ok() }).await;
    let mut orders: Vec<_> = orders.iter().map(|o| (o.order_id, o.status, o.qty, o.filled_qty)).collect();
    orders.sort_unstable();
    Snapshot { portfolio, orders }
}

fn authed<T>(c: &Client, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    let token = c.token.as_ref().expect("logged in");
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("ascii token"));
    r
}

/// One random request to one of the gateway's RPCs; the name of the RPC and
/// its outcome (a stream that opened counts as Ok; an accepted order gives its id).
async fn hostile_call(c: &Client, rng: &mut SplitMix64) -> (&'static str, Result<Option<u64>, Status>) {
    let api = &mut c.api.clone();
    match rng.range(0, 12) {
        0 => {
            let m =
                DepositRequest { cents: i64_value(rng), request_id: text(rng), symbol: text(rng), qty: i64_value(rng) };
            ("Deposit", api.deposit(authed(c, m)).await.map(|_| None))
        }
        1 | 2 => {
            let m = SubmitOrderRequest {
                client_order_id: text(rng),
                symbol: if rng.range(0, 1) == 0 { "ACME".into() } else { text(rng) },
                side: enum_value(rng),
                order_type: enum_value(rng),
                price_cents: i64_value(rng),
                qty: i64_value(rng),
            };
            ("SubmitOrder", api.submit_order(authed(c, m)).await.map(|o| Some(o.into_inner().order_id)))
        }
        3 => (
            "CancelOrder",
            api.cancel_order(authed(c, CancelOrderRequest { order_id: u64_value(rng) })).await.map(|_| None),
        ),
        4 => ("GetOrder", api.get_order(authed(c, GetOrderRequest { order_id: u64_value(rng) })).await.map(|_| None)),
        5 => ("GetQuote", api.get_quote(authed(c, GetQuoteRequest { symbol: text(rng) })).await.map(|_| None)),
        6 => {
            let m = GetCandlesRequest { symbol: text(rng), limit: rng.next_u64() as u32 };
            ("GetCandles", api.get_candles(authed(c, m)).await.map(|_| None))
        }
        7 => {
            let m = StreamExecutionsRequest { after_cursor: Some(u64_value(rng)) };
            ("StreamExecutions", api.stream_executions(authed(c, m)).await.map(|_| None))
        }
        8 => {
            let n = [0, 1, 3, 10_000][rng.range(0, 3) as usize];
            let m = StreamMarketDataRequest { symbols: (0..n).map(|_| text(rng)).collect() };
            ("StreamMarketData", api.stream_market_data(authed(c, m)).await.map(|_| None))
        }
        9 => {
            let m = RegisterRequest { username: text(rng), password: text(rng), role: enum_value(rng) };
            ("Register", api.register(m).await.map(|_| None))
        }
        10 => {
            let m = LoginRequest { username: text(rng), password: text(rng) };
            ("Login", api.login(m).await.map(|_| None))
        }
        _ => {
            // No token at all, or one that is not a token.
            let mut r = Request::new(GetPortfolioRequest {});
            if rng.range(0, 1) == 0 {
                let forged = format!("Bearer {}", text(rng).chars().filter(char::is_ascii_graphic).collect::<String>());
                if let Ok(v) = forged.parse() {
                    r.metadata_mut().insert("authorization", v);
                }
            }
            ("GetPortfolio", api.get_portfolio(r).await.map(|_| None))
        }
    }
}

/// Every public RPC with extreme and random values; see the module docs.
pub async fn hostile_requests_are_refused_without_effect(p: &dyn Platform) {
    let victim = user(p, "victim").await;
    victim.deposit_cash(500_000, "v1").await.unwrap();
    victim.deposit_shares("ACME", 40, "v2").await.unwrap();
    // The deposits that used to overflow, and be stored before anything refused them.
    let big = victim.deposit_cash(i64::MAX, "huge-1").await.expect_err("beyond the account limit");
    assert_eq!(big.code(), Code::FailedPrecondition, "{big}");
    let near = fafnir_platform::domain::MAX_ACCOUNT_CASH_CENTS - 500_000;
    victim.deposit_cash(near, "near").await.expect("up to the limit");
    let over = victim.deposit_cash(1, "one-more").await.expect_err("one cent beyond the limit");
    assert_eq!(over.code(), Code::FailedPrecondition, "{over}");
    let mut rng = SplitMix64::new(0x5eed_f00d);
    let mut before = snapshot(&victim).await;
    let mut refused = std::collections::BTreeMap::<&str, u32>::new();
    for i in 0..300 {
        let (rpc, outcome) = hostile_call(&victim, &mut rng).await;
        match outcome {
            Ok(accepted) => {
                if let Some(id) = accepted {
                    // An order that passed: off the book again, so nothing trades behind the checks.
                    let _ = victim.cancel(id).await;
                    eventually("the accepted order to end", || async {
                        let o = victim.order(id).await.ok()?;
                        let done = [OrderStatus::Filled, OrderStatus::Canceled, OrderStatus::Rejected];
                        done.iter().any(|s| *s as i32 == o.status).then_some(())
                    })
                    .await;
                }
                before = snapshot(&victim).await;
            }
            Err(s) => {
                assert!(REFUSALS.contains(&s.code()), "request {i} ({rpc}) failed instead of being refused: {s:?}");
                assert!(
                    !s.message().is_empty() && s.message().len() <= 1_000,
                    "request {i} ({rpc}): {:?}",
                    s.message()
                );
                *refused.entry(rpc).or_default() += 1;
                let after = snapshot(&victim).await;
                assert_eq!(after, before, "request {i} ({rpc}) was refused ({s:?}) but changed the user's state");
            }
        }
    }
    assert!(refused.len() >= 10, "every kind of request met a refusal: {refused:?}");
    // No poison message: the whole platform restarts and shows the same state.
    p.restart_all().await;
    let restarted = snapshot(&victim).await;
    assert_eq!(restarted.portfolio, before.portfolio);
    assert_eq!(restarted.orders.len(), before.orders.len());
    // And it still trades: the victim's shares sell to a fresh buyer.
    let buyer = user(p, "buyer").await;
    buyer.deposit_cash(1_000_000, "b").await.unwrap();
    let spec = |coid: &str, side| fafnir_scenarios::client::OrderSpec::limit(coid, "ACME", side, 1_000, 5);
    use fafnir_platform::proto::common::Side;
    let sell = crate::flows::submit_retrying(&victim, &spec("sell", Side::Sell)).await;
    crate::flows::submit_retrying(&buyer, &spec("buy", Side::Buy)).await;
    eventually("the sale", || async {
        victim.order(sell.order_id).await.ok().filter(|o| o.status == OrderStatus::Filled as i32)
    })
    .await;
}
