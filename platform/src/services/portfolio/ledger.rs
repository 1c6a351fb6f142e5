//! The portfolio's state: a pure fold over the LEDGER stream (deposits,
//! reservations, releases) and the TRADES stream (fills and closes).
//!
//! Every operation is idempotent (deposits by request id, reservations and
//! releases by order id, fills by fill id, closes by order id), and fills and
//! closes of one order commute, so a redelivered or reordered event changes
//! nothing twice. Invariants are checked where state changes: an operation
//! that would leave an account negative or over-reserved, or whose
//! arithmetic would overflow, returns a [`LedgerError`] (the live service
//! checks every request first and panics on one, a broken invariant; a
//! replay reports the event that caused it).

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{
    AccountId, Cents, Instrument, OrderId, OrderLimitError, PriceTicks, Shares, Side, MAX_ACCOUNT_CASH_CENTS,
    MAX_ACCOUNT_SHARES,
};

/// One symbol's position in an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    pub qty: Shares,
    /// Shares promised to open sell orders.
    pub reserved: Shares,
}

/// Cash and holdings of one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    pub cash: Cents,
    /// Cash promised to open buy orders.
    pub reserved_cash: Cents,
    pub holdings: BTreeMap<String, Holding>,
}

/// What an open order has reserved and not yet used or released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub account: AccountId,
    pub symbol: String,
    pub side: Side,
    /// Shares of the order still covered by the reservation.
    pub qty: Shares,
    /// Buy orders reserve `qty * price`; sells reserve `qty` shares.
    pub price: PriceTicks,
}

/// Why a reservation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    #[error("insufficient cash: order needs {need} cents, {available} available")]
    InsufficientCash { need: i64, available: i64 },
    #[error("insufficient shares of {symbol}: order needs {need}, {available} available")]
    InsufficientShares { symbol: String, need: i64, available: i64 },
    #[error("order {0} already had its reservation released")]
    AlreadyReleased(OrderId),
    #[error("unknown symbol {0}")]
    UnknownSymbol(String),
    #[error(transparent)]
    Limit(#[from] OrderLimitError),
}

/// Why a deposit is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepositError {
    #[error("cents: a deposit of {cents} would take the account's cash above the limit of {max} cents")]
    CashLimit { cents: i64, max: i64 },
    #[error("qty: a deposit of {qty} {symbol} would take the account's holding above the limit of {max} shares")]
    SharesLimit { symbol: String, qty: i64, max: i64 },
}

/// Why an event cannot be applied. Requests are checked before their event
/// is recorded, and the engine only trades accepted orders, so the live
/// service never meets one: a replay that does reports the event's place in
/// its stream and this reason (a stream written by other code, or a
/// configuration that lost an instrument), and the live service treats it
/// as the broken invariant it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("unknown symbol {0}")]
    UnknownSymbol(String),
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error("{0} overflows i64")]
    Overflow(String),
    #[error("account {account} would be left {what}: {state}")]
    Invariant { account: u64, what: String, state: String },
}

/// A settled fill: who paid whom for what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillSettlement {
    pub symbol: String,
    pub match_seq: u64,
    pub price: PriceTicks,
    pub qty: Shares,
    pub buy_order: OrderId,
    pub buyer: AccountId,
    pub sell_order: OrderId,
    pub seller: AccountId,
}

/// The portfolio state. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    instruments: BTreeMap<String, Instrument>,
    accounts: BTreeMap<AccountId, Account>,
    reservations: BTreeMap<OrderId, Reservation>,
    /// Orders whose reservation is used up or released; never reserved again.
    finished: BTreeSet<OrderId>,
    deposits: BTreeSet<String>,
    settled: BTreeSet<(String, u64)>,
    closed: BTreeSet<OrderId>,
    /// False only under the planted bug `SettleTwice`.
    dedupe_fills: bool,
}

