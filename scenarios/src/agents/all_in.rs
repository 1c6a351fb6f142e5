//! The all-in trader: every order commits (nearly) all it has. A buy asks
//! for as many lots as its whole free cash covers, a sell offers all its
//! free shares; a resting order is canceled after `hold_ms` and, once its
//! cancel is done, replaced by the next all-in order. So its reservations
//! sit right at the edge of its cash, and each one fits only because the
//! cancel before it released the last: the pattern that, replayed in the
//! wrong order, once kept the portfolio from starting again.

use super::common::{after, Arrivals, Core};
use super::params::Reader;
use super::{Agent, AgentKind, Event, Intent, OrderKind, Side, SymbolSpec, View};

/// Parameters of an `all_in` population.
#[derive(Clone, Debug, PartialEq)]
pub struct AllInParams {
    /// Mean decisions per second (Poisson arrivals). Default 2.0.
    pub rate_per_s: f64,
    /// Percent of its free cash (buys) or free shares (sells) an order commits. Default 100.
    pub commit_pct: u32,
    /// A resting order is canceled once it is this old. Default 400.
    pub hold_ms: u64,
    /// Percent of orders priced through the opposite best price (they trade
    /// at once); the others rest `offset_ticks` behind the best price of
    /// their own side. Default 30.
    pub marketable_pct: u32,
    /// How far a resting order is from the touch, in ticks. Default 1.
    pub offset_ticks: i64,
}

impl Default for AllInParams {
    fn default() -> Self {
        AllInParams { rate_per_s: 2.0, commit_pct: 100, hold_ms: 400, marketable_pct: 30, offset_ticks: 1 }
    }
}

const KEYS: &[&str] = &["rate_per_s", "commit_pct", "hold_ms", "marketable_pct", "offset_ticks"];

impl AllInParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<AllInParams, String> {
        let d = AllInParams::default();
        let mut r = Reader::new("all_in", table, KEYS)?;
        let p = AllInParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, false)?,
            commit_pct: r.percent("commit_pct", d.commit_pct)?,
            hold_ms: r.ms("hold_ms", d.hold_ms, 1, 86_400_000)?,
            marketable_pct: r.percent("marketable_pct", d.marketable_pct)?,
            offset_ticks: r.int("offset_ticks", d.offset_ticks, 0, 1_000_000)?,
        };
        r.finish();
        if p.commit_pct == 0 {
            return Err("commit_pct: must be positive (an all-in trader commits something)".into());
        }
        Ok(p)
    }
}

/// An all-in trader.
pub struct AllIn {
    p: AllInParams,
    core: Core,
    arrivals: Arrivals,
}

impl AllIn {
    pub(crate) fn new(p: AllInParams, seed: u64, symbols: &[SymbolSpec]) -> AllIn {
        let arrivals = Arrivals::new(p.rate_per_s);
        AllIn { p, core: Core::new(seed, symbols), arrivals }
    }

    /// Cancels the orders that rested `hold_ms`; whether one is still live.
    fn cancel_old(&mut self, now_ms: u64, out: &mut Vec<Intent>) -> bool {
        let old: Vec<u64> = self
            .core
            .ledger
            .live
            .iter()
            .filter(|(_, l)| !l.canceling && now_ms.saturating_sub(l.placed_ms) >= self.p.hold_ms)
            .map(|(t, _)| *t)
            .collect();
        for tag in old {
            self.core.ledger.cancel(out, now_ms, tag);
        }
        !self.core.ledger.live.is_empty()
    }

