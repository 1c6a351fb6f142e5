//! Test drivers for agents: a randomized harness that checks the rules every
//! agent must keep, and a scripted one for behavioural tests.

use std::collections::BTreeMap;

use super::common::{Rng, CANCEL_RETRY_MS};
use super::{Agent, Event, Intent, OpenOrder, OrderKind, Side, SymbolSpec, SymbolView, View};

pub(crate) const CASH_CENTS: i64 = 5_000_000;

/// Two instruments: a 1-cent tick with 10-share lots, a 5-cent tick with 1-share lots.
pub(crate) fn symbols() -> Vec<SymbolSpec> {
    vec![
        SymbolSpec {
            symbol: "ACME".into(),
            tick_cents: 1,
            lot_shares: 10,
            start_price_cents: 10_000,
            min_price_cents: 5_000,
            max_price_cents: 20_000,
        },
        SymbolSpec {
            symbol: "BOLT".into(),
            tick_cents: 5,
            lot_shares: 1,
            start_price_cents: 2_500,
            min_price_cents: 500,
            max_price_cents: 10_000,
        },
    ]
}

pub(crate) fn holdings() -> BTreeMap<String, i64> {
    [("ACME".to_string(), 2_000), ("BOLT".to_string(), 400)].into_iter().collect()
}

/// A harness for the randomized rule checks; `tight` gives the agent little
/// cash and few shares, so that its budget binds often.
pub(crate) fn harness(seed: u64, tight: bool) -> Harness {
    if tight {
        let held = [("ACME".to_string(), 200), ("BOLT".to_string(), 50)].into_iter().collect();
        Harness::new(seed, 1_000_000, held)
    } else {
        Harness::new(seed, CASH_CENTS, holdings())
    }
}

/// What the harness saw an agent do.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub wakes: u64,
    pub submits: u64,
    pub buys: u64,
    pub sells: u64,
    pub market: u64,
    pub limit: u64,
    pub ioc: u64,
    pub fok: u64,
    pub cancels: u64,
    /// Cancels sent again because the first got no answer.
    pub cancel_retries: u64,
    pub fills: u64,
    /// Wakes after which less than a tenth of the cash was free.
    pub cash_bound: u64,
    /// Wakes after which less than a tenth of some holding was free.
    pub shares_bound: u64,
    /// The most live orders not being canceled after a wake.
    pub active_max: usize,
    /// The youngest order canceled, in ms since its submit.
    pub cancel_age_min_ms: Option<u64>,
}

/// One wake: its time, what the agent asked for, the next wake it asked for.
pub(crate) type Step = (u64, Vec<Intent>, Option<u64>);

/// A randomized driver: random market moves, fills at random prices within the
/// limits, delayed cancels, trades and deposits. After every wake it checks the
/// rules: tags increase, prices on the grid and in the band, whole lots, cancels
/// only of live orders and once, open buys covered by cash and open sells by
/// holdings, wake times strictly increasing.
pub(crate) struct Harness {
    rng: Rng,
    specs: Vec<SymbolSpec>,
    mids: Vec<i64>,
    market: BTreeMap<String, SymbolView>,
    cash: i64,
    holdings: BTreeMap<String, i64>,
    open: BTreeMap<u64, OpenOrder>,
    kinds: BTreeMap<u64, OrderKind>,
    placed: BTreeMap<u64, u64>,
    /// When each canceled order's last cancel came.
    canceled: BTreeMap<u64, u64>,
    /// Cancels (order, time of the cancel) the harness dropped: the order stays live until cancel again.
    lost_cancels: BTreeMap<u64, u64>,
    last_tag: u64,
    /// Percent chance per step that a live order trades (0: nothing ever trades).
    pub fill_pct: u32,
    /// Percent of wakes the harness calls late.
    pub late_pct: u32,
    /// Whether cash is deposited now and then.
    pub deposits: bool,
    pub stats: Stats,
    pub trace: Vec<Step>,
}

