//! What every agent kind shares: its PRNG, its Poisson schedule, its view of
//! one instrument in ticks, and its ledger of live orders (which also tells
//! it how much cash and how many shares are still free to commit).

use std::collections::BTreeMap;

use super::{Event, Intent, OpenOrder, OrderKind, Side, SymbolSpec, SymbolView, View};

/// SplitMix64: tiny, fast, and a pure function of its seed (no OS randomness).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias, n / 2^64, is far below anything a run can see).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi, "Rng::range({lo}, {hi})");
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let span = u64::try_from(span).expect("range span fits u64");
        lo + self.below(span) as i64
    }

    /// True with probability `pct` / 100.
    pub(crate) fn percent(&mut self, pct: u32) -> bool {
        self.below(100) < u64::from(pct)
    }

    /// True with probability `bps` / 10 000.
    pub(crate) fn bps(&mut self, bps: u32) -> bool {
        self.below(10_000) < u64::from(bps)
    }

    pub(crate) fn side(&mut self) -> Side {
        if self.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    }

    /// An exponentially distributed wait with mean `mean_ms`, in whole ms, at least 1.
    /// The only floating point of the agents; it uses our own `ln` (basic IEEE
    /// operations only) so that the draw is the same on every platform and libm.
    pub(crate) fn exp_us(&mut self, mean_us: f64) -> u64 {
        // In (0, 1]: never 0, so the logarithm is finite.
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let wait = -ln(u) * mean_us;
        assert!(wait >= 0.0, "negative wait {wait}");
        // `as` saturates: an absurdly slow rate waits "forever", not a wrapped time.
        (wait.ceil() as u64).max(1)
    }
}

/// Natural logarithm of `x` in (0, 1], from +, -, *, / only (which IEEE 754
/// rounds identically everywhere), unlike `f64::ln`, which calls the platform's libm.
pub(crate) fn ln(x: f64) -> f64 {
    assert!(x > 0.0 && x <= 1.0 && x.is_normal(), "ln({x}) outside (0, 1]");
    let bits = x.to_bits();
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52)); // in [1, 2)
    if m > std::f64::consts::SQRT_2 {
        m /= 2.0;
        exponent += 1;
    }
    // ln(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), |s| < 0.172.
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    for k in 0..14 {
        sum += term / f64::from(2 * k + 1);
        term *= s2;
    }
    2.0 * sum + exponent as f64 * std::f64::consts::LN_2
}

/// Poisson arrivals: exponential gaps drawn from the agent's PRNG. The times are
/// a pure function of the seed, whatever the driver does: a late driver does not
/// shift the later arrivals (open loop).
#[derive(Clone, Debug)]
pub(crate) struct Arrivals {
    mean_us: f64,
    /// The next arrival, µs since the run started.
    pub(crate) next_us: u64,
}

impl Arrivals {
    pub(crate) fn new(rate_per_s: f64) -> Arrivals {
        assert!(rate_per_s > 0.0 && rate_per_s.is_finite(), "rate_per_s {rate_per_s}");
        Arrivals { mean_us: 1_000_000.0 / rate_per_s, next_us: 0 }
    }

    /// Draws the first arrival after `now_us`.
    pub(crate) fn first(&mut self, rng: &mut Rng, now_us: u64) -> u64 {
        self.next_us = now_us.saturating_add(rng.exp_us(self.mean_us));
        self.next_us
    }

    /// Draws the arrival after the current one.
    pub(crate) fn advance(&mut self, rng: &mut Rng) {
        self.next_us = self.next_us.saturating_add(rng.exp_us(self.mean_us));
    }
}

/// The next wake to ask for (µs): the scheduled time, but strictly after now. When the
/// driver is late, arrivals already due are then replayed 1 µs apart rather than dropped,
/// so the number of decisions does not depend on how slow the platform was.
pub(crate) fn after(now_us: u64, scheduled_us: u64) -> u64 {
    let next = scheduled_us.max(now_us + 1);
    assert!(next > now_us);
    next
}

