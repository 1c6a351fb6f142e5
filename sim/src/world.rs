//! The simulated world: one madsim node per service instance, a JetStream
//! broker node and a Redis node, all started through the platform's real entry
//! points ([`launch::serve`]) with simulated I/O handed in.
//!
//! A service node's init runs the service under a supervisor loop (as a
//! process manager would: a service that fails to start is started again a
//! moment later), so `restart` exercises the service's real recovery path.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use fafnir_platform::config::{PasswordHashing, PlatformConfig, ServiceAddrs};
use fafnir_platform::domain::Instrument;
use fafnir_platform::rng::SeededEntropy;
use fafnir_platform::services::{launch, shutdown_on, Deps, ServiceKind};
use fafnir_platform::time::to_runtime;
use madsim::runtime::{Handle, NodeHandle};
use madsim::task::NodeId;

use crate::broker::{self, BrokerDisk, SimBus};
use crate::faults::{Action, Fault, FaultSchedule};
use crate::redis::{self, SimKv};
use crate::reply_loss::ReplyLoss;
use crate::rng::derive_seed;
use crate::service_time::{CoreSharing, Cores, Modelled, ServiceModel, SlowKnob};
use crate::trace::Trace;

/// The broker's and Redis's addresses in every world.
pub const BROKER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 4222);
pub const REDIS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 6379);

/// Simulated time of day: a fixed epoch plus the simulated time since the
/// world was built, so every node agrees and no wall clock is read.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    origin: fafnir_platform::time::Instant,
}

impl SimClock {
    /// 2027-01-15T08:00:00Z, the simulated moment every world starts at.
    pub const EPOCH_MS: i64 = 1_800_000_000_000;
}

impl fafnir_platform::clock::Clock for SimClock {
    fn now_us(&self) -> i64 {
        let elapsed = self.origin.elapsed();
        SimClock::EPOCH_MS * 1_000 + i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX / 2)
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub root_seed: u64,
    pub cfg: PlatformConfig,
    /// Processing-time model per service kind; kinds not named run in zero time.
    pub service_time: BTreeMap<String, ServiceModel>,
    /// The cores every service shares (see `ServiceModel::cores`); None:
    /// each service has workers of its own.
    pub cores: Option<usize>,
    /// How those cores take calls.
    pub core_sharing: CoreSharing,
    pub network: NetworkModel,
    /// Turns on the platform's in-code fault points from the start; see
    /// [`World::set_buggify`].
    pub buggify: bool,
    /// Turns on madsim's own network fault points from the start; see
    /// [`World::set_network_buggify`].
    pub network_buggify: bool,
}

/// The network: one latency distribution and one loss rate for every link
/// (madsim models them globally; per-link effects are partitions, and per-node
/// slowness is the `slow` fault on the service-time model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkModel {
    /// Each message's latency is uniform in this range.
    pub latency_us: [u64; 2],
    /// Packets lost per million (shows as delay: see [`crate::faults`]).
    pub loss_ppm: u32,
}

impl NetworkModel {
    /// A data-centre LAN: 50 to 250 microseconds, no loss.
    pub const LAN: NetworkModel = NetworkModel { latency_us: [50, 250], loss_ppm: 0 };

    fn apply(&self) {
        let [lo, hi] = self.latency_us;
        let loss = f64::from(self.loss_ppm) / 1e6;
        madsim::net::NetSim::current().update_config(|c| {
            c.send_latency = to_runtime(Duration::from_micros(lo))..to_runtime(Duration::from_micros(hi.max(lo + 1)));
            c.packet_loss_rate = loss;
        });
    }
}

impl WorldSpec {
    /// The platform of `PlatformConfig::local_default` with two engine shards
    /// (ACME, GLOBX), simulated addresses, a fixed JWT secret (a simulated
    /// world has nothing to protect), cheap password hashing and a typical
    /// service-time model for every service.
    pub fn standard(root_seed: u64) -> WorldSpec {
        let mut cfg = PlatformConfig::local_default();
        cfg.namespace = "sim".into();
        cfg.instruments = vec![Instrument::new("ACME", 1, 1, 1, 100_000), Instrument::new("GLOBX", 5, 10, 1, 200_000)];
        cfg.engine_shards = vec![vec!["ACME".into()], vec!["GLOBX".into()]];
        cfg.addrs = sim_addrs(cfg.engine_shards.len());
        cfg.nats_addr = BROKER.to_string();
        cfg.redis_addr = REDIS.to_string();
        cfg.jwt_secret = "fafnir-simulation-only-secret".into();
        cfg.password_hashing = PasswordHashing::CHEAP;
        let service_time = ServiceKind::ALL.iter().map(|k| (k.name().to_string(), ServiceModel::typical())).collect();
        WorldSpec {
            root_seed,
            cfg,
            service_time,
            cores: None,
            core_sharing: CoreSharing::Queue,
            network: NetworkModel::LAN,
            buggify: false,
            network_buggify: false,
        }
    }
}

