//! The services. Each module has a `serve(deps, shutdown)` entry point that the
//! `fafnir` binary and the simulator call alike. Each listens at once through
//! a [`front::Front`]: the gRPC health protocol ([`health`]) says NOT_SERVING
//! and the service's own calls are refused with UNAVAILABLE while it rebuilds
//! its state from the streams; then SERVING, and its calls are answered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tonic::Status;

use crate::bus::{BusError, EventBus, Storage, StreamSpec};
use crate::clock::Clock;
use crate::config::PlatformConfig;
use crate::domain::{CloseReason, OrderStatus, OrderType, Side};
use crate::kv::{Kv, KvError};
use crate::proto::{common, events};

pub mod auth;
pub mod engine;
pub mod front;
pub mod gateway;
pub mod graphql;
pub mod health;
pub mod jwt;
pub mod launch;
pub mod market;
pub mod orders;
pub mod portfolio;

/// The durable consumers of the TRADES stream (orders', portfolio's).
pub const DURABLES: [&str; 2] = [portfolio::DURABLE, orders::DURABLE];

/// What every service is handed: its configuration, its I/O, and (in
/// simulation) the model of its processing time.
#[derive(Clone)]
pub struct Deps {
    pub cfg: Arc<PlatformConfig>,
    pub bus: Arc<dyn EventBus>,
    pub kv: Arc<dyn Kv>,
    /// The time of day (system clock for real, simulated time in the world).
    pub clock: Arc<dyn Clock>,
    /// Random bytes for secrets (password salts): the OS's for real, a
    /// generator seeded from the root seed in the world.
    pub entropy: Arc<dyn Entropy>,
    /// None for real: real work takes real time.
    pub service_time: Option<Arc<dyn ServiceTime>>,
}

/// Where random bytes come from. The platform never reads OS randomness
/// itself (the simulation must replay bit for bit): a real deployment hands
/// in the OS's (`fafnir_scenarios::real::OsEntropy`), the world a seeded
/// generator ([`crate::rng::SeededEntropy`]).
pub trait Entropy: Send + Sync + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);
}

impl Deps {
    pub fn new(
        cfg: Arc<PlatformConfig>,
        bus: Arc<dyn EventBus>,
        kv: Arc<dyn Kv>,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
    ) -> Deps {
        // Every publish and Redis command is timed (see `telemetry`).
        let bus: Arc<dyn EventBus> = Arc::new(crate::telemetry::TimedBus(bus));
        let kv: Arc<dyn Kv> = Arc::new(crate::telemetry::TimedKv(kv));
        Deps { cfg, bus, kv, clock, entropy, service_time: None }
    }

    pub fn with_service_time(mut self, model: Arc<dyn ServiceTime>) -> Deps {
        self.service_time = Some(model);
        self
    }

    /// Takes the modelled processing time of one unit of work of `handler`
    /// (for example `"orders.submit"`). Free for real.
    pub async fn work(&self, handler: &'static str) {
        metrics::counter!(crate::telemetry::WORK_UNITS, "work" => handler).increment(1);
        if let Some(model) = &self.service_time {
            model.process(handler).await;
        }
    }

    /// Like [`Deps::work`], for work that only a measured model prices (market
    /// data's fan-out to each subscriber): free in a model that does not name
    /// `handler` (written by hand, or calibrated before it was measured).
    pub async fn measured_work(&self, handler: &'static str) {
        metrics::counter!(crate::telemetry::WORK_UNITS, "work" => handler).increment(1);
        if let Some(model) = &self.service_time {
            model.process_if_named(handler).await;
        }
    }
}

#[cfg(madsim)]
thread_local! {
    /// The in-code fault points' generator while they are on (None: off), for
    /// the simulation running on this thread (a madsim runtime runs on one
    /// thread; a sweep runs one world after another on each of its threads,
    /// and each world sets it).
    static FAULT_POINTS: std::cell::RefCell<Option<crate::rng::SplitMix64>> = const { std::cell::RefCell::new(None) };
}

