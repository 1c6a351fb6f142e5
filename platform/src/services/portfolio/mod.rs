//! The portfolio service: accounts, deposits, cash, holdings, reservations,
//! and exactly-once settlement of fills.
//!
//! Every change is first made durable in the LEDGER stream (deposits,
//! reservations, releases; this service is its only writer) or comes from the
//! TRADES stream (fills, closes), and only then applied to the in-memory
//! [`Ledger`]. On start the ledger is rebuilt by replaying both streams, so a
//! restart or a Redis wipe loses nothing and applies nothing twice.

pub mod fold;
pub mod ledger;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::bus::BusError;
use crate::config::PlantedBug;
use crate::domain::{AccountId, Cents, OrderId, PriceTicks, Shares};
use crate::proto::common::{Holding as HoldingView, PortfolioView};
use crate::proto::events::{self, ledger_event, EngineEvent, LedgerEvent};
use crate::proto::portfolio::portfolio_server::{Portfolio, PortfolioServer};
use crate::proto::portfolio::{
    DepositRequest, GetPortfolioRequest, ReleaseReply, ReleaseRequest, ReserveReply, ReserveRequest,
};
use crate::services::{
    bus_status, decode, ensure_streams, shown, side_from_proto, side_to_proto, Deps, ServiceError, Shutdown, TaskGroup,
};

pub use fold::{replay, Fold, ReplayOptions};
pub use ledger::{Ledger, LedgerError, Reservation, ReserveError};

/// The durable consumer of the TRADES stream.
pub const DURABLE: &str = "portfolio";

struct State {
    deps: Deps,
    fold: Mutex<Fold>,
}

/// Runs the portfolio service until `shutdown`.
pub async fn serve(deps: Deps, shutdown: Shutdown) -> Result<(), ServiceError> {
    ensure_streams(&deps).await?;
    crate::services::ensure_trades_consumer(&deps, DURABLE).await?;
    let fold = rebuild(&deps).await?;
    let state = Arc::new(State { deps: deps.clone(), fold: Mutex::new(fold) });
    let mut tasks = TaskGroup::default();
    tasks.spawn_fallible(consume(state.clone(), shutdown.clone()));
    tasks.spawn(crate::services::keep_streams(deps.clone(), &[DURABLE], shutdown.clone()));
    let addr = deps.cfg.addrs.portfolio;
    tracing::info!(%addr, "portfolio serving");
    let service = PortfolioServer::new(PortfolioSvc { state });
    let server =
        crate::services::grpc_server().add_service(service.clone()).serve_with_shutdown(addr, shutdown.clone());
    tasks.serve_until_failure(addr, crate::rpc::serve_alongside(addr, service, shutdown, server)).await
}

/// Replays LEDGER and TRADES, interleaved as the live service applied them,
/// into a fresh ledger (see [`fold`]).
pub async fn rebuild(deps: &Deps) -> Result<Fold, ServiceError> {
    let names = deps.cfg.names();
    let mut ledger = Ledger::new(&deps.cfg.instruments);
    if deps.cfg.planted(PlantedBug::SettleTwice) {
        ledger.plant_settle_twice();
    }
    let options = ReplayOptions {
        skip_closes: deps.cfg.planted(PlantedBug::NoReleaseOnCancel),
        ledger_first: deps.cfg.planted(PlantedBug::ReplayLedgerFirst),
    };
    let (ledger_stream, trades_stream) = (names.ledger_stream(), names.trades_stream());
    let ledger_msgs = crate::bus::read_to_end(deps.bus.as_ref(), &ledger_stream, "", 1).await?;
    let trades = crate::bus::read_to_end(deps.bus.as_ref(), &trades_stream, "", 1).await?;
    let fold = replay(Fold::new(ledger), (&ledger_stream, &ledger_msgs), (&trades_stream, &trades), options)
        .inspect_err(|e| tracing::error!(error = %e, "portfolio cannot rebuild its ledger"))?;
    tracing::info!(
        ledger_events = ledger_msgs.len(),
        trade_events = trades.len(),
        trades_applied = fold.trades_applied(),
        "portfolio rebuilt from streams"
    );
    Ok(fold)
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
        trades_applied: 0,
    };
    let subject = deps.cfg.names().ledger("settled");
    let msg_id = format!("settled-{}-{}", s.symbol, s.match_seq);
    if let Err(e) = deps.bus.publish(&subject, &msg_id, Bytes::from(event.encode_to_vec())).await {
        tracing::debug!(error = %e, "settlement notice not published");
    }
}

