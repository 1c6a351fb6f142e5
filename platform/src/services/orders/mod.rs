//! The orders service: validates orders, runs the accept saga, and keeps each
//! order's status from the engine's events.
//!
//! Accept saga: validate -> portfolio reserves cash (buy) or shares (sell) ->
//! publish `OrderAccepted` to ORDERS with the order id as message id -> only
//! then answer the client. The order id is derived from (user, client order id),
//! so a retried submit reserves and publishes idempotently and is booked once.
//! On start the records are rebuilt from ORDERS and TRADES.
//!
//! A saga interrupted after reserving is finished in the background while
//! this process lives. One the process died in the middle of (or gave up on)
//! is resolved by the reconciler: it finds LEDGER reservations that no
//! acceptance answers and no saga of this process is working on, and fences
//! each with an `OrderAbandoned` published under the order id as message id,
//! the id the acceptance uses. The broker stores only the first of the two, so
//! either the acceptance is found (and the order is known at last) or it can
//! never be stored, and the reservation is released.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::bus::{read_to_end, Publish};
use crate::domain::{
    order_id_for, CloseReason, Instrument, OrderId, OrderStatus, OrderType, PriceTicks, Shares, Side, UserId,
};
use crate::proto::common::Order;
use crate::proto::events::{self, engine_event, ledger_event, order_event, EngineEvent, LedgerEvent, OrderEvent};
use crate::proto::orders::orders_server::{Orders, OrdersServer};
use crate::proto::orders::{CancelRequest, GetRequest, ListReply, ListRequest, SubmitRequest};
use crate::proto::portfolio::portfolio_client::PortfolioClient;
use crate::proto::portfolio::{ReleaseRequest, ReserveRequest};
use crate::services::front::Front;
use crate::services::{
    bus_status, channel_to, close_reason_from_proto, decode, ensure_streams, order_type_from_proto,
    order_type_to_proto, shown, side_from_proto, side_to_proto, status_to_proto, Deps, ServiceError, ServiceKind,
    Shutdown, TaskGroup,
};
use crate::telemetry::{grpc_call, trace, Rpc};

/// The gRPC service this module serves, as its metrics name it.
const GRPC_SERVICE: &str = crate::services::ServiceKind::Orders.grpc_name();

/// The durable consumer of the TRADES stream.
pub const DURABLE: &str = "orders";

/// One order as this service knows it.
#[derive(Clone, Debug)]
struct Record {
    order: Order,
    /// The accepted event is stored in the stream.
    confirmed: bool,
    fills: BTreeSet<u64>,
    closed: Option<CloseReason>,
}

impl Record {
    fn status(&self) -> OrderStatus {
        if self.order.filled_qty == self.order.qty {
            return OrderStatus::Filled;
        }
        match self.closed {
            Some(CloseReason::Rejected) => OrderStatus::Rejected,
            Some(_) => OrderStatus::Canceled,
            None if self.order.filled_qty > 0 => OrderStatus::PartiallyFilled,
            None => OrderStatus::Accepted,
        }
    }

    fn view(&self) -> Order {
        let mut o = self.order.clone();
        o.status = status_to_proto(self.status()) as i32;
        o.reason = match self.closed {
            Some(CloseReason::Canceled) => "canceled".into(),
            Some(CloseReason::Expired) => "unfilled remainder expired".into(),
            Some(CloseReason::Killed) => "fill-or-kill could not fill completely".into(),
            Some(CloseReason::Rejected) => "rejected by the engine".into(),
            None => String::new(),
        };
        o
    }
}

#[derive(Default)]
struct Records {
    by_id: BTreeMap<OrderId, Record>,
    by_user: BTreeMap<UserId, Vec<OrderId>>,
    /// Orders whose accept saga (or fencing) is running right now.
    inflight: BTreeSet<OrderId>,
    /// Interrupted submits this process is finishing in the background.
    retrying: BTreeSet<OrderId>,
}

impl Records {
    /// Records a new order; one already recorded is kept as it is. (A
    /// retried accept saga used to replace it with a blank record, dropping
    /// the fills the engine had already reported for the first publish,
    /// which a partition had delayed: found by chaos seed 1106.)
    fn insert(&mut self, id: OrderId, record: Record) {
        let user = UserId(record.order.user_id);
        if let std::collections::btree_map::Entry::Vacant(slot) = self.by_id.entry(id) {
            slot.insert(record);
            self.by_user.entry(user).or_default().push(id);
        }
    }

