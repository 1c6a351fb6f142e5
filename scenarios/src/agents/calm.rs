//! The default populations trading together on a tiny zero-latency exchange
//! (price-time matching, reservations as the platform makes them): the
//! defaults must give a calm, two-sided market, and well-behaved agents must
//! never be refused for want of cash or shares.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::testkit::symbols;
use super::{Agent, AgentConfig, AgentKind, Event, Intent, OpenOrder, OrderKind, Side, SymbolSpec, SymbolView, View};

#[derive(Clone, Debug)]
struct Resting {
    agent: usize,
    tag: u64,
    price_ticks: i64,
    remaining: i64,
}

/// One symbol's book: each side best first, oldest first within a price.
#[derive(Default)]
struct Book {
    bids: Vec<Resting>,
    asks: Vec<Resting>,
    last_cents: Option<i64>,
}

impl Book {
    fn side_mut(&mut self, side: Side) -> &mut Vec<Resting> {
        match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        }
    }

    fn rest(&mut self, side: Side, r: Resting) {
        let better = |p: i64| if side == Side::Buy { p >= r.price_ticks } else { p <= r.price_ticks };
        let list = self.side_mut(side);
        let at = list.iter().position(|o| !better(o.price_ticks)).unwrap_or(list.len());
        list.insert(at, r);
    }

    fn top(list: &[Resting], tick: i64) -> Option<(i64, i64)> {
        let best = list.first()?.price_ticks;
        let qty = list.iter().take_while(|o| o.price_ticks == best).map(|o| o.remaining).sum();
        Some((best * tick, qty))
    }
}

#[derive(Default)]
struct Account {
    cash_cents: i64,
    holdings: BTreeMap<String, i64>,
    open: BTreeMap<u64, OpenOrder>,
    /// What each open order reserves per share (cash for buys); sells reserve shares.
    reserve: BTreeMap<u64, i64>,
    inbox: Vec<Owned>,
}

enum Owned {
    Fill { tag: u64, symbol: String, side: Side, price_cents: i64, qty: i64, remaining: i64 },
    Done(u64),
    Trade(String, i64, i64),
}

/// Measurements of one symbol, sampled every second.
#[derive(Debug, Default)]
struct Samples {
    /// At each sample, the market makers' resting orders.
    maker_orders: Vec<usize>,
    two_sided: u64,
    total: u64,
    spreads_ticks: Vec<i64>,
    lasts_cents: Vec<i64>,
    trades: u64,
}

struct Exchange {
    /// Which agents are market makers.
    makers: Vec<bool>,
    specs: Vec<SymbolSpec>,
    books: Vec<Book>,
    accounts: Vec<Account>,
    refused: u64,
    samples: Vec<Samples>,
}

impl Exchange {
    fn spec(&self, symbol: &str) -> usize {
        self.specs.iter().position(|s| s.symbol == symbol).expect("known symbol")
    }

    fn free_cash(&self, a: usize) -> i64 {
        let acct = &self.accounts[a];
        let reserved: i64 =
            acct.open.iter().filter(|(_, o)| o.side == Side::Buy).map(|(t, o)| acct.reserve[t] * o.remaining).sum();
        acct.cash_cents - reserved
    }

    fn free_shares(&self, a: usize, symbol: &str) -> i64 {
        let acct = &self.accounts[a];
        let reserved: i64 =
            acct.open.values().filter(|o| o.side == Side::Sell && o.symbol == symbol).map(|o| o.remaining).sum();
        acct.holdings.get(symbol).copied().unwrap_or(0) - reserved
    }

