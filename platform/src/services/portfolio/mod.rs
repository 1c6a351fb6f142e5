//! The portfolio service: accounts, deposits, cash, holdings, reservations,
//! and exactly-once settlement of fills.
//!
//! Every change is first made durable in the LEDGER stream (deposits,
//! reservations, releases; this service is its only writer) or comes from the
//! TRADES stream (fills, closes), and only then applied to the in-memory
//! [`Ledger`]. On start the ledger is rebuilt by replaying both streams, so a
//! restart or a Redis wipe loses nothing and applies nothing twice.

pub mod ledger;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::bus::BusError;
use crate::config::PlantedBug;
use crate::domain::{AccountId, Cents, OrderId, PriceTicks, Shares, Side};
use crate::proto::common::{Holding as HoldingView, PortfolioView};
use crate::proto::events::{self, engine_event, ledger_event, EngineEvent, LedgerEvent};
use crate::proto::portfolio::portfolio_server::{Portfolio, PortfolioServer};
use crate::proto::portfolio::{
    DepositRequest, GetPortfolioRequest, ReleaseReply, ReleaseRequest, ReserveReply, ReserveRequest,
};
use crate::services::{
    bus_status, decode, ensure_streams, side_from_proto, side_to_proto, Deps, ServiceError, Shutdown, TaskGroup,
};

pub use ledger::{Ledger, Reservation, ReserveError};

/// The durable consumer of the TRADES stream.
pub const DURABLE: &str = "portfolio";

struct State {
    deps: Deps,
    ledger: Mutex<Ledger>,
}

/// Runs the portfolio service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    ensure_streams(&deps).await?;
    crate::services::ensure_trades_consumer(&deps, DURABLE).await?;
    let ledger = rebuild(&deps).await?;
    let state = Arc::new(State { deps: deps.clone(), ledger: Mutex::new(ledger) });
    let mut tasks = TaskGroup::default();
    tasks.spawn(consume(state.clone(), shutdown.clone()));
    let addr = deps.cfg.addrs.portfolio;
    tracing::info!(%addr, "portfolio serving");
    let service = PortfolioServer::new(PortfolioSvc { state });
    let server =
        crate::services::grpc_server().add_service(service.clone()).serve_with_shutdown(addr, shutdown.clone());
    tasks.serve_until_failure(addr, crate::rpc::serve_alongside(addr, service, shutdown, server)).await
}

/// Replays LEDGER then TRADES into a fresh ledger.
pub async fn rebuild(deps: &Deps) -> Result<Ledger, ServiceError> {
    let names = deps.cfg.names();
    let mut ledger = Ledger::new(&deps.cfg.instruments);
    if deps.cfg.planted(PlantedBug::SettleTwice) {
        ledger.plant_settle_twice();
    }
    // Planted bug: closes "move no money", so the replay leaves them out.
    let replay_closes = !deps.cfg.planted(PlantedBug::NoReleaseOnCancel);
    let stream = names.ledger_stream();
    let msgs = crate::bus::read_to_end(deps.bus.as_ref(), &stream, "", 1).await?;
    for m in &msgs {
        apply_ledger_event(&mut ledger, &decode(&stream, m.seq, &m.payload)?);
    }
    let stream = names.trades_stream();
    let trades = crate::bus::read_to_end(deps.bus.as_ref(), &stream, "", 1).await?;
    for m in &trades {
        let event: EngineEvent = decode(&stream, m.seq, &m.payload)?;
        if !replay_closes && matches!(event.kind, Some(engine_event::Kind::Closed(_))) {
            continue;
        }
        apply_engine_event(&mut ledger, &event);
    }
    tracing::info!(ledger_events = msgs.len(), trade_events = trades.len(), "portfolio rebuilt from streams");
    Ok(ledger)
}

/// Applies one LEDGER event.
pub fn apply_ledger_event(ledger: &mut Ledger, event: &LedgerEvent) {
    match &event.kind {
        Some(ledger_event::Kind::Deposited(d)) if d.symbol.is_empty() => {
            ledger.deposit(AccountId(d.account), Cents(d.cents), &d.request_id);
        }
        Some(ledger_event::Kind::Deposited(d)) => {
            ledger.deposit_shares(AccountId(d.account), &d.symbol, Shares(d.qty), &d.request_id);
        }
        Some(ledger_event::Kind::Reserved(r)) => {
            let side = side_from_proto(r.side).expect("ledger holds valid sides");
            ledger.reserve(
                OrderId(r.order_id),
                Reservation {
                    account: AccountId(r.account),
                    symbol: r.symbol.clone(),
                    side,
                    qty: Shares(r.qty),
                    price: PriceTicks(r.price_ticks),
                },
            );
        }
        Some(ledger_event::Kind::Released(r)) => ledger.release(OrderId(r.order_id)),
        Some(ledger_event::Kind::Settled(_)) => {}
        None => tracing::warn!("empty ledger event ignored"),
    }
}

