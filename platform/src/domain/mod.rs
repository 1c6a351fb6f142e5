//! Pure domain types shared by every service.
//!
//! Money, prices and quantities are integers with their unit in the type name:
//! [`Cents`] for cash, [`PriceTicks`] for prices (an instrument's tick size in
//! cents converts between the two) and [`Shares`] for quantities. Nothing in the
//! platform uses floating point for any of them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount of cash in cents. Signed so that deltas and debits are natural.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cents(pub i64);

/// A price in ticks of its instrument. Always positive on a real order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PriceTicks(pub i64);

/// A quantity of shares. Always positive on a real order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Shares(pub i64);

/// An order, unique across the platform. Derived deterministically from the
/// user and the client order id, so a retried submit maps to the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderId(pub u64);

/// A registered user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserId(pub u64);

/// A cash-and-holdings account. Every user owns exactly one, with the same number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(pub u64);

impl From<UserId> for AccountId {
    fn from(user: UserId) -> Self {
        AccountId(user.0)
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Which side of the book an order is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// The side an order of this side trades against.
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// How an order executes.
///
/// - `Market`: takes liquidity at any price until filled; the unfilled remainder
///   is canceled (it never rests).
/// - `Limit`: takes liquidity up to its limit price; the remainder rests.
/// - `Ioc` (immediate or cancel): a limit order whose remainder is canceled.
/// - `Fok` (fill or kill): a limit order that fills completely at once or not at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderType {
    Market,
    Limit,
    Ioc,
    Fok,
}

impl OrderType {
    /// Whether this type carries a limit price.
    pub fn has_limit(self) -> bool {
        !matches!(self, OrderType::Market)
    }
}

/// Why an order stopped being live without being completely filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CloseReason {
    /// Canceled at the owner's request.
    Canceled,
    /// The unfilled remainder of a market or IOC order.
    Expired,
    /// A FOK order that could not fill completely.
    Killed,
    /// The engine refused it (for example a duplicate order id).
    Rejected,
}

/// An order's lifecycle status as the orders service reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OrderStatus {
    Accepted,
    PartiallyFilled,
    Filled,
    Canceled,
    Rejected,
}

impl OrderStatus {
    /// Whether the order can change no more.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Filled | OrderStatus::Canceled | OrderStatus::Rejected)
    }
}

/// A tradable instrument.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instrument {
    pub symbol: String,
    /// The size of one price tick in cents.
    pub tick_cents: i64,
    /// Orders must be a whole number of lots.
    pub lot_shares: i64,
    /// The price band: limit prices outside it are refused, and a market buy
    /// reserves cash at the band's top so that any fill is covered.
    pub min_price_ticks: i64,
    pub max_price_ticks: i64,
    /// The largest order, in shares ([`Instrument::DEFAULT_MAX_ORDER_QTY`] unless set).
    pub max_order_qty: i64,
    /// The largest order's cash value: quantity times its limit price, or times
    /// the band's top for a market buy ([`Instrument::DEFAULT_MAX_ORDER_NOTIONAL_CENTS`]
    /// unless set). Below `i64::MAX`, so no accepted order's arithmetic can overflow.
    pub max_order_notional_cents: i64,
}

/// The most cash one account may hold through deposits: $10 trillion. A
/// deposit that would take an account beyond it is refused. (Trading moves
/// cash between accounts and never creates it, so every balance stays below
/// the platform's total, the sum of its deposits.)
pub const MAX_ACCOUNT_CASH_CENTS: i64 = 1_000_000_000_000_000;

/// The most shares of one symbol one account may hold through deposits.
pub const MAX_ACCOUNT_SHARES: i64 = 1_000_000_000_000;

/// Why an order's quantity and price are refused by its instrument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderLimitError {
    #[error("qty: {qty} is not a positive number of shares")]
    QtyNotPositive { qty: i64 },
    #[error("qty: {qty} is not a multiple of the lot of {lot} shares")]
    QtyOffLot { qty: i64, lot: i64 },
    #[error("qty: {qty} is above the largest order of {max} shares")]
    QtyTooLarge { qty: i64, max: i64 },
    #[error("notional: {qty} shares at {price_cents} cents is above the largest order of {max} cents")]
    NotionalTooLarge { qty: i64, price_cents: i64, max: i64 },
}

impl Instrument {
    /// An instrument; prices are given in ticks.
    /// Orders of at most a million shares by default.
    pub const DEFAULT_MAX_ORDER_QTY: i64 = 1_000_000;
    /// Orders worth at most $1 billion by default.
    pub const DEFAULT_MAX_ORDER_NOTIONAL_CENTS: i64 = 100_000_000_000;

    /// An instrument; prices are given in ticks; the default order limits.
    pub fn new(symbol: &str, tick_cents: i64, lot_shares: i64, min_price_ticks: i64, max_price_ticks: i64) -> Self {
        Instrument {
            symbol: symbol.to_string(),
            tick_cents,
            lot_shares,
            min_price_ticks,
            max_price_ticks,
            max_order_qty: Instrument::DEFAULT_MAX_ORDER_QTY,
            max_order_notional_cents: Instrument::DEFAULT_MAX_ORDER_NOTIONAL_CENTS,
        }
    }

