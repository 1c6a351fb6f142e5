//! Configuration of one fafnir deployment: instruments, shards, addresses,
//! and the knobs of each service. One value is shared by every service of a
//! deployment, whether they run in one process (`fafnir up`), one each
//! (`fafnir serve`) or as nodes of the simulation.

use std::net::SocketAddr;
use std::time::Duration;

use crate::domain::Instrument;

/// Where each service listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAddrs {
    pub gateway: SocketAddr,
    pub auth: SocketAddr,
    pub market: SocketAddr,
    pub orders: SocketAddr,
    pub portfolio: SocketAddr,
    /// One address per engine shard, in shard order.
    pub engines: Vec<SocketAddr>,
}

impl ServiceAddrs {
    /// Consecutive ports on one host from `base`: gateway, auth, market,
    /// orders, portfolio, then one per engine shard.
    pub fn local(host: std::net::IpAddr, base: u16, engine_shards: usize) -> ServiceAddrs {
        let at = |offset: usize| SocketAddr::new(host, base + offset as u16);
        ServiceAddrs {
            gateway: at(0),
            auth: at(1),
            market: at(2),
            orders: at(3),
            portfolio: at(4),
            engines: (0..engine_shards).map(|i| at(5 + i)).collect(),
        }
    }
}

/// How a service reaches the others it calls (the gateway its four
/// backends, the orders service the portfolio). Real build only: the
/// simulation always dials [`ServiceAddrs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Peers {
    /// At their listening addresses ([`ServiceAddrs`]): every service on
    /// one host, as `fafnir up` runs them.
    #[default]
    Local,
    /// By name: each peer at the host named after it (`auth`, `market`,
    /// `orders`, `portfolio`, `engine-0`, ...) and its port in
    /// [`ServiceAddrs`], resolved at every connection, as a Compose stack's
    /// containers or a Kubernetes namespace's Services are found. A peer
    /// that moves (a container recreated with a new address) is found again.
    ByName,
}

impl Peers {
    pub fn parse(text: &str) -> Option<Peers> {
        match text {
            "local" => Some(Peers::Local),
            "by-name" => Some(Peers::ByName),
            _ => None,
        }
    }
}

/// The symbols of `instruments` dealt over `shards` engine shards in turn
/// (the first to shard 0, the second to shard 1, ...). Every shard gets at
/// least one symbol, so there are at most as many shards as instruments.
pub fn deal_shards(instruments: &[Instrument], shards: usize) -> Result<Vec<Vec<String>>, String> {
    if shards == 0 || shards > instruments.len() {
        return Err(format!(
            "engine shards: {shards} for {} instruments; between 1 and the number of instruments",
            instruments.len()
        ));
    }
    let mut dealt = vec![Vec::new(); shards];
    for (i, inst) in instruments.iter().enumerate() {
        dealt[i % shards].push(inst.symbol.clone());
    }
    Ok(dealt)
}

/// Argon2id cost parameters. Production-like defaults; a simulation or a test
/// may use cheap ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordHashing {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl PasswordHashing {
    /// OWASP's argon2id minimum (19 MiB, 2 passes).
    pub const STANDARD: PasswordHashing = PasswordHashing { memory_kib: 19_456, iterations: 2, lanes: 1 };
    /// Cheap parameters for tests and simulation.
    pub const CHEAP: PasswordHashing = PasswordHashing { memory_kib: 64, iterations: 1, lanes: 1 };
}

/// A token bucket on the gateway (per user, or per peer address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// How much password hashing the auth service does at once. Argon2 is
/// deliberately costly (tens of milliseconds of CPU and 19 MiB each with
/// [`PasswordHashing::STANDARD`]), so it runs on blocking threads, at most
/// `concurrency` at a time, with at most `queue` more waiting; a Register or
/// Login beyond that is refused with RESOURCE_EXHAUSTED at once rather than
/// queued for seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashingLimits {
    pub concurrency: u32,
    pub queue: u32,
}