    /// Reserves, matches and rests (or closes) agent `a`'s order, refusing it if not covered.
    fn submit(&mut self, a: usize, intent: &Intent) {
        let Intent::Submit { tag, ref symbol, side, kind, price_cents, qty } = *intent else { panic!("not a submit") };
        let s = self.spec(symbol);
        let tick = self.specs[s].tick_cents;
        let per_share = if kind == OrderKind::Market { self.specs[s].max_price_cents } else { price_cents };
        let fits = match side {
            Side::Buy => per_share * qty <= self.free_cash(a),
            Side::Sell => qty <= self.free_shares(a, symbol),
        };
        if !fits {
            self.refused += 1;
            self.accounts[a].inbox.push(Owned::Done(tag));
            return;
        }
        let limit = (kind != OrderKind::Market).then_some(price_cents / tick);
        let crosses = |p: i64| match (side, limit) {
            (_, None) => true,
            (Side::Buy, Some(l)) => p <= l,
            (Side::Sell, Some(l)) => p >= l,
        };
        let book = &mut self.books[s];
        if kind == OrderKind::Fok {
            let available: i64 =
                book.side_mut(side.opposite()).iter().take_while(|m| crosses(m.price_ticks)).map(|m| m.remaining).sum();
            if available < qty {
                self.accounts[a].inbox.push(Owned::Done(tag));
                return;
            }
        }
        let mut remaining = qty;
        while remaining > 0 {
            let Some(maker) = self.books[s].side_mut(side.opposite()).first().cloned() else { break };
            if !crosses(maker.price_ticks) {
                break;
            }
            let q = remaining.min(maker.remaining);
            remaining -= q;
            let price = maker.price_ticks * tick;
            self.trade(s, (maker.agent, maker.tag, side.opposite()), (a, tag, side), price, q, remaining);
        }
        if remaining > 0 && kind == OrderKind::Limit {
            let acct = &mut self.accounts[a];
            acct.open.insert(tag, OpenOrder { symbol: symbol.to_string(), side, price_cents, remaining });
            acct.reserve.insert(tag, per_share);
            let r = Resting { agent: a, tag, price_ticks: price_cents / tick, remaining };
            self.books[s].rest(side, r);
        } else if remaining > 0 {
            self.accounts[a].inbox.push(Owned::Done(tag));
        }
    }

    /// Books one match between the first resting maker and a taker.
    fn trade(&mut self, s: usize, maker: (usize, u64, Side), taker: (usize, u64, Side), price: i64, q: i64, left: i64) {
        let symbol = self.specs[s].symbol.clone();
        let book = &mut self.books[s];
        let side = book.side_mut(maker.2);
        side[0].remaining -= q;
        let maker_left = side[0].remaining;
        if maker_left == 0 {
            side.remove(0);
        }
        book.last_cents = Some(price);
        self.samples[s].trades += 1;
        for (a, tag, side, rem) in [(maker.0, maker.1, maker.2, maker_left), (taker.0, taker.1, taker.2, left)] {
            let acct = &mut self.accounts[a];
            let held = acct.holdings.entry(symbol.clone()).or_default();
            match side {
                Side::Buy => {
                    acct.cash_cents -= price * q;
                    *held += q;
                }
                Side::Sell => {
                    acct.cash_cents += price * q;
                    *held -= q;
                }
            }
            assert!(acct.cash_cents >= 0 && *held >= 0, "agent {a} overdrawn");
            if let Some(o) = acct.open.get_mut(&tag) {
                o.remaining = rem;
                if rem == 0 {
                    acct.open.remove(&tag);
                    acct.reserve.remove(&tag);
                }
            }
            let fill = Owned::Fill { tag, symbol: symbol.clone(), side, price_cents: price, qty: q, remaining: rem };
            acct.inbox.push(fill);
        }
        for acct in &mut self.accounts {
            acct.inbox.push(Owned::Trade(symbol.clone(), price, q));
        }
    }

    fn cancel(&mut self, a: usize, tag: u64) {
        let Some(o) = self.accounts[a].open.remove(&tag) else { return };
        self.accounts[a].reserve.remove(&tag);
        let s = self.spec(&o.symbol);
        self.books[s].side_mut(o.side).retain(|r| !(r.agent == a && r.tag == tag));
        self.accounts[a].inbox.push(Owned::Done(tag));
    }

