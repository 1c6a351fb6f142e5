//! What the platform tells about itself while it runs: metrics, through the
//! [`metrics`] facade.
//!
//! The services only record; whoever runs them installs the recorder and
//! decides where the numbers go: for real, `fafnir up` / `fafnir serve` serve
//! them as Prometheus text on `/metrics`; in simulation, each world records
//! into a recorder of its own thread and the run directory gets a sample of
//! them every simulated second (`metrics.jsonl`). No recorder installed: the
//! calls cost next to nothing and go nowhere.
//!
//! Recording never reads a clock other than `tokio::time` (simulated under
//! madsim), never draws randomness, and nothing in the platform reads a
//! metric back, so recording and reading them cannot change a simulated run.
//!
//! Every name is a constant here, with its unit last, so that the dashboards
//! in `deploy/grafana/` and the tests name the same series; the README's
//! "Watching a run" lists them.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use metrics::{counter, gauge, histogram};
use tonic::{Code, Response, Status};

use crate::bus::{
    AckToken, BusError, ConsumerLag, ConsumerSpec, Delivery, EventBus, PubAck, Publish, StoredMsg, StreamSpec, Tail,
};
use crate::kv::{Kv, KvError};
use crate::services::Deps;

/// RPCs started, by `grpc_type`, `grpc_service`, `grpc_method`.
pub const GRPC_STARTED: &str = "grpc_server_started_total";
/// RPCs answered, with `grpc_code` besides.
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
/// Time from the RPC reaching its handler to its answer (a stream: to its opening).
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

/// Orders the orders service accepted (durable in ORDERS), by `symbol`.
pub const ORDERS_ACCEPTED: &str = "fafnir_orders_accepted_total";
/// Orders refused, by `reason` (invalid, funds, overload, rate_limit, unauthenticated, unavailable, other).
pub const ORDERS_REJECTED: &str = "fafnir_orders_rejected_total";
/// Cancels the orders service took, by `outcome` (accepted, refused).
pub const CANCELS: &str = "fafnir_cancels_total";
/// Orders (and cancels) the engine took from ORDERS, by `symbol`: its input rate.
pub const ENGINE_INPUTS: &str = "fafnir_engine_inputs_total";
/// Fills the engine made, by `symbol`.
pub const FILLS: &str = "fafnir_fills_total";
/// Price times quantity of the engine's fills, in cents, by `symbol`.
pub const FILL_NOTIONAL_CENTS: &str = "fafnir_fill_notional_cents_total";
/// Resting orders in the book, by `symbol`.
pub const BOOK_DEPTH_ORDERS: &str = "fafnir_book_depth_orders";
/// Fills the portfolio settled.
pub const FILLS_SETTLED: &str = "fafnir_fills_settled_total";
/// Time from the engine's fill to its settlement by the portfolio (platform clock, ms resolution).
pub const SETTLEMENT_LAG_SECONDS: &str = "fafnir_settlement_lag_seconds";
/// Cash reserved by open orders and not yet used or released.
pub const RESERVED_CENTS: &str = "fafnir_reservations_outstanding_cents";
/// Shares reserved by open sell orders, by `symbol`.
pub const RESERVED_SHARES: &str = "fafnir_reservations_outstanding_shares";
/// Open reservations (orders holding cash or shares).
pub const RESERVATIONS_OPEN: &str = "fafnir_reservations_outstanding_orders";
/// Messages a durable consumer has not yet acked: stored after its ack
/// floor, delivered or not (JetStream's num_pending + num_ack_pending), by `stream`, `consumer`.
pub const CONSUMER_LAG: &str = "fafnir_consumer_lag_messages";
/// Time a publish took to be stored (the broker's ack), by `op` (publish, publish_batch) and `stream`.
pub const BUS_PUBLISH_SECONDS: &str = "fafnir_bus_publish_seconds";
/// Time a Redis command took, by `op`.
pub const REDIS_CALL_SECONDS: &str = "fafnir_redis_call_seconds";
/// Redis commands that failed, by `op`.
pub const REDIS_ERRORS: &str = "fafnir_redis_errors_total";
/// Age of a market-data update when the gateway fans it out: from the
/// engine's publication (the update's own timestamp) to the gateway taking it
/// from the stream. With a client's `md_fanout` it splits market data's path
/// into the broker's leg and the gateway-to-client leg.
pub const MARKET_DATA_AGE_SECONDS: &str = "fafnir_market_data_age_seconds";
/// Requests the gateway refused to protect the platform, by `reason` (rate_limit, overload).
pub const GATEWAY_REFUSALS: &str = "fafnir_gateway_refusals_total";
/// Orders in flight at the gateway (taken, not yet answered).
pub const GATEWAY_ORDERS_IN_FLIGHT: &str = "fafnir_gateway_orders_in_flight";
/// Units of work by handler (`work`, e.g. `orders.submit`, `engine.match`):
/// one per call of `Deps::work`, the unit a simulated service time models.
pub const WORK_UNITS: &str = "fafnir_work_units_total";
/// CPU time spent by the work of each handler (`work`): the thread CPU time of
/// every poll of its future, summed. Recorded only when the deployment measures
/// it (`PlatformConfig::measure_cpu`, set by `fafnir calibrate`) and its clock
/// can read a thread's CPU time (the real one).
pub const WORK_CPU_NANOS: &str = "fafnir_work_cpu_nanoseconds_total";

