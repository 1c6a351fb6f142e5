//! The whale: mostly idle; at configured times (`at_ms`) and/or at a small
//! Poisson rate, it sends one large marketable order on one side, optionally
//! split into child orders over a short window (a "dump", for flash-crash
//! scenarios). Each child is priced from the book at the time it is sent.

use std::collections::VecDeque;

use super::common::{after, Arrivals, Core};
use super::momentum::taking_kind;
use super::params::Reader;
use super::{Agent, AgentKind, Event, Intent, OrderKind, Side, SymbolSpec, View};

/// Parameters of a `whale` population.
#[derive(Clone, Debug, PartialEq)]
pub struct WhaleParams {
    /// Mean big orders per second at random times (Poisson); 0 for only the
    /// `at_ms` ones (then `at_ms` must not be empty). Default 0.01.
    pub rate_per_s: f64,
    /// Times (ms since the run started) of big orders, in addition to the random
    /// ones; every whale of the population acts at each. Default none.
    pub at_ms: Vec<u64>,
    /// The instrument of every big order; default: one drawn at random for each.
    pub symbol: Option<String>,
    /// `buy`, `sell` or `random` (drawn for each big order). Default `random`.
    pub side: Option<Side>,
    /// Size of a big order, in lots. Default 20.
    pub lots: i64,
    /// `ioc`, `fok` or `market`. Default `ioc`.
    pub order_type: OrderKind,
    /// An IOC/FOK buy is priced this many basis points above the best ask (else
    /// the last trade, else the start price), a sell as far below the best bid. Default 100 (1%).
    pub aggression_bps: u32,
    /// The big order is sent as this many child orders (sizes as equal as whole
    /// lots allow), at most `lots`. Default 1.
    pub children: i64,
    /// Time between child orders. Default 200.
    pub child_interval_ms: u64,
}

impl Default for WhaleParams {
    fn default() -> Self {
        WhaleParams {
            rate_per_s: 0.01,
            at_ms: Vec::new(),
            symbol: None,
            side: None,
            lots: 20,
            order_type: OrderKind::Ioc,
            aggression_bps: 100,
            children: 1,
            child_interval_ms: 200,
        }
    }
}

const KEYS: &[&str] =
    &["rate_per_s", "at_ms", "symbol", "side", "lots", "order_type", "aggression_bps", "children", "child_interval_ms"];

impl WhaleParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<WhaleParams, String> {
        let d = WhaleParams::default();
        let mut r = Reader::new("whale", table, KEYS)?;
        let day_ms = 86_400_000;
        let p = WhaleParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, true)?,
            at_ms: r.ms_list("at_ms", 365 * day_ms)?,
            symbol: r.opt_string("symbol")?,
            side: match r.choice("side", "random", &["buy", "sell", "random"])? {
                "buy" => Some(Side::Buy),
                "sell" => Some(Side::Sell),
                _ => None,
            },
            lots: r.int("lots", d.lots, 1, 1_000_000)?,
            order_type: taking_kind(&mut r, d.order_type)?,
            aggression_bps: r.bps("aggression_bps", d.aggression_bps, 0, 9_999)?,
            children: r.int("children", d.children, 1, 10_000)?,
            child_interval_ms: r.ms("child_interval_ms", d.child_interval_ms, 1, day_ms)?,
        };
        r.finish();
        if p.rate_per_s == 0.0 && p.at_ms.is_empty() {
            return Err("rate_per_s: must be positive when at_ms is empty (the whale would never trade)".into());
        }
        if p.children > p.lots {
            return Err(format!("children: must be at most lots ({}) (got {})", p.lots, p.children));
        }
        Ok(p)
    }
}

/// A big order being sent as child orders.
#[derive(Clone, Debug)]
struct Plan {
    instr: usize,
    side: Side,
    lots_left: i64,
    children_left: i64,
    next_ms: u64,
}

/// A whale.
pub struct Whale {
    p: WhaleParams,
    core: Core,
    arrivals: Option<Arrivals>,
    at_ms: VecDeque<u64>,
    plans: Vec<Plan>,
    /// The instrument of `p.symbol`, if set.
    fixed_instr: Option<usize>,
}