fn add(a: i64, b: i64, what: &str) -> Result<i64, LedgerError> {
    a.checked_add(b).ok_or_else(|| LedgerError::Overflow(what.to_string()))
}

impl Ledger {
    pub fn new(instruments: &[Instrument]) -> Ledger {
        Ledger {
            instruments: instruments.iter().map(|i| (i.symbol.clone(), i.clone())).collect(),
            dedupe_fills: true,
            ..Ledger::default()
        }
    }

    /// Plants [`crate::config::PlantedBug::SettleTwice`]: the fill-id dedupe is
    /// skipped, so a fill delivered again is settled again.
    pub fn plant_settle_twice(&mut self) {
        self.dedupe_fills = false;
    }

    /// False under the planted bug `SettleTwice`.
    pub fn dedupes_fills(&self) -> bool {
        self.dedupe_fills
    }

    pub fn account(&self, id: AccountId) -> Account {
        self.accounts.get(&id).cloned().unwrap_or_default()
    }

    pub fn accounts(&self) -> &BTreeMap<AccountId, Account> {
        &self.accounts
    }

    pub fn reservation(&self, order: OrderId) -> Option<&Reservation> {
        self.reservations.get(&order)
    }

    pub fn open_reservations(&self) -> usize {
        self.reservations.len()
    }

    pub fn has_deposit(&self, request_id: &str) -> bool {
        self.deposits.contains(request_id)
    }

    fn instrument(&self, symbol: &str) -> Result<&Instrument, LedgerError> {
        self.instruments.get(symbol).ok_or_else(|| LedgerError::UnknownSymbol(symbol.to_string()))
    }

    fn notional(&self, symbol: &str, price: PriceTicks, qty: Shares) -> Result<Cents, LedgerError> {
        self.instrument(symbol)?
            .notional(price, qty)
            .ok_or_else(|| LedgerError::Overflow(format!("{qty:?} {symbol} at {price:?}: the notional")))
    }

    /// Whether a cash deposit may be made: it keeps the account within
    /// [`MAX_ACCOUNT_CASH_CENTS`].
    pub fn check_deposit(&self, account: AccountId, cents: Cents) -> Result<(), DepositError> {
        let cash = self.accounts.get(&account).map_or(0, |a| a.cash.0);
        match cash.checked_add(cents.0) {
            Some(after) if after <= MAX_ACCOUNT_CASH_CENTS => Ok(()),
            _ => Err(DepositError::CashLimit { cents: cents.0, max: MAX_ACCOUNT_CASH_CENTS }),
        }
    }

    /// Whether a share deposit may be made: it keeps the holding within [`MAX_ACCOUNT_SHARES`].
    pub fn check_deposit_shares(&self, account: AccountId, symbol: &str, qty: Shares) -> Result<(), DepositError> {
        let held = self.accounts.get(&account).and_then(|a| a.holdings.get(symbol)).map_or(0, |h| h.qty.0);
        match held.checked_add(qty.0) {
            Some(after) if after <= MAX_ACCOUNT_SHARES => Ok(()),
            _ => Err(DepositError::SharesLimit { symbol: symbol.to_string(), qty: qty.0, max: MAX_ACCOUNT_SHARES }),
        }
    }

    /// Applies a deposit of cash; false when this request id was applied before.
    pub fn deposit(&mut self, account: AccountId, cents: Cents, request_id: &str) -> Result<bool, LedgerError> {
        if cents.0 <= 0 {
            return Err(LedgerError::Malformed(format!("deposit of {} cents", cents.0)));
        }
        if self.deposits.contains(request_id) {
            return Ok(false);
        }
        let cash = add(self.account(account).cash.0, cents.0, "cash")?;
        self.deposits.insert(request_id.to_string());
        self.accounts.entry(account).or_default().cash = Cents(cash);
        Ok(true)
    }