/// Switches the platform's in-code fault points on (drawing from `seed`, a
/// seed derived from the run's root seed) or off, for the simulation on this
/// thread. madsim's own network fault points (a tenth of sends delayed
/// 1-5 s) are a separate switch, `madsim::buggify`.
#[cfg(madsim)]
pub fn set_fault_points(seed: Option<u64>) {
    FAULT_POINTS.with(|f| *f.borrow_mut() = seed.map(crate::rng::SplitMix64::new));
}

/// An in-code fault point (FoundationDB's BUGGIFY): true with probability
/// `p` when the simulation has switched fault points on, never otherwise
/// (always false in the real build). Each point widens a race window or
/// forces a path (a redelivery, a late ack) that the code must survive.
pub fn buggify(p: f64) -> bool {
    #[cfg(madsim)]
    {
        FAULT_POINTS.with(|f| f.borrow_mut().as_mut().is_some_and(|rng| rng.next_unit() < p))
    }
    #[cfg(not(madsim))]
    {
        let _ = p;
        false
    }
}

/// Processing time, modelled. madsim runs CPU work in zero simulated time, so
/// without a model every handler would be instantaneous and no queue would
/// ever form. The simulation draws each call's time from a distribution and
/// bounds how many calls a service processes at once.
#[async_trait::async_trait]
pub trait ServiceTime: Send + Sync + 'static {
    /// Waits one call's processing time, holding one of the service's
    /// concurrency slots while it does.
    async fn process(&self, handler: &'static str);

    /// [`ServiceTime::process`] if the model names `handler`; otherwise no time.
    async fn process_if_named(&self, handler: &'static str);
}

/// Why a service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Kv(#[from] KvError),
    #[error("gRPC server on {addr}: {reason}")]
    Serve { addr: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("service stopped: {0}")]
    TaskEnded(String),
    /// An event in a stream the service rebuilds from or follows that it
    /// cannot decode or apply: the service stops there and names it.
    #[error("cannot apply the event at {stream}#{seq}: {reason}")]
    Corrupt { stream: String, seq: u64, reason: String },
}

/// Which services exist, for `fafnir serve <service>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceKind {
    Gateway,
    Auth,
    Market,
    Orders,
    Engine,
    Portfolio,
}

/// A shutdown signal that can be awaited by several tasks.
pub type Shutdown = futures::future::Shared<futures::future::BoxFuture<'static, ()>>;

/// Turns any future into a [`Shutdown`].
pub fn shutdown_on(fut: impl Future<Output = ()> + Send + 'static) -> Shutdown {
    use futures::FutureExt;
    fut.boxed().shared()
}

/// Creates every stream of the deployment. Idempotent; each service calls it at start.
pub async fn ensure_streams(deps: &Deps) -> Result<(), BusError> {
    let names = deps.cfg.names();
    let window = deps.cfg.duplicate_window;
    let spec = |name: String, subject: String, storage: Storage, max_msgs: i64| StreamSpec {
        name,
        subjects: vec![subject],
        storage,
        duplicate_window: window,
        max_msgs,
        replicas: deps.cfg.stream_replicas,
    };
    // Planted bug: the system of record for accepted orders kept in memory.
    let orders_storage =
        if deps.cfg.planted(crate::config::PlantedBug::LoseOnBrokerRestart) { Storage::Memory } else { Storage::File };
    let streams = [
        spec(names.orders_stream(), names.orders_all(), orders_storage, 0),
        spec(names.trades_stream(), names.trades_all(), Storage::File, 0),
        spec(names.ledger_stream(), names.ledger_all(), Storage::File, 0),
        spec(names.users_stream(), names.users(), Storage::File, 0),
        spec(names.md_stream(), names.md_all(), Storage::Memory, 100_000),
    ];
    for stream in &streams {
        deps.bus.ensure_stream(stream).await?;
    }
    Ok(())
}

