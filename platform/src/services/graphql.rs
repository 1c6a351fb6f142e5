//! The GraphQL API: queries, mutations and live subscriptions for people and
//! web clients, on async-graphql. It is a client of the gateway's public
//! gRPC API and of nothing else: every field is one gateway call made with
//! the caller's bearer token, so the gateway checks the token, the rate
//! limits and the input as it does for any client, and a GraphQL user can do
//! exactly what a gRPC user can.
//!
//! Money, prices and quantities are the scalar `Int64` (cents and shares, a
//! JSON string of decimal digits: a JSON number loses integers above 2^53),
//! never Float; ids are `ID`. A gRPC status becomes a GraphQL error with the
//! gateway's message and the status code's name in `extensions.code`
//! (`INVALID_ARGUMENT`, `UNAUTHENTICATED`, ...); input that never reaches the
//! gateway is `BAD_USER_INPUT`.
//!
//! The schema is transport-free ([`schema`]): for real it is served over
//! HTTP and WebSocket (graphql-transport-ws) by [`serve`]; in simulation a
//! node of the world executes it directly against the simulated gateway.

use async_graphql::{
    ComplexObject, Context, Enum, Error, ErrorExtensions, InputObject, InputValueError, InputValueResult, Object,
    Scalar, ScalarType, Schema, SimpleObject, Subscription, Value, ID,
};
use futures::{Stream, StreamExt};
use tonic::transport::Channel;

use crate::proto::common;
use crate::proto::gateway::gateway_client::GatewayClient;
use crate::proto::gateway::{self as gw, execution_report};

/// The schema served: [`Query`], [`Mutation`], [`Subscription`].
pub type FafnirSchema = Schema<Query, Mutation, SubscriptionRoot>;

/// How much one request may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Nesting of selections, at most.
    pub max_depth: usize,
    /// Fields a request may select, each list field counted as many times as
    /// it may return items (aliases of one field count once each).
    pub max_complexity: usize,
    /// Bytes of one HTTP request body, at most.
    pub max_body_bytes: usize,
    /// `candles(limit)`: at most this many.
    pub max_candles: i32,
}

impl Limits {
    pub const DEFAULT: Limits =
        Limits { max_depth: 8, max_complexity: 2_000, max_body_bytes: 64 * 1024, max_candles: 500 };
}

/// The bearer token of a request (the `Authorization` header, or the
/// WebSocket's connection_init payload); none for an anonymous one.
#[derive(Clone, Debug, Default)]
pub struct Token(pub Option<String>);

/// The schema, calling the gateway through `gateway`.
pub fn schema(gateway: GatewayClient<Channel>, limits: Limits) -> FafnirSchema {
    builder(limits).data(Gateway(gateway)).finish()
}

fn builder(limits: Limits) -> async_graphql::SchemaBuilder<Query, Mutation, SubscriptionRoot> {
    Schema::build(Query, Mutation, SubscriptionRoot)
        .data(limits)
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(32)
}

/// The gateway's client, shared by every request (one HTTP/2 connection).
struct Gateway(GatewayClient<Channel>);

/// A call on the gateway with the request's token, its status made a GraphQL error.
fn request<T>(ctx: &Context<'_>, msg: T) -> async_graphql::Result<(GatewayClient<Channel>, tonic::Request<T>)> {
    let mut r = tonic::Request::new(msg);
    if let Some(Token(Some(token))) = ctx.data_opt::<Token>() {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| coded("the bearer token holds characters a header cannot carry", "UNAUTHENTICATED"))?;
        r.metadata_mut().insert("authorization", value);
    }
    Ok((ctx.data_unchecked::<Gateway>().0.clone(), r))
}

/// A GraphQL error with `extensions.code`.
fn coded(message: impl Into<String>, code: &str) -> Error {
    Error::new(message).extend_with(|_, e| e.set("code", code))
}

/// A gRPC status as a GraphQL error: the gateway's message, the code's name.
pub fn status_error(s: tonic::Status) -> Error {
    coded(s.message(), code_name(s.code()))
}

/// The canonical name of a gRPC code (`InvalidArgument` → `INVALID_ARGUMENT`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

fn bad_input(message: impl Into<String>) -> Error {
    coded(message, "BAD_USER_INPUT")
}

