//! Check 9: market data. What agents received and what the market serves
//! must agree with the fills in TRADES and with the reference book:
//!
//! - every trade in a market-data update is a fill in TRADES with the same
//!   symbol, match sequence, price and quantity, of the input the update names;
//! - every top of book received is the reference book's top right after the
//!   input the update names (0: before any input);
//! - each symbol's final quote has the fills' count, volume and last price and
//!   quantity, and the reference book's final top; its candles are the fills'
//!   one-minute buckets (by the fill event's timestamp) with open, high, low,
//!   close and volume.

use std::collections::BTreeMap;

use fafnir_platform::proto::common::{Candle, Quote};

use super::facts::{Facts, Fill};
use super::matching::ReferenceRun;
use super::reference::Top;
use super::{CheckResult, ReceivedTop, ReceivedTrade, Served, Tally};

/// A candle's width, as the market buckets fills.
const CANDLE_MS: i64 = 60_000;

pub(crate) fn market_data_agrees(facts: &Facts, reference: &ReferenceRun) -> CheckResult {
    let mut tally = Tally::new("market_data_agrees");
    for t in &facts.input.md_trades {
        check_trade(facts, t, &mut tally);
    }
    for top in &facts.input.md_tops {
        check_top(facts, reference, top, &mut tally);
    }
    if let Some(served) = &facts.input.market {
        for (&symbol, inst) in &facts.instruments {
            let Some(served) = served.get(symbol) else {
                tally.flag(|| format!("{symbol}: no quote or candles were gathered"));
                continue;
            };
            let fills = fills_of(facts, symbol);
            let last_input = reference.tops.get(symbol).and_then(|t| t.last()).map_or(0, |(seq, _)| *seq);
            let top = (last_input, reference.final_top(symbol));
            check_quote(symbol, inst.tick_cents, &fills, top, &served.quote, &mut tally);
            check_candles(symbol, inst.tick_cents, &fills, served, &mut tally);
        }
    }
    tally.finish()
}

/// A trade received is the fill of its id, of the input its update named.
fn check_trade(facts: &Facts, t: &ReceivedTrade, tally: &mut Tally) {
    let at = || {
        format!(
            "{} trade match_seq {} ({}x{}c, ORDERS#{}) received by account {}",
            t.symbol, t.match_seq, t.qty, t.price_cents, t.input_seq, t.account
        )
    };
    let Some(fill) = facts.fill(&t.symbol, t.match_seq) else {
        tally.flag(|| format!("{}: no such fill in TRADES", at()));
        return;
    };
    let price_cents = fill.f.price_ticks.saturating_mul(fill.tick_cents);
    if (price_cents, fill.f.qty, fill.input_seq) != (t.price_cents, t.qty, t.input_seq) {
        let (q, input, seq) = (fill.f.qty, fill.input_seq, fill.trades_seq);
        tally.flag(|| format!("{}: the fill is {q}x{price_cents}c of ORDERS#{input} (TRADES#{seq})", at()));
    }
}

/// A top of book received is the reference's after the input it names.
fn check_top(facts: &Facts, reference: &ReferenceRun, top: &ReceivedTop, tally: &mut Tally) {
    let (symbol, seq, account) = (&top.symbol, top.input_seq, top.account);
    let Some(tick) = facts.instruments.get(symbol.as_str()).map(|i| i.tick_cents) else {
        tally.flag(|| format!("{symbol}: account {account} received a top of book of an unknown symbol"));
        return;
    };
    let Some(want) = reference.top_after(symbol, seq) else {
        tally.flag(|| {
            format!("{symbol}: account {account} received a top of book after ORDERS#{seq}, not an input of {symbol}")
        });
        return;
    };
    let got = [top.bid_cents, top.bid_qty, top.ask_cents, top.ask_qty];
    if got != in_cents(want, tick) {
        tally.flag(|| {
            format!(
                "{symbol} top of book after ORDERS#{seq}: account {account} received {}, the reference book has {}",
                show_top(got),
                show_top(in_cents(want, tick))
            )
        });
    }
}