/// Histogram bucket bounds, in seconds: 10 µs to 10 s, for every `_seconds` histogram.
pub const SECONDS_BUCKETS: [f64; 20] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Says what each metric is (`# HELP`) to the installed recorder. Called
/// once a recorder is installed; the services record without it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(GRPC_STARTED, "RPCs started on the server.");
    describe_counter!(GRPC_HANDLED, "RPCs completed on the server, by status code.");
    describe_histogram!(GRPC_HANDLING_SECONDS, Unit::Seconds, "Time the server took to answer an RPC.");
    describe_counter!(ORDERS_ACCEPTED, "Orders accepted (durable in the ORDERS stream).");
    describe_counter!(ORDERS_REJECTED, "Orders refused, by reason.");
    describe_counter!(CANCELS, "Cancels taken by the orders service, by outcome.");
    describe_counter!(ENGINE_INPUTS, "Orders and cancels the engine took from ORDERS.");
    describe_counter!(FILLS, "Fills made by the engine.");
    describe_counter!(FILL_NOTIONAL_CENTS, "Price times quantity of the engine's fills, in cents.");
    describe_gauge!(BOOK_DEPTH_ORDERS, "Resting orders in the book.");
    describe_counter!(FILLS_SETTLED, "Fills settled by the portfolio.");
    describe_histogram!(SETTLEMENT_LAG_SECONDS, Unit::Seconds, "Time from a fill to its settlement.");
    describe_gauge!(RESERVED_CENTS, "Cash reserved by open orders, in cents.");
    describe_gauge!(RESERVED_SHARES, "Shares reserved by open sell orders.");
    describe_gauge!(RESERVATIONS_OPEN, "Orders holding a reservation.");
    describe_gauge!(CONSUMER_LAG, "Messages a durable consumer has not yet acknowledged.");
    describe_histogram!(BUS_PUBLISH_SECONDS, Unit::Seconds, "Time a JetStream publish took to be stored.");
    describe_histogram!(REDIS_CALL_SECONDS, Unit::Seconds, "Time a Redis command took.");
    describe_counter!(REDIS_ERRORS, "Redis commands that failed.");
    describe_histogram!(
        MARKET_DATA_AGE_SECONDS,
        Unit::Seconds,
        "Age of a market-data update when the gateway fans it out (from the engine's publication)."
    );
    describe_counter!(GATEWAY_REFUSALS, "Requests refused by the gateway to protect the platform.");
    describe_gauge!(GATEWAY_ORDERS_IN_FLIGHT, "Orders taken by the gateway and not yet answered.");
}

/// The kind of an RPC, as `grpc_type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcKind {
    Unary,
    ServerStream,
}

impl RpcKind {
    fn label(self) -> &'static str {
        match self {
            RpcKind::Unary => "unary",
            RpcKind::ServerStream => "server_stream",
        }
    }
}

/// One RPC handler: its service-time name and its gRPC names.
#[derive(Clone, Copy, Debug)]
pub struct Rpc {
    /// The name its modelled service time goes by (`"gateway.submit_order"`).
    pub handler: &'static str,
    /// The full gRPC service name (`"fafnir.gateway.Gateway"`).
    pub service: &'static str,
    /// The gRPC method (`"SubmitOrder"`).
    pub method: &'static str,
    pub kind: RpcKind,
}

