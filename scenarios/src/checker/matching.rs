//! Checks 1 and 2: the engine's fills against the reference book, and the
//! limits every fill must respect whatever book produced it.

use std::collections::{BTreeMap, BTreeSet};

use fafnir_platform::domain::{OrderType, Side};
use fafnir_platform::proto::events::{engine_event, EngineEvent};

use super::facts::{close_reason_of, side_of, Accepted, Facts, Input, Stored};
use super::reference::{Outcome, RefFill, ReferenceBook, Top};
use super::{CheckResult, Tally};

/// One expected engine event: the ORDERS input it answers, its index among that
/// input's events, and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Expected {
    pub input_seq: u64,
    pub index: u32,
    pub outcome: Outcome,
}

/// The reference books after every symbol's inputs, and what they produced.
pub(crate) struct ReferenceRun<'a> {
    pub expected: BTreeMap<&'a str, Vec<Expected>>,
    pub books: BTreeMap<&'a str, ReferenceBook>,
    /// Each symbol's top of book after each of its inputs, in input order: (input_seq, top).
    pub tops: BTreeMap<&'a str, Vec<(u64, Top)>>,
}

impl ReferenceRun<'_> {
    /// The reference's resting order `id` of `symbol`: (side, limit, remaining).
    pub fn resting(&self, symbol: &str, id: u64) -> Option<(Side, i64, i64)> {
        self.books.get(symbol).and_then(|b| b.resting(id))
    }

    /// The reference's top of book of `symbol` right after its input
    /// `input_seq` (0: before any input, an empty book); None when
    /// `input_seq` is not one of the symbol's inputs.
    pub fn top_after(&self, symbol: &str, input_seq: u64) -> Option<Top> {
        if input_seq == 0 {
            return Some(Top::default());
        }
        let tops = self.tops.get(symbol)?;
        let at = tops.binary_search_by_key(&input_seq, |(seq, _)| *seq).ok()?;
        Some(tops[at].1)
    }

    /// The reference's final top of book of `symbol` (empty when it had no input).
    pub fn final_top(&self, symbol: &str) -> Top {
        self.books.get(symbol).map_or_else(Top::default, ReferenceBook::top)
    }
}

/// Feeds each symbol's inputs, in ORDERS order, to a fresh reference book.
pub(crate) fn run_reference<'a>(facts: &Facts<'a>) -> ReferenceRun<'a> {
    let mut run = ReferenceRun { expected: BTreeMap::new(), books: BTreeMap::new(), tops: BTreeMap::new() };
    for (&symbol, inputs) in &facts.inputs {
        let mut book = ReferenceBook::new();
        let mut expected = Vec::new();
        let mut tops = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (input_seq, outcomes) = match input {
                Input::Accept(a) => (a.seq, book.submit(&a.order)),
                Input::Cancel { seq, order } => (*seq, vec![book.cancel(*order)]),
                Input::Abandon { seq, order } => (*seq, vec![book.abandon(*order)]),
            };
            for (index, outcome) in (0u32..).zip(outcomes) {
                expected.push(Expected { input_seq, index, outcome });
            }
            tops.push((input_seq, book.top()));
        }
        run.expected.insert(symbol, expected);
        run.books.insert(symbol, book);
        run.tops.insert(symbol, tops);
    }
    run
}

/// Check 1: the engine's TRADES events of each symbol are exactly the reference's.
pub(crate) fn fills_match_reference(facts: &Facts, reference: &ReferenceRun) -> CheckResult {
    let mut tally = Tally::new("fills_match_reference");
    for line in facts.malformed_orders.iter().chain(&facts.malformed_trades) {
        tally.flag(|| line.clone());
    }
    let symbols: BTreeSet<&str> = reference.expected.keys().chain(facts.engine.keys()).copied().collect();
    for symbol in symbols {
        let expected = reference.expected.get(symbol).map_or(&[][..], |v| v);
        let actual = facts.engine.get(symbol).map_or(&[][..], |v| v);
        compare_symbol(symbol, expected, actual, &mut tally);
    }
    tally.finish()
}

