//! The simulation's speed: a fixed number of orders through the full simulated
//! platform (gateway, orders, portfolio, engine shards, market, broker, Redis),
//! timed on the wall clock from outside the madsim runtime.

use std::sync::Arc;
use std::time::Duration;

use fafnir_platform::bus::read_to_end;
use fafnir_platform::proto::common::{Role, Side};
use fafnir_platform::proto::events::EngineEvent;
use fafnir_sim::world::{World, WorldSpec};

use crate::client::{Client, OrderSpec};

/// What a benchmark run measured.
#[derive(Clone, Debug)]
pub struct BenchReport {
    pub seed: u64,
    pub orders: u64,
    pub clients: usize,
    pub wall: Duration,
    pub simulated: Duration,
    /// Messages the simulated network carried.
    pub messages: u64,
    pub trace_hash: u64,
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
async fn client_flow(world: Arc<World>, i: usize, orders: u64) {
    let gateway = world.cfg.addrs.gateway;
    let name = format!("bench{i}");
    let c = Client::register_and_login(gateway, &name, "bench-password", Role::Trader).await.expect("register");
    let (symbol, qty, price) = if i % 4 < 2 { ("ACME", 1, 10_000) } else { ("GLOBX", 10, 10_000) };
    let side = if i.is_multiple_of(2) { Side::Buy } else { Side::Sell };
    match side {
        Side::Buy => c.deposit_cash(orders as i64 * qty * price, "d").await.expect("deposit"),
        _ => c.deposit_shares(symbol, orders as i64 * qty, "d").await.expect("deposit"),
    };
    for n in 0..orders {
        let spec = OrderSpec::limit(&format!("o{n}"), symbol, side, price, qty);
        loop {
            match c.submit(&spec).await {
                Ok(_) => break,
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    fafnir_platform::time::sleep(Duration::from_millis(1)).await
                }
                Err(s) => panic!("bench order refused: {s}"),
            }
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

/// Runs `orders` orders from `clients` client nodes in a fresh world with `seed`.
pub fn run(seed: u64, orders: u64, clients: usize, service_time: bool) -> BenchReport {
    let clients = clients.max(2);
    let per_client = orders.div_ceil(clients as u64);
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    // Outside the runtime the clock is the real one (madsim intercepts it only inside).
    #[allow(clippy::disallowed_methods)]
    let wall0 = std::time::Instant::now();
    let (simulated, messages, trace_hash) = rt.block_on(async move {
        let mut spec = WorldSpec::standard(seed);
        spec.cfg.rate_limit.per_second = 1_000_000;
        spec.cfg.rate_limit.burst = 1_000_000;
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
            tasks.push(node.spawn(client_flow(world.clone(), i, per_client)));
        }
        for t in tasks {
            t.await.expect("client finished");
        }
        let w = world.clone();
        probe.spawn(async move { drain(&w).await }).await.expect("drained");
        (t0.elapsed(), madsim::net::NetSim::current().stat().msg_count, world.trace.hash())
    });
    #[allow(clippy::disallowed_methods)]
    let wall = wall0.elapsed();
    BenchReport { seed, orders: per_client * clients as u64, clients, wall, simulated, messages, trace_hash }
}