    /// Forgets a record made for a publish that was refused.
    fn remove(&mut self, id: OrderId) {
        if let Some(r) = self.by_id.remove(&id) {
            if let Some(ids) = self.by_user.get_mut(&UserId(r.order.user_id)) {
                ids.retain(|x| *x != id);
            }
        }
    }

    fn apply_accepted(&mut self, a: &events::OrderAccepted, tick_cents: i64) {
        let id = OrderId(a.order_id);
        if let Some(r) = self.by_id.get_mut(&id) {
            r.confirmed = true;
            return;
        }
        let order = Order {
            order_id: a.order_id,
            user_id: a.user_id,
            client_order_id: a.client_order_id.clone(),
            symbol: a.symbol.clone(),
            side: a.side,
            order_type: a.order_type,
            price_cents: a.limit_ticks * tick_cents,
            qty: a.qty,
            ..Order::default()
        };
        self.insert(id, Record { order, confirmed: true, fills: BTreeSet::new(), closed: None });
    }

    /// Applies an engine event; false when it names an order not known yet.
    fn apply_engine(&mut self, e: &EngineEvent, tick_cents: i64) -> bool {
        match &e.kind {
            Some(engine_event::Kind::Fill(f)) => {
                let known = [f.maker_order, f.taker_order].map(|o| self.by_id.contains_key(&OrderId(o)));
                if known.contains(&false) {
                    return false;
                }
                for order in [f.maker_order, f.taker_order] {
                    let r = self.by_id.get_mut(&OrderId(order)).expect("checked above");
                    if r.fills.insert(f.match_seq) {
                        r.order.filled_qty += f.qty;
                        // In range: an accepted order's quantity at the band's top fits i64 cents.
                        r.order.filled_notional_cents += f.qty * f.price_ticks * tick_cents;
                        assert!(r.order.filled_qty <= r.order.qty, "order {order:x} overfilled: {:?}", r.order);
                    }
                }
                true
            }
            Some(engine_event::Kind::Closed(c)) => match self.by_id.get_mut(&OrderId(c.order_id)) {
                Some(r) => {
                    r.closed = Some(close_reason_from_proto(c.reason));
                    true
                }
                None => false,
            },
            _ => true,
        }
    }
}

struct State {
    deps: Deps,
    records: Mutex<Records>,
    portfolio: PortfolioClient<tonic::transport::Channel>,
    /// Reserve and release, on the order's path (see [`crate::rpc`]).
    portfolio_mux: crate::rpc::Mux,
}

impl State {
    fn tick(&self, symbol: &str) -> i64 {
        self.deps.cfg.instrument(symbol).map_or(1, |i| i.tick_cents)
    }
}

/// Runs the orders service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    let addr = deps.cfg.addrs.orders;
    let mut front = Front::listen(ServiceKind::Orders, addr, shutdown.clone()).await;
    let Some((state, tasks)) = front.rebuilding(start(&deps, &shutdown)).await? else { return Ok(()) };
    tracing::info!(%addr, "orders serving");
    front.serve(OrdersServer::new(OrdersSvc { state }), tasks).await
}

/// The order records rebuilt, and the tasks that keep them (and the sagas) going from here.
async fn start(deps: &Deps, shutdown: &Shutdown) -> Result<(Arc<State>, TaskGroup), ServiceError> {
    ensure_streams(deps).await?;
    crate::services::ensure_trades_consumer(deps, DURABLE).await?;
    let portfolio = PortfolioClient::new(channel_to(deps.cfg.dial("portfolio"), deps.cfg.call_timeout));
    let portfolio_mux = crate::rpc::Mux::new(deps.cfg.addrs.portfolio, deps.cfg.call_timeout);
    let state =
        Arc::new(State { deps: deps.clone(), records: Mutex::new(Records::default()), portfolio, portfolio_mux });
    let orders_next = rebuild(&state).await?;
    let mut tasks = TaskGroup::default();
    let track = consume(state.clone(), shutdown.clone());
    let metered = deps.clone();
    tasks.spawn(async move { crate::telemetry::cpu_metered(&metered, "orders.track", track).await });
    tasks.spawn(reconcile(state.clone(), orders_next, shutdown.clone()));
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[DURABLE], shutdown.clone()));
    Ok((state, tasks))
}