impl Rpc {
    /// A unary RPC `method` of `service`, its service time named `handler`.
    pub const fn unary(service: &'static str, method: &'static str, handler: &'static str) -> Rpc {
        Rpc { handler, service, method, kind: RpcKind::Unary }
    }

    /// A server-streaming RPC `method` of `service`, its service time named `handler`.
    pub const fn server_stream(service: &'static str, method: &'static str, handler: &'static str) -> Rpc {
        Rpc { handler, service, method, kind: RpcKind::ServerStream }
    }
}

/// Serves one RPC: takes its modelled service time, runs `call`, and counts
/// it in the `grpc_server_*` metrics, inside a span of the call (joined to
/// the trace `context` the request carried, if any). Every handler of every
/// service goes through here, in both worlds.
pub async fn grpc_call<T>(
    deps: &Deps,
    rpc: Rpc,
    context: Option<String>,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    use tracing::Instrument;
    let span = tracing::debug_span!(
        target: SPANS,
        "rpc",
        otel.name = %format_args!("{}/{}", rpc.service, rpc.method),
        trace_id = context.as_deref().map_or("", trace::trace_id),
    );
    trace::join(&span, context.as_deref());
    observed(deps, rpc, call).instrument(span).await
}

/// The target of the platform's spans (at debug level): one per RPC and
/// one per hop of an order through a stream. Off unless a subscriber asks
/// for them (`RUST_LOG=fafnir::spans=debug`, or OTLP export).
pub const SPANS: &str = "fafnir::spans";

/// A span for one hop of an order's life outside an RPC (the engine's match,
/// the portfolio's settlement), joined to its trace `context`.
pub fn hop(name: &'static str, context: Option<&str>) -> tracing::Span {
    let span =
        tracing::debug_span!(target: SPANS, "hop", otel.name = name, trace_id = context.map_or("", trace::trace_id));
    trace::join(&span, context);
    span
}

async fn observed<T>(
    deps: &Deps,
    rpc: Rpc,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    let (kind, service, method) = (rpc.kind.label(), rpc.service, rpc.method);
    counter!(GRPC_STARTED, "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method).increment(1);
    let started = crate::time::Instant::now();
    deps.work(rpc.handler).await;
    let result = cpu_metered(deps, rpc.handler, call).await;
    let code = code_name(match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    });
    counter!(GRPC_HANDLED, "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method, "grpc_code" => code)
        .increment(1);
    histogram!(GRPC_HANDLING_SECONDS, "grpc_type" => kind, "grpc_service" => service, "grpc_method" => method)
        .record(started.elapsed().as_secs_f64());
    result
}

/// Runs `fut`, adding the thread CPU time of each of its polls to
/// [`WORK_CPU_NANOS`] under `work` when the deployment measures CPU (see
/// there); otherwise runs it as it is. What one unit of `work` costs is then
/// `WORK_CPU_NANOS / WORK_UNITS` (what `fafnir calibrate` reads).
pub async fn cpu_metered<F: Future>(deps: &Deps, work: &'static str, fut: F) -> F::Output {
    match CpuMeter::new(deps, work) {
        Some(meter) => CpuMetered { inner: Box::pin(fut), meter }.await,
        None => fut.await,
    }
}

/// [`cpu_metered`] on `clock` (None: not metered), for code outside a
/// service (the load generator's own work, which `fafnir calibrate` prices).
pub async fn cpu_metered_on<F: Future>(
    clock: Option<std::sync::Arc<dyn crate::clock::Clock>>,
    work: &'static str,
    fut: F,
) -> F::Output {
    match CpuMeter::on(clock, work) {
        Some(meter) => CpuMetered { inner: Box::pin(fut), meter }.await,
        None => fut.await,
    }
}

/// [`cpu_metered`] for a stream: the thread CPU time of each of its polls
/// (a server stream's, polled by the connection that sends its items).
pub fn cpu_metered_stream<S: futures::Stream + Send + 'static>(
    deps: &Deps,
    work: &'static str,
    stream: S,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = S::Item> + Send>> {
    match CpuMeter::new(deps, work) {
        Some(meter) => Box::pin(CpuMetered { inner: Box::pin(stream), meter }),
        None => Box::pin(stream),
    }
}

/// Adds the thread CPU time of what it runs to [`WORK_CPU_NANOS`] under `work`.
struct CpuMeter {
    clock: std::sync::Arc<dyn crate::clock::Clock>,
    work: &'static str,
}

impl CpuMeter {
    /// None when the deployment does not measure CPU or its clock cannot.
    fn new(deps: &Deps, work: &'static str) -> Option<CpuMeter> {
        CpuMeter::on(deps.cfg.measure_cpu.then(|| deps.clock.clone()), work)
    }

    /// On `clock`; None without one, or when it cannot read a thread's CPU time.
    fn on(clock: Option<std::sync::Arc<dyn crate::clock::Clock>>, work: &'static str) -> Option<CpuMeter> {
        clock.filter(|c| c.thread_cpu().is_some()).map(|clock| CpuMeter { clock, work })
    }

    /// Runs `f`, recording its thread CPU time as it goes: a long-lived loop
    /// (a consumer, a stream) is read while it runs.
    fn around<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = self.clock.thread_cpu();
        let out = f();
        if let (Some(a), Some(b)) = (before, self.clock.thread_cpu()) {
            let spent = b.saturating_sub(a);
            if !spent.is_zero() {
                counter!(WORK_CPU_NANOS, "work" => self.work).increment(spent.as_nanos() as u64);
            }
        }
        out
    }
}