    /// One order committing `commit_pct` of what it has on a random side and
    /// symbol (the other side when that side has nothing to commit).
    fn submit_all_in(&mut self, view: &View<'_>, out: &mut Vec<Intent>) {
        let i = self.core.rng.below(self.core.instrs.len() as u64) as usize;
        let first = self.core.rng.side();
        let marketable = self.core.rng.percent(self.p.marketable_pct);
        let ins = self.core.instrs[i].clone();
        let sv = view.market.get(&ins.symbol).cloned().unwrap_or_default();
        let (bid, ask) = ins.touch(&sv);
        let reference = ins.reference_half_ticks(&sv, ins.start_ticks * 2);
        for side in [first, first.opposite()] {
            let price = match (side, marketable) {
                (Side::Buy, true) => ask.unwrap_or(super::common::ceil_half(reference)) + 1,
                (Side::Sell, true) => bid.unwrap_or(super::common::floor_half(reference)) - 1,
                (Side::Buy, false) => bid.unwrap_or(super::common::floor_half(reference)) - self.p.offset_ticks,
                (Side::Sell, false) => ask.unwrap_or(super::common::ceil_half(reference)) + self.p.offset_ticks,
            };
            let price = ins.clamp(price);
            let all = match side {
                Side::Buy => {
                    self.core.ledger.buy_lots(view, &self.core.instrs, &ins, OrderKind::Limit, price, i64::MAX)
                }
                Side::Sell => self.core.ledger.sell_lots(view, &ins, i64::MAX),
            };
            // Integer percent of whole lots, at least one when any.
            let lots = (i128::from(all) * i128::from(self.p.commit_pct) / 100).max(i128::from(all.min(1)));
            let lots = i64::try_from(lots).expect("at most `all` lots");
            if lots > 0 {
                self.core.ledger.submit(out, view.now_ms, &ins, side, OrderKind::Limit, price, lots);
                return;
            }
        }
    }
}

impl Agent for AllIn {
    fn start(&mut self, now_us: u64) -> u64 {
        let first = self.arrivals.first(&mut self.core.rng, now_us);
        self.core.ask(first)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        self.core.begin(view, out);
        // One order at a time: the next waits until the last is done, its
        // reservation released (an order being canceled still commits).
        if !self.cancel_old(view.now_ms, out) {
            self.submit_all_in(view, out);
        }
        self.arrivals.advance(&mut self.core.rng);
        Some(self.core.ask(after(view.now_us, self.arrivals.next_us)))
    }

    fn observe(&mut self, event: &Event<'_>) {
        self.core.ledger.observe(event);
    }

    fn kind(&self) -> AgentKind {
        AgentKind::AllIn
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Harness};
    use super::super::{AgentConfig, AgentParams};
    use super::*;

    fn all_in(p: AllInParams, seed: u64) -> Box<dyn Agent> {
        AgentConfig { kind: AgentKind::AllIn, params: AgentParams::AllIn(p) }.build(seed, 0, &testkit::symbols())
    }

    #[test]
    fn randomized_harness_respects_the_rules() {
        for seed in 1..=4 {
            let mut h = testkit::harness(seed * 1000, seed > 2);
            h.run(all_in(AllInParams::default(), seed).as_mut(), 4000);
            let s = &h.stats;
            assert!(s.submits > 500 && s.buys > 100 && s.sells > 100, "{s:?}");
            assert!(s.cancels > 0 && s.fills > 0, "{s:?}");
            assert!(s.cash_bound > 0, "its buys use up its cash: {s:?}");
        }
    }

    #[test]
    fn deterministic_given_seed_and_inputs() {
        testkit::assert_deterministic(|seed| all_in(AllInParams::default(), seed));
    }

    #[test]
    fn a_buy_commits_all_the_free_cash_and_waits_for_its_cancel() {
        // 200,000 cents, no shares, nothing trades; a lot of ACME (10 shares at
        // about 100.00) costs about 100,000: each buy takes one or two lots, then
        // nothing new until the cancel after hold_ms is done.
        let p = AllInParams { marketable_pct: 0, ..AllInParams::default() };
        let mut h = Harness::new(8, 200_000, Default::default());
        h.fill_pct = 0;
        h.deposits = false;
        h.run(all_in(p, 3).as_mut(), 400);
        let s = &h.stats;
        assert!(s.submits > 20 && s.cancels > 20, "{s:?}");
        assert_eq!(s.sells, 0, "no shares, no sells: {s:?}");
        assert!(s.active_max <= 1, "one order at a time: {s:?}");
        assert!(s.cash_bound * 2 > s.wakes, "most wakes leave under a tenth of the cash free: {s:?}");
    }
}