/// Rebuilds the records; returns the ORDERS sequence to read on from.
async fn rebuild(state: &State) -> Result<u64, ServiceError> {
    let names = state.deps.cfg.names();
    let bus = state.deps.bus.as_ref();
    let orders_stream = names.orders_stream();
    let orders = read_to_end(bus, &orders_stream, "", 1).await?;
    let trades_stream = names.trades_stream();
    let trades = read_to_end(bus, &trades_stream, "", 1).await?;
    let mut records = state.records.lock().expect("records lock");
    for m in &orders {
        let input: OrderEvent = decode(&orders_stream, m.seq, &m.payload)?;
        if let Some(order_event::Kind::Accepted(a)) = &input.kind {
            records.apply_accepted(a, state.tick(&a.symbol));
        }
    }
    for m in &trades {
        let e: EngineEvent = decode(&trades_stream, m.seq, &m.payload)?;
        if !records.apply_engine(&e, state.tick(&e.symbol)) {
            let reason = format!("names an order missing from {orders_stream}");
            return Err(ServiceError::Corrupt { stream: trades_stream, seq: m.seq, reason });
        }
    }
    tracing::info!(orders = records.by_id.len(), trade_events = trades.len(), "orders rebuilt from streams");
    Ok(orders.last().map_or(1, |m| m.seq + 1))
}

async fn consume(state: Arc<State>, shutdown: Shutdown) {
    let names = state.deps.cfg.names();
    let stream = names.trades_stream();
    let bus = state.deps.bus.clone();
    loop {
        let fetched = tokio::select! {
            biased;
            _ = shutdown.clone() => return,
            r = bus.fetch(&stream, DURABLE, 256, Duration::from_millis(500)) => r,
        };
        let deliveries = match fetched {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "orders fetch failed; retrying");
                crate::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Acked together after the batch (a redelivery applies nothing twice).
        let mut done = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            state.deps.work("orders.track").await;
            let known = match decode::<EngineEvent>(&stream, d.msg.seq, &d.msg.payload) {
                Ok(e) => state.records.lock().expect("records lock").apply_engine(&e, state.tick(&e.symbol)),
                Err(e) => {
                    tracing::error!(error = %e, "undecodable trade event terminated");
                    let _ = bus.term(&d.token).await;
                    continue;
                }
            };
            // An event may overtake the local record of its order's acceptance;
            // it is redelivered once the record is there.
            // A buggified nak makes the broker redeliver an applied event: it must apply once.
            let known = known && !crate::services::buggify(0.02);
            if known {
                done.push(d.token);
            } else if let Err(e) = bus.nak(&d.token, Duration::from_millis(20)).await {
                tracing::warn!(error = %e, "nak failed");
            }
        }
        if let Err(e) = bus.ack_many(&done).await {
            tracing::warn!(error = %e, "ack failed");
        }
    }
}

/// How often the reconciler looks for reservations no saga will finish.
pub const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// A LEDGER reservation no acceptance or release has answered yet.
struct OpenReservation {
    account: u64,
    symbol: String,
}

/// The reconciler's reading position and what it has found open.
struct Reconciler {
    ledger_next: u64,
    orders_next: u64,
    open: BTreeMap<OrderId, OpenReservation>,
}

/// Gives up, every [`RECONCILE_EVERY`], the accept sagas no one is finishing.
async fn reconcile(state: Arc<State>, orders_next: u64, shutdown: Shutdown) {
    let mut r = Reconciler { ledger_next: 1, orders_next, open: BTreeMap::new() };
    loop {
        if let Err(e) = r.pass(&state).await {
            tracing::warn!(error = %e, "reconciliation pass failed; trying again");
        }
        tokio::select! {
            biased;
            _ = shutdown.clone() => return,
            _ = crate::time::sleep(RECONCILE_EVERY) => {}
        }
    }
}