/// Compares one symbol's events in order and reports the first divergence only
/// (everything after it would differ as a consequence).
fn compare_symbol(symbol: &str, expected: &[Expected], actual: &[Stored], tally: &mut Tally) {
    let Some(actual) = without_republished(symbol, actual, tally) else { return };
    for i in 0..expected.len().max(actual.len()) {
        let (exp, act) = (expected.get(i), actual.get(i));
        let engine = act.map(|s| (s, outcome_of(s.event)));
        let same = match (exp, &engine) {
            (Some(x), Some((s, Ok(o)))) => {
                x.input_seq == s.event.input_seq && x.index == s.event.index && x.outcome == *o
            }
            _ => false,
        };
        if same {
            continue;
        }
        let want =
            exp.map_or("no more events".to_string(), |x| format!("[ORDERS#{}.{}] {}", x.input_seq, x.index, x.outcome));
        let got = match engine {
            None => "no more events".to_string(),
            Some((s, o)) => {
                let what = o.map_or_else(|why| format!("malformed: {why}"), |o| o.to_string());
                format!("TRADES#{} [ORDERS#{}.{}] {what}", s.trades_seq, s.event.input_seq, s.event.index)
            }
        };
        tally.flag(|| format!("{symbol}: first divergence at its event #{i}: expected {want}; engine has {got}"));
        return;
    }
}

/// The symbol's events without exact re-publications of an (input, index)
/// already seen (whether a repeated fill was settled twice is check 5's
/// business); None, after flagging, when a repeat differs from the original.
fn without_republished<'e>(symbol: &str, actual: &[Stored<'e>], tally: &mut Tally) -> Option<Vec<Stored<'e>>> {
    let mut seen: BTreeMap<(u64, u32), Stored> = BTreeMap::new();
    let mut kept = Vec::with_capacity(actual.len());
    for s in actual {
        let key = (s.event.input_seq, s.event.index);
        match seen.get(&key) {
            Some(first) if first.event == s.event => {}
            Some(first) => {
                let (a, b) = (first.trades_seq, s.trades_seq);
                tally.flag(|| {
                    format!(
                        "{symbol}: engine events TRADES#{a} and TRADES#{b} both answer ORDERS#{}.{} but differ",
                        key.0, key.1
                    )
                });
                return None;
            }
            None => {
                seen.insert(key, *s);
                kept.push(*s);
            }
        }
    }
    Some(kept)
}

/// An engine event in the reference's terms.
fn outcome_of(e: &EngineEvent) -> Result<Outcome, String> {
    match &e.kind {
        Some(engine_event::Kind::Fill(f)) => Ok(Outcome::Fill(RefFill {
            match_seq: f.match_seq,
            price_ticks: f.price_ticks,
            qty: f.qty,
            maker_order: f.maker_order,
            maker_account: f.maker_account,
            taker_order: f.taker_order,
            taker_account: f.taker_account,
            taker_side: side_of(f.taker_side).ok_or_else(|| format!("fill with taker side {}", f.taker_side))?,
            maker_remaining: f.maker_remaining,
            taker_remaining: f.taker_remaining,
        })),
        Some(engine_event::Kind::Rested(r)) => Ok(Outcome::Rested { order: r.order_id, remaining: r.remaining }),
        Some(engine_event::Kind::Closed(c)) => Ok(Outcome::Closed {
            order: c.order_id,
            account: c.account,
            remaining: c.remaining,
            reason: close_reason_of(c.reason).ok_or_else(|| format!("close with reason {}", c.reason))?,
        }),
        Some(engine_event::Kind::Ignored(i)) => Ok(Outcome::Ignored { order: i.order_id }),
        None => Err("empty event".into()),
    }
}