impl Harness {
    pub(crate) fn new(seed: u64, cash: i64, holdings: BTreeMap<String, i64>) -> Harness {
        let specs = symbols();
        let mids = specs.iter().map(|s| s.start_price_cents / s.tick_cents).collect();
        Harness {
            rng: Rng::new(seed),
            specs,
            mids,
            market: BTreeMap::new(),
            cash,
            holdings,
            open: BTreeMap::new(),
            kinds: BTreeMap::new(),
            placed: BTreeMap::new(),
            canceled: BTreeMap::new(),
            lost_cancels: BTreeMap::new(),
            last_tag: 0,
            fill_pct: 20,
            late_pct: 10,
            deposits: true,
            stats: Stats::default(),
            trace: Vec::new(),
        }
    }

    /// Runs up to `wakes` wakes (fewer if the agent stops).
    pub(crate) fn run(&mut self, agent: &mut dyn Agent, wakes: usize) {
        let mut t = agent.start(0);
        self.trace.push((0, Vec::new(), Some(t)));
        for _ in 0..wakes {
            let now = if self.rng.percent(self.late_pct) { t + self.rng.range(1, 50) as u64 * 1_000 } else { t };
            self.evolve_market();
            self.deliver(agent);
            let mut out = Vec::new();
            let view = View {
                now_us: now,
                now_ms: now / 1_000,
                market: &self.market,
                cash_cents: self.cash,
                holdings: &self.holdings,
                open: &self.open,
            };
            let next = agent.wake(&view, &mut out);
            self.stats.wakes += 1;
            self.apply(&out, now);
            self.trace.push((now, out, next));
            match next {
                Some(n) => {
                    assert!(n > now, "asked to wake at {n} µs, not after {now} µs");
                    t = n;
                }
                None => break,
            }
        }
    }

    fn spec_index(&self, symbol: &str) -> usize {
        self.specs.iter().position(|s| s.symbol == symbol).unwrap_or_else(|| panic!("unknown symbol {symbol}"))
    }

    fn evolve_market(&mut self) {
        for (i, spec) in self.specs.iter().enumerate() {
            let (lo, hi) = (spec.min_price_cents / spec.tick_cents, spec.max_price_cents / spec.tick_cents);
            let mut mid = self.mids[i] + self.rng.range(-2, 2);
            if self.rng.percent(2) {
                mid = mid * self.rng.range(70, 130) / 100;
            }
            if self.rng.percent(1) {
                mid = if self.rng.percent(50) { lo } else { hi };
            }
            mid = mid.clamp(lo + 3, hi - 3);
            self.mids[i] = mid;
            let half = self.rng.range(1, 3);
            let qty = self.rng.range(1, 100) * spec.lot_shares;
            let sv = self.market.entry(spec.symbol.clone()).or_default();
            sv.bid = self.rng.percent(90).then_some(((mid - half) * spec.tick_cents, qty));
            sv.ask = self.rng.percent(90).then_some(((mid + half) * spec.tick_cents, qty));
        }
    }

    /// Fills, closes, market trades and the odd deposit, before a wake.
    fn deliver(&mut self, agent: &mut dyn Agent) {
        let tags: Vec<u64> = self.open.keys().copied().collect();
        for tag in tags {
            if let Some(&at) = self.canceled.get(&tag) {
                // Most cancels are answered soon; some are lost until the agent asks again.
                if self.rng.percent(70) && self.lost_cancels.get(&tag) != Some(&at) {
                    self.close(agent, tag);
                } else if self.rng.percent(1) {
                    self.lost_cancels.insert(tag, at);
                }
                continue;
            }
            let kind = self.kinds[&tag];
            if kind == OrderKind::Fok {
                if self.rng.percent(self.fill_pct) {
                    let rem = self.open[&tag].remaining;
                    self.fill(agent, tag, rem);
                }
            } else if self.rng.percent(self.fill_pct) {
                let lot = self.specs[self.spec_index(&self.open[&tag].symbol)].lot_shares;
                let lots = self.rng.range(1, self.open[&tag].remaining / lot);
                self.fill(agent, tag, lots * lot);
            }
            if kind != OrderKind::Limit && self.open.contains_key(&tag) {
                self.close(agent, tag);
            }
        }
        for (i, spec) in self.specs.iter().enumerate() {
            for _ in 0..self.rng.below(3) {
                let (lo, hi) = (spec.min_price_cents / spec.tick_cents, spec.max_price_cents / spec.tick_cents);
                let price = (self.mids[i] + self.rng.range(-3, 3)).clamp(lo, hi) * spec.tick_cents;
                let qty = self.rng.range(1, 20) * spec.lot_shares;
                self.market.entry(spec.symbol.clone()).or_default().last = Some(price);
                agent.observe(&Event::Trade { symbol: &spec.symbol, price_cents: price, qty });
            }
        }
        if self.deposits && self.rng.percent(1) {
            self.cash += 200_000;
        }
    }

