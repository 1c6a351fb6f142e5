//! Market agents: seeded, pure decision logic.
//!
//! Agents decide; the driver acts. An agent does no I/O and reads no clock and no
//! OS randomness: the driver calls [`Agent::start`], then [`Agent::wake`] at each
//! time the agent asked for (open loop: the schedule never waits for replies),
//! hands it a [`View`] of what it has observed, sends its [`Intent`]s through the
//! gateway, and feeds back what happened through [`Agent::observe`]. Given its
//! seed and the same inputs, an agent makes the same decisions and asks for the
//! same wake times.
//!
//! Every agent:
//! - draws its Poisson inter-arrival times (whole ms, at least 1) from its own
//!   SplitMix64 PRNG seeded with its derived seed; the arrival times depend on
//!   the seed only (a driver that wakes an agent late gets the arrivals already
//!   due replayed 1 ms apart, none dropped);
//! - prices on the tick grid inside the instrument's band, in whole lots;
//! - never sells more than its believed holdings minus what its open sells
//!   commit, and never buys for more than its believed cash minus what its open
//!   buys commit (a limit buy commits its limit, a market buy the band's top, as
//!   the platform reserves). `View::cash_cents` is the *total* believed cash,
//!   reserved or not; a driver that passes the free cash only makes agents
//!   more careful. Orders being canceled commit until they are done;
//! - numbers its orders with tags 1, 2, 3, …; decides to cancel an order at most
//!   once, but sends the cancel again every 2 s while the order is not done (a
//!   cancel lost to a fault must not leave a stale order in the book for good);
//! - trusts its own record of its orders over `View::open` where they differ
//!   (the driver may show an order only once its submit is under way), taking
//!   the larger commitment of the two;
//! - computes money and prices in integers (cents, ticks, shares, basis points).
//!
//! ## Layout
//! - `common`: PRNG, Poisson schedule, instruments in ticks, the order ledger.
//! - `params`: reading a population's TOML table.
//! - one file per kind: [`noise`], [`market_maker`], [`momentum`], [`value`], [`whale`],
//!   [`all_in`], [`hostile`], each with its parameter struct (every parameter documented with its default).

use std::collections::BTreeMap;

pub mod all_in;
#[cfg(test)]
mod calm;
mod common;
pub mod hostile;
pub mod market_maker;
pub mod momentum;
pub mod noise;
mod params;
#[cfg(test)]
mod testkit;
pub mod value;
pub mod whale;

pub use all_in::AllInParams;
pub use hostile::{HostileParams, HostileRequest};
pub use market_maker::MarketMakerParams;
pub use momentum::MomentumParams;
pub use noise::NoiseParams;
pub use value::ValueParams;
pub use whale::WhaleParams;

/// A decision the agent wants executed at the current wake time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// `tag` is the agent's own id for the order (unique per agent, e.g. 1, 2, 3…); the driver
    /// maps it to a client order id and reports back by tag.
    Submit {
        tag: u64,
        symbol: String,
        side: Side,
        kind: OrderKind,
        price_cents: i64,
        qty: i64,
    },
    Cancel {
        tag: u64,
    },
    /// A request the platform must refuse without effect (the `hostile` kind's only intent).
    Hostile(HostileRequest),
}

/// Which side of the book an order is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    /// The other side.
    pub fn opposite(self) -> Side {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// How an order executes (as the platform's `OrderType`); `price_cents` is 0 for `Market`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderKind {
    Market,
    Limit,
    Ioc,
    Fok,
}

/// Top of book and last trade of one symbol, as seen from market data (prices in cents; None when unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolView {
    /// Best bid (price in cents, shares).
    pub bid: Option<(i64, i64)>,
    /// Best ask (price in cents, shares).
    pub ask: Option<(i64, i64)>,
    /// Price in cents of the last trade.
    pub last: Option<i64>,
}