/// An integer of 64 bits: cents, shares, sequence numbers. Written as a JSON
/// string of decimal digits (a JSON number is exact only up to 2^53); read
/// from such a string or from a JSON integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Int64(pub i64);

/// A 64-bit integer (cents, shares, sequence numbers), as a string of decimal digits.
#[Scalar(name = "Int64")]
impl ScalarType for Int64 {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => s
                .parse::<i64>()
                .map(Int64)
                .map_err(|_| InputValueError::custom(format!("{s:?} is not a 64-bit integer"))),
            Value::Number(n) => {
                n.as_i64().map(Int64).ok_or_else(|| InputValueError::custom(format!("{n} is not a 64-bit integer")))
            }
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_string())
    }
}

fn id_of(text: &ID, what: &str) -> async_graphql::Result<u64> {
    text.parse::<u64>().map_err(|_| bad_input(format!("{what} {:?} is not an id (a number)", text.as_str())))
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Trader,
    MarketMaker,
    Admin,
}

impl Role {
    fn to_proto(self) -> common::Role {
        match self {
            Role::Trader => common::Role::Trader,
            Role::MarketMaker => common::Role::MarketMaker,
            Role::Admin => common::Role::Admin,
        }
    }
    fn of(n: i32) -> Option<Role> {
        match common::Role::try_from(n).ok()? {
            common::Role::Trader => Some(Role::Trader),
            common::Role::MarketMaker => Some(Role::MarketMaker),
            common::Role::Admin => Some(Role::Admin),
            common::Role::Unspecified => None,
        }
    }
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum OrderType {
    Limit,
    Market,
    Ioc,
    Fok,
}

#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Accepted,
    PartiallyFilled,
    Filled,
    Canceled,
    Rejected,
}

/// The caller, as the gateway knows them from their token.
#[derive(SimpleObject)]
pub struct User {
    pub id: ID,
    pub role: Option<Role>,
}

#[derive(SimpleObject)]
pub struct Session {
    /// The bearer token: `Authorization: Bearer <token>`.
    pub token: String,
    pub user_id: ID,
}

#[derive(SimpleObject)]
pub struct Registered {
    pub user_id: ID,
}

#[derive(SimpleObject)]
pub struct Order {
    pub id: ID,
    pub user_id: ID,
    pub client_order_id: String,
    pub symbol: String,
    pub side: Option<Side>,
    pub order_type: Option<OrderType>,
    pub price_cents: Int64,
    pub qty: Int64,
    pub filled_qty: Int64,
    pub filled_notional_cents: Int64,
    pub status: Option<OrderStatus>,
    /// Why it was rejected or closed, when it was.
    pub reason: String,
}

impl From<common::Order> for Order {
    fn from(o: common::Order) -> Order {
        let side = match common::Side::try_from(o.side) {
            Ok(common::Side::Buy) => Some(Side::Buy),
            Ok(common::Side::Sell) => Some(Side::Sell),
            _ => None,
        };
        let order_type = match common::OrderType::try_from(o.order_type) {
            Ok(common::OrderType::Limit) => Some(OrderType::Limit),
            Ok(common::OrderType::Market) => Some(OrderType::Market),
            Ok(common::OrderType::Ioc) => Some(OrderType::Ioc),
            Ok(common::OrderType::Fok) => Some(OrderType::Fok),
            _ => None,
        };
        let status = match common::OrderStatus::try_from(o.status) {
            Ok(common::OrderStatus::Accepted) => Some(OrderStatus::Accepted),
            Ok(common::OrderStatus::PartiallyFilled) => Some(OrderStatus::PartiallyFilled),
            Ok(common::OrderStatus::Filled) => Some(OrderStatus::Filled),
            Ok(common::OrderStatus::Canceled) => Some(OrderStatus::Canceled),
            Ok(common::OrderStatus::Rejected) => Some(OrderStatus::Rejected),
            _ => None,
        };
        Order {
            id: ID(o.order_id.to_string()),
            user_id: ID(o.user_id.to_string()),
            client_order_id: o.client_order_id,
            symbol: o.symbol,
            side,
            order_type,
            price_cents: Int64(o.price_cents),
            qty: Int64(o.qty),
            filled_qty: Int64(o.filled_qty),
            filled_notional_cents: Int64(o.filled_notional_cents),
            status,
            reason: o.reason,
        }
    }
}

