//! Order book throughput and per-operation latency on an exchange-core-like mix.
//!
//! The book is pre-filled with about 1,000 resting orders over ~300 price levels
//! around a mid price. Then a fixed pseudo-random stream (SplitMix64, constant seed)
//! of operations: mostly non-crossing limit orders and cancels of resting orders,
//! keeping the resting count near 1,000, plus a few percent of aggressive orders
//! (market, IOC, crossing limit, FOK) that take liquidity. The stream is generated
//! outside the timed region by running it once against a book, so every cancel
//! targets an order that rests at that moment.
//!
//! `cargo bench -p fafnir-platform --bench book` prints, before criterion's own
//! report:
//! - the headline ops/s, from batch-timed replays of the whole stream;
//! - p50 / p99 / p99.9 / max latency per operation, from a separate pass that reads
//!   the clock around every single operation (which adds its own overhead, printed).
//!
//! Under `cargo test --benches` (no `--bench` flag) it replays a short stream once
//! as a smoke test.
// A benchmark measures wall-clock time and is never part of a run, so the
// determinism bans of platform/clippy.toml do not apply here.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, SamplingMode, Throughput};
use fafnir_platform::book::{Book, BookEvent, NewOrder};
use fafnir_platform::domain::{AccountId, OrderId, OrderType, PriceTicks, Shares, Side};

const SEED: u64 = 0x00fa_f41e_b00c;
const MID_TICKS: i64 = 10_000;
/// Passive orders rest within this many ticks of the mid, on either side.
const SPREAD_LEVELS: u64 = 150;
const RESTING_TARGET: usize = 1_000;
const OPS_BENCH: usize = 1_000_000;
const OPS_SMOKE: usize = 20_000;
/// Batch-timed replays of the whole stream for the headline figure.
const HEADLINE_RUNS: usize = 5;

/// One operation of the stream.
#[derive(Clone, Debug)]
enum Op {
    Submit(NewOrder),
    Cancel(OrderId),
}

/// A tiny deterministic PRNG (SplitMix64).
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// Uniform-enough in `0..n` for a workload.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn side(&mut self) -> Side {
        if self.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        }
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds the stream by running it against a book, so cancels hit resting orders.
struct Generator {
    rng: SplitMix64,
    book: Book,
    /// Resting ids, and each one's position there, for O(1) random cancels.
    live: Vec<OrderId>,
    position: HashMap<OrderId, usize>,
    orders_made: u64,
    out: Vec<BookEvent>,
}

impl Generator {
    fn new() -> Generator {
        Generator {
            rng: SplitMix64 { state: SEED },
            book: Book::new(),
            live: Vec::new(),
            position: HashMap::new(),
            orders_made: 0,
            out: Vec::new(),
        }
    }

    /// The next operation, already applied to the generator's book.
    fn step(&mut self) -> Op {
        let roll = self.rng.below(100);
        let cancel_percent = if self.live.len() > RESTING_TARGET { 60 } else { 40 };
        let op = if roll < 4 {
            self.aggressive().unwrap_or_else(|| self.passive())
        } else if roll < 4 + cancel_percent && !self.live.is_empty() {
            Op::Cancel(self.live[self.rng.below(self.live.len() as u64) as usize])
        } else {
            self.passive()
        };
        self.out.clear();
        match &op {
            Op::Submit(order) => self.book.submit(order.clone(), &mut self.out),
            Op::Cancel(id) => self.book.cancel(*id, &mut self.out),
        }
        self.track(&op);
        op
    }

    /// A limit order that does not cross: it only adds liquidity.
    fn passive(&mut self) -> Op {
        let side = self.rng.side();
        let offset = 1 + self.rng.below(SPREAD_LEVELS) as i64;
        let price = match side {
            Side::Buy => (MID_TICKS - offset).min(self.book.best_ask().map_or(i64::MAX, |(p, _)| p.0 - 1)),
            Side::Sell => (MID_TICKS + offset).max(self.book.best_bid().map_or(0, |(p, _)| p.0 + 1)),
        };
        let qty = 1 + self.rng.below(100) as i64;
        Op::Submit(self.order(side, OrderType::Limit, Some(PriceTicks(price)), qty))
    }