struct CpuMetered<F: ?Sized> {
    meter: CpuMeter,
    inner: std::pin::Pin<Box<F>>,
}

impl<F: Future + ?Sized> Future for CpuMetered<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let this = &mut *self;
        this.meter.around(|| this.inner.as_mut().poll(cx))
    }
}

impl<S: futures::Stream + ?Sized> futures::Stream for CpuMetered<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        let this = &mut *self;
        this.meter.around(|| this.inner.as_mut().poll_next(cx))
    }
}

/// A gRPC code as the conventional `grpc_code` label spells it (Go's `codes.Code.String()`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Why an order was refused, as the `reason` label of [`ORDERS_REJECTED`].
pub fn reject_reason(status: &Status) -> &'static str {
    match status.code() {
        Code::InvalidArgument | Code::OutOfRange | Code::NotFound => "invalid",
        Code::FailedPrecondition => "funds",
        Code::Unauthenticated | Code::PermissionDenied => "unauthenticated",
        Code::Unavailable | Code::DeadlineExceeded => "unavailable",
        Code::ResourceExhausted => "overload",
        _ => "other",
    }
}

/// Sets the lag gauge of one durable consumer.
pub fn record_consumer_lag(stream: &str, consumer: &str, lag: ConsumerLag) {
    gauge!(CONSUMER_LAG, "stream" => stream.to_string(), "consumer" => consumer.to_string())
        .set((lag.pending + lag.ack_pending) as f64);
}

/// The stream a subject of the deployment belongs to (`"TRADES"` of
/// `"fafnir.trades.ACME"`): a label with few values, and no allocation.
fn stream_of(subject: &str) -> &'static str {
    match subject.split('.').nth(1).unwrap_or_default() {
        "orders" => "ORDERS",
        "trades" => "TRADES",
        "md" => "MD",
        "ledger" => "LEDGER",
        "users" => "USERS",
        _ => "other",
    }
}

/// An [`EventBus`] that times every publish ([`BUS_PUBLISH_SECONDS`]) and
/// passes every call on. [`Deps::new`] wraps the bus it is given in one.
pub struct TimedBus(pub std::sync::Arc<dyn EventBus>);

