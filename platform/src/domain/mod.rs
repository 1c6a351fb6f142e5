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
}

impl Instrument {
    /// An instrument; prices are given in ticks.
    pub fn new(symbol: &str, tick_cents: i64, lot_shares: i64, min_price_ticks: i64, max_price_ticks: i64) -> Self {
        Instrument { symbol: symbol.to_string(), tick_cents, lot_shares, min_price_ticks, max_price_ticks }
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
        Ok(())
    }

    /// The cash value of `qty` shares at `price`.
    pub fn notional(&self, price: PriceTicks, qty: Shares) -> Cents {
        let cents = price
            .0
            .checked_mul(self.tick_cents)
            .and_then(|c| c.checked_mul(qty.0))
            .expect("notional overflows i64 cents");
        Cents(cents)
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
        let inst = Instrument {
            symbol: "ACME".into(),
            tick_cents: 5,
            lot_shares: 10,
            min_price_ticks: 1,
            max_price_ticks: 100_000,
        };
        assert_eq!(inst.notional(PriceTicks(2_001), Shares(30)), Cents(300_150));
        assert_eq!(inst.to_ticks(10_005), Some(PriceTicks(2_001)));
        assert_eq!(inst.to_ticks(10_003), None);
    }

    #[test]
    fn order_ids_differ_by_user_and_client_id() {
        let a = order_id_for(UserId(1), "c-1");
        assert_eq!(a, order_id_for(UserId(1), "c-1"));
        assert_ne!(a, order_id_for(UserId(2), "c-1"));
        assert_ne!(a, order_id_for(UserId(1), "c-2"));
    }
}