    /// Applies a deposit of shares; false when this request id was applied before.
    pub fn deposit_shares(
        &mut self,
        account: AccountId,
        symbol: &str,
        qty: Shares,
        request_id: &str,
    ) -> Result<bool, LedgerError> {
        if qty.0 <= 0 {
            return Err(LedgerError::Malformed(format!("deposit of {} shares", qty.0)));
        }
        self.instrument(symbol)?;
        if self.deposits.contains(request_id) {
            return Ok(false);
        }
        let held = self.accounts.get(&account).and_then(|a| a.holdings.get(symbol)).map_or(0, |h| h.qty.0);
        let held = add(held, qty.0, "a holding")?;
        self.deposits.insert(request_id.to_string());
        self.accounts.entry(account).or_default().holdings.entry(symbol.to_string()).or_default().qty = Shares(held);
        Ok(true)
    }

    /// Whether the reservation may be made now. `Ok(true)` means it already exists.
    pub fn check_reserve(&self, order: OrderId, r: &Reservation) -> Result<bool, ReserveError> {
        if self.reservations.contains_key(&order) {
            return Ok(true);
        }
        if self.finished.contains(&order) {
            return Err(ReserveError::AlreadyReleased(order));
        }
        let inst = self.instruments.get(&r.symbol).ok_or_else(|| ReserveError::UnknownSymbol(r.symbol.clone()))?;
        let need = inst.check_order(r.price, r.qty)?.0;
        let acct = self.account(r.account);
        match r.side {
            Side::Buy => {
                let available = acct.cash.0 - acct.reserved_cash.0;
                if need > available {
                    return Err(ReserveError::InsufficientCash { need, available });
                }
            }
            Side::Sell => {
                let h = acct.holdings.get(&r.symbol).copied().unwrap_or_default();
                let available = h.qty.0 - h.reserved.0;
                if r.qty.0 > available {
                    return Err(ReserveError::InsufficientShares {
                        symbol: r.symbol.clone(),
                        need: r.qty.0,
                        available,
                    });
                }
            }
        }
        Ok(false)
    }

    /// Applies a reservation recorded in the ledger. Idempotent.
    pub fn reserve(&mut self, order: OrderId, r: Reservation) -> Result<(), LedgerError> {
        if self.reservations.contains_key(&order) || self.finished.contains(&order) {
            return Ok(());
        }
        if r.qty.0 <= 0 || r.price.0 <= 0 {
            return Err(LedgerError::Malformed(format!("reservation of {order}: {r:?}")));
        }
        let cents = self.notional(&r.symbol, r.price, r.qty)?;
        let acct = self.accounts.entry(r.account).or_default();
        match r.side {
            Side::Buy => acct.reserved_cash.0 = add(acct.reserved_cash.0, cents.0, "reserved cash")?,
            Side::Sell => {
                let h = acct.holdings.entry(r.symbol.clone()).or_default();
                h.reserved.0 = add(h.reserved.0, r.qty.0, "reserved shares")?;
            }
        }
        let account = r.account;
        self.reservations.insert(order, r);
        self.check_account(account)
    }

    /// Releases what is left of an order's reservation. Idempotent.
    pub fn release(&mut self, order: OrderId) -> Result<(), LedgerError> {
        if let Some(r) = self.reservations.get(&order) {
            let qty = r.qty;
            self.release_qty(order, qty)?;
        }
        self.finished.insert(order);
        Ok(())
    }

    /// Releases the reservation of `qty` shares of `order`.
    fn release_qty(&mut self, order: OrderId, qty: Shares) -> Result<(), LedgerError> {
        let Some(r) = self.reservations.get(&order) else {
            return Ok(());
        };
        let qty = Shares(qty.0.clamp(0, r.qty.0));
        let (account, side, symbol, price) = (r.account, r.side, r.symbol.clone(), r.price);
        let cents = self.notional(&symbol, price, qty)?;
        let r = self.reservations.get_mut(&order).expect("looked up above");
        r.qty.0 -= qty.0;
        if r.qty.0 == 0 {
            self.reservations.remove(&order);
            self.finished.insert(order);
        }
        let acct = self.accounts.get_mut(&account).expect("a reservation's account exists");
        match side {
            Side::Buy => acct.reserved_cash.0 -= cents.0,
            Side::Sell => acct.holdings.get_mut(&symbol).expect("reserved holding exists").reserved.0 -= qty.0,
        }
        self.check_account(account)
    }

