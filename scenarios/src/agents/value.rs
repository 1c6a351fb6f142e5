//! The value trader: believes in a fundamental value per instrument that
//! follows a mean-reverting random walk in integer ticks with occasional
//! shocks; buys with limits when the market is below that value by a margin,
//! sells when above, and withdraws orders that the value has left behind.

use super::common::{after, Arrivals, Core};
use super::params::Reader;
use super::{Agent, AgentKind, Event, Intent, OrderKind, Side, SymbolSpec, View};

/// Parameters of a `value` population.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueParams {
    /// Mean decisions per second (Poisson arrivals). Default 1.0.
    pub rate_per_s: f64,
    /// Buys when the best ask (else the last trade) is at least this many basis
    /// points of value below the value, with a limit at that distance; sells
    /// symmetrically above. Default 100 (1%).
    pub margin_bps: u32,
    /// Size of each order, in lots. Default 2.
    pub lots: i64,
    /// The position, counted from the holdings at the first wake and including
    /// open orders, stays within ± this many lots. Default 20.
    pub max_position_lots: i64,
    /// The value takes one step of its walk every this many ms of run time
    /// (whatever the wake rate). Default 1000.
    pub walk_step_ms: u64,
    /// Each step moves the value by a uniform random number of ticks in ± this. Default 2.
    pub step_ticks: i64,
    /// Each step first closes this percent of the gap to the start price
    /// (integer ticks, rounded toward zero). Default 5.
    pub reversion_pct: u32,
    /// Chance per step, in basis points, of a shock. Default 50 (0.5%).
    pub shock_prob_bps: u32,
    /// A shock moves the value up or down (even odds) by this many basis points of itself. Default 300 (3%).
    pub shock_size_bps: u32,
    /// Orders still resting after this long are canceled (and placed again if
    /// still wanted). Default 10000.
    pub order_ttl_ms: u64,
}

impl Default for ValueParams {
    fn default() -> Self {
        ValueParams {
            rate_per_s: 1.0,
            margin_bps: 100,
            lots: 2,
            max_position_lots: 20,
            walk_step_ms: 1000,
            step_ticks: 2,
            reversion_pct: 5,
            shock_prob_bps: 50,
            shock_size_bps: 300,
            order_ttl_ms: 10_000,
        }
    }
}

const KEYS: &[&str] = &[
    "rate_per_s",
    "margin_bps",
    "lots",
    "max_position_lots",
    "walk_step_ms",
    "step_ticks",
    "reversion_pct",
    "shock_prob_bps",
    "shock_size_bps",
    "order_ttl_ms",
];

/// A late or slow wake walks at most this many steps at once (bounds the work of one wake).
const MAX_STEPS_PER_WAKE: u64 = 100_000;

impl ValueParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<ValueParams, String> {
        let d = ValueParams::default();
        let mut r = Reader::new("value", table, KEYS)?;
        let day_ms = 86_400_000;
        let p = ValueParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, false)?,
            margin_bps: r.bps("margin_bps", d.margin_bps, 0, 9_999)?,
            lots: r.int("lots", d.lots, 1, 1_000_000)?,
            max_position_lots: r.int("max_position_lots", d.max_position_lots, 1, 1_000_000)?,
            walk_step_ms: r.ms("walk_step_ms", d.walk_step_ms, 1, day_ms)?,
            step_ticks: r.int("step_ticks", d.step_ticks, 0, 1_000_000)?,
            reversion_pct: r.percent("reversion_pct", d.reversion_pct)?,
            shock_prob_bps: r.bps("shock_prob_bps", d.shock_prob_bps, 0, 10_000)?,
            shock_size_bps: r.bps("shock_size_bps", d.shock_size_bps, 0, 9_999)?,
            order_ttl_ms: r.ms("order_ttl_ms", d.order_ttl_ms, 1, day_ms)?,
        };
        r.finish();
        Ok(p)
    }
}

/// The value of one instrument as this trader believes it.
#[derive(Clone, Debug)]
struct Belief {
    value_ticks: i64,
    /// Run time up to which the walk has been stepped.
    walked_ms: u64,
    baseline: Option<i64>,
}

/// A value trader.
pub struct Value {
    p: ValueParams,
    core: Core,
    arrivals: Arrivals,
    beliefs: Vec<Belief>,
}