/// One instrument as an agent computes with it: prices in ticks, the band on the grid.
#[derive(Clone, Debug)]
pub(crate) struct Instr {
    pub(crate) symbol: String,
    pub(crate) tick_cents: i64,
    pub(crate) lot_shares: i64,
    /// The band in ticks, pulled inside [min_price_cents, max_price_cents] if the ends are off the grid.
    pub(crate) lo_ticks: i64,
    pub(crate) hi_ticks: i64,
    pub(crate) start_ticks: i64,
    /// What the platform reserves per share for a market buy (the band's top).
    pub(crate) market_buy_reserve_cents: i64,
}

impl Instr {
    pub(crate) fn new(spec: &SymbolSpec) -> Instr {
        if let Err(e) = spec.validate() {
            panic!("agents built with a bad instrument: {e}");
        }
        let t = spec.tick_cents;
        let lo_ticks = spec.min_price_cents.div_euclid(t) + i64::from(spec.min_price_cents.rem_euclid(t) != 0);
        let hi_ticks = spec.max_price_cents.div_euclid(t);
        let start_ticks = (spec.start_price_cents.div_euclid(t)).clamp(lo_ticks, hi_ticks);
        Instr {
            symbol: spec.symbol.clone(),
            tick_cents: t,
            lot_shares: spec.lot_shares,
            lo_ticks,
            hi_ticks,
            start_ticks,
            market_buy_reserve_cents: spec.max_price_cents,
        }
    }

    pub(crate) fn clamp(&self, ticks: i64) -> i64 {
        ticks.clamp(self.lo_ticks, self.hi_ticks)
    }

    /// A price in cents to ticks, rounding down (a bid seen in the market).
    pub(crate) fn down(&self, cents: i64) -> i64 {
        cents.div_euclid(self.tick_cents)
    }

    /// A price in cents to ticks, rounding up (an ask seen in the market).
    pub(crate) fn up(&self, cents: i64) -> i64 {
        cents.div_euclid(self.tick_cents) + i64::from(cents.rem_euclid(self.tick_cents) != 0)
    }

    pub(crate) fn cents(&self, ticks: i64) -> i64 {
        ticks.checked_mul(self.tick_cents).expect("price in cents overflows")
    }

    /// Best bid and ask in ticks.
    pub(crate) fn touch(&self, sv: &SymbolView) -> (Option<i64>, Option<i64>) {
        (sv.bid.map(|(p, _)| self.down(p)), sv.ask.map(|(p, _)| self.up(p)))
    }

    /// The price to trade around, in *half* ticks (so that the mid of an odd
    /// spread is exact): the mid when both sides are quoted, else the last
    /// trade, else the one side there is, else `fallback_ticks`.
    pub(crate) fn reference_half_ticks(&self, sv: &SymbolView, fallback_ticks: i64) -> i64 {
        let r = match (self.touch(sv), sv.last) {
            ((Some(b), Some(a)), _) => a + b,
            (_, Some(last)) => 2 * self.down(last),
            ((Some(b), None), None) => 2 * b,
            ((None, Some(a)), None) => 2 * a,
            ((None, None), None) => 2 * fallback_ticks,
        };
        r.clamp(2 * self.lo_ticks, 2 * self.hi_ticks)
    }
}

/// A price in half ticks rounded down to whole ticks: where a buy goes, so that
/// buys and sells sit symmetrically around a mid between two ticks.
pub(crate) fn floor_half(half_ticks: i64) -> i64 {
    half_ticks.div_euclid(2)
}

/// A price in half ticks rounded up to whole ticks: where a sell goes.
pub(crate) fn ceil_half(half_ticks: i64) -> i64 {
    half_ticks.div_euclid(2) + half_ticks.rem_euclid(2)
}

/// Finds the instrument of `symbol` (agents trade a handful, so a scan is fine).
pub(crate) fn index_of(instrs: &[Instr], symbol: &str) -> Option<usize> {
    instrs.iter().position(|i| i.symbol == symbol)
}