/// Everything a deployment's services need to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformConfig {
    /// Prefix of every stream name, subject and Redis key of this deployment, so
    /// that several deployments (or tests) share one NATS and one Redis.
    pub namespace: String,
    pub instruments: Vec<Instrument>,
    /// The symbols of each engine shard; every instrument in exactly one shard.
    pub engine_shards: Vec<Vec<String>>,
    pub addrs: ServiceAddrs,
    /// How services dial each other (real build).
    pub peers: Peers,
    pub nats_addr: String,
    pub redis_addr: String,
    /// HMAC-SHA256 key of the JWTs. No default: each deployment brings its
    /// own (`fafnir up --jwt-secret-file`), and [`PlatformConfig::validate`]
    /// refuses an empty one.
    pub jwt_secret: String,
    pub jwt_ttl: Duration,
    pub password_hashing: PasswordHashing,
    pub hashing_limits: HashingLimits,
    /// Per user, on every authenticated gateway call.
    pub rate_limit: RateLimit,
    /// Per peer IP address, on Register and Login (the calls without a token).
    pub peer_rate_limit: RateLimit,
    /// Execution reports the gateway keeps for streams resumed with
    /// `after_cursor` (its most recent ones, of every account); a cursor older
    /// than the window is refused with OUT_OF_RANGE. At start the gateway
    /// reads back at most this many TRADES messages to fill it.
    pub execution_window: usize,
    /// Orders the gateway has taken and not yet answered, at most: a submit
    /// beyond it is refused at once with RESOURCE_EXHAUSTED ("overloaded"),
    /// so that an overload is refused rather than queued and what is taken
    /// is answered in time (the queue behind it holds at most this many).
    pub max_orders_in_flight: usize,
    /// How long a service waits for another before giving up on a call.
    pub call_timeout: Duration,
    /// JetStream's duplicate window on the streams this deployment creates.
    pub duplicate_window: Duration,
    /// Copies JetStream keeps of each stream this deployment creates (1, or
    /// 3 or 5 on a NATS cluster of at least as many servers).
    pub stream_replicas: usize,
    /// Test-only: a known bug to plant, so that a test can show the checker
    /// catches it (a canary). Never set from a scenario file or the command line.
    /// None (always, outside tests) leaves every service's behaviour unchanged.
    pub planted_bug: Option<PlantedBug>,
    /// Meter the CPU time of every handler's work (`telemetry::cpu_metered`):
    /// two reads of the thread's CPU clock per poll. Off except in `fafnir calibrate`.
    pub measure_cpu: bool,
    /// Test-only: a known CPU cost to plant, so that the CPU-cost guard
    /// (`ci/cpu-cost`) can show it catches a slowed handler. Never set from
    /// a scenario file; None (always, outside that guard) leaves every
    /// service's code path unchanged. Unlike a [`PlantedBug`] it changes no
    /// behaviour, only the instructions spent.
    pub planted_cost: Option<PlantedCost>,
}

/// Slowdowns the CPU-cost guard plants to show it notices one: each costs
/// instructions on the order path and changes nothing else (every output,
/// and the simulated time, stay the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedCost {
    /// The engine lists its whole book (every resting order of the symbol)
    /// after each input it matches and sums the resting quantity, as a
    /// careless per-input gauge would: an O(n) scan per order, n the
    /// symbol's resting orders.
    BookScanPerOrder,
}