#[derive(SimpleObject)]
pub struct Holding {
    pub symbol: String,
    pub qty: Int64,
    /// Held for open sell orders.
    pub reserved_qty: Int64,
}

#[derive(SimpleObject)]
pub struct Portfolio {
    pub account_id: ID,
    pub cash_cents: Int64,
    /// Held for open buy orders.
    pub reserved_cents: Int64,
    pub holdings: Vec<Holding>,
}

impl From<common::PortfolioView> for Portfolio {
    fn from(p: common::PortfolioView) -> Portfolio {
        Portfolio {
            account_id: ID(p.account_id.to_string()),
            cash_cents: Int64(p.cash_cents),
            reserved_cents: Int64(p.reserved_cents),
            holdings: p
                .holdings
                .into_iter()
                .map(|h| Holding { symbol: h.symbol, qty: Int64(h.qty), reserved_qty: Int64(h.reserved_qty) })
                .collect(),
        }
    }
}

#[derive(SimpleObject)]
pub struct Instrument {
    pub symbol: String,
    pub tick_cents: Int64,
    pub lot_shares: Int64,
    pub min_price_cents: Int64,
    pub max_price_cents: Int64,
}

#[derive(SimpleObject)]
pub struct Quote {
    pub symbol: String,
    pub last_price_cents: Int64,
    pub last_qty: Int64,
    pub bid_cents: Int64,
    pub bid_qty: Int64,
    pub ask_cents: Int64,
    pub ask_qty: Int64,
    pub trades: Int64,
    pub volume: Int64,
}

#[derive(SimpleObject)]
pub struct Candle {
    pub start_ms: Int64,
    pub open_cents: Int64,
    pub high_cents: Int64,
    pub low_cents: Int64,
    pub close_cents: Int64,
    pub volume: Int64,
}

/// What an execution report says happened.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum ExecutionKind {
    /// The first report of a subscription: only its cursor, to resume after.
    Opened,
    Fill,
    Settled,
    Closed,
}

/// One report on the caller's orders. Resume a subscription after the
/// `cursor` of the last report received to miss nothing.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct ExecutionReport {
    pub kind: ExecutionKind,
    pub cursor: Int64,
    /// None on the opening report.
    pub order_id: Option<ID>,
    pub symbol: String,
    pub ts_ms: Int64,
    #[graphql(skip)]
    detail: Option<execution_report::Kind>,
}

#[derive(SimpleObject)]
pub struct Fill {
    pub match_seq: Int64,
    pub price_cents: Int64,
    pub qty: Int64,
    /// The order's quantity still open after this fill.
    pub remaining: Int64,
    /// The order rested in the book (it did not cross on arrival).
    pub maker: bool,
}

#[derive(SimpleObject)]
pub struct Closed {
    pub remaining: Int64,
    pub reason: String,
}

#[ComplexObject]
impl ExecutionReport {
    /// The fill, on a `FILL` report.
    async fn fill(&self) -> Option<Fill> {
        match &self.detail {
            Some(execution_report::Kind::Fill(f)) => Some(Fill {
                match_seq: Int64(f.match_seq as i64),
                price_cents: Int64(f.price_cents),
                qty: Int64(f.qty),
                remaining: Int64(f.remaining),
                maker: f.maker,
            }),
            _ => None,
        }
    }

    /// The fill settled, on a `SETTLED` report: its match sequence.
    async fn settled_match_seq(&self) -> Option<Int64> {
        match &self.detail {
            Some(execution_report::Kind::Settled(s)) => Some(Int64(s.match_seq as i64)),
            _ => None,
        }
    }

    /// Why the order closed, on a `CLOSED` report.
    async fn closed(&self) -> Option<Closed> {
        match &self.detail {
            Some(execution_report::Kind::Closed(c)) => {
                Some(Closed { remaining: Int64(c.remaining), reason: c.reason.clone() })
            }
            _ => None,
        }
    }
}

