//! The market maker: quotes both sides of every instrument around its fair
//! price, a few levels deep, skewed against its inventory; keeps quotes that are
//! still right and replaces the ones that moved or went stale; widens after
//! large moves and pulls out entirely for a while after a crash-sized one.

use std::collections::VecDeque;

use super::common::{after, ceil_half, floor_half, index_of, Arrivals, Core, Instr, Ledger};
use super::params::{ordered, Reader};
use super::{Agent, AgentKind, Event, Intent, OrderKind, Side, SymbolSpec, SymbolView, View};

/// Parameters of a `market_maker` population.
#[derive(Clone, Debug, PartialEq)]
pub struct MarketMakerParams {
    /// Mean requote decisions per second (Poisson arrivals). Default 5.0.
    pub rate_per_s: f64,
    /// The best quotes sit this many ticks below and above the (skewed) fair price. Default 2.
    pub half_spread_ticks: i64,
    /// Price levels quoted on each side. Default 2.
    pub levels: i64,
    /// Ticks between a side's levels. Default 1.
    pub level_step_ticks: i64,
    /// Size of each level, in lots. Default 5.
    pub lots_per_level: i64,
    /// Every this many lots of inventory away from the holdings at its first wake
    /// move both quotes one tick against it (long: lower, short: higher). Default 10.
    pub skew_lots_per_tick: i64,
    /// The skew is at most this many ticks. Default 5.
    pub max_skew_ticks: i64,
    /// Quotes move only when the skewed fair price moved by at least this many ticks. Default 1.
    pub requote_ticks: i64,
    /// A quote older than this is replaced even if its price is still right. Default 5000.
    pub stale_ms: u64,
    /// Moves are measured as the price range (high - low, relative to low) over
    /// this window of recent trades and fair prices. Default 5000.
    pub move_window_ms: u64,
    /// A move of at least this many basis points widens the spread. Default 100 (1%).
    pub widen_move_bps: u32,
    /// The half spread is multiplied by this after such a move. Default 3.
    pub widen_factor: i64,
    /// A move of at least this many basis points pulls all quotes of the
    /// instrument (flash-crash behaviour). Default 500 (5%).
    pub pull_move_bps: u32,
    /// After pulling, the maker stays out of the instrument this long (longer
    /// only if another such move happens meanwhile; moves are measured afresh
    /// from the price at the pull). Default 10000.
    pub pull_ms: u64,
}

impl Default for MarketMakerParams {
    fn default() -> Self {
        MarketMakerParams {
            rate_per_s: 5.0,
            half_spread_ticks: 2,
            levels: 2,
            level_step_ticks: 1,
            lots_per_level: 5,
            skew_lots_per_tick: 10,
            max_skew_ticks: 5,
            requote_ticks: 1,
            stale_ms: 5000,
            move_window_ms: 5000,
            widen_move_bps: 100,
            widen_factor: 3,
            pull_move_bps: 500,
            pull_ms: 10_000,
        }
    }
}

const KEYS: &[&str] = &[
    "rate_per_s",
    "half_spread_ticks",
    "levels",
    "level_step_ticks",
    "lots_per_level",
    "skew_lots_per_tick",
    "max_skew_ticks",
    "requote_ticks",
    "stale_ms",
    "move_window_ms",
    "widen_move_bps",
    "widen_factor",
    "pull_move_bps",
    "pull_ms",
];

impl MarketMakerParams {
    pub(crate) fn parse(table: &toml::Table) -> Result<MarketMakerParams, String> {
        let d = MarketMakerParams::default();
        let mut r = Reader::new("market_maker", table, KEYS)?;
        let day_ms = 86_400_000;
        let p = MarketMakerParams {
            rate_per_s: r.rate("rate_per_s", d.rate_per_s, false)?,
            half_spread_ticks: r.int("half_spread_ticks", d.half_spread_ticks, 1, 100_000)?,
            levels: r.int("levels", d.levels, 1, 100)?,
            level_step_ticks: r.int("level_step_ticks", d.level_step_ticks, 1, 100_000)?,
            lots_per_level: r.int("lots_per_level", d.lots_per_level, 1, 1_000_000)?,
            skew_lots_per_tick: r.int("skew_lots_per_tick", d.skew_lots_per_tick, 1, 1_000_000)?,
            max_skew_ticks: r.int("max_skew_ticks", d.max_skew_ticks, 0, 100_000)?,
            requote_ticks: r.int("requote_ticks", d.requote_ticks, 1, 100_000)?,
            stale_ms: r.ms("stale_ms", d.stale_ms, 1, day_ms)?,
            move_window_ms: r.ms("move_window_ms", d.move_window_ms, 1, day_ms)?,
            widen_move_bps: r.bps("widen_move_bps", d.widen_move_bps, 1, 1_000_000)?,
            widen_factor: r.int("widen_factor", d.widen_factor, 1, 100)?,
            pull_move_bps: r.bps("pull_move_bps", d.pull_move_bps, 1, 1_000_000)?,
            pull_ms: r.ms("pull_ms", d.pull_ms, 0, day_ms)?,
        };
        r.finish();
        ordered("widen_move_bps", p.widen_move_bps.into(), "pull_move_bps", p.pull_move_bps.into())?;
        Ok(p)
    }
}