impl Whale {
    pub(crate) fn new(p: WhaleParams, seed: u64, symbols: &[SymbolSpec]) -> Whale {
        let core = Core::new(seed, symbols);
        let fixed_instr = p.symbol.as_ref().map(|s| {
            super::common::index_of(&core.instrs, s)
                .unwrap_or_else(|| panic!("whale symbol {s} not among its instruments"))
        });
        let arrivals = (p.rate_per_s > 0.0).then(|| Arrivals::new(p.rate_per_s));
        let at_ms = p.at_ms.iter().copied().collect();
        Whale { p, core, arrivals, at_ms, plans: Vec::new(), fixed_instr }
    }

    fn plan(&mut self, now_ms: u64) {
        let n = self.core.instrs.len() as u64;
        let instr = match self.fixed_instr {
            Some(i) => i,
            None => self.core.rng.below(n) as usize,
        };
        let side = self.p.side.unwrap_or_else(|| self.core.rng.side());
        self.plans.push(Plan { instr, side, lots_left: self.p.lots, children_left: self.p.children, next_ms: now_ms });
    }

    /// Sends the next child of `plan`: as many lots as the cash or shares allow.
    fn child(&mut self, k: usize, view: &View<'_>, out: &mut Vec<Intent>) {
        let p = &self.p;
        let Core { instrs, ledger, .. } = &mut self.core;
        let plan = &mut self.plans[k];
        let ins = &instrs[plan.instr];
        // Equal shares, the remainder going to the first children.
        let want = (plan.lots_left + plan.children_left - 1) / plan.children_left;
        plan.lots_left -= want;
        plan.children_left -= 1;
        plan.next_ms = plan.next_ms.saturating_add(p.child_interval_ms);
        let sv = view.market.get(&ins.symbol).cloned().unwrap_or_default();
        let (bid, ask) = ins.touch(&sv);
        let last = sv.last.map(|l| ins.down(l));
        let price = match plan.side {
            Side::Buy => {
                let base = i128::from(ask.or(last).unwrap_or(ins.start_ticks));
                let up = base * i128::from(10_000 + p.aggression_bps);
                // Round up: the buy must reach at least that far.
                ins.clamp(i64::try_from((up + 9_999) / 10_000).expect("price fits"))
            }
            Side::Sell => {
                let base = i128::from(bid.or(last).unwrap_or(ins.start_ticks));
                let down = base * i128::from(10_000 - p.aggression_bps);
                ins.clamp(i64::try_from(down / 10_000).expect("price fits"))
            }
        };
        let lots = match plan.side {
            Side::Buy => ledger.buy_lots(view, instrs, ins, p.order_type, price, want),
            Side::Sell => ledger.sell_lots(view, ins, want),
        };
        if lots > 0 {
            ledger.submit(out, view.now_ms, ins, plan.side, p.order_type, price, lots);
        }
    }

    fn next_wake(&self) -> Option<u64> {
        let arrivals = self.arrivals.as_ref().map(|a| a.next_us);
        let plans = self.plans.iter().map(|p| p.next_ms.saturating_mul(1_000)).min();
        let at = self.at_ms.front().map(|t| t.saturating_mul(1_000));
        [arrivals, plans, at].into_iter().flatten().min()
    }
}

impl Agent for Whale {
    fn start(&mut self, now_us: u64) -> u64 {
        if let Some(a) = &mut self.arrivals {
            a.first(&mut self.core.rng, now_us);
        }
        // Nothing to do at all (which `parse` refuses): "never".
        let first = self.next_wake().map_or(u64::MAX, |t| t.max(now_us));
        self.core.ask(first)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        self.core.begin(view, out);
        let now = view.now_ms;
        while self.at_ms.front().is_some_and(|t| *t <= now) {
            self.at_ms.pop_front();
            self.plan(now);
        }
        if self.arrivals.as_ref().is_some_and(|a| a.next_us <= view.now_us) {
            self.plan(now);
            self.arrivals.as_mut().expect("checked").advance(&mut self.core.rng);
        }
        for k in 0..self.plans.len() {
            if self.plans[k].next_ms <= now {
                self.child(k, view, out);
            }
        }
        self.plans.retain(|p| p.children_left > 0);
        self.next_wake().map(|t| self.core.ask(after(view.now_us, t)))
    }

    fn observe(&mut self, event: &Event<'_>) {
        self.core.ledger.observe(event);
    }