impl From<gw::ExecutionReport> for ExecutionReport {
    fn from(r: gw::ExecutionReport) -> ExecutionReport {
        let kind = match &r.kind {
            None => ExecutionKind::Opened,
            Some(execution_report::Kind::Fill(_)) => ExecutionKind::Fill,
            Some(execution_report::Kind::Settled(_)) => ExecutionKind::Settled,
            Some(execution_report::Kind::Closed(_)) => ExecutionKind::Closed,
        };
        ExecutionReport {
            kind,
            cursor: Int64(r.cursor as i64),
            order_id: r.kind.is_some().then(|| ID(r.order_id.to_string())),
            symbol: r.symbol,
            ts_ms: Int64(r.ts_ms),
            detail: r.kind,
        }
    }
}

#[derive(SimpleObject)]
pub struct Trade {
    pub match_seq: Int64,
    pub price_cents: Int64,
    pub qty: Int64,
}

#[derive(SimpleObject)]
pub struct MarketDataUpdate {
    pub symbol: String,
    pub ts_ms: Int64,
    pub bid_cents: Int64,
    pub bid_qty: Int64,
    pub ask_cents: Int64,
    pub ask_qty: Int64,
    pub trades: Vec<Trade>,
}

impl From<gw::MarketDataUpdate> for MarketDataUpdate {
    fn from(u: gw::MarketDataUpdate) -> MarketDataUpdate {
        MarketDataUpdate {
            symbol: u.symbol,
            ts_ms: Int64(u.ts_ms),
            bid_cents: Int64(u.bid_cents),
            bid_qty: Int64(u.bid_qty),
            ask_cents: Int64(u.ask_cents),
            ask_qty: Int64(u.ask_qty),
            trades: u
                .trades
                .into_iter()
                .map(|t| Trade {
                    match_seq: Int64(t.match_seq as i64),
                    price_cents: Int64(t.price_cents),
                    qty: Int64(t.qty),
                })
                .collect(),
        }
    }
}

/// An order to place.
#[derive(InputObject)]
pub struct SubmitOrderInput {
    /// Your id for it, unique among your orders: submitting it again (a
    /// retry) returns the order placed the first time.
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    pub order_type: OrderType,
    /// Limit price; ignored for MARKET.
    #[graphql(default)]
    pub price_cents: Option<Int64>,
    pub qty: Int64,
}

pub struct Query;