impl Reconciler {
    /// Reads what is new in LEDGER and ORDERS, then fences and releases each
    /// open reservation that no saga of this process owns.
    async fn pass(&mut self, state: &State) -> Result<(), Status> {
        let names = state.deps.cfg.names();
        let bus = state.deps.bus.as_ref();
        let stream = names.ledger_stream();
        for m in read_to_end(bus, &stream, "", self.ledger_next).await.map_err(bus_status)? {
            self.ledger_next = m.seq + 1;
            match decode::<LedgerEvent>(&stream, m.seq, &m.payload).map(|e| e.kind) {
                Ok(Some(ledger_event::Kind::Reserved(r))) => {
                    let open = OpenReservation { account: r.account, symbol: r.symbol };
                    self.open.insert(OrderId(r.order_id), open);
                }
                Ok(Some(ledger_event::Kind::Released(r))) => {
                    self.open.remove(&OrderId(r.order_id));
                }
                _ => {}
            }
        }
        // Acceptances this process has not seen: one stored late by an earlier incarnation.
        let stream = names.orders_stream();
        for m in read_to_end(bus, &stream, "", self.orders_next).await.map_err(bus_status)? {
            self.orders_next = m.seq + 1;
            if let Ok(OrderEvent { kind: Some(order_event::Kind::Accepted(a)) }) = decode(&stream, m.seq, &m.payload) {
                state.records.lock().expect("records lock").apply_accepted(&a, state.tick(&a.symbol));
            }
        }
        let ids: Vec<OrderId> = self.open.keys().copied().collect();
        for id in ids {
            {
                let mut records = state.records.lock().expect("records lock");
                if records.by_id.get(&id).is_some_and(|r| r.confirmed) {
                    self.open.remove(&id); // trading answers for its reservation now
                    continue;
                }
                if records.retrying.contains(&id) || !records.inflight.insert(id) {
                    continue; // a saga of this process owns it
                }
            }
            let given_up = {
                let _guard = InflightGuard { state, id };
                self.give_up(state, id).await
            };
            match given_up {
                Ok(true) => {
                    tracing::info!(order = %id, "interrupted submit given up; reservation released");
                    self.open.remove(&id);
                }
                Ok(false) => {
                    tracing::info!(order = %id, "interrupted submit found accepted");
                    self.open.remove(&id);
                }
                Err(e) => {
                    tracing::warn!(order = %id, error = %e.message(), "could not give up an interrupted submit yet")
                }
            }
        }
        Ok(())
    }

    /// Fences the order with an abandonment and releases its reservation;
    /// false when the acceptance was stored first.
    async fn give_up(&self, state: &State, id: OrderId) -> Result<bool, Status> {
        let open = &self.open[&id];
        let event = events::OrderAbandoned {
            order_id: id.0,
            user_id: open.account,
            symbol: open.symbol.clone(),
            abandoned_ms: state.deps.clock.now_ms(),
        };
        let input = OrderEvent { kind: Some(order_event::Kind::Abandoned(event)) };
        let subject = state.deps.cfg.names().order_abandoned(&open.symbol);
        let ack = state.deps.bus.publish(&subject, &id.to_string(), Bytes::from(input.encode_to_vec())).await;
        let ack = ack.map_err(bus_status)?;
        if ack.duplicate {
            match stored_input(state, ack.seq).await? {
                Some(order_event::Kind::Accepted(a)) => {
                    state.records.lock().expect("records lock").apply_accepted(&a, state.tick(&a.symbol));
                    return Ok(false);
                }
                Some(order_event::Kind::Abandoned(_)) => {} // an earlier pass fenced it
                other => {
                    return Err(Status::internal(format!("ORDERS#{} holds {other:?} under order id {id}", ack.seq)));
                }
            }
        }
        // A record left by a publish that never landed would show the order as accepted.
        state.records.lock().expect("records lock").remove(id);
        let release = ReleaseRequest { order_id: id.0 };
        crate::unary!(state.portfolio_mux, state.portfolio, release, "/fafnir.portfolio.Portfolio/Release", release)?;
        Ok(true)
    }
}

/// A submit that passed validation.
#[derive(Clone)]
struct Valid {
    inst: Instrument,
    side: Side,
    kind: OrderType,
    limit_ticks: i64,
    /// The price the order's cash is reserved at: its limit, or the band's top.
    reserve_ticks: i64,
}