/// Each service on its own host, 10.0.1.1 onwards, port 50051.
pub fn sim_addrs(engine_shards: usize) -> ServiceAddrs {
    let host = |i: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)), 50051);
    ServiceAddrs {
        gateway: host(1),
        auth: host(2),
        market: host(3),
        orders: host(4),
        portfolio: host(5),
        engines: (0..engine_shards).map(|i| host(10 + i as u8)).collect(),
    }
}

/// A running world.
pub struct World {
    pub handle: Handle,
    pub cfg: Arc<PlatformConfig>,
    pub trace: Trace,
    /// Node of every instance by name: `broker`, `redis`, `gateway`, `engine-0`, ...
    pub nodes: BTreeMap<String, NodeId>,
    pub network: NetworkModel,
    pub clock: SimClock,
    /// The load generator's own processing time per request, on the
    /// platform's cores, when the spec models it (`[service_time.loadgen]`,
    /// a calibration's: the real load generator shares the machine).
    pub loadgen: Option<Arc<dyn fafnir_platform::services::ServiceTime>>,
    slow: BTreeMap<String, SlowKnob>,
    next_client: std::sync::atomic::AtomicU32,
    /// The client nodes made so far (see [`World::tear_down`]).
    clients: std::sync::Mutex<Vec<NodeId>>,
    /// What the platform's fault points draw from when switched on.
    buggify_seed: u64,
    root_seed: u64,
    /// The `reply_lost` fault's switch (the broker's replies, the order path's gRPC answers).
    reply_loss: ReplyLoss,
    /// The broker's state, for observers that must not send messages.
    broker_disk: BrokerDisk,
}