#[Object]
impl Query {
    /// The caller (needs a token).
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        // An authenticated call: the gateway checks the token.
        let (mut g, r) = request(ctx, gw::GetPortfolioRequest {})?;
        let view = g.get_portfolio(r).await.map_err(status_error)?.into_inner();
        let role = ctx.data_opt::<Token>().and_then(|t| t.0.as_deref()).and_then(role_claim).and_then(Role::of);
        Ok(User { id: ID(view.account_id.to_string()), role })
    }

    /// The caller's orders.
    #[graphql(complexity = "100 * child_complexity")]
    async fn orders(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Order>> {
        let (mut g, r) = request(ctx, gw::ListOrdersRequest {})?;
        Ok(g.list_orders(r).await.map_err(status_error)?.into_inner().orders.into_iter().map(Order::from).collect())
    }

    /// One of the caller's orders.
    async fn order(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Order> {
        let order_id = id_of(&id, "id")?;
        let (mut g, r) = request(ctx, gw::GetOrderRequest { order_id })?;
        Ok(g.get_order(r).await.map_err(status_error)?.into_inner().into())
    }

    /// The caller's cash and holdings.
    async fn portfolio(&self, ctx: &Context<'_>) -> async_graphql::Result<Portfolio> {
        let (mut g, r) = request(ctx, gw::GetPortfolioRequest {})?;
        Ok(g.get_portfolio(r).await.map_err(status_error)?.into_inner().into())
    }

    /// What can be traded.
    #[graphql(complexity = "10 * child_complexity")]
    async fn instruments(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Instrument>> {
        let (mut g, r) = request(ctx, gw::ListInstrumentsRequest {})?;
        let list = g.list_instruments(r).await.map_err(status_error)?.into_inner().instruments;
        Ok(list
            .into_iter()
            .map(|i| Instrument {
                symbol: i.symbol,
                tick_cents: Int64(i.tick_cents),
                lot_shares: Int64(i.lot_shares),
                min_price_cents: Int64(i.min_price_cents),
                max_price_cents: Int64(i.max_price_cents),
            })
            .collect())
    }

    /// The last trade and the best bid and ask.
    async fn quote(&self, ctx: &Context<'_>, symbol: String) -> async_graphql::Result<Quote> {
        let (mut g, r) = request(ctx, gw::GetQuoteRequest { symbol })?;
        let q = g.get_quote(r).await.map_err(status_error)?.into_inner();
        Ok(Quote {
            symbol: q.symbol,
            last_price_cents: Int64(q.last_price_cents),
            last_qty: Int64(q.last_qty),
            bid_cents: Int64(q.bid_cents),
            bid_qty: Int64(q.bid_qty),
            ask_cents: Int64(q.ask_cents),
            ask_qty: Int64(q.ask_qty),
            trades: Int64(q.trades as i64),
            volume: Int64(q.volume),
        })
    }

    /// The most recent one-minute candles, oldest first: `limit` of them
    /// (1 to the server's maximum, 500 by default).
    #[graphql(complexity = "limit.clamp(1, 500) as usize * child_complexity")]
    async fn candles(
        &self,
        ctx: &Context<'_>,
        symbol: String,
        #[graphql(default = 60)] limit: i32,
    ) -> async_graphql::Result<Vec<Candle>> {
        let max = ctx.data_unchecked::<Limits>().max_candles;
        if !(1..=max).contains(&limit) {
            return Err(bad_input(format!("limit {limit}: between 1 and {max}")));
        }
        let (mut g, r) = request(ctx, gw::GetCandlesRequest { symbol, limit: limit as u32 })?;
        let candles = g.get_candles(r).await.map_err(status_error)?.into_inner().candles;
        Ok(candles
            .into_iter()
            .map(|c| Candle {
                start_ms: Int64(c.start_ms),
                open_cents: Int64(c.open_cents),
                high_cents: Int64(c.high_cents),
                low_cents: Int64(c.low_cents),
                close_cents: Int64(c.close_cents),
                volume: Int64(c.volume),
            })
            .collect())
    }
}

/// The role a token claims, read without checking its signature: only for
/// `me`, whose answer comes after the gateway accepted the same token.
fn role_claim(token: &str) -> Option<i32> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("role")?.as_i64().and_then(|r| i32::try_from(r).ok())
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// A new account (no token needed).
    async fn register(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
        #[graphql(default_with = "Role::Trader")] role: Role,
    ) -> async_graphql::Result<Registered> {
        let msg = gw::RegisterRequest { username, password, role: role.to_proto() as i32 };
        let (mut g, r) = request(ctx, msg)?;
        let reply = g.register(r).await.map_err(status_error)?.into_inner();
        Ok(Registered { user_id: ID(reply.user_id.to_string()) })
    }

    /// A token for the account (no token needed).
    async fn login(&self, ctx: &Context<'_>, username: String, password: String) -> async_graphql::Result<Session> {
        let (mut g, r) = request(ctx, gw::LoginRequest { username, password })?;
        let reply = g.login(r).await.map_err(status_error)?.into_inner();
        Ok(Session { token: reply.token, user_id: ID(reply.user_id.to_string()) })
    }

    /// Adds cash (`cents`) or shares (`symbol` and `qty`) to the caller's
    /// account. `requestId` makes a retry safe: the same id deposits once.
    async fn deposit(
        &self,
        ctx: &Context<'_>,
        request_id: String,
        cents: Option<Int64>,
        symbol: Option<String>,
        qty: Option<Int64>,
    ) -> async_graphql::Result<Portfolio> {
        let msg = gw::DepositRequest {
            cents: cents.map_or(0, |c| c.0),
            request_id,
            symbol: symbol.unwrap_or_default(),
            qty: qty.map_or(0, |q| q.0),
        };
        let (mut g, r) = request(ctx, msg)?;
        Ok(g.deposit(r).await.map_err(status_error)?.into_inner().into())
    }

    /// Places an order; the answer says whether it was accepted (then it is
    /// in the book or filled) or rejected, and why.
    async fn submit_order(&self, ctx: &Context<'_>, input: SubmitOrderInput) -> async_graphql::Result<Order> {
        let side = match input.side {
            Side::Buy => common::Side::Buy,
            Side::Sell => common::Side::Sell,
        };
        let order_type = match input.order_type {
            OrderType::Limit => common::OrderType::Limit,
            OrderType::Market => common::OrderType::Market,
            OrderType::Ioc => common::OrderType::Ioc,
            OrderType::Fok => common::OrderType::Fok,
        };
        let msg = gw::SubmitOrderRequest {
            client_order_id: input.client_order_id,
            symbol: input.symbol,
            side: side as i32,
            order_type: order_type as i32,
            price_cents: input.price_cents.map_or(0, |p| p.0),
            qty: input.qty.0,
        };
        let (mut g, r) = request(ctx, msg)?;
        Ok(g.submit_order(r).await.map_err(status_error)?.into_inner().into())
    }

    /// Cancels one of the caller's open orders.
    async fn cancel_order(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Order> {
        let order_id = id_of(&id, "id")?;
        let (mut g, r) = request(ctx, gw::CancelOrderRequest { order_id })?;
        Ok(g.cancel_order(r).await.map_err(status_error)?.into_inner().into())
    }
}

pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// The caller's execution reports as they happen: first an `OPENED`
    /// report with the cursor the stream starts after, then every fill,
    /// close and settlement. With `afterCursor` (the `cursor` of the last
    /// report received), first every report after it that was missed.
    async fn executions(
        &self,
        ctx: &Context<'_>,
        after_cursor: Option<Int64>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<ExecutionReport>>> {
        let after_cursor = match after_cursor {
            Some(Int64(c)) => Some(u64::try_from(c).map_err(|_| bad_input(format!("afterCursor {c}: not negative")))?),
            None => None,
        };
        let (mut g, r) = request(ctx, gw::StreamExecutionsRequest { after_cursor })?;
        let stream = g.stream_executions(r).await.map_err(status_error)?.into_inner();
        Ok(stream.map(|item| item.map(ExecutionReport::from).map_err(status_error)))
    }

    /// Quotes and trades of `symbols` as they change.
    async fn market_data(
        &self,
        ctx: &Context<'_>,
        symbols: Vec<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<MarketDataUpdate>>> {
        if symbols.is_empty() || symbols.len() > 100 {
            return Err(bad_input(format!("symbols: {} given; 1 to 100", symbols.len())));
        }
        let (mut g, r) = request(ctx, gw::StreamMarketDataRequest { symbols })?;
        let stream = g.stream_market_data(r).await.map_err(status_error)?.into_inner();
        Ok(stream.map(|item| item.map(MarketDataUpdate::from).map_err(status_error)))
    }
}

/// The schema's SDL, as `platform/graphql/schema.graphql` holds it.
pub fn sdl() -> String {
    builder(Limits::DEFAULT).finish().sdl()
}

/// Serves the schema over HTTP on `addr` until `shutdown`: `POST /graphql`
/// (the `Authorization: Bearer` header carries the token), WebSocket
/// subscriptions on `GET /graphql` (graphql-transport-ws, or the older
/// graphql-ws; the token in connection_init's payload as `Authorization`,
/// `authorization` or `token`), a note on `GET /`, and `GET /healthz`
/// (200 when the gateway says SERVING, 503 otherwise).
#[cfg(not(madsim))]
pub async fn serve(
    addr: std::net::SocketAddr,
    gateway_uri: String,
    limits: Limits,
    shutdown: crate::services::Shutdown,
) -> Result<(), String> {
    use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
    use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
    use axum::body::Bytes;
    use axum::extract::{DefaultBodyLimit, State, WebSocketUpgrade};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    let channel = crate::services::channel_to(gateway_uri, std::time::Duration::from_secs(10));
    let schema = schema(GatewayClient::new(channel.clone()), limits);
    let gateway_health = crate::services::health::proto::health_client::HealthClient::new(channel);

    /// 200 when the gateway this API calls says SERVING, 503 otherwise:
    /// the container's or the load balancer's health check.
    async fn healthz(
        axum::Extension(mut gateway): axum::Extension<
            crate::services::health::proto::health_client::HealthClient<Channel>,
        >,
    ) -> (StatusCode, String) {
        match crate::services::health::check(&mut gateway, "").await {
            Ok(crate::services::health::ServingStatus::Serving) => (StatusCode::OK, "SERVING\n".into()),
            Ok(status) => (StatusCode::SERVICE_UNAVAILABLE, format!("the gateway says {}\n", status.as_str_name())),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("the gateway does not answer: {}\n", e.message())),
        }
    }

    /// Reads the body itself (axum's `Bytes` keeps to the body limit,
    /// answering 413 beyond it) and answers 400 to what is not a GraphQL
    /// request in JSON.
    async fn execute(State(schema): State<FafnirSchema>, headers: HeaderMap, body: Bytes) -> Response {
        let request: async_graphql::Request = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the body is not a GraphQL request in JSON ({{\"query\": ...}}): {e}\n");
                return (StatusCode::BAD_REQUEST, why).into_response();
            }
        };
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(|t| t.trim().to_string());
        GraphQLResponse::from(schema.execute(request.data(Token(token))).await).into_response()
    }
    async fn index() -> &'static str {
        "fafnir's GraphQL API: POST /graphql (Authorization: Bearer <token>); subscriptions: GET /graphql \
         as a WebSocket (graphql-transport-ws); the schema: introspection, or platform/graphql/schema.graphql\n"
    }

    async fn subscribe(
        State(schema): State<FafnirSchema>,
        protocol: GraphQLProtocol,
        upgrade: WebSocketUpgrade,
    ) -> Response {
        upgrade.protocols(ALL_WEBSOCKET_PROTOCOLS).on_upgrade(move |socket| {
            GraphQLWebSocket::new(socket, schema, protocol).on_connection_init(connection_init).serve()
        })
    }
    let app = axum::Router::new()
        .route("/graphql", get(subscribe).post(execute))
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::Extension(gateway_health))
        .with_state(schema);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("graphql: cannot listen on {addr}: {e}"))?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(|e| format!("graphql on {addr}: {e}"))
}

