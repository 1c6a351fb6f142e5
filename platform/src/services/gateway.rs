//! The gateway: the public API. Checks the JWT on every call but Register and
//! Login, applies a per-user token-bucket rate limit, forwards to the services,
//! and streams execution reports and market data from JetStream to clients.
//! A user only ever sees and touches their own orders and account: the user id
//! comes from the verified token, never from the request.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::domain::UserId;
use crate::proto::auth::auth_client::AuthClient;
use crate::proto::common::{Order, PortfolioView, Quote};
use crate::proto::events::{engine_event, ledger_event, EngineEvent, LedgerEvent, MarketData};
use crate::proto::gateway::gateway_server::{Gateway, GatewayServer};
use crate::proto::gateway::*;
use crate::proto::market::market_client::MarketClient;
use crate::proto::orders::orders_client::OrdersClient;
use crate::proto::portfolio::portfolio_client::PortfolioClient;
use crate::proto::{auth, market, orders, portfolio};
use crate::services::{channel, jwt, Deps, Follower, ServiceError, Shutdown, TaskGroup};

type SubscriberMap<T> = BTreeMap<u64, (Filter, mpsc::Sender<Result<T, Status>>)>;
type Subscribers<T> = Arc<Mutex<SubscriberMap<T>>>;

#[derive(Clone)]
enum Filter {
    Account(u64),
    Symbols(Vec<String>),
}

struct Bucket {
    tokens_milli: u64,
    last: Instant,
}

struct State {
    deps: Deps,
    auth: AuthClient<Channel>,
    orders: OrdersClient<Channel>,
    /// Submit and cancel, on the order's path (see [`crate::rpc`]).
    orders_mux: crate::rpc::Mux,
    portfolio: PortfolioClient<Channel>,
    market: MarketClient<Channel>,
    buckets: Mutex<BTreeMap<u64, Bucket>>,
    tokens: jwt::Verifier,
    executions: Subscribers<ExecutionReport>,
    /// The last TRADES sequence fanned out; changed under the executions lock.
    trades_cursor: AtomicU64,
    market_data: Subscribers<MarketDataUpdate>,
    next_sub: Mutex<u64>,
}

/// Runs the gateway until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    crate::services::ensure_streams(&deps).await?;
    let cfg = &deps.cfg;
    let names = cfg.names();
    let t = cfg.call_timeout;
    let state = Arc::new(State {
        auth: AuthClient::new(channel(cfg.addrs.auth, t)),
        orders: OrdersClient::new(channel(cfg.addrs.orders, t)),
        orders_mux: crate::rpc::Mux::new(cfg.addrs.orders, t),
        portfolio: PortfolioClient::new(channel(cfg.addrs.portfolio, t)),
        market: MarketClient::new(channel(cfg.addrs.market, t)),
        buckets: Mutex::new(BTreeMap::new()),
        tokens: jwt::Verifier::new(&cfg.jwt_secret),
        executions: Arc::default(),
        trades_cursor: AtomicU64::new(0),
        market_data: Arc::default(),
        next_sub: Mutex::new(0),
        deps: deps.clone(),
    });
    let follow = |stream: String, filter: String| Follower::open(&deps, stream, filter, shutdown.clone());
    // Fan-out starts at the end of TRADES as it is now: the first cursor clients get.
    let mut start = 0;
    for inst in &cfg.instruments {
        let last = deps.bus.last_on_subject(&names.trades_stream(), &names.trades_of(&inst.symbol)).await?;
        start = start.max(last.map_or(0, |m| m.seq));
    }
    let trades =
        Follower::open_after(&deps, names.trades_stream(), names.trades_all(), start, shutdown.clone()).await?;
    state.trades_cursor.store(start, Ordering::Relaxed);
    let md = follow(names.md_stream(), names.md_all()).await?;
    let settled = follow(names.ledger_stream(), names.ledger("settled")).await?;
    let mut tasks = TaskGroup::default();
    tasks.spawn(fan_out_trades(state.clone(), trades));
    tasks.spawn(fan_out_md(state.clone(), md));
    tasks.spawn(fan_out_settled(state.clone(), settled));
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[], shutdown.clone()));
    let addr = cfg.addrs.gateway;
    tracing::info!(%addr, "gateway serving");
    let service = GatewayServer::new(GatewaySvc { state });
    let server =
        crate::services::grpc_server().add_service(service.clone()).serve_with_shutdown(addr, shutdown.clone());
    tasks.serve_until_failure(addr, crate::rpc::serve_alongside(addr, service, shutdown, server)).await
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