#[async_trait]
impl EventBus for TimedBus {
    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), BusError> {
        self.0.ensure_stream(spec).await
    }
    async fn ensure_consumer(&self, spec: &ConsumerSpec) -> Result<(), BusError> {
        self.0.ensure_consumer(spec).await
    }
    async fn publish(&self, subject: &str, msg_id: &str, payload: Bytes) -> Result<PubAck, BusError> {
        let started = crate::time::Instant::now();
        let acked = self.0.publish(subject, msg_id, payload).await;
        histogram!(BUS_PUBLISH_SECONDS, "op" => "publish", "stream" => stream_of(subject))
            .record(started.elapsed().as_secs_f64());
        acked
    }
    async fn publish_traced(&self, msg: Publish) -> Result<PubAck, BusError> {
        let stream = stream_of(&msg.subject);
        let started = crate::time::Instant::now();
        let acked = self.0.publish_traced(msg).await;
        histogram!(BUS_PUBLISH_SECONDS, "op" => "publish", "stream" => stream).record(started.elapsed().as_secs_f64());
        acked
    }
    async fn publish_batch(&self, msgs: Vec<Publish>) -> Vec<Result<PubAck, BusError>> {
        let stream = msgs.first().map_or("other", |m| stream_of(&m.subject));
        let started = crate::time::Instant::now();
        let acked = self.0.publish_batch(msgs).await;
        histogram!(BUS_PUBLISH_SECONDS, "op" => "publish_batch", "stream" => stream)
            .record(started.elapsed().as_secs_f64());
        acked
    }
    async fn fetch(&self, stream: &str, durable: &str, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        self.0.fetch(stream, durable, max, wait).await
    }
    async fn ack(&self, token: &AckToken) -> Result<(), BusError> {
        self.0.ack(token).await
    }
    async fn ack_many(&self, tokens: &[AckToken]) -> Result<(), BusError> {
        self.0.ack_many(tokens).await
    }
    async fn nak(&self, token: &AckToken, delay: Duration) -> Result<(), BusError> {
        self.0.nak(token, delay).await
    }
    async fn term(&self, token: &AckToken) -> Result<(), BusError> {
        self.0.term(token).await
    }
    async fn read(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<StoredMsg>, BusError> {
        self.0.read(stream, filter, from_seq, max, wait).await
    }
    async fn last_on_subject(&self, stream: &str, subject: &str) -> Result<Option<StoredMsg>, BusError> {
        self.0.last_on_subject(stream, subject).await
    }
    async fn consumer_lag(&self, stream: &str, durable: &str) -> Result<ConsumerLag, BusError> {
        self.0.consumer_lag(stream, durable).await
    }
    async fn last_seq(&self, stream: &str) -> Result<u64, BusError> {
        self.0.last_seq(stream).await
    }
    async fn tail(&self, stream: &str, filter: &str) -> Result<Box<dyn Tail>, BusError> {
        self.0.tail(stream, filter).await
    }
}

/// A [`Kv`] that times every command ([`REDIS_CALL_SECONDS`], failures in
/// [`REDIS_ERRORS`]). [`Deps::new`] wraps the kv it is given in one.
pub struct TimedKv(pub std::sync::Arc<dyn Kv>);

impl TimedKv {
    async fn timed<T>(&self, op: &'static str, call: impl Future<Output = Result<T, KvError>>) -> Result<T, KvError> {
        let started = crate::time::Instant::now();
        let result = call.await;
        histogram!(REDIS_CALL_SECONDS, "op" => op).record(started.elapsed().as_secs_f64());
        if result.is_err() {
            counter!(REDIS_ERRORS, "op" => op).increment(1);
        }
        result
    }
}

#[async_trait]
impl Kv for TimedKv {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        self.timed("get", self.0.get(key)).await
    }
    async fn set(&self, key: &str, value: Bytes) -> Result<(), KvError> {
        self.timed("set", self.0.set(key, value)).await
    }
    async fn set_nx(&self, key: &str, value: Bytes) -> Result<bool, KvError> {
        self.timed("set_nx", self.0.set_nx(key, value)).await
    }
    async fn del(&self, key: &str) -> Result<bool, KvError> {
        self.timed("del", self.0.del(key)).await
    }
    async fn incr_by(&self, key: &str, by: i64) -> Result<i64, KvError> {
        self.timed("incr_by", self.0.incr_by(key, by)).await
    }
    async fn hset(&self, key: &str, fields: &[(&str, Bytes)]) -> Result<(), KvError> {
        self.timed("hset", self.0.hset(key, fields)).await
    }
    async fn hget(&self, key: &str, field: &str) -> Result<Option<Bytes>, KvError> {
        self.timed("hget", self.0.hget(key, field)).await
    }
    async fn hgetall(&self, key: &str) -> Result<std::collections::BTreeMap<String, Bytes>, KvError> {
        self.timed("hgetall", self.0.hgetall(key)).await
    }
    async fn hincr_by(&self, key: &str, field: &str, by: i64) -> Result<i64, KvError> {
        self.timed("hincr_by", self.0.hincr_by(key, field, by)).await
    }
    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, KvError> {
        self.timed("keys_with_prefix", self.0.keys_with_prefix(prefix)).await
    }
}