/// Applies one TRADES event: settles a fill or releases a closed order's rest.
/// Returns the settlement when this event settled a fill for the first time.
pub fn apply_engine_event(ledger: &mut Ledger, event: &EngineEvent) -> Option<ledger::FillSettlement> {
    match &event.kind {
        Some(engine_event::Kind::Fill(f)) => {
            let s = settlement(&event.symbol, f);
            ledger.settle(&s).then_some(s)
        }
        Some(engine_event::Kind::Closed(c)) => {
            ledger.close(OrderId(c.order_id), Shares(c.remaining));
            None
        }
        Some(engine_event::Kind::Rested(_)) | Some(engine_event::Kind::Ignored(_)) | None => None,
    }
}

/// Tells the world a fill is settled (best effort: the notice is informational).
async fn announce_settled(deps: &Deps, s: &ledger::FillSettlement) {
    let event = LedgerEvent {
        kind: Some(ledger_event::Kind::Settled(events::Settled {
            symbol: s.symbol.clone(),
            match_seq: s.match_seq,
            buy_order: s.buy_order.0,
            buyer: s.buyer.0,
            sell_order: s.sell_order.0,
            seller: s.seller.0,
        })),
    };
    let subject = deps.cfg.names().ledger("settled");
    let msg_id = format!("settled-{}-{}", s.symbol, s.match_seq);
    if let Err(e) = deps.bus.publish(&subject, &msg_id, Bytes::from(event.encode_to_vec())).await {
        tracing::debug!(error = %e, "settlement notice not published");
    }
}

/// Who bought and who sold in a fill event.
pub fn settlement(symbol: &str, f: &events::FillEvent) -> ledger::FillSettlement {
    let taker_buys = side_from_proto(f.taker_side).expect("fills carry a valid side") == Side::Buy;
    let (buy_order, buyer, sell_order, seller) = if taker_buys {
        (f.taker_order, f.taker_account, f.maker_order, f.maker_account)
    } else {
        (f.maker_order, f.maker_account, f.taker_order, f.taker_account)
    };
    ledger::FillSettlement {
        symbol: symbol.to_string(),
        match_seq: f.match_seq,
        price: PriceTicks(f.price_ticks),
        qty: Shares(f.qty),
        buy_order: OrderId(buy_order),
        buyer: AccountId(buyer),
        sell_order: OrderId(sell_order),
        seller: AccountId(seller),
    }
}

