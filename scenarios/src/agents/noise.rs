//! The noise trader: random side and instrument, mostly passive limits a few
//! ticks from the reference price, some marketable limits and market orders,
//! and random cancels of its own old orders. It gives the book depth on both sides.

use super::common::{after, ceil_half, floor_half, Arrivals, Core};
use super::params::{ordered, Reader};
use super::{Agent, AgentKind, Event, Intent, OrderKind, Side, SymbolSpec, View};

/// Parameters of a `noise` population.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseParams {
    /// Mean decisions per second (Poisson arrivals). Default 2.0.
    pub rate_per_s: f64,
    /// Smallest order, in lots (sizes are uniform in `lots_min..=lots_max`). Default 1.
    pub lots_min: i64,
    /// Largest order, in lots. Default 5.
    pub lots_max: i64,
    /// A passive limit rests 1 to `offset_ticks_max` ticks (uniform) on its own side
    /// of the reference price (mid, else last trade, else the start price; a mid
    /// between two ticks counts from the tick on the order's side). Default 5.
    pub offset_ticks_max: i64,
    /// Percent of orders that are market orders. Default 2.
    pub market_pct: u32,
    /// Percent of orders that are marketable limits, priced `cross_ticks` through
    /// the opposite best price. Default 8. (The rest are passive limits.)
    pub marketable_pct: u32,
    /// How far through the opposite best price a marketable limit goes, in ticks. Default 2.
    pub cross_ticks: i64,
    /// Percent chance, at each wake, to cancel one of its orders (chosen at random
    /// among those at least `cancel_min_age_ms` old). Default 30.
    pub cancel_pct: u32,
    /// Orders younger than this are never canceled at random. Default 2000.
    pub cancel_min_age_ms: u64,
    /// At most this many live orders: at the limit, a wake cancels the oldest
    /// instead of submitting. Default 10.
    pub max_open: i64,
}

impl Default for NoiseParams {
    fn default() -> Self {
        NoiseParams {
            rate_per_s: 2.0,
            lots_min: 1,
            lots_max: 5,
            offset_ticks_max: 5,
            market_pct: 2,
            marketable_pct: 8,
            cross_ticks: 2,
            cancel_pct: 30,
            cancel_min_age_ms: 2000,
            max_open: 10,
        }
    }
}

const KEYS: &[&str] = &[
    "rate_per_s",
    "lots_min",
    "lots_max",
    "offset_ticks_max",
    "market_pct",
    "marketable_pct",
    "cross_ticks",
    "cancel_pct",
    "cancel_min_age_ms",
    "max_open",
];

impl NoiseParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<NoiseParams, String> {
        let d = NoiseParams::default();
        let mut r = Reader::new("noise", table, KEYS)?;
        let p = NoiseParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, false)?,
            lots_min: r.int("lots_min", d.lots_min, 1, 1_000_000)?,
            lots_max: r.int("lots_max", d.lots_max, 1, 1_000_000)?,
            offset_ticks_max: r.int("offset_ticks_max", d.offset_ticks_max, 1, 1_000_000)?,
            market_pct: r.percent("market_pct", d.market_pct)?,
            marketable_pct: r.percent("marketable_pct", d.marketable_pct)?,
            cross_ticks: r.int("cross_ticks", d.cross_ticks, 0, 1_000_000)?,
            cancel_pct: r.percent("cancel_pct", d.cancel_pct)?,
            cancel_min_age_ms: r.ms("cancel_min_age_ms", d.cancel_min_age_ms, 0, 86_400_000)?,
            max_open: r.int("max_open", d.max_open, 1, 10_000)?,
        };
        r.finish();
        ordered("lots_min", p.lots_min, "lots_max", p.lots_max)?;
        if p.market_pct + p.marketable_pct > 100 {
            return Err(format!(
                "marketable_pct: market_pct + marketable_pct must be at most 100 (got {})",
                p.market_pct + p.marketable_pct
            ));
        }
        Ok(p)
    }
}

