//! The gateway: the public API. Checks the JWT on every call but Register and
//! Login, applies a per-user token-bucket rate limit (per peer address on
//! Register and Login), bounds what a request may carry, forwards to the
//! services, and streams execution reports and market data from JetStream to
//! clients. A user only ever sees and touches their own orders and account:
//! the user id comes from the verified token, never from the request.
//!
//! Every limit on client input is a constant here (or in [`auth`] and
//! [`jwt`]), checked before the input is used, and listed in the README's
//! "Limits and bad input" with what a client gets back.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::time::Instant;
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::domain::{order_id_for, OrderId, UserId};
use crate::proto::auth::auth_client::AuthClient;
use crate::proto::common::{Order, PortfolioView, Quote};
use crate::proto::events::{engine_event, ledger_event, EngineEvent, LedgerEvent, MarketData};
use crate::proto::gateway::gateway_server::{Gateway, GatewayServer};
use crate::proto::gateway::*;
use crate::proto::market::market_client::MarketClient;
use crate::proto::orders::orders_client::OrdersClient;
use crate::proto::portfolio::portfolio_client::PortfolioClient;
use crate::proto::{auth, market, orders, portfolio};
use crate::services::front::Front;
use crate::services::{
    auth as auth_svc, channel_to, jwt, shown, Deps, Follower, ServiceError, ServiceKind, Shutdown, TaskGroup,
};
use crate::telemetry::{self, grpc_call, trace, Rpc};

/// The gRPC service this module serves, as its metrics name it.
const GRPC_SERVICE: &str = crate::services::ServiceKind::Gateway.grpc_name();

mod buckets;
mod window;

use buckets::Buckets;
use window::ExecutionWindow;

/// All of a request's metadata (header names and values) the gateway accepts.
pub const METADATA_BYTES_MAX: usize = 16 * 1024;
/// An instrument symbol is 1 to 12 of A-Z and 0-9 (`Instrument::validate`).
pub const SYMBOL_BYTES_MAX: usize = 12;
/// A client order id, and a deposit's request id, at most.
pub const CLIENT_ID_BYTES_MAX: usize = 64;
/// Peer addresses whose Register/Login rate the gateway remembers at once.
pub const PEER_BUCKETS_MAX: usize = 10_000;
/// Users whose call rate the gateway remembers at once.
pub const USER_BUCKETS_MAX: usize = 100_000;

/// Refuses `text`, a client's `field`, when it is longer than `max` bytes.
fn bounded(field: &str, text: &str, max: usize) -> Result<(), Status> {
    if text.len() > max {
        return Err(Status::invalid_argument(format!("{field}: at most {max} bytes (got {})", text.len())));
    }
    Ok(())
}

/// Refuses a request whose metadata is larger than [`METADATA_BYTES_MAX`].
fn check_metadata<T>(req: &Request<T>) -> Result<(), Status> {
    use tonic::metadata::KeyAndValueRef;
    let bytes: usize = req
        .metadata()
        .iter()
        .map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => k.as_str().len() + v.as_encoded_bytes().len(),
            KeyAndValueRef::Binary(k, v) => k.as_str().len() + v.as_encoded_bytes().len(),
        })
        .sum();
    if bytes > METADATA_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "request metadata: at most {METADATA_BYTES_MAX} bytes (got {bytes})"
        )));
    }
    Ok(())
}

type SubscriberMap<T> = BTreeMap<u64, (Filter, mpsc::Sender<Result<T, Status>>)>;
type Subscribers<T> = Arc<Mutex<SubscriberMap<T>>>;

#[derive(Clone)]
enum Filter {
    Account(u64),
    Symbols(Vec<String>),
}

