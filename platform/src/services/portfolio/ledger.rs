//! The portfolio's state: a pure fold over the LEDGER stream (deposits,
//! reservations, releases) and the TRADES stream (fills and closes).
//!
//! Every operation is idempotent (deposits by request id, reservations and
//! releases by order id, fills by fill id, closes by order id), and fills and
//! closes of one order commute, so a redelivered or reordered event changes
//! nothing twice. Invariants are asserted where state changes.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{AccountId, Cents, Instrument, OrderId, PriceTicks, Shares, Side};

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
#[derive(Clone, Debug, Default)]
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

    fn tick(&self, symbol: &str) -> &Instrument {
        self.instruments.get(symbol).unwrap_or_else(|| panic!("ledger event for unknown symbol {symbol}"))
    }

    /// Applies a deposit of cash; false when this request id was applied before.
    pub fn deposit(&mut self, account: AccountId, cents: Cents, request_id: &str) -> bool {
        assert!(cents.0 > 0, "deposit of {} cents", cents.0);
        if !self.deposits.insert(request_id.to_string()) {
            return false;
        }
        let acct = self.accounts.entry(account).or_default();
        acct.cash = Cents(acct.cash.0.checked_add(cents.0).expect("cash overflows i64 cents"));
        true
    }

    /// Applies a deposit of shares; false when this request id was applied before.
    pub fn deposit_shares(&mut self, account: AccountId, symbol: &str, qty: Shares, request_id: &str) -> bool {
        assert!(qty.0 > 0, "deposit of {} shares", qty.0);
        self.tick(symbol);
        if !self.deposits.insert(request_id.to_string()) {
            return false;
        }
        let h = self.accounts.entry(account).or_default().holdings.entry(symbol.to_string()).or_default();
        h.qty.0 = h.qty.0.checked_add(qty.0).expect("holding overflows i64 shares");
        true
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
        let acct = self.account(r.account);
        match r.side {
            Side::Buy => {
                let need = inst.notional(r.price, r.qty).0;
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
    pub fn reserve(&mut self, order: OrderId, r: Reservation) {
        if self.reservations.contains_key(&order) || self.finished.contains(&order) {
            return;
        }
        assert!(r.qty.0 > 0 && r.price.0 > 0, "reservation of {order}: {r:?}");
        let cents = self.tick(&r.symbol).notional(r.price, r.qty);
        let acct = self.accounts.entry(r.account).or_default();
        match r.side {
            Side::Buy => acct.reserved_cash.0 += cents.0,
            Side::Sell => acct.holdings.entry(r.symbol.clone()).or_default().reserved.0 += r.qty.0,
        }
        let account = r.account;
        self.reservations.insert(order, r);
        self.check_account(account);
    }

    /// Releases what is left of an order's reservation. Idempotent.
    pub fn release(&mut self, order: OrderId) {
        if let Some(r) = self.reservations.get(&order) {
            let qty = r.qty;
            self.release_qty(order, qty);
        }
        self.finished.insert(order);
    }

    /// Releases the reservation of `qty` shares of `order`.
    fn release_qty(&mut self, order: OrderId, qty: Shares) {
        let Some(r) = self.reservations.get_mut(&order) else {
            return;
        };
        let qty = Shares(qty.0.min(r.qty.0));
        r.qty.0 -= qty.0;
        let (account, side, symbol, price) = (r.account, r.side, r.symbol.clone(), r.price);
        if r.qty.0 == 0 {
            self.reservations.remove(&order);
            self.finished.insert(order);
        }
        let cents = self.tick(&symbol).notional(price, qty);
        let acct = self.accounts.get_mut(&account).expect("a reservation's account exists");
        match side {
            Side::Buy => acct.reserved_cash.0 -= cents.0,
            Side::Sell => acct.holdings.get_mut(&symbol).expect("reserved holding exists").reserved.0 -= qty.0,
        }
        self.check_account(account);
    }

    /// Settles a fill exactly once; false when it was settled before.
    pub fn settle(&mut self, f: &FillSettlement) -> bool {
        if !self.settled.insert((f.symbol.clone(), f.match_seq)) && self.dedupe_fills {
            return false;
        }
        assert!(f.qty.0 > 0 && f.price.0 > 0, "fill {}#{}: {f:?}", f.symbol, f.match_seq);
        let notional = self.tick(&f.symbol).notional(f.price, f.qty);
        // The buyer's reserved cash covers the fill: the fill is at or below the
        // price the cash was reserved at (limit, or the band's top for market).
        self.release_qty(f.buy_order, f.qty);
        self.release_qty(f.sell_order, f.qty);
        let buyer = self.accounts.entry(f.buyer).or_default();
        buyer.cash.0 -= notional.0;
        buyer.holdings.entry(f.symbol.clone()).or_default().qty.0 += f.qty.0;
        let seller = self.accounts.entry(f.seller).or_default();
        seller.cash.0 += notional.0;
        seller.holdings.entry(f.symbol.clone()).or_default().qty.0 -= f.qty.0;
        self.check_account(f.buyer);
        self.check_account(f.seller);
        true
    }

    /// Releases the unfilled remainder of a closed order exactly once.
    pub fn close(&mut self, order: OrderId, remaining: Shares) -> bool {
        if !self.closed.insert(order) {
            return false;
        }
        self.release_qty(order, remaining);
        true
    }

    /// Never a negative balance, never more reserved than owned.
    fn check_account(&self, id: AccountId) {
        let Some(a) = self.accounts.get(&id) else { return };
        assert!(a.cash.0 >= 0, "account {} cash negative: {:?}", id.0, a);
        assert!(
            a.reserved_cash.0 >= 0 && a.reserved_cash.0 <= a.cash.0,
            "account {} reserved cash out of range: {:?}",
            id.0,
            a
        );
        for (symbol, h) in &a.holdings {
            assert!(
                h.qty.0 >= 0 && h.reserved.0 >= 0 && h.reserved.0 <= h.qty.0,
                "account {} holding {symbol} out of range: {h:?}",
                id.0
            );
        }
    }

    /// Total cash and total shares per symbol over all accounts.
    pub fn totals(&self) -> (Cents, BTreeMap<String, Shares>) {
        let mut cash = 0i64;
        let mut shares: BTreeMap<String, Shares> = BTreeMap::new();
        for a in self.accounts.values() {
            cash += a.cash.0;
            for (s, h) in &a.holdings {
                shares.entry(s.clone()).or_default().0 += h.qty.0;
            }
        }
        (Cents(cash), shares)
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
        l.deposit(AccountId(1), Cents(10_000), "d1");
        l.deposit(AccountId(2), Cents(5_000), "d2");
        l.deposit(AccountId(3), Cents(1), "d3");
        l.reserve(OrderId(90), buy(2, 50, 100));
        l.accounts
            .get_mut(&AccountId(3))
            .unwrap()
            .holdings
            .insert("ACME".into(), Holding { qty: Shares(50), reserved: Shares(0) });
        l.reserve(OrderId(91), sell(3, 50, 100));
        let mut f = fill(100, 100, 50);
        (f.buy_order, f.buyer, f.sell_order, f.seller) = (OrderId(90), AccountId(2), OrderId(91), AccountId(3));
        assert!(l.settle(&f));
        l
    }

    #[test]
    fn settles_once_and_releases_the_price_improvement() {
        let mut l = funded();
        l.reserve(OrderId(1), buy(1, 10, 120));
        l.reserve(OrderId(2), sell(2, 10, 100));
        assert_eq!(l.account(AccountId(1)).reserved_cash, Cents(1_200));
        assert!(l.settle(&fill(1, 100, 4)));
        assert!(!l.settle(&fill(1, 100, 4)), "second settlement of one fill");
        let buyer = l.account(AccountId(1));
        assert_eq!(buyer.cash, Cents(9_600));
        assert_eq!(buyer.reserved_cash, Cents(720));
        assert_eq!(buyer.holdings["ACME"].qty, Shares(4));
        let seller = l.account(AccountId(2));
        assert_eq!(seller.holdings["ACME"], Holding { qty: Shares(46), reserved: Shares(6) });
        assert!(l.close(OrderId(1), Shares(6)));
        assert!(!l.close(OrderId(1), Shares(6)));
        assert_eq!(l.account(AccountId(1)).reserved_cash, Cents(0));
        assert!(l.reservation(OrderId(1)).is_none());
    }

    #[test]
    fn close_before_fill_commutes() {
        let mut a = funded();
        let mut b = funded();
        for l in [&mut a, &mut b] {
            l.reserve(OrderId(1), buy(1, 10, 120));
            l.reserve(OrderId(2), sell(2, 10, 100));
        }
        a.settle(&fill(1, 100, 4));
        a.close(OrderId(1), Shares(6));
        b.close(OrderId(1), Shares(6));
        b.settle(&fill(1, 100, 4));
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
        l.reserve(OrderId(5), buy(1, 100, 100));
        assert_eq!(l.check_reserve(OrderId(5), &buy(1, 100, 100)), Ok(true));
        assert!(matches!(l.check_reserve(OrderId(6), &buy(1, 1, 1)), Err(ReserveError::InsufficientCash { .. })));
        l.release(OrderId(5));
        assert_eq!(l.check_reserve(OrderId(5), &buy(1, 1, 1)), Err(ReserveError::AlreadyReleased(OrderId(5))));
        assert_eq!(l.account(AccountId(1)).reserved_cash, Cents(0));
    }

    #[test]
    fn deposits_are_idempotent_and_totals_conserved() {
        let mut l = funded();
        let before = l.totals();
        assert!(!l.deposit(AccountId(1), Cents(10_000), "d1"));
        assert_eq!(l.totals(), before);
        l.reserve(OrderId(1), buy(1, 10, 120));
        l.reserve(OrderId(2), sell(2, 10, 100));
        l.settle(&fill(1, 110, 10));
        assert_eq!(l.totals(), before);
    }
}