/// One of the agent's orders that is still live as far as it knows.
#[derive(Clone, Debug)]
pub(crate) struct Live {
    pub(crate) symbol: String,
    pub(crate) side: Side,
    /// The limit price in ticks (0 for market orders).
    pub(crate) price_ticks: i64,
    /// Cash the platform holds per share of a buy (the limit, or the band's top for a market buy).
    reserve_cents: i64,
    pub(crate) remaining: i64,
    pub(crate) placed_ms: u64,
    /// A cancel was sent; the order still commits cash or shares until it is done.
    pub(crate) canceling: bool,
    /// When the last cancel was sent.
    canceled_ms: u64,
}

/// A cancel not answered by the order's end within this long is sent again: a
/// cancel lost to a fault must not leave a stale order in the book for good.
pub(crate) const CANCEL_RETRY_MS: u64 = 2_000;

/// The agent's own record of its orders: tags, what they commit, what is still live.
///
/// Kept by the agent itself rather than read only from `View::open`, because the
/// driver learns of an order when its submit is sent, possibly after the next wake,
/// and shows market orders with price 0 (their commitment is the band's top).
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger {
    last_tag: u64,
    pub(crate) live: BTreeMap<u64, Live>,
}

impl Ledger {
    /// Appends a submit and records it. `price_ticks` is ignored (0) for market orders.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &mut self,
        out: &mut Vec<Intent>,
        now_ms: u64,
        ins: &Instr,
        side: Side,
        kind: OrderKind,
        price_ticks: i64,
        lots: i64,
    ) -> u64 {
        assert!(lots > 0, "submit of {lots} lots");
        let qty = lots.checked_mul(ins.lot_shares).expect("quantity overflows");
        let price_ticks = if kind == OrderKind::Market { 0 } else { price_ticks };
        if kind != OrderKind::Market {
            assert!(
                (ins.lo_ticks..=ins.hi_ticks).contains(&price_ticks),
                "{} price {price_ticks} ticks outside the band [{}, {}]",
                ins.symbol,
                ins.lo_ticks,
                ins.hi_ticks
            );
        }
        let reserve_cents = match (side, kind) {
            (Side::Sell, _) => 0,
            (Side::Buy, OrderKind::Market) => ins.market_buy_reserve_cents,
            (Side::Buy, _) => ins.cents(price_ticks),
        };
        self.last_tag += 1;
        let tag = self.last_tag;
        let live = Live {
            symbol: ins.symbol.clone(),
            side,
            price_ticks,
            reserve_cents,
            remaining: qty,
            placed_ms: now_ms,
            canceling: false,
            canceled_ms: 0,
        };
        self.live.insert(tag, live);
        let price_cents = ins.cents(price_ticks);
        out.push(Intent::Submit { tag, symbol: ins.symbol.clone(), side, kind, price_cents, qty });
        tag
    }

    /// Appends a cancel of a live order (once: the decision to cancel the same order twice is a bug).
    pub(crate) fn cancel(&mut self, out: &mut Vec<Intent>, now_ms: u64, tag: u64) {
        let live = self.live.get_mut(&tag).expect("cancel of an order the agent does not know");
        assert!(!live.canceling, "order {tag} canceled twice");
        live.canceling = true;
        live.canceled_ms = now_ms;
        out.push(Intent::Cancel { tag });
    }

    /// Sends again the cancels that got no answer within [`CANCEL_RETRY_MS`].
    pub(crate) fn retry_cancels(&mut self, out: &mut Vec<Intent>, now_ms: u64) {
        for (tag, live) in self.live.iter_mut().filter(|(_, l)| l.canceling) {
            if now_ms.saturating_sub(live.canceled_ms) >= CANCEL_RETRY_MS {
                live.canceled_ms = now_ms;
                out.push(Intent::Cancel { tag: *tag });
            }
        }
    }

    /// Applies the agent's own fills and closes; market trades are not ours to apply.
    pub(crate) fn observe(&mut self, event: &Event<'_>) {
        match *event {
            Event::Fill { tag, remaining, .. } => {
                if let Some(live) = self.live.get_mut(&tag) {
                    // Never grow: a report out of order must not make us commit less than we do.
                    live.remaining = live.remaining.min(remaining.max(0));
                    if live.remaining == 0 {
                        self.live.remove(&tag);
                    }
                }
            }
            Event::Done { tag } => {
                self.live.remove(&tag);
            }
            Event::Trade { .. } => {}
        }
    }

    /// Live orders in `symbol` with no cancel sent, oldest first.
    pub(crate) fn active<'a>(&'a self, symbol: &'a str) -> impl Iterator<Item = (u64, &'a Live)> + 'a {
        self.live.iter().filter(move |(_, l)| l.symbol == symbol && !l.canceling).map(|(t, l)| (*t, l))
    }

    /// Shares still to trade on `side` of `symbol`, counting orders being canceled.
    pub(crate) fn open_qty(&self, symbol: &str, side: Side) -> i64 {
        self.live.values().filter(|l| l.symbol == symbol && l.side == side).map(|l| l.remaining).sum()
    }

    /// Cash that open buys hold: by our own record, or the driver's if it shows more.
    fn cash_committed(&self, view: &View<'_>, instrs: &[Instr]) -> i128 {
        let seen = |o: &OpenOrder| -> i128 {
            if o.side != Side::Buy {
                return 0;
            }
            let per_share = match (o.price_cents, index_of(instrs, &o.symbol)) {
                (0, Some(i)) => instrs[i].market_buy_reserve_cents,
                (p, _) => p,
            };
            i128::from(per_share) * i128::from(o.remaining)
        };
        let mut total: i128 = 0;
        for (tag, l) in self.live.iter().filter(|(_, l)| l.side == Side::Buy) {
            let own = i128::from(l.reserve_cents) * i128::from(l.remaining);
            total += own.max(view.open.get(tag).map_or(0, seen));
        }
        total + view.open.iter().filter(|(t, _)| !self.live.contains_key(t)).map(|(_, o)| seen(o)).sum::<i128>()
    }

    /// Shares of `symbol` that open sells hold.
    fn shares_committed(&self, view: &View<'_>, symbol: &str) -> i64 {
        let is_sell = |o: &OpenOrder| o.side == Side::Sell && o.symbol == symbol;
        let mut total = 0;
        for (tag, l) in self.live.iter().filter(|(_, l)| l.side == Side::Sell && l.symbol == symbol) {
            total += l.remaining.max(view.open.get(tag).filter(|o| is_sell(o)).map_or(0, |o| o.remaining));
        }
        total
            + view
                .open
                .iter()
                .filter(|(t, o)| !self.live.contains_key(t) && is_sell(o))
                .map(|(_, o)| o.remaining)
                .sum::<i64>()
    }

    /// How many of `want` lots of a buy at `price_ticks` (or a market buy) the
    /// believed cash still covers, after what open buys commit.
    pub(crate) fn buy_lots(
        &self,
        view: &View<'_>,
        instrs: &[Instr],
        ins: &Instr,
        kind: OrderKind,
        price_ticks: i64,
        want: i64,
    ) -> i64 {
        let per_share = if kind == OrderKind::Market { ins.market_buy_reserve_cents } else { ins.cents(price_ticks) };
        let per_lot = i128::from(per_share) * i128::from(ins.lot_shares);
        assert!(per_lot > 0, "{} lot costs {per_lot} cents", ins.symbol);
        let free = i128::from(view.cash_cents) - self.cash_committed(view, instrs);
        let lots = (free.max(0) / per_lot).min(i128::from(want.max(0)));
        i64::try_from(lots).expect("lots fit i64")
    }

    /// How many of `want` lots the believed holdings still cover, after what open sells commit.
    pub(crate) fn sell_lots(&self, view: &View<'_>, ins: &Instr, want: i64) -> i64 {
        let held = view.holdings.get(&ins.symbol).copied().unwrap_or(0);
        let free = held - self.shares_committed(view, &ins.symbol);
        (free.max(0) / ins.lot_shares).min(want.max(0))
    }
}