/// A noise trader.
pub struct Noise {
    p: NoiseParams,
    core: Core,
    arrivals: Arrivals,
}

impl Noise {
    pub(crate) fn new(p: NoiseParams, seed: u64, symbols: &[SymbolSpec]) -> Noise {
        let arrivals = Arrivals::new(p.rate_per_s);
        Noise { p, core: Core::new(seed, symbols), arrivals }
    }

    /// Cancels one old order at random (sometimes), and the oldest one when at `max_open`.
    /// Returns whether there is room for a new order.
    fn cancel_some(&mut self, now_ms: u64, out: &mut Vec<Intent>) -> bool {
        let ledger = &self.core.ledger;
        let old: Vec<u64> = ledger
            .live
            .iter()
            .filter(|(_, l)| !l.canceling && now_ms.saturating_sub(l.placed_ms) >= self.p.cancel_min_age_ms)
            .map(|(t, _)| *t)
            .collect();
        if !old.is_empty() && self.core.rng.percent(self.p.cancel_pct) {
            let tag = old[self.core.rng.below(old.len() as u64) as usize];
            self.core.ledger.cancel(out, now_ms, tag);
        }
        let active: Vec<u64> = self.core.ledger.live.iter().filter(|(_, l)| !l.canceling).map(|(t, _)| *t).collect();
        if active.len() as i64 >= self.p.max_open {
            // Tags increase, so the first is the oldest.
            self.core.ledger.cancel(out, now_ms, active[0]);
            return false;
        }
        true
    }

    /// Draws one order and submits it, on the other side if the drawn side is
    /// not affordable (no cash or no shares), or not at all if neither is.
    fn submit_one(&mut self, view: &View<'_>, out: &mut Vec<Intent>) {
        let rng = &mut self.core.rng;
        let i = rng.below(self.core.instrs.len() as u64) as usize;
        let first = rng.side();
        let want = rng.range(self.p.lots_min, self.p.lots_max);
        let roll = rng.below(100) as u32;
        let offset = rng.range(1, self.p.offset_ticks_max);
        let ins = &self.core.instrs[i];
        let sv = view.market.get(&ins.symbol).cloned().unwrap_or_default();
        let reference = ins.reference_half_ticks(&sv, ins.start_ticks);
        let (bid, ask) = ins.touch(&sv);
        for side in [first, first.opposite()] {
            let (kind, price) = if roll < self.p.market_pct {
                (OrderKind::Market, 0)
            } else if roll < self.p.market_pct + self.p.marketable_pct {
                let p = match side {
                    Side::Buy => ask.unwrap_or(ceil_half(reference)) + self.p.cross_ticks,
                    Side::Sell => bid.unwrap_or(floor_half(reference)) - self.p.cross_ticks,
                };
                (OrderKind::Limit, ins.clamp(p))
            } else {
                let p = match side {
                    Side::Buy => floor_half(reference) - offset,
                    Side::Sell => ceil_half(reference) + offset,
                };
                (OrderKind::Limit, ins.clamp(p))
            };
            let lots = match side {
                Side::Buy => self.core.ledger.buy_lots(view, &self.core.instrs, ins, kind, price, want),
                Side::Sell => self.core.ledger.sell_lots(view, ins, want),
            };
            if lots > 0 {
                self.core.ledger.submit(out, view.now_ms, ins, side, kind, price, lots);
                return;
            }
        }
    }
}

impl Agent for Noise {
    fn start(&mut self, now_us: u64) -> u64 {
        let first = self.arrivals.first(&mut self.core.rng, now_us);
        self.core.ask(first)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        self.core.begin(view, out);
        if self.cancel_some(view.now_ms, out) {
            self.submit_one(view, out);
        }
        self.arrivals.advance(&mut self.core.rng);
        Some(self.core.ask(after(view.now_us, self.arrivals.next_us)))
    }