async fn fan_out_trades(state: Arc<State>, mut trades: Follower) {
    while let Some((seq, event)) = trades.next::<EngineEvent>().await {
        let reports = execution_reports(&state, &event, seq);
        let mut subs = state.executions.lock().expect("subscribers lock");
        state.trades_cursor.store(seq, Ordering::Relaxed);
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
            vec![
                (f.maker_account, report(f.maker_order, fill(f.maker_remaining, true))),
                (f.taker_account, report(f.taker_order, fill(f.taker_remaining, false))),
            ]
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
        let tick = state.deps.cfg.instrument(&md.symbol).map_or(1, |i| i.tick_cents);
        let update = MarketDataUpdate {
            symbol: md.symbol.clone(),
            ts_ms: md.ts_ms,
            bid_cents: md.bid_ticks * tick,
            bid_qty: md.bid_qty,
            ask_cents: md.ask_ticks * tick,
            ask_qty: md.ask_qty,
            trades: md
                .trades
                .iter()
                .map(|t| Trade { match_seq: t.match_seq, price_cents: t.price_ticks * tick, qty: t.qty })
                .collect(),
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
        let claims = self
            .state
            .tokens
            .verify(token, self.state.deps.clock.now_ms() / 1000)
            .map_err(|e| Status::unauthenticated(format!("invalid token: {e}")))?;
        self.rate_limit(claims.sub)?;
        Ok(claims.user())
    }

    fn rate_limit(&self, user: u64) -> Result<(), Status> {
        let limit = self.state.deps.cfg.rate_limit;
        let now = Instant::now();
        let mut buckets = self.state.buckets.lock().expect("buckets lock");
        let burst_milli = u64::from(limit.burst) * 1000;
        let b = buckets.entry(user).or_insert(Bucket { tokens_milli: burst_milli, last: now });
        let refill = now.duration_since(b.last).as_millis() as u64 * u64::from(limit.per_second);
        b.tokens_milli = (b.tokens_milli + refill).min(burst_milli);
        b.last = now;
        if b.tokens_milli < 1000 {
            return Err(Status::resource_exhausted(format!("rate limit: {} requests per second", limit.per_second)));
        }
        b.tokens_milli -= 1000;
        Ok(())
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

    /// `user`'s fill and close reports of TRADES after `after` up to `through`.
    async fn missed_reports(&self, user: UserId, after: u64, through: u64) -> Result<Vec<ExecutionReport>, Status> {
        let names = self.state.deps.cfg.names();
        let stream = names.trades_stream();
        let msgs = crate::bus::read_to_end(self.state.deps.bus.as_ref(), &stream, &names.trades_all(), after + 1)
            .await
            .map_err(crate::services::bus_status)?;
        let mut out = Vec::new();
        for m in msgs.iter().take_while(|m| m.seq <= through) {
            let e: EngineEvent =
                crate::services::decode(&stream, m.seq, &m.payload).map_err(|e| Status::internal(e.to_string()))?;
            out.extend(
                execution_reports(&self.state, &e, m.seq).into_iter().filter(|(a, _)| *a == user.0).map(|(_, r)| r),
            );
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Gateway for GatewaySvc {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        self.state.deps.work("gateway.register").await;
        let r = req.into_inner();
        let reply = self
            .state
            .auth
            .clone()
            .register(auth::RegisterRequest { username: r.username, password: r.password, role: r.role })
            .await?
            .into_inner();
        Ok(Response::new(RegisterReply { user_id: reply.user_id }))
    }

    async fn login(&self, req: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        self.state.deps.work("gateway.login").await;
        let r = req.into_inner();
        let reply = self
            .state
            .auth
            .clone()
            .login(auth::LoginRequest { username: r.username, password: r.password })
            .await?
            .into_inner();
        Ok(Response::new(LoginReply { token: reply.token, user_id: reply.user_id }))
    }

    async fn deposit(&self, req: Request<DepositRequest>) -> Result<Response<PortfolioView>, Status> {
        self.state.deps.work("gateway.deposit").await;
        let user = self.caller(&req)?;
        let r = req.into_inner();
        let call = portfolio::DepositRequest {
            account_id: user.0,
            cents: r.cents,
            request_id: r.request_id,
            symbol: r.symbol,
            qty: r.qty,
        };
        self.state.portfolio.clone().deposit(call).await
    }

    async fn submit_order(&self, req: Request<SubmitOrderRequest>) -> Result<Response<Order>, Status> {
        self.state.deps.work("gateway.submit_order").await;
        let user = self.caller(&req)?;
        let r = req.into_inner();
        let call = orders::SubmitRequest {
            user_id: user.0,
            client_order_id: r.client_order_id,
            symbol: r.symbol,
            side: r.side,
            order_type: r.order_type,
            price_cents: r.price_cents,
            qty: r.qty,
        };
        crate::unary!(self.state.orders_mux, self.state.orders, submit, "/fafnir.orders.Orders/Submit", call)
    }

    async fn cancel_order(&self, req: Request<CancelOrderRequest>) -> Result<Response<Order>, Status> {
        self.state.deps.work("gateway.cancel_order").await;
        let user = self.caller(&req)?;
        let order_id = req.into_inner().order_id;
        let call = orders::CancelRequest { user_id: user.0, order_id };
        crate::unary!(self.state.orders_mux, self.state.orders, cancel, "/fafnir.orders.Orders/Cancel", call)
    }

    async fn get_order(&self, req: Request<GetOrderRequest>) -> Result<Response<Order>, Status> {
        self.state.deps.work("gateway.get_order").await;
        let user = self.caller(&req)?;
        let order_id = req.into_inner().order_id;
        self.state.orders.clone().get(orders::GetRequest { user_id: user.0, order_id }).await
    }

    async fn list_orders(&self, req: Request<ListOrdersRequest>) -> Result<Response<ListOrdersReply>, Status> {
        self.state.deps.work("gateway.list_orders").await;
        let user = self.caller(&req)?;
        let reply = self.state.orders.clone().list(orders::ListRequest { user_id: user.0 }).await?.into_inner();
        Ok(Response::new(ListOrdersReply { orders: reply.orders }))
    }

    async fn get_portfolio(&self, req: Request<GetPortfolioRequest>) -> Result<Response<PortfolioView>, Status> {
        self.state.deps.work("gateway.get_portfolio").await;
        let user = self.caller(&req)?;
        self.state.portfolio.clone().get_portfolio(portfolio::GetPortfolioRequest { account_id: user.0 }).await
    }

    async fn list_instruments(
        &self,
        req: Request<ListInstrumentsRequest>,
    ) -> Result<Response<ListInstrumentsReply>, Status> {
        self.state.deps.work("gateway.list_instruments").await;
        self.caller(&req)?;
        let reply = self.state.market.clone().list_instruments(market::ListInstrumentsRequest {}).await?.into_inner();
        Ok(Response::new(ListInstrumentsReply { instruments: reply.instruments }))
    }

    async fn get_quote(&self, req: Request<GetQuoteRequest>) -> Result<Response<Quote>, Status> {
        self.state.deps.work("gateway.get_quote").await;
        self.caller(&req)?;
        let symbol = req.into_inner().symbol;
        self.state.market.clone().get_quote(market::GetQuoteRequest { symbol }).await
    }

    async fn get_candles(&self, req: Request<GetCandlesRequest>) -> Result<Response<GetCandlesReply>, Status> {
        self.state.deps.work("gateway.get_candles").await;
        self.caller(&req)?;
        let r = req.into_inner();
        let reply = self
            .state
            .market
            .clone()
            .get_candles(market::GetCandlesRequest { symbol: r.symbol, limit: r.limit })
            .await?
            .into_inner();
        Ok(Response::new(GetCandlesReply { candles: reply.candles }))
    }

    type StreamExecutionsStream = BoxStream<ExecutionReport>;

    async fn stream_executions(
        &self,
        req: Request<StreamExecutionsRequest>,
    ) -> Result<Response<Self::StreamExecutionsStream>, Status> {
        self.state.deps.work("gateway.stream_executions").await;
        let user = self.caller(&req)?;
        let after = req.into_inner().after_cursor;
        // Subscribed and the cursor read together: live reports are exactly those after it.
        let (rx, cursor) = {
            let mut subs = self.state.executions.lock().expect("subscribers lock");
            let (tx, rx) = mpsc::channel(4096);
            subs.insert(self.next_subscriber(), (Filter::Account(user.0), tx));
            (rx, self.state.trades_cursor.load(Ordering::Relaxed))
        };
        let opening = ExecutionReport { cursor: after.max(cursor), ..ExecutionReport::default() };
        let mut first = vec![Ok(opening)];
        if after != 0 && after < cursor {
            first.extend(self.missed_reports(user, after, cursor).await?.into_iter().map(Ok));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(first).chain(receiver_stream(rx)))))
    }

    type StreamMarketDataStream = BoxStream<MarketDataUpdate>;

    async fn stream_market_data(
        &self,
        req: Request<StreamMarketDataRequest>,
    ) -> Result<Response<Self::StreamMarketDataStream>, Status> {
        self.state.deps.work("gateway.stream_market_data").await;
        self.caller(&req)?;
        let symbols = req.into_inner().symbols;
        for s in &symbols {
            if self.state.deps.cfg.instrument(s).is_none() {
                return Err(Status::invalid_argument(format!("symbols: unknown symbol {}", crate::services::shown(s))));
            }
        }
        let rx = self.subscribe(&self.state.market_data, Filter::Symbols(symbols));
        Ok(Response::new(receiver_stream(rx)))
    }
}