    fn close(&mut self, agent: &mut dyn Agent, tag: u64) {
        self.open.remove(&tag).expect("closing a live order");
        agent.observe(&Event::Done { tag });
    }

    /// Trades `qty` of order `tag` at a price its limit allows, near the mid.
    fn fill(&mut self, agent: &mut dyn Agent, tag: u64, qty: i64) {
        let o = self.open[&tag].clone();
        let i = self.spec_index(&o.symbol);
        let spec = &self.specs[i];
        let (lo, hi) = (spec.min_price_cents / spec.tick_cents, spec.max_price_cents / spec.tick_cents);
        let near = (self.mids[i] + self.rng.range(-2, 2)).clamp(lo, hi);
        let limit = o.price_cents / spec.tick_cents;
        let ticks = match (o.side, self.kinds[&tag]) {
            (_, OrderKind::Market) => near,
            (Side::Buy, _) => near.min(limit),
            (Side::Sell, _) => near.max(limit),
        };
        let price_cents = ticks * spec.tick_cents;
        assert!(qty > 0 && qty <= o.remaining);
        let held = self.holdings.entry(o.symbol.clone()).or_default();
        match o.side {
            Side::Buy => {
                self.cash -= price_cents * qty;
                *held += qty;
            }
            Side::Sell => {
                self.cash += price_cents * qty;
                *held -= qty;
            }
        }
        assert!(self.cash >= 0 && *held >= 0, "overdrawn: cash {} held {}", self.cash, *held);
        let remaining = o.remaining - qty;
        self.stats.fills += 1;
        let fill = Event::Fill { tag, symbol: &o.symbol, side: o.side, price_cents, qty, remaining };
        agent.observe(&fill);
        if remaining == 0 {
            self.open.remove(&tag);
            // The driver may or may not follow a complete fill with a close.
            if self.rng.percent(50) {
                agent.observe(&Event::Done { tag });
            }
        } else {
            self.open.get_mut(&tag).expect("live").remaining = remaining;
        }
    }

    /// Checks a wake's intents and books them.
    fn apply(&mut self, out: &[Intent], now: u64) {
        for intent in out {
            match intent {
                Intent::Submit { tag, symbol, side, kind, price_cents, qty } => {
                    assert!(*tag > self.last_tag, "tag {tag} after {}", self.last_tag);
                    self.last_tag = *tag;
                    let spec = &self.specs[self.spec_index(symbol)];
                    assert!(*qty > 0 && qty % spec.lot_shares == 0, "{qty} shares is not whole lots of {symbol}");
                    if *kind == OrderKind::Market {
                        assert_eq!(*price_cents, 0, "market order with a price");
                    } else {
                        assert_eq!(price_cents % spec.tick_cents, 0, "{price_cents} off the {symbol} grid");
                        let band = spec.min_price_cents..=spec.max_price_cents;
                        assert!(band.contains(price_cents), "{price_cents} outside the {symbol} band");
                    }
                    let o =
                        OpenOrder { symbol: symbol.clone(), side: *side, price_cents: *price_cents, remaining: *qty };
                    self.open.insert(*tag, o);
                    self.kinds.insert(*tag, *kind);
                    self.placed.insert(*tag, now);
                    let s = &mut self.stats;
                    s.submits += 1;
                    *(if *side == Side::Buy { &mut s.buys } else { &mut s.sells }) += 1;
                    *match kind {
                        OrderKind::Market => &mut s.market,
                        OrderKind::Limit => &mut s.limit,
                        OrderKind::Ioc => &mut s.ioc,
                        OrderKind::Fok => &mut s.fok,
                    } += 1;
                }
                Intent::Hostile(_) => {}
                Intent::Cancel { tag } => {
                    assert!(self.open.contains_key(tag), "cancel of order {tag}, which is not live");
                    if let Some(before) = self.canceled.insert(*tag, now) {
                        // Only an unanswered cancel is sent again, and not at once.
                        assert!(
                            now - before >= CANCEL_RETRY_MS,
                            "order {tag} canceled again after {} ms",
                            now - before
                        );
                        self.stats.cancel_retries += 1;
                        continue;
                    }
                    self.stats.cancels += 1;
                    let age = now - self.placed[tag];
                    self.stats.cancel_age_min_ms = Some(self.stats.cancel_age_min_ms.map_or(age, |m| m.min(age)));
                }
            }
        }
        let active = self.open.keys().filter(|t| !self.canceled.contains_key(t)).count();
        self.stats.active_max = self.stats.active_max.max(active);
        self.check_budget();
    }