/// Follows TRADES through the durable consumer and applies each event in
/// stream order. A redelivery of an applied event is skipped; a delivery
/// that skips ahead (one before it was lost on the way) first has the gap
/// read from the stream and applied, so the ledger is always exactly
/// "TRADES through `trades_applied`", which is what a replay rebuilds.
async fn consume(state: Arc<State>, shutdown: Shutdown) -> Result<(), ServiceError> {
    let stream = state.deps.cfg.names().trades_stream();
    let in_order = !state.deps.cfg.planted(PlantedBug::SettleTwice);
    loop {
        let fetched = tokio::select! {
            biased;
            _ = shutdown.clone() => return Ok(()),
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
        // Acked together once the batch is applied: a crash before that
        // redelivers the batch, which the rebuilt ledger has applied already.
        let mut done = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            state.deps.work("portfolio.settle").await;
            let mut fold = state.fold.lock().await;
            if in_order && d.msg.seq > fold.trades_applied() + 1 {
                fill_gap(&state, &mut fold, d.msg.seq).await?;
            }
            apply_stored(&state, &mut fold, &d.msg)?;
            drop(fold);
            if crate::services::buggify(0.02) {
                // No ack: the broker redelivers after the ack wait; settlement must stay once.
                continue;
            }
            done.push(d.token);
        }
        if let Err(e) = state.deps.bus.ack_many(&done).await {
            // Harmless: the redeliveries are recognised as applied.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}

/// Applies one TRADES message. One that does not decode stops the service
/// (its replay would stop at the same place); one the ledger cannot apply is
/// a broken invariant: the engine trades only orders the portfolio reserved.
fn apply_stored(state: &State, fold: &mut Fold, m: &crate::bus::StoredMsg) -> Result<(), ServiceError> {
    let stream = state.deps.cfg.names().trades_stream();
    let event = decode::<EngineEvent>(&stream, m.seq, &m.payload)
        .inspect_err(|e| tracing::error!(error = %e, "portfolio stops at an undecodable trade event"))?;
    let settled = fold.apply_trade(m.seq, &event).unwrap_or_else(|e| panic!("portfolio: {stream}#{}: {e}", m.seq));
    if let Some(s) = settled {
        // Off the settlement path: the notice is informational.
        let deps = state.deps.clone();
        tokio::spawn(async move { announce_settled(&deps, &s).await });
    }
    Ok(())
}

/// Reads and applies what TRADES holds after the applied sequence and before `seq`.
async fn fill_gap(state: &State, fold: &mut Fold, seq: u64) -> Result<(), ServiceError> {
    let stream = state.deps.cfg.names().trades_stream();
    while fold.trades_applied() + 1 < seq {
        let from = fold.trades_applied() + 1;
        let want = usize::try_from(seq - from).unwrap_or(usize::MAX).min(1024);
        let msgs = match state.deps.bus.read(&stream, "", from, want, Duration::ZERO).await {
            Ok(msgs) => msgs,
            Err(e) => {
                tracing::warn!(error = %e, from, "portfolio could not read a TRADES gap; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let before = fold.trades_applied();
        for m in msgs.iter().take_while(|m| m.seq < seq) {
            apply_stored(state, fold, m)?;
        }
        if fold.trades_applied() == before {
            break; // nothing stored in between
        }
    }
    Ok(())
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
    /// Records `event` in LEDGER, stamped with how far into TRADES the ledger
    /// is, and applies it. The caller holds the ledger (`fold`) throughout,
    /// so the stamp is exact and no TRADES event is applied in between.
    ///
    /// A failure that leaves the outcome unknown (a timeout, a connection
    /// lost with the publish in flight, a broker restarting) is no answer:
    /// the event may be stored, and the ledger must never be behind LEDGER
    /// (a reservation stored but not applied let later reservations overdraw
    /// the account, which a replay then found), so the same publish, under
    /// the same message id, is retried until the broker answers. Only a
    /// stream that does not exist (nothing can have been stored) is an error.
    async fn record(&self, fold: &mut Fold, kind: &str, msg_id: &str, event: ledger_event::Kind) -> Result<(), Status> {
        let event = fold.stamp(event);
        let subject = self.state.deps.cfg.names().ledger(kind);
        let payload = Bytes::from(event.encode_to_vec());
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.state.deps.bus.publish(&subject, msg_id, payload.clone()).await {
                Ok(_) => break,
                Err(e @ BusError::NotFound(_)) => return Err(bus_status(e)),
                Err(e) => {
                    tracing::warn!(msg_id, error = %e, "ledger write unanswered; publishing it again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        // Checked before recording: failing now is a broken invariant.
        fold.apply_ledger(&event).unwrap_or_else(|e| panic!("portfolio: recorded {msg_id} cannot be applied: {e}"));
        Ok(())
    }
}

fn deposit_refusal(e: ledger::DepositError) -> Status {
    Status::failed_precondition(e.to_string())
}

#[tonic::async_trait]
impl Portfolio for PortfolioSvc {
    async fn deposit(&self, req: Request<DepositRequest>) -> Result<Response<PortfolioView>, Status> {
        self.state.deps.work("portfolio.deposit").await;
        let req = req.into_inner();
        if req.request_id.is_empty() || req.request_id.len() > 128 {
            return Err(Status::invalid_argument("request_id: 1 to 128 bytes, unique per deposit"));
        }
        if req.symbol.is_empty() {
            if req.cents <= 0 || req.qty != 0 {
                return Err(Status::invalid_argument(format!(
                    "cents: {} is not a positive amount (a cash deposit takes qty 0)",
                    req.cents
                )));
            }
        } else {
            let Some(inst) = self.state.deps.cfg.instrument(&req.symbol) else {
                return Err(Status::invalid_argument(format!("symbol: unknown symbol {}", shown(&req.symbol))));
            };
            if req.qty <= 0 || req.qty % inst.lot_shares != 0 || req.cents != 0 {
                return Err(Status::invalid_argument(format!(
                    "qty: a share deposit needs a positive multiple of the lot ({}) and cents 0",
                    inst.lot_shares
                )));
            }
        }
        let account = AccountId(req.account_id);
        let mut fold = self.state.fold.lock().await;
        let request_id = format!("{}/{}", account.0, req.request_id);
        // Planted bug DepositsUnchecked: recorded before the limit is checked.
        let checked = !self.state.deps.cfg.planted(PlantedBug::DepositsUnchecked);
        if !fold.ledger().has_deposit(&request_id) {
            let within_limits = if !checked {
                Ok(())
            } else if req.symbol.is_empty() {
                fold.ledger().check_deposit(account, Cents(req.cents))
            } else {
                fold.ledger().check_deposit_shares(account, &req.symbol, Shares(req.qty))
            };
            within_limits.map_err(deposit_refusal)?;
            let kind = ledger_event::Kind::Deposited(events::Deposited {
                account: account.0,
                cents: req.cents,
                request_id: request_id.clone(),
                symbol: req.symbol.clone(),
                qty: req.qty,
            });
            self.record(&mut fold, "deposit", &format!("dep-{request_id}"), kind).await?;
        }
        Ok(Response::new(view(fold.ledger(), account)))
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
        let mut fold = self.state.fold.lock().await;
        let exists = fold.ledger().check_reserve(order, &reservation).map_err(|e| match e {
            ReserveError::UnknownSymbol(_) => {
                Status::invalid_argument(format!("symbol: unknown symbol {}", shown(&req.symbol)))
            }
            ReserveError::Limit(_) => Status::invalid_argument(e.to_string()),
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
            self.record(&mut fold, "reserve", &format!("res-{order}"), kind).await?;
        }
        Ok(Response::new(ReserveReply {}))
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<ReleaseReply>, Status> {
        self.state.deps.work("portfolio.release").await;
        let order = OrderId(req.into_inner().order_id);
        let mut fold = self.state.fold.lock().await;
        let kind = ledger_event::Kind::Released(events::Released { order_id: order.0 });
        self.record(&mut fold, "release", &format!("rel-{order}"), kind).await?;
        Ok(Response::new(ReleaseReply {}))
    }

    async fn get_portfolio(&self, req: Request<GetPortfolioRequest>) -> Result<Response<PortfolioView>, Status> {
        self.state.deps.work("portfolio.get_portfolio").await;
        let account = AccountId(req.into_inner().account_id);
        Ok(Response::new(view(self.state.fold.lock().await.ledger(), account)))
    }
}