/// Creates (or finds) a durable consumer of the whole TRADES stream, as the
/// services that follow the engine's outputs (portfolio, orders) use.
pub async fn ensure_trades_consumer(deps: &Deps, durable: &str) -> Result<(), BusError> {
    let names = deps.cfg.names();
    deps.bus
        .ensure_consumer(&crate::bus::ConsumerSpec {
            stream: names.trades_stream(),
            durable: durable.into(),
            filter: names.trades_all(),
            ack_wait: Duration::from_secs(5),
            max_deliver: -1,
            max_ack_pending: 10_000,
        })
        .await
}

/// How often each service checks that the deployment's streams, and its own
/// durable consumers, exist.
pub const STREAMS_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Keeps the deployment's streams and this service's durable consumers of
/// TRADES (`durables`) in existence until shutdown, checking every
/// [`STREAMS_CHECK_EVERY`]: a broker restart loses the memory stream MD
/// (market data would end for good, and its publishes fail), and a broker
/// that lost its store loses everything. Creating is idempotent.
pub async fn keep_streams(deps: Deps, durables: &'static [&'static str], shutdown: Shutdown) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.clone() => return,
            _ = crate::time::sleep(STREAMS_CHECK_EVERY) => {}
        }
        if let Err(e) = ensure_streams(&deps).await {
            tracing::debug!(error = %e, "streams not checked; trying again");
            continue;
        }
        for durable in durables {
            if let Err(e) = ensure_trades_consumer(&deps, durable).await {
                tracing::debug!(durable, error = %e, "consumer not checked; trying again");
            }
        }
    }
}

/// Follows the new messages of a stream subject, decoded, until shutdown. A
/// failed tail is reopened after a pause (what was published in the gap is
/// not seen); an undecodable message is skipped.
pub struct Follower {
    bus: Arc<dyn EventBus>,
    stream: String,
    filter: String,
    tail: Box<dyn crate::bus::Tail>,
    shutdown: Shutdown,
    /// The last sequence handed out (or opened after); None before the first.
    last: Option<u64>,
    /// Read back after a reopen: what was stored while the tail was down.
    backlog: std::collections::VecDeque<crate::bus::StoredMsg>,
    /// Tail messages up to here were already handed out from the backlog
    /// (0: none), until the tail passes it or its numbering starts over.
    skip_through: u64,
    /// The sequence of the tail's last message, since it was (re)opened.
    tail_last: Option<u64>,
}

impl Follower {
    /// Opens the tail now, so that nothing published after this call is missed.
    pub async fn open(deps: &Deps, stream: String, filter: String, shutdown: Shutdown) -> Result<Follower, BusError> {
        let tail = deps.bus.tail(&stream, &filter).await?;
        Ok(Follower {
            bus: deps.bus.clone(),
            stream,
            filter,
            tail,
            shutdown,
            last: None,
            backlog: Default::default(),
            skip_through: 0,
            tail_last: None,
        })
    }

    /// Opens the tail and hands out everything stored after sequence `after` first.
    pub async fn open_after(
        deps: &Deps,
        stream: String,
        filter: String,
        after: u64,
        shutdown: Shutdown,
    ) -> Result<Follower, BusError> {
        let mut f = Follower::open(deps, stream, filter, shutdown).await?;
        f.last = Some(after);
        f.read_back().await?;
        Ok(f)
    }

    /// The next message that decodes as `M`, with its sequence; None once
    /// shutdown has come. When the tail fails it is reopened and what was
    /// stored in between is read back from the stream, so nothing is missed
    /// and nothing handed out twice (a memory stream whose numbering restarted
    /// with the broker is followed from its new start).
    pub async fn next<M: Message + Default>(&mut self) -> Option<(u64, M)> {
        loop {
            let (next, from_tail) = match self.backlog.pop_front() {
                Some(m) => (Ok(m), false),
                None => tokio::select! {
                    biased;
                    _ = self.shutdown.clone() => return None,
                    r = self.tail.next() => (r, true),
                },
            };
            match next {
                Ok(m) => {
                    if let Some(handed) = self.hand_out(m, from_tail) {
                        return Some(handed);
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "tail failed; reopening");
                    self.reopen().await;
                }
            }
        }
    }

