//! Checks 3, 5, 6 and 7: cash and shares, recomputed from the streams
//! independently of the portfolio service and compared with what it reports.

use std::collections::{BTreeMap, BTreeSet};

use fafnir_platform::domain::Side;
use fafnir_platform::proto::common::PortfolioView;

use super::facts::{notional_cents, Facts};
use super::{CheckResult, Tally};

/// Cash and holdings of one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Balance<'a> {
    cash_cents: i64,
    shares: BTreeMap<&'a str, i64>,
}

impl<'a> Balance<'a> {
    fn add_shares(&mut self, symbol: &'a str, qty: i64) {
        let held = self.shares.entry(symbol).or_default();
        *held = held.saturating_add(qty);
    }
}

/// Each account's holdings (qty, reserved) by symbol as a portfolio view lists them.
fn holdings(view: &PortfolioView) -> BTreeMap<&str, (i64, i64)> {
    let mut out: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for h in &view.holdings {
        let e = out.entry(h.symbol.as_str()).or_default();
        *e = (e.0.saturating_add(h.qty), e.1.saturating_add(h.reserved_qty));
    }
    out
}

/// What the deposits alone put in each account.
fn deposited<'a>(facts: &Facts<'a>) -> BTreeMap<u64, Balance<'a>> {
    let mut out: BTreeMap<u64, Balance> = BTreeMap::new();
    for d in &facts.deposits {
        let b = out.entry(d.account).or_default();
        match d.symbol {
            None => b.cash_cents = b.cash_cents.saturating_add(d.cents),
            Some(symbol) => b.add_shares(symbol, d.qty),
        }
    }
    out
}

/// Check 3: total cash equals total cash deposited; total shares of each symbol
/// equal the shares of it deposited.
pub(crate) fn conservation(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("conservation");
    for line in &facts.malformed_ledger {
        tally.flag(|| line.clone());
    }
    let deposits = deposited(facts);
    let mut deposited_total = Balance::default();
    for b in deposits.values() {
        deposited_total.cash_cents = deposited_total.cash_cents.saturating_add(b.cash_cents);
        for (&symbol, &qty) in &b.shares {
            deposited_total.add_shares(symbol, qty);
        }
    }
    let mut held_total = Balance::default();
    for view in facts.input.portfolios.values() {
        held_total.cash_cents = held_total.cash_cents.saturating_add(view.cash_cents);
        for (symbol, (qty, _)) in holdings(view) {
            held_total.add_shares(symbol, qty);
        }
    }
    let unreported = deposits.keys().filter(|a| !facts.input.portfolios.contains_key(a)).count();
    let note = if unreported > 0 {
        format!(" ({unreported} accounts with deposits report no portfolio)")
    } else {
        String::new()
    };
    if deposited_total.cash_cents != held_total.cash_cents {
        let (d, h) = (deposited_total.cash_cents, held_total.cash_cents);
        tally.flag(|| {
            format!("total cash: deposited {d} cents, accounts hold {h} (difference {}){note}", h.saturating_sub(d))
        });
    }
    let symbols: BTreeSet<&str> = deposited_total.shares.keys().chain(held_total.shares.keys()).copied().collect();
    for symbol in symbols {
        let d = deposited_total.shares.get(symbol).copied().unwrap_or(0);
        let h = held_total.shares.get(symbol).copied().unwrap_or(0);
        if d != h {
            tally.flag(|| {
                format!(
                    "total {symbol} shares: deposited {d}, accounts hold {h} (difference {}){note}",
                    h.saturating_sub(d)
                )
            });
        }
    }
    tally.finish()
}