    /// An order that takes liquidity at or a little past the best opposite price.
    fn aggressive(&mut self) -> Option<Op> {
        let side = self.rng.side();
        let best = match side {
            Side::Buy => self.book.best_ask(),
            Side::Sell => self.book.best_bid(),
        };
        let (best, _) = best?;
        let slack = self.rng.below(4) as i64;
        let limit = PriceTicks(match side {
            Side::Buy => best.0 + slack,
            Side::Sell => best.0 - slack,
        });
        let qty = 1 + self.rng.below(200) as i64;
        let (kind, limit) = match self.rng.below(4) {
            0 => (OrderType::Market, None),
            1 => (OrderType::Ioc, Some(limit)),
            2 => (OrderType::Limit, Some(limit)),
            _ => (OrderType::Fok, Some(limit)),
        };
        Some(Op::Submit(self.order(side, kind, limit, qty)))
    }

    fn order(&mut self, side: Side, kind: OrderType, limit: Option<PriceTicks>, qty: i64) -> NewOrder {
        self.orders_made += 1;
        // Scrambled like the platform's hashed ids; `mix` is a bijection, so unique.
        let id = OrderId(mix(self.orders_made));
        let account = AccountId(1 + self.rng.below(500));
        NewOrder { id, account, side, kind, limit, qty: Shares(qty) }
    }

    /// Keeps `live` equal to the book's resting ids after `op`.
    fn track(&mut self, op: &Op) {
        let events = std::mem::take(&mut self.out);
        for event in &events {
            match event {
                BookEvent::Rested { order, .. } => {
                    self.position.insert(*order, self.live.len());
                    self.live.push(*order);
                }
                BookEvent::Fill(fill) if fill.maker_remaining.0 == 0 => self.forget(fill.maker_order),
                BookEvent::Closed { order, .. } if matches!(op, Op::Cancel(_)) => self.forget(*order),
                _ => {}
            }
        }
        self.out = events;
        assert_eq!(self.live.len(), self.book.resting_count(), "workload lost track of resting orders");
    }

    fn forget(&mut self, id: OrderId) {
        let at = self.position.remove(&id).expect("forgetting an order that rests");
        self.live.swap_remove(at);
        if let Some(moved) = self.live.get(at) {
            self.position.insert(*moved, at);
        }
    }
}

/// The pre-filled book and the stream to replay on a copy of it.
struct Workload {
    prefilled: Book,
    ops: Vec<Op>,
    /// Fewest and most resting orders seen while generating the stream.
    resting_range: (usize, usize),
}

impl Workload {
    fn new(ops: usize) -> Workload {
        let mut generator = Generator::new();
        while generator.book.resting_count() < RESTING_TARGET {
            let op = generator.passive();
            generator.out.clear();
            if let Op::Submit(order) = &op {
                generator.book.submit(order.clone(), &mut generator.out);
            }
            generator.track(&op);
        }
        generator.book.check_invariants();
        let prefilled = generator.book.clone();
        let mut resting_range = (usize::MAX, 0);
        let ops = (0..ops)
            .map(|_| {
                let op = generator.step();
                let resting = generator.book.resting_count();
                resting_range = (resting_range.0.min(resting), resting_range.1.max(resting));
                op
            })
            .collect();
        generator.book.check_invariants();
        Workload { prefilled, ops, resting_range }
    }

    fn describe(&self) {
        let (bids, asks) = self.prefilled.depth(usize::MAX);
        let cancels = self.ops.iter().filter(|op| matches!(op, Op::Cancel(_))).count();
        let aggressive = self
            .ops
            .iter()
            .filter(|op| match op {
                Op::Submit(order) => order.kind != OrderType::Limit || crosses_at_generation(order),
                Op::Cancel(_) => false,
            })
            .count();
        println!(
            "workload: seed {SEED:#x}, {} resting orders on {} bid + {} ask levels, {} ops \
             ({:.1}% cancel, {:.1}% aggressive: market/IOC/FOK/crossing limit, rest passive limit), \
             {}..={} resting during the stream",
            self.prefilled.resting_count(),
            bids.len(),
            asks.len(),
            self.ops.len(),
            100.0 * cancels as f64 / self.ops.len() as f64,
            100.0 * aggressive as f64 / self.ops.len() as f64,
            self.resting_range.0,
            self.resting_range.1,
        );
    }
}