/// Everything an agent may look at when it wakes.
pub struct View<'a> {
    /// Simulated/real µs since the run started: when the agent is woken.
    pub now_us: u64,
    /// The same moment in whole ms (`now_us / 1000`), for the agents' own ms-grained rules.
    pub now_ms: u64,
    /// By symbol.
    pub market: &'a BTreeMap<String, SymbolView>,
    /// The agent's own cash as it believes it (total, including what open buys reserve).
    pub cash_cents: i64,
    /// Own shares by symbol (as it believes), including what open sells reserve.
    pub holdings: &'a BTreeMap<String, i64>,
    /// Own orders still live, by tag.
    pub open: &'a BTreeMap<u64, OpenOrder>,
}

/// One of the agent's live orders as the driver knows it (`price_cents` 0 for a market order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOrder {
    pub symbol: String,
    pub side: Side,
    pub price_cents: i64,
    pub remaining: i64,
}

/// Feedback the driver passes back.
pub enum Event<'a> {
    /// One of the agent's orders traded.
    Fill { tag: u64, symbol: &'a str, side: Side, price_cents: i64, qty: i64, remaining: i64 },
    /// One of the agent's orders is done (filled, canceled, expired, killed, rejected) or its submit failed.
    Done { tag: u64 },
    /// A trade by anyone (market data).
    Trade { symbol: &'a str, price_cents: i64, qty: i64 },
}

/// A market participant: decides at the times it asks for, never performs I/O.
pub trait Agent: Send {
    /// Called once at the start; returns the time (µs since run start) of the first wake.
    fn start(&mut self, now_us: u64) -> u64;
    /// Called at (or after, if the driver is late) the requested time; appends intents to `out`
    /// and returns the time (µs) of the next wake (strictly after `view.now_us`), or None to stop.
    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64>;
    /// Feedback; may update the agent's state (inventory, momentum signal, …). No intents here:
    /// an agent reacts at its next wake (so reactions are scheduled, keeping the run open-loop).
    fn observe(&mut self, event: &Event<'_>);
    fn kind(&self) -> AgentKind;
}

/// The kinds of agent, named in scenario files in snake case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    Noise,
    MarketMaker,
    Momentum,
    Value,
    Whale,
    AllIn,
    Hostile,
}

impl AgentKind {
    pub const ALL: [AgentKind; 7] = [
        AgentKind::Noise,
        AgentKind::MarketMaker,
        AgentKind::Momentum,
        AgentKind::Value,
        AgentKind::Whale,
        AgentKind::AllIn,
        AgentKind::Hostile,
    ];

    /// The name used in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Noise => "noise",
            AgentKind::MarketMaker => "market_maker",
            AgentKind::Momentum => "momentum",
            AgentKind::Value => "value",
            AgentKind::Whale => "whale",
            AgentKind::AllIn => "all_in",
            AgentKind::Hostile => "hostile",
        }
    }

    pub fn from_name(name: &str) -> Option<AgentKind> {
        AgentKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One instrument an agent may trade, prices in cents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolSpec {
    pub symbol: String,
    pub tick_cents: i64,
    pub lot_shares: i64,
    pub start_price_cents: i64,
    pub min_price_cents: i64,
    pub max_price_cents: i64,
}

impl SymbolSpec {
    /// Checks what agents rely on: a positive tick and lot, a band with at least
    /// one price on the grid, and the start price inside it.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.symbol;
        if self.tick_cents <= 0 || self.lot_shares <= 0 {
            return Err(format!("{s}: tick_cents and lot_shares must be positive"));
        }
        if self.min_price_cents <= 0 || self.max_price_cents < self.min_price_cents {
            return Err(format!("{s}: need 0 < min_price_cents <= max_price_cents"));
        }
        let t = self.tick_cents;
        if (self.max_price_cents / t) * t < self.min_price_cents {
            return Err(format!("{s}: no price on the {t}-cent grid inside the band"));
        }
        if !(self.min_price_cents..=self.max_price_cents).contains(&self.start_price_cents) {
            return Err(format!("{s}: start_price_cents outside the band"));
        }
        Ok(())
    }
}