    /// Settles a fill exactly once; false when it was settled before.
    pub fn settle(&mut self, f: &FillSettlement) -> Result<bool, LedgerError> {
        if self.settled.contains(&(f.symbol.clone(), f.match_seq)) && self.dedupe_fills {
            return Ok(false);
        }
        if f.qty.0 <= 0 || f.price.0 <= 0 {
            return Err(LedgerError::Malformed(format!("fill {}#{}: {f:?}", f.symbol, f.match_seq)));
        }
        let notional = self.notional(&f.symbol, f.price, f.qty)?;
        self.settled.insert((f.symbol.clone(), f.match_seq));
        // The buyer's reserved cash covers the fill: the fill is at or below the
        // price the cash was reserved at (limit, or the band's top for market).
        self.release_qty(f.buy_order, f.qty)?;
        self.release_qty(f.sell_order, f.qty)?;
        let buyer = self.accounts.entry(f.buyer).or_default();
        buyer.cash.0 -= notional.0;
        let bought = buyer.holdings.entry(f.symbol.clone()).or_default();
        bought.qty.0 = add(bought.qty.0, f.qty.0, "a holding")?;
        let seller = self.accounts.entry(f.seller).or_default();
        seller.cash.0 = add(seller.cash.0, notional.0, "cash")?;
        seller.holdings.entry(f.symbol.clone()).or_default().qty.0 -= f.qty.0;
        self.check_account(f.buyer)?;
        self.check_account(f.seller)?;
        Ok(true)
    }

    /// Releases the unfilled remainder of a closed order exactly once.
    pub fn close(&mut self, order: OrderId, remaining: Shares) -> Result<bool, LedgerError> {
        if !self.closed.insert(order) {
            return Ok(false);
        }
        self.release_qty(order, remaining)?;
        Ok(true)
    }

    /// Never a negative balance, never more reserved than owned.
    fn check_account(&self, id: AccountId) -> Result<(), LedgerError> {
        let Some(a) = self.accounts.get(&id) else { return Ok(()) };
        let broken = |what: &str, state: String| LedgerError::Invariant { account: id.0, what: what.into(), state };
        if a.cash.0 < 0 {
            return Err(broken("with negative cash", format!("{a:?}")));
        }
        if a.reserved_cash.0 < 0 || a.reserved_cash.0 > a.cash.0 {
            return Err(broken(
                "with reserved cash out of range",
                format!("cash {}, reserved_cash {}", a.cash.0, a.reserved_cash.0),
            ));
        }
        for (symbol, h) in &a.holdings {
            if h.qty.0 < 0 || h.reserved.0 < 0 || h.reserved.0 > h.qty.0 {
                return Err(broken("with a holding out of range", format!("{symbol}: {h:?}")));
            }
        }
        Ok(())
    }