/// What the maker tracks per instrument.
#[derive(Clone, Debug, Default)]
struct Quoting {
    /// Its fair price in half ticks (None before the first wake).
    fair: Option<i64>,
    /// Holdings at the first wake: inventory is measured from here.
    baseline: Option<i64>,
    /// (ms, price in half ticks) of recent fair prices and trades, for the move measure.
    samples: VecDeque<(u64, i64)>,
    /// Low, high and last trade price (ticks) since the last wake.
    trades: Option<(i64, i64, i64)>,
    pulled_until_ms: u64,
    /// The (center in half ticks, half spread in ticks) the current quotes were built from.
    quoted: Option<(i64, i64)>,
}

/// A market maker.
pub struct MarketMaker {
    p: MarketMakerParams,
    core: Core,
    arrivals: Arrivals,
    quoting: Vec<Quoting>,
}

impl MarketMaker {
    pub(crate) fn new(p: MarketMakerParams, seed: u64, symbols: &[SymbolSpec]) -> MarketMaker {
        let arrivals = Arrivals::new(p.rate_per_s);
        MarketMaker { p, core: Core::new(seed, symbols), arrivals, quoting: vec![Quoting::default(); symbols.len()] }
    }

    /// Quotes (or pulls) one instrument.
    fn quote(&mut self, i: usize, view: &View<'_>, out: &mut Vec<Intent>) {
        let now = view.now_ms;
        let p = &self.p;
        let Core { instrs, ledger, .. } = &mut self.core;
        let ins = &instrs[i];
        let q = &mut self.quoting[i];
        let sv = view.market.get(&ins.symbol).cloned().unwrap_or_default();
        let held = view.holdings.get(&ins.symbol).copied().unwrap_or(0);
        let baseline = *q.baseline.get_or_insert(held);
        let trades = q.trades.take();
        let fair = fair_estimate(ins, &sv, ledger, q.fair, trades);
        q.fair = Some(fair);
        let move_bps = q.record_move(now, fair, trades, p.move_window_ms);

        if move_bps >= i128::from(p.pull_move_bps) {
            q.pulled_until_ms = now.saturating_add(p.pull_ms);
            // Measure moves afresh from here: the crash itself must not keep the maker out.
            q.samples.clear();
            q.samples.push_back((now, fair));
        }
        if now < q.pulled_until_ms {
            let tags: Vec<u64> = ledger.active(&ins.symbol).map(|(t, _)| t).collect();
            for tag in tags {
                ledger.cancel(out, now, tag);
            }
            q.quoted = None;
            return;
        }

        let half = p.half_spread_ticks * if move_bps >= i128::from(p.widen_move_bps) { p.widen_factor } else { 1 };
        let inventory_lots = (held - baseline) / ins.lot_shares;
        let skew = (inventory_lots / p.skew_lots_per_tick).clamp(-p.max_skew_ticks, p.max_skew_ticks);
        let mut center = fair - 2 * skew;
        if let Some((c, h)) = q.quoted {
            if h == half && (center - c).abs() < 2 * p.requote_ticks {
                center = c;
            }
        }
        q.quoted = Some((center, half));
        let wanted = levels(p, ins, &sv, ledger, center, half);
        replace_quotes(p, view, instrs, ledger, i, wanted, out);
    }
}