/// The parameters of one population, parsed from the scenario file's `[[population]]` table
/// (minus the keys the scenario parser owns: `kind`, `count`, `cash_cents`, `holdings`).
/// Unknown keys and bad values are refused with the key and the reason (e.g.
/// "rate_per_s: must be positive (got 0)"); every parameter has a default,
/// documented on the kind's parameter struct.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub kind: AgentKind,
    /// The kind's own parameters; always the variant of `kind`.
    pub params: AgentParams,
}

/// Per-kind parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentParams {
    Noise(NoiseParams),
    MarketMaker(MarketMakerParams),
    Momentum(MomentumParams),
    Value(ValueParams),
    Whale(WhaleParams),
    AllIn(AllInParams),
    Hostile(HostileParams),
}

impl AgentConfig {
    /// Parses a population's parameters for the kind named `kind`.
    pub fn parse(kind: &str, params: &toml::Table) -> Result<AgentConfig, String> {
        let kind = AgentKind::from_name(kind).ok_or_else(|| {
            let names: Vec<_> = AgentKind::ALL.iter().map(|k| k.name()).collect();
            format!("kind: unknown agent kind {kind:?} (one of {})", names.join(", "))
        })?;
        let params = match kind {
            AgentKind::Noise => AgentParams::Noise(NoiseParams::parse(params)?),
            AgentKind::MarketMaker => AgentParams::MarketMaker(MarketMakerParams::parse(params)?),
            AgentKind::Momentum => AgentParams::Momentum(MomentumParams::parse(params)?),
            AgentKind::Value => AgentParams::Value(ValueParams::parse(params)?),
            AgentKind::Whale => AgentParams::Whale(WhaleParams::parse(params)?),
            AgentKind::AllIn => AgentParams::AllIn(AllInParams::parse(params)?),
            AgentKind::Hostile => AgentParams::Hostile(HostileParams::parse(params)?),
        };
        Ok(AgentConfig { kind, params })
    }

    /// The configuration of `kind` with every parameter at its default.
    pub fn default_for(kind: AgentKind) -> AgentConfig {
        let params = match kind {
            AgentKind::Noise => AgentParams::Noise(NoiseParams::default()),
            AgentKind::MarketMaker => AgentParams::MarketMaker(MarketMakerParams::default()),
            AgentKind::Momentum => AgentParams::Momentum(MomentumParams::default()),
            AgentKind::Value => AgentParams::Value(ValueParams::default()),
            AgentKind::Whale => AgentParams::Whale(WhaleParams::default()),
            AgentKind::AllIn => AgentParams::AllIn(AllInParams::default()),
            AgentKind::Hostile => AgentParams::Hostile(HostileParams::default()),
        };
        AgentConfig { kind, params }
    }

    /// Checks the configuration against the instruments its agents will trade
    /// (for a scenario parser to call: `build` panics where this returns an error).
    pub fn check_symbols(&self, symbols: &[SymbolSpec]) -> Result<(), String> {
        if symbols.is_empty() {
            return Err("an agent needs at least one instrument".into());
        }
        for s in symbols {
            s.validate()?;
        }
        if let AgentParams::Whale(WhaleParams { symbol: Some(wanted), .. }) = &self.params {
            if !symbols.iter().any(|s| &s.symbol == wanted) {
                return Err(format!("symbol: unknown symbol {wanted:?}"));
            }
        }
        Ok(())
    }