/// Passive limits never cross the mid; only aggressive ones are generated past it.
fn crosses_at_generation(order: &NewOrder) -> bool {
    match (order.side, order.limit) {
        (Side::Buy, Some(limit)) => limit.0 >= MID_TICKS,
        (Side::Sell, Some(limit)) => limit.0 <= MID_TICKS,
        (_, None) => true,
    }
}

/// Replays `ops` on `book`, discarding events as the engine would after publishing them.
fn replay(book: &mut Book, ops: &[Op], out: &mut Vec<BookEvent>) {
    for op in ops {
        apply(book, op, out);
        out.clear();
    }
}

#[inline(always)]
fn apply(book: &mut Book, op: &Op, out: &mut Vec<BookEvent>) {
    match op {
        Op::Submit(order) => book.submit(order.clone(), out),
        Op::Cancel(id) => book.cancel(*id, out),
    }
}

/// The headline: ops/s of whole-stream replays timed as one batch each.
fn headline(workload: &Workload) {
    let mut rates: Vec<f64> = (0..HEADLINE_RUNS)
        .map(|_| {
            let mut book = workload.prefilled.clone();
            let mut out = Vec::with_capacity(64);
            let start = Instant::now();
            replay(&mut book, &workload.ops, &mut out);
            let elapsed = start.elapsed();
            black_box(book.last_match_seq());
            workload.ops.len() as f64 / elapsed.as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "throughput (batch-timed, {HEADLINE_RUNS} replays of {} ops): median {:.2} M ops/s, best {:.2} M ops/s",
        workload.ops.len(),
        rates[rates.len() / 2] / 1e6,
        rates[rates.len() - 1] / 1e6,
    );
}

/// Per-operation latency percentiles, timing every operation on its own.
fn latency(workload: &Workload) {
    let overhead_ns = clock_overhead_ns();
    let mut book = workload.prefilled.clone();
    let mut out = Vec::with_capacity(64);
    let mut samples_ns: Vec<u64> = Vec::with_capacity(workload.ops.len());
    for op in &workload.ops {
        let start = Instant::now();
        apply(&mut book, op, &mut out);
        let elapsed = start.elapsed();
        out.clear();
        samples_ns.push(elapsed.as_nanos() as u64);
    }
    black_box(book.last_match_seq());
    samples_ns.sort_unstable();
    let at = |q: f64| samples_ns[((samples_ns.len() - 1) as f64 * q) as usize];
    println!(
        "latency per op ({} ops, each timed alone, includes ~{overhead_ns} ns of clock overhead): \
         p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns",
        samples_ns.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        samples_ns[samples_ns.len() - 1],
    );
}

/// Median cost of reading the clock twice around nothing.
fn clock_overhead_ns() -> u64 {
    let mut samples_ns: Vec<u64> = (0..100_000)
        .map(|_| {
            let start = Instant::now();
            black_box(&start);
            start.elapsed().as_nanos() as u64
        })
        .collect();
    samples_ns.sort_unstable();
    samples_ns[samples_ns.len() / 2]
}

fn criterion_throughput(criterion: &mut Criterion, workload: &Workload) {
    let mut group = criterion.benchmark_group("book");
    group
        .throughput(Throughput::Elements(workload.ops.len() as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("mixed_ops", |bencher| {
        bencher.iter_batched(
            || (workload.prefilled.clone(), Vec::with_capacity(64)),
            |(mut book, mut out)| {
                replay(&mut book, &workload.ops, &mut out);
                book
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn main() {
    // Mirror criterion: benchmark under `cargo bench`, smoke-test under `cargo test --benches`.
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test");
    let workload = Workload::new(if benchmarking { OPS_BENCH } else { OPS_SMOKE });
    workload.describe();
    if benchmarking {
        headline(&workload);
        latency(&workload);
    } else {
        let mut book = workload.prefilled.clone();
        replay(&mut book, &workload.ops, &mut Vec::new());
        book.check_invariants();
    }
    let mut criterion = Criterion::default().configure_from_args();
    criterion_throughput(&mut criterion, &workload);
    criterion.final_summary();
}
