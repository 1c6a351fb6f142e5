//! The momentum trader: a short and a long moving average of trade prices
//! (sums and counts of integer ticks); buys when the short one is above the long
//! one by a threshold, sells when below, with aggressive IOC (or FOK, or market)
//! orders, and keeps its position within a bound.

use std::collections::VecDeque;

use super::common::{after, index_of, Arrivals, Core};
use super::params::Reader;
use super::{Agent, AgentKind, Event, Intent, OrderKind, Side, SymbolSpec, View};

/// Parameters of a `momentum` population.
#[derive(Clone, Debug, PartialEq)]
pub struct MomentumParams {
    /// Mean decisions per second (Poisson arrivals). Default 1.0.
    pub rate_per_s: f64,
    /// Trades in the short moving average. Default 5.
    pub short_window: i64,
    /// Trades in the long moving average (more than `short_window`); no signal
    /// until this many trades were seen. Default 20.
    pub long_window: i64,
    /// The short average must differ from the long one by at least this many
    /// basis points of the long one to act. Default 20 (0.2%).
    pub threshold_bps: u32,
    /// Size of each order, in lots. Default 2.
    pub lots: i64,
    /// The position, counted from the holdings at the first wake and including
    /// open orders, stays within ± this many lots. Default 10.
    pub max_position_lots: i64,
    /// `ioc`, `fok` or `market`. Default `ioc`.
    pub order_type: OrderKind,
    /// An IOC/FOK buy is priced this many ticks above the best ask (a sell below
    /// the best bid; the last trade when that side is empty). Default 2.
    pub aggression_ticks: i64,
}

impl Default for MomentumParams {
    fn default() -> Self {
        MomentumParams {
            rate_per_s: 1.0,
            short_window: 5,
            long_window: 20,
            threshold_bps: 20,
            lots: 2,
            max_position_lots: 10,
            order_type: OrderKind::Ioc,
            aggression_ticks: 2,
        }
    }
}

const KEYS: &[&str] = &[
    "rate_per_s",
    "short_window",
    "long_window",
    "threshold_bps",
    "lots",
    "max_position_lots",
    "order_type",
    "aggression_ticks",
];

/// Reads `order_type` as one of the taking kinds.
pub(crate) fn taking_kind(r: &mut Reader<'_>, default: OrderKind) -> Result<OrderKind, String> {
    let name = |k: OrderKind| match k {
        OrderKind::Ioc => "ioc",
        OrderKind::Fok => "fok",
        OrderKind::Market => "market",
        OrderKind::Limit => unreachable!("a taking order type"),
    };
    Ok(match r.choice("order_type", name(default), &["ioc", "fok", "market"])? {
        "ioc" => OrderKind::Ioc,
        "fok" => OrderKind::Fok,
        _ => OrderKind::Market,
    })
}

impl MomentumParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<MomentumParams, String> {
        let d = MomentumParams::default();
        let mut r = Reader::new("momentum", table, KEYS)?;
        let p = MomentumParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, false)?,
            short_window: r.int("short_window", d.short_window, 1, 10_000)?,
            long_window: r.int("long_window", d.long_window, 2, 10_000)?,
            threshold_bps: r.bps("threshold_bps", d.threshold_bps, 0, 10_000)?,
            lots: r.int("lots", d.lots, 1, 1_000_000)?,
            max_position_lots: r.int("max_position_lots", d.max_position_lots, 1, 1_000_000)?,
            order_type: taking_kind(&mut r, d.order_type)?,
            aggression_ticks: r.int("aggression_ticks", d.aggression_ticks, 0, 1_000_000)?,
        };
        r.finish();
        if p.short_window >= p.long_window {
            return Err(format!("short_window: must be less than long_window ({})", p.long_window));
        }
        Ok(p)
    }
}

/// Recent trade prices of one instrument, in ticks.
#[derive(Clone, Debug, Default)]
struct Averages {
    prices: VecDeque<i64>,
    short_sum: i64,
    long_sum: i64,
    /// Holdings at the first wake: the position is measured from here.
    baseline: Option<i64>,
}