    fn market(&self) -> BTreeMap<String, SymbolView> {
        let view = |(spec, b): (&SymbolSpec, &Book)| {
            let sv = SymbolView {
                bid: Book::top(&b.bids, spec.tick_cents),
                ask: Book::top(&b.asks, spec.tick_cents),
                last: b.last_cents,
            };
            (spec.symbol.clone(), sv)
        };
        self.specs.iter().zip(&self.books).map(view).collect()
    }

    fn sample(&mut self) {
        for (s, b) in self.books.iter().enumerate() {
            let m = &mut self.samples[s];
            m.total += 1;
            if let (Some(bid), Some(ask)) = (b.bids.first(), b.asks.first()) {
                m.two_sided += 1;
                m.spreads_ticks.push(ask.price_ticks - bid.price_ticks);
            }
            m.lasts_cents.extend(b.last_cents);
            let makers = b.bids.iter().chain(&b.asks).filter(|r| self.makers[r.agent]).count();
            m.maker_orders.push(makers);
        }
    }
}

fn deliver(agent: &mut dyn Agent, inbox: Vec<Owned>) {
    for e in &inbox {
        let event = match e {
            Owned::Fill { tag, symbol, side, price_cents, qty, remaining } => Event::Fill {
                tag: *tag,
                symbol,
                side: *side,
                price_cents: *price_cents,
                qty: *qty,
                remaining: *remaining,
            },
            Owned::Done(tag) => Event::Done { tag: *tag },
            Owned::Trade(symbol, price_cents, qty) => Event::Trade { symbol, price_cents: *price_cents, qty: *qty },
        };
        agent.observe(&event);
    }
}

/// Runs the populations (config, count, cash, holdings per symbol) for `duration_ms`.
fn run(populations: &[(AgentConfig, u32, i64, [i64; 2])], duration_ms: u64) -> Exchange {
    let specs = symbols();
    let mut agents: Vec<Box<dyn Agent>> = Vec::new();
    let mut accounts = Vec::new();
    let mut makers = Vec::new();
    for (p, (config, count, cash, held)) in populations.iter().enumerate() {
        for i in 0..*count {
            agents.push(config.build(1_000 * p as u64 + u64::from(i), i, &specs));
            let holdings = specs.iter().map(|s| s.symbol.clone()).zip(held.iter().copied()).collect();
            accounts.push(Account { cash_cents: *cash, holdings, ..Account::default() });
            makers.push(config.kind == AgentKind::MarketMaker);
        }
    }
    let n = specs.len();
    let mut ex = Exchange {
        makers,
        specs,
        books: (0..n).map(|_| Book::default()).collect(),
        accounts,
        refused: 0,
        samples: (0..n).map(|_| Samples::default()).collect(),
    };
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> =
        agents.iter_mut().enumerate().map(|(a, agent)| Reverse((agent.start(0), a))).collect();
    let mut next_sample_ms = 1_000;
    while let Some(Reverse((now_us, a))) = queue.pop() {
        let now = now_us / 1_000;
        if now >= duration_ms {
            break;
        }
        while next_sample_ms <= now {
            ex.sample();
            next_sample_ms += 1_000;
        }
        deliver(agents[a].as_mut(), std::mem::take(&mut ex.accounts[a].inbox));
        let market = ex.market();
        let acct = &ex.accounts[a];
        let view = View {
            now_us,
            now_ms: now,
            market: &market,
            cash_cents: acct.cash_cents,
            holdings: &acct.holdings,
            open: &acct.open,
        };
        let mut out = Vec::new();
        let next = agents[a].wake(&view, &mut out);
        for intent in &out {
            match *intent {
                Intent::Submit { .. } => ex.submit(a, intent),
                Intent::Cancel { tag } => ex.cancel(a, tag),
                Intent::Hostile(_) => {}
            }
        }
        if let Some(t) = next {
            queue.push(Reverse((t, a)));
        }
    }
    ex
}