    /// Checks the instrument is coherent; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let sym_ok = !self.symbol.is_empty()
            && self.symbol.len() <= 12
            && self.symbol.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
        if !sym_ok {
            return Err(format!("instrument symbol {:?}: 1-12 of A-Z, 0-9", self.symbol));
        }
        if self.tick_cents <= 0 {
            return Err(format!("instrument {}: tick_cents must be positive", self.symbol));
        }
        if self.lot_shares <= 0 {
            return Err(format!("instrument {}: lot_shares must be positive", self.symbol));
        }
        if self.min_price_ticks <= 0 || self.max_price_ticks < self.min_price_ticks {
            return Err(format!("instrument {}: need 0 < min_price_ticks <= max_price_ticks", self.symbol));
        }
        if self.max_price_ticks.checked_mul(self.tick_cents).is_none() {
            return Err(format!("instrument {}: the band's top in cents overflows i64", self.symbol));
        }
        if self.max_order_qty <= 0 || self.max_order_qty % self.lot_shares != 0 {
            return Err(format!("instrument {}: max_order_qty must be a positive multiple of the lot", self.symbol));
        }
        let at_top = self.max_order_qty.checked_mul(self.max_price_ticks).and_then(|c| c.checked_mul(self.tick_cents));
        if at_top.is_none() {
            // Fills of a sell can be at any price of the band: its notional must fit too.
            return Err(format!("instrument {}: max_order_qty at the band's top overflows i64 cents", self.symbol));
        }
        if self.max_order_notional_cents <= 0 {
            return Err(format!("instrument {}: max_order_notional_cents must be positive", self.symbol));
        }
        Ok(())
    }

    /// The cash value of `qty` shares at `price`; None when it overflows i64 cents.
    pub fn notional(&self, price: PriceTicks, qty: Shares) -> Option<Cents> {
        price.0.checked_mul(self.tick_cents).and_then(|c| c.checked_mul(qty.0)).map(Cents)
    }

    /// Checks an order of `qty` shares whose cash is counted at `price`
    /// (its limit, or the band's top for a market buy) against the lot and
    /// the order limits; returns its notional. Every accepted order passed
    /// this, so its arithmetic fits i64 everywhere downstream.
    pub fn check_order(&self, price: PriceTicks, qty: Shares) -> Result<Cents, OrderLimitError> {
        if qty.0 <= 0 {
            return Err(OrderLimitError::QtyNotPositive { qty: qty.0 });
        }
        if qty.0 % self.lot_shares != 0 {
            return Err(OrderLimitError::QtyOffLot { qty: qty.0, lot: self.lot_shares });
        }
        if qty.0 > self.max_order_qty {
            return Err(OrderLimitError::QtyTooLarge { qty: qty.0, max: self.max_order_qty });
        }
        let price_cents = price.0.saturating_mul(self.tick_cents);
        match self.notional(price, qty) {
            Some(n) if n.0 <= self.max_order_notional_cents => Ok(n),
            _ => Err(OrderLimitError::NotionalTooLarge { qty: qty.0, price_cents, max: self.max_order_notional_cents }),
        }
    }

    /// Converts a price in cents to ticks, refusing prices off the tick grid.
    pub fn to_ticks(&self, price_cents: i64) -> Option<PriceTicks> {
        (price_cents % self.tick_cents == 0).then(|| PriceTicks(price_cents / self.tick_cents))
    }
}

/// Derives the order id of a user's client order id (FNV-1a, 64 bits), so that a
/// retried submit is recognised as the same order everywhere, even across restarts.
pub fn order_id_for(user: UserId, client_order_id: &str) -> OrderId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.0.to_le_bytes().iter().chain(client_order_id.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    OrderId(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notional_is_integer_cents() {
        let inst = Instrument::new("ACME", 5, 10, 1, 100_000);
        assert_eq!(inst.notional(PriceTicks(2_001), Shares(30)), Some(Cents(300_150)));
        assert_eq!(inst.notional(PriceTicks(i64::MAX / 2), Shares(30)), None);
        assert_eq!(inst.to_ticks(10_005), Some(PriceTicks(2_001)));
        assert_eq!(inst.to_ticks(10_003), None);
    }

    #[test]
    fn order_limits() {
        let mut inst = Instrument::new("ACME", 5, 10, 1, 100_000);
        inst.max_order_qty = 1_000;
        inst.max_order_notional_cents = 1_000_000;
        assert_eq!(inst.check_order(PriceTicks(100), Shares(1_000)), Ok(Cents(500_000)));
        assert_eq!(inst.check_order(PriceTicks(100), Shares(0)), Err(OrderLimitError::QtyNotPositive { qty: 0 }));
        assert!(matches!(inst.check_order(PriceTicks(100), Shares(15)), Err(OrderLimitError::QtyOffLot { .. })));
        assert!(matches!(inst.check_order(PriceTicks(100), Shares(1_010)), Err(OrderLimitError::QtyTooLarge { .. })));
        assert!(matches!(
            inst.check_order(PriceTicks(201), Shares(1_000)),
            Err(OrderLimitError::NotionalTooLarge { .. })
        ));
        inst.max_order_qty = i64::MAX - i64::MAX % 10;
        inst.max_order_notional_cents = i64::MAX;
        assert!(matches!(
            inst.check_order(PriceTicks(i64::MAX / 5), Shares(20)),
            Err(OrderLimitError::NotionalTooLarge { .. })
        ));
    }

    #[test]
    fn order_ids_differ_by_user_and_client_id() {
        let a = order_id_for(UserId(1), "c-1");
        assert_eq!(a, order_id_for(UserId(1), "c-1"));
        assert_ne!(a, order_id_for(UserId(2), "c-1"));
        assert_ne!(a, order_id_for(UserId(1), "c-2"));
    }
}