impl World {
    /// Builds the world in the current madsim runtime.
    pub fn build(spec: WorldSpec) -> World {
        spec.cfg.validate().unwrap_or_else(|e| panic!("world config: {e}"));
        let handle = Handle::current();
        spec.network.apply();
        let buggify_seed = derive_seed(spec.root_seed, "buggify");
        // Set either way: the switch outlives a world on its thread.
        fafnir_platform::services::set_fault_points(spec.buggify.then_some(buggify_seed));
        if spec.network_buggify {
            madsim::buggify::enable();
        }
        let trace = Trace::new();
        let clock = SimClock { origin: fafnir_platform::time::Instant::now() };
        let mut slow = BTreeMap::new();
        let cfg = Arc::new(spec.cfg.clone());
        let mut nodes = BTreeMap::new();

        let reply_loss = ReplyLoss::new(derive_seed(spec.root_seed, "reply_lost"));
        let (loss, loss_trace) = (reply_loss.clone(), trace.clone());
        // Installed either way: the hook outlives a world on its thread.
        fafnir_platform::rpc::set_reply_loss(Some(Arc::new(move || {
            let lost = loss.lose();
            if lost {
                loss_trace.record("reply-lost", b"rpc");
            }
            lost
        })));
        let cores = spec.cores.map(|n| match spec.core_sharing {
            CoreSharing::Queue => Cores::new(n),
            CoreSharing::Fair => Cores::fair(n),
        });
        // The broker's and Redis's own processing time, when the spec models
        // it (a calibration does; otherwise they answer in no time).
        let server_model = |name: &str| {
            // The load generator is of the platform's process in a calibration's run.
            let platform = name == "loadgen";
            let model =
                spec.service_time.get(name).cloned().map(|m| ServiceModel { cores: cores.clone(), platform, ..m });
            let root_seed = spec.root_seed;
            let name = name.to_string();
            move || -> Option<Arc<Modelled>> {
                let model = model.clone()?;
                Some(Arc::new(Modelled::new(model, root_seed, &name, SlowKnob::default())))
            }
        };
        let disk = BrokerDisk::default();
        let broker_disk = disk.clone();
        // The broker takes the model itself: it may be per message (see `broker::serve_modelled`).
        let broker_model = server_model("broker");
        let (broker_trace, broker_loss) = (trace.clone(), reply_loss.clone());
        let node = handle
            .create_node()
            .name("broker")
            .ip(BROKER.ip())
            .init(move || {
                broker::serve_modelled(BROKER, disk.clone(), broker_trace.clone(), broker_loss.clone(), broker_model())
            })
            .build();
        nodes.insert("broker".to_string(), node.id());

        let (redis_trace, redis_model) = (trace.clone(), server_model("redis"));
        let node = handle
            .create_node()
            .name("redis")
            .ip(REDIS.ip())
            .init(move || {
                let model = redis_model().map(|m| m as Arc<dyn fafnir_platform::services::ServiceTime>);
                redis::serve_modelled(REDIS, redis_trace.clone(), model)
            })
            .build();
        nodes.insert("redis".to_string(), node.id());

        for kind in ServiceKind::ALL {
            let shards = if kind == ServiceKind::Engine { cfg.engine_shards.len() } else { 1 };
            for shard in 0..shards {
                let name = instance_name(kind, shard);
                let addr = service_addr(&cfg, kind, shard);
                let model = spec.service_time.get(kind.name()).cloned().map(|m| ServiceModel {
                    cores: cores.clone(),
                    platform: true,
                    ..m
                });
                let knob = SlowKnob::new(1.into());
                let node = service_node(
                    &handle,
                    &cfg,
                    clock,
                    (kind, shard),
                    &name,
                    addr,
                    model.map(|m| (m, knob.clone())),
                    spec.root_seed,
                );
                slow.insert(name.clone(), knob);
                nodes.insert(name, node.id());
            }
        }
        let next_client = std::sync::atomic::AtomicU32::new(0);
        let root_seed = spec.root_seed;
        let clients = std::sync::Mutex::new(Vec::new());
        World {
            handle,
            cfg,
            trace,
            nodes,
            network: spec.network,
            clock,
            slow,
            next_client,
            clients,
            buggify_seed,
            root_seed,
            loadgen: server_model("loadgen")().map(|m| m as Arc<dyn fafnir_platform::services::ServiceTime>),
            reply_loss,
            broker_disk,
        }
    }

    /// The lag of each durable consumer of `consumers` (stream, durable), read
    /// off the broker's state directly: no message travels, so reading it
    /// does not change the run. A consumer the broker does not hold is left out.
    pub fn consumer_lags(
        &self,
        consumers: &[(String, String)],
    ) -> Vec<(String, String, fafnir_platform::bus::ConsumerLag)> {
        consumers
            .iter()
            .filter_map(|(stream, durable)| {
                Some((stream.clone(), durable.clone(), self.broker_disk.consumer_lag(stream, durable)?))
            })
            .collect()
    }

    fn node(&self, name: &str) -> NodeId {
        *self.nodes.get(name).unwrap_or_else(|| panic!("no node {name} in the world"))
    }

    /// A fresh node for a client (an agent or a test): 10.0.2.1 onwards, then
    /// 10.0.3.x and so on, 250 a block, up to 50,000 clients.
    pub fn client_node(&self, name: &str) -> NodeHandle {
        let i = self.next_client.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(i < 50_000, "a world has room for 50,000 client nodes");
        let (block, host) = (2 + i / 250, 1 + i % 250);
        let ip = Ipv4Addr::new(10, (block / 256) as u8, (block % 256) as u8, host as u8);
        let node = self.handle.create_node().name(name).ip(IpAddr::V4(ip)).build();
        self.clients.lock().expect("clients lock").push(node.id());
        node
    }

    /// Kills every node of the world, clients included, so that their tasks
    /// are dropped once the executor runs again (await a moment after). A
    /// runtime dropped with tasks still pending never frees them: tasks that
    /// wait on each other hold each other's wakers, and a sweep that ran
    /// world after world on one thread grew by megabytes a seed.
    pub fn tear_down(&self) {
        for id in self.nodes.values().chain(self.clients.lock().expect("clients lock").iter()) {
            self.handle.kill(*id);
        }
    }

    /// A bus client for a node of the world (to be used on that node).
    pub fn bus(&self) -> SimBus {
        SimBus::new(BROKER)
    }

