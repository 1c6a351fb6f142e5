//! The hostile client: mixes malformed and extreme requests into the load,
//! each one the platform must refuse without effect. Orders with i64-extreme,
//! zero or negative quantities and prices, prices off the tick or outside the
//! band, unknown, lower-case and 100,000-character symbols, enum numbers that
//! name nothing; deposits that would overflow an account or are negative;
//! cancels of other users' orders (their ids are derived from user id and
//! client order id, which a client can compute); logins with wrong passwords
//! and calls with forged tokens; quotes and market data of symbols that do not
//! exist. It never sends a valid request, so its account must end exactly as
//! it was set up, and every request must be refused (a request that fails for
//! a reason of the world, unavailable or timed out, proves nothing either way).

use super::common::{after, Arrivals, Rng};
use super::params::Reader;
use super::{Agent, AgentKind, Event, Intent, SymbolSpec, View};

/// Parameters of a `hostile` population.
#[derive(Clone, Debug, PartialEq)]
pub struct HostileParams {
    /// Mean hostile requests per second (Poisson arrivals). Default 2.0.
    pub rate_per_s: f64,
    /// Cancels and forged tokens aim at the users with these ids and below
    /// (user ids are the registration order). Default 10.
    pub victims_max: u64,
}

impl Default for HostileParams {
    fn default() -> Self {
        HostileParams { rate_per_s: 2.0, victims_max: 10 }
    }
}

const KEYS: &[&str] = &["rate_per_s", "victims_max"];

impl HostileParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<HostileParams, String> {
        let d = HostileParams::default();
        let mut r = Reader::new("hostile", table, KEYS)?;
        let p = HostileParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, false)?,
            victims_max: r.int("victims_max", d.victims_max as i64, 1, 1_000_000)? as u64,
        };
        r.finish();
        Ok(p)
    }
}

/// One request the platform must refuse, with its fields as a client sends them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostileRequest {
    Submit {
        client_order_id: String,
        symbol: String,
        side: i32,
        order_type: i32,
        price_cents: i64,
        qty: i64,
    },
    Deposit {
        cents: i64,
        request_id: String,
        symbol: String,
        qty: i64,
    },
    /// A cancel of another user's order: `victim` and the client order id `t<tag>` make its id.
    CancelTheirs {
        victim: u64,
        tag: u64,
    },
    /// A read of another user's portfolio with a token signed by a key that is not the platform's.
    ForgedToken {
        victim: u64,
    },
    Login {
        username: String,
        password: String,
    },
    Quote {
        symbol: String,
    },
    MarketData {
        symbols: Vec<String>,
    },
}

impl HostileRequest {
    /// The name of the request's kind (what the summary counts it under).
    pub fn kind(&self) -> &'static str {
        match self {
            HostileRequest::Submit { .. } => "submit",
            HostileRequest::Deposit { .. } => "deposit",
            HostileRequest::CancelTheirs { .. } => "cancel_theirs",
            HostileRequest::ForgedToken { .. } => "forged_token",
            HostileRequest::Login { .. } => "login",
            HostileRequest::Quote { .. } => "quote",
            HostileRequest::MarketData { .. } => "market_data",
        }
    }
}

/// A hostile client.
pub struct Hostile {
    p: HostileParams,
    rng: Rng,
    symbols: Vec<SymbolSpec>,
    arrivals: Arrivals,
    sent: u64,
}

/// Symbols no instrument has: unknown, lower case, empty, enormous, not ASCII.
fn bad_symbol(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => "NOPE".into(),
        1 => "acme".into(),
        2 => String::new(),
        3 => "X".repeat(100_000),
        4 => "ÄCME🦀".into(),
        _ => "ACME.>".into(),
    }
}

/// Quantities no order may have: zero, negative, i64's ends (beyond any limit).
fn bad_qty(rng: &mut Rng) -> i64 {
    [0, -1, -1_000, i64::MIN, i64::MAX, i64::MAX - 1][rng.below(6) as usize]
}

impl Hostile {
    pub(crate) fn new(p: HostileParams, seed: u64, symbols: &[SymbolSpec]) -> Hostile {
        let arrivals = Arrivals::new(p.rate_per_s);
        Hostile { p, rng: Rng::new(seed), symbols: symbols.to_vec(), arrivals, sent: 0 }
    }

    /// A submit with exactly one field broken (the rest valid), so that the
    /// refusal is for that field.
    fn bad_submit(&mut self) -> HostileRequest {
        let s = self.symbols[self.rng.below(self.symbols.len() as u64) as usize].clone();
        self.sent += 1;
        let (mut symbol, mut side, mut order_type) = (s.symbol.clone(), 1 + self.rng.below(2) as i32, 2);
        let (mut price_cents, mut qty) = (s.start_price_cents, s.lot_shares);
        let mut client_order_id = format!("h{}", self.sent);
        match self.rng.below(7) {
            0 => qty = bad_qty(&mut self.rng),
            1 => {
                price_cents =
                    [0, -1, i64::MIN, i64::MAX, s.max_price_cents + s.tick_cents, s.min_price_cents - s.tick_cents]
                        [self.rng.below(6) as usize]
            }
            2 if s.tick_cents > 1 => price_cents = s.start_price_cents + 1,
            2 | 3 => symbol = bad_symbol(&mut self.rng),
            4 => side = [0, 3, -1, i32::MAX][self.rng.below(4) as usize],
            5 => order_type = [0, 5, -7, i32::MIN][self.rng.below(4) as usize],
            _ => client_order_id = if self.rng.percent(50) { String::new() } else { "c".repeat(65) },
        }
        HostileRequest::Submit { client_order_id, symbol, side, order_type, price_cents, qty }
    }