fn validate(deps: &Deps, req: &SubmitRequest) -> Result<Valid, Status> {
    if req.client_order_id.is_empty() || req.client_order_id.len() > 64 {
        return Err(Status::invalid_argument("client_order_id: 1 to 64 bytes, unique per order"));
    }
    let inst = deps
        .cfg
        .instrument(&req.symbol)
        .ok_or_else(|| Status::invalid_argument(format!("symbol: unknown symbol {}", shown(&req.symbol))))?
        .clone();
    let side = side_from_proto(req.side)?;
    let kind = order_type_from_proto(req.order_type)?;
    let limit_ticks = if kind == OrderType::Market {
        if req.price_cents != 0 {
            return Err(Status::invalid_argument("price_cents: a market order takes no price (send 0)"));
        }
        0
    } else {
        if req.price_cents <= 0 {
            return Err(Status::invalid_argument(format!("price_cents: {} is not a positive price", req.price_cents)));
        }
        let ticks = inst.to_ticks(req.price_cents).ok_or_else(|| {
            Status::invalid_argument(format!(
                "price_cents: {} is off the tick of {} cents",
                req.price_cents, inst.tick_cents
            ))
        })?;
        if ticks.0 < inst.min_price_ticks || ticks.0 > inst.max_price_ticks {
            return Err(Status::invalid_argument(format!(
                "price_cents: {} is outside the band {}..={} cents",
                req.price_cents,
                inst.min_price_ticks * inst.tick_cents,
                inst.max_price_ticks * inst.tick_cents
            )));
        }
        ticks.0
    };
    // Market orders count at the band's top: what a market buy reserves.
    let reserve_ticks = if kind == OrderType::Market { inst.max_price_ticks } else { limit_ticks };
    inst.check_order(PriceTicks(reserve_ticks), Shares(req.qty))
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Valid { inst, side, kind, limit_ticks, reserve_ticks })
}

struct OrdersSvc {
    state: Arc<State>,
}

/// Removes an order id from the in-flight set when the submit ends, however it ends.
struct InflightGuard<'a> {
    state: &'a State,
    id: OrderId,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.state.records.lock().expect("records lock").inflight.remove(&self.id);
    }
}

/// Hands an interrupted submit over to the reconciler when its background retry ends.
struct RetryingGuard<'a> {
    state: &'a State,
    id: OrderId,
}

impl Drop for RetryingGuard<'_> {
    fn drop(&mut self) {
        self.state.records.lock().expect("records lock").retrying.remove(&self.id);
    }
}