struct State {
    deps: Deps,
    auth: AuthClient<Channel>,
    orders: OrdersClient<Channel>,
    /// Submit and cancel, on the order's path (see [`crate::rpc`]).
    orders_mux: crate::rpc::Mux,
    portfolio: PortfolioClient<Channel>,
    market: MarketClient<Channel>,
    /// Per user, on every authenticated call.
    buckets: Mutex<Buckets<u64>>,
    /// Per peer address, on Register and Login.
    peers: Mutex<Buckets<IpAddr>>,
    tokens: jwt::Verifier,
    executions: Subscribers<ExecutionReport>,
    /// Recent execution reports for resumed streams, and the last TRADES
    /// sequence fanned out; changed only under the executions lock (taken first).
    window: Mutex<ExecutionWindow>,
    market_data: Subscribers<MarketDataUpdate>,
    next_sub: Mutex<u64>,
    /// One permit per order taken and not yet answered (see
    /// [`crate::config::PlatformConfig::max_orders_in_flight`]).
    orders_in_flight: Arc<tokio::sync::Semaphore>,
}

/// Runs the gateway until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    let addr = deps.cfg.addrs.gateway;
    let mut front = Front::listen(ServiceKind::Gateway, addr, shutdown.clone()).await;
    let Some((state, tasks)) = front.rebuilding(start(&deps, &shutdown)).await? else { return Ok(()) };
    tracing::info!(%addr, "gateway serving");
    let service =
        GatewayServer::new(GatewaySvc { state }).max_decoding_message_size(crate::services::MESSAGE_BYTES_MAX);
    front.serve(service, tasks).await
}

/// The execution window read back, and the tasks that fan the streams out to clients from here.
async fn start(deps: &Deps, shutdown: &Shutdown) -> Result<(Arc<State>, TaskGroup), ServiceError> {
    crate::services::ensure_streams(deps).await?;
    let cfg = &deps.cfg;
    let names = cfg.names();
    let t = cfg.call_timeout;
    let state = Arc::new(State {
        auth: AuthClient::new(channel_to(cfg.dial("auth"), t)),
        orders: OrdersClient::new(channel_to(cfg.dial("orders"), t)),
        orders_mux: crate::rpc::Mux::new(cfg.addrs.orders, t),
        portfolio: PortfolioClient::new(channel_to(cfg.dial("portfolio"), t)),
        market: MarketClient::new(channel_to(cfg.dial("market"), t)),
        buckets: Mutex::new(Buckets::new(cfg.rate_limit, USER_BUCKETS_MAX)),
        peers: Mutex::new(Buckets::new(cfg.peer_rate_limit, PEER_BUCKETS_MAX)),
        tokens: jwt::Verifier::new(&cfg.jwt_secret),
        executions: Arc::default(),
        window: Mutex::new(ExecutionWindow::new(0, cfg.execution_window)),
        market_data: Arc::default(),
        next_sub: Mutex::new(0),
        orders_in_flight: Arc::new(tokio::sync::Semaphore::new(cfg.max_orders_in_flight)),
        deps: deps.clone(),
    });
    let follow = |stream: String, filter: String| Follower::open(deps, stream, filter, shutdown.clone());
    // Fan-out starts at the end of TRADES as it is now: the first cursor clients get.
    let mut start = 0;
    for inst in &cfg.instruments {
        let last = deps.bus.last_on_subject(&names.trades_stream(), &names.trades_of(&inst.symbol)).await?;
        start = start.max(last.map_or(0, |m| m.seq));
    }
    // Resumes must find what was reported before this gateway started (a
    // client reconnecting after a restart): read the window back first.
    let window = load_window(&state, start).await?;
    tracing::info!(floor = window.floor(), cursor = window.cursor(), "execution window read back");
    *state.window.lock().expect("window lock") = window;
    let trades = Follower::open_after(deps, names.trades_stream(), names.trades_all(), start, shutdown.clone()).await?;
    let md = follow(names.md_stream(), names.md_all()).await?;
    let settled = follow(names.ledger_stream(), names.ledger("settled")).await?;
    let mut tasks = TaskGroup::default();
    tasks.spawn(fan_out_trades(state.clone(), trades));
    tasks.spawn(fan_out_md(state.clone(), md));
    tasks.spawn(fan_out_settled(state.clone(), settled));
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[], shutdown.clone()));
    Ok((state, tasks))
}