impl Quoting {
    /// Records this wake's fair price (half ticks) and trades (ticks); returns
    /// the move over the window, (high - low) / low, in basis points.
    fn record_move(&mut self, now: u64, fair: i64, trades: Option<(i64, i64, i64)>, window_ms: u64) -> i128 {
        self.samples.push_back((now, fair));
        if let Some((lo, hi, _)) = trades {
            self.samples.extend([(now, 2 * lo), (now, 2 * hi)]);
        }
        while self.samples.front().is_some_and(|(t, _)| t.saturating_add(window_ms) < now) {
            self.samples.pop_front();
        }
        let lo = self.samples.iter().map(|s| s.1).min().expect("a sample was just pushed");
        let hi = self.samples.iter().map(|s| s.1).max().expect("a sample was just pushed");
        assert!(0 < lo && lo <= hi, "price range {lo}..{hi} ticks");
        i128::from(hi - lo) * 10_000 / i128::from(lo)
    }
}

/// Keeps the live quotes that are wanted and fresh, cancels the others, and
/// submits the wanted levels that are missing, as far as cash and shares allow.
fn replace_quotes(
    p: &MarketMakerParams,
    view: &View<'_>,
    instrs: &[Instr],
    ledger: &mut Ledger,
    i: usize,
    wanted: Vec<(Side, i64)>,
    out: &mut Vec<Intent>,
) {
    let now = view.now_ms;
    let ins = &instrs[i];
    let mut missing = wanted;
    let active: Vec<(u64, Side, i64, u64)> =
        ledger.active(&ins.symbol).map(|(t, l)| (t, l.side, l.price_ticks, l.placed_ms)).collect();
    for (tag, side, price, placed_ms) in active {
        let fresh = now.saturating_sub(placed_ms) < p.stale_ms;
        match missing.iter().position(|w| *w == (side, price)) {
            Some(at) if fresh => {
                missing.remove(at);
            }
            _ => ledger.cancel(out, now, tag),
        }
    }
    for (side, price) in missing {
        let lots = match side {
            Side::Buy => ledger.buy_lots(view, instrs, ins, OrderKind::Limit, price, p.lots_per_level),
            Side::Sell => ledger.sell_lots(view, ins, p.lots_per_level),
        };
        if lots > 0 {
            ledger.submit(out, now, ins, side, OrderKind::Limit, price, lots);
        }
    }
}

/// The fair price in half ticks: the mid when the book has both sides and they are
/// not just the maker's own quotes; else the last trade since the previous wake;
/// else the previous estimate (at first, the last trade or the start price).
fn fair_estimate(
    ins: &Instr,
    sv: &SymbolView,
    ledger: &Ledger,
    previous: Option<i64>,
    trades: Option<(i64, i64, i64)>,
) -> i64 {
    let (bid, ask) = ins.touch(sv);
    let own = |side: Side| ledger.live.values().filter(move |l| l.symbol == ins.symbol && l.side == side);
    let own_bid = own(Side::Buy).map(|l| l.price_ticks).max();
    let own_ask = own(Side::Sell).map(|l| l.price_ticks).min();
    let only_ours = bid.is_some() && bid == own_bid && ask == own_ask;
    let fair = match (bid, ask, trades, previous) {
        (Some(b), Some(a), _, _) if !only_ours => a + b,
        (_, _, Some((_, _, last)), _) => 2 * last,
        (_, _, None, Some(prev)) => prev,
        (_, _, None, None) => 2 * sv.last.map_or(ins.start_ticks, |l| ins.down(l)),
    };
    fair.clamp(2 * ins.lo_ticks, 2 * ins.hi_ticks)
}

/// The quotes wanted, best levels first, alternating sides: on the grid, in the
/// band, never crossing the opposite best price nor the maker's own orders on
/// the other side (those being canceled included: no trading with itself).
fn levels(
    p: &MarketMakerParams,
    ins: &Instr,
    sv: &SymbolView,
    ledger: &Ledger,
    center: i64,
    half: i64,
) -> Vec<(Side, i64)> {
    let (bid, ask) = ins.touch(sv);
    let own = |side: Side| ledger.live.values().filter(move |l| l.symbol == ins.symbol && l.side == side);
    let bid_cap = ask.into_iter().chain(own(Side::Sell).map(|l| l.price_ticks)).min().map(|a| a - 1);
    let ask_floor = bid.into_iter().chain(own(Side::Buy).map(|l| l.price_ticks)).max().map(|b| b + 1);
    let mut bids = Vec::new();
    let mut asks = Vec::new();
    for l in 0..p.levels {
        let b = ins.clamp(floor_half(center) - half - l * p.level_step_ticks).min(bid_cap.unwrap_or(i64::MAX));
        if b >= ins.lo_ticks && !bids.contains(&b) {
            bids.push(b);
        }
        let a = ins.clamp(ceil_half(center) + half + l * p.level_step_ticks).max(ask_floor.unwrap_or(i64::MIN));
        if a <= ins.hi_ticks && !asks.contains(&a) {
            asks.push(a);
        }
    }
    // At the band's edges clamping may bring the two sides together: keep them apart.
    let lowest_ask = asks.iter().copied().min().unwrap_or(i64::MAX);
    bids.retain(|b| *b < lowest_ask);
    let mut wanted = Vec::with_capacity(bids.len() + asks.len());
    for l in 0..bids.len().max(asks.len()) {
        wanted.extend(bids.get(l).map(|b| (Side::Buy, *b)));
        wanted.extend(asks.get(l).map(|a| (Side::Sell, *a)));
    }
    wanted
}