    /// The next message that decodes as `M` among those already at hand,
    /// without waiting (None when none is: then wait with [`Follower::next`]).
    pub fn next_ready<M: Message + Default>(&mut self) -> Option<(u64, M)> {
        loop {
            let (m, from_tail) = match self.backlog.pop_front() {
                Some(m) => (m, false),
                None => (self.tail.try_next()?, true),
            };
            if let Some(handed) = self.hand_out(m, from_tail) {
                return Some(handed);
            }
        }
    }

    /// `m` decoded, unless it was handed out already (from the backlog) or
    /// does not decode (then it is skipped).
    fn hand_out<M: Message + Default>(&mut self, m: crate::bus::StoredMsg, from_tail: bool) -> Option<(u64, M)> {
        if from_tail {
            // A tail that goes back in sequence follows a stream that started
            // over (it reconnects by itself): what the backlog held was of
            // the old numbering. (Seed 1407 of chaos.toml: after a
            // second broker restart the market and the gateway dropped every
            // market-data update numbered below the first restart's backlog.)
            let restarted = self.tail_last.is_some_and(|last| m.seq <= last);
            self.tail_last = Some(m.seq);
            if restarted || m.seq > self.skip_through {
                self.skip_through = 0;
            } else {
                return None; // handed out from the backlog
            }
        }
        self.last = Some(m.seq);
        match decode::<M>(&self.stream, m.seq, &m.payload) {
            Ok(event) => Some((m.seq, event)),
            Err(e) => {
                tracing::error!(error = %e, "undecodable message skipped");
                None
            }
        }
    }

    /// Reopens the tail, then reads back what was stored since the last message.
    async fn reopen(&mut self) {
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.clone() => return,
                _ = crate::time::sleep(Duration::from_millis(200)) => {}
            }
            let Ok(tail) = self.bus.tail(&self.stream, &self.filter).await else { continue };
            self.tail = tail;
            self.tail_last = None;
            match self.read_back().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(stream = %self.stream, error = %e, "read-back failed; reopening again"),
            }
        }
    }

    /// Queues what the stream holds after the last message (nothing before
    /// the first); all it holds when its numbering started over (a memory
    /// stream made again after a broker restart: reading on from the old
    /// position would skip what the new stream got first).
    async fn read_back(&mut self) -> Result<(), BusError> {
        let Some(last) = self.last else { return Ok(()) };
        let from = if self.bus.last_seq(&self.stream).await? < last {
            tracing::info!(stream = %self.stream, last, "the stream started over; reading it from its start");
            1
        } else {
            last + 1
        };
        let missed = crate::bus::read_to_end(self.bus.as_ref(), &self.stream, &self.filter, from).await?;
        if !missed.is_empty() {
            tracing::info!(stream = %self.stream, missed = missed.len(), "read back what the tail missed");
        }
        self.skip_through = missed.last().map_or(0, |m| m.seq);
        self.backlog = missed.into();
        Ok(())
    }
}

/// Publishes, retrying with backoff until the broker has stored the message.
/// Used where giving up would lose a fact (the engine's outputs); the message id
/// makes every retry harmless.
pub async fn publish_until_stored(bus: &dyn EventBus, msg: &crate::bus::Publish) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match bus.publish_traced(msg.clone()).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(subject = msg.subject, msg_id = msg.msg_id, error = %e, "publish failed; retrying");
                crate::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// At most this many characters of client-supplied text appear in an error