    /// A new agent. `seed` is the agent's own derived seed (everything it draws
    /// comes from it); `symbols` the instruments it may trade; `index` its number
    /// within the population (not used for decisions: agents of one population differ by seed).
    pub fn build(&self, seed: u64, index: u32, symbols: &[SymbolSpec]) -> Box<dyn Agent> {
        if let Err(e) = self.check_symbols(symbols) {
            panic!("agent {} #{index}: {e}", self.kind.name());
        }
        let agent: Box<dyn Agent> = match &self.params {
            AgentParams::Noise(p) => Box::new(noise::Noise::new(p.clone(), seed, symbols)),
            AgentParams::MarketMaker(p) => Box::new(market_maker::MarketMaker::new(p.clone(), seed, symbols)),
            AgentParams::Momentum(p) => Box::new(momentum::Momentum::new(p.clone(), seed, symbols)),
            AgentParams::Value(p) => Box::new(value::Value::new(p.clone(), seed, symbols)),
            AgentParams::Whale(p) => Box::new(whale::Whale::new(p.clone(), seed, symbols)),
            AgentParams::AllIn(p) => Box::new(all_in::AllIn::new(p.clone(), seed, symbols)),
            AgentParams::Hostile(p) => Box::new(hostile::Hostile::new(p.clone(), seed, symbols)),
        };
        assert_eq!(agent.kind(), self.kind, "AgentConfig's kind and params disagree");
        agent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse::<toml::Table>().expect("test TOML")
    }

    #[test]
    fn empty_tables_give_the_documented_defaults() {
        for kind in AgentKind::ALL {
            let parsed = AgentConfig::parse(kind.name(), &toml::Table::new()).expect("defaults parse");
            assert_eq!(parsed, AgentConfig::default_for(kind), "{kind:?}");
            assert_eq!(parsed.kind, kind);
        }
        let AgentParams::Noise(n) = AgentConfig::parse("noise", &toml::Table::new()).unwrap().params else {
            panic!("noise params")
        };
        assert_eq!((n.rate_per_s, n.lots_min, n.lots_max, n.max_open), (2.0, 1, 5, 10));
        let AgentParams::MarketMaker(m) = AgentConfig::parse("market_maker", &toml::Table::new()).unwrap().params
        else {
            panic!("market maker params")
        };
        assert_eq!((m.half_spread_ticks, m.levels, m.pull_move_bps, m.pull_ms), (2, 2, 500, 10_000));
        let AgentParams::Whale(w) = AgentConfig::parse("whale", &toml::Table::new()).unwrap().params else {
            panic!("whale params")
        };
        assert!(w.at_ms.is_empty() && w.symbol.is_none() && w.children == 1);
    }