    /// A kv client for a node of the world (to be used on that node).
    pub fn kv(&self) -> SimKv {
        SimKv::new(REDIS)
    }

    /// Kills a node, as a crash would; it stays down until [`World::restart`].
    pub fn kill(&self, name: &str) {
        self.handle.kill(self.node(name));
    }

    /// Restarts a node (killing it first if it runs); its init runs again.
    pub fn restart(&self, name: &str) {
        let id = self.node(name);
        // madsim's restart alone keeps the old incarnation's ports bound; a kill frees them.
        self.handle.kill(id);
        self.handle.restart(id);
    }

    /// Cuts a node off the network in both directions.
    pub fn isolate(&self, name: &str) {
        madsim::net::NetSim::current().clog_node(self.node(name));
    }

    /// Reconnects an isolated node.
    pub fn heal(&self, name: &str) {
        madsim::net::NetSim::current().unclog_node(self.node(name));
    }

    /// Cuts the link between two nodes, both ways.
    pub fn partition(&self, a: &str, b: &str) {
        let net = madsim::net::NetSim::current();
        net.clog_link(self.node(a), self.node(b));
        net.clog_link(self.node(b), self.node(a));
    }

    /// Restores the link between two nodes, both ways.
    pub fn unpartition(&self, a: &str, b: &str) {
        let net = madsim::net::NetSim::current();
        net.unclog_link(self.node(a), self.node(b));
        net.unclog_link(self.node(b), self.node(a));
    }

    /// Switches the platform's in-code fault points on or off.
    pub fn set_buggify(&self, on: bool) {
        fafnir_platform::services::set_fault_points(on.then_some(self.buggify_seed));
        self.trace.record("buggify", &[u8::from(on)]);
    }

    /// Switches madsim's own network fault points on or off: while on, a
    /// tenth of all sends and connects are delayed 1-5 s, so nearly every
    /// request meets one (a request takes tens of messages).
    pub fn set_network_buggify(&self, on: bool) {
        if on {
            madsim::buggify::enable();
        } else {
            madsim::buggify::disable();
        }
        self.trace.record("network-buggify", &[u8::from(on)]);
    }

    /// The names a fault may target.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The service nodes (every node but the broker and Redis), in name order.
    pub fn service_names(&self) -> Vec<String> {
        self.nodes.keys().filter(|n| n.as_str() != "broker" && n.as_str() != "redis").cloned().collect()
    }

    /// How many answers the `reply_lost` fault has dropped so far.
    pub fn replies_lost(&self) -> u64 {
        self.reply_loss.lost()
    }

    /// Applies one fault now and returns what undoes it (None when nothing will).
    pub fn apply(&self, f: &Fault) -> Option<Undo> {
        let target = || f.target.as_deref().expect("validated: target present");
        self.trace.record("fault", format!("{:?} {:?} {:?}", f.action, f.target, f.peer).as_bytes());
        let net = madsim::net::NetSim::current();
        match f.action {
            Action::Isolate => {
                self.isolate(target());
                Some(Undo::Heal(target().to_string()))
            }
            Action::Partition => {
                let (a, b) = (self.node(target()), self.node(f.peer.as_deref().expect("validated: peer")));
                net.clog_link(a, b);
                if !f.one_way {
                    net.clog_link(b, a);
                }
                Some(Undo::Unpartition(a, b, f.one_way))
            }
            Action::Kill => {
                self.kill(target());
                f.duration_ms.map(|_| Undo::Restart(target().to_string()))
            }
            Action::RestartAll => {
                let services = self.service_names();
                for name in &services {
                    self.kill(name);
                }
                Some(Undo::RestartAll(services))
            }
            Action::ReplyLost => {
                self.reply_loss.set_rate_ppm(f.rate_ppm.expect("validated: rate"));
                Some(Undo::ReplyLost)
            }
            Action::Pause => {
                self.handle.pause(self.node(target()));
                Some(Undo::Resume(target().to_string()))
            }
            Action::Slow => {
                let knob = self.slow.get(target())?;
                knob.store(f.factor.expect("validated: factor"), std::sync::atomic::Ordering::Relaxed);
                Some(Undo::Unslow(target().to_string()))
            }
            Action::PacketLoss => {
                let loss = f64::from(f.rate_ppm.expect("validated: rate")) / 1e6;
                net.update_config(|c| c.packet_loss_rate = loss);
                Some(Undo::Network)
            }
            Action::LatencySpike => {
                let [lo, hi] = f.latency_ms.expect("validated: latency");
                net.update_config(|c| {
                    c.send_latency = to_runtime(Duration::from_millis(lo))
                        ..to_runtime(
                            Duration::from_millis(hi).max(Duration::from_millis(lo) + Duration::from_micros(1)),
                        );
                });
                Some(Undo::Network)
            }
        }
    }