/// The parts every agent has: seed-driven randomness, its instruments, its orders,
/// and the wake it last asked for (so that a driver calling early is caught).
#[derive(Clone, Debug)]
pub(crate) struct Core {
    pub(crate) rng: Rng,
    pub(crate) instrs: Vec<Instr>,
    pub(crate) ledger: Ledger,
    asked_us: Option<u64>,
}

impl Core {
    pub(crate) fn new(seed: u64, symbols: &[SymbolSpec]) -> Core {
        assert!(!symbols.is_empty(), "an agent needs at least one instrument");
        Core {
            rng: Rng::new(seed),
            instrs: symbols.iter().map(Instr::new).collect(),
            ledger: Ledger::default(),
            asked_us: None,
        }
    }

    /// Records the wake time the agent asked for.
    pub(crate) fn ask(&mut self, wake_us: u64) -> u64 {
        self.asked_us = Some(wake_us);
        wake_us
    }

    /// Checks the contract at the top of `wake`, and re-sends unanswered cancels.
    pub(crate) fn begin(&mut self, view: &View<'_>, out: &mut Vec<Intent>) {
        let asked = self.asked_us.expect("wake before start");
        assert!(view.now_us >= asked, "woken at {} µs, before the asked {asked} µs", view.now_us);
        self.ledger.retry_cancels(out, view.now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_matches_std_closely() {
        let mut rng = Rng::new(7);
        for _ in 0..10_000 {
            let x = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let (ours, std) = (ln(x), x.ln());
            assert!((ours - std).abs() <= 1e-14 * std.abs().max(1.0), "ln({x}) = {ours}, std {std}");
        }
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn exponential_waits_have_the_asked_mean() {
        let mut rng = Rng::new(42);
        let n = 20_000u64;
        let total: u64 = (0..n).map(|_| rng.exp_us(100.0)).sum();
        // The ceil adds half a ms on average; 3 standard errors is about 2 ms.
        let mean = total / n;
        assert!((98..=103).contains(&mean), "mean wait {mean} ms for 100 ms asked");
        assert!((0..1000).all(|_| rng.exp_us(0.001) == 1), "at least 1 µs");
    }

    #[test]
    fn rng_range_covers_both_ends_only() {
        let mut rng = Rng::new(1);
        let draws: Vec<i64> = (0..1000).map(|_| rng.range(-2, 2)).collect();
        assert!(draws.iter().all(|d| (-2..=2).contains(d)));
        assert!(draws.contains(&-2) && draws.contains(&2));
    }

    #[test]
    fn instrument_rounds_onto_the_grid_and_band() {
        let spec = SymbolSpec {
            symbol: "ACME".into(),
            tick_cents: 5,
            lot_shares: 10,
            start_price_cents: 10_000,
            min_price_cents: 1_003,
            max_price_cents: 20_002,
        };
        let ins = Instr::new(&spec);
        assert_eq!((ins.lo_ticks, ins.hi_ticks, ins.start_ticks), (201, 4000, 2000));
        assert_eq!((ins.down(1_004), ins.up(1_004), ins.up(1_005)), (200, 201, 201));
        assert_eq!(ins.clamp(5), 201);
        let sv = SymbolView { bid: Some((9_990, 1)), ask: Some((10_010, 1)), last: Some(50) };
        assert_eq!(ins.reference_half_ticks(&sv, 0), 4000);
        let odd = SymbolView { bid: Some((9_990, 1)), ask: Some((9_995, 1)), last: None };
        let r = ins.reference_half_ticks(&odd, 0);
        assert_eq!((r, floor_half(r), ceil_half(r)), (3997, 1998, 1999));
        assert_eq!(ins.reference_half_ticks(&SymbolView { last: Some(50), ..Default::default() }, 0), 402);
        assert_eq!(ins.reference_half_ticks(&SymbolView::default(), 2100), 4200);
        assert_eq!((floor_half(-3), ceil_half(-3), floor_half(4), ceil_half(4)), (-2, -1, 2, 2));
    }
}