/// The bugs a canary test or a chaos sweep can plant. Each is a realistic
/// mistake that one check of the checker, and only it, must catch. The first
/// four stay silent in a fault-free run and bite only when a fault exercises
/// the recovery path they break, so that a sweep over random faults must find
/// them and a sweep with the switch off must stay clean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Settlement not idempotent under redelivery: the portfolio's ledger skips
    /// its fill-id dedupe, so a TRADES event delivered again (a portfolio
    /// restart replays the stream and then gets its unacked deliveries back; an
    /// ack lost in a partition or an ack wait that expires while the portfolio
    /// is paused makes the broker redeliver) moves the money a second time.
    SettleTwice,
    /// An accepted order is lost when the broker restarts: the ORDERS stream is
    /// declared with memory storage instead of file storage, so a broker
    /// restart drops every accepted order, the ones the engine had not
    /// processed yet among them (and the stream itself: later submits fail).
    LoseOnBrokerRestart,
    /// Engine replay after a restart produces duplicate fills: recovery ignores
    /// the position its last TRADES event records and republishes the outputs
    /// of every replayed input, under message ids stamped with the recovery
    /// time, so the broker's de-duplication cannot recognise them.
    DuplicateFillsOnReplay,
    /// A reservation is not released on cancel: the portfolio's rebuild at
    /// start replays fills but skips close events (cancels, IOC and FOK
    /// remainders), as if they moved no money, so after a portfolio restart
    /// the reservations of closed orders are held again.
    NoReleaseOnCancel,
    /// The portfolio's replay applies all of LEDGER before TRADES (as it once
    /// did), ignoring the TRADES position each LEDGER event records: a
    /// reservation that fitted only because a cancel had released the one
    /// before it is replayed before that release, the account looks
    /// over-reserved, and the portfolio cannot start again. Bites only when
    /// the portfolio restarts after traders reserved near their whole cash.
    ReplayLedgerFirst,
    /// The portfolio records a deposit before checking it against the
    /// account limit (as it once did): an overflowing deposit is stored in
    /// LEDGER and then cannot be applied, live or on any later replay.
    /// Bites only when a client sends such a deposit.
    DepositsUnchecked,
    /// An event whose publish ack was lost is published again under a fresh
    /// message id. When the engine's pipelined batch comes back with an
    /// event unanswered (timed out) but a later output of the same batch
    /// acknowledged, the engine reasons that acks come back in order, so the
    /// broker must have dropped that event, and publishes it again as a new
    /// message (the id with a suffix). But the broker had stored it: only its
    /// ack was lost. The event is in TRADES twice, a fill among them now and
    /// then: settled once by the portfolio (it dedupes on the fill id), but
    /// published, and reported to its owners, twice. Republished events must
    /// keep their message ids. Only a lost answer makes this gap: a
    /// partition, a pause or a broker kill fails a batch as a whole (the
    /// engine then republishes it under the events' own ids), so the
    /// `reply_lost` fault finds it and the other faults do not.
    RepublishUnderFreshId,
    /// Execution reports leak to the counterparty: the gateway addresses each
    /// of a fill's two reports to both parties of the fill (every account the
    /// fill names), so a trader is also told of the order on the other side of
    /// each of their trades. Bites without faults; caught by the checker's
    /// `reports_isolated`.
    ReportsToCounterparty,
    /// A restarted market counts fills twice: at start it takes each symbol's
    /// trade count and volume from the quote Redis still holds (a warm start),
    /// then replays TRADES from its start on top of them, so every fill made
    /// before the restart is counted again in the quote. Bites when the market
    /// restarts while Redis keeps its data; caught by `market_data_agrees`.
    QuoteRecountedOnRestart,
    /// A cancel is not checked against the order's owner: the orders
    /// service looks the order up by its id alone, so anyone who knows (or
    /// computes: user id and client order id make it) another user's order
    /// id can cancel it. Bites only when a client cancels an order not its
    /// own; caught by the checker's `hostile_refused` (the hostile client's
    /// cancel of another user's order is accepted).
    CancelWithoutOwnerCheck,
}

