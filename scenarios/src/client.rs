//! A user of the public gateway API, holding their JWT.

use std::net::SocketAddr;
use std::time::Duration;

use fafnir_platform::proto::common::{Order, OrderType, PortfolioView, Quote, Role, Side};
use fafnir_platform::proto::gateway::gateway_client::GatewayClient;
use fafnir_platform::proto::gateway::*;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// A connection to the gateway, logged in or not.
#[derive(Clone)]
pub struct Client {
    pub api: GatewayClient<Channel>,
    /// Submit and cancel, on the order's path (see `fafnir_platform::rpc`).
    pub mux: fafnir_platform::rpc::Mux,
    pub token: Option<String>,
    pub user_id: u64,
}

/// What an order submit asks for; prices in cents.
#[derive(Clone, Debug)]
pub struct OrderSpec {
    pub client_order_id: String,
    pub symbol: String,
    pub side: Side,
    pub order_type: OrderType,
    pub price_cents: i64,
    pub qty: i64,
}

impl OrderSpec {
    pub fn limit(coid: &str, symbol: &str, side: Side, price_cents: i64, qty: i64) -> OrderSpec {
        OrderSpec {
            client_order_id: coid.into(),
            symbol: symbol.into(),
            side,
            order_type: OrderType::Limit,
            price_cents,
            qty,
        }
    }
    pub fn market(coid: &str, symbol: &str, side: Side, qty: i64) -> OrderSpec {
        OrderSpec { order_type: OrderType::Market, price_cents: 0, ..OrderSpec::limit(coid, symbol, side, 0, qty) }
    }
    pub fn with_type(mut self, t: OrderType) -> OrderSpec {
        self.order_type = t;
        self
    }
}