fn send_to<T: Clone>(subs: &Subscribers<T>, wants: impl Fn(&Filter) -> bool, item: T) {
    send_locked(&mut subs.lock().expect("subscribers lock"), wants, item);
}

fn send_locked<T: Clone>(subs: &mut SubscriberMap<T>, wants: impl Fn(&Filter) -> bool, item: T) {
    subs.retain(|_, (filter, tx)| {
        if !wants(filter) {
            return !tx.is_closed();
        }
        // A client that does not keep up loses its stream rather than stalling everyone.
        tx.try_send(Ok(item.clone())).is_ok()
    });
}

/// The execution window as of TRADES sequence `through`: the reports of the
/// last `execution_window` messages up to it (fewer when the stream is shorter).
async fn load_window(state: &State, through: u64) -> Result<ExecutionWindow, ServiceError> {
    const BATCH: usize = 1024;
    let max = state.deps.cfg.execution_window;
    let names = state.deps.cfg.names();
    let (stream, filter) = (names.trades_stream(), names.trades_all());
    let mut window = ExecutionWindow::new(through.saturating_sub(max as u64), max);
    let mut next = window.floor() + 1;
    while next <= through {
        let batch = state.deps.bus.read(&stream, &filter, next, BATCH, std::time::Duration::ZERO).await?;
        for m in batch.iter().take_while(|m| m.seq <= through) {
            match crate::services::decode::<EngineEvent>(&stream, m.seq, &m.payload) {
                Ok(e) => window.record(m.seq, &execution_reports(state, &e, m.seq)),
                Err(e) => tracing::error!(error = %e, "undecodable message skipped"),
            }
        }
        match batch.last() {
            Some(last) if batch.len() == BATCH => next = last.seq + 1,
            _ => break,
        }
    }
    Ok(window)
}

async fn fan_out_trades(state: Arc<State>, mut trades: Follower) {
    while let Some((seq, event)) = trades.next::<EngineEvent>().await {
        let reports = execution_reports(&state, &event, seq);
        let mut subs = state.executions.lock().expect("subscribers lock");
        state.window.lock().expect("window lock").record(seq, &reports);
        for (account, report) in reports {
            send_locked(&mut subs, |f| matches!(f, Filter::Account(a) if *a == account), report);
        }
    }
}

/// The execution reports an engine event means, with the account each is for.
fn execution_reports(state: &State, e: &EngineEvent, cursor: u64) -> Vec<(u64, ExecutionReport)> {
    let tick = state.deps.cfg.instrument(&e.symbol).map_or(1, |i| i.tick_cents);
    let report = |order_id: u64, kind| ExecutionReport {
        order_id,
        symbol: e.symbol.clone(),
        kind: Some(kind),
        ts_ms: e.ts_ms,
        cursor,
    };
    match &e.kind {
        Some(engine_event::Kind::Fill(f)) => {
            let fill = |remaining, maker| {
                execution_report::Kind::Fill(Fill {
                    match_seq: f.match_seq,
                    price_cents: f.price_ticks * tick,
                    qty: f.qty,
                    remaining,
                    maker,
                })
            };
            let reports = vec![
                (f.maker_account, report(f.maker_order, fill(f.maker_remaining, true))),
                (f.taker_account, report(f.taker_order, fill(f.taker_remaining, false))),
            ];
            if !state.deps.cfg.planted(crate::config::PlantedBug::ReportsToCounterparty) {
                return reports;
            }
            // Planted bug: each report is addressed to every account the fill names.
            let parties: std::collections::BTreeSet<u64> = [f.maker_account, f.taker_account].into();
            reports.into_iter().flat_map(|(_, r)| parties.iter().map(move |a| (*a, r.clone()))).collect()
        }
        Some(engine_event::Kind::Closed(c)) => {
            let reason = format!("{:?}", crate::services::close_reason_from_proto(c.reason)).to_lowercase();
            vec![(
                c.account,
                report(c.order_id, execution_report::Kind::Closed(Closed { remaining: c.remaining, reason })),
            )]
        }
        _ => Vec::new(),
    }
}