    /// Total cash and total shares per symbol over all accounts (i128: the
    /// sum of many i64 balances).
    pub fn totals(&self) -> (i128, BTreeMap<String, i128>) {
        let mut cash = 0i128;
        let mut shares: BTreeMap<String, i128> = BTreeMap::new();
        for a in self.accounts.values() {
            cash += i128::from(a.cash.0);
            for (s, h) in &a.holdings {
                *shares.entry(s.clone()).or_default() += i128::from(h.qty.0);
            }
        }
        (cash, shares)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger {
        Ledger::new(&[Instrument::new("ACME", 1, 1, 1, 1_000)])
    }

    fn buy(account: u64, qty: i64, price: i64) -> Reservation {
        Reservation {
            account: AccountId(account),
            symbol: "ACME".into(),
            side: Side::Buy,
            qty: Shares(qty),
            price: PriceTicks(price),
        }
    }

    fn sell(account: u64, qty: i64, price: i64) -> Reservation {
        Reservation { side: Side::Sell, ..buy(account, qty, price) }
    }

    fn fill(seq: u64, price: i64, qty: i64) -> FillSettlement {
        FillSettlement {
            symbol: "ACME".into(),
            match_seq: seq,
            price: PriceTicks(price),
            qty: Shares(qty),
            buy_order: OrderId(1),
            buyer: AccountId(1),
            sell_order: OrderId(2),
            seller: AccountId(2),
        }
    }

    /// Buyer 1 with 10,000 cents; seller 2 with 50 shares (bought from 3).
    fn funded() -> Ledger {
        let mut l = ledger();
        l.deposit(AccountId(1), Cents(10_000), "d1").unwrap();
        l.deposit(AccountId(2), Cents(5_000), "d2").unwrap();
        l.deposit(AccountId(3), Cents(1), "d3").unwrap();
        l.reserve(OrderId(90), buy(2, 50, 100)).unwrap();
        l.accounts
            .get_mut(&AccountId(3))
            .unwrap()
            .holdings
            .insert("ACME".into(), Holding { qty: Shares(50), reserved: Shares(0) });
        l.reserve(OrderId(91), sell(3, 50, 100)).unwrap();
        let mut f = fill(100, 100, 50);
        (f.buy_order, f.buyer, f.sell_order, f.seller) = (OrderId(90), AccountId(2), OrderId(91), AccountId(3));
        assert!(l.settle(&f).unwrap());
        l
    }

    #[test]
    fn settles_once_and_releases_the_price_improvement() {
        let mut l = funded();
        l.reserve(OrderId(1), buy(1, 10, 120)).unwrap();
        l.reserve(OrderId(2), sell(2, 10, 100)).unwrap();
        assert_eq!(l.account(AccountId(1)).reserved_cash, Cents(1_200));
        assert!(l.settle(&fill(1, 100, 4)).unwrap());
        assert!(!l.settle(&fill(1, 100, 4)).unwrap(), "second settlement of one fill");
        let buyer = l.account(AccountId(1));
        assert_eq!(buyer.cash, Cents(9_600));
        assert_eq!(buyer.reserved_cash, Cents(720));
        assert_eq!(buyer.holdings["ACME"].qty, Shares(4));
        let seller = l.account(AccountId(2));
        assert_eq!(seller.holdings["ACME"], Holding { qty: Shares(46), reserved: Shares(6) });
        assert!(l.close(OrderId(1), Shares(6)).unwrap());
        assert!(!l.close(OrderId(1), Shares(6)).unwrap());
        assert_eq!(l.account(AccountId(1)).reserved_cash, Cents(0));
        assert!(l.reservation(OrderId(1)).is_none());
    }

    #[test]
    fn close_before_fill_commutes() {
        let mut a = funded();
        let mut b = funded();
        for l in [&mut a, &mut b] {
            l.reserve(OrderId(1), buy(1, 10, 120)).unwrap();
            l.reserve(OrderId(2), sell(2, 10, 100)).unwrap();
        }
        a.settle(&fill(1, 100, 4)).unwrap();
        a.close(OrderId(1), Shares(6)).unwrap();
        b.close(OrderId(1), Shares(6)).unwrap();
        b.settle(&fill(1, 100, 4)).unwrap();
        assert_eq!(a.accounts, b.accounts);
    }

    #[test]
    fn refuses_what_is_not_there() {
        let mut l = funded();
        assert_eq!(
            l.check_reserve(OrderId(5), &buy(1, 101, 100)),
            Err(ReserveError::InsufficientCash { need: 10_100, available: 10_000 })
        );
        assert!(matches!(l.check_reserve(OrderId(5), &sell(1, 1, 100)), Err(ReserveError::InsufficientShares { .. })));
        l.reserve(OrderId(5), buy(1, 100, 100)).unwrap();
        assert_eq!(l.check_reserve(OrderId(5), &buy(1, 100, 100)), Ok(true));
        assert!(matches!(l.check_reserve(OrderId(6), &buy(1, 1, 1)), Err(ReserveError::InsufficientCash { .. })));
        l.release(OrderId(5)).unwrap();
        assert_eq!(l.check_reserve(OrderId(5), &buy(1, 1, 1)), Err(ReserveError::AlreadyReleased(OrderId(5))));
        assert_eq!(l.account(AccountId(1)).reserved_cash, Cents(0));
    }

    #[test]
    fn deposits_are_idempotent_and_totals_conserved() {
        let mut l = funded();
        let before = l.totals();
        assert!(!l.deposit(AccountId(1), Cents(10_000), "d1").unwrap());
        assert_eq!(l.totals(), before);
        l.reserve(OrderId(1), buy(1, 10, 120)).unwrap();
        l.reserve(OrderId(2), sell(2, 10, 100)).unwrap();
        l.settle(&fill(1, 110, 10)).unwrap();
        assert_eq!(l.totals(), before);
    }

    #[test]
    fn limits_refuse_before_anything_changes() {
        let l = funded();
        let before = l.clone();
        let over = Cents(MAX_ACCOUNT_CASH_CENTS);
        assert!(matches!(l.check_deposit(AccountId(1), over), Err(DepositError::CashLimit { .. })));
        assert!(matches!(l.check_deposit(AccountId(1), Cents(i64::MAX)), Err(DepositError::CashLimit { .. })));
        assert_eq!(l.check_deposit(AccountId(1), Cents(MAX_ACCOUNT_CASH_CENTS - 10_000)), Ok(()));
        let shares = Shares(MAX_ACCOUNT_SHARES);
        assert!(matches!(l.check_deposit_shares(AccountId(2), "ACME", shares), Err(DepositError::SharesLimit { .. })));
        let huge = buy(1, i64::MAX / 2, 1_000);
        assert!(matches!(l.check_reserve(OrderId(7), &huge), Err(ReserveError::Limit(_))));
        assert_eq!(l, before, "a check changes nothing");
    }

    #[test]
    fn arithmetic_that_overflows_is_an_error_not_a_panic() {
        let mut l = ledger();
        l.deposit(AccountId(1), Cents(i64::MAX - 1), "d1").unwrap();
        assert_eq!(l.deposit(AccountId(1), Cents(2), "d2"), Err(LedgerError::Overflow("cash".into())));
        assert!(!l.has_deposit("d2"), "a refused deposit leaves no trace");
        assert!(matches!(l.reserve(OrderId(1), buy(1, i64::MAX, 1_000)), Err(LedgerError::Overflow(_))));
        assert!(matches!(l.deposit(AccountId(1), Cents(-5), "d3"), Err(LedgerError::Malformed(_))));
        assert!(matches!(l.deposit_shares(AccountId(1), "NOPE", Shares(1), "d4"), Err(LedgerError::UnknownSymbol(_))));
    }

    /// The replay that bricked the portfolio: two reservations that each fit
    /// only because a cancel released the first in between. Applied without
    /// the cancel in between, the second over-reserves the account: an
    /// error naming the account, not a panic.
    #[test]
    fn an_over_reservation_is_an_invariant_error() {
        let mut l = Ledger::new(&[Instrument::new("ACME", 1, 1, 1, 1_000_000)]);
        l.deposit(AccountId(1), Cents(1_000_000), "d").unwrap();
        l.reserve(OrderId(1), buy(1, 1, 600_000)).unwrap();
        let err = l.reserve(OrderId(2), buy(1, 1, 600_000)).unwrap_err();
        assert!(matches!(err, LedgerError::Invariant { account: 1, .. }), "{err}");
        assert!(err.to_string().contains("cash 1000000, reserved_cash 1200000"), "{err}");
    }
}