/// One order's trace context, carried as a W3C `traceparent`
/// (`00-<32 hex trace id>-<16 hex span id>-01`): in gRPC metadata from the
/// gateway to orders and portfolio, and in the `traceparent` header of its
/// NATS messages (ORDERS, then TRADES) to the engine, the portfolio's
/// settlement and the orders service. Every hop logs its `trace_id` (at
/// debug level; `--log-format json` makes it a field), so one id finds an
/// order's whole life in the logs of every service.
///
/// A client may send its own `traceparent`; otherwise the gateway makes one
/// from the user and order ids, so the simulation's are deterministic.
pub mod trace {
    use tonic::metadata::MetadataValue;
    use tonic::Request;

    /// The metadata key (and NATS header) the context travels in.
    pub const KEY: &str = "traceparent";

    /// The context the gateway gives an order its client sent none for.
    pub fn for_order(user: u64, order: u64) -> String {
        format!("00-{user:016x}{order:016x}-{order:016x}-01")
    }

    /// Whether `text` is a valid `traceparent` (version 00, a non-zero trace id and span id).
    pub fn valid(text: &str) -> bool {
        // 00-<32 hex>-<16 hex>-<2 hex>: 55 bytes, dashes at 2, 35 and 52.
        let b = text.as_bytes();
        let hex = |c: &u8| c.is_ascii_digit() || (b'a'..=b'f').contains(c);
        let nonzero = |r: std::ops::Range<usize>| b[r].iter().any(|c| *c != b'0');
        b.len() == 55
            && b.starts_with(b"00-")
            && (b[35], b[52]) == (b'-', b'-')
            && b.iter().enumerate().all(|(i, c)| matches!(i, 2 | 35 | 52) || hex(c))
            && nonzero(3..35)
            && nonzero(36..52)
    }

    /// The trace id of a valid context.
    pub fn trace_id(context: &str) -> &str {
        context.split('-').nth(1).unwrap_or_default()
    }

    /// The context a hop passes on: the same trace, a span id of its own
    /// (derived from the parent's and the hop's name, so deterministic).
    pub fn child(parent: &str, hop: &str) -> String {
        use std::fmt::Write;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in parent.bytes().chain(hop.bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(trace_id(parent));
        let _ = write!(out, "-{:016x}-01", h.max(1));
        out
    }

    /// The valid context a request carries, if any (an invalid one is ignored, as W3C says).
    pub fn of<T>(request: &Request<T>) -> Option<String> {
        let value = request.metadata().get(KEY)?.to_str().ok()?;
        valid(value).then(|| value.to_string())
    }

    /// Makes `span` part of the trace `context` in what is exported (OTLP,
    /// with the `otlp` feature); nothing otherwise.
    pub fn join(span: &tracing::Span, context: Option<&str>) {
        #[cfg(feature = "otlp")]
        if let Some(context) = context.filter(|c| valid(c)) {
            use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let mut parts = context.split('-').skip(1);
            let (Some(trace), Some(parent)) = (parts.next(), parts.next()) else { return };
            let (Ok(trace), Ok(parent)) = (TraceId::from_hex(trace), SpanId::from_hex(parent)) else { return };
            let remote = SpanContext::new(trace, parent, TraceFlags::SAMPLED, true, TraceState::default());
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        #[cfg(not(feature = "otlp"))]
        let _ = (span, context);
    }

    /// `reply`, carrying `context` back to the caller.
    pub fn attach_reply<T>(mut reply: tonic::Response<T>, context: &str) -> tonic::Response<T> {
        if let Ok(value) = MetadataValue::try_from(context) {
            reply.metadata_mut().insert(KEY, value);
        }
        reply
    }

    /// `request`, carrying `context`.
    pub fn attach<T>(mut request: Request<T>, context: &str) -> Request<T> {
        if let Ok(value) = MetadataValue::try_from(context) {
            request.metadata_mut().insert(KEY, value);
        }
        request
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn contexts_are_valid_and_children_keep_the_trace() {
            let c = for_order(7, 0xabc);
            assert!(valid(&c), "{c}");
            assert_eq!(trace_id(&c), "00000000000000070000000000000abc");
            let child = child(&c, "orders");
            assert!(valid(&child) && trace_id(&child) == trace_id(&c) && child != c);
            for bad in [
                "",
                "00-abc-def-01",
                &c.replace("00-", "01-"),
                &c.to_uppercase(),
                &format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16)),
            ] {
                assert!(!valid(bad), "{bad}");
            }
        }
    }
}