    fn observe(&mut self, event: &Event<'_>) {
        self.core.ledger.observe(event);
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Noise
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Harness};
    use super::super::{AgentConfig, AgentParams};
    use super::*;

    fn noise(p: NoiseParams, seed: u64) -> Box<dyn Agent> {
        AgentConfig { kind: AgentKind::Noise, params: AgentParams::Noise(p) }.build(seed, 0, &testkit::symbols())
    }

    #[test]
    fn randomized_harness_respects_the_rules() {
        for seed in 1..=4 {
            let mut h = testkit::harness(seed * 1000, seed > 2);
            h.run(noise(NoiseParams::default(), seed).as_mut(), 4000);
            let s = &h.stats;
            assert!(s.submits > 2000 && s.buys > 500 && s.sells > 500, "{s:?}");
            assert!(s.market > 0 && s.limit > 0 && s.cancels > 0 && s.fills > 0, "{s:?}");
            if seed > 2 {
                assert!(s.cash_bound > 0 && s.shares_bound > 0, "the budget never bound: {s:?}");
            }
        }
    }

    #[test]
    fn deterministic_given_seed_and_inputs() {
        testkit::assert_deterministic(|seed| noise(NoiseParams::default(), seed));
    }

    #[test]
    fn cancels_some_of_its_old_orders() {
        // Nothing trades and max_open never binds: orders leave only by the random cancels.
        let p = NoiseParams { market_pct: 0, marketable_pct: 0, max_open: 10_000, ..NoiseParams::default() };
        let mut h = Harness::new(3, testkit::CASH_CENTS * 100, testkit::holdings());
        h.fill_pct = 0;
        h.run(noise(p.clone(), 5).as_mut(), 1000);
        let s = &h.stats;
        // About cancel_pct of the wakes, less the first few seconds with nothing old enough.
        assert!((200..=400).contains(&s.cancels), "{s:?}");
        let youngest = s.cancel_age_min_ms.expect("some cancels");
        assert!(youngest >= p.cancel_min_age_ms, "canceled an order {youngest} ms old");
    }

    #[test]
    fn cancels_its_oldest_at_max_open() {
        let p = NoiseParams { cancel_pct: 0, max_open: 4, ..NoiseParams::default() };
        let mut h = Harness::new(4, testkit::CASH_CENTS, testkit::holdings());
        h.fill_pct = 0;
        h.run(noise(p, 6).as_mut(), 300);
        let s = &h.stats;
        assert!(s.cancels > 50, "{s:?}");
        assert_eq!(s.active_max, 4, "live orders (not being canceled) beyond max_open 4: {s:?}");
    }

    #[test]
    fn passive_orders_rest_near_the_mid() {
        let p = NoiseParams { market_pct: 0, marketable_pct: 0, ..NoiseParams::default() };
        let mut agent = noise(p, 9);
        let mut w = testkit::Wakes::new(agent.as_mut());
        w.set_book("ACME", 9_990, 10_010);
        w.set_book("BOLT", 2_490, 2_510);
        let mut seen = 0;
        for _ in 0..200 {
            for intent in w.wake() {
                if let Intent::Submit { symbol, side, price_cents, kind, .. } = intent {
                    assert_eq!(kind, OrderKind::Limit);
                    let (mid, tick) = if symbol == "ACME" { (10_000, 1) } else { (2_500, 5) };
                    let off = (price_cents - mid) / tick;
                    match side {
                        Side::Buy => assert!((-5..=-1).contains(&off), "buy {off} ticks from mid"),
                        Side::Sell => assert!((1..=5).contains(&off), "sell {off} ticks from mid"),
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen > 100, "{seen} orders");
    }

    #[test]
    fn nothing_to_trade_with_means_no_orders() {
        let mut h = Harness::new(1, 0, Default::default());
        h.deposits = false;
        h.run(noise(NoiseParams::default(), 1).as_mut(), 500);
        assert_eq!(h.stats.submits, 0, "{:?}", h.stats);
    }
}