/// Check 5: a fill id appears once in TRADES, and every account's cash and
/// holdings equal its deposits plus each distinct fill applied exactly once.
pub(crate) fn settled_exactly_once(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("settled_exactly_once");
    for d in &facts.duplicate_fills {
        let how = if d.identical { "again" } else { "again with different contents" };
        tally.flag(|| {
            format!(
                "{} match_seq {}: fill published {how} (TRADES#{} and TRADES#{})",
                d.symbol, d.match_seq, d.first_trades_seq, d.trades_seq
            )
        });
    }
    let mut expected = deposited(facts);
    for fill in &facts.fills {
        let (_, buyer, _, seller) = fill.parties();
        let notional = fill.notional_cents();
        let b = expected.entry(buyer).or_default();
        b.cash_cents = b.cash_cents.saturating_sub(notional);
        b.add_shares(fill.symbol, fill.f.qty);
        let s = expected.entry(seller).or_default();
        s.cash_cents = s.cash_cents.saturating_add(notional);
        s.add_shares(fill.symbol, fill.f.qty.saturating_neg());
    }
    let accounts: BTreeSet<u64> = expected.keys().chain(facts.input.portfolios.keys()).copied().collect();
    for account in accounts {
        let want = expected.get(&account).cloned().unwrap_or_default();
        let Some(view) = facts.input.portfolios.get(&account) else {
            tally.flag(|| format!("account {account}: no portfolio reported; expected cash {} cents", want.cash_cents));
            continue;
        };
        if view.cash_cents != want.cash_cents {
            let (w, got) = (want.cash_cents, view.cash_cents);
            tally.flag(|| {
                format!("account {account}: cash expected {w} cents (deposits and fills), platform reports {got} (difference {})", got.saturating_sub(w))
            });
        }
        let held = holdings(view);
        let symbols: BTreeSet<&str> = want.shares.keys().copied().chain(held.keys().copied()).collect();
        for symbol in symbols {
            let w = want.shares.get(symbol).copied().unwrap_or(0);
            let got = held.get(symbol).map_or(0, |h| h.0);
            if w != got {
                tally.flag(|| {
                    format!("account {account} {symbol}: holding expected {w} shares, platform reports {got}")
                });
            }
        }
    }
    tally.finish()
}

/// Check 6: nothing negative, and nothing reserved beyond what is owned.
pub(crate) fn no_negative_balance(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("no_negative_balance");
    for (account, view) in &facts.input.portfolios {
        let (cash, reserved) = (view.cash_cents, view.reserved_cents);
        if cash < 0 || reserved < 0 || reserved > cash {
            tally.flag(|| format!("account {account}: cash {cash} cents with {reserved} reserved"));
        }
        for (symbol, (qty, reserved)) in holdings(view) {
            if qty < 0 || reserved < 0 || reserved > qty {
                tally.flag(|| format!("account {account} {symbol}: {qty} shares with {reserved} reserved"));
            }
        }
    }
    tally.finish()
}

/// What the open orders (and leaked reservations) should still hold.
#[derive(Default)]
struct Reserved<'a> {
    cash_cents: BTreeMap<u64, i64>,
    shares: BTreeMap<(u64, &'a str), i64>,
}

impl<'a> Reserved<'a> {
    fn add(&mut self, account: u64, symbol: &'a str, side: Side, cents: i64, qty: i64) {
        match side {
            Side::Buy => {
                let c = self.cash_cents.entry(account).or_default();
                *c = c.saturating_add(cents);
            }
            Side::Sell => {
                let q = self.shares.entry((account, symbol)).or_default();
                *q = q.saturating_add(qty);
            }
        }
    }
}