    /// Open buys must be covered by the cash, open sells by the holdings (as the
    /// platform reserves: a market buy at the band's top).
    fn check_budget(&mut self) {
        let mut cash_committed: i64 = 0;
        let mut shares_committed: BTreeMap<&str, i64> = BTreeMap::new();
        for (tag, o) in &self.open {
            match o.side {
                Side::Buy => {
                    let per_share = if self.kinds[tag] == OrderKind::Market {
                        self.specs[self.spec_index(&o.symbol)].max_price_cents
                    } else {
                        o.price_cents
                    };
                    cash_committed += per_share * o.remaining;
                }
                Side::Sell => *shares_committed.entry(&o.symbol).or_default() += o.remaining,
            }
        }
        assert!(cash_committed <= self.cash, "open buys commit {cash_committed} cents of {}", self.cash);
        if self.cash > 0 && (self.cash - cash_committed) * 10 < self.cash {
            self.stats.cash_bound += 1;
        }
        for (symbol, committed) in shares_committed {
            let held = self.holdings.get(symbol).copied().unwrap_or(0);
            assert!(committed <= held, "open sells commit {committed} {symbol} of {held}");
            if (held - committed) * 10 < held {
                self.stats.shares_bound += 1;
            }
        }
    }
}

/// Runs the agent twice with the same seeds and once with another agent seed:
/// the first two traces must match exactly, the third must differ.
pub(crate) fn assert_deterministic(make: impl Fn(u64) -> Box<dyn Agent>) {
    let run = |agent_seed: u64| {
        let mut h = Harness::new(99, CASH_CENTS, holdings());
        h.run(make(agent_seed).as_mut(), 1500);
        h.trace
    };
    let (a, b) = (run(7), run(7));
    assert!(a.iter().map(|s| s.1.len()).sum::<usize>() > 0, "no intents at all");
    assert_eq!(a, b, "same seed and inputs, different decisions");
    assert_ne!(a, run(8), "another seed, same decisions");
}

enum Pending {
    Fill { tag: u64, symbol: String, side: Side, price_cents: i64, qty: i64, remaining: i64 },
    Done(u64),
    Trade(String, i64),
}

/// A scripted driver for behavioural tests: the test sets the book, trades and
/// holdings; submits rest (limits) or are done at the next wake (others), cancels
/// are done at the next wake; nothing fills unless the test says so.
pub(crate) struct Wakes<'a> {
    agent: &'a mut dyn Agent,
    pub next: Option<u64>,
    pub market: BTreeMap<String, SymbolView>,
    pub cash: i64,
    pub holdings: BTreeMap<String, i64>,
    pub open: BTreeMap<u64, OpenOrder>,
    /// Whether IOC, FOK and market orders fill completely (at their limit, or
    /// the last trade for a market order) before they are done; else they are done unfilled.
    pub fill_taking: bool,
    pending: Vec<Pending>,
}