async fn consume(state: Arc<State>, shutdown: Shutdown) {
    let names = state.deps.cfg.names();
    let stream = names.trades_stream();
    loop {
        let fetched = tokio::select! {
            biased;
            _ = shutdown.clone() => return,
            r = state.deps.bus.fetch(&stream, DURABLE, 256, Duration::from_millis(500)) => r,
        };
        let deliveries = match fetched {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "portfolio fetch failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Acked together once the batch is settled: a crash before that
        // redelivers the batch, which settles nothing twice (fill ids).
        let mut done = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            state.deps.work("portfolio.settle").await;
            match decode::<EngineEvent>(&stream, d.msg.seq, &d.msg.payload) {
                Ok(event) => {
                    let settled = apply_engine_event(&mut *state.ledger.lock().await, &event);
                    if let Some(s) = settled {
                        // Off the settlement path: the notice is informational.
                        let deps = state.deps.clone();
                        tokio::spawn(async move { announce_settled(&deps, &s).await });
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "undecodable trade event terminated");
                    let _ = state.deps.bus.term(&d.token).await;
                    continue;
                }
            }
            if crate::services::buggify(0.02) {
                // No ack: the broker redelivers after the ack wait; settlement must stay once.
                continue;
            }
            done.push(d.token);
        }
        if let Err(e) = state.deps.bus.ack_many(&done).await {
            // Harmless: the redeliveries are recognised as already settled.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}

fn view(ledger: &Ledger, account: AccountId) -> PortfolioView {
    let a = ledger.account(account);
    PortfolioView {
        account_id: account.0,
        cash_cents: a.cash.0,
        reserved_cents: a.reserved_cash.0,
        holdings: a
            .holdings
            .iter()
            .filter(|(_, h)| h.qty.0 != 0 || h.reserved.0 != 0)
            .map(|(symbol, h)| HoldingView { symbol: symbol.clone(), qty: h.qty.0, reserved_qty: h.reserved.0 })
            .collect(),
    }
}

struct PortfolioSvc {
    state: Arc<State>,
}

impl PortfolioSvc {
    /// Records `event` in LEDGER; the caller holds the ledger and applies the
    /// event once this returns. A failure that leaves the outcome unknown (a
    /// timeout, a connection lost with the publish in flight) is no answer:
    /// the event may be stored, and the ledger must never be behind LEDGER
    /// (a reservation stored but not applied let later reservations overdraw
    /// the account, which a replay then found), so the same publish, under
    /// the same message id, is retried until the broker answers. Only a
    /// refusal (nothing stored) is returned as an error.
    async fn record(&self, kind: &str, msg_id: &str, event: ledger_event::Kind) -> Result<LedgerEvent, Status> {
        let event = LedgerEvent { kind: Some(event) };
        let subject = self.state.deps.cfg.names().ledger(kind);
        let payload = Bytes::from(event.encode_to_vec());
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.state.deps.bus.publish(&subject, msg_id, payload.clone()).await {
                Ok(_) => return Ok(event),
                Err(e @ (BusError::Other(_) | BusError::NotFound(_))) => return Err(bus_status(e)),
                Err(e) => {
                    tracing::warn!(msg_id, error = %e, "ledger write unanswered; publishing it again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Portfolio for PortfolioSvc {
    async fn deposit(&self, req: Request<DepositRequest>) -> Result<Response<PortfolioView>, Status> {
        self.state.deps.work("portfolio.deposit").await;
        let req = req.into_inner();
        if req.symbol.is_empty() {
            if req.cents <= 0 {
                return Err(Status::invalid_argument(format!("cents: {} is not a positive amount", req.cents)));
            }
        } else {
            let Some(inst) = self.state.deps.cfg.instrument(&req.symbol) else {
                return Err(Status::invalid_argument(format!("symbol: unknown symbol {:?}", req.symbol)));
            };
            if req.qty <= 0 || req.qty % inst.lot_shares != 0 || req.cents != 0 {
                return Err(Status::invalid_argument(format!(
                    "qty: a share deposit needs a positive multiple of the lot ({}) and cents 0",
                    inst.lot_shares
                )));
            }
        }
        if req.request_id.is_empty() || req.request_id.len() > 128 {
            return Err(Status::invalid_argument("request_id: 1 to 128 characters, unique per deposit"));
        }
        let account = AccountId(req.account_id);
        let mut ledger = self.state.ledger.lock().await;
        let request_id = format!("{}/{}", account.0, req.request_id);
        if !ledger.has_deposit(&request_id) {
            let kind = ledger_event::Kind::Deposited(events::Deposited {
                account: account.0,
                cents: req.cents,
                request_id: request_id.clone(),
                symbol: req.symbol.clone(),
                qty: req.qty,
            });
            let event = self.record("deposit", &format!("dep-{request_id}"), kind).await?;
            apply_ledger_event(&mut ledger, &event);
        }
        Ok(Response::new(view(&ledger, account)))
    }

    async fn reserve(&self, req: Request<ReserveRequest>) -> Result<Response<ReserveReply>, Status> {
        self.state.deps.work("portfolio.reserve").await;
        let req = req.into_inner();
        let side = side_from_proto(req.side)?;
        if req.qty <= 0 || req.price_ticks <= 0 {
            return Err(Status::invalid_argument("qty and price_ticks must be positive"));
        }
        let order = OrderId(req.order_id);
        let reservation = Reservation {
            account: AccountId(req.account_id),
            symbol: req.symbol.clone(),
            side,
            qty: Shares(req.qty),
            price: PriceTicks(req.price_ticks),
        };
        let mut ledger = self.state.ledger.lock().await;
        let exists = ledger.check_reserve(order, &reservation).map_err(|e| match e {
            ReserveError::UnknownSymbol(_) => Status::invalid_argument(e.to_string()),
            ReserveError::AlreadyReleased(_) => Status::aborted(e.to_string()),
            _ => Status::failed_precondition(e.to_string()),
        })?;
        if !exists {
            let kind = ledger_event::Kind::Reserved(events::Reserved {
                order_id: order.0,
                account: req.account_id,
                symbol: req.symbol,
                side: side_to_proto(side) as i32,
                qty: req.qty,
                price_ticks: req.price_ticks,
            });
            let event = self.record("reserve", &format!("res-{order}"), kind).await?;
            apply_ledger_event(&mut ledger, &event);
        }
        Ok(Response::new(ReserveReply {}))
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        self.state.deps.work("portfolio.release").await;
        let order = OrderId(req.into_inner().order_id);
        let mut ledger = self.state.ledger.lock().await;
        let kind = ledger_event::Kind::Released(events::Released { order_id: order.0 });
        let event = self.record("release", &format!("rel-{order}"), kind).await?;
        apply_ledger_event(&mut ledger, &event);
        Ok(Response::new(ReleaseReply {}))
    }

    async fn get_portfolio(&self, req: Request<GetPortfolioRequest>) -> Result<Response<PortfolioView>, Status> {
        self.state.deps.work("portfolio.get_portfolio").await;
        let account = AccountId(req.into_inner().account_id);
        Ok(Response::new(view(&*self.state.ledger.lock().await, account)))
    }
}