/// message: a status's message travels in a header, and text of unbounded
/// size echoed back there can break the client's HTTP/2 connection.
pub const SHOWN_CHARS_MAX: usize = 40;

/// Client-supplied `text` as an error message shows it: quoted, and cut to
/// [`SHOWN_CHARS_MAX`] characters with its full length in bytes when longer.
pub fn shown(text: &str) -> String {
    if text.chars().count() <= SHOWN_CHARS_MAX {
        return format!("{text:?}");
    }
    let head: String = text.chars().take(SHOWN_CHARS_MAX).collect();
    format!("{head:?}... ({} bytes)", text.len())
}

/// Decodes a protobuf event, naming where it came from on failure.
pub fn decode<M: Message + Default>(stream: &str, seq: u64, payload: &[u8]) -> Result<M, ServiceError> {
    M::decode(payload).map_err(|e| ServiceError::Corrupt {
        stream: stream.to_string(),
        seq,
        reason: format!("it does not decode: {e}"),
    })
}

pub(crate) fn bus_status(e: BusError) -> Status {
    Status::unavailable(e.to_string())
}

pub(crate) fn side_from_proto(v: i32) -> Result<Side, Status> {
    match common::Side::try_from(v) {
        Ok(common::Side::Buy) => Ok(Side::Buy),
        Ok(common::Side::Sell) => Ok(Side::Sell),
        _ => Err(Status::invalid_argument(format!("side: {v} is not BUY or SELL"))),
    }
}

pub(crate) fn side_to_proto(side: Side) -> common::Side {
    match side {
        Side::Buy => common::Side::Buy,
        Side::Sell => common::Side::Sell,
    }
}

pub(crate) fn order_type_from_proto(v: i32) -> Result<OrderType, Status> {
    match common::OrderType::try_from(v) {
        Ok(common::OrderType::Market) => Ok(OrderType::Market),
        Ok(common::OrderType::Limit) => Ok(OrderType::Limit),
        Ok(common::OrderType::Ioc) => Ok(OrderType::Ioc),
        Ok(common::OrderType::Fok) => Ok(OrderType::Fok),
        _ => Err(Status::invalid_argument(format!("order_type: {v} is not MARKET, LIMIT, IOC or FOK"))),
    }
}

pub(crate) fn order_type_to_proto(t: OrderType) -> common::OrderType {
    match t {
        OrderType::Market => common::OrderType::Market,
        OrderType::Limit => common::OrderType::Limit,
        OrderType::Ioc => common::OrderType::Ioc,
        OrderType::Fok => common::OrderType::Fok,
    }
}

pub(crate) fn status_to_proto(s: OrderStatus) -> common::OrderStatus {
    match s {
        OrderStatus::Accepted => common::OrderStatus::Accepted,
        OrderStatus::PartiallyFilled => common::OrderStatus::PartiallyFilled,
        OrderStatus::Filled => common::OrderStatus::Filled,
        OrderStatus::Canceled => common::OrderStatus::Canceled,
        OrderStatus::Rejected => common::OrderStatus::Rejected,
    }
}

pub(crate) fn close_reason_to_proto(r: CloseReason) -> events::CloseReason {
    match r {
        CloseReason::Canceled => events::CloseReason::Canceled,
        CloseReason::Expired => events::CloseReason::Expired,
        CloseReason::Killed => events::CloseReason::Killed,
        CloseReason::Rejected => events::CloseReason::Rejected,
    }
}

pub(crate) fn close_reason_from_proto(v: i32) -> CloseReason {
    match events::CloseReason::try_from(v) {
        Ok(events::CloseReason::Canceled) => CloseReason::Canceled,
        Ok(events::CloseReason::Expired) => CloseReason::Expired,
        Ok(events::CloseReason::Killed) => CloseReason::Killed,
        _ => CloseReason::Rejected,
    }
}