impl<'a> Wakes<'a> {
    pub(crate) fn new(agent: &'a mut dyn Agent) -> Wakes<'a> {
        let first = agent.start(0);
        Wakes {
            agent,
            next: Some(first),
            market: BTreeMap::new(),
            cash: CASH_CENTS,
            holdings: holdings(),
            open: BTreeMap::new(),
            fill_taking: false,
            pending: Vec::new(),
        }
    }

    pub(crate) fn set_book(&mut self, symbol: &str, bid_cents: i64, ask_cents: i64) {
        let sv = self.market.entry(symbol.to_string()).or_default();
        sv.bid = Some((bid_cents, 100));
        sv.ask = Some((ask_cents, 100));
    }

    /// A market trade, seen by the agent before its next wake.
    pub(crate) fn trade(&mut self, symbol: &str, price_cents: i64) {
        self.market.entry(symbol.to_string()).or_default().last = Some(price_cents);
        self.pending.push(Pending::Trade(symbol.to_string(), price_cents));
    }

    /// Fills `qty` of the agent's order `tag` at `price_cents`.
    pub(crate) fn fill(&mut self, tag: u64, qty: i64, price_cents: i64) {
        let o = self.open.get_mut(&tag).expect("fill of a live order");
        o.remaining -= qty;
        let (symbol, side, remaining) = (o.symbol.clone(), o.side, o.remaining);
        let held = self.holdings.entry(symbol.clone()).or_default();
        match side {
            Side::Buy => {
                self.cash -= price_cents * qty;
                *held += qty;
            }
            Side::Sell => {
                self.cash += price_cents * qty;
                *held -= qty;
            }
        }
        if remaining == 0 {
            self.open.remove(&tag);
        }
        self.pending.push(Pending::Fill { tag, symbol, side, price_cents, qty, remaining });
    }

    /// The wake the agent asked for, in whole ms.
    pub(crate) fn next_ms(&self) -> Option<u64> {
        self.next.map(|us| us / 1_000)
    }

    /// Wakes the agent at the time it asked for; returns its intents.
    pub(crate) fn wake(&mut self) -> Vec<Intent> {
        let now = self.next.expect("the agent stopped");
        for p in std::mem::take(&mut self.pending) {
            let event = match &p {
                Pending::Fill { tag, symbol, side, price_cents, qty, remaining } => Event::Fill {
                    tag: *tag,
                    symbol,
                    side: *side,
                    price_cents: *price_cents,
                    qty: *qty,
                    remaining: *remaining,
                },
                Pending::Done(tag) => Event::Done { tag: *tag },
                Pending::Trade(symbol, price_cents) => Event::Trade { symbol, price_cents: *price_cents, qty: 1 },
            };
            self.agent.observe(&event);
        }
        let mut out = Vec::new();
        let view = View {
            now_us: now,
            now_ms: now / 1_000,
            market: &self.market,
            cash_cents: self.cash,
            holdings: &self.holdings,
            open: &self.open,
        };
        self.next = self.agent.wake(&view, &mut out);
        if let Some(n) = self.next {
            assert!(n > now, "asked to wake at {n} µs, not after {now} µs");
        }
        for intent in &out {
            match intent {
                Intent::Submit { tag, symbol, side, kind, price_cents, qty } => {
                    let o =
                        OpenOrder { symbol: symbol.clone(), side: *side, price_cents: *price_cents, remaining: *qty };
                    self.open.insert(*tag, o);
                    if *kind != OrderKind::Limit {
                        if self.fill_taking {
                            let last = self.market.get(symbol).and_then(|sv| sv.last);
                            let price =
                                if *kind == OrderKind::Market { last.expect("a last trade") } else { *price_cents };
                            self.fill(*tag, *qty, price);
                        }
                        self.open.remove(tag);
                        self.pending.push(Pending::Done(*tag));
                    }
                }
                Intent::Hostile(_) => {}
                Intent::Cancel { tag } => {
                    self.open.remove(tag);
                    self.pending.push(Pending::Done(*tag));
                }
            }
        }
        out
    }

    /// Wakes until the agent's clock reaches `ms`; returns every intent with its wake time (ms).
    pub(crate) fn wake_until(&mut self, ms: u64) -> Vec<(u64, Intent)> {
        let mut all = Vec::new();
        while let Some(now) = self.next.filter(|n| *n < ms.saturating_mul(1_000)) {
            all.extend(self.wake().into_iter().map(|i| (now / 1_000, i)));
        }
        all
    }
}