async fn fan_out_settled(state: Arc<State>, mut settled: Follower) {
    while let Some((_, event)) = settled.next::<LedgerEvent>().await {
        let Some(ledger_event::Kind::Settled(s)) = event.kind else { continue };
        let report = |order_id| ExecutionReport {
            order_id,
            symbol: s.symbol.clone(),
            kind: Some(execution_report::Kind::Settled(Settled { match_seq: s.match_seq })),
            ts_ms: 0,
            cursor: 0,
        };
        for (account, order) in [(s.buyer, s.buy_order), (s.seller, s.sell_order)] {
            send_to(&state.executions, |f| matches!(f, Filter::Account(a) if *a == account), report(order));
        }
    }
}

async fn fan_out_md(state: Arc<State>, mut updates: Follower) {
    while let Some((_, md)) = updates.next::<MarketData>().await {
        let age_us = state.deps.clock.now_us().saturating_sub(md.ts_us).max(0);
        metrics::histogram!(crate::telemetry::MARKET_DATA_AGE_SECONDS).record(age_us as f64 / 1e6);
        let tick = state.deps.cfg.instrument(&md.symbol).map_or(1, |i| i.tick_cents);
        let update = MarketDataUpdate {
            symbol: md.symbol.clone(),
            ts_ms: md.ts_ms,
            ts_us: md.ts_us,
            bid_cents: md.bid_ticks * tick,
            bid_qty: md.bid_qty,
            ask_cents: md.ask_ticks * tick,
            ask_qty: md.ask_qty,
            trades: md
                .trades
                .iter()
                .map(|t| Trade { match_seq: t.match_seq, price_cents: t.price_ticks * tick, qty: t.qty })
                .collect(),
            input_seq: md.input_seq,
        };
        let symbol = md.symbol;
        send_to(&state.market_data, |f| matches!(f, Filter::Symbols(s) if s.is_empty() || s.contains(&symbol)), update);
    }
}

struct GatewaySvc {
    state: Arc<State>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn receiver_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> BoxStream<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// The work of sending one batch of market data to one subscriber.
pub const MARKET_DATA_WORK: &str = "gateway.market_data";

/// A subscriber's market data. Each wake of its stream takes every update
/// queued for it by then and is one unit of [`MARKET_DATA_WORK`] (the
/// fan-out's work per subscriber, which only a calibration prices): a busy
/// subscriber's updates go out in batches, as the real connection writes
/// them, so their cost per update falls with the load. Its CPU is metered
/// when the deployment measures it.
fn market_data_stream(deps: Deps, rx: mpsc::Receiver<Result<MarketDataUpdate, Status>>) -> BoxStream<MarketDataUpdate> {
    let batches = futures::stream::unfold((rx, deps.clone()), |(mut rx, deps)| async move {
        let mut batch = vec![rx.recv().await?];
        while let Ok(update) = rx.try_recv() {
            batch.push(update);
        }
        deps.measured_work(MARKET_DATA_WORK).await;
        Some((futures::stream::iter(batch), (rx, deps)))
    });
    telemetry::cpu_metered_stream(&deps, MARKET_DATA_WORK, batches.flatten())
}

impl GatewaySvc {
    /// The verified caller, after the rate limit.
    fn caller<T>(&self, req: &Request<T>) -> Result<UserId, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing authorization header (Bearer <token> from Login)"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization header must be 'Bearer <token>'"))?;
        if token.len() > jwt::TOKEN_BYTES_MAX {
            return Err(Status::unauthenticated(format!("invalid token: {}", jwt::JwtError::TooLong)));
        }
        check_metadata(req)?;
        let claims = self
            .state
            .tokens
            .verify(token, self.state.deps.clock.now_ms() / 1000)
            .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?;
        self.rate_limit(claims.sub)?;
        Ok(claims.user())
    }

    fn rate_limit(&self, user: u64) -> Result<(), Status> {
        if self.state.buckets.lock().expect("buckets lock").take(user, Instant::now()) {
            return Ok(());
        }
        metrics::counter!(telemetry::GATEWAY_REFUSALS, "reason" => "rate_limit").increment(1);
        let limit = self.state.deps.cfg.rate_limit;
        Err(Status::resource_exhausted(format!("rate limit: {} requests per second", limit.per_second)))
    }

    /// What Register and Login check before anything else: the caller's
    /// address has not called them too often, and the request's metadata,
    /// username and password are not larger than any valid one.
    fn anonymous<T>(&self, req: &Request<T>, username: &str, password: &str) -> Result<(), Status> {
        // Without an address (never over TCP) every such caller shares one bucket.
        let peer = req.remote_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        if !self.state.peers.lock().expect("peers lock").take(peer, Instant::now()) {
            metrics::counter!(telemetry::GATEWAY_REFUSALS, "reason" => "rate_limit").increment(1);
            let limit = self.state.deps.cfg.peer_rate_limit;
            return Err(Status::resource_exhausted(format!(
                "rate limit: {} Register or Login calls per second from one address",
                limit.per_second
            )));
        }
        check_metadata(req)?;
        auth_svc::check_lengths(username, password)
    }

    fn next_subscriber(&self) -> u64 {
        let mut next = self.state.next_sub.lock().expect("sub lock");
        *next += 1;
        *next
    }

    fn subscribe<T>(&self, subs: &Subscribers<T>, filter: Filter) -> mpsc::Receiver<Result<T, Status>> {
        let (tx, rx) = mpsc::channel(4096);
        let id = self.next_subscriber();
        subs.lock().expect("subscribers lock").insert(id, (filter, tx));
        rx
    }
}