impl Averages {
    fn push(&mut self, price: i64, short_n: usize, long_n: usize) {
        self.prices.push_back(price);
        self.short_sum += price;
        self.long_sum += price;
        if self.prices.len() > short_n {
            self.short_sum -= self.prices[self.prices.len() - 1 - short_n];
        }
        if self.prices.len() > long_n {
            self.long_sum -= self.prices.pop_front().expect("non-empty");
        }
        debug_assert_eq!(self.long_sum, self.prices.iter().sum::<i64>());
    }

    /// Buy when the short average is above the long one by the threshold, sell
    /// when below, in exact integer arithmetic:
    /// (short/ns - long/nl) * 10000 >= bps * long/nl  <=>  (short*nl - long*ns) * 10000 >= bps * long * ns.
    fn signal(&self, short_n: usize, long_n: usize, threshold_bps: u32) -> Option<Side> {
        if self.prices.len() < long_n {
            return None;
        }
        let (ns, nl) = (short_n as i128, long_n as i128);
        let diff = (i128::from(self.short_sum) * nl - i128::from(self.long_sum) * ns) * 10_000;
        let bar = i128::from(threshold_bps) * i128::from(self.long_sum) * ns;
        if diff > 0 && diff >= bar {
            Some(Side::Buy)
        } else if diff < 0 && -diff >= bar {
            Some(Side::Sell)
        } else {
            None
        }
    }

    fn last(&self) -> Option<i64> {
        self.prices.back().copied()
    }
}

/// A momentum trader.
pub struct Momentum {
    p: MomentumParams,
    core: Core,
    arrivals: Arrivals,
    averages: Vec<Averages>,
}

impl Momentum {
    pub(crate) fn new(p: MomentumParams, seed: u64, symbols: &[SymbolSpec]) -> Momentum {
        let arrivals = Arrivals::new(p.rate_per_s);
        Momentum { p, core: Core::new(seed, symbols), arrivals, averages: vec![Averages::default(); symbols.len()] }
    }

    fn trade(&mut self, i: usize, view: &View<'_>, out: &mut Vec<Intent>) {
        let p = &self.p;
        let Core { instrs, ledger, .. } = &mut self.core;
        let ins = &instrs[i];
        let avg = &mut self.averages[i];
        let held = view.holdings.get(&ins.symbol).copied().unwrap_or(0);
        let baseline = *avg.baseline.get_or_insert(held);
        let Some(side) = avg.signal(p.short_window as usize, p.long_window as usize, p.threshold_bps) else {
            return;
        };
        let last = avg.last().expect("a signal needs trades");
        let sv = view.market.get(&ins.symbol).cloned().unwrap_or_default();
        let (bid, ask) = ins.touch(&sv);
        let bound = p.max_position_lots * ins.lot_shares;
        let position = held - baseline;
        let (room, price) = match side {
            Side::Buy => {
                (bound - (position + ledger.open_qty(&ins.symbol, Side::Buy)), ask.unwrap_or(last) + p.aggression_ticks)
            }
            Side::Sell => (
                bound + (position - ledger.open_qty(&ins.symbol, Side::Sell)),
                bid.unwrap_or(last) - p.aggression_ticks,
            ),
        };
        let want = p.lots.min(room.max(0) / ins.lot_shares);
        let price = ins.clamp(price);
        let lots = match side {
            Side::Buy => ledger.buy_lots(view, instrs, ins, p.order_type, price, want),
            Side::Sell => ledger.sell_lots(view, ins, want),
        };
        if lots > 0 {
            ledger.submit(out, view.now_ms, ins, side, p.order_type, price, lots);
        }
    }
}

impl Agent for Momentum {
    fn start(&mut self, now_us: u64) -> u64 {
        let first = self.arrivals.first(&mut self.core.rng, now_us);
        self.core.ask(first)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        self.core.begin(view, out);
        for i in 0..self.core.instrs.len() {
            self.trade(i, view, out);
        }
        self.arrivals.advance(&mut self.core.rng);
        Some(self.core.ask(after(view.now_us, self.arrivals.next_us)))
    }

    fn observe(&mut self, event: &Event<'_>) {
        self.core.ledger.observe(event);
        if let Event::Trade { symbol, price_cents, .. } = *event {
            if let Some(i) = index_of(&self.core.instrs, symbol) {
                let t = self.core.instrs[i].down(price_cents);
                self.averages[i].push(t, self.p.short_window as usize, self.p.long_window as usize);
            }
        }
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Momentum
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Harness, Wakes};
    use super::super::{AgentConfig, AgentParams};
    use super::*;

