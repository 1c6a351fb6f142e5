//! Replay equals live: the portfolio rebuilt from its streams is exactly the
//! portfolio that wrote them.
//!
//! A random session drives the portfolio's state the way the live service
//! does (deposits, reservations near the whole buying power, releases of
//! abandoned orders, and the TRADES events the real matching engine makes of
//! the accepted orders and their cancels, applied at random moments, with
//! redeliveries), recording LEDGER and TRADES as the broker would store
//! them. Replaying those streams must give the live state, whether the replay
//! stops where the live service was or both go on to the end of TRADES.

use fafnir_platform::bus::StoredMsg;
use fafnir_platform::domain::{AccountId, Cents, Instrument, OrderId, PriceTicks, Shares, Side};
use fafnir_platform::proto::common;
use fafnir_platform::proto::events::{self, ledger_event, order_event, EngineEvent, LedgerEvent, OrderEvent};
use fafnir_platform::services::engine::Matcher;
use fafnir_platform::services::portfolio::{replay, Fold, Ledger, ReplayOptions, Reservation};
use proptest::prelude::*;
use prost::Message;

const LEDGER: &str = "T_LEDGER";
const TRADES: &str = "T_TRADES";
const ACCOUNTS: u64 = 3;

fn instruments() -> Vec<Instrument> {
    vec![Instrument::new("ACME", 1, 1, 1, 1_000)]
}

#[derive(Clone, Debug)]
enum Step {
    Deposit {
        account: u64,
        cents: i64,
    },
    DepositShares {
        account: u64,
        qty: i64,
    },
    /// A submit: reserve, then (unless abandoned) accept into the engine.
    Submit {
        account: u64,
        buy: bool,
        market: bool,
        price: i64,
        qty: i64,
        abandon: bool,
    },
    /// Cancel the n-th order accepted so far (modulo their number).
    Cancel {
        nth: usize,
    },
    /// The reconciler gives up the n-th abandoned order: its reservation is released.
    Release {
        nth: usize,
    },
    /// The portfolio applies the next `n` TRADES events.
    Consume {
        n: usize,
    },
    /// The broker redelivers an event applied already.
    Redeliver {
        back: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (1..=ACCOUNTS, 1..20_000i64).prop_map(|(account, cents)| Step::Deposit { account, cents }),
        1 => (1..=ACCOUNTS, 1..50i64).prop_map(|(account, qty)| Step::DepositShares { account, qty }),
        6 => (1..=ACCOUNTS, any::<bool>(), prop::bool::weighted(0.15), 90..=110i64, 1..60i64, prop::bool::weighted(0.1))
            .prop_map(|(account, buy, market, price, qty, abandon)| Step::Submit { account, buy, market, price, qty, abandon }),
        2 => (0..64usize).prop_map(|nth| Step::Cancel { nth }),
        1 => (0..64usize).prop_map(|nth| Step::Release { nth }),
        4 => (1..8usize).prop_map(|n| Step::Consume { n }),
        1 => (0..5u64).prop_map(|back| Step::Redeliver { back }),
    ]
}

/// The platform around one live portfolio: what it has stored in its streams.
struct Session {
    live: Fold,
    ledger: Vec<StoredMsg>,
    trades: Vec<StoredMsg>,
    matcher: Matcher,
    orders_seq: u64,
    next_order: u64,
    accepted: Vec<u64>,
    abandoned: Vec<u64>,
}

impl Session {
    fn new() -> Session {
        Session {
            live: Fold::new(Ledger::new(&instruments())),
            ledger: Vec::new(),
            trades: Vec::new(),
            matcher: Matcher::new("ACME"),
            orders_seq: 0,
            next_order: 1,
            accepted: Vec::new(),
            abandoned: Vec::new(),
        }
    }

    /// What the service's `record` does: stamp, store, apply.
    fn record(&mut self, kind: ledger_event::Kind) {
        let event = self.live.stamp(kind);
        let seq = self.ledger.len() as u64 + 1;
        self.ledger.push(StoredMsg {
            subject: "l".into(),
            seq,
            payload: event.encode_to_vec().into(),
            trace_parent: None,
        });
        self.live.apply_ledger(&event).expect("a checked request applies live");
    }

    fn engine(&mut self, input: order_event::Kind) {
        self.orders_seq += 1;
        let outputs = self.matcher.apply(self.orders_seq, &OrderEvent { kind: Some(input) });
        for e in outputs.events {
            let seq = self.trades.len() as u64 + 1;
            self.trades.push(StoredMsg {
                subject: "t".into(),
                seq,
                payload: e.encode_to_vec().into(),
                trace_parent: None,
            });
        }
    }

    fn apply_trade(&mut self, seq: u64) {
        let m = &self.trades[seq as usize - 1];
        let event = EngineEvent::decode(&m.payload[..]).expect("decodes");
        self.live.apply_trade(seq, &event).expect("an engine event applies live");
    }