/// Check 2, independent of any book: every fill is positive, at the maker's
/// limit, within the taker's limit, between the orders it names (accepted, on
/// its symbol, on the sides and accounts it says, the maker first), and no
/// order is filled beyond its quantity (remainders say what is left).
pub(crate) fn no_trade_through_or_overfill(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("no_trade_through_or_overfill");
    let mut filled: BTreeMap<u64, i64> = BTreeMap::new();
    for fill in &facts.fills {
        let f = fill.f;
        let at = format!("{} match_seq {} (TRADES#{})", fill.symbol, f.match_seq, fill.trades_seq);
        if f.qty <= 0 || f.price_ticks <= 0 {
            tally.flag(|| format!("{at}: fill of {} shares at {} ticks", f.qty, f.price_ticks));
            continue;
        }
        let maker = facts.accepted.get(&f.maker_order);
        let taker = facts.accepted.get(&f.taker_order);
        let (Some(maker), Some(taker)) = (maker, taker) else {
            let (m, t) = (f.maker_order, f.taker_order);
            let (known_m, known_t) = (maker.is_some(), taker.is_some());
            tally.flag(|| format!("{at}: maker {m:x} accepted: {known_m}, taker {t:x} accepted: {known_t}"));
            continue;
        };
        for (role, order, account, remaining) in
            [("maker", maker, f.maker_account, f.maker_remaining), ("taker", taker, f.taker_account, f.taker_remaining)]
        {
            let sum = filled.entry(order.id()).or_default();
            *sum = sum.saturating_add(f.qty);
            check_party(&mut tally, &at, role, order, fill.symbol, account, *sum, remaining);
        }
        check_prices(&mut tally, &at, fill.taker_side, maker, taker, f.price_ticks);
        if maker.seq >= taker.seq || fill.input_seq != taker.seq {
            let (m, t) = (maker.seq, taker.seq);
            let input = fill.input_seq;
            tally.flag(|| {
                format!("{at}: maker accepted at ORDERS#{m}, taker at ORDERS#{t}, fill answers ORDERS#{input}")
            });
        }
    }
    tally.finish()
}

/// One side of a fill: the order's symbol and account, no overfill, and the
/// remainder the fill reports equals the order's quantity less its fills so far.
#[allow(clippy::too_many_arguments)]
fn check_party(
    tally: &mut Tally,
    at: &str,
    role: &str,
    order: &Accepted,
    symbol: &str,
    account: u64,
    filled: i64,
    remaining: i64,
) {
    let (id, qty) = (order.id(), order.order.qty);
    if order.symbol != symbol || order.account() != account {
        let (s, a) = (order.symbol, order.account());
        tally.flag(|| format!("{at}: {role} {id:x} is order of account {a} on {s}, fill says account {account}"));
    }
    if filled > qty {
        tally.flag(|| format!("{at}: {role} {id:x} (account {account}) overfilled: {filled} of {qty} shares"));
    } else if remaining != qty - filled {
        let want = qty - filled;
        tally.flag(|| {
            format!("{at}: {role} {id:x} (account {account}) remaining expected {want}, fill says {remaining}")
        });
    }
}

/// The fill's price is the maker's limit and within the taker's; sides oppose.
fn check_prices(tally: &mut Tally, at: &str, taker_side: Side, maker: &Accepted, taker: &Accepted, price: i64) {
    let (m, t) = (maker.id(), taker.id());
    if taker.order.side != taker_side || maker.order.side != taker_side.opposite() {
        let (ms, ts) = (maker.order.side, taker.order.side);
        tally.flag(|| format!("{at}: taker side {taker_side:?}, but maker {m:x} is {ms:?} and taker {t:x} is {ts:?}"));
    }
    if maker.order.kind != OrderType::Limit || maker.order.limit_ticks != Some(price) {
        let (kind, limit) = (maker.order.kind, maker.order.limit_ticks);
        tally.flag(|| format!("{at}: price {price} ticks is not the maker's: maker {m:x} is {kind:?} limit {limit:?}"));
    }
    for order in [maker, taker] {
        let limit = match (order.order.side, order.order.limit_ticks) {
            (Side::Buy, Some(limit)) if price > limit => limit,
            (Side::Sell, Some(limit)) if price < limit => limit,
            _ => continue,
        };
        let (id, side, account) = (order.id(), order.order.side, order.account());
        tally.flag(|| {
            format!(
                "{at}: trade-through: {side:?} {id:x} (account {account}) limited at {limit} ticks filled at {price}"
            )
        });
    }
}