    fn momentum(p: MomentumParams, seed: u64) -> Box<dyn Agent> {
        AgentConfig { kind: AgentKind::Momentum, params: AgentParams::Momentum(p) }.build(seed, 0, &testkit::symbols())
    }

    fn submits(intents: &[(u64, Intent)]) -> Vec<(Side, OrderKind, i64, i64)> {
        intents
            .iter()
            .filter_map(|(_, i)| match i {
                Intent::Submit { symbol, side, kind, price_cents, qty, .. } if symbol == "ACME" => {
                    Some((*side, *kind, *price_cents, *qty))
                }
                _ => None,
            })
            .collect()
    }

    /// Feeds `n` ACME trades moving `step` cents each, waking after each.
    fn trend(w: &mut Wakes<'_>, from: i64, step: i64, n: i64) -> Vec<(u64, Intent)> {
        let mut all = Vec::new();
        for k in 0..n {
            let price = from + k * step;
            w.trade("ACME", price);
            w.set_book("ACME", price - 1, price + 1);
            let now = w.next_ms().unwrap();
            all.extend(w.wake().into_iter().map(|i| (now, i)));
        }
        all
    }

    #[test]
    fn randomized_harness_respects_the_rules() {
        for seed in 1..=4 {
            let mut h = testkit::harness(seed * 1000, seed > 2);
            h.run(momentum(MomentumParams::default(), seed).as_mut(), 4000);
            let s = &h.stats;
            assert!(s.submits > 100 && s.buys > 20 && s.sells > 20 && s.ioc == s.submits, "{s:?}");
        }
        let p = MomentumParams { order_type: OrderKind::Market, ..MomentumParams::default() };
        let mut h = Harness::new(5, testkit::CASH_CENTS, testkit::holdings());
        h.run(momentum(p, 5).as_mut(), 4000);
        assert!(h.stats.market > 50 && h.stats.market == h.stats.submits, "{:?}", h.stats);
    }

    #[test]
    fn deterministic_given_seed_and_inputs() {
        testkit::assert_deterministic(|seed| momentum(MomentumParams::default(), seed));
    }

    #[test]
    fn buys_in_an_uptrend_up_to_its_bound() {
        let mut agent = momentum(MomentumParams::default(), 1);
        let mut w = Wakes::new(agent.as_mut());
        let flat = trend(&mut w, 10_000, 0, 30);
        assert_eq!(submits(&flat), vec![], "no signal in a flat market");
        let up = submits(&trend(&mut w, 10_000, 10, 30));
        assert!(!up.is_empty());
        for (side, kind, price, qty) in &up {
            assert_eq!((*side, *kind, *qty), (Side::Buy, OrderKind::Ioc, 20));
            assert!(*price > 10_000, "{price}");
        }
        // The IOCs never fill here, so the position never grows: it keeps trying.
        assert!(up.len() >= 20, "{up:?}");
    }

    #[test]
    fn sells_in_a_downtrend() {
        let mut agent = momentum(MomentumParams::default(), 2);
        let mut w = Wakes::new(agent.as_mut());
        let down = submits(&trend(&mut w, 10_000, -10, 40));
        assert!(down.len() >= 15, "{down:?}");
        assert!(down.iter().all(|(side, kind, _, qty)| (*side, *kind, *qty) == (Side::Sell, OrderKind::Ioc, 20)));
        // The first once the long window is full (the 20th trade, at 9810): 2 ticks below the best bid.
        assert_eq!(down[0].2, 9_809 - 2);
    }

    #[test]
    fn holds_a_bounded_position() {
        let p = MomentumParams { max_position_lots: 3, ..MomentumParams::default() };
        let mut agent = momentum(p, 3);
        let mut w = Wakes::new(agent.as_mut());
        w.fill_taking = true;
        let bought: i64 = submits(&trend(&mut w, 10_000, 10, 60))
            .iter()
            .map(|(side, _, _, qty)| {
                assert_eq!(*side, Side::Buy);
                qty
            })
            .sum();
        assert_eq!(bought, 30, "3 lots of 10 shares, as 2 lots then 1");
    }
}