    #[test]
    fn values_are_read() {
        let t = table("rate_per_s = 0.5\nlots_min = 2\nlots_max = 3\n");
        let AgentParams::Noise(n) = AgentConfig::parse("noise", &t).unwrap().params else { panic!("noise params") };
        assert_eq!((n.rate_per_s, n.lots_min, n.lots_max), (0.5, 2, 3));
        let t = table("rate_per_s = 3\n");
        let AgentParams::Value(v) = AgentConfig::parse("value", &t).unwrap().params else { panic!("value params") };
        assert_eq!(v.rate_per_s, 3.0);
        let t = table("rate_per_s = 0\nat_ms = [9000, 1000, 1000]\nside = \"sell\"\nsymbol = \"ACME\"\n");
        let AgentParams::Whale(w) = AgentConfig::parse("whale", &t).unwrap().params else { panic!("whale params") };
        assert_eq!(
            (w.at_ms.as_slice(), w.side, w.symbol.as_deref()),
            ([1000, 9000].as_slice(), Some(Side::Sell), Some("ACME"))
        );
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused_by_name() {
        let err = AgentConfig::parse("noise", &table("rate_per_s = 1\nspred = 3\n")).unwrap_err();
        assert!(err.starts_with("spred: unknown key"), "{err}");
        for kind in AgentKind::ALL {
            let err = AgentConfig::parse(kind.name(), &table("bogus = 1\n")).unwrap_err();
            assert!(err.starts_with("bogus: unknown key for a"), "{kind:?}: {err}");
        }
        let err = AgentConfig::parse("hedge_fund", &toml::Table::new()).unwrap_err();
        assert!(err.starts_with("kind: unknown agent kind \"hedge_fund\""), "{err}");
    }

    #[test]
    fn bad_values_are_refused_with_key_and_reason() {
        let cases = [
            ("noise", "rate_per_s = 0", "rate_per_s: must be positive"),
            ("noise", "rate_per_s = -1.5", "rate_per_s: must be positive"),
            ("noise", "rate_per_s = \"fast\"", "rate_per_s: must be a number, not string"),
            ("noise", "lots_max = 2.5", "lots_max: must be an integer, not float"),
            ("noise", "lots_min = 0", "lots_min: must be positive"),
            ("noise", "lots_min = 6", "lots_min: must be at most lots_max (5)"),
            ("noise", "market_pct = 101", "market_pct: must be at most 100"),
            ("noise", "market_pct = 60\nmarketable_pct = 50", "marketable_pct: market_pct + marketable_pct"),
            ("market_maker", "half_spread_ticks = 0", "half_spread_ticks: must be positive"),
            ("market_maker", "widen_factor = 0", "widen_factor: must be positive"),
            ("market_maker", "pull_move_bps = 50", "widen_move_bps: must be at most pull_move_bps (50)"),
            ("momentum", "short_window = 20\nlong_window = 20", "short_window: must be less than long_window"),
            ("momentum", "order_type = \"limit\"", "order_type: \"limit\" is not one of ioc, fok, market"),
            ("value", "reversion_pct = 150", "reversion_pct: must be at most 100"),
            ("value", "shock_prob_bps = -1", "shock_prob_bps: must not be negative"),
            ("whale", "rate_per_s = 0", "rate_per_s: must be positive when at_ms is empty"),
            ("whale", "at_ms = [100, -5]", "at_ms[1]: must not be negative"),
            ("whale", "at_ms = 100", "at_ms: must be a list of integers (ms), not integer"),
            ("whale", "side = \"up\"", "side: \"up\" is not one of buy, sell, random"),
            ("whale", "symbol = \"\"", "symbol: must not be empty"),
            ("whale", "children = 5\nlots = 3", "children: must be at most lots (3)"),
        ];
        for (kind, text, want) in cases {
            let err = AgentConfig::parse(kind, &table(text)).expect_err(text);
            assert!(err.starts_with(want), "{kind} `{text}`: got {err:?}, want {want:?}…");
        }
    }

    #[test]
    fn check_symbols_refuses_an_unknown_whale_symbol() {
        let spec = SymbolSpec {
            symbol: "ACME".into(),
            tick_cents: 1,
            lot_shares: 10,
            start_price_cents: 100,
            min_price_cents: 1,
            max_price_cents: 1000,
        };
        let good = AgentConfig::parse("whale", &table("symbol = \"ACME\"")).unwrap();
        assert_eq!(good.check_symbols(std::slice::from_ref(&spec)), Ok(()));
        let bad = AgentConfig::parse("whale", &table("symbol = \"ZZZ\"")).unwrap();
        assert_eq!(bad.check_symbols(std::slice::from_ref(&spec)), Err("symbol: unknown symbol \"ZZZ\"".to_string()));
        assert!(AgentConfig::default_for(AgentKind::Noise).check_symbols(&[]).is_err());
        let off_band = SymbolSpec { start_price_cents: 5000, ..spec };
        assert!(AgentConfig::default_for(AgentKind::Noise).check_symbols(&[off_band]).is_err());
    }

    #[test]
    fn build_gives_the_configured_kind() {
        let symbols = testkit::symbols();
        for kind in AgentKind::ALL {
            let agent = AgentConfig::default_for(kind).build(1, 0, &symbols);
            assert_eq!(agent.kind(), kind);
        }
    }
}