impl Value {
    pub(crate) fn new(p: ValueParams, seed: u64, symbols: &[SymbolSpec]) -> Value {
        let arrivals = Arrivals::new(p.rate_per_s);
        let core = Core::new(seed, symbols);
        let beliefs =
            core.instrs.iter().map(|i| Belief { value_ticks: i.start_ticks, walked_ms: 0, baseline: None }).collect();
        Value { p, core, arrivals, beliefs }
    }

    /// Steps the walk of instrument `i` up to `now_ms`.
    fn walk(&mut self, i: usize, now_ms: u64) {
        let p = &self.p;
        let ins = &self.core.instrs[i];
        let rng = &mut self.core.rng;
        let b = &mut self.beliefs[i];
        let steps = now_ms.saturating_sub(b.walked_ms) / p.walk_step_ms;
        b.walked_ms += steps * p.walk_step_ms;
        for _ in 0..steps.min(MAX_STEPS_PER_WAKE) {
            let mut v = b.value_ticks;
            v += (ins.start_ticks - v) * i64::from(p.reversion_pct) / 100;
            v += rng.range(-p.step_ticks, p.step_ticks);
            if rng.bps(p.shock_prob_bps) {
                let size = (v * i64::from(p.shock_size_bps) / 10_000).max(1);
                v += if rng.below(2) == 0 { size } else { -size };
            }
            b.value_ticks = ins.clamp(v);
        }
    }

    fn trade(&mut self, i: usize, view: &View<'_>, out: &mut Vec<Intent>) {
        let now = view.now_ms;
        let p = &self.p;
        let Core { instrs, ledger, .. } = &mut self.core;
        let ins = &instrs[i];
        let b = &mut self.beliefs[i];
        let held = view.holdings.get(&ins.symbol).copied().unwrap_or(0);
        let baseline = *b.baseline.get_or_insert(held);
        let value = b.value_ticks;
        let margin = (value * i64::from(p.margin_bps) / 10_000).max(1);
        let (buy_at, sell_at) = (ins.clamp(value - margin), ins.clamp(value + margin));

        // Withdraw what the value left behind, and what has rested too long.
        let stale: Vec<u64> = ledger
            .active(&ins.symbol)
            .filter(|(_, l)| {
                let old = now.saturating_sub(l.placed_ms) >= p.order_ttl_ms;
                old || match l.side {
                    Side::Buy => l.price_ticks > buy_at,
                    Side::Sell => l.price_ticks < sell_at,
                }
            })
            .map(|(t, _)| t)
            .collect();
        for tag in stale {
            ledger.cancel(out, now, tag);
        }

        let sv = view.market.get(&ins.symbol).cloned().unwrap_or_default();
        let (bid, ask) = ins.touch(&sv);
        let last = sv.last.map(|l| ins.down(l));
        let bound = p.max_position_lots * ins.lot_shares;
        let position = held - baseline;
        let resting_buy = ledger.active(&ins.symbol).any(|(_, l)| l.side == Side::Buy);
        let resting_sell = ledger.active(&ins.symbol).any(|(_, l)| l.side == Side::Sell);
        if ask.or(last).is_some_and(|a| a <= buy_at) && !resting_buy {
            let room = bound - (position + ledger.open_qty(&ins.symbol, Side::Buy));
            let want = p.lots.min(room.max(0) / ins.lot_shares);
            let lots = ledger.buy_lots(view, instrs, ins, OrderKind::Limit, buy_at, want);
            if lots > 0 {
                ledger.submit(out, now, ins, Side::Buy, OrderKind::Limit, buy_at, lots);
            }
        }
        if bid.or(last).is_some_and(|b| b >= sell_at) && !resting_sell {
            let room = bound + (position - ledger.open_qty(&ins.symbol, Side::Sell));
            let want = p.lots.min(room.max(0) / ins.lot_shares);
            let lots = ledger.sell_lots(view, ins, want);
            if lots > 0 {
                ledger.submit(out, now, ins, Side::Sell, OrderKind::Limit, sell_at, lots);
            }
        }
    }
}