/// One order taken by the gateway and not yet answered: counted in
/// [`telemetry::GATEWAY_ORDERS_IN_FLIGHT`] while it is held.
struct InFlight(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl InFlight {
    fn new(permit: tokio::sync::OwnedSemaphorePermit) -> InFlight {
        metrics::gauge!(telemetry::GATEWAY_ORDERS_IN_FLIGHT).increment(1.0);
        InFlight(permit)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::GATEWAY_ORDERS_IN_FLIGHT).decrement(1.0);
    }
}

#[tonic::async_trait]
impl Gateway for GatewaySvc {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Register", "gateway.register");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            self.anonymous(&req, &req.get_ref().username, &req.get_ref().password)?;
            let r = req.into_inner();
            let reply = self
                .state
                .auth
                .clone()
                .register(auth::RegisterRequest { username: r.username, password: r.password, role: r.role })
                .await?
                .into_inner();
            Ok(Response::new(RegisterReply { user_id: reply.user_id }))
        })
        .await
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Login", "gateway.login");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            self.anonymous(&req, &req.get_ref().username, &req.get_ref().password)?;
            let r = req.into_inner();
            let reply = self
                .state
                .auth
                .clone()
                .login(auth::LoginRequest { username: r.username, password: r.password })
                .await?
                .into_inner();
            Ok(Response::new(LoginReply { token: reply.token, user_id: reply.user_id }))
        })
        .await
    }

    async fn deposit(&self, req: Request<DepositRequest>) -> Result<Response<PortfolioView>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Deposit", "gateway.deposit");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let user = self.caller(&req)?;
            let r = req.into_inner();
            bounded("request_id", &r.request_id, CLIENT_ID_BYTES_MAX)?;
            bounded("symbol", &r.symbol, SYMBOL_BYTES_MAX)?;
            let call = portfolio::DepositRequest {
                account_id: user.0,
                cents: r.cents,
                request_id: r.request_id,
                symbol: r.symbol,
                qty: r.qty,
            };
            self.state.portfolio.clone().deposit(call).await
        })
        .await
    }

    async fn submit_order(&self, req: Request<SubmitOrderRequest>) -> Result<Response<Order>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "SubmitOrder", "gateway.submit_order");
        // Read once: the call's span and the order's context are the same trace.
        let client_trace = trace::of(&req);
        let answered = grpc_call(&self.state.deps, rpc, client_trace.clone(), async move {
            let user = self.caller(&req)?;
            let r = req.into_inner();
            bounded("client_order_id", &r.client_order_id, CLIENT_ID_BYTES_MAX)?;
            bounded("symbol", &r.symbol, SYMBOL_BYTES_MAX)?;
            let order_id = order_id_for(user, &r.client_order_id);
            let context = client_trace.unwrap_or_else(|| trace::for_order(user.0, order_id.0));
            // Held until the order is answered; none left: the platform is
            // answering as many orders as it may, and this one is not taken.
            let _taken = self.state.orders_in_flight.clone().try_acquire_owned().map(InFlight::new).map_err(|_| {
                metrics::counter!(telemetry::GATEWAY_REFUSALS, "reason" => "overload").increment(1);
                Status::resource_exhausted(format!(
                    "overloaded: {} orders in flight at the gateway; this order was not taken (send it again later)",
                    self.state.deps.cfg.max_orders_in_flight
                ))
            })?;
            let call = orders::SubmitRequest {
                user_id: user.0,
                client_order_id: r.client_order_id,
                symbol: r.symbol,
                side: r.side,
                order_type: r.order_type,
                price_cents: r.price_cents,
                qty: r.qty,
            };
            tracing::debug!(trace_id = trace::trace_id(&context), order = %order_id, "gateway: order taken");
            let call = trace::attach(Request::new(call), &trace::child(&context, "gateway"));
            let submitted = async {
                crate::unary!(self.state.orders_mux, self.state.orders, submit, "/fafnir.orders.Orders/Submit", call)
            };
            let answered =
                tracing::Instrument::instrument(submitted, telemetry::hop("gateway.submit", Some(&context))).await;
            // The client learns the order's trace (its own, or the one made for it).
            answered.map(|reply| trace::attach_reply(reply, &context))
        })
        .await;
        if let Err(refused) = &answered {
            metrics::counter!(telemetry::ORDERS_REJECTED, "reason" => telemetry::reject_reason(refused)).increment(1);
        }
        answered
    }

    async fn cancel_order(&self, req: Request<CancelOrderRequest>) -> Result<Response<Order>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "CancelOrder", "gateway.cancel_order");
        // Read once: the call's span and the order's context are the same trace.
        let client_trace = trace::of(&req);
        let answered = grpc_call(&self.state.deps, rpc, client_trace.clone(), async move {
            let user = self.caller(&req)?;
            let order_id = req.into_inner().order_id;
            let context = client_trace.unwrap_or_else(|| trace::for_order(user.0, order_id));
            tracing::debug!(trace_id = trace::trace_id(&context), order = %OrderId(order_id), "gateway: cancel taken");
            let call = orders::CancelRequest { user_id: user.0, order_id };
            let call = trace::attach(Request::new(call), &trace::child(&context, "gateway"));
            crate::unary!(self.state.orders_mux, self.state.orders, cancel, "/fafnir.orders.Orders/Cancel", call)
        })
        .await;
        let outcome = if answered.is_ok() { "accepted" } else { "refused" };
        metrics::counter!(telemetry::CANCELS, "outcome" => outcome).increment(1);
        answered
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetOrder", "gateway.get_order");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let user = self.caller(&req)?;
            let order_id = req.into_inner().order_id;
            self.state.orders.clone().get(orders::GetRequest { user_id: user.0, order_id }).await
        })
        .await
    }

    async fn list_orders(&self, req: Request<ListOrdersRequest>) -> Result<Response<ListOrdersReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "ListOrders", "gateway.list_orders");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let user = self.caller(&req)?;
            let reply = self.state.orders.clone().list(orders::ListRequest { user_id: user.0 }).await?.into_inner();
            Ok(Response::new(ListOrdersReply { orders: reply.orders }))
        })
        .await
    }

    async fn get_portfolio(&self, req: Request<GetPortfolioRequest>) -> Result<Response<PortfolioView>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetPortfolio", "gateway.get_portfolio");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let user = self.caller(&req)?;
            self.state.portfolio.clone().get_portfolio(portfolio::GetPortfolioRequest { account_id: user.0 }).await
        })
        .await
    }

    async fn list_instruments(
        &self,
        req: Request<ListInstrumentsRequest>,
    ) -> Result<Response<ListInstrumentsReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "ListInstruments", "gateway.list_instruments");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            self.caller(&req)?;
            let reply =
                self.state.market.clone().list_instruments(market::ListInstrumentsRequest {}).await?.into_inner();
            Ok(Response::new(ListInstrumentsReply { instruments: reply.instruments }))
        })
        .await
    }

    async fn get_quote(&self, req: Request<GetQuoteRequest>) -> Result<Response<Quote>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetQuote", "gateway.get_quote");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            self.caller(&req)?;
            let symbol = req.into_inner().symbol;
            bounded("symbol", &symbol, SYMBOL_BYTES_MAX)?;
            self.state.market.clone().get_quote(market::GetQuoteRequest { symbol }).await
        })
        .await
    }

    async fn get_candles(&self, req: Request<GetCandlesRequest>) -> Result<Response<GetCandlesReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "GetCandles", "gateway.get_candles");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            self.caller(&req)?;
            let r = req.into_inner();
            bounded("symbol", &r.symbol, SYMBOL_BYTES_MAX)?;
            let reply = self
                .state
                .market
                .clone()
                .get_candles(market::GetCandlesRequest { symbol: r.symbol, limit: r.limit })
                .await?
                .into_inner();
            Ok(Response::new(GetCandlesReply { candles: reply.candles }))
        })
        .await
    }

    type StreamExecutionsStream = BoxStream<ExecutionReport>;

    async fn stream_executions(
        &self,
        req: Request<StreamExecutionsRequest>,
    ) -> Result<Response<Self::StreamExecutionsStream>, Status> {
        let rpc = Rpc::server_stream(GRPC_SERVICE, "StreamExecutions", "gateway.stream_executions");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let user = self.caller(&req)?;
            let after = req.into_inner().after_cursor;
            // Subscribed, the cursor read and the missed reports taken together:
            // live reports are exactly those after the cursor.
            let (rx, cursor, missed) = {
                let mut subs = self.state.executions.lock().expect("subscribers lock");
                let window = self.state.window.lock().expect("window lock");
                let cursor = window.cursor();
                let missed = match after {
                    Some(after) if after < cursor => window.after(user.0, after)?,
                    _ => Vec::new(),
                };
                let (tx, rx) = mpsc::channel(4096);
                subs.insert(self.next_subscriber(), (Filter::Account(user.0), tx));
                (rx, cursor, missed)
            };
            let opening = ExecutionReport { cursor: after.unwrap_or(0).max(cursor), ..ExecutionReport::default() };
            let first = std::iter::once(opening).chain(missed).map(Ok).collect::<Vec<_>>();
            let stream: Self::StreamExecutionsStream =
                Box::pin(futures::stream::iter(first).chain(receiver_stream(rx)));
            Ok(Response::new(stream))
        })
        .await
    }

    type StreamMarketDataStream = BoxStream<MarketDataUpdate>;

    async fn stream_market_data(
        &self,
        req: Request<StreamMarketDataRequest>,
    ) -> Result<Response<Self::StreamMarketDataStream>, Status> {
        let rpc = Rpc::server_stream(GRPC_SERVICE, "StreamMarketData", "gateway.stream_market_data");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            self.caller(&req)?;
            let symbols = req.into_inner().symbols;
            // Every symbol once at most (a repeat changes nothing): as many as there are instruments.
            let most = self.state.deps.cfg.instruments.len();
            if symbols.len() > most {
                return Err(Status::invalid_argument(format!("symbols: at most {most} (got {})", symbols.len())));
            }
            for s in &symbols {
                if self.state.deps.cfg.instrument(s).is_none() {
                    return Err(Status::invalid_argument(format!("symbols: unknown symbol {}", shown(s))));
                }
            }
            let rx = self.subscribe(&self.state.market_data, Filter::Symbols(symbols));
            Ok(Response::new(market_data_stream(self.state.deps.clone(), rx)))
        })
        .await
    }
}