impl Agent for MarketMaker {
    fn start(&mut self, now_us: u64) -> u64 {
        let first = self.arrivals.first(&mut self.core.rng, now_us);
        self.core.ask(first)
    }

    fn wake(&mut self, view: &View<'_>, out: &mut Vec<Intent>) -> Option<u64> {
        self.core.begin(view, out);
        for i in 0..self.core.instrs.len() {
            self.quote(i, view, out);
        }
        self.arrivals.advance(&mut self.core.rng);
        Some(self.core.ask(after(view.now_us, self.arrivals.next_us)))
    }

    fn observe(&mut self, event: &Event<'_>) {
        self.core.ledger.observe(event);
        if let Event::Trade { symbol, price_cents, .. } = *event {
            if let Some(i) = index_of(&self.core.instrs, symbol) {
                let t = self.core.instrs[i].down(price_cents);
                let q = &mut self.quoting[i];
                q.trades = Some(q.trades.map_or((t, t, t), |(lo, hi, _)| (lo.min(t), hi.max(t), t)));
            }
        }
    }

    fn kind(&self) -> AgentKind {
        AgentKind::MarketMaker
    }
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{self, Wakes};
    use super::super::{AgentConfig, AgentParams};
    use super::*;

    fn maker(p: MarketMakerParams, seed: u64) -> Box<dyn Agent> {
        AgentConfig { kind: AgentKind::MarketMaker, params: AgentParams::MarketMaker(p) }.build(
            seed,
            0,
            &testkit::symbols(),
        )
    }

    /// The maker's resting (best bid, best ask) in ACME, in cents.
    fn acme_quotes(w: &Wakes<'_>) -> (i64, i64) {
        let acme = || w.open.values().filter(|o| o.symbol == "ACME");
        let bid = acme().filter(|o| o.side == Side::Buy).map(|o| o.price_cents).max().expect("a bid");
        let ask = acme().filter(|o| o.side == Side::Sell).map(|o| o.price_cents).min().expect("an ask");
        (bid, ask)
    }

    #[test]
    fn randomized_harness_respects_the_rules() {
        for seed in 1..=4 {
            let mut h = testkit::harness(seed * 1000, seed > 2);
            h.run(maker(MarketMakerParams::default(), seed).as_mut(), 4000);
            let s = &h.stats;
            assert!(s.submits > 2000 && s.buys > 500 && s.sells > 500 && s.cancels > 1000, "{s:?}");
            assert_eq!(s.submits, s.limit, "a maker only quotes limits: {s:?}");
            assert!(s.cancel_retries > 0, "lost cancels are sent again: {s:?}");
        }
    }

    #[test]
    fn deterministic_given_seed_and_inputs() {
        testkit::assert_deterministic(|seed| maker(MarketMakerParams::default(), seed));
    }

    #[test]
    fn quotes_both_sides_around_the_mid_and_keeps_them() {
        let mut agent = maker(MarketMakerParams::default(), 1);
        let mut w = Wakes::new(agent.as_mut());
        w.set_book("ACME", 9_990, 10_010);
        let first = w.wake();
        let acme: Vec<(Side, i64, i64)> = first
            .iter()
            .filter_map(|i| match i {
                Intent::Submit { symbol, side, price_cents, qty, .. } if symbol == "ACME" => {
                    Some((*side, *price_cents, *qty))
                }
                _ => None,
            })
            .collect();
        let want =
            vec![(Side::Buy, 9_998, 50), (Side::Sell, 10_002, 50), (Side::Buy, 9_997, 50), (Side::Sell, 10_003, 50)];
        assert_eq!(acme, want);
        // BOLT has no book: quoted around its start price (2500 cents, 5-cent ticks).
        assert!(first
            .iter()
            .any(|i| matches!(i, Intent::Submit { symbol, price_cents: 2_490, .. } if symbol == "BOLT")));
        // Nothing moved: the next wakes (within stale_ms) leave the quotes alone.
        let until = w.next_ms().unwrap() + 3_000;
        assert_eq!(w.wake_until(until), vec![]);
    }