/// The token of a WebSocket connection, from its connection_init payload:
/// `{"Authorization": "Bearer <token>"}` (or `authorization`, or `token`).
#[cfg(not(madsim))]
async fn connection_init(payload: serde_json::Value) -> async_graphql::Result<async_graphql::Data> {
    let token = ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().to_string());
    let mut data = async_graphql::Data::default();
    data.insert(Token(token));
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema served is the one committed: a change to it is a change
    /// of the API's contract, made on purpose (FAFNIR_BLESS_SCHEMA=1
    /// rewrites the file) and reviewed in the diff.
    #[test]
    fn the_served_schema_is_the_committed_one() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphql/schema.graphql");
        let served = sdl();
        if std::env::var_os("FAFNIR_BLESS_SCHEMA").is_some() {
            std::fs::write(&path, &served).expect("write the schema");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if served != committed {
            let first = served.lines().zip(committed.lines()).position(|(a, b)| a != b);
            panic!(
                "the served schema differs from {} (first differing line {:?}); if the change is meant, \
                 rewrite it with FAFNIR_BLESS_SCHEMA=1 cargo test -p fafnir-platform --lib graphql",
                path.display(),
                first.map(|i| i + 1)
            );
        }
    }

    #[test]
    fn int64_is_read_from_strings_and_integers_and_written_as_a_string() {
        assert_eq!(Int64::parse(Value::String("9007199254740993".into())).ok(), Some(Int64(9_007_199_254_740_993)));
        assert_eq!(Int64::parse(Value::from(-42)).ok(), Some(Int64(-42)));
        assert!(Int64::parse(Value::String("1e3".into())).is_err());
        assert!(Int64::parse(Value::String("99999999999999999999".into())).is_err());
        assert!(Int64::parse(Value::from(1.5)).is_err());
        assert_eq!(Int64(i64::MAX).to_value(), Value::String("9223372036854775807".into()));
    }

    #[test]
    fn no_float_in_the_schema() {
        assert!(!sdl().contains("Float"), "money and quantities are integers");
    }

    #[test]
    fn grpc_codes_keep_their_canonical_names() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        let e = status_error(tonic::Status::not_found("no order 7"));
        assert_eq!(e.message, "no order 7");
    }
}