impl PlatformConfig {
    /// Two instruments on one engine shard, ports from 50051 on 127.0.0.1,
    /// NATS and Redis on their standard local ports. The JWT secret is empty
    /// (so [`PlatformConfig::validate`] refuses it): set your own.
    pub fn local_default() -> PlatformConfig {
        let instruments =
            vec![Instrument::new("ACME", 1, 1, 1, 1_000_000), Instrument::new("GLOBX", 5, 10, 1, 200_000)];
        let engine_shards = vec![instruments.iter().map(|i| i.symbol.clone()).collect()];
        PlatformConfig {
            namespace: "fafnir".into(),
            instruments,
            engine_shards,
            addrs: ServiceAddrs::local([127, 0, 0, 1].into(), 50051, 1),
            peers: Peers::Local,
            nats_addr: "127.0.0.1:4222".into(),
            redis_addr: "127.0.0.1:6379".into(),
            jwt_secret: String::new(),
            jwt_ttl: Duration::from_secs(3600),
            password_hashing: PasswordHashing::STANDARD,
            hashing_limits: HashingLimits { concurrency: 2, queue: 32 },
            rate_limit: RateLimit { per_second: 1000, burst: 2000 },
            peer_rate_limit: RateLimit { per_second: 20, burst: 40 },
            execution_window: 100_000,
            max_orders_in_flight: 64,
            call_timeout: Duration::from_secs(5),
            duplicate_window: Duration::from_secs(120),
            stream_replicas: 1,
            planted_bug: None,
            measure_cpu: false,
            planted_cost: None,
        }
    }

    /// Whether `bug` is planted (test-only; see [`PlantedBug`]).
    pub fn planted(&self, bug: PlantedBug) -> bool {
        self.planted_bug == Some(bug)
    }

    pub fn instrument(&self, symbol: &str) -> Option<&Instrument> {
        self.instruments.iter().find(|i| i.symbol == symbol)
    }

    /// Checks the configuration is coherent; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let ns_ok = !self.namespace.is_empty()
            && self.namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ns_ok {
            return Err(format!("namespace {:?}: use letters, digits, '_' and '-'", self.namespace));
        }
        if self.jwt_secret.is_empty() {
            return Err("jwt_secret: empty; every deployment needs its own secret key".into());
        }
        if self.hashing_limits.concurrency == 0 {
            return Err("hashing_limits.concurrency: at least 1".into());
        }
        for (name, limit) in [("rate_limit", self.rate_limit), ("peer_rate_limit", self.peer_rate_limit)] {
            if limit.per_second == 0 || limit.burst == 0 {
                return Err(format!("{name}: per_second and burst must be at least 1"));
            }
        }
        if self.execution_window == 0 {
            return Err("execution_window: at least 1".into());
        }
        if !(1..=5).contains(&self.stream_replicas) {
            return Err(format!("stream_replicas: {}; between 1 and 5 (JetStream's limit)", self.stream_replicas));
        }
        if self.max_orders_in_flight == 0 {
            return Err("max_orders_in_flight: at least 1".into());
        }
        if self.instruments.is_empty() {
            return Err("instruments: at least one is needed".into());
        }
        for inst in &self.instruments {
            inst.validate()?;
        }
        if self.engine_shards.len() != self.addrs.engines.len() {
            return Err(format!(
                "engine_shards: {} shards but {} engine addresses",
                self.engine_shards.len(),
                self.addrs.engines.len()
            ));
        }
        for inst in &self.instruments {
            let owners = self.engine_shards.iter().filter(|s| s.contains(&inst.symbol)).count();
            if owners != 1 {
                return Err(format!("engine_shards: {} is in {owners} shards, must be in one", inst.symbol));
            }
        }
        for symbol in self.engine_shards.iter().flatten() {
            if self.instrument(symbol).is_none() {
                return Err(format!("engine_shards: unknown symbol {symbol}"));
            }
        }
        Ok(())
    }

    /// The URI a service dials `peer` at: "auth", "market", "orders" or
    /// "portfolio" (see [`Peers`]).
    pub fn dial(&self, peer: &str) -> String {
        let a = &self.addrs;
        let addr = match peer {
            "auth" => a.auth,
            "market" => a.market,
            "orders" => a.orders,
            "portfolio" => a.portfolio,
            "gateway" => a.gateway,
            _ => unreachable!("a service dials only auth, market, orders, portfolio or gateway, not {peer:?}"),
        };
        match self.peers {
            Peers::Local => format!("http://{addr}"),
            Peers::ByName => format!("http://{peer}:{}", addr.port()),
        }
    }

    /// Stream names, subjects and key prefixes of this deployment.
    pub fn names(&self) -> Names {
        Names { ns: self.namespace.clone() }
    }
}

/// Stream names, subjects and Redis keys, all under the deployment's namespace.
#[derive(Clone, Debug)]
pub struct Names {
    ns: String,
}