impl OrdersSvc {
    /// Reserves and publishes the order; `context` is its trace, passed on
    /// to the portfolio (metadata) and the engine (the ORDERS message's header).
    async fn accept(&self, req: &SubmitRequest, v: &Valid, id: OrderId, context: &str) -> Result<Order, Status> {
        let state = &self.state;
        let context = trace::child(context, "orders");
        // Market buys reserve at the band's top: every fill is at or below it.
        let reserve_ticks = v.reserve_ticks;
        let reserve = ReserveRequest {
            order_id: id.0,
            account_id: req.user_id,
            symbol: req.symbol.clone(),
            side: side_to_proto(v.side) as i32,
            qty: req.qty,
            price_ticks: reserve_ticks,
        };
        let reserve = trace::attach(tonic::Request::new(reserve), &context);
        let reserved = crate::unary!(
            state.portfolio_mux,
            state.portfolio,
            reserve,
            "/fafnir.portfolio.Portfolio/Reserve",
            reserve
        );
        reserved.map_err(|s| match s.code() {
            // The portfolio's answer for an order whose reservation was released.
            tonic::Code::Aborted => abandoned(&req.client_order_id),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => s,
            _ => Status::unavailable(format!("portfolio: {}; retry with the same client_order_id", s.message())),
        })?;
        let accepted = events::OrderAccepted {
            order_id: id.0,
            user_id: req.user_id,
            client_order_id: req.client_order_id.clone(),
            symbol: req.symbol.clone(),
            side: side_to_proto(v.side) as i32,
            order_type: order_type_to_proto(v.kind) as i32,
            limit_ticks: v.limit_ticks,
            qty: req.qty,
            reserve_price_ticks: reserve_ticks,
            accepted_ms: state.deps.clock.now_ms(),
        };
        let order = Order {
            order_id: id.0,
            user_id: req.user_id,
            client_order_id: req.client_order_id.clone(),
            symbol: req.symbol.clone(),
            side: req.side,
            order_type: req.order_type,
            price_cents: req.price_cents,
            qty: req.qty,
            ..Order::default()
        };
        if crate::services::buggify(0.05) {
            // Widen the window between reserving and publishing (a crash here leaves a reservation).
            crate::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Recorded before publishing, so the engine's events never find it missing.
        state
            .records
            .lock()
            .expect("records lock")
            .insert(id, Record { order, confirmed: false, fills: BTreeSet::new(), closed: None });
        let input = OrderEvent { kind: Some(order_event::Kind::Accepted(accepted.clone())) };
        let subject = state.deps.cfg.names().order_accepted(&req.symbol);
        let msg = Publish {
            subject,
            msg_id: id.to_string(),
            payload: Bytes::from(input.encode_to_vec()),
            trace_parent: Some(context.clone()),
        };
        let ack = state.deps.bus.publish_traced(msg).await.map_err(|e| {
            Status::unavailable(format!(
                "{}; the order is not confirmed, retry with the same client_order_id",
                bus_status(e).message()
            ))
        })?;
        if ack.duplicate && !matches!(stored_input(state, ack.seq).await?, Some(order_event::Kind::Accepted(_))) {
            // The message id is taken by the order's abandonment: it can never be accepted.
            state.records.lock().expect("records lock").remove(id);
            return Err(abandoned(&req.client_order_id));
        }
        tracing::debug!(trace_id = trace::trace_id(&context), order = %id, "orders: accepted");
        metrics::counter!(crate::telemetry::ORDERS_ACCEPTED, "symbol" => req.symbol.clone()).increment(1);
        let mut records = state.records.lock().expect("records lock");
        records.apply_accepted(&accepted, v.inst.tick_cents);
        Ok(records.by_id[&id].view())
    }

    /// Retries an interrupted accept saga (reserve and publish are both
    /// idempotent) until it is booked or refused, for about half a minute.
    async fn finish_abandoned(&self, req: SubmitRequest, valid: Valid, id: OrderId) {
        // However this ends, the reconciler may take the order over.
        let _retrying = RetryingGuard { state: &self.state, id };
        for attempt in 0..60 {
            crate::time::sleep(Duration::from_millis(500)).await;
            {
                let mut records = self.state.records.lock().expect("records lock");
                if records.by_id.get(&id).is_some_and(|r| r.confirmed) {
                    return;
                }
                if !records.inflight.insert(id) {
                    continue; // the client is retrying it right now
                }
            }
            let result = {
                let _guard = InflightGuard { state: &self.state, id };
                self.accept(&req, &valid, id, &trace::for_order(req.user_id, id.0)).await
            };
            match result {
                Ok(_) => {
                    tracing::info!(order = %id, attempt, "interrupted submit completed in the background");
                    return;
                }
                Err(s) if s.code() == tonic::Code::Unavailable => continue,
                Err(s) => {
                    tracing::info!(order = %id, status = %s.message(), "interrupted submit refused on retry");
                    return;
                }
            }
        }
        tracing::warn!(order = %id, "interrupted submit could not be completed; the reconciler will give it up");
    }

    fn owned(&self, user: u64, order: u64) -> Result<Record, Status> {
        let records = self.state.records.lock().expect("records lock");
        match records.by_id.get(&OrderId(order)) {
            Some(r) if r.order.user_id == user => Ok(r.clone()),
            _ => Err(Status::not_found(format!("order {order:x}: no such order of yours"))),
        }
    }
}

/// The refusal of a submit whose order was given up after an interruption.
fn abandoned(client_order_id: &str) -> Status {
    Status::failed_precondition(format!(
        "client_order_id {client_order_id:?}: an earlier, interrupted submit of this order was given up and its \
         reservation released; submit again with a new client_order_id"
    ))
}

/// What ORDERS holds at `seq` (None when nothing is there).
async fn stored_input(state: &State, seq: u64) -> Result<Option<order_event::Kind>, Status> {
    let stream = state.deps.cfg.names().orders_stream();
    let unavailable =
        |e| Status::unavailable(format!("{}; retry with the same client_order_id", bus_status(e).message()));
    let msgs = state.deps.bus.read(&stream, "", seq, 1, Duration::ZERO).await.map_err(unavailable)?;
    Ok(match msgs.first() {
        Some(m) if m.seq == seq => decode::<OrderEvent>(&stream, seq, &m.payload).ok().and_then(|e| e.kind),
        _ => None,
    })
}

fn same_order(a: &Order, req: &SubmitRequest) -> bool {
    a.symbol == req.symbol
        && a.side == req.side
        && a.order_type == req.order_type
        && a.price_cents == req.price_cents
        && a.qty == req.qty
}

#[tonic::async_trait]
impl Orders for OrdersSvc {
    async fn submit(&self, req: Request<SubmitRequest>) -> Result<Response<Order>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Submit", "orders.submit");
        let context = trace::of(&req);
        grpc_call(&self.state.deps, rpc, context.clone(), async move {
            let req = req.into_inner();
            let valid = validate(&self.state.deps, &req)?;
            let id = order_id_for(UserId(req.user_id), &req.client_order_id);
            let context = context.unwrap_or_else(|| trace::for_order(req.user_id, id.0));
            {
                let mut records = self.state.records.lock().expect("records lock");
                if let Some(r) = records.by_id.get(&id) {
                    if !same_order(&r.order, &req) {
                        return Err(Status::already_exists(format!(
                            "client_order_id {:?} was used for a different order",
                            req.client_order_id
                        )));
                    }
                    if r.confirmed {
                        return Ok(Response::new(r.view()));
                    }
                }
                if !records.inflight.insert(id) {
                    return Err(Status::aborted("a submit with this client_order_id is in progress; retry"));
                }
            }
            let (result, interrupted) = {
                let _guard = InflightGuard { state: &self.state, id };
                let result = self.accept(&req, &valid, id, &context).await;
                let interrupted = result.as_ref().is_err_and(|s| s.code() == tonic::Code::Unavailable);
                if interrupted {
                    // Claimed before the in-flight mark goes, so the reconciler never sees it unowned.
                    self.state.records.lock().expect("records lock").retrying.insert(id);
                }
                (result, interrupted)
            };
            if interrupted {
                // The saga stopped halfway (reserved, perhaps not published) and
                // the client may never retry: finish it here, so that no
                // reservation is left behind for an order that never trades.
                let svc = OrdersSvc { state: self.state.clone() };
                tokio::spawn(async move { svc.finish_abandoned(req, valid, id).await });
            }
            result.map(Response::new)
        })
        .await
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<Order>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Cancel", "orders.cancel");
        let context = trace::of(&req);
        grpc_call(&self.state.deps, rpc, context.clone(), async move {
            let req = req.into_inner();
            let record = if self.state.deps.cfg.planted(crate::config::PlantedBug::CancelWithoutOwnerCheck) {
                // Planted bug: whoever names the order id may cancel it.
                let records = self.state.records.lock().expect("records lock");
                let found = records.by_id.get(&OrderId(req.order_id)).cloned();
                found.ok_or_else(|| Status::not_found(format!("order {:x}: no such order", req.order_id)))?
            } else {
                self.owned(req.user_id, req.order_id)?
            };
            if record.status().is_final() {
                return Err(Status::failed_precondition(format!(
                    "order {:x} is already {:?}",
                    req.order_id,
                    record.status()
                )));
            }
            let input = OrderEvent {
                kind: Some(order_event::Kind::Cancel(events::CancelRequested {
                    order_id: req.order_id,
                    user_id: req.user_id,
                    symbol: record.order.symbol.clone(),
                    requested_ms: self.state.deps.clock.now_ms(),
                })),
            };
            let subject = self.state.deps.cfg.names().order_cancel(&record.order.symbol);
            let msg_id = format!("cxl-{}", OrderId(req.order_id));
            let context = trace::child(&context.unwrap_or_else(|| trace::for_order(req.user_id, req.order_id)), "orders");
            tracing::debug!(trace_id = trace::trace_id(&context), order = %OrderId(req.order_id), "orders: cancel requested");
            let payload = Bytes::from(input.encode_to_vec());
            let msg = Publish { subject, msg_id, payload, trace_parent: Some(context) };
            self.state.deps.bus.publish_traced(msg).await.map_err(bus_status)?;
            let owner = record.order.user_id;
            Ok(Response::new(self.owned(owner, req.order_id)?.view()))
        })
        .await
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<Order>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "Get", "orders.get");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let req = req.into_inner();
            Ok(Response::new(self.owned(req.user_id, req.order_id)?.view()))
        })
        .await
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        let rpc = Rpc::unary(GRPC_SERVICE, "List", "orders.list");
        grpc_call(&self.state.deps, rpc, trace::of(&req), async move {
            let user = UserId(req.into_inner().user_id);
            let records = self.state.records.lock().expect("records lock");
            let orders = records
                .by_user
                .get(&user)
                .map(|ids| ids.iter().map(|id| records.by_id[id].view()).collect())
                .unwrap_or_default();
            Ok(Response::new(ListReply { orders }))
        })
        .await
    }
}