    fn run(&mut self, step: &Step) {
        let ledger = self.live.ledger();
        match *step {
            Step::Deposit { account, cents } => {
                if ledger.check_deposit(AccountId(account), Cents(cents)).is_ok() {
                    let request_id = format!("{account}/d{}", self.ledger.len());
                    let d = events::Deposited { account, cents, request_id, symbol: String::new(), qty: 0 };
                    self.record(ledger_event::Kind::Deposited(d));
                }
            }
            Step::DepositShares { account, qty } => {
                let request_id = format!("{account}/s{}", self.ledger.len());
                let d = events::Deposited { account, cents: 0, request_id, symbol: "ACME".into(), qty };
                self.record(ledger_event::Kind::Deposited(d));
            }
            Step::Submit { account, buy, market, price, qty, abandon } => {
                let side = if buy { Side::Buy } else { Side::Sell };
                let reserve_ticks = if market { 1_000 } else { price };
                let r = Reservation {
                    account: AccountId(account),
                    symbol: "ACME".into(),
                    side,
                    qty: Shares(qty),
                    price: PriceTicks(reserve_ticks),
                };
                let order = self.next_order;
                self.next_order += 1;
                if ledger.check_reserve(OrderId(order), &r) != Ok(false) {
                    return; // refused: nothing recorded
                }
                let proto_side = if buy { common::Side::Buy } else { common::Side::Sell } as i32;
                self.record(ledger_event::Kind::Reserved(events::Reserved {
                    order_id: order,
                    account,
                    symbol: "ACME".into(),
                    side: proto_side,
                    qty,
                    price_ticks: reserve_ticks,
                }));
                if abandon {
                    self.abandoned.push(order);
                    return;
                }
                let order_type = if market { common::OrderType::Market } else { common::OrderType::Limit } as i32;
                self.accepted.push(order);
                self.engine(order_event::Kind::Accepted(events::OrderAccepted {
                    order_id: order,
                    user_id: account,
                    client_order_id: format!("c{order}"),
                    symbol: "ACME".into(),
                    side: proto_side,
                    order_type,
                    limit_ticks: if market { 0 } else { price },
                    qty,
                    reserve_price_ticks: reserve_ticks,
                    accepted_ms: 0,
                }));
            }
            Step::Cancel { nth } => {
                if let Some(&order) = self.accepted.get(nth % self.accepted.len().max(1)) {
                    let user_id = 0;
                    let c =
                        events::CancelRequested { order_id: order, user_id, symbol: "ACME".into(), requested_ms: 0 };
                    self.engine(order_event::Kind::Cancel(c));
                }
            }
            Step::Release { nth } => {
                if !self.abandoned.is_empty() {
                    let order = self.abandoned.remove(nth % self.abandoned.len());
                    self.record(ledger_event::Kind::Released(events::Released { order_id: order }));
                }
            }
            Step::Consume { n } => {
                let from = self.live.trades_applied() + 1;
                let to = (from + n as u64).min(self.trades.len() as u64 + 1);
                for seq in from..to {
                    self.apply_trade(seq);
                }
            }
            Step::Redeliver { back } => {
                let applied = self.live.trades_applied();
                if applied > back {
                    let before = self.live.clone();
                    self.apply_trade(applied - back);
                    assert_eq!(self.live, before, "a redelivery changes nothing");
                }
            }
        }
    }

    fn replayed(&self, trades_through: u64) -> Fold {
        let trades: Vec<StoredMsg> = self.trades.iter().filter(|m| m.seq <= trades_through).cloned().collect();
        let fresh = Fold::new(Ledger::new(&instruments()));
        replay(fresh, (LEDGER, &self.ledger), (TRADES, &trades), ReplayOptions::default())
            .unwrap_or_else(|e| panic!("replay failed: {e}"))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn replay_equals_live(steps in prop::collection::vec(step(), 1..120)) {
        let mut s = Session::new();
        for step in &steps {
            s.run(step);
        }
        // Where the live service is now (TRADES stored beyond it not yet applied).
        let applied = s.live.trades_applied();
        prop_assert_eq!(&s.replayed(applied), &s.live);
        // And once it has applied everything.
        s.run(&Step::Consume { n: usize::MAX / 2 });
        prop_assert_eq!(&s.replayed(u64::MAX), &s.live);
    }
}

/// The case that bricked the portfolio on restart: 1,000,000 cents, buy 1 at
/// 600,000 and cancel, twice. Each reservation fits only because the
/// cancel before it released the last one.
#[test]
fn a_cancel_between_two_large_reservations_replays() {
    let mut s = Session::new();
    s.matcher = Matcher::new("ACME");
    let inst = vec![Instrument::new("ACME", 1, 1, 1, 1_000_000)];
    s.live = Fold::new(Ledger::new(&inst));
    s.run(&Step::Deposit { account: 1, cents: 1_000_000 });
    for nth in 0..2 {
        s.run(&Step::Submit { account: 1, buy: true, market: false, price: 600_000, qty: 1, abandon: false });
        s.run(&Step::Cancel { nth });
        s.run(&Step::Consume { n: 10 });
    }
    assert_eq!(s.live.ledger().account(AccountId(1)).reserved_cash, Cents(0));
    assert_eq!(s.ledger.len(), 3, "a deposit and two reservations");
    let fresh = Fold::new(Ledger::new(&inst));
    let replayed = replay(fresh, (LEDGER, &s.ledger), (TRADES, &s.trades), ReplayOptions::default()).expect("replays");
    assert_eq!(replayed, s.live);
    // Without the stamps (as the old portfolio recorded them), the replay
    // meets the over-reservation: it says where and why instead of panicking.
    let unstamped: Vec<StoredMsg> = s
        .ledger
        .iter()
        .map(|m| {
            let mut e = LedgerEvent::decode(&m.payload[..]).expect("decodes");
            e.trades_applied = 0;
            StoredMsg { payload: e.encode_to_vec().into(), ..m.clone() }
        })
        .collect();
    let fresh = Fold::new(Ledger::new(&inst));
    let err = replay(fresh, (LEDGER, &unstamped), (TRADES, &s.trades), ReplayOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("T_LEDGER#3") && text.contains("reserved_cash 1200000"), "{text}");
}
