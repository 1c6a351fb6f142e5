//! The simulation's speed: a fixed number of orders through the full simulated
//! platform (gateway, orders, portfolio, engine shards, market, broker, Redis),
//! timed on the wall clock from outside the madsim runtime. The same
//! deterministic workload, on a book with resting orders, is what
//! `ci/cpu-cost` counts instructions on.

use std::sync::Arc;
use std::time::Duration;

use fafnir_platform::bus::read_to_end;
use fafnir_platform::config::PlantedCost;
use fafnir_platform::proto::common::{Role, Side};
use fafnir_platform::proto::engine::engine_client::EngineClient;
use fafnir_platform::proto::engine::GetBookRequest;
use fafnir_platform::proto::events::EngineEvent;
use fafnir_sim::world::{World, WorldSpec};

use crate::client::{Client, OrderSpec};

/// What a benchmark run does.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    pub seed: u64,
    /// Orders at the one crossing price, in all (rounded up to a multiple of `clients`).
    pub orders: u64,
    /// Client nodes submitting them (at least 2).
    pub clients: usize,
    /// Whether handlers take their modelled service time.
    pub service_time: bool,
    /// Orders placed away from the crossing price before a client's crossing
    /// ones, in all (rounded up to a multiple of `clients`): they never
    /// trade, so the books hold that many resting orders, half a symbol,
    /// over 100 price levels a side. 0 leaves the books as shallow as the
    /// crossing orders make them (a few orders).
    pub resting: u64,
    /// Test-only: a CPU cost to plant in the services (see [`PlantedCost`]).
    pub planted_cost: Option<PlantedCost>,
}

/// What a benchmark run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub seed: u64,
    /// Crossing orders.
    pub orders: u64,
    /// Orders left resting (see [`BenchSpec::resting`]).
    pub resting: u64,
    pub clients: usize,
    pub wall: Duration,
    pub simulated: Duration,
    /// Messages the simulated network carried.
    pub messages: u64,
    pub trace_hash: u64,
    /// Orders resting in the books at the end (asked of the engines after
    /// the messages were counted and the trace hashed).
    pub book_orders: u64,
}

impl BenchReport {
    pub fn orders_per_wall_second(&self) -> f64 {
        self.orders as f64 / self.wall.as_secs_f64()
    }
    pub fn simulated_per_wall_second(&self) -> f64 {
        self.simulated.as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// One client's share: half the clients buy, half sell, at one crossing price,
/// so nearly every order trades; symbols alternate between the two shards.
/// First the client's `resting` orders, each 5 to 500 cents (1 to 100 of
/// GLOBX's ticks) away from the crossing price on its own side, where no
/// order of the run ever reaches them.
async fn client_flow(world: Arc<World>, i: usize, orders: u64, resting: u64) {
    let gateway = world.cfg.addrs.gateway;
    let name = format!("bench{i}");
    let c = Client::register_and_login(gateway, &name, "bench-password", Role::Trader).await.expect("register");
    let (symbol, qty, price) = if i % 4 < 2 { ("ACME", 1, 10_000) } else { ("GLOBX", 10, 10_000) };
    let side = if i.is_multiple_of(2) { Side::Buy } else { Side::Sell };
    let all = (orders + resting) as i64;
    match side {
        Side::Buy => c.deposit_cash(all * qty * price, "d").await.expect("deposit"),
        _ => c.deposit_shares(symbol, all * qty, "d").await.expect("deposit"),
    };
    for n in 0..resting {
        let away = 5 * (1 + (n % 100) as i64);
        let price = if side == Side::Buy { price - away } else { price + away };
        submit(&c, &OrderSpec::limit(&format!("r{n}"), symbol, side, price, qty)).await;
    }
    for n in 0..orders {
        submit(&c, &OrderSpec::limit(&format!("o{n}"), symbol, side, price, qty)).await;
    }
}

/// Submits `spec`, again while the gateway says it is overloaded.
async fn submit(c: &Client, spec: &OrderSpec) {
    loop {
        match c.submit(spec).await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                fafnir_platform::time::sleep(Duration::from_millis(1)).await
            }
            Err(s) => panic!("bench order refused: {s}"),
        }
    }
}