impl Client {
    /// A client of the gateway at `addr` (connects lazily).
    pub fn new(addr: SocketAddr) -> Client {
        const TIMEOUT: Duration = Duration::from_secs(10);
        let channel = fafnir_platform::services::channel(addr, TIMEOUT);
        let mux = fafnir_platform::rpc::Mux::new(addr, TIMEOUT);
        Client { api: GatewayClient::new(channel), mux, token: None, user_id: 0 }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("ascii token"));
        }
        r
    }

    /// Registers (as a trader or market maker) and logs in.
    pub async fn register_and_login(
        addr: SocketAddr,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Client, Status> {
        let mut c = Client::new(addr);
        let reg = RegisterRequest { username: username.into(), password: password.into(), role: role as i32 };
        c.api.register(reg).await?;
        c.login(username, password).await?;
        Ok(c)
    }

    /// Registers, or logs in when the name is taken: for a set-up that
    /// retries a register whose first attempt may have landed.
    pub async fn register_or_login(
        addr: SocketAddr,
        username: &str,
        password: &str,
        role: Role,
    ) -> Result<Client, Status> {
        match Client::register_and_login(addr, username, password, role).await {
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let mut c = Client::new(addr);
                c.login(username, password).await?;
                Ok(c)
            }
            other => other,
        }
    }

    pub async fn login(&mut self, username: &str, password: &str) -> Result<(), Status> {
        let reply =
            self.api.login(LoginRequest { username: username.into(), password: password.into() }).await?.into_inner();
        self.token = Some(reply.token);
        self.user_id = reply.user_id;
        Ok(())
    }

    pub async fn deposit_cash(&self, cents: i64, request_id: &str) -> Result<PortfolioView, Status> {
        let r = self.req(DepositRequest { cents, request_id: request_id.into(), symbol: String::new(), qty: 0 });
        Ok(self.api.clone().deposit(r).await?.into_inner())
    }

    pub async fn deposit_shares(&self, symbol: &str, qty: i64, request_id: &str) -> Result<PortfolioView, Status> {
        let r = self.req(DepositRequest { cents: 0, request_id: request_id.into(), symbol: symbol.into(), qty });
        Ok(self.api.clone().deposit(r).await?.into_inner())
    }

    pub async fn submit(&self, o: &OrderSpec) -> Result<Order, Status> {
        let r = self.req(SubmitOrderRequest {
            client_order_id: o.client_order_id.clone(),
            symbol: o.symbol.clone(),
            side: o.side as i32,
            order_type: o.order_type as i32,
            price_cents: o.price_cents,
            qty: o.qty,
        });
        let order =
            fafnir_platform::unary!(self.mux, self.api, submit_order, "/fafnir.gateway.Gateway/SubmitOrder", r)?;
        Ok(order.into_inner())
    }

    /// [`Client::submit`] with the order's trace context (a W3C `traceparent`)
    /// sent along, or none; returns the order and the context the gateway
    /// answered with (its own, made for the order, when none was sent).
    pub async fn submit_traced(&self, o: &OrderSpec, context: Option<&str>) -> Result<(Order, Option<String>), Status> {
        let mut r = self.req(SubmitOrderRequest {
            client_order_id: o.client_order_id.clone(),
            symbol: o.symbol.clone(),
            side: o.side as i32,
            order_type: o.order_type as i32,
            price_cents: o.price_cents,
            qty: o.qty,
        });
        if let Some(context) = context {
            r.metadata_mut().insert(fafnir_platform::telemetry::trace::KEY, context.parse().expect("ascii context"));
        }
        let reply =
            fafnir_platform::unary!(self.mux, self.api, submit_order, "/fafnir.gateway.Gateway/SubmitOrder", r)?;
        let answered = reply.metadata().get(fafnir_platform::telemetry::trace::KEY).and_then(|v| v.to_str().ok());
        let answered = answered.map(str::to_string);
        Ok((reply.into_inner(), answered))
    }

    pub async fn cancel(&self, order_id: u64) -> Result<Order, Status> {
        let r = self.req(CancelOrderRequest { order_id });
        let order =
            fafnir_platform::unary!(self.mux, self.api, cancel_order, "/fafnir.gateway.Gateway/CancelOrder", r)?;
        Ok(order.into_inner())
    }

    pub async fn order(&self, order_id: u64) -> Result<Order, Status> {
        Ok(self.api.clone().get_order(self.req(GetOrderRequest { order_id })).await?.into_inner())
    }

    pub async fn orders(&self) -> Result<Vec<Order>, Status> {
        Ok(self.api.clone().list_orders(self.req(ListOrdersRequest {})).await?.into_inner().orders)
    }

    pub async fn portfolio(&self) -> Result<PortfolioView, Status> {
        Ok(self.api.clone().get_portfolio(self.req(GetPortfolioRequest {})).await?.into_inner())
    }

    pub async fn quote(&self, symbol: &str) -> Result<Quote, Status> {
        Ok(self.api.clone().get_quote(self.req(GetQuoteRequest { symbol: symbol.into() })).await?.into_inner())
    }

    pub async fn candles(&self, symbol: &str) -> Result<Vec<fafnir_platform::proto::common::Candle>, Status> {
        let r = self.req(GetCandlesRequest { symbol: symbol.into(), limit: 0 });
        Ok(self.api.clone().get_candles(r).await?.into_inner().candles)
    }

    /// This user's execution reports from now on.
    pub async fn executions(&self) -> Result<tonic::Streaming<ExecutionReport>, Status> {
        let req = self.req(StreamExecutionsRequest { after_cursor: None });
        Ok(self.api.clone().stream_executions(req).await?.into_inner())
    }

    /// This user's execution reports after `cursor` (a report's `cursor`; 0: from now).
    pub async fn executions_after(&self, cursor: u64) -> Result<tonic::Streaming<ExecutionReport>, Status> {
        let req = self.req(StreamExecutionsRequest { after_cursor: Some(cursor) });
        Ok(self.api.clone().stream_executions(req).await?.into_inner())
    }

    pub async fn market_data(&self, symbols: &[&str]) -> Result<tonic::Streaming<MarketDataUpdate>, Status> {
        let r = self.req(StreamMarketDataRequest { symbols: symbols.iter().map(|s| s.to_string()).collect() });
        Ok(self.api.clone().stream_market_data(r).await?.into_inner())
    }
}