/// The largest request message a public service (gateway, auth) decodes;
/// a larger one is refused by tonic with OUT_OF_RANGE. Every valid request
/// is far smaller (see the README's "Limits and bad input").
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// The largest header list (all of a request's metadata, HPACK-decoded) the
/// HTTP/2 layer accepts. Far above what the gateway then accepts (a 4 KiB
/// token, 16 KiB of metadata) so that an oversized request reaches the
/// handler and gets a gRPC status that says what was too large, instead of
/// the connection error HTTP/2 gives beyond this.
pub const HEADER_LIST_BYTES_MAX: u32 = 2 << 20;

/// The gRPC server every service runs, with the platform's limits on what a
/// request may carry (see the README's "Limits and bad input").
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder().http2_max_header_list_size(HEADER_LIST_BYTES_MAX)
}

/// An error's text followed by its sources' (a server that cannot listen
/// says why only in its error's source: "address in use").
pub(crate) fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// A lazily connected gRPC channel to `addr`.
pub fn channel(addr: std::net::SocketAddr, timeout: Duration) -> tonic::transport::Channel {
    channel_to(format!("http://{addr}"), timeout)
}

/// A lazily connected gRPC channel to `uri` (`http://host:port`; a host
/// name is resolved at every connection), as [`PlatformConfig::dial`] gives.
///
/// [`PlatformConfig::dial`]: crate::config::PlatformConfig::dial
pub fn channel_to(uri: String, timeout: Duration) -> tonic::transport::Channel {
    // The endpoint keeps its own clock: it takes the runtime's duration.
    let timeout = crate::time::to_runtime(timeout);
    tonic::transport::Endpoint::from_shared(uri)
        .expect("http://host:port is a valid URI")
        .timeout(timeout)
        .connect_timeout(timeout)
        .connect_lazy()
}

/// A service's background tasks. Dropping the group aborts them, so they die
/// with the service whether it stops gracefully or its task is aborted (a
/// crash, in tests and simulation); and [`TaskGroup::serve_until_failure`]
/// ends the service when one of them ends, so a panicking consumer never
/// leaves a server answering from state that no longer advances.
#[derive(Default)]
pub struct TaskGroup(Vec<tokio::task::JoinHandle<Result<(), ServiceError>>>);

impl TaskGroup {
    /// A task that runs until shutdown.
    pub fn spawn(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        self.0.push(tokio::spawn(async move {
            fut.await;
            Ok(())
        }));
    }

    /// A task that runs until shutdown or stops the service with an error
    /// (for example an event in its stream it cannot apply).
    pub fn spawn_fallible(&mut self, fut: impl Future<Output = Result<(), ServiceError>> + Send + 'static) {
        self.0.push(tokio::spawn(fut));
    }

    /// Runs `server` until it ends or any task of the group ends, whichever is first.
    pub async fn serve_until_failure<E: std::fmt::Display>(
        mut self,
        addr: std::net::SocketAddr,
        server: impl Future<Output = Result<(), E>>,
    ) -> Result<(), ServiceError> {
        let first_end = async {
            if self.0.is_empty() {
                return futures::future::pending().await;
            }
            let (ended, _, _) = futures::future::select_all(self.0.iter_mut()).await;
            ended
        };
        tokio::select! {
            biased;
            served = server => served.map_err(|e| ServiceError::Serve { addr: addr.to_string(), reason: e.to_string() }),
            // Tasks return only on shutdown; anything else is an error or a panic.
            ended = first_end => match ended {
                Ok(result) => result,
                Err(e) => Err(ServiceError::TaskEnded(format!("a background task failed: {e}"))),
            },
        }
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn shown_text_is_bounded() {
        assert_eq!(shown("ACME"), "\"ACME\"");
        let long = "X".repeat(100_000);
        let s = shown(&long);
        assert!(s.len() < 80 && s.ends_with("(100000 bytes)"), "{s}");
        let unicode = "é".repeat(50);
        assert!(shown(&unicode).ends_with("(100 bytes)"));
    }
}