impl Agent for Value {
    fn start(&mut self, now_us: u64) -> u64 {
        for b in &mut self.beliefs {
            b.walked_ms = now_us / 1_000;
        }
        let first = self.arrivals.first(&mut self.core.rng, now_us);
        self.core.ask(first)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        self.core.begin(view, out);
        for i in 0..self.core.instrs.len() {
            self.walk(i, view.now_ms);
            self.trade(i, view, out);
        }
        self.arrivals.advance(&mut self.core.rng);
        Some(self.core.ask(after(view.now_us, self.arrivals.next_us)))
    }

    fn observe(&mut self, event: &Event<'_>) {
        self.core.ledger.observe(event);
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Value
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Wakes};
    use super::super::{AgentConfig, AgentParams};
    use super::*;

    fn value(p: ValueParams, seed: u64) -> Box<dyn Agent> {
        AgentConfig { kind: AgentKind::Value, params: AgentParams::Value(p) }.build(seed, 0, &testkit::symbols())
    }

    /// A value that does not move, so that tests know it: 10 000 cents for ACME.
    fn fixed() -> ValueParams {
        ValueParams { step_ticks: 0, shock_prob_bps: 0, ..ValueParams::default() }
    }

    fn acme_submits(intents: &[Intent]) -> Vec<(Side, OrderKind, i64, i64)> {
        intents
            .iter()
            .filter_map(|i| match i {
                Intent::Submit { symbol, side, kind, price_cents, qty, .. } if symbol == "ACME" => {
                    Some((*side, *kind, *price_cents, *qty))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn randomized_harness_respects_the_rules() {
        for seed in 1..=4 {
            let mut h = testkit::harness(seed * 1000, seed > 2);
            h.run(value(ValueParams::default(), seed).as_mut(), 4000);
            let s = &h.stats;
            assert!(s.submits > 100 && s.buys > 20 && s.sells > 20 && s.limit == s.submits, "{s:?}");
            assert!(s.cancels > 10, "{s:?}");
        }
    }

    #[test]
    fn deterministic_given_seed_and_inputs() {
        testkit::assert_deterministic(|seed| value(ValueParams::default(), seed));
    }

    #[test]
    fn buys_below_value_and_sells_above() {
        let mut agent = value(fixed(), 1);
        let mut w = Wakes::new(agent.as_mut());
        w.set_book("ACME", 9_990, 10_010);
        assert_eq!(acme_submits(&w.wake()), vec![], "the market is at value");
        w.set_book("ACME", 8_900, 9_000);
        assert_eq!(acme_submits(&w.wake()), vec![(Side::Buy, OrderKind::Limit, 9_900, 20)]);
        assert_eq!(acme_submits(&w.wake()), vec![], "one resting buy at a time");
        w.set_book("ACME", 11_000, 11_100);
        assert_eq!(acme_submits(&w.wake()), vec![(Side::Sell, OrderKind::Limit, 10_100, 20)]);
    }

    #[test]
    fn withdraws_orders_after_their_ttl() {
        let mut agent = value(fixed(), 2);
        let mut w = Wakes::new(agent.as_mut());
        w.set_book("ACME", 8_900, 9_000);
        let placed_ms = w.next_ms().unwrap();
        assert_eq!(acme_submits(&w.wake()).len(), 1);
        let all = w.wake_until(placed_ms + 20_000);
        let first_cancel = all.iter().find(|(_, i)| matches!(i, Intent::Cancel { tag: 1 })).expect("canceled");
        assert!(first_cancel.0 >= placed_ms + 10_000, "canceled at {} ms", first_cancel.0);
        // And placed again, since the market is still cheap.
        assert!(all.iter().any(|(_, i)| matches!(i, Intent::Submit { tag: 2, .. })));
    }

    #[test]
    fn its_value_walks_reverts_and_shocks() {
        let p = ValueParams { shock_prob_bps: 500, ..ValueParams::default() };
        let mut v = Value::new(p, 3, &testkit::symbols());
        v.start(0);
        let mut seen = Vec::new();
        for s in 1..=2_000u64 {
            v.walk(0, s * 1000);
            seen.push(v.beliefs[0].value_ticks);
        }
        let (lo, hi) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
        assert!(hi - lo > 300, "shocks of 3% should show: {lo}..{hi}");
        assert!((5_000..=20_000).contains(&lo) && (5_000..=20_000).contains(&hi));
        // Mean reversion keeps it near the start price on average.
        let mean = seen.iter().sum::<i64>() / seen.len() as i64;
        assert!((9_000..=11_000).contains(&mean), "mean value {mean}");
    }
}