    /// Ends a fault.
    pub fn undo(&self, undo: &Undo) {
        self.trace.record("heal", format!("{undo:?}").as_bytes());
        let net = madsim::net::NetSim::current();
        match undo {
            Undo::Heal(name) => self.heal(name),
            Undo::Unpartition(a, b, one_way) => {
                net.unclog_link(*a, *b);
                if !one_way {
                    net.unclog_link(*b, *a);
                }
            }
            Undo::Restart(name) => self.restart(name),
            Undo::RestartAll(names) => names.iter().for_each(|name| self.restart(name)),
            Undo::ReplyLost => self.reply_loss.set_rate_ppm(0),
            Undo::Resume(name) => self.handle.resume(self.node(name)),
            Undo::Unslow(name) => {
                if let Some(knob) = self.slow.get(name) {
                    knob.store(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Undo::Network => self.network.apply(),
        }
    }

    /// Plays a schedule against the world, in simulated time from now; returns
    /// when every fault has been applied and, where it has a duration, undone.
    /// Every fault still in force at the end is undone then.
    pub async fn play(&self, schedule: &FaultSchedule) {
        schedule.validate(&self.node_names()).unwrap_or_else(|e| panic!("fault schedule: {e}"));
        let start = fafnir_platform::time::Instant::now();
        // (time, order, what): undos sort before applies at the same instant.
        let mut timeline: BTreeMap<(u64, u8, usize), Option<Fault>> = BTreeMap::new();
        for (i, f) in schedule.sorted().into_iter().enumerate() {
            timeline.insert((f.at_ms, 1, i), Some(f));
        }
        let mut active: BTreeMap<usize, Undo> = BTreeMap::new();
        while let Some(((at_ms, kind, i), fault)) = timeline.pop_first() {
            fafnir_platform::time::sleep_until(start + Duration::from_millis(at_ms)).await;
            match (kind, fault) {
                (1, Some(f)) => {
                    tracing::info!(at_ms, action = ?f.action, target = ?f.target, "fault");
                    if let Some(undo) = self.apply(&f) {
                        if let Some(d) = f.duration_ms {
                            timeline.insert((at_ms + d, 0, i), None);
                        }
                        active.insert(i, undo);
                    }
                }
                _ => {
                    if let Some(undo) = active.remove(&i) {
                        tracing::info!(at_ms, ?undo, "fault ends");
                        self.undo(&undo);
                    }
                }
            }
        }
        for (_, undo) in active {
            self.undo(&undo);
        }
    }

    /// Waits until every service says SERVING in the gRPC health protocol:
    /// until each has rebuilt its state (call from a client node).
    pub async fn wait_serving(&self, timeout: Duration) {
        self.try_wait_serving(timeout).await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`World::wait_serving`], saying which service did not come up in time.
    pub async fn try_wait_serving(&self, timeout: Duration) -> Result<(), String> {
        let entropy = Arc::new(SeededEntropy::new(derive_seed(self.root_seed, "entropy.client")));
        let deps =
            Deps::new(self.cfg.clone(), Arc::new(self.bus()), Arc::new(self.kv()), Arc::new(self.clock), entropy);
        launch::wait_until_serving(&deps, timeout).await
    }
}

fn instance_name(kind: ServiceKind, shard: usize) -> String {
    match kind {
        ServiceKind::Engine => format!("engine-{shard}"),
        _ => kind.name().to_string(),
    }
}

fn service_addr(cfg: &PlatformConfig, kind: ServiceKind, shard: usize) -> SocketAddr {
    let a = &cfg.addrs;
    match kind {
        ServiceKind::Gateway => a.gateway,
        ServiceKind::Auth => a.auth,
        ServiceKind::Market => a.market,
        ServiceKind::Orders => a.orders,
        ServiceKind::Portfolio => a.portfolio,
        ServiceKind::Engine => a.engines[shard],
    }
}

#[allow(clippy::too_many_arguments)]
fn service_node(
    handle: &Handle,
    cfg: &Arc<PlatformConfig>,
    clock: SimClock,
    (kind, shard): (ServiceKind, usize),
    name: &str,
    addr: SocketAddr,
    model: Option<(ServiceModel, SlowKnob)>,
    root_seed: u64,
) -> NodeHandle {
    let cfg = cfg.clone();
    let instance = name.to_string();
    // One generator per instance for the whole run: a restarted service goes
    // on drawing where its last incarnation stopped (fresh salts, as an OS's
    // entropy would give), and the draws stay reproducible from the seed.
    let entropy = Arc::new(SeededEntropy::new(derive_seed(root_seed, &format!("entropy.{name}"))));
    handle
        .create_node()
        .name(name)
        .ip(addr.ip())
        .init(move || {
            let cfg = cfg.clone();
            let model = model.clone();
            let instance = instance.clone();
            let entropy = entropy.clone();
            async move {
                let (bus, kv) = (Arc::new(SimBus::new(BROKER)), Arc::new(SimKv::new(REDIS)));
                let mut deps = Deps::new(cfg, bus, kv, Arc::new(clock), entropy);
                if let Some((model, knob)) = model {
                    deps = deps.with_service_time(Arc::new(Modelled::new(model, root_seed, &instance, knob)));
                }
                supervise(kind, shard, deps, &instance).await;
            }
        })
        .build()
}

/// Runs the service; if it stops with an error (say, the broker was
/// unreachable at start), starts it again after a pause.
async fn supervise(kind: ServiceKind, shard: usize, deps: Deps, instance: &str) {
    loop {
        let never = shutdown_on(futures::future::pending());
        match launch::serve(kind, shard, deps.clone(), never).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(instance, error = %e, "service stopped; restarting it in 500ms");
                fafnir_platform::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// How to end a fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    Heal(String),
    Unpartition(NodeId, NodeId, bool),
    Restart(String),
    /// Start again every service node `restart_all` killed.
    RestartAll(Vec<String>),
    /// Answers arrive again.
    ReplyLost,
    Resume(String),
    Unslow(String),
    /// Back to the world's network model.
    Network,
}

#[cfg(all(test, madsim))]
mod tests {
    use std::time::Duration;

    use fafnir_platform::time::Instant;
    use madsim::net::Endpoint;

    use super::NetworkModel;

    /// Simulated time is microsecond-true: a message on a connection arrives
    /// the latency the network model drew after it was sent (here the model
    /// draws 73–74 µs), not after madsim's 1 ms floor.
    #[test]
    fn a_message_takes_the_latency_the_model_drew() {
        let rt = madsim::runtime::Runtime::with_seed_and_config(1, madsim::Config::default());
        rt.block_on(async {
            NetworkModel { latency_us: [73, 73], loss_ppm: 0 }.apply();
            let handle = madsim::runtime::Handle::current();
            let server = handle.create_node().name("server").ip("10.0.0.9".parse().unwrap()).build();
            let client = handle.create_node().name("client").ip("10.0.0.8".parse().unwrap()).build();
            let addr: std::net::SocketAddr = "10.0.0.9:7000".parse().unwrap();
            let (arrived_tx, arrived_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
            server.spawn(async move {
                let endpoint = Endpoint::bind(addr).await.unwrap();
                let (_tx, mut rx, _) = endpoint.accept1().await.unwrap();
                while rx.recv().await.is_ok() {
                    arrived_tx.send(Instant::now()).unwrap();
                }
            });
            let mut arrived_rx = arrived_rx;
            client
                .spawn(async move {
                    let endpoint = Endpoint::bind("0.0.0.0:0").await.unwrap();
                    let (tx, _rx) = endpoint.connect1(addr).await.unwrap();
                    for gap_us in [0u64, 5, 300, 2_000] {
                        fafnir_platform::time::sleep(Duration::from_micros(gap_us)).await;
                        let sent = Instant::now();
                        tx.send(Box::new(gap_us)).await.unwrap();
                        let took = arrived_rx.recv().await.unwrap() - sent;
                        assert!(
                            took >= Duration::from_micros(73) && took <= Duration::from_micros(74),
                            "a message drawn at 73-74 µs took {took:?}"
                        );
                    }
                })
                .await
                .unwrap();
        });
    }
}