/// Waits until the engine has answered every accepted order.
async fn drain(world: &World) {
    let bus = world.bus();
    let names = world.cfg.names();
    let inputs = read_to_end(&bus, &names.orders_stream(), "", 1).await.expect("read orders");
    let last = inputs.last().map_or(0, |m| m.seq);
    // Reads on from where the previous look ended: re-reading (and decoding)
    // the whole of TRADES every few milliseconds was most of the run's cost.
    let mut next = 1;
    loop {
        let trades = read_to_end(&bus, &names.trades_stream(), "", next).await.expect("read trades");
        next = trades.last().map_or(next, |m| m.seq + 1);
        let done = trades
            .iter()
            .filter_map(|m| prost::Message::decode(&m.payload[..]).ok())
            .any(|e: EngineEvent| e.input_seq == last);
        if done {
            return;
        }
        fafnir_platform::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Orders resting in every book, as the engines report them.
async fn book_orders(world: &World) -> u64 {
    let mut orders = 0;
    for (symbols, &addr) in world.cfg.engine_shards.iter().zip(&world.cfg.addrs.engines) {
        let mut engine = EngineClient::new(fafnir_platform::services::channel(addr, Duration::from_secs(5)));
        for symbol in symbols {
            let book = GetBookRequest { symbol: symbol.clone(), depth: u32::MAX };
            let book = engine.get_book(book).await.expect("the engine shows its book").into_inner();
            orders += book.bids.iter().chain(&book.asks).map(|level| u64::from(level.orders)).sum::<u64>();
        }
    }
    orders
}

/// Runs the workload of `spec` in a fresh world.
pub fn run(spec: &BenchSpec) -> BenchReport {
    let BenchSpec { seed, orders, clients, service_time, resting, planted_cost } = *spec;
    let clients = clients.max(2);
    let per_client = orders.div_ceil(clients as u64);
    let resting_per_client = resting.div_ceil(clients as u64);
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    // Outside the runtime the clock is the real one (madsim intercepts it only inside).
    #[allow(clippy::disallowed_methods)]
    let wall0 = std::time::Instant::now();
    let ((simulated, messages, trace_hash), book_orders) = rt.block_on(async move {
        let mut spec = WorldSpec::standard(seed);
        spec.cfg.rate_limit.per_second = 1_000_000;
        spec.cfg.rate_limit.burst = 1_000_000;
        spec.cfg.planted_cost = planted_cost;
        if !service_time {
            spec.service_time.clear();
        }
        let world = Arc::new(World::build(spec));
        let t0 = fafnir_platform::time::Instant::now();
        let probe = world.client_node("probe");
        let w = world.clone();
        probe.spawn(async move { w.wait_serving(Duration::from_secs(30)).await }).await.expect("serving");
        let mut tasks = Vec::new();
        for i in 0..clients {
            let node = world.client_node(&format!("client{i}"));
            tasks.push(node.spawn(client_flow(world.clone(), i, per_client, resting_per_client)));
        }
        for t in tasks {
            t.await.expect("client finished");
        }
        let w = world.clone();
        probe.spawn(async move { drain(&w).await }).await.expect("drained");
        let measured = (t0.elapsed(), madsim::net::NetSim::current().stat().msg_count, world.trace.hash());
        let w = world.clone();
        let book_orders = probe.spawn(async move { book_orders(&w).await }).await.expect("books");
        (measured, book_orders)
    });
    #[allow(clippy::disallowed_methods)]
    let wall = wall0.elapsed();
    BenchReport {
        seed,
        orders: per_client * clients as u64,
        resting: resting_per_client * clients as u64,
        clients,
        wall,
        simulated,
        messages,
        trace_hash,
        book_orders,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU-cost guard's premises (ci/cpu-cost): the resting orders rest
    /// all run long, and the planted cost changes nothing but the CPU spent.
    #[test]
    fn resting_orders_rest_and_a_planted_cost_changes_no_behaviour() {
        let spec = BenchSpec { seed: 1, orders: 64, clients: 8, service_time: true, resting: 96, planted_cost: None };
        let plain = run(&spec);
        assert_eq!((plain.orders, plain.resting), (64, 96));
        // As much is bought as sold at the crossing price, so those orders all
        // trade, but the run ends when one engine is done, and the other may
        // still hold the last crossing order of each of its clients.
        assert!((96..=96 + 8).contains(&plain.book_orders), "{} orders rest", plain.book_orders);
        let planted = run(&BenchSpec { planted_cost: Some(PlantedCost::BookScanPerOrder), ..spec });
        assert_eq!(planted.trace_hash, plain.trace_hash, "the planted cost changed the run");
        assert_eq!(planted.book_orders, plain.book_orders);
    }
}