/// [bid cents, bid qty, ask cents, ask qty], zeros for an empty side (as the API sends it).
fn in_cents(top: Top, tick_cents: i64) -> [i64; 4] {
    let side = |s: Option<(i64, i64)>| s.map_or((0, 0), |(p, q)| (p.saturating_mul(tick_cents), q));
    let ((bid, bid_qty), (ask, ask_qty)) = (side(top.bid), side(top.ask));
    [bid, bid_qty, ask, ask_qty]
}

fn show_top(t: [i64; 4]) -> String {
    format!("bid {}x{}c / ask {}x{}c", t[1], t[0], t[3], t[2])
}

/// The symbol's distinct fills in match order.
fn fills_of<'f, 'a>(facts: &'f Facts<'a>, symbol: &str) -> Vec<&'f Fill<'a>> {
    let mut fills: Vec<&Fill> = facts.fills.iter().filter(|f| f.symbol == symbol).collect();
    fills.sort_by_key(|f| f.f.match_seq);
    fills
}

/// The quote: trade count, volume, last trade (`match_seq`, price, qty), and
/// the top of book after the symbol's last input (`last_input`, `top`).
fn check_quote(symbol: &str, tick: i64, fills: &[&Fill], (last_input, top): (u64, Top), q: &Quote, tally: &mut Tally) {
    let volume = fills.iter().fold(0i64, |v, f| v.saturating_add(f.f.qty));
    let last = fills.last().map_or((0, 0, 0), |f| (f.f.match_seq, f.f.price_ticks.saturating_mul(tick), f.f.qty));
    let want = (fills.len() as u64, volume, last);
    let got = (q.trades, q.volume, (q.match_seq, q.last_price_cents, q.last_qty));
    if got != want {
        let show = |(n, v, (seq, cents, qty)): (u64, i64, (u64, i64, i64))| {
            format!("{n} trades, volume {v}, last {qty}x{cents}c (match_seq {seq})")
        };
        let (got, want) = (show(got), show(want));
        tally.flag(|| format!("{symbol} quote: {got}; the fills in TRADES make {want}"));
    }
    let got = (q.book_seq, [q.bid_cents, q.bid_qty, q.ask_cents, q.ask_qty]);
    if got != (last_input, in_cents(top, tick)) {
        let want = show_top(in_cents(top, tick));
        let (seq, shown) = (got.0, show_top(got.1));
        tally.flag(|| {
            format!(
                "{symbol} quote: {shown} after ORDERS#{seq}; the reference book ends with {want} after ORDERS#{last_input}"
            )
        });
    }
}

/// The candles: one per minute with a fill, oldest first.
fn check_candles(symbol: &str, tick: i64, fills: &[&Fill], served: &Served, tally: &mut Tally) {
    let mut want: BTreeMap<i64, Candle> = BTreeMap::new();
    for f in fills {
        let start_ms = f.ts_ms.div_euclid(CANDLE_MS) * CANDLE_MS;
        let price = f.f.price_ticks.saturating_mul(tick);
        let c = want.entry(start_ms).or_insert(Candle {
            start_ms,
            open_cents: price,
            high_cents: price,
            low_cents: price,
            close_cents: price,
            volume: 0,
        });
        c.high_cents = c.high_cents.max(price);
        c.low_cents = c.low_cents.min(price);
        c.close_cents = price;
        c.volume = c.volume.saturating_add(f.f.qty);
    }
    let want: Vec<Candle> = want.into_values().collect();
    if want == served.candles {
        return;
    }
    let show = |c: Option<&Candle>| {
        c.map_or("none".to_string(), |c| {
            format!(
                "{} o{} h{} l{} c{} v{}",
                c.start_ms, c.open_cents, c.high_cents, c.low_cents, c.close_cents, c.volume
            )
        })
    };
    let (nw, ng) = (want.len(), served.candles.len());
    let at = (0..nw.max(ng)).find(|&i| want.get(i) != served.candles.get(i)).unwrap_or(0);
    let (w, g) = (show(want.get(at)), show(served.candles.get(at)));
    tally.flag(|| {
        format!(
            "{symbol} candles: {ng} served, the fills make {nw}; the first that differs: served {g}, fills make {w}"
        )
    });
}