    fn bad_deposit(&mut self) -> HostileRequest {
        self.sent += 1;
        let request_id = format!("h{}", self.sent);
        let s = &self.symbols[self.rng.below(self.symbols.len() as u64) as usize];
        match self.rng.below(5) {
            // Beyond any account's limit: refused before anything is recorded.
            0 => HostileRequest::Deposit { cents: i64::MAX, request_id, symbol: String::new(), qty: 0 },
            1 => HostileRequest::Deposit {
                cents: [0, -1, i64::MIN][self.rng.below(3) as usize],
                request_id,
                symbol: String::new(),
                qty: 0,
            },
            2 => HostileRequest::Deposit { cents: 0, request_id, symbol: bad_symbol(&mut self.rng), qty: s.lot_shares },
            3 => {
                HostileRequest::Deposit { cents: 0, request_id, symbol: s.symbol.clone(), qty: bad_qty(&mut self.rng) }
            }
            _ => HostileRequest::Deposit { cents: 100, request_id: "r".repeat(200), symbol: String::new(), qty: 0 },
        }
    }

    /// A tag another agent has likely used lately: agents number their
    /// orders a few a second, and their live orders are the recent ones.
    fn recent_tag(&mut self, now_ms: u64) -> u64 {
        const TAGS_PER_S: u64 = 5;
        let newest = 1 + now_ms * TAGS_PER_S / 1_000;
        let oldest = (newest / 2).max(1);
        oldest + self.rng.below(newest - oldest + 1)
    }

    fn draw(&mut self, now_ms: u64) -> HostileRequest {
        let victim = 1 + self.rng.below(self.p.victims_max);
        match self.rng.below(10) {
            0..=2 => self.bad_submit(),
            3 | 4 => self.bad_deposit(),
            5 => HostileRequest::CancelTheirs { victim, tag: self.recent_tag(now_ms) },
            6 => HostileRequest::ForgedToken { victim },
            7 => HostileRequest::Login {
                username: ["noise-0-0", "market_maker-0-0", "nobody-here", "x"][self.rng.below(4) as usize].into(),
                password: ["agent-password-not", "", "p".repeat(500).as_str()][self.rng.below(3) as usize].into(),
            },
            8 => HostileRequest::Quote { symbol: bad_symbol(&mut self.rng) },
            _ => HostileRequest::MarketData { symbols: vec![bad_symbol(&mut self.rng)] },
        }
    }
}

impl Agent for Hostile {
    fn start(&mut self, now_us: u64) -> u64 {
        self.arrivals.first(&mut self.rng, now_us)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        out.push(Intent::Hostile(self.draw(view.now_ms)));
        self.arrivals.advance(&mut self.rng);
        Some(after(view.now_us, self.arrivals.next_us))
    }

    fn observe(&mut self, _: &Event<'_>) {}

    fn kind(&self) -> AgentKind {
        AgentKind::Hostile
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit;
    use super::*;

    #[test]
    fn every_request_is_one_the_platform_must_refuse() {
        let symbols = testkit::symbols();
        let mut h = Hostile::new(HostileParams::default(), 7, &symbols);
        let mut kinds = std::collections::BTreeSet::new();
        for i in 0..2_000 {
            let r = h.draw(i * 10);
            kinds.insert(r.kind());
            if let HostileRequest::Submit { symbol, side, order_type, price_cents, qty, client_order_id } = &r {
                let Some(s) = symbols.iter().find(|s| &s.symbol == symbol) else { continue };
                let valid = (1..=2).contains(side)
                    && (1..=4).contains(order_type)
                    && *qty > 0
                    && qty % s.lot_shares == 0
                    && *qty <= 1_000_000
                    && (s.min_price_cents..=s.max_price_cents).contains(price_cents)
                    && price_cents % s.tick_cents == 0
                    && (1..=64).contains(&client_order_id.len());
                assert!(!valid, "a valid order slipped in: {r:?}");
            }
            if let HostileRequest::Deposit { cents, symbol, qty, request_id } = &r {
                let valid_cash = symbol.is_empty() && *cents > 0 && *cents < i64::MAX && *qty == 0;
                assert!(!valid_cash || request_id.len() > 128, "a valid deposit slipped in: {r:?}");
                let share = symbols.iter().any(|s| &s.symbol == symbol) && *qty > 0 && *qty < i64::MAX - 1;
                assert!(!share, "a valid share deposit slipped in: {r:?}");
            }
        }
        assert_eq!(kinds.len(), 7, "every kind drawn: {kinds:?}");
    }
}