    #[test]
    fn skews_quotes_against_inventory() {
        // Same seed, same market; only the inventory after the first wake differs.
        let run = |extra_shares: i64| {
            let mut agent = maker(MarketMakerParams::default(), 2);
            let mut w = Wakes::new(agent.as_mut());
            w.set_book("ACME", 9_990, 10_010);
            w.wake();
            *w.holdings.get_mut("ACME").unwrap() += extra_shares;
            let until = w.next_ms().unwrap() + 2_000;
            w.wake_until(until);
            acme_quotes(&w)
        };
        let flat = run(0);
        assert_eq!(flat, (9_998, 10_002));
        // 20 lots long at 10 lots per tick: both quotes 2 ticks lower.
        assert_eq!(run(200), (9_996, 10_000));
        // 30 lots short: 3 ticks higher.
        assert_eq!(run(-300), (10_001, 10_005));
        // Far too long: the skew stops at max_skew_ticks (5).
        assert_eq!(run(1_000), (9_993, 9_997));
    }

    #[test]
    fn pulls_quotes_on_a_crash_and_comes_back_later() {
        let p = MarketMakerParams::default();
        let mut agent = maker(p.clone(), 3);
        let mut w = Wakes::new(agent.as_mut());
        w.set_book("ACME", 9_990, 10_010);
        let until = w.next_ms().unwrap() + 1_000;
        w.wake_until(until);
        assert!(w.open.values().filter(|o| o.symbol == "ACME").count() == 4, "{:?}", w.open);
        // A 10% drop.
        w.trade("ACME", 9_000);
        w.set_book("ACME", 8_990, 9_010);
        let crash_ms = w.next_ms().unwrap();
        let pulled = w.wake();
        let cancels = pulled.iter().filter(|i| matches!(i, Intent::Cancel { .. })).count();
        assert_eq!(cancels, 4, "{pulled:?}");
        assert!(!pulled.iter().any(|i| matches!(i, Intent::Submit { symbol, .. } if symbol == "ACME")), "{pulled:?}");
        // Stays out for pull_ms.
        let during = w.wake_until(crash_ms + p.pull_ms);
        assert!(!during.iter().any(|(_, i)| matches!(i, Intent::Submit { symbol, .. } if symbol == "ACME")));
        assert!(w.open.values().all(|o| o.symbol != "ACME"));
        // Then quotes again, around the new price.
        w.wake_until(crash_ms + p.pull_ms + 2_000);
        assert_eq!(acme_quotes(&w), (8_998, 9_002));
    }

    #[test]
    fn widens_after_a_large_move() {
        let mut agent = maker(MarketMakerParams::default(), 4);
        let mut w = Wakes::new(agent.as_mut());
        w.set_book("ACME", 9_990, 10_010);
        let until = w.next_ms().unwrap() + 1_000;
        w.wake_until(until);
        // A 2% rise: more than widen_move_bps, less than pull_move_bps.
        w.trade("ACME", 10_200);
        w.set_book("ACME", 10_190, 10_210);
        let until = w.next_ms().unwrap() + 1_000;
        w.wake_until(until);
        assert_eq!(acme_quotes(&w), (10_194, 10_206), "half spread 2 x widen_factor 3");
        // Once the move leaves the window, the spread is back to normal.
        let until = w.next_ms().unwrap() + 6_000;
        w.wake_until(until);
        assert_eq!(acme_quotes(&w), (10_198, 10_202));
    }

    #[test]
    fn never_quotes_outside_the_band() {
        let mut agent = maker(MarketMakerParams::default(), 5);
        let mut w = Wakes::new(agent.as_mut());
        w.set_book("ACME", 19_999, 20_000); // at the band's top
        w.wake();
        let until = w.next_ms().unwrap() + 30_000;
        for (_, intent) in w.wake_until(until) {
            if let Intent::Submit { symbol, price_cents, .. } = intent {
                if symbol == "ACME" {
                    assert!((5_000..=20_000).contains(&price_cents), "{price_cents}");
                }
            }
        }
        let (bid, ask) = acme_quotes(&w);
        assert!(bid < ask && ask <= 20_000, "{bid} {ask}");
    }
}