/// Check 7: each account's reserved cash is the remaining quantity times the
/// reserve price over its open buys, and its reserved shares the remaining
/// quantity of its open sells; every accepted order was reserved as accepted;
/// a reservation of an order never accepted must have been released; an
/// order given up before acceptance (abandoned) is never also accepted.
pub(crate) fn reservations_balance(facts: &Facts) -> CheckResult {
    let mut tally = Tally::new("reservations_balance");
    let mut want = Reserved::default();
    open_orders(facts, &mut want, &mut tally);
    for (order, abandoned_seq) in &facts.abandoned {
        if let Some(a) = facts.accepted.get(order) {
            tally.flag(|| {
                format!(
                    "{} order {order:x} both abandoned (ORDERS#{abandoned_seq}) and accepted (ORDERS#{}): the message-id fence failed",
                    a.symbol, a.seq
                )
            });
        }
    }
    for r in facts.reservations.values() {
        if facts.accepted.contains_key(&r.order) || facts.released.contains(&r.order) {
            continue;
        }
        tally.flag(|| {
            format!(
                "reservation leaked: {} order {:x} (account {}) reserved {:?} {} @ {} ticks at LEDGER#{}, never accepted nor released",
                r.symbol, r.order, r.account, r.side, r.qty, r.price_ticks, r.ledger_seq
            )
        });
        // The platform still holds it: count it, so the balances below report only other differences.
        want.add(r.account, r.symbol, r.side, r.cents(), r.qty);
    }
    for (account, view) in &facts.input.portfolios {
        let w = want.cash_cents.get(account).copied().unwrap_or(0);
        if view.reserved_cents != w {
            let got = view.reserved_cents;
            tally.flag(|| {
                format!("account {account}: reserved cash expected {w} cents (open buys), platform reports {got}")
            });
        }
        let held = holdings(view);
        let mine = want.shares.range((*account, "")..).take_while(|((a, _), _)| a == account);
        let symbols: BTreeSet<&str> = mine.map(|((_, s), _)| *s).chain(held.keys().copied()).collect();
        for symbol in symbols {
            let w = want.shares.get(&(*account, symbol)).copied().unwrap_or(0);
            let got = held.get(symbol).map_or(0, |h| h.1);
            if w != got {
                tally.flag(|| {
                    format!(
                        "account {account} {symbol}: reserved shares expected {w} (open sells), platform reports {got}"
                    )
                });
            }
        }
    }
    tally.finish()
}

/// Adds what each open accepted order should hold to `want`; flags accepted
/// orders whose reservation is missing, differs or was released while open.
fn open_orders<'a>(facts: &Facts<'a>, want: &mut Reserved<'a>, tally: &mut Tally) {
    for (id, a) in &facts.accepted {
        let o = &a.order;
        let at = format!("{} order {id:x} (account {}, {:?} {:?})", a.symbol, o.account, o.side, o.kind);
        match facts.reservations.get(id) {
            None => tally.flag(|| format!("{at}: accepted at ORDERS#{} without a reservation in LEDGER", a.seq)),
            Some(r) => {
                let as_accepted = r.account == o.account
                    && r.symbol == a.symbol
                    && r.side == o.side
                    && r.qty == o.qty
                    && r.price_ticks == a.reserve_price_ticks;
                if !as_accepted {
                    tally.flag(|| {
                        format!(
                            "{at}: accepted {} @ reserve {} ticks, LEDGER#{} reserved {:?} {} of {} @ {} ticks for account {}",
                            o.qty, a.reserve_price_ticks, r.ledger_seq, r.side, r.qty, r.symbol, r.price_ticks, r.account
                        )
                    });
                }
            }
        }
        // A buy's reservation must cover any fill it can get: its limit, or the band's top for a market buy.
        let bound = o.limit_ticks.unwrap_or(a.inst.max_price_ticks);
        if o.side == Side::Buy && a.reserve_price_ticks < bound {
            let r = a.reserve_price_ticks;
            tally.flag(|| format!("{at}: reserves at {r} ticks, below the {bound} ticks it may pay"));
        }
        let act = facts.activity.get(id).copied().unwrap_or_default();
        if act.closed.is_some() || act.filled_qty >= o.qty {
            continue;
        }
        if facts.released.contains(id) {
            tally.flag(|| format!("{at}: reservation released in LEDGER while the order is open"));
            continue;
        }
        let remaining = o.qty.saturating_sub(act.filled_qty);
        let cents = notional_cents(a.reserve_price_ticks, remaining, a.inst.tick_cents);
        want.add(o.account, a.symbol, o.side, cents, remaining);
    }
}