impl Names {
    fn stream(&self, what: &str) -> String {
        format!("{}_{what}", self.ns.replace('-', "_").to_uppercase())
    }
    pub fn orders_stream(&self) -> String {
        self.stream("ORDERS")
    }
    pub fn trades_stream(&self) -> String {
        self.stream("TRADES")
    }
    pub fn md_stream(&self) -> String {
        self.stream("MD")
    }
    pub fn ledger_stream(&self) -> String {
        self.stream("LEDGER")
    }
    pub fn users_stream(&self) -> String {
        self.stream("USERS")
    }
    pub fn orders_all(&self) -> String {
        format!("{}.orders.>", self.ns)
    }
    pub fn orders_of(&self, symbol: &str) -> String {
        format!("{}.orders.{symbol}.*", self.ns)
    }
    pub fn order_accepted(&self, symbol: &str) -> String {
        format!("{}.orders.{symbol}.accepted", self.ns)
    }
    pub fn order_cancel(&self, symbol: &str) -> String {
        format!("{}.orders.{symbol}.cancel", self.ns)
    }
    pub fn order_abandoned(&self, symbol: &str) -> String {
        format!("{}.orders.{symbol}.abandoned", self.ns)
    }
    pub fn trades_all(&self) -> String {
        format!("{}.trades.>", self.ns)
    }
    pub fn trades_of(&self, symbol: &str) -> String {
        format!("{}.trades.{symbol}", self.ns)
    }
    pub fn md_all(&self) -> String {
        format!("{}.md.>", self.ns)
    }
    pub fn md_of(&self, symbol: &str) -> String {
        format!("{}.md.{symbol}", self.ns)
    }
    pub fn ledger_all(&self) -> String {
        format!("{}.ledger.>", self.ns)
    }
    pub fn ledger(&self, kind: &str) -> String {
        format!("{}.ledger.{kind}", self.ns)
    }
    pub fn users(&self) -> String {
        format!("{}.users", self.ns)
    }
    /// Prefix of every Redis key of this deployment.
    pub fn key_prefix(&self) -> String {
        format!("{}:", self.ns)
    }
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruments_are_dealt_over_the_shards_in_turn() {
        let cfg = PlatformConfig::local_default();
        assert_eq!(deal_shards(&cfg.instruments, 1).unwrap(), [vec!["ACME".to_string(), "GLOBX".to_string()]]);
        assert_eq!(deal_shards(&cfg.instruments, 2).unwrap(), [vec!["ACME".to_string()], vec!["GLOBX".to_string()]]);
        assert!(deal_shards(&cfg.instruments, 0).unwrap_err().contains("between 1 and"));
        assert!(deal_shards(&cfg.instruments, 3).unwrap_err().contains("3 for 2 instruments"));
    }

    #[test]
    fn peers_are_dialled_at_their_addresses_or_by_their_names() {
        let mut cfg = PlatformConfig::local_default();
        cfg.addrs = ServiceAddrs::local([0, 0, 0, 0].into(), 60000, 1);
        assert_eq!(cfg.dial("portfolio"), "http://0.0.0.0:60004");
        cfg.peers = Peers::ByName;
        assert_eq!(cfg.dial("auth"), "http://auth:60001");
        assert_eq!(cfg.dial("portfolio"), "http://portfolio:60004");
        assert_eq!(Peers::parse("by-name"), Some(Peers::ByName));
        assert_eq!(Peers::parse("dns"), None);
    }

    #[test]
    fn stream_replicas_are_those_jetstream_allows() {
        let mut cfg = PlatformConfig::local_default();
        cfg.jwt_secret = "k".repeat(32);
        cfg.stream_replicas = 3;
        assert_eq!(cfg.validate(), Ok(()));
        cfg.stream_replicas = 0;
        assert!(cfg.validate().unwrap_err().starts_with("stream_replicas"));
        cfg.stream_replicas = 6;
        assert!(cfg.validate().unwrap_err().starts_with("stream_replicas"));
    }
}