fn defaults() -> Vec<(AgentConfig, u32, i64, [i64; 2])> {
    let config = AgentConfig::default_for;
    vec![
        (config(AgentKind::Noise), 10, 5_000_000, [1_000, 400]),
        (config(AgentKind::MarketMaker), 2, 20_000_000, [5_000, 2_000]),
        (config(AgentKind::Momentum), 3, 5_000_000, [500, 200]),
        (config(AgentKind::Value), 3, 5_000_000, [500, 200]),
        (config(AgentKind::Whale), 1, 20_000_000, [2_000, 1_000]),
    ]
}

#[test]
fn defaults_make_a_calm_two_sided_market() {
    let ex = run(&defaults(), 600_000);
    assert_eq!(ex.refused, 0, "a well-behaved agent was refused");
    for (spec, m) in ex.specs.iter().zip(&ex.samples) {
        let mut spreads = m.spreads_ticks.clone();
        spreads.sort_unstable();
        let median_spread = spreads[spreads.len() / 2];
        let start = spec.start_price_cents;
        let (lo, hi) = (*m.lasts_cents.iter().min().unwrap(), *m.lasts_cents.iter().max().unwrap());
        let summary = format!(
            "{}: two-sided {}/{}, median spread {median_spread} ticks, last {lo}..{hi} (start {start}), {} trades",
            spec.symbol, m.two_sided, m.total, m.trades
        );
        assert!(m.two_sided * 100 >= m.total * 98, "{summary}");
        assert!(median_spread <= 4, "{summary}");
        assert!(lo * 100 >= start * 95 && hi * 100 <= start * 105, "{summary}");
        assert!(m.trades > 300, "{summary}");
    }
}

/// A whale dumping 10 000 ACME shares (about 50 times the makers' quoted size)
/// in 50 market orders over 5 s, against the default populations, except that
/// the makers pull at a 2% move (the default 5% is more than this dump moves).
#[test]
fn a_dump_crashes_the_price_and_the_makers_pull_out() {
    let dump = AgentConfig {
        kind: AgentKind::Whale,
        params: super::AgentParams::Whale(super::WhaleParams {
            rate_per_s: 0.0,
            at_ms: vec![300_000],
            symbol: Some("ACME".into()),
            side: Some(Side::Sell),
            lots: 1_000,
            order_type: OrderKind::Market,
            children: 50,
            child_interval_ms: 100,
            ..Default::default()
        }),
    };
    let mut populations = defaults();
    let maker = super::MarketMakerParams { pull_move_bps: 200, ..Default::default() };
    populations[1].0.params = super::AgentParams::MarketMaker(maker);
    populations.push((dump, 1, 0, [10_000, 0]));
    let ex = run(&populations, 400_000);
    assert_eq!(ex.refused, 0, "a well-behaved agent was refused");
    // Samples are taken every second from 1 s: index k is at (k + 1) s.
    let acme = &ex.samples[0];
    let (before, crash) = (&acme.lasts_cents[..299], &acme.lasts_cents[299..310]);
    assert!(before.iter().all(|p| (9_900..=10_100).contains(p)), "calm before: {before:?}");
    // Without the makers' bids, most of the dump finds no buyer and expires: about 2%.
    assert!(crash.iter().any(|p| *p < 9_850), "a crash: {crash:?}");
    let makers = &acme.maker_orders;
    assert!(makers[..299].iter().all(|n| *n > 0), "makers quote before: {:?}", &makers[..299]);
    let out = makers[299..330].iter().position(|n| *n == 0).expect("the makers pull out") + 299;
    // They stay out for pull_ms (10 s) after the move that pulled them, then come back.
    assert!(makers[out..out + 9].iter().all(|n| *n == 0), "out for 10 s: {:?}", &makers[out..out + 12]);
    assert!(makers[out + 12..].iter().all(|n| *n > 0), "back after: {:?}", &makers[out..]);
    // BOLT never moved: its quotes never left.
    assert!(ex.samples[1].maker_orders.iter().all(|n| *n > 0));
}