    fn kind(&self) -> AgentKind {
        AgentKind::Whale
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Harness, Wakes};
    use super::super::{AgentConfig, AgentParams};
    use super::*;

    fn whale(p: WhaleParams, seed: u64) -> Box<dyn Agent> {
        AgentConfig { kind: AgentKind::Whale, params: AgentParams::Whale(p) }.build(seed, 0, &testkit::symbols())
    }

    fn dump() -> WhaleParams {
        WhaleParams {
            rate_per_s: 0.0,
            at_ms: vec![5_000],
            symbol: Some("ACME".into()),
            side: Some(Side::Sell),
            lots: 100,
            ..WhaleParams::default()
        }
    }

    #[test]
    fn randomized_harness_respects_the_rules() {
        let p = WhaleParams { rate_per_s: 1.0, children: 3, lots: 60, ..WhaleParams::default() };
        for seed in 1..=4 {
            let mut h = testkit::harness(seed * 1000, seed > 2);
            h.run(whale(p.clone(), seed).as_mut(), 4000);
            let s = &h.stats;
            assert!(s.submits > 1000 && s.buys > 300 && s.sells > 300 && s.ioc == s.submits, "{s:?}");
            if seed > 2 {
                assert!(s.cash_bound > 100 && s.shares_bound > 100, "big orders should hit the budget: {s:?}");
            }
        }
        let p = WhaleParams { order_type: OrderKind::Market, ..p };
        let mut h = Harness::new(5, testkit::CASH_CENTS, testkit::holdings());
        h.run(whale(p, 5).as_mut(), 4000);
        assert!(h.stats.market > 300 && h.stats.market == h.stats.submits, "{:?}", h.stats);
    }

    #[test]
    fn deterministic_given_seed_and_inputs() {
        testkit::assert_deterministic(|seed| whale(WhaleParams { rate_per_s: 0.5, ..WhaleParams::default() }, seed));
    }

    #[test]
    fn sends_its_big_order_at_its_time_then_stops() {
        let mut agent = whale(dump(), 1);
        let mut w = Wakes::new(agent.as_mut());
        assert_eq!(w.next_ms(), Some(5_000));
        w.set_book("ACME", 9_990, 10_010);
        let sent = w.wake();
        // 1% below the best bid, rounded down to the tick; 100 lots of 10.
        let want = Intent::Submit {
            tag: 1,
            symbol: "ACME".into(),
            side: Side::Sell,
            kind: OrderKind::Ioc,
            price_cents: 9_890,
            qty: 1_000,
        };
        assert_eq!(sent, vec![want]);
        assert_eq!(w.next_ms(), None, "nothing left to do");
    }

    #[test]
    fn splits_a_dump_into_children_over_a_window() {
        let p = WhaleParams { children: 3, child_interval_ms: 100, order_type: OrderKind::Market, ..dump() };
        let mut agent = whale(p, 2);
        let mut w = Wakes::new(agent.as_mut());
        let sent = w.wake_until(u64::MAX);
        let children: Vec<(u64, i64, i64)> = sent
            .iter()
            .map(|(t, i)| match i {
                Intent::Submit { qty, price_cents, kind: OrderKind::Market, side: Side::Sell, .. } => {
                    (*t, *qty, *price_cents)
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(children, vec![(5_000, 340, 0), (5_100, 330, 0), (5_200, 330, 0)]);
    }

    #[test]
    fn sells_no_more_than_it_holds() {
        let mut agent = whale(dump(), 3);
        let mut w = Wakes::new(agent.as_mut());
        w.holdings.insert("ACME".into(), 255);
        let sent = w.wake();
        assert!(matches!(sent.as_slice(), [Intent::Submit { qty: 250, .. }]), "{sent:?}");
    }

    #[test]
    fn random_big_orders_at_its_rate() {
        let p = WhaleParams { rate_per_s: 0.1, ..WhaleParams::default() };
        let mut agent = whale(p, 4);
        let mut w = Wakes::new(agent.as_mut());
        let sent = w.wake_until(1_000_000);
        // About 100 in 1000 s.
        assert!((70..=130).contains(&sent.len()), "{} big orders", sent.len());
        let buys = sent.iter().filter(|(_, i)| matches!(i, Intent::Submit { side: Side::Buy, .. })).count();
        assert!(buys > 20 && buys < sent.len() - 20, "{buys} buys of {}", sent.len());
    }
}
